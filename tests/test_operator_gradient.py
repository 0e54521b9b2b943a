"""The restricted-gradient diagnostic (`operator-grad`): exact first-order gradients, additivity over
steered blocks, and the end-to-end contract of every attribution method."""

import pytest
import torch

from stride.api import attribute
from stride.data import load_data
from stride.errors import StrideError
from stride.method.first_order import restricted_gradients
from stride.method.operators import OperatorBank
from stride.models import load_causal_lm
from stride.tasks import CausalLMTask

from conftest import N_QUERIES, N_TRAIN


@pytest.fixture(scope="module")
def gpt2(gpt2_dir, corpus):
    model, tokenizer = load_causal_lm(gpt2_dir)
    return model, load_data(corpus["train"], tokenizer, 64)


@pytest.mark.parametrize("form, rank, layer", [("logit", 8, 1), ("logit", 0, 0), ("residual", 8, 1), ("residual", 0, 0)])
def test_features_predict_the_loss_change_of_a_small_operator(form, rank, layer, gpt2):
    """Loss(operator eps * u) - loss(base) = eps <g, u> to first order, for every example."""
    model, train = gpt2
    steered = CausalLMTask().steered(model, layer)
    examples = list(range(10))
    features = restricted_gradients(steered, train, form, rank, seed=3, batch_size=4)[examples]
    hidden_size, vocab = steered.sizes()
    bank = OperatorBank(form, 1, hidden_size, rank or hidden_size, vocab, seed=3)
    if rank == 0:
        bank.basis.data = torch.eye(hidden_size)
    direction = torch.randn(bank.coefficients.shape, generator=torch.Generator().manual_seed(0))
    eps = 1e-3
    batch = train.batch(examples)
    rows, zeros = torch.arange(len(examples)), torch.zeros(len(examples), dtype=torch.long)
    with torch.no_grad():
        base = steered.base(batch)
        before = steered.task.losses(base.logits, batch)
        bank.coefficients.copy_(eps * direction)
        after = steered.task.losses(steered.steered_logits(bank, base, batch, rows, zeros), batch)
    predicted = eps * features @ direction.flatten()
    assert torch.allclose(after - before, predicted, rtol=0.05, atol=1e-6 + 0.02 * predicted.abs().max())


def test_scores_of_several_blocks_add_up(gpt2_dir, corpus, tmp_path):
    def scores(layers, folder):
        return attribute(gpt2_dir, corpus["train"], corpus["queries"], tmp_path / folder, method="operator-grad",
                         progress=False, method_settings={"form": "residual", "rank": 0, "layers": layers}).scores

    assert torch.allclose(scores([0, 1], "both"), scores([0], "first") + scores([1], "second"), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("settings", [{}, {"form": "residual", "rank": 0, "layers": [0]}])
def test_operator_gradient_ranks_exact_duplicates_first(settings, gpt2_dir, corpus, tmp_path):
    result = attribute(gpt2_dir, corpus["train"], corpus["queries"], tmp_path / "run", method="operator-grad",
                       progress=False, method_settings={**settings, "normalize": True})  # fmt: skip
    scores = result.scores
    assert scores.shape == (N_QUERIES, N_TRAIN)
    for query, duplicate in ((0, 3), (1, 40)):
        assert int(scores[query].argmax()) == duplicate
    assert result.info["settings"]["layers"] == (settings.get("layers") or [1])


def test_bad_operator_gradient_settings_are_refused(gpt2_dir, corpus, tmp_path):
    for settings, message in (({"rank": -1}, "rank"), ({"form": "bias"}, "form"), ({"layers": 1}, "layers"),
                              ({"layers": [7]}, "layer must be between")):  # fmt: skip
        with pytest.raises(StrideError, match=message):
            attribute(gpt2_dir, corpus["train"], corpus["queries"], tmp_path / "bad", method="operator-grad",
                      progress=False, method_settings=settings)  # fmt: skip
