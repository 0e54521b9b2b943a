"""Loading models (folders, Hub ids from the local cache, PEFT adapters) and finding their decoder blocks
(tiny random models built from configs; nothing is downloaded)."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from torch import nn
from transformers import (AutoModelForCausalLM, BartConfig, BartForCausalLM, BartForConditionalGeneration, GPT2Config,
                          LlamaConfig, MixtralConfig, PretrainedConfig, Qwen2Config, Qwen2MoeConfig, T5Config,
                          T5ForConditionalGeneration)

from stride.errors import StrideError
from stride.models import decoder_blocks, load_causal_lm, parameter_count

SIZES = dict(num_hidden_layers=2, hidden_size=32, intermediate_size=64, num_attention_heads=2,
             num_key_value_heads=2, vocab_size=64, max_position_embeddings=32)  # fmt: skip
MOE = dict(num_experts_per_tok=2)
BART = dict(vocab_size=64, d_model=32, encoder_layers=2, decoder_layers=2, encoder_attention_heads=2,
            decoder_attention_heads=2, encoder_ffn_dim=64, decoder_ffn_dim=64, max_position_embeddings=32)  # fmt: skip


def _causal_lm(config: PretrainedConfig) -> nn.Module:
    return AutoModelForCausalLM.from_config(config)


CAUSAL_LMS: dict[str, tuple[Callable[[], nn.Module], Callable[[nn.Module], nn.ModuleList]]] = {
    "gpt2": (lambda: _causal_lm(GPT2Config(n_layer=2, n_embd=32, n_head=2, vocab_size=64, n_positions=32,
                                                        bos_token_id=0, eos_token_id=0)),
             lambda m: m.transformer.h),
    "llama": (lambda: _causal_lm(LlamaConfig(**SIZES)), lambda m: m.model.layers),
    "qwen2": (lambda: _causal_lm(Qwen2Config(**SIZES)), lambda m: m.model.layers),
    "mixtral": (lambda: _causal_lm(MixtralConfig(**SIZES, **MOE, num_local_experts=4)),
                lambda m: m.model.layers),
    "qwen2_moe": (lambda: _causal_lm(Qwen2MoeConfig(**SIZES, **MOE, num_experts=4, moe_intermediate_size=16,
                                                                 shared_expert_intermediate_size=32)),
                  lambda m: m.model.layers),
    "bart_causal": (lambda: BartForCausalLM(BartConfig(**BART)),
                    lambda m: m.model.decoder.layers),
}  # fmt: skip


@pytest.mark.parametrize("name", list(CAUSAL_LMS))
def test_decoder_blocks_of_causal_lms(name: str) -> None:
    build, expected = CAUSAL_LMS[name]
    model = build()
    assert decoder_blocks(model) is expected(model)


def test_mixtral_with_a_list_of_experts_per_layer_gives_the_layers() -> None:
    """transformers 4.x kept each layer's experts in a ModuleList (longer than the stack of layers)."""
    model = _causal_lm(MixtralConfig(**SIZES, **MOE, num_local_experts=4))
    for layer in model.model.layers:
        layer.mlp.experts = nn.ModuleList(nn.Sequential(nn.Linear(32, 64), nn.Linear(64, 32)) for _ in range(4))
    assert decoder_blocks(model) is model.model.layers


class Block(nn.Module):
    def __init__(self, width: int = 8) -> None:
        super().__init__()
        self.linear = nn.Linear(width, width)


class WithHeads(nn.Module):
    """Declares its blocks, and also holds a larger list of output heads."""

    _no_split_modules = ("Block",)

    def __init__(self) -> None:
        super().__init__()
        self.layers = nn.ModuleList(Block() for _ in range(2))
        self.heads = nn.ModuleList(nn.Linear(8, 256) for _ in range(3))


def test_declared_block_class_wins_over_a_larger_list() -> None:
    model = WithHeads()
    assert decoder_blocks(model) is model.layers


def test_declared_names_that_match_nothing_fall_back_to_the_heuristic() -> None:
    model = WithHeads()
    model._no_split_modules = ("MissingBlock",)
    assert decoder_blocks(model) is model.heads


class Plain(nn.Module):
    """No `_no_split_modules`: the generic heuristic decides."""

    def __init__(self, **lists: nn.ModuleList) -> None:
        super().__init__()
        for name, modules in lists.items():
            setattr(self, name, modules)


def test_fallback_takes_the_list_with_most_parameters() -> None:
    model = Plain(big=nn.ModuleList(Block(16) for _ in range(2)), long=nn.ModuleList(Block(2) for _ in range(6)))
    assert decoder_blocks(model) is model.big


def test_fallback_breaks_ties_by_length() -> None:
    longer = nn.ModuleList(nn.Linear(2, 4, bias=False) for _ in range(4))  # 32 parameters
    shorter = nn.ModuleList(nn.Linear(4, 4, bias=False) for _ in range(2))  # 32 parameters
    model = Plain(longer=longer, shorter=shorter)
    assert decoder_blocks(model) is model.longer


def test_fallback_skips_lists_of_mixed_types() -> None:
    model = Plain(mixed=nn.ModuleList([nn.Linear(64, 64), nn.ReLU()]), blocks=nn.ModuleList(Block() for _ in range(2)))
    assert decoder_blocks(model) is model.blocks


def test_a_model_without_module_lists_is_refused() -> None:
    with pytest.raises(StrideError, match="cannot find the decoder blocks of Sequential"):
        decoder_blocks(nn.Sequential(nn.Linear(4, 4)))


@pytest.mark.parametrize("name", ["t5", "bart"])
def test_encoder_decoder_models_are_refused(name: str) -> None:
    if name == "t5":
        config = T5Config(vocab_size=64, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=2)
        model = T5ForConditionalGeneration(config)
    else:
        model = BartForConditionalGeneration(BartConfig(**BART))
    with pytest.raises(StrideError, match=f"{type(model).__name__} is an encoder-decoder model; stride attributes "
                                          "decoder-only causal LMs"):  # fmt: skip
        decoder_blocks(model)


def _hub_cache(cache: Path, repo_id: str, model_dir: Path) -> None:
    """A Hugging Face cache holding `model_dir` as the snapshot of `repo_id` (the cache's own layout)."""
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    revision = "0" * 40
    shutil.copytree(model_dir, repo / "snapshots" / revision)
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(revision)


def test_a_hub_id_resolves_through_the_local_cache_and_never_downloads(gpt2_dir, tmp_path, monkeypatch):
    from huggingface_hub import constants

    from stride.models import model_digest, resolve_model_dir

    _hub_cache(tmp_path / "hub", "tiny-org/tiny-gpt2", gpt2_dir)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    resolved = resolve_model_dir("tiny-org/tiny-gpt2")
    assert resolved.name == "0" * 40 and (resolved / "config.json").is_file()
    model, _ = load_causal_lm("tiny-org/tiny-gpt2")
    assert parameter_count(model) == parameter_count(load_causal_lm(gpt2_dir)[0])
    assert model_digest("tiny-org/tiny-gpt2") == model_digest(gpt2_dir)
    with pytest.raises(StrideError, match="neither a local folder nor in the Hugging Face cache"):
        resolve_model_dir("tiny-org/not-cached")


def _lora_adapter(base_dir: Path, out: Path) -> Path:
    from peft import LoraConfig, get_peft_model

    model, tokenizer = load_causal_lm(base_dir)
    adapted = get_peft_model(model, LoraConfig(r=4, target_modules=["c_attn"], init_lora_weights=False))
    adapted.save_pretrained(str(out))
    config = json.loads((out / "adapter_config.json").read_text())
    config["base_model_name_or_path"] = str(base_dir)
    (out / "adapter_config.json").write_text(json.dumps(config))
    return out


def test_a_peft_adapter_folder_is_attributed_as_the_adapted_model(gpt2_dir, llama_dir, corpus, tmp_path):
    pytest.importorskip("peft")
    from peft import PeftModel

    from stride.api import attribute

    adapter = _lora_adapter(gpt2_dir, tmp_path / "adapter")
    adapted, _ = load_causal_lm(adapter)
    base, tokenizer = load_causal_lm(gpt2_dir)
    merged = PeftModel.from_pretrained(base, str(adapter)).merge_and_unload()
    assert all(torch.equal(a, b) for a, b in zip(adapted.state_dict().values(), merged.state_dict().values()))
    assert not torch.equal(adapted.state_dict()["transformer.h.0.attn.c_attn.weight"],
                           load_causal_lm(gpt2_dir)[0].state_dict()["transformer.h.0.attn.c_attn.weight"])  # fmt: skip
    merged.save_pretrained(str(tmp_path / "merged"))
    tokenizer.save_pretrained(str(tmp_path / "merged"))
    via_adapter = attribute(adapter, corpus["train"], corpus["queries"], tmp_path / "a", method="tfidf", progress=False)
    assert via_adapter.scores.shape == (6, 96)
    settings = {"exact_max_parameters": 10**9}
    one = attribute(adapter, corpus["train"], corpus["queries"], tmp_path / "g1", method="graddot",
                    method_settings=settings, progress=False)  # fmt: skip
    two = attribute(tmp_path / "merged", corpus["train"], corpus["queries"], tmp_path / "g2", method="graddot",
                    method_settings=settings, progress=False)  # fmt: skip
    assert torch.allclose(one.scores, two.scores, rtol=1e-4, atol=1e-6)
    config = json.loads((adapter / "adapter_config.json").read_text())
    config["base_model_name_or_path"] = str(llama_dir)
    (adapter / "adapter_config.json").write_text(json.dumps(config))
    with pytest.raises(StrideError, match="does not fit its base model"):
        load_causal_lm(adapter)
