"""Gradient similarity: `graddot` (TracIn-style dot products) and `gradcos` (cosines).

score[q, i] = sum over checkpoints c of w_c * <R g_c(query q), R g_c(train i)>, where g_c is the
gradient of the per-example loss w.r.t. all parameters of checkpoint c. Models of at most
`exact_max_parameters` parameters use the exact gradients (R = identity): the queries' gradients
are kept (`query_memory_gib` of them at a time) and each batch of training gradients is
multiplied against them as it is computed, so nothing n_train x n_params is held and no sketch
noise enters. Larger models use R, a seeded count sketch to `proj_dim` numbers
(`core.sketch.GradientProjector`), whose training side is a stored stage. A gradient step on
example i changes the query's loss by -lr * <g(i), g(q)> to first order, so a positive dot
product means "training on i lowers the query's loss": the sign convention holds as is. Summed
over checkpoints with learning-rate weights this is TracIn (Pruthi et al. 2020). `gradcos`
normalises both gradients first, which removes the pull of high-loss examples with large
gradients.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from stride.attributor import MethodContext
from stride.baselines.common import (
    check_checkpoint_settings,
    check_choice,
    check_optional_positive,
    check_positive,
    load_checkpoints,
    parse_settings,
    queries_per_pass,
)
from stride.baselines.gradients import per_example_gradients, projected_gradients
from stride.baselines.inner_product import FEATURES, InnerProductAttributor, Part
from stride.core.batching import index_batches
from stride.core.sketch import PROJECTIONS, GradientProjector, parameter_sizes
from stride.errors import StrideError
from stride.store import Tensors
from stride.tasks import Examples, Task


@dataclass
class GradSimSettings:
    """Settings of `graddot` and `gradcos`.

    Attributes:
        exact_max_parameters: models with at most this many parameters use exact gradients (no
            sketch; the training gradients are streamed, not stored); larger ones the sketch. The
            projected inner product's error, 1/sqrt(proj_dim) of the norms' product, cost 0.10 LDS on
            a 0.2M-parameter model against exact dot products (measured outside the project).
        proj_dim: dimension of the projected gradients above `exact_max_parameters`. 4096 keeps the
            relative error of a projected inner product near 1.6% of the norms' product, at 16 KiB
            per example.
        projection: "sjlt" (sparse, O(n_params) per example) or "gaussian" (dense).
        batch_size: examples per vmap'ed gradient batch (memory: batch_size x n_params floats).
        checkpoints: further model folders (same tokenizer) whose scores are added (TracIn).
        include_model: also use the attributed model itself.
        checkpoint_weights: one weight per model used (e.g. learning rates); default all 1.
        query_memory_gib: with exact gradients, memory for the query gradients held at once (one
            copy of the parameters per query); each such block of queries takes one pass of
            gradients over the training set: more memory, fewer passes. The scores do not depend
            on it (beyond float rounding), so the stages do not record it. None: 1 GiB.
    """

    exact_max_parameters: int = 5_000_000
    proj_dim: int = 4096
    projection: str = "sjlt"
    batch_size: int = 16
    checkpoints: list[str] = field(default_factory=list)
    include_model: bool = True
    checkpoint_weights: list[float] | None = None
    query_memory_gib: float | None = None

    def validate(self) -> None:
        check_positive(self, "proj_dim", "batch_size")
        check_optional_positive(self, "query_memory_gib")
        if self.exact_max_parameters < 0:
            raise StrideError(f"exact_max_parameters must be at least 0, got {self.exact_max_parameters}")
        check_choice(self, "projection", PROJECTIONS)
        check_checkpoint_settings(self.checkpoints, self.checkpoint_weights)


class GradSimAttributor(InnerProductAttributor):
    """Per-example gradient dot products (`normalize=False`) or cosines (`normalize=True`), one part
    per checkpoint: exact for models up to `exact_max_parameters`, projected above."""

    unrecorded_settings = ("query_memory_gib",)

    def __init__(self, context: MethodContext, settings: GradSimSettings, normalize: bool):
        super().__init__(context, settings)
        self.name = "gradcos" if normalize else "graddot"
        self.normalize = normalize
        self.exact = sum(parameter_sizes(context.model).values()) <= settings.exact_max_parameters
        self.projector_: GradientProjector | None = None
        self.train_data_: Examples | None = None

    def settings(self) -> dict[str, object]:
        return {**super().settings(), "exact": self.exact}

    def _parts(self) -> list[Part]:
        config = self.config
        checkpoints = load_checkpoints(
            self.context, config.checkpoints, config.include_model, config.checkpoint_weights
        )
        self.projector_ = GradientProjector(parameter_sizes(checkpoints[0].model), config.proj_dim, self.seed,
                                            config.projection)  # fmt: skip
        return [Part(checkpoint.label, checkpoint.digest, checkpoint.weight, checkpoint) for checkpoint in checkpoints]

    def _prepare(self, train: Examples) -> None:
        if not self.exact:
            super()._prepare(train)
            return
        self.parts_ = self._parts()  # exact: the training gradients are streamed when scoring
        self.train_data_ = train

    def _scores(self, queries: Examples) -> torch.Tensor:
        if not self.exact:
            return super()._scores(queries)
        if self.train_data_ is None:
            raise RuntimeError("call prepare() before score()")
        train, batch_size = self.train_data_, self.config.batch_size
        scores = torch.zeros(len(queries), len(train), dtype=torch.float64)
        for part in self.parts_:
            model, task = part.source.model, self.context.task
            chunk = queries_per_pass(self.config.query_memory_gib, 4 * sum(parameter_sizes(model).values()))
            for first in range(0, len(queries), chunk):
                rows = list(range(first, min(first + chunk, len(queries))))
                held = self._flat_gradients(model, queries.batch(rows), task, query=True)
                for indices in index_batches(len(train), batch_size):
                    streamed = self._flat_gradients(model, train.batch(indices), task, query=False)
                    scores[first : rows[-1] + 1, indices] += part.weight * (held @ streamed.T).double()
        return scores.float()

    def _flat_gradients(self, model: nn.Module, batch: object, task: Task, query: bool) -> torch.Tensor:
        """Exact per-example gradients of a batch as rows [rows, n_params] (unit rows for gradcos)."""
        grads = per_example_gradients(model, batch, task, query)
        rows = next(iter(grads.values())).shape[0]
        flat = torch.cat([g.reshape(rows, -1).float() for g in grads.values()], dim=1)
        return torch.nn.functional.normalize(flat, dim=1) if self.normalize else flat

    def _features(self, part: Part, data: Examples, query: bool) -> torch.Tensor:
        if self.projector_ is None:  # made with the parts, in prepare()
            raise RuntimeError("call prepare() before score()")
        features = projected_gradients(part.source.model, data, self.projector_, self.config.batch_size,
                                       self.context.task, query)  # fmt: skip
        return torch.nn.functional.normalize(features, dim=1) if self.normalize else features

    def train_features(self, part: Part, train: Examples) -> Tensors:
        return {FEATURES: self._features(part, train, query=False)}

    def query_features(self, part: Part, queries: Examples) -> torch.Tensor:
        return self._features(part, queries, query=True)


def create_graddot(context: MethodContext) -> GradSimAttributor:
    return GradSimAttributor(context, parse_settings(GradSimSettings, context.settings, "graddot"), normalize=False)


def create_gradcos(context: MethodContext) -> GradSimAttributor:
    return GradSimAttributor(context, parse_settings(GradSimSettings, context.settings, "gradcos"), normalize=True)
