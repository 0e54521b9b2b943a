"""RepSim: cosine similarity of the model's representations of the query and training examples.

The context's task says what a representation is. For a causal LM, each example becomes the mean
of its final hidden states (`output_hidden_states=True`, the last entry, which has the final norm
applied) over its attention-masked tokens; for a classifier, its penultimate features (the input
of the last linear layer) or the output of a named module.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from stride.attributor import MethodContext
from stride.baselines.common import check_positive, parse_settings
from stride.baselines.inner_product import FEATURES, InnerProductAttributor, Part
from stride.core.batching import index_batches
from stride.store import Tensors
from stride.tasks import Examples


@dataclass
class RepSimSettings:
    """Settings of `repsim`.

    Attributes:
        batch_size: examples per forward pass.
        layer: causal LMs: index into the model's `hidden_states` (-1 = the last layer, 0 = the
            embeddings); classifiers: -1 (the penultimate features) or a module name (its output).
    """

    batch_size: int = 32
    layer: int | str = -1

    def validate(self) -> None:
        check_positive(self, "batch_size")


class RepSimAttributor(InnerProductAttributor):
    name = "repsim"

    @torch.no_grad()
    def representations(self, data: Examples) -> torch.Tensor:
        """Unit-length representations -> [len(data), features]."""
        model, task = self.context.model, self.context.task
        rows = [task.representations(model, data.batch(indices), self.config.layer)
                for indices in index_batches(len(data), self.config.batch_size)]  # fmt: skip
        return torch.nn.functional.normalize(torch.cat(rows).float(), dim=1)

    def train_features(self, part: Part, train: Examples) -> Tensors:
        return {FEATURES: self.representations(train)}

    def query_features(self, part: Part, queries: Examples) -> torch.Tensor:
        return self.representations(queries)


def create(context: MethodContext) -> RepSimAttributor:
    return RepSimAttributor(context, parse_settings(RepSimSettings, context.settings, "repsim"))
