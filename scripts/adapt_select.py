#!/usr/bin/env python
"""Choose the self-supervised adaptation's settings on a demo TEST volume, never on the real scan.

    python scripts/adapt_select.py --bundle bundles/res_unet --loss sure --lr 3e-5 1e-4 --flips 1 2 \
        --steps 100 300 1000 --conditions gaussian-0.03 gaussian-0.05 --out docs/adapt_select.json

Runs the trained bundle's own ``inference.json`` (file in, file out: ``mriae.compare.real_scan.run_bundle``)
with ``adapt_loss`` / ``adapt_lr`` / ``adapt_steps`` / ``flips`` / ``adapt_schedule`` /
``adapt_batch_size`` / ``adapt_crop`` (and ``adapt_cuda_graph`` / ``adapt_seconds`` when asked) set to each point of the grid on one volume of the demo cohort's test split (default: its first subject, ``heldout-000``,
a template release never used to make the training subjects), under the real-scan protocol's
corruptions and scoring, and prints the grid point with the highest mean PSNR over the conditions.
That point is then the one to run on the real scan (``scripts/real_scan.py``), so the real scan does
not choose it.
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import tempfile
from pathlib import Path

import nibabel as nib
import numpy as np


def demo_test_volume(datalist: Path, subject: str | None) -> tuple[str, np.ndarray]:
    """``(subject, volume)`` of the datalist's test split (its first subject unless named)."""
    from mriae.errors import InputError

    records = json.loads(datalist.read_text())["test"]
    if subject is not None:
        records = [r for r in records if r["subject"] == subject]
    if not records:
        raise InputError(f"{datalist}: no test subject {subject!r}")
    r = records[0]
    return r["subject"], np.load(datalist.parent / r["image"]).astype(np.float32)


def parse_also(specs: list[str]) -> list[list[tuple[str, str]]]:
    """``--also KEY=V1|V2`` options as, per key, its ``(key, JSON text)`` choices (a value that is not
    JSON is a string)."""
    from mriae.errors import InputError

    out = []
    for spec in specs:
        key, sep, values = spec.partition("=")
        if not sep or not key or not values:
            raise InputError(f"--also {spec!r}: KEY=VALUE1|VALUE2 (an inference.json key, e.g. "
                             "inferer#adapt_kwargs#probe=gaussian|rademacher)")
        choices = []
        for v in values.split("|"):
            try:
                choices.append((key, json.dumps(json.loads(v))))
            except json.JSONDecodeError:
                choices.append((key, json.dumps(v)))
        out.append(choices)
    return out


def point_overrides(point: tuple | None, loss: str, cuda_graph: bool | None = None, seconds: float = 0.0) -> dict:
    """A grid point ``(lr, steps, flips, schedule, batch size, crop[, extra])`` as ``inference.json``
    overrides (``None``: no adaptation; ``extra``: ``(key, JSON text)`` pairs of ``--also``);
    ``seconds`` > 0 also bounds each adaptation's time. The batch and crop are always given, never
    left to the bundle's defaults, so a row says what ran."""
    if point is None:
        return {}
    lr, steps, flips, schedule, batch, crop, *rest = point
    extra = {k: json.loads(v) for k, v in (rest[0] if rest else ())}
    return {"adapt_loss": loss, "adapt_lr": lr, "adapt_steps": steps,
            **({"flips": flips} if flips != 1 else {}),
            **({"adapt_schedule": schedule} if schedule != "constant" else {}),
            "adapt_batch_size": batch, "adapt_crop": crop,
            **({"adapt_cuda_graph": bool(cuda_graph)} if cuda_graph is not None else {}),
            **({"adapt_seconds": seconds} if seconds > 0 else {}), **extra}


def main(argv=None) -> int:
    import mriae
    from mriae.compare.real_scan import corrupt, reference, run_bundle, score
    from mriae.config import bundle_config
    from mriae.errors import UserError
    from mriae.prepare.pipeline import ensure_datalist

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bundle", default="bundles/res_unet", help="a trained bundle's root")
    ap.add_argument("--dataset-dir", default=None, help="demo cohort (default: the bundle's training data)")
    ap.add_argument("--subject", default=None)
    ap.add_argument("--loss", default="sure")
    ap.add_argument("--lr", type=float, nargs="+", default=[3e-5, 1e-4])
    ap.add_argument("--steps", type=int, nargs="+", default=[100, 300, 1000])
    ap.add_argument("--flips", type=int, nargs="+", default=[1],
                    help="test-time flip ensembles (inference.json's flips) to try with each adaptation")
    ap.add_argument("--schedules", nargs="+", default=["constant"], choices=["constant", "cosine"],
                    help="learning-rate schedules of the adaptation (inference.json's adapt_schedule) to try")
    ap.add_argument("--batch-sizes", type=int, nargs="+", default=None,
                    help="crops per adaptation step (inference.json's adapt_batch_size) to try "
                         "(default: the bundle's inference.json)")
    ap.add_argument("--crops", type=int, nargs="+", default=None,
                    help="in-plane crop sizes of the adaptation (inference.json's adapt_crop) to try "
                         "(default: the bundle's inference.json)")
    ap.add_argument("--cuda-graph", action=argparse.BooleanOptionalAction, default=None,
                    help="replay the adaptation steps from a CUDA graph or not (inference.json's adapt_cuda_graph; "
                         "default: the bundle's)")
    ap.add_argument("--seconds", type=float, default=0.0,
                    help="also bound each adaptation's time (inference.json's adapt_seconds; whichever of it "
                         "and --steps ends first)")
    ap.add_argument("--also", action="append", default=[], metavar="KEY=V1|V2",
                    help="also try these values of another inference.json key (JSON, or a string), e.g. "
                         "inferer#adapt_kwargs#probe=gaussian|rademacher; repeatable")
    ap.add_argument("--conditions", nargs="+", default=["gaussian-0.03", "gaussian-0.05"])
    ap.add_argument("--device", default=None)
    ap.add_argument("--out", default=None, help="JSON of every grid point's scores")
    args = ap.parse_args(argv)
    try:
        train = bundle_config(args.bundle)
        infer = bundle_config(args.bundle, Path(args.bundle) / "configs" / "inference.json")
        batch_sizes = args.batch_sizes or [int(infer["adapt_batch_size"])]
        crops = args.crops or [int(infer["adapt_crop"])]
        data_dir = args.dataset_dir or f"{mriae.default_data_dir()}/demo-heads"
        datalist = Path(ensure_datalist(data_dir, train.get("plan")))
        subject, vol = demo_test_volume(datalist, args.subject)
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / f"{subject}.nii.gz"
            nib.save(nib.Nifti1Image(vol, np.eye(4)), path)  # the prepared 1 mm grid
            ref = reference(path)
        # a grid point: (lr, steps, flips, schedule, batch size, crop, extra keys); None is no adaptation
        extras = [tuple(e) for e in itertools.product(*parse_also(args.also))]
        grid = [None] + [
            (lr, n, f, sc, b, c, e) for lr in args.lr for n in args.steps for f in args.flips for sc in args.schedules
            for b in batch_sizes for c in crops for e in extras
        ]

        rows, psnr = [], {point: [] for point in grid}
        for cond in args.conditions:
            noisy = corrupt(ref["volume"], cond)
            for point in grid:
                over = point_overrides(point, args.loss, args.cuda_graph, args.seconds)
                out, info = run_bundle(args.bundle, noisy, ref["affine"], over, device=args.device)
                row = {"condition": cond, **over, **score(out, ref), "seconds": info["seconds"],
                       "adaptation": info.get("adaptation")}
                rows.append(row)
                psnr[point].append(row["psnr"])
                print(f"{cond:14s} {json.dumps(over):70s} {row['psnr']:6.2f} dB  ssim {row['ssim']:.4f}  "
                      f"{row['seconds']:.1f} s" + (f"  ({a['steps']} steps in {a['seconds']} s)"
                                                   if (a := row["adaptation"]) else ""), flush=True)

        def mean_psnr(point):
            return float(np.mean(psnr[point]))

        best = max(grid[1:], key=mean_psnr)
        result = {"bundle": str(args.bundle), "volume": f"{datalist}:{subject}", "loss": args.loss,
                  "conditions": args.conditions, "rows": rows,
                  "mean_psnr": {("none" if p is None else
                                 "lr={:g} steps={} flips={} schedule={} batch={} crop={}".format(*p[:6])
                                 + "".join(f" {k}={v}" for k, v in p[6])):
                                mean_psnr(p) for p in grid},
                  "selected": {**point_overrides(best, args.loss, args.cuda_graph, args.seconds),
                               "flips": best[2], "adapt_schedule": best[3]}}
        print("selected", json.dumps(result["selected"]), "mean PSNR", round(mean_psnr(best), 2),
              "without adaptation", round(mean_psnr(None), 2))
        if args.out:
            Path(args.out).parent.mkdir(parents=True, exist_ok=True)
            Path(args.out).write_text(json.dumps(result, indent=2))
    except UserError as e:
        print(f"adapt_select: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
