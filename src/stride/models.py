"""Hugging Face causal LMs: offline loading, checks, and finding the decoder blocks generically."""

from __future__ import annotations

import contextlib
import json
import logging
import re
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn

from stride.errors import StrideError

logger = logging.getLogger(__name__)

CONTEXT_ATTRIBUTES = ("max_position_embeddings", "n_positions", "n_ctx", "seq_length")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "tokenizer.model")
GENERIC_TOKENIZERS = ("TokenizersBackend", "PreTrainedTokenizerFast")
ADAPTER_CONFIG = "adapter_config.json"
HEAD_FACTOR_BYTES = 1 << 30  # "auto" module sets track the output head while its vocab x vocab factor fits
HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")  # "org/name", as the Hub spells repository ids


def load_causal_lm(
    model_dir: str | Path, trust_remote_code: bool = False, dtype: torch.dtype = torch.float32
) -> tuple[nn.Module, Any]:
    """Load a model (frozen, in eval mode) and its tokenizer from a local `save_pretrained` folder, a
    Hugging Face Hub id found in the local cache (`resolve_model_dir`) or a PEFT adapter folder
    (the adapted model, its LoRA weights merged in)."""
    model_dir = resolve_model_dir(model_dir)
    if (model_dir / ADAPTER_CONFIG).is_file():
        return _load_adapted(model_dir, trust_remote_code, dtype)
    return _load_plain(model_dir, trust_remote_code, dtype)


def _load_plain(model_dir: Path, trust_remote_code: bool, dtype: torch.dtype) -> tuple[nn.Module, Any]:
    import transformers

    if model_dir.exists() and not model_dir.is_dir():
        raise StrideError(f"--model must be a model folder (save_pretrained), but {model_dir} is not a folder")
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
    except Exception as exc:
        raise StrideError(f"cannot load a causal LM from {model_dir}: {_load_failure(model_dir, exc)}") from exc
    model.eval()
    model.requires_grad_(False)
    check_tokenizer_fits(model, tokenizer, model_dir)
    return model, tokenizer


def resolve_model_dir(model: str | Path) -> Path:
    """A local folder as given, or a Hub id ("org/name") resolved to its snapshot in the local
    Hugging Face cache. Nothing is downloaded: a model missing from the cache is a StrideError."""
    path = Path(model)
    if path.exists() or not HUB_ID.fullmatch(str(model)):
        return path
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        return Path(snapshot_download(str(model), local_files_only=True))
    except (LocalEntryNotFoundError, OSError, ValueError):
        from huggingface_hub.constants import HF_HUB_CACHE

        raise StrideError(
            f"model {model!r} is neither a local folder nor in the Hugging Face cache ({HF_HUB_CACHE}); stride never "
            f"downloads: fetch it first (hf download {model}) or pass a model folder"
        ) from None


def model_digest(model_dir: str | Path) -> str:
    """sha256 naming a model: its folder's files, and for an adapter also its base model's."""
    import hashlib

    from stride.core.digest import file_digest

    folder = resolve_model_dir(model_dir)
    digest = file_digest(folder)
    if (folder / ADAPTER_CONFIG).is_file():
        base = _adapter_base(folder)
        digest = hashlib.sha256(f"{digest}|{file_digest(base)}".encode()).hexdigest()
    return digest


def _adapter_base(adapter_dir: Path) -> Path:
    """The base model folder of a PEFT adapter: its `base_model_name_or_path` (a folder, also
    relative to the adapter, or a Hub id in the cache)."""
    import json

    named = json.loads((adapter_dir / ADAPTER_CONFIG).read_text()).get("base_model_name_or_path")
    if not named:
        raise StrideError(f"{adapter_dir / ADAPTER_CONFIG} names no base model (base_model_name_or_path)")
    beside = adapter_dir / named
    return beside if not Path(named).is_absolute() and beside.is_dir() else resolve_model_dir(named)


def _load_adapted(adapter_dir: Path, trust_remote_code: bool, dtype: torch.dtype) -> tuple[nn.Module, Any]:
    """A PEFT adapter merged into its base model; the adapter folder's tokenizer when it has one."""
    try:
        from peft import PeftModel
    except ImportError:
        raise StrideError(
            f"{adapter_dir} is a PEFT adapter; install peft (pip install 'stride-tda[adapters]')"
        ) from None
    base_dir = _adapter_base(adapter_dir)
    base, tokenizer = _load_plain(base_dir, trust_remote_code, dtype)
    if any((adapter_dir / name).is_file() for name in TOKENIZER_FILES):
        tokenizer = load_tokenizer(adapter_dir, trust_remote_code)
    try:
        model = PeftModel.from_pretrained(base, str(adapter_dir)).merge_and_unload()
    except Exception as exc:  # peft raises RuntimeError / ValueError / KeyError for an adapter of another model
        reason = str(exc).splitlines()[0]
        raise StrideError(f"the adapter in {adapter_dir} does not fit its base model {base_dir}: {reason}") from None
    model.eval()
    model.requires_grad_(False)
    check_tokenizer_fits(model, tokenizer, adapter_dir)
    return model, tokenizer


def _load_failure(model_dir: Path, exc: Exception) -> str:
    """Why a model folder did not load, naming the file or the flag that would help."""
    import json

    try:
        config = json.loads((model_dir / "config.json").read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as bad:
        return f"config.json is not valid JSON ({bad})"
    if "does not recognize this architecture" in str(exc) or "trust_remote_code" in str(exc):
        custom = "it has custom code (auto_map); " if "auto_map" in config else ""
        return (f"transformers does not know the model type {config.get('model_type')!r}; {custom}if you trust "
                "the folder's code, pass --trust-remote-code (trust_remote_code=True in Python)")  # fmt: skip
    from safetensors import SafetensorError

    if isinstance(exc, SafetensorError) or "deserializing header" in str(exc):
        return f"its weights (model.safetensors) cannot be read: {exc}; the file is damaged or not safetensors"
    if "above report" in str(exc):  # transformers logs the details, which stride keeps quiet
        return "its weights do not fit its config.json (tensor shapes differ): the folder mixes files of two models"
    return str(exc).splitlines()[0]


def load_tokenizer(model_dir: str | Path, trust_remote_code: bool = False) -> Any:
    """The tokenizer saved beside a model, or a StrideError saying it is missing."""
    import transformers

    model_dir = Path(model_dir)
    if not any((model_dir / name).is_file() for name in TOKENIZER_FILES):
        raise StrideError(
            f"{model_dir} has no tokenizer (none of {', '.join(TOKENIZER_FILES)}); save it beside the model"
        )
    # AutoTokenizer swaps a generic saved tokenizer for the model type's own class for some types
    # (Qwen2's adds an unknown token), which would no longer match the embedding: keep the generic one.
    loader: Any = (
        transformers.PreTrainedTokenizerFast
        if saved_class(model_dir) in GENERIC_TOKENIZERS
        else transformers.AutoTokenizer
    )
    try:
        return loader.from_pretrained(str(model_dir), local_files_only=True, trust_remote_code=trust_remote_code)
    except Exception as exc:
        raise StrideError(f"cannot load the tokenizer in {model_dir}: {exc}") from exc


def saved_class(model_dir: Path) -> str | None:
    """The tokenizer class recorded in `tokenizer_config.json` (None without one)."""
    path = model_dir / "tokenizer_config.json"
    try:
        return json.loads(path.read_text()).get("tokenizer_class") if path.is_file() else None
    except (json.JSONDecodeError, UnicodeDecodeError, AttributeError):
        return None  # AutoTokenizer then reports what is wrong with the file


def check_tokenizer_fits(model: nn.Module, tokenizer: Any, where: str | Path = "model") -> None:
    """Every token id the tokenizer can produce must have a row in the model's embedding."""
    hf_model: Any = model  # a Hugging Face model: get_input_embeddings is not in nn.Module's stubs
    n_rows = hf_model.get_input_embeddings().num_embeddings
    if len(tokenizer) > n_rows:
        raise StrideError(
            f"{where}: the tokenizer has {len(tokenizer)} tokens but the model's embedding only "
            f"{n_rows} rows: tokenizer and model do not belong together"
        )


def head_factor_fits(vocab: int) -> bool:
    """Whether an output head of `vocab` outputs has a vocab x vocab float32 factor of at most HEAD_FACTOR_BYTES."""
    return 4 * vocab * vocab <= HEAD_FACTOR_BYTES


def tracked_module_set(model: nn.Module, which: str, method: str) -> str:
    """Resolve a curvature method's module set: "auto" is "all" (every linear layer, the output head
    included) unless the head's vocab x vocab float32 factor would exceed HEAD_FACTOR_BYTES, then
    "blocks" with a warning naming `method`; "all" and "blocks" are kept as they are."""
    if which != "auto":
        return which
    hf_model: Any = model  # a Hugging Face model: get_output_embeddings is not in nn.Module's stubs
    head = hf_model.get_output_embeddings() if hasattr(hf_model, "get_output_embeddings") else None
    weight = getattr(head, "weight", None)
    vocab = 0 if weight is None else int(weight.shape[0] if isinstance(head, nn.Linear) else weight.shape[-1])
    if head_factor_fits(vocab):
        return "all"
    size = 4 * vocab * vocab / 2**30
    warnings.warn(f"{method}: the output head ({vocab} outputs) is not tracked, its factor would take {size:.0f} GiB; "
                  "set modules: all to track it anyway", stacklevel=3)  # fmt: skip
    return "blocks"


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
    """The ModuleList of decoder blocks of a decoder-only model (encoder-decoder models are refused).

    Preferred: the list made of the classes the model names in `_no_split_modules` (transformers' own
    record of its decoder-block classes), so GPT-2 (`transformer.h`), Llama/Qwen (`model.layers`) and
    mixture-of-experts layouts need no per-architecture path. Models without that record fall back to
    the largest list of same-type modules.
    """
    if getattr(getattr(model, "config", None), "is_encoder_decoder", False):
        raise StrideError(
            f"{type(model).__name__} is an encoder-decoder model; stride attributes decoder-only causal LMs"
        )
    lists = [m for m in model.modules() if isinstance(m, nn.ModuleList) and len(m) > 0]
    blocks = _declared_block_list(model, lists)
    if blocks is None:
        blocks = _largest_uniform_list(lists)
    if blocks is None:
        raise StrideError(f"cannot find the decoder blocks of {type(model).__name__}")
    return blocks


def _size_then_length(blocks: nn.ModuleList) -> tuple[int, int]:
    return sum(p.numel() for p in blocks.parameters()), len(blocks)


def _declared_block_list(model: nn.Module, lists: list[nn.ModuleList]) -> nn.ModuleList | None:
    """The largest list made only of the block classes in `_no_split_modules` (None if there is none).
    Any mix of those classes counts, as hybrid models stack several kinds of decoder layer."""
    names = set(getattr(model, "_no_split_modules", None) or ())
    matching = [m for m in lists if all(type(block).__name__ in names for block in m)]
    return max(matching, key=_size_then_length, default=None)


def _largest_uniform_list(lists: list[nn.ModuleList]) -> nn.ModuleList | None:
    """The ModuleList of same-type modules that holds the most parameters (ties: the longer one)."""
    uniform = [m for m in lists if len({type(block) for block in m}) == 1]
    return max(uniform, key=_size_then_length, default=None)


def default_layer(n_blocks: int) -> int:
    """About 0.6 of the depth, as in the STRIDE paper (block index, 0-based)."""
    return min(n_blocks - 1, int(0.6 * n_blocks))


@contextlib.contextmanager
def eager_attention(model: nn.Module) -> Iterator[None]:
    """Run with the plain ("eager") attention, which torch.func.vmap traces without a slow fallback."""
    hf_model: Any = model  # a Hugging Face model: set_attn_implementation is not in nn.Module's stubs
    before = getattr(hf_model.config, "_attn_implementation", None)
    switch = before not in (None, "eager") and hasattr(hf_model, "set_attn_implementation")
    if switch:
        hf_model.set_attn_implementation("eager")
    try:
        yield
    finally:
        if switch:
            hf_model.set_attn_implementation(before)


def parameter_count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
