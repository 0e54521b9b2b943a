"""Which leak rule turns attribution scores into a contamination detector? Reads the score matrices
that `bench.contamination` stored (OUT/plantingS/REGIME/runs/METHOD, and the `stride_TAG` runs of its
`--tag`) and scores each rule:
  item-z    the shipped rule (`stride.contamination`): each item's scores standardised robustly
            over the training set, the item's largest z;
  raw-max   the item's largest raw score;
  column-z  each training example's scores standardised robustly over the benchmark items (does
            this example stand out for this item more than for the other items?), the item's largest z.
AUROC, AUPRC and recall@k of the planted items, mean and 95% t-interval over plantings. Writes
OUT/leak_rules.json. Costs seconds.

    python -m bench.contamination_leak_rules --out runs/bench_contamination
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

from bench.contamination import ATTRIBUTION
from bench.selection import summarise
from stride.api import read_run
from stride.contamination import detection_metrics, robust_z
from stride.core.jsonio import write_json

RULES = {
    "item-z": lambda s: robust_z(s).max(axis=1),
    "raw-max": lambda s: s.max(axis=1),
    "column-z": lambda s: robust_z(s.T).T.max(axis=1),
}
METRICS = ("auroc", "auprc", "recall_at_n_leaked")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="runs/bench_contamination")
    args = parser.parse_args()
    root = Path(args.out)
    plantings = sorted(root.glob("planting*"))
    if not plantings:
        raise SystemExit(f"no planting folders under {root}: run python -m bench.contamination --out {root} first")
    tagged = sorted({run.name for run in root.glob("planting*/*/runs/stride_*")})  # bench.contamination --tag
    table: list[dict[str, Any]] = []
    for regime in ("finetune", "scratch"):
        for method in (*ATTRIBUTION, *tagged):
            runs = [p / regime / "runs" / method for p in plantings]
            runs = [run for run in runs if (run / "scores.safetensors").is_file()]  # finished runs only
            if not runs:
                continue
            found: dict[str, list[dict[str, Any]]] = {rule: [] for rule in RULES}
            for run in runs:
                labels = np.array(json.loads((run.parents[2] / "labels.json").read_text()))
                scores = read_run(run)[1].astype(np.float64)
                for rule, leak in RULES.items():
                    found[rule].append(detection_metrics(leak(scores), labels))
            for rule, cells in found.items():
                row = {"regime": regime, "method": method, "rule": rule, "plantings": len(cells)}
                row |= {metric: summarise([c[metric] for c in cells]) for metric in METRICS}
                table.append(row)
                print(f"{regime:9}{method:16}{rule:9}" + "".join(
                    f"  {m} {row[m]['mean']:.3f} [{row[m]['ci_low']:.2f}, {row[m]['ci_high']:.2f}]" for m in METRICS
                ), flush=True)  # fmt: skip
    write_json(root / "leak_rules.json", table)
    print(f"wrote {root / 'leak_rules.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
