"""Recovery that shrinks toward an influence estimate instead of toward zero (regression adjustment).

For each query, design by design: u = M p, the subset responses that a prior score vector p
predicts; c, the slope of the query's standardised responses y on u, taken from the *other*
design's responses (cross-fitted, as the hybrid's weight is); the Lasso (same penalty as the run)
recovers the residual y - c u; the scores are c p + that residual's Lasso solution, in loss units,
averaged over the designs. This is the regression-adjusted estimator of Witter, Liu & Musco
(arXiv 2506.11849) with a Lasso for the residual. Priors: EK-FAC's scores, and STRIDE's own
first-order scores (the operator family's restricted gradients, no extra pass).

Reads a STRIDE run with two designs (`--run`, default `stride_se`) and an EK-FAC run (`--ekfac`,
default `ekfac_issue13`) under each regime folder of --out, and the ground truth there; only the
recovery differs between rows. Prints the configuration and a table; writes prior_recovery.json.

    python -m bench.prior_recovery [--out runs/bench_lds] [--run stride_se] [--ekfac ekfac_issue13]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
from safetensors.torch import load_file

from bench.regime_folders import ground_truth_folder
from stride.core.jsonio import write_json
from stride.core.ranks import standard_units
from stride.core.sparse_rows import SparseRows
from stride.evaluation.groundtruth import load_groundtruth
from stride.evaluation.lds import evaluate_lds
from stride.method.hybrid import cross_fitted_weight, mix
from stride.method.membership import membership_matrix
from stride.method.recover import lasso_scores, standardize

MIX_GRID = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)


def stage(run: Path, name: str) -> dict[str, np.ndarray]:
    return {key: value.numpy() for key, value in load_file(str(run / "stages" / f"{name}.safetensors")).items()}


def recovered(run: Path, suffix: str) -> np.ndarray:
    """A design's stored Lasso scores (its recovery stage), dense [queries, n]."""
    rows = SparseRows.from_tensors(load_file(str(run / "stages" / f"recovery{suffix}.safetensors")))
    return rows.dense(0, rows.shape[0]).double().numpy()


def slope(responses: np.ndarray, predicted: np.ndarray) -> np.ndarray:
    """Per query, the least-squares slope (with intercept) of `responses` on `predicted` -> [queries]."""
    r = responses - responses.mean(1, keepdims=True)
    p = predicted - predicted.mean(1, keepdims=True)
    variance = (p * p).sum(1)
    return np.where(variance > 0, (r * p).sum(1) / np.where(variance > 0, variance, 1.0), 0.0)


def adjusted(designs: list[dict[str, np.ndarray]], prior: np.ndarray, n_subsets: int, penalty: float) -> np.ndarray:
    """Regression-adjusted scores [queries, n] with `prior` [queries, n] (see the module docstring)."""
    standardized = [standardize(design["responses"]) for design in designs]
    predicted = [(design["membership"] @ prior.T).T for design in designs]  # [queries, K] per design
    scores = []
    for j, design in enumerate(designs):
        other = (j + 1) % len(designs)
        y_other, _ = standardized[other]
        c = slope(y_other, predicted[other])  # in standard units per loss unit of the other design
        y, scales = standardized[j]
        residual = y - c[:, None] * predicted[j]
        lasso = lasso_scores(design["table"], n_subsets, residual, np.ones(len(y)), penalty, "scikit-learn")
        dense = lasso.dense(0, len(y)).double().numpy()
        scores.append((c[:, None] * prior + dense) * scales[:, None])
    return np.mean(scores, axis=0)


def regime_rows(root: Path, run_name: str, ekfac_name: str) -> dict[str, dict[str, float]]:
    truth = ground_truth_folder(root)
    subsets, losses = load_groundtruth(truth)
    run = root / "runs" / run_name
    info = json.loads((run / "info.json").read_text())
    n_subsets = info["settings"]["n_subsets"]
    penalty = json.loads((run / "stages" / "recovery.json").read_text())["info"]["lambda"]
    designs = []
    for suffix in ("", "_design1"):
        table = stage(run, "membership" + suffix)["example_subsets"]
        designs.append({"table": table, "membership": membership_matrix(table, n_subsets),
                        "responses": stage(run, "responses" + suffix)["responses"].astype(np.float64)})  # fmt: skip
    first_order = stage(run, "first_order_queries")["features"] @ stage(run, "first_order_train")["features"].T
    ekfac = load_file(str(root / "runs" / ekfac_name / "scores.safetensors"))["scores"].double().numpy()
    design_scores = [recovered(run, suffix) for suffix in ("", "_design1")]
    lasso = np.mean(design_scores, axis=0)
    stride = load_file(str(run / "scores.safetensors"))["scores"].double().numpy()
    candidates = {
        "stride (default: Lasso + first-order mix)": stride,
        "Lasso only (designs averaged)": lasso,
        "first-order scores alone": first_order,
        "ekfac alone": ekfac,
        "z-average stride + ekfac (no tuning)": standard_units(stride) + standard_units(ekfac),
        "regression-adjusted, prior ekfac": adjusted(designs, ekfac, n_subsets, penalty),
        "regression-adjusted, prior first-order": adjusted(designs, first_order, n_subsets, penalty),
    }  # fmt: skip
    weight, criteria = cross_fitted_weight(design_scores, [d["responses"] for d in designs],
                                           [d["membership"] for d in designs], ekfac, MIX_GRID)  # fmt: skip
    rounded = {k: round(v, 4) for k, v in criteria.items()}
    print(f"  cross-fitted weight of ekfac: {weight} (criteria {json.dumps(rounded)})")
    candidates[f"Lasso + ekfac, cross-fitted weight {weight}"] = mix(lasso, ekfac, weight)
    rows = {}
    for name, scores in candidates.items():
        report = evaluate_lds(np.asarray(scores, dtype=np.float64), subsets, losses)
        rows[name] = {"lds": report.mean, "ci_low": report.ci_low, "ci_high": report.ci_high}
        print(f"  {name:<45} {report.mean:.3f} [{report.ci_low:.3f}, {report.ci_high:.3f}]", flush=True)
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="runs/bench_lds")
    parser.add_argument("--run", default="stride_se", help="STRIDE run folder (two designs) under REGIME/runs")
    parser.add_argument("--ekfac", default="ekfac_issue13", help="EK-FAC run folder under REGIME/runs")
    parser.add_argument("--regimes", nargs="+", default=["finetune", "scratch"])
    args = parser.parse_args()
    print("configuration:", json.dumps(vars(args)))
    results = {}
    for regime in args.regimes:
        print(f"{regime}:")
        results[regime] = regime_rows(Path(args.out) / regime, args.run, args.ekfac)
    write_json(Path(args.out) / "prior_recovery.json", {"configuration": vars(args), "regimes": results})
    print(f"wrote {Path(args.out) / 'prior_recovery.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
