#!/usr/bin/env bash
# Build the environment from nothing (if needed) and run the whole test suite, slow tests included.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh
export MPLBACKEND=agg
exec .venv/bin/python -m pytest -q --durations=15 "$@"
