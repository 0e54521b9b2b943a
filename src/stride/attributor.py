"""The interface every attribution method implements: prepare on the training set, then score queries."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any

import torch

from stride.data import TokenizedData


class Attributor(ABC):
    """Scores [n_queries, n_train]; positive = training on the example lowers the query's loss.

    `prepare` runs once per training set; `score` may then run on any number of query sets.
    `timings` maps stage names to seconds and `settings()` records every choice, for info.json.
    """

    name: str = ""

    def __init__(self) -> None:
        self.timings: dict[str, float] = {}

    @abstractmethod
    def settings(self) -> dict[str, Any]:
        """Every setting that changes the scores."""

    @abstractmethod
    def prepare(self, train: TokenizedData) -> None:
        """Do the per-training-set work (fit operators, factors, projections ...)."""

    @abstractmethod
    def score(self, queries: TokenizedData) -> torch.Tensor:
        """The float32 score matrix [len(queries), n_train] of the prepared training set."""
