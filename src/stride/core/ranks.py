"""Rank correlation and per-row standardisation, shared by the LDS and STRIDE's cross-fitted mix."""

from __future__ import annotations

import numpy as np
from scipy.stats import rankdata


def spearman_columns(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Column-wise Spearman rank correlation of two ``[m, k]`` arrays.

    Ranks each column with average ranks for ties (as :func:`scipy.stats.spearmanr` does) and
    takes the Pearson correlation of the ranks. 1-D inputs are treated as a single column.

    Returns:
        Correlations ``[k]``; NaN where a column of ``a`` or ``b`` is constant (exactly,
        including ``m < 2``) or contains NaN.

    Raises:
        ValueError: if the shapes differ or the arrays are more than 2-D.
    """
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"shape mismatch: a has shape {a.shape}, b has {b.shape}")
    if a.ndim == 1:
        a, b = a[:, None], b[:, None]
    if a.ndim != 2:
        raise ValueError(f"expected 1-D or 2-D arrays, got shape {a.shape}")
    m, k = a.shape
    if m == 0:
        return np.full(k, np.nan)
    ra = rankdata(a, axis=0)  # NaN in a column propagates to that column
    rb = rankdata(b, axis=0)
    ra = ra - ra.mean(axis=0)
    rb = rb - rb.mean(axis=0)
    num = np.sum(ra * rb, axis=0)
    den = np.sqrt(np.sum(ra * ra, axis=0) * np.sum(rb * rb, axis=0))
    constant = (np.ptp(a, axis=0) == 0) | (np.ptp(b, axis=0) == 0)
    out = np.full(k, np.nan)
    ok = ~constant & np.isfinite(den) & (den > 0)
    out[ok] = np.clip(num[ok] / den[ok], -1.0, 1.0)
    return out


def standard_units(scores: np.ndarray) -> np.ndarray:
    """Each row centred and divided by its standard deviation (constant rows stay zero)."""
    centred = scores - scores.mean(axis=1, keepdims=True)
    spread = centred.std(axis=1, keepdims=True)
    return centred / np.where(spread > 0, spread, 1.0)
