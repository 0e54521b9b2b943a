"""--device / --dtype: where the frozen model runs and in which precision (CPU here; CUDA in bench/gpu_check.py)."""

import json

import pytest
import torch
from safetensors.torch import load_file

from stride.api import attribute
from stride.classifiers import attribute_classifier
from stride.config import StrideConfig
from stride.core.device import method_placement, resolve_device, resolve_dtype
from stride.errors import StrideError

from conftest import N_QUERIES, N_TRAIN

SMALL = dict(n_subsets=48, subsets_per_example=6, rank=8, epochs=4, batch_size=16, learning_rate=3e-2, designs=1,
             cv_queries=4, first_order_weight=0.0)  # fmt: skip


def _run(model_dir, corpus, out, **kwargs):
    return attribute(model_dir, corpus["train"], corpus["queries"], out, config=StrideConfig(**SMALL), seed=0,
                     progress=False, **kwargs)  # fmt: skip


def test_bfloat16_model_keeps_the_ranking_and_its_stages_apart(gpt2_dir, corpus, tmp_path):
    full = _run(gpt2_dir, corpus, tmp_path / "run", device="cpu").scores
    with pytest.raises(StrideError, match="model_dtype"):  # a float32 run's stages are not a bfloat16 run's
        _run(gpt2_dir, corpus, tmp_path / "run", device="cpu", dtype="bfloat16")
    half = _run(gpt2_dir, corpus, tmp_path / "run", device="cpu", dtype="bfloat16", overwrite=True)
    info = json.loads((tmp_path / "run" / "info.json").read_text())
    assert info["dtype"] == "bfloat16" and info["device"] == "cpu"
    assert not any(stage["reused"] for stage in info["stages"].values())
    assert half.scores.dtype == torch.float32 and torch.isfinite(half.scores).all()
    agreement = torch.corrcoef(torch.stack([full.flatten(), half.scores.flatten()]))[0, 1]
    assert agreement > 0.8, f"bfloat16 scores correlate {agreement:.3f} with float32 ones"
    for query, duplicate in ((0, 3), (1, 40)):  # the fixture's planted duplicates still rank first
        assert duplicate in torch.argsort(half.scores[query], descending=True)[:5].tolist()
    again = _run(gpt2_dir, corpus, tmp_path / "run", device="cpu", dtype="bfloat16")
    assert torch.equal(again.scores, half.scores)


def test_float32_run_is_unchanged_by_naming_the_cpu(gpt2_dir, corpus, tmp_path):
    named = _run(gpt2_dir, corpus, tmp_path / "a", device="cpu").scores
    default = _run(gpt2_dir, corpus, tmp_path / "b").scores
    assert torch.equal(named, default)
    assert load_file(str(tmp_path / "a" / "scores.safetensors"))["scores"].shape == (N_QUERIES, N_TRAIN)


def test_classifier_runs_in_bfloat16():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(6, 16), torch.nn.ReLU(), torch.nn.Linear(16, 3))
    x, y = torch.randn(60, 6), torch.randint(0, 3, (60,))
    scores = attribute_classifier(model, x, y, x[:5], y[:5], config={"n_subsets": 24, "subsets_per_example": 4},
                                  device="cpu", dtype="bfloat16")  # fmt: skip
    assert scores.shape == (5, 60) and torch.isfinite(scores).all()
    assert next(model.parameters()).dtype == torch.float32  # the caller's model is untouched


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_cuda_asked_for_without_cuda_is_refused():
    with pytest.raises(StrideError, match="no usable CUDA device"):
        resolve_device("cuda")
    assert resolve_device("auto") == torch.device("cpu")


@pytest.mark.parametrize(
    "name, message", [("tpu", "unknown device"), ("meta", "not supported"), ("gpu:0", "unknown device")]
)
def test_unknown_devices_are_refused(name, message):
    with pytest.raises(StrideError, match=message):
        resolve_device(name)


def test_dtypes_and_methods_without_device_support():
    assert resolve_dtype("bfloat16") == torch.bfloat16
    with pytest.raises(StrideError, match="unknown dtype 'float8'"):
        resolve_dtype("float8")
    with pytest.raises(StrideError, match="method 'trak' runs in float32"):
        method_placement("trak", "auto", "bfloat16")
    assert method_placement("ekfac", "auto", "float32") == (torch.device("cpu"), torch.float32)
