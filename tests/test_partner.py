"""STRIDE with a partner method: its scores are the mix of STRIDE's own and the partner's, the partner's
stages live apart from STRIDE's, and misuse is refused before anything runs."""

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from stride.api import attribute
from stride.config import StrideConfig, method_options
from stride.errors import StrideError
from stride.method.hybrid import mix

SMALL = dict(n_subsets=48, subsets_per_example=6, rank=8, epochs=2, batch_size=16, learning_rate=3e-2, designs=2,
             cv_queries=4)  # fmt: skip


def _run(model_dir, corpus, out, **config):
    settings = {"rank": 16} if config.get("partner") == "logra" else None
    return attribute(model_dir, corpus["train"], corpus["queries"], out, config=StrideConfig(**{**SMALL, **config}),
                     seed=0, progress=False, method_settings=settings)  # fmt: skip


def test_partner_scores_are_the_mix_of_stride_and_the_partner(gpt2_dir, corpus, tmp_path):
    alone = _run(gpt2_dir, corpus, tmp_path / "stride")
    partner = attribute(gpt2_dir, corpus["train"], corpus["queries"], tmp_path / "logra", method="logra", seed=0,
                        progress=False, method_settings={"rank": 16})  # fmt: skip
    mixed = _run(gpt2_dir, corpus, tmp_path / "mixed", partner="logra", partner_weight=0.3)
    expected = mix(alone.scores.double().numpy(), partner.scores.double().numpy(), 0.3)
    assert np.allclose(mixed.scores.double().numpy(), expected, rtol=1e-5, atol=1e-6)
    info = json.loads((tmp_path / "mixed" / "info.json").read_text())
    assert info["settings"]["partner"] == "logra" and info["settings"]["partner_settings"]["rank"] == 16
    assert "partner_scores" in info["timings_seconds"]
    assert (tmp_path / "mixed" / "stages" / "partner_logra" / "stages" / "scores.json").is_file()
    # the designs' standard errors carry STRIDE's share of the mix, on the mixed scores' scale
    se_alone = load_file(str(tmp_path / "stride" / "scores.safetensors"))["scores_se"].double()
    se_mixed = load_file(str(tmp_path / "mixed" / "scores.safetensors"))["scores_se"].double()
    assert torch.allclose(se_mixed, 0.7 * se_alone, rtol=1e-5, atol=1e-9)
    # a rerun with another partner weight reuses every stage of both methods
    again = _run(gpt2_dir, corpus, tmp_path / "mixed", partner="logra", partner_weight=1.0)
    reused = json.loads((tmp_path / "mixed" / "info.json").read_text())["stages"]
    assert all(stage["reused"] for name, stage in reused.items() if name != "hybrid")
    ranks = np.argsort(np.argsort(again.scores.numpy(), axis=1), axis=1)
    assert (ranks == np.argsort(np.argsort(partner.scores.numpy(), axis=1), axis=1)).mean() > 0.99
    # new queries reuse both methods' training side (the partner's from its nested store)
    attribute(gpt2_dir, corpus["train"], corpus["train"], tmp_path / "new_queries", reuse_from=tmp_path / "mixed",
              config=StrideConfig(**SMALL, partner="logra"), seed=0, progress=False,
              method_settings={"rank": 16})  # fmt: skip
    stages = json.loads((tmp_path / "new_queries" / "info.json").read_text())["stages"]
    assert (
        stages["partner_logra_factors"]["reused"]
        and stages["partner_train_features_0"]["reused"]
        and stages["operators"]["reused"]
    )
    assert not stages["partner_scores"]["reused"]


@pytest.mark.parametrize("config, message", [
    ({"partner": "stride"}, "partner must be one of"),
    ({"partner": "nonexistent"}, "partner must be one of"),
    ({"partner": "logra", "partner_weight": 1.5}, "partner_weight must be in"),
])  # fmt: skip
def test_bad_partner_is_refused(gpt2_dir, corpus, tmp_path, config, message):
    with pytest.raises(StrideError, match=message):
        _run(gpt2_dir, corpus, tmp_path / "run", **config)
    assert not (tmp_path / "run" / "run.json").exists()


def test_partner_runs_on_the_cpu_in_float32(gpt2_dir, corpus, tmp_path):
    with pytest.raises(StrideError, match="partner 'logra' runs with it"):
        attribute(gpt2_dir, corpus["train"], corpus["queries"], tmp_path / "run",
                  config=StrideConfig(**SMALL, partner="logra"), dtype="bfloat16", progress=False)  # fmt: skip


def test_partner_settings_come_from_its_section_of_the_config_file(tmp_path):
    path = tmp_path / "config.json"
    path.write_text(json.dumps({"stride": {"partner": "astra", "partner_weight": 0.7}, "astra": {"iterations": 5}}))
    config, settings = method_options("stride", path)
    assert config.partner == "astra" and config.partner_weight == 0.7 and settings == {"iterations": 5}


def test_the_partner_flag_replaces_the_files_choice_and_takes_its_section(tmp_path):
    path = tmp_path / "config.yaml"
    path.write_text("stride: {partner: ekfac, epochs: 2}\nastra: {iterations: 5}\n")
    config, settings = method_options("stride", path, partner="astra")
    assert (config.partner, config.epochs, config.partner_weight, settings) == ("astra", 2, 0.6, {"iterations": 5})
    assert method_options("stride", None, partner="logra")[0].partner == "logra"
    with pytest.raises(StrideError, match="--partner mixes another method into STRIDE's scores"):
        method_options("tfidf", None, partner="astra")
