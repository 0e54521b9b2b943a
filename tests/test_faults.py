"""The fast subset of bench/faults.py: SIGKILL a real `stride` process midway, rerun, same output."""

import time

import pytest
import torch

from bench import faults


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    return faults.build_inputs(tmp_path_factory.mktemp("faults"))


@pytest.mark.slow
@pytest.mark.parametrize("name", ["stride", "groundtruth"])
def test_a_command_killed_midway_resumes_to_the_same_output(name, inputs, tmp_path):
    reference_dir = tmp_path / "reference"
    started = time.perf_counter()
    assert faults.run(faults.command(name, inputs, reference_dir), timeout=600).returncode == 0
    seconds = time.perf_counter() - started
    reference = faults.output_tensors(name, reference_dir)
    trial = faults.kill_trial(name, faults.command(name, inputs, tmp_path / "run"), tmp_path / "run", 0.8 * seconds,
                              reference)  # fmt: skip
    assert trial["rerun_exit"] == 0, trial
    assert trial["identical"], trial
    assert all(torch.isfinite(tensor).all() for tensor in reference.values())
