"""Settings of the STRIDE method, one dataclass with defaults, loadable from JSON or YAML."""

from __future__ import annotations

import dataclasses
import json
import math
import numbers
import reprlib
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from stride.errors import StrideError

FORMS = ("residual", "logit", "shared_logit", "hashed_logit")
AUTO_FORM = "auto"
AUTO_PLACE = "auto"  # second_layer "auto": the model family's default second place (Task.second_place)
AUTO_LOGIT_VOCABULARY = 16_384  # form "auto": the logit form up to this many outputs, hashed_logit above
AUTO_BUCKETS = 1024  # form "auto": hashed_logit's buckets
AUTO_RATE = 3e-3  # learning_rate "auto": the operators' Adam rate at hidden sizes up to AUTO_RATE_WIDTH ...
AUTO_RATE_WIDTH = 96  # ... and AUTO_RATE x AUTO_RATE_WIDTH / hidden size above it
AUTO_RATE_NAME = "auto"
EXPANSIONS = ("exact", "second_order")
OUTPUT_INITS = ("random", "head")
LAMBDA_RULES = ("cv", "fixed")
LASSO_SOLVERS = ("auto", "batched", "scikit-learn")


@dataclass
class StrideConfig:
    """Every knob of STRIDE; the defaults are the ones documented in README.md.

    Attributes:
        form: "auto" (default: "logit" up to a 16,384-token vocabulary; above it "hashed_logit" with
            1024 buckets, second-order training and measurement, whose memory and cost do not grow
            with the vocabulary), "residual" (h' = h + a_k B h at one decoder block), "logit" (o' = o + a_k B h, a_k
            vocab x r) or "shared_logit" (o' = o + U a_k B h, a_k r' x r, U vocab x r' shared by all
            operators: memory per operator independent of the vocabulary) or "hashed_logit" (o' = o +
            S a_k B h, a_k m x r with m = output_rank buckets, S a fixed random signed hashing of the
            vocabulary into the buckets).
        layer: causal LMs: index of the steered decoder block (None: about 0.6 of the depth; negative:
            counted from the last block, -1 being the last);
            classifiers: "NAME" (output of module NAME) or "NAME:input" (None: the input of the
            last nn.Linear, the penultimate representation).
        rank: rank r of the shared basis B.
        basis_hidden: None for a linear basis (B h); a number m of hidden units makes the basis
            B h + V gelu(W h + b), a linear part plus a one-layer MLP of m units shared by all operators
            (V starts at zero, so training starts from the linear basis).
        output_rank: rank r' of the shared output basis U (shared_logit form) or number m of buckets
            (hashed_logit form).
        output_init: how U starts: "random" (Gaussian) or "head" (causal LMs: the output head's top r'
            principal directions, so that the operators first steer the final hidden state).
        n_subsets: number K of random training subsets (one operator each).
        subsets_per_example: number d of subsets every training example belongs to.
        designs: independent subset designs (each its own membership, basis and operators, from
            its own seed); their recovered scores are averaged. Cost grows linearly with it.
        epochs: passes over the (example, subset) pairs while training the operators (4: a fourth
            pass gained on both halves of the benchmark matrix, logit and hashed_logit forms alike;
            docs/ablations.md §28).
        batch_size: training examples per step (each is expanded to its d subsets).
        first_order_weight: weight w of the first-order scores of the logit family (restricted
            gradients with a rank-64 basis, count-sketched) mixed into the designs' Lasso scores:
            a number in [0, 1], or "auto" (cross-fitted over designs; 0 with a single design).
        first_order_dim: dimension of the count sketch of the first-order features.
        length_grouping: batches of the operator training are drawn from windows of
            `length_grouping` batches sorted by length (less padding; 0: purely random batches).
        learning_rate: Adam learning rate for the basis and the operators, or "auto": 0.003 up to a hidden size
            (the width of the steered representation) of 96 and 0.003 x 96 / hidden size above it, so that one
            Adam step moves the operators' outputs about as far at any width (`auto_learning_rate`;
            docs/ablations.md §39).
        stability_weight: weight of KL(base || steered) on examples outside the operator's subset.
        stability_fraction: fraction of the pairs of a step that also get a stability term.
        linearity_weight: weight of the sketched-membership linearity penalty (0 turns it off).
        linearity_sketch_dim: columns q of the random sketch R of the membership matrix.
        linearity_ridge: ridge gamma inside the linearity projection.
        linearity_every: steps between two linearity penalties.
        lambda_rule: "cv" (cross-validated over subsets on a sample of queries) or "fixed".
        lasso_lambda: the Lasso penalty when lambda_rule is "fixed" (scikit-learn's alpha).
        cv_queries: how many queries the "cv" rule looks at to choose one shared penalty.
        lasso_solver: "batched" (every query at once on the sparse membership, in torch: for large
            training sets), "scikit-learn" (per query: faster on small ones) or "auto" (batched from
            10,000 training examples).
        measure_rows: steered sequences per forward pass during measurement.
        measure_expansion: "exact" (each operator's measurement from its steered logits) or
            "second_order" (shared_logit and hashed_logit forms on causal LMs: the loss change
            expanded to second order in the logit shift U a_k B h, from U's mean and covariance under
            the base softmax: no softmax over the vocabulary per operator).
        training_expansion: "exact" (the operators' fidelity and stability terms from their steered
            logits) or "second_order" (hashed_logit form on causal LMs: both terms expanded to second
            order in the bucket shifts, as `measure_expansion: second_order` measures: no logits over
            the vocabulary per (example, subset) pair, so the training cost does not grow with the
            vocabulary; needs linearity_weight 0).
        max_length: token limit per example; None means the model's context length.
        checkpoint_every: training steps between two resumable checkpoints.
        partner: another attribution method (e.g. "astra", "ekfac", "logra") whose scores are mixed
            into STRIDE's final scores, per query in standard units: (1 - w) z(stride) + w z(partner)
            with w = `partner_weight`. None: STRIDE alone. The partner runs with its own defaults, or
            with the section named after it in the --config file; it runs on the CPU in float32, so
            the whole run does.
        partner_weight: the partner's weight w in [0, 1] (0.6: chosen with partner astra on half A of
            the benchmark matrix, confirmed on half B; README "Benchmark"; 0.7 with 3 epochs).
        second_layer: the place of a second operator bank, in the residual form (h' = h + a_k B h):
            a second STRIDE run with these settings there, on designs of its own, whose scores are
            mixed into the first bank's per query in standard units at `second_weight` (before the
            partner's). A block index for causal LMs, a place ("NAME" or "NAME:input") for
            classifiers, or "auto": the last decoder block for causal LMs (the setting for gentle
            fine-tuning; on the 2-block benchmark models also the default block), the input of the
            first nn.Linear for classifiers (no second bank when the model has a single one). None:
            one bank.
        second_weight: the second bank's weight in [0, 1] (0.7: chosen on half A's classifier cell
            and on half A's gentle fine-tuning cell of the benchmark matrix, confirmed on half B's).
    """

    form: str = AUTO_FORM
    layer: int | str | None = None
    rank: int = 16
    basis_hidden: int | None = None
    output_rank: int = 32
    output_init: str = "random"
    n_subsets: int = 1000
    subsets_per_example: int = 20
    designs: int = 2
    first_order_weight: float | str = "auto"
    first_order_dim: int = 4096
    epochs: int = 4
    batch_size: int = 16
    length_grouping: int = 32
    learning_rate: float | str = "auto"
    stability_weight: float = 0.1
    stability_fraction: float = 0.25
    linearity_weight: float = 0.0
    linearity_sketch_dim: int = 64
    linearity_ridge: float = 1e-3
    linearity_every: int = 20
    lambda_rule: str = "cv"
    lasso_lambda: float = 1e-4
    cv_queries: int = 8
    lasso_solver: str = "auto"
    measure_rows: int = 256
    measure_expansion: str = "exact"
    training_expansion: str = "exact"
    max_length: int | None = None
    checkpoint_every: int = 50
    partner: str | None = None
    partner_weight: float = 0.6
    second_layer: int | str | None = None
    second_weight: float = 0.7

    def validate(self, n_train: int | None = None) -> None:
        """Raise StrideError naming the first setting of the wrong type or out of range."""
        check_field_types(self, "STRIDE setting")
        if self.form not in (*FORMS, AUTO_FORM):
            raise StrideError(f"form must be one of {(*FORMS, AUTO_FORM)}, got {self.form!r}")
        if self.output_init not in OUTPUT_INITS:
            raise StrideError(f"output_init must be one of {OUTPUT_INITS}, got {self.output_init!r}")
        if self.output_init == "head" and self.form != "shared_logit":
            raise StrideError(f"output_init 'head' needs form 'shared_logit', got {self.form!r}")
        if self.measure_expansion not in EXPANSIONS:
            raise StrideError(f"measure_expansion must be one of {EXPANSIONS}, got {self.measure_expansion!r}")
        if self.measure_expansion == "second_order" and self.form not in ("shared_logit", "hashed_logit", AUTO_FORM):
            raise StrideError(
                f"measure_expansion 'second_order' needs form 'shared_logit' or 'hashed_logit', got {self.form!r}"
            )
        if self.training_expansion not in EXPANSIONS:
            raise StrideError(f"training_expansion must be one of {EXPANSIONS}, got {self.training_expansion!r}")
        expandable = self.form in ("hashed_logit", AUTO_FORM) and self.linearity_weight == 0
        if self.training_expansion == "second_order" and not expandable:
            raise StrideError("training_expansion 'second_order' needs form 'hashed_logit' and linearity_weight 0, "
                              f"got {self.form!r} and {self.linearity_weight}")  # fmt: skip
        if self.lambda_rule not in LAMBDA_RULES:
            raise StrideError(f"lambda_rule must be one of {LAMBDA_RULES}, got {self.lambda_rule!r}")
        if self.lasso_solver not in LASSO_SOLVERS:
            raise StrideError(f"lasso_solver must be one of {LASSO_SOLVERS}, got {self.lasso_solver!r}")
        if self.n_subsets < 2:
            raise StrideError(f"n_subsets (K) must be at least 2, got {self.n_subsets}")
        if not 1 <= self.subsets_per_example <= self.n_subsets:
            raise StrideError(
                f"subsets_per_example (d) must be between 1 and n_subsets (K={self.n_subsets}), "
                f"got {self.subsets_per_example}"
            )
        positive = ("rank", "output_rank", "designs", "first_order_dim", "epochs", "batch_size", "measure_rows",
                    "checkpoint_every", "cv_queries")  # fmt: skip
        for name in positive:
            if getattr(self, name) < 1:
                raise StrideError(f"{name} must be at least 1, got {getattr(self, name)}")
        weight = self.first_order_weight
        # range check in the same expression as the isinstance checks, so mypy narrows `weight` to a number
        in_range = isinstance(weight, (int, float)) and not isinstance(weight, bool) and 0 <= weight <= 1
        if weight != "auto" and not in_range:
            raise StrideError(f"first_order_weight must be 'auto' or a number in [0, 1], got {weight!r}")
        if not 0.0 <= self.partner_weight <= 1.0:
            raise StrideError(f"partner_weight must be in [0, 1], got {self.partner_weight}")
        if not 0.0 <= self.second_weight <= 1.0:
            raise StrideError(f"second_weight must be in [0, 1], got {self.second_weight}")
        if self.basis_hidden is not None and self.basis_hidden < 1:
            raise StrideError(f"basis_hidden must be at least 1 (or null: a linear basis), got {self.basis_hidden}")
        if self.length_grouping < 0:
            raise StrideError(f"length_grouping must be 0 or more, got {self.length_grouping}")
        if not 0.0 <= self.stability_fraction <= 1.0:
            raise StrideError(f"stability_fraction must be in [0, 1], got {self.stability_fraction}")
        rate = self.learning_rate
        positive_rate = isinstance(rate, numbers.Real) and not isinstance(rate, bool) and rate > 0
        if rate != AUTO_RATE_NAME and not positive_rate:
            raise StrideError(f"learning_rate must be 'auto' or a positive number, got {rate!r}")
        if self.lasso_lambda <= 0:
            raise StrideError(f"lasso_lambda must be positive, got {self.lasso_lambda}")
        if n_train is not None and n_train * self.subsets_per_example < self.n_subsets:
            raise StrideError(
                f"n_subsets (K={self.n_subsets}) is larger than n_train x d = "
                f"{n_train * self.subsets_per_example}: some subsets would be empty; lower K or raise d"
            )

    def resolved(self, hidden_size: int, output_size: int) -> StrideConfig:
        """These settings with their "auto" values made concrete for a model whose steered representation
        has `hidden_size` features and which has `output_size` outputs (its vocabulary).

        Form "auto": "logit" up to AUTO_LOGIT_VOCABULARY outputs, else "hashed_logit" with AUTO_BUCKETS
        buckets and second-order training and measurement. learning_rate "auto": `auto_learning_rate`.
        Values that are not "auto" are kept as they are."""
        config = self
        if config.learning_rate == AUTO_RATE_NAME:
            config = dataclasses.replace(config, learning_rate=auto_learning_rate(hidden_size))
        if config.form != AUTO_FORM:
            return config
        if output_size <= AUTO_LOGIT_VOCABULARY:
            return dataclasses.replace(config, form="logit")
        return dataclasses.replace(config, form="hashed_logit", output_rank=AUTO_BUCKETS,
                                   measure_expansion="second_order", training_expansion="second_order")  # fmt: skip

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


def auto_learning_rate(hidden_size: int) -> float:
    """learning_rate "auto" for a steered representation of `hidden_size` features: AUTO_RATE up to
    AUTO_RATE_WIDTH features, AUTO_RATE x AUTO_RATE_WIDTH / hidden_size above (the operators' outputs are
    sums over the features, so Adam's equal-sized steps on each weight move them about in proportion to
    the width; the benchmark matrix's best rate fell with the width, docs/ablations.md §39)."""
    if hidden_size < 1:
        raise StrideError(f"the steered representation must have at least one feature, got {hidden_size}")
    return AUTO_RATE * min(1.0, AUTO_RATE_WIDTH / hidden_size)


def settings_from_dict(cls: type, values: dict[str, Any], what: str) -> Any:
    """Build the settings dataclass `cls` from a mapping, naming any unknown key or value of the wrong type."""
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise StrideError(f"unknown {what}(s) {unknown}; known: {sorted(known)}")
    hints = typing.get_type_hints(cls)
    for name, value in values.items():
        check_type(name, value, hints[name], what)
    return cls(**values)


def check_field_types(instance: Any, what: str) -> None:
    """Raise StrideError for the first field of the dataclass `instance` whose value does not fit its annotation
    (settings built in Python skip `settings_from_dict`)."""
    hints = typing.get_type_hints(type(instance))
    for field in dataclasses.fields(instance):
        check_type(field.name, getattr(instance, field.name), hints[field.name], what)


def check_type(name: str, value: Any, hint: Any, what: str) -> None:
    """Raise a one-line StrideError naming `name`, the expected type and `value` unless `value` fits `hint`."""
    if not _fits(value, hint):
        raise StrideError(
            f"{name} ({what}) must be {_describe(hint)}, got {reprlib.repr(value)} ({type(value).__name__})"
        )


def _fits(value: Any, hint: Any) -> bool:
    """Whether `value` fits the annotation `hint`; stricter than isinstance where config files need it
    (True is no integer, 2.5 no integer, NaN no usable float)."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is Any:
        return True
    if origin in (typing.Union, types.UnionType):
        return any(_fits(value, member) for member in args)
    if hint is list or origin is list:
        return isinstance(value, (list, tuple)) and (not args or all(_fits(item, args[0]) for item in value))
    if hint is dict or origin is dict:
        return isinstance(value, dict)
    # numbers.Integral / Real also take numpy scalars, which callers in Python may pass.
    if hint is float:  # an integer is always finite (and may be too large for math.isfinite)
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            return False
        return isinstance(value, numbers.Integral) or math.isfinite(value)
    if hint is int:
        return isinstance(value, numbers.Integral) and not isinstance(value, bool)
    return isinstance(value, hint)


# How each type is named in messages, singular and plural (for the items of lists).
_NAMES: dict[Any, tuple[str, str]] = {
    int: ("an integer", "integers"),
    float: ("a finite number", "finite numbers"),
    bool: ("true or false", "booleans"),
    str: ("a string", "strings"),
    type(None): ("null", "nulls"),
    dict: ("a mapping", "mappings"),
}


def _describe(hint: Any, plural: bool = False) -> str:
    """`int | None` -> "an integer or null"; `list[str]` -> "a list of strings"."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        names = [_describe(member, plural) for member in args]
        return ", ".join(names[:-1]) + " or " + names[-1]
    if hint is list or origin is list:
        return ("lists" if plural else "a list") + (f" of {_describe(args[0], plural=True)}" if args else "")
    key = dict if origin is dict else hint
    if key in _NAMES:
        return _NAMES[key][plural]
    return getattr(hint, "__name__", str(hint)) + ("s" if plural else "")


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
    except Exception as exc:
        raise StrideError(f"cannot parse config file {path}: {exc}") from exc
    if not isinstance(values, dict):
        raise StrideError(f"config file {path} must hold a mapping of settings")
    return values


def method_options(method: str, config_path: str | Path | None,
                   partner: str | None = None) -> tuple[StrideConfig, dict[str, Any]]:  # fmt: skip
    """STRIDE's config or another method's settings from a JSON/YAML file (a file may hold one section
    per method). For STRIDE, `partner` (a command-line choice) replaces the file's, and the other
    settings returned are the partner's section of the file, when it has one."""
    check_partner_method(method, partner)
    values = read_mapping_file(config_path) if config_path else {}
    if method != "stride":
        return StrideConfig(), values.get(method, values)
    config = StrideConfig.from_file(config_path) if config_path else StrideConfig()
    if partner is not None:
        config = dataclasses.replace(config, partner=partner)
    return config, partner_settings(config.partner, values)


def check_partner_method(method: str, partner: str | None) -> None:
    """Refuse a partner (the command line's --partner) for any method but STRIDE."""
    if partner is not None and method != "stride":
        raise StrideError(
            f"--partner mixes another method into STRIDE's scores; it needs --method stride, not {method}"
        )


def partner_settings(partner: str | None, sections: dict[str, Any]) -> dict[str, Any]:
    """The settings of STRIDE's partner method: its section of `sections` (a mapping of method name ->
    settings, as a config file holds them), {} without a partner or a section."""
    section = sections.get(partner) if partner else None
    return section if isinstance(section, dict) else {}
