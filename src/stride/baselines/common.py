"""What the baselines share: settings parsing, stage arguments, checkpoints, and a staged scores step.

Every baseline scores with the sign convention of `stride.attributor.Attributor`: positive means
training on the example lowers the query's loss (the per-example mean next-token cross-entropy
over scored tokens of `stride.losses.sequence_losses`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib.util
import io
from abc import abstractmethod
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TypeVar, cast

import torch
from torch import nn

from stride.attributor import Attributor, MethodContext
from stride.config import settings_from_dict
from stride.core.digest import file_digest, module_digest
from stride.data import TokenizedData
from stride.errors import StrideError
from stride.models import load_causal_lm
from stride.store import QUERY_INPUT, Stage
from stride.tasks import Examples

SettingsT = TypeVar("SettingsT")


def parse_settings(kind: type[SettingsT], values: dict[str, Any], method: str) -> SettingsT:
    """The settings dataclass filled from the method's section of the config; unknown keys are refused."""
    settings = settings_from_dict(kind, values, f"setting for method {method!r}")
    validate = getattr(settings, "validate", None)
    if validate is not None:
        validate()
    return settings


def check_positive(settings: Any, *names: str) -> None:
    for name in names:
        value = getattr(settings, name)
        if not isinstance(value, (int, float)) or isinstance(value, bool) or value <= 0:
            raise StrideError(f"{name} must be a positive number, got {value!r}")


def check_optional_positive(settings: Any, *names: str) -> None:
    """Like check_positive, for settings where None (a default chosen later) is also allowed."""
    check_positive(settings, *(name for name in names if getattr(settings, name) is not None))


QUERY_GIB = 1.0  # memory for the per-query vectors held at once when a `query_memory_gib` setting is None


def queries_per_pass(query_memory_gib: float | None, bytes_per_query: int) -> int:
    """How many queries of `bytes_per_query` fit in `query_memory_gib` (None: QUERY_GIB); at least one."""
    budget = QUERY_GIB if query_memory_gib is None else query_memory_gib
    return max(1, int(budget * 2**30) // bytes_per_query)


def check_choice(settings: Any, name: str, allowed: Sequence[str]) -> None:
    value = getattr(settings, name)
    if value not in allowed:
        raise StrideError(f"{name} must be one of {list(allowed)}, got {value!r}")


@dataclasses.dataclass
class Checkpoint:
    """One model the scores are summed (or averaged) over, with the digest that names it in the store."""

    label: str
    digest: str
    model: nn.Module
    weight: float = 1.0


def load_checkpoints(context: MethodContext, paths: Sequence[str], include_model: bool = True,
                     weights: Sequence[float] | None = None) -> list[Checkpoint]:  # fmt: skip
    """The attributed model (unless excluded), the models saved in `paths`, then the context's
    in-memory `checkpoint_models`.

    Every saved checkpoint must share the attributed model's tokenizer, since the data were tokenized
    with it. `weights` (one per returned checkpoint) default to 1 (e.g. TracIn's learning rates)."""
    checkpoints = [Checkpoint("model", context.model_digest, context.model)] if include_model else []
    for path in paths:
        model, tokenizer = load_causal_lm(path)
        if tokenizer.get_vocab() != context.tokenizer.get_vocab():
            raise StrideError(f"checkpoint {path} has another tokenizer than the attributed model")
        checkpoints.append(Checkpoint(str(path), file_digest(path), model))
    for position, model in enumerate(context.checkpoint_models):
        checkpoints.append(Checkpoint(f"checkpoint model {position}", module_digest(model), model))
    if not checkpoints:
        raise StrideError("no model to attribute with: include_model is false and checkpoints is empty")
    if weights is not None:
        if len(weights) != len(checkpoints):
            raise StrideError(
                f"checkpoint_weights needs {len(checkpoints)} value(s) (one per model used), got {len(weights)}"
            )
        for checkpoint, weight in zip(checkpoints, weights):
            checkpoint.weight = float(weight)
    return checkpoints


def check_checkpoint_settings(paths: Any, weights: Any) -> None:
    if not isinstance(paths, (list, tuple)) or not all(isinstance(p, (str, Path)) for p in paths):
        raise StrideError(f"checkpoints must be a list of model folders, got {paths!r}")
    for path in paths:
        if not Path(path).is_dir():
            raise StrideError(f"checkpoint folder not found: {path}")
    numbers = isinstance(weights, (list, tuple)) and all(isinstance(w, (int, float)) for w in weights)
    if weights is not None and not numbers:
        raise StrideError(f"checkpoint_weights must be a list of numbers, got {weights!r}")


@dataclasses.dataclass(frozen=True)
class BaselineArguments:
    """What shapes every stage of a baseline: its name, seed, settings dataclass and the task's choices."""

    method: str
    seed: int
    settings: Any
    task: dict[str, Any]


class BaselineAttributor(Attributor):
    """An Attributor with parsed settings and a seed, whose query scores are a stored stage.

    Subclasses stage their training-side work in `_prepare` (with `_new_stage`) and say how
    the scores of a query set are computed in `_scores`. Settings named in `unrecorded_settings`
    change no stored output (e.g. a memory budget): the stages record them as None, so a stored run
    is reused under any value."""

    unrecorded_settings: tuple[str, ...] = ()

    def __init__(self, context: MethodContext, settings: Any):
        super().__init__(context.store)
        self.context = context
        self.config = settings
        self.seed = context.seed
        self.train_digest_: str | None = None

    def settings(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self.config), "seed": self.seed}

    def _arguments(self) -> BaselineArguments:
        recorded = dataclasses.replace(self.config, **dict.fromkeys(self.unrecorded_settings))
        return BaselineArguments(self.name, self.seed, recorded, self.context.task.settings())

    def _new_stage(self, name: str, **more_inputs: str) -> Stage:
        """A stage of this baseline that reads the model, the prepared training set and `more_inputs`."""
        if self.train_digest_ is None:
            raise RuntimeError("call prepare() before score()")
        inputs = {"model": self.context.model_digest, "train": self.train_digest_, **more_inputs}
        return Stage(name, self._arguments(), inputs)

    def prepare(self, train: Examples) -> None:
        self.train_digest_ = train.digest
        self._prepare(train)

    @abstractmethod
    def _prepare(self, train: Examples) -> None:
        """The training-side work, in stages."""

    @abstractmethod
    def _scores(self, queries: Examples) -> torch.Tensor:
        """The float32 scores [len(queries), n_train] of the prepared training set."""

    def score(self, queries: Examples) -> torch.Tensor:
        """The scores of `queries`, a stored stage of their own (a rerun loads them)."""
        stage = self._new_stage("scores", **{QUERY_INPUT: queries.digest})
        tensors, _ = self._stage(stage, lambda: ({"scores": self._scores(queries).float()}, {}))
        return tensors["scores"]

    def _quiet(self) -> contextlib.AbstractContextManager:
        """Silence a library's own progress bars (on stderr) unless progress was asked for."""
        return contextlib.nullcontext() if self.context.progress else contextlib.redirect_stderr(io.StringIO())


def require_library(module: str, install: str, method: str) -> None:
    """A StrideError that says how to install an optional library, instead of a bare ImportError."""
    if importlib.util.find_spec(module) is None:
        raise StrideError(f"method {method!r} needs the {module!r} library: {install}")


def data_texts(data: Examples) -> list[str]:
    # the lexical baselines read text data sets, whose display_text the Examples protocol does not name
    texts = cast(TokenizedData, data)
    return [texts.display_text(i) for i in range(len(texts))]
