#!/usr/bin/env bash
# Set up .venv and run the example pipelines on the processes backend with a progress bar.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet -e ".[rich]"
.venv/bin/python examples/run_all.py "$@"
