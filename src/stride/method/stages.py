"""The arguments of STRIDE's stages: one dataclass per stage, holding exactly what shapes its output.

A stored stage is reused only when these arguments (and the digests of its inputs) are the same,
so a setting belongs to every stage whose output it changes. `from_config` copies the settings
of a stage from `StrideConfig` by field name: the dataclass is the one list of them.
`NO_STORED_STAGE` names the settings that change no stored output; a test checks that every
setting of StrideConfig is claimed by a stage or listed there.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, TypeVar

from stride.config import StrideConfig

ArgumentsT = TypeVar("ArgumentsT")

NO_STORED_STAGE = {
    "designs": "how many designs run; each design's stages carry their own seed",
    "first_order_weight": "applied when the scores are mixed, after every stored stage",
    "measure_rows": "how many rows one measuring pass holds; the responses do not depend on it",
    "max_length": "shapes the tokenized data, whose digest every stage records",
    "checkpoint_every": "how often training saves its resumable state",
    "partner": "the partner method's stages are stored in its own run store, with its own arguments",
    "partner_weight": "applied when the scores are mixed, after every stored stage",
    "second_layer": "the second bank's stages are stored in its own run store, with its own arguments",
    "second_weight": "applied when the scores are mixed, after every stored stage",
    "lasso_lambda": "recorded by RecoveryArguments as `penalty`, the penalty used",
}


def from_config(kind: type[ArgumentsT], config: StrideConfig, **rest: Any) -> ArgumentsT:
    """`kind` filled from the StrideConfig fields of the same names, the other fields from `rest`."""
    names = {field.name for field in dataclasses.fields(kind)} - set(rest)  # type: ignore[arg-type]
    return kind(**{name: getattr(config, name) for name in names}, **rest)


@dataclass(frozen=True)
class MembershipArguments:
    """The subset design: K subsets, each example in d of them, drawn from `seed`."""

    n_train: int
    n_subsets: int
    subsets_per_example: int
    seed: int


@dataclass(frozen=True)
class OperatorArguments:
    """What shapes a design's trained operators (and so its responses to any query)."""

    n_subsets: int
    subsets_per_example: int
    seed: int
    layer: Any
    task: dict[str, Any]
    form: str
    rank: int
    basis_hidden: int | None  # None: a linear basis (a run folder from before this setting still matches)
    output_rank: int | None  # None for the forms without an output basis (a run folder from before
    output_init: str | None  # these settings existed then still matches: a missing key reads as None)
    epochs: int
    batch_size: int
    length_grouping: int
    learning_rate: float
    stability_weight: float
    stability_fraction: float
    linearity_weight: float
    linearity_sketch_dim: int
    linearity_ridge: float
    linearity_every: int
    training_expansion: str | None  # None: exact (as every run before the second-order training existed)


@dataclass(frozen=True)
class ResponseArguments(OperatorArguments):
    """A design's responses to the queries: its operators' arguments and how they are measured
    (None: exactly, one steered pass per operator)."""

    measure_expansion: str | None = None


@dataclass(frozen=True)
class RecoveryArguments:
    """A design's Lasso: its responses' arguments, the lambda rule, either the penalty or the CV grid, and the
    solver (its name and tolerances: scores from another solver are not reused)."""

    operators: ResponseArguments
    lambda_rule: str
    penalty: float | None
    cv_queries: int | None
    cv_lambdas: int | None
    cv_span: float | None
    lasso_solver: str


@dataclass(frozen=True)
class FirstOrderArguments:
    """The first-order features: gradients w.r.t. one zero operator of `family` (see
    `first_order.first_order_family`)."""

    family: str | None  # None: the logit family (as every run before other families existed)
    family_output_rank: int | None
    layer: Any
    task: dict[str, Any]
    rank: int
    seed: int
    first_order_dim: int
