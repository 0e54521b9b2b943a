"""STRIDE's LDS with the frozen model in another dtype (default bfloat16) on the `lds` benchmarks.

Runs `stride.api.attribute(..., dtype=DTYPE)` with default settings on each regime folder that
`python -m bench.lds` filled under --out (its model, data and largest ground truth) into
`REGIME/runs/stride_DTYPE`, and prints and writes the LDS with its CI; compare with the float32
`stride` row of the same benchmark. Prints the configuration and figures; writes
OUT/precision_DTYPE.json.

    python -m bench.precision_lds [--out runs/bench_lds] [--dtype bfloat16] [--device cpu]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from bench.regime_folders import ground_truth_folder
from stride.api import attribute, lds
from stride.core.jsonio import write_json


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="runs/bench_lds")
    parser.add_argument("--regimes", nargs="+", default=["finetune", "scratch"])
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print("configuration:", json.dumps(vars(args)))
    results = {}
    for regime in args.regimes:
        root = Path(args.out) / regime
        run = root / "runs" / f"stride_{args.dtype}"
        started = time.perf_counter()
        attribute(root / "model", root / "data" / "train.jsonl", root / "data" / "queries.jsonl", run,
                  dtype=args.dtype, device=args.device, threads=args.threads, progress=False)  # fmt: skip
        report = lds(run / "scores.safetensors", ground_truth_folder(root))
        results[regime] = {"lds": report.mean, "ci_low": report.ci_low, "ci_high": report.ci_high,
                           "seconds": time.perf_counter() - started}  # fmt: skip
        print(f"{regime}: LDS {report.mean:.3f} [{report.ci_low:.3f}, {report.ci_high:.3f}]", flush=True)
    write_json(Path(args.out) / f"precision_{args.dtype}.json", {"configuration": vars(args), "regimes": results})
    return 0


if __name__ == "__main__":
    sys.exit(main())
