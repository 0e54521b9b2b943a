"""The hybrid of Lasso and first-order scores: mixing in standard units, and a weight cross-fitted
over designs that follows which signal is informative."""

import numpy as np
import pytest
from scipy.stats import spearmanr

from stride.method.hybrid import WEIGHT_GRID, cross_fitted_weight, mix, row_spearman, standard_units
from stride.method.membership import example_subsets, membership_matrix


def _designs(rng, truth, n_designs, lasso_noise):
    n_queries, n_train = truth.shape
    scores, responses, memberships = [], [], []
    for seed in range(n_designs):
        membership = membership_matrix(example_subsets(n_train, 300, 10, seed), 300)
        memberships.append(membership)
        responses.append((membership @ truth.T).T + 0.1 * rng.standard_normal((n_queries, 300)))
        scores.append(truth + lasso_noise * rng.standard_normal(truth.shape))
    return scores, responses, memberships


@pytest.mark.parametrize("first_order_noise, expected", [(0.5, "mixes"), (None, "ignores")])
def test_cross_fitted_weight_follows_the_informative_signal(first_order_noise, expected):
    rng = np.random.default_rng(0)
    truth = rng.standard_normal((20, 200))
    scores, responses, memberships = _designs(rng, truth, 3, lasso_noise=1.5)
    if first_order_noise is None:
        first_order = rng.standard_normal(truth.shape)  # unrelated to the truth
    else:
        first_order = truth + first_order_noise * rng.standard_normal(truth.shape)
    weight, criteria = cross_fitted_weight(scores, responses, memberships, first_order)
    # each criterion, recomputed with scipy: mean over held-out designs and queries of the Spearman
    # correlation between the measured responses and M_j times the mix of the other designs' mean
    z_first = (first_order - first_order.mean(axis=1, keepdims=True)) / first_order.std(axis=1, keepdims=True)
    for w in WEIGHT_GRID:
        values = []
        for held_out in range(3):
            others = np.mean([s for j, s in enumerate(scores) if j != held_out], axis=0)
            centred = others - others.mean(axis=1, keepdims=True)
            mixed = (1 - w) * centred + w * z_first * others.std(axis=1, keepdims=True)
            predicted = memberships[held_out] @ mixed.T  # [subsets, queries]
            values += [spearmanr(predicted[:, q], responses[held_out][q]).statistic for q in range(truth.shape[0])]
        assert criteria[w] == pytest.approx(np.mean(values), abs=1e-9), w
    assert criteria[weight] == max(criteria.values())
    if expected == "mixes":
        assert weight >= 0.3 and criteria[weight] > criteria[0.0] + 0.1  # the first-order scores help clearly
    else:
        assert weight == 0.0 and criteria[0.5] < criteria[0.0] - 0.1  # mixing in noise hurts clearly


def test_mix_keeps_the_lasso_scale_and_order_at_weight_zero():
    rng = np.random.default_rng(1)
    lasso, first_order = rng.standard_normal((4, 50)) * 3.0, rng.standard_normal((4, 50))
    assert np.allclose(mix(lasso, first_order, 0.0), lasso - lasso.mean(axis=1, keepdims=True))
    mixed = mix(lasso, first_order, 0.5)
    assert np.allclose(mixed.std(axis=1), lasso.std(axis=1) * np.sqrt(0.5 + 0.5 * row_pearson(lasso, first_order)))
    assert np.allclose(mix(np.zeros((1, 5)), first_order[:1, :5], 0.5), 0.5 * standard_units(first_order[:1, :5]))


def row_pearson(a, b):
    return (standard_units(a) * standard_units(b)).mean(axis=1)


def test_row_spearman_is_rank_correlation():
    a = np.array([[1.0, 2.0, 3.0, 4.0], [1.0, 2.0, 3.0, 4.0]])
    b = np.array([[10.0, 20.0, 30.0, 1000.0], [4.0, 3.0, 2.0, 1.0]])
    assert np.allclose(row_spearman(a, b), [1.0, -1.0])


def test_auto_mix_is_off_when_first_order_features_would_not_fit_in_memory(gpt2_dir):
    from stride.config import StrideConfig
    from stride.method.attributor import FIRST_ORDER_MEMORY, StrideAttributor
    from stride.models import load_causal_lm

    model, _ = load_causal_lm(gpt2_dir)
    attributor = StrideAttributor(model, StrideConfig(designs=2, first_order_dim=4096))
    fits = FIRST_ORDER_MEMORY // (4 * 4096)
    assert attributor.training_parts(fits) == 3  # two designs and the first-order features
    with pytest.warns(UserWarning, match="first-order mix is off"):
        assert attributor.training_parts(fits + 1) == 2
    assert StrideAttributor(model, StrideConfig(designs=2, first_order_weight=0.3)).training_parts(10**7) == 3
