"""STRIDE's seconds and scores under two revisions of this repository, on matrix cells, in one script.

The working tree (the candidate) and a git revision (the baseline, checked out into a temporary
worktree) each run `stride.api.attribute` on the same cells in separate fresh processes, taking
turns (baseline, candidate, baseline, candidate, ...), so that both see the same machine. Reports
per cell and revision the median seconds of each stage (and peak RSS) over the rounds, the ratio of the totals
(baseline / candidate: above 1 means the candidate is faster) and whether the two revisions gave
the same scores. Each revision can get its own STRIDE settings (e.g. `--candidate-settings
'{"epochs": 4}'`: is a longer training at the candidate's speed within the baseline's seconds?).

    python -m bench.revisions --baseline main --cells scratch_pydoc_gpt2 [--out runs/bench_matrix]
        [--rounds 2] [--threads 2] [--settings JSON] [--candidate-settings JSON]

Needs the cells' models and data (`python -m bench.matrix --out OUT` builds them). Run it alone
on the cores. Writes `OUT/revisions.json`.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from statistics import median
from typing import Any

import torch
from safetensors.torch import load_file

from bench.measuring import measured, stride_command
from stride.core.jsonio import write_json

REPOSITORY = Path(__file__).resolve().parent.parent


def run_once(source: Path, cell: Path, out: Path, config: Path | None, threads: int) -> dict[str, float]:
    """One `stride attribute` run of `cell` with the package under `source/src`, in a fresh process:
    its stage seconds (info.json) and its peak RSS."""
    environment = {**os.environ, "PYTHONPATH": str(source / "src"), "OMP_WAIT_POLICY": "PASSIVE"}
    data = cell / "data"
    command = stride_command(cell / "model", data / "train.jsonl", data / "queries.jsonl", out, threads, config)
    peak = measured([sys.executable, *command], environment)["peak_rss_gib"]
    return {**json.loads((out / "info.json").read_text())["timings_seconds"], "peak_rss_gib": peak}


def compare_scores(a: Path, b: Path) -> dict[str, Any]:
    """Whether two run folders hold the same scores, and their largest difference relative to the largest score."""
    x, y = (load_file(str(folder / "scores.safetensors"))["scores"] for folder in (a, b))
    scale = float(x.abs().max()) or 1.0
    return {"identical": bool(torch.equal(x, y)), "max_relative_difference": float((x - y).abs().max()) / scale}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--baseline", required=True, help="git revision to compare the working tree with")
    parser.add_argument("--cells", nargs="+", required=True, help="matrix cells (folders under --out)")
    parser.add_argument("--out", default="runs/bench_matrix")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--settings", default="{}", help="STRIDE settings (JSON) of both revisions")
    parser.add_argument("--candidate-settings", default=None, help="the candidate's settings (default: --settings)")
    args = parser.parse_args()
    settings = {
        "baseline": json.loads(args.settings),
        "candidate": json.loads(args.candidate_settings or args.settings),
    }
    print(f"baseline {args.baseline} vs the working tree; cells {args.cells}; {args.rounds} rounds, "
          f"{args.threads} threads; settings {settings}", flush=True)  # fmt: skip
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as scratch:
        worktree = Path(scratch) / "baseline"
        subprocess.run(["git", "-C", str(REPOSITORY), "worktree", "add", "--detach", str(worktree), args.baseline],
                       check=True, capture_output=True)  # fmt: skip
        sources = {"baseline": worktree, "candidate": REPOSITORY}
        configs: dict[str, Path | None] = {}
        for revision, values in settings.items():
            configs[revision] = None
            if values:  # `stride attribute --config FILE`
                configs[revision] = Path(scratch) / f"{revision}.json"
                write_json(configs[revision], values)
        try:
            for name in args.cells:
                cell = Path(args.out).resolve() / name
                timings: dict[str, list[dict[str, float]]] = {"baseline": [], "candidate": []}
                for round_ in range(args.rounds):
                    for revision in ("baseline", "candidate"):
                        out = Path(scratch) / f"{name}_{revision}_{round_}"
                        timings[revision].append(run_once(sources[revision], cell, out, configs[revision],
                                                          args.threads))  # fmt: skip
                        print(f"[{name}] round {round_} {revision}: {timings[revision][-1]['total']:.1f} s", flush=True)
                medians = {r: {k: median(t[k] for t in ts) for k in ts[0]} for r, ts in timings.items()}
                ratio = medians["baseline"]["total"] / medians["candidate"]["total"]
                scores = compare_scores(Path(scratch) / f"{name}_baseline_0", Path(scratch) / f"{name}_candidate_0")
                results[name] = {"median_seconds": medians, "rounds": timings, "total_ratio": ratio, "scores": scores}
                seconds = {revision: f"{medians[revision]['total']:.1f} s" for revision in medians}
                print(f"[{name}] median total {seconds}, ratio {ratio:.2f}x; scores {scores}", flush=True)
        finally:
            subprocess.run(["git", "-C", str(REPOSITORY), "worktree", "remove", "--force", str(worktree)], check=False)
    baseline_commit = subprocess.run(["git", "-C", str(REPOSITORY), "rev-parse", args.baseline],
                                     capture_output=True, text=True, check=True).stdout.strip()  # fmt: skip
    write_json(Path(args.out) / "revisions.json", {
        "baseline": args.baseline, "baseline_commit": baseline_commit, "rounds": args.rounds,
        "threads": args.threads, "settings": settings, "cells": results,
    })  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
