"""Recovery variants on stored subset responses: penalty multiples, non-negative Lasso, ridge.

Reads the first design's stages (membership, responses, recovery: the cross-validated penalty) of
a STRIDE run folder under each regime of --out (default: the folder `bench/designs.py` fills)
and re-solves the per-query problem in other ways, so only the recovery differs between rows:
the Lasso at 0.3x, 1x and 3x the chosen penalty, the non-negative Lasso at 1x, and ridge
regression at three penalties. Prints the configuration and a table; writes
recovery_variants.json under --out.

    python -m bench.recovery_variants [--out runs/bench_lds] [--run stride_designs]
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from pathlib import Path

import numpy as np
from safetensors.torch import load_file
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import Lasso, Ridge

from bench.regime_folders import ground_truth_folder
from stride.core.jsonio import write_json
from stride.evaluation.groundtruth import load_groundtruth
from stride.evaluation.lds import evaluate_lds
from stride.method.membership import membership_matrix
from stride.method.recover import standardize


def variants(penalty: float) -> dict[str, object]:
    """Row label -> a scikit-learn estimator fitted on (membership, standardised responses)."""
    lasso = dict(fit_intercept=True, max_iter=10000, tol=1e-5)
    return {
        "lasso 0.3x penalty": Lasso(alpha=0.3 * penalty, **lasso),
        "lasso (default)": Lasso(alpha=penalty, **lasso),
        "lasso 3x penalty": Lasso(alpha=3 * penalty, **lasso),
        "non-negative lasso": Lasso(alpha=penalty, positive=True, **lasso),
        "ridge 1": Ridge(alpha=1.0),
        "ridge 10": Ridge(alpha=10.0),
        "ridge 100": Ridge(alpha=100.0),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="runs/bench_lds")
    parser.add_argument("--run", default="stride_designs", help="STRIDE run folder under REGIME/runs")
    parser.add_argument("--regimes", nargs="+", default=["finetune", "scratch"])
    args = parser.parse_args()
    print("configuration:", json.dumps(vars(args)))
    rows = []
    for regime in args.regimes:
        root = Path(args.out) / regime
        subsets, losses = load_groundtruth(ground_truth_folder(root))
        stages = root / "runs" / args.run / "stages"
        responses = load_file(str(stages / "responses.safetensors"))["responses"].double().numpy()
        table = load_file(str(stages / "membership.safetensors"))["example_subsets"].numpy()
        penalty = json.loads((stages / "recovery.json").read_text())["info"]["lambda"]
        membership = membership_matrix(table, responses.shape[1])
        standardized, scales = standardize(responses)
        for label, estimator in variants(penalty).items():
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", ConvergenceWarning)
                estimator.fit(membership, standardized.T)
            scores = np.atleast_2d(estimator.coef_) * scales[:, None]
            report = evaluate_lds(scores, subsets, losses)
            rows.append({"regime": regime, "variant": label, "penalty": penalty, "lds": report.mean,
                         "ci_low": report.ci_low, "ci_high": report.ci_high,
                         "nonzero_fraction": float((scores != 0).mean())})  # fmt: skip
            print(f"[{regime}] {label}: LDS {report.mean:.3f} [{report.ci_low:.3f}, {report.ci_high:.3f}]", flush=True)
    print(f"\n{'regime':9} {'variant':20} {'LDS':>6} {'95% CI':>17} {'nonzero':>8}")
    for r in rows:
        print(
            f"{r['regime']:9} {r['variant']:20} {r['lds']:6.3f} [{r['ci_low']:6.3f}, {r['ci_high']:6.3f}] "
            f"{r['nonzero_fraction']:8.3f}"
        )
    out = Path(args.out) / "recovery_variants.json"
    write_json(out, {"configuration": vars(args), "rows": rows})
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
