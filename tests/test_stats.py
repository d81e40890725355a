"""Statistics of the compare step on inputs whose answers are known."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps

from mriae.compare.stats import bootstrap_ci, cohens_dz, holm, paired_tests, pvalue_matrix


def test_holm_matches_a_hand_computation():
    p = [0.01, 0.04, 0.03, 0.005]
    # sorted: 0.005 (x4 = 0.02), 0.01 (x3 = 0.03), 0.03 (x2 = 0.06), 0.04 (x1 = 0.04 -> monotone 0.06)
    np.testing.assert_allclose(holm(p), [0.03, 0.06, 0.06, 0.02])
    np.testing.assert_allclose(holm([0.5, 0.6]), [1.0, 1.0])  # capped at 1
    np.testing.assert_allclose(holm([0.02, np.nan, 0.01]), [0.02, np.nan, 0.02])  # NaN does not count
    assert holm([]).size == 0


def test_paired_tests_detect_a_known_shift_and_not_a_null():
    rng = np.random.default_rng(0)
    n = 30
    base = rng.normal(30, 2, n)  # per-subject PSNR of model A
    scores = pd.DataFrame(
        {
            "A": base,
            "B": base + 1.0 + rng.normal(0, 0.5, n),  # B better by 1 dB, d_z about 2
            "C": base + rng.normal(0, 0.5, n),  # C the same as A
        }
    )
    t = paired_tests(scores).set_index(["a", "b"])
    assert len(t) == 3
    ab, ac = t.loc[("A", "B")], t.loc[("A", "C")]
    assert ab["p_t_holm"] < 1e-6 and ab["p_wilcoxon_holm"] < 1e-4
    assert ab["mean_diff"] == pytest.approx(-1.0, abs=0.25) and ab["d_z"] == pytest.approx(-2.0, abs=0.7)
    assert ac["p_t_holm"] > 0.05 and ac["p_wilcoxon_holm"] > 0.05
    # the raw p-values are scipy's; Holm adjusts them over the 3 pairs
    ref = sps.ttest_rel(scores["A"], scores["B"])
    assert ab["t"] == pytest.approx(ref.statistic) and ab["p_t"] == pytest.approx(ref.pvalue)
    np.testing.assert_allclose(t["p_t_holm"], holm(t["p_t"]))
    np.testing.assert_allclose(t["p_wilcoxon_holm"], holm(t["p_wilcoxon"]))
    m = pvalue_matrix(t.reset_index())
    assert m.loc["B", "A"] == m.loc["A", "B"] == ab["p_t_holm"] and np.isnan(m.loc["A", "A"])


def test_cohens_dz_by_hand():
    a, b = np.array([3.0, 5.0, 7.0, 9.0]), np.array([1.0, 2.0, 3.0, 4.0])
    # a - b = 2, 3, 4, 5: mean 3.5, sd (ddof 1) sqrt(5 / 3)
    assert cohens_dz(a, b) == pytest.approx(3.5 / np.sqrt(5 / 3))


def test_bootstrap_resamples_subjects_not_slices():
    # 2 subjects x 50 identical slices each: all spread is between subjects, none within
    values = np.r_[np.full(50, 10.0), np.full(50, 20.0)]
    subjects = ["s1"] * 50 + ["s2"] * 50
    mean, lo, hi = bootstrap_ci(values, subjects, n_boot=4000, seed=1)
    assert mean == 15.0
    # subject resampling: means of {s1,s1}=10, {s1,s2}=15, {s2,s2}=20 -> the 95 % CI spans 10..20
    assert lo == 10.0 and hi == 20.0
    # a slice bootstrap would have given about 15 +- 1 (100 "independent" slices): much narrower
    slice_lo, slice_hi = bootstrap_ci(values, range(100), n_boot=4000, seed=1)[1:]
    assert slice_hi - slice_lo < 3


def test_bootstrap_ci_covers_the_true_mean():
    rng = np.random.default_rng(3)
    true_mean, hits, trials = 5.0, 0, 200
    for _ in range(trials):
        subj_effect = rng.normal(0, 1.0, 25)  # 25 subjects, 8 correlated slices each
        vals = (true_mean + subj_effect[:, None] + rng.normal(0, 0.3, (25, 8))).ravel()
        _, lo, hi = bootstrap_ci(
            vals, np.repeat(np.arange(25), 8), n_boot=500, seed=int(rng.integers(1 << 30))
        )
        hits += lo <= true_mean <= hi
    assert 0.88 <= hits / trials <= 0.99  # nominal 95 % (percentile bootstrap is a bit liberal at n = 25)
