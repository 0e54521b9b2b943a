"""Bad input gets one readable line and exit status 2 from the CLI, not a traceback."""

import json
import shutil

import pytest

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


def _expect_error(capsys, code, *fragments):
    err = capsys.readouterr().err
    assert code == 2, err
    line = err.strip().splitlines()[-1]
    assert line.startswith("stride: error:"), err
    assert "Traceback" not in err
    for fragment in fragments:
        assert fragment in line, line


def test_missing_training_file(gpt2_dir, corpus, tmp_path, config_file, capsys):
    code = _attribute(gpt2_dir, tmp_path / "nope.jsonl", corpus["queries"], tmp_path / "o", config_file)
    _expect_error(capsys, code, "data file not found", "nope.jsonl")


def test_empty_query_file(gpt2_dir, corpus, tmp_path, config_file, capsys):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    code = _attribute(gpt2_dir, corpus["train"], empty, tmp_path / "o", config_file)
    _expect_error(capsys, code, "empty", "empty.jsonl")


def test_lines_without_text_field(gpt2_dir, corpus, tmp_path, config_file, capsys):
    bad = write_jsonl([{"text": "fine"}, {"body": "no text here"}], tmp_path / "bad.jsonl")
    code = _attribute(gpt2_dir, bad, corpus["queries"], tmp_path / "o", config_file)
    _expect_error(capsys, code, "line 2", "'text'", "'prompt' and 'completion'")


def test_invalid_json_line(gpt2_dir, corpus, tmp_path, config_file, capsys):
    bad = tmp_path / "broken.jsonl"
    bad.write_text('{"text": "ok"}\n{"text": "unterminated\n')
    code = _attribute(gpt2_dir, bad, corpus["queries"], tmp_path / "o", config_file)
    _expect_error(capsys, code, "line 2", "not valid JSON")


def test_missing_model_directory(corpus, tmp_path, config_file, capsys):
    code = _attribute(tmp_path / "no_model", corpus["train"], corpus["queries"], tmp_path / "o", config_file)
    _expect_error(capsys, code, "model directory not found")


def test_model_directory_without_tokenizer(gpt2_dir, corpus, tmp_path, config_file, capsys):
    bare = tmp_path / "bare"
    bare.mkdir()
    for name in ("config.json", "model.safetensors"):
        shutil.copy(gpt2_dir / name, bare / name)
    code = _attribute(bare, corpus["train"], corpus["queries"], tmp_path / "o", config_file)
    _expect_error(capsys, code, "has no tokenizer")


def test_tokenizer_that_does_not_fit_the_model(gpt2_dir, corpus, tmp_path, config_file, capsys):
    from stride.lm_training import train_tokenizer

    mismatched = tmp_path / "mismatched"
    shutil.copytree(gpt2_dir, mismatched)
    texts = [json.loads(line)["text"] for line in corpus["train"].open()] * 3
    train_tokenizer(texts + [f"word{i} token{i * 7}" for i in range(400)], vocab_size=900).save_pretrained(mismatched)
    code = _attribute(mismatched, corpus["train"], corpus["queries"], tmp_path / "o", config_file)
    _expect_error(capsys, code, "tokenizer has", "do not belong together")


def test_output_folder_with_other_settings_is_refused_unless_overwrite(gpt2_dir, corpus, tmp_path, config_file, capsys):
    out = tmp_path / "run"
    assert _attribute(gpt2_dir, corpus["train"], corpus["queries"], out, config_file) == 0
    other = tmp_path / "other.json"
    other.write_text(json.dumps({**FAST, "rank": 3}))
    code = _attribute(gpt2_dir, corpus["train"], corpus["queries"], out, other)
    _expect_error(capsys, code, "other settings", "rank", "--overwrite")
    assert _attribute(gpt2_dir, corpus["train"], corpus["queries"], out, other, "--overwrite") == 0
    assert json.loads((out / "info.json").read_text())["settings"]["rank"] == 3


@pytest.mark.parametrize(
    "settings,fragment",
    [({"n_subsets": 1}, "n_subsets (K) must be at least 2"),
     ({"subsets_per_example": 9}, "subsets_per_example (d) must be between 1 and n_subsets"),
     ({"n_subsets": 5000, "subsets_per_example": 2}, "some subsets would be empty"),
     ({"layer": 7}, "layer must be between 0 and 1"),
     ({"form": "magic"}, "form must be one of"),
     ({"max_length": 10_000}, "max_length must be between 2 and the model's context length 64"),
     ({"rnak": 3}, "unknown STRIDE setting")],
)  # fmt: skip
def test_settings_out_of_range(settings, fragment, gpt2_dir, corpus, tmp_path, capsys):
    path = tmp_path / "bad.json"
    path.write_text(json.dumps({**FAST, **settings}))
    code = _attribute(gpt2_dir, corpus["train"], corpus["queries"], tmp_path / "o", path)
    _expect_error(capsys, code, fragment)


def test_unknown_method(gpt2_dir, corpus, tmp_path, config_file, capsys):
    code = _attribute(gpt2_dir, corpus["train"], corpus["queries"], tmp_path / "o", config_file, "--method", "oracle")
    _expect_error(capsys, code, "unknown method 'oracle'")


def test_too_long_sequences_are_truncated_with_a_warning(gpt2_dir, tmp_path, config_file):
    long_texts = [{"text": " ".join(["attribution"] * 200)}] + [{"text": f"short line {i}"} for i in range(15)]
    train = write_jsonl(long_texts, tmp_path / "long.jsonl")
    with pytest.warns(UserWarning, match="1 of 16 example.s. are longer than 64 tokens and were truncated"):
        assert _attribute(gpt2_dir, train, train, tmp_path / "o", config_file) == 0
    info = json.loads((tmp_path / "o" / "info.json").read_text())
    assert info["truncated"] == {"train": 1, "queries": 1}
