"""Training tiny Hugging Face causal LMs with a recorded recipe (`stride train-lm`).

Used by the demo (pre-training from scratch) and by evaluation (retraining on subsets). Dropout is
off and the data order is seeded, so the same recipe, data and thread count give the same model.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from stride.config import settings_from_dict
from stride.core.jsonio import write_json
from stride.data import TokenizedData, load_data
from stride.errors import StrideError
from stride.losses import sequence_losses
from stride.models import context_length, load_causal_lm, load_tokenizer
from stride.reproducibility import deterministic_algorithms

ARCHITECTURES = ("gpt2", "llama", "qwen2", "gpt_neox")
SPECIAL_TOKENS = {"bos_token": "<s>", "eos_token": "</s>", "pad_token": "<pad>"}


@dataclass
class LMRecipe:
    """Architecture (for models trained from scratch) and optimisation settings."""

    architecture: str = "gpt2"
    n_layers: int = 2
    hidden_size: int = 128
    n_heads: int = 4
    vocab_size: int = 1024
    context: int = 128
    epochs: int = 4
    learning_rate: float = 3e-3
    batch_size: int = 32
    weight_decay: float = 0.01
    warmup_fraction: float = 0.1
    seed: int = 0

    def validate(self) -> None:
        if self.architecture not in ARCHITECTURES:
            raise StrideError(f"architecture must be one of {ARCHITECTURES}, got {self.architecture!r}")
        if self.hidden_size % self.n_heads:
            raise StrideError(f"hidden_size ({self.hidden_size}) must be a multiple of n_heads ({self.n_heads})")
        for name in ("n_layers", "hidden_size", "n_heads", "epochs", "batch_size", "context"):
            if getattr(self, name) < 1:
                raise StrideError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.vocab_size < 300:
            raise StrideError(f"vocab_size must be at least 300 (256 bytes + merges), got {self.vocab_size}")

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> LMRecipe:
        return settings_from_dict(cls, values, "recipe setting")


def train_tokenizer(texts: Sequence[str], vocab_size: int) -> Any:
    """A byte-level BPE tokenizer trained on `texts`, with <s>, </s> and <pad>."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    core = Tokenizer(models.BPE())
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL_TOKENS.values()),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    core.train_from_iterator(texts, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=core, model_max_length=1_000_000, **SPECIAL_TOKENS)


def new_causal_lm(recipe: LMRecipe, tokenizer: Any) -> nn.Module:
    """A randomly initialised GPT-2, Llama, Qwen2 or GPT-NeoX model sized by the recipe, dropout off."""
    import transformers

    torch.manual_seed(recipe.seed)
    ids = {"bos_token_id": tokenizer.bos_token_id, "eos_token_id": tokenizer.eos_token_id,
           "pad_token_id": tokenizer.pad_token_id}  # fmt: skip
    if recipe.architecture == "gpt2":
        gpt2_config = transformers.GPT2Config(
            vocab_size=len(tokenizer), n_positions=recipe.context, n_embd=recipe.hidden_size,
            n_layer=recipe.n_layers, n_head=recipe.n_heads, resid_pdrop=0.0, embd_pdrop=0.0,
            attn_pdrop=0.0, **ids,
        )  # fmt: skip
        return transformers.GPT2LMHeadModel(gpt2_config)
    sizes = {"vocab_size": len(tokenizer), "hidden_size": recipe.hidden_size,
             "intermediate_size": 4 * recipe.hidden_size, "num_hidden_layers": recipe.n_layers,
             "num_attention_heads": recipe.n_heads, "max_position_embeddings": recipe.context,
             "tie_word_embeddings": True, **ids}  # fmt: skip
    if recipe.architecture == "qwen2":
        return transformers.Qwen2ForCausalLM(transformers.Qwen2Config(num_key_value_heads=recipe.n_heads, **sizes))
    if recipe.architecture == "gpt_neox":
        return transformers.GPTNeoXForCausalLM(transformers.GPTNeoXConfig(**sizes))
    return transformers.LlamaForCausalLM(transformers.LlamaConfig(**sizes))


def train_causal_lm(
    model: nn.Module,
    data: TokenizedData,
    recipe: LMRecipe,
    indices: Sequence[int] | None = None,
    progress: bool = True,
) -> list[float]:
    """Train `model` in place on the examples at `indices` (all by default); mean loss per epoch.

    AdamW with linear warm-up then cosine decay; each step minimises the mean of the per-example
    losses (the same loss that attribution scores)."""
    rows = torch.as_tensor(list(range(len(data))) if indices is None else list(indices), dtype=torch.long)
    if len(rows) == 0:
        raise StrideError("cannot train on an empty set of examples")
    with deterministic_algorithms():
        return _optimise(model, data, recipe, rows, progress)


def _optimise(
    model: nn.Module, data: TokenizedData, recipe: LMRecipe, indices: torch.Tensor, progress: bool
) -> list[float]:
    steps_per_epoch = math.ceil(len(indices) / recipe.batch_size)
    total = steps_per_epoch * recipe.epochs
    warmup = max(1, int(recipe.warmup_fraction * total))
    optimizer = torch.optim.AdamW(
        [p for p in model.parameters()], lr=recipe.learning_rate, weight_decay=recipe.weight_decay
    )
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: min(1.0, (step + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(step / total, 1.0)))
    )
    model.requires_grad_(True)
    model.train()
    generator = torch.Generator().manual_seed(recipe.seed)
    epoch_losses = []
    bar = tqdm(total=total, desc="training LM", disable=not progress, unit="step")
    for _ in range(recipe.epochs):
        order = indices[torch.randperm(len(indices), generator=generator)]
        running = 0.0
        for start in range(0, len(order), recipe.batch_size):
            batch = data.batch(order[start : start + recipe.batch_size].tolist())
            logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, use_cache=False).logits
            loss = sequence_losses(logits, batch).mean()
            if not torch.isfinite(loss):
                raise StrideError("training loss became NaN/inf: lower the learning rate")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            schedule.step()
            running += loss.item()
            bar.update(1)
            bar.set_postfix(loss=f"{running / (start // recipe.batch_size + 1):.3f}")
        epoch_losses.append(running / steps_per_epoch)
    bar.close()
    model.eval()
    model.requires_grad_(False)
    return epoch_losses


@torch.no_grad()
def example_losses(model: nn.Module, data: TokenizedData, batch_size: int = 64) -> torch.Tensor:
    """The per-example loss of every example of `data` under `model` -> [len(data)]."""
    out = torch.empty(len(data))
    for start in range(0, len(data), batch_size):
        indices = list(range(start, min(start + batch_size, len(data))))
        batch = data.batch(indices)
        logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, use_cache=False).logits
        out[indices] = sequence_losses(logits, batch)
    return out


def train_lm(
    train_path: str | Path,
    out_dir: str | Path,
    recipe: LMRecipe | None = None,
    base_dir: str | Path | None = None,
    progress: bool = True,
    tokenizer_dir: str | Path | None = None,
) -> Path:
    """Pre-train from scratch (new tokenizer + model; `tokenizer_dir`: that folder's tokenizer) or
    fine-tune `base_dir`; save to `out_dir`."""
    from stride.data import read_examples

    recipe = recipe or LMRecipe()
    recipe.validate()
    started = time.perf_counter()
    model: Any  # a Hugging Face model: save_pretrained is not in nn.Module's stubs
    if base_dir is None:
        if tokenizer_dir is not None:
            tokenizer = load_tokenizer(tokenizer_dir)
        else:
            examples = read_examples(train_path)
            columns = ["text"] if "text" in examples.column_names else ["prompt", "completion"]
            tokenizer = train_tokenizer(["".join(row[c] for c in columns) for row in examples], recipe.vocab_size)
        model = new_causal_lm(recipe, tokenizer)
        max_length = recipe.context
    else:
        model, tokenizer = load_causal_lm(base_dir)
        max_length = min(recipe.context, context_length(model, tokenizer))
    data = load_data(train_path, tokenizer, max_length, name="LM training set")
    losses = train_causal_lm(model, data, recipe, progress=progress)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(out_dir))
    tokenizer.save_pretrained(str(out_dir))
    write_json(out_dir / "recipe.json", {
        "recipe": dataclasses.asdict(recipe), "base": str(base_dir) if base_dir else None,
        "train": str(train_path), "n_examples": len(data), "epoch_losses": losses,
        "parameters": sum(p.numel() for p in model.parameters()), "threads": torch.get_num_threads(),
        "seconds": time.perf_counter() - started,
    })  # fmt: skip
    return out_dir


def train_ensemble(train_path: str | Path, out_dir: str | Path, recipe: LMRecipe, n_models: int,
                   base_dir: str | Path | None = None, progress: bool = True) -> list[Path]:  # fmt: skip
    """The further members of an ensemble of the model in `out_dir` (TRAK's, TracIn's checkpoints):
    the same recipe, data and tokenizer with seeds seed + 1 ... seed + n_models - 1, each saved in
    `out_dir/ensemble/seed_S`; members already there are kept."""
    if n_models < 1:
        raise StrideError(f"an ensemble needs at least 1 model, got {n_models}")
    members = []
    for offset in range(1, n_models):
        member_recipe = dataclasses.replace(recipe, seed=recipe.seed + offset)
        folder = Path(out_dir) / "ensemble" / f"seed_{member_recipe.seed}"
        if not (folder / "recipe.json").exists():
            train_lm(train_path, folder, member_recipe, base_dir, progress, tokenizer_dir=out_dir)
        members.append(folder)
    return members
