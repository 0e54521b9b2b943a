"""Restricted-gradient diagnostic: how much of the training signal an operator family can carry.

Scores <g(q), g(z)>, the gradients of query and example losses w.r.t. one infinitesimal operator
of the family (`stride.method.first_order`): what STRIDE with that family measures to first order.
Its LDS takes seconds to compute and ranks operator families before any is trained; the
full-parameter gradient dot product (`graddot`) is the same quantity without the restriction.

Operators on several blocks act as one operator with a block of numbers per steered block: their
features concatenate, so their scores add.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from stride.attributor import MethodContext
from stride.baselines.common import check_choice, parse_settings
from stride.baselines.inner_product import FEATURES, InnerProductAttributor, Part
from stride.config import FORMS
from stride.errors import StrideError
from stride.method.first_order import restricted_gradients
from stride.method.steering import Steered
from stride.store import Tensors
from stride.tasks import Examples


@dataclass
class OperatorGradientSettings:
    """Settings of the `operator-grad` diagnostic.

    Attributes:
        form: "logit", "residual" or "shared_logit", as in StrideConfig.
        layers: the steered places (decoder block indices for causal LMs); empty: the task's
            default place, the one STRIDE steers by default.
        rank: rank r of the basis B; 0 means no basis (B = identity, the full width of the place).
        output_rank: rank r' of the random output basis U (shared_logit form only).
        normalize: divide every feature vector by its norm first (cosine instead of dot product).
        batch_size: examples per backward pass.
    """

    form: str = "logit"
    layers: list[int | str] = field(default_factory=list)
    rank: int = 16
    output_rank: int = 32
    normalize: bool = False
    batch_size: int = 16

    def validate(self) -> None:
        check_choice(self, "form", FORMS)
        if isinstance(self.rank, bool) or not isinstance(self.rank, int) or self.rank < 0:
            raise StrideError(f"rank must be 0 (no basis) or a positive integer, got {self.rank!r}")
        if isinstance(self.output_rank, bool) or not isinstance(self.output_rank, int) or self.output_rank < 1:
            raise StrideError(f"output_rank must be a positive integer, got {self.output_rank!r}")
        if not isinstance(self.batch_size, int) or self.batch_size < 1:
            raise StrideError(f"batch_size must be a positive integer, got {self.batch_size!r}")
        if not isinstance(self.layers, (list, tuple)):
            raise StrideError(f"layers must be a list of steered places, got {self.layers!r}")


class OperatorGradientAttributor(InnerProductAttributor):
    """Scores <g(query), g(example)> summed over the steered places (see the module docstring)."""

    name = "operator-grad"

    def __init__(self, context: MethodContext, settings: OperatorGradientSettings):
        super().__init__(context, settings)
        places: list[int | str | None] = list(settings.layers) or [None]  # None: the task's default place
        self.steered_ = [context.task.steered(context.model, place) for place in places]

    def settings(self) -> dict[str, object]:
        return {**super().settings(), "layers": [steered.location for steered in self.steered_]}

    def _parts(self) -> list[Part]:
        return [Part(str(steered.location), self.context.model_digest, source=steered) for steered in self.steered_]

    def _features(self, steered: Steered, data: Examples, query: bool) -> torch.Tensor:
        config = self.config
        features = restricted_gradients(steered, data, config.form, config.rank, self.seed, config.batch_size, query,
                                        output_rank=config.output_rank)  # fmt: skip
        return torch.nn.functional.normalize(features, dim=1) if config.normalize else features

    def train_features(self, part: Part, train: Examples) -> Tensors:
        return {FEATURES: self._features(part.source, train, query=False)}

    def query_features(self, part: Part, queries: Examples) -> torch.Tensor:
        return self._features(part.source, queries, query=True)


def create(context: MethodContext) -> OperatorGradientAttributor:
    settings = parse_settings(OperatorGradientSettings, context.settings, "operator-grad")
    return OperatorGradientAttributor(context, settings)
