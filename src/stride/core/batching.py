"""Splitting a data set into consecutive batches of indices."""

from __future__ import annotations

from collections.abc import Iterator


def index_batches(n: int, batch_size: int) -> Iterator[list[int]]:
    """Consecutive index lists of at most `batch_size` covering range(n)."""
    for start in range(0, n, batch_size):
        yield list(range(start, min(start + batch_size, n)))
