"""torchrun sharding: gloo processes on loopback give a single-process run's scores and stages (training
shared by design, measurement and recovery by (design, query block)), and resume."""

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

import stride.method.attributor as stride_attributor
from stride.config import StrideConfig
from stride.data import load_data
from stride.distributed import Shard
from stride.method import query_blocks
from stride.models import load_causal_lm
from stride.store import RunStore

SMALL = dict(n_subsets=48, subsets_per_example=6, rank=8, epochs=4, batch_size=16, learning_rate=3e-2, designs=2,
             cv_queries=4, checkpoint_every=2)  # fmt: skip
LIMIT = 600  # seconds: an unmatched collective would hang, so every job has a time limit
# passes of 2 queries (K = 48): query blocks of 1 measure in blocks of 2; the batched solver fits a block's queries together
BLOCKS = {**SMALL, "measure_rows": 96, "lasso_solver": "batched"}
LAUNCHER = """import sys
from stride.method import query_blocks
query_blocks.QUERY_BLOCK = {block}
from stride.cli import main
sys.exit(main())
"""


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _command(processes, model, corpus, out, config, block=None):
    """`stride attribute` in one process or under torchrun; `block`: QUERY_BLOCK for the run (a launcher sets it)."""
    entry = ["-m", "stride"] if block is None else [str(_launcher(out.parent, block))]
    stride = [*entry, "attribute", "--model", str(model), "--train", str(corpus["train"]), "--queries",
              str(corpus["queries"]), "--out", str(out), "--config", str(config), "--threads", "1", "--quiet"]  # fmt: skip
    if processes == 1:
        return [sys.executable, *stride]
    return [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(processes), "--master-addr",
            "127.0.0.1", "--master-port", str(_free_port()), *stride]  # fmt: skip


def _launcher(folder, block):
    path = folder / f"stride_block{block}.py"
    path.write_text(LAUNCHER.format(block=block))
    return path


def _env():
    return {**os.environ, "GLOO_SOCKET_IFNAME": "lo", "OMP_NUM_THREADS": "1", "MASTER_ADDR": "127.0.0.1"}


def _run(processes, model, corpus, out, config, block=None):
    done = subprocess.run(_command(processes, model, corpus, out, config, block), env=_env(), capture_output=True,
                          text=True, timeout=LIMIT)  # fmt: skip
    return done


def _config(folder, name, settings):
    path = folder / f"{name}.json"
    path.write_text(json.dumps(settings))
    return path


@pytest.fixture
def config_file(tmp_path):
    return _config(tmp_path, "stride", SMALL)


def _same_bytes(first, second, stages):
    return all((first / "stages" / f"{stage}.safetensors").read_bytes()
               == (second / "stages" / f"{stage}.safetensors").read_bytes() for stage in stages)  # fmt: skip


def test_sharded_runs_give_the_single_process_scores_and_stages(gpt2_dir, corpus, tmp_path):
    """Query blocks of 1 (recovery) and 2 (measurement) over 6 queries: 3 processes share 2 designs and
    the first-order features, then 6 measurement and 12 recovery blocks; 4 processes run 1 design."""
    config = _config(tmp_path, "blocks", BLOCKS)
    single = _run(1, gpt2_dir, corpus, tmp_path / "single", config, block=1)
    assert single.returncode == 0, single.stderr[-2000:]
    sharded = _run(3, gpt2_dir, corpus, tmp_path / "sharded", config, block=1)
    assert sharded.returncode == 0, sharded.stderr[-3000:]
    expected = load_file(str(tmp_path / "single" / "scores.safetensors"))
    got = load_file(str(tmp_path / "sharded" / "scores.safetensors"))
    assert torch.equal(expected["scores"], got["scores"]) and torch.equal(expected["scores_se"], got["scores_se"])
    stages = ("responses", "responses_design1", "recovery", "recovery_design1", "first_order_queries")
    assert _same_bytes(tmp_path / "single", tmp_path / "sharded", stages)
    assert (tmp_path / "sharded" / "stages" / "responses_design1_queries4-6.json").exists()
    assert (tmp_path / "sharded" / "stages" / "recovery_queries5-6.json").exists()
    assert not list((tmp_path / "single" / "stages").glob("*_queries[0-9]*"))  # one process stores whole stages only
    info = json.loads((tmp_path / "sharded" / "info.json").read_text())
    assert info["processes"] == 3
    assert info["stages"]["operators"]["reused"] and info["stages"]["operators_design1"]["reused"]
    assert sharded.stdout.count("wrote ") == 1  # rank 0 alone reports

    one_design = _run(4, gpt2_dir, corpus, tmp_path / "one", _config(tmp_path, "one", {**BLOCKS, "designs": 1}), 1)
    assert one_design.returncode == 0, one_design.stderr[-3000:]
    assert _same_bytes(tmp_path / "single", tmp_path / "one", ("responses", "recovery"))


def test_one_process_resumes_from_the_query_blocks_of_a_killed_job(gpt2_dir, corpus, tmp_path, monkeypatch):
    """Rank 0 of 2 trains and measures its blocks ([0, 2) and [4, 6)), then the job dies; one process
    measures only [2, 4) and writes the responses and scores of a run from scratch."""
    monkeypatch.setattr(query_blocks, "QUERY_BLOCK", 1)
    model, tokenizer = load_causal_lm(gpt2_dir)
    train, queries = (load_data(corpus[name], tokenizer, 64) for name in ("train", "queries"))
    config = StrideConfig(**{**BLOCKS, "designs": 1})
    measuring = stride_attributor.measured_responses
    measured = []

    def counted(steered, bank, rows, *rest):
        measured.append(len(rows))
        return measuring(steered, bank, rows, *rest)

    monkeypatch.setattr(stride_attributor, "measured_responses", counted)

    def scores(folder):
        attributor = stride_attributor.StrideAttributor(model, config, store=RunStore(folder), progress=False)
        attributor.prepare(train)
        return attributor.score(queries)

    killed = tmp_path / "killed"
    rank0 = stride_attributor.StrideAttributor(model, config, store=RunStore(killed), progress=False)
    for phase in rank0.shard_phases(train, queries, Shard(0, 2, 0))[:2]:  # training and measuring
        phase()
    assert measured == [2, 2]
    resumed, fresh = scores(killed), scores(tmp_path / "fresh")
    assert measured == [2, 2, 2, 6] and torch.equal(resumed, fresh)
    assert _same_bytes(killed, tmp_path / "fresh", ("responses", "recovery"))


def test_more_processes_than_parts_is_refused(gpt2_dir, corpus, tmp_path):
    config = tmp_path / "one.json"
    config.write_text(json.dumps({**SMALL, "designs": 1}))
    done = _run(2, gpt2_dir, corpus, tmp_path / "run", config)
    assert done.returncode != 0
    assert "torchrun started 2 processes, but no phase of this run has more than 1 independent part(s)" in done.stderr
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
