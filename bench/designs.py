"""LDS against the number of independent designs, with and without the first-order mix.

For 1 .. --designs designs, STRIDE (defaults otherwise) scores the benchmark's queries twice: the
plain average of the designs' Lasso scores (`first_order_weight: 0`) and the default hybrid
(`first_order_weight: "auto"`, cross-fitted over designs; it needs two or more). All runs share
one run folder per regime, so design j is trained once and reused by every later row. Reads the
models, data and ground truths that `bench/lds.py` left under --out (run it first). Prints the
configuration and a table; writes designs.json under --out.

    python -m bench.designs [--out runs/bench_lds] [--designs 3] [--regimes finetune scratch]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch

from bench.regime_folders import ground_truth_folder
from stride.api import attribute
from stride.config import StrideConfig
from stride.core.jsonio import write_json
from stride.evaluation.groundtruth import load_groundtruth
from stride.evaluation.lds import evaluate_lds


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="runs/bench_lds")
    parser.add_argument("--designs", type=int, default=3)
    parser.add_argument("--regimes", nargs="+", default=["finetune", "scratch"])
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print("configuration:", json.dumps(vars(args)))
    rows = []
    for regime in args.regimes:
        root = Path(args.out) / regime
        subsets, losses = load_groundtruth(ground_truth_folder(root))
        for designs in range(1, args.designs + 1):
            for weight in (0.0, "auto") if designs > 1 else (0.0,):
                config = StrideConfig(designs=designs, first_order_weight=weight)
                result = attribute(root / "model", root / "data" / "train.jsonl", root / "data" / "queries.jsonl",
                                   root / "runs" / "stride_designs", config=config, threads=args.threads,
                                   progress=False)  # fmt: skip
                report = evaluate_lds(result.scores.numpy(), subsets, losses)
                stages = result.info["stages"]
                seconds = sum(info.get("seconds", 0.0) for name, info in stages.items() if name != "hybrid")
                chosen = stages.get("hybrid", {}).get("first_order_weight", 0.0)
                rows.append({"regime": regime, "designs": designs, "first_order_weight": weight,
                             "chosen_weight": chosen,
                             "lds": report.mean, "ci_low": report.ci_low, "ci_high": report.ci_high,
                             "seconds": seconds})  # fmt: skip
                print(f"[{regime}] designs {designs}, first-order weight {weight} (chosen {chosen}): LDS "
                      f"{report.mean:.3f} [{report.ci_low:.3f}, {report.ci_high:.3f}], {seconds:.0f} s of stages",
                      flush=True)  # fmt: skip
    print(f"\n{'regime':9} {'designs':>7} {'weight':>6} {'chosen':>6} {'LDS':>6} {'95% CI':>17} {'seconds':>8}")
    for r in rows:
        print(
            f"{r['regime']:9} {r['designs']:7d} {r['first_order_weight']!s:>6} {r['chosen_weight']:6.1f} "
            f"{r['lds']:6.3f} [{r['ci_low']:6.3f}, {r['ci_high']:6.3f}] {r['seconds']:8.1f}"
        )
    out = Path(args.out) / "designs.json"
    write_json(out, {"configuration": vars(args), "rows": rows, "threads": torch.get_num_threads()})
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
