"""Linear datamodeling score (LDS) for training data attribution.

All functions here are pure (no I/O, no global state) and work on NumPy arrays.

Conventions (TRAK / dattri):

* ``scores``: float array ``[n_queries, n_train]``. Positive means the training
  example *lowers* the query's loss.
* ``subsets``: bool array ``[m, n_train]``; row ``j`` marks the training examples
  kept in retrain ``j``.
* ``losses``: float array ``[m, n_queries]`` (one seed) or
  ``[s, m, n_queries]`` (``s`` seeds; the main LDS uses the mean over seeds).

The predicted output of retrain ``j`` on query ``x`` is
``g_j(x) = sum_{i in S_j} score_i(x)`` and ``LDS(x)`` is the Spearman rank
correlation over ``j`` between ``g_j(x)`` and ``-f_j(x)`` (the negated retrained
loss). Ties get average ranks, as in :func:`scipy.stats.spearmanr`. A query
whose prediction is constant across subsets (e.g. all its scores are zero) gets
LDS 0: the method says nothing about it, and every method is judged on the same
queries. A query whose target is constant (the ground truth cannot rank its
subsets) gets NaN and is excluded from the mean, for every method alike.
"""

from __future__ import annotations

import itertools
import math
import warnings
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from stride.core.jsonio import to_json
from stride.core.ranks import spearman_columns

__all__ = [
    "LDSReport",
    "bootstrap_ci",
    "evaluate_lds",
    "lds_per_query",
    "predicted_outputs",
    "seed_ceiling",
    "spearman_brown",
]

MIN_SUBSETS = 3
# Upper bound on the number of int64 indices drawn at once by the bootstrap.
_BOOTSTRAP_CHUNK_ELEMENTS = 4_000_000


# ---------------------------------------------------------------------------
# Validation helpers
# ---------------------------------------------------------------------------


def _as_float_array(x: Any, name: str, ndims: tuple[int, ...]) -> np.ndarray:
    """Convert to a float64 array, checking dimensionality and finiteness."""
    arr = np.asarray(x)
    if arr.ndim not in ndims:
        expected = " or ".join(f"{d}-D" for d in ndims)
        raise ValueError(f"{name} must be {expected}, got shape {arr.shape}")
    if not (np.issubdtype(arr.dtype, np.number) or arr.dtype == np.bool_):
        raise ValueError(f"{name} must be numeric, got dtype {arr.dtype}")
    arr = arr.astype(np.float64, copy=False)
    if not np.all(np.isfinite(arr)):
        n_bad = int(np.size(arr) - np.count_nonzero(np.isfinite(arr)))
        raise ValueError(f"{name} contains {n_bad} NaN or inf value(s)")
    return arr


def _as_subsets(subsets: Any) -> np.ndarray:
    """Convert a subset mask to bool ``[m, n_train]``; accepts bool or 0/1 arrays."""
    arr = np.asarray(subsets)
    if arr.ndim != 2:
        raise ValueError(f"subsets must be 2-D [m, n_train], got shape {arr.shape}")
    if arr.dtype == np.bool_:
        return arr
    if not np.issubdtype(arr.dtype, np.number):
        raise ValueError(f"subsets must be boolean, got dtype {arr.dtype}")
    if not np.all((arr == 0) | (arr == 1)):
        raise ValueError("subsets must be boolean (or contain only 0/1 values)")
    return arr.astype(bool)


def _validate(scores: Any, subsets: Any, losses: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Validate and convert the three LDS inputs.

    Returns:
        ``(scores [nq, n], subsets [m, n] bool, losses [s, m, nq])``; a 2-D
        ``losses`` is returned with a leading seed axis of size 1.

    Raises:
        ValueError: on wrong dimensionality, mismatched shapes, NaN/inf values or
            fewer than three subsets.
    """
    scores = _as_float_array(scores, "scores", (2,))
    subsets = _as_subsets(subsets)
    losses = _as_float_array(losses, "losses", (2, 3))
    if losses.ndim == 2:
        losses = losses[None]
    if losses.shape[0] < 1:
        raise ValueError("losses has zero seeds")
    nq, n_train = scores.shape
    m = subsets.shape[0]
    if subsets.shape[1] != n_train:
        raise ValueError(
            f"n_train mismatch: scores has {n_train} training examples "
            f"(shape {scores.shape}) but subsets has {subsets.shape[1]} "
            f"(shape {subsets.shape})"
        )
    if losses.shape[1] != m:
        raise ValueError(
            f"number of subsets mismatch: subsets has {m} rows but losses has "
            f"{losses.shape[1]} (losses shape {losses.shape[1:]} per seed)"
        )
    if losses.shape[2] != nq:
        raise ValueError(f"n_queries mismatch: scores has {nq} queries but losses has {losses.shape[2]}")
    if m < MIN_SUBSETS:
        raise ValueError(f"need at least {MIN_SUBSETS} subsets for LDS, got {m}")
    return scores, subsets, losses


# ---------------------------------------------------------------------------
# Core computations
# ---------------------------------------------------------------------------


def predicted_outputs(scores: np.ndarray, subsets: np.ndarray) -> np.ndarray:
    """Additive datamodel predictions ``g_j(x) = sum_{i in S_j} score_i(x)``.

    Args:
        scores: Attribution scores ``[n_queries, n_train]``.
        subsets: Boolean mask ``[m, n_train]`` of kept training examples.

    Returns:
        Predicted outputs ``[m, n_queries]`` (higher = lower predicted loss).

    Raises:
        ValueError: if the arrays are not 2-D, contain NaN/inf, or disagree on
            ``n_train``.
    """
    scores = _as_float_array(scores, "scores", (2,))
    subsets = _as_subsets(subsets)
    if subsets.shape[1] != scores.shape[1]:
        raise ValueError(
            f"n_train mismatch: scores has {scores.shape[1]} training examples but subsets has {subsets.shape[1]}"
        )
    return subsets.astype(np.float64) @ scores.T


def lds_per_query(scores: np.ndarray, subsets: np.ndarray, losses: np.ndarray) -> np.ndarray:
    """Per-query LDS: Spearman over subsets between ``g_j(x)`` and ``-f_j(x)``.

    Args:
        scores: Attribution scores ``[n_queries, n_train]``.
        subsets: Boolean mask ``[m, n_train]``.
        losses: Retrained losses ``[m, n_queries]`` or ``[s, m, n_queries]``;
            with several seeds the losses are averaged over seeds first.

    Returns:
        LDS per query ``[n_queries]``; 0 where the prediction is constant across
        subsets, NaN where the target is.

    Raises:
        ValueError: on invalid or inconsistent inputs (see :func:`evaluate_lds`).
    """
    scores, subsets, losses = _validate(scores, subsets, losses)
    pred = subsets.astype(np.float64) @ scores.T
    return _rank_agreement(pred, -losses.mean(axis=0))


def _rank_agreement(pred: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Spearman per column between predictions and targets [m, n_queries]; 0 where the prediction is
    constant and the target is not, NaN where the target is constant."""
    per_query = spearman_columns(pred, target)
    constant_prediction = np.ptp(pred, axis=0) == 0
    constant_target = np.ptp(target, axis=0) == 0
    per_query[constant_prediction & ~constant_target] = 0.0
    return per_query


def bootstrap_ci(
    values: np.ndarray,
    confidence: float = 0.95,
    n_resamples: int = 2000,
    seed: int = 0,
) -> tuple[float, float]:
    """Percentile bootstrap confidence interval for the mean, ignoring NaNs.

    Args:
        values: 1-D array of per-item values (e.g. per-query LDS).
        confidence: Coverage of the interval, in ``(0, 1)``.
        n_resamples: Number of bootstrap resamples (>= 1).
        seed: Seed of the ``numpy.random.Generator``; equal seeds give equal
            intervals.

    Returns:
        ``(low, high)``; ``(nan, nan)`` when there is no finite value and
        ``(v, v)`` when there is exactly one.

    Raises:
        ValueError: on an invalid ``confidence`` or ``n_resamples``.
    """
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    if int(n_resamples) < 1:
        raise ValueError(f"n_resamples must be >= 1, got {n_resamples}")
    vals = np.asarray(values, dtype=np.float64).ravel()
    vals = vals[np.isfinite(vals)]
    n = vals.size
    if n == 0:
        return (math.nan, math.nan)
    if n == 1:
        return (float(vals[0]), float(vals[0]))
    rng = np.random.default_rng(seed)
    n_resamples = int(n_resamples)
    chunk = max(1, _BOOTSTRAP_CHUNK_ELEMENTS // n)
    means = np.empty(n_resamples)
    for start in range(0, n_resamples, chunk):
        stop = min(start + chunk, n_resamples)
        idx = rng.integers(0, n, size=(stop - start, n))
        means[start:stop] = vals[idx].mean(axis=1)
    alpha = (1.0 - confidence) / 2.0
    low, high = np.quantile(means, [alpha, 1.0 - alpha])
    return (float(low), float(high))


def seed_ceiling(losses: np.ndarray) -> np.ndarray:
    """Seed-vs-seed LDS ceiling per query.

    For every pair of seeds ``(a, b)``, the Spearman correlation over subsets
    between ``f^a_j(x)`` and ``f^b_j(x)``; averaged (ignoring NaNs) over all
    pairs. This is the LDS reached against ONE seed by a "method" that is as
    good as an independent retraining run. Note that a predictor of the
    noise-free expected loss could in principle score somewhat higher than
    this (roughly ``sqrt(ceiling)`` under a Gaussian-noise model), so treat it
    as a reference level, not a hard bound.

    Args:
        losses: Retrained losses ``[s, m, n_queries]`` with ``s >= 2``.

    Returns:
        Per-query ceiling ``[n_queries]``; NaN where every pair is constant.

    Raises:
        ValueError: if ``losses`` is not 3-D, has fewer than 2 seeds or 3
            subsets, or contains NaN/inf.
    """
    losses = _as_float_array(losses, "losses", (3,))
    s, m, _ = losses.shape
    if s < 2:
        raise ValueError(f"seed_ceiling needs at least 2 seeds, got {s}")
    if m < MIN_SUBSETS:
        raise ValueError(f"need at least {MIN_SUBSETS} subsets, got {m}")
    per_pair = np.stack([spearman_columns(losses[a], losses[b]) for a, b in itertools.combinations(range(s), 2)])
    return _nanmean_rows(per_pair)


def spearman_brown(r: np.ndarray | float, k: float) -> np.ndarray:
    """Spearman–Brown prophecy ``k r / (1 + (k - 1) r)``.

    Used here as an APPROXIMATION of the ceiling against a mean of ``k`` seeds
    from the single-seed pairwise ceiling ``r`` (it assumes parallel,
    independent seed noise and is exact only for Pearson reliabilities).
    Negative ``r`` is clipped to 0 (no reliability) before applying it.

    Args:
        r: Single-seed reliability (pairwise correlation), scalar or array.
        k: Number of averaged seeds (> 0).

    Returns:
        Predicted reliability of a ``k``-seed mean; NaN where ``r`` is NaN.
    """
    if k <= 0:
        raise ValueError(f"k must be > 0, got {k}")
    r = np.clip(np.asarray(r, dtype=np.float64), 0.0, 1.0)
    return k * r / (1.0 + (k - 1.0) * r)


def _nanmean_rows(x: np.ndarray) -> np.ndarray:
    """Column mean over axis 0 ignoring NaNs, NaN (no warning) if all NaN."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", category=RuntimeWarning)
        return np.nanmean(x, axis=0)


def _nanmean(x: np.ndarray) -> float:
    """Mean ignoring NaNs; NaN (no warning) if there is no finite value."""
    x = np.asarray(x, dtype=np.float64)
    finite = x[np.isfinite(x)]
    return float(finite.mean()) if finite.size else math.nan


# ---------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------


@dataclass
class LDSReport:
    """Result of :func:`evaluate_lds`.

    Attributes:
        mean: Mean LDS over non-excluded queries (target = seed-mean loss).
        ci_low: Lower bound of the bootstrap CI of ``mean``.
        ci_high: Upper bound of the bootstrap CI of ``mean``.
        per_query: Per-query LDS (NaN for excluded queries).
        n_queries: Total number of queries.
        n_excluded: Queries with NaN LDS (constant target: the ground truth cannot rank them).
        n_constant_predictions: Queries whose prediction is constant across subsets (e.g. all-zero
            scores); they count as LDS 0.
        n_subsets: Number of retrained subsets ``m``.
        n_seeds: Number of seeds ``s``.
        confidence: CI coverage.
        n_resamples: Bootstrap resamples.
        seed: Bootstrap seed.
        mean_single_seed: Mean LDS against each seed separately, averaged over
            seeds (comparable to ``ceiling``); ``None`` if ``s == 1``.
        ceiling: Pairwise seed-vs-seed ceiling (mean over queries); ``None`` if
            ``s == 1``.
        ceiling_ci_low: Lower bootstrap CI bound of ``ceiling``.
        ceiling_ci_high: Upper bootstrap CI bound of ``ceiling``.
        ceiling_per_query: Per-query pairwise ceiling, or ``None``.
        ceiling_mean_seeds_approx: Spearman–Brown APPROXIMATION of the ceiling
            against the mean of ``s`` seeds (mean over queries of the per-query
            correction); ``None`` if ``s == 1``.
    """

    mean: float
    ci_low: float
    ci_high: float
    per_query: np.ndarray
    n_queries: int
    n_excluded: int
    n_subsets: int
    n_seeds: int
    n_constant_predictions: int = 0
    confidence: float = 0.95
    n_resamples: int = 2000
    seed: int = 0
    mean_single_seed: float | None = None
    ceiling: float | None = None
    ceiling_ci_low: float | None = None
    ceiling_ci_high: float | None = None
    ceiling_per_query: np.ndarray | None = field(default=None, repr=False)
    ceiling_mean_seeds_approx: float | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable dict (strict JSON: NaN/inf become ``None``)."""
        return to_json(asdict(self))


def evaluate_lds(
    scores: np.ndarray,
    subsets: np.ndarray,
    losses: np.ndarray,
    confidence: float = 0.95,
    n_resamples: int = 2000,
    seed: int = 0,
) -> LDSReport:
    """Compute the LDS of an attribution score matrix, with CI and ceiling.

    Args:
        scores: Attribution scores ``[n_queries, n_train]`` (positive = lowers
            the query's loss).
        subsets: Boolean mask ``[m, n_train]`` with ``m >= 3``.
        losses: Retrained losses ``[m, n_queries]`` or ``[s, m, n_queries]``.
            The main LDS uses the mean over seeds as the target.
        confidence: Coverage of the bootstrap CIs.
        n_resamples: Bootstrap resamples over queries.
        seed: Bootstrap seed (results are deterministic given it).

    Returns:
        An :class:`LDSReport`.

    Raises:
        ValueError: if the inputs have the wrong dimensionality, mismatched
            ``n_train`` / ``m`` / ``n_queries``, NaN or inf values, or fewer
            than three subsets.
    """
    scores, subsets, losses = _validate(scores, subsets, losses)
    s, m, nq = losses.shape
    pred = subsets.astype(np.float64) @ scores.T
    per_query = _rank_agreement(pred, -losses.mean(axis=0))
    low, high = bootstrap_ci(per_query, confidence, n_resamples, seed)
    report = LDSReport(
        mean=_nanmean(per_query),
        ci_low=low,
        ci_high=high,
        per_query=per_query,
        n_queries=nq,
        n_excluded=int(np.count_nonzero(~np.isfinite(per_query))),
        n_subsets=m,
        n_seeds=s,
        n_constant_predictions=int(np.count_nonzero(np.ptp(pred, axis=0) == 0)),
        confidence=confidence,
        n_resamples=int(n_resamples),
        seed=seed,
    )
    if s >= 2:
        single = [_nanmean(_rank_agreement(pred, -losses[k])) for k in range(s)]
        ceil_q = seed_ceiling(losses)
        c_low, c_high = bootstrap_ci(ceil_q, confidence, n_resamples, seed)
        report.mean_single_seed = _nanmean(np.asarray(single))
        report.ceiling = _nanmean(ceil_q)
        report.ceiling_ci_low = c_low
        report.ceiling_ci_high = c_high
        report.ceiling_per_query = ceil_q
        report.ceiling_mean_seeds_approx = _nanmean(spearman_brown(ceil_q, s))
    return report
