"""Data selection benchmark: which pool examples help a target most, judged by retraining on them.

Data (seeded, disjoint splits; `build_data`):
  pool    a mix of sources: the fortune files `fortunes`, `zippy` and the target source `murphy`,
          and paragraphs of Python's own documentation (`pydoc_data.topics`, shipped with CPython).
          Default 600 examples, 8% of them from the target source.
  target  examples of the target source that are not in the pool: the queries of every
          attribution run (default 40).
  eval    further held-out examples of the target source (default 150), never attributed: the
          target loss is measured on them, so the selections are not judged on the examples they
          were chosen for.
  base    a generic mix of the non-target sources, disjoint from the pool (default 2,000): the
          pre-training data of the base model.

Attribution: the base GPT-2 (0.54M parameters, as bench/lds.py) is fine-tuned on the whole pool and
every method attributes the target to the pool with it (run folders cached under OUT/runs/). Then
`stride.selection.select` (the code behind `stride select`) takes each method's top 5/10/20% of
the pool (aggregate "mean" over the target; `--aggregate round-robin` or `max` instead). `random`
draws uniformly; `oracle` takes the pool's target-source examples, then random ones to fill the
budget (both drawn again per seed).

Evaluation, per selection and seed (3 seeds): fine-tune the base on the selection (`finetune`) and
train a smaller GPT-2 from scratch on it (`scratch`, the base's tokenizer, so that losses are
comparable across selections), then the mean per-example loss on `eval`. Reported: mean and a
95% t-interval over seeds (seeds change data order, the scratch initialisation and the random
draws). Reference rows: the whole pool, and the base model untouched (finetune only).

Writes OUT/results.json and OUT/results.png (target loss vs budget, one panel per regime).

    python -m bench.selection [--quick] [--methods stride bm25 ...] [--aggregate mean]
"""

from __future__ import annotations

import argparse
import copy
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
from scipy import stats

from bench.lds import FINETUNE_MODEL, SCRATCH_MODEL, cached_model_matches
from stride.api import attribute
from stride.config import StrideConfig
from stride.core.jsonio import write_json
from stride.corpus import read_fortunes
from stride.data import TokenizedData, load_data, write_jsonl
from stride.lm_training import LMRecipe, example_losses, new_causal_lm, train_causal_lm, train_lm
from stride.models import load_causal_lm
from stride.selection import select

TARGET_SOURCE = "murphy"
POOL_MIX = {"fortunes": 0.50, "zippy": 0.17, "pydoc": 0.25, TARGET_SOURCE: 0.08}
ATTRIBUTION_METHODS = ("stride", "ekfac", "trak", "logra", "graddot", "bm25", "tfidf", "repsim")
METHODS = (*ATTRIBUTION_METHODS, "random", "oracle")
CHEAP = ("bm25", "tfidf", "repsim", "random")
BUDGETS = (0.05, 0.10, 0.20)
REGIMES = ("finetune", "scratch")

BASE_RECIPE = LMRecipe(**FINETUNE_MODEL, epochs=3, learning_rate=3e-3, batch_size=32, seed=0)
POOL_RECIPE = LMRecipe(**FINETUNE_MODEL, epochs=2, learning_rate=1e-3, batch_size=32, warmup_fraction=0.0, seed=0)
EVAL_RECIPES = {
    "finetune": LMRecipe(**FINETUNE_MODEL, epochs=3, learning_rate=1e-3, batch_size=16, warmup_fraction=0.0),
    "scratch": LMRecipe(**{**SCRATCH_MODEL, "vocab_size": 1024}, epochs=6, learning_rate=3e-3, batch_size=16),
}


@dataclasses.dataclass(frozen=True)
class Sizes:
    """Split sizes and STRIDE's settings of one run."""

    n_pool: int
    n_target: int
    n_eval: int
    n_base: int
    stride: dict[str, Any]


# The README's figures: one design at 3 operator epochs (the package default when they were measured).
FULL = Sizes(n_pool=600, n_target=40, n_eval=150, n_base=2000, stride={"designs": 1, "epochs": 3})
QUICK = Sizes(n_pool=200, n_target=16, n_eval=50, n_base=400, stride={"designs": 1, "n_subsets": 200, "epochs": 1})


def pydoc_paragraphs(max_chars: int = 300) -> list[str]:
    """Distinct whitespace-normalised paragraphs of Python's documentation topics (40..max_chars long)."""
    import pydoc_data.topics

    seen: dict[str, None] = {}
    for _, text in sorted(pydoc_data.topics.topics.items()):
        for paragraph in re.split(r"\n\s*\n", text):
            line = " ".join(paragraph.split())
            if 40 <= len(line) <= max_chars and "***" not in line:
                seen.setdefault(line)
    return list(seen)


def source_texts(source: str) -> list[str]:
    """The entries of one source: a fortune file or `pydoc`."""
    return pydoc_paragraphs() if source == "pydoc" else read_fortunes(source)


def build_data(folder: Path, sizes: Sizes, seed: int = 0) -> dict[str, Path]:
    """Disjoint seeded splits `pool`, `target`, `eval` and `base` (JSONL with a `source` field)."""
    rng = np.random.default_rng(seed)
    splits: dict[str, list[dict[str, str]]] = {"pool": [], "target": [], "eval": [], "base": []}
    other_weight = sum(w for s, w in POOL_MIX.items() if s != TARGET_SOURCE)
    for source, weight in POOL_MIX.items():
        entries = source_texts(source)
        order = rng.permutation(len(entries))
        wanted = {"pool": round(weight * sizes.n_pool)}
        if source == TARGET_SOURCE:
            wanted |= {"target": sizes.n_target, "eval": sizes.n_eval}
        else:
            wanted["base"] = round(weight / other_weight * sizes.n_base)
        start = 0
        for name, count in wanted.items():
            chosen = order[start : start + count]
            if len(chosen) < count:
                raise SystemExit(f"source {source!r} has {len(entries)} entries, too few for the splits {wanted}")
            splits[name] += [{"text": entries[i], "source": source} for i in chosen]
            start += count
    return {
        name: write_jsonl([rows[i] for i in rng.permutation(len(rows))], folder / f"{name}.jsonl")
        for name, rows in splits.items()
    }


def train_cached(train: Path, folder: Path, recipe: LMRecipe, base: Path | None = None) -> Path:
    """`train_lm` unless `folder` already holds this very model."""
    if not cached_model_matches(folder, recipe, base):
        train_lm(train, folder, recipe, base_dir=base, progress=False)
    return folder


def attribution_selections(
    args: argparse.Namespace, sizes: Sizes, data: dict[str, Path], model: Path, budgets: dict[float, int]
) -> tuple[dict[str, dict[float, list[int]]], dict[str, float]]:
    """Per attribution method and budget the selected pool indices (best first), and each run's seconds."""
    chosen: dict[str, dict[float, list[int]]] = {}
    seconds: dict[str, float] = {}
    ordered = sorted((m for m in args.methods if m in ATTRIBUTION_METHODS), key=lambda m: m == "stride")
    for method in ordered:  # STRIDE, the slowest, last
        run = Path(args.out) / "runs" / method
        config = StrideConfig.from_dict(sizes.stride) if method == "stride" else StrideConfig()
        started = time.perf_counter()
        result = attribute(model, data["pool"], data["target"], run, method=method, config=config,
                           threads=args.threads, progress=False)  # fmt: skip
        seconds[method] = time.perf_counter() - started
        print(f"[attribution] {method}: {seconds[method]:.1f} s ({result.info['timings_seconds'].get('total')} s "
              f"recorded by the run)", flush=True)  # fmt: skip
        chosen[method] = {}
        for fraction, n in budgets.items():
            out = Path(args.out) / "selections" / f"{method}_{args.aggregate}_{fraction:g}"
            picked = select(data["pool"], out, n, aggregate=args.aggregate, run_dir=run, progress=False)
            chosen[method][fraction] = picked.indices
    return chosen, seconds


def draw_selection(method: str, n: int, sources: list[str], seed: int) -> list[int]:
    """`random`: n pool indices uniformly; `oracle`: the target source's examples first, then random."""
    rng = np.random.default_rng(1000 + seed)
    if method == "random":
        return rng.permutation(len(sources))[:n].tolist()
    own = [i for i, s in enumerate(sources) if s == TARGET_SOURCE]
    rest = [i for i, s in enumerate(sources) if s != TARGET_SOURCE]
    return (rng.permutation(own).tolist() + rng.permutation(rest).tolist())[:n]


def target_loss(
    regime: str, indices: list[int] | None, seed: int, base: torch.nn.Module, tokenizer: Any,
    pool: TokenizedData, evaluation: TokenizedData,
) -> float:  # fmt: skip
    """Mean eval loss after training on pool[indices] (None: no training, the base as it is)."""
    if regime == "finetune":
        model = copy.deepcopy(base)
    else:
        model = new_causal_lm(dataclasses.replace(EVAL_RECIPES[regime], seed=seed), tokenizer)
    if indices is not None:
        train_causal_lm(model, pool, dataclasses.replace(EVAL_RECIPES[regime], seed=seed), indices, progress=False)
    model.eval()
    return float(example_losses(model, evaluation).mean())


def summarise(values: list[float]) -> dict[str, Any]:
    """Mean and a 95% t-interval over seeds."""
    array = np.asarray(values, dtype=np.float64)
    mean = float(array.mean())
    if len(array) < 2:
        return {"mean": mean, "ci_low": mean, "ci_high": mean, "values": values}
    half = float(stats.t.ppf(0.975, len(array) - 1) * array.std(ddof=1) / np.sqrt(len(array)))
    return {"mean": mean, "ci_low": mean - half, "ci_high": mean + half, "values": values}


def evaluate(
    args: argparse.Namespace, data: dict[str, Path], base_dir: Path,
    chosen: dict[str, dict[float, list[int]]], budgets: dict[float, int],
) -> list[dict[str, Any]]:  # fmt: skip
    """Train on every selection in both regimes and seeds; one row per method x budget x regime."""
    base, tokenizer = load_causal_lm(base_dir)
    context = EVAL_RECIPES["finetune"].context
    pool = load_data(data["pool"], tokenizer, context, name="pool")
    evaluation = load_data(data["eval"], tokenizer, context, name="eval")
    sources = [row["source"] for row in pool.examples]
    seeds = range(args.seeds)
    rows = []
    for regime in args.regimes:
        started = time.perf_counter()
        references = {"full pool": list(range(len(pool)))} | (
            {"base (untrained)": None} if regime == "finetune" else {}
        )
        for name, indices in references.items():
            losses = [target_loss(regime, indices, s, base, tokenizer, pool, evaluation) for s in seeds]
            rows.append({"regime": regime, "method": name, "budget": None, "n": None, **summarise(losses)})
        for method in args.methods:
            for fraction, n in budgets.items():
                losses, target_share = [], []
                for seed in seeds:
                    picked = chosen[method][fraction] if method in chosen else draw_selection(method, n, sources, seed)
                    target_share.append(float(np.mean([sources[i] == TARGET_SOURCE for i in picked])))
                    losses.append(target_loss(regime, picked, seed, base, tokenizer, pool, evaluation))
                rows.append({"regime": regime, "method": method, "budget": fraction, "n": n,
                             "target_source_share": float(np.mean(target_share)), **summarise(losses)})  # fmt: skip
            print(f"[{regime}] {method}: " + ", ".join(
                f"{r['budget']:.0%} {r['mean']:.3f}" for r in rows if r["regime"] == regime and r["method"] == method
            ), flush=True)  # fmt: skip
        print(f"[{regime}] evaluation: {time.perf_counter() - started:.0f} s", flush=True)
    return rows


def print_table(rows: list[dict[str, Any]], budgets: tuple[float, ...]) -> None:
    """One line per regime x method: loss [95% CI] per budget, and the share of target-source picks."""
    header = "".join(f"{f'{b:.0%} loss [95% CI]':>27}{'own%':>6}" for b in budgets)
    for regime in dict.fromkeys(r["regime"] for r in rows):
        print(f"\n{regime}\n{'method':17}{header}")
        for method in dict.fromkeys(r["method"] for r in rows if r["regime"] == regime):
            cells = [r for r in rows if r["regime"] == regime and r["method"] == method]
            if cells[0]["budget"] is None:
                r = cells[0]
                print(f"{method:17}{r['mean']:9.3f} [{r['ci_low']:.3f}, {r['ci_high']:.3f}]   (reference)")
                continue
            print(f"{method:17}" + "".join(
                f"{r['mean']:9.3f} [{r['ci_low']:.3f}, {r['ci_high']:.3f}]{'':2}{r['target_source_share']:6.0%}"
                for r in cells
            ))  # fmt: skip


def verdicts(rows: list[dict[str, Any]]) -> list[str]:
    """Per regime and budget: the best method, STRIDE's rank, and whether STRIDE beats the cheap baselines."""
    lines = []
    for regime in dict.fromkeys(r["regime"] for r in rows):
        for budget in sorted({r["budget"] for r in rows if r["regime"] == regime and r["budget"] is not None}):
            cell = sorted((r for r in rows if r["regime"] == regime and r["budget"] == budget),
                          key=lambda r: r["mean"])  # fmt: skip
            names = [r["method"] for r in cell]
            line = f"{regime} {budget:.0%}: best {names[0]} ({cell[0]['mean']:.3f})"
            if "stride" in names:
                mine = cell[names.index("stride")]
                line += f"; stride {mine['mean']:.3f}, rank {names.index('stride') + 1} of {len(names)}"
                cheap = [r for r in cell if r["method"] in CHEAP]
                if cheap:
                    best = cheap[0]
                    if mine["mean"] <= best["mean"]:
                        separated = mine["ci_high"] < best["ci_low"]
                        line += (f"; beats the cheap baselines (best {best['method']} {best['mean']:.3f}"
                                 f"{', intervals apart' if separated else ', intervals overlap'})")  # fmt: skip
                    else:
                        line += f"; STRIDE DOES NOT BEAT {best['method']} ({best['mean']:.3f})"
            lines.append(line)
    return lines


def plot(rows: list[dict[str, Any]], path: Path) -> None:
    """Target loss vs budget per method (95% CI bars), one panel per regime, references dashed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    regimes = list(dict.fromkeys(r["regime"] for r in rows))
    figure, axes = plt.subplots(1, len(regimes), figsize=(6.5 * len(regimes), 5.2), squeeze=False)
    methods = list(dict.fromkeys(r["method"] for r in rows if r["budget"] is not None))
    colours = plt.get_cmap("tab10")
    markers = "osD^v<>pPX*h"
    for axis, regime in zip(axes[0], regimes):
        for k, method in enumerate(methods):
            cells = [r for r in rows if r["regime"] == regime and r["method"] == method]
            x = np.array([100 * r["budget"] for r in cells]) + (k - len(methods) / 2) * 0.12
            y = np.array([r["mean"] for r in cells])
            error = np.array([[r["mean"] - r["ci_low"] for r in cells], [r["ci_high"] - r["mean"] for r in cells]])
            axis.errorbar(x, y, yerr=error, marker=markers[k % len(markers)], color=colours(k % 10), capsize=3,
                          linewidth=2.2 if method == "stride" else 1.2, label=method)  # fmt: skip
        for k, reference in enumerate(r for r in rows if r["regime"] == regime and r["budget"] is None):
            axis.axhline(reference["mean"], color="grey", linestyle=("--", ":")[k % 2], linewidth=1,
                         label=f"{reference['method']} ({reference['mean']:.2f})")  # fmt: skip
        axis.set_xticks([100 * b for b in sorted({r["budget"] for r in rows if r["budget"] is not None})])
        axis.set_xlabel("budget (% of the pool)")
        axis.set_ylabel(f"mean loss on held-out {TARGET_SOURCE} examples (nats/token)")
        axis.set_title(f"{regime}: lower is better (95% t-CI over seeds)")
        axis.grid(alpha=0.3)
        axis.legend(fontsize=8, ncol=2)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="runs/bench_selection")
    parser.add_argument(
        "--quick", action="store_true", help="smoke run: pool 200, 16 targets, 50 eval, light STRIDE, 2 seeds"
    )
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    parser.add_argument("--regimes", nargs="+", default=list(REGIMES), choices=REGIMES)
    parser.add_argument("--aggregate", default="mean", choices=["mean", "max", "round-robin"])
    parser.add_argument("--seeds", type=int, help="training seeds per selection (default 3; --quick: 2)")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    if args.quick:
        args.out += "_quick"
    args.seeds = args.seeds or (2 if args.quick else 3)
    torch.set_num_threads(args.threads)
    sizes = QUICK if args.quick else FULL
    recipes = {"base": BASE_RECIPE, "pool": POOL_RECIPE, **EVAL_RECIPES}
    config = {**vars(args), "sizes": dataclasses.asdict(sizes), "pool_mix": POOL_MIX, "target_source": TARGET_SOURCE,
              "budgets": BUDGETS, "recipes": {k: dataclasses.asdict(v) for k, v in recipes.items()}}  # fmt: skip
    print("configuration:", json.dumps(config, default=str), flush=True)
    started = time.perf_counter()
    root = Path(args.out)
    data = build_data(root / "data", sizes)
    base = train_cached(data["base"], root / "base", BASE_RECIPE)
    model = train_cached(data["pool"], root / "model", POOL_RECIPE, base)
    print(f"models: {time.perf_counter() - started:.0f} s", flush=True)
    budgets = {fraction: round(fraction * sizes.n_pool) for fraction in BUDGETS}
    chosen, seconds = attribution_selections(args, sizes, data, model, budgets)
    rows = evaluate(args, data, base, chosen, budgets)
    print_table(rows, BUDGETS)
    print("\nwhere STRIDE stands (rank among all methods, oracle included; cheap = " + ", ".join(CHEAP) + "):")
    lines = verdicts(rows)
    print("\n".join(lines))
    wall = time.perf_counter() - started
    print(f"benchmark wall time: {wall:.0f} s")
    plot(rows, root / "results.png")
    write_json(root / "results.json", {"configuration": config, "rows": rows, "verdicts": lines,
                                       "attribution_seconds": seconds, "selections": chosen,
                                       "threads": torch.get_num_threads(), "wall_seconds": wall})  # fmt: skip
    print(f"wrote {root / 'results.json'} and {root / 'results.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
