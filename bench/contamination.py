"""Contamination benchmark: are planted benchmark items found, by attribution and by cheap detectors?

Data (seeded; `build_data`): the benchmark is 60 entries (quick: 30) of the `startrek` fortune file; the
clean training set (1,000 rows; quick: 200) a mix of `fortunes`, `zippy`, `murphy`, Python documentation
paragraphs (`pydoc_data.topics`) and other `startrek` entries (the benchmark's domain, not its items); the
fine-tuning base is pre-trained on a disjoint generic mix without `startrek`.

A planting (one per seed, `--plantings`, default 3) picks 4 benchmark items and plants them 1, 2, 4
and 8 times (copies at random positions; every copy the same text), as one of 3 kinds:
  exact    the item as it is;
  near     3 small edits: two letters replaced by random letters, one word deleted;
  rewrite  the same content reworded by rule: the clauses (split at . , ; : ! ? before a space or the end) in reverse
           order, lower case, punctuation dropped but a final period, and filler words
           (the, a, an, very, really, just, so, that, then, well, quite) removed.
The kinds rotate with the seed (planting s gives repeat count number r the kind (r + s) mod 3), so 3
plantings hold every kind x repeat cell once. The 15 planted rows are 1.48% of the 1,015 training rows
(the 4 distinct items 0.39%; `--quick`, a smoke run, 6.98% of 215); the exact rates are printed and
stored per planting.

Per planting two models: `finetune` (the base fine-tuned on the contaminated set) and `scratch` (a
smaller GPT-2 with its own tokenizer, trained from scratch on it). Detectors, per benchmark item:
  stride, ekfac, trak, logra, graddot  `stride.contamination` (the leak score: the item's largest
        robust z-score over the training set; the same rule for every method);
  13-gram, 8-gram  the largest number of word n-grams (lower case) the item shares with one training
        example; a text shorter than n words counts as one gram (its whole text), so a short item
        matches only a training row of exactly its words. The items are short (the word counts are
        printed), so most fall under 13 words or just above; 8-gram is the looser extra row;
  bm25    the item's largest BM25 score over the training set (the `bm25` method, raw scores);
  min-k, min-k++  Min-K% prob and Min-K%++ (K = 20%) under the trained model (`stride.min_k`).
Reported: AUROC, AUPRC and recall@k (k = the number of planted items) of the planted items against
the clean ones, mean and 95% t-interval over plantings (with 4 positives per planting each is coarse);
and per planted item its AUROC against the clean items of its planting (the share of clean items it
outscores), pooled over plantings by kind and by repeat count (mean and t-interval over those items).
Writes OUT/results.json (OUT/results_TAG.json with `--tag _TAG`, which also names STRIDE's run folder
`stride_TAG`, so `--methods stride --stride '{"n_subsets": 2000}' --tag _k2000` reuses the models).

    python -m bench.contamination [--quick] [--methods stride 13-gram ...]
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
from stride.data import write_jsonl
from stride.lm_training import LMRecipe
from stride.min_k import min_k_scores

BENCHMARK_SOURCE = "startrek"
TRAIN_MIX = {"fortunes": 0.55, "zippy": 0.12, "murphy": 0.15, "pydoc": 0.12, BENCHMARK_SOURCE: 0.06}
KINDS = ("exact", "near", "rewrite")
REPEATS = (1, 2, 4, 8)
ATTRIBUTION = ("stride", "ekfac", "trak", "logra", "graddot")
NGRAMS = {"13-gram": 13, "8-gram": 8}
MEMBERSHIP = ("min-k", "min-k++")
METHODS = (*ATTRIBUTION, *NGRAMS, "bm25", *MEMBERSHIP)
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


# The README's figures: one design at 3 operator epochs (the package default when they were measured).
FULL = Sizes(n_train=1000, n_items=60, n_base=1500, plantings=3, stride={"designs": 1, "epochs": 3})
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


def plant(folder: Path, data: dict[str, Path], seed: int) -> tuple[Path, list[dict[str, Any]], dict[str, Any]]:
    """The contaminated training set of one planting, per benchmark item its label, kind and repeats,
    and the planting rates."""
    rng = np.random.default_rng(100 + seed)
    benchmark = [json.loads(line) for line in data["benchmark"].read_text().splitlines()]
    rows = [json.loads(line) for line in data["clean"].read_text().splitlines()]
    items: list[dict[str, Any]] = [{"leaked": 0, "kind": None, "repeats": 0} for _ in benchmark]
    cells = [(KINDS[(r + seed) % len(KINDS)], repeats) for r, repeats in enumerate(REPEATS)]
    for index, (kind, repeats) in zip(rng.choice(len(benchmark), size=len(cells), replace=False), cells):
        text = benchmark[index]["text"]
        planted = {"exact": text, "near": near_duplicate(text, rng), "rewrite": rewrite(text)}[kind]
        items[index] = {"leaked": 1, "kind": kind, "repeats": repeats, "planted_text": planted}
        for _ in range(repeats):
            rows.insert(int(rng.integers(len(rows) + 1)), {"text": planted, "source": f"planted-{kind}"})
    n_planted = sum(REPEATS)
    rates = {"train_rows": len(rows), "planted_rows": n_planted, "planted_row_rate": n_planted / len(rows),
             "planted_items": len(cells), "planted_item_rate": len(cells) / len(rows)}  # fmt: skip
    folder.mkdir(parents=True, exist_ok=True)
    write_json(folder / "labels.json", [item["leaked"] for item in items])
    write_json(folder / "planting.json", {"items": items, "rates": rates})
    return write_jsonl(rows, folder / "train.jsonl"), items, rates


def words(text: str) -> list[str]:
    """Lower-case words (letters, digits, apostrophes)."""
    return re.findall(r"[\w']+", text.lower())


def ngrams(text: str, n: int) -> set[tuple[str, ...]]:
    """Lower-case word n-grams; a shorter text is one gram."""
    tokens = words(text)
    if len(tokens) < n:
        return {tuple(tokens)}
    return {tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1)}


def ngram_scores(benchmark: list[str], train: list[str], n: int) -> np.ndarray:
    """Per item the largest number of word n-grams it shares with one training example."""
    train_grams = [ngrams(t, n) for t in train]
    return np.array([max(len(ngrams(item, n) & grams) for grams in train_grams) for item in benchmark], dtype=float)


def length_summary(texts: list[str]) -> dict[str, float]:
    """Word counts of texts: median, range and the shares under 8 and 13 words."""
    counts = np.array([len(words(t)) for t in texts])
    return {"median_words": float(np.median(counts)), "min_words": int(counts.min()), "max_words": int(counts.max()),
            "share_under_8": float((counts < 8).mean()), "share_under_13": float((counts < 13).mean())}  # fmt: skip


def detector_scores(method: str, args: argparse.Namespace, sizes: Sizes, folder: Path, model: Path, train: Path,
                    data: dict[str, Path]) -> np.ndarray:  # fmt: skip
    """One detector's score per benchmark item (higher = more likely leaked)."""
    if method in ATTRIBUTION:
        config = StrideConfig.from_dict(sizes.stride) if method == "stride" else StrideConfig()
        run = folder / "runs" / (method + args.tag if method == "stride" else method)
        result = contamination(model, train, data["benchmark"], run, method=method, config=config,
                               threads=args.threads, progress=False)  # fmt: skip
        return result.leak_scores
    if method == "bm25":
        run = attribute(model, train, data["benchmark"], folder / "runs" / "bm25", method="bm25", progress=False)
        return run.scores.numpy().max(axis=1)
    if method in MEMBERSHIP:
        return min_k_scores(model, data["benchmark"], k=MIN_K, context=RECIPES["finetune"].context)[method]
    texts = [json.loads(line)["text"] for line in data["benchmark"].read_text().splitlines()]
    return ngram_scores(texts, [json.loads(line)["text"] for line in train.read_text().splitlines()], NGRAMS[method])


def item_aurocs(scores: np.ndarray, items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per planted item the share of clean items it outscores (ties count half): its own AUROC."""
    clean = scores[[item["leaked"] == 0 for item in items]]
    return [{"index": i, "kind": item["kind"], "repeats": item["repeats"],
             "auroc": float((clean < scores[i]).mean() + 0.5 * (clean == scores[i]).mean())}
            for i, item in enumerate(items) if item["leaked"]]  # fmt: skip


def run_planting(args: argparse.Namespace, sizes: Sizes, data: dict[str, Path], base: Path, seed: int) -> list[dict]:
    """Both regimes of one planting: train, score with every detector, one row per regime x method."""
    folder = Path(args.out) / f"planting{seed}"
    train, items, rates = plant(folder, data, seed)
    print(f"[planting {seed}] {rates['planted_rows']} planted rows of {rates['train_rows']} "
          f"({100 * rates['planted_row_rate']:.2f}%), {rates['planted_items']} distinct items "
          f"({100 * rates['planted_item_rate']:.2f}%)", flush=True)  # fmt: skip
    labels = np.array([item["leaked"] for item in items])
    rows = []
    for regime in args.regimes:
        started = time.perf_counter()
        model = train_cached(train, folder / regime / "model", RECIPES[regime], base if regime == "finetune" else None)
        print(f"[planting {seed}] {regime} model: {time.perf_counter() - started:.0f} s", flush=True)
        for method in sorted(args.methods, key=lambda m: m == "stride"):  # STRIDE, the slowest, last
            started = time.perf_counter()
            scores = detector_scores(method, args, sizes, folder / regime, model, train, data)
            seconds = time.perf_counter() - started
            found = detection_metrics(scores, labels)
            rows.append({"planting": seed, "regime": regime, "method": method, "seconds": seconds, "metrics": found,
                         "items": item_aurocs(scores, items), "rates": rates, "scores": scores.tolist()})  # fmt: skip
            print(f"[planting {seed}] {regime} {method}: AUROC {found['auroc']:.3f}, AUPRC {found['auprc']:.3f}, "
                  f"recall@k {found['recall_at_n_leaked']:.3f} ({seconds:.1f} s)", flush=True)  # fmt: skip
    return rows


def summary(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per regime x method: each metric over plantings, and the planted items' own AUROC by kind and
    by repeat count (pooled over plantings), each as a mean and 95% t-interval."""
    out = []
    for regime in dict.fromkeys(r["regime"] for r in rows):
        for method in dict.fromkeys(r["method"] for r in rows):
            cells = [r for r in rows if r["regime"] == regime and r["method"] == method]
            key = {"regime": regime, "method": method, "seconds": float(np.mean([c["seconds"] for c in cells]))}
            for metric in ("auroc", "auprc", "recall_at_n_leaked"):
                values = [c["metrics"][metric] for c in cells]
                out.append({**key, "subset": "all", "over": "plantings", "metric": metric, **summarise(values)})
            planted = [item for c in cells for item in c["items"]]
            for field, groups in (("kind", KINDS), ("repeats", REPEATS)):
                for group in groups:
                    values = [item["auroc"] for item in planted if item[field] == group]
                    if values:
                        out.append({**key, "subset": f"{field}={group}", "over": "planted items", "metric": "auroc",
                                    **summarise(values)})  # fmt: skip
    return out


def print_table(table: list[dict[str, Any]]) -> None:
    """All planted items: AUROC / AUPRC / recall@k with CIs; then the items' own AUROC by kind and repeats."""

    def cell(regime: str, method: str, subset: str, metric: str) -> str:
        wanted = (regime, method, subset, metric)
        r = next((x for x in table if (x["regime"], x["method"], x["subset"], x["metric"]) == wanted), None)
        return "-" if r is None else f"{r['mean']:.2f} [{r['ci_low']:.2f}, {r['ci_high']:.2f}]"

    groups = [f"kind={k}" for k in KINDS] + [f"repeats={r}" for r in REPEATS]
    for regime in dict.fromkeys(r["regime"] for r in table):
        methods = list(dict.fromkeys(r["method"] for r in table if r["regime"] == regime))
        print(f"\n{regime}: all planted items (mean [95% t-CI] over plantings)")
        print(f"{'method':9}{'AUROC':>20}{'AUPRC':>20}{'recall@k':>20}{'s':>7}")
        for m in methods:
            seconds = next(x["seconds"] for x in table if x["regime"] == regime and x["method"] == m)
            metrics = ("auroc", "auprc", "recall_at_n_leaked")
            print(f"{m:9}" + "".join(f"{cell(regime, m, 'all', k):>20}" for k in metrics) + f"{seconds:7.1f}")
        print(f"{regime}: each planted item's AUROC against the clean items, by kind and by repeats "
              "(mean [95% t-CI] over the items, pooled over plantings)")  # fmt: skip
        print(f"{'method':9}" + "".join(f"{g:>20}" for g in groups))
        for m in methods:
            print(f"{m:9}" + "".join(f"{cell(regime, m, g, 'auroc'):>20}" for g in groups))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="runs/bench_contamination")
    parser.add_argument("--quick", action="store_true", help="smoke run: 200 training rows, 30 items, 2 plantings")
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    parser.add_argument("--regimes", nargs="+", default=list(RECIPES), choices=list(RECIPES))
    parser.add_argument("--plantings", type=int, help="plantings (seeds; default 3, --quick 2)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--stride", type=json.loads, help='STRIDE settings as JSON (default {"designs": 1, "epochs": 3})'
    )
    parser.add_argument("--tag", default="", help="suffix of results.json and of STRIDE's run folder")
    args = parser.parse_args()
    if args.quick:
        args.out += "_quick"
    sizes = QUICK if args.quick else FULL
    sizes = dataclasses.replace(
        sizes, plantings=args.plantings or sizes.plantings, stride=sizes.stride if args.stride is None else args.stride
    )
    torch.set_num_threads(args.threads)
    config = {**vars(args), "sizes": dataclasses.asdict(sizes), "train_mix": TRAIN_MIX, "kinds": KINDS,
              "repeats": REPEATS, "ngrams": NGRAMS, "min_k": MIN_K, "base_recipe": dataclasses.asdict(BASE_RECIPE),
              "recipes": {k: dataclasses.asdict(v) for k, v in RECIPES.items()}}  # fmt: skip
    print("configuration:", json.dumps(config, default=str), flush=True)
    started = time.perf_counter()
    root = Path(args.out)
    data = build_data(root / "data", sizes)
    lengths = {name: length_summary([json.loads(line)["text"] for line in data[name].read_text().splitlines()])
               for name in ("benchmark", "clean")}  # fmt: skip
    print("word counts:", json.dumps(lengths), flush=True)
    base = train_cached(data["base"], root / "base", BASE_RECIPE) if "finetune" in args.regimes else root / "base"
    rows: list[dict[str, Any]] = []
    for seed in range(sizes.plantings):
        rows += run_planting(args, sizes, data, base, seed)
        table = summary(rows)
        rates = {r["planting"]: r["rates"] for r in rows}
        wall = time.perf_counter() - started
        write_json(root / f"results{args.tag}.json", {"configuration": config, "complete": seed + 1 == sizes.plantings,
                                           "word_counts": lengths, "planting_rates": rates, "summary": table,
                                           "rows": rows, "threads": torch.get_num_threads(),
                                           "wall_seconds": wall})  # fmt: skip
    print_table(table)
    row_rates = [r["planted_row_rate"] for r in rates.values()]
    print(f"\nplanted rows: {100 * min(row_rates):.2f}-{100 * max(row_rates):.2f}% of the training rows")
    print(f"benchmark wall time: {wall:.0f} s ({torch.get_num_threads()} threads)")
    print(f"wrote {root / f'results{args.tag}.json'} (after every planting)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
