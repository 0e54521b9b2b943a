"""What STRIDE and the baselines need to know about a model family (in the spirit of kronfluence's Task).

A task turns a batch into model outputs, and outputs into per-example numbers: the training loss,
the query measurement (what every method attributes) and the divergence that keeps STRIDE's
operators local. It also says where a model of its family is steered. A task holds no model: its
methods receive one, so one task serves every checkpoint of an ensemble.

`CausalLMTask` is the Hugging Face causal-LM family; `stride.classifiers.task.ClassifierTask` the
supervised classifiers (any `torch.nn.Module` mapping inputs to class logits).
"""

from __future__ import annotations

import contextlib
import dataclasses
from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Any, Protocol

import torch
from torch import nn
from torch.func import functional_call

from stride.data import Batch
from stride.errors import StrideError
from stride.losses import sequence_kl, sequence_losses
from stride.method.steering import Steered, SteeredModel
from stride.models import decoder_blocks, default_layer, eager_attention


class Examples(Protocol):
    """A data set as the methods read it: its size, a digest of its content, and batches of rows."""

    digest: str

    def __len__(self) -> int: ...

    def batch(self, indices: Sequence[int]) -> Any: ...


def batch_fields(batch: Any) -> dict[str, torch.Tensor]:
    """The tensors of a batch dataclass by field name (no copies, unlike dataclasses.asdict)."""
    return {field.name: getattr(batch, field.name) for field in dataclasses.fields(batch)}


class Task(ABC):
    """A model family: how a batch is fed to its models and how their outputs become losses."""

    batch_type: type  # a dataclass of tensors with len() and .select(rows)

    def settings(self) -> dict[str, Any]:
        """Choices of the task that change scores (recorded with every stage that depends on them)."""
        return {}

    @abstractmethod
    def call_arguments(self, batch: Any) -> tuple[tuple, dict[str, Any]]:
        """Positional and keyword arguments of the model's forward for `batch`."""

    def logits_of(self, output: Any) -> torch.Tensor:
        """The logits inside whatever the model's forward returns."""
        return output

    def outputs(self, model: nn.Module, batch: Any) -> torch.Tensor:
        """The model's logits for `batch` (with autograd when it is enabled)."""
        args, kwargs = self.call_arguments(batch)
        return self.logits_of(model(*args, **kwargs))

    def functional_outputs(self, model: nn.Module, params: dict[str, torch.Tensor],
                           buffers: dict[str, torch.Tensor], batch: Any) -> torch.Tensor:  # fmt: skip
        """`outputs` with the given parameter values (for torch.func transforms)."""
        args, kwargs = self.call_arguments(batch)
        return self.logits_of(functional_call(model, (params, buffers), args=args, kwargs=kwargs))

    def fields(self, batch: Any) -> tuple[torch.Tensor, ...]:
        return tuple(batch_fields(batch).values())

    def row(self, fields: Sequence[torch.Tensor]) -> Any:
        """A one-example batch from the per-example fields that torch.func.vmap hands out."""
        return self.batch_type(*(field[None] for field in fields))

    @abstractmethod
    def losses(self, outputs: torch.Tensor, batch: Any) -> torch.Tensor:
        """Per-example training loss -> [rows]."""

    def measurement(self, outputs: torch.Tensor, batch: Any) -> torch.Tensor:
        """Per-example quantity whose decrease the scores attribute -> [rows] (default: the loss)."""
        return self.losses(outputs, batch)

    @abstractmethod
    def divergence(self, base_outputs: torch.Tensor, outputs: torch.Tensor, batch: Any) -> torch.Tensor:
        """Per-example KL(base || other) of the predicted distributions -> [rows]."""

    @abstractmethod
    def target_log_probs(self, outputs: torch.Tensor, batch: Any) -> tuple[torch.Tensor, torch.Tensor]:
        """Log-probability of each target [rows, targets] and the float weights of the scored ones."""

    @abstractmethod
    def sample_targets(self, outputs: torch.Tensor, batch: Any, generator: torch.Generator) -> Any:
        """The batch with its targets drawn from the model's predictions (for a true Fisher)."""

    def attention_mask(self, batch: Any) -> torch.Tensor | None:
        """Integer mask of the real positions, or None (what kronfluence asks for)."""
        return None

    def traceable(self, model: nn.Module) -> contextlib.AbstractContextManager[None]:
        """A context in which torch.func.vmap traces the model without a slow fallback."""
        return contextlib.nullcontext()

    @abstractmethod
    def representations(self, model: nn.Module, batch: Any, layer: Any) -> torch.Tensor:
        """One feature vector per example -> [rows, features] (for representation similarity)."""

    @abstractmethod
    def steered(self, model: nn.Module, layer: Any) -> Steered:
        """The model prepared for steering at `layer` (None: the family's default place)."""

    @abstractmethod
    def second_place(self, model: nn.Module) -> Any:
        """Where `second_layer: auto` puts STRIDE's second operator bank (None: the model has no such place)."""


class CausalLMTask(Task):
    """Causal LMs: an example's loss is the mean next-token cross-entropy over its scored tokens."""

    batch_type = Batch

    def call_arguments(self, batch: Batch) -> tuple[tuple, dict[str, Any]]:
        return (), {"input_ids": batch.input_ids, "attention_mask": batch.attention_mask, "use_cache": False}

    def logits_of(self, output: Any) -> torch.Tensor:
        return output.logits

    def losses(self, outputs: torch.Tensor, batch: Batch) -> torch.Tensor:
        return sequence_losses(outputs, batch)

    def divergence(self, base_outputs: torch.Tensor, outputs: torch.Tensor, batch: Batch) -> torch.Tensor:
        return sequence_kl(base_outputs, outputs, batch)

    def target_log_probs(self, outputs: torch.Tensor, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        log_probs = torch.log_softmax(outputs[:, :-1].float(), dim=-1)
        chosen = log_probs.gather(-1, batch.input_ids[:, 1:, None])[..., 0]
        return chosen, batch.loss_mask[:, 1:].to(chosen.dtype)

    def sample_targets(self, outputs: torch.Tensor, batch: Batch, generator: torch.Generator) -> Batch:
        with torch.no_grad():
            probs = torch.softmax(outputs[:, :-1].detach().float(), dim=-1)
            drawn = torch.multinomial(probs.reshape(-1, probs.shape[-1]), 1, generator=generator)
            drawn = drawn.reshape(probs.shape[:2])
        return Batch(torch.cat([batch.input_ids[:, :1], drawn], dim=1), batch.attention_mask, batch.loss_mask)

    def attention_mask(self, batch: Batch) -> torch.Tensor:
        return batch.attention_mask.long()

    def traceable(self, model: nn.Module) -> contextlib.AbstractContextManager[None]:
        return eager_attention(model)

    def representations(self, model: nn.Module, batch: Batch, layer: int) -> torch.Tensor:
        """Mean over the attention-masked tokens of `hidden_states[layer]` (-1: the last, normed one)."""
        out = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, use_cache=False,
                    output_hidden_states=True)  # fmt: skip
        hidden = out.hidden_states[layer]
        mask = batch.attention_mask.unsqueeze(-1).to(hidden.dtype)
        return (hidden * mask).sum(1) / mask.sum(1).clamp_min(1.0)

    def steered(self, model: nn.Module, layer: int | None) -> Steered:
        """The decoder block `layer` (default: about 0.6 of the depth; negative: counted from the last
        block, -1 being the last), steered at its output."""
        blocks = decoder_blocks(model)
        layer = default_layer(len(blocks)) if layer is None else layer
        if isinstance(layer, bool) or not isinstance(layer, int) or not -len(blocks) <= layer < len(blocks):
            raise StrideError(f"layer must be between 0 and {len(blocks) - 1} (or -{len(blocks)} to -1, counted "
                              f"from the last block), got {layer}")  # fmt: skip
        return SteeredModel(model, blocks, layer % len(blocks), self)

    def second_place(self, model: nn.Module) -> int:
        """The last decoder block: only the final norm and the head run again per steered row. On the
        2-block benchmark models it is also the default block, where the residual bank was chosen after
        gentle fine-tuning (docs/ablations.md §24, §29); on 4-block ones it scored as the default block
        did, in fewer seconds (§33)."""
        return len(decoder_blocks(model)) - 1
