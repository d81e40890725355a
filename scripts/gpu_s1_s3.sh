#!/usr/bin/env bash
# Train and evaluate the S1-S3 bundles (cae_2d, cae_3d, conv_ae, ae_2d, vae_2d) on the demo cohort with
# each seed's full recipe on one GPU, run S3's sweep on ae_2d, and collect the results into OUTDIR:
#   <bundle>_summary.json (test PSNR / SSIM / MSE, clean and Gaussian noise 0.03), <bundle>_history.json,
#   conv_ae_pooled_psnr.json (S2's pooled-MSE PSNR beside ours, with and without the padding),
#   <bundle>_depth_figures/ (cae_3d), sweep_ae_2d/{trials.json,best_overrides.json}, timings.tsv, env.txt.
#
#   bash scripts/gpu_s1_s3.sh /tmp/s1s3_gpu
#   CAE3D_EPOCHS=100 SWEEP_TRIALS=0 BUNDLES="cae_2d conv_ae" bash scripts/gpu_s1_s3.sh out/   # shorter
#
# Needs python3 with torch, monai, ignite, optuna (MLflow optional: without it runs are not tracked).
set -euo pipefail
OUT=${1:?usage: scripts/gpu_s1_s3.sh OUTDIR}
cd "$(dirname "$0")/.."
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
PY=${PYTHON:-python3}
BUNDLES=${BUNDLES:-"cae_2d cae_3d conv_ae ae_2d vae_2d"}
CAE3D_EPOCHS=${CAE3D_EPOCHS:-300}       # S1: 500 (313 s on one H200); 300 keeps the script's run shorter
SWEEP_TRIALS=${SWEEP_TRIALS:-8}
export PYTHONWARNINGS=ignore
if $PY -c "import mlflow" 2>/dev/null; then MLF=True; else MLF=False; fi
{ $PY -c "import torch, monai; print('torch', torch.__version__, 'monai', monai.__version__, 'cuda', torch.cuda.is_available(), torch.cuda.get_device_name(0) if torch.cuda.is_available() else '-')"
  echo "mlflow: $MLF"; git rev-parse HEAD 2>/dev/null || true; } | tee "$OUT/env.txt"
printf "bundle\tstep\tseconds\n" > "$OUT/timings.tsv"

timed() {  # timed BUNDLE STEP cmd...
  local b=$1 s=$2; shift 2
  local t0; t0=$(date +%s)
  "$@" > "$OUT/${b}_${s}.log" 2>&1 || { echo "FAILED: $b $s (see $OUT/${b}_${s}.log)"; tail -20 "$OUT/${b}_${s}.log"; return 1; }
  printf "%s\t%s\t%s\n" "$b" "$s" $(( $(date +%s) - t0 )) | tee -a "$OUT/timings.tsv"
}

$PY -c "from mriae.prepare.pipeline import ensure_datalist; print(ensure_datalist('data/demo'))"   # build the demo cohort once
for b in $BUNDLES; do
  extra=()
  [ "$b" = cae_3d ] && extra=(--max_epochs "$CAE3D_EPOCHS")
  timed "$b" train $PY -m monai.bundle run training --config_file "bundles/$b/configs/train.json" \
      --use_mlflow $MLF "${extra[@]}" || continue
  timed "$b" evaluate $PY -m monai.bundle run evaluating \
      --config_file "['bundles/$b/configs/train.json','bundles/$b/configs/evaluate.json']" --use_mlflow $MLF || continue
  cp "bundles/$b/eval/summary.json" "$OUT/${b}_summary.json"
  cp "bundles/$b/outputs/training/history.json" "$OUT/${b}_history.json"
  cp "bundles/$b/models/model.json" "$OUT/${b}_checkpoint.json"
  [ -d "bundles/$b/outputs/training/depth_figures" ] && cp -r "bundles/$b/outputs/training/depth_figures" "$OUT/${b}_depth_figures"
  [ -d "bundles/$b/eval/figures" ] && cp -r "bundles/$b/eval/figures" "$OUT/${b}_figures"
  if [ "$b" = conv_ae ]; then  # S2's statistic (one pooled MSE) beside ours, with and without the zero padding
    timed "$b" pooled_psnr $PY -m mriae.evaluate.pooled_psnr --bundle "bundles/$b" --out "$OUT/${b}_pooled_psnr.json" || true
  fi
done
if [[ " $BUNDLES " == *" vae_2d "* ]] && [ -f bundles/vae_2d/models/model.pt ]; then
  timed vae_2d sample $PY -m mriae.tools.vae sample --bundle bundles/vae_2d --n 16 --out "$OUT/vae_2d_generative" --no-mlflow || true
  timed vae_2d interpolate $PY -m mriae.tools.vae interpolate --bundle bundles/vae_2d --slices 3 40 \
      --out "$OUT/vae_2d_generative" --no-mlflow || true
fi
if [ "$SWEEP_TRIALS" -gt 0 ]; then
  nm=(); [ "$MLF" = False ] && nm=(--no-mlflow)
  timed ae_2d sweep $PY scripts/sweep.py --bundle bundles/ae_2d --trials "$SWEEP_TRIALS" --out "$OUT/sweep_ae_2d" "${nm[@]}" || true
  rm -rf "$OUT"/sweep_ae_2d/trials/*/models
fi
$PY - "$OUT" <<'PY'
import json, sys
from pathlib import Path
out = Path(sys.argv[1])
print("| bundle | clean PSNR | noise 0.03 PSNR (recon) | noise 0.03 PSNR (input) | clean SSIM | best epoch |")
print("|---|---|---|---|---|---|")
for f in sorted(out.glob("*_summary.json")):
    b = f.name[: -len("_summary.json")]
    s = json.loads(f.read_text())
    ck = json.loads((out / f"{b}_checkpoint.json").read_text())
    c, n = s["clean"], s.get("noise", {})
    fmt = lambda d, k: f"{d[k]['mean']:.2f} ± {d[k]['std']:.2f}" if k in d else "—"
    print(f"| {b} | {fmt(c, 'psnr')} | {fmt(n, 'psnr')} | {fmt(n, 'input_psnr')} | {c['ssim']['mean']:.4f} | {ck['epoch']} |")
PY
