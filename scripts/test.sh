#!/usr/bin/env bash
# README command 2: set up (if needed) and run the test suite on CPU (no GPU tests).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/python -m pytest -m "not gpu" -q "$@"
