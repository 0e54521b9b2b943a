"""Shared fixtures: tiny causal LMs and data built inside the test session (no downloads)."""

from __future__ import annotations

import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch starts OpenMP

import pytest  # noqa: E402
import torch  # noqa: E402
from transformers import GPT2Config, GPT2LMHeadModel  # noqa: E402

torch.set_num_threads(2)

from stride.corpus import read_fortunes  # noqa: E402
from stride.data import write_jsonl  # noqa: E402
from stride.lm_training import LMRecipe, train_lm  # noqa: E402

N_TRAIN = 96
N_QUERIES = 6


@pytest.fixture(scope="session")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Short fortunes: a training file, and queries whose first two copy training examples 3 and 40."""
    root = tmp_path_factory.mktemp("corpus")
    texts = [t for t in read_fortunes("murphy", max_chars=90)][: N_TRAIN + N_QUERIES]
    train, held_out = texts[:N_TRAIN], texts[N_TRAIN:]
    queries = [train[3], train[40]] + held_out[: N_QUERIES - 2]
    return {
        "train": write_jsonl([{"text": t} for t in train], root / "train.jsonl"),
        "queries": write_jsonl([{"text": t} for t in queries], root / "queries.jsonl"),
        "root": root,
    }


TINY_RECIPE = dict(n_layers=2, hidden_size=32, n_heads=2, vocab_size=320, context=64, epochs=6,
                   learning_rate=1e-2, batch_size=16, seed=0)  # fmt: skip


@pytest.fixture(scope="session")
def gpt2_dir(corpus: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny GPT-2 pre-trained on the training file."""
    out = tmp_path_factory.mktemp("gpt2")
    return train_lm(corpus["train"], out, LMRecipe(architecture="gpt2", **TINY_RECIPE), progress=False)


@pytest.fixture(scope="session")
def gpt2_four_blocks() -> GPT2LMHeadModel:
    """An untrained 4-block GPT-2, where the default block (about 0.6 of the depth, 2) is not the last (3)."""
    return GPT2LMHeadModel(GPT2Config(vocab_size=64, n_embd=16, n_layer=4, n_head=2, n_positions=32))


@pytest.fixture(scope="session")
def llama_dir(corpus: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny Llama pre-trained on the training file."""
    out = tmp_path_factory.mktemp("llama")
    return train_lm(corpus["train"], out, LMRecipe(architecture="llama", **TINY_RECIPE), progress=False)
