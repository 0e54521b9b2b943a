"""`stride` command line: each subcommand parses its flags and calls one function of the API."""

from __future__ import annotations

import argparse
import logging
import os
import sys
import warnings
from pathlib import Path
from typing import Callable

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from stride.errors import StrideError  # noqa: E402


def _attribute(args: argparse.Namespace) -> None:
    from stride.api import attribute
    from stride.config import StrideConfig

    config = StrideConfig.from_file(args.config) if args.config else StrideConfig()
    result = attribute(
        args.model, args.train, args.queries, args.out, method=args.method, config=config, seed=args.seed,
        threads=args.threads, overwrite=args.overwrite, progress=not args.quiet,
        trust_remote_code=args.trust_remote_code,
    )  # fmt: skip
    timings = ", ".join(f"{k} {v:.1f}s" for k, v in result.info["timings_seconds"].items())
    print(f"wrote {result.out_dir}/scores.safetensors [{result.scores.shape[0]} x {result.scores.shape[1]}] ({timings})")


def _train_lm(args: argparse.Namespace) -> None:
    from stride.api import set_threads
    from stride.config import read_mapping_file
    from stride.lm_training import LMRecipe, train_lm

    set_threads(args.threads)
    recipe = LMRecipe.from_dict(read_mapping_file(args.recipe)) if args.recipe else LMRecipe()
    if args.seed is not None:
        recipe.seed = args.seed
    out = train_lm(args.train, args.out, recipe, base_dir=args.base, progress=not args.quiet)
    print(f"wrote {out}")


def _demo(args: argparse.Namespace) -> None:
    from stride.demo import run_demo

    run_demo(args.out, threads=args.threads)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="stride", description="Training data attribution (STRIDE).")
    commands = parser.add_subparsers(dest="command", required=True)

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
    sub.add_argument("--seed", type=int, default=0)
    sub.add_argument("--overwrite", action="store_true", help="replace a run with other settings in --out")
    sub.add_argument("--trust-remote-code", action="store_true", help="allow the model folder's own code")

    sub = command("train-lm", _train_lm, "pre-train (or fine-tune with --base) a tiny causal LM")
    sub.add_argument("--train", required=True, help="JSONL or datasets folder")
    sub.add_argument("--out", required=True, help="folder for the model, tokenizer and recipe.json")
    sub.add_argument("--base", help="fine-tune this model folder instead of training from scratch")
    sub.add_argument("--recipe", help="JSON/YAML file of LMRecipe settings")
    sub.add_argument("--seed", type=int, default=None)

    sub = command("demo", _demo, "the embedded default: tiny LM on the fortune corpus + attribution")
    sub.add_argument("--out", default="runs/demo", help="folder for corpus, model and scores (cached)")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point; user errors print one line and exit with status 2."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="stride: %(message)s")
    warnings.formatwarning = lambda message, category, *rest: f"stride: warning: {message}\n"
    try:
        args.handler(args)
    except StrideError as exc:
        print(f"stride: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("stride: interrupted; finished stages and checkpoints are kept, rerun to resume", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
