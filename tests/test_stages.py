"""Every method is staged in the run store: reruns load, killed runs resume, --reuse-from reuses."""

import dataclasses
import json

import pytest
import torch

from stride.api import attribute
from stride.config import StrideConfig
from stride.data import write_jsonl
from stride.errors import StrideError
from stride.method import stages as stride_stages
from stride.store import RunStore, Stage

SETTINGS = {
    "stride": {},
    "operator-grad": {"rank": 4},
    "tfidf": {}, "bm25": {}, "repsim": {},
    "graddot": {"proj_dim": 256, "exact_max_parameters": 0}, "gradcos": {"proj_dim": 256, "exact_max_parameters": 0},
    "logra": {"rank": 8}, "trak": {"proj_dim": 128}, "ekfac": {}, "astra": {"iterations": 3},
}  # fmt: skip
STRIDE_SMALL = StrideConfig(n_subsets=48, subsets_per_example=6, rank=8, epochs=2, batch_size=16, learning_rate=3e-2,
                            designs=1, cv_queries=4)  # fmt: skip
LIBRARY = {"bm25": "bm25s", "trak": "trak", "ekfac": "kronfluence", "astra": "kronfluence"}
TRAINING_STAGE = {"stride": "operators", "operator-grad": "train_features_0", "repsim": "train_features_0",
                  "graddot": "train_features_0", "gradcos": "train_features_0", "logra": "train_features_0",
                  "trak": "trak_features", "ekfac": "ekfac_factors", "astra": "ekfac_factors"}  # fmt: skip


def _run(method, model_dir, corpus, out, queries=None, **kwargs):
    if method in LIBRARY:
        pytest.importorskip(LIBRARY[method])
    return attribute(model_dir, corpus["train"], queries or corpus["queries"], out, method=method, seed=0,
                     progress=False, config=STRIDE_SMALL, method_settings=SETTINGS[method], **kwargs)  # fmt: skip


@pytest.mark.slow
@pytest.mark.parametrize("method", sorted(SETTINGS))
def test_reruns_load_every_stage_and_new_queries_reuse_the_training_side(method, gpt2_dir, corpus, tmp_path):
    first = _run(method, gpt2_dir, corpus, tmp_path / "run")
    again = _run(method, gpt2_dir, corpus, tmp_path / "run")
    assert torch.equal(first.scores, again.scores)
    assert again.info["stages"] and all(stage["reused"] for stage in again.info["stages"].values())
    new_queries = write_jsonl([{"text": "Anything that can go wrong will."}, {"text": "Nothing is ever easy."}],
                              tmp_path / "new.jsonl")  # fmt: skip
    fresh = _run(method, gpt2_dir, corpus, tmp_path / "fresh", queries=new_queries)
    reused = _run(method, gpt2_dir, corpus, tmp_path / "reused", queries=new_queries, reuse_from=tmp_path / "run")
    assert torch.equal(fresh.scores, reused.scores)
    if method in TRAINING_STAGE:
        assert reused.info["stages"][TRAINING_STAGE[method]]["reused"]
    query_stages = [name for name in reused.info["stages"] if name in ("scores", "responses", "recovery")]
    assert query_stages and not any(reused.info["stages"][name]["reused"] for name in query_stages)


@pytest.mark.parametrize("method", ["trak", pytest.param("ekfac", marks=pytest.mark.slow),
                                    pytest.param("astra", marks=pytest.mark.slow)])  # fmt: skip
def test_library_methods_killed_while_scoring_resume_from_their_stored_features(method, gpt2_dir, corpus, tmp_path,
                                                                                monkeypatch):  # fmt: skip
    pytest.importorskip(LIBRARY[method])
    from stride.baselines.astra import AstraAttributor
    from stride.baselines.ekfac import EkfacAttributor
    from stride.baselines.trak import TrakAttributor

    reference = _run(method, gpt2_dir, corpus, tmp_path / "whole").scores

    def killed(self, queries):
        raise KeyboardInterrupt

    attributors = {"trak": TrakAttributor, "ekfac": EkfacAttributor, "astra": AstraAttributor}
    monkeypatch.setattr(attributors[method], "_scores", killed)
    with pytest.raises(KeyboardInterrupt):
        _run(method, gpt2_dir, corpus, tmp_path / "killed")
    monkeypatch.undo()
    resumed = _run(method, gpt2_dir, corpus, tmp_path / "killed")
    assert resumed.info["stages"][TRAINING_STAGE[method]]["reused"]
    assert not resumed.info["stages"]["scores"]["reused"]
    torch.testing.assert_close(resumed.scores, reference, rtol=1e-5, atol=1e-7)


def test_a_library_stage_killed_midway_starts_again_from_a_clean_folder(gpt2_dir, corpus, tmp_path, monkeypatch):
    pytest.importorskip("trak")
    from stride.baselines.trak import TrakAttributor

    reference = _run("trak", gpt2_dir, corpus, tmp_path / "whole").scores

    def killed(self, train):
        (self.features_folder_ / "leftover").mkdir(parents=True)
        raise KeyboardInterrupt

    monkeypatch.setattr(TrakAttributor, "_featurize", killed)
    with pytest.raises(KeyboardInterrupt):
        _run("trak", gpt2_dir, corpus, tmp_path / "killed")
    monkeypatch.undo()
    resumed = _run("trak", gpt2_dir, corpus, tmp_path / "killed")
    assert not (tmp_path / "killed" / "stages" / "trak_features" / "leftover").exists()
    torch.testing.assert_close(resumed.scores, reference, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("method,change", [("trak", {"proj_dim": 64}), pytest.param("ekfac", {"damping_factor": 1e-3}, marks=pytest.mark.slow),
                                           ("graddot", {"proj_dim": 128})])  # fmt: skip
def test_a_stage_with_other_settings_is_refused_unless_overwritten(method, change, gpt2_dir, corpus, tmp_path):
    _run(method, gpt2_dir, corpus, tmp_path / "run")
    changed = {**SETTINGS[method], **change}
    with pytest.raises(StrideError, match=f"arguments.settings.{next(iter(change))}"):
        attribute(gpt2_dir, corpus["train"], corpus["queries"], tmp_path / "run", method=method, progress=False,
                  method_settings=changed)  # fmt: skip
    attribute(gpt2_dir, corpus["train"], corpus["queries"], tmp_path / "run", method=method, progress=False,
              method_settings=changed, overwrite=True)  # fmt: skip


@dataclasses.dataclass(frozen=True)
class _Arguments:
    size: int


def test_store_refuses_stages_of_an_earlier_format_and_other_inputs(tmp_path):
    store = RunStore(tmp_path)
    stage = Stage("step", _Arguments(3), {"train": "abc"})
    result = store.run(stage, lambda: ({"x": torch.arange(3)}, {"note": 1}))
    assert not result.reused and result.info["note"] == 1
    again = store.run(stage, lambda: pytest.fail("a finished stage must not compute again"))
    assert again.reused and torch.equal(again.tensors["x"], torch.arange(3))
    with pytest.raises(StrideError, match="inputs.train"):
        store.run(Stage("step", _Arguments(3), {"train": "other"}), lambda: ({}, {}))
    (tmp_path / "stages" / "old.json").write_text(json.dumps({"args": {"n": 3}, "info": {}}))
    with pytest.raises(StrideError, match="earlier version"):
        store.run(Stage("old", _Arguments(3), {}), lambda: ({}, {}))


def test_adopting_copies_training_stages_with_their_library_folders_but_no_query_stage(tmp_path):
    source = RunStore(tmp_path / "source")
    training = Stage("features", _Arguments(1), {"train": "t"})

    def library_files():
        source.folder(training).mkdir()
        (source.folder(training) / "f").write_text("x")
        return {}, {}

    source.run(training, library_files)
    source.run(Stage("scores", _Arguments(1), {"train": "t", "queries": "q"}), lambda: ({"s": torch.ones(1)}, {}))
    target = RunStore(tmp_path / "target")
    target.adopt_training_stages(tmp_path / "source")
    assert target.run(training, lambda: pytest.fail("adopted")).reused
    assert (target.folder(training) / "f").read_text() == "x"
    assert not (tmp_path / "target" / "stages" / "scores.json").exists()


def test_every_stride_setting_is_claimed_by_a_stage_or_said_to_shape_none():
    claimed = {field.name for kind in (stride_stages.MembershipArguments, stride_stages.OperatorArguments,
                                       stride_stages.RecoveryArguments, stride_stages.FirstOrderArguments)
               for field in dataclasses.fields(kind)}  # fmt: skip
    unclaimed = {field.name for field in dataclasses.fields(StrideConfig)} - claimed
    assert unclaimed == set(stride_stages.NO_STORED_STAGE), "a new StrideConfig field must join a stage's arguments"


def test_overwrite_with_an_invalid_setting_keeps_the_finished_run(gpt2_dir, corpus, tmp_path):
    first = _run("graddot", gpt2_dir, corpus, tmp_path / "run")
    with pytest.raises(StrideError, match="no_such_key"):
        attribute(gpt2_dir, corpus["train"], corpus["queries"], tmp_path / "run", method="graddot", progress=False,
                  method_settings={"no_such_key": 1}, overwrite=True)  # fmt: skip
    with pytest.raises(StrideError, match="layer"):
        attribute(gpt2_dir, corpus["train"], corpus["queries"], tmp_path / "run", progress=False,
                  config=dataclasses.replace(STRIDE_SMALL, layer=99), overwrite=True)  # fmt: skip
    again = _run("graddot", gpt2_dir, corpus, tmp_path / "run")
    assert all(stage["reused"] for stage in again.info["stages"].values())
    assert torch.equal(again.scores, first.scores)
