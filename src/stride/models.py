"""Hugging Face causal LMs: offline loading, checks, and finding the decoder blocks generically."""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path
from typing import Any, Iterator

import torch
from torch import nn

from stride.errors import StrideError

logger = logging.getLogger(__name__)

CONTEXT_ATTRIBUTES = ("max_position_embeddings", "n_positions", "n_ctx", "seq_length")


def load_causal_lm(
    model_dir: str | Path, trust_remote_code: bool = False, dtype: torch.dtype = torch.float32
) -> tuple[nn.Module, Any]:
    """Load a local `save_pretrained` folder (model + tokenizer), frozen and in eval mode."""
    import transformers

    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise StrideError(f"model directory not found: {model_dir}")
    if not (model_dir / "config.json").is_file():
        raise StrideError(f"{model_dir} has no config.json: not a save_pretrained model folder")
    tokenizer = load_tokenizer(model_dir, trust_remote_code)
    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    try:
        model = transformers.AutoModelForCausalLM.from_pretrained(
            str(model_dir), local_files_only=True, trust_remote_code=trust_remote_code, dtype=dtype
        )
    except Exception as exc:  # noqa: BLE001 - any loading failure becomes one readable line
        raise StrideError(f"cannot load a causal LM from {model_dir}: {exc}") from exc
    model.eval()
    model.requires_grad_(False)
    check_tokenizer_fits(model, tokenizer, model_dir)
    return model, tokenizer


def load_tokenizer(model_dir: str | Path, trust_remote_code: bool = False) -> Any:
    """The tokenizer saved beside a model, or a StrideError saying it is missing."""
    import transformers

    model_dir = Path(model_dir)
    names = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "tokenizer.model")
    if not any((model_dir / name).is_file() for name in names):
        raise StrideError(f"{model_dir} has no tokenizer (none of {', '.join(names)}); save it beside the model")
    try:
        return transformers.AutoTokenizer.from_pretrained(
            str(model_dir), local_files_only=True, trust_remote_code=trust_remote_code
        )
    except Exception as exc:  # noqa: BLE001
        raise StrideError(f"cannot load the tokenizer in {model_dir}: {exc}") from exc


def check_tokenizer_fits(model: nn.Module, tokenizer: Any, where: str | Path = "model") -> None:
    """Every token id the tokenizer can produce must have a row in the model's embedding."""
    n_rows = model.get_input_embeddings().num_embeddings
    if len(tokenizer) > n_rows:
        raise StrideError(
            f"{where}: the tokenizer has {len(tokenizer)} tokens but the model's embedding only "
            f"{n_rows} rows: tokenizer and model do not belong together"
        )


def context_length(model: nn.Module, tokenizer: Any | None = None) -> int:
    """The longest sequence the model takes, from its config (or the tokenizer's limit)."""
    for name in CONTEXT_ATTRIBUTES:
        value = getattr(model.config, name, None)
        if isinstance(value, int) and value > 0:
            return value
    limit = getattr(tokenizer, "model_max_length", None)
    if isinstance(limit, int) and 0 < limit < 1_000_000:
        return limit
    raise StrideError("cannot tell the model's context length; set max_length in the config")


def decoder_blocks(model: nn.Module) -> nn.ModuleList:
    """The stack of decoder blocks: the ModuleList of same-type modules that holds the
    most parameters (ties: the longer one). Found generically, so GPT-2 (`transformer.h`), Llama/Qwen (`model.layers`)
    and other layouts need no per-architecture path."""
    best: tuple[int, int, nn.ModuleList] | None = None
    for module in model.modules():
        if not isinstance(module, nn.ModuleList) or len(module) == 0:
            continue
        if len({type(block) for block in module}) != 1:
            continue
        size = sum(p.numel() for p in module.parameters())
        key = (size, len(module))
        if best is None or key > best[:2]:
            best = (len(module), size, module)
    if best is None:
        raise StrideError(f"cannot find the decoder blocks of {type(model).__name__}")
    return best[2]


def default_layer(n_blocks: int) -> int:
    """About 0.6 of the depth, as in the STRIDE paper (block index, 0-based)."""
    return min(n_blocks - 1, int(0.6 * n_blocks))


@contextlib.contextmanager
def eager_attention(model: nn.Module) -> Iterator[None]:
    """Run with the plain ("eager") attention, which torch.func.vmap traces without a slow fallback."""
    before = getattr(model.config, "_attn_implementation", None)
    switch = before not in (None, "eager") and hasattr(model, "set_attn_implementation")
    if switch:
        model.set_attn_implementation("eager")
    try:
        yield
    finally:
        if switch:
            model.set_attn_implementation(before)


def parameter_count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
