"""Restricted-gradient LDS of operator families (the `operator-grad` diagnostic), before training any.

For each family (form, steered blocks, rank) it scores the benchmark's queries with the gradient
dot products restricted to one infinitesimal operator of that family, and reports their LDS next
to the full-parameter gradient dot product (`graddot`, the same quantity without the
restriction). A family whose restricted LDS is low cannot carry the signal, however well its
operators are trained.

Reads the models, data and ground truths that `bench/lds.py` left under --out (run it first).
Prints the configuration and a table; writes operator_families.json under --out.

    python -m bench.operator_families [--out runs/bench_lds] [--regimes finetune scratch]
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

import torch

from bench.regime_folders import ground_truth_folder
from stride.api import attribute, load_scores
from stride.core.jsonio import write_json
from stride.evaluation.groundtruth import load_groundtruth
from stride.evaluation.lds import evaluate_lds

FAMILIES = {
    "logit r16 (STRIDE default)": {"form": "logit", "rank": 16},
    "logit r64": {"form": "logit", "rank": 64},
    "logit full width": {"form": "logit", "rank": 0},
    "logit r16, blocks 0+1": {"form": "logit", "rank": 16, "layers": [0, 1]},
    "logit full width, blocks 0+1": {"form": "logit", "rank": 0, "layers": [0, 1]},
    "residual r16": {"form": "residual", "rank": 16},
    "residual full width": {"form": "residual", "rank": 0},
    "residual r16, block 0": {"form": "residual", "rank": 16, "layers": [0]},
    "residual full width, block 0": {"form": "residual", "rank": 0, "layers": [0]},
    "residual full width, blocks 0+1": {"form": "residual", "rank": 0, "layers": [0, 1]},
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="runs/bench_lds")
    parser.add_argument("--regimes", nargs="+", default=["finetune", "scratch"])
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print("configuration:", json.dumps({**vars(args), "families": FAMILIES}))
    rows = []
    for regime in args.regimes:
        root = Path(args.out) / regime
        truth = ground_truth_folder(root)
        subsets, losses = load_groundtruth(truth)
        graddot = root / "runs" / "graddot" / "scores.safetensors"
        if graddot.exists():
            report = evaluate_lds(load_scores(graddot), subsets, losses)
            rows.append(
                {
                    "regime": regime,
                    "family": "all parameters (graddot)",
                    "settings": {},
                    "lds": report.mean,
                    "ci_low": report.ci_low,
                    "ci_high": report.ci_high,
                    "seconds": None,
                }
            )
        for label, settings in FAMILIES.items():
            out = (
                root
                / "runs"
                / "operator-grad"
                / label.replace(" ", "_").replace(",", "").replace("(", "").replace(")", "")
            )
            started = time.perf_counter()
            attribute(root / "model", root / "data" / "train.jsonl", root / "data" / "queries.jsonl", out,
                      method="operator-grad", method_settings=settings, threads=args.threads, overwrite=True,
                      progress=False)  # fmt: skip
            seconds = time.perf_counter() - started
            report = evaluate_lds(load_scores(out / "scores.safetensors"), subsets, losses)
            rows.append({"regime": regime, "family": label, "settings": settings, "lds": report.mean,
                         "ci_low": report.ci_low, "ci_high": report.ci_high, "seconds": seconds})  # fmt: skip
            print(
                f"[{regime}] {label}: LDS {report.mean:.3f} [{report.ci_low:.3f}, {report.ci_high:.3f}] "
                f"in {seconds:.1f} s",
                flush=True,
            )
    print(f"\n{'regime':9} {'family':34} {'LDS':>6} {'95% CI':>17} {'seconds':>8}")
    for r in rows:
        seconds = f"{r['seconds']:.1f}" if r["seconds"] is not None else "-"
        print(
            f"{r['regime']:9} {r['family']:34} {r['lds']:6.3f} [{r['ci_low']:6.3f}, {r['ci_high']:6.3f}] {seconds:>8}"
        )
    out = Path(args.out) / "operator_families.json"
    write_json(out, {"configuration": vars(args), "rows": rows, "threads": torch.get_num_threads()})
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
