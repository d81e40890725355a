"""Intermediate-layer visualisation (S3): the feature maps of every encoder and decoder stage of a
bundle's network for one chosen slice, as a figure, logged to MLflow.

    python -m mriae.tools.visualize --bundle bundles/ae_2d --slice 10                  # test item 10
    python -m mriae.tools.visualize --bundle bundles/conv_ae --subject heldout-000 --slice 64 --channels 12

Works for every network whose ``encoder`` and ``decoder`` are ``nn.Sequential`` of stages (CAE,
ConvAE, SimpleAE / SimpleVAE, and any 2D bundle built the same way); for 3D feature maps it shows
the middle depth. One row per stage: the input, then up to ``--channels`` channels of each stage
(highest mean activation first), then the reconstruction. Writes ``<out>/features_<subject>_<slice>.png``
and the raw maps (``.npz``); logs both to the bundle's MLflow experiment unless ``--no-mlflow``.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from mriae.config import parse_overrides
from mriae.tools.bundle import BundleHandle, log_artifacts

__all__ = ["feature_maps", "feature_figure", "main"]


def feature_maps(
    net: torch.nn.Module, x: torch.Tensor
) -> tuple[list[tuple[str, torch.Tensor]], torch.Tensor]:
    """``([(stage name, output (C, *spatial)), ...], reconstruction)`` for one input ``x`` (1, C, *spatial)."""
    stages = []
    for part in ("encoder", "decoder"):
        seq = getattr(net, part, None)
        if not isinstance(seq, torch.nn.Sequential):
            raise TypeError(f"{type(net).__name__} has no nn.Sequential '{part}' of stages to visualise")
        stages += [(f"{part}.{i}", m) for i, m in enumerate(seq)]
    maps: list[tuple[str, torch.Tensor]] = []
    hooks = [
        m.register_forward_hook(lambda _m, _i, o, n=name: maps.append((n, o[0].detach().float().cpu())))
        for name, m in stages
    ]
    try:
        with torch.no_grad():
            y = net(x)
    finally:
        for h in hooks:
            h.remove()
    return maps, y[0].detach().float().cpu()


def _plane(t: torch.Tensor) -> np.ndarray:
    """A 2D view of (*spatial): itself in 2D, the middle depth in 3D."""
    a = t.numpy()
    while a.ndim > 2:
        a = a[a.shape[0] // 2]
    return a


def feature_figure(
    x: torch.Tensor,
    maps: Sequence[tuple[str, torch.Tensor]],
    recon: torch.Tensor,
    path: str | Path,
    title: str = "",
    channels: int = 8,
) -> Path:
    from mriae.figures.plots import plt, save_figure

    rows = len(maps) + 2
    fig, axes = plt.subplots(rows, channels, figsize=(1.5 * channels, 1.55 * rows), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    axes[0, 0].imshow(_plane(x[0, 0].cpu()), cmap="gray", vmin=0, vmax=1)
    axes[0, 0].set_title("input", fontsize=7)
    for r, (name, fm) in enumerate(maps, start=1):
        order = fm.flatten(1).mean(1).argsort(descending=True)[:channels]
        for c, ch in enumerate(order.tolist()):
            axes[r, c].imshow(_plane(fm[ch]), cmap="viridis")
            axes[r, c].set_title(f"{name} ch{ch} {tuple(fm.shape[1:])}" if c == 0 else f"ch{ch}", fontsize=6)
    axes[-1, 0].imshow(_plane(recon[0]), cmap="gray", vmin=0, vmax=1)
    axes[-1, 0].set_title("reconstruction", fontsize=7)
    fig.suptitle(title, fontsize=9)
    save_figure(fig, Path(path))
    return Path(path)


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m mriae.tools.visualize", description=__doc__.split("\n\n")[0])
    ap.add_argument("--bundle", required=True, help="bundle folder, e.g. bundles/ae_2d")
    ap.add_argument(
        "--slice",
        type=int,
        required=True,
        help="item index in the partition, or the slice number of --subject",
    )
    ap.add_argument("--subject", help="pick the slice of this subject (slice number as in the data)")
    ap.add_argument("--partition", default="test", choices=("training", "validation", "test"))
    ap.add_argument("--channels", type=int, default=8, help="channels shown per stage")
    ap.add_argument("--ckpt", help="weights (default <bundle>/models/model.pt)")
    ap.add_argument("--dataset_dir", help="prepared data folder (default: the bundle's, i.e. the demo)")
    ap.add_argument("--set", action="append", default=[], metavar="ID=JSON", help="config override")
    ap.add_argument("--out", help="output folder (default <bundle>/outputs/visualize)")
    ap.add_argument("--tracking_uri")
    ap.add_argument("--no-mlflow", action="store_true")
    a = ap.parse_args(argv)
    over = parse_overrides(a.set, "--set")
    if a.dataset_dir:
        over["dataset_dir"] = a.dataset_dir
    h = BundleHandle(a.bundle, over, a.ckpt)
    net = h.network()
    item = h.item(a.partition, a.slice, a.subject)
    x = torch.as_tensor(item["image"])[None].float()
    maps, recon = feature_maps(net, x)
    out = Path(a.out or h.root / "outputs" / "visualize")
    stem = f"features_{item['subject']}_{int(item['slice'])}"
    fig = feature_figure(
        x,
        maps,
        recon,
        out / f"{stem}.png",
        f"{h.name}: {item['subject']} slice {int(item['slice'])}",
        a.channels,
    )
    npz = out / f"{stem}.npz"
    np.savez_compressed(
        npz, **{n: m.numpy() for n, m in maps}, input=x[0].numpy(), reconstruction=recon.numpy()
    )
    print(f"wrote {fig}")
    for n, m in maps:
        print(f"  {n:<12} {tuple(m.shape)}")
    if not a.no_mlflow:
        log_artifacts(
            [fig, npz],
            h.name,
            f"{h.name}-visualize-{stem}",
            {"subject": item["subject"], "slice": int(item["slice"]), "checkpoint": str(h.ckpt)},
            a.tracking_uri,
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
