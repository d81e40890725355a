#!/usr/bin/env bash
# README command 1: set up, then train res_unet on the embedded demo cohort and evaluate it on the
# held-out test volumes. The quick default (CPU) runs a short slice of the S4 recipe; on a GPU set
# FULL=1 for the whole recipe (100 epochs, every relevant slice, early stopping as S4).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export PATH="$PWD/.venv/bin:$PATH" PYTHONWARNINGS=ignore
EPOCHS=${EPOCHS:-16}
SLICES=${SLICES:-40}
quick=(--train#trainer#max_epochs "$EPOCHS" --max_slices_per_subject "$SLICES")
[ "${FULL:-0}" = "1" ] && quick=()
start=$(date +%s)
python -m monai.bundle run training --config_file bundles/res_unet/configs/train.json "${quick[@]}"
python -m monai.bundle run evaluating \
  --config_file "['bundles/res_unet/configs/train.json','bundles/res_unet/configs/evaluate.json']"
echo "[demo] trained and evaluated in $(( $(date +%s) - start )) s; outputs in bundles/res_unet/{models,eval,outputs};"
echo "[demo] MLflow runs: .venv/bin/mlflow ui --backend-store-uri sqlite:///mlruns/mlflow.db"
