"""PNG plots for LDS reports.

matplotlib is imported lazily inside :func:`plot_lds` and only through its
object-oriented API with the Agg canvas, so importing this module needs no
matplotlib, needs no display, and never changes the global pyplot backend.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from stride.evaluation.lds import LDSReport, _validate

__all__ = ["plot_lds", "select_example_queries"]


def select_example_queries(per_query: np.ndarray, n_examples: int) -> list[int]:
    """Indices of queries at evenly spaced quantiles of the per-query LDS.

    Args:
        per_query: Per-query LDS ``[n_queries]`` (NaNs are skipped).
        n_examples: Number of queries wanted.

    Returns:
        Up to ``n_examples`` distinct query indices, from lowest to highest LDS.
    """
    per_query = np.asarray(per_query, dtype=np.float64)
    finite = np.flatnonzero(np.isfinite(per_query))
    if finite.size == 0 or n_examples < 1:
        return []
    order = finite[np.argsort(per_query[finite], kind="stable")]
    positions = np.round(np.linspace(0, order.size - 1, n_examples)).astype(int)
    return list(dict.fromkeys(int(order[p]) for p in positions))


def plot_lds(
    report: LDSReport,
    scores: np.ndarray,
    subsets: np.ndarray,
    losses: np.ndarray,
    path: str | os.PathLike[str],
    n_examples: int = 4,
) -> Path:
    """Write a PNG summarising an LDS evaluation.

    Top row: predicted output ``g_j(x)`` vs actual ``-f_j(x)`` (seed-mean loss)
    for queries at several quantiles of per-query LDS. Bottom: histogram of
    per-query LDS with the mean, its CI and (if available) the seed ceiling.

    Args:
        report: Result of :func:`stride.evaluation.evaluate_lds` on these inputs.
        scores: Attribution scores ``[n_queries, n_train]``.
        subsets: Boolean mask ``[m, n_train]``.
        losses: Losses ``[m, n_queries]`` or ``[s, m, n_queries]``.
        path: Output PNG path (parent folders are created).
        n_examples: Number of example queries in the top row.

    Returns:
        The path written.

    Raises:
        ValueError: on invalid inputs or if ``report`` does not match them.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    scores, subsets, losses = _validate(scores, subsets, losses)
    per_query = np.asarray(report.per_query, dtype=np.float64)
    if per_query.shape != (scores.shape[0],):
        raise ValueError(f"report has {per_query.size} per-query values but scores has {scores.shape[0]} queries")
    pred = subsets.astype(np.float64) @ scores.T
    target = -losses.mean(axis=0)
    examples = select_example_queries(per_query, n_examples)
    n_cols = max(1, len(examples))

    fig = Figure(figsize=(3.2 * max(n_cols, 2), 6.4), layout="constrained")
    FigureCanvasAgg(fig)
    grid = fig.add_gridspec(2, n_cols)
    for col, q in enumerate(examples):
        ax = fig.add_subplot(grid[0, col])
        ax.scatter(pred[:, q], target[:, q], s=10, alpha=0.7)
        ax.set_title(f"query {q}: LDS={per_query[q]:.3f}", fontsize=9)
        ax.set_xlabel("predicted g_j(x)", fontsize=8)
        if col == 0:
            ax.set_ylabel("actual -loss", fontsize=8)
        ax.tick_params(labelsize=7)
    if not examples:
        ax = fig.add_subplot(grid[0, 0])
        ax.text(0.5, 0.5, "no query with finite LDS", ha="center", va="center")
        ax.set_axis_off()

    ax = fig.add_subplot(grid[1, :])
    finite = per_query[np.isfinite(per_query)]
    if finite.size:
        ax.hist(finite, bins=min(30, max(5, finite.size // 3)), color="0.7")
    if np.isfinite(report.mean):
        ax.axvline(report.mean, color="C0", label=f"mean LDS = {report.mean:.3f}")
        if np.isfinite(report.ci_low) and np.isfinite(report.ci_high):
            ax.axvspan(report.ci_low, report.ci_high, color="C0", alpha=0.2, label=f"{report.confidence:.0%} CI")
    if report.ceiling is not None and np.isfinite(report.ceiling):
        ax.axvline(
            report.ceiling, color="C3", linestyle="--", label=f"seed-vs-seed ceiling, 1 seed = {report.ceiling:.3f}"
        )
    approx = report.ceiling_mean_seeds_approx
    if approx is not None and np.isfinite(approx):
        ax.axvline(
            approx,
            color="C3",
            linestyle=":",
            label=f"ceiling vs {report.n_seeds}-seed mean (Spearman-Brown approx.) = {approx:.3f}",
        )
    ax.set_xlabel("per-query LDS")
    ax.set_ylabel("queries")
    ax.set_title(
        f"LDS over {report.n_queries - report.n_excluded} queries "
        f"({report.n_excluded} excluded), m={report.n_subsets}, "
        f"seeds={report.n_seeds}",
        fontsize=9,
    )
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8)

    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, format="png", dpi=100)
    return out
