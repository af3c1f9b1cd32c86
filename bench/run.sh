#!/usr/bin/env bash
# The one command: create .venv if missing, then run every benchmark (python -m bench.run).
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${VENV:-.venv}"
[ -x "$VENV/bin/python" ] || "${PYTHON:-python3}" -m venv "$VENV"
exec "$VENV/bin/python" -m bench.run "$@"
