#!/usr/bin/env bash
# Create (or update) the project's virtual environment in .venv and install the package with
# its test extra. Safe to run repeatedly; a second run only checks that everything is there.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
    echo "[setup] creating .venv with $($PYTHON --version)"
    "$PYTHON" -m venv .venv
fi
stamp=.venv/.braincorl-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ] || [ constraints.txt -nt "$stamp" ]; then
    echo "[setup] installing braincorl-lite and its dependencies (the first time takes several minutes)"
    .venv/bin/python -m pip install --quiet --upgrade pip
    # exact versions of this project's environment (pyproject.toml keeps ranges for users)
    .venv/bin/python -m pip install --quiet -c constraints.txt -e ".[test]"
    .venv/bin/python -m ipykernel install --sys-prefix --name python3 --display-name "Python 3 (braincorl-lite)" >/dev/null
    touch "$stamp"
fi
.venv/bin/python -c "import braincorl_lite, torch; print(f'[setup] braincorl-lite {braincorl_lite.__version__}, torch {torch.__version__}, CUDA available: {torch.cuda.is_available()}')"
