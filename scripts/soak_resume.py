#!/usr/bin/env python
"""Soak the crash-resume path: a small training of a bundle killed with SIGKILL ``--kills`` times at
random moments and resumed with ``--resume True`` must end with the weights and history of the same
training run without interruption.

    python scripts/soak_resume.py --kills 20                      # res_unet, S4's recipe, data/demo
    python scripts/soak_resume.py --kills 20 --recipe none --dataset-dir data/demo-heads   # the denoiser

Prints one line per phase and the largest weight difference; exits 1 when they differ.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def main() -> int:
    from mriae.config import bundle_config, bundle_files
    from mriae.prepare.pipeline import ensure_datalist
    from mriae.train.resume import kill_and_resume

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--kills", type=int, default=20)
    ap.add_argument("--bundle", default="res_unet")
    ap.add_argument("--recipe", default="s4", help="configs/<recipe>.json merged over train.json ('none': train.json)")
    ap.add_argument("--dataset-dir", default=str(REPO / "data" / "demo"))
    ap.add_argument("--epochs", type=int, default=6)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--max-delay", type=float, default=4.0, help="seconds after the first checkpoint")
    args = ap.parse_args()
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    src = REPO / "bundles" / args.bundle
    files = [Path(f) for f in bundle_files(src, recipe=None if args.recipe == "none" else args.recipe)]
    plan = bundle_config(src, recipe=None if args.recipe == "none" else args.recipe).get("plan")
    dataset = Path(ensure_datalist(args.dataset_dir, plan)).parent
    tmp = Path(tempfile.mkdtemp(prefix="soak-"))

    def cmd(root: Path, *extra: str) -> list[str]:
        cfg = str([str(root / "configs" / f.name) for f in files])
        return [sys.executable, "-m", "monai.bundle", "run", "training", "--config_file", cfg, "--bundle_root",
                str(root), "--dataset_dir", str(dataset), "--use_mlflow", "False", "--train#trainer#max_epochs",
                str(args.epochs), "--max_slices_per_subject", "6", "--batch_size", "4", *extra]  # fmt: skip

    roots = {}
    for name in ("plain", "killed"):
        roots[name] = tmp / name / args.bundle
        shutil.copytree(src, roots[name], ignore=shutil.ignore_patterns("models", "eval", "outputs"))
    t = time.time()
    subprocess.run(cmd(roots["plain"]), check=True, capture_output=True, env=env)
    print(f"[soak] uninterrupted: {time.time() - t:.0f} s", flush=True)
    t = time.time()
    kills = kill_and_resume(cmd(roots["killed"], "--resume", "True"), roots["killed"] / "models" / "resume",
                            kills=args.kills, seed=args.seed, max_delay=args.max_delay, env=env)  # fmt: skip
    print(f"[soak] {kills} kills and resumes: {time.time() - t:.0f} s", flush=True)
    a, b = (torch.load(r / "models" / "model.pt", weights_only=True) for r in (roots["plain"], roots["killed"]))
    diff = max(float((a[k].float() - b[k].float()).abs().max()) for k in a)
    ha, hb = (json.loads((r / "outputs" / "training" / "history.json").read_text()) for r in roots.values())
    same_history = len(ha["train_loss"]) == len(hb["train_loss"]) and all(
        abs(x - y) <= 1e-4 * max(abs(x), 1e-12) for x, y in zip(ha["train_loss"], hb["train_loss"], strict=True)
    )
    ok = a.keys() == b.keys() and diff <= 1e-5 and same_history
    print(f"[soak] largest weight difference {diff:.3g}; history {'equal' if same_history else 'DIFFERS'}; "
          f"{'PASS' if ok else 'FAIL'} ({tmp})")  # fmt: skip
    if ok:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
