"""Steering operators: one shared low-rank basis B and one small matrix a_k per subset k.

residual form:      h'_l = h_l + a_k (B h_l),     a_k in R^{d_model x r}   (upper blocks run on h'_l)
logit form:         o'   = o + a_k (B h_l),       a_k in R^{vocab x r}     (classifiers: R^{classes x r})
shared_logit form:  o'   = o + U (a_k (B h_l)),   a_k in R^{r' x r}, U in R^{vocab x r'} shared by all k
hashed_logit form:  o'   = o + S (a_k (B h_l)),   a_k in R^{m x r}, S in {0, +-1}^{vocab x m} fixed

The shared_logit and hashed_logit forms keep each operator's numbers independent of the
vocabulary: a bank of K operators holds K r' r + vocab r' + r d_model numbers (shared_logit) or
K m r + r d_model (hashed_logit) instead of the logit form's K vocab r. S hashes every token v to
one of m buckets b(v) with a sign s(v) (drawn independently per token from the seed; not trained):
token v's logit moves by s(v) times its bucket's entry of a_k B h, so tokens sharing a bucket move
together (about vocab / m per bucket; some collide even with m >= vocab).
"""

from __future__ import annotations

import math
from typing import cast

import torch
from torch import nn
from torch.nn.utils import skip_init

from stride.config import FORMS
from stride.errors import StrideError

RESIDUAL = "residual"
LOGIT = "logit"
SHARED_LOGIT = "shared_logit"
HASHED_LOGIT = "hashed_logit"
ADAM_COPIES = 3  # a trained parameter, Adam's two moment estimates
MLP_SEED_OFFSET = 104_729  # the basis MLP's draw: seed + this


def operator_width(form: str, hidden_size: int, vocab_size: int, output_rank: int = 0) -> int:
    """Rows of one operator's matrix a_k: d_model (residual), vocab (logit), r' (shared_logit) or the
    number of buckets m (hashed_logit, given as `output_rank`)."""
    if form not in FORMS:
        raise StrideError(f"form must be one of {FORMS}, got {form!r}")
    if form in (SHARED_LOGIT, HASHED_LOGIT) and output_rank < 1:
        raise StrideError(f"the {form} form needs output_rank of at least 1, got {output_rank}")
    return {RESIDUAL: hidden_size, LOGIT: vocab_size, SHARED_LOGIT: output_rank, HASHED_LOGIT: output_rank}[form]


def bank_parameters(form: str, n_subsets: int, hidden_size: int, rank: int, vocab_size: int,
                    output_rank: int = 0, basis_hidden: int | None = None) -> int:  # fmt: skip
    """Trainable numbers of a whole bank (operators, basis with its MLP when `basis_hidden` is set
    and, for shared_logit, the output basis U; hashed_logit's S is not trained)."""
    operators = n_subsets * operator_width(form, hidden_size, vocab_size, output_rank) * rank
    shared_output = vocab_size * output_rank if form == SHARED_LOGIT else 0
    basis_mlp = 0 if basis_hidden is None else basis_hidden * (hidden_size + 1) + rank * basis_hidden
    return operators + rank * hidden_size + basis_mlp + shared_output


def training_bytes(parameters: int, bytes_per_number: int = 4) -> int:
    """Memory of `parameters` trained float32 numbers with Adam (the numbers and two moments)."""
    return parameters * ADAM_COPIES * bytes_per_number


def head_output_basis(head: torch.Tensor, output_rank: int) -> torch.Tensor:
    """An initial U from the model's output head W [vocab, d_model]: W's top `output_rank` principal
    directions, W V_r' (so U a_k B h steers the final hidden state within that subspace), scaled to
    the squared norm vocab of the random initial U."""
    if output_rank > min(head.shape):
        raise StrideError(f"output_rank {output_rank} exceeds the output head's rank bound {min(head.shape)}")
    _, _, right = torch.linalg.svd(head.detach().float(), full_matrices=False)
    basis = head.detach().float() @ right[:output_rank].T
    return basis * math.sqrt(head.shape[0]) / basis.norm()


class OperatorBank(nn.Module):
    """K steering operators sharing one basis; all start at zero (the base model).

    The basis is linear, B h, or with `basis_hidden` m: B h + V gelu(W h + b), a one-layer MLP of m
    units beside the linear part, whose V starts at zero (so the codes start as the linear basis's).

    The shared_logit form's output basis U starts as a random Gaussian matrix with columns of
    expected squared norm vocab / r' (entries of variance 1 / r'), so the first gradients reach
    every a_k (dL/da_k = U^T dL/do (B h)^T) and a unit step of a_k moves each logit by about one unit;
    `output_basis` replaces that draw (e.g. `head_output_basis`)."""

    def __init__(self, form: str, n_subsets: int, hidden_size: int, rank: int, vocab_size: int, seed: int,
                 output_rank: int = 0, output_basis: torch.Tensor | None = None,
                 basis_hidden: int | None = None):  # fmt: skip
        super().__init__()
        generator = torch.Generator().manual_seed(seed)
        self.form = form
        out_size = operator_width(form, hidden_size, vocab_size, output_rank)
        self.basis = nn.Parameter(torch.randn(rank, hidden_size, generator=generator) / math.sqrt(hidden_size))
        self.basis_mlp: nn.Sequential | None = None
        if basis_hidden is not None:
            # drawn from its own generator, so the other numbers match those of a linear-basis bank
            mlp_generator = torch.Generator().manual_seed(seed + MLP_SEED_OFFSET)
            # skip_init: no default initialisation, which would also draw from torch's global generator
            inner = skip_init(nn.Linear, hidden_size, basis_hidden)
            outer = skip_init(nn.Linear, basis_hidden, rank, bias=False)
            with torch.no_grad():
                inner.weight.copy_(torch.randn(basis_hidden, hidden_size, generator=mlp_generator))
                inner.weight.div_(math.sqrt(hidden_size))
                inner.bias.zero_()
                outer.weight.zero_()
            self.basis_mlp = nn.Sequential(inner, nn.GELU(), outer)
        self.coefficients = nn.Parameter(torch.zeros(n_subsets, out_size, rank))
        self.output_basis: nn.Parameter | None = None
        if form == SHARED_LOGIT:
            if output_basis is None:
                output_basis = torch.randn(vocab_size, output_rank, generator=generator) / math.sqrt(output_rank)
            if output_basis.shape != (vocab_size, output_rank):
                raise StrideError(f"output basis of shape {tuple(output_basis.shape)}, not {(vocab_size, output_rank)}")
            self.output_basis = nn.Parameter(output_basis.clone())
        buckets = signs = None
        if form == HASHED_LOGIT:
            buckets = torch.randint(0, output_rank, (vocab_size,), generator=generator)
            signs = torch.randint(0, 2, (vocab_size,), generator=generator) * 2.0 - 1.0
        # derived from the seed, so not stored with the trained numbers
        self.register_buffer("buckets", buckets, persistent=False)
        self.register_buffer("signs", signs, persistent=False)

    @property
    def n_subsets(self) -> int:
        return self.coefficients.shape[0]

    def delta(self, hidden: torch.Tensor, subset_ids: torch.Tensor) -> torch.Tensor:
        """Each row's operator k applied to `hidden` [N, T, d_model] -> [N, T, out] ([N, d] -> [N, out]):
        a_k (B h), U a_k (B h) for the shared_logit form, S a_k (B h) for the hashed_logit form."""
        if hidden.dim() == 2:
            return self.delta(hidden[:, None], subset_ids)[:, 0]
        steered = torch.einsum("ntr,nor->nto", self.codes(hidden), self.coefficients[subset_ids])
        if self.output_basis is not None:
            return steered @ self.output_basis.T
        if self.form == HASHED_LOGIT:
            buckets, signs = cast(torch.Tensor, self.buckets), cast(torch.Tensor, self.signs)
            return steered[..., buckets] * signs
        return steered

    def codes(self, hidden: torch.Tensor) -> torch.Tensor:
        """B h (plus V gelu(W h + b) with an MLP basis): the representation in the shared basis [..., r]."""
        hidden = hidden.to(self.basis.dtype)  # a bfloat16 model hands over bfloat16 activations
        codes = hidden @ self.basis.T
        return codes if self.basis_mlp is None else codes + self.basis_mlp(hidden)

    def operator_parameters(self) -> int:
        """Trainable numbers per operator (excluding the shared bases)."""
        return self.coefficients[0].numel()
