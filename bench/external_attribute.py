"""`stride attribute` on a model and data stride did not make (bench/external_model.py builds them):
wall time, peak memory (max RSS of the child process) and the contract files.

    python -m bench.external_attribute [--out runs/bench_external] [--data text|sft] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="runs/bench_external")
    parser.add_argument("--data", choices=["text", "sft"], default="text")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--config", help="STRIDE settings file (default: the package defaults)")
    args = parser.parse_args()
    out = Path(args.out)
    fixture = out / "fixture"
    print("configuration:", json.dumps(vars(args)))
    if not (fixture / "manifest.json").is_file():
        subprocess.run([sys.executable, str(Path(__file__).with_name("external_model.py")), "--out", str(fixture)],
                       check=True)  # fmt: skip
    prefix = "sft_" if args.data == "sft" else ""
    run = out / f"attribution_{args.data}"
    command = ["stride", "attribute", "--model", str(fixture / "model"),
               "--train", str(fixture / f"{prefix}train.jsonl"),
               "--queries", str(fixture / f"{prefix}queries.jsonl"), "--out", str(run), "--threads", str(args.threads),
               "--overwrite", "--quiet"]  # fmt: skip
    if args.config:
        command += ["--config", args.config]
    started = time.perf_counter()
    subprocess.run(command, check=True)
    seconds = time.perf_counter() - started
    peak_gib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 2**20
    info = json.loads((run / "info.json").read_text())
    manifest = json.loads((fixture / "manifest.json").read_text())
    tops = [json.loads(line) for line in (run / "top.jsonl").open()]
    dup_ranks = []
    for query, train_index in ((int(q), t) for q, t in manifest["duplicate_query_to_train_index"].items()):
        ranked = [e["index"] for e in tops[query]["top"]]
        dup_ranks.append(ranked.index(train_index) + 1 if train_index in ranked else None)
    result = {
        "configuration": vars(args), "wall_seconds": seconds, "peak_rss_gib": peak_gib,
        "stage_seconds": info["timings_seconds"], "n_train": info["n_train"], "n_queries": info["n_queries"],
        "model_parameters": info["model_parameters"], "duplicate_rank_in_top10": dup_ranks,
        "files": sorted(p.name for p in run.iterdir()),
    }  # fmt: skip
    print(json.dumps(result, indent=2))
    (out / f"result_{args.data}.json").write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
