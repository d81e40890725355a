"""Statistics of a model comparison: paired tests, Holm correction, effect sizes and bootstrap
confidence intervals over SUBJECTS.

Slices of one subject are near copies of each other, so they are not independent samples: S4's
dependent t-test over 4,824 test slices overstates the evidence. We report S4's slice-level tests
for comparison, and the honest unit, the subject (per-subject mean of the slice metric), beside
them; confidence intervals come from resampling subjects (a cluster bootstrap), never slices.

scipy.stats gives the tests (``ttest_rel``, ``wilcoxon``); Holm's step-down adjustment, Cohen's
d_z and the cluster bootstrap are small enough to write here (statsmodels is not a dependency).
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import numpy as np
import pandas as pd
from scipy import stats

__all__ = ["holm", "cohens_dz", "paired_tests", "bootstrap_ci", "pvalue_matrix", "per_subject"]


def holm(pvalues: Sequence[float]) -> np.ndarray:
    """Holm-Bonferroni adjusted p-values (step-down, monotone, capped at 1), in the input order.

    With the p-values sorted ascending ``p_(1) <= ... <= p_(m)``:
    ``adj_(i) = max_{k <= i} min(1, (m - k + 1) * p_(k))``. NaN p-values stay NaN and do not count.
    """
    p = np.asarray(pvalues, dtype=float)
    out = np.full_like(p, np.nan)
    ok = ~np.isnan(p)
    m = int(ok.sum())
    if m == 0:
        return out
    order = np.argsort(p[ok], kind="stable")
    scaled = (m - np.arange(m)) * p[ok][order]
    adj = np.minimum(1.0, np.maximum.accumulate(scaled))
    res = np.empty(m)
    res[order] = adj
    out[ok] = res
    return out


def cohens_dz(a: Sequence[float], b: Sequence[float]) -> float:
    """Cohen's d_z of paired samples: mean(a - b) / sd(a - b) (ddof 1)."""
    d = np.asarray(a, float) - np.asarray(b, float)
    sd = d.std(ddof=1) if d.size > 1 else np.nan
    if not sd or np.isnan(sd):
        return float("nan") if d.size < 2 or np.allclose(d, 0) else float(np.sign(d.mean()) * np.inf)
    return float(d.mean() / sd)


def paired_tests(scores: pd.DataFrame) -> pd.DataFrame:
    """Every pair of columns (models) of ``scores`` (rows: paired units, e.g. subjects or slices).

    Returns one row per pair ``(a, b)`` with n, mean_diff (a - b), d_z, the dependent t-test's t and
    p, Wilcoxon's signed-rank statistic and p, and Holm-adjusted p-values of each test over all
    pairs (``p_t_holm``, ``p_wilcoxon_holm``). Rows with a missing value in either column are dropped
    pairwise.
    """
    rows = []
    for a, b in itertools.combinations(scores.columns, 2):
        pair = scores[[a, b]].dropna()
        x, y = pair[a].to_numpy(float), pair[b].to_numpy(float)
        d = x - y
        n = len(d)
        t = p_t = w = p_w = float("nan")
        if n >= 2 and np.ptp(d) > 0:
            t, p_t = (float(v) for v in stats.ttest_rel(x, y))
        if n >= 1 and np.any(d != 0):
            res = stats.wilcoxon(x, y, zero_method="wilcox")
            w, p_w = float(res.statistic), float(res.pvalue)
        rows.append(
            {
                "a": a,
                "b": b,
                "n": n,
                "mean_a": float(x.mean()) if n else np.nan,
                "mean_b": float(y.mean()) if n else np.nan,
                "mean_diff": float(d.mean()) if n else np.nan,
                "d_z": cohens_dz(x, y) if n else np.nan,
                "t": t,
                "p_t": p_t,
                "wilcoxon": w,
                "p_wilcoxon": p_w,
            }
        )
    out = pd.DataFrame(rows)
    if len(out):
        out["p_t_holm"] = holm(out["p_t"])
        out["p_wilcoxon_holm"] = holm(out["p_wilcoxon"])
    return out


def per_subject(df: pd.DataFrame, value: str, by: Sequence[str] = ("subject",)) -> pd.Series:
    """Mean of ``value`` per subject (or per the ``by`` keys)."""
    return df.groupby(list(by), sort=True)[value].mean()


def bootstrap_ci(
    values: Sequence[float],
    subjects: Sequence,
    n_boot: int = 2000,
    ci: float = 0.95,
    seed: int = 0,
) -> tuple[float, float, float]:
    """Mean of ``values`` (one per slice) and its percentile CI by resampling SUBJECTS with replacement.

    Each bootstrap sample draws as many subjects as there are, with replacement, and takes the mean
    over all slices of the drawn subjects (a subject drawn twice counts twice): the same estimator as
    the reported slice mean, with the subject as the independent unit. Returns ``(mean, low, high)``.
    For paired differences pass ``values = score_a - score_b`` per slice.
    """
    v = np.asarray(values, dtype=float)
    codes, uniq = pd.factorize(pd.Series(list(subjects)), sort=True)
    k = len(uniq)
    sums = np.bincount(codes, weights=v, minlength=k)
    counts = np.bincount(codes, minlength=k).astype(float)
    rng = np.random.default_rng(seed)
    draw = rng.integers(0, k, size=(n_boot, k))
    boot = sums[draw].sum(axis=1) / counts[draw].sum(axis=1)
    alpha = (1 - ci) / 2
    lo, hi = np.quantile(boot, [alpha, 1 - alpha])
    return float(v.mean()), float(lo), float(hi)


def pvalue_matrix(tests: pd.DataFrame, column: str = "p_t_holm") -> pd.DataFrame:
    """Symmetric model x model matrix of one p-value column of ``paired_tests`` (diagonal NaN)."""
    names = list(dict.fromkeys(list(tests["a"]) + list(tests["b"])))
    m = pd.DataFrame(np.nan, index=names, columns=names)
    for _, r in tests.iterrows():
        m.loc[r["a"], r["b"]] = m.loc[r["b"], r["a"]] = r[column]
    return m
