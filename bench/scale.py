"""STRIDE at growing scale on this machine: model size, training-set size, recovery at a million
examples, and one process against a torchrun job. One JSON per part.

- Part `size` (issue part a): wall time and peak memory of STRIDE (one design; the default), EK-FAC and
  LoGra against model size up to GPT-2-small's shape and a 4-block Qwen2 with Qwen2's 152k vocabulary,
  as multiples of one forward pass over the training set (`bench.scale_size` says how). Writes
  OUT/size.json after every measurement and resumes from it.
- Part `n` (issue part b): a random GPT-2 (2 blocks, width 128; `bench.cost_vs_n`'s model and its
  fortune sentences, then WordNet's definitions beyond their 25,651 training sentences, then the
  whole pool again in the same order beyond its 143k texts) attributed with `stride attribute` at
  each n of `--sizes` with the settings `--n-settings` (default: one design), and `--top-k K` when
  `--n-top-k` is given (no dense scores): seconds per stage and the command's peak resident memory
  (its own process, measured by a parent that runs nothing else). Writes OUT/n.json.
- Part `recovery` (part c): `bench.recovery_scale` at n = 1,000,000 (K = 1000, d = 20, 500
  queries), its own process. Writes OUT/recovery.json (and its own results.json).
- Part `processes` (part d): the default STRIDE run (2 designs and the first-order features) on
  `--processes-n` examples as one process with 2 threads, as one process with 1 thread, then as
  `torchrun --nproc-per-node 2` with 1 thread each. Wall seconds of each command, the ratios, and
  how far the scores differ (thread counts change the order of sums only). Peak RSS is that of the
  largest single process. Operator training alone: the designs' training seconds as their stages
  recorded them, summed in one process, the longer of the two in the torchrun job (its ranks train
  one design each, at the same time). Writes OUT/processes.json.

Every command runs alone on the machine's cores; run nothing else meanwhile.

    python -m bench.scale [--parts size n recovery processes] [--sizes 1000 4000 16000]
        [--n-settings JSON] [--n-top-k K] [--size-shapes gpt2:12x768:50257 qwen2:4x896:151936]
        [--size-n 256] [--size-timeout 3600]
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import torch
from safetensors.torch import load_file

from bench.cost_vs_n import N_QUERIES, build_model, fortune_sentences
from bench.matrix_corpora import definitions_entries
from bench.measuring import measured, stride_command
from bench.scale_size import add_size_options, part_size
from stride.core.jsonio import write_json
from stride.data import write_jsonl


def training_pool(sentences: list[str], needed: int) -> list[str]:
    """`bench.cost_vs_n`'s fortune `sentences` but their last N_QUERIES (the queries), followed, when
    more than they hold are needed, by WordNet's definitions ("word: gloss") in a seeded order, then by
    repeats of that pool (for time and memory at scale): training sets up to the fortunes' size are the
    same as before."""
    pool = sentences[:-N_QUERIES]
    if needed > len(pool):
        glosses = [entry.prompt + entry.completion for entry in definitions_entries()]
        order = np.random.default_rng(0).permutation(len(glosses))
        pool += [glosses[i] for i in order]
    repeats = -(-needed // len(pool))
    return pool * repeats


def prepare(out: Path, sizes: list[int]) -> tuple[Path, Path, dict[int, Path]]:
    sentences = fortune_sentences(seed=0)
    queries = write_jsonl([{"text": t} for t in sentences[-N_QUERIES:]], out / "data" / "queries.jsonl")
    pool = training_pool(sentences, max(sizes))
    model = build_model(pool[: min(sizes)], out / "model")
    trains = {n: write_jsonl([{"text": t} for t in pool[:n]], out / "data" / f"train_{n}.jsonl") for n in sizes}
    return model, queries, trains


def part_n(out: Path, args: argparse.Namespace) -> dict[str, Any]:
    model, queries, trains = prepare(out, args.sizes)
    config = out / "settings_n.json"
    config.write_text(json.dumps(json.loads(args.n_settings)))
    top_k = ["--top-k", str(args.n_top_k)] if args.n_top_k else []
    rows = []
    for n, train in trains.items():
        run = out / "runs" / f"n{n}"
        command = stride_command(model, train, queries, run, args.threads, config) + top_k
        row: dict[str, Any] = {"n_train": n, **measured([sys.executable, *command])}
        info = json.loads((run / "info.json").read_text())
        row["stage_seconds"] = info["timings_seconds"]
        rows.append(row)
        stages = {k: round(v, 1) for k, v in row["stage_seconds"].items()}
        seconds, memory = row["wall_seconds"], row["peak_rss_gib"]
        print(f"[n={n}] {seconds:.1f} s, peak RSS {memory:.2f} GiB, stages {json.dumps(stages)}", flush=True)
        write_json(out / "n.json", {"configuration": vars(args), "rows": rows})
    return {"rows": rows}


def part_recovery(out: Path, args: argparse.Namespace) -> dict[str, Any]:
    folder = out / "recovery"
    figures = measured([sys.executable, "-m", "bench.recovery_scale", "--n", "1000000", "--compare-n", "0",
                        "--threads", str(args.threads), "--out", str(folder)])  # fmt: skip
    result = {**figures, "recovery_scale": json.loads((folder / "results.json").read_text())}
    write_json(out / "recovery.json", result)
    return result


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def operator_seconds(run: Path) -> list[float]:
    """Seconds of each design's operator training, as its stored stage recorded them."""
    return [
        json.loads(path.read_text())["info"]["seconds"] for path in sorted((run / "stages").glob("operators*.json"))
    ]


def part_processes(out: Path, args: argparse.Namespace) -> dict[str, Any]:
    model, queries, trains = prepare(out, [args.processes_n])
    train = trains[args.processes_n]
    single, one_thread_run, sharded = (out / "runs" / name for name in ("one_process", "one_thread", "two_processes"))
    one = measured([sys.executable, *stride_command(model, train, queries, single, 2, None)])
    print(f"one process, 2 threads: {one['wall_seconds']:.1f} s", flush=True)
    one_thread = measured([sys.executable, *stride_command(model, train, queries, one_thread_run, 1,
                                                           None)])  # fmt: skip
    print(f"one process, 1 thread: {one_thread['wall_seconds']:.1f} s", flush=True)
    env = {**os.environ, "MASTER_ADDR": "127.0.0.1", "GLOO_SOCKET_IFNAME": "lo", "OMP_NUM_THREADS": "1"}
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-addr", "127.0.0.1",
                "--master-port", str(_free_port())]  # fmt: skip
    two = measured([*torchrun, *stride_command(model, train, queries, sharded, 1, None)], env)
    print(f"torchrun, 2 processes x 1 thread: {two['wall_seconds']:.1f} s", flush=True)
    training = {"one_process": sum(operator_seconds(single)),
                "one_process_one_thread": sum(operator_seconds(one_thread_run)),
                "two_processes": max(operator_seconds(sharded))}  # fmt: skip
    print(f"operator training: {json.dumps(training)}", flush=True)
    a = load_file(str(single / "scores.safetensors"))["scores"].double()
    b = load_file(str(sharded / "scores.safetensors"))["scores"].double()
    result = {
        "configuration": vars(args), "n_train": args.processes_n, "one_process": one,
        "one_process_one_thread": one_thread, "two_processes": two,
        "speedup": one["wall_seconds"] / two["wall_seconds"],
        "speedup_over_one_thread": one_thread["wall_seconds"] / two["wall_seconds"],
        "operator_training_seconds": training,
        "training_speedup": training["one_process"] / training["two_processes"],
        "training_speedup_over_one_thread": training["one_process_one_thread"] / training["two_processes"],
        "max_relative_score_difference": float((a - b).abs().max() / a.abs().max()),
        "stages_one_process": json.loads((single / "info.json").read_text())["timings_seconds"],
    }  # fmt: skip
    write_json(out / "processes.json", result)
    return result


PARTS = {"size": part_size, "n": part_n, "recovery": part_recovery, "processes": part_processes}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="runs/bench_scale")
    parser.add_argument("--parts", nargs="+", default=list(PARTS), choices=list(PARTS))
    parser.add_argument("--sizes", nargs="+", type=int, default=[1000, 4000, 16000], help="training sizes of part n")
    parser.add_argument("--n-settings", default='{"designs": 1}', help="STRIDE settings of part n (JSON)")
    parser.add_argument("--n-top-k", type=int, default=0, help="part n writes only each query's top and bottom K")
    parser.add_argument("--processes-n", type=int, default=2000, help="training examples of part processes")
    parser.add_argument("--threads", type=int, default=2)
    add_size_options(parser)
    args = parser.parse_args()
    print("configuration:", json.dumps({**vars(args), "torch": torch.__version__, "cpus": os.cpu_count()}))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for part in args.parts:
        result = PARTS[part](out, args)
        print(f"{part}:", json.dumps({k: v for k, v in result.items() if k != "configuration"}, indent=1)[:3000])
    return 0


if __name__ == "__main__":
    sys.exit(main())
