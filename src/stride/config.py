"""Settings of the STRIDE method, one dataclass with defaults, loadable from JSON or YAML."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from stride.errors import StrideError

FORMS = ("residual", "logit")
LAMBDA_RULES = ("cv", "fixed")


@dataclass
class StrideConfig:
    """Every knob of STRIDE; the defaults are the ones documented in README.md.

    Attributes:
        form: "residual" (h' = h + a_k B h at one decoder block) or "logit" (o' = o + (B h) a_k).
        layer: causal LMs: index of the steered decoder block (None: about 0.6 of the depth);
            classifiers: "NAME" (output of module NAME) or "NAME:input" (None: the input of the
            last nn.Linear, the penultimate representation).
        rank: rank r of the shared basis B.
        n_subsets: number K of random training subsets (one operator each).
        subsets_per_example: number d of subsets every training example belongs to.
        designs: independent subset designs (each its own membership, basis and operators, from
            its own seed); their recovered scores are averaged. Cost grows linearly with it.
        epochs: passes over the (example, subset) pairs while training the operators.
        batch_size: training examples per step (each is expanded to its d subsets).
        first_order_weight: weight w of the first-order scores of the logit family (restricted
            gradients with a rank-64 basis, count-sketched) mixed into the designs' Lasso scores:
            a number in [0, 1], or "auto" (cross-fitted over designs; 0 with a single design).
        first_order_dim: dimension of the count sketch of the first-order features.
        length_grouping: batches of the operator training are drawn from windows of
            `length_grouping` batches sorted by length (less padding; 0: purely random batches).
        learning_rate: Adam learning rate for the basis and the operators.
        stability_weight: weight of KL(base || steered) on examples outside the operator's subset.
        stability_fraction: fraction of the pairs of a step that also get a stability term.
        linearity_weight: weight of the sketched-membership linearity penalty (0 turns it off).
        linearity_sketch_dim: columns q of the random sketch R of the membership matrix.
        linearity_ridge: ridge gamma inside the linearity projection.
        linearity_every: steps between two linearity penalties.
        lambda_rule: "cv" (cross-validated over subsets on a sample of queries) or "fixed".
        lasso_lambda: the Lasso penalty when lambda_rule is "fixed" (scikit-learn's alpha).
        cv_queries: how many queries the "cv" rule looks at to choose one shared penalty.
        measure_rows: steered sequences per forward pass during measurement.
        max_length: token limit per example; None means the model's context length.
        checkpoint_every: training steps between two resumable checkpoints.
    """

    form: str = "logit"
    layer: int | str | None = None
    rank: int = 16
    n_subsets: int = 1000
    subsets_per_example: int = 20
    designs: int = 2
    first_order_weight: float | str = "auto"
    first_order_dim: int = 4096
    epochs: int = 3
    batch_size: int = 16
    length_grouping: int = 32
    learning_rate: float = 3e-3
    stability_weight: float = 0.1
    stability_fraction: float = 0.25
    linearity_weight: float = 0.0
    linearity_sketch_dim: int = 64
    linearity_ridge: float = 1e-3
    linearity_every: int = 20
    lambda_rule: str = "cv"
    lasso_lambda: float = 1e-4
    cv_queries: int = 8
    measure_rows: int = 256
    max_length: int | None = None
    checkpoint_every: int = 50

    def validate(self, n_train: int | None = None) -> None:
        """Raise StrideError naming the first setting that is out of range."""
        if self.form not in FORMS:
            raise StrideError(f"form must be one of {FORMS}, got {self.form!r}")
        if self.lambda_rule not in LAMBDA_RULES:
            raise StrideError(f"lambda_rule must be one of {LAMBDA_RULES}, got {self.lambda_rule!r}")
        if self.n_subsets < 2:
            raise StrideError(f"n_subsets (K) must be at least 2, got {self.n_subsets}")
        if not 1 <= self.subsets_per_example <= self.n_subsets:
            raise StrideError(
                f"subsets_per_example (d) must be between 1 and n_subsets (K={self.n_subsets}), "
                f"got {self.subsets_per_example}"
            )
        positive = ("rank", "designs", "first_order_dim", "epochs", "batch_size", "measure_rows", "checkpoint_every",
                    "cv_queries")  # fmt: skip
        for name in positive:
            if getattr(self, name) < 1:
                raise StrideError(f"{name} must be at least 1, got {getattr(self, name)}")
        weight = self.first_order_weight
        number = isinstance(weight, (int, float)) and not isinstance(weight, bool)
        if weight != "auto" and not (number and 0 <= weight <= 1):
            raise StrideError(f"first_order_weight must be 'auto' or a number in [0, 1], got {weight!r}")
        if self.length_grouping < 0:
            raise StrideError(f"length_grouping must be 0 or more, got {self.length_grouping}")
        if not 0.0 <= self.stability_fraction <= 1.0:
            raise StrideError(f"stability_fraction must be in [0, 1], got {self.stability_fraction}")
        if self.learning_rate <= 0 or self.lasso_lambda <= 0:
            raise StrideError("learning_rate and lasso_lambda must be positive")
        if n_train is not None and n_train * self.subsets_per_example < self.n_subsets:
            raise StrideError(
                f"n_subsets (K={self.n_subsets}) is larger than n_train x d = "
                f"{n_train * self.subsets_per_example}: some subsets would be empty; lower K or raise d"
            )

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> StrideConfig:
        return settings_from_dict(cls, values, "STRIDE setting")

    @classmethod
    def from_file(cls, path: str | Path) -> StrideConfig:
        """Load settings from a .json, .yaml or .yml file (a flat mapping of setting -> value)."""
        values = read_mapping_file(path)
        if "stride" in values and isinstance(values["stride"], dict):
            values = values["stride"]
        return cls.from_dict(values)


def settings_from_dict(cls: type, values: dict[str, Any], what: str) -> Any:
    """Build the settings dataclass `cls` from a mapping, naming any unknown key."""
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise StrideError(f"unknown {what}(s) {unknown}; known: {sorted(known)}")
    return cls(**values)


def read_mapping_file(path: str | Path) -> dict[str, Any]:
    """Read a JSON or YAML file holding one mapping, with clear errors."""
    path = Path(path)
    if not path.is_file():
        raise StrideError(f"config file not found: {path}")
    text = path.read_text()
    try:
        if path.suffix in (".yaml", ".yml"):
            import yaml

            values = yaml.safe_load(text)
        else:
            values = json.loads(text)
    except Exception as exc:  # noqa: BLE001 - any parse error becomes one readable line
        raise StrideError(f"cannot parse config file {path}: {exc}") from exc
    if not isinstance(values, dict):
        raise StrideError(f"config file {path} must hold a mapping of settings")
    return values
