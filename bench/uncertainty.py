"""Is STRIDE's standard error informative? Per query, the mean standard error of its scores (relative
to their spread) against the query's LDS: a calibrated error is larger where the scores are worse.

    python -m bench.uncertainty --out runs/bench_lds [--tag _se]
    python -m bench.uncertainty --out runs/bench_matrix --matrix [--tag _se]

Reads the STRIDE run folders that `python -m bench.lds --methods stride --tag TAG` wrote (two or more
designs, so `scores.safetensors` holds `scores_se`) and their `lds.json`; writes OUT/uncertainty.json.
With `--matrix`, the language-model cells of `python -m bench.matrix` under OUT instead, and two more
checks per cell:
- the same correlation with each query's seed-vs-seed ceiling partialled out (is the standard error
  more than a sign of a query whose retrained losses are noisy?);
- per score: the Spearman correlation, within each query, between a score's standard error and its
  error against the ground truth's difference of means (mean loss over the halves that hold the
  example minus over those that do not, fitted to the scores per query), with the share of that
  difference's variance the scores explain, which bounds what this check can see.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from safetensors.numpy import load_file
from scipy.stats import rankdata, spearmanr

from bench.matrix import groundtruth_folder
from stride.evaluation.groundtruth import load_groundtruth


def _values(per_query: list[float | None]) -> np.ndarray:
    return np.array([np.nan if value is None else value for value in per_query], dtype=np.float64)


def _rank_residuals(values: np.ndarray, control: np.ndarray) -> np.ndarray:
    """The ranks of `values` less their least-squares fit on the ranks of `control`."""
    ranks, control_ranks = rankdata(values), rankdata(control)
    return ranks - np.polyval(np.polyfit(control_ranks, ranks, 1), control_ranks)


def _scores(run: Path) -> tuple[np.ndarray, np.ndarray]:
    arrays = load_file(str(run / "scores.safetensors"))
    if "scores_se" not in arrays:
        raise SystemExit(f"{run} has no scores_se (a STRIDE run with two or more designs is needed)")
    return arrays["scores"].astype(np.float64), arrays["scores_se"].astype(np.float64)


def query_calibration(run: Path) -> dict[str, float]:
    """Spearman correlation over queries between the relative standard error and the LDS, and (when
    `lds.json` has the per-query ceiling) the same with the ceiling partialled out."""
    scores, errors = _scores(run)
    report = json.loads((run / "lds.json").read_text())
    lds = _values(report["per_query"])
    relative = errors.mean(axis=1) / np.where(scores.std(axis=1) > 0, scores.std(axis=1), 1.0)
    kept = np.isfinite(lds)
    rho, p_value = spearmanr(relative[kept], lds[kept])
    result = {"queries": int(kept.sum()), "median_relative_se": float(np.median(relative)),
              "spearman_relative_se_vs_lds": float(rho), "p_value": float(p_value)}  # fmt: skip
    if "ceiling_per_query" in report:
        ceiling = _values(report["ceiling_per_query"])
        kept &= np.isfinite(ceiling)
        partial = np.corrcoef(_rank_residuals(relative[kept], ceiling[kept]),
                              _rank_residuals(lds[kept], ceiling[kept]))[0, 1]  # fmt: skip
        result["partial_spearman_given_ceiling"] = float(partial)
    return result


def difference_of_means(subsets: np.ndarray, losses: np.ndarray) -> np.ndarray:
    """[n_train, n_queries]: mean retrained loss over the halves that hold each example minus the
    mean over those that do not (losses averaged over seeds first)."""
    held = subsets.astype(np.float64)
    mean_losses = losses.mean(axis=0)
    inside = held.T @ mean_losses / held.sum(axis=0)[:, None]
    outside = (1.0 - held).T @ mean_losses / (1.0 - held).sum(axis=0)[:, None]
    return inside - outside


def score_calibration(run: Path, groundtruth: Path) -> dict[str, float]:
    """Per query, Spearman between each score's standard error and its absolute error against the
    (sign-flipped, least-squares fitted) difference of means; averaged over queries, beside the mean
    share of the difference of means that the scores explain."""
    scores, errors = _scores(run)
    target = -difference_of_means(*load_groundtruth(groundtruth))  # a positive score lowers the loss
    rhos, explained = [], []
    for query in range(scores.shape[0]):
        fit = np.polyfit(scores[query], target[:, query], 1)
        residual = np.abs(target[:, query] - np.polyval(fit, scores[query]))
        rhos.append(spearmanr(errors[query], residual)[0])
        explained.append(np.corrcoef(scores[query], target[:, query])[0, 1] ** 2)
    return {"spearman_se_vs_abs_error": float(np.nanmean(rhos)), "r2_scores_vs_difference": float(np.mean(explained))}


def matrix_calibration(out: Path, tag: str) -> dict[str, dict[str, float]]:
    """Both checks on every language-model cell of the benchmark matrix under `out`."""
    cells = json.loads((out / "matrix.json").read_text())["cells"]
    results = {}
    for name, cell in cells.items():
        run = out / name / "runs" / f"stride{tag}"
        groundtruth = groundtruth_folder(out / name, cell["n_subsets"], cell["n_seeds"])
        if cell["regime"] == "classifier" or not (run / "lds.json").is_file():
            continue
        results[name] = {"half": cell["half"], **query_calibration(run), **score_calibration(run, groundtruth)}
        print(name, {key: round(value, 3) if isinstance(value, float) else value
                     for key, value in results[name].items()})  # fmt: skip
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="runs/bench_lds")
    parser.add_argument("--tag", default="")
    parser.add_argument("--matrix", action="store_true", help="the benchmark matrix's cells under --out")
    args = parser.parse_args()
    print(f"configuration: out={args.out} tag={args.tag!r} matrix={args.matrix}")
    out = Path(args.out)
    if args.matrix:
        results = matrix_calibration(out, args.tag)
    else:
        results = {}
        for regime in ("finetune", "scratch"):
            run = out / regime / "runs" / f"stride{args.tag}"
            if run.is_dir():
                results[regime] = query_calibration(run)
                print(regime, results[regime])
    (out / "uncertainty.json").write_text(json.dumps(results, indent=2))
    print(f"wrote {out / 'uncertainty.json'}")


if __name__ == "__main__":
    main()
