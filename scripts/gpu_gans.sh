#!/usr/bin/env bash
# The GPU comparison of S1's two 2D GANs at an equal number of GENERATOR updates: DCGAN (1 critic
# step per generator step) and WGAN-GP (5 critic steps, each on a new real batch, per generator step),
# with diversity and fidelity measured every epoch (see docs/results_gans.md).
#
#   bash scripts/gpu_gans.sh OUTDIR [G_UPDATES]         # default 2000 generator updates per GAN
#
# Environment: BUNDLES (default "dcgan_2d wgan_gp_2d"; add wgan_gp_3d for the 3D GAN), EPOCHS (number
# of measurement points, default 20), DATA (prepared data or "data/demo", built on first use),
# BATCH (default 128, S1's), EXTRA (more overrides for every bundle, e.g. smaller widths for a CPU
# check: EXTRA="--g_channels [128,64,32,16] --d_channels [16,32,64,128]"). MLflow is not needed: the bundles run with --use_mlflow False and write
# curves.json, curves.png and per-epoch sample grids; this script collects them (and 16 generated
# NIfTI samples per GAN) into OUTDIR with OUTDIR/summary.{json,md} and OUTDIR/comparison.png
# (scripts/gan_compare.py). Weights stay in build/gpu_gans/<bundle>/models (not in OUTDIR).
# To measure fidelity in the TRAINED res_unet feature space, bring bundles/res_unet/models/model.pt
# (copy it onto the GPU machine); without it the fixed random-init encoder is used and curves.json
# says so. Carrying data/demo/cohort saves the cohort build (only `prepare` then runs).
set -euo pipefail
[ $# -ge 1 ] || { echo "usage: $0 OUTDIR [G_UPDATES]" >&2; exit 2; }
cd "$(dirname "$0")/.."
OUT=$(python3 -c "import os,sys; print(os.path.abspath(sys.argv[1]))" "$1")
G_UPDATES=${2:-2000}
EPOCHS=${EPOCHS:-20}
BUNDLES=${BUNDLES:-"dcgan_2d wgan_gp_2d"}
DATA=${DATA:-data/demo}
BATCH=${BATCH:-128}
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONWARNINGS=ignore
mkdir -p "$OUT"
python3 - <<PY | tee "$OUT/environment.txt"
import torch, monai
print("torch", torch.__version__, "monai", monai.__version__, "cuda", torch.cuda.is_available(),
      torch.cuda.get_device_name(0) if torch.cuda.is_available() else "-")
import mriae.prepare.pipeline
print("datalist", mriae.prepare.pipeline.ensure_datalist("$DATA"))
PY
PER_EPOCH=$(( (G_UPDATES + EPOCHS - 1) / EPOCHS ))
for b in $BUNDLES; do
    n_critic=$(python3 -c "import json; print(json.load(open('bundles/$b/configs/train.json'))['n_critic'])")
    root="$PWD/build/gpu_gans/$b"   # bundle copy (weights stay here, outside OUTDIR)
    rm -rf "$OUT/$b" "$root"; mkdir -p "$OUT/$b" "$(dirname "$root")"
    cp -r "bundles/$b" "$root"
    rm -rf "$root/models" "$root/outputs"
    extra=()
    [ "$b" = wgan_gp_3d ] && extra=(--batch_size 8) || extra=(--batch_size "$BATCH")
    echo "== $b: $EPOCHS epochs x $PER_EPOCH generator updates (n_critic $n_critic)"
    start=$(date +%s)
    python3 -m monai.bundle run training --config_file "$root/configs/train.json" --bundle_root "$root" \
        --dataset_dir "$DATA" --use_mlflow False --train#trainer#max_epochs "$EPOCHS" \
        --epoch_length $(( PER_EPOCH * n_critic )) "${extra[@]}" ${EXTRA:-} > "$OUT/$b/train.log" 2>&1 \
        || { tail -40 "$OUT/$b/train.log"; exit 1; }
    grep -E "mriae.evaluate.gan_quality" "$OUT/$b/train.log" | tail -3 || true
    echo "$(( $(date +%s) - start ))" > "$OUT/$b/train_seconds.txt"
    python3 -m monai.bundle run --config_file "$root/configs/inference.json" --bundle_root "$root" \
        --output_dir "$OUT/$b/generated" --n_samples 16 $(echo "${EXTRA:-}" | grep -oE -- "--g_channels [^ ]+" || true) \
        > "$OUT/$b/inference.log" 2>&1
    cp "$root/outputs/training/curves.json" "$root/outputs/training/curves.png" "$OUT/$b/"
    cp -r "$root/outputs/training/samples" "$OUT/$b/samples"
    cp "$root/models/model.json" "$OUT/$b/"
done
python3 scripts/gan_compare.py "$OUT" $BUNDLES
