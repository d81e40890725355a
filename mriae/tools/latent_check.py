"""Is a dense-latent autoencoder's bottleneck alive? Encode a partition with a trained bundle and
report how much the latent code and the reconstruction vary between inputs.

    python -m mriae.tools.latent_check --bundle bundles/cae_3d --partition test

A bottleneck that has died (e.g. S1's sigmoid latent with every unit saturated at 0 or 1) gives
the same code, hence the same reconstruction, for every input: ``latent_spread`` ~ 0 and
``output_spread`` ~ 0 while ``input_spread`` is not. It also feeds every input again with Gaussian
noise (``noise_std``, seeded, clipped to [0, 1]): ``noise_output_change`` is the mean absolute change
of the reconstruction, beside ``noise_input_change`` of the input (a dead bottleneck: 0). Works for
the bundles whose network has ``encode`` (cae_2d, cae_3d, ae_2d, vae_2d; the VAE's code is its mean).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

import torch

from mriae.errors import InputError, UserError

__all__ = ["latent_stats", "LatentCheck", "main"]


@torch.no_grad()
def latent_stats(
    net: torch.nn.Module,
    x: torch.Tensor,
    batch: int = 8,
    eps: float = 1e-3,
    noise_std: float = 0.1,
    seed: int = 0,
) -> dict:
    """Spread across inputs (mean over positions / units of the std over inputs) of the input, the
    latent code and the reconstruction, the fraction of code values within ``eps`` of 0 or 1, and the
    mean absolute change of input and reconstruction when Gaussian noise ``noise_std`` is added."""
    net = getattr(net, "module", net)  # DistributedDataParallel's module (multi_gpu_train.json)
    if not hasattr(net, "encode"):
        raise InputError(f"{type(net).__name__} has no encode(): not a dense-latent autoencoder")
    dev = next(net.parameters()).device
    g = torch.Generator().manual_seed(seed)
    zs, ys, dy, dx = [], [], 0.0, 0.0
    for i in range(0, len(x), batch):
        xb = x[i : i + batch].float()
        noisy = (xb + noise_std * torch.randn(xb.shape, generator=g)).clamp(0, 1)
        z = net.encode(xb.to(dev))
        zs.append((z[0] if isinstance(z, tuple) else z).flatten(1).float().cpu())
        ys.append(net(xb.to(dev)).float().cpu())
        dy += float((net(noisy.to(dev)).float().cpu() - ys[-1]).abs().flatten(1).mean(1).sum())
        dx += float((noisy - xb).abs().flatten(1).mean(1).sum())
    z, y = torch.cat(zs), torch.cat(ys)
    return {
        "n": len(x),
        "latent_size": int(z.shape[1]),
        "input_spread": float(x.float().std(0).mean()),
        "latent_spread": float(z.std(0).mean()),
        "output_spread": float(y.std(0).mean()),
        "latent_saturated_fraction": float(((z < eps) | (z > 1 - eps)).float().mean()),
        "latent_mean": float(z.mean()),
        "noise_std": noise_std,
        "noise_input_change": dx / len(x),
        "noise_output_change": dy / len(x),
    }


class LatentCheck:
    """Ignite handler for a validator: after each validation run, ``latent_stats`` of ``network`` on the
    volumes (or slices) of ``dataset`` go into ``engine.state.metrics`` as ``<prefix>code_saturated``,
    ``<prefix>code_spread``, ``<prefix>output_spread`` and ``<prefix>noise_output_change``, so the
    training history (and MLflow) shows when a code saturates or stops depending on the input."""

    main_process_only = True  # writes files: under torchrun only rank 0 runs it (train.distributed.main_only)

    def __init__(
        self, network: torch.nn.Module, dataset, prefix: str = "val_", noise_std: float = 0.1
    ) -> None:
        self.network, self.dataset, self.prefix, self.noise_std = network, dataset, prefix, noise_std

    def attach(self, engine) -> None:
        from ignite.engine import Events

        engine.add_event_handler(Events.EPOCH_COMPLETED, self)

    def __call__(self, engine) -> None:
        was_training = self.network.training
        self.network.eval()
        try:
            s = latent_stats(self.network, self.dataset.images, noise_std=self.noise_std)
        finally:
            self.network.train(was_training)
        for key, name in (
            ("latent_saturated_fraction", "code_saturated"),
            ("latent_spread", "code_spread"),
            ("output_spread", "output_spread"),
            ("noise_output_change", "noise_output_change"),
        ):
            engine.state.metrics[self.prefix + name] = s[key]


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m mriae.tools.latent_check", description=__doc__.split("\n\n")[0])
    ap.add_argument("--bundle", required=True, help="bundle folder with models/model.pt")
    ap.add_argument("--partition", default="test", choices=["training", "validation", "test"])
    ap.add_argument("--dataset-dir", help="default: the bundle's dataset_dir")
    ap.add_argument("--set", action="append", default=[], metavar="ID=JSON", help="config override")
    ap.add_argument("--device", default="cuda:0" if torch.cuda.is_available() else "cpu")
    args = ap.parse_args(argv)
    from mriae.config import parse_overrides
    from mriae.tools.bundle import BundleHandle

    over = parse_overrides(args.set, "--set")
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
