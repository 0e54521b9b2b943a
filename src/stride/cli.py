"""`stride` command line: each subcommand parses its flags and calls one function of the API."""

from __future__ import annotations

import argparse
import logging
import os
import sys
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# OpenMP threads that spin while waiting make torch many times slower when the cores are shared.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from stride.core.arrays import write_failure
from stride.errors import StrideError

ENSEMBLE_METHODS = ("trak", "graddot", "gradcos")


def _attribute(args: argparse.Namespace) -> None:
    from stride.api import attribute
    from stride.config import method_options

    config, method_settings = method_options(args.method, args.config, args.partner)
    if args.checkpoints:
        if args.method not in ENSEMBLE_METHODS:
            raise StrideError(f"--checkpoints is used by {', '.join(ENSEMBLE_METHODS)}, not by {args.method}")
        method_settings = {**method_settings, "checkpoints": args.checkpoints}
    result = attribute(
        args.model, args.train, args.queries, args.out, method=args.method, config=config, seed=args.seed,
        threads=args.threads, overwrite=args.overwrite, progress=not args.quiet,
        trust_remote_code=args.trust_remote_code, method_settings=method_settings, reuse_from=args.reuse_from,
        top_k=args.top_k, device=args.device, dtype=args.dtype,
    )  # fmt: skip
    if "rank" in result.info:  # another rank of a torchrun job: rank 0 reports the run
        return
    timings = ", ".join(f"{k} {v:.1f}s" for k, v in result.info["timings_seconds"].items())
    if result.top is not None:
        rows, k = result.top.top_indices.shape
        written = f"top_scores.safetensors [{rows} queries x top/bottom {k}]"
    else:
        written = f"scores.safetensors [{result.info['n_queries']} x {result.info['n_train']}]"
    print(f"wrote {result.out_dir}/{written} ({timings})")


def _attribute_classifier(args: argparse.Namespace) -> None:
    from stride.classifiers import attribute_classifier
    from stride.classifiers.files import build_model, load_arrays, load_factory
    from stride.config import read_mapping_file

    values = read_mapping_file(args.config) if args.config else {}
    config, method_settings = _classifier_settings(values, args.method, args.partner)
    factory = load_factory(args.factory)
    model = build_model(factory, args.weights)
    checkpoints = [build_model(factory, path) for path in args.checkpoints]
    (train_x, train_y), (query_x, query_y) = load_arrays(args.train), load_arrays(args.queries)
    scores = attribute_classifier(
        model, train_x, train_y, query_x, query_y, out_dir=args.out, method=args.method, config=config,
        layer=args.layer, measurement=args.measurement, checkpoints=checkpoints, method_settings=method_settings,
        seed=args.seed, threads=args.threads, overwrite=args.overwrite, progress=not args.quiet,
        device=args.device, dtype=args.dtype,
    )  # fmt: skip
    print(f"wrote {args.out}/scores.safetensors [{scores.shape[0]} x {scores.shape[1]}]")


def _classifier_settings(values: dict[str, Any], method: str, partner: str | None
                         ) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:  # fmt: skip
    """(STRIDE's overrides, the settings of the method or of STRIDE's partner) from a config file's
    mapping: one section per method, or the method's settings alone."""
    from stride.classifiers.api import METHODS
    from stride.config import check_partner_method, partner_settings

    check_partner_method(method, partner)
    if method != "stride":
        return None, values.get(method, values)
    stride = values.get("stride", {key: value for key, value in values.items() if key not in METHODS})
    if partner is not None:
        stride = {**stride, "partner": partner}
    return stride, partner_settings(stride.get("partner"), values) or None


def _train_lm(args: argparse.Namespace) -> None:
    from stride.api import set_threads
    from stride.config import read_mapping_file
    from stride.lm_training import LMRecipe, train_ensemble, train_lm

    if args.ensemble < 1:
        raise StrideError(f"--ensemble is the number of models to train, at least 1, got {args.ensemble}")
    set_threads(args.threads)
    recipe = LMRecipe.from_dict(read_mapping_file(args.recipe)) if args.recipe else LMRecipe()
    if args.seed is not None:
        recipe.seed = args.seed
    out = train_lm(args.train, args.out, recipe, base_dir=args.base, progress=not args.quiet)
    print(f"wrote {out}")
    if args.ensemble > 1:
        members = train_ensemble(
            args.train, args.out, recipe, args.ensemble, base_dir=args.base, progress=not args.quiet
        )
        print(f"wrote {len(members)} more ensemble member(s) in {Path(args.out) / 'ensemble'}")


def _groundtruth(args: argparse.Namespace) -> None:
    from stride.api import groundtruth
    from stride.config import read_mapping_file

    recipe = read_mapping_file(args.recipe) if args.recipe else None
    summary = groundtruth(
        args.model, args.train, args.queries, args.out, regime=args.regime, base_dir=args.base,
        protocol=args.protocol, fraction=args.fraction, n_subsets=args.subsets, n_seeds=args.seeds,
        recipe=recipe, seed=args.seed, workers=args.workers,
        threads_per_worker=1 if args.threads is None else args.threads, progress=not args.quiet,
    )  # fmt: skip
    ceiling = summary.get("ceiling_single_seed")
    print(f"wrote {args.out}/losses.safetensors" + (f" (seed-vs-seed ceiling {ceiling:.3f})" if ceiling else ""))


def _lds(args: argparse.Namespace) -> None:
    from stride.api import lds

    out = args.out or str(
        Path(args.scores).with_name("lds.json") if not Path(args.scores).is_dir() else Path(args.scores) / "lds.json"
    )
    plot = None if args.no_plot else str(Path(out).with_suffix(".png"))
    report = lds(args.scores, args.groundtruth, out, plot, seed=args.seed)
    ceiling = f", seed ceiling {report.ceiling:.3f}" if report.ceiling is not None else ""
    print(
        f"LDS {report.mean:.3f} (95% CI {report.ci_low:.3f} to {report.ci_high:.3f}, "
        f"{report.n_queries - report.n_excluded} queries, {report.n_subsets} subsets{ceiling}); wrote {out}"
    )


def _counterfactual(args: argparse.Namespace) -> None:
    import importlib.util

    from stride.api import counterfactual
    from stride.config import read_mapping_file

    subset = None
    if args.queries_subset:
        tokens = [t for token in args.queries_subset for t in token.split(",") if t]
        if not tokens or not all(t.isdigit() for t in tokens):
            raise StrideError(f"--queries-subset takes a number of queries or query indices, got {args.queries_subset}")
        single = len(args.queries_subset) == 1 and "," not in args.queries_subset[0]
        subset = int(tokens[0]) if single else [int(t) for t in tokens]
    plot = None if args.no_plot else Path(args.out) / "counterfactual.png"
    if plot is not None and importlib.util.find_spec("matplotlib") is None:
        warnings.warn(
            "matplotlib is not installed, so no plot is drawn (pip install 'stride-tda[plots]')", stacklevel=1
        )
        plot = None
    recipe = read_mapping_file(args.recipe) if args.recipe else None
    report = counterfactual(
        args.model, args.train, args.queries, args.scores, args.out, regime=args.regime, base_dir=args.base,
        ks=args.k, n_seeds=args.seeds, queries_subset=subset, recipe=recipe, seed=args.seed, workers=args.workers,
        threads_per_worker=1 if args.threads is None else args.threads, progress=not args.quiet, plot_path=plot,
    )  # fmt: skip
    seeds = f"{report.n_seeds} seed" + ("s" if report.n_seeds > 1 else "")
    print(
        f"query loss increase over the full-data retrain ({len(report.query_indices)} queries, {seeds}; "
        f"mean [{report.confidence:.0%} CI]):"
    )
    print(f"{'k':>6}  {'top-k removed':<29}{'random removed':<29}difference")
    for row in report.per_k():
        cells = [f"{row[key]['mean']:+.4f} [{row[key]['ci_low']:+.4f}, {row[key]['ci_high']:+.4f}]"
                 for key in ("top_k", "random", "difference")]  # fmt: skip
        print(f"{row['k']:>6}  {cells[0]:<29}{cells[1]:<29}{cells[2]}")
    print(f"wrote {args.out}/report.json" + (f" and {plot}" if plot else ""))


def _demo(args: argparse.Namespace) -> None:
    from stride.demo import run_demo

    run_demo(args.out, threads=args.threads)


def _report(args: argparse.Namespace) -> None:
    from stride.report import write_report

    path = write_report(args.run, args.out, groundtruth=args.groundtruth, k=args.k,
                        continuation_tokens=args.continuation_tokens, threads=args.threads)  # fmt: skip
    print(f"wrote {path}")


def _select(args: argparse.Namespace) -> None:
    from stride.config import method_options
    from stride.selection import select

    config, method_settings = method_options(args.method, args.config)
    chosen = select(
        args.pool, args.out, args.budget, args.aggregate, run_dir=args.run, model_dir=args.model, target=args.queries,
        dedup=args.dedup, method=args.method, config=config, method_settings=method_settings, seed=args.seed,
        threads=args.threads, progress=not args.quiet,
    )  # fmt: skip
    print(f"wrote {args.out}/selected.jsonl ({len(chosen.indices)} examples) and {args.out}/manifest.json")


def _contamination(args: argparse.Namespace) -> None:
    from stride.config import method_options
    from stride.contamination import contamination

    config, method_settings = method_options(args.method, args.config)
    result = contamination(
        args.model, args.train, args.benchmark, args.out, method=args.method, config=config,
        method_settings=method_settings, labels=args.labels, top_k=args.top_k, seed=args.seed, threads=args.threads,
        progress=not args.quiet,
    )  # fmt: skip
    found = ""
    if result.metrics is not None and result.metrics["auroc"] is not None:
        found = f" (AUROC {result.metrics['auroc']:.3f}, AUPRC {result.metrics['auprc']:.3f})"
    print(f"wrote {args.out}/benchmark_scores.jsonl, train_scores.jsonl and report.md{found}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="stride", description="Training data attribution (STRIDE).")
    commands = parser.add_subparsers(dest="command", required=True)

    def placement(sub: argparse.ArgumentParser) -> None:
        sub.add_argument("--device", default="auto",
                         help="where the frozen model runs: auto (CUDA when present), cpu, cuda, cuda:N; "
                              "stride only, other methods run on the CPU")  # fmt: skip
        sub.add_argument("--dtype", default="float32", help="the frozen model's precision: float32, bfloat16, "
                         "float16 (stride only; operators and recovery stay float32)")  # fmt: skip

    def command(name: str, handler: Callable[[argparse.Namespace], None], help_text: str) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=help_text, description=help_text)
        sub.set_defaults(handler=handler)
        sub.add_argument("--threads", type=int, default=None, help="torch CPU threads (recorded in the output)")
        sub.add_argument("--quiet", action="store_true", help="no progress bars")
        return sub

    sub = command("attribute", _attribute, "score every training example for every query")
    sub.add_argument("--model", required=True, help="local Hugging Face causal LM folder (with tokenizer)")
    sub.add_argument("--train", required=True, help="training data: JSONL or datasets folder")
    sub.add_argument("--queries", required=True, help="queries: JSONL or datasets folder")
    sub.add_argument("--out", required=True, help="output folder (run store)")
    sub.add_argument("--method", default="stride", help="attribution method (default: stride)")
    sub.add_argument("--config", help="JSON/YAML file of method settings")
    sub.add_argument("--partner", metavar="METHOD",
                     help="STRIDE: mix METHOD's scores into STRIDE's (e.g. astra; the setting `partner`; its weight "
                          "is `partner_weight`, 0.6 by default)")  # fmt: skip
    sub.add_argument("--seed", type=int, default=0)
    sub.add_argument("--overwrite", action="store_true", help="replace a run with other settings in --out")
    sub.add_argument(
        "--reuse-from",
        help="run folder (same model, training set, settings) whose trained operators / "
        "training-side features new queries reuse",
    )
    sub.add_argument("--trust-remote-code", action="store_true", help="allow the model folder's own code")
    sub.add_argument("--top-k", type=int, metavar="K",
                     help="write each query's K most and least influential examples (and STRIDE's sparse scores) "
                          "instead of the dense score matrix")  # fmt: skip
    sub.add_argument("--checkpoints", nargs="+", default=[],
                     help="further models of the same architecture and tokenizer (e.g. MODEL/ensemble/*): the "
                          "ensemble of trak, graddot and gradcos")  # fmt: skip
    placement(sub)

    sub = command("attribute-classifier", _attribute_classifier,
                  "score every training example for every query of a torch.nn.Module classifier")  # fmt: skip
    sub.add_argument("--factory", required=True, help="path/to/file.py:function returning the model (runs that file)")
    sub.add_argument("--weights", help="the model's state dict (.safetensors, or a torch file of tensors)")
    sub.add_argument("--train", required=True, help=".npz or .safetensors holding 'inputs' and 'labels'")
    sub.add_argument("--queries", required=True, help=".npz or .safetensors holding 'inputs' and 'labels'")
    sub.add_argument("--out", required=True, help="output folder (run store)")
    sub.add_argument("--method", default="stride", help="stride, trak, ekfac, graddot, gradcos or repsim")
    sub.add_argument("--config", help="JSON/YAML file of settings (STRIDE: overrides of the classifier defaults)")
    sub.add_argument(
        "--layer",
        help="steered place: NAME (module output) or NAME:input; default: last Linear's input "
        "(STRIDE's second bank, `second_layer` in --config: first Linear's input)",
    )
    sub.add_argument("--measurement", choices=["ce", "margin"], default="ce")
    sub.add_argument("--checkpoints", nargs="*", default=[], help="weights of further models: TRAK's ensemble")
    sub.add_argument(
        "--partner",
        metavar="METHOD",
        help="STRIDE: mix METHOD's scores into STRIDE's (e.g. ekfac; weight `partner_weight`, 0.5 for classifiers)",
    )
    sub.add_argument("--seed", type=int, default=0)
    sub.add_argument("--overwrite", action="store_true", help="replace a run with other settings in --out")
    placement(sub)

    sub = command("train-lm", _train_lm, "pre-train (or fine-tune with --base) a tiny causal LM")
    sub.add_argument("--train", required=True, help="JSONL or datasets folder")
    sub.add_argument("--out", required=True, help="folder for the model, tokenizer and recipe.json")
    sub.add_argument("--base", help="fine-tune this model folder instead of training from scratch")
    sub.add_argument("--recipe", help="JSON/YAML file of LMRecipe settings")
    sub.add_argument("--seed", type=int, default=None)
    sub.add_argument("--ensemble", type=int, default=1,
                     help="train N models in all; the others (seeds seed+1 ...) go to OUT/ensemble/")  # fmt: skip

    sub = command("groundtruth", _groundtruth, "retrain on random subsets and record every query's loss")
    sub.add_argument("--model", required=True, help="the attributed model (tokenizer, architecture, recipe.json)")
    sub.add_argument("--train", required=True)
    sub.add_argument("--queries", required=True)
    sub.add_argument("--out", required=True, help="ground-truth folder (resumable)")
    sub.add_argument("--regime", choices=["finetune", "scratch"], default="finetune")
    sub.add_argument("--base", help="finetune regime: the model every retrain starts from")
    sub.add_argument("--protocol", choices=["keep", "leave-out"], default="keep")
    sub.add_argument("--fraction", type=float, default=0.5, help="kept (keep) or dropped (leave-out) fraction")
    sub.add_argument("--subsets", type=int, default=64)
    sub.add_argument("--seeds", type=int, default=2)
    sub.add_argument("--workers", type=int, default=2, help="retraining processes (threads each: --threads, default 1)")
    sub.add_argument("--recipe", help="JSON/YAML LMRecipe (default: the model's recipe.json)")
    sub.add_argument("--seed", type=int, default=0)

    sub = command("lds", _lds, "linear datamodeling score of a score matrix against ground truth")
    sub.add_argument("--scores", required=True, help="scores.safetensors (or its folder) or a .npy file")
    sub.add_argument("--groundtruth", required=True, help="folder written by stride groundtruth")
    sub.add_argument("--out", help="JSON report (default: lds.json beside the scores); a PNG goes beside it")
    sub.add_argument("--no-plot", action="store_true")
    sub.add_argument("--seed", type=int, default=0, help="bootstrap seed")

    sub = command("counterfactual", _counterfactual, "remove each query's top-k attributed training examples, "
                  "retrain, and compare its loss with removing k random ones")  # fmt: skip
    sub.add_argument("--model", required=True, help="the attributed model (tokenizer, architecture, recipe.json)")
    sub.add_argument("--train", required=True)
    sub.add_argument("--queries", required=True)
    sub.add_argument("--scores", required=True,
                     help="scores.safetensors (or its folder) or a .npy file, [queries x train]")  # fmt: skip
    sub.add_argument("--out", required=True, help="counterfactual folder (resumable); report.json and a PNG go there")
    sub.add_argument("--regime", choices=["finetune", "scratch"], default="finetune")
    sub.add_argument("--base", help="finetune regime: the model every retrain starts from")
    sub.add_argument("--k", type=int, nargs="+", default=[10, 20, 50], help="numbers of removed examples")
    sub.add_argument("--seeds", type=int, default=2)
    sub.add_argument("--queries-subset", nargs="+", metavar="N|INDEX",
                     help="one number N: N queries drawn at random with --seed; or query indices (0 3 7 or 0,3,7; "
                          "one index: 5,)")  # fmt: skip
    sub.add_argument("--workers", type=int, default=2, help="retraining processes (threads each: --threads, default 1)")
    sub.add_argument("--recipe", help="JSON/YAML LMRecipe (default: the model's recipe.json)")
    sub.add_argument("--no-plot", action="store_true")
    sub.add_argument("--seed", type=int, default=0, help="seed of the random removals, the query draw and the CIs")

    sub = command("report", _report, "one self-contained HTML page of a run: each query with its most and least "
                  "influential training examples, search and filters, and the LDS with --groundtruth")  # fmt: skip
    sub.add_argument("--run", required=True, help="run folder written by stride attribute")
    sub.add_argument("--groundtruth", help="folder written by stride groundtruth: adds the LDS summary and plot")
    sub.add_argument("--out", help="HTML file to write (default: RUN/report.html)")
    sub.add_argument("--k", type=int, default=10, help="most and least influential examples shown per query")
    sub.add_argument("--continuation-tokens", type=int, default=24,
                     help="greedy tokens the run's model adds to each query's first half (0: none)")  # fmt: skip

    sub = command("select", _select, "select training data for a target set: aggregate each pool example's "
                  "scores over the target (mean, max or round-robin) and keep the best")  # fmt: skip
    sub.add_argument("--run", help="finished run of stride attribute whose training set is the pool")
    sub.add_argument("--model", help="or: attribute first with this model (the run goes in --out)")
    sub.add_argument("--queries", help="with --model: the target examples (JSONL or datasets folder)")
    sub.add_argument("--pool", "--train", dest="pool", required=True, help="candidates: the run's training set")
    sub.add_argument("--budget", required=True, help="examples to select: a number N, or a fraction of the pool")
    sub.add_argument("--aggregate", choices=["mean", "max", "round-robin"], default="mean")
    sub.add_argument("--dedup", action="store_true", help="skip examples whose text equals a selected one's")
    sub.add_argument("--out", required=True, help="folder for selected.jsonl and manifest.json")
    sub.add_argument("--method", default="stride", help="with --model: attribution method (default: stride)")
    sub.add_argument("--config", help="with --model: JSON/YAML file of method settings")
    sub.add_argument("--seed", type=int, default=0)

    sub = command("contamination", _contamination, "rank benchmark items by how likely they leaked into the "
                  "training set, and training examples by how likely they copy a benchmark item")  # fmt: skip
    sub.add_argument("--model", required=True, help="local Hugging Face causal LM folder (with tokenizer)")
    sub.add_argument("--train", required=True, help="training data: JSONL or datasets folder")
    sub.add_argument("--benchmark", required=True, help="benchmark items, as --queries: text or prompt/completion")
    sub.add_argument("--out", required=True, help="output folder (the run store; reused on rerun)")
    sub.add_argument("--method", default="stride", help="attribution method (default: stride)")
    sub.add_argument("--config", help="JSON/YAML file of method settings")
    sub.add_argument("--labels", help="JSON list of 0/1 per item, or JSONL with 'leaked': adds AUROC/AUPRC, a plot")
    sub.add_argument("--top-k", type=int, default=10, help="training examples listed per benchmark item")
    sub.add_argument("--seed", type=int, default=0)

    sub = command("demo", _demo, "the embedded default: tiny LM on the fortune corpus + attribution")
    sub.add_argument("--out", default="runs/demo", help="folder for corpus, model and scores (cached)")
    return parser


def _error(message: str) -> int:
    """Print a user error as one line (a library's multi-line message joined) and return status 2."""
    line = "; ".join(part.strip() for part in message.splitlines() if part.strip())
    print(f"stride: error: {line}", file=sys.stderr)
    return 2


def main(argv: list[str] | None = None) -> int:
    """Entry point; user errors print one line and exit with status 2."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="stride: %(message)s")
    warnings.formatwarning = lambda message, category, *rest: f"stride: warning: {message}\n"
    try:
        args.handler(args)
    except StrideError as exc:
        return _error(str(exc))
    except Exception as exc:
        failure = write_failure(exc)
        if failure is None:
            raise
        return _error(
            f"cannot write {failure.filename or 'the output'}: {failure.strerror}; finished stages are kept, so "
            "rerun the same command once the disk has room or the folder is writable"
        )
    except KeyboardInterrupt:
        print("stride: interrupted; finished stages and checkpoints are kept, rerun to resume", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
