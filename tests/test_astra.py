"""ASTRA: its iterations converge to the exact damped-Fisher influence on a tiny model; determinism; bad settings."""

from pathlib import Path

import pytest
import torch
from torch import nn

from stride.api import attribute
from stride.baselines.astra import AstraSettings, LayerGradients, curvature_batches
from stride.baselines.ekfac import linear_copy
from stride.corpus import read_fortunes
from stride.data import load_data, write_jsonl
from stride.errors import StrideError
from stride.lm_training import LMRecipe, train_lm
from stride.losses import sequence_losses
from stride.models import load_causal_lm
from stride.tasks import CausalLMTask

pytest.importorskip("kronfluence")

CONTEXT = 32
# 1 block, width 8, 300 tokens: 3,240 tracked parameters (the tied output head's 2,400 included)
MICRO = LMRecipe(architecture="gpt2", n_layers=1, hidden_size=8, n_heads=2, vocab_size=300, context=CONTEXT,
                 epochs=4, learning_rate=1e-2, batch_size=16, seed=0)  # fmt: skip


@pytest.fixture(scope="module")
def micro(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("micro")
    texts = list(read_fortunes("murphy", max_chars=90))[:70]
    train = write_jsonl([{"text": t} for t in texts[:64]], root / "train.jsonl")
    queries = write_jsonl([{"text": t} for t in [texts[3], *texts[64:68]]], root / "queries.jsonl")
    with pytest.warns(UserWarning, match="truncated"):
        model = train_lm(train, root / "model", MICRO, progress=False)
    return {"model": model, "train": train, "queries": queries, "root": root}


def _astra(micro, out, seed=0, **settings):
    with pytest.warns(UserWarning, match="truncated"):
        return attribute(micro["model"], micro["train"], micro["queries"], out, method="astra", seed=seed,
                         progress=False, method_settings=settings).scores  # fmt: skip


def _layer_gradients(model: nn.Module, data) -> torch.Tensor:
    """Every linear layer's per-example loss gradient [n, weights and biases], one backward pass per
    example, on a copy whose output head is untied from the input embedding (its own use only)."""
    model = linear_copy(model)
    model.lm_head.weight = nn.Parameter(model.lm_head.weight.detach().clone())
    model.requires_grad_(True)
    layers = [m for m in model.modules() if isinstance(m, nn.Linear)]
    params = [p for m in layers for p in m.parameters()]
    rows = []
    for index in range(len(data)):
        batch = data.batch([index])
        with torch.enable_grad():
            logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
            grads = torch.autograd.grad(sequence_losses(logits, batch)[0], params)
        rows.append(torch.cat([g.reshape(-1) for g in grads]).double())
    return torch.stack(rows)


@pytest.mark.slow  # about 10 s of CPU; 30 s on the shared cores
def test_astra_converges_to_the_exact_damped_fisher_influence(micro, tmp_path):
    """Empirical Fisher, whole-set batches: the iterations solve (G + λI) x = g_q, G = mean g_i g_i^T,
    exactly; the reference forms G (3,240 x 3,240) and solves it directly."""
    model, tokenizer = load_causal_lm(micro["model"])
    with pytest.warns(UserWarning, match="truncated"):
        train = load_data(micro["train"], tokenizer, CONTEXT)
        queries = load_data(micro["queries"], tokenizer, CONTEXT)
    a, v = _layer_gradients(model, train), _layer_gradients(model, queries)
    assert a.shape[1] == 3240
    damping = 1e-2  # about 70 x the mean EK-FAC eigenvalue: 100 iterations reach 1e-4
    fisher = a.T @ a / len(train) + damping * torch.eye(a.shape[1], dtype=torch.float64)
    exact = (torch.linalg.solve(fisher, v.T).T @ a.T).float()
    settings = dict(use_empirical_fisher=True, curvature_batch_size=1000, damping=damping)

    def error(scores: torch.Tensor) -> float:
        return float((scores - exact).norm() / exact.norm())

    ekfac_only = error(_astra(micro, tmp_path / "one", iterations=1, step_size=1.0, **settings))
    converged = error(_astra(micro, tmp_path / "many", iterations=100, **settings))
    assert converged < 1e-3, converged
    assert ekfac_only > 10 * converged, (ekfac_only, converged)  # the iterations, not EK-FAC, did it


def test_sampled_gradients_score_the_inputs_own_logits_against_drawn_targets(micro):
    """The true Fisher's samples, as kronfluence draws them: the model reads the example's own tokens,
    the loss compares its logits with targets drawn from them (no second pass over drawn tokens)."""
    model, tokenizer = load_causal_lm(micro["model"])
    with pytest.warns(UserWarning, match="truncated"):
        train = load_data(micro["train"], tokenizer, CONTEXT)
    model = linear_copy(model)
    batch, task = train.batch([0, 1]), CausalLMTask()
    gradients = LayerGradients(model, ["transformer.h.0.mlp.c_fc"], task)
    got = gradients(batch, generator=torch.Generator().manual_seed(5))["transformer.h.0.mlp.c_fc"]
    layer = model.get_submodule("transformer.h.0.mlp.c_fc")
    layer.requires_grad_(True)
    with torch.enable_grad():
        logits = task.outputs(model, batch)
        drawn = task.sample_targets(logits, batch, torch.Generator().manual_seed(5))
        assert not torch.equal(drawn.input_ids, batch.input_ids)
        for row in range(2):
            weight, bias = torch.autograd.grad(task.losses(logits, drawn)[row], [layer.weight, layer.bias],
                                               retain_graph=True)  # fmt: skip
            torch.testing.assert_close(got[row], torch.cat([weight, bias[:, None]], 1), atol=1e-6, rtol=1e-4)


def test_same_seed_same_scores_other_seed_other_batches(micro, tmp_path):
    settings = dict(iterations=3, curvature_batch_size=16)
    first = _astra(micro, tmp_path / "a", **settings)
    assert torch.equal(first, _astra(micro, tmp_path / "b", **settings))
    assert not torch.equal(first, _astra(micro, tmp_path / "c", seed=1, **settings))


def test_query_memory_sets_the_passes_not_the_scores(micro, tmp_path):
    settings = dict(iterations=3, curvature_batch_size=16)
    together = _astra(micro, tmp_path / "together", **settings)  # 1 GiB: all five queries in one pass
    one_by_one = _astra(micro, tmp_path / "one", query_memory_gib=1e-9, **settings)  # one query per pass
    torch.testing.assert_close(one_by_one, together)
    # the budget is not recorded: the finished run is reused under another one
    assert torch.equal(_astra(micro, tmp_path / "one", query_memory_gib=2.0, **settings), one_by_one)


def test_curvature_batches_cover_the_data_once_per_pass():
    batches = list(curvature_batches(10, 4, 5, torch.Generator().manual_seed(0)))
    assert [len(b) for b in batches] == [4, 4, 4, 4, 4]
    assert len(set(batches[0] + batches[1])) == 8  # no repeats within a pass
    assert list(curvature_batches(3, 4, 2, torch.Generator())) == [[0, 1, 2], [0, 1, 2]]


@pytest.mark.parametrize("settings,words", [
    ({"iterations": 0}, "iterations must be a positive integer"),
    ({"iterations": 2.5}, "iterations must be a positive integer"),
    ({"curvature_batch_size": True}, "curvature_batch_size must be a positive integer"),
    ({"step_size": -1.0}, "step_size must be a positive number"),
    ({"damping": 0}, "damping must be a positive number"),
    ({"query_memory_gib": -2}, "query_memory_gib must be a positive number"),
    ({"modules": "heads"}, "modules must be one of"),
])  # fmt: skip
def test_bad_settings_are_refused(settings, words):
    with pytest.raises(StrideError, match=words):
        AstraSettings(**settings).validate()
