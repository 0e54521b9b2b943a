"""What bad input must not cost: a refused or failed run keeps the finished one, damaged stages are
recomputed, worker errors stop the pool. (The one-line messages are in the catalogue,
tests/bad_inputs.yaml, run by test_bad_input_catalogue.py.)"""

import errno
import json
import os
import shutil

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from stride.cli import main
from stride.data import write_jsonl

FAST = {"n_subsets": 8, "subsets_per_example": 2, "rank": 2, "epochs": 1, "cv_queries": 2}


@pytest.fixture()
def config_file(tmp_path):
    path = tmp_path / "fast.json"
    path.write_text(json.dumps(FAST))
    return path


def _attribute(model, train, queries, out, config, *extra):
    return main(["attribute", "--model", str(model), "--train", str(train), "--queries", str(queries),
                 "--out", str(out), "--config", str(config), "--quiet", *extra])  # fmt: skip


def _scores(folder):
    return load_file(str(folder / "scores.safetensors"))["scores"]


def _expect_error(capsys, code, *fragments):
    err = capsys.readouterr().err
    assert code == 2, err
    line = err.strip().splitlines()[-1]
    assert line.startswith("stride: error:"), err
    assert "Traceback" not in err
    for fragment in fragments:
        assert fragment in line, line


def test_output_folder_with_other_settings_is_refused_unless_overwrite(gpt2_dir, corpus, tmp_path, config_file, capsys):
    out = tmp_path / "run"
    assert _attribute(gpt2_dir, corpus["train"], corpus["queries"], out, config_file) == 0
    other = tmp_path / "other.json"
    other.write_text(json.dumps({**FAST, "rank": 3}))
    code = _attribute(gpt2_dir, corpus["train"], corpus["queries"], out, other)
    _expect_error(capsys, code, "other settings", "rank", "--overwrite")
    assert _attribute(gpt2_dir, corpus["train"], corpus["queries"], out, other, "--overwrite") == 0
    assert json.loads((out / "info.json").read_text())["settings"]["rank"] == 3


def test_too_long_sequences_are_truncated_with_a_warning(gpt2_dir, tmp_path, config_file):
    long_texts = [{"text": " ".join(["attribution"] * 200)}] + [{"text": f"short line {i}"} for i in range(15)]
    train = write_jsonl(long_texts, tmp_path / "long.jsonl")
    with pytest.warns(UserWarning, match="1 of 16 example.s. are longer than 64 tokens and were truncated"):
        assert _attribute(gpt2_dir, train, train, tmp_path / "o", config_file) == 0
    info = json.loads((tmp_path / "o" / "info.json").read_text())
    assert info["truncated"] == {"train": 1, "queries": 1}


def test_a_failed_overwrite_keeps_the_old_run_aside_and_a_finished_one_deletes_it(
    gpt2_dir, corpus, tmp_path, config_file, monkeypatch, capsys
):
    out = tmp_path / "run"
    assert _attribute(gpt2_dir, corpus["train"], corpus["queries"], out, config_file) == 0
    old_scores = _scores(out)

    def full_disk(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(out / "stages" / "x.safetensors"))

    with monkeypatch.context() as patch:
        patch.setattr("stride.core.arrays.save_file", full_disk)
        code = _attribute(gpt2_dir, corpus["train"], corpus["queries"], out, config_file, "--overwrite")
    _expect_error(capsys, code, "No space left on device", "rerun")
    (aside,) = out.glob(".replaced-*")
    assert torch.equal(_scores(aside), old_scores)
    assert _attribute(gpt2_dir, corpus["train"], corpus["queries"], out, config_file, "--overwrite") == 0
    assert not list(out.glob(".replaced-*"))
    assert torch.equal(_scores(out), old_scores)


def test_a_damaged_stage_is_reported_and_recomputed_to_the_same_scores(gpt2_dir, corpus, tmp_path, config_file):
    out = tmp_path / "run"
    assert _attribute(gpt2_dir, corpus["train"], corpus["queries"], out, config_file) == 0
    scores = _scores(out)
    operators = out / "stages" / "operators.safetensors"
    operators.write_bytes(operators.read_bytes()[:-64])
    with pytest.warns(UserWarning, match="stage 'operators' .* is damaged .*recomputing it"):
        assert _attribute(gpt2_dir, corpus["train"], corpus["queries"], out, config_file) == 0
    assert torch.equal(_scores(out), scores)
    info = json.loads((out / "info.json").read_text())
    assert not info["stages"]["operators"]["reused"] and info["stages"]["membership"]["reused"]


def test_an_unreadable_checkpoint_restarts_operator_training(gpt2_dir, corpus, tmp_path, config_file):
    out = tmp_path / "run"
    assert _attribute(gpt2_dir, corpus["train"], corpus["queries"], out, config_file) == 0
    scores = _scores(out)
    shutil.copy(out / "stages" / "operators.json", tmp_path / "operators.json")
    (out / "stages" / "operators.json").unlink()  # as if killed while training: a checkpoint, no stage
    (out / "stages" / "operators.ckpt").write_bytes(b"not a checkpoint")
    (out / "stages" / "operators.ckpt.json").write_text((tmp_path / "operators.json").read_text())
    with pytest.warns(UserWarning, match="cannot be read.*training starts over"):
        assert _attribute(gpt2_dir, corpus["train"], corpus["queries"], out, config_file) == 0
    assert torch.equal(_scores(out), scores)


def test_a_worker_that_cannot_start_fails_its_first_job():
    from stride.errors import StrideError
    from stride.evaluation import groundtruth

    groundtruth._init_worker({"model": "/nonexistent/model", "recipe": {"context": 8}}, 1)
    try:
        with pytest.raises(StrideError, match="model directory not found"):
            groundtruth._retrain(("subset 0", 0, np.arange(3), "/nonexistent/out.safetensors"))
    finally:
        groundtruth._WORKER.clear()
