"""`stride contamination`: planted copies rank first, the output files, labels, and bad input."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from stride.cli import main
from stride.contamination import contamination, detection_metrics, robust_z

N_TRAIN, N_QUERIES = 96, 6  # the conftest corpus


def test_robust_z_marks_one_outstanding_score_and_guards_constant_rows():
    rows = np.array([
        [0.0, 0.1, 0.2, 0.1, 0.0, 5.0],  # MAD 0.1: the 5.0 stands far out
        [0.0, 0.0, 0.0, 0.0, 0.0, 1.0],  # MAD 0: the mean absolute deviation scales it
        [2.0, 2.0, 2.0, 2.0, 2.0, 2.0],  # constant: z = 0
    ])  # fmt: skip
    z = robust_z(rows)
    assert z[0, 5] == pytest.approx((5.0 - 0.1) / (1.4826 * 0.1))
    assert z[1, 5] == pytest.approx(1.0 / (1.2533 * 1.0 / 6))
    assert np.all(z[2] == 0) and np.isfinite(z).all()


def test_detection_metrics_of_a_perfect_ranking():
    metrics = detection_metrics(np.array([3.0, 0.1, 2.0, 0.2]), np.array([1, 0, 1, 0]))
    assert metrics["auroc"] == metrics["auprc"] == metrics["recall_at_n_leaked"] == 1.0


@pytest.fixture(scope="module")
def outcome(gpt2_dir: Path, corpus: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """tf-idf contamination of the corpus queries (0 and 1 copy training examples 3 and 40), with labels."""
    root = tmp_path_factory.mktemp("contamination")
    (root / "labels.json").write_text(json.dumps([1, 1] + [0] * (N_QUERIES - 2)))
    out = root / "out"
    assert main(["contamination", "--model", str(gpt2_dir), "--train", str(corpus["train"]), "--benchmark",
                 str(corpus["queries"]), "--out", str(out), "--method", "tfidf", "--labels",
                 str(root / "labels.json"), "--top-k", "3", "--quiet"]) == 0  # fmt: skip
    return out


def test_planted_copies_rank_first(outcome):
    rows = [json.loads(line) for line in (outcome / "benchmark_scores.jsonl").read_text().splitlines()]
    assert [row["index"] for row in rows] == list(range(N_QUERIES))
    ranked = sorted(range(N_QUERIES), key=lambda i: -rows[i]["leak_score"])
    assert set(ranked[:2]) == {0, 1}
    assert rows[0]["top"][0]["train_index"] == 3 and rows[1]["top"][0]["train_index"] == 40
    assert all(len(row["top"]) == 3 for row in rows)
    assert rows[0]["top"][0]["score"] >= rows[0]["top"][1]["score"] >= rows[0]["top"][2]["score"]


def test_train_scores_and_report(outcome):
    rows = [json.loads(line) for line in (outcome / "train_scores.jsonl").read_text().splitlines()]
    assert [row["index"] for row in rows] == list(range(N_TRAIN))
    ranked = sorted(range(N_TRAIN), key=lambda j: -rows[j]["contamination_score"])
    assert set(ranked[:2]) == {3, 40}
    report = (outcome / "report.md").read_text()
    assert "auroc: 1.0000" in report and "item 0, leak score" in report
    assert json.loads((outcome / "metrics.json").read_text())["auprc"] == 1.0
    assert (outcome / "leak_scores.png").read_bytes()[:4] == b"\x89PNG"
    assert (outcome / "scores.safetensors").is_file()  # the run folder is --out


def test_rerun_reuses_the_run(outcome, gpt2_dir, corpus):
    before = (outcome / "benchmark_scores.jsonl").read_bytes()
    result = contamination(gpt2_dir, corpus["train"], corpus["queries"], outcome, method="tfidf", top_k=3,
                           progress=False)  # fmt: skip
    assert result.metrics is None and (outcome / "benchmark_scores.jsonl").read_bytes() == before


def test_prompt_completion_benchmark_and_jsonl_labels(gpt2_dir, corpus, tmp_path):
    texts = [json.loads(line)["text"] for line in corpus["queries"].read_text().splitlines()]
    benchmark = tmp_path / "bench.jsonl"
    benchmark.write_text("".join(json.dumps({"prompt": t[:10], "completion": t[10:]}) + "\n" for t in texts))
    labels = tmp_path / "labels.jsonl"
    labels.write_text("".join(json.dumps({"leaked": i < 2}) + "\n" for i in range(N_QUERIES)))
    result = contamination(gpt2_dir, corpus["train"], benchmark, tmp_path / "out", method="tfidf", labels=labels,
                           progress=False)  # fmt: skip
    assert result.metrics is not None and result.metrics["auroc"] == 1.0


def _error(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    assert main([*argv, "--quiet"]) == 2
    return capsys.readouterr().err.strip()


def test_bad_input_is_one_line(gpt2_dir, corpus, tmp_path, capsys):
    (tmp_path / "short.json").write_text("[0, 1]")
    (tmp_path / "fields.jsonl").write_text('{"question": "2+2?", "answer": "4"}\n')
    base = ["contamination", "--model", str(gpt2_dir), "--train", str(corpus["train"]), "--out",
            str(tmp_path / "out"), "--method", "tfidf"]  # fmt: skip
    cases = {
        "holds 2 labels but the benchmark has 6 items": [*base, "--benchmark", str(corpus["queries"]), "--labels",
                                                         str(tmp_path / "short.json")],
        "'prompt' and 'completion'": [*base, "--benchmark", str(tmp_path / "fields.jsonl")],
        "top-k must be at least 1": [*base, "--benchmark", str(corpus["queries"]), "--top-k", "0"],
        "labels file not found": [*base, "--benchmark", str(corpus["queries"]), "--labels", str(tmp_path / "no")],
    }  # fmt: skip
    for words, argv in cases.items():
        message = _error(argv, capsys)
        assert len(message.splitlines()) == 1 and words in message, message
    assert not (tmp_path / "out").exists()  # refused before anything was computed
