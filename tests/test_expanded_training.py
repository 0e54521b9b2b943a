"""Second-order training of hashed_logit operators: its terms are the Taylor expansion of the exact
cross-entropy and KL, it trains, and a run with it attributes (and records the option)."""

import json

import pytest
import torch

from stride.api import attribute
from stride.config import StrideConfig
from stride.data import load_data
from stride.errors import StrideError
from stride.losses import sequence_kl, sequence_losses
from stride.method.expanded_training import bucket_moments, expanded_changes
from stride.method.operators import HASHED_LOGIT, OperatorBank
from stride.method.steering import SteeredModel
from stride.models import decoder_blocks, load_causal_lm
from stride.tasks import CausalLMTask


@pytest.fixture(scope="module")
def lm(gpt2_dir, corpus):
    model, tokenizer = load_causal_lm(gpt2_dir)
    data = load_data(corpus["train"], tokenizer, 64)
    return model, data, SteeredModel(model, decoder_blocks(model), 1, CausalLMTask())


def _bank(model, scale, buckets=16):
    bank = OperatorBank(HASHED_LOGIT, 3, model.config.hidden_size, 4, model.config.vocab_size, 0, buckets)
    with torch.no_grad():
        bank.coefficients.copy_(
            scale * torch.randn(bank.coefficients.shape, generator=torch.Generator().manual_seed(1))
        )
    return bank


@pytest.mark.parametrize("buckets", [16, 1024])  # most tokens share a bucket / nearly none do
def test_expanded_terms_are_the_second_order_taylor_expansion(lm, buckets):
    model, data, steered = lm
    batch = data.batch([0, 1, 2, 3])
    base = steered.base(batch)
    rows, ids = torch.tensor([0, 1, 2, 3, 0]), torch.tensor([0, 1, 2, 0, 2])
    errors = []
    for scale in (0.02, 0.01):
        bank = _bank(model, scale, buckets)
        moments = bucket_moments(bank, base.logits, batch)
        torch.testing.assert_close(moments.base_losses, sequence_losses(base.logits, batch))
        linear, variance = expanded_changes(bank, moments, base.hidden, rows, ids)
        steered_logits = steered.steered_logits(bank, base, batch, rows, ids)
        loss_change = sequence_losses(steered_logits, batch.select(rows)) - moments.base_losses[rows]
        divergence = sequence_kl(base.logits[rows], steered_logits, batch.select(rows))
        assert (variance > 0).all()
        errors.append(((loss_change - linear - 0.5 * variance).abs().max(), (divergence - 0.5 * variance).abs().max()))
        assert (loss_change - linear).abs().max() > 4 * errors[-1][0]  # the second-order term matters
    # the remainder is third order: halving the shifts divides it by about 8
    for coarse, fine in zip(*errors):
        assert fine < coarse / 5, (coarse, fine)


def test_second_order_training_through_the_pipeline(gpt2_dir, corpus, tmp_path):
    config = StrideConfig(form=HASHED_LOGIT, output_rank=256, n_subsets=48, subsets_per_example=6, rank=8, epochs=4,
                          batch_size=16, learning_rate=3e-2, designs=1, cv_queries=4, measure_expansion="second_order",
                          training_expansion="second_order")  # fmt: skip
    scores = attribute(gpt2_dir, corpus["train"], corpus["queries"], tmp_path / "run", config=config, seed=0,
                       progress=False).scores  # fmt: skip
    for query, duplicate in ((0, 3), (1, 40)):
        assert duplicate in torch.argsort(scores[query], descending=True)[:5].tolist()
    record = json.loads((tmp_path / "run" / "stages" / "operators.json").read_text())
    assert record["arguments"]["training_expansion"] == "second_order"


def test_second_order_training_is_refused_for_other_forms_and_with_the_linearity_term():
    with pytest.raises(StrideError, match="needs form 'hashed_logit' and linearity_weight 0"):
        StrideConfig(form="logit", training_expansion="second_order").validate()
    with pytest.raises(StrideError, match="needs form 'hashed_logit' and linearity_weight 0"):  # auto took logit
        StrideConfig(training_expansion="second_order").resolved(96, 1024).validate()
    with pytest.raises(StrideError, match="needs form 'hashed_logit' and linearity_weight 0"):
        StrideConfig(form=HASHED_LOGIT, training_expansion="second_order", linearity_weight=0.1).validate()


def test_form_auto_takes_hashed_logit_above_16384_outputs(gpt2_dir, corpus, tmp_path):
    from transformers import AutoTokenizer, GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=17_000, n_embd=32, n_layer=2, n_head=2, n_positions=64))
    model.save_pretrained(tmp_path / "model")
    AutoTokenizer.from_pretrained(gpt2_dir).save_pretrained(tmp_path / "model")
    config = StrideConfig(n_subsets=48, subsets_per_example=6, rank=4, epochs=1, designs=1, cv_queries=4)
    assert config.form == "auto"
    with pytest.warns(UserWarning, match="form auto: the model has 17000 outputs"):
        result = attribute(tmp_path / "model", corpus["train"], corpus["queries"], tmp_path / "run", config=config,
                           seed=0, progress=False)  # fmt: skip
    assert torch.isfinite(result.scores).all()
    record = json.loads((tmp_path / "run" / "stages" / "operators.json").read_text())["arguments"]
    assert (record["form"], record["output_rank"], record["training_expansion"]) == (
        "hashed_logit",
        1024,
        "second_order",
    )
    assert result.info["settings"]["measure_expansion"] == "second_order"
    # the benchmark models' vocabularies stay with the logit form
    assert StrideConfig().resolved(96, 1024).form == "logit"
