"""Bit-identical results under a seed: some multi-threaded CPU kernels (the backward of indexing
with repeated indices) add in a varying order unless torch's deterministic algorithms are on."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch


@contextmanager
def deterministic_algorithms() -> Iterator[None]:
    """Turn torch's deterministic algorithms on for the block, then restore the previous setting."""
    previous = torch.are_deterministic_algorithms_enabled()
    previous_warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(previous, warn_only=previous_warn_only)
