"""Tests for stride.evaluation.lds (LDS metric) and stride.evaluation.plots."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from scipy.stats import spearmanr

from stride.evaluation.lds import (
    bootstrap_ci,
    evaluate_lds,
    lds_per_query,
    predicted_outputs,
    seed_ceiling,
    spearman_brown,
    spearman_columns,
)


def linear_datamodel(n_train=200, n_queries=50, m=100, noise=1e-4, n_seeds=1, seed=0):
    """Losses f_j(x) = b(x) - sum_{i in S_j} w_i(x) + noise (independent per seed)."""
    rng = np.random.default_rng(seed)
    w = rng.normal(size=(n_queries, n_train))
    b = rng.normal(size=n_queries)
    subsets = rng.random((m, n_train)) < 0.5
    clean = b[None, :] - subsets.astype(float) @ w.T
    losses = clean[None] + noise * rng.normal(size=(n_seeds, m, n_queries))
    return w, subsets, (losses[0] if n_seeds == 1 else losses)


# ---------------------------------------------------------------- 1. correctness


def test_matches_loop_with_scipy_spearmanr():
    rng = np.random.default_rng(1)
    n_train, nq, m = 30, 12, 25
    scores = rng.normal(size=(nq, n_train))
    scores[3] = np.round(scores[3])  # integer scores -> tied predictions
    subsets = rng.random((m, n_train)) < 0.5
    losses = rng.normal(size=(m, nq))
    losses[:, 5] = np.round(losses[:, 5])  # tied targets
    got = lds_per_query(scores, subsets, losses)

    expected = np.empty(nq)
    for q in range(nq):
        pred = np.array([scores[q, subsets[j]].sum() for j in range(m)])
        expected[q] = spearmanr(pred, -losses[:, q]).statistic
    np.testing.assert_allclose(got, expected, atol=1e-6, rtol=0)


def test_multi_seed_target_is_seed_mean():
    # S1={0}, S2={1}, S3={0,1}, S4={2}; both queries score [1, 2, 4], so g = [1, 2, 3, 4].
    subsets = np.array([[1, 0, 0], [0, 1, 0], [1, 1, 0], [0, 0, 1]], dtype=bool)
    scores = np.array([[1.0, 2.0, 4.0], [1.0, 2.0, 4.0]])
    # losses[seed, subset, query]
    seed_a = np.array([[0.9, 0.4], [0.5, 0.3], [0.7, 0.2], [0.1, 0.1]])
    seed_b = np.array([[0.6, 0.2], [0.8, 0.5], [0.0, 0.0], [0.3, 0.6]])
    losses = np.stack([seed_a, seed_b])
    # Query 0: -f_a ranks [1, 3, 2, 4] -> rho 0.8; -f_b ranks [2, 1, 4, 3] -> rho 0.6;
    #   seed mean f = [0.75, 0.65, 0.35, 0.2] -> -f ranks [1, 2, 3, 4] -> rho 1.0
    #   (neither seed alone, nor the mean of their LDS, 0.7, nor the seeds' min, 0.8).
    # Query 1: -f_a ranks [1, 2, 3, 4] -> rho 1.0; -f_b ranks [3, 2, 4, 1], d = [2, 0, 1, -3] -> rho -0.4;
    #   seed mean f = [0.3, 0.4, 0.1, 0.35] -> -f ranks [3, 1, 4, 2], d = [2, -1, 1, -2],
    #   rho = 1 - 6 * 10 / (4 * 15) = 0 (the seeds' max, min or mean rank would give -0.4, 0.6, 0.74).
    np.testing.assert_allclose(lds_per_query(scores, subsets, seed_a), [0.8, 1.0], atol=1e-12)
    np.testing.assert_allclose(lds_per_query(scores, subsets, seed_b), [0.6, -0.4], atol=1e-12)
    per_query = lds_per_query(scores, subsets, losses)
    np.testing.assert_allclose(per_query, [1.0, 0.0], atol=1e-12)
    g = np.array([scores[0, subsets[j]].sum() for j in range(4)])
    for q in range(2):
        target = -np.array([(seed_a[j, q] + seed_b[j, q]) / 2 for j in range(4)])
        assert per_query[q] == pytest.approx(spearmanr(g, target).statistic, abs=1e-12)


def test_hand_worked_tiny_case():
    # 3 training points, 4 subsets: S1={0}, S2={1}, S3={0,1}, S4={2}.
    subsets = np.array([[1, 0, 0], [0, 1, 0], [1, 1, 0], [0, 0, 1]], dtype=bool)
    scores = np.array(
        [
            [1.0, 2.0, 4.0],  # query 0
            [1.0, 1.0, 0.0],  # query 1
            [0.0, 0.0, 0.0],  # query 2 (constant prediction -> LDS 0)
        ]
    )
    losses = np.array(
        [
            [0.9, 0.3, 0.5],
            [0.5, 0.2, 0.1],
            [0.7, 0.1, 0.4],
            [0.1, 0.4, 0.2],
        ]
    )
    # Query 0: g = [1, 2, 3, 4] -> ranks [1, 2, 3, 4];
    #   -f = [-0.9, -0.5, -0.7, -0.1] -> ranks [1, 3, 2, 4];
    #   d = [0, -1, 1, 0], sum d^2 = 2, rho = 1 - 6*2 / (4*(16-1)) = 0.8.
    # Query 1: g = [1, 1, 2, 0] -> average ranks [2.5, 2.5, 4, 1];
    #   -f = [-0.3, -0.2, -0.1, -0.4] -> ranks [2, 3, 4, 1];
    #   centred ranks x = [0, 0, 1.5, -1.5], y = [-0.5, 0.5, 1.5, -1.5];
    #   sum xy = 4.5, sum x^2 = 4.5, sum y^2 = 5 -> rho = 4.5/sqrt(22.5) = sqrt(0.9).
    # Query 2: g = [0, 0, 0, 0] is constant -> LDS 0 (the method says nothing about it).
    np.testing.assert_array_equal(
        predicted_outputs(scores, subsets),
        np.array([[1, 1, 0], [2, 1, 0], [3, 2, 0], [4, 0, 0]], dtype=float),
    )
    per_query = lds_per_query(scores, subsets, losses)
    assert per_query[0] == pytest.approx(0.8, abs=1e-12)
    assert per_query[1] == pytest.approx(math.sqrt(0.9), abs=1e-12)
    assert per_query[2] == 0.0

    report = evaluate_lds(scores, subsets, losses)
    assert report.mean == pytest.approx((0.8 + math.sqrt(0.9) + 0.0) / 3, abs=1e-12)
    assert report.n_excluded == 0
    assert report.n_constant_predictions == 1
    assert report.n_queries == 3
    assert report.n_subsets == 4
    assert report.n_seeds == 1
    assert report.ceiling is None


def test_constant_target_is_excluded_and_constant_prediction_counts_as_zero():
    subsets = np.array([[1, 0], [0, 1], [1, 1], [0, 0]], dtype=bool)
    losses = np.array([[0.5, 0.2], [0.5, 0.4], [0.5, 0.1], [0.5, 0.9]])  # query 0's target is constant
    zeros = np.zeros((2, 2))
    report = evaluate_lds(zeros, subsets, losses)
    assert math.isnan(report.per_query[0]) and report.per_query[1] == 0.0
    assert report.n_excluded == 1 and report.n_constant_predictions == 2 and report.mean == 0.0


def test_spearman_columns_constant_and_shape():
    a = np.array([[1.0, 5.0], [2.0, 5.0], [3.0, 5.0]])
    b = np.array([[3.0, 1.0], [2.0, 2.0], [1.0, 3.0]])
    out = spearman_columns(a, b)
    assert out[0] == pytest.approx(-1.0)
    assert math.isnan(out[1])
    assert math.isnan(spearman_columns(b, a)[1])
    with pytest.raises(ValueError, match="shape mismatch"):
        spearman_columns(a, b[:2])


# ---------------------------------------------------- 2. linear datamodel sanity


def test_perfect_random_and_inverted_scores():
    w, subsets, losses = linear_datamodel()
    assert evaluate_lds(w, subsets, losses).mean > 0.95
    assert evaluate_lds(-w, subsets, losses).mean < -0.95
    random_scores = np.random.default_rng(123).normal(size=w.shape)
    random_report = evaluate_lds(random_scores, subsets, losses)
    assert abs(random_report.mean) < 0.1
    assert random_report.n_excluded == 0


# ---------------------------------------------------------------- 3. bootstrap


def test_bootstrap_ci_contains_mean_and_is_deterministic():
    values = np.random.default_rng(3).normal(0.4, 0.2, size=60)
    low, high = bootstrap_ci(values, seed=7)
    assert low < values.mean() < high
    assert bootstrap_ci(values, seed=7) == (low, high)
    assert bootstrap_ci(values, seed=8) != (low, high)
    # NaNs are ignored.
    with_nan = np.concatenate([values, [np.nan, np.nan]])
    assert bootstrap_ci(with_nan, seed=7) == (low, high)


def test_bootstrap_ci_narrows_with_more_queries():
    rng = np.random.default_rng(4)
    small = rng.normal(0.3, 0.2, size=20)
    large = rng.normal(0.3, 0.2, size=2000)
    lo_s, hi_s = bootstrap_ci(small)
    lo_l, hi_l = bootstrap_ci(large)
    assert hi_l - lo_l < 0.5 * (hi_s - lo_s)


def test_bootstrap_ci_width_matches_normal_theory():
    values = np.random.default_rng(12).normal(0.0, 1.0, size=400)
    low, high = bootstrap_ci(values, confidence=0.95)
    expected = 2 * 1.96 * values.std(ddof=1) / math.sqrt(values.size)
    assert (high - low) == pytest.approx(expected, rel=0.15)
    low90, high90 = bootstrap_ci(values, confidence=0.90)
    assert high90 - low90 < high - low


def test_report_ci_contains_mean_and_deterministic():
    w, subsets, losses = linear_datamodel(noise=5.0)
    a = evaluate_lds(w, subsets, losses, seed=11)
    b = evaluate_lds(w, subsets, losses, seed=11)
    assert a.ci_low <= a.mean <= a.ci_high
    assert (a.ci_low, a.ci_high) == (b.ci_low, b.ci_high)


def test_bootstrap_ci_degenerate_and_invalid():
    assert all(math.isnan(v) for v in bootstrap_ci(np.array([np.nan])))
    assert bootstrap_ci(np.array([0.5])) == (0.5, 0.5)
    with pytest.raises(ValueError, match="confidence"):
        bootstrap_ci(np.ones(5), confidence=1.5)
    with pytest.raises(ValueError, match="n_resamples"):
        bootstrap_ci(np.ones(5), n_resamples=0)


# ---------------------------------------------------------------- 4. ceiling


def test_seed_ceiling_falls_with_noise():
    ceilings = []
    for noise in (0.5, 3.0, 15.0):
        _, _, losses = linear_datamodel(n_seeds=2, noise=noise, seed=5)
        ceilings.append(np.nanmean(seed_ceiling(losses)))
    assert ceilings[0] > ceilings[1] > ceilings[2]
    assert ceilings[0] > 0.9
    assert ceilings[2] < 0.5


def test_seed_ceiling_identical_seeds_is_one():
    _, _, losses = linear_datamodel(noise=0.1)
    stacked = np.stack([losses, losses])
    np.testing.assert_allclose(seed_ceiling(stacked), 1.0, atol=1e-12)


def test_seed_ceiling_averages_all_pairs():
    losses = np.random.default_rng(6).normal(size=(3, 20, 4))
    expected = np.mean(
        [
            [spearmanr(losses[a, :, q], losses[b, :, q]).statistic for q in range(4)]
            for a, b in [(0, 1), (0, 2), (1, 2)]
        ],
        axis=0,
    )
    np.testing.assert_allclose(seed_ceiling(losses), expected, atol=1e-10)


def test_report_with_seeds_has_ceiling_and_is_json():
    w, subsets, losses = linear_datamodel(n_seeds=3, noise=3.0, seed=9)
    report = evaluate_lds(w, subsets, losses, n_resamples=500)
    assert report.n_seeds == 3
    assert report.ceiling == pytest.approx(np.nanmean(seed_ceiling(losses)))
    assert report.ceiling_ci_low <= report.ceiling <= report.ceiling_ci_high
    # Against the seed mean, the Spearman-Brown approximation exceeds the pairwise one.
    assert report.ceiling_mean_seeds_approx > report.ceiling
    # The true-weights method beats one-seed agreement between retrains.
    assert report.mean_single_seed > report.ceiling
    # Strict JSON round trip, NaNs become None.
    report.per_query[0] = np.nan
    d = json.loads(json.dumps(report.to_dict(), allow_nan=False))
    assert d["per_query"][0] is None
    assert d["n_seeds"] == 3
    assert len(d["per_query"]) == report.n_queries


def test_spearman_brown():
    assert spearman_brown(1.0, 5) == pytest.approx(1.0)
    assert spearman_brown(0.5, 2) == pytest.approx(2 / 3)
    assert spearman_brown(-0.3, 3) == pytest.approx(0.0)


# ---------------------------------------------------------------- 5. validation


def _valid_inputs():
    rng = np.random.default_rng(0)
    return rng.normal(size=(4, 10)), rng.random((6, 10)) < 0.5, rng.normal(size=(6, 4))


def test_validation_shape_mismatches():
    scores, subsets, losses = _valid_inputs()
    with pytest.raises(ValueError, match="n_train mismatch"):
        evaluate_lds(scores[:, :9], subsets, losses)
    with pytest.raises(ValueError, match="number of subsets mismatch"):
        evaluate_lds(scores, subsets, losses[:5])
    with pytest.raises(ValueError, match="n_queries mismatch"):
        evaluate_lds(scores[:3], subsets, losses)
    with pytest.raises(ValueError, match="n_queries mismatch"):
        lds_per_query(scores, subsets, np.stack([losses[:, :3]] * 2))
    with pytest.raises(ValueError, match="at least 3 subsets"):
        evaluate_lds(scores, subsets[:2], losses[:2])
    with pytest.raises(ValueError, match="2-D"):
        evaluate_lds(scores[0], subsets, losses)
    with pytest.raises(ValueError, match="boolean"):
        evaluate_lds(scores, subsets * 2, losses)
    with pytest.raises(ValueError, match="n_train mismatch"):
        predicted_outputs(scores, subsets[:, :9])


def test_validation_non_finite():
    scores, subsets, losses = _valid_inputs()
    bad_scores = scores.copy()
    bad_scores[1, 2] = np.nan
    with pytest.raises(ValueError, match="scores contains 1 NaN or inf"):
        evaluate_lds(bad_scores, subsets, losses)
    bad_losses = losses.copy()
    bad_losses[0, 0] = np.inf
    with pytest.raises(ValueError, match="losses contains 1 NaN or inf"):
        evaluate_lds(scores, subsets, bad_losses)
    with pytest.raises(ValueError, match="at least 2 seeds"):
        seed_ceiling(losses[None])


def test_integer_subsets_accepted():
    scores, subsets, losses = _valid_inputs()
    np.testing.assert_array_equal(
        lds_per_query(scores, subsets.astype(int), losses),
        lds_per_query(scores, subsets, losses),
    )


# ---------------------------------------------------------------- 6. plots


def test_plot_lds_writes_png(tmp_path):
    pytest.importorskip("matplotlib")
    from stride.evaluation.plots import plot_lds

    w, subsets, losses = linear_datamodel(n_queries=20, n_seeds=2, noise=3.0)
    report = evaluate_lds(w, subsets, losses, n_resamples=200)
    # true weights against a noisy two-seed mean: a high LDS inside its bootstrap CI
    assert report.ci_low < report.mean < report.ci_high and report.mean > 0.9
    assert report.n_seeds == 2 and report.n_excluded == 0 and report.ceiling < report.mean
    out = plot_lds(report, w, subsets, losses, tmp_path / "sub" / "lds.png")
    data = Path(out).read_bytes()
    assert len(data) > 1000
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    from matplotlib.image import imread

    image = imread(out)  # 4 example queries: a 12.8 x 6.4 inch figure at 100 dpi
    assert image.shape[:2] == (640, 1280)
    assert image[..., :3].std() > 0.05  # something is drawn, not a blank canvas
