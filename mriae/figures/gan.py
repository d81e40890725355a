"""Figures of the GAN bundles: sample grids (slices, or three middle planes of volumes) and curves."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch

from mriae.figures.plots import plt, save_figure

__all__ = ["sample_grid", "plot_gan_curves", "middle_planes"]


def _tiles(x: torch.Tensor) -> list[np.ndarray]:
    """One 2D picture per sample: the slice itself, or a volume's three middle planes side by side."""
    x = torch.as_tensor(x).float().cpu()
    if x.ndim == 4:
        return [s[0].numpy() for s in x]
    sag, axi, cor = (p[:, 0].numpy() for p in middle_planes(x))
    # display only: axial with anterior up, coronal with superior up (RIA storage)
    return [np.concatenate([sag[i], np.flipud(axi[i].T), cor[i].T], axis=1) for i in range(x.shape[0])]


def sample_grid(x: torch.Tensor, path: str | Path, title: str = "") -> None:
    """Grid of samples ``(N, 1, H, W)`` (8 per row) or volumes ``(N, 1, D, H, W)`` (one row of three
    middle planes per volume: sagittal, axial, coronal in RIA storage)."""
    tiles = _tiles(x)
    cols = 8 if x.ndim == 4 else 2
    rows = math.ceil(len(tiles) / cols)
    aspect = tiles[0].shape[1] / tiles[0].shape[0]
    fig, axes = plt.subplots(rows, cols, figsize=(1.3 * cols * aspect, 1.3 * rows + 0.4), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, t in zip(axes.flat, tiles):
        ax.imshow(t, cmap="gray", vmin=0, vmax=1)
    fig.suptitle(title, fontsize=9)
    fig.subplots_adjust(wspace=0.02, hspace=0.02)
    save_figure(fig, Path(path))


def plot_gan_curves(history: list[dict], path: str | Path) -> None:
    """Panels: losses; critic (Wasserstein estimate, gradient penalty); the critic's gradient norm at
    x_hat (WGAN-GP); diversity; fidelity."""
    ep = np.array([h["epoch"] for h in history])

    def col(k):
        return np.array([h.get(k, np.nan) for h in history], dtype=float)

    panels = [
        ("losses", ["train_g_loss", "train_d_loss"]),
        ("critic", ["train_wasserstein", "train_gp", "train_d_real", "train_d_fake"]),
        ("critic gradient norm at x_hat (1: 1-Lipschitz)", ["train_grad_norm"]),
        ("diversity (pairwise MS-SSIM)", ["gen_msssim", "real_msssim"]),
        ("Frechet distance (AE features)", ["fd"]),
        ("MMD (AE features)", ["mmd", "mmd_rbf"]),
    ]
    fig, axes = plt.subplots(1, len(panels), figsize=(4 * len(panels), 3.2), squeeze=False)
    for ax, (title, keys) in zip(axes[0], panels):
        for k in keys:
            y = col(k)
            if np.isfinite(y).any():
                ax.plot(ep, y, "o-", ms=3, label=k)
        ax.set(title=title, xlabel="epoch")
        if keys == ["train_grad_norm"] and ax.lines:
            ax.axhline(1.0, color="k", lw=0.8, ls="--")
        if ax.lines:
            ax.legend(fontsize=7)
    save_figure(fig, Path(path))


def middle_planes(x: torch.Tensor) -> list[torch.Tensor]:
    """Middle slices of volumes ``(B, C, D, H, W)`` across each axis: ``[(B, C, H, W), (B, C, D, W),
    (B, C, D, H)]`` (in RIA storage: sagittal, axial, coronal)."""
    d, h, w = x.shape[-3:]
    return [x[:, :, d // 2], x[:, :, :, h // 2], x[:, :, :, :, w // 2]]
