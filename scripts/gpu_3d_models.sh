#!/usr/bin/env bash
# The GPU runs behind docs/results_s1_s3.md (cae_3d) and docs/results_gans.md (wgan_gp_3d, and S1's
# DCGAN collapse question), on the demo cohort, within one time budget, in this order of priority (PARALLEL=0, the default and what was measured; PARALLEL=1 runs all four at once on the one GPU, checked only on CPU with SMOKE=1):
#
#   1. cae_3d with its default recipe (GroupNorm, dense code layer at lr 5e-6, random affine
#      augmentation, 15,000 steps), trained and scored by scripts/compare.py (17 conditions, identity and
#      gaussian baselines), then `python -m mriae.tools.latent_check` on the test and training volumes, and
#      the training mean volume scored on the same test slices (the mean-volume baseline);
#   2. wgan_gp_3d with its default recipe (2,000 generator updates, quality every 100);
#   3. dcgan_2d, then wgan_gp_2d (S1's recipes), towards 5,000 generator updates each, quality every 250.
#
#   bash scripts/gpu_3d_models.sh OUTDIR
#
# BUDGET_S (default 500) bounds the wall clock (the final collection adds about 15 s). The GAN runs
# stop at an epoch boundary when their share is spent (StopAfter) and keep their whole training state
# in build/gpu_3d_models/<bundle>/models/state.pt; running the SAME command again on the same machine
# skips what is done and continues them (--resume True) until OUTDIR/summary.json says "done": true
# (measured on the H200 with the models in turn, PARALLEL=0: cae_3d 157 s with its compare at 5,000 steps (426 s at 15,000), wgan_gp_3d
# 304 s for 2,000 updates, dcgan_2d 125 s for 5,000, wgan_gp_2d about 600 s for 5,000: three commands
# of about 500 s; docs/results_gans.md). Each command writes at
# most 8 files into OUTDIR:
# summary.json (every number), summary.md, results.tar.gz (curves, logs, grids, CSVs),
# cae_3d_depth.png, cae_3d_compare_grid.png, wgan_gp_3d_samples.png, wgan_gp_3d_curves.png,
# gans_2d_comparison.png. MLflow is not used (--use_mlflow False / --no-mlflow). To measure GAN fidelity
# in the TRAINED res_unet encoder's feature space (as the earlier GAN runs did), bring
# bundles/res_unet/models/model.pt onto the GPU machine; without it the fixed
# random-init encoder is used and summary.json says so. DATA (default data/demo) is built on first use.
# ONLY (e.g. "wgan_gp_2d cae_3d") runs these steps in this order (PARALLEL=0); CAE_EPOCHS trains cae_3d
# for that many epochs of 50 steps (default: the bundle's 300, i.e. 15,000 steps; about 430 s with its
# compare on the H200).
# SMOKE=1 runs every step at a CPU budget (tiny sizes and epochs) to check the pipeline; its numbers
# mean nothing.
set -euo pipefail
[ $# -eq 1 ] || { echo "usage: $0 OUTDIR" >&2; exit 2; }
cd "$(dirname "$0")/.."
mkdir -p "$1"
OUT=$(cd "$1" && pwd)
BUDGET_S=${BUDGET_S:-500}
DATA=${DATA:-data/demo}
PY=${PYTHON:-python3}
BUILD="$PWD/build/gpu_3d_models${SMOKE:+_smoke}"
CAE_SIZE="[160,64,64]"; CAE_OVER=(); [ -n "${CAE_EPOCHS:-}" ] && CAE_OVER=(--override "max_epochs=$CAE_EPOCHS"); GAN3D=(); GAN2D=(); E3=20; E2=20; EL2=250
if [ -n "${SMOKE:-}" ]; then
  CAE_OVER=(--override epoch_length=2 --override max_epochs=2)  # compare loads with the bundle's img_size
  GAN3D=(--g_channels "[16,8,4]" --d_channels "[4,8,16]" --img_size 32 --epoch_length 10 --quality_samples 4 --grid_samples 4)
  GAN2D=(--g_channels "[32,16,8,4]" --d_channels "[4,8,16,32]" --max_slices_per_subject 2 --batch_size 8 --quality_samples 8 --grid_samples 8)
  E3=2; E2=2; EL2=4
fi
START=$(date +%s)
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONWARNINGS=ignore
mkdir -p "$BUILD/logs"
left() { echo $(( BUDGET_S - ($(date +%s) - START) )); }
timed() {  # timed NAME cmd...: run, log to $BUILD/logs/NAME.log, append the seconds to timings.tsv
  local name=$1 t0; shift; t0=$(date +%s)
  echo "== $(date -u +%FT%TZ): $*" >> "$BUILD/logs/$name.log"
  "$@" >> "$BUILD/logs/$name.log" 2>&1 || { echo "FAILED: $name"; tail -30 "$BUILD/logs/$name.log"; return 1; }
  printf "%s\t%s\n" "$name" $(( $(date +%s) - t0 )) | tee -a "$BUILD/timings.tsv"
}
{ $PY -c "import torch, monai; print('torch', torch.__version__, 'monai', monai.__version__, 'device', torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'cpu')"
  git rev-parse HEAD 2>/dev/null || echo "commit: unknown"; echo "start $(date -u +%FT%TZ), budget ${BUDGET_S} s"; } | tee -a "$BUILD/env.txt"
$PY -c "from mriae.prepare.pipeline import ensure_datalist; print(ensure_datalist('$DATA'))"

# 1. cae_3d: train + compare leaderboard + latent check + mean-volume baseline (first priority, no time limit)
CMP="$BUILD/compare_cae_3d"
cae() {
if [ ! -f "$CMP/leaderboard.csv" ]; then
  timed cae_3d_compare $PY scripts/compare.py --models cae_3d --dataset-dir "$DATA" --output "$CMP" \
      --baselines identity gaussian --results-md none --no-mlflow --n-boot 1000 "${CAE_OVER[@]}" \
      || echo "cae_3d: compare failed (see $BUILD/logs/cae_3d_compare.log)"
fi
if [ -f "$CMP/leaderboard.csv" ]; then
for part in test training; do  # the JSON on stdout, the rest into the log
  [ -s "$BUILD/latent_$part.json" ] || $PY -m mriae.tools.latent_check --bundle "$CMP/bundles/cae_3d" \
      --partition "$part" --dataset-dir "$DATA" --set "img_size=$CAE_SIZE" > "$BUILD/latent_$part.json" \
      2>> "$BUILD/logs/cae_3d_latent.log" || echo "cae_3d: latent check ($part) failed"
done
[ -f "$BUILD/mean_volume.json" ] || timed cae_3d_mean_volume $PY - "$DATA" "$BUILD/mean_volume.json" "$CAE_SIZE" <<'PY' \
    || echo "cae_3d: mean-volume baseline failed"
import json, sys
import torch
import mriae.prepare.pipeline
from mriae.compare.run import OnWholeVolumes, evaluate, summarize
from mriae.data.corruption import conditions
from mriae.data.slices import SliceDataset
from mriae.data.volumes import VolumeDataset

dl = mriae.prepare.pipeline.ensure_datalist(sys.argv[1])
size = tuple(json.loads(sys.argv[3]))
mean = VolumeDataset(dl, "training", size=size).images.mean(0, keepdim=True)

class MeanVolume(torch.nn.Module):  # what a dead code returns: one volume for every input
    def forward(self, x):
        return mean.to(x.device).expand(x.shape[0], *mean.shape[1:])

ds = SliceDataset(dl, "test")
net = OnWholeVolumes(MeanVolume(), size, ds)
subjects, slices = [s for s, _ in ds.index], [z for _, z in ds.index]
per, _ = evaluate({"mean_volume": net}, {}, ds.images, subjects, slices, {"clean": conditions()["clean"]}, 0,
                  torch.device("cpu"))
s = summarize(per, n_boot=1000)
json.dump({r.metric: {"mean": r["mean"], "ci_low": r.ci_low, "ci_high": r.ci_high} for _, r in s.iterrows()},
          open(sys.argv[2], "w"), indent=2)
PY
fi
}

# 2.-3. the GANs: each resumes its own state; quality every 100 (3D) / 250 (2D) generator updates
gan() {  # gan BUNDLE EPOCHS EXTRA...: continue BUNDLE's run towards EPOCHS epochs in the time left
  local b=$1 epochs=$2 root="$BUILD/$1" secs; shift 2
  [ -d "$root/configs" ] || { mkdir -p "$root"; cp -r "bundles/$b/configs" "bundles/$b/docs" "$root/"; }
  [ -f "$root/done" ] && return 0
  secs=$(left)
  if [ "$secs" -lt 120 ]; then echo "$b: ${secs} s left in this command; run the command again to continue"; return 0; fi
  timed "$b" $PY -m monai.bundle run training --config_file "$root/configs/train.json" --bundle_root "$root" \
      --dataset_dir "$DATA" --use_mlflow False --resume True --train#trainer#max_epochs "$epochs" \
      --stop_after_s "$(( secs - 80 ))" "$@" || { echo "$b: training failed (see $BUILD/logs/$b.log)"; return 0; }
  $PY -c "import json,sys; m=json.load(open('$root/models/model.json')); print('$b: epoch', m['epoch'], 'of $epochs,', m['generator_updates'], 'generator updates'); sys.exit(m['epoch'] < $epochs)" \
      && touch "$root/done" || true
}
# PARALLEL=1 (not the default: measured only with SMOKE=1 on CPU) runs cae_3d and the three GANs at the same time on the one GPU (each is far
# from filling an H200; wall-clock timings then include the sharing); PARALLEL=0 runs them in turn
run_all() {
  if [ "${PARALLEL:-0}" = 1 ]; then
    cae & gan wgan_gp_3d "$E3" "${GAN3D[@]}" &
    gan dcgan_2d "$E2" --epoch_length "$EL2" --state_interval 2 "${GAN2D[@]}" &
    gan wgan_gp_2d "$E2" --epoch_length $(( 5 * EL2 )) --state_interval 2 "${GAN2D[@]}" &
    wait
  else
    for step in ${ONLY:-cae_3d wgan_gp_3d dcgan_2d wgan_gp_2d}; do  # ONLY: these steps, in this order
      case $step in
        cae_3d) cae ;;
        wgan_gp_3d) gan wgan_gp_3d "$E3" "${GAN3D[@]}" ;;                                  # its default: 20 x 100 updates
        dcgan_2d) gan dcgan_2d "$E2" --epoch_length "$EL2" --state_interval 2 "${GAN2D[@]}" ;;        # S1's: 20 x 250 updates
        wgan_gp_2d) gan wgan_gp_2d "$E2" --epoch_length $(( 5 * EL2 )) --state_interval 2 "${GAN2D[@]}" ;;  # 5 critic steps each
        *) echo "ONLY: unknown step $step" >&2; exit 2 ;;
      esac
    done
  fi
}
run_all

# 4. collect: summary.json / summary.md, figures, one tar of the rest
mkdir -p "$BUILD/gans"
for b in dcgan_2d wgan_gp_2d; do
  [ -f "$BUILD/$b/outputs/training/curves.json" ] && mkdir -p "$BUILD/gans/$b" && \
      cp "$BUILD/$b/outputs/training/curves.json" "$BUILD/gans/$b/"
done
ls "$BUILD"/gans/*/curves.json >/dev/null 2>&1 && $PY scripts/gan_compare.py "$BUILD/gans" \
    $(ls "$BUILD/gans" | grep -E '^(dcgan_2d|wgan_gp_2d)$') > "$BUILD/logs/gan_compare.log" 2>&1 || true
$PY - "$BUILD" "$OUT" "$START" <<'PY'
import json, shutil, sys, tarfile, time
from pathlib import Path
import pandas as pd
build, out, start = Path(sys.argv[1]), Path(sys.argv[2]), float(sys.argv[3])


def load(p):
    try:
        return json.loads(Path(p).read_text())
    except (OSError, ValueError):
        return None


S = {"env": (build / "env.txt").read_text().splitlines(), "timings_s": {}}
if (build / "timings.tsv").is_file():
    for line in (build / "timings.tsv").read_text().splitlines():
        k, v = line.split("\t")
        S["timings_s"][k] = S["timings_s"].get(k, 0) + int(v)
cmp_ = build / "compare_cae_3d"
if (cmp_ / "summary.csv").is_file():
    summ = pd.read_csv(cmp_ / "summary.csv")
    c = {}
    for entry, g in summ.groupby("entry"):
        c[entry] = {f"{r.condition}/{r.metric}": [round(r["mean"], 4), round(r.ci_low, 4), round(r.ci_high, 4)]
                    for _, r in g.iterrows()}
    root = cmp_ / "bundles" / "cae_3d"
    hist = json.loads((root / "outputs" / "training" / "history.json").read_text())
    S["cae_3d"] = {
        "compare": c,
        "mean_volume": load(build / "mean_volume.json"),
        "latent_test": load(build / "latent_test.json"),
        "latent_training": load(build / "latent_training.json"),
        "checkpoint": json.loads((root / "models" / "model.json").read_text()),
        "train_loss": [round(v, 6) for v in hist["train_loss"]],
        "val_clean_psnr": [round(v["val_clean_psnr"], 3) for v in hist["validation"]],
        "val_code_saturated": [round(v.get("val_code_saturated", float("nan")), 4) for v in hist["validation"]],
        "val_code_spread": [round(v.get("val_code_spread", float("nan")), 5) for v in hist["validation"]],
        "val_noise_output_change": [v.get("val_noise_output_change") for v in hist["validation"]],
    }
    psnr = {k.split("/")[0]: v[0] for k, v in c["cae_3d"].items() if k.endswith("/psnr")}
    S["cae_3d"]["psnr_by_condition"] = psnr
    if S["cae_3d"]["mean_volume"]:
        S["cae_3d"]["psnr_minus_mean_volume"] = round(psnr["clean"] - S["cae_3d"]["mean_volume"]["psnr"]["mean"], 3)
    figs = sorted((root / "outputs" / "training" / "depth_figures").glob("recon_epoch_*.png"))
    if figs:
        shutil.copy(figs[-1], out / "cae_3d_depth.png")
    shutil.copy(cmp_ / "figures" / "grid.png", out / "cae_3d_compare_grid.png")
done = True
for b in ("wgan_gp_3d", "dcgan_2d", "wgan_gp_2d"):
    root = build / b
    cj = root / "outputs" / "training" / "curves.json"
    if not cj.is_file():
        done = False
        continue
    curves = json.loads(cj.read_text())
    keep = ("epoch", "generator_updates", "gen_msssim", "real_msssim", "gen_spread", "real_spread", "fd", "mmd",
            "mmd_rbf", "train_grad_norm", "train_gp", "train_wasserstein", "train_g_loss", "train_d_loss",
            "train_d_real", "train_d_fake")
    S[b] = {"feature_space": curves["feature_space"], "done": (root / "done").is_file(),
            "epochs": [{k: (round(e[k], 5) if isinstance(e[k], float) else e[k]) for k in keep if k in e}
                       for e in curves["epochs"]]}
    done &= (root / "done").is_file()
if (build / "gans" / "summary.json").is_file():
    S["gans_2d_verdict"] = json.loads((build / "gans" / "summary.json").read_text())
S["done"] = bool(done)
S["this_command_s"] = round(time.time() - start)
(out / "summary.json").write_text(json.dumps(S, indent=1))
g3 = build / "wgan_gp_3d" / "outputs" / "training"
grids = sorted((g3 / "samples").glob("epoch_*.png")) if g3.is_dir() else []
if grids:
    shutil.copy(grids[-1], out / "wgan_gp_3d_samples.png")
    shutil.copy(g3 / "curves.png", out / "wgan_gp_3d_curves.png")
if (build / "gans" / "comparison.png").is_file():
    shutil.copy(build / "gans" / "comparison.png", out / "gans_2d_comparison.png")
md = ["# GPU runs (scripts/gpu_3d_models.sh)", "", *S["env"], "", f"done: {S['done']}", ""]
if "cae_3d" in S:
    k = S["cae_3d"]
    mv = (k["mean_volume"] or {}).get("psnr", {}).get("mean", float("nan"))
    md += ["## cae_3d", f"clean PSNR {k['psnr_by_condition']['clean']} dB, mean-volume baseline {mv:.2f} dB",
           "PSNR by condition: " + ", ".join(f"{c} {v}" for c, v in k["psnr_by_condition"].items()),
           "latent (test): " + json.dumps(k["latent_test"]), ""]
for b in ("wgan_gp_3d", "dcgan_2d", "wgan_gp_2d"):
    if b in S:
        md += [f"## {b} ({S[b]['feature_space']})", "| updates | gen MS-SSIM | real MS-SSIM | FD | RBF-MMD | grad norm | W |",
               "|---|---|---|---|---|---|---|"]
        md += [f"| {e.get('generator_updates')} | {e.get('gen_msssim')} | {e.get('real_msssim')} | {e.get('fd')} | "
               f"{e.get('mmd_rbf')} | {e.get('train_grad_norm', '')} | {e.get('train_wasserstein', '')} |"
               for e in S[b]["epochs"]]
        md.append("")
md += ["## timings (s)", *[f"- {k}: {v}" for k, v in S["timings_s"].items()]]
(out / "summary.md").write_text("\n".join(md) + "\n")
with tarfile.open(out / "results.tar.gz", "w:gz") as tar:
    for p in [build / "env.txt", build / "timings.tsv", *sorted((build / "logs").glob("*.log"))]:
        if p.is_file():
            tar.add(p, arcname=f"results/{p.relative_to(build)}")
    for f in ("leaderboard.csv", "summary.csv", "per_subject.csv", "pairwise.csv", "leaderboard.md",
              "logs/cae_3d-train.log"):
        if (cmp_ / f).is_file():
            tar.add(cmp_ / f, arcname=f"results/cae_3d/{f}")
    tr = cmp_ / "bundles" / "cae_3d" / "outputs" / "training"
    if tr.is_dir():
        tar.add(tr, arcname="results/cae_3d/training")
    for b in ("wgan_gp_3d", "dcgan_2d", "wgan_gp_2d"):
        tr = build / b / "outputs" / "training"
        if not tr.is_dir():
            continue
        grids = sorted((tr / "samples").glob("epoch_*.png"))
        if b != "wgan_gp_3d":  # 64-sample 2D grids are ~0.3 MB: epoch 1, every 4th and the last
            grids = [g for i, g in enumerate(grids, 1) if i == 1 or i % 4 == 0 or i == len(grids)]
        for f in [*tr.glob("curves.*"), tr / "samples" / "real.png", *grids]:
            if f.is_file():
                tar.add(f, arcname=f"results/{b}/training/{f.relative_to(tr)}")
        if (build / b / "models" / "model.json").is_file():
            tar.add(build / b / "models" / "model.json", arcname=f"results/{b}/model.json")
size = (out / "results.tar.gz").stat().st_size
print(f"summary: {out / 'summary.json'} (done: {S['done']}); results.tar.gz {size / 1e6:.1f} MB; "
      f"this command {S['this_command_s']} s")
PY
cat "$OUT/summary.md"
