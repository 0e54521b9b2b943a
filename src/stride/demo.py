"""The default job: pre-train a tiny LM on the fortune corpus, then attribute held-out queries."""

from __future__ import annotations

import json
import time
from pathlib import Path

from stride.api import attribute
from stride.config import StrideConfig
from stride.corpus import build_demo_corpus
from stride.lm_training import LMRecipe, train_lm

DEMO_RECIPE = LMRecipe(architecture="gpt2", n_layers=2, hidden_size=128, n_heads=4, vocab_size=1024,
                       context=128, epochs=8, learning_rate=3e-3, batch_size=32, seed=0)  # fmt: skip


def run_demo(out_dir: str | Path = "runs/demo", threads: int | None = None, show: int = 3, report: bool = True) -> Path:
    """Build the corpus and the model (cached in `out_dir`), attribute, print the extremes and (with
    `report`) write the HTML report of the run."""
    from stride.api import set_threads
    from stride.report import write_report

    started = time.perf_counter()
    set_threads(threads)
    out_dir = Path(out_dir)
    train_path, queries_path = build_demo_corpus(out_dir / "data")
    model_dir = out_dir / "model"
    if not (model_dir / "recipe.json").is_file():
        print(f"pre-training a tiny GPT-2 on {train_path} (cached in {model_dir}) ...")
        train_lm(train_path, model_dir, DEMO_RECIPE)
    else:
        print(f"using the cached model in {model_dir}")
    result = attribute(model_dir, train_path, queries_path, out_dir / "attribution", config=StrideConfig(),
                       seed=0, threads=threads)  # fmt: skip
    print_top(out_dir / "attribution" / "top.jsonl", train_path, queries_path, show)
    print(f"\nscores: {result.out_dir / 'scores.safetensors'}  ({time.perf_counter() - started:.0f} s in all)")
    if report:
        print(f"report: {write_report(result.out_dir, threads=threads)}  (open it in a browser)")
    return result.out_dir


def _sources(path: Path) -> list[str]:
    return [json.loads(line).get("source", "?") for line in path.open(encoding="utf-8")]


def print_top(top_path: Path, train_path: Path, queries_path: Path, show: int) -> None:
    """For each query: the `show` most and least influential examples, and how many of its top 10
    come from the query's own source file (a sanity check anyone can read)."""
    train_sources, query_sources = _sources(train_path), _sources(queries_path)
    for line in top_path.open(encoding="utf-8"):
        row = json.loads(line)
        source = query_sources[row["query_index"]]
        same = sum(train_sources[e["index"]] == source for e in row["top"])
        print(f"\n=== query {row['query_index']} [{source}]: {row['query'][:110]}")
        print(f"    {same} of its top {len(row['top'])} training examples are from '{source}' too")
        for label, entries in (("+", row["top"][:show]), ("-", row["bottom"][:show])):
            for e in entries:
                print(f"  {label} {e['score']:+.4f} [{train_sources[e['index']]}] {e['text'][:90]}")
