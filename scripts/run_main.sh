#!/usr/bin/env bash
# Build the environment from nothing (if needed), then the main job on the embedded default
# (SimNSD, a simulation): execute every chapter notebook in place with its default parameters
# (papermill), and build the book as HTML with warnings treated as errors.
# The book is written to _build/html/index.html; notebook timings to runs/notebook_timings.csv.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh
export MPLBACKEND=agg
mkdir -p runs
.venv/bin/python -m braincorl_lite.notebook notebooks/0*.ipynb --timings runs/notebook_timings.csv
start=$(date +%s)
.venv/bin/jupyter-book build . --toc book/_toc.yml -W
echo "book built in $(( $(date +%s) - start )) s: open _build/html/index.html"
