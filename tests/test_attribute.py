"""End to end: STRIDE on tiny models trained inside the test session."""

import json

import pytest
import torch
from safetensors.torch import load_file

from stride.api import attribute
from stride.config import StrideConfig
from stride.data import write_jsonl
from stride.errors import StrideError
from stride.lm_training import LMRecipe, train_lm
from stride.method.attributor import DESIGN_SEED_STRIDE, StrideAttributor

from conftest import N_QUERIES, N_TRAIN, TINY_RECIPE

SMALL = dict(n_subsets=48, subsets_per_example=6, rank=8, epochs=4, batch_size=16, learning_rate=3e-2, designs=1,
             cv_queries=4, checkpoint_every=5)  # fmt: skip


def _run(model_dir, corpus, out, **overrides):
    config = StrideConfig(**{**SMALL, **overrides})
    return attribute(model_dir, corpus["train"], corpus["queries"], out, config=config, seed=0, progress=False)


@pytest.mark.parametrize("form", ["residual", "logit", "shared_logit", "hashed_logit"])
def test_contract_files_and_exact_duplicates_rank_top5(form, gpt2_dir, corpus, tmp_path):
    result = _run(gpt2_dir, corpus, tmp_path / "run", form=form)
    scores = load_file(str(tmp_path / "run" / "scores.safetensors"))["scores"]
    assert scores.shape == (N_QUERIES, N_TRAIN) and scores.dtype == torch.float32
    for query, duplicate in ((0, 3), (1, 40)):
        top5 = torch.argsort(scores[query], descending=True)[:5].tolist()
        assert duplicate in top5, f"{form}: training example {duplicate} not in query {query}'s top 5: {top5}"
    info = json.loads((tmp_path / "run" / "info.json").read_text())
    assert info["n_train"] == N_TRAIN and info["settings"]["n_subsets"] == 48
    assert set(info["timings_seconds"]) >= {"membership", "operators", "responses", "recovery", "total"}
    top = [json.loads(line) for line in (tmp_path / "run" / "top.jsonl").open()]
    assert len(top) == N_QUERIES and len(top[0]["top"]) == 10 and len(top[0]["bottom"]) == 10
    assert top[0]["top"][0]["score"] >= top[0]["top"][-1]["score"] >= top[0]["bottom"][0]["score"]
    assert result.scores.shape == scores.shape


def test_learning_rate_auto_is_resolved_for_the_model_width_and_recorded(corpus, tmp_path):
    wide = LMRecipe(architecture="llama", **{**TINY_RECIPE, "n_layers": 1, "hidden_size": 192, "epochs": 1})
    model_dir = train_lm(corpus["train"], tmp_path / "wide", wide, progress=False)
    settings = {key: value for key, value in SMALL.items() if key != "learning_rate"}
    result = attribute(model_dir, corpus["train"], corpus["queries"], tmp_path / "run",
                       config=StrideConfig(**{**settings, "epochs": 1}), progress=False)  # fmt: skip
    assert result.info["settings"]["learning_rate"] == pytest.approx(3e-3 * 96 / 192)


def test_same_seed_gives_identical_scores_and_reruns_skip_stages(llama_dir, corpus, tmp_path):
    first = _run(llama_dir, corpus, tmp_path / "a", epochs=2).scores
    second = _run(llama_dir, corpus, tmp_path / "b", epochs=2).scores
    assert torch.equal(first, second)
    rerun = _run(llama_dir, corpus, tmp_path / "a", epochs=2)
    assert torch.equal(rerun.scores, first)
    assert all(stage["reused"] for stage in rerun.info["stages"].values())
    other_seed = attribute(llama_dir, corpus["train"], corpus["queries"], tmp_path / "c",
                           config=StrideConfig(**{**SMALL, "epochs": 2}), seed=1, progress=False).scores  # fmt: skip
    assert not torch.equal(first, other_seed)


def test_run_killed_during_operator_training_resumes_to_the_same_scores(gpt2_dir, corpus, tmp_path, monkeypatch):
    reference = _run(gpt2_dir, corpus, tmp_path / "whole").scores

    def interrupt(step):
        if step == 16:
            raise KeyboardInterrupt

    monkeypatch.setattr(StrideAttributor, "_on_step", staticmethod(interrupt))
    with pytest.raises(KeyboardInterrupt):
        _run(gpt2_dir, corpus, tmp_path / "killed")
    assert (tmp_path / "killed" / "stages" / "operators.ckpt").exists()
    monkeypatch.undo()
    resumed = _run(gpt2_dir, corpus, tmp_path / "killed")
    assert resumed.info["stages"]["operators"]["resumed_from_step"] == 15
    assert torch.equal(resumed.scores, reference)


def test_designs_average_independent_runs_and_reuse_the_first(gpt2_dir, corpus, tmp_path):
    """designs=2 is the mean of the runs with seeds 0 and DESIGN_SEED_STRIDE (at the penalty chosen
    on the first); a run with one design in the same folder keeps its stages."""
    single = _run(gpt2_dir, corpus, tmp_path / "run", epochs=2)
    penalty = single.info["stages"]["recovery"]["lambda"]
    config = StrideConfig(**{**SMALL, "epochs": 2, "lambda_rule": "fixed", "lasso_lambda": penalty})
    second = attribute(gpt2_dir, corpus["train"], corpus["queries"], tmp_path / "other", config=config,
                       seed=DESIGN_SEED_STRIDE, progress=False)  # fmt: skip
    both = _run(gpt2_dir, corpus, tmp_path / "run", epochs=2, designs=2, first_order_weight=0)
    assert torch.allclose(both.scores, (single.scores + second.scores) / 2)
    # each score's standard error: the two designs' spread, std / sqrt(2) = |difference| / 2
    stored = load_file(str(tmp_path / "run" / "scores.safetensors"))
    assert torch.allclose(stored["scores_se"], (single.scores - second.scores).abs() / 2, atol=1e-7)
    top = json.loads((tmp_path / "run" / "top.jsonl").read_text().splitlines()[0])["top"][0]
    assert top["se"] == pytest.approx(float(stored["scores_se"][0, top["index"]]))
    assert "scores_se" not in load_file(str(tmp_path / "other" / "scores.safetensors"))  # one design: none
    stages = both.info["stages"]
    assert stages["operators"]["reused"] and not stages["operators_design1"]["reused"]
    assert set(stages) >= {"membership_design1", "responses_design1", "recovery_design1"}
    hybrid = _run(gpt2_dir, corpus, tmp_path / "run", epochs=2, designs=2)  # first_order_weight "auto"
    chosen = hybrid.info["stages"]["hybrid"]
    assert chosen["first_order_weight"] in chosen["criteria"] and len(chosen["criteria"]) > 1
    assert hybrid.info["stages"]["recovery_design1"]["reused"]
    for query, duplicate in ((0, 3), (1, 40)):
        assert int(hybrid.scores[query].argmax()) == duplicate


def test_new_queries_reuse_the_operators_of_an_earlier_run(gpt2_dir, corpus, tmp_path):
    """--reuse-from copies the query-independent stages: same scores as a run from nothing, and
    only the query stages are computed."""
    config = StrideConfig(**{**SMALL, "epochs": 2, "designs": 2})
    new_queries = write_jsonl([{"text": line} for line in ("Anything that can go wrong will.", "Nothing is easy.")],
                              tmp_path / "new_queries.jsonl")  # fmt: skip
    attribute(gpt2_dir, corpus["train"], corpus["queries"], tmp_path / "first", config=config, progress=False)
    fresh = attribute(gpt2_dir, corpus["train"], new_queries, tmp_path / "fresh", config=config, progress=False)
    reused = attribute(gpt2_dir, corpus["train"], new_queries, tmp_path / "reused", config=config, progress=False,
                       reuse_from=tmp_path / "first")  # fmt: skip
    assert torch.equal(fresh.scores, reused.scores)
    stages = reused.info["stages"]
    for name in ("membership", "operators", "operators_design1", "first_order_train"):
        assert stages[name]["reused"], name
    for name in ("responses", "responses_design1", "recovery", "first_order_queries"):
        assert not stages[name]["reused"], name
    with pytest.raises(StrideError, match="no run folder to reuse"):
        attribute(gpt2_dir, corpus["train"], new_queries, tmp_path / "other", config=config, progress=False,
                  reuse_from=tmp_path / "missing")  # fmt: skip
