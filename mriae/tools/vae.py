"""S3's generative uses of a trained VAE bundle: sample new slices from the prior, and interpolate
between two encoded slices.

    python -m mriae.tools.vae sample --bundle bundles/vae_2d --n 16 --seed 0
    python -m mriae.tools.vae interpolate --bundle bundles/vae_2d --slices 3 40 --steps 8

``sample`` decodes ``z ~ N(0, I)``; ``interpolate`` encodes two slices of a partition (their means
``mu``), decodes ``(1 - t) mu_a + t mu_b`` for ``steps`` values of ``t`` in [0, 1]. Both write a PNG
grid and the images as ``.npy`` into ``--out`` (default ``<bundle>/outputs/vae``), and log them
to MLflow unless ``--no-mlflow``. Any bundle whose network has ``encode`` / ``decode`` works
(the AE bundles interpolate too; sampling a plain AE's latent is not meaningful and is refused).
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from mriae.config import parse_overrides
from mriae.tools.bundle import BundleHandle, log_artifacts
from mriae.errors import InputError

__all__ = ["sample", "interpolate", "grid_figure", "main"]


def _latent(z):
    return z[0] if isinstance(z, tuple) else z


@torch.no_grad()
def sample(net: torch.nn.Module, n: int, seed: int = 0) -> torch.Tensor:
    """``n`` images decoded from the standard-normal prior: (n, C, *spatial)."""
    if not getattr(net, "variational", False):
        raise InputError(f"{type(net).__name__} is not variational: its latent has no prior to sample")
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n, net.latent_size, generator=g)
    return net.decode(z.to(next(net.parameters()).device)).float().cpu()


@torch.no_grad()
def interpolate(net: torch.nn.Module, a: torch.Tensor, b: torch.Tensor, steps: int = 8) -> torch.Tensor:
    """Decode ``steps`` points on the line between the latents (means) of images ``a`` and ``b`` (C, *spatial)."""
    dev = next(net.parameters()).device
    za, zb = (_latent(net.encode(t[None].float().to(dev))) for t in (a, b))
    t = torch.linspace(0, 1, steps, device=dev)[:, None]
    return net.decode((1 - t) * za + t * zb).float().cpu()


def grid_figure(
    images: torch.Tensor,
    path: str | Path,
    title: str = "",
    ncols: int = 8,
    labels: Sequence[str] | None = None,
) -> Path:
    from mriae.figures.plots import plt, save_figure

    n = images.shape[0]
    ncols = min(ncols, n)
    nrows = -(-n // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(1.7 * ncols, 1.8 * nrows), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for i in range(n):
        ax = axes[i // ncols, i % ncols]
        ax.imshow(images[i, 0].numpy(), cmap="gray", vmin=0, vmax=1)
        if labels:
            ax.set_title(labels[i], fontsize=7)
    fig.suptitle(title, fontsize=9)
    save_figure(fig, Path(path))
    return Path(path)


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m mriae.tools.vae", description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    for name in ("sample", "interpolate"):
        p = sub.add_parser(name)
        p.add_argument("--bundle", required=True, help="bundle folder, e.g. bundles/vae_2d")
        p.add_argument("--ckpt", help="weights (default <bundle>/models/model.pt)")
        p.add_argument("--out", help="output folder (default <bundle>/outputs/vae)")
        p.add_argument("--set", action="append", default=[], metavar="ID=JSON", help="config override")
        p.add_argument("--tracking_uri")
        p.add_argument("--no-mlflow", action="store_true")
        if name == "sample":
            p.add_argument("--n", type=int, default=16)
            p.add_argument("--seed", type=int, default=0)
        else:
            p.add_argument(
                "--slices",
                type=int,
                nargs=2,
                required=True,
                metavar=("A", "B"),
                help="two item indices of the partition",
            )
            p.add_argument("--partition", default="test", choices=("training", "validation", "test"))
            p.add_argument("--steps", type=int, default=8)
            p.add_argument("--dataset_dir", help="prepared data folder (default: the bundle's)")
    a = ap.parse_args(argv)
    over = parse_overrides(a.set, "--set")
    if getattr(a, "dataset_dir", None):
        over["dataset_dir"] = a.dataset_dir
    h = BundleHandle(a.bundle, over, a.ckpt)
    net = h.network()
    out = Path(a.out or h.root / "outputs" / "vae")
    if a.cmd == "sample":
        imgs = sample(net, a.n, a.seed)
        stem, params = f"samples_seed{a.seed}", {"n": a.n, "seed": a.seed}
        fig = grid_figure(
            imgs, out / f"{stem}.png", f"{h.name}: {a.n} samples from the prior (seed {a.seed})"
        )
    else:
        ds = h.dataset(a.partition)
        ia, ib = (ds[i] for i in a.slices)
        imgs = interpolate(net, ia["image"], ib["image"], a.steps)
        stem = f"interp_{ia['subject']}_{int(ia['slice'])}_{ib['subject']}_{int(ib['slice'])}"
        params = {
            "a": f"{ia['subject']}:{int(ia['slice'])}",
            "b": f"{ib['subject']}:{int(ib['slice'])}",
            "steps": a.steps,
        }
        labels = [f"t={t:.2f}" for t in np.linspace(0, 1, a.steps)]
        fig = grid_figure(
            imgs, out / f"{stem}.png", f"{h.name}: {params['a']} -> {params['b']}", labels=labels
        )
    npy = out / f"{stem}.npy"
    np.save(npy, imgs.numpy())
    print(f"wrote {fig} and {npy} {tuple(imgs.shape)}")
    if not a.no_mlflow:
        log_artifacts(
            [fig, npy], h.name, f"{h.name}-{a.cmd}", {**params, "checkpoint": str(h.ckpt)}, a.tracking_uri
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
