"""Is STRIDE's standard error informative? Per query, the mean standard error of its scores (relative
to their spread) against the query's LDS: a calibrated error is larger where the scores are worse.

    python -m bench.uncertainty --out runs/bench_lds [--tag _se]

Reads the STRIDE run folders that `python -m bench.lds --methods stride --tag TAG` wrote (two or more
designs, so `scores.safetensors` holds `scores_se`) and their `lds.json`; writes OUT/uncertainty.json.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from safetensors.numpy import load_file
from scipy.stats import spearmanr


def query_calibration(run: Path) -> dict[str, float]:
    """Spearman correlation over queries between the relative standard error and the LDS."""
    arrays = load_file(str(run / "scores.safetensors"))
    if "scores_se" not in arrays:
        raise SystemExit(f"{run} has no scores_se (a STRIDE run with two or more designs is needed)")
    scores, errors = arrays["scores"].astype(np.float64), arrays["scores_se"].astype(np.float64)
    per_query = json.loads((run / "lds.json").read_text())["per_query"]
    lds = np.array([np.nan if value is None else value for value in per_query])
    relative = errors.mean(axis=1) / np.where(scores.std(axis=1) > 0, scores.std(axis=1), 1.0)
    kept = np.isfinite(lds)
    rho, p_value = spearmanr(relative[kept], lds[kept])
    return {"queries": int(kept.sum()), "median_relative_se": float(np.median(relative)),
            "spearman_relative_se_vs_lds": float(rho), "p_value": float(p_value)}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="runs/bench_lds")
    parser.add_argument("--tag", default="")
    args = parser.parse_args()
    print(f"configuration: out={args.out} tag={args.tag!r}")
    results = {}
    for regime in ("finetune", "scratch"):
        run = Path(args.out) / regime / "runs" / f"stride{args.tag}"
        if run.is_dir():
            results[regime] = query_calibration(run)
            print(regime, results[regime])
    (Path(args.out) / "uncertainty.json").write_text(json.dumps(results, indent=2))
    print(f"wrote {Path(args.out) / 'uncertainty.json'}")


if __name__ == "__main__":
    main()
