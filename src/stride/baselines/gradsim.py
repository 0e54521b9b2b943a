"""Gradient similarity: `graddot` (TracIn-style dot products) and `gradcos` (cosines).

score[q, i] = sum over checkpoints c of w_c * <R g_c(query q), R g_c(train i)>, where g_c is the
gradient of the per-example loss w.r.t. all parameters of checkpoint c and R a seeded random
projection (`gradients.GradientProjector`). A gradient step on example i changes the query's loss
by -lr * <g(i), g(q)> to first order, so a positive dot product means "training on i lowers the
query's loss": the sign convention holds as is. Summed over checkpoints with learning-rate
weights this is TracIn (Pruthi et al. 2020) with random projections. `gradcos` normalises both
projected gradients first, which removes the pull of high-loss examples with large gradients.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from stride.attributor import MethodContext
from stride.baselines.common import (
    check_checkpoint_settings,
    check_choice,
    check_positive,
    load_checkpoints,
    parse_settings,
)
from stride.baselines.gradients import projected_gradients
from stride.baselines.inner_product import FEATURES, InnerProductAttributor, Part
from stride.core.sketch import PROJECTIONS, GradientProjector, parameter_sizes
from stride.store import Tensors
from stride.tasks import Examples


@dataclass
class GradSimSettings:
    """Settings of `graddot` and `gradcos`.

    Attributes:
        proj_dim: dimension of the projected gradients. 4096 keeps the relative error of a projected
            inner product near 1/sqrt(4096) = 1.6% of the norms' product, at 16 KiB per example.
        projection: "sjlt" (sparse, O(n_params) per example) or "gaussian" (dense).
        batch_size: examples per vmap'ed gradient batch (memory: batch_size x n_params floats).
        checkpoints: further model folders (same tokenizer) whose scores are added (TracIn).
        include_model: also use the attributed model itself.
        checkpoint_weights: one weight per model used (e.g. learning rates); default all 1.
    """

    proj_dim: int = 4096
    projection: str = "sjlt"
    batch_size: int = 16
    checkpoints: list[str] = field(default_factory=list)
    include_model: bool = True
    checkpoint_weights: list[float] | None = None

    def validate(self) -> None:
        check_positive(self, "proj_dim", "batch_size")
        check_choice(self, "projection", PROJECTIONS)
        check_checkpoint_settings(self.checkpoints, self.checkpoint_weights)


class GradSimAttributor(InnerProductAttributor):
    """Projected per-example gradient dot products (`normalize=False`) or cosines (`normalize=True`),
    one part per checkpoint."""

    def __init__(self, context: MethodContext, settings: GradSimSettings, normalize: bool):
        super().__init__(context, settings)
        self.name = "gradcos" if normalize else "graddot"
        self.normalize = normalize
        self.projector_: GradientProjector | None = None

    def _parts(self) -> list[Part]:
        config = self.config
        checkpoints = load_checkpoints(
            self.context, config.checkpoints, config.include_model, config.checkpoint_weights
        )
        self.projector_ = GradientProjector(parameter_sizes(checkpoints[0].model), config.proj_dim, self.seed,
                                            config.projection)  # fmt: skip
        return [Part(checkpoint.label, checkpoint.digest, checkpoint.weight, checkpoint) for checkpoint in checkpoints]

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
