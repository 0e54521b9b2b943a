"""Recovery at scale: the batched Lasso (penalty by cross-validation, then every query's scores) on a
synthetic problem of the issue's size, against scikit-learn on a smaller one.

Synthetic problem: the package's own membership (n examples, K subsets, each example in d of them);
each query's ground truth has `--support` non-zero examples (standard normal influences), and its
responses are M w + 0.3 + noise of `--noise` times the signal's standard deviation. Timed: the lambda
rule (`cross_validated_lambda`, cross-validation on `--cv-queries` queries) and the scores
(`lasso_scores`, every query); drawing the membership and the responses is not timed. Peak memory
is the process's peak resident set (ru_maxrss), which includes everything before the solve.

Comparison: on `--compare-n` examples (same K, d, queries) the same two steps with the
"scikit-learn" solver: LassoCV on the sampled queries (its penalty is reported) and
Lasso(fit_intercept=True, tol=1e-5) on every query at the batched run's penalty; the ratio of
seconds and the largest score difference (relative to the largest score) are reported.

Target (issue 14): n = 1,000,000, K = 1000, d = 20, 500 queries in under 60 s on 2 cores and
under 8 GiB. Not measured yet at that size; `--n 20000` is a smoke run of a minute or two.

    python -m bench.recovery_scale [--n 1000000] [--queries 500] [--threads 2] [--out runs/bench_recovery]
"""

from __future__ import annotations

import argparse
import os
import resource
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np
import torch

from stride.core.jsonio import write_json
from stride.method.membership import example_subsets
from stride.method.recover import cross_validated_lambda, lasso_scores, standardize


def synthetic(n: int, k: int, d: int, queries: int, support: int, noise: float, seed: int):
    """(membership table [n, d], responses [queries, K], true supports [queries, support])."""
    table = example_subsets(n, k, d, seed)
    rng = np.random.default_rng(seed + 1)
    supports = np.stack([rng.choice(n, size=support, replace=False) for _ in range(queries)])
    signal = np.zeros((queries, k))
    for query, columns in enumerate(supports):
        np.add.at(signal[query], table[columns], rng.standard_normal(support)[:, None])
    spread = signal.std(axis=1, keepdims=True)
    responses = signal + 0.3 + noise * spread * rng.standard_normal((queries, k))
    return table, responses, supports


def peak_rss_gib() -> float:
    """The process's peak resident set so far (ru_maxrss is in KiB on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def batched(table: np.ndarray, k: int, responses: np.ndarray, cv_queries: int, seed: int) -> dict:
    """The package's recovery: lambda rule then scores, timed."""
    standardized, scales = standardize(responses)
    started = time.perf_counter()
    penalty = cross_validated_lambda(table, k, standardized, cv_queries, seed)
    chosen = time.perf_counter()
    scores = lasso_scores(table, k, standardized, scales, penalty)
    done = time.perf_counter()
    return {"lambda": penalty, "cv_seconds": chosen - started, "scores_seconds": done - chosen,
            "seconds": done - started, "scores": scores}  # fmt: skip


def scikit_learn(table: np.ndarray, k: int, responses: np.ndarray, cv_queries: int, seed: int, penalty: float) -> dict:
    """The "scikit-learn" solver: LassoCV per sampled query (timed, its penalty reported), then one
    multi-output Lasso at `penalty` (the batched run's, so that the scores compare)."""
    standardized, scales = standardize(responses)
    started = time.perf_counter()
    chosen = cross_validated_lambda(table, k, standardized, cv_queries, seed, solver="scikit-learn")
    middle = time.perf_counter()
    scores = lasso_scores(table, k, standardized, scales, penalty, solver="scikit-learn")
    done = time.perf_counter()
    return {"lambda": chosen, "cv_seconds": middle - started, "scores_seconds": done - middle,
            "seconds": done - started, "scores": scores}  # fmt: skip


def recovered_fraction(scores: np.ndarray, supports: np.ndarray) -> float:
    """Mean over queries of the fraction of true examples among the |support| largest |scores|."""
    size = supports.shape[1]
    top = np.argpartition(-np.abs(scores), size - 1, axis=1)[:, :size]
    return float(np.mean([len(set(t) & set(s)) / size for t, s in zip(top, supports)]))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=1_000_000, help="training examples (columns of M)")
    parser.add_argument("--subsets", type=int, default=1000, help="K")
    parser.add_argument("--per-example", type=int, default=20, help="d")
    parser.add_argument("--queries", type=int, default=500)
    parser.add_argument("--support", type=int, default=20, help="non-zero true influences per query")
    parser.add_argument("--noise", type=float, default=0.5, help="noise standard deviation / signal's")
    parser.add_argument("--cv-queries", type=int, default=8, help="queries the lambda rule looks at (StrideConfig)")
    parser.add_argument("--compare-n", type=int, default=20_000, help="n of the scikit-learn comparison (0: skip)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="runs/bench_recovery")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"configuration: {vars(args)}, torch threads {torch.get_num_threads()}", flush=True)
    k, d = args.subsets, args.per_example

    started = time.perf_counter()
    table, responses, supports = synthetic(args.n, k, d, args.queries, args.support, args.noise, args.seed)
    print(f"synthetic problem drawn in {time.perf_counter() - started:.1f}s (not timed below)", flush=True)
    result = batched(table, k, responses, args.cv_queries, args.seed)
    scores = result.pop("scores")
    nonzero = np.diff(scores.crow_indices.numpy())
    large = {**result, "peak_rss_gib": peak_rss_gib(), "nonzero_per_query_mean": float(nonzero.mean()),
             "nonzero_per_query_max": int(nonzero.max()),
             "recovered_fraction": recovered_fraction(scores.to_scipy().toarray(), supports)
             if args.n * args.queries <= 50_000_000 else None}  # fmt: skip
    print(f"n={args.n}: lambda {large['lambda']:.4g}; cross-validation {large['cv_seconds']:.1f}s, scores "
          f"{large['scores_seconds']:.1f}s, total {large['seconds']:.1f}s; peak RSS {large['peak_rss_gib']:.2f} GiB; "
          f"non-zeros per query {large['nonzero_per_query_mean']:.0f} (max {large['nonzero_per_query_max']})",
          flush=True)  # fmt: skip

    comparison = None
    if args.compare_n:
        table, responses, supports = synthetic(args.compare_n, k, d, args.queries, args.support, args.noise, args.seed)
        ours = batched(table, k, responses, args.cv_queries, args.seed)
        ours_scores = ours.pop("scores").to_scipy().toarray()
        theirs = scikit_learn(table, k, responses, args.cv_queries, args.seed, ours["lambda"])
        their_scores = theirs.pop("scores").to_scipy().toarray()
        difference = float(np.abs(ours_scores - their_scores).max() / max(np.abs(their_scores).max(), 1e-12))
        comparison = {"n": args.compare_n, "batched": ours, "scikit_learn": theirs,
                      "seconds_ratio": theirs["seconds"] / ours["seconds"],
                      "max_abs_difference_relative": difference}  # fmt: skip
        print(f"n={args.compare_n}: batched {ours['seconds']:.1f}s (lambda {ours['lambda']:.4g}), scikit-learn "
              f"{theirs['seconds']:.1f}s (lambda {theirs['lambda']:.4g}): {comparison['seconds_ratio']:.1f}x; "
              f"max |score difference| / max |score| {difference:.2e}", flush=True)  # fmt: skip

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "results.json", {"configuration": vars(args), "threads": torch.get_num_threads(),
                                      "large": large, "comparison": comparison})  # fmt: skip
    print(f"wrote {out / 'results.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
