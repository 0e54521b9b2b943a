"""The elastic net instead of the Lasso, on the benchmark matrix's stored STRIDE stages (issue 13:
"estimators for dense influence").

For every language-model cell of `python -m bench.matrix` under each --out, reads the default STRIDE
run's stages (both designs' memberships and subset responses, the first-order features) and recovers
each design's scores with scikit-learn's ElasticNet at every --ratios value (l1_ratio; 1 is the
Lasso), everything else as STRIDE does it: responses in per-query standard units with a free
intercept, one penalty for all queries (the median of ElasticNetCV's choice on 8 seeded queries: 15
penalties over two decades, 5 contiguous folds), scores rescaled, averaged over the designs, then
mixed with the first-order scores at the weight cross-fitted over the designs
(`stride.method.hybrid`). Only the recovery differs between columns; the l1_ratio 1 column
reproduces the run's own LDS up to the solver's tolerance. Prints the configuration and a table;
writes elastic_net.json under the first --out.

    python -m bench.elastic_net --out runs/bench_matrix [OTHER_MATRIX_OUT ...] [--ratios 1 0.5 0.1]
"""

from __future__ import annotations

import argparse
import json
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp
from safetensors.numpy import load_file
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import ElasticNet, ElasticNetCV

from bench.matrix import groundtruth_folder
from stride.core.jsonio import write_json
from stride.evaluation.groundtruth import load_groundtruth
from stride.evaluation.lds import evaluate_lds
from stride.method.hybrid import cross_fitted_weight, mix
from stride.method.membership import membership_matrix
from stride.method.recover import CV_FOLDS, CV_LAMBDAS, CV_SPAN, CV_TOL, SCORES_TOL, standardize

CV_QUERIES = 8  # STRIDE's default cv_queries


def design_stages(stages: Path, n_designs: int, n_subsets: int) -> tuple[list[np.ndarray], list[sp.csr_matrix]]:
    """The responses [n_queries, K] and memberships [K, n_train] of each of a run's `n_designs` designs."""
    responses, memberships = [], []
    for suffix in ["", *(f"_design{d}" for d in range(1, n_designs))]:
        responses.append(load_file(str(stages / f"responses{suffix}.safetensors"))["responses"].astype(np.float64))
        table = load_file(str(stages / f"membership{suffix}.safetensors"))["example_subsets"]
        memberships.append(membership_matrix(table, n_subsets))
    return responses, memberships


def elastic_net_penalty(membership: sp.csr_matrix, standardized: np.ndarray, ratio: float, seed: int) -> float:
    """Median over CV_QUERIES seeded queries of ElasticNetCV's penalty at this l1_ratio."""
    sample = np.random.default_rng(seed).choice(len(standardized), size=min(CV_QUERIES, len(standardized)),
                                                replace=False)  # fmt: skip
    chosen = []
    for query in sample:
        search = ElasticNetCV(l1_ratio=ratio, alphas=CV_LAMBDAS, eps=CV_SPAN, cv=CV_FOLDS, max_iter=5000, tol=CV_TOL)
        chosen.append(float(search.fit(membership, standardized[query]).alpha_))
    return float(np.median(chosen))


def recovered_scores(memberships: list[sp.csr_matrix], standardized: list[tuple[np.ndarray, np.ndarray]],
                     ratio: float, seed: int) -> list[np.ndarray]:  # fmt: skip
    """Each design's elastic-net scores [n_queries, n_train] in loss units, from its (membership,
    `standardize`d responses), at one penalty chosen on the first design."""
    penalty = elastic_net_penalty(memberships[0], standardized[0][0], ratio, seed)
    scores = []
    for membership, (units, scales) in zip(memberships, standardized):
        model = ElasticNet(alpha=penalty, l1_ratio=ratio, max_iter=10000, tol=SCORES_TOL)
        model.fit(membership, units.T)
        scores.append(np.atleast_2d(model.coef_) * scales[:, None])
    return scores


def cell_lds(run: Path, groundtruth: Path, ratios: list[float]) -> dict[str, dict[str, float]]:
    """LDS of the design-averaged, first-order-mixed scores at every l1_ratio."""
    settings = json.loads((run / "info.json").read_text())["settings"]
    stages = run / "stages"
    responses, memberships = design_stages(stages, settings["designs"], settings["n_subsets"])
    queries = load_file(str(stages / "first_order_queries.safetensors"))["features"].astype(np.float64)
    train = load_file(str(stages / "first_order_train.safetensors"))["features"].astype(np.float64)
    first_order = queries @ train.T
    subsets, losses = load_groundtruth(groundtruth)
    standardized = [standardize(r) for r in responses]
    results = {}
    for ratio in ratios:
        scores = recovered_scores(memberships, standardized, ratio, settings["seed"])
        weight, _ = cross_fitted_weight(scores, responses, memberships, first_order)
        average = np.mean(scores, axis=0)
        report = evaluate_lds(mix(average, first_order, weight), subsets, losses)
        nonzero = float((average != 0).mean())
        results[f"{ratio:g}"] = {"lds": report.mean, "ci_low": report.ci_low, "ci_high": report.ci_high,
                                 "first_order_weight": weight, "nonzero_fraction": nonzero}  # fmt: skip
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", nargs="+", default=["runs/bench_matrix"], help="bench.matrix output folders")
    parser.add_argument("--ratios", nargs="+", type=float, default=[1.0, 0.7, 0.5, 0.3, 0.1, 0.03])
    parser.add_argument("--run", default="stride", help="STRIDE run folder under CELL/runs (two or more designs)")
    args = parser.parse_args()
    print("configuration:", json.dumps(vars(args)), flush=True)
    warnings.simplefilter("ignore", ConvergenceWarning)
    results: dict[str, dict[str, Any]] = {}
    for out in map(Path, args.out):
        for name, cell in json.loads((out / "matrix.json").read_text())["cells"].items():
            run = out / name / "runs" / args.run
            if cell["regime"] == "classifier" or not (run / "stages" / "responses_design1.safetensors").is_file():
                continue
            per_ratio = cell_lds(run, groundtruth_folder(out / name, cell["n_subsets"], cell["n_seeds"]), args.ratios)
            results[f"{out.name}/{name}"] = {"half": cell["half"], "lds": per_ratio}
            print(f"{out.name}/{name} ({cell['half']}): "
                  + "  ".join(f"{r}: {v['lds']:.3f}" for r, v in per_ratio.items()), flush=True)  # fmt: skip
    print("\nmean LDS change against the Lasso (l1_ratio 1), per half:")
    for half in sorted({str(r["half"]) for r in results.values()}):
        rows = [r["lds"] for r in results.values() if r["half"] == half]
        changes = {ratio: np.mean([row[ratio]["lds"] - row["1"]["lds"] for row in rows]) for ratio in rows[0]}
        print(f"  {half} ({len(rows)} cells): " + "  ".join(f"{r}: {c:+.4f}" for r, c in changes.items()))
    path = Path(args.out[0]) / "elastic_net.json"
    write_json(path, {"configuration": vars(args), "cells": results})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
