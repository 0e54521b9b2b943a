"""Classification data held in memory: inputs [n, ...] and integer labels [n], checked at the boundary."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from stride.core.digest import tensors_digest
from stride.errors import StrideError


@dataclass
class ClassifierBatch:
    """Inputs [rows, ...] and labels [rows] of some examples."""

    inputs: torch.Tensor
    labels: torch.Tensor

    def __len__(self) -> int:
        return self.labels.shape[0]

    def select(self, rows: torch.Tensor) -> ClassifierBatch:
        """The batch made of the given rows (repeats allowed)."""
        return ClassifierBatch(self.inputs[rows], self.labels[rows])

    def to(self, device: torch.device) -> ClassifierBatch:
        """The batch on `device` (itself when it is there already)."""
        if self.labels.device == device:
            return self
        return ClassifierBatch(self.inputs.to(device), self.labels.to(device))


class ClassifierData:
    """A checked (inputs, labels) pair; `digest` names its content in the run store."""

    def __init__(self, inputs: torch.Tensor, labels: torch.Tensor, name: str = "data"):
        self.inputs = inputs
        self.labels = labels
        self.name = name
        self.digest = tensors_digest({"inputs": inputs, "labels": labels})
        self.device = torch.device("cpu")  # where batch() puts its tensors (the model's device)

    def __len__(self) -> int:
        return self.labels.shape[0]

    def batch(self, indices: Sequence[int]) -> ClassifierBatch:
        rows = torch.as_tensor(np.asarray(indices, dtype=np.int64))
        return ClassifierBatch(self.inputs[rows], self.labels[rows]).to(self.device)


def _stacked_pairs(dataset: Any, name: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Inputs and labels of a torch Dataset (or sequence) of (input, label) pairs."""
    try:
        pairs = [dataset[i] for i in range(len(dataset))]
        inputs = torch.stack([torch.as_tensor(x) for x, _ in pairs])
        labels = torch.as_tensor([int(y) for _, y in pairs])
    except (TypeError, ValueError, RuntimeError) as exc:
        raise StrideError(
            f"{name}: without labels, the data must be a Dataset of (input, label) pairs ({exc})"
        ) from exc
    return inputs, labels


def _tensor(values: Any, name: str) -> torch.Tensor:
    if torch.is_tensor(values):
        return values.detach().cpu()
    try:
        return torch.as_tensor(np.asarray(values))
    except (TypeError, ValueError, RuntimeError) as exc:
        raise StrideError(f"{name}: inputs and labels must be tensors or numeric arrays ({exc})") from exc


def classifier_data(inputs: Any, labels: Any, name: str, dtype: torch.dtype) -> ClassifierData:
    """Check and convert tensors or arrays (or, with `labels=None`, a Dataset of (input, label) pairs).

    Floating inputs are cast to `dtype` (the model's); integer inputs (e.g. token ids) are kept."""
    if labels is None:
        if not isinstance(inputs, (Dataset, list, tuple)):
            raise StrideError(f"{name}: labels are missing (pass labels, or a Dataset of (input, label) pairs)")
        inputs, labels = _stacked_pairs(inputs, name)
    inputs, labels = _tensor(inputs, name), _tensor(labels, name)
    if labels.dim() != 1:
        raise StrideError(f"{name}: labels must be one class index per example (1-d), got shape {tuple(labels.shape)}")
    if inputs.dim() < 1 or inputs.shape[0] != labels.shape[0]:
        raise StrideError(f"{name}: {inputs.shape[0] if inputs.dim() else 0} inputs but {labels.shape[0]} labels")
    if len(labels) == 0:
        raise StrideError(f"{name}: no examples")
    if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
        raise StrideError(f"{name}: labels must be integer class indices, got dtype {labels.dtype}")
    if inputs.is_floating_point():
        bad = int((~torch.isfinite(inputs)).sum())
        if bad:
            raise StrideError(f"{name}: the inputs hold {bad} NaN or inf value(s)")
        inputs = inputs.to(dtype)
    return ClassifierData(inputs.contiguous(), labels.long().contiguous(), name)


def check_labels(data: ClassifierData, n_classes: int) -> None:
    """Every label must be a class of the model's output."""
    low, high = int(data.labels.min()), int(data.labels.max())
    if low < 0 or high >= n_classes:
        raise StrideError(f"{data.name}: labels must be from 0 to {n_classes - 1} (the model outputs {n_classes} "
                          f"logits), found labels from {low} to {high}")  # fmt: skip
