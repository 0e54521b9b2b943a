"""Min-K% and Min-K%++ token scores on hand-computable distributions, and on a tiny model."""

from __future__ import annotations

import math

import pytest
import torch

from stride.data import load_data
from stride.errors import StrideError
from stride.losses import sequence_losses
from stride.min_k import lowest_mean, min_k_scores, token_scores
from stride.models import load_causal_lm


def test_token_scores_of_a_two_token_vocabulary():
    # logits (ln 4, 0) give p = (0.8, 0.2). The log-prob is ln 0.8 with prob 0.8, ln 0.2 with prob 0.2:
    # mu = 0.8 ln 0.8 + 0.2 ln 0.2, sigma = sqrt(0.8 * 0.2) * ln 4 = 0.4 ln 4, so token 0 scores
    # (ln 0.8 - mu) / sigma = 0.2 ln 4 / (0.4 ln 4) = 0.5 and token 1 scores -0.8 ln 4 / (0.4 ln 4) = -2.
    logits = torch.tensor([[math.log(4.0), 0.0], [math.log(4.0), 0.0], [1.0, 1.0]])
    plain, plus = token_scores(logits, torch.tensor([0, 1, 1]))
    assert plain.tolist() == pytest.approx([math.log(0.8), math.log(0.2), math.log(0.5)])
    assert plus.tolist() == pytest.approx([0.5, -2.0, 0.0])  # a uniform distribution scores 0


def test_lowest_mean_takes_the_lowest_ceil_k_share():
    values = torch.tensor([0.5, -2.0, 3.0, 1.0, -1.0])
    assert lowest_mean(values, 0.2) == -2.0  # ceil(0.2 * 5) = 1
    assert lowest_mean(values, 0.3) == pytest.approx(-1.5)  # ceil(1.5) = 2
    assert lowest_mean(values, 1.0) == pytest.approx(1.5 / 5)
    with pytest.raises(StrideError, match="k must be a fraction"):
        lowest_mean(values, 0.0)
    with pytest.raises(StrideError, match="no scored tokens"):
        lowest_mean(torch.tensor([]), 0.2)


def test_min_k_at_k_one_is_minus_the_mean_loss(gpt2_dir, corpus):
    scores = min_k_scores(gpt2_dir, corpus["queries"], k=1.0, context=64)
    model, tokenizer = load_causal_lm(gpt2_dir)
    data = load_data(corpus["queries"], tokenizer, 64)
    batch = data.batch(list(range(len(data))))
    with torch.no_grad():
        losses = sequence_losses(model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits, batch)
    assert scores["min-k"].tolist() == pytest.approx((-losses).tolist(), abs=1e-5)
    assert scores["min-k++"].shape == (len(data),) and torch.isfinite(torch.from_numpy(scores["min-k++"])).all()
