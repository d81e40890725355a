#!/usr/bin/env bash
# Train res_unet's shipped recipe (and optional variants) on one GPU, then score them on the real
# scan (scripts/real_scan.py: Debian mricron-data's Colin27, never used in training). Each variant is
# "LABEL" (the shipped train.json) or "LABEL:--key value --key2 value2" (train.json overrides); they
# train concurrently on the one GPU, each for at most TIME seconds (early stopping may end it sooner).
#
#   bash scripts/gpu_real_scan.sh OUT                                   # the shipped recipe only
#   TIME=240 CONDITIONS="clean gaussian-0.03" bash scripts/gpu_real_scan.sh OUT default "ctx0:--context 0"
#
# Writes OUT/<label>/{model.json,history.json,train.log}, OUT/results.json, OUT/report.md, OUT/*.png.
set -euo pipefail
OUT=${1:?usage: scripts/gpu_real_scan.sh OUTDIR [LABEL[:OVERRIDES] ...]}
shift
cd "$(dirname "$0")/.."
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
PY=${PYTHON:-python3}
TIME=${TIME:-300}
CONDITIONS=${CONDITIONS:-"clean gaussian-0.01 gaussian-0.03 gaussian-0.05 gaussian-0.08 rician-0.03 rician-0.05 dropout-0.03 blankout-25 blur-1.0 combined"}
export DATASETS=${DATASETS:-demo-heads}   # demo folders to prepare first (at the bundle's plan)
ADAPT=${ADAPT:-}   # e.g. "default:30": also score LABEL with 30 s of self-supervised adaptation
VARIANTS=("$@")
[ ${#VARIANTS[@]} -eq 0 ] && VARIANTS=(default)
export PYTHONWARNINGS=ignore PYTHONUNBUFFERED=1
if $PY -c "import mlflow" 2>/dev/null; then MLF=True; else MLF=False; fi
{ $PY -c "import torch, monai; print('torch', torch.__version__, 'monai', monai.__version__, torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'cpu')"
  git rev-parse HEAD 2>/dev/null || true; } | tee "$OUT/env.txt"
t0=$(date +%s)
$PY - <<'PY'
import os
from mriae.prepare.pipeline import ensure_datalist
from monai.bundle import ConfigParser
plan = ConfigParser.load_config_file("bundles/res_unet/configs/train.json")["plan"]
for name in os.environ.get("DATASETS", "demo-heads").split():
    print("datalist", ensure_datalist(f"data/{name}", plan, workers=16))
PY
echo "data ready in $(( $(date +%s) - t0 )) s" | tee -a "$OUT/env.txt"
specs=()
for v in "${VARIANTS[@]}"; do
  label=${v%%:*}; over=""; [[ "$v" == *:* ]] && over=${v#*:}
  root="$OUT/bundles/$label/res_unet"
  mkdir -p "$root"; cp -r bundles/res_unet/configs bundles/res_unet/docs "$root/"
  # shellcheck disable=SC2086
  ( $PY -m monai.bundle run training --config_file "$root/configs/train.json" --bundle_root "$root" \
      --use_mlflow "$MLF" --time_limit "$TIME" $over > "$OUT/$label.train.log" 2>&1
    echo "$label trained in $(( $(date +%s) - t0 )) s" ) &
done
wait
for v in "${VARIANTS[@]}"; do
  label=${v%%:*}; root="$OUT/bundles/$label/res_unet"
  mkdir -p "$OUT/$label"
  if cp "$root/models/model.json" "$root/outputs/training/history.json" "$OUT/$label/" 2>/dev/null; then
    over=""; [[ "$v" == *:* ]] && over=${v#*:}
    # the variant's own overrides go to its inference config too ("--key value" -> "+key=value")
    spec="$label=$root"; set -- $over
    while [ $# -ge 2 ]; do spec+="+${1#--}=$2"; shift 2; done
    specs+=("$spec")
  else
    echo "$label: no model (see $label.train.log)"; tail -5 "$OUT/$label.train.log"
  fi
done
if [ -n "$ADAPT" ]; then
  a_label=${ADAPT%%:*}; a_sec=${ADAPT#*:}
  specs+=("$a_label-adapt$a_sec=$OUT/bundles/$a_label/res_unet+adapt_seconds=$a_sec")
fi
# shellcheck disable=SC2086
$PY scripts/real_scan.py --scan "${MRIAE_REAL_SCAN:-}" --baselines identity --bundles "${specs[@]}" \
    --conditions $CONDITIONS --out "$OUT" 2>&1 | grep -v "image_writer" | tee "$OUT/real_scan.log"
echo "all done in $(( $(date +%s) - t0 )) s"
