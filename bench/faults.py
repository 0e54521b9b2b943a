"""Fault injection: kill long commands at random moments, rerun them, and check that nothing is lost.

For each command (STRIDE, TRAK, EK-FAC and LoGra attribution, ground-truth and counterfactual
retraining) a reference run gives the expected output and its wall time T. Each trial starts the
same command in a fresh folder, sends SIGKILL after a delay drawn uniformly from (0.05 T, 0.95 T)
(seeded), reruns the command to the end and checks that its output tensors are bit-identical to the
reference. It counts the stages the rerun reused and recomputed (info.json; retrain files for the
retraining commands). Two more cases per attribution method run into a full disk and onto a
read-only folder (a small tmpfs mounted here, which needs root; skipped with a message otherwise):
the command must end with exit status 2 and a one-line message, and rerunning once the disk is
writable again must end with the same output.

    python -m bench.faults [--trials 20] [--methods stride trak ekfac logra groundtruth counterfactual]

Writes runs/bench_faults/faults.json and prints a table.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file

ATTRIBUTION = ("stride", "trak", "ekfac", "logra")
RETRAINING = ("groundtruth", "counterfactual")
SETTINGS = {
    "stride": {"n_subsets": 48, "subsets_per_example": 6, "rank": 8, "epochs": 3, "batch_size": 16, "cv_queries": 4,
               "checkpoint_every": 5},
    "trak": {"proj_dim": 128},
    "ekfac": {},
    "logra": {"rank": 8},
}  # fmt: skip
RECIPE = dict(architecture="gpt2", n_layers=2, hidden_size=32, n_heads=2, vocab_size=320, context=64, epochs=6,
              learning_rate=1e-2, batch_size=16, seed=0)  # fmt: skip


def build_inputs(root: Path) -> dict[str, Path]:
    """A tiny GPT-2 pre-trained on 96 fortunes and 6 queries (cached in `root`)."""
    from stride.corpus import read_fortunes
    from stride.data import write_jsonl
    from stride.lm_training import LMRecipe, train_lm

    texts = list(read_fortunes("murphy", max_chars=90))[:102]
    train = write_jsonl([{"text": t} for t in texts[:96]], root / "train.jsonl")
    queries = write_jsonl([{"text": t} for t in [texts[3], texts[40], *texts[96:100]]], root / "queries.jsonl")
    model = root / "model"
    if not (model / "config.json").exists():
        train_lm(train, model, LMRecipe(**RECIPE), progress=False)
    for method, settings in SETTINGS.items():
        (root / f"{method}.json").write_text(json.dumps(settings))
    return {"model": model, "train": train, "queries": queries, "root": root}


def command(name: str, inputs: dict[str, Path], out: Path, scores: Path | None = None) -> list[str]:
    """The stride command line of one method or retraining command, writing into `out`."""
    common = ["--model", str(inputs["model"]), "--train", str(inputs["train"]), "--queries", str(inputs["queries"]),
              "--out", str(out), "--quiet", "--threads", "1"]  # fmt: skip
    if name in ATTRIBUTION:
        return ["attribute", *common, "--method", name, "--config", str(inputs["root"] / f"{name}.json")]
    retrain = ["--regime", "scratch", "--seeds", "1", "--workers", "1"]
    if name == "groundtruth":
        return ["groundtruth", *common, *retrain, "--subsets", "4"]
    return ["counterfactual", *common, *retrain, "--scores", str(scores), "--k", "5", "--queries-subset", "1"]


def output_tensors(name: str, out: Path) -> dict[str, torch.Tensor]:
    """The tensors a finished command wrote: scores, or the retrained losses."""
    return load_file(str(out / ("scores.safetensors" if name in ATTRIBUTION else "losses.safetensors")))


def run(argv: list[str], timeout: float | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "stride", *argv], capture_output=True, text=True, timeout=timeout)


def reuse_counts(name: str, out: Path, retrains_before: int) -> tuple[int, int]:
    """(reused, recomputed) stages of the last run: from info.json, or retrain files for retraining."""
    if name in ATTRIBUTION:
        stages = json.loads((out / "info.json").read_text())["stages"]
        reused = sum(1 for stage in stages.values() if stage.get("reused"))
        return reused, len(stages) - reused
    total = len(list((out / "retrains").glob("*.safetensors")))
    return retrains_before, total - retrains_before


def kill_trial(
    name: str, argv: list[str], out: Path, delay: float, reference: dict[str, torch.Tensor]
) -> dict[str, Any]:
    """Start the command, SIGKILL it after `delay` seconds, rerun it to the end, compare outputs."""
    process = subprocess.Popen([sys.executable, "-m", "stride", *argv], stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL, start_new_session=True)  # fmt: skip
    try:
        process.wait(timeout=delay)
        killed = False
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)  # the command and its retraining workers
        process.wait()
        killed = True
    retrains_before = len(list((out / "retrains").glob("*.safetensors"))) if (out / "retrains").is_dir() else 0
    rerun = run(argv, timeout=900)
    if rerun.returncode != 0:
        return {"delay": delay, "killed": killed, "rerun_exit": rerun.returncode, "error": rerun.stderr[-500:]}
    identical = all(torch.equal(tensor, output_tensors(name, out)[key]) for key, tensor in reference.items())
    reused, recomputed = reuse_counts(name, out, retrains_before)
    return {"delay": delay, "killed": killed, "rerun_exit": 0, "identical": identical, "reused": reused,
            "recomputed": recomputed}  # fmt: skip


def mount_tmpfs(folder: Path, size: str, read_only: bool = False) -> bool:
    folder.mkdir(parents=True, exist_ok=True)
    options = f"size={size}" + (",ro" if read_only else "")
    return (
        subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(folder)], capture_output=True).returncode
        == 0
    )


def disk_cases(name: str, inputs: dict[str, Path], scratch: Path, reference: dict[str, torch.Tensor]) -> dict[str, Any]:
    """A full disk, then a read-only folder: exit 2 with one line, and the same output once writable."""
    results: dict[str, Any] = {}
    full = scratch / f"{name}_full"
    if not mount_tmpfs(full, "64k"):
        return {"skipped": "cannot mount a tmpfs here (needs root)"}
    try:
        failed = run(command(name, inputs, full / "run"), timeout=900)
        lines = failed.stderr.strip().splitlines()
        results["disk_full"] = {"exit": failed.returncode, "message": lines[-1] if lines else "",
                                "traceback": "Traceback" in failed.stderr}  # fmt: skip
        moved = scratch / f"{name}_moved"
        shutil.copytree(full / "run", moved)  # what was written before the disk filled up, on a roomy disk
    finally:
        subprocess.run(["umount", str(full)], capture_output=True)
    again = run(command(name, inputs, moved), timeout=900)
    results["disk_full"]["rerun_identical"] = again.returncode == 0 and all(
        torch.equal(t, output_tensors(name, moved)[k]) for k, t in reference.items()
    )
    locked = scratch / f"{name}_ro"
    if mount_tmpfs(locked, "16m", read_only=True):
        try:
            refused = run(command(name, inputs, locked / "run"), timeout=900)
            lines = refused.stderr.strip().splitlines()
            results["read_only"] = {"exit": refused.returncode, "message": lines[-1] if lines else "",
                                    "traceback": "Traceback" in refused.stderr}  # fmt: skip
        finally:
            subprocess.run(["umount", str(locked)], capture_output=True)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trials", type=int, default=20)
    parser.add_argument("--methods", nargs="+", default=[*ATTRIBUTION, *RETRAINING])
    parser.add_argument("--out", default="runs/bench_faults")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(1)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    inputs = build_inputs(out)
    print(f"config: trials={args.trials} methods={args.methods} seed={args.seed} threads per command=1")
    rng = random.Random(args.seed)
    results: dict[str, Any] = {"config": vars(args), "methods": {}}
    scratch = Path(tempfile.mkdtemp(prefix="faults-", dir=out))
    reference_scores = scratch / "reference_stride"
    for name in args.methods:
        reference_dir = scratch / f"reference_{name}"
        argv = command(name, inputs, reference_dir, scores=reference_scores)
        if name == "counterfactual" and not reference_scores.exists():
            run(command("stride", inputs, reference_scores), timeout=900)
        started = time.perf_counter()
        done = run(argv, timeout=1800)
        seconds = time.perf_counter() - started
        if done.returncode != 0:
            results["methods"][name] = {"reference_failed": done.stderr[-500:]}
            print(f"{name}: the reference run failed:\n{done.stderr[-500:]}")
            continue
        reference = output_tensors(name, reference_dir)
        trials = []
        for trial in range(args.trials):
            folder = scratch / f"{name}_{trial}"
            delay = rng.uniform(0.05, 0.95) * seconds
            trials.append(kill_trial(name, command(name, inputs, folder, scores=reference_scores), folder, delay,
                                     reference))  # fmt: skip
            shutil.rmtree(folder, ignore_errors=True)
        entry: dict[str, Any] = {"reference_seconds": seconds, "trials": trials}
        if name in ATTRIBUTION:
            entry["disk"] = disk_cases(name, inputs, scratch, reference)
        results["methods"][name] = entry
        summary = summarise(trials)
        entry["summary"] = summary
        print(f"{name:>15}: {summary}  (reference {seconds:.1f} s)")
        (out / "faults.json").write_text(json.dumps(results, indent=2))
    shutil.rmtree(scratch, ignore_errors=True)
    print(f"wrote {out / 'faults.json'}")


def summarise(trials: list[dict[str, Any]]) -> dict[str, Any]:
    """Killed / identical / failed counts and the mean reused and recomputed stages of the reruns."""
    finished = [t for t in trials if t.get("rerun_exit") == 0]
    killed = [t for t in finished if t["killed"]]
    return {
        "trials": len(trials),
        "killed": sum(t["killed"] for t in trials),
        "reruns_failed": len(trials) - len(finished),
        "identical": sum(bool(t.get("identical")) for t in finished),
        "mean_reused_after_kill": round(sum(t["reused"] for t in killed) / max(1, len(killed)), 2),
        "mean_recomputed_after_kill": round(sum(t["recomputed"] for t in killed) / max(1, len(killed)), 2),
    }


if __name__ == "__main__":
    main()
