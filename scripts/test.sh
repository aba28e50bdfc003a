#!/usr/bin/env bash
# Set up the virtual environments, then run lint, format check and type checks
# once, and the whole test suite (in parallel) on every supported CPython this
# machine has (3.10 to 3.14; missing ones are named and skipped). Exits
# non-zero if any step fails on any interpreter.
#
#   DAGLITE_PYTHONS="3.12 3.13" bash scripts/test.sh   # only these versions
#   bash scripts/test.sh -k dask                        # extra pytest arguments
set -euo pipefail
cd "$(dirname "$0")/.."

SUPPORTED="3.10 3.11 3.12 3.13 3.14"
PYTHON=${PYTHON:-python3}

# The interpreter for version $1: pythonX.Y on PATH if it runs, else a pyenv build.
find_python() {
  local v=$1 candidate
  if command -v "python$v" >/dev/null 2>&1 && "python$v" -c "" >/dev/null 2>&1; then
    command -v "python$v"
    return 0
  fi
  local root
  root=$(pyenv root 2>/dev/null || echo "$HOME/.pyenv")
  for candidate in "$root"/versions/"$v".*/bin/python"$v"; do
    if [ -x "$candidate" ] && "$candidate" -c "" >/dev/null 2>&1; then
      echo "$candidate"
      return 0
    fi
  done
  return 1
}

# Create (once) the venv $1 with interpreter $2 and install the project with extras $3.
setup_venv() {
  local venv=$1 python=$2 extras=$3
  if [ ! -x "$venv/bin/python" ]; then
    "$python" -m venv "$venv"
  fi
  "$venv/bin/python" -m pip install --quiet --upgrade pip
  "$venv/bin/python" -m pip install --quiet -e ".[$extras]"
}

echo "== setting up .venv (lint, types) with $PYTHON"
setup_venv .venv "$PYTHON" dev
echo "== ruff (lint + format)"
.venv/bin/ruff check src tests benchmarks examples
.venv/bin/ruff format --check src tests benchmarks examples
echo "== mypy"
.venv/bin/mypy
.venv/bin/mypy tests/typing
echo "== pyright"
.venv/bin/pyright

# The HTML run report is rendered in headless Chromium by the tests
# (tests/plugins/test_report_browser.py). CI runs as root on Debian: install it
# there if missing. Elsewhere say why not; those tests then fail, since the
# test command below requires every optional part.
ensure_chromium() {
  [ -x /usr/bin/chromium ] && return 0
  if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
    echo "== chromium missing and not installable here (needs root and apt-get)"
    return 0
  fi
  echo "== installing chromium with apt-get"
  local log
  log=$(mktemp)
  if ! { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; } >"$log" 2>&1; then
    tail -n 20 "$log"
    echo "== apt-get could not install chromium"
  fi
  rm -f "$log"
}
ensure_chromium

tested=()
missing=()
failed=()
for v in ${DAGLITE_PYTHONS:-$SUPPORTED}; do
  if ! python=$(find_python "$v"); then
    missing+=("$v")
    continue
  fi
  echo "== pytest on Python $v ($python)"
  setup_venv ".venv-$v" "$python" "test,rich,dask,ray"
  # CI installs every extra, so a backend that cannot be tested is a failure.
  if DAGLITE_REQUIRE_ALL_BACKENDS=1 ".venv-$v/bin/python" -m pytest -n auto "$@"; then
    tested+=("$v")
  else
    failed+=("$v")
  fi
done

echo "== summary"
echo "tested on Python: ${tested[*]:-none}"
[ ${#missing[@]} -eq 0 ] || echo "not installed here, skipped: ${missing[*]}"
if [ ${#failed[@]} -ne 0 ]; then
  echo "FAILED on Python: ${failed[*]}"
  exit 1
fi
if [ ${#tested[@]} -eq 0 ]; then
  echo "no supported Python found: nothing was tested"
  exit 1
fi
