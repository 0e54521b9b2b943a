"""Sparse recovery: per query, w = argmin 1/(2K) ||y - c - M w||^2 + lambda ||w||_1.

The lambda rule ("cv"): each query's responses are divided by their standard deviation (not
centred: the free intercept c takes their mean), so one penalty fits all queries; that penalty
is the median of the penalties chosen by 5-fold cross-validation over subsets (scikit-learn's
LassoCV, 15 penalties spread over two decades below the smallest penalty that zeroes every
score) on a sample of queries. The solution is scaled back by the standard deviation, so scores
are in loss units. c is a free intercept: a shift shared by all operators (the corpus' general
style) is not credited to any example.
"""

from __future__ import annotations

import warnings

import numpy as np
import scipy.sparse as sp
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import Lasso, LassoCV


def standardize(responses: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Responses [n_queries, K] divided by their per-query standard deviation (and the scales)."""
    scales = responses.std(axis=1)
    scales = np.where(scales > 0, scales, 1.0)
    return responses / scales[:, None], scales


CV_LAMBDAS = 15  # penalties on the cross-validation grid
CV_SPAN = 1e-2  # the grid's smallest penalty, as a fraction of the largest useful one


def cross_validated_lambda(
    membership: sp.csr_matrix,
    standardized: np.ndarray,
    n_queries: int,
    seed: int,
    n_lambdas: int = CV_LAMBDAS,
    span: float = CV_SPAN,
) -> float:
    """Median over a seeded sample of queries of the LassoCV-chosen penalty (grid: `n_lambdas`
    penalties from the largest useful one down to `span` times it; the two measured regimes chose
    1.7-7% of it, and a grid over three decades cost 7x more for the same median)."""
    rng = np.random.default_rng(seed)
    sample = rng.choice(len(standardized), size=min(n_queries, len(standardized)), replace=False)
    chosen = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        for query in np.sort(sample):
            search = LassoCV(alphas=n_lambdas, eps=span, cv=5, fit_intercept=True, max_iter=5000, tol=1e-4)
            search.fit(membership, standardized[query])
            chosen.append(search.alpha_)
    return float(np.median(chosen))


def lasso_scores(membership: sp.csr_matrix, standardized: np.ndarray, scales: np.ndarray, penalty: float) -> np.ndarray:
    """Lasso solutions of all queries at one penalty, rescaled: float32 [n_queries, n_train]."""
    model = Lasso(alpha=penalty, fit_intercept=True, max_iter=10000, tol=1e-5)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        model.fit(membership, standardized.T)
    coefficients = np.atleast_2d(model.coef_)
    return (coefficients * scales[:, None]).astype(np.float32)
