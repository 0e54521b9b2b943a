"""The benchmark matrix (issue 13): every method's LDS on cells of (regime, corpus, architecture).

Regimes (ground truth: `stride groundtruth` retraining on random halves, alpha = 0.5):
  gentle      fine-tune a base model (pre-trained on a disjoint part of the same corpus) at a low
              learning rate for one epoch: close to linear. Retrains fine-tune the base.
  aggressive  fine-tune the same kind of base at a high learning rate for several epochs.
  sft         fine-tune the base on prompt/completion pairs, the loss on the completion only.
  scratch     train a smaller model from scratch; retrains re-initialise it (more seeds: the
              seed noise is larger, see the ceiling).
  classifier  an MLP on a scikit-learn dataset, through bench/classifiers.py (its own retraining).

Sizes (`FULL`; `--quick`: `QUICK`): 600 training examples, 60 queries, a base pre-trained on up to
2,000 other entries of the corpus; 2-layer models of 0.32-0.39M parameters (d = 96, vocab 1024;
scratch: d = 64, vocab 512); ground truth 32 halves x 2 seeds (scratch: x 4 seeds). The classifier
cell (digits, split seed 2: bench/classifiers.py chose its settings on seed 1) uses 64 halves x 3
seeds. TRAK gets an ensemble of --trak-ensemble models (other seeds), as in bench/lds.py.

Corpora: bench/matrix_corpora.py (prose, documentation, code, dialogue, definitions; and a
computing glossary, FOLDOC, for half C). Each cell belongs to half "A" (where STRIDE's defaults may
be chosen) or half "B" (confirmation only): compare a variant with `--method-settings FILE --tag
_NAME --cells` of half A, then confirm it on half B. Never choose a default on one cell. Half "C"
(`--halves C`) is held out: cells added after the defaults and the README's advice were chosen, on
a corpus and pairs no other cell has, run only to test those choices, never to make one. With a
tag, only the methods that FILE sets run into tagged folders (`stride_NAME`); the others reuse their
default-settings run folders, so the variant meets the same baselines in OUT/matrix_NAME.json.

Everything is cached under --out and reused on a rerun: data, models (checked with
`cached_model_matches`), TRAK's ensemble, ground truth, and the run folder of each method (its
finished stages; `--recompute` replaces them). OUT/matrix{TAG}.json (merged with the cells of
earlier runs) and OUT/matrix{TAG}.md are written after every cell.

`--vocabulary N` (another --out) gives every language model one byte-level BPE tokenizer of N tokens
trained on the five corpora of halves A and B, e.g. GPT-2's 50,257: the model's vocabulary then has a
real model's size, most of it unused by any one cell (STRIDE's `auto` form takes hashed operators above 16,384).
`--depth N` (another --out) gives every language model N decoder blocks instead of 2: on 2-block models
STRIDE's default block (about 0.6 of the depth) is the last one, on deeper ones it is not.
`--width N` (another --out) gives every language model a hidden size of N instead of 96 (from scratch 64).

    python -m bench.matrix [--quick] [--halves A B C] [--cells NAME ...] [--methods stride ekfac ...]
                           [--tag _T] [--vocabulary N] [--depth N] [--width N] [--seed S]

`--seed S` reruns the methods with another seed (STRIDE: other designs) into run folders and a matrix file
suffixed `_seedS`, against the same models and ground truth.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import torch
from safetensors.torch import load_file

from bench.lds import cached_model_matches
from bench.matrix_corpora import build_splits, shared_tokenizer
from stride.api import attribute, groundtruth, lds
from stride.config import StrideConfig, partner_settings, read_mapping_file
from stride.core.jsonio import write_json
from stride.errors import StrideError
from stride.lm_training import LMRecipe, train_lm
from stride.registry import available_methods


@dataclasses.dataclass(frozen=True)
class Cell:
    """One benchmark: regime, corpus (or scikit-learn dataset), architecture and half."""

    regime: str
    corpus: str
    architecture: str
    half: str

    @property
    def name(self) -> str:
        return f"{self.regime}_{self.corpus}_{self.architecture}"


@dataclasses.dataclass(frozen=True)
class Sizes:
    """Data and ground-truth sizes of a run (full or --quick)."""

    n_train: int
    n_queries: int
    n_pretrain: int
    subsets: int
    seeds: int
    scratch_seeds: int


# Both fortune cells are in half A: bench/lds.py, on which the defaults so far were chosen, uses that corpus.
# Half B holds no data the defaults were chosen on, except that its classifier cell is another split of the
# digits data on which bench/classifiers.py chose the classifier settings (split seed 1; the cells use 2).
# The classifier cell of half A (breast_cancer, tabular) is where classifier settings may be chosen now;
# wine (tabular, half B) was added after those choices, to confirm them on data never looked at.
CELLS = [
    Cell("gentle", "fortune", "llama", "A"),
    Cell("gentle", "pydoc", "qwen2", "B"),
    Cell("gentle", "code", "gpt_neox", "B"),
    Cell("aggressive", "code", "gpt2", "A"),
    Cell("aggressive", "fortune", "qwen2", "A"),
    Cell("aggressive", "dialogue", "llama", "B"),
    Cell("sft", "dialogue", "qwen2", "A"),
    Cell("sft", "definitions", "gpt2", "B"),
    Cell("scratch", "pydoc", "gpt2", "A"),
    Cell("scratch", "definitions", "llama", "B"),
    Cell("classifier", "digits", "mlp", "B"),
    Cell("classifier", "breast_cancer", "mlp", "A"),
    Cell("classifier", "wine", "mlp", "B"),
    # Half C: held out. Added on 2026-11-30, after every default and every piece of README advice had been
    # chosen on A and B; a new corpus (FOLDOC) and regime x corpus x architecture pairs no other cell has.
    # Nothing may be chosen on it: it only tests what A and B chose. Run it with --halves C.
    Cell("gentle", "foldoc", "gpt2", "C"),
    Cell("gentle", "dialogue", "gpt_neox", "C"),
    Cell("aggressive", "foldoc", "llama", "C"),
    Cell("sft", "foldoc", "gpt_neox", "C"),
    Cell("scratch", "foldoc", "qwen2", "C"),
    Cell("classifier", "iris", "mlp", "C"),
]
HALVES = ("A", "B", "C")
CELLS_BY_NAME = {cell.name: cell for cell in CELLS}
QUICK_CELLS = ["gentle_fortune_llama", "sft_dialogue_qwen2", "classifier_digits_mlp"]
FULL = Sizes(n_train=600, n_queries=60, n_pretrain=2000, subsets=32, seeds=2, scratch_seeds=4)
QUICK = Sizes(n_train=150, n_queries=16, n_pretrain=400, subsets=10, seeds=2, scratch_seeds=2)

# 0.32-0.39M parameters (the fine-tuned cells), 0.1-0.2M (scratch: smaller, as in bench/lds.py)
MODEL = dict(n_layers=2, hidden_size=96, n_heads=4, vocab_size=1024, context=128)
SCRATCH_MODEL = dict(n_layers=2, hidden_size=64, n_heads=4, vocab_size=512, context=128)
BASE = dict(epochs=3, learning_rate=3e-3, batch_size=32, seed=0)
RECIPES = {  # the attributed model's (and every retrain's) optimisation
    "gentle": dict(epochs=1, learning_rate=3e-4, batch_size=32, warmup_fraction=0.0, seed=0),
    "aggressive": dict(epochs=6, learning_rate=3e-3, batch_size=32, warmup_fraction=0.1, seed=0),
    "sft": dict(epochs=3, learning_rate=1e-3, batch_size=32, warmup_fraction=0.0, seed=0),
    "scratch": dict(epochs=5, learning_rate=3e-3, batch_size=32, seed=0),
}
DEFAULT_METHODS = ("stride", "ekfac", "logra", "graddot", "trak", "tfidf", "bm25", "astra")  # those available
BASELINE_NAMES = ("ekfac", "logra", "graddot", "trak", "tfidf", "bm25", "gradcos", "repsim", "astra")


def recipes(cell: Cell, vocabulary: int | None = None, depth: int | None = None,
            width: int | None = None) -> tuple[LMRecipe, LMRecipe | None]:  # fmt: skip
    """The attributed model's recipe and its base's (None: trained from scratch); `vocabulary`
    replaces the vocabulary size (the shared tokenizer's, see `--vocabulary`), `depth` the number of
    decoder blocks (see `--depth`), `width` the hidden size (see `--width`)."""
    shape = {**(SCRATCH_MODEL if cell.regime == "scratch" else MODEL), "architecture": cell.architecture}
    if vocabulary is not None:
        shape["vocab_size"] = vocabulary
    if depth is not None:
        shape["n_layers"] = depth
    if width is not None:
        shape["hidden_size"] = width
    if cell.regime == "scratch":
        return LMRecipe(**shape, **RECIPES["scratch"]), None
    return LMRecipe(**shape, **RECIPES[cell.regime]), LMRecipe(**shape, **BASE)


def groundtruth_folder(cell_root: Path, n_subsets: int, n_seeds: int) -> Path:
    """Where a language-model cell keeps its ground truth of `n_subsets` halves x `n_seeds` seeds."""
    return cell_root / f"groundtruth_m{n_subsets}_s{n_seeds}"


def train_cached(train: Path, folder: Path, recipe: LMRecipe, base: Path | None = None,
                 tokenizer: Path | None = None) -> Path:  # fmt: skip
    """`train_lm` unless `folder` already holds this very model; a model trained from scratch takes
    `tokenizer`'s tokenizer when given (else one trained on `train`)."""
    if not cached_model_matches(folder, recipe, base):
        train_lm(train, folder, recipe, base_dir=base, progress=False, tokenizer_dir=tokenizer)
    return folder


def seed_suffix(args: argparse.Namespace) -> str:
    """`_seedS` for a --seed S other than 0 (its run folders and matrix file), else nothing."""
    return f"_seed{args.seed}" if args.seed else ""


def run_name(method: str, args: argparse.Namespace) -> str:
    """A method's run folder: tagged when --method-settings sets it, else the default-settings one (reused);
    then `seed_suffix`."""
    name = f"{method}{args.tag}" if method in args.method_settings else method
    return name + seed_suffix(args)


def run_method(method: str, model: Path, data: dict[str, Path], root: Path, truth: Path,
               args: argparse.Namespace, default_settings: dict[str, Any]) -> dict[str, Any]:  # fmt: skip
    """One method's run folder (finished stages reused) and its LDS against the cell's ground truth."""
    settings = args.method_settings.get(method, default_settings.get(method, {}))
    config = StrideConfig.from_dict(settings) if method == "stride" else StrideConfig()
    if method == "stride":  # STRIDE's other settings are its partner's, when it has one
        settings = partner_settings(config.partner, args.method_settings)
    out = root / "runs" / run_name(method, args)
    try:
        result = attribute(model, data["train"], data["queries"], out, method=method, config=config,
                           seed=args.seed, threads=args.threads, method_settings=settings, overwrite=args.recompute,
                           progress=False)  # fmt: skip
    except StrideError as exc:
        raise SystemExit(f"{method} in {root}: {exc}\n(bench.matrix: --recompute replaces a run folder; "
                         "--tag _NAME writes other settings to other folders)") from exc  # fmt: skip
    report = lds(out, truth, out / "lds.json")
    seconds = sum(v for k, v in result.info["timings_seconds"].items() if k != "total")
    return {"lds": report.mean, "ci_low": report.ci_low, "ci_high": report.ci_high, "ceiling": report.ceiling,
            "ceiling_ci": [report.ceiling_ci_low, report.ceiling_ci_high], "seconds": seconds,
            "settings": result.info["settings"]}  # fmt: skip


def run_lm_cell(cell: Cell, sizes: Sizes, args: argparse.Namespace, methods: list[str]) -> dict[str, Any]:
    """Data, models, ground truth and every method of one language-model cell."""
    root = Path(args.out) / cell.name
    recipe, base_recipe = recipes(cell, args.vocabulary, args.depth, args.width)
    tokenizer = None
    if args.vocabulary:
        tokenizer = shared_tokenizer(Path(args.out) / f"tokenizer_{args.vocabulary}", args.vocabulary)
    split_sizes = {"train": sizes.n_train, "queries": sizes.n_queries}
    if base_recipe is not None:
        split_sizes["pretrain"] = sizes.n_pretrain
    data = build_splits(cell.corpus, "sft" if cell.regime == "sft" else "text", root / "data", split_sizes)
    started = time.perf_counter()
    base = train_cached(data["pretrain"], root / "base", base_recipe, tokenizer=tokenizer) if base_recipe else None
    model = train_cached(data["train"], root / "model", recipe, base, tokenizer=tokenizer)
    seeds = sizes.scratch_seeds if cell.regime == "scratch" else sizes.seeds
    truth = groundtruth_folder(root, sizes.subsets, seeds)
    summary = groundtruth(model, data["train"], data["queries"], truth, regime="finetune" if base else "scratch",
                          base_dir=base, fraction=0.5, n_subsets=sizes.subsets, n_seeds=seeds,
                          recipe=dataclasses.asdict(recipe), workers=args.workers, progress=False)  # fmt: skip
    seconds = time.perf_counter() - started
    print(f"[{cell.name}] models + ground truth ({sizes.subsets} halves x {seeds} seeds): {seconds:.0f} s this run, "
          f"ceiling {summary.get('ceiling_single_seed')}", flush=True)  # fmt: skip
    default_settings: dict[str, Any] = {}
    if "trak" in methods:
        others = [dataclasses.replace(recipe, seed=seed) for seed in range(1, args.trak_ensemble)]
        ensemble = [train_cached(data["train"], root / f"model_seed{r.seed}", r, base, tokenizer) for r in others]
        default_settings["trak"] = {"checkpoints": [str(folder) for folder in ensemble]}
    rows = {}
    for method in methods:
        rows[method] = run_method(method, model, data, root, truth, args, default_settings)
        print(f"[{cell.name}] {method}: LDS {rows[method]['lds']:.3f} [{rows[method]['ci_low']:.3f}, "
              f"{rows[method]['ci_high']:.3f}] in {rows[method]['seconds']:.1f} s", flush=True)  # fmt: skip
    parameters = json.loads((model / "recipe.json").read_text())["parameters"]
    return {"recipe": dataclasses.asdict(recipe), "base_recipe": base_recipe and dataclasses.asdict(base_recipe),
            "parameters": parameters, "n_subsets": sizes.subsets, "n_seeds": seeds, "rows": rows}  # fmt: skip


def run_classifier_cell(cell: Cell, sizes: Sizes, args: argparse.Namespace, methods: list[str]) -> dict[str, Any]:
    """bench/classifiers.py's MLP on a scikit-learn dataset; split seed 2 (its defaults were chosen on seed 1)."""
    from bench import classifiers
    from stride.core.arrays import save_arrays
    from stride.evaluation.lds import evaluate_lds

    recipe = classifiers.RECIPES[cell.corpus]
    data = classifiers.load(cell.corpus, recipe, seed=2)
    root = Path(args.out) / cell.name
    seeds = sizes.seeds + 1  # full-batch MLPs retrain in a blink: one more seed than the LM cells
    truth = root / f"groundtruth_m{sizes.subsets * 2}_s{seeds}.safetensors"
    if not truth.is_file():
        truth.parent.mkdir(parents=True, exist_ok=True)
        subsets, losses = classifiers.groundtruth(data, recipe, sizes.subsets * 2, seeds, seed=2)
        save_arrays({"subsets": torch.as_tensor(subsets), "losses": torch.as_tensor(losses)}, truth)
    arrays = load_file(str(truth))
    subsets, losses = arrays["subsets"].numpy(), arrays["losses"].numpy()
    ensemble = classifiers.train_mlps(data["x"], data["y"], torch.arange(len(data["y"])).repeat(args.trak_ensemble, 1),
                                      list(range(args.trak_ensemble)), recipe)  # fmt: skip
    models = [classifiers.as_module(ensemble, m) for m in range(args.trak_ensemble)]
    rows = {}
    for method in [m for m in methods if m in classifiers.METHODS]:
        out = root / "runs" / f"{run_name(method, args)}.json"
        if out.is_file() and not args.recompute:
            rows[method] = json.loads(out.read_text())
            continue
        started = time.perf_counter()
        settings = args.method_settings.get(method)
        scores = classifiers.attribute_classifier(
            models[0], data["x"], data["y"], data["xq"], data["yq"], method=method,
            checkpoints=models[1:] if method == "trak" else [], seed=args.seed,
            config=settings if method == "stride" else None,
            method_settings=None if method == "stride" else settings,
        ).numpy()  # fmt: skip
        report = evaluate_lds(scores, subsets, losses, seed=0)
        rows[method] = {"lds": report.mean, "ci_low": report.ci_low, "ci_high": report.ci_high,
                        "ceiling": report.ceiling, "ceiling_ci": [report.ceiling_ci_low, report.ceiling_ci_high],
                        "seconds": time.perf_counter() - started, "settings": settings}  # fmt: skip
        out.parent.mkdir(parents=True, exist_ok=True)
        write_json(out, rows[method])
        print(f"[{cell.name}] {method}: LDS {report.mean:.3f} [{report.ci_low:.3f}, {report.ci_high:.3f}]", flush=True)
    return {"recipe": dataclasses.asdict(recipe), "n_subsets": sizes.subsets * 2, "n_seeds": seeds, "rows": rows}


def stride_vs_best(cell_result: dict[str, Any]) -> dict[str, float] | None:
    """STRIDE's LDS against the best baseline's in one cell (ratio and difference), None without both."""
    rows = cell_result["rows"]
    baselines = [row["lds"] for method, row in rows.items() if method in BASELINE_NAMES]
    if "stride" not in rows or not baselines:
        return None
    best = max(baselines)
    return {"best_baseline": best, "ratio": rows["stride"]["lds"] / best if best > 0 else float("nan"),
            "difference": rows["stride"]["lds"] - best}  # fmt: skip


def half_summary(cells: dict[str, dict[str, Any]]) -> dict[str, dict[str, float | int]]:
    """Per half: the mean ratio and mean difference of STRIDE's LDS to the best baseline's."""
    summary = {}
    for half in HALVES:
        versus = [v for c in cells.values() if c["half"] == half and (v := stride_vs_best(c)) is not None]
        if versus:
            summary[half] = {"cells": len(versus), "mean_ratio": float(np.nanmean([v["ratio"] for v in versus])),
                             "mean_difference": float(np.mean([v["difference"] for v in versus]))}  # fmt: skip
    return summary


def table_lines(cells: dict[str, dict[str, Any]], markdown: bool) -> list[str]:
    """Rows: methods and the ceiling; columns: cells; entries: LDS [95% CI]."""
    names = list(cells)
    seen = {m for c in cells.values() for m in c["rows"]}
    methods = [m for m in DEFAULT_METHODS if m in seen] + sorted(seen - set(DEFAULT_METHODS))

    def entry(row: dict[str, Any] | None) -> str:
        return "-" if row is None else f"{row['lds']:.3f} [{row['ci_low']:.2f}, {row['ci_high']:.2f}]"

    def ceiling(cell: dict[str, Any]) -> str:
        row = next(iter(cell["rows"].values()), None)
        if row is None or row["ceiling"] is None:
            return "-"
        low, high = row["ceiling_ci"]
        return f"{row['ceiling']:.3f} [{low:.2f}, {high:.2f}]"

    header = ["method", *(f"{n} ({cells[n]['half']})" for n in names)]
    body = [[m, *(entry(cells[n]["rows"].get(m)) for n in names)] for m in methods]
    body.append(["ceiling", *(ceiling(cells[n]) for n in names)])
    if markdown:
        return ["| " + " | ".join(row) + " |" for row in [header, ["---"] * len(header), *body]]
    width = max(22, *(len(h) for h in header[1:]))
    return ["".join([f"{row[0]:<10}", *(f"{v:>{width + 1}}" for v in row[1:])]) for row in [header, *body]]


def write_results(path: Path, cells: dict[str, dict[str, Any]], configuration: dict[str, Any]) -> dict[str, Any]:
    """Merge `cells` into matrix{TAG}.json, rewrite it and the markdown table beside it; the merged cells.

    A cell run again keeps the rows of methods this run did not name (same --out: same sizes)."""
    merged = json.loads(path.read_text())["cells"] if path.is_file() else {}
    for name, cell in cells.items():
        merged[name] = {**cell, "rows": {**merged.get(name, {}).get("rows", {}), **cell["rows"]}}
    ordered = {c.name: merged[c.name] for c in CELLS if c.name in merged}
    summary = half_summary(ordered)
    write_json(path, {"configuration": configuration, "threads": torch.get_num_threads(), "cells": ordered,
                      "stride_vs_best_baseline": summary})  # fmt: skip
    lines = table_lines(ordered, markdown=True)
    lines += ["", "STRIDE vs the best baseline per cell, mean over the cells of each half:"]
    lines += [f"- half {h}: ratio {s['mean_ratio']:.3f}, difference {s['mean_difference']:+.3f} ({s['cells']} cells)"
              for h, s in summary.items()]  # fmt: skip
    path.with_suffix(".md").write_text("\n".join(lines) + "\n")
    return ordered


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="runs/bench_matrix")
    parser.add_argument("--quick", action="store_true",
                        help=f"smoke run: {QUICK.n_train} examples, {QUICK.n_queries} queries, {QUICK.subsets} "
                             f"halves x {QUICK.seeds} seeds, cells {', '.join(QUICK_CELLS)}")  # fmt: skip
    parser.add_argument(
        "--cells", nargs="+", choices=list(CELLS_BY_NAME), help="default: every cell of --halves (--quick: three)"
    )
    parser.add_argument(
        "--halves",
        nargs="+",
        choices=HALVES,
        default=["A", "B"],
        help="A: where defaults may be chosen; B: confirmation; C: held out, run only to test choices",
    )
    parser.add_argument("--methods", nargs="+", help=f"default: those of {', '.join(DEFAULT_METHODS)} available")
    parser.add_argument("--method-settings", help="JSON/YAML mapping method -> settings (stride: StrideConfig)")
    parser.add_argument("--tag", default="", help="suffix of matrix.json and of the run folders of the methods that "
                                                  "--method-settings sets (to compare settings)")  # fmt: skip
    parser.add_argument("--recompute", action="store_true", help="replace the methods' run folders")
    parser.add_argument("--trak-ensemble", type=int, default=5, help="models in TRAK's ensemble (other seeds)")
    parser.add_argument("--vocabulary", type=int,
                        help="every language model takes one byte-level BPE tokenizer of this many tokens, trained on "
                             "the five corpora of halves A and B (e.g. 50257, GPT-2's size), instead of a 1024 / "
                             "512-token one of its own training data; use another --out")  # fmt: skip
    parser.add_argument("--depth", type=int,
                        help="decoder blocks of every language model (default 2): STRIDE's default block, about "
                             "0.6 of the depth, is then not the last one; use another --out")  # fmt: skip
    parser.add_argument("--width", type=int,
                        help="hidden size of every language model (default 96; from scratch 64), 4 heads and an "
                             "MLP of 4x the width as before; use another --out")  # fmt: skip
    parser.add_argument("--workers", type=int, default=2, help="ground-truth processes")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0, help="the methods' seed (STRIDE: its designs' membership and "
                        "operators); other than 0, run folders get the suffix _seedS")  # fmt: skip
    args = parser.parse_args()
    sizes = QUICK if args.quick else FULL
    if args.quick:
        args.out += "_quick"
    cell_names = args.cells or (QUICK_CELLS if args.quick else [c.name for c in CELLS if c.half in args.halves])
    args.method_settings = read_mapping_file(args.method_settings) if args.method_settings else {}
    torch.set_num_threads(args.threads)
    methods = args.methods or [m for m in DEFAULT_METHODS if m in available_methods()]
    unknown = sorted(set(methods) - set(available_methods()))
    if unknown:
        raise SystemExit(f"unknown methods {unknown}; available: {', '.join(available_methods())}")
    configuration = {**vars(args), "sizes": dataclasses.asdict(sizes), "cells": cell_names, "methods": methods}
    print("configuration:", json.dumps(configuration, default=str), flush=True)
    started = time.perf_counter()
    results_path = Path(args.out) / f"matrix{args.tag}{seed_suffix(args)}.json"
    done: dict[str, dict[str, Any]] = {}
    table = done
    for name in cell_names:
        cell = CELLS_BY_NAME[name]
        cell_started = time.perf_counter()
        run = run_classifier_cell if cell.regime == "classifier" else run_lm_cell
        done[name] = {**dataclasses.asdict(cell), "sizes": dataclasses.asdict(sizes), **run(cell, sizes, args, methods),
                      "wall_seconds_this_run": time.perf_counter() - cell_started}  # fmt: skip
        table = write_results(results_path, done, configuration)
        print(f"[{name}] done in {done[name]['wall_seconds_this_run']:.0f} s; wrote {results_path}", flush=True)
    print(f"\nLDS [95% CI] per cell of {results_path} (half A: defaults may be chosen there; B: confirmation; "
          "C: held out)")  # fmt: skip
    print("\n".join(table_lines(table, markdown=False)))
    for half, summary in half_summary(table).items():
        print(f"STRIDE vs best baseline, half {half}: mean ratio {summary['mean_ratio']:.3f}, "
              f"mean difference {summary['mean_difference']:+.3f} over {summary['cells']} cells")  # fmt: skip
    print(f"matrix wall time: {time.perf_counter() - started:.0f} s ({torch.get_num_threads()} threads); "
          f"wrote {results_path} and {results_path.with_suffix('.md')}")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
