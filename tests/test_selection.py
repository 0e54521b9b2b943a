"""`stride select`: aggregation by hand, budgets, the pool's own lines, --dedup, and bad input."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from stride.cli import main
from stride.errors import StrideError
from stride.selection import aggregate_select, parse_budget, select

SCORES = np.array([
    [0.9, 0.8, 0.1, 0.0, 0.5],
    [0.0, 0.7, 0.9, 0.9, 0.2],
])  # fmt: skip


def test_mean_and_max_order_with_ties_to_the_lower_index():
    # means 0.45 0.75 0.5 0.45 0.35; maxes 0.9 0.8 0.9 0.9 0.5
    assert aggregate_select(SCORES, "mean", 5).indices == [1, 2, 0, 3, 4]
    assert aggregate_select(SCORES, "max", 4).indices == [0, 2, 3, 1]
    assert aggregate_select(SCORES, "max", 2).scores == pytest.approx([0.9, 0.9])


def test_round_robin_by_hand():
    # target 0 takes 0 (0.9); target 1 takes 2 (0.9, tie with 3 -> lower index); target 0: 1 (0.8);
    # target 1: 3 (0.9); target 0: 4 (0.5)
    chosen = aggregate_select(SCORES, "round-robin", 5)
    assert chosen.indices == [0, 2, 1, 3, 4]
    assert chosen.targets == [0, 1, 0, 1, 0]
    assert chosen.scores == pytest.approx([0.9, 0.9, 0.8, 0.9, 0.5])
    assert aggregate_select(SCORES, "round-robin", 3).indices == [0, 2, 1]


def test_dedup_skips_equal_texts_in_every_aggregate():
    keys = ["a", "b", "b", "c", "d"]
    assert aggregate_select(SCORES, "mean", 3, keys).indices == [1, 0, 3]
    assert aggregate_select(SCORES, "round-robin", 3, keys).indices == [0, 2, 4]  # 1 duplicates 2


@pytest.mark.parametrize(
    ("budget", "expected"), [("3", 3), (3, 3), ("0.25", 24), (0.25, 24), ("1.0", 96), ("0.001", 1), ("96", 96)]
)
def test_budget_numbers_and_fractions(budget, expected):
    assert parse_budget(budget, 96) == expected


@pytest.mark.parametrize(
    ("budget", "words"),
    [("0", "at least 1"), ("-2", "at least 1"), ("97", "over the pool size 96"), ("1.5", "(0, 1]"),
     ("0.0", "(0, 1]"), ("many", "a number of examples"), ("nan", "a number of examples")],
)  # fmt: skip
def test_bad_budgets(budget, words):
    with pytest.raises(StrideError) as error:
        parse_budget(budget, 96)
    assert words in str(error.value)


@pytest.fixture(scope="module")
def tfidf_run(gpt2_dir: Path, corpus: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    run = tmp_path_factory.mktemp("select") / "run"
    assert main(["attribute", "--model", str(gpt2_dir), "--train", str(corpus["train"]), "--queries",
                 str(corpus["queries"]), "--out", str(run), "--method", "tfidf", "--quiet"]) == 0  # fmt: skip
    return run


def test_selected_lines_are_the_pools_own_lines_best_first(tfidf_run, corpus, tmp_path):
    out = tmp_path / "sel"
    assert main(["select", "--run", str(tfidf_run), "--pool", str(corpus["train"]), "--budget", "0.1",
                 "--aggregate", "max", "--out", str(out), "--quiet"]) == 0  # fmt: skip
    pool = corpus["train"].read_bytes().splitlines(keepends=True)
    manifest = json.loads((out / "manifest.json").read_text())
    indices = manifest["selected"]["indices"]
    assert len(indices) == round(0.1 * len(pool)) == 10
    assert (out / "selected.jsonl").read_bytes() == b"".join(pool[i] for i in indices)
    assert indices[:2] == [3, 40]  # the queries' exact copies: tf-idf cosine 1
    assert manifest["selected"]["scores"][:2] == pytest.approx([1.0, 1.0])
    assert manifest["settings"]["aggregate"] == "max" and manifest["settings"]["budget_examples"] == 10
    summary = manifest["score_summary"]["max_over_targets"]
    assert summary["selected"]["min"] >= summary["pool"]["mean"]
    assert manifest["provenance"]["method"] == "tfidf" and manifest["provenance"]["digests"]["train"]
    assert not list(out.glob("*.partial"))


def test_python_api_round_robin_and_dedup(tfidf_run, corpus, tmp_path):
    rows = [json.loads(line) for line in corpus["train"].read_text().splitlines()]
    pool = tmp_path / "pool.jsonl"  # the same content, so the same training set; dedup keys from it
    pool.write_bytes(corpus["train"].read_bytes())
    chosen = select(pool, tmp_path / "rr", 12, "round-robin", run_dir=tfidf_run, dedup=True)
    assert chosen.targets[:6] == list(range(6))
    assert chosen.indices[:2] == [3, 40]
    texts = [" ".join(rows[i]["text"].split()) for i in chosen.indices]
    assert len(set(texts)) == len(texts) == 12


def test_dedup_drops_a_whitespace_variant(gpt2_dir, corpus, tmp_path):
    rows = [json.loads(line) for line in corpus["train"].read_text().splitlines()]
    rows.append({"text": "  " + rows[3]["text"].replace(" ", "   ") + "\n"})  # index 96: a copy of 3
    pool = tmp_path / "pool.jsonl"
    pool.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "sel"
    args = ["select", "--model", str(gpt2_dir), "--train", str(pool), "--queries", str(corpus["queries"]),
            "--budget", "4", "--aggregate", "max", "--method", "tfidf", "--out", str(out), "--quiet"]  # fmt: skip
    assert main(args) == 0
    plain = json.loads((out / "manifest.json").read_text())["selected"]["indices"]
    assert main([*args, "--dedup"]) == 0
    deduped = json.loads((out / "manifest.json").read_text())["selected"]["indices"]
    assert 3 in plain and 96 in plain and 3 in deduped and 96 not in deduped
    assert (out / "scores.safetensors").is_file() and (out / "info.json").is_file()  # the run is --out itself


def _error(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    assert main([*argv, "--quiet"]) == 2
    return capsys.readouterr().err.strip()


def test_bad_input_is_one_line(tfidf_run, gpt2_dir, corpus, tmp_path, capsys):
    base = ["select", "--budget", "5", "--out", str(tmp_path / "out")]
    with_run = [*base, "--run", str(tfidf_run)]
    cases = {
        "is not the training set": [*with_run, "--pool", str(corpus["queries"])],
        "over the pool size 96": [*with_run, "--pool", str(corpus["train"]), "--budget", "500"],
        "mutually exclusive": [*with_run, "--pool", str(corpus["train"]), "--model", str(gpt2_dir)],
        "run folder not found": [*base, "--run", str(tmp_path / "none"), "--pool", str(corpus["train"])],
        "holds no scores.safetensors": [*base, "--run", str(tmp_path), "--pool", str(corpus["train"])],
        "give a run folder": [*base, "--pool", str(corpus["train"])],
        "needs the target": [*base, "--model", str(gpt2_dir), "--pool", str(corpus["train"])],
    }
    for words, argv in cases.items():
        message = _error(argv, capsys)
        assert len(message.splitlines()) == 1 and words in message, message
