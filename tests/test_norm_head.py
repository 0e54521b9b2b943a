"""Residual operators at the last block through the final norm and head (stride.method.norm_head):
the same logits and gradients as running the head once per row, and no shortcut where the tail differs."""

import pytest
import torch

from stride.data import load_data
from stride.lm_training import LMRecipe, train_lm
from stride.losses import sequence_losses
from stride.method.operators import OperatorBank
from stride.method.steering import SteeredModel
from stride.models import decoder_blocks, load_causal_lm
from stride.tasks import CausalLMTask


@pytest.fixture(scope="module")
def neox_dir(corpus, tmp_path_factory):
    """A tiny GPT-NeoX (LayerNorm with a shift, parallel attention and MLP), one epoch on the training file."""
    recipe = LMRecipe(architecture="gpt_neox", n_layers=2, hidden_size=32, n_heads=2, vocab_size=320, context=64,
                      epochs=1, learning_rate=1e-2, batch_size=16, seed=0)  # fmt: skip
    return train_lm(corpus["train"], tmp_path_factory.mktemp("neox"), recipe, progress=False)


def _steered(model_dir, corpus, layer):
    model, tokenizer = load_causal_lm(model_dir)
    batch = load_data(corpus["train"], tokenizer, 64).batch([0, 1, 2, 7])
    blocks = decoder_blocks(model)
    bank = OperatorBank("residual", 5, model.config.hidden_size, 4, model.get_output_embeddings().out_features, seed=0)
    with torch.no_grad():
        bank.coefficients.normal_(0, 0.5)
    return model, batch, SteeredModel(model, blocks, layer % len(blocks), CausalLMTask()), bank


def _without_norm_head(steered):
    steered._norm_head, steered._norm_head_pending = None, False
    return steered


@pytest.fixture(params=["gpt2", "llama", "neox"])
def model_dir(request, gpt2_dir, llama_dir, neox_dir):
    return {"gpt2": gpt2_dir, "llama": llama_dir, "neox": neox_dir}[request.param]


def test_last_block_logits_equal_a_full_steered_pass(model_dir, corpus):
    model, batch, steered, bank = _steered(model_dir, corpus, -1)
    rows, subset_ids = torch.tensor([0, 0, 1, 2, 3, 3]), torch.tensor([4, 1, 2, 0, 3, 1])
    with torch.no_grad():
        base = steered.base(batch)
        with steered.attached(bank, subset_ids):
            full = model(input_ids=batch.input_ids[rows], attention_mask=batch.attention_mask[rows]).logits
        shortcut = steered.steered_logits(bank, base, batch, rows, subset_ids)
    assert steered.norm_head(base, batch) is not None, "the final norm and head must be found at the last block"
    mask = batch.attention_mask[rows].bool()
    assert not torch.allclose(full, base.logits[rows], atol=1e-3), "the operators must change the logits"
    assert torch.allclose(full[mask], shortcut[mask], atol=1e-4)


def test_gradients_through_the_norm_head_equal_those_of_the_head_per_row(model_dir, corpus):
    _, batch, steered, bank = _steered(model_dir, corpus, -1)
    _, _, plain, _ = _steered(model_dir, corpus, -1)
    base = steered.base(batch)
    rows, subset_ids = torch.arange(4).repeat_interleave(2), torch.tensor([0, 1, 2, 3, 4, 0, 1, 2])
    gradients = []
    for route in (steered, _without_norm_head(plain)):
        bank.zero_grad()
        sequence_losses(route.steered_logits(bank, base, batch, rows, subset_ids), batch.select(rows)).sum().backward()
        gradients.append([bank.basis.grad.clone(), bank.coefficients.grad.clone()])
    assert steered.norm_head(base, batch) is not None and plain.norm_head(base, batch) is None
    for shortcut, per_row in zip(*gradients, strict=True):
        assert per_row.abs().max() > 0
        assert torch.allclose(shortcut, per_row, atol=1e-5, rtol=1e-4)


def test_no_shortcut_below_the_last_block_or_when_the_tail_does_more(gpt2_dir, corpus):
    """Block 0 has blocks above it; a head whose outputs are rescaled (as capped or scaled logits
    are) fails the check against the model's own outputs, and the head then runs per row."""
    _, batch, below, _ = _steered(gpt2_dir, corpus, 0)
    assert below.norm_head(below.base(batch), batch) is None
    model, batch, steered, bank = _steered(gpt2_dir, corpus, -1)
    model.get_output_embeddings().register_forward_hook(lambda _module, _inputs, output: output * 2)
    rows, subset_ids = torch.arange(4), torch.tensor([1, 2, 3, 4])
    with torch.no_grad():
        base = steered.base(batch)
        with steered.attached(bank, subset_ids):
            full = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
        replayed = steered.steered_logits(bank, base, batch, rows, subset_ids)
    assert steered.norm_head(base, batch) is None
    mask = batch.attention_mask.bool()
    assert torch.allclose(full[mask], replayed[mask], atol=1e-4)
