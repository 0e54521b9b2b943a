"""Per-example losses of a causal LM: mean next-token cross-entropy (and KL) over scored tokens."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from stride.data import Batch


def _at_least_float32(logits: torch.Tensor) -> torch.Tensor:
    return logits.float() if logits.dtype in (torch.bfloat16, torch.float16) else logits


def _scored_mask(batch: Batch, dtype: torch.dtype) -> torch.Tensor:
    """Float mask [rows, length - 1] of the next tokens that count."""
    return batch.loss_mask[:, 1:].to(dtype)


def _per_position(values: torch.Tensor) -> torch.Tensor:
    """Token values computed at every position [rows, length] -> [rows, length - 1]: the last
    position predicts no token and is dropped.

    The losses are computed on the whole (contiguous) logits rather than on the shifted slice
    logits[:, :-1], which would be copied (and, in the backward pass, zero-filled and copied
    back) at the size of the logits; each position's value is the same either way."""
    return values[:, :-1]


def sequence_losses(logits: torch.Tensor, batch: Batch) -> torch.Tensor:
    """Mean cross-entropy over each row's scored tokens -> [rows]."""
    logits = _at_least_float32(logits)
    rows, length, vocab = logits.shape
    next_tokens = F.pad(batch.input_ids[:, 1:], (0, 1))  # the last position's target (0) is dropped below
    flat = F.cross_entropy(logits.reshape(-1, vocab), next_tokens.reshape(-1), reduction="none")
    token_loss = _per_position(flat.view(rows, length))
    mask = _scored_mask(batch, token_loss.dtype)
    return (token_loss * mask).sum(1) / mask.sum(1).clamp_min(1.0)


def sequence_kl(base_logits: torch.Tensor, steered_logits: torch.Tensor, batch: Batch) -> torch.Tensor:
    """Mean KL(base || steered) of the next-token distributions over scored tokens -> [rows]."""
    base_log = F.log_softmax(_at_least_float32(base_logits), dim=-1)
    steered_log = F.log_softmax(_at_least_float32(steered_logits), dim=-1)
    token_kl = _per_position((base_log.exp() * (base_log - steered_log)).sum(-1))
    mask = _scored_mask(batch, token_kl.dtype)
    return (token_kl * mask).sum(1) / mask.sum(1).clamp_min(1.0)
