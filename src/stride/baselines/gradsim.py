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

from stride.baselines.common import (BaselineAttributor, Checkpoint, check_checkpoint_settings, check_choice,
                                     check_positive, load_checkpoints, parse_settings, require_prepared)  # fmt: skip
from stride.baselines.gradients import PROJECTIONS, GradientProjector, parameter_sizes, projected_gradients
from stride.registry import MethodContext, register
from stride.tasks import Examples


@dataclass
class GradSimSettings:
    """Attributes:
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


class GradSimAttributor(BaselineAttributor):
    """Projected per-example gradient dot products (`normalize=False`) or cosines (`normalize=True`)."""

    def __init__(self, context: MethodContext, settings: GradSimSettings, normalize: bool):
        super().__init__(context, settings)
        self.name = "gradcos" if normalize else "graddot"
        self.normalize = normalize
        self.checkpoints_: list[Checkpoint] = []
        self.projector_: GradientProjector | None = None
        self.train_: list[torch.Tensor] | None = None

    def _features(self, checkpoint: Checkpoint, data: Examples, query: bool) -> torch.Tensor:
        features = projected_gradients(checkpoint.model, data, self.projector_, self.config.batch_size,
                                       self.context.task, query)  # fmt: skip
        if self.normalize:
            features = torch.nn.functional.normalize(features, dim=1)
        return features

    def prepare(self, train: Examples) -> None:
        config = self.config
        self.checkpoints_ = load_checkpoints(self.context, config.checkpoints, config.include_model,
                                             config.checkpoint_weights)  # fmt: skip
        self.projector_ = GradientProjector(parameter_sizes(self.checkpoints_[0].model), config.proj_dim, self.seed,
                                            config.projection)  # fmt: skip
        self.train_ = []
        for position, checkpoint in enumerate(self.checkpoints_):
            args = {"model": checkpoint.digest, "train": train.digest, "proj_dim": config.proj_dim,
                    "projection": config.projection, "seed": self.seed, "normalize": self.normalize}  # fmt: skip
            stored = self._stage(f"train_gradients_{position}", args,
                                 lambda: {"features": self._features(checkpoint, train, query=False)})  # fmt: skip
            self.train_.append(stored["features"])

    def score(self, queries: Examples) -> torch.Tensor:
        train = require_prepared(self.train_)
        scores = torch.zeros(len(queries), train[0].shape[0])
        with self._timed("score"):
            for checkpoint, features in zip(self.checkpoints_, train):
                scores += checkpoint.weight * (self._features(checkpoint, queries, query=True) @ features.T)
        return scores.float()


@register("graddot")
def _create_dot(context: MethodContext) -> GradSimAttributor:
    return GradSimAttributor(context, parse_settings(GradSimSettings, context.settings, "graddot"), normalize=False)


@register("gradcos")
def _create_cos(context: MethodContext) -> GradSimAttributor:
    return GradSimAttributor(context, parse_settings(GradSimSettings, context.settings, "gradcos"), normalize=True)
