#!/usr/bin/env bash
# README command 1: set up, then train res_unet (the residual 2.5D denoiser) on the embedded demo
# cohort and evaluate it on the held-out test volumes. The quick default (CPU) runs a short slice of
# the recipe and scores a subset of the test slices; on a GPU set FULL=1 for the whole recipe (up to
# 100 epochs, every slice, early stopping) and every test slice.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export PATH="$PWD/.venv/bin:$PATH" PYTHONWARNINGS=ignore
EPOCHS=${EPOCHS:-10}
SLICES=${SLICES:-16}
TEST_SLICES=${TEST_SLICES:-32}
quick=(--train#trainer#max_epochs "$EPOCHS" --max_slices_per_subject "$SLICES")
quick_eval=(--validate#dataset#max_slices_per_subject "$TEST_SLICES")
[ "${FULL:-0}" = "1" ] && quick=() && quick_eval=()
start=$(date +%s)
python -m monai.bundle run training --config_file bundles/res_unet/configs/train.json "${quick[@]}"
python -m monai.bundle run evaluating \
  --config_file "['bundles/res_unet/configs/train.json','bundles/res_unet/configs/evaluate.json']" "${quick_eval[@]}"
echo "[demo] trained and evaluated in $(( $(date +%s) - start )) s; outputs in bundles/res_unet/{models,eval,outputs};"
echo "[demo] MLflow runs: .venv/bin/mlflow ui --backend-store-uri sqlite:///mlruns/mlflow.db"
echo "[demo] on a real scan it never saw: bash scripts/get_real_scan.sh && python scripts/real_scan.py (docs/real_scans.md)"
