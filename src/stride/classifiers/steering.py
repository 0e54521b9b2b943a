"""Steering a frozen classifier at one place: the input or the output of one of its modules.

A place is written "NAME" (the output of module NAME, as `model.named_modules()` names it) or
"NAME:input" (its input). The default is the input of the last `nn.Linear` in registration
order, the penultimate representation that the classification head reads, which is where
representation-based attribution usually looks (STRIDE's second bank, by default, steers the input
of the first nn.Linear: `default_second_place`). The representation there is flattened to
[rows, features]. The logit form adds a_k B h to the logits; the residual form replaces the value
at the place by h + a_k B h through a hook and runs the whole model again (classifiers are small,
so no block-by-block replay as for causal LMs). The module must run once per forward pass.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

from stride.classifiers.data import ClassifierBatch
from stride.errors import StrideError
from stride.method.steering import BasePass, Steered
from stride.tasks import Task

INPUT_SUFFIX = ":input"


def default_place(model: nn.Module) -> str:
    """The input of the model's last nn.Linear (its penultimate representation)."""
    names = [name for name, module in model.named_modules() if isinstance(module, nn.Linear)]
    if not names:
        raise StrideError(f"{type(model).__name__} has no nn.Linear layer: pass layer='MODULE' (steer its output) "
                          "or layer='MODULE:input'")  # fmt: skip
    return names[-1] + INPUT_SUFFIX


def default_second_place(model: nn.Module) -> str | None:
    """The input of the model's first nn.Linear (an MLP's input features): where STRIDE's second bank
    steers a classifier by default. None when the model has a single nn.Linear, whose input the
    first bank already reads."""
    names = [name for name, module in model.named_modules() if isinstance(module, nn.Linear)]
    return names[0] + INPUT_SUFFIX if len(names) > 1 else None


class SteeredClassifier(Steered):
    """A frozen classifier, the steered place (see the module docstring) and a bank of operators."""

    def __init__(self, model: nn.Module, layer: str | None, task: Task):
        super().__init__(model, task)
        self.place = default_place(model) if layer is None else layer
        if not isinstance(self.place, str):
            raise StrideError(f"a classifier's layer must be a module name (or 'NAME:input'), got {layer!r}")
        self.on_input = self.place.endswith(INPUT_SUFFIX)
        name = self.place[: -len(INPUT_SUFFIX)] if self.on_input else self.place
        modules = dict(model.named_modules())
        if name not in modules or name == "":
            known = [n for n in modules if n][:20]
            raise StrideError(f"layer {layer!r}: the model has no module named {name!r}; modules: {known}")
        self.module = modules[name]

    @property
    def location(self) -> str:
        return self.place

    @contextmanager
    def _at_place(self, captured: dict[str, torch.Tensor], replacement: torch.Tensor | None) -> Iterator[None]:
        """Keep the value at the place in `captured`; put `replacement` (flat rows) there if given."""

        def value_of(value: Any) -> torch.Tensor:
            if not torch.is_tensor(value):
                raise StrideError(f"the value at {self.place!r} is a {type(value).__name__}, not a tensor")
            captured["hidden"] = value
            return value if replacement is None else replacement.reshape(value.shape)

        if self.on_input:
            handle = self.module.register_forward_pre_hook(lambda _m, args: (value_of(args[0]), *args[1:]))
        else:
            handle = self.module.register_forward_hook(lambda _m, _args, output: value_of(output))
        try:
            yield
        finally:
            handle.remove()

    def _run(self, batch: ClassifierBatch, replacement: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        captured: dict[str, torch.Tensor] = {}
        with self._at_place(captured, replacement):
            logits = self.task.outputs(self.model, batch)
        if "hidden" not in captured:
            raise StrideError(f"the model's forward never ran {self.place!r}")
        if logits.dim() != 2:
            raise StrideError(f"a classifier must return logits [rows, classes], got shape {tuple(logits.shape)}")
        return captured["hidden"].flatten(1), logits

    @torch.no_grad()
    def base(self, batch: ClassifierBatch) -> BasePass:
        hidden, logits = self._run(batch, None)
        return BasePass(hidden.detach(), logits)

    def logits_from_hidden(self, hidden: torch.Tensor, batch: ClassifierBatch) -> torch.Tensor:
        return self._run(batch, hidden)[1]

    def sizes(self, sample: ClassifierBatch) -> tuple[int, int]:
        base = self.base(sample)
        return base.hidden.shape[1], base.logits.shape[1]
