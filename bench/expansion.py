"""Second-order against exact measurement of shared_logit or hashed_logit operators, on the operators of a finished
`bench.lds` run (the training stages are reused, so only the measurement and what follows differ).

For each regime: the per-query Pearson and Spearman correlations of the two measurements' responses
(mean over queries) and the LDS of each. Needs the `bench.lds` run folder RUNS/stride{TAG} made with
form shared_logit or hashed_logit and the default (exact) measurement.

    python -m bench.expansion --out /work/bench_runs/lds --tag _shared64head --regimes finetune
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch
from safetensors.torch import load_file

from stride.api import attribute, lds
from stride.config import StrideConfig
from stride.core.jsonio import write_json
from stride.core.ranks import spearman_columns
from stride.corpus import build_benchmark_corpus

SIZES = {"finetune": (1000, 100, "groundtruth_m48_s2"), "scratch": (500, 100, "groundtruth_m32_s4")}


def row_pearson(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Pearson correlation of each row of `a` with the same row of `b`."""
    a, b = a - a.mean(1, keepdim=True), b - b.mean(1, keepdim=True)
    return (a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1)).clamp_min(1e-30)


def compare(root: Path, regime: str, tag: str, threads: int) -> dict:
    n_train, n_queries, truth = SIZES[regime]
    data = build_benchmark_corpus(root / "data", n_train=n_train, n_queries=n_queries)
    exact_run = root / "runs" / f"stride{tag}"
    settings = json.loads((exact_run / "info.json").read_text())["settings"]
    fields = {field.name for field in dataclasses.fields(StrideConfig)}
    config = StrideConfig.from_dict({k: v for k, v in settings.items() if k in fields})
    if config.form not in ("shared_logit", "hashed_logit") or config.measure_expansion != "exact":
        raise SystemExit(f"{exact_run} is not an exact-measurement shared_logit or hashed_logit run")
    approximate_run = root / "runs" / f"stride{tag}_second_order"
    with tempfile.TemporaryDirectory() as trained:  # the memberships and operators only (first-order: recomputed)
        (Path(trained) / "stages").mkdir()
        for path in (exact_run / "stages").iterdir():
            if path.name.startswith(("membership", "operators")) and path.suffix in (".json", ".safetensors"):
                shutil.copy2(path, Path(trained) / "stages" / path.name)
        attribute(root / "model", data["train"], data["queries"], approximate_run, config=dataclasses.replace(
            config, measure_expansion="second_order"), threads=threads, overwrite=True, reuse_from=trained)  # fmt: skip
    row: dict = {"regime": regime, "tag": tag}
    for suffix in ("", "_design1"):
        name = f"responses{suffix}.safetensors"
        exact = load_file(str(exact_run / "stages" / name))["responses"].double()
        approximate = load_file(str(approximate_run / "stages" / name))["responses"].double()
        row[f"pearson{suffix}"] = float(row_pearson(exact, approximate).mean())
        row[f"spearman{suffix}"] = float(
            torch.as_tensor(spearman_columns(exact.T.numpy(), approximate.T.numpy())).mean()
        )
    for label, run in (("exact", exact_run), ("second_order", approximate_run)):
        report = lds(run, root / truth, run / "lds.json", run / "lds.png")
        row[f"lds_{label}"] = [report.mean, report.ci_low, report.ci_high]
    print(json.dumps(row))
    return row


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="runs/bench_lds")
    parser.add_argument("--tag", required=True, help="tag of the exact shared_logit run of bench.lds")
    parser.add_argument("--regimes", nargs="+", default=["finetune", "scratch"], choices=sorted(SIZES))
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rows = [compare(Path(args.out) / regime, regime, args.tag, args.threads) for regime in args.regimes]
    write_json(Path(args.out) / f"expansion{args.tag}.json", {"rows": rows, "threads": args.threads})
    return 0


if __name__ == "__main__":
    sys.exit(main())
