"""Attribution by inner products of representations: graddot, gradcos, repsim, logra, operator-grad.

    score[q, i] = sum over parts p of weight_p * <query_features_p(q), train_features_p(i)>

A part is one model of an ensemble (TracIn's checkpoints) or one steered place; most methods
have a single part. A subclass says only how its representations are made; the training-side
features of every part are a stored stage, and so are the query scores.
"""

from __future__ import annotations

from abc import abstractmethod
from dataclasses import dataclass
from typing import Any

import torch

from stride.attributor import MethodContext
from stride.baselines.common import BaselineAttributor
from stride.store import StageOutput, Tensors
from stride.tasks import Examples

FEATURES = "features"


@dataclass
class Part:
    """One term of the sum: its stage label, the digest of the model it reads, its weight, and what
    the subclass needs to make its features (a checkpoint, a steered place ...)."""

    label: str
    digest: str
    weight: float = 1.0
    source: Any = None


class InnerProductAttributor(BaselineAttributor):
    """Scores are weighted sums of inner products of per-part query and training features."""

    def __init__(self, context: MethodContext, settings: Any):
        super().__init__(context, settings)
        self.parts_: list[Part] = []
        self.train_: dict[str, Tensors] = {}

    def _parts(self) -> list[Part]:
        """The terms of the sum (default: the attributed model alone)."""
        return [Part("model", self.context.model_digest)]

    @abstractmethod
    def train_features(self, part: Part, train: Examples) -> Tensors:
        """The training examples' features of `part`: {"features": [n_train, dim], ...}."""

    @abstractmethod
    def query_features(self, part: Part, queries: Examples) -> torch.Tensor:
        """The queries' features of `part` -> [n_queries, dim]."""

    def _prepare(self, train: Examples) -> None:
        self.parts_ = self._parts()
        for position, part in enumerate(self.parts_):
            stage = self._new_stage(f"train_features_{position}", part=part.digest)

            # a typed def rather than a lambda with a default argument, whose type mypy cannot infer
            def compute(part: Part = part) -> StageOutput:
                return self.train_features(part, train), {}

            self.train_[part.label], _ = self._stage(stage, compute)

    def _scores(self, queries: Examples) -> torch.Tensor:
        scores = None
        for part in self.parts_:
            term = part.weight * (self.query_features(part, queries) @ self.train_[part.label][FEATURES].T)
            scores = term if scores is None else scores + term
        if scores is None:  # no parts: prepare() makes them
            raise RuntimeError("call prepare() before score()")
        return scores.float()
