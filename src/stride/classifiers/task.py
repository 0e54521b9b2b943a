"""Supervised classifiers as a task: model(inputs) -> logits [rows, classes], labels are class indices.

The training loss is the cross-entropy. The measurement (what the scores attribute) is the
query's cross-entropy ("ce", the default) or minus its margin ("margin"): -(z_y - logsumexp of
the other logits), the logit of p_y / (1 - p_y), TRAK's model output for classification, negated
so that a lower value is better, like a loss.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from stride.classifiers.data import ClassifierBatch
from stride.classifiers.steering import SteeredClassifier, default_second_place
from stride.errors import StrideError
from stride.tasks import Task

MEASUREMENTS = ("ce", "margin")


class ClassifierTask(Task):
    """Any nn.Module that maps a batch of inputs to class logits."""

    batch_type = ClassifierBatch

    def __init__(self, measurement: str = "ce"):
        if measurement not in MEASUREMENTS:
            raise StrideError(f"measurement must be one of {list(MEASUREMENTS)}, got {measurement!r}")
        self.measure = measurement

    def settings(self) -> dict[str, Any]:
        return {"task": "classifier", "measurement": self.measure}

    def call_arguments(self, batch: ClassifierBatch) -> tuple[tuple, dict[str, Any]]:
        return (batch.inputs,), {}

    def losses(self, outputs: torch.Tensor, batch: ClassifierBatch) -> torch.Tensor:
        return F.cross_entropy(outputs.float(), batch.labels, reduction="none")

    def measurement(self, outputs: torch.Tensor, batch: ClassifierBatch) -> torch.Tensor:
        if self.measure == "ce":
            return self.losses(outputs, batch)
        outputs = outputs.float()
        is_label = torch.arange(outputs.shape[1], device=outputs.device) == batch.labels[:, None]
        label_logit = (outputs * is_label).sum(1)
        return torch.logsumexp(outputs.masked_fill(is_label, float("-inf")), dim=1) - label_logit

    def divergence(self, base_outputs: torch.Tensor, outputs: torch.Tensor, batch: ClassifierBatch) -> torch.Tensor:
        base_log = F.log_softmax(base_outputs.float(), dim=1)
        return (base_log.exp() * (base_log - F.log_softmax(outputs.float(), dim=1))).sum(1)

    def target_log_probs(self, outputs: torch.Tensor, batch: ClassifierBatch) -> tuple[torch.Tensor, torch.Tensor]:
        chosen = F.log_softmax(outputs.float(), dim=1).gather(1, batch.labels[:, None])
        return chosen, torch.ones_like(chosen)

    def sample_targets(self, outputs: torch.Tensor, batch: ClassifierBatch,
                       generator: torch.Generator) -> ClassifierBatch:  # fmt: skip
        with torch.no_grad():
            drawn = torch.multinomial(torch.softmax(outputs.detach().float(), dim=1), 1, generator=generator)[:, 0]
        return ClassifierBatch(batch.inputs, drawn)

    def representations(self, model: nn.Module, batch: ClassifierBatch, layer: int | str | None) -> torch.Tensor:
        """The flattened value at a steering place: -1 or None is the default (penultimate features)."""
        place = None if layer is None or layer == -1 else layer
        return self.steered(model, place).base(batch).hidden

    def steered(self, model: nn.Module, layer: Any) -> SteeredClassifier:
        # Any, as in Task.steered: SteeredClassifier refuses a layer that is not a module name
        return SteeredClassifier(model, layer, self)

    def second_place(self, model: nn.Module) -> str | None:
        return default_second_place(model)
