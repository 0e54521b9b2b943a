"""The batched Lasso against scikit-learn, its cross-validation against LassoCV, and the top-k output."""

import warnings

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import Lasso, LassoCV

from stride.api import attribute
from stride.config import StrideConfig
from stride.core.sparse_rows import SparseRows
from stride.core.topk import top_and_bottom
from stride.method.batched_lasso import largest_correlations, solve
from stride.method.membership import example_subsets, membership_matrix
from stride.method.recover import cross_validated_lambda, penalty_grid, standardize

N, K, D, QUERIES = 600, 80, 8, 5


@pytest.fixture(scope="module")
def problem():
    """A sparse design and standardized responses with a planted sparse influence plus noise."""
    table = example_subsets(N, K, D, seed=3)
    membership = membership_matrix(table, K)
    rng = np.random.default_rng(3)
    truth = np.zeros((QUERIES, N))
    for query in range(QUERIES):
        truth[query, rng.choice(N, size=6, replace=False)] = rng.standard_normal(6)
    responses = (membership @ truth.T).T + 0.3 + 0.3 * rng.standard_normal((QUERIES, K))
    standardized, _ = standardize(responses)
    return table, membership, standardized


def _largest(table, responses):
    return largest_correlations(torch.as_tensor(table, dtype=torch.int64), K, torch.as_tensor(responses)).numpy() / K


@pytest.mark.parametrize("fraction", [1.5, 0.5, 0.1, 0.03])
def test_solutions_equal_scikit_learn_lasso_with_intercept(problem, fraction):
    table, membership, responses = problem
    penalties = _largest(table, responses) * fraction
    solution = solve(torch.as_tensor(table, dtype=torch.int64), K, torch.as_tensor(responses),
                     torch.as_tensor(penalties), tol=1e-10)  # fmt: skip
    ours = solution.coefficients(N).dense().numpy()
    for query in range(QUERIES):
        reference = Lasso(alpha=penalties[query], fit_intercept=True, tol=1e-12, max_iter=100_000)
        reference.fit(membership, responses[query])
        scale = max(np.abs(reference.coef_).max(), 1.0)
        assert np.abs(ours[query] - reference.coef_).max() <= 1e-6 * scale
        assert solution.intercepts[query].item() == pytest.approx(reference.intercept_, abs=1e-6)
    if fraction > 1:  # above the largest useful penalty every coefficient is zero
        assert solution.coefficients(N).nnz == 0


def test_a_problem_on_some_rows_equals_scikit_learn_on_those_rows(problem):
    table, membership, responses = problem
    rows = np.ones((QUERIES, K))
    rows[:, 10:26] = 0.0  # a held-out fold
    kept = rows[0] == 1
    penalties = _largest(table, responses) * 0.2
    solution = solve(torch.as_tensor(table, dtype=torch.int64), K, torch.as_tensor(responses),
                     torch.as_tensor(penalties), rows=torch.as_tensor(rows), tol=1e-10)  # fmt: skip
    ours = solution.coefficients(N).dense().numpy()
    for query in range(QUERIES):
        reference = Lasso(alpha=penalties[query], tol=1e-12, max_iter=100_000)
        reference.fit(membership[kept], responses[query][kept])
        assert np.abs(ours[query] - reference.coef_).max() <= 1e-6 * max(np.abs(reference.coef_).max(), 1.0)


def test_same_inputs_give_identical_solutions(problem):
    table, _, responses = problem
    arguments = (torch.as_tensor(table, dtype=torch.int64), K, torch.as_tensor(responses),
                 torch.as_tensor(_largest(table, responses) * 0.1))  # fmt: skip
    first, second = solve(*arguments).coefficients(N), solve(*arguments).coefficients(N)
    assert torch.equal(first.col_indices, second.col_indices) and torch.equal(first.values, second.values)


def test_cross_validation_picks_lasso_cv_penalty_within_one_grid_step(problem):
    table, membership, responses = problem
    responses = responses[:3]
    chosen = cross_validated_lambda(table, K, responses, n_queries=3, seed=0, solver="batched")
    grid = penalty_grid(torch.as_tensor(table, dtype=torch.int64), K, torch.as_tensor(responses), 15, 1e-2)
    steps = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        for query in range(len(responses)):
            search = LassoCV(alphas=15, eps=1e-2, cv=5, max_iter=5000, tol=1e-4).fit(membership, responses[query])
            np.testing.assert_allclose(search.alphas_, grid[query], rtol=1e-6)
            steps.append(int(np.argmin(np.abs(grid[query] - search.alpha_))))
    median_reference = float(np.median([grid[query, step] for query, step in enumerate(steps)]))
    ratio = grid[0, 0] / grid[0, 1]  # one grid step
    assert median_reference / ratio <= chosen * (1 + 1e-9) and chosen <= median_reference * ratio * (1 + 1e-9)
    assert chosen == cross_validated_lambda(table, K, responses, n_queries=3, seed=0, solver="batched")


def test_top_and_bottom_follow_a_stable_descending_sort():
    scores = torch.tensor([[0.0, 2.0, 0.0, -1.0, 2.0, 0.0, -1.0], [1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0]])
    top, bottom = top_and_bottom(scores, 4)
    for row in range(len(scores)):
        order = torch.argsort(scores[row], descending=True, stable=True)
        assert top[row].tolist() == order[:4].tolist()
        assert bottom[row].tolist() == order.flip(0)[:4].tolist()


def test_sparse_rows_round_trip_and_average():
    first = SparseRows.from_padded(
        torch.tensor([[3, 0, 1], [2, 2, 2]]), torch.tensor([[1.0, 0.0, -2.0], [0.0, 0.0, 0.0]]), 5
    )
    second = SparseRows.from_padded(
        torch.tensor([[1, 4, 0], [0, 1, 2]]), torch.tensor([[2.0, 1.0, 0.0], [3.0, 0.0, 0.0]]), 5
    )
    assert torch.equal(first.dense(), torch.tensor([[0.0, -2.0, 0.0, 1.0, 0.0], [0.0] * 5]))
    assert torch.equal(SparseRows.from_tensors(first.tensors()).dense(), first.dense())
    assert torch.allclose(SparseRows.mean([first, second]).dense(), (first.dense() + second.dense()).double() / 2)
    assert torch.equal(first.dense(1, 2), first.dense()[1:2])


def _stride(tmp_path, gpt2_dir, corpus, name, config, top_k=None):
    return attribute(gpt2_dir, corpus["train"], corpus["queries"], tmp_path / name, config=config, seed=0,
                     progress=False, top_k=top_k)  # fmt: skip


SMALL = dict(n_subsets=48, subsets_per_example=6, rank=8, epochs=2, batch_size=16, learning_rate=3e-2, cv_queries=4)


def test_top_k_output_matches_the_dense_run_and_stores_sparse_scores(gpt2_dir, corpus, tmp_path):
    """--top-k writes the top/bottom arrays and the sparse Lasso scores; with the first-order mix off
    they are the dense run's scores, here recovered by the batched solver at a fixed penalty."""
    config = StrideConfig(**SMALL, designs=1, first_order_weight=0.0, lambda_rule="fixed", lasso_lambda=0.05,
                          lasso_solver="batched")  # fmt: skip
    dense = _stride(tmp_path, gpt2_dir, corpus, "run", config).scores
    top = _stride(tmp_path, gpt2_dir, corpus, "run", config, top_k=5)
    assert top.scores is None and top.info["top_k"] == 5
    arrays = load_file(str(tmp_path / "run" / "top_scores.safetensors"))
    order = torch.argsort(dense, dim=1, descending=True, stable=True)
    assert torch.equal(arrays["top_indices"], order[:, :5])
    assert torch.equal(arrays["bottom_indices"], order.flip(1)[:, :5])
    assert torch.equal(arrays["top_scores"], dense.gather(1, order[:, :5]))
    sparse = SparseRows.from_tensors(load_file(str(tmp_path / "run" / "scores_sparse.safetensors")))
    assert torch.equal(sparse.dense(), dense) and sparse.nnz < dense.numel()


def test_top_k_of_the_hybrid_equals_the_dense_hybrid(gpt2_dir, corpus, tmp_path, monkeypatch):
    """Two designs mixed with the first-order scores (cross-fitted weight), computed two queries at
    a time, rank as the dense scores do."""
    config = StrideConfig(**SMALL, designs=2)
    dense = _stride(tmp_path, gpt2_dir, corpus, "run", config)
    monkeypatch.setattr("stride.core.topk.CHUNK_ENTRIES", 2 * dense.scores.shape[1])
    top = _stride(tmp_path, gpt2_dir, corpus, "run", config, top_k=3)
    order = torch.argsort(dense.scores, dim=1, descending=True, stable=True)
    assert torch.equal(top.top.top_indices, order[:, :3])
    assert torch.allclose(top.top.bottom_scores, dense.scores.gather(1, order.flip(1)[:, :3]))
    hybrid, chunked = dense.info["stages"]["hybrid"], top.info["stages"]["hybrid"]
    assert chunked["first_order_weight"] == hybrid["first_order_weight"] > 0
    assert chunked["criteria"] == pytest.approx(hybrid["criteria"], abs=1e-12)
