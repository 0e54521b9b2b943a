"""Loss-based membership scores of texts under a causal LM: Min-K% prob and Min-K%++.

Per scored token t (next-token log-probs log p(. | x_<t) over the vocabulary):
  Min-K%    log p(x_t)                            (Shi et al. 2023, arXiv 2310.16789);
  Min-K%++  (log p(x_t) - mu_t) / sigma_t         (Zhang et al. 2024, arXiv 2404.02936), with
            mu_t = E_{z ~ p}[log p(z)] and sigma_t^2 = E_{z ~ p}[(log p(z) - mu_t)^2], the mean and
            variance of the log-prob under the model's own next-token distribution (a token where
            sigma_t = 0, a uniform distribution, scores 0).
A text's score is the mean of its lowest ceil(k * T) token scores (at least one), T its scored
tokens. Higher means more likely a training member.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch

from stride.data import load_data
from stride.errors import StrideError
from stride.models import load_causal_lm

SIGMA_FLOOR = 1e-12


def token_scores(logits: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per position the Min-K% and Min-K%++ token scores: `logits` [T, V] predict `targets` [T]."""
    if logits.ndim != 2 or targets.shape != logits.shape[:1]:
        raise StrideError(
            f"logits must be [T, V] and targets [T]; got {tuple(logits.shape)} and {tuple(targets.shape)}"
        )
    log_p = torch.log_softmax(logits.double(), dim=-1)
    p = log_p.exp()
    mu = (p * log_p).sum(-1)
    sigma = (p * (log_p - mu[:, None]) ** 2).sum(-1).clamp_min(0).sqrt()
    target = log_p.gather(1, targets[:, None].long())[:, 0]
    safe = sigma.clamp_min(SIGMA_FLOOR)
    plus = torch.where(sigma > SIGMA_FLOOR, (target - mu) / safe, torch.zeros_like(target))
    return target, plus


def lowest_mean(values: torch.Tensor, k: float) -> float:
    """The mean of the lowest ceil(k * len) values (at least one)."""
    if not 0 < k <= 1:
        raise StrideError(f"k must be a fraction in (0, 1], got {k}")
    if values.numel() == 0:
        raise StrideError("no scored tokens: a text needs at least two tokens")
    count = max(1, math.ceil(k * values.numel()))
    return float(torch.sort(values.flatten()).values[:count].mean())


@torch.no_grad()
def min_k_scores(
    model_dir: str | Path, texts_path: str | Path, k: float = 0.2, context: int = 128
) -> dict[str, np.ndarray]:
    """Per text of `texts_path` (JSONL, as `--queries`) its Min-K% and Min-K%++ scores under the model."""
    model, tokenizer = load_causal_lm(model_dir)
    data = load_data(texts_path, tokenizer, context, name="membership")
    out = {"min-k": np.empty(len(data)), "min-k++": np.empty(len(data))}
    for i in range(len(data)):
        batch = data.batch([i])
        logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits[0, :-1]
        mask = batch.loss_mask[0, 1:].bool()
        plain, plus = token_scores(logits[mask], batch.input_ids[0, 1:][mask])
        out["min-k"][i], out["min-k++"][i] = lowest_mean(plain, k), lowest_mean(plus, k)
    return out
