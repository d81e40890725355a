"""Reports of the compare step: leaderboard (markdown and CSV), p-value matrix figure,
reconstruction grid, and the block of docs/results.md between the compare markers."""

from __future__ import annotations

import re
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from mriae.compare.stats import pvalue_matrix  # noqa: E402
from mriae.figures.plots import save_figure  # noqa: E402

__all__ = ["leaderboard", "leaderboard_markdown", "pvalue_figure", "grid_figure", "write_results_block"]

START, END = "<!-- compare:start -->", "<!-- compare:end -->"


def _cell(summary: pd.DataFrame, entry: str, cond: str, metric: str, ci: bool = True) -> str:
    r = summary[(summary.entry == entry) & (summary.condition == cond) & (summary.metric == metric)]
    if r.empty:
        return "—"
    r = r.iloc[0]
    fmt = {"psnr": "{:.2f}", "ssim": "{:.4f}", "mse": "{:.2e}", "dssim": "{:.2e}"}[metric]
    s = fmt.format(r["mean"])
    return f"{s} [{fmt.format(r.ci_low)}, {fmt.format(r.ci_high)}]" if ci else s


def leaderboard(summary: pd.DataFrame, entries: dict) -> pd.DataFrame:
    """One row per entry: clean and combined PSNR / SSIM, mean PSNR over the corrupted conditions, rank."""
    corrupted = [c for c in summary.condition.unique() if c != "clean"]
    rows = []
    for name, info in entries.items():
        s = summary[(summary.entry == name) & (summary.metric == "psnr")]

        def get(c, m="psnr", name=name):
            sel = summary[(summary.entry == name) & (summary.condition == c) & (summary.metric == m)]
            return sel["mean"]

        rows.append(
            {
                "entry": name,
                "kind": info.get("kind", "model"),
                "parameters": info.get("parameters"),
                "loss": info.get("loss", ""),
                "l2": info.get("l2", ""),
                "clean_psnr": float(get("clean").iloc[0]) if len(get("clean")) else np.nan,
                "clean_ssim": float(get("clean", "ssim").iloc[0]) if len(get("clean", "ssim")) else np.nan,
                "combined_psnr": float(get("combined").iloc[0]) if len(get("combined")) else np.nan,
                "corrupted_mean_psnr": float(s[s.condition.isin(corrupted)]["mean"].mean())
                if len(s)
                else np.nan,
                "note": info.get("note", ""),
            }
        )
    lb = pd.DataFrame(rows).sort_values("corrupted_mean_psnr", ascending=False, na_position="last")
    lb.insert(0, "rank", range(1, len(lb) + 1))
    lb.loc[lb.corrupted_mean_psnr.isna(), "rank"] = None
    return lb.reset_index(drop=True)


def leaderboard_markdown(
    lb: pd.DataFrame, summary: pd.DataFrame, tests: pd.DataFrame, header: str, figures: dict[str, str]
) -> str:
    """The markdown block: provenance header, ranking, PSNR per corruption and severity, significance."""
    conds = list(summary.condition.unique())
    out = [header.rstrip(), ""]
    out.append(
        "| rank | entry | params | loss | L2 | clean PSNR [95 % CI] | clean SSIM | combined PSNR [95 % CI] "
        "| combined SSIM | mean PSNR, corrupted |"
    )
    out.append("|---|---|---|---|---|---|---|---|---|---|")
    for _, r in lb.iterrows():
        if pd.isna(r.corrupted_mean_psnr):
            out.append(f"| — | {r.entry} | — | — | — | {r.note} | | | | |")
            continue
        params = f"{int(r.parameters):,}" if pd.notna(r.parameters) and r.parameters else "—"
        out.append(
            f"| {int(r['rank'])} | {r.entry} | {params} | {r.loss or '—'} | {r.l2 or '—'} "
            f"| {_cell(summary, r.entry, 'clean', 'psnr')} | {_cell(summary, r.entry, 'clean', 'ssim', False)} "
            f"| {_cell(summary, r.entry, 'combined', 'psnr')} | {_cell(summary, r.entry, 'combined', 'ssim', False)} "
            f"| {r.corrupted_mean_psnr:.2f} |"
        )
    kinds = list(dict.fromkeys(c.split("-")[0] for c in conds if "-" in c))
    if kinds:
        out += ["", "PSNR (dB) of the output, each corruption alone, severities low / mid / high:", ""]
        levels = {k: [c for c in conds if c.startswith(k + "-")] for k in kinds}
        out.append(
            "| entry | "
            + " | ".join(f"{k} ({' / '.join(c.split('-', 1)[1] for c in levels[k])})" for k in kinds)
            + " |"
        )
        out.append("|---|" + "---|" * len(kinds))
        for name in lb.entry[lb.corrupted_mean_psnr.notna()]:
            cells = [" / ".join(_cell(summary, name, c, "psnr", False) for c in levels[k]) for k in kinds]
            out.append(f"| {name} | " + " | ".join(cells) + " |")
    if len(tests):
        t = tests[(tests.condition == "combined") & (tests.metric == "psnr")]
        best = lb.entry.iloc[0]
        t = t[(t.a == best) | (t.b == best)]
        if len(t):
            out += [
                "",
                f"Best entry ({best}) against each other entry, combined corruption, PSNR; Holm-adjusted over all "
                "pairs; d_z = mean difference / sd of differences:",
                "",
                "| versus | mean diff (dB) | d_z (subjects) | p t-test, subjects | p Wilcoxon, subjects "
                "| p t-test, slices (S4) | n subjects / slices |",
                "|---|---|---|---|---|---|---|",
            ]
            for other in [e for e in lb.entry if e != best]:
                rs = {
                    lv: t[(t.level == lv) & ((t.a == other) | (t.b == other))] for lv in ("subject", "slice")
                }
                if rs["subject"].empty:
                    continue
                s, sl = rs["subject"].iloc[0], rs["slice"].iloc[0]
                sign = 1 if s.a == best else -1
                out.append(
                    f"| {other} | {sign * s.mean_diff:+.2f} | {sign * s.d_z:+.2f} | {s.p_t_holm:.2g} "
                    f"| {s.p_wilcoxon_holm:.2g} | {sl.p_t_holm:.2g} | {int(s.n)} / {int(sl.n)} |"
                )
    if figures:
        out += [""] + [f"![{k}]({v})" for k, v in figures.items()]
    return "\n".join(out) + "\n"


def pvalue_figure(tests: pd.DataFrame, path: Path, condition: str = "combined", metric: str = "psnr") -> None:
    """Holm-adjusted dependent t-test p-values between all entries, slice level (S4) and subject level."""
    sel = tests[(tests.condition == condition) & (tests.metric == metric)]
    levels = [lv for lv in ("slice", "subject") if (sel.level == lv).any()]
    fig, axes = plt.subplots(1, len(levels), figsize=(6.8 * len(levels), 5.2), squeeze=False)
    for ax, lv in zip(axes[0], levels):
        m = pvalue_matrix(sel[sel.level == lv], "p_t_holm")
        im = ax.imshow(-np.log10(m.to_numpy(dtype=float).clip(1e-300)), cmap="viridis", vmin=0, vmax=10)
        ax.set_xticks(range(len(m)), m.columns, rotation=60, ha="right", fontsize=7)
        ax.set_yticks(range(len(m)), m.index, fontsize=7)
        for i in range(len(m)):
            for j in range(len(m)):
                v = m.iat[i, j]
                if not np.isnan(v):
                    ax.text(
                        j, i, f"{v:.1g}", ha="center", va="center", fontsize=6, color="w" if v > 1e-5 else "k"
                    )
        n = int(sel[sel.level == lv].n.max())
        ax.set_title(f"{lv} level (n = {n}): Holm p, t-test\n{metric.upper()}, {condition}", fontsize=9)
        fig.colorbar(im, ax=ax, fraction=0.046, label="-log10 p")
    fig.tight_layout(w_pad=4)
    save_figure(fig, path)


def grid_figure(grid: dict, path: Path, title: str = "") -> None:
    """Rows: conditions; columns: clean target, corrupted input, every entry's output (S4 fig. 5.22/5.23)."""
    conds = list(grid)
    cols = ["target", "input"] + [k for k in grid[conds[0]] if k not in ("target", "input")]
    fig, axes = plt.subplots(
        len(conds), len(cols), figsize=(1.9 * len(cols), 2.0 * len(conds)), squeeze=False
    )
    for r, c in enumerate(conds):
        for j, k in enumerate(cols):
            ax = axes[r, j]
            ax.imshow(grid[c][k], cmap="gray", vmin=0, vmax=1)
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(k, fontsize=7)
            if j == 0:
                ax.set_ylabel(c, fontsize=7)
    fig.suptitle(title, fontsize=9)
    save_figure(fig, path)


def write_results_block(results_md: Path, block: str) -> None:
    """Replace what lies between the compare markers of ``results_md`` (appended if they are missing)."""
    results_md = Path(results_md)
    text = results_md.read_text() if results_md.is_file() else "# Results\n"
    new = f"{START}\n{block.rstrip()}\n{END}"
    if START in text and END in text:
        text = re.sub(re.escape(START) + r".*?" + re.escape(END), lambda _: new, text, flags=re.S)
    else:
        text = text.rstrip() + "\n\n" + new + "\n"
    results_md.write_text(text)
