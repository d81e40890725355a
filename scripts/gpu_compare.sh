#!/usr/bin/env bash
# Full S4 comparison on a GPU box (the run behind docs/results.md): every S4 architecture with S4's recipe (up to 100
# epochs, early stopping patience 20, reduce-on-plateau, every relevant slice), MSE and DSSIM, and
# the L2 = 1e-5 variants of S4's table; all evaluated on the same corrupted test slices, with the
# baselines, paired tests, bootstrap CIs, leaderboard, figures.
#
#   bash scripts/gpu_compare.sh OUT_DIR [extra compare.py options]
#   DATASET_DIR=data/ixi JOBS=2 BM4D=1 bash scripts/gpu_compare.sh /tmp/out
#
# DATASET_DIR: a prepared dataset (python -m mriae.prepare ...), default the demo cohort (data/demo).
# JOBS: bundles trained at once on the one GPU (default 1). BM4D=1 adds the BM4D baseline (CPU, hours
# on IXI's 47 test volumes x 17 conditions; the table says "not installed" when the package is absent).
# MLflow is used when importable (store: OUT_DIR/mlflow.db), else everything runs with --no-mlflow.
# Writes OUT_DIR/{leaderboard.md,leaderboard.csv,summary.csv,pairwise.csv,per_slice.csv,per_subject.csv,
# figures/,bundles/<label>/{models,outputs},logs/,results.md (docs/results.md with the compare block),
# compare.json}. Re-running with the same OUT_DIR reuses trained checkpoints (pass --retrain to redo).
set -euo pipefail
OUT=${1:?usage: gpu_compare.sh OUT_DIR [extra compare.py options]}
shift
cd "$(dirname "$0")/.."
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
DATA=${DATASET_DIR:-data/demo}

if python3 -c "import mlflow" 2>/dev/null; then
    TRACK=(--tracking-uri "sqlite:///$OUT/mlflow.db")
else
    echo "mlflow not importable: running with --no-mlflow"
    TRACK=(--no-mlflow)
fi
BASELINES=(identity gaussian nlm)
if [[ "${BM4D:-0}" == "1" ]]; then BASELINES+=(bm4d); fi
[[ -f "$OUT/results.md" ]] || cp docs/results.md "$OUT/results.md"

MODELS=(
    # MSE, augmented (S4 table 5.x): all five architectures, L2 variants of shallow, skip CAE, Myronenko
    res_unet
    shallow_res_ae
    shallow_res_ae:block=original
    shallow_res_ae:l2=1e-5
    skip_cae
    skip_cae:l2=1e-5
    myronenko_ae
    myronenko_ae:l2=1e-5
    # DSSIM, augmented
    res_unet:loss_name=dssim
    shallow_res_ae:loss_name=dssim
    shallow_res_ae:loss_name=dssim,block=original
    skip_cae:loss_name=dssim
    myronenko_ae:loss_name=dssim
)

python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())"
time python3 scripts/compare.py \
    --models "${MODELS[@]}" \
    --dataset-dir "$DATA" \
    --output "$OUT" \
    --jobs "${JOBS:-1}" \
    --baselines "${BASELINES[@]}" \
    --results-md "$OUT/results.md" \
    "${TRACK[@]}" \
    "$@" 2>&1 | tee "$OUT/compare.log"
