"""Attribution methods by name: each name maps to a factory that builds its Attributor.

The built-in methods are listed as "module:function" and imported only when used, so importing
stride (or STRIDE itself) never imports a baseline or its library. `register` adds a method.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable

from stride.attributor import Attributor, MethodContext
from stride.errors import StrideError

Factory = Callable[[MethodContext], Attributor]

BUILTIN: dict[str, str] = {
    "stride": "stride.method.attributor:create",
    "operator-grad": "stride.evaluation.operator_gradient:create",
    "tfidf": "stride.baselines.tfidf:create",
    "bm25": "stride.baselines.bm25:create",
    "repsim": "stride.baselines.repsim:create",
    "graddot": "stride.baselines.gradsim:create_graddot",
    "gradcos": "stride.baselines.gradsim:create_gradcos",
    "logra": "stride.baselines.logra:create",
    "trak": "stride.baselines.trak:create",
    "ekfac": "stride.baselines.ekfac:create",
    "astra": "stride.baselines.astra:create",
}
ADDED: dict[str, Factory] = {}


def register(name: str, factory: Factory) -> None:
    """Make `factory` available as `stride attribute --method NAME` (and to the Python API)."""
    ADDED[name] = factory


def available_methods() -> list[str]:
    return sorted({*BUILTIN, *ADDED})


def create_attributor(name: str, context: MethodContext) -> Attributor:
    """The attributor registered under `name`, or a StrideError listing the known names."""
    if name in ADDED:
        return ADDED[name](context)
    if name not in BUILTIN:
        raise StrideError(f"unknown method {name!r}; available: {', '.join(available_methods())}")
    module, function = BUILTIN[name].split(":")
    factory: Factory = getattr(importlib.import_module(module), function)
    return factory(context)
