"""LDS benchmark on the embedded fortune corpus: every available method, one table.

Regimes:
  finetune  a GPT-2 (0.54M parameters) pre-trained on a disjoint pool of 3,000 fortunes, fine-tuned
            on 1,000 examples, 100 queries; ground truth fine-tunes the same base on 48 random
            halves x 2 seeds (data order).
  scratch   a smaller GPT-2 (d = 64, vocab 512) trained from scratch on 500 examples, 100 queries;
            ground truth retrains from a fresh initialisation (seeded) on 32 random halves x 4
            seeds: seed noise is larger here, so more seeds (see the ceiling).

TRAK gets an ensemble (--trak-ensemble models: the attributed one and others trained with other
seeds), as its authors recommend; other methods use the attributed model alone.

Models and ground truth are cached under --out, so a rerun does not train them again (a cached
model trained with another recipe than the one asked for is refused, see `cached_model_matches`).
Each method's run folder is recomputed every time (`overwrite=True`), so that a benchmark always
reflects the current code. Prints the configuration and the table; writes results.json
(results_TAG.json with --tag _TAG) under --out.

    python -m bench.lds [--quick] [--regimes finetune scratch] [--methods stride tfidf ...]

(from the repository root; `python bench/lds.py` works too: this script imports no other bench module.)
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch

from stride.api import attribute, groundtruth, lds
from stride.config import StrideConfig, partner_settings, read_mapping_file
from stride.core.jsonio import write_json
from stride.corpus import build_benchmark_corpus
from stride.lm_training import LMRecipe, train_lm
from stride.registry import available_methods


@dataclasses.dataclass(frozen=True)
class Regime:
    """One benchmark setting: data sizes, the attributed model's recipe, and the ground truth size."""

    n_train: int
    n_queries: int
    recipe: LMRecipe
    subsets: int
    seeds: int
    base_recipe: LMRecipe | None = None


FINETUNE_MODEL = dict(architecture="gpt2", n_layers=2, hidden_size=128, n_heads=4, vocab_size=1024, context=128)
SCRATCH_MODEL = dict(architecture="gpt2", n_layers=2, hidden_size=64, n_heads=4, vocab_size=512, context=128)
REGIMES = {
    "finetune": Regime(
        n_train=1000, n_queries=100, subsets=48, seeds=2,
        base_recipe=LMRecipe(**FINETUNE_MODEL, epochs=3, learning_rate=3e-3, batch_size=32, seed=0),
        recipe=LMRecipe(**FINETUNE_MODEL, epochs=2, learning_rate=1e-3, batch_size=32, warmup_fraction=0.0, seed=0),
    ),
    "scratch": Regime(
        n_train=500, n_queries=100, subsets=32, seeds=4,
        recipe=LMRecipe(**SCRATCH_MODEL, epochs=5, learning_rate=3e-3, batch_size=32, seed=0),
    ),
}  # fmt: skip


DIAGNOSTICS = ("operator-grad",)  # run only when named with --methods


def cached_model_matches(folder: Path, recipe: LMRecipe, base: Path | None = None) -> bool:
    """Whether `folder` already holds the model of `recipe` (fine-tuned from `base`; None: from scratch).

    False when it holds none yet (no recipe.json: train it). True when its recipe.json (written by
    `train_lm`: keys "recipe" and "base") records the same recipe and the same base folder. Any other
    record stops the benchmark (SystemExit): a model trained otherwise is neither reused nor
    silently trained over. The other bench scripts that cache models use this check too.
    """
    record_path = Path(folder) / "recipe.json"
    if not record_path.is_file():
        return False
    record = json.loads(record_path.read_text())
    wanted = json.loads(json.dumps(dataclasses.asdict(recipe)))  # as JSON holds it (tuples -> lists)
    recorded = record.get("recipe")
    problems = []
    if not isinstance(recorded, dict):
        problems.append("no recipe recorded")
    elif recorded != wanted:
        missing = "<not recorded>"
        for key in sorted(set(recorded) | set(wanted)):
            cached, requested = recorded.get(key, missing), wanted.get(key, missing)
            if cached != requested:
                problems.append(f"{key}: cached {cached!r}, requested {requested!r}")
    recorded_base = record.get("base")
    if (recorded_base is None) != (base is None) or (
        base is not None and Path(recorded_base).resolve() != Path(base).resolve()
    ):
        problems.append(f"base: cached {recorded_base!r}, requested {str(base) if base is not None else None!r}")
    if problems:
        raise SystemExit(
            f"{folder} holds a model trained otherwise than this run asks for ({'; '.join(problems)}). "
            f"Delete {folder} (and the ground truth and runs computed from it) or use another --out."
        )
    return True


def build_models(regime: Regime, data: dict[str, Path], root: Path) -> tuple[Path, Path | None]:
    """The attributed model (and the fine-tuning base), trained once and cached."""
    base = None
    if regime.base_recipe is not None:
        base = root / "base"
        if not cached_model_matches(base, regime.base_recipe):
            train_lm(data["pretrain"], base, regime.base_recipe)
    model = root / "model"
    if not cached_model_matches(model, regime.recipe, base):
        train_lm(data["train"], model, regime.recipe, base_dir=base)
    return model, base


def ensemble_models(regime: Regime, data: dict[str, Path], root: Path, base: Path | None, size: int) -> list[str]:
    """`size - 1` more models trained like the attributed one with other seeds (TRAK's ensemble)."""
    folders = []
    for seed in range(1, size):
        folder = root / f"model_seed{seed}"
        recipe = dataclasses.replace(regime.recipe, seed=seed)
        if not cached_model_matches(folder, recipe, base):
            train_lm(data["train"], folder, recipe, base_dir=base)
        folders.append(str(folder))
    return folders


def run_regime(name: str, args: argparse.Namespace, methods: list[str]) -> list[dict]:
    regime = REGIMES[name]
    if args.quick:
        regime = dataclasses.replace(regime, n_train=200, n_queries=20, subsets=12, seeds=2)
    regime = dataclasses.replace(regime, subsets=args.subsets or regime.subsets, seeds=args.seeds or regime.seeds)
    print(f"[{name}] {regime}")
    root = Path(args.out) / name
    data = build_benchmark_corpus(root / "data", n_train=regime.n_train, n_queries=regime.n_queries)
    started = time.perf_counter()
    model, base = build_models(regime, data, root)
    truth = root / f"groundtruth_m{regime.subsets}_s{regime.seeds}"
    summary = groundtruth(model, data["train"], data["queries"], truth, regime=name, base_dir=base,
                          fraction=0.5, n_subsets=regime.subsets, n_seeds=regime.seeds,
                          recipe=vars(regime.recipe).copy(), workers=args.workers)  # fmt: skip
    print(
        f"[{name}] models + ground truth: {regime.subsets} subsets x {regime.seeds} seeds, "
        f"{time.perf_counter() - started:.0f} s this run, ceiling {summary.get('ceiling_single_seed')}"
    )
    default_settings = {}
    if "trak" in methods:
        default_settings["trak"] = {"checkpoints": ensemble_models(regime, data, root, base, args.trak_ensemble)}
    rows = []
    for method in methods:
        settings = args.method_settings.get(method, default_settings.get(method, {}))
        config = StrideConfig.from_dict(settings) if method == "stride" else StrideConfig()
        if method == "stride":  # STRIDE's other settings are its partner's, when it has one
            settings = partner_settings(config.partner, args.method_settings)
        out = root / "runs" / f"{method}{args.tag}"
        result = attribute(model, data["train"], data["queries"], out, method=method, config=config,
                           threads=args.threads, method_settings=settings, overwrite=True)  # fmt: skip
        report = lds(out, truth, out / "lds.json", out / "lds.png")
        seconds = sum(v for k, v in result.info["timings_seconds"].items() if k != "total")
        rows.append({"regime": name, "method": method, "lds": report.mean, "ci_low": report.ci_low,
                     "ci_high": report.ci_high, "lds_single_seed": report.mean_single_seed,
                     "ceiling": report.ceiling, "seconds": seconds, "settings": result.info["settings"]})  # fmt: skip
        print(
            f"[{name}] {method}: LDS {report.mean:.3f} [{report.ci_low:.3f}, {report.ci_high:.3f}] in {seconds:.1f} s"
        )
    stride_seconds = next((r["seconds"] for r in rows if r["method"] == "stride"), None)
    for row in rows:
        row["time_vs_stride"] = row["seconds"] / stride_seconds if stride_seconds else None
    return rows


def print_table(rows: list[dict]) -> None:
    print(
        f"\n{'regime':9} {'method':10} {'LDS':>6} {'95% CI':>17} {'1-seed':>7} {'ceiling':>8} "
        f"{'seconds':>8} {'x stride':>8}"
    )
    for r in rows:
        ceiling = f"{r['ceiling']:.3f}" if r["ceiling"] is not None else "-"
        ratio = f"{r['time_vs_stride']:.2f}" if r["time_vs_stride"] is not None else "-"
        print(
            f"{r['regime']:9} {r['method']:10} {r['lds']:6.3f} [{r['ci_low']:6.3f}, {r['ci_high']:6.3f}] "
            f"{r['lds_single_seed']:7.3f} {ceiling:>8} {r['seconds']:8.1f} {ratio:>8}"
        )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="runs/bench_lds")
    parser.add_argument(
        "--quick", action="store_true", help="smoke run: 200 examples, 20 queries, 12 subsets x 2 seeds"
    )
    parser.add_argument("--regimes", nargs="+", default=["finetune", "scratch"], choices=["finetune", "scratch"])
    parser.add_argument("--methods", nargs="+", default=None, help="default: every available method")
    parser.add_argument("--method-settings", help="JSON/YAML mapping method -> settings (stride: StrideConfig)")
    parser.add_argument("--tag", default="", help="suffix of the run folders (to compare settings)")
    parser.add_argument("--subsets", type=int, help="ground-truth subsets (default: per regime, 48 / 32)")
    parser.add_argument("--seeds", type=int, help="ground-truth seeds per subset (default: per regime, 2 / 4)")
    parser.add_argument("--trak-ensemble", type=int, default=5, help="models in TRAK's ensemble (other seeds)")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    if args.quick:
        args.out += "_quick"
    args.method_settings = read_mapping_file(args.method_settings) if args.method_settings else {}
    torch.set_num_threads(args.threads)
    methods = args.methods or [m for m in available_methods() if m not in DIAGNOSTICS]
    config = {k: v for k, v in vars(args).items()}
    print("configuration:", json.dumps(config, default=str))
    started = time.perf_counter()
    rows = []
    for regime in args.regimes:
        rows += run_regime(regime, args, methods)
    print_table(rows)
    wall = time.perf_counter() - started
    print(f"benchmark wall time: {wall:.0f} s")
    out = Path(args.out) / f"results{args.tag}.json"
    write_json(out, {"configuration": config, "rows": rows, "threads": torch.get_num_threads(), "wall_seconds": wall,
                     "regimes": {name: dataclasses.asdict(REGIMES[name]) for name in args.regimes}})  # fmt: skip
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
