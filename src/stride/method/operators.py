"""Steering operators: one shared low-rank basis B and one small matrix a_k per subset k.

residual form:  h'_l = h_l + a_k (B h_l),   a_k in R^{d_model x r}   (upper blocks run on h'_l)
logit form:     o'   = o + a_k (B h_l),     a_k in R^{vocab x r}   (classifiers: R^{classes x r})
"""

from __future__ import annotations

import math

import torch
from torch import nn

RESIDUAL = "residual"
LOGIT = "logit"


class OperatorBank(nn.Module):
    """K steering operators sharing one linear basis; all start at zero (the base model)."""

    def __init__(self, form: str, n_subsets: int, hidden_size: int, rank: int, vocab_size: int, seed: int):
        super().__init__()
        generator = torch.Generator().manual_seed(seed)
        self.form = form
        self.basis = nn.Parameter(torch.randn(rank, hidden_size, generator=generator) / math.sqrt(hidden_size))
        out_size = hidden_size if form == RESIDUAL else vocab_size
        self.coefficients = nn.Parameter(torch.zeros(n_subsets, out_size, rank))

    @property
    def n_subsets(self) -> int:
        return self.coefficients.shape[0]

    def delta(self, hidden: torch.Tensor, subset_ids: torch.Tensor) -> torch.Tensor:
        """a_k (B h) for each row's operator k: hidden [N, T, d_model] -> [N, T, out_size] ([N, d] -> [N, out])."""
        if hidden.dim() == 2:
            return self.delta(hidden[:, None], subset_ids)[:, 0]
        codes = hidden.to(self.basis.dtype) @ self.basis.T  # a bfloat16 model hands over bfloat16 activations
        return torch.einsum("ntr,nor->nto", codes, self.coefficients[subset_ids])

    def operator_parameters(self) -> int:
        """Trainable numbers per operator (excluding the shared basis)."""
        return self.coefficients[0].numel()
