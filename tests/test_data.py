"""Tokenization, loss masks, truncation, and the other input formats."""

import shutil

import datasets
import pytest
import torch
from safetensors.torch import load_file, save_file

from stride.cli import main
from stride.data import load_data, write_jsonl
from stride.models import load_tokenizer


@pytest.fixture(scope="module")
def tokenizer(gpt2_dir):
    return load_tokenizer(gpt2_dir)


def test_text_rows_score_every_token_after_bos_and_end_with_eos(tokenizer, tmp_path):
    path = write_jsonl([{"text": "Anything that can go wrong will."}], tmp_path / "t.jsonl")
    batch = load_data(path, tokenizer, 64).batch([0])
    ids = batch.input_ids[0].tolist()
    assert ids[0] == tokenizer.bos_token_id and ids[-1] == tokenizer.eos_token_id
    assert ids.count(tokenizer.bos_token_id) == 1
    assert batch.loss_mask[0].tolist() == [False] + [True] * (len(ids) - 1)
    assert tokenizer.decode(ids[1:-1]) == "Anything that can go wrong will."


def test_prompt_completion_rows_score_only_the_completion(tokenizer, tmp_path):
    row = {"prompt": "Q: what is certain?", "completion": " Death and taxes."}
    batch = load_data(write_jsonl([row], tmp_path / "s.jsonl"), tokenizer, 64).batch([0])
    ids, mask = batch.input_ids[0].tolist(), batch.loss_mask[0].tolist()
    n_prompt = 1 + len(tokenizer(row["prompt"], add_special_tokens=False)["input_ids"])
    assert mask == [False] * n_prompt + [True] * (len(ids) - n_prompt)
    assert tokenizer.decode(ids[n_prompt:-1]) == row["completion"]


def test_truncation_keeps_the_completion_and_counts(tokenizer, tmp_path):
    rows = [{"prompt": "word " * 100, "completion": " the end."}, {"prompt": "short", "completion": " fine"}]
    with pytest.warns(UserWarning, match="1 of 2 example"):
        data = load_data(write_jsonl(rows, tmp_path / "long.jsonl"), tokenizer, 32)
    batch = data.batch([0])
    assert batch.input_ids.shape[1] == 32 and data.n_truncated == 1
    assert tokenizer.decode(batch.input_ids[0][batch.loss_mask[0]][:-1].tolist()) == " the end."


def test_padding_never_counts(tokenizer, tmp_path):
    path = write_jsonl([{"text": "a"}, {"text": "a much longer line of text than the first"}], tmp_path / "p.jsonl")
    batch = load_data(path, tokenizer, 64).batch([0, 1])
    assert batch.attention_mask[0].sum() < batch.attention_mask[1].sum()
    assert not batch.loss_mask[0][batch.attention_mask[0] == 0].any()


def test_saved_dataset_folder_gives_the_same_scores_as_jsonl(gpt2_dir, corpus, tmp_path):
    from stride.api import attribute
    from stride.config import StrideConfig

    folder = tmp_path / "train_ds"
    datasets.load_dataset("json", data_files=str(corpus["train"]), split="train").save_to_disk(str(folder))
    config = StrideConfig(n_subsets=12, subsets_per_example=3, rank=2, epochs=1, cv_queries=2)
    from_jsonl = attribute(gpt2_dir, corpus["train"], corpus["queries"], tmp_path / "a", config=config, progress=False)
    from_folder = attribute(gpt2_dir, folder, corpus["queries"], tmp_path / "b", config=config, progress=False)
    assert torch.equal(from_jsonl.scores, from_folder.scores)


def test_a_model_with_nan_weights_is_reported(gpt2_dir, corpus, tmp_path, capsys):
    broken = tmp_path / "nan_model"
    shutil.copytree(gpt2_dir, broken)
    weights = load_file(str(broken / "model.safetensors"))
    name = next(k for k in weights if "ln_f.weight" in k)
    weights[name] = torch.full_like(weights[name], float("nan"))
    save_file(weights, str(broken / "model.safetensors"), metadata={"format": "pt"})
    code = main(["attribute", "--model", str(broken), "--train", str(corpus["train"]), "--queries",
                 str(corpus["queries"]), "--out", str(tmp_path / "o"), "--quiet", "--config", str(_tiny(tmp_path))])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2 and "NaN/inf at step 0" in err.strip().splitlines()[-1]


def _tiny(tmp_path):
    path = tmp_path / "tiny.json"
    path.write_text('{"n_subsets": 8, "subsets_per_example": 2, "rank": 2, "epochs": 1, "cv_queries": 2}')
    return path
