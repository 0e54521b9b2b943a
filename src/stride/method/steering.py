"""Running a frozen model with operators attached, reusing the activations below the steered place.

`Steered` is what the STRIDE core talks to: a base pass per batch keeps the representation at
the steered place and the outputs; a steered pass adds a_k B h to the outputs (logit form) or
to that representation and runs only what lies above it (residual form). A `Steered` holds no
operators: every steered pass names the bank it uses, so several banks (STRIDE's designs, the
first-order features' zero operators) serve one frozen model side by side.

`SteeredModel` is the causal-LM case: a steered pass replaces the blocks up to the steered one by
stand-ins that hand back the cached (and steered) activations, so only the blocks above run again,
once per (example, subset) row. The model's code is never edited: blocks are swapped inside their
ModuleList for the duration of one call and forward hooks do the rest.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from stride.data import Batch
from stride.errors import StrideError
from stride.method.operators import RESIDUAL, OperatorBank

if TYPE_CHECKING:
    from stride.tasks import Task


@dataclass
class BasePass:
    """What the frozen model computes once per batch: the representation at the steered place and the logits."""

    hidden: torch.Tensor
    logits: torch.Tensor


def _block_output(output: Any) -> torch.Tensor:
    return output[0] if isinstance(output, tuple) else output


def _with_block_output(output: Any, hidden: torch.Tensor) -> Any:
    return (hidden, *tuple(output[1:])) if isinstance(output, tuple) else hidden


class _CachedBlock(nn.Module):
    """Stands in for a decoder block: returns a fixed tensor (or its input) without computing."""

    def __init__(self, original: nn.Module, output: torch.Tensor | None, returns_tuple: bool):
        super().__init__()
        self.__dict__["original"] = original  # not registered: it owns no parameters here
        self.output = output
        self.returns_tuple = returns_tuple

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(self.__dict__["original"], name)

    def forward(self, hidden_states: torch.Tensor | None = None, *args: Any, **kwargs: Any) -> Any:
        if hidden_states is None:
            hidden_states = kwargs["hidden_states"]
        result = hidden_states if self.output is None else self.output
        return (result,) if self.returns_tuple else result


def rows_per_base_row(rows: torch.Tensor, n_base: int) -> int | None:
    """m when `rows` is 0 (m times), 1 (m times), ..., n_base - 1 (m times), else None."""
    if n_base == 0 or len(rows) % n_base:
        return None
    per_row = len(rows) // n_base
    expected = torch.arange(n_base, device=rows.device)[:, None]
    return per_row if bool((rows.view(n_base, per_row) == expected).all()) else None


class Steered(ABC):
    """A frozen model, the place where it is steered and its task."""

    def __init__(self, model: nn.Module, task: Task):
        self.model = model
        self.task = task

    @property
    @abstractmethod
    def location(self) -> Any:
        """The steered place as the `layer` setting records it."""

    def settings(self) -> dict[str, Any]:
        """What describes the steered place in a run's info.json."""
        return {"layer": self.location}

    @abstractmethod
    def sizes(self, sample: Any) -> tuple[int, int]:
        """Widths of the steered representation and of the outputs (`sample`: a batch to probe with)."""

    @abstractmethod
    def base(self, batch: Any) -> BasePass:
        """One unsteered pass without gradients: the representation at the steered place and the outputs."""

    @abstractmethod
    def logits_from_hidden(self, hidden: torch.Tensor, batch: Any) -> torch.Tensor:
        """Outputs when the steered place holds `hidden` (rows aligned with `batch`)."""

    def output_head(self) -> torch.Tensor:
        """The weight [outputs, features] of the layer that maps the final representation to the outputs."""
        raise StrideError(f"{type(self).__name__} has no output head to start operators from; use output_init 'random'")

    def steered_logits(self, bank: OperatorBank, base: BasePass, batch: Any, rows: torch.Tensor,
                       subset_ids: torch.Tensor) -> torch.Tensor:  # fmt: skip
        """Outputs of base-pass rows `rows`, each steered by operator `subset_ids[i]` of `bank`."""
        hidden = base.hidden[rows]
        if bank.form != RESIDUAL:  # the logit forms add to the outputs
            delta = bank.delta(hidden, subset_ids)
            per_row = rows_per_base_row(rows, len(base.logits))
            if per_row is None or torch.result_type(delta, base.logits) != delta.dtype:
                return base.logits[rows] + delta
            # rows 0,0,..,1,1,..: add each base row to its block of shifts by broadcasting (in place when
            # no gradient flows), without gathering copies of the base outputs (the same sums, so the same numbers)
            blocks = delta.view(len(base.logits), per_row, *delta.shape[1:])
            summed = blocks.add_(base.logits[:, None]) if not delta.requires_grad else blocks + base.logits[:, None]
            return summed.view_as(delta)
        steered_hidden = (hidden + bank.delta(hidden, subset_ids)).to(hidden.dtype)  # the blocks' own dtype
        return self.logits_from_hidden(steered_hidden, batch.select(rows))


class SteeredModel(Steered):
    """A frozen causal LM steered at the output of one decoder block."""

    def __init__(self, model: nn.Module, blocks: nn.ModuleList, layer: int, task: Task):
        super().__init__(model, task)
        self.blocks = blocks
        self.layer = layer
        self._block_returns_tuple = False

    @property
    def location(self) -> int:
        return self.layer

    def settings(self) -> dict[str, Any]:
        return {"layer": self.layer, "n_blocks": len(self.blocks)}

    def sizes(self, sample: Batch | None = None) -> tuple[int, int]:
        model: Any = self.model  # a Hugging Face model: config and the embedding getters are not in nn.Module's stubs
        config = model.config
        hidden = config.hidden_size if hasattr(config, "hidden_size") else model.get_input_embeddings().embedding_dim
        return hidden, model.get_output_embeddings().out_features

    def output_head(self) -> torch.Tensor:
        model: Any = self.model  # a Hugging Face model (get_output_embeddings is not in nn.Module's stubs)
        return model.get_output_embeddings().weight

    @torch.no_grad()
    def base(self, batch: Batch) -> BasePass:
        """One unsteered pass: the steered block's output and the base logits."""
        captured: dict[str, torch.Tensor] = {}

        def keep(_module: nn.Module, _inputs: Any, output: Any) -> None:
            self._block_returns_tuple = isinstance(output, tuple)
            captured["hidden"] = _block_output(output).detach()

        handle = self.blocks[self.layer].register_forward_hook(keep)
        try:
            logits = self.task.outputs(self.model, batch)
        finally:
            handle.remove()
        return BasePass(captured["hidden"], logits)

    def logits_from_hidden(self, hidden: torch.Tensor, batch: Batch) -> torch.Tensor:
        """Run only the blocks above the steered one, starting from `hidden` as its output."""
        originals = [self.blocks[i] for i in range(self.layer + 1)]
        try:
            for i, original in enumerate(originals):
                output = hidden if i == self.layer else None
                self.blocks[i] = _CachedBlock(original, output, self._block_returns_tuple)
            return self.task.outputs(self.model, batch)
        finally:
            for i, original in enumerate(originals):
                self.blocks[i] = original

    @contextmanager
    def attached(self, bank: OperatorBank, subset_ids: torch.Tensor) -> Iterator[None]:
        """Steer every full forward pass inside the block: row i by operator subset_ids[i] of `bank`.

        Residual form only (the logit forms act after the model; use `steered_logits`)."""
        if bank.form != RESIDUAL:
            raise ValueError("attached() steers a decoder block; the logit form has none to steer")

        def steer(_module: nn.Module, _inputs: Any, output: Any) -> Any:
            hidden = _block_output(output)
            return _with_block_output(output, (hidden + bank.delta(hidden, subset_ids)).to(hidden.dtype))

        handle = self.blocks[self.layer].register_forward_hook(steer)
        try:
            yield
        finally:
            handle.remove()
