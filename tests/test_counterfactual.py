"""Counterfactual removal: removal sets, the report, resumption, the CLI, and a removal signal."""

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from stride.api import counterfactual
from stride.cli import main
from stride.errors import StrideError
from stride.evaluation.counterfactual import (
    counterfactual_report,
    random_removals,
    select_queries,
    top_k_removals,
)

from conftest import N_QUERIES, N_TRAIN

# Several epochs at a high learning rate, so that fine-tuning without a query's exact duplicate
# (conftest: queries 0 and 1 copy training examples 3 and 40) visibly raises the query's loss.
RECIPE = dict(n_layers=2, hidden_size=32, n_heads=2, vocab_size=320, context=64, epochs=6, learning_rate=1e-2,
              batch_size=16)  # fmt: skip
DUPLICATES = {0: 3, 1: 40}
KS = [3, 10]


def _scores() -> torch.Tensor:
    """Random scores, except that each duplicated query scores its own training copy highest."""
    scores = torch.randn(N_QUERIES, N_TRAIN, generator=torch.Generator().manual_seed(0))
    for query, example in DUPLICATES.items():
        scores[query, example] = 100.0
    return scores


def test_removal_sets_are_the_top_scores_and_seeded_random_draws():
    scores = np.array([[0.1, 0.5, 0.5, -2.0, 0.3], [9.0, 1.0, 2.0, 3.0, 4.0]])
    assert top_k_removals(scores, [0, 1], 3).tolist() == [[1, 2, 4], [0, 4, 3]]  # a tie goes to the lower index
    assert top_k_removals(scores, [1], 2).tolist() == [[0, 4]]

    drawn = random_removals(50, [0, 3, 4], n_seeds=3, k_max=10, seed=7)
    assert drawn.shape == (3, 3, 10) and drawn.min() >= 0 and drawn.max() < 50
    assert all(len(set(row)) == 10 for row in drawn.reshape(-1, 10).tolist())
    assert np.array_equal(drawn, random_removals(50, [0, 3, 4], n_seeds=3, k_max=10, seed=7))
    assert not np.array_equal(drawn, random_removals(50, [0, 3, 4], n_seeds=3, k_max=10, seed=8))
    assert len({row.tobytes() for row in drawn[0]}) == 3  # different per seed
    # drawn per query, whatever else is selected
    assert np.array_equal(drawn[1], random_removals(50, [3], n_seeds=3, k_max=10, seed=7)[0])

    assert select_queries(6, None, 0) == list(range(6)) and select_queries(6, [4, 1], 0) == [4, 1]
    some = select_queries(100, 5, seed=3)
    assert len(set(some)) == 5 and some == sorted(some) and some == select_queries(100, 5, seed=3)


def test_report_reads_each_query_column_and_averages_seeds():
    full = np.array([[1.0, 2.0, 3.0], [1.2, 2.2, 3.2]])  # [seeds, queries in file]
    top = np.zeros((2, 2, 2, 3))  # [k, selected queries (2 and 0), seeds, queries in file]
    random = np.zeros((2, 2, 2, 3))
    top[:, 0, :, 2] = full[:, 2] + np.array([[0.5, 0.7], [1.0, 1.2]])  # query 2: +0.6 at k1, +1.1 at k2
    top[:, 1, :, 0] = full[:, 0] + 0.2  # query 0: +0.2
    random[:, 0, :, 2] = full[:, 2] + 0.1
    random[:, 1, :, 0] = full[:, 0] - 0.1
    report = counterfactual_report(full, top, random, [5, 10], [2, 0], n_resamples=200)
    np.testing.assert_allclose(report.top_increase, [[0.6, 0.2], [1.1, 0.2]])
    np.testing.assert_allclose(report.random_increase, [[0.1, -0.1], [0.1, -0.1]])
    np.testing.assert_allclose(report.full_loss, [3.1, 1.1])
    first = report.per_k()[0]
    assert first["k"] == 5 and first["top_k"]["mean"] == pytest.approx(0.4)
    assert first["difference"]["mean"] == pytest.approx(0.4)
    assert first["difference"]["ci_low"] <= 0.3 + 1e-9 and first["difference"]["ci_high"] >= 0.5 - 1e-9
    with pytest.raises(ValueError, match="shape"):
        counterfactual_report(full, top[:1], random, [5, 10], [2, 0])


@pytest.fixture(scope="module")
def finished(gpt2_dir, corpus, tmp_path_factory):
    """One fine-tune counterfactual run through the CLI: queries 0 and 1, k in {3, 10}, 2 seeds."""
    root = tmp_path_factory.mktemp("counterfactual")
    save_file({"scores": _scores()}, str(root / "scores.safetensors"))
    (root / "recipe.json").write_text(json.dumps(RECIPE))
    code = main([
        "counterfactual", "--model", str(gpt2_dir), "--train", str(corpus["train"]), "--queries",
        str(corpus["queries"]), "--scores", str(root / "scores.safetensors"), "--out", str(root / "out"),
        "--base", str(gpt2_dir), "--k", *map(str, KS), "--seeds", "2", "--queries-subset", "0,1",
        "--recipe", str(root / "recipe.json"), "--workers", "2", "--quiet",
    ])  # fmt: skip
    assert code == 0
    return root


@pytest.mark.slow
def test_run_writes_the_report_losses_and_removal_sets(finished):
    out = finished / "out"
    report = json.loads((out / "report.json").read_text())
    assert report["ks"] == KS and report["n_queries"] == 2 and report["n_seeds"] == 2
    assert [row["k"] for row in report["per_k"]] == KS
    for row in report["per_k"]:
        for key in ("top_k", "random", "difference"):
            assert set(row[key]) == {"mean", "ci_low", "ci_high"}
            assert row[key]["ci_low"] <= row[key]["mean"] <= row[key]["ci_high"]
    assert [row["query"] for row in report["per_query"]] == [0, 1]
    assert all(len(row["top_k_increase"]) == len(row["random_increase"]) == 2 for row in report["per_query"])
    assert report["run"]["retrains"] == 2 + 2 * 2 * 2 * 2 and (out / "counterfactual.png").stat().st_size > 0

    losses = load_file(str(out / "losses.safetensors"))
    assert losses["full"].shape == (2, N_QUERIES)
    assert losses["top"].shape == losses["random"].shape == (2, 2, 2, N_QUERIES)
    assert torch.isfinite(losses["top"]).all() and losses["query_indices"].tolist() == [0, 1]
    removals = load_file(str(out / "removals.safetensors"))
    assert np.array_equal(removals["top"].numpy(), top_k_removals(_scores().numpy(), [0, 1], 10))
    assert removals["top"][:, 0].tolist() == [3, 40]
    assert np.array_equal(removals["random"].numpy(), random_removals(N_TRAIN, [0, 1], 2, 10, seed=0))
    assert len(list((out / "retrains").glob("*.safetensors"))) == report["run"]["retrains"]


@pytest.mark.slow
def test_removing_a_querys_duplicate_raises_its_loss_more_than_random_removal(finished):
    report = json.loads((finished / "out" / "report.json").read_text())
    for row in report["per_query"]:  # k = 3: the top-3 holds the duplicate, a random 3 almost never
        assert row["top_k_increase"][0] > 0.05, row
        assert row["top_k_increase"][0] > row["random_increase"][0] + 0.05, row


@pytest.mark.slow
def test_resumes_only_the_missing_retrain_with_identical_results(finished, gpt2_dir, corpus):
    out = finished / "out"
    before = load_file(str(out / "losses.safetensors"))
    report_before = json.loads((out / "report.json").read_text())
    (out / "retrains" / "top_q0001_k3_s1.safetensors").unlink()
    kwargs = dict(regime="finetune", base_dir=gpt2_dir, ks=KS, n_seeds=2, queries_subset=[0, 1], recipe=RECIPE,
                  workers=2, progress=False)  # fmt: skip
    scores = finished / "scores.safetensors"
    report = counterfactual(gpt2_dir, corpus["train"], corpus["queries"], scores, out, **kwargs)
    assert report.run["retrains_this_call"] == 1
    after = load_file(str(out / "losses.safetensors"))
    assert all(torch.equal(before[name], after[name]) for name in before)
    assert report.to_dict()["per_k"] == report_before["per_k"]

    with pytest.raises(StrideError, match="another spec"):
        counterfactual(gpt2_dir, corpus["train"], corpus["queries"], scores, out, **{**kwargs, "ks": [3]})


def _expect_error(capsys, code, fragment):
    err = capsys.readouterr().err
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("stride: error:") and fragment in lines[0], err


def test_cli_rejects_scores_of_the_wrong_shape_and_bad_queries(gpt2_dir, corpus, tmp_path, capsys):
    scores = tmp_path / "scores.safetensors"
    save_file({"scores": torch.randn(N_QUERIES, N_TRAIN + 1)}, str(scores))
    args = ["counterfactual", "--model", str(gpt2_dir), "--train", str(corpus["train"]), "--queries",
            str(corpus["queries"]), "--scores", str(scores), "--out", str(tmp_path / "out"), "--base", str(gpt2_dir),
            "--quiet"]  # fmt: skip
    _expect_error(capsys, main(args), f"shape [{N_QUERIES}, {N_TRAIN + 1}]")
    save_file({"scores": torch.randn(N_QUERIES, N_TRAIN)}, str(scores))
    _expect_error(capsys, main([*args, "--queries-subset", "0,9"]), "out of range")
    _expect_error(capsys, main([*args, "--k", "3", str(N_TRAIN)]), "k must be")
