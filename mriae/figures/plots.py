"""Figures and tables: loss / metric curves, per-case reconstruction figures, summary tables."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from mriae.files import atomic_write  # noqa: E402

__all__ = ["plot_curves", "case_figure", "summary_table"]


def save_figure(fig, path: str | Path) -> None:
    """Write a matplotlib figure atomically (110 dpi, tight) and close it."""
    try:
        atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=110, bbox_inches="tight"))
    finally:
        plt.close(fig)


def plot_curves(history: dict, path: str | Path, metrics=("val_loss",)) -> None:
    """Training loss and validation metrics per epoch, one panel each."""
    val = history.get("validation", [])
    keys = [m for m in metrics if any(m in v for v in val)]
    fig, axes = plt.subplots(1, 1 + len(keys), figsize=(4.2 * (1 + len(keys)), 3.4), squeeze=False)
    ax = axes[0, 0]
    ep = np.arange(1, len(history.get("train_loss", [])) + 1)
    ax.plot(ep, history.get("train_loss", []), "o-", label="train")
    if any("val_loss" in v for v in val):
        ax.plot(
            np.arange(1, len(val) + 1), [v.get("val_loss", np.nan) for v in val], "s-", label="validation"
        )
    ax.set(title="loss", xlabel="epoch")
    ax.legend()
    for ax, k in zip(axes[0, 1:], keys):
        ax.plot(np.arange(1, len(val) + 1), [v.get(k, np.nan) for v in val], "o-")
        ax.set(title=k, xlabel="epoch")
    save_figure(fig, Path(path))


def case_figure(subject: str, case: dict, path: str | Path) -> None:
    """Rows: conditions; columns: clean input, network input (corrupted), reconstruction, |residual|."""
    conds = list(case["images"])
    target = case["target"]
    fig, axes = plt.subplots(len(conds), 4, figsize=(10, 2.6 * len(conds)), squeeze=False)
    for r, cond in enumerate(conds):
        x, y = case["images"][cond]
        panels = [
            (target, "clean"),
            (x, f"input: {cond}"),
            (y, "reconstruction"),
            (np.abs(y - target), "|recon - clean|"),
        ]
        for c, (img, title) in enumerate(panels):
            ax = axes[r, c]
            ax.imshow(img, cmap="gray" if c < 3 else "magma", vmin=0, vmax=1 if c < 3 else 0.25)
            ax.set_title(title, fontsize=9)
            ax.axis("off")
    fig.suptitle(f"{subject}, slice {case['slice']}", fontsize=10)
    save_figure(fig, Path(path))


def summary_table(summary: dict, metrics=("psnr", "ssim", "mse")) -> str:
    """Markdown table: reconstruction next to the (corrupted) input, mean +- std over slices."""
    head = (
        "| condition | "
        + " | ".join(f"{m.upper()} recon | {m.upper()} input" for m in metrics)
        + " | slices |"
    )
    lines = [head, "|" + "---|" * (2 * len(metrics) + 2)]
    for cond, cols in summary.items():
        cells = []
        for m in metrics:
            fmt = "{:.2e}" if m == "mse" else "{:.4f}" if m == "ssim" else "{:.2f}"
            rec = cols[m]
            cells.append(f"{fmt.format(rec['mean'])} ± {fmt.format(rec['std'])}")
            inp = cols.get(f"input_{m}")
            cells.append("—" if inp is None else f"{fmt.format(inp['mean'])} ± {fmt.format(inp['std'])}")
        lines.append(f"| {cond} | " + " | ".join(cells) + f" | {cols[metrics[0]]['n']} |")
    return "\n".join(lines)
