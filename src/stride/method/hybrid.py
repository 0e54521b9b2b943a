"""STRIDE's hybrid: the designs' Lasso scores mixed with the first-order scores of the operator family.

Scores are mixed per query in standard units: (1 - w) z(lasso) + w z(first order), then put back
on the scale of the Lasso scores (times their per-query standard deviation), so they stay in
loss units (a query whose Lasso scores are all zero keeps standard units).

The weight w is chosen without ground truth, by cross-fitting over designs: for each
design j, mix the average of the *other* designs' Lasso scores with the first-order scores, predict
design j's subset responses (M_j times the mixed scores) and take the Spearman correlation with
the measured ones over its K operators; w maximises the mean over queries and designs. Design
j's responses played no part in the scores that predict them, so the criterion does not favour
the Lasso scores for having been fitted to them.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from stride.core.ranks import spearman_columns, standard_units

WEIGHT_GRID = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5)


def mix(lasso: np.ndarray, first_order: np.ndarray, weight: float) -> np.ndarray:
    """(1 - w) z(lasso) + w z(first_order), per query, on the Lasso scores' per-query scale."""
    mixed = (1.0 - weight) * standard_units(lasso) + weight * standard_units(first_order)
    scale = lasso.std(axis=1, keepdims=True)
    return mixed * np.where(scale > 0, scale, 1.0)


def row_spearman(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Spearman correlation of each row of `a` with the same row of `b` -> [rows] (0 for a constant row)."""
    return np.nan_to_num(spearman_columns(a.T, b.T), nan=0.0)


def cross_fitted_weight(design_scores: list[np.ndarray], design_responses: list[np.ndarray],
                        memberships: list[sp.csr_matrix], first_order: np.ndarray,
                        grid: tuple[float, ...] = WEIGHT_GRID) -> tuple[float, dict[float, float]]:  # fmt: skip
    """The mixing weight of the grid whose mixtures best predict held-out designs' responses, and
    the criterion of every weight (see the module docstring). Needs at least two designs."""
    if len(design_scores) < 2:
        raise ValueError("cross-fitting the mixing weight needs at least two designs")
    criteria: dict[float, float] = {}
    for weight in grid:
        values = []
        for held_out, (responses, membership) in enumerate(zip(design_responses, memberships)):
            others = np.mean([s for j, s in enumerate(design_scores) if j != held_out], axis=0)
            predicted = (membership @ mix(others, first_order, weight).T).T
            values.append(row_spearman(predicted, responses).mean())
        criteria[weight] = float(np.mean(values))
    return max(criteria, key=criteria.__getitem__), criteria
