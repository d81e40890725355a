"""Is a dense-latent autoencoder's bottleneck alive? Encode a partition with a trained bundle and
report how much the latent code and the reconstruction vary between inputs.

    python -m mriae.latent_check --bundle bundles/cae_3d --partition test

A bottleneck that has died (e.g. S1's sigmoid latent with every unit saturated at 0 or 1) gives
the same code, hence the same reconstruction, for every input: ``latent_spread`` ~ 0 and
``output_spread`` ~ 0 while ``input_spread`` is not. Works for the bundles whose network has
``encode`` (cae_2d, cae_3d, ae_2d, vae_2d; the VAE's code is its mean).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

import torch

from .errors import InputError, UserError

__all__ = ["latent_stats", "main"]


@torch.no_grad()
def latent_stats(net: torch.nn.Module, x: torch.Tensor, batch: int = 8, eps: float = 1e-3) -> dict:
    """Spread across inputs (mean over positions / units of the std over inputs) of the input, the
    latent code and the reconstruction, and the fraction of code values within ``eps`` of 0 or 1."""
    if not hasattr(net, "encode"):
        raise InputError(f"{type(net).__name__} has no encode(): not a dense-latent autoencoder")
    dev = next(net.parameters()).device
    zs, ys = [], []
    for i in range(0, len(x), batch):
        xb = x[i : i + batch].to(dev)
        z = net.encode(xb)
        zs.append((z[0] if isinstance(z, tuple) else z).flatten(1).float().cpu())
        ys.append(net(xb).float().cpu())
    z, y = torch.cat(zs), torch.cat(ys)
    return {
        "n": len(x),
        "latent_size": int(z.shape[1]),
        "input_spread": float(x.float().std(0).mean()),
        "latent_spread": float(z.std(0).mean()),
        "output_spread": float(y.std(0).mean()),
        "latent_saturated_fraction": float(((z < eps) | (z > 1 - eps)).float().mean()),
        "latent_mean": float(z.mean()),
    }


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m mriae.latent_check", description=__doc__.split("\n\n")[0])
    ap.add_argument("--bundle", required=True, help="bundle folder with models/model.pt")
    ap.add_argument("--partition", default="test", choices=["training", "validation", "test"])
    ap.add_argument("--dataset-dir", help="default: the bundle's dataset_dir")
    ap.add_argument("--set", action="append", default=[], metavar="ID=JSON", help="config override")
    ap.add_argument("--device", default="cuda:0" if torch.cuda.is_available() else "cpu")
    args = ap.parse_args(argv)
    from .bundle_tools import BundleHandle, parse_sets

    over = parse_sets(args.set)
    if args.dataset_dir:
        over["dataset_dir"] = args.dataset_dir
    try:
        ckpt = Path(args.bundle) / "models" / "model.pt"
        if not ckpt.is_file():  # BundleHandle would go on with an untrained network
            raise InputError(f"{ckpt}: no trained weights")
        h = BundleHandle(args.bundle, over)
        stats = latent_stats(h.network(args.device), h.dataset(args.partition).images)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(json.dumps({"bundle": str(h.root), "partition": args.partition, **stats}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
