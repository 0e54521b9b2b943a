"""What the baselines share: settings parsing, timed and stored stages, checkpoints, batching.

Every baseline scores with the sign convention of `stride.attributor.Attributor`: positive means
training on the example lowers the query's loss (the per-example mean next-token cross-entropy
over scored tokens of `stride.losses.sequence_losses`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence, TypeVar

import torch
from torch import nn

from stride.attributor import Attributor
from stride.config import settings_from_dict
from stride.data import Batch, TokenizedData
from stride.errors import StrideError
from stride.losses import sequence_losses
from stride.registry import MethodContext
from stride.store import file_digest, module_digest

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


def check_choice(settings: Any, name: str, allowed: Sequence[str]) -> None:
    value = getattr(settings, name)
    if value not in allowed:
        raise StrideError(f"{name} must be one of {list(allowed)}, got {value!r}")


def index_batches(n: int, batch_size: int) -> Iterator[list[int]]:
    """Consecutive index lists of at most `batch_size` covering range(n)."""
    for start in range(0, n, batch_size):
        yield list(range(start, min(start + batch_size, n)))


def example_losses(model: nn.Module, batch: Batch) -> torch.Tensor:
    """Per-example mean cross-entropy over scored tokens -> [rows] (with autograd if enabled)."""
    logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, use_cache=False).logits
    return sequence_losses(logits, batch)


@dataclasses.dataclass
class Checkpoint:
    """One model the scores are summed (or averaged) over, with the digest that names it in the store."""

    label: str
    digest: str
    model: nn.Module
    weight: float = 1.0


def load_checkpoints(context: MethodContext, paths: Sequence[str], include_model: bool = True,
                     weights: Sequence[float] | None = None) -> list[Checkpoint]:
    """The attributed model (unless excluded), the models saved in `paths`, then the context's
    in-memory `checkpoint_models`.

    Every saved checkpoint must share the attributed model's tokenizer, since the data were tokenized
    with it. `weights` (one per returned checkpoint) default to 1 (e.g. TracIn's learning rates)."""
    from stride.models import load_causal_lm

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


class BaselineAttributor(Attributor):
    """An Attributor with parsed settings, a seed, and stages that are timed and kept in the run store."""

    def __init__(self, context: MethodContext, settings: Any):
        super().__init__()
        self.context = context
        self.config = settings
        self.seed = context.seed
        self.store = context.store
        self.stage_info: dict[str, Any] = {}
        self._scratch: tempfile.TemporaryDirectory | None = None

    def settings(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self.config), "seed": self.seed}

    def _stage(self, name: str, args: dict[str, Any],
               compute: Callable[[], dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
        """Load a finished stage from the run store or compute (and store) it; times it either way."""
        args = {"method": self.name, **args}
        if self.store is not None and self.store.done(name, args):
            tensors, info = self.store.load(name)
            self.stage_info[name] = {**info, "reused": True}
            self.timings[name] = info.get("seconds", 0.0)
            return tensors
        started = time.perf_counter()
        tensors = compute()
        seconds = time.perf_counter() - started
        if self.store is not None:
            self.store.save(name, tensors, args, {"seconds": seconds})
        self.stage_info[name] = {"seconds": seconds, "reused": False}
        self.timings[name] = seconds
        return tensors

    def _library_folder(self, name: str) -> Path:
        """A fresh, not yet existing folder for a library's own files: `stages/NAME` of the run
        folder when there is one, else inside a temporary directory kept as long as this object."""
        if self.store is not None:
            folder = self.store.root / "stages" / name
            shutil.rmtree(folder, ignore_errors=True)
            return folder
        self._scratch = tempfile.TemporaryDirectory(prefix=f"stride-{name}-")
        return Path(self._scratch.name) / name

    def _quiet(self) -> contextlib.AbstractContextManager:
        """Silence a library's own progress bars (on stderr) unless progress was asked for."""
        return contextlib.nullcontext() if self.context.progress else contextlib.redirect_stderr(io.StringIO())

    @contextlib.contextmanager
    def _timed(self, name: str) -> Iterator[None]:
        started = time.perf_counter()
        yield
        self.timings[name] = self.timings.get(name, 0.0) + time.perf_counter() - started


def require_library(module: str, install: str, method: str) -> None:
    """A StrideError that says how to install an optional library, instead of a bare ImportError."""
    import importlib.util

    if importlib.util.find_spec(module) is None:
        raise StrideError(f"method {method!r} needs the {module!r} library: {install}")


def require_prepared(value: Any) -> Any:
    if value is None:
        raise RuntimeError("call prepare() before score()")
    return value


def data_texts(data: TokenizedData) -> list[str]:
    return [data.display_text(i) for i in range(len(data))]
