#!/usr/bin/env bash
# Build the environment from nothing (if needed) and run the main job on the embedded default
# dataset (SimNSD, a simulation): generate it and print its calibration report.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh
export MPLBACKEND=agg
mkdir -p runs
.venv/bin/braincorl-lite simulate --size default --report --report-out runs/simnsd_report.csv
