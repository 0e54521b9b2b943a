"""Second-order training of hashed_logit operators: no full-vocabulary logits per (example, subset) pair.

A hashed_logit operator k moves the logits of token t by S z_kt, with z_kt = a_k c_t the m bucket
shifts and c_t = B h_t. Around the base logits (softmax p_t, target y_t) the token loss and the
divergence from the base change, to second order in z, by

    l(o + S z) - l(o)   = g_t . z + 1/2 V_t(z),      g_t = S^T p_t - s(y_t) e_b(y_t),
    KL(p || p(o + S z)) =           1/2 V_t(z),      V_t(z) = sum_b q_tb z_b^2 - (mu_t . z)^2,

with mu_t = S^T p_t and q_tb the probability mass of bucket b (V_t is the variance of the logit
shift under p_t, so both expansions are convex in z). The moments g, q and mu take one pass over the
vocabulary per token of the base pass; every (example, subset) pair then costs O(T m r), whatever
the vocabulary. The fidelity term is the expanded cross-entropy, the stability term the expanded
KL, and the second-order measurement (`stride.method.expansion`) expands the same way, so the
operators are trained on the loss they are measured with.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from stride.data import Batch
from stride.method.expansion import bucket_sums, token_weights
from stride.method.operators import OperatorBank


@dataclass
class BucketMoments:
    """Per predicting token of a batch's base pass ([rows, T - 1, m]): the loss slope g, the bucket
    masses q and the mean mu; the tokens' loss weights [rows, T - 1] and the base losses [rows]."""

    slope: torch.Tensor
    mass: torch.Tensor
    mean: torch.Tensor
    weights: torch.Tensor
    base_losses: torch.Tensor


@torch.no_grad()
def bucket_moments(bank: OperatorBank, logits: torch.Tensor, batch: Batch) -> BucketMoments:
    """The moments of a hashed_logit bank's buckets under the base logits [rows, T, vocab] of `batch`."""
    predicting, targets = logits[:, :-1].float(), batch.input_ids[:, 1:]
    weights = token_weights(batch)
    log_probs = torch.log_softmax(predicting, dim=-1)
    mass, mean, slope = bucket_sums(bank, log_probs.exp(), targets)
    base_losses = -(log_probs.gather(-1, targets[..., None])[..., 0] * weights).sum(1)
    return BucketMoments(slope, mass, mean, weights, base_losses)


def expanded_changes(bank: OperatorBank, moments: BucketMoments, hidden: torch.Tensor, rows: torch.Tensor,
                     subset_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
    """For each pair (rows[i], subset_ids[i]): the first-order loss change sum_t w_t g_t . z_t and the
    weighted shift variance sum_t w_t V_t(z_t) -> two [pairs] tensors, differentiable in the bank.
    `hidden` [rows, T, d_model] is the base pass' representation at the steered place."""
    codes = bank.codes(hidden[rows, :-1]).float()  # [pairs, T - 1, r]
    shifts = torch.einsum("ptr,pbr->ptb", codes, bank.coefficients[subset_ids].float())  # z: [pairs, T - 1, m]
    weights = moments.weights[rows]
    linear = ((moments.slope[rows] * shifts).sum(-1) * weights).sum(1)
    centre = (moments.mean[rows] * shifts).sum(-1)
    variance = (((moments.mass[rows] * shifts.square()).sum(-1) - centre.square()) * weights).sum(1)
    return linear, variance
