"""torchrun sharding: 2 gloo processes on loopback give a single-process run's scores, and resume."""

import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file

SMALL = dict(n_subsets=48, subsets_per_example=6, rank=8, epochs=4, batch_size=16, learning_rate=3e-2, designs=2,
             cv_queries=4, checkpoint_every=2)  # fmt: skip
LIMIT = 600  # seconds: an unmatched collective would hang, so every job has a time limit


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _command(processes, model, corpus, out, config):
    stride = ["-m", "stride", "attribute", "--model", str(model), "--train", str(corpus["train"]), "--queries",
              str(corpus["queries"]), "--out", str(out), "--config", str(config), "--threads", "1", "--quiet"]  # fmt: skip
    if processes == 1:
        return [sys.executable, *stride]
    return [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(processes), "--master-addr",
            "127.0.0.1", "--master-port", str(_free_port()), *stride]  # fmt: skip


def _env():
    return {**os.environ, "GLOO_SOCKET_IFNAME": "lo", "OMP_NUM_THREADS": "1", "MASTER_ADDR": "127.0.0.1"}


def _run(processes, model, corpus, out, config):
    done = subprocess.run(_command(processes, model, corpus, out, config), env=_env(), capture_output=True,
                          text=True, timeout=LIMIT)  # fmt: skip
    return done


@pytest.fixture
def config_file(tmp_path):
    path = tmp_path / "stride.json"
    path.write_text(json.dumps(SMALL))
    return path


def test_two_processes_give_the_single_process_scores(gpt2_dir, corpus, tmp_path, config_file):
    single = _run(1, gpt2_dir, corpus, tmp_path / "single", config_file)
    assert single.returncode == 0, single.stderr[-2000:]
    sharded = _run(2, gpt2_dir, corpus, tmp_path / "sharded", config_file)
    assert sharded.returncode == 0, sharded.stderr[-3000:]
    expected = load_file(str(tmp_path / "single" / "scores.safetensors"))
    got = load_file(str(tmp_path / "sharded" / "scores.safetensors"))
    assert torch.equal(expected["scores"], got["scores"]) and torch.equal(expected["scores_se"], got["scores_se"])
    info = json.loads((tmp_path / "sharded" / "info.json").read_text())
    assert info["processes"] == 2
    assert info["stages"]["operators"]["reused"] and info["stages"]["operators_design1"]["reused"]
    assert sharded.stdout.count("wrote ") == 1  # rank 0 alone reports


def test_more_processes_than_parts_is_refused(gpt2_dir, corpus, tmp_path):
    config = tmp_path / "one.json"
    config.write_text(json.dumps({**SMALL, "designs": 1}))
    done = _run(2, gpt2_dir, corpus, tmp_path / "run", config)
    assert done.returncode != 0
    assert "torchrun started 2 processes, but this run has 1 independent part(s)" in done.stderr
    assert not (tmp_path / "run" / "run.json").exists() and not list((tmp_path / "run").glob("stages/*"))


@pytest.mark.slow
def test_a_killed_job_resumes_to_the_same_scores(gpt2_dir, corpus, tmp_path, config_file):
    reference = _run(1, gpt2_dir, corpus, tmp_path / "single", config_file)
    assert reference.returncode == 0, reference.stderr[-2000:]
    out = tmp_path / "sharded"
    job = subprocess.Popen(_command(2, gpt2_dir, corpus, out, config_file), env=_env(), stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL, start_new_session=True)  # fmt: skip
    deadline = time.monotonic() + LIMIT
    while not list(out.glob("stages/operators*.ckpt")) and time.monotonic() < deadline:
        time.sleep(0.2)
    os.killpg(job.pid, signal.SIGKILL)  # every rank dies mid-training
    job.wait(timeout=60)
    resumed = _run(2, gpt2_dir, corpus, out, config_file)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    expected = load_file(str(tmp_path / "single" / "scores.safetensors"))["scores"]
    assert torch.equal(expected, load_file(str(out / "scores.safetensors"))["scores"])
