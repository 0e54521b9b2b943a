"""Residual operators at the last decoder block, through the final norm and a linear head, without
running the head once per steered row.

Steered at the output of the last block, row i's logits are W norm(h + a_k z) + c, with z = B h.
The final norm (LayerNorm or RMSNorm) is g * centre(x) * s(x) (+ b), where centre subtracts the mean
over the hidden units (LayerNorm) or nothing (RMSNorm) and s(x) is one number per token. Centring
is linear, so

    W (g * centre(h + a_k z)) = W (g * centre(h)) + (W diag(g) centre(a_k)) z,

a product per base row (shared by every operator) plus a vocab x r matrix per operator applied to
z: the logit form's cost per row instead of a vocab x d_model head per row. Only s(x) needs the
steered hidden state, and it costs d_model per token. The identity is exact; `NormHead.find`
checks it on the model's own outputs before it is used, so a model whose tail is anything else
(a scaled norm, capped or scaled logits) keeps running its head per row.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

LAYER_NORM_NAMES = ("LayerNorm",)
RMS_NORM_NAMES = ("RMSNorm",)
CHECK_TOLERANCE = 1e-3  # largest difference from the model's own logits, relative to their largest magnitude


@dataclass
class NormHead:
    """The final norm and the linear output head of a causal LM, as numbers."""

    scale: torch.Tensor  # g [d_model]
    eps: float
    centred: bool  # LayerNorm subtracts the mean over the hidden units; RMSNorm does not
    head: torch.Tensor  # W [vocab, d_model]
    constant: torch.Tensor | None  # W b + c [vocab]: the norm's shift b and the head's bias c, if any

    @classmethod
    def find(cls, model: nn.Module, blocks: nn.ModuleList, hidden: torch.Tensor, logits: torch.Tensor,
             logits_from_hidden: Callable[[torch.Tensor], torch.Tensor]) -> NormHead | None:  # fmt: skip
        """The model's final norm and head when its outputs are exactly W norm(last block's output) + c:
        checked on `hidden` (a base pass's last-block output) against `logits`, and on a perturbed copy
        against `logits_from_hidden`. None when the tail is anything else."""
        tail = cls._read(model, blocks)
        if tail is None:
            return None
        with torch.no_grad():
            generator = torch.Generator(hidden.device).manual_seed(0)  # not the global stream: runs stay seeded
            noise = torch.randn(hidden.shape, generator=generator, device=hidden.device, dtype=hidden.dtype)
            perturbed = hidden + noise * hidden.float().std().to(hidden.dtype)
            checks = [(hidden, logits), (perturbed, logits_from_hidden(perturbed))]
            for state, expected in checks:
                found = tail.logits(tail.linear(state), state)
                if not torch.allclose(found, expected.float(), atol=CHECK_TOLERANCE * expected.abs().max().item()):
                    return None
        return tail

    @classmethod
    def _read(cls, model: nn.Module, blocks: nn.ModuleList) -> NormHead | None:
        """The single norm module outside the decoder blocks and a linear head, or None."""
        get_head = getattr(model, "get_output_embeddings", None)
        head = get_head() if get_head is not None else None
        if not isinstance(head, nn.Linear):
            return None
        inside = {id(m) for m in blocks.modules()}
        norms = [m for m in model.modules() if id(m) not in inside and _norm_kind(m) is not None]
        if len(norms) != 1:
            return None
        norm = norms[0]
        weight = getattr(norm, "weight", None)
        eps = getattr(norm, "eps", None) or getattr(norm, "variance_epsilon", None)
        if not isinstance(weight, torch.Tensor) or weight.dim() != 1 or eps is None:
            return None
        scale, weights, shift = weight.detach().float(), head.weight.detach().float(), getattr(norm, "bias", None)
        parts = [weights @ shift.detach().float()] if isinstance(shift, torch.Tensor) else []
        parts += [head.bias.detach().float()] if head.bias is not None else []
        constant = sum(parts[1:], parts[0]) if parts else None
        return cls(scale, float(eps), _norm_kind(norm) == "layer", weights, constant)

    def centre(self, values: torch.Tensor, dim: int = -1) -> torch.Tensor:
        """`values` less their mean over the hidden units along `dim` (LayerNorm), or unchanged (RMSNorm)."""
        return values - values.mean(dim, keepdim=True) if self.centred else values

    def inverse_spread(self, hidden: torch.Tensor) -> torch.Tensor:
        """s(x): the norm's 1 / sqrt(mean(centre(x)^2) + eps) per token, [..., 1] (float32)."""
        centred = self.centre(hidden.float())
        return torch.rsqrt(centred.pow(2).mean(-1, keepdim=True) + self.eps)

    def linear(self, hidden: torch.Tensor) -> torch.Tensor:
        """W (g * centre(h)) [..., vocab] (float32): what s(x) scales."""
        return (self.centre(hidden.float()) * self.scale) @ self.head.T

    def logits(self, linear: torch.Tensor, hidden: torch.Tensor) -> torch.Tensor:
        """The outputs W norm(x) + c from `linear` = W (g * centre(x)) and x = `hidden` (for s(x))."""
        scaled = linear * self.inverse_spread(hidden)
        return scaled if self.constant is None else scaled + self.constant

    def operator_matrices(self, coefficients: torch.Tensor) -> torch.Tensor:
        """W diag(g) centre(a_k) [K, vocab, r] for operators a_k [K, d_model, r]."""
        return torch.matmul(self.head * self.scale, self.centre(coefficients.float(), dim=1))


def _norm_kind(module: nn.Module) -> str | None:
    """The kind of norm `module` is: "layer" (LayerNorm), "rms" (RMSNorm; by class or class name) or None."""
    if isinstance(module, nn.LayerNorm):
        return "layer"
    if isinstance(module, nn.RMSNorm):
        return "rms"
    name = type(module).__name__
    if name.endswith(LAYER_NORM_NAMES):
        return "layer"
    if name.endswith(RMS_NORM_NAMES):
        return "rms"
    return None
