"""LDS of equal-weight mixtures of two methods' scores (each standardised per query).

Reads the run folders that `bench/lds.py` left under --out (REGIME/runs/METHOD/scores.safetensors)
and its ground truth, and asks whether two methods carry complementary signal: if a mixture beats
both parts, their errors differ. Prints the configuration and a table; writes mixtures.json.

    python -m bench.score_mixtures [--out runs/bench_lds] [--regimes finetune scratch]
        [--methods stride graddot ekfac trak tfidf]
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import sys
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from bench.regime_folders import ground_truth_folder
from stride.api import load_scores
from stride.core.jsonio import write_json
from stride.core.ranks import standard_units
from stride.evaluation.groundtruth import load_groundtruth
from stride.evaluation.lds import evaluate_lds


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="runs/bench_lds")
    parser.add_argument("--regimes", nargs="+", default=["finetune", "scratch"])
    parser.add_argument("--methods", nargs="+", default=["stride", "graddot", "ekfac", "trak", "tfidf"])
    args = parser.parse_args()
    print("configuration:", json.dumps(vars(args)))
    rows = []
    for regime in args.regimes:
        root = Path(args.out) / regime
        truth = ground_truth_folder(root)
        subsets, losses = load_groundtruth(truth)
        scores = {m: standard_units(load_scores(root / "runs" / m / "scores.safetensors")) for m in args.methods}
        for names in [(m,) for m in args.methods] + list(itertools.combinations(args.methods, 2)):
            report = evaluate_lds(sum(scores[m] for m in names) / len(names), subsets, losses)
            rows.append({"regime": regime, "ground_truth": truth.name, "mixture": "+".join(names),
                         "lds": report.mean, "ci_low": report.ci_low, "ci_high": report.ci_high})  # fmt: skip
            print(f"{regime:9} {'+'.join(names):16} {report.mean:.3f} [{report.ci_low:.3f}, {report.ci_high:.3f}]")
    out = Path(args.out) / "mixtures.json"
    write_json(out, {"configuration": vars(args), "rows": rows})
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
