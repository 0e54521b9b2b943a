"""Attribution methods by name: each registers a factory that builds its Attributor."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

from torch import nn

from stride.attributor import Attributor
from stride.config import StrideConfig
from stride.errors import StrideError
from stride.store import RunStore
from stride.tasks import CausalLMTask, Task


@dataclass
class MethodContext:
    """What a method may use: the frozen model, its tokenizer, settings and the run folder.

    `settings` holds the method's own section of the --config file (e.g. {"proj_dim": 2048}).
    `task` is the model family (default: a causal LM); `checkpoint_models` are further models of
    the same architecture handed over in memory (the Python API's ensembles), used by the methods
    that sum or average over checkpoints.
    """

    model: nn.Module
    tokenizer: Any
    seed: int = 0
    store: RunStore | None = None
    model_digest: str = ""
    progress: bool = True
    stride_config: StrideConfig = field(default_factory=StrideConfig)
    settings: dict[str, Any] = field(default_factory=dict)
    task: Task = field(default_factory=CausalLMTask)
    checkpoint_models: list[nn.Module] = field(default_factory=list)


FACTORIES: dict[str, Callable[[MethodContext], Attributor]] = {}


def register(name: str) -> Callable[[Callable[[MethodContext], Attributor]], Callable[[MethodContext], Attributor]]:
    """Decorator: make a factory available as `stride attribute --method NAME`."""

    def add(factory: Callable[[MethodContext], Attributor]) -> Callable[[MethodContext], Attributor]:
        FACTORIES[name] = factory
        return factory

    return add


def available_methods() -> list[str]:
    _load_builtin_methods()
    return sorted(FACTORIES)


def create_attributor(name: str, context: MethodContext) -> Attributor:
    """The attributor registered under `name`, or a StrideError listing the known names."""
    _load_builtin_methods()
    if name not in FACTORIES:
        raise StrideError(f"unknown method {name!r}; available: {', '.join(sorted(FACTORIES))}")
    return FACTORIES[name](context)


def _load_builtin_methods() -> None:
    import stride.method.attributor  # noqa: F401  (registers "stride")
    import stride.evaluation.operator_gradient  # noqa: F401  (registers the "operator-grad" diagnostic)

    try:
        import stride.baselines  # noqa: F401  (registers the baselines)
    except ModuleNotFoundError as exc:
        if exc.name != "stride.baselines":
            raise
