import pytest
import torch
import torch.nn.functional as F

from stride.data import load_data
from stride.errors import StrideError
from stride.losses import sequence_kl, sequence_losses
from stride.method.operators import OperatorBank
from stride.method.steering import SteeredModel, rows_per_base_row
from stride.models import decoder_blocks, default_layer, load_causal_lm
from stride.tasks import CausalLMTask


def _setup(model_dir, train_path, form, layer=None):
    model, tokenizer = load_causal_lm(model_dir)
    data = load_data(train_path, tokenizer, 64)
    blocks = decoder_blocks(model)
    layer = default_layer(len(blocks)) if layer is None else layer
    bank = OperatorBank(form, 5, model.config.hidden_size, 4, model.get_output_embeddings().out_features, seed=0)
    return model, data.batch([0, 1, 2, 7]), SteeredModel(model, blocks, layer, CausalLMTask()), bank


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_decoder_blocks_are_found_generically(arch, gpt2_dir, llama_dir):
    model, _ = load_causal_lm(gpt2_dir if arch == "gpt2" else llama_dir)
    blocks = decoder_blocks(model)
    assert len(blocks) == model.config.num_hidden_layers
    assert type(blocks[0]).__name__ in ("GPT2Block", "LlamaDecoderLayer")


def test_negative_layers_count_from_the_last_block(gpt2_four_blocks):
    """`layer: -1` steers the last block, `-n` the first; beyond the depth either way is refused."""
    task = CausalLMTask()
    locations = [task.steered(gpt2_four_blocks, layer).location for layer in (-1, -4, 3, None)]
    assert locations == [3, 0, 3, default_layer(4)]
    for layer in (-5, 4):
        with pytest.raises(StrideError, match="layer must be between 0 and 3 \\(or -4 to -1"):
            task.steered(gpt2_four_blocks, layer)


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_zero_operator_leaves_logits_unchanged(arch, gpt2_dir, llama_dir, corpus):
    model, batch, steered, bank = _setup(gpt2_dir if arch == "gpt2" else llama_dir, corpus["train"], "residual")
    with torch.no_grad():
        plain = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
        subset_ids = torch.tensor([0, 1, 2, 3])
        with steered.attached(bank, subset_ids):
            hooked = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
        base = steered.base(batch)
        replayed = steered.steered_logits(bank, base, batch, torch.arange(4), subset_ids)
    assert torch.equal(plain, hooked)
    assert torch.allclose(plain, replayed, atol=1e-5)
    assert torch.equal(plain, base.logits)


@pytest.mark.parametrize("arch,layer", [("gpt2", 0), ("gpt2", 1), ("llama", 0), ("llama", 1)])
def test_replay_from_cached_block_matches_a_full_steered_pass(arch, layer, gpt2_dir, llama_dir, corpus):
    model, batch, steered, bank = _setup(gpt2_dir if arch == "gpt2" else llama_dir, corpus["train"], "residual", layer)
    with torch.no_grad():
        bank.coefficients.normal_(0, 0.5)
        rows = torch.tensor([0, 0, 1, 2, 3, 3])
        subset_ids = torch.tensor([4, 1, 2, 0, 3, 1])
        with steered.attached(bank, subset_ids):
            full = model(input_ids=batch.input_ids[rows], attention_mask=batch.attention_mask[rows]).logits
        replayed = steered.steered_logits(bank, steered.base(batch), batch, rows, subset_ids)
        plain = model(input_ids=batch.input_ids[rows], attention_mask=batch.attention_mask[rows]).logits
    assert not torch.allclose(full, plain, atol=1e-3), "the operators must change the logits"
    mask = batch.attention_mask[rows].bool()
    assert torch.allclose(full[mask], replayed[mask], atol=1e-4)
    assert all(type(b).__name__ != "_CachedBlock" for b in decoder_blocks(model)), "blocks must be restored"


def test_logit_form_adds_a_low_rank_term_to_the_logits(gpt2_dir, corpus):
    model, batch, steered, bank = _setup(gpt2_dir, corpus["train"], "logit")
    with torch.no_grad():
        base = steered.base(batch)
        zero = steered.steered_logits(bank, base, batch, torch.arange(4), torch.tensor([0, 1, 2, 3]))
        assert torch.equal(zero, base.logits)
        bank.coefficients.normal_()
        moved = steered.steered_logits(bank, base, batch, torch.arange(4), torch.tensor([0, 1, 2, 3]))
    assert not torch.allclose(moved, base.logits)


@pytest.mark.parametrize("form", ["logit", "hashed_logit", "shared_logit"])
@pytest.mark.parametrize("gradients", [False, True])
def test_grouped_rows_give_the_numbers_of_gathered_base_outputs(form, gradients, gpt2_dir, corpus):
    """Rows 0,0,0,1,1,1,... skip gathering copies of the base outputs; the sums must not change."""
    model, batch, steered, _ = _setup(gpt2_dir, corpus["train"], "logit")
    bank = OperatorBank(form, 5, model.config.hidden_size, 4, model.get_output_embeddings().out_features, seed=0,
                        output_rank=6)  # fmt: skip
    with torch.no_grad():
        bank.coefficients.normal_()
    base = steered.base(batch)
    rows = torch.arange(4).repeat_interleave(3)
    subset_ids = torch.tensor([0, 1, 2, 3, 4, 0, 1, 2, 3, 4, 0, 1])
    with torch.set_grad_enabled(gradients):
        grouped = steered.steered_logits(bank, base, batch, rows, subset_ids)
        gathered = base.logits[rows] + bank.delta(base.hidden[rows], subset_ids)
    assert rows_per_base_row(rows, 4) == 3 and rows_per_base_row(rows.flip(0), 4) is None
    assert grouped.requires_grad == gradients
    assert torch.equal(grouped, gathered)


def test_sequence_losses_equal_those_of_the_shifted_logits(gpt2_dir, corpus):
    """The losses computed on the whole logits equal the textbook ones on logits[:, :-1], bit for bit."""
    model, batch, _, _ = _setup(gpt2_dir, corpus["train"], "logit")
    with torch.no_grad():
        logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
        other = logits + torch.randn_like(logits)
    shifted, targets = logits[:, :-1], batch.input_ids[:, 1:]
    mask = batch.loss_mask[:, 1:].float()
    token_loss = F.cross_entropy(shifted.reshape(-1, shifted.shape[-1]), targets.reshape(-1), reduction="none")
    expected = (token_loss.view(targets.shape) * mask).sum(1) / mask.sum(1).clamp_min(1.0)
    base_log, other_log = F.log_softmax(shifted, -1), F.log_softmax(other[:, :-1], -1)
    token_kl = (base_log.exp() * (base_log - other_log)).sum(-1)
    expected_kl = (token_kl * mask).sum(1) / mask.sum(1).clamp_min(1.0)
    assert torch.equal(sequence_losses(logits, batch), expected)
    assert torch.equal(sequence_kl(logits, other, batch), expected_kl)


@pytest.fixture(scope="module")
def qwen2_dir(gpt2_dir, tmp_path_factory):
    """A randomly initialised Qwen2 (sliding-window layers) with the GPT-2 fixture's tokenizer; its
    embedding has spare rows, as real models often do (loading as Qwen2 may add a special token)."""
    import transformers

    from stride.models import load_tokenizer

    tokenizer = load_tokenizer(gpt2_dir)
    config = transformers.Qwen2Config(
        vocab_size=len(tokenizer) + 16, hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=64, use_sliding_window=True, sliding_window=8,
        max_window_layers=2, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
    )  # fmt: skip
    torch.manual_seed(0)
    out = tmp_path_factory.mktemp("qwen2")
    transformers.Qwen2ForCausalLM(config).save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


@pytest.mark.parametrize("layer", [0, 2])
def test_qwen2_replay_matches_a_full_steered_pass(layer, qwen2_dir, corpus):
    model, batch, steered, bank = _setup(qwen2_dir, corpus["train"], "residual", layer)
    assert len(steered.blocks) == 3
    with torch.no_grad():
        bank.coefficients.normal_(0, 0.5)
        rows, subset_ids = torch.tensor([0, 1, 2, 3]), torch.tensor([1, 2, 3, 4])
        with steered.attached(bank, subset_ids):
            full = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
        replayed = steered.steered_logits(bank, steered.base(batch), batch, rows, subset_ids)
    mask = batch.attention_mask.bool()
    assert torch.allclose(full[mask], replayed[mask], atol=1e-4)
