"""Per-example loss gradients (torch.func.vmap over grad), projected right away (`stride.core.sketch`).

Gradients are computed for one batch at a time and projected right away, so at most
batch_size x n_params numbers exist at once; nothing n x n_params is ever held.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.func import grad, vmap

from stride.core.batching import index_batches
from stride.core.sketch import GradientProjector
from stride.tasks import CausalLMTask, Examples, Task


def per_example_gradients(model: nn.Module, batch: Any, task: Task | None = None,
                          query: bool = False) -> dict[str, torch.Tensor]:  # fmt: skip
    """d(loss of example b)/d(parameter) for every parameter -> {name: [rows, *shape]}.

    The loss is the task's training loss, or its query measurement when `query` is set (default
    task: a causal LM). Tied parameters (e.g. GPT-2's input and output embeddings) appear once,
    under their first name."""
    task = task or CausalLMTask()
    params = {name: p.detach() for name, p in model.named_parameters()}
    buffers = dict(model.named_buffers())
    per_row = task.measurement if query else task.losses

    def loss(values: dict[str, torch.Tensor], *fields: torch.Tensor) -> torch.Tensor:
        row = task.row(fields)
        return per_row(task.functional_outputs(model, values, buffers, row), row)[0]

    fields = task.fields(batch)
    with task.traceable(model):
        return vmap(grad(loss), in_dims=(None, *[0] * len(fields)))(params, *fields)


def projected_gradients(model: nn.Module, data: Examples, projector: GradientProjector, batch_size: int,
                        task: Task | None = None, query: bool = False) -> torch.Tensor:  # fmt: skip
    """Projected per-example loss gradients of every example of `data` -> [len(data), proj_dim]."""
    out = torch.empty(len(data), projector.proj_dim)
    for indices in index_batches(len(data), batch_size):
        out[indices] = projector.project(per_example_gradients(model, data.batch(indices), task, query))
    return out
