"""Query blocks: the pieces in which STRIDE measures and recovers, so that the processes of a
torchrun job can share one design's queries (`StrideAttributor.shard_phases`).

A block's partial stage is its design's stage under a name that adds the block's queries
("responses_design1_queries256-512"), with the same arguments and inputs. Measurement blocks start
at multiples of the measuring pass's queries (`expansion.pass_queries`), so a block holds exactly
those rows of a measurement of all queries. Recovery blocks are QUERY_BLOCK queries; a single
process recovers in the same blocks (see `StrideAttributor._recover`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from stride.store import Stage
from stride.tasks import Examples

QUERY_BLOCK = 256  # queries per block (measurement blocks: rounded up to a multiple of a pass's queries)


def query_blocks(n_queries: int, multiple: int = 1) -> list[tuple[int, int]]:
    """(start, stop) of each block of `n_queries` queries: QUERY_BLOCK rounded up to a multiple of `multiple`."""
    size = -(-QUERY_BLOCK // multiple) * multiple
    return [(start, min(start + size, n_queries)) for start in range(0, n_queries, size)]


def block_stage(stage: Stage, start: int, stop: int) -> Stage:
    """The partial stage of queries start..stop of `stage`."""
    return dataclasses.replace(stage, name=f"{stage.name}_queries{start}-{stop}")


@dataclass
class QueryRange:
    """Queries start..stop of `queries`, as a data set of their own (its row i is row start + i)."""

    queries: Examples
    start: int
    stop: int
    digest: str = field(init=False)

    def __post_init__(self) -> None:
        self.digest = f"{self.queries.digest}[{self.start}:{self.stop}]"

    def __len__(self) -> int:
        return self.stop - self.start

    def batch(self, indices: Sequence[int]) -> Any:
        return self.queries.batch([self.start + index for index in indices])
