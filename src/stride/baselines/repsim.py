"""RepSim: cosine similarity of the model's mean-pooled last-layer representations.

Each example becomes the mean of its final hidden states (`output_hidden_states=True`, the last
entry, which has the final norm applied) over its attention-masked tokens.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from stride.baselines.common import BaselineAttributor, check_positive, index_batches, parse_settings, require_prepared
from stride.data import TokenizedData
from stride.registry import MethodContext, register


@dataclass
class RepSimSettings:
    """Attributes:
        batch_size: examples per forward pass.
        layer: index into the model's `hidden_states` (-1 = the last layer, 0 = the embeddings).
    """

    batch_size: int = 32
    layer: int = -1

    def validate(self) -> None:
        check_positive(self, "batch_size")


class RepSimAttributor(BaselineAttributor):
    name = "repsim"

    def __init__(self, context: MethodContext, settings: RepSimSettings):
        super().__init__(context, settings)
        self.train_: torch.Tensor | None = None

    @torch.no_grad()
    def representations(self, data: TokenizedData) -> torch.Tensor:
        """Unit-length mean-pooled hidden states -> [len(data), hidden]."""
        model = self.context.model
        rows = []
        for indices in index_batches(len(data), self.config.batch_size):
            batch = data.batch(indices)
            out = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, use_cache=False,
                        output_hidden_states=True)  # fmt: skip
            hidden = out.hidden_states[self.config.layer]
            mask = batch.attention_mask.unsqueeze(-1).to(hidden.dtype)
            rows.append((hidden * mask).sum(1) / mask.sum(1).clamp_min(1.0))
        return torch.nn.functional.normalize(torch.cat(rows).float(), dim=1)

    def prepare(self, train: TokenizedData) -> None:
        args = {"model": self.context.model_digest, "train": train.digest, "layer": self.config.layer}
        stored = self._stage("train_representations", args, lambda: {"representations": self.representations(train)})
        self.train_ = stored["representations"]

    def score(self, queries: TokenizedData) -> torch.Tensor:
        train = require_prepared(self.train_)
        with self._timed("score"):
            return (self.representations(queries) @ train.T).float()


@register("repsim")
def _create(context: MethodContext) -> RepSimAttributor:
    return RepSimAttributor(context, parse_settings(RepSimSettings, context.settings, "repsim"))
