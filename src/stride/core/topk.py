"""Per query the k largest and k smallest scores, found chunk by chunk of queries.

The order is that of a stable sort of each query's scores in decreasing order: the top list is its
first k entries (ties: lower training index first), the bottom list its last k read backwards
(ties: higher training index first), so `top.jsonl` reads the same whether or not the scores were
ever dense.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from stride.core.sparse_rows import SparseRows

CHUNK_ENTRIES = 1 << 24  # scores of one chunk of queries held densely at once (128 MiB of float64)


@dataclass(frozen=True)
class TopScores:
    """[n_queries, k] training indices (int64) and scores (float32) of the k most and k least
    influential examples per query, and the sparse scores where the method has them (STRIDE: the
    designs' averaged Lasso scores) or None."""

    top_indices: torch.Tensor
    top_scores: torch.Tensor
    bottom_indices: torch.Tensor
    bottom_scores: torch.Tensor
    n_train: int
    sparse: SparseRows | None = None

    def tensors(self) -> dict[str, torch.Tensor]:
        """The arrays of `top_scores.safetensors`."""
        return {
            "top_indices": self.top_indices.contiguous(),
            "top_scores": self.top_scores.contiguous(),
            "bottom_indices": self.bottom_indices.contiguous(),
            "bottom_scores": self.bottom_scores.contiguous(),
        }

    def all_finite(self) -> bool:
        sparse_ok = self.sparse is None or bool(torch.isfinite(self.sparse.values).all())
        return bool(torch.isfinite(self.top_scores).all() and torch.isfinite(self.bottom_scores).all()) and sparse_ok


def chunk_rows(n_train: int) -> int:
    """Queries per chunk so that one chunk holds about CHUNK_ENTRIES scores."""
    return max(1, CHUNK_ENTRIES // max(n_train, 1))


def _first_in_order(row: torch.Tensor, k: int, largest: bool) -> torch.Tensor:
    """Indices of the first k entries of `row` in stable decreasing order (largest=True), or of the
    last k in that order, read backwards (largest=False)."""
    keys = row if largest else -row
    threshold = keys.topk(k).values[-1]
    above = torch.nonzero(keys > threshold).flatten()
    if not largest:
        above = above.flip(0)  # ties among the smallest: higher index first
    above = above[torch.sort(keys[above], descending=True, stable=True).indices]
    ties = torch.nonzero(keys == threshold).flatten()
    ties = ties[: k - len(above)] if largest else ties.flip(0)[: k - len(above)]
    return torch.cat([above, ties])


def top_and_bottom(scores: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """[rows, k] indices of the top and of the bottom k of each row of `scores` [rows, n]."""
    k = min(k, scores.shape[1])
    top = torch.stack([_first_in_order(row, k, largest=True) for row in scores])
    bottom = torch.stack([_first_in_order(row, k, largest=False) for row in scores])
    return top, bottom


def top_scores(rows: Callable[[int, int], torch.Tensor], n_queries: int, n_train: int, k: int,
               sparse: SparseRows | None = None) -> TopScores:  # fmt: skip
    """TopScores of the score matrix whose rows start..stop `rows(start, stop)` returns, built one
    chunk of queries at a time (`chunk_rows`)."""
    k = min(k, n_train)
    parts: list[tuple[torch.Tensor, ...]] = []
    for start in range(0, n_queries, chunk_rows(n_train)):
        chunk = rows(start, min(start + chunk_rows(n_train), n_queries)).float()
        top, bottom = top_and_bottom(chunk, k)
        parts.append((top, chunk.gather(1, top), bottom, chunk.gather(1, bottom)))
    empty_indices, empty_scores = torch.empty(0, k, dtype=torch.int64), torch.empty(0, k)
    columns = [torch.cat([part[i] for part in parts]) if parts else (empty_indices if i % 2 == 0 else empty_scores)
               for i in range(4)]  # fmt: skip
    return TopScores(columns[0], columns[1], columns[2], columns[3], n_train, sparse)
