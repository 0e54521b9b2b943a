"""LDS benchmark on the embedded fortune corpus: every available method, one table.

Regimes:
  finetune  a GPT-2 pre-trained on a disjoint pool, fine-tuned on 1,000 examples; ground truth
            fine-tunes the same base on random halves (2 seeds: data order).
  scratch   a GPT-2 trained from scratch on the 1,000 examples; ground truth retrains from a
            fresh initialisation on random halves (seed noise dominates: see the ceiling).

Everything is cached under --out (models, ground truth, each method's run folder), so a rerun
only computes what is missing. Prints the configuration and the table; writes results.json.

    python bench/lds.py [--quick] [--regimes finetune scratch] [--methods stride tfidf ...]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

from stride.api import attribute, groundtruth, lds  # noqa: E402
from stride.config import StrideConfig, read_mapping_file  # noqa: E402
from stride.corpus import build_benchmark_corpus  # noqa: E402
from stride.lm_training import LMRecipe, train_lm  # noqa: E402
from stride.registry import available_methods  # noqa: E402
from stride.store import write_json  # noqa: E402

MODEL = dict(architecture="gpt2", n_layers=2, hidden_size=128, n_heads=4, vocab_size=1024, context=128)
RECIPES = {
    "base": LMRecipe(**MODEL, epochs=3, learning_rate=3e-3, batch_size=32, seed=0),
    "finetune": LMRecipe(**MODEL, epochs=2, learning_rate=1e-3, batch_size=32, warmup_fraction=0.0, seed=0),
    "scratch": LMRecipe(**MODEL, epochs=6, learning_rate=3e-3, batch_size=32, seed=0),
}


def build_models(regime: str, data: dict[str, Path], root: Path) -> tuple[Path, Path | None]:
    """The attributed model (and the fine-tuning base), trained once and cached."""
    if regime == "finetune":
        base = root / "base"
        if not (base / "recipe.json").is_file():
            train_lm(data["pretrain"], base, RECIPES["base"])
        model = root / "model"
        if not (model / "recipe.json").is_file():
            train_lm(data["train"], model, RECIPES["finetune"], base_dir=base)
        return model, base
    model = root / "model"
    if not (model / "recipe.json").is_file():
        train_lm(data["train"], model, RECIPES["scratch"])
    return model, None


def run_regime(regime: str, args: argparse.Namespace, methods: list[str]) -> list[dict]:
    root = Path(args.out) / regime
    data = build_benchmark_corpus(root / "data", n_train=args.n_train, n_queries=args.n_queries)
    model, base = build_models(regime, data, root)
    truth = root / f"groundtruth_m{args.subsets}_s{args.seeds}"
    recipe = RECIPES["finetune" if regime == "finetune" else "scratch"]
    started = time.perf_counter()
    summary = groundtruth(model, data["train"], data["queries"], truth, regime=regime, base_dir=base,
                          fraction=0.5, n_subsets=args.subsets, n_seeds=args.seeds,
                          recipe=vars(recipe).copy(), workers=args.workers)  # fmt: skip
    print(f"[{regime}] ground truth: {args.subsets} subsets x {args.seeds} seeds, "
          f"{time.perf_counter() - started:.0f} s this run, ceiling {summary.get('ceiling_single_seed')}")
    rows = []
    for method in methods:
        settings = args.method_settings.get(method, {})
        config = StrideConfig.from_dict(settings) if method == "stride" else StrideConfig()
        out = root / "runs" / f"{method}{args.tag}"
        result = attribute(model, data["train"], data["queries"], out, method=method, config=config,
                           threads=args.threads, method_settings=settings, overwrite=True)  # fmt: skip
        report = lds(out, truth, out / "lds.json", out / "lds.png")
        seconds = sum(v for k, v in result.info["timings_seconds"].items() if k != "total")
        rows.append({"regime": regime, "method": method, "lds": report.mean, "ci_low": report.ci_low,
                     "ci_high": report.ci_high, "lds_single_seed": report.mean_single_seed,
                     "ceiling": report.ceiling, "seconds": seconds, "settings": result.info["settings"]})  # fmt: skip
        print(f"[{regime}] {method}: LDS {report.mean:.3f} [{report.ci_low:.3f}, {report.ci_high:.3f}] "
              f"in {seconds:.1f} s")
    stride_seconds = next((r["seconds"] for r in rows if r["method"] == "stride"), None)
    for row in rows:
        row["time_vs_stride"] = row["seconds"] / stride_seconds if stride_seconds else None
    return rows


def print_table(rows: list[dict]) -> None:
    print(f"\n{'regime':9} {'method':10} {'LDS':>6} {'95% CI':>17} {'1-seed':>7} {'ceiling':>8} {'seconds':>8} {'x stride':>8}")
    for r in rows:
        ceiling = f"{r['ceiling']:.3f}" if r["ceiling"] is not None else "-"
        ratio = f"{r['time_vs_stride']:.2f}" if r["time_vs_stride"] is not None else "-"
        print(f"{r['regime']:9} {r['method']:10} {r['lds']:6.3f} [{r['ci_low']:6.3f}, {r['ci_high']:6.3f}] "
              f"{r['lds_single_seed']:7.3f} {ceiling:>8} {r['seconds']:8.1f} {ratio:>8}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="runs/bench_lds")
    parser.add_argument("--quick", action="store_true", help="smoke run: 200 examples, 20 queries, 12 subsets")
    parser.add_argument("--regimes", nargs="+", default=["finetune", "scratch"], choices=["finetune", "scratch"])
    parser.add_argument("--methods", nargs="+", default=None, help="default: every available method")
    parser.add_argument("--method-settings", help="JSON/YAML mapping method -> settings (stride: StrideConfig)")
    parser.add_argument("--tag", default="", help="suffix of the run folders (to compare settings)")
    parser.add_argument("--subsets", type=int, default=64)
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    args.n_train, args.n_queries = (200, 20) if args.quick else (1000, 100)
    if args.quick:
        args.subsets, args.out = 12, args.out + "_quick"
    args.method_settings = read_mapping_file(args.method_settings) if args.method_settings else {}
    torch.set_num_threads(args.threads)
    methods = args.methods or available_methods()
    config = {k: v for k, v in vars(args).items()}
    print("configuration:", json.dumps(config, default=str))
    rows = []
    for regime in args.regimes:
        rows += run_regime(regime, args, methods)
    print_table(rows)
    out = Path(args.out) / f"results{args.tag}.json"
    write_json(out, {"configuration": config, "rows": rows, "threads": torch.get_num_threads()})
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
