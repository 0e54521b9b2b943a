"""Sparse recovery: per query, w = argmin 1/(2K) ||y - c - M w||^2 + lambda ||w||_1.

The lambda rule ("cv"): each query's responses are divided by their standard deviation (not
centred: the free intercept c takes their mean), so one penalty fits all queries; that penalty
is the median of the penalties chosen by 5-fold cross-validation over subsets on a sample of
queries: scikit-learn's LassoCV procedure (15 penalties spread over two decades below the smallest
penalty that zeroes every score, contiguous folds of rows, the penalty of least mean held-out
squared error). The solution is scaled back by the standard deviation, so scores are in loss
units. c is a free intercept: a shift shared by all operators (the corpus' general style) is not
credited to any example.

Two solvers compute both steps (setting `lasso_solver`; "auto" picks by the number of training
examples): "batched" (`stride.method.batched_lasso`: every query at once on the sparse membership,
in torch; the cross-validation runs the same procedure with it) and "scikit-learn" (LassoCV per
sampled query, then one Lasso), faster on small training sets, where the batched solver's
per-step overhead dominates. Both stop at scikit-learn's tolerances: relative duality gap 1e-4 for
the cross-validation (LassoCV's default) and 1e-5 for the scores. STRIDE hands `lasso_scores` one
query block at a time (`stride.method.query_blocks`); the batched solver's solution of a query
depends, within its tolerance, on the other queries solved with it.
"""

from __future__ import annotations

import itertools
import warnings

import numpy as np
import scipy.sparse as sp
import torch

from stride.core.sparse_rows import SparseRows
from stride.method.batched_lasso import largest_correlations, predictions, solve
from stride.method.membership import membership_matrix


def standardize(responses: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Responses [n_queries, K] divided by their per-query standard deviation (and the scales)."""
    scales = responses.std(axis=1)
    scales = np.where(scales > 0, scales, 1.0)
    return responses / scales[:, None], scales


CV_LAMBDAS = 15  # penalties on the cross-validation grid
CV_SPAN = 1e-2  # the grid's smallest penalty, as a fraction of the largest useful one
CV_FOLDS = 5
CV_TOL = 1e-4  # relative duality gap of the cross-validation fits (LassoCV's tol)
SCORES_TOL = 1e-5  # relative duality gap of the scores
BATCHED_FROM = 10_000  # training examples from which "auto" picks the batched solver (measured crossover)
SOLVERS = {  # what each solver is, as the recovery stage records it
    "batched": f"batched working-set block coordinate descent, gap {SCORES_TOL:g} (cross-validation {CV_TOL:g})",
    "scikit-learn": f"scikit-learn Lasso, tol {SCORES_TOL:g} (LassoCV tol {CV_TOL:g})",
}


def resolve_solver(setting: str, n_train: int) -> str:
    """The solver ("batched" or "scikit-learn") that the `lasso_solver` setting picks for n_train examples."""
    if setting == "auto":
        return "batched" if n_train >= BATCHED_FROM else "scikit-learn"
    return setting


def penalty_grid(
    table: torch.Tensor, n_subsets: int, responses: torch.Tensor, n_lambdas: int, span: float
) -> np.ndarray:
    """Per row of `responses` [P, K], `n_lambdas` penalties from the smallest one that zeroes every
    coefficient down to `span` times it, evenly spaced in log (scikit-learn's alpha grid) -> [P, n_lambdas]."""
    largest = (largest_correlations(table, n_subsets, responses) / n_subsets).cpu().numpy()
    tiny = np.finfo(np.float64).resolution  # constant responses: scikit-learn's grid for them
    return np.stack([np.geomspace(value, value * span, num=n_lambdas) if value > tiny else np.full(n_lambdas, tiny)
                     for value in largest])  # fmt: skip


def fold_rows(n_subsets: int, folds: int = CV_FOLDS) -> list[np.ndarray]:
    """The held-out rows of each fold: contiguous blocks, the first K mod folds one row longer (KFold)."""
    sizes = np.full(folds, n_subsets // folds)
    sizes[: n_subsets % folds] += 1
    edges = np.concatenate([[0], np.cumsum(sizes)])
    return [np.arange(start, stop) for start, stop in itertools.pairwise(edges)]


def cross_validated_errors(
    table: torch.Tensor, n_subsets: int, responses: torch.Tensor, grid: np.ndarray, tol: float = CV_TOL
) -> np.ndarray:
    """Mean held-out squared error over the folds of every row of `responses` [Q, K] at every penalty of
    its grid row -> [Q, n_lambdas]. All folds of all rows are solved together, along the grid."""
    n_queries, device = len(responses), responses.device
    held_out = torch.zeros(CV_FOLDS, n_subsets, dtype=torch.float64, device=device)
    for fold, rows in enumerate(fold_rows(n_subsets)):
        held_out[fold, torch.as_tensor(rows, device=device)] = 1.0
    tested = held_out.repeat_interleave(n_queries, dim=0)  # problem = fold x n_queries + query
    stacked = responses.double().repeat(CV_FOLDS, 1)
    penalties = torch.as_tensor(np.tile(grid, (CV_FOLDS, 1)), device=device)
    errors = np.empty((CV_FOLDS * n_queries, grid.shape[1]))
    solution = None
    for step in range(grid.shape[1]):
        solution = solve(table, n_subsets, stacked, penalties[:, step], rows=1.0 - tested, tol=tol, start=solution)
        missed = (predictions(table, n_subsets, solution) - stacked) ** 2 * tested
        errors[:, step] = (missed.sum(1) / tested.sum(1)).cpu().numpy()
    return errors.reshape(CV_FOLDS, n_queries, -1).mean(0)


def cross_validated_lambda(
    table: np.ndarray,
    n_subsets: int,
    standardized: np.ndarray,
    n_queries: int,
    seed: int,
    solver: str = "batched",
    n_lambdas: int = CV_LAMBDAS,
    span: float = CV_SPAN,
) -> float:
    """Median over a seeded sample of queries of the cross-validated penalty (LassoCV's choice; grid:
    `n_lambdas` penalties from the largest useful one down to `span` times it; the two measured
    regimes chose 1.7-7% of it, and a grid over three decades cost 7x more for the same median)."""
    rng = np.random.default_rng(seed)
    sample = np.sort(rng.choice(len(standardized), size=min(n_queries, len(standardized)), replace=False))
    if solver == "scikit-learn":
        return float(np.median(_lasso_cv_penalties(membership_matrix(table, n_subsets), standardized[sample],
                                                   n_lambdas, span)))  # fmt: skip
    subsets = torch.as_tensor(table, dtype=torch.int64)
    responses = torch.as_tensor(standardized[sample], dtype=torch.float64)
    grid = penalty_grid(subsets, n_subsets, responses, n_lambdas, span)
    errors = cross_validated_errors(subsets, n_subsets, responses, grid)
    return float(np.median(grid[np.arange(len(grid)), errors.argmin(1)]))


def _lasso_cv_penalties(membership: sp.csr_matrix, responses: np.ndarray, n_lambdas: int, span: float) -> list[float]:
    """scikit-learn's LassoCV penalty for each row of `responses`."""
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LassoCV

    chosen = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        for row in responses:
            search = LassoCV(alphas=n_lambdas, eps=span, cv=CV_FOLDS, fit_intercept=True, max_iter=5000, tol=CV_TOL)
            chosen.append(float(search.fit(membership, row).alpha_))
    return chosen


def lasso_scores(
    table: np.ndarray,
    n_subsets: int,
    standardized: np.ndarray,
    scales: np.ndarray,
    penalty: float,
    solver: str = "batched",
) -> SparseRows:
    """Lasso solutions of all queries at one penalty, rescaled: float32 sparse [n_queries, n_train]."""
    if solver == "scikit-learn":
        from sklearn.exceptions import ConvergenceWarning
        from sklearn.linear_model import Lasso

        model = Lasso(alpha=penalty, fit_intercept=True, max_iter=10000, tol=SCORES_TOL)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            model.fit(membership_matrix(table, n_subsets), standardized.T)
        coefficients = np.atleast_2d(model.coef_) * scales[:, None]
        return SparseRows.from_scipy(sp.csr_matrix(coefficients.astype(np.float32)))
    responses = torch.as_tensor(standardized, dtype=torch.float64)
    penalties = torch.full((len(responses),), penalty, dtype=torch.float64)
    solution = solve(torch.as_tensor(table, dtype=torch.int64), n_subsets, responses, penalties, tol=SCORES_TOL)
    return solution.coefficients(len(table)).scaled(torch.as_tensor(scales)).to(torch.float32)
