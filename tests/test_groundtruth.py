"""Ground truth retraining: subsets, resumption, and the lds command on its output."""

import json

import numpy as np
import pytest
from safetensors.torch import load_file, save_file
from scipy.stats import spearmanr
import torch

from stride.api import groundtruth, lds
from stride.cli import main
from stride.evaluation.groundtruth import draw_subsets

from conftest import N_QUERIES, N_TRAIN

RECIPE = dict(n_layers=2, hidden_size=32, n_heads=2, vocab_size=320, context=64, epochs=1, learning_rate=1e-3,
              batch_size=16)  # fmt: skip


@pytest.mark.parametrize("protocol,fraction,kept", [("keep", 0.3, 30), ("leave-out", 0.05, 95)])
def test_subsets_have_the_requested_size_and_are_seeded(protocol, fraction, kept):
    subsets = draw_subsets(100, 20, protocol, fraction, seed=4)
    assert subsets.shape == (20, 100) and (subsets.sum(1) == kept).all()
    assert np.array_equal(subsets, draw_subsets(100, 20, protocol, fraction, seed=4))
    assert len({row.tobytes() for row in subsets}) == 20


@pytest.mark.slow
def test_finetune_groundtruth_resumes_and_feeds_lds(gpt2_dir, corpus, tmp_path, capsys):
    out = tmp_path / "truth"
    kwargs = dict(regime="finetune", base_dir=gpt2_dir, n_subsets=4, n_seeds=2, recipe=RECIPE, workers=2,
                  progress=False)  # fmt: skip
    summary = groundtruth(gpt2_dir, corpus["train"], corpus["queries"], out, **kwargs)
    assert summary["retrains_this_call"] == 8
    first = load_file(str(out / "losses.safetensors"))["losses"]
    assert first.shape == (2, 4, N_QUERIES) and torch.isfinite(first).all()
    # the ceiling, recomputed from the saved losses: with two seeds, the mean over queries of the Spearman
    # correlation over subsets between seed 0's and seed 1's query loss
    per_query = [spearmanr(first[0, :, q].numpy(), first[1, :, q].numpy()).statistic for q in range(N_QUERIES)]
    assert summary["ceiling_single_seed"] == pytest.approx(float(np.nanmean(per_query)), abs=1e-9)
    assert json.loads((out / "summary.json").read_text())["ceiling_single_seed"] == summary["ceiling_single_seed"]
    (out / "retrains" / "0002_1.safetensors").unlink()
    again = groundtruth(gpt2_dir, corpus["train"], corpus["queries"], out, **kwargs)
    assert again["retrains_this_call"] == 1
    assert torch.equal(load_file(str(out / "losses.safetensors"))["losses"], first)

    scores = tmp_path / "scores.safetensors"
    save_file({"scores": torch.randn(N_QUERIES, N_TRAIN)}, str(scores))
    assert main(["lds", "--scores", str(scores), "--groundtruth", str(out), "--out", str(tmp_path / "lds.json")]) == 0
    report = json.loads((tmp_path / "lds.json").read_text())
    assert report["n_subsets"] == 4 and (tmp_path / "lds.png").stat().st_size > 0
    assert "LDS" in capsys.readouterr().out

    save_file({"scores": torch.randn(N_QUERIES, N_TRAIN + 1)}, str(scores))
    assert main(["lds", "--scores", str(scores), "--groundtruth", str(out), "--no-plot"]) == 2
    assert "stride: error: cannot compare" in capsys.readouterr().err
