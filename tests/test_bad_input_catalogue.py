"""Runs every case of the bad-input catalogue (tests/bad_inputs.yaml): each bad command ends with its
exit code and a one-line message holding the listed words, never a traceback, a hang or silence."""

from __future__ import annotations

import errno
import fcntl
import json
import os
import pickle
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import yaml
from safetensors.torch import save_file

from stride.cli import main
from stride.core.digest import content_digest, file_digest

CATALOGUE = yaml.safe_load((Path(__file__).parent / "bad_inputs.yaml").read_text())
FAST = {"n_subsets": 8, "subsets_per_example": 2, "rank": 2, "epochs": 1, "cv_queries": 2}
N_TRAIN, N_QUERIES = 96, 6  # the conftest corpus
CLASSIFIER_WIDTH, CLASSIFIER_CLASSES = 5, 3
SUBPROCESS_SECONDS = 180


class Payload:
    """A class pickle files refer to: loading one must never run it."""

    def __reduce__(self) -> tuple[Any, ...]:
        return (os.system, ("echo pwned",))


def _copy_model(source: Path, target: Path) -> Path:
    shutil.copytree(source, target)
    return target


FIXED_FILES = {  # makers that only write fixed bytes: name -> (file name, contents)
    "empty": ("empty.jsonl", b"\n"),
    "no_text_field": ("fields.jsonl", b'{"text": "fine"}\n{"body": "no text here"}\n'),
    "broken_json": ("broken.jsonl", b'{"text": "ok"}\n{"text": "unterminated\n'),
    "json_array_line": ("array.jsonl", b"[1, 2]\n"),
    "number_text": ("numbers.jsonl", b'{"text": 5}\n{"text": 6}\n'),
    "latin1": ("latin1.jsonl", b'{"text": "plain"}\n{"text": "caf\xe9"}\n'),
    "all_empty": ("blank.jsonl", b'{"text": ""}\n' * 20),
    "text_scores": ("scores.txt", b"0.1 0.2 0.3\n"),
}
MAKERS: dict[str, Callable[[Path, dict[str, Path]], Path]] = {}


def maker(function: Callable[[Path, dict[str, Path]], Path]) -> Callable[[Path, dict[str, Path]], Path]:
    MAKERS[function.__name__] = function
    return function


@maker
def late_broken_json(tmp: Path, _: dict[str, Path]) -> Path:
    lines = [json.dumps({"text": f"line {i}"}) for i in range(1499)] + ['{"text": "cut']
    (tmp / "late.jsonl").write_text("\n".join(lines) + "\n")
    return tmp / "late.jsonl"


@maker
def dataset_dict(tmp: Path, _: dict[str, Path]) -> Path:
    import datasets

    datasets.DatasetDict({"test": datasets.Dataset.from_dict({"text": ["a", "b"]})}).save_to_disk(tmp / "dd")
    return tmp / "dd"


@maker
def model_without_tokenizer(tmp: Path, inputs: dict[str, Path]) -> Path:
    bare = tmp / "bare"
    bare.mkdir()
    for name in ("config.json", "model.safetensors"):
        shutil.copy(inputs["model"] / name, bare / name)
    return bare


@maker
def model_bad_config(tmp: Path, inputs: dict[str, Path]) -> Path:
    model = _copy_model(inputs["model"], tmp / "model")
    (model / "config.json").write_text('{"model_type": "gpt2", ')
    return model


@maker
def model_truncated_weights(tmp: Path, inputs: dict[str, Path]) -> Path:
    model = _copy_model(inputs["model"], tmp / "model")
    weights = model / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    return model


@maker
def model_pickled_weights(tmp: Path, inputs: dict[str, Path]) -> Path:
    model = _copy_model(inputs["model"], tmp / "model")
    (model / "model.safetensors").write_bytes(pickle.dumps(Payload()))
    return model


@maker
def model_other_width(tmp: Path, inputs: dict[str, Path]) -> Path:
    model = _copy_model(inputs["model"], tmp / "model")
    config = json.loads((model / "config.json").read_text())
    config["n_embd"] = 48
    (model / "config.json").write_text(json.dumps(config))
    return model


@maker
def model_other_tokenizer(tmp: Path, inputs: dict[str, Path]) -> Path:
    from stride.lm_training import train_tokenizer

    model = _copy_model(inputs["model"], tmp / "model")
    texts = [json.loads(line)["text"] for line in inputs["train"].open()] * 3
    train_tokenizer(texts + [f"word{i} token{i * 7}" for i in range(400)], vocab_size=900).save_pretrained(model)
    return model


@maker
def model_custom_type(tmp: Path, inputs: dict[str, Path]) -> Path:
    model = _copy_model(inputs["model"], tmp / "model")
    config = json.loads((model / "config.json").read_text())
    config.update(model_type="my-custom-lm", auto_map={"AutoModelForCausalLM": "modeling_mine.MyLM"})
    (model / "config.json").write_text(json.dumps(config))
    return model


def _adapter(tmp: Path, inputs: dict[str, Path], base: str | None) -> Path:
    from peft import LoraConfig, get_peft_model

    from stride.models import load_causal_lm

    model, _ = load_causal_lm(inputs["model"])
    get_peft_model(model, LoraConfig(r=2, target_modules=["c_attn"])).save_pretrained(str(tmp / "adapter"))
    config = json.loads((tmp / "adapter" / "adapter_config.json").read_text())
    config["base_model_name_or_path"] = base
    (tmp / "adapter" / "adapter_config.json").write_text(json.dumps(config))
    return tmp / "adapter"


@maker
def adapter_other_base(tmp: Path, inputs: dict[str, Path]) -> Path:
    other = _copy_model(inputs["model"], tmp / "other")  # its tokenizer; the weights and config are replaced below
    from stride.lm_training import LMRecipe, new_causal_lm
    from stride.models import load_tokenizer

    recipe = LMRecipe(architecture="gpt2", n_layers=2, hidden_size=48, n_heads=2, vocab_size=320, context=64)
    new_causal_lm(recipe, load_tokenizer(other)).save_pretrained(str(other))
    return _adapter(tmp, inputs, str(other))


@maker
def adapter_without_base(tmp: Path, inputs: dict[str, Path]) -> Path:
    return _adapter(tmp, inputs, None)


def _scores_file(tmp: Path, name: str, scores: np.ndarray) -> Path:
    np.save(tmp / name, scores)
    return tmp / name


@maker
def object_npy(tmp: Path, _: dict[str, Path]) -> Path:
    np.save(tmp / "object.npy", np.array([{"a": 1}, None], dtype=object), allow_pickle=True)
    return tmp / "object.npy"


@maker
def pickle_npy(tmp: Path, _: dict[str, Path]) -> Path:
    (tmp / "pickle.npy").write_bytes(pickle.dumps(Payload()))
    return tmp / "pickle.npy"


@maker
def truncated_scores(tmp: Path, _: dict[str, Path]) -> Path:
    path = tmp / "scores.safetensors"
    save_file({"scores": torch.zeros(N_QUERIES, N_TRAIN)}, str(path))
    path.write_bytes(path.read_bytes()[:200])
    return path


@maker
def one_d_npy(tmp: Path, _: dict[str, Path]) -> Path:
    return _scores_file(tmp, "flat.npy", np.zeros(N_TRAIN))


@maker
def nan_scores(tmp: Path, _: dict[str, Path]) -> Path:
    scores = np.random.default_rng(0).normal(size=(N_QUERIES, N_TRAIN))
    scores[1, 2] = np.nan
    return _scores_file(tmp, "nan.npy", scores)


@maker
def scores_wrong_shape(tmp: Path, _: dict[str, Path]) -> Path:
    return _scores_file(tmp, "small.npy", np.zeros((3, 5)))


@maker
def zero_scores(tmp: Path, _: dict[str, Path]) -> Path:
    return _scores_file(tmp, "zeros.npy", np.zeros((N_QUERIES, N_TRAIN)))


@maker
def npy_data(tmp: Path, _: dict[str, Path]) -> Path:
    return _scores_file(tmp, "data.npy", np.zeros((10, CLASSIFIER_WIDTH), dtype=np.float32))


@maker
def truncated_pt(tmp: Path, inputs: dict[str, Path]) -> Path:
    path = tmp / "weights.pt"
    torch.save(torch.load(inputs["weights_pt"], weights_only=True), path)
    path.write_bytes(path.read_bytes()[:100])
    return path


@maker
def pickled_pt(tmp: Path, _: dict[str, Path]) -> Path:
    path = tmp / "weights.pt"
    torch.save({"layer": Payload()}, path)
    return path


def _classifier_arrays(tmp: Path, name: str, inputs: np.ndarray) -> Path:
    labels = np.arange(len(inputs)) % CLASSIFIER_CLASSES
    np.savez(tmp / name, inputs=inputs, labels=labels)
    return tmp / name


@maker
def wide_inputs(tmp: Path, _: dict[str, Path]) -> Path:
    return _classifier_arrays(tmp, "wide.npz", np.zeros((12, CLASSIFIER_WIDTH + 2), dtype=np.float32))


@maker
def integer_inputs(tmp: Path, _: dict[str, Path]) -> Path:
    return _classifier_arrays(tmp, "ints.npz", np.ones((12, CLASSIFIER_WIDTH), dtype=np.int64))


@maker
def other_weights(tmp: Path, _: dict[str, Path]) -> Path:
    save_file({"weight": torch.zeros(2, 2)}, str(tmp / "other.safetensors"))
    return tmp / "other.safetensors"


def _write_groundtruth(folder: Path, model: Path, train: Path, queries: Path) -> Path:
    """A finished ground-truth folder (random losses) tied by its digests to a model and data."""
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    subsets = torch.as_tensor(rng.random((8, N_TRAIN)) < 0.5, dtype=torch.uint8)
    losses = torch.as_tensor(rng.random((2, 8, N_QUERIES)), dtype=torch.float32)
    metadata = {"model_sha256": file_digest(model), "train_sha256": content_digest(train),
                "queries_sha256": content_digest(queries)}  # fmt: skip
    save_file({"losses": losses, "subsets": subsets}, str(folder / "losses.safetensors"), metadata=metadata)
    (folder / "spec.json").write_text("{}")
    return folder


@pytest.fixture(scope="module")
def shared(gpt2_dir: Path, corpus: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """What many cases read: a finished STRIDE run, ground truth, a classifier and its files."""
    from torch import nn

    root = tmp_path_factory.mktemp("catalogue")
    (root / "fast.json").write_text(json.dumps(FAST))
    run = root / "run"
    assert main(["attribute", "--model", str(gpt2_dir), "--train", str(corpus["train"]), "--queries",
                 str(corpus["queries"]), "--out", str(run), "--config", str(root / "fast.json"), "--quiet"]) == 0  # fmt: skip
    other_queries = root / "other_queries.jsonl"
    other_queries.write_text("".join(json.dumps({"text": f"another query {i}"}) + "\n" for i in range(N_QUERIES)))
    (root / "factory.py").write_text(
        "from torch import nn\n\n\ndef make():\n"
        f"    return nn.Sequential(nn.Linear({CLASSIFIER_WIDTH}, 8), nn.ReLU(), nn.Linear(8, {CLASSIFIER_CLASSES}))\n"
    )
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(CLASSIFIER_WIDTH, 8), nn.ReLU(), nn.Linear(8, CLASSIFIER_CLASSES))
    save_file(dict(net.state_dict()), str(root / "weights.safetensors"))
    torch.save(dict(net.state_dict()), root / "weights.pt")
    rng = np.random.default_rng(0)
    return {
        "model": gpt2_dir, "train": corpus["train"], "queries": corpus["queries"], "run": run,
        "gt": _write_groundtruth(root / "gt", gt_model := gpt2_dir, corpus["train"], corpus["queries"]),
        "gt_other": _write_groundtruth(root / "gt_other", gt_model, corpus["train"], other_queries),
        "factory": Path(f"{root / 'factory.py'}:make"), "weights": root / "weights.safetensors",
        "weights_pt": root / "weights.pt",
        "ctrain": _classifier_arrays(root, "train.npz", rng.normal(size=(24, CLASSIFIER_WIDTH)).astype(np.float32)),
        "cqueries": _classifier_arrays(root, "queries.npz", rng.normal(size=(6, CLASSIFIER_WIDTH)).astype(np.float32)),
    }  # fmt: skip


def _expand(argument: str, case: dict[str, Any], tmp: Path, shared: dict[str, Path]) -> str:
    if argument.startswith("{file:"):
        name = argument[len("{file:") : -1]
        if name in FIXED_FILES:
            file_name, contents = FIXED_FILES[name]
            (tmp / file_name).write_bytes(contents)
            return str(tmp / file_name)
        return str(MAKERS[name](tmp, shared))
    if argument in ("{run}", "{gt}"):  # a copy, so no case changes what the next one reads
        return str(shutil.copytree(shared[argument[1:-1]], tmp / argument[1:-1]))
    values = {name: str(path) for name, path in shared.items()}
    values.update(tmp=str(tmp), out=str(tmp / "out"), config=str(tmp / "config.json"))
    return argument.format(**values)


def _run_in_process(argv: list[str], case: dict[str, Any], tmp: Path, monkeypatch: pytest.MonkeyPatch,
                    capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:  # fmt: skip
    if "fault" in case:
        code = getattr(errno, case["fault"])

        def failing_save(tensors: Any, path: str, *args: Any, **kwargs: Any) -> None:
            raise OSError(code, os.strerror(code), path)

        monkeypatch.setattr("stride.core.arrays.save_file", failing_save)
    holder = None
    if case.get("lock"):
        (tmp / "out").mkdir()
        holder = (tmp / "out" / ".lock").open("w")
        holder.write("4242")
        holder.flush()
        fcntl.flock(holder, fcntl.LOCK_EX | fcntl.LOCK_NB)
    try:
        code = main(argv)
    except SystemExit as exit_:  # argparse
        code = int(exit_.code or 0)
    finally:
        if holder is not None:
            holder.close()
    return code, capsys.readouterr().err


def _run_as_process(argv: list[str]) -> tuple[int, str]:
    try:
        done = subprocess.run([sys.executable, "-m", "stride", *argv], capture_output=True, text=True,
                              timeout=SUBPROCESS_SECONDS, env={**os.environ, "PYTHONWARNINGS": "ignore"})  # fmt: skip
    except subprocess.TimeoutExpired:
        pytest.fail(f"hung for more than {SUBPROCESS_SECONDS} s: stride {' '.join(argv)}")
    return done.returncode, done.stderr


@pytest.mark.parametrize("case", CATALOGUE, ids=[case["id"] for case in CATALOGUE])
def test_bad_input(case, shared, tmp_path, monkeypatch, capsys, recwarn):
    if case.get("without_cuda") and torch.cuda.is_available():
        pytest.skip("the case needs a machine without CUDA")
    if "config" in case:
        (tmp_path / "config.json").write_text(case["config"])
    argv = [_expand(argument, case, tmp_path, shared) for argument in case["argv"]]
    argv += ["--quiet"] if argv[0] != "lds" else []
    if case.get("subprocess"):
        code, err = _run_as_process(argv)
    else:
        code, err = _run_in_process(argv, case, tmp_path, monkeypatch, capsys)
    assert "Traceback" not in err, err
    assert code == case.get("exit", 2), err
    if code == 0:
        warned = " ".join(str(w.message) for w in recwarn)
        for fragment in case.get("warning", []):
            assert fragment in warned, warned
        return
    last = err.strip().splitlines()[-1]
    assert "error:" in last, err
    for fragment in case["message"]:
        assert fragment in last, last


def test_the_catalogue_is_large_and_its_ids_are_unique():
    ids = [case["id"] for case in CATALOGUE]
    assert len(ids) == len(set(ids)) and len(ids) >= 110
