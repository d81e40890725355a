#!/usr/bin/env bash
# Set up the project in ./.venv (idempotent: a second run only checks). Used by scripts/demo.sh,
# scripts/test.sh and .ci/run. PYTHON picks the interpreter (default python3).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
stamp=.venv/.mriae-setup
want=$(cat requirements.txt requirements-data.txt pyproject.toml | sha256sum | cut -d' ' -f1)
# the real scan the denoiser is judged on (Debian's mricron-data, unpacked into data/mricron; ~1 s):
# optional, the real-scan benchmark and its test need it
bash scripts/get_real_scan.sh >/dev/null 2>&1 || echo "[setup] note: Debian's mricron-data not available; the real-scan test will skip"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  exit 0
fi
echo "[setup] creating .venv and installing requirements (a few minutes on first run)"
"$PY" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -r requirements.txt
.venv/bin/python -m pip install -q --no-deps -r requirements-data.txt
.venv/bin/python -m pip install -q --no-deps -e .
echo "$want" > "$stamp"
echo "[setup] done"
