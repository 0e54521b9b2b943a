"""The baselines: end to end through stride.api.attribute, plus checks of their mathematical parts."""

import json

import pytest
import torch

from stride.api import attribute
from stride.baselines.ekfac import linear_copy
from stride.baselines.gradients import per_example_gradients
from stride.baselines.gradsim import GradSimSettings
from stride.core.sketch import GradientProjector, parameter_sizes
from stride.baselines.logra import (
    KroneckerProjector,
    eigenvalue_corrected,
    kfac_factors,
    preconditioned,
    projected_layer_gradients,
    tracked_layers,
)
from stride.data import load_data
from stride.errors import StrideError
from stride.losses import sequence_losses
from stride.models import load_causal_lm

from conftest import N_QUERIES, N_TRAIN

# Small settings: each run takes a second or two on the conftest models.
SMALL = {
    "tfidf": {}, "bm25": {}, "repsim": {},
    "graddot": {"proj_dim": 512}, "gradcos": {"proj_dim": 512},
    "trak": {"proj_dim": 256}, "ekfac": {}, "logra": {"rank": 16}, "astra": {"iterations": 5},
}  # fmt: skip
LIBRARY = {"bm25": "bm25s", "trak": "trak", "ekfac": "kronfluence", "astra": "kronfluence"}
GRADIENT_METHODS = ("graddot", "gradcos", "trak", "ekfac", "logra", "astra")
DUPLICATES = ((0, 3), (1, 40))


def _run(model_dir, corpus, out, method, **settings):
    if method in LIBRARY:
        pytest.importorskip(LIBRARY[method])
    return attribute(model_dir, corpus["train"], corpus["queries"], out, method=method, seed=0, progress=False,
                     method_settings={**SMALL[method], **settings})  # fmt: skip


def _check_contract(result, method):
    scores = result.scores
    assert scores.shape == (N_QUERIES, N_TRAIN) and scores.dtype == torch.float32
    for query, duplicate in DUPLICATES:
        top5 = torch.argsort(scores[query], descending=True)[:5].tolist()
        assert duplicate in top5, f"{method}: training example {duplicate} not in query {query}'s top 5: {top5}"
        # sign convention: the exact copy of the query lowers its loss, so it scores positive
        value = scores[query, duplicate]
        assert value > 0, f"{method}: the duplicate of query {query} scores {value}"


@pytest.mark.parametrize("method", sorted(SMALL))
def test_every_baseline_on_gpt2_ranks_exact_duplicates_top5(method, gpt2_dir, corpus, tmp_path):
    result = _run(gpt2_dir, corpus, tmp_path / "run", method)
    _check_contract(result, method)
    info = json.loads((tmp_path / "run" / "info.json").read_text())
    assert info["method"] == method and info["settings"]["seed"] == 0
    assert all(info["settings"][k] == v for k, v in SMALL[method].items())
    assert len(info["timings_seconds"]) >= 2  # at least one stage besides the total


@pytest.mark.slow
@pytest.mark.parametrize("method", GRADIENT_METHODS)
def test_gradient_baselines_on_llama_rank_exact_duplicates_top5(method, llama_dir, corpus, tmp_path):
    _check_contract(_run(llama_dir, corpus, tmp_path / "run", method), method)


def test_lexical_scores_are_exact_for_duplicates(gpt2_dir, corpus, tmp_path):
    scores = _run(gpt2_dir, corpus, tmp_path / "tfidf", "tfidf").scores
    assert scores[0, 3] == pytest.approx(1.0) and scores.max() <= 1.0 + 1e-6


def test_same_seed_same_scores_other_seed_other_projection(gpt2_dir, corpus, tmp_path):
    """Random projections follow the seed; exact gradients and PCA projections have none to follow."""
    random_projections = {"graddot": {"exact_max_parameters": 0}, "logra": {"initialization": "random", "hessian": "raw"}}
    for method, settings in random_projections.items():
        first = _run(gpt2_dir, corpus, tmp_path / f"{method}-a", method, **settings).scores
        second = _run(gpt2_dir, corpus, tmp_path / f"{method}-b", method, **settings).scores
        assert torch.equal(first, second), method
        other = attribute(gpt2_dir, corpus["train"], corpus["queries"], tmp_path / f"{method}-c", method=method,
                          seed=1, progress=False, method_settings={**SMALL[method], **settings}).scores  # fmt: skip
        assert not torch.equal(first, other), method
    for method in ("graddot", "logra"):  # the defaults: exact gradients, PCA projections
        first = _run(gpt2_dir, corpus, tmp_path / f"{method}-d", method).scores
        other = attribute(gpt2_dir, corpus["train"], corpus["queries"], tmp_path / f"{method}-e", method=method,
                          seed=1, progress=False, method_settings=SMALL[method]).scores  # fmt: skip
        assert torch.equal(first, other), method


def test_checkpoints_add_up(gpt2_dir, corpus, tmp_path):
    single = _run(gpt2_dir, corpus, tmp_path / "one", "graddot").scores
    double = _run(gpt2_dir, corpus, tmp_path / "two", "graddot", checkpoints=[str(gpt2_dir)],
                  checkpoint_weights=[1.0, 0.5]).scores  # fmt: skip
    torch.testing.assert_close(double, 1.5 * single)


def test_trak_ensemble_of_checkpoints(gpt2_dir, corpus, tmp_path):
    result = _run(gpt2_dir, corpus, tmp_path / "run", "trak", checkpoints=[str(gpt2_dir)])
    _check_contract(result, "trak")
    assert len(result.info["settings"]["lambda_used"]) == 2 and min(result.info["settings"]["lambda_used"]) > 0


def test_trak_projections_agree(gpt2_dir, corpus, tmp_path):
    """The count sketch and TRAKer's Gaussian projector are both JL maps: their scores agree closely."""
    sparse = _run(gpt2_dir, corpus, tmp_path / "sjlt", "trak", proj_dim=512).scores
    dense = _run(gpt2_dir, corpus, tmp_path / "gaussian", "trak", proj_dim=512, projection="gaussian").scores
    agreement = torch.corrcoef(torch.stack([sparse.flatten(), dense.flatten()]))[0, 1]
    assert agreement > 0.9, f"correlation of the two projections' scores: {agreement:.3f}"


def test_unknown_or_bad_settings_are_refused(gpt2_dir, corpus, tmp_path):
    with pytest.raises(StrideError, match="unknown setting"):
        _run(gpt2_dir, corpus, tmp_path / "a", "graddot", proj_dimension=8)
    with pytest.raises(StrideError, match="projection"):
        _run(gpt2_dir, corpus, tmp_path / "b", "gradcos", projection="fourier")
    with pytest.raises(StrideError, match="checkpoint folder not found"):
        _run(gpt2_dir, corpus, tmp_path / "c", "graddot", checkpoints=[str(tmp_path / "missing")])


@pytest.fixture(scope="module")
def gpt2(gpt2_dir, corpus):
    model, tokenizer = load_causal_lm(gpt2_dir)
    return model, load_data(corpus["train"], tokenizer, 64), load_data(corpus["queries"], tokenizer, 64)


def _flat(grads, rows):
    return torch.cat([g.reshape(rows, -1) for g in grads.values()], dim=1)


def _loss(model, data, index):
    batch = data.batch([index])
    return sequence_losses(model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits, batch)[0]


def test_gradient_dot_predicts_the_loss_change_of_a_gradient_step(gpt2):
    """The sign convention from first principles: a small SGD step on training example i changes the
    query's loss by about -lr * <g_i, g_q>, so a positive dot product means a lower query loss."""
    model, train, queries = gpt2
    query = _flat(per_example_gradients(model, queries.batch([2])), 1)[0]
    train_grads = per_example_gradients(model, train.batch(list(range(12))))
    dots = _flat(train_grads, 12) @ query
    before = _loss(model, queries, 2).item()
    lr = 1e-3
    predicted, actual = [], []
    params = dict(model.named_parameters())
    for i in (int(dots.argmax()), int(dots.argmin())):
        with torch.no_grad():
            for name, g in train_grads.items():
                params[name].sub_(lr * g[i])
            actual.append(_loss(model, queries, 2).item() - before)
            for name, g in train_grads.items():
                params[name].add_(lr * g[i])
        predicted.append(-lr * dots[i].item())
    assert actual[0] < 0 < actual[1]
    assert actual == pytest.approx(predicted, rel=0.1)


@pytest.mark.parametrize("kind", ["sjlt", "gaussian"])
def test_projected_gradients_keep_inner_products(kind, gpt2):
    model, train, _ = gpt2
    grads = per_example_gradients(model, train.batch(list(range(24))))
    exact = _flat(grads, 24)
    projected = GradientProjector(parameter_sizes(model), 4096, seed=0, kind=kind).project(grads)
    exact_gram, projected_gram = exact @ exact.T, projected @ projected.T
    assert torch.corrcoef(torch.stack([exact_gram.flatten(), projected_gram.flatten()]))[0, 1] > 0.97
    scale = exact_gram.diagonal().mean()
    assert ((projected_gram - exact_gram).abs().max() / scale) < 0.3


def test_logra_unprojected_layer_gradients_are_the_exact_per_example_gradients(gpt2):
    model, train, _ = gpt2
    layers = tracked_layers(model, "blocks")
    projector = KroneckerProjector(layers, rank=1024, seed=0)  # rank above every dimension: no projection
    assert all(p is None for pair in projector.matrices.values() for p in pair)
    logra = projected_layer_gradients(model, layers, projector, train, 16)
    exact = per_example_gradients(model, train.batch(list(range(16))))
    assert {type(m).__name__ for m in layers.values()} == {"Conv1D"}
    for name in layers:
        # Conv1D stores its weight as inputs x outputs; LoGra's gradient is outputs x inputs
        expected = exact[f"{name}.weight"].transpose(1, 2).reshape(16, -1)
        torch.testing.assert_close(logra[name][:16], expected, atol=1e-6, rtol=1e-4)


def test_logra_preconditioner_is_the_damped_fisher_inverse():
    features = torch.randn(10, 30, generator=torch.Generator().manual_seed(0), dtype=torch.float64).float()
    result, damping = preconditioned(features, 0.1)
    fisher = features.double().T @ features.double() / 10
    assert damping == pytest.approx(0.1 * fisher.trace().item() / 30)
    expected = features.double() @ torch.linalg.inv(fisher + damping * torch.eye(30, dtype=torch.float64))
    torch.testing.assert_close(result, expected.float(), atol=1e-4, rtol=1e-4)


def test_logra_kfac_factors_match_a_per_example_reference(gpt2):
    """A = mean x x^T and S = mean delta delta^T over real tokens, against one example at a time."""
    model, train, _ = gpt2
    layers = tracked_layers(model, "all")
    assert "lm_head" in layers  # "all" and the default "auto" (a 320-token vocabulary) track the head
    factors = kfac_factors(model, layers, train, batch_size=7)
    name = next(iter(layers))
    captured = {}
    handle = layers[name].register_forward_hook(lambda m, args, out: captured.update(x=args[0], out=out))
    sum_in, sum_out, tokens = 0.0, 0.0, 0
    for index in range(len(train)):
        batch = train.batch([index])
        with torch.enable_grad():
            embeddings = model.get_input_embeddings()(batch.input_ids).requires_grad_(True)
            logits = model(inputs_embeds=embeddings, attention_mask=batch.attention_mask).logits
            (delta,) = torch.autograd.grad(sequence_losses(logits, batch).sum(), captured["out"])
        sum_in = sum_in + captured["x"][0].double().T @ captured["x"][0].double()
        sum_out = sum_out + delta[0].double().T @ delta[0].double()
        tokens += batch.input_ids.shape[1]
    handle.remove()
    torch.testing.assert_close(factors[f"in:{name}"], (sum_in / tokens).float(), atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(factors[f"out:{name}"], (sum_out / tokens).float(), atol=1e-8, rtol=1e-3)


def test_logra_pca_projections_are_the_factors_leading_eigenvectors(gpt2):
    model, train, _ = gpt2
    layers = tracked_layers(model, "blocks")
    projector = KroneckerProjector(layers, rank=8, seed=0)
    factors = kfac_factors(model, layers, train, batch_size=16)
    projector.use_factors(factors, 8)
    name = next(iter(layers))
    p_in, _ = projector.matrices[name]
    factor = factors[f"in:{name}"].double()
    values = torch.linalg.eigvalsh(factor).flip(0)[:8]
    torch.testing.assert_close(p_in.double() @ p_in.double().T, torch.eye(8, dtype=torch.float64), atol=1e-5, rtol=0)
    torch.testing.assert_close(p_in.double() @ factor @ p_in.double().T, torch.diag(values), atol=1e-4, rtol=1e-3)


def test_logra_eigenvalue_correction_divides_by_the_damped_mean_square():
    features = torch.tensor([[1.0, 0.0, 2.0], [3.0, 0.0, -2.0]])
    result, damping = eigenvalue_corrected(features, 0.5)
    h = torch.tensor([5.0, 0.0, 4.0])
    assert damping == pytest.approx(0.5 * 3.0)
    torch.testing.assert_close(result, features / (h + 1.5))


def test_ekfac_linear_copy_computes_the_same_logits(gpt2):
    model, train, _ = gpt2
    copy = linear_copy(model)
    assert not any(type(m).__name__ == "Conv1D" for m in copy.modules())
    batch = train.batch(list(range(4)))
    with torch.no_grad():
        a = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
        b = copy(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
    torch.testing.assert_close(a, b)


def _reference_gradients(model, data):
    """Per-example gradients by one backward pass per example (slow, plain autograd) -> [n, n_params]."""
    rows = []
    for index in range(len(data)):
        batch = data.batch([index])
        model.zero_grad()
        with torch.enable_grad():
            model.requires_grad_(True)
            logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
            sequence_losses(logits, batch)[0].backward()
        rows.append(torch.cat([p.grad.reshape(-1) for _, p in model.named_parameters()]))
        model.requires_grad_(False)
    return torch.stack(rows)


@pytest.mark.parametrize("method", ["graddot", "gradcos"])
def test_exact_gradient_similarity_matches_a_slow_autograd_reference(method, gpt2_dir, corpus, tmp_path):
    result = _run(gpt2_dir, corpus, tmp_path / "run", method, exact_max_parameters=10**9)
    assert result.info["settings"]["exact"] and "train_features_0" not in result.info["stages"]
    model, tokenizer = load_causal_lm(gpt2_dir)
    train = load_data(corpus["train"], tokenizer, 64)
    queries = load_data(corpus["queries"], tokenizer, 64)
    train_grads, query_grads = _reference_gradients(model, train), _reference_gradients(model, queries)
    if method == "gradcos":
        train_grads = torch.nn.functional.normalize(train_grads, dim=1)
        query_grads = torch.nn.functional.normalize(query_grads, dim=1)
    expected = query_grads @ train_grads.T
    assert torch.allclose(result.scores, expected, rtol=1e-3, atol=1e-4 * float(expected.abs().max()))
    sketched = _run(gpt2_dir, corpus, tmp_path / "sketch", method, exact_max_parameters=0).scores
    assert not torch.allclose(sketched, expected, rtol=1e-3)  # the sketch is an approximation


def test_query_memory_of_exact_graddot_sets_the_passes_not_the_scores(gpt2_dir, corpus, tmp_path):
    together = _run(gpt2_dir, corpus, tmp_path / "together", "graddot", exact_max_parameters=10**9).scores
    one_by_one = _run(gpt2_dir, corpus, tmp_path / "one", "graddot", exact_max_parameters=10**9,
                      query_memory_gib=1e-9).scores  # one query per pass over the training set  # fmt: skip
    # float32 products of other block shapes: equal up to rounding
    torch.testing.assert_close(one_by_one, together, rtol=1e-4, atol=1e-5 * float(together.abs().max()))
    # the budget is not recorded: the finished run is reused under another one
    again = _run(gpt2_dir, corpus, tmp_path / "one", "graddot", exact_max_parameters=10**9, query_memory_gib=2.0)
    assert torch.equal(again.scores, one_by_one)


@pytest.mark.parametrize("value", [0, -1.5, "1"])
def test_graddot_refuses_a_bad_query_memory(value):
    with pytest.raises(StrideError, match="query_memory_gib must be a positive number"):
        GradSimSettings(query_memory_gib=value).validate()
