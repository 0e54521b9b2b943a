"""Settings of the wrong type are refused with one line naming the key, the expected type and the value."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from stride.baselines.common import parse_settings
from stride.baselines.gradsim import GradSimSettings
from stride.baselines.trak import TrakSettings
from stride.cli import main
from stride.config import StrideConfig
from stride.errors import StrideError
from stride.lm_training import LMRecipe


def _one_line_error(build, *fragments: str) -> str:
    """The message of the StrideError `build()` raises, checked to be one line holding every fragment."""
    with pytest.raises(StrideError) as caught:
        build()
    message = str(caught.value)
    assert "\n" not in message
    for fragment in fragments:
        assert fragment in message, message
    return message


@pytest.mark.parametrize(
    "values,fragments",
    [({"epochs": "3"}, ["epochs (STRIDE setting) must be an integer, got '3' (str)"]),
     ({"epochs": 2.5}, ["epochs", "must be an integer, got 2.5 (float)"]),
     ({"epochs": True}, ["epochs", "must be an integer, got True (bool)"]),
     ({"rank": 4.5}, ["rank", "must be an integer, got 4.5 (float)"]),
     ({"n_subsets": "40"}, ["n_subsets", "must be an integer, got '40' (str)"]),
     ({"first_order_dim": 1.5}, ["first_order_dim", "must be an integer, got 1.5"]),
     ({"learning_rate": math.nan}, ["learning_rate", "must be a finite number or a string, got nan (float)"]),
     ({"learning_rate": math.inf}, ["learning_rate", "must be a finite number or a string, got inf (float)"]),
     ({"stability_weight": math.nan}, ["stability_weight", "must be a finite number, got nan"]),
     ({"learning_rate": True}, ["learning_rate", "must be a finite number or a string, got True (bool)"]),
     ({"first_order_weight": math.nan}, ["first_order_weight", "must be a finite number or a string, got nan"]),
     ({"layer": 1.5}, ["layer", "must be an integer, a string or null, got 1.5 (float)"]),
     ({"max_length": "64"}, ["max_length", "must be an integer or null, got '64' (str)"]),
     ({"form": 1}, ["form", "must be a string, got 1 (int)"])],
)  # fmt: skip
def test_stride_settings_of_the_wrong_type_are_refused(values, fragments):
    _one_line_error(lambda: StrideConfig.from_dict(values), *fragments)


@pytest.mark.parametrize(
    "values",
    [{"first_order_weight": "auto"}, {"first_order_weight": 0.3}, {"first_order_weight": 1}, {"layer": None},
     {"layer": 1}, {"layer": "transformer.h.1"}, {"max_length": None}, {"max_length": 64}, {"learning_rate": 1},
     {"learning_rate": "auto"}],
)  # fmt: skip
def test_stride_settings_of_the_right_type_are_accepted(values):
    config = StrideConfig.from_dict(values)
    assert all(getattr(config, key) == value for key, value in values.items())
    config.validate()


@pytest.mark.parametrize(
    "fields,fragment",
    [({"epochs": "3"}, "epochs (STRIDE setting) must be an integer, got '3' (str)"),
     ({"learning_rate": math.nan}, "learning_rate (STRIDE setting) must be a finite number or a string, got nan"),
     ({"learning_rate": "fast"}, "learning_rate must be 'auto' or a positive number, got 'fast'"),
     ({"learning_rate": 0.0}, "learning_rate must be 'auto' or a positive number, got 0.0"),
     ({"lasso_lambda": math.inf}, "lasso_lambda (STRIDE setting) must be a finite number, got inf"),
     ({"basis_hidden": 0}, "basis_hidden must be at least 1 (or null: a linear basis), got 0"),
     ({"basis_hidden": 2.5}, "basis_hidden (STRIDE setting) must be an integer or null, got 2.5 (float)")],
)  # fmt: skip
def test_validate_checks_types_of_settings_built_in_python(fields, fragment):
    _one_line_error(lambda: StrideConfig(**fields).validate(), fragment)


@pytest.mark.parametrize("hidden_size,rate", [(16, 3e-3), (96, 3e-3), (192, 1.5e-3), (768, 3.75e-4)])
def test_learning_rate_auto_falls_in_proportion_to_the_width_above_96(hidden_size, rate):
    assert StrideConfig().resolved(hidden_size, 1024).learning_rate == pytest.approx(rate)
    assert StrideConfig(learning_rate=0.01).resolved(hidden_size, 1024).learning_rate == 0.01


def test_numpy_numbers_built_in_python_are_accepted_and_checked_like_python_numbers():
    config = StrideConfig(rank=np.int64(4), learning_rate=np.float32(0.01), first_order_weight=np.float64(0.5))
    try:
        config.validate()
    except StrideError as exc:
        pytest.fail(f"numpy numbers of the right kind were refused: {exc}")
    assert (config.rank, config.first_order_weight) == (4, 0.5)
    _one_line_error(lambda: StrideConfig(rank=np.float64(4.0)).validate(),
                    "rank (STRIDE setting) must be an integer, got", "(float64)")  # fmt: skip
    _one_line_error(lambda: StrideConfig(learning_rate=np.float32("nan")).validate(),
                    "learning_rate (STRIDE setting) must be a finite number or a string, got", "nan",
                    "(float32)")  # fmt: skip


def test_baseline_settings_of_the_wrong_type_are_refused():
    _one_line_error(lambda: parse_settings(TrakSettings, {"proj_dim": 16.5}, "trak"),
                    "proj_dim (setting for method 'trak') must be an integer, got 16.5 (float)")  # fmt: skip
    _one_line_error(lambda: parse_settings(TrakSettings, {"lambda_reg": "0.1"}, "trak"),
                    "lambda_reg", "must be a finite number or null, got '0.1' (str)")  # fmt: skip
    _one_line_error(lambda: parse_settings(GradSimSettings, {"checkpoints": ["a", 1]}, "graddot"),
                    "checkpoints", "must be a list of strings, got ['a', 1] (list)")  # fmt: skip
    _one_line_error(lambda: parse_settings(GradSimSettings, {"checkpoint_weights": [1.0, math.nan]}, "graddot"),
                    "checkpoint_weights", "must be a list of finite numbers or null")  # fmt: skip
    _one_line_error(lambda: parse_settings(GradSimSettings, {"include_model": 1}, "graddot"),
                    "include_model", "must be true or false, got 1 (int)")  # fmt: skip


def test_baseline_settings_of_the_right_type_are_accepted(tmp_path: Path):
    folders = (str(tmp_path), str(tmp_path))  # a tuple is taken for a list
    settings = parse_settings(GradSimSettings, {"proj_dim": 64, "checkpoints": folders,
                                                "checkpoint_weights": [1, 0.5, 2.0]}, "graddot")  # fmt: skip
    assert settings.proj_dim == 64 and settings.checkpoints == folders
    assert parse_settings(TrakSettings, {"lambda_reg": None, "lambda_ratio": 1}, "trak").lambda_ratio == 1


def test_recipe_settings_of_the_wrong_type_are_refused():
    _one_line_error(lambda: LMRecipe.from_dict({"epochs": "3"}), "epochs (recipe setting) must be an integer")


@pytest.mark.parametrize("suffix,text", [(".json", json.dumps({"epochs": "3"})), (".yaml", "epochs: '3'\n")])
def test_config_file_of_the_wrong_type(tmp_path: Path, suffix: str, text: str):
    path = tmp_path / f"stride{suffix}"
    path.write_text(text)
    _one_line_error(lambda: StrideConfig.from_file(path), "epochs (STRIDE setting) must be an integer, got '3' (str)")


def test_cli_prints_one_line_and_exits_with_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    config = tmp_path / "stride.json"
    config.write_text(json.dumps({"epochs": "3"}))
    missing = str(tmp_path / "missing")  # the config is read before the model or data
    code = main(["attribute", "--model", missing, "--train", missing, "--queries", missing, "--out",
                 str(tmp_path / "out"), "--config", str(config)])  # fmt: skip
    assert code == 2
    err = capsys.readouterr().err
    assert err == "stride: error: epochs (STRIDE setting) must be an integer, got '3' (str)\n"
