import numpy as np
import torch

from stride.method.membership import example_subsets, membership_matrix
from stride.method.recover import cross_validated_lambda, lasso_scores, standardize


def test_planted_sparse_influence_is_recovered():
    n, k, d = 400, 120, 10
    table = example_subsets(n, k, d, seed=0)
    membership = membership_matrix(table, k)
    rng = np.random.default_rng(0)
    truth = np.zeros((3, n))
    support = [rng.choice(n, size=8, replace=False) for _ in range(3)]
    for q in range(3):
        truth[q, support[q]] = rng.uniform(0.5, 1.5, size=8) * rng.choice([-1, 1], size=8)
    responses = (membership @ truth.T).T + 0.3 + 0.02 * rng.standard_normal((3, k))
    standardized, scales = standardize(responses)
    penalty = cross_validated_lambda(table, k, standardized, n_queries=3, seed=0)
    sparse = lasso_scores(table, k, standardized, scales, penalty)
    assert sparse.shape == (3, n) and sparse.values.dtype == torch.float32
    scores = sparse.dense().numpy()
    for q in range(3):
        top = set(np.argsort(-np.abs(scores[q]))[:8])
        assert top == set(support[q])
        assert np.corrcoef(scores[q], truth[q])[0, 1] > 0.95
