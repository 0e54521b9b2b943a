"""Seeded random projections of per-example vectors (gradients, operator gradients) to a few thousand numbers."""

from __future__ import annotations

import math

import torch
from torch import nn

from stride.errors import StrideError

PROJECTIONS = ("sjlt", "gaussian")
GAUSSIAN_CHUNK = 1 << 22  # entries of the Gaussian matrix drawn at once


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
        """[rows, proj_dim] projections of per-example vectors {name: [rows, *shape]}."""
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
    """Number of entries of every named parameter, in registration order."""
    return {name: p.numel() for name, p in model.named_parameters()}
