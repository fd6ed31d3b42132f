#!/usr/bin/env bash
# Build the environment from nothing (if needed), then the main job on the embedded default
# (SimNSD, a simulation): execute every chapter notebook in place with its default parameters
# (papermill), write the student editions (solutions removed) to notebooks/students/, and build
# the book as HTML with warnings and broken references treated as errors.
# The book is written to _build/html/index.html; notebook timings to runs/notebook_timings.csv.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh
export MPLBACKEND=agg
mkdir -p runs
.venv/bin/python -m braincorl_lite.notebook notebooks/0*.ipynb --timings runs/notebook_timings.csv
.venv/bin/python -m braincorl_lite.notebook students notebooks/students
start=$(date +%s)
.venv/bin/jupyter-book build . --toc book/_toc.yml -W -n
echo "book built in $(( $(date +%s) - start )) s: open _build/html/index.html"
