"""The operator forms, the shared_logit form in particular: shapes, start at the base model,
trainability, determinism and a bank memory that does not grow with the vocabulary."""

import itertools
import json

import pytest
import torch
from safetensors.torch import load_file

from conftest import N_TRAIN
from stride.api import attribute
from stride.classifiers import attribute_classifier, classifier_config
from stride.config import StrideConfig
from stride.data import load_data
from stride.errors import StrideError
from stride.method import query_blocks
from stride.method.expansion import (
    EXACT,
    SECOND_ORDER,
    check_second_order,
    measured_responses,
    pass_queries,
    second_order_responses,
)
from stride.method.first_order import first_order_family, restricted_gradients
from stride.method.measure import query_responses
from stride.method.membership import example_subsets
from stride.method.operators import (
    HASHED_LOGIT,
    SHARED_LOGIT,
    OperatorBank,
    bank_parameters,
    head_output_basis,
    operator_width,
    training_bytes,
)
from stride.method.steering import SteeredModel
from stride.method.train import OperatorTrainer
from stride.models import decoder_blocks, load_causal_lm
from stride.reproducibility import deterministic_algorithms
from stride.tasks import CausalLMTask

QWEN2_VOCAB, QWEN2_HIDDEN = 151_936, 896
GIB = 2**30


def _shared_bank(n_subsets=5, hidden=16, rank=4, vocab=50, output_rank=6, seed=0) -> OperatorBank:
    return OperatorBank(SHARED_LOGIT, n_subsets, hidden, rank, vocab, seed, output_rank)


def test_shared_logit_delta_is_u_times_a_k_times_b_h():
    bank = _shared_bank()
    with torch.no_grad():
        bank.coefficients.normal_()
    hidden, ids = torch.randn(3, 7, 16), torch.tensor([4, 0, 4])
    delta = bank.delta(hidden, ids)
    assert delta.shape == (3, 7, 50)
    by_hand = torch.stack([(bank.output_basis @ bank.coefficients[k] @ bank.basis @ hidden[i].T).T
                           for i, k in enumerate(ids.tolist())])  # fmt: skip
    torch.testing.assert_close(delta, by_hand, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(bank.delta(hidden[:, 0], ids), delta[:, 0])  # [N, d] rows as for classifiers
    assert bank.operator_parameters() == 6 * 4


def test_shared_logit_needs_an_output_rank():
    with pytest.raises(StrideError, match="output_rank"):
        OperatorBank(SHARED_LOGIT, 5, 16, 4, 50, 0)
    with pytest.raises(StrideError, match="output_rank must be at least 1"):
        StrideConfig(form=SHARED_LOGIT, output_rank=0).validate()


def test_same_seed_same_bank_and_the_logit_forms_keep_their_basis():
    first, second, other = _shared_bank(seed=3), _shared_bank(seed=3), _shared_bank(seed=4)
    assert torch.equal(first.output_basis, second.output_basis) and torch.equal(first.basis, second.basis)
    assert not torch.equal(first.output_basis, other.output_basis)
    logit = OperatorBank("logit", 5, 16, 4, 50, 3)  # U is drawn after B: B is the one the logit form draws
    assert torch.equal(logit.basis, first.basis) and logit.output_basis is None


def test_bank_memory_does_not_grow_with_the_vocabulary():
    small, large = _shared_bank(vocab=1024, output_rank=32, rank=16), _shared_bank(vocab=QWEN2_VOCAB, output_rank=32,
                                                                                 rank=16)  # fmt: skip
    assert small.operator_parameters() == large.operator_parameters() == 32 * 16
    # K = 1000 at Qwen2's vocabulary, with Adam: counted, and checked against a real bank's numbers
    shared = bank_parameters(SHARED_LOGIT, 1000, QWEN2_HIDDEN, 16, QWEN2_VOCAB, output_rank=64)
    bank = OperatorBank(SHARED_LOGIT, 1000, QWEN2_HIDDEN, 16, QWEN2_VOCAB, 0, output_rank=64)
    assert shared == sum(p.numel() for p in bank.parameters())
    assert training_bytes(shared) < 1 * GIB
    logit = bank_parameters("logit", 1000, QWEN2_HIDDEN, 16, QWEN2_VOCAB)
    assert training_bytes(logit) > 25 * GIB  # 2.4 billion numbers: what the logit form would hold
    assert operator_width("residual", QWEN2_HIDDEN, QWEN2_VOCAB) == QWEN2_HIDDEN


def test_bank_parameters_counts_the_basis_mlp():
    with_mlp = OperatorBank("residual", 10, 48, 4, 256, 0, basis_hidden=24)
    counted = bank_parameters("residual", 10, 48, 4, 256, basis_hidden=24)
    assert counted == sum(p.numel() for p in with_mlp.parameters())
    assert counted - bank_parameters("residual", 10, 48, 4, 256) == 24 * (48 + 1) + 4 * 24


@pytest.fixture(scope="module")
def lm(gpt2_dir, corpus):
    model, tokenizer = load_causal_lm(gpt2_dir)
    data = load_data(corpus["train"], tokenizer, 64)
    blocks = decoder_blocks(model)
    steered = SteeredModel(model, blocks, 1, CausalLMTask())
    return model, data, steered


def test_zero_operators_are_the_base_model_and_gradients_reach_every_a_k(lm):
    model, data, steered = lm
    batch = data.batch([0, 1, 2])
    bank = OperatorBank(SHARED_LOGIT, 4, model.config.hidden_size, 4, model.config.vocab_size, 0, 8)
    base = steered.base(batch)
    rows, ids = torch.arange(3), torch.tensor([0, 3, 3])
    logits = steered.steered_logits(bank, base, batch, rows, ids)
    assert torch.equal(logits, base.logits)
    steered.task.losses(logits, batch).sum().backward()
    assert bank.coefficients.grad[[0, 3]].abs().sum(dim=(1, 2)).gt(0).all()  # every used a_k moves
    assert bank.coefficients.grad[[1, 2]].abs().sum() == 0  # unused operators do not
    assert bank.output_basis.grad.abs().sum() == 0  # U only moves once some a_k is nonzero


@pytest.mark.parametrize("settings", [
    dict(form=SHARED_LOGIT, output_rank=8, stability_weight=0.0),
    dict(form=HASHED_LOGIT, output_rank=64, training_expansion="second_order"),  # fidelity is the expanded loss
])  # fmt: skip
def test_training_lowers_the_fidelity_loss_and_is_deterministic(lm, settings):
    model, data, steered = lm
    config = StrideConfig(n_subsets=8, subsets_per_example=2, rank=4, epochs=3, batch_size=16, learning_rate=3e-2,
                          **settings)  # fmt: skip
    table = example_subsets(len(data), config.n_subsets, config.subsets_per_example, 0)
    banks, logs = [], []
    for _ in range(2):
        bank = OperatorBank(config.form, 8, model.config.hidden_size, 4, model.config.vocab_size, 0, config.output_rank)
        torch.manual_seed(0)
        logs.append(OperatorTrainer(steered, bank, data, table, config, 0).train(progress=False))
        banks.append(bank)
    fidelity = logs[0].epoch_fidelity
    assert all(later < earlier for earlier, later in itertools.pairwise(fidelity)), fidelity
    assert fidelity == logs[1].epoch_fidelity
    for name, value in banks[0].state_dict().items():
        assert torch.equal(value, banks[1].state_dict()[name]), name


def test_mlp_basis_starts_as_the_linear_basis_and_learns_codes_of_its_own(lm):
    model, data, steered = lm
    config = StrideConfig(form="logit", n_subsets=8, subsets_per_example=2, rank=4, epochs=3, batch_size=16,
                          learning_rate=3e-2, basis_hidden=12)  # fmt: skip
    table = example_subsets(len(data), config.n_subsets, config.subsets_per_example, 0)
    hidden = steered.base(data.batch([0, 1])).hidden
    banks, logs = [], []
    for _ in range(2):
        bank = OperatorBank("logit", 8, model.config.hidden_size, 4, model.config.vocab_size, 0,
                            basis_hidden=config.basis_hidden)  # fmt: skip
        linear = OperatorBank("logit", 8, model.config.hidden_size, 4, model.config.vocab_size, 0)
        assert torch.equal(bank.basis, linear.basis)  # the MLP is drawn on a generator of its own
        torch.testing.assert_close(bank.codes(hidden), linear.codes(hidden))  # V starts at zero
        torch.manual_seed(0)
        with deterministic_algorithms():  # as the pipeline trains
            logs.append(OperatorTrainer(steered, bank, data, table, config, 0).train(progress=False))
        banks.append(bank)
    fidelity = logs[0].epoch_fidelity
    assert all(later < earlier for earlier, later in itertools.pairwise(fidelity)), fidelity
    trained = banks[0]
    assert trained.basis_mlp[2].weight.abs().sum() > 0  # the MLP's output moved off zero
    nonlinear = trained.basis_mlp(hidden.float())
    assert nonlinear.abs().max() > 1e-3 * (hidden.float() @ trained.basis.T).abs().max()
    assert fidelity == logs[1].epoch_fidelity
    for name, value in banks[0].state_dict().items():
        assert torch.equal(value, banks[1].state_dict()[name]), name


def test_mlp_basis_is_recorded_with_the_operators(gpt2_dir, corpus, tmp_path):
    common = dict(n_subsets=12, subsets_per_example=2, rank=4, epochs=1, designs=1, first_order_weight=0.0)
    run = tmp_path / "run"
    linear = attribute(gpt2_dir, corpus["train"], corpus["queries"], run, config=StrideConfig(**common), seed=0,
                       progress=False)  # fmt: skip
    with_mlp = StrideConfig(**common, basis_hidden=8)
    with pytest.raises(StrideError, match=r"'operators' stage used other settings or inputs \(arguments.basis_hidden"):
        attribute(gpt2_dir, corpus["train"], corpus["queries"], run, config=with_mlp, seed=0, progress=False)
    mlp = attribute(gpt2_dir, corpus["train"], corpus["queries"], run, config=with_mlp, seed=0, overwrite=True,
                    progress=False)  # fmt: skip
    assert not torch.allclose(linear.scores, mlp.scores)
    recorded = json.loads(next(run.glob("stages/operators*.json")).read_text())
    assert recorded["arguments"]["basis_hidden"] == 8


def test_first_order_features_of_the_shared_logit_family_are_vocabulary_free(lm):
    model, data, steered = lm
    assert first_order_family("logit", 32, 64, 4096) == ("logit", 0, 4096)
    assert first_order_family(SHARED_LOGIT, 32, 64, 4096) == (SHARED_LOGIT, 64, 0)
    assert first_order_family(HASHED_LOGIT, 32, 64, 4096) == (HASHED_LOGIT, 32, 4096)
    subset = _Subset(data, [0, 1, 2, 5])
    features = restricted_gradients(steered, subset, SHARED_LOGIT, 4, 0, 2, output_rank=8)
    assert features.shape == (4, 8 * 4) and features.abs().sum() > 0
    # they are U^T applied to the logit family's gradients (same seed: same basis B)
    logit = restricted_gradients(steered, subset, "logit", 4, 0, 2).view(4, -1, 4)
    output_basis = _shared_bank(hidden=model.config.hidden_size, vocab=model.config.vocab_size, output_rank=8,
                                rank=4).output_basis  # fmt: skip
    torch.testing.assert_close(features.view(4, 8, 4), output_basis.T @ logit, rtol=1e-4, atol=1e-5)


class _Subset:
    """Some examples of a data set, through the Examples interface."""

    def __init__(self, data, indices):
        self.data, self.indices = data, indices

    def __len__(self):
        return len(self.indices)

    def batch(self, indices):
        return self.data.batch([self.indices[i] for i in indices])


@pytest.mark.parametrize("form", [SHARED_LOGIT, HASHED_LOGIT])
def test_hybrid_of_a_vocabulary_free_run_mixes_first_order_scores_of_its_family(form, gpt2_dir, corpus, tmp_path):
    config = StrideConfig(form=form, output_rank=8, n_subsets=48, subsets_per_example=6, rank=8, epochs=2,
                          batch_size=16, learning_rate=3e-2, designs=2, cv_queries=4, first_order_weight=0.5,
                          first_order_dim=256)  # fmt: skip
    result = attribute(gpt2_dir, corpus["train"], corpus["queries"], tmp_path / "run", config=config, seed=0,
                       progress=False)  # fmt: skip
    stored = load_file(str(tmp_path / "run" / "stages" / "first_order_train.safetensors"))["features"]
    # shared_logit: 4 x 64 gradients (r' = 256 / 64), unsketched; hashed_logit: 8 x 64, sketched to 256
    assert stored.shape == (N_TRAIN, 256) and stored.abs().sum() > 0
    record = json.loads((tmp_path / "run" / "stages" / "first_order_train.json").read_text())
    assert record["arguments"]["family"] == form
    assert record["arguments"]["family_output_rank"] == (4 if form == SHARED_LOGIT else 8)
    assert torch.isfinite(result.scores).all() and result.scores.abs().sum() > 0


def test_classifier_attribution_takes_the_shared_logit_form():
    generator = torch.Generator().manual_seed(0)
    x, y = torch.randn(40, 6, generator=generator), torch.randint(0, 3, (40,), generator=generator)
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))
    config = classifier_config(40, epochs=2, form=SHARED_LOGIT, output_rank=2)
    scores = attribute_classifier(model, x, y, x[:3], y[:3], config=config)
    assert scores.shape == (3, 40) and torch.isfinite(scores).all() and scores.abs().sum() > 0


@pytest.mark.parametrize("form", [SHARED_LOGIT, HASHED_LOGIT])
def test_second_order_responses_converge_to_the_exact_ones(lm, form):
    """Relative error shrinks about as the square of the operators' scale (third-order remainder),
    and the quadratic term removes most of what a linear expansion misses."""
    model, data, steered = lm
    queries = _Subset(data, [0, 3, 4, 9, 11])
    errors = []
    for scale in (0.02, 0.005):
        bank = OperatorBank(form, 6, model.config.hidden_size, 4, model.config.vocab_size, 0, 5)
        with torch.no_grad():
            bank.coefficients.normal_(0, scale, generator=torch.Generator().manual_seed(1))
        exact, exact_base = query_responses(steered, bank, queries, progress=False)
        approximate, base = second_order_responses(steered, bank, queries, queries_per_pass=2, progress=False)
        torch.testing.assert_close(base, exact_base)
        errors.append(float((approximate - exact).abs().max() / exact.abs().max()))
        linear_error = float((_first_order_responses(steered, bank, queries) - exact).abs().max() / exact.abs().max())
        assert errors[-1] < 0.2 * linear_error, (scale, errors[-1], linear_error)
    assert errors[0] < 0.03 and errors[1] < errors[0] / 4, errors


@pytest.mark.parametrize("expansion", [EXACT, SECOND_ORDER])
def test_query_blocks_measure_as_all_queries_at_once(lm, expansion, monkeypatch):
    """Blocks starting at multiples of a pass's queries (exact: 12 rows / K = 6 -> 2; second order: 8)
    give those rows of the whole measurement, bit for bit."""
    model, data, steered = lm
    bank = OperatorBank(HASHED_LOGIT, 6, model.config.hidden_size, 4, model.config.vocab_size, 0, 5)
    with torch.no_grad():
        bank.coefficients.normal_(0, 0.02, generator=torch.Generator().manual_seed(1))
    queries = query_blocks.QueryRange(data, 0, 21)
    whole = measured_responses(steered, bank, queries, expansion, 12, progress=False)
    monkeypatch.setattr(query_blocks, "QUERY_BLOCK", 3)
    blocks = query_blocks.query_blocks(len(queries), pass_queries(expansion, len(queries), 6, 12))
    assert len(blocks) == (6 if expansion == EXACT else 3)
    parts = [measured_responses(steered, bank, query_blocks.QueryRange(data, start, stop), expansion, 12,
                                progress=False) for start, stop in blocks]  # fmt: skip
    for measured, stacked in zip(whole, map(torch.cat, zip(*parts))):
        assert torch.equal(measured, stacked)


@torch.no_grad()
def _first_order_responses(steered, bank, queries):
    """The linear term alone: -dL/do . delta summed over scored tokens (autograd, any logit form)."""
    batch = queries.batch(range(len(queries)))
    base = steered.base(batch)
    logits = base.logits.clone().requires_grad_(True)
    with torch.enable_grad():
        (gradient,) = torch.autograd.grad(steered.task.measurement(logits, batch).sum(), logits)
    rows = torch.arange(len(queries)).repeat_interleave(bank.n_subsets)
    ids = torch.arange(bank.n_subsets).repeat(len(queries))
    delta = bank.delta(base.hidden[rows], ids)
    return -(gradient[rows] * delta).sum((1, 2)).view(len(queries), bank.n_subsets)


def test_second_order_measurement_is_refused_outside_shared_logit_causal_lms(lm):
    _, _, steered = lm
    with pytest.raises(StrideError, match="needs form 'shared_logit' or 'hashed_logit'"):
        check_second_order(steered, OperatorBank("logit", 2, 16, 2, 10, 0))


def test_second_order_measurement_through_the_pipeline_tracks_the_exact_one(gpt2_dir, corpus, tmp_path):
    """Same seed, same operators; only the measurement differs (and the run records which)."""
    settings = dict(form=SHARED_LOGIT, output_rank=8, n_subsets=48, subsets_per_example=6, rank=8, epochs=2,
                    batch_size=16, learning_rate=3e-2, designs=1, cv_queries=4)  # fmt: skip
    responses = {}
    for expansion in ("exact", "second_order"):
        config = StrideConfig(**settings, measure_expansion=expansion)
        attribute(gpt2_dir, corpus["train"], corpus["queries"], tmp_path / expansion, config=config, seed=0,
                  progress=False)  # fmt: skip
        stages = tmp_path / expansion / "stages"
        responses[expansion] = load_file(str(stages / "responses.safetensors"))["responses"]
        record = json.loads((stages / "recovery.json").read_text())
        recorded = record["arguments"]["operators"]["measure_expansion"]  # None: exact, as before the option
        assert recorded == (None if expansion == "exact" else expansion)
    exact, approximate = responses["exact"], responses["second_order"]
    centred = [values - values.mean(1, keepdim=True) for values in (exact, approximate)]
    correlation = (centred[0] * centred[1]).sum(1) / (centred[0].norm(dim=1) * centred[1].norm(dim=1))
    assert correlation.min() > 0.9, correlation
    with pytest.raises(StrideError, match="needs form 'shared_logit' or 'hashed_logit'"):
        StrideConfig(form="logit", measure_expansion="second_order").validate()


def test_head_initialised_output_basis_spans_the_heads_top_directions(lm):
    model, _, steered = lm
    head = steered.output_head()
    assert head.shape == (model.config.vocab_size, model.config.hidden_size)
    basis = head_output_basis(head, 8)
    assert basis.shape == (model.config.vocab_size, 8)
    torch.testing.assert_close(basis.norm() ** 2, torch.tensor(float(model.config.vocab_size)))
    # its columns lie in the head's column space: projecting onto it changes nothing
    projected = head @ torch.linalg.lstsq(head.detach(), basis).solution
    torch.testing.assert_close(projected, basis, rtol=1e-3, atol=1e-3)
    bank = OperatorBank(SHARED_LOGIT, 3, model.config.hidden_size, 4, model.config.vocab_size, 0, 8, basis)
    assert torch.equal(bank.output_basis.data, basis) and bank.coefficients.abs().sum() == 0
    with pytest.raises(StrideError, match="exceeds the output head"):
        head_output_basis(head, model.config.hidden_size + 1)
    with pytest.raises(StrideError, match="output_init"):
        StrideConfig(output_init="svd").validate()
    with pytest.raises(StrideError, match="output_init 'head' needs form 'shared_logit'"):
        StrideConfig(form=HASHED_LOGIT, output_init="head").validate()


def test_hashed_logit_moves_each_token_by_its_signed_bucket():
    bank = OperatorBank(HASHED_LOGIT, 4, 16, 4, 50, 0, 7)
    with torch.no_grad():
        bank.coefficients.normal_()
    hidden, ids = torch.randn(2, 3, 16), torch.tensor([1, 3])
    delta = bank.delta(hidden, ids)
    assert delta.shape == (2, 3, 50) and int(bank.buckets.max()) < 7 and set(bank.signs.tolist()) == {-1.0, 1.0}
    buckets = torch.einsum("ntd,rd,nor->nto", hidden, bank.basis, bank.coefficients[ids])
    torch.testing.assert_close(delta, buckets[..., bank.buckets] * bank.signs)
    again = OperatorBank(HASHED_LOGIT, 4, 16, 4, 50, 0, 7)
    assert torch.equal(again.buckets, bank.buckets) and torch.equal(again.signs, bank.signs)
    assert set(bank.state_dict()) == {"basis", "coefficients"}  # S follows from the seed
    assert bank_parameters(HASHED_LOGIT, 1000, QWEN2_HIDDEN, 16, QWEN2_VOCAB, output_rank=4096) < GIB / 12
    zero = OperatorBank(HASHED_LOGIT, 4, 16, 4, 50, 0, 7)
    assert zero.delta(hidden, ids).abs().sum() == 0
