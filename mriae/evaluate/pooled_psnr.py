"""Two ways of averaging PSNR over a test set, over two regions, for a bundle that scores zero-padded
slices (conv_ae: S2's coronal slices centred in 176x176 zeros).

    python -m mriae.evaluate.pooled_psnr --bundle bundles/conv_ae [--dataset-dir data/demo]

For the clean input and each condition of the bundle's ``evaluate.json`` (the same corrupted slices:
``mriae.data.corruption.corrupt_items`` with the bundle's seed) it prints and returns

- ``mean_psnr_padded``: the mean over slices of each slice's PSNR over the whole padded image (what
  ``evaluate.json`` reports);
- ``pooled_psnr_padded``: the PSNR of ONE MSE pooled over every pixel of every slice (the statistic of
  S2's report: ``20 log10(1 / sqrt(mean((x - y)^2)))`` over its validation set);
- ``mean_psnr_unpadded`` / ``pooled_psnr_unpadded``: the same over each slice's own pixels only,
  without the zero padding (which a network reconstructs almost exactly and which raises both);
- ``padding_fraction``: the share of padded pixels.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

import torch

from mriae.evaluate.metrics import psnr_from_mse

__all__ = ["pooled_psnr", "evaluate_bundle", "main"]


def pooled_psnr(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None = None) -> dict:
    """``{"mean_psnr", "pooled_psnr"}`` of ``pred`` against ``target`` (N, 1, H, W), over the pixels
    where ``mask`` (same shape, bool) is true (all pixels when None)."""
    err = (pred.float() - target.float()) ** 2
    m = torch.ones_like(err, dtype=torch.bool) if mask is None else mask.bool()
    per_slice = (err * m).flatten(1).sum(1) / m.flatten(1).sum(1).clamp_min(1)
    pooled = (err * m).sum() / m.sum().clamp_min(1)
    return {"mean_psnr": float(psnr_from_mse(per_slice).mean()), "pooled_psnr": float(psnr_from_mse(pooled))}


@torch.no_grad()
def evaluate_bundle(root: str | Path, dataset_dir: str | None = None, overrides: dict | None = None,
                    batch: int = 32) -> dict:
    """The table above for a trained bundle whose ``evaluate.json`` scores a ``CoronalSlabDataset``."""
    from mriae.config import bundle_config
    from mriae.data.corruption import corrupt_items
    from mriae.networks.checkpoint import load_weights

    root = Path(root)
    over = {"bundle_root": str(root), "use_mlflow": False, **(overrides or {})}
    if dataset_dir:
        over["dataset_dir"] = dataset_dir
    p = bundle_config(root, root / "configs" / "evaluate.json", overrides=over)
    net = load_weights(p.get_parsed_content("network_def"), root / "models" / "model.pt").eval()
    ds = p.get_parsed_content("validate#dataset")
    conds = {"clean": None, **p.get_parsed_content("eval_conditions")}
    seed = int(p.get_parsed_content("validate#evaluator#corruption_seed"))
    target = ds.images
    mask = ds.own_pixels()
    keys = list(ds.index)
    out = {"bundle": str(root), "n_slices": len(ds), "padding_fraction": float(1 - mask.float().mean()),
           "conditions": {}}
    for name, corr in conds.items():
        x = corrupt_items(corr, target, keys, seed)
        pred = torch.cat([net(x[i : i + batch]).float() for i in range(0, len(x), batch)])
        row = {}
        for region, m in (("padded", None), ("unpadded", mask)):
            r = pooled_psnr(pred, target, m)
            row[f"mean_psnr_{region}"], row[f"pooled_psnr_{region}"] = r["mean_psnr"], r["pooled_psnr"]
            if corr is not None:
                ri = pooled_psnr(x, target, m)
                row[f"input_mean_psnr_{region}"], row[f"input_pooled_psnr_{region}"] = ri["mean_psnr"], ri["pooled_psnr"]
        out["conditions"][name] = {k: round(v, 4) for k, v in row.items()}
    return out


def main(argv: Sequence[str] | None = None) -> int:
    from mriae.config import parse_overrides
    from mriae.errors import InputError, UserError

    ap = argparse.ArgumentParser(prog="python -m mriae.evaluate.pooled_psnr", description=__doc__.split("\n\n")[0])
    ap.add_argument("--bundle", required=True, help="a trained bundle (models/model.pt), e.g. bundles/conv_ae")
    ap.add_argument("--dataset-dir", help="the dataset its evaluate.json reads (default: the bundle's)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override")
    ap.add_argument("--out", help="also write the result to this JSON file")
    args = ap.parse_args(argv)
    try:
        ckpt = Path(args.bundle) / "models" / "model.pt"
        if not ckpt.is_file():
            raise InputError(f"{ckpt}: no trained weights")
        res = evaluate_bundle(args.bundle, args.dataset_dir, parse_overrides(args.set, "--set"))
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    text = json.dumps(res, indent=2)
    print(text)
    if args.out:
        from mriae.files import atomic_write_text

        atomic_write_text(Path(args.out), text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
