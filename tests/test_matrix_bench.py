"""bench/matrix.py and its corpora: disjoint splits, SFT rows, and the STRIDE-vs-baseline summary."""

import json

import pytest
from bench.matrix import CELLS, CELLS_BY_NAME, half_summary, recipes, stride_vs_best, table_lines, write_results
from bench.matrix_corpora import (
    FOLDOC_DIR,
    TOKENIZER_CORPORA,
    WORDNET_DIR,
    as_row,
    build_splits,
    definitions_entries,
    dictd_number,
    foldoc_entries,
)
from bench.matrix_holdout import cell_verdict


def read_rows(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_splits_are_disjoint_and_the_pretraining_split_takes_what_is_left(tmp_path):
    paths = build_splits("pydoc", "text", tmp_path, {"train": 50, "queries": 10, "pretrain": 10**6})
    rows = {name: [row["text"] for row in read_rows(path)] for name, path in paths.items()}
    assert len(rows["train"]) == 50 and len(rows["queries"]) == 10
    assert 0 < len(rows["pretrain"]) < 10**6
    assert not set(rows["train"]) & set(rows["queries"]) and not set(rows["pretrain"]) & set(rows["train"])
    again = build_splits("pydoc", "text", tmp_path / "again", {"train": 50, "queries": 10})
    assert [row["text"] for row in read_rows(again["train"])] == rows["train"]  # seeded


def test_sft_needs_a_corpus_with_prompts_and_too_small_corpora_stop(tmp_path):
    with pytest.raises(SystemExit, match="SFT needs"):
        build_splits("pydoc", "sft", tmp_path, {"train": 5})
    with pytest.raises(SystemExit, match="too few"):
        build_splits("pydoc", "text", tmp_path, {"train": 10**6})


@pytest.mark.skipif(not (WORDNET_DIR / "data.noun").is_file(), reason="apt-get install -y wordnet-base")
def test_definitions_become_prompt_completion_rows_and_pretraining_text(tmp_path):
    entries = definitions_entries()
    assert len(entries) > 10_000
    assert as_row(entries[0], "sft") == {"prompt": entries[0].prompt, "completion": entries[0].completion}
    paths = build_splits("definitions", "sft", tmp_path, {"train": 20, "queries": 5, "pretrain": 30})
    train, pretrain = read_rows(paths["train"]), read_rows(paths["pretrain"])
    assert set(train[0]) == {"prompt", "completion"} and train[0]["prompt"].endswith(":")
    assert set(pretrain[0]) == {"text"} and len(pretrain) == 30


def test_every_corpus_and_architecture_appears_at_least_twice_and_halves_balance_regimes():
    lm_cells = [c for c in CELLS if c.regime != "classifier" and c.half in "AB"]
    corpora = [c.corpus for c in lm_cells]
    assert len(set(corpora)) >= 4 and all(corpora.count(v) >= 2 for v in corpora)
    architectures = [c.architecture for c in lm_cells]
    assert all(architectures.count(v) >= 2 for v in ("gpt2", "llama", "qwen2"))
    for regime in {c.regime for c in CELLS}:  # the classifier regime too: settings are chosen on A only
        assert {c.half for c in CELLS if c.regime == regime} == {"A", "B", "C"}, regime


def test_half_c_is_held_out_on_a_corpus_no_other_half_uses():
    held_out = [c for c in CELLS if c.half == "C"]
    seen = {(c.regime, c.corpus, c.architecture) for c in CELLS if c.half != "C"}
    assert held_out and not {(c.regime, c.corpus, c.architecture) for c in held_out} & seen
    assert "foldoc" not in {c.corpus for c in CELLS if c.half != "C"} and "foldoc" not in TOKENIZER_CORPORA


def test_depth_width_and_vocabulary_replace_the_shape_of_the_model_and_its_base_alike():
    model, base = recipes(CELLS_BY_NAME["gentle_fortune_llama"], vocabulary=50257, depth=4, width=256)
    assert (model.n_layers, model.vocab_size, model.hidden_size) == (base.n_layers, base.vocab_size,
                                                                     base.hidden_size) == (4, 50257, 256)  # fmt: skip
    scratch, no_base = recipes(CELLS_BY_NAME["scratch_pydoc_gpt2"], depth=6)
    assert (scratch.n_layers, scratch.vocab_size, scratch.hidden_size, no_base) == (6, 512, 64, None)
    default, _ = recipes(CELLS_BY_NAME["gentle_fortune_llama"])
    assert (default.n_layers, default.vocab_size, default.hidden_size) == (2, 1024, 96)


def test_dictd_index_numbers_are_base_64_in_dictd_digit_order():
    assert dictd_number("A") == 0 and dictd_number("B") == 1 and dictd_number("/") == 63
    assert dictd_number("BA") == 64 and dictd_number("Gb9L") == ((6 * 64 + 27) * 64 + 61) * 64 + 11


@pytest.mark.skipif(not (FOLDOC_DIR / "foldoc.index").is_file(), reason="apt-get install -y dict-foldoc")
def test_foldoc_becomes_term_and_gloss_rows_without_markup(tmp_path):
    entries = foldoc_entries()
    assert len(entries) > 5_000 and len(set(entries)) == len(entries)
    assert all(e.prompt.endswith(":") and 40 < len(e.completion) <= 251 for e in entries)
    assert not any(c in e.completion for e in entries for c in "{}") and not entries[0].completion.startswith(" <")
    paths = build_splits("foldoc", "sft", tmp_path, {"train": 20, "queries": 5})
    assert set(read_rows(paths["train"])[0]) == {"prompt", "completion"}


def test_the_holdout_verdict_uses_the_regimes_advised_stride_and_the_shipped_partner(tmp_path):
    def row(lds):
        return {"lds": lds, "ceiling": 0.3}

    gentle = {"regime": "gentle", "rows": {"stride": row(0.3), "ekfac": row(0.4), "logra": row(0.5)}}
    classifier = {"regime": "classifier", "rows": {"stride": row(0.6), "ekfac": row(0.5)}}
    tagged = {
        "_second_auto": {"g": {"rows": {"stride": row(0.45)}}},
        "_partner_ekfac": {"c": {"rows": {"stride": row(0.7)}}},
    }
    for tag, cells in tagged.items():
        (tmp_path / f"matrix{tag}.json").write_text(json.dumps({"cells": cells}))
    verdict = cell_verdict(tmp_path, "g", gentle, weight=0.6)
    assert verdict["best_baseline"] == "logra" and verdict["ekfac_lds"] == 0.4
    assert verdict["lds"] == {"stride": 0.3, "stride_advised": 0.45, "stride_partner": None}  # no stored scores
    assert verdict["ratio"]["stride_advised"] == pytest.approx(0.9)
    verdict = cell_verdict(tmp_path, "c", classifier, weight=0.6)
    assert verdict["lds"] == {"stride": 0.6, "stride_advised": 0.6, "stride_partner": 0.7}


def test_stride_is_compared_with_the_best_baseline_per_half():
    def cell(half, stride, *baselines):
        rows = {"stride": {"lds": stride}} | {f"b{i}": {"lds": v} for i, v in enumerate(baselines)}
        return {"half": half, "rows": {("ekfac" if k == "b0" else "tfidf" if k == "b1" else k): v
                                       for k, v in rows.items()}}  # fmt: skip

    cells = {"x": cell("A", 0.4, 0.5, 0.2), "y": cell("A", 0.6, 0.3, 0.4), "z": cell("B", 0.2, 0.4, 0.1)}
    assert stride_vs_best(cells["x"]) == pytest.approx({"best_baseline": 0.5, "ratio": 0.8, "difference": -0.1})
    summary = half_summary(cells)
    assert summary["A"]["mean_ratio"] == pytest.approx((0.8 + 1.5) / 2)
    assert summary["B"] == pytest.approx({"cells": 1, "mean_ratio": 0.5, "mean_difference": -0.2})
    assert stride_vs_best({"half": "A", "rows": {"stride": {"lds": 0.3}}}) is None
    with_ci = {"half": "B", "rows": {"stride": {"lds": 0.5, "ci_low": 0.4, "ci_high": 0.6, "ceiling": 0.7,
                                                "ceiling_ci": [0.6, 0.8]}}}  # fmt: skip
    lines = table_lines({"c": with_ci}, markdown=True)
    assert lines[2] == "| stride | 0.500 [0.40, 0.60] |" and lines[-1] == "| ceiling | 0.700 [0.60, 0.80] |"


def test_a_cell_run_again_with_fewer_methods_keeps_the_other_rows(tmp_path):
    row = {"lds": 0.5, "ci_low": 0.4, "ci_high": 0.6, "ceiling": 0.7, "ceiling_ci": [0.6, 0.8]}
    name = CELLS[0].name
    first = {name: {"half": "A", "rows": {"stride": row, "ekfac": row}}}
    write_results(tmp_path / "matrix.json", first, {})
    merged = write_results(tmp_path / "matrix.json", {name: {"half": "A", "rows": {"ekfac": {**row, "lds": 0.9}}}}, {})
    assert merged[name]["rows"]["stride"] == row and merged[name]["rows"]["ekfac"]["lds"] == 0.9
    assert "| ekfac | 0.900 [0.40, 0.60] |" in (tmp_path / "matrix.md").read_text()
