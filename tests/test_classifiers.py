"""STRIDE and the baselines on a tiny MLP classifier through stride.classifiers.attribute_classifier.

The data: Gaussian inputs with random labels, so the only training example that helps a query
that copies it is the copy itself; the MLP is trained briefly (it fits most labels, not all).
"""

import json

import pytest
import torch
from torch import nn

from stride.classifiers import ClassifierTask, attribute_classifier, classifier_config
from stride.classifiers.data import ClassifierBatch
from stride.errors import StrideError
from stride.method.operators import OperatorBank

N_TRAIN, N_CLASSES, DIM = 100, 3, 20
DUPLICATES = (3, 40, 7, 77, 90, 55)  # query j copies training example DUPLICATES[j]
LIBRARY = {"trak": "trak", "ekfac": "kronfluence"}


@pytest.fixture(scope="module")
def setup():
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(N_TRAIN + 10, DIM, generator=generator)
    y = torch.randint(0, N_CLASSES, (N_TRAIN + 10,), generator=generator)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(DIM, 32), nn.ReLU(), nn.Linear(32, N_CLASSES))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(30):
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(x[:N_TRAIN]), y[:N_TRAIN]).backward()
        optimizer.step()
    rows = torch.tensor(DUPLICATES)
    return {"model": model, "x": x[:N_TRAIN], "y": y[:N_TRAIN],
            "xq": torch.cat([x[rows], x[N_TRAIN:]]), "yq": torch.cat([y[rows], y[N_TRAIN:]])}  # fmt: skip


def _scores(setup, **kwargs):
    return attribute_classifier(setup["model"], setup["x"], setup["y"], setup["xq"], setup["yq"], **kwargs)


@pytest.mark.parametrize("method", ["stride", "graddot", "gradcos", "repsim", "trak", "ekfac"])
def test_exact_duplicates_of_a_query_rank_in_its_top5(method, setup):
    if method in LIBRARY:
        pytest.importorskip(LIBRARY[method])
    scores = _scores(setup, method=method)
    assert scores.shape == (len(setup["yq"]), N_TRAIN) and scores.dtype == torch.float32
    for query, duplicate in enumerate(DUPLICATES):
        top5 = torch.argsort(scores[query], descending=True)[:5].tolist()
        assert duplicate in top5, f"{method}: training example {duplicate} not in query {query}'s top 5: {top5}"
        assert scores[query, duplicate] > 0, f"{method}: the copy of query {query} must lower its loss"


def test_same_seed_same_scores_other_seed_other_scores(setup):
    config = classifier_config(N_TRAIN, epochs=10)
    first = _scores(setup, config=config, seed=0)
    assert torch.equal(first, _scores(setup, config=config, seed=0))
    assert not torch.equal(first, _scores(setup, config=config, seed=1))
    assert torch.equal(_scores(setup, method="graddot", seed=3), _scores(setup, method="graddot", seed=3))


def test_run_folder_records_the_run_and_a_rerun_reuses_its_stages(setup, tmp_path):
    config = classifier_config(N_TRAIN, epochs=5)
    scores = _scores(setup, config=config, out_dir=tmp_path / "run", measurement="margin")
    info = json.loads((tmp_path / "run" / "info.json").read_text())
    assert info["settings"]["layer"] == "2:input" and info["settings"]["measurement"] == "margin"
    assert info["n_classes"] == N_CLASSES and info["settings"]["n_subsets"] == 5 * N_TRAIN
    again = _scores(setup, config=config, out_dir=tmp_path / "run", measurement="margin")
    assert torch.equal(scores, again)
    with pytest.raises(StrideError, match="other settings"):
        _scores(setup, config=config, out_dir=tmp_path / "run", measurement="ce")


def test_residual_form_at_a_named_module_and_trak_ensemble(setup, tmp_path):
    config = classifier_config(N_TRAIN, epochs=5, form="residual")
    residual = _scores(setup, config=config, layer="0", out_dir=tmp_path / "residual")
    settings = json.loads((tmp_path / "residual" / "info.json").read_text())["settings"]
    assert settings["layer"] == "0" and settings["form"] == "residual"  # steered there, not at the default place
    for query, duplicate in enumerate(DUPLICATES):  # operators on the first layer's output still find the copy
        assert int(residual[query].argmax()) == duplicate and residual[query, duplicate] > 0, (query, duplicate)
    pytest.importorskip("trak")
    torch.manual_seed(1)
    other = nn.Sequential(nn.Linear(DIM, 32), nn.ReLU(), nn.Linear(32, N_CLASSES))
    loss = {"output": "loss"}  # out_to_loss = 1, so the ensemble is the mean of the checkpoints' terms
    ensemble = _scores(setup, method="trak", checkpoints=[setup["model"], other], method_settings=loss)
    alone = _scores(setup, method="trak", method_settings=loss)
    assert not torch.allclose(ensemble, alone, rtol=0.05, atol=1e-4)
    for query, duplicate in enumerate(DUPLICATES):  # sign convention: the copy of a query lowers its loss
        assert int(ensemble[query].argmax()) == duplicate and ensemble[query, duplicate] > 0, (query, duplicate)
    # traker averages the checkpoints' scores (times out_to_loss = 1 for the "loss" output). Checkpoint c
    # gets its own count sketch, seeded seed + 7919 c, so each term is TRAK on that checkpoint alone
    # (include_model False) with seed 7919 c.
    alone_only = {**loss, "include_model": False}
    terms = [alone] + [_scores(setup, method="trak", checkpoints=[checkpoint], method_settings=alone_only,
                               seed=7919 * position)
                       for position, checkpoint in enumerate([setup["model"], other], start=1)]  # fmt: skip
    torch.testing.assert_close(ensemble, sum(terms) / 3, rtol=1e-4, atol=1e-6)


def test_a_dataset_of_pairs_gives_the_same_scores_as_tensors(setup):
    pairs = list(zip(setup["x"], setup["y"].tolist()))
    config = classifier_config(N_TRAIN, epochs=5)
    from_pairs = attribute_classifier(setup["model"], pairs, None, setup["xq"], setup["yq"], config=config)
    assert torch.equal(from_pairs, _scores(setup, config=config))


def test_residual_replay_and_logit_form_match_a_hand_computation(setup):
    model = setup["model"]
    task = ClassifierTask()
    batch = ClassifierBatch(setup["x"][:4], setup["y"][:4])
    for form in ("logit", "residual"):
        steered = task.steered(model, None)
        bank = OperatorBank(form, 3, 32, 2, N_CLASSES, seed=0)
        with torch.no_grad():
            bank.coefficients.normal_()
            base = steered.base(batch)
            rows, subsets = torch.tensor([0, 1, 1, 3]), torch.tensor([2, 0, 1, 2])
            got = steered.steered_logits(bank, base, batch, rows, subsets)
            hidden = torch.relu(model[0](batch.inputs[rows]))
            delta = torch.einsum("nr,nor->no", hidden @ bank.basis.T, bank.coefficients[subsets])
            expected = model(batch.inputs[rows]) + delta if form == "logit" else model[2](hidden + delta)
        torch.testing.assert_close(got, expected)
        assert torch.equal(base.logits, model(batch.inputs))


def test_margin_measurement_is_minus_the_margin():
    logits = torch.tensor([[2.0, 0.5, -1.0], [0.0, 3.0, 1.0]])
    batch = ClassifierBatch(torch.zeros(2, 1), torch.tensor([0, 2]))
    expected = torch.stack([torch.logsumexp(torch.tensor([0.5, -1.0]), 0) - 2.0,
                            torch.logsumexp(torch.tensor([0.0, 3.0]), 0) - 1.0])  # fmt: skip
    torch.testing.assert_close(ClassifierTask("margin").measurement(logits, batch), expected)


@pytest.mark.parametrize("change,message", [
    (lambda d: d.update(y=d["y"][:-1]), "100 inputs but 99 labels"),
    (lambda d: d.update(yq=d["yq"] + N_CLASSES), "labels must be from 0 to 2"),
    (lambda d: d.update(y=d["y"].float()), "integer class indices"),
    (lambda d: d.update(y=d["y"][:, None]), "1-d"),
    (lambda d: d["x"].__setitem__((5, 2), float("nan")), "1 NaN or inf"),
    (lambda d: d.update(xq=d["xq"][:0], yq=d["yq"][:0]), "no examples"),
])  # fmt: skip
def test_bad_data_is_refused_with_a_clear_error(change, message, setup):
    data = {key: value.clone() for key, value in setup.items() if key != "model"}
    change(data)
    with pytest.raises(StrideError, match=message):
        attribute_classifier(setup["model"], data["x"], data["y"], data["xq"], data["yq"], method="repsim")


@pytest.mark.parametrize("kwargs,message", [
    ({"method": "tfidf"}, "method must be one of"),
    ({"measurement": "accuracy"}, "measurement must be one of"),
    ({"layer": "head"}, "no module named 'head'"),
    ({"method": "ekfac", "checkpoints": [nn.Linear(2, 2)]}, "checkpoints are used by"),
    ({"config": classifier_config(N_TRAIN, n_subsets=10_000)}, "some subsets would be empty"),
])  # fmt: skip
def test_bad_arguments_are_refused_with_a_clear_error(kwargs, message, setup):
    with pytest.raises(StrideError, match=message):
        _scores(setup, **kwargs)


def test_command_line_with_a_factory_file_weights_and_npz_data(setup, tmp_path, capsys):
    import numpy as np
    from safetensors.torch import save_file

    from stride.cli import main

    (tmp_path / "mymodel.py").write_text(
        "from torch import nn\n\n\n"
        f"def make_model():\n    return nn.Sequential(nn.Linear({DIM}, 32), nn.ReLU(), nn.Linear(32, {N_CLASSES}))\n"
    )
    save_file(dict(setup["model"].state_dict()), str(tmp_path / "weights.safetensors"))
    np.savez(tmp_path / "train.npz", inputs=setup["x"].numpy(), labels=setup["y"].numpy())
    np.savez(tmp_path / "queries.npz", inputs=setup["xq"].numpy(), labels=setup["yq"].numpy())
    (tmp_path / "config.json").write_text(json.dumps({"epochs": 5}))
    args = ["attribute-classifier", "--factory", f"{tmp_path / 'mymodel.py'}:make_model", "--weights",
            str(tmp_path / "weights.safetensors"), "--train", str(tmp_path / "train.npz"), "--queries",
            str(tmp_path / "queries.npz"), "--out", str(tmp_path / "run"), "--config", str(tmp_path / "config.json"),
            "--quiet"]  # fmt: skip
    assert main(args) == 0
    from safetensors.torch import load_file

    written = load_file(str(tmp_path / "run" / "scores.safetensors"))["scores"]
    assert torch.equal(written, _scores(setup, config={"epochs": 5}))
    assert main([*args[:2], f"{tmp_path / 'mymodel.py'}:make_net", *args[3:]]) == 2
    assert "defines no function 'make_net'" in capsys.readouterr().err


def test_two_designs_with_the_first_order_mix_on_a_classifier(setup):
    config = classifier_config(N_TRAIN, epochs=10, designs=2)  # first_order_weight "auto"
    scores = _scores(setup, config=config)
    for query, duplicate in enumerate(DUPLICATES):
        assert duplicate in torch.argsort(scores[query], descending=True)[:5].tolist()
    plain = _scores(setup, config=classifier_config(N_TRAIN, epochs=10, designs=2, first_order_weight=0))
    assert not torch.equal(scores, plain)


def test_a_partner_is_mixed_in_with_its_classifier_defaults(setup, tmp_path):
    pytest.importorskip("kronfluence")
    from stride.method.hybrid import mix

    config = classifier_config(N_TRAIN, epochs=5)
    alone = _scores(setup, config=config)
    ekfac = _scores(setup, method="ekfac")  # every linear layer, kronfluence's damping heuristic
    mixed = _scores(setup, config=classifier_config(N_TRAIN, epochs=5, partner="ekfac"), out_dir=tmp_path / "run")
    expected = mix(alone.double().numpy(), ekfac.double().numpy(), 0.5)  # the classifier partner weight
    assert torch.allclose(mixed.double(), torch.as_tensor(expected), rtol=1e-5, atol=1e-6)
    settings = json.loads((tmp_path / "run" / "info.json").read_text())["settings"]["partner_settings"]
    assert settings["modules"] == "all" and settings["damping_factor"] is None
    with pytest.raises(StrideError, match="partner must be one of"):
        _scores(setup, config=classifier_config(N_TRAIN, partner="astra"))


def test_the_default_second_bank_steers_the_first_linear_layers_input(setup, tmp_path):
    from stride.method.hybrid import mix

    scores = _scores(setup, config={"epochs": 5}, out_dir=tmp_path / "both")
    info = json.loads((tmp_path / "both" / "info.json").read_text())
    assert info["settings"]["second_layer"] == "0:input" and info["settings"]["designs"] == 2
    assert "second_operators_design1" in info["stages"]
    first = _scores(setup, config={"epochs": 5, "second_layer": None})
    second = _scores(setup, config=classifier_config(N_TRAIN, epochs=5, form="residual", layer="0:input"),
                     seed=2 * 1_000_003)  # fmt: skip
    expected = mix(first.double().numpy(), second.double().numpy(), 0.7)
    assert torch.allclose(scores.double(), torch.as_tensor(expected), rtol=1e-5, atol=1e-6)
    for query, duplicate in enumerate(DUPLICATES):
        assert duplicate in torch.argsort(scores[query], descending=True)[:5].tolist()
    single_linear = nn.Sequential(nn.Flatten(), nn.Linear(DIM, N_CLASSES))
    assert classifier_config(N_TRAIN, single_linear).second_layer is None  # its one input is the first bank's place
    assert classifier_config(N_TRAIN, setup["model"]).second_layer == "0:input"
    # `second_layer: auto` is the same place (the same stages and scores); none for a single nn.Linear
    assert torch.equal(_scores(setup, config={"epochs": 5, "second_layer": "auto"}, out_dir=tmp_path / "both"), scores)
    assert ClassifierTask().second_place(single_linear) is None


@pytest.mark.parametrize(
    "values,method,partner,expected",
    [({"epochs": 5}, "stride", None, ({"epochs": 5}, None)),
     ({"epochs": 5}, "stride", "ekfac", ({"epochs": 5, "partner": "ekfac"}, None)),
     ({"ekfac": {"damping_factor": 0.1}}, "stride", "ekfac", ({"partner": "ekfac"}, {"damping_factor": 0.1})),
     ({"stride": {"partner": "trak"}, "trak": {"proj_dim": 64}}, "stride", None,
      ({"partner": "trak"}, {"proj_dim": 64})),
     ({"proj_dim": 64}, "trak", None, (None, {"proj_dim": 64})),
     ({"trak": {"proj_dim": 64}, "stride": {"epochs": 2}}, "trak", None, (None, {"proj_dim": 64}))],
)  # fmt: skip
def test_classifier_config_files_give_stride_and_its_partner_their_sections(values, method, partner, expected):
    from stride.cli import _classifier_settings

    assert _classifier_settings(values, method, partner) == expected


def test_partner_flag_needs_stride():
    from stride.cli import _classifier_settings

    with pytest.raises(StrideError, match="needs --method stride"):
        _classifier_settings({}, "trak", "ekfac")
