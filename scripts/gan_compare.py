"""Compare GAN runs collected by scripts/gpu_gans.sh: curves against generator updates, a summary.

    python3 scripts/gan_compare.py OUTDIR dcgan_2d wgan_gp_2d

Reads OUTDIR/<bundle>/curves.json; writes OUTDIR/comparison.png (diversity beside the real data's,
Frechet distance, RBF-MMD, losses, all against generator updates) and OUTDIR/summary.{json,md}.

Collapse criterion (stated so the verdict is reproducible, not by eye): a run is called COLLAPSED
at an epoch when the generated samples' mean pairwise MS-SSIM exceeds the real samples' by more
than 0.10; the summary reports the final value, the worst epoch, and the fraction of epochs past
the first third of training that meet the criterion.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mriae.evaluate.gan_quality import summarise  # noqa: E402
from mriae.figures.plots import plt, save_figure  # noqa: E402

MARGIN = 0.10


def summary_of(curves: dict) -> dict:
    c = summarise(curves)
    gap = c["gen_msssim"] - c["real_msssim"]
    late = gap[len(gap) // 3 :]
    best = int(np.nanargmin(c["fd"]))
    return {
        "feature_space": curves.get("feature_space"),
        "epochs": len(gap),
        "generator_updates": int(c["generator_updates"][-1]),
        "final": {
            k: float(c[k][-1]) for k in ("gen_msssim", "real_msssim", "fd", "mmd", "mmd_rbf") if k in c
        },
        "best_fd": {
            "epoch": best + 1,
            "generator_updates": int(c["generator_updates"][best]),
            "fd": float(c["fd"][best]),
        },
        "max_msssim_gap": float(np.nanmax(gap)),
        "collapsed_final": bool(gap[-1] > MARGIN),
        "collapsed_fraction_late": float(np.mean(late > MARGIN)) if len(late) else float("nan"),
    }


def main(out: Path, bundles: list[str]) -> None:
    runs = {
        b: json.loads((out / b / "curves.json").read_text())
        for b in bundles
        if (out / b / "curves.json").is_file()
    }
    summ = {b: summary_of(c) for b, c in runs.items()}
    (out / "summary.json").write_text(json.dumps(summ, indent=2))
    lines = [
        "| GAN | generator updates | final gen MS-SSIM | real MS-SSIM | final FD | best FD (updates) | final RBF-MMD | collapsed (final / late fraction) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for b, s in summ.items():
        f = s["final"]
        lines.append(
            f"| {b} | {s['generator_updates']} | {f['gen_msssim']:.3f} | {f['real_msssim']:.3f} | {f['fd']:.3g} | "
            f"{s['best_fd']['fd']:.3g} ({s['best_fd']['generator_updates']}) | {f['mmd_rbf']:.3g} | "
            f"{'yes' if s['collapsed_final'] else 'no'} / {s['collapsed_fraction_late']:.2f} |"
        )
    spaces = {s["feature_space"] for s in summ.values()}
    lines.append(
        f"\nFeature space: {', '.join(sorted(map(str, spaces)))}. Collapse: gen - real MS-SSIM > {MARGIN}."
    )
    (out / "summary.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))

    panels = [
        ("diversity: pairwise MS-SSIM", "gen_msssim"),
        ("Frechet distance (AE features)", "fd"),
        ("RBF-MMD (AE features)", "mmd_rbf"),
        ("generator loss", "train_g_loss"),
        ("critic loss", "train_d_loss"),
    ]
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.4), squeeze=False)
    for ax, (title, key) in zip(axes[0], panels):
        for b, curves in runs.items():
            c = summarise(curves)
            if key in c:
                ax.plot(c["generator_updates"], c[key], "o-", ms=3, label=b)
            if key == "gen_msssim":
                ax.plot(
                    c["generator_updates"],
                    c["real_msssim"],
                    "k--",
                    lw=1,
                    label="real data" if b == bundles[0] else None,
                )
        ax.set(title=title, xlabel="generator updates")
        ax.legend(fontsize=7)
    save_figure(fig, out / "comparison.png")


if __name__ == "__main__":
    if len(sys.argv) < 3:
        sys.exit("usage: gan_compare.py OUTDIR BUNDLE [BUNDLE ...]")
    main(Path(sys.argv[1]), sys.argv[2:])
