"""Wall time against the number of training examples: is STRIDE's cost linear in n?

The fortune files hold about 13,500 entries, too few for n = 16,000, so this benchmark uses their
sentences (about 25,700 of at least 20 characters): a seeded shuffle gives nested training sets of
each size and 100 held-out queries. One randomly initialised GPT-2 (2 blocks, width 128, the
fine-tune benchmark's size; its tokenizer is trained on the first training set) serves every n:
timing only, untrained weights change no method's amount of work. Each n is timed in the same
process, next to one forward pass over that training set. Prints the configuration and a table;
writes results.json after every size.

    python -m bench.cost_vs_n [--sizes 1000 4000 16000] [--methods stride] [--designs 1]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
from dataclasses import asdict
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import torch

from bench.lds import cached_model_matches
from stride.api import attribute
from stride.config import StrideConfig
from stride.core.jsonio import write_json
from stride.corpus import DEMO_MIX, read_fortunes
from stride.data import load_data, write_jsonl
from stride.lm_training import LMRecipe, example_losses, new_causal_lm, train_tokenizer
from stride.models import load_causal_lm

CONTEXT = 128
N_QUERIES = 100


def fortune_sentences(seed: int) -> list[str]:
    """Sentences (at least 20 characters) of the demo's fortune files, in a seeded order."""
    sentences = []
    for source in DEMO_MIX:
        for entry in read_fortunes(source, max_chars=1000):
            sentences += [part for part in re.split(r"(?<=[.!?])\s+", entry) if len(part) >= 20]
    order = np.random.default_rng(seed).permutation(len(sentences))
    return [sentences[i] for i in order]


def build_model(texts: list[str], folder: Path) -> Path:
    """A random GPT-2 (2 blocks, width 128, vocabulary 1,024) with a tokenizer trained on `texts` (cached;
    recipe.json records its recipe)."""
    recipe = LMRecipe(architecture="gpt2", n_layers=2, hidden_size=128, n_heads=4, vocab_size=1024,
                      context=CONTEXT, seed=0)  # fmt: skip
    if not cached_model_matches(folder, recipe):
        tokenizer = train_tokenizer(texts, 1024)
        folder.mkdir(parents=True, exist_ok=True)
        new_causal_lm(recipe, tokenizer).save_pretrained(str(folder))
        tokenizer.save_pretrained(str(folder))
        write_json(folder / "recipe.json", {"recipe": asdict(recipe), "base": None, "trained": False,
                                            "tokenizer_texts": len(texts)})  # fmt: skip
    return folder


def forward_seconds(model_dir: Path, train_path: Path) -> float:
    """Seconds of one forward pass over a training set."""
    model, tokenizer = load_causal_lm(model_dir)
    data = load_data(train_path, tokenizer, CONTEXT, name="training set")
    started = time.perf_counter()
    example_losses(model, data)
    return time.perf_counter() - started


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="runs/bench_cost_n")
    parser.add_argument("--sizes", nargs="+", type=int, default=[1000, 4000, 16000])
    parser.add_argument("--methods", nargs="+", default=["stride"])
    parser.add_argument(
        "--designs",
        type=int,
        default=1,
        help="STRIDE designs (each adds the same cost again; default 1: the cost of one design)",
    )
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print("configuration:", json.dumps(vars(args)))
    out = Path(args.out)
    sentences = fortune_sentences(seed=0)
    if max(args.sizes) + N_QUERIES > len(sentences):
        raise SystemExit(f"only {len(sentences)} sentences: at most {len(sentences) - N_QUERIES} training examples")
    queries = write_jsonl([{"text": t} for t in sentences[-N_QUERIES:]], out / "data" / "queries.jsonl")
    model_dir = build_model(sentences[: min(args.sizes)], out / "model")
    rows = []
    for n in args.sizes:
        train = write_jsonl([{"text": t} for t in sentences[:n]], out / "data" / f"train_{n}.jsonl")
        row = {"n_train": n, "forward_seconds": forward_seconds(model_dir, train), "seconds": {}, "stages": {}}
        for method in args.methods:
            result = attribute(model_dir, train, queries, out / "runs" / str(n) / method, method=method,
                               config=StrideConfig(designs=args.designs), threads=args.threads, overwrite=True,
                               progress=False)  # fmt: skip
            timings = {k: v for k, v in result.info["timings_seconds"].items() if k != "total"}
            row["seconds"][method] = sum(timings.values())
            row["stages"][method] = timings
            print(f"[n={n}] {method}: {row['seconds'][method]:.1f} s {json.dumps(timings)}", flush=True)
        rows.append(row)
        write_json(
            out / "results.json", {"configuration": vars(args), "rows": rows, "threads": torch.get_num_threads()}
        )
    first = rows[0]
    print(
        f"\n{'n':>6} {'forward s':>9} "
        + " ".join(f"{m + ' s':>10} {'x n=' + str(first['n_train']):>9}" for m in args.methods)
    )
    for row in rows:
        cells = [f"{row['seconds'][m]:10.1f} {row['seconds'][m] / first['seconds'][m]:9.2f}" for m in args.methods]
        print(f"{row['n_train']:6d} {row['forward_seconds']:9.2f} " + " ".join(cells))
    print(f"wrote {out / 'results.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
