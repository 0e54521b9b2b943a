"""One command in its own process group, timed, with the peak resident memory of its processes; the
`stride attribute` command line the scale benchmarks time."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

MEASURE = "import resource, subprocess, sys; code = subprocess.run(sys.argv[1:]).returncode; " \
          "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss); sys.exit(code)"  # fmt: skip
WARNING = "stride: warning: "  # how the stride command prints a warning


def measure(command: list[str], env: dict[str, str] | None = None, timeout: float | None = None) -> dict[str, Any]:
    """Run `command` under a fresh parent that reports the peak RSS of its descendants. Returns its status
    ("ok", "failed" or "timed out": then the whole process group is killed), wall seconds, peak RSS in GiB
    (None when timed out), the stride warnings it printed, what it printed on stdout and, unless ok, the
    reason (a failure's: how it ended and the last line of its stderr, whose tail is kept too)."""
    started = time.perf_counter()
    process = subprocess.Popen([sys.executable, "-c", MEASURE, *command], env=env, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, start_new_session=True)  # fmt: skip
    timed_out = False
    try:
        stdout, stderr = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        stdout, stderr = process.communicate()
        timed_out = True
    seconds = time.perf_counter() - started
    warnings = list(dict.fromkeys(line[len(WARNING) :] for line in stderr.splitlines() if line.startswith(WARNING)))
    result: dict[str, Any] = {"status": "ok", "wall_seconds": seconds, "peak_rss_gib": None, "warnings": warnings}
    lines = stdout.strip().splitlines()
    if lines and lines[-1].isdigit():
        result["peak_rss_gib"] = int(lines.pop()) / 2**20
    result["stdout"] = "\n".join(lines)
    if timed_out:
        result.update(status="timed out", reason=f"longer than {timeout:.0f} s")
    elif process.returncode != 0:
        last = stderr.strip().splitlines()[-1:] or ["no message"]
        result.update(status="failed", reason=f"{_ending(process.returncode)}: {last[0]}", stderr=stderr[-3000:])
    return result


def _ending(code: int) -> str:
    """How the measuring parent ended: its exit status, or the signal that killed the command (it exits
    with 256 - N when its child died of signal N)."""
    number = -code if code < 0 else 256 - code if code > 128 else 0
    if not number:
        return f"exit status {code}"
    return f"killed by signal {number}" + (" (out of memory?)" if number == signal.SIGKILL else "")


def measured(command: list[str], env: dict[str, str] | None = None) -> dict[str, float]:
    """`measure` for a command that must succeed: wall seconds and peak RSS in GiB."""
    result = measure(command, env)
    if result["status"] != "ok":
        raise SystemExit(f"{' '.join(command)} failed ({result['reason']}):\n{result.get('stderr', '')}")
    return {"wall_seconds": result["wall_seconds"], "peak_rss_gib": result["peak_rss_gib"]}


def stride_command(model: Path, train: Path, queries: Path, out: Path, threads: int, config: Path | None,
                   method: str = "stride") -> list[str]:  # fmt: skip
    """`python -m stride attribute` arguments (after the interpreter) for one run into `out`."""
    command = ["-m", "stride", "attribute", "--model", str(model), "--train", str(train), "--queries", str(queries),
               "--out", str(out), "--threads", str(threads), "--method", method, "--overwrite", "--quiet"]  # fmt: skip
    return command + (["--config", str(config)] if config else [])
