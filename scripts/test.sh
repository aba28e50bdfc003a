#!/usr/bin/env bash
# Set up .venv with every extra, then run lint, format check, type checks and
# the whole test suite (in parallel). Exits non-zero if any step fails.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet -e ".[dev]"

echo "== ruff (lint + format)"
.venv/bin/ruff check src tests benchmarks examples
.venv/bin/ruff format --check src tests benchmarks examples
echo "== mypy"
.venv/bin/mypy
.venv/bin/mypy tests/typing
echo "== pyright"
.venv/bin/pyright
echo "== pytest"
# CI installs every extra, so a backend that cannot be tested is a failure.
DAGLITE_REQUIRE_ALL_BACKENDS=1 .venv/bin/python -m pytest -n auto "$@"
