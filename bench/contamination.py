"""Contamination benchmark: are planted benchmark items found, by attribution and by cheap detectors?

Data (seeded; `build_data`): the benchmark is 60 entries (quick: 30) of the `startrek` fortune file; the
clean training set a mix of `fortunes`, `zippy`, `murphy`, Python documentation paragraphs
(`pydoc_data.topics`) and other `startrek` entries (the benchmark's domain, not its items); the
fine-tuning base is pre-trained on a disjoint generic mix without `startrek`.

A planting (one per seed, `--plantings`, default 3) picks 12 benchmark items and plants each in
one of 3 kinds x 4 repeat counts (1, 2, 4, 8 copies at random positions; every copy the same text):
  exact    the item as it is;
  near     3 small edits: two letters replaced by random letters, one word deleted;
  rewrite  the same content reworded by rule: the clauses (split at . , ; : ! ? before a space or the end) in reverse
           order, lower case, punctuation dropped but a final period, and filler words
           (the, a, an, very, really, just, so, that, then, well, quite) removed.
The leak rate, counted in distinct planted items, is 12 / (n_train + 45): 2.2% at the default
n_train 500; the 45 planted rows (with their repeats) are 8.3% of the rows.

Per planting two models: `finetune` (the base fine-tuned on the contaminated set) and `scratch` (a
smaller GPT-2 with its own tokenizer, trained from scratch on it). Detectors, per benchmark item:
  stride, ekfac, trak, logra, graddot  `stride.contamination` (the leak score: the item's largest
        robust z-score over the training set; the same rule for every method);
  8-gram  the largest number of word 8-grams (lower case) the item shares with one training
        example; an item shorter than 8 words counts as one gram (its whole text). 8, not 13,
        because the items are short (median 19 words);
  bm25    the item's largest BM25 score over the training set (the `bm25` method, raw scores);
  min-k   Min-K% prob (K = 20): the mean of the item's lowest 20% token log-probs under the
        trained model (higher = more likely a member).
Reported: AUROC, AUPRC and recall@k (k = the number of planted items) of the planted items against
the clean ones, mean and 95% t-interval over plantings, for all planted items and per kind
(that kind's planted items against all clean ones). Writes OUT/results.json.

    python -m bench.contamination [--quick] [--methods stride 8-gram ...]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import re
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import torch

from bench.lds import FINETUNE_MODEL, SCRATCH_MODEL
from bench.selection import source_texts, summarise, train_cached
from stride.api import attribute
from stride.config import StrideConfig
from stride.contamination import contamination, detection_metrics
from stride.core.jsonio import write_json
from stride.data import load_data, write_jsonl
from stride.lm_training import LMRecipe
from stride.models import load_causal_lm

BENCHMARK_SOURCE = "startrek"
TRAIN_MIX = {"fortunes": 0.55, "zippy": 0.12, "murphy": 0.15, "pydoc": 0.12, BENCHMARK_SOURCE: 0.06}
KINDS = ("exact", "near", "rewrite")
REPEATS = (1, 2, 4, 8)
ATTRIBUTION = ("stride", "ekfac", "trak", "logra", "graddot")
METHODS = (*ATTRIBUTION, "8-gram", "bm25", "min-k")
NGRAM = 8
MIN_K = 0.2
FILLER = {"the", "a", "an", "very", "really", "just", "so", "that", "then", "well", "quite"}
LETTERS = "abcdefghijklmnopqrstuvwxyz"

BASE_RECIPE = LMRecipe(**FINETUNE_MODEL, epochs=3, learning_rate=3e-3, batch_size=32, seed=0)
RECIPES = {
    "finetune": LMRecipe(**FINETUNE_MODEL, epochs=2, learning_rate=1e-3, batch_size=32, warmup_fraction=0.0, seed=0),
    "scratch": LMRecipe(**SCRATCH_MODEL, epochs=5, learning_rate=3e-3, batch_size=32, seed=0),
}


@dataclasses.dataclass(frozen=True)
class Sizes:
    """Data sizes, plantings and STRIDE's settings of one run."""

    n_train: int
    n_items: int
    n_base: int
    plantings: int
    stride: dict[str, Any]


FULL = Sizes(n_train=500, n_items=60, n_base=1500, plantings=3, stride={"designs": 1})
QUICK = Sizes(n_train=200, n_items=30, n_base=400, plantings=2, stride={"designs": 1, "n_subsets": 200, "epochs": 1})


def near_duplicate(text: str, rng: np.random.Generator) -> str:
    """Two letters replaced by other random letters and one word deleted (a word stays if it is the only one)."""
    chars = list(text)
    letters = [i for i, c in enumerate(chars) if c.isalpha()]
    for i in rng.choice(letters, size=min(2, len(letters)), replace=False):
        chars[i] = rng.choice([c for c in LETTERS if c != chars[i].lower()])
    words = "".join(chars).split()
    if len(words) > 1:
        del words[int(rng.integers(len(words)))]
    return " ".join(words)


def rewrite(text: str) -> str:
    """Clauses in reverse order, lower case, no punctuation but a final period, no filler words."""
    clauses = [c.strip() for c in re.split(r"[.,;:!?]+(?=\s|$)", text) if c.strip()]
    words = [w for c in reversed(clauses) for w in re.sub(r"[^\w\s'-]", " ", c.lower()).split() if w not in FILLER]
    return " ".join(words) + "."


def build_data(folder: Path, sizes: Sizes) -> dict[str, Path]:
    """Seeded disjoint splits: the benchmark, the clean training set and the base's pre-training mix."""
    rng = np.random.default_rng(0)
    splits: dict[str, list[dict[str, str]]] = {"benchmark": [], "clean": [], "base": []}
    other = sum(w for s, w in TRAIN_MIX.items() if s != BENCHMARK_SOURCE)
    for source, weight in TRAIN_MIX.items():
        entries = source_texts(source)
        order = rng.permutation(len(entries))
        wanted = {"clean": round(weight * sizes.n_train)}
        wanted |= (
            {"benchmark": sizes.n_items}
            if source == BENCHMARK_SOURCE
            else {"base": round(weight / other * sizes.n_base)}
        )
        start = 0
        for name, count in wanted.items():
            if start + count > len(entries):
                raise SystemExit(f"source {source!r} has {len(entries)} entries, too few for the splits {wanted}")
            splits[name] += [{"text": entries[i], "source": source} for i in order[start : start + count]]
            start += count
    return {
        name: write_jsonl([rows[i] for i in rng.permutation(len(rows))], folder / f"{name}.jsonl")
        for name, rows in splits.items()
    }


def plant(folder: Path, data: dict[str, Path], seed: int) -> tuple[Path, list[dict[str, Any]]]:
    """The contaminated training set of one planting, and per benchmark item its label, kind and repeats."""
    rng = np.random.default_rng(100 + seed)
    benchmark = [json.loads(line) for line in data["benchmark"].read_text().splitlines()]
    rows = [json.loads(line) for line in data["clean"].read_text().splitlines()]
    items: list[dict[str, Any]] = [{"leaked": 0, "kind": None, "repeats": 0} for _ in benchmark]
    grid = [(kind, repeats) for kind in KINDS for repeats in REPEATS]
    for index, (kind, repeats) in zip(rng.choice(len(benchmark), size=len(grid), replace=False), grid):
        text = benchmark[index]["text"]
        planted = {"exact": text, "near": near_duplicate(text, rng), "rewrite": rewrite(text)}[kind]
        items[index] = {"leaked": 1, "kind": kind, "repeats": repeats, "planted_text": planted}
        for _ in range(repeats):
            rows.insert(int(rng.integers(len(rows) + 1)), {"text": planted, "source": f"planted-{kind}"})
    folder.mkdir(parents=True, exist_ok=True)
    write_json(folder / "labels.json", [item["leaked"] for item in items])
    write_json(folder / "planting.json", items)
    return write_jsonl(rows, folder / "train.jsonl"), items


def ngrams(text: str) -> set[tuple[str, ...]]:
    """Lower-case word n-grams (n = NGRAM); a shorter text is one gram."""
    words = re.findall(r"[\w']+", text.lower())
    if len(words) < NGRAM:
        return {tuple(words)}
    return {tuple(words[i : i + NGRAM]) for i in range(len(words) - NGRAM + 1)}


def ngram_scores(benchmark: list[str], train: list[str]) -> np.ndarray:
    """Per item the largest number of n-grams it shares with one training example."""
    train_grams = [ngrams(t) for t in train]
    return np.array([max(len(ngrams(item) & grams) for grams in train_grams) for item in benchmark], dtype=float)


@torch.no_grad()
def min_k_scores(model_dir: Path, benchmark: Path) -> np.ndarray:
    """Min-K% prob: per item the mean of its lowest K% next-token log-probs under the model."""
    model, tokenizer = load_causal_lm(model_dir)
    data = load_data(benchmark, tokenizer, RECIPES["finetune"].context, name="benchmark")
    out = np.empty(len(data))
    for i in range(len(data)):
        batch = data.batch([i])
        logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits[0, :-1]
        mask = batch.loss_mask[0, 1:]
        log_probs = torch.log_softmax(logits, -1).gather(1, batch.input_ids[0, 1:, None])[:, 0][mask]
        lowest = torch.sort(log_probs).values[: max(1, int(np.ceil(MIN_K * len(log_probs))))]
        out[i] = float(lowest.mean())
    return out


def detector_scores(method: str, args: argparse.Namespace, sizes: Sizes, folder: Path, model: Path, train: Path,
                    data: dict[str, Path]) -> np.ndarray:  # fmt: skip
    """One detector's score per benchmark item (higher = more likely leaked)."""
    if method in ATTRIBUTION:
        config = StrideConfig.from_dict(sizes.stride) if method == "stride" else StrideConfig()
        result = contamination(model, train, data["benchmark"], folder / "runs" / method, method=method,
                               config=config, threads=args.threads, progress=False)  # fmt: skip
        return result.leak_scores
    if method == "bm25":
        run = attribute(model, train, data["benchmark"], folder / "runs" / "bm25", method="bm25", progress=False)
        return run.scores.numpy().max(axis=1)
    if method == "min-k":
        return min_k_scores(model, data["benchmark"])
    texts = [json.loads(line)["text"] for line in data["benchmark"].read_text().splitlines()]
    return ngram_scores(texts, [json.loads(line)["text"] for line in train.read_text().splitlines()])


def metrics_by_kind(scores: np.ndarray, items: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """AUROC, AUPRC and recall@k for all planted items, and per kind against all clean items."""
    labels = np.array([item["leaked"] for item in items])
    out = {"all": detection_metrics(scores, labels)}
    for kind in KINDS:
        keep = np.array([item["kind"] in (None, kind) for item in items])
        out[kind] = detection_metrics(scores[keep], labels[keep])
    return out


def run_planting(args: argparse.Namespace, sizes: Sizes, data: dict[str, Path], base: Path, seed: int) -> list[dict]:
    """Both regimes of one planting: train, score with every detector, one row per regime x method."""
    folder = Path(args.out) / f"planting{seed}"
    train, items = plant(folder, data, seed)
    rows = []
    for regime in args.regimes:
        started = time.perf_counter()
        model = train_cached(train, folder / regime / "model", RECIPES[regime], base if regime == "finetune" else None)
        print(f"[planting {seed}] {regime} model: {time.perf_counter() - started:.0f} s", flush=True)
        for method in sorted(args.methods, key=lambda m: m == "stride"):  # STRIDE, the slowest, last
            started = time.perf_counter()
            scores = detector_scores(method, args, sizes, folder / regime, model, train, data)
            seconds = time.perf_counter() - started
            found = metrics_by_kind(scores, items)
            rows.append({"planting": seed, "regime": regime, "method": method, "seconds": seconds, "metrics": found,
                         "scores": scores.tolist()})  # fmt: skip
            print(f"[planting {seed}] {regime} {method}: AUROC {found['all']['auroc']:.3f}, AUPRC "
                  f"{found['all']['auprc']:.3f}, recall@k {found['all']['recall_at_n_leaked']:.3f} "
                  f"({seconds:.1f} s)", flush=True)  # fmt: skip
    return rows


def summary(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per regime x method x subset (all, each kind) x metric: mean and 95% t-interval over plantings."""
    out = []
    for regime in dict.fromkeys(r["regime"] for r in rows):
        for method in dict.fromkeys(r["method"] for r in rows):
            cells = [r for r in rows if r["regime"] == regime and r["method"] == method]
            for subset in ("all", *KINDS):
                for metric in ("auroc", "auprc", "recall_at_n_leaked"):
                    values = [c["metrics"][subset][metric] for c in cells]
                    seconds = float(np.mean([c["seconds"] for c in cells]))
                    out.append({"regime": regime, "method": method, "subset": subset, "metric": metric,
                                "seconds": seconds, **summarise(values)})  # fmt: skip
    return out


def print_table(table: list[dict[str, Any]]) -> None:
    """All planted items: AUROC / AUPRC / recall@k with CIs; then AUROC per kind."""

    def cell(regime: str, method: str, subset: str, metric: str) -> str:
        r = next(x for x in table if (x["regime"], x["method"], x["subset"], x["metric"]) == (regime, method, subset,
                                                                                            metric))  # fmt: skip
        return f"{r['mean']:.3f} [{r['ci_low']:.2f}, {r['ci_high']:.2f}]"

    for regime in dict.fromkeys(r["regime"] for r in table):
        methods = list(dict.fromkeys(r["method"] for r in table if r["regime"] == regime))
        print(f"\n{regime}: all planted items (mean [95% t-CI] over plantings)")
        print(f"{'method':9}{'AUROC':>22}{'AUPRC':>22}{'recall@k':>22}{'s':>7}")
        for m in methods:
            seconds = next(x["seconds"] for x in table if x["regime"] == regime and x["method"] == m)
            metrics = ("auroc", "auprc", "recall_at_n_leaked")
            print(f"{m:9}" + "".join(f"{cell(regime, m, 'all', k):>22}" for k in metrics) + f"{seconds:7.1f}")
        print(f"{regime}: AUROC per kind (that kind's planted items vs all clean items)")
        print(f"{'method':9}" + "".join(f"{k:>22}" for k in KINDS))
        for m in methods:
            print(f"{m:9}" + "".join(f"{cell(regime, m, k, 'auroc'):>22}" for k in KINDS))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="runs/bench_contamination")
    parser.add_argument("--quick", action="store_true", help="smoke run: 200 training examples, 30 items, 2 plantings")
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    parser.add_argument("--regimes", nargs="+", default=list(RECIPES), choices=list(RECIPES))
    parser.add_argument("--plantings", type=int, help="plantings (seeds; default 3, --quick 2)")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    if args.quick:
        args.out += "_quick"
    sizes = QUICK if args.quick else FULL
    sizes = dataclasses.replace(sizes, plantings=args.plantings or sizes.plantings)
    torch.set_num_threads(args.threads)
    config = {**vars(args), "sizes": dataclasses.asdict(sizes), "train_mix": TRAIN_MIX, "kinds": KINDS,
              "repeats": REPEATS, "ngram": NGRAM, "min_k": MIN_K, "base_recipe": dataclasses.asdict(BASE_RECIPE),
              "recipes": {k: dataclasses.asdict(v) for k, v in RECIPES.items()}}  # fmt: skip
    print("configuration:", json.dumps(config, default=str), flush=True)
    started = time.perf_counter()
    root = Path(args.out)
    data = build_data(root / "data", sizes)
    base = train_cached(data["base"], root / "base", BASE_RECIPE) if "finetune" in args.regimes else root / "base"
    rows = []
    for seed in range(sizes.plantings):
        rows += run_planting(args, sizes, data, base, seed)
    table = summary(rows)
    print_table(table)
    wall = time.perf_counter() - started
    print(f"benchmark wall time: {wall:.0f} s")
    write_json(root / "results.json", {"configuration": config, "summary": table, "rows": rows,
                                       "threads": torch.get_num_threads(), "wall_seconds": wall})  # fmt: skip
    print(f"wrote {root / 'results.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
