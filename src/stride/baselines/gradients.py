"""Per-example loss gradients (torch.func.vmap over grad) and seeded random projections of them.

Gradients are computed for one batch at a time and projected right away, so at most
batch_size x n_params numbers exist at once; nothing n x n_params is ever held.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn
from torch.func import grad, vmap

from stride.baselines.common import index_batches
from stride.errors import StrideError
from stride.tasks import CausalLMTask, Examples, Task

PROJECTIONS = ("sjlt", "gaussian")
GAUSSIAN_CHUNK = 1 << 22  # entries of the Gaussian matrix drawn at once


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


class GradientProjector:
    """A fixed random linear map R from the flattened parameters to `proj_dim`, drawn from `seed`.

    "sjlt" (default) is a sparse Johnson-Lindenstrauss transform (count sketch: every coordinate
    goes with a random sign to one random output coordinate). Its inner products are unbiased with
    about the variance of a dense Gaussian projection's, at O(n_params) cost per example and with
    no matrix stored, which keeps it usable beyond tiny models. "gaussian" is the dense N(0, 1/k)
    matrix (as in TRAK's and TracIn's random projections), regenerated chunk by chunk per batch.
    Parameter j's part of R is drawn from its own generator, so R does not depend on the batch.
    """

    def __init__(self, sizes: dict[str, int], proj_dim: int, seed: int, kind: str = "sjlt"):
        if kind not in PROJECTIONS:
            raise StrideError(f"projection must be one of {list(PROJECTIONS)}, got {kind!r}")
        self.sizes = dict(sizes)
        self.proj_dim = proj_dim
        self.seed = seed
        self.kind = kind
        self._sketch: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}

    def _generator(self, position: int) -> torch.Generator:
        return torch.Generator().manual_seed(self.seed * 1_000_003 + position)

    def _count_sketch(self, position: int, name: str) -> tuple[torch.Tensor, torch.Tensor]:
        if name not in self._sketch:
            generator = self._generator(position)
            size = self.sizes[name]
            buckets = torch.randint(0, self.proj_dim, (size,), generator=generator)
            signs = torch.randint(0, 2, (size,), generator=generator).float().mul_(2).sub_(1)
            self._sketch[name] = (buckets, signs)
        return self._sketch[name]

    def project(self, grads: dict[str, torch.Tensor]) -> torch.Tensor:
        """[rows, proj_dim] projections of per-example gradients {name: [rows, *shape]}."""
        rows = next(iter(grads.values())).shape[0]
        out = torch.zeros(rows, self.proj_dim)
        for position, name in enumerate(self.sizes):
            flat = grads[name].reshape(rows, -1).float()
            if self.kind == "sjlt":
                buckets, signs = self._count_sketch(position, name)
                out.index_add_(1, buckets, flat * signs)
                continue
            generator = self._generator(position)
            step = max(1, GAUSSIAN_CHUNK // self.proj_dim)
            for start in range(0, flat.shape[1], step):
                part = flat[:, start : start + step]
                matrix = torch.randn(part.shape[1], self.proj_dim, generator=generator)
                out.addmm_(part, matrix, alpha=1.0 / math.sqrt(self.proj_dim))
        return out


def parameter_sizes(model: nn.Module) -> dict[str, int]:
    return {name: p.numel() for name, p in model.named_parameters()}


def projected_gradients(model: nn.Module, data: Examples, projector: GradientProjector, batch_size: int,
                        task: Task | None = None, query: bool = False) -> torch.Tensor:  # fmt: skip
    """Projected per-example loss gradients of every example of `data` -> [len(data), proj_dim]."""
    out = torch.empty(len(data), projector.proj_dim)
    for indices in index_batches(len(data), batch_size):
        out[indices] = projector.project(per_example_gradients(model, data.batch(indices), task, query))
    return out
