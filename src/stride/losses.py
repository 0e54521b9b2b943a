"""Per-example losses of a causal LM: mean next-token cross-entropy (and KL) over scored tokens."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from stride.data import Batch


def _targets(logits: torch.Tensor, batch: Batch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Logits (in float32 at least) that predict each next token, those tokens, and the float mask of
    scored ones."""
    predicting = logits[:, :-1]
    if predicting.dtype in (torch.bfloat16, torch.float16):
        predicting = predicting.float()
    return predicting, batch.input_ids[:, 1:], batch.loss_mask[:, 1:].to(predicting.dtype)


def sequence_losses(logits: torch.Tensor, batch: Batch) -> torch.Tensor:
    """Mean cross-entropy over each row's scored tokens -> [rows]."""
    predicting, targets, mask = _targets(logits, batch)
    flat = F.cross_entropy(predicting.reshape(-1, predicting.shape[-1]), targets.reshape(-1), reduction="none")
    token_loss = flat.view(targets.shape)
    return (token_loss * mask).sum(1) / mask.sum(1).clamp_min(1.0)


def sequence_kl(base_logits: torch.Tensor, steered_logits: torch.Tensor, batch: Batch) -> torch.Tensor:
    """Mean KL(base || steered) of the next-token distributions over scored tokens -> [rows]."""
    base_pred, _, mask = _targets(base_logits, batch)
    steered_pred, _, _ = _targets(steered_logits, batch)
    base_log = F.log_softmax(base_pred, dim=-1)
    token_kl = (base_log.exp() * (base_log - F.log_softmax(steered_pred, dim=-1))).sum(-1)
    return (token_kl * mask).sum(1) / mask.sum(1).clamp_min(1.0)
