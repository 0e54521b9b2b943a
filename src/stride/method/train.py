"""Joint training of the basis and the K operators, base model frozen.

Loss of one step over a batch of training examples, each paired with each of its d subsets:
  fidelity   the task's loss of the example under its subsets' operators (the operator should
             explain its own subset),
  stability  KL(base || steered) of other examples of the batch under operators whose subset
             they are not in (no global shift),
  linearity  ||(P - I) y||^2 / K for a probe example, where y holds its K measurement drops and P
             projects onto the span of a random sketch of the membership (plus an intercept):
             the responses should follow an additive model of membership.
"""

from __future__ import annotations

import os
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import cast

import numpy as np
import torch
from tqdm.auto import tqdm

from stride.config import StrideConfig
from stride.errors import StrideError
from stride.method.expanded_training import BucketMoments, bucket_moments, expanded_changes
from stride.method.expansion import SECOND_ORDER
from stride.method.membership import membership_matrix
from stride.method.operators import HASHED_LOGIT, OperatorBank
from stride.method.steering import Steered
from stride.tasks import CausalLMTask, Examples


@dataclass
class TrainingLog:
    """What the loop did: steps, mean losses per epoch, wall time."""

    steps: int = 0
    epoch_fidelity: list[float] = field(default_factory=list)
    epoch_stability: list[float] = field(default_factory=list)
    epoch_linearity: list[float] = field(default_factory=list)
    seconds: float = 0.0
    resumed_from_step: int = 0


def linearity_projector(table: np.ndarray, n_subsets: int, sketch_dim: int, ridge: float, seed: int) -> torch.Tensor:
    """P = S (S^T S + gamma I)^-1 S^T with S = [M R, 1]: R is a Gaussian n x q sketch."""
    membership = membership_matrix(table, n_subsets)
    rng = np.random.default_rng(seed + 7919)
    sketch = rng.standard_normal((table.shape[0], sketch_dim)) / np.sqrt(sketch_dim)
    design = np.hstack([membership @ sketch, np.ones((n_subsets, 1))])
    gram = design.T @ design + ridge * np.eye(design.shape[1])
    return torch.as_tensor(design @ np.linalg.solve(gram, design.T), dtype=torch.float32)


class OperatorTrainer:
    """Trains a bank of operators on a steered model and a training set; resumable from a checkpoint file."""

    def __init__(self, steered: Steered, bank: OperatorBank, data: Examples, table: np.ndarray, config: StrideConfig,
                 seed: int):  # fmt: skip
        self.steered = steered
        self.bank = bank
        self.data = data
        self.device = bank.basis.device  # the bank lives where the frozen model runs
        self.table = torch.as_tensor(table, dtype=torch.long, device=self.device)
        self.config = config
        self.seed = seed
        self.expanded = config.training_expansion == SECOND_ORDER
        if self.expanded and (bank.form != HASHED_LOGIT or not isinstance(steered.task, CausalLMTask)):
            raise StrideError("training_expansion 'second_order' expands the causal-LM cross-entropy of "
                              f"hashed_logit operators; this run has {bank.form} operators on "
                              f"{type(steered.task).__name__}")  # fmt: skip
        if isinstance(config.learning_rate, str):  # "auto" is made a number by StrideConfig.resolved
            raise StrideError(f"learning_rate {config.learning_rate!r} was not resolved for this model's width")
        # fused: one kernel for the whole update of the K operators (2.6x faster than the default on CPU)
        self.optimizer = torch.optim.Adam(bank.parameters(), lr=config.learning_rate, fused=True)
        self.projector = None
        if config.linearity_weight > 0:
            self.projector = linearity_projector(
                table, config.n_subsets, config.linearity_sketch_dim, config.linearity_ridge, seed
            ).to(self.device)

    @property
    def steps_per_epoch(self) -> int:
        return -(-len(self.data) // self.config.batch_size)

    def _epoch_order(self, epoch: int) -> torch.Tensor:
        """A seeded permutation; with length grouping, each window of batches is sorted by length
        (so a batch pads little) and the full batches are then shuffled."""
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        order = torch.randperm(len(self.data), generator=generator)
        lengths = getattr(self.data, "lengths", None)
        size, windows = self.config.batch_size, self.config.length_grouping
        if lengths is None or windows <= 0:
            return order
        lengths = torch.as_tensor(np.asarray(lengths, dtype=np.int64))
        window = size * windows
        grouped = torch.cat([
            chunk[torch.sort(lengths[chunk], stable=True).indices] for chunk in order.split(window)
        ])  # fmt: skip
        batches = list(grouped.split(size))
        full = len(batches) - (len(batches[-1]) < size)
        shuffled = [batches[i] for i in torch.randperm(full, generator=generator)] + batches[full:]
        return torch.cat(shuffled)

    def _step(self, indices: torch.Tensor, step: int) -> tuple[float, float, float]:
        config, steered = self.config, self.steered
        generator = torch.Generator().manual_seed(self.seed * 7_000_003 + step)
        batch = self.data.batch(indices.tolist())
        base = steered.base(batch)
        memberships = self.table[indices.to(self.device)]
        n_rows, per_example = memberships.shape
        rows = torch.arange(n_rows, device=self.device).repeat_interleave(per_example)
        subset_ids = memberships.reshape(-1)
        moments = None
        if self.expanded:  # the expanded cross-entropy: no [pairs, T, vocab] logits
            moments = bucket_moments(self.bank, base.logits, batch)
            linear, variance = expanded_changes(self.bank, moments, base.hidden, rows, subset_ids)
            fidelity = (moments.base_losses[rows] + linear + 0.5 * variance).mean()
        else:
            logits = steered.steered_logits(self.bank, base, batch, rows, subset_ids)
            fidelity = steered.task.losses(logits, batch.select(rows)).mean()
        loss = fidelity
        stability = self._stability(base, batch, rows, subset_ids, memberships, generator, moments)
        if stability is not None:
            loss = loss + config.stability_weight * stability
        linearity = None
        if self.projector is not None and step % config.linearity_every == 0:
            linearity = self._linearity(base, batch, generator)
            loss = loss + config.linearity_weight * linearity
        if not torch.isfinite(loss):
            raise StrideError(
                f"operator training loss is NaN/inf at step {step}: check the model's weights and the data "
                "(earlier checkpoints are kept)"
            )
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        terms = tuple(float("nan") if term is None else term.item() for term in (fidelity, stability, linearity))
        return cast(tuple[float, float, float], terms)  # three terms; item() of a float tensor is a float

    def _stability(self, base, batch, rows, subset_ids, memberships, generator,
                   moments: BucketMoments | None) -> torch.Tensor | None:  # fmt: skip
        """KL on examples of the batch paired with an operator whose subset they are not in (expanded
        to second order when `moments` are given)."""
        n_rows = memberships.shape[0]
        if self.config.stability_weight <= 0 or self.config.stability_fraction <= 0 or n_rows < 2:
            return None
        shift = torch.randint(1, n_rows, rows.shape, generator=generator).to(
            self.device
        )  # CPU draws: same on any device
        others = (rows + shift) % n_rows
        outside = ~(memberships[others] == subset_ids[:, None]).any(1)
        drawn = torch.rand(rows.shape, generator=generator).to(self.device)
        chosen = outside & (drawn < self.config.stability_fraction)
        if not chosen.any():
            return None
        others, subset_ids = others[chosen], subset_ids[chosen]
        if moments is not None:
            _, variance = expanded_changes(self.bank, moments, base.hidden, others, subset_ids)
            return 0.5 * variance.mean()
        logits = self.steered.steered_logits(self.bank, base, batch, others, subset_ids)
        return self.steered.task.divergence(base.logits[others], logits, batch.select(others)).mean()

    def _linearity(self, base, batch, generator) -> torch.Tensor:
        """Penalty on the part of one probe example's K responses that no additive model explains."""
        probe = int(torch.randint(0, len(batch), (1,), generator=generator))
        n_subsets = self.config.n_subsets
        rows = torch.full((n_subsets,), probe, dtype=torch.long, device=self.device)
        measurement = self.steered.task.measurement
        base_loss = measurement(base.logits[probe : probe + 1], batch.select(rows[:1]))
        steered = measurement(
            self.steered.steered_logits(self.bank, base, batch, rows, torch.arange(n_subsets, device=self.device)),
            batch.select(rows),
        )
        responses = base_loss - steered
        assert self.projector is not None  # _step calls this only when there is a projector
        residual = self.projector @ responses - responses
        return residual.pow(2).mean()

    def _save(self, path: Path, step: int, log: TrainingLog) -> None:
        state = {
            "bank": self.bank.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "step": step,
            "epoch_fidelity": log.epoch_fidelity,
            "epoch_stability": log.epoch_stability,
            "epoch_linearity": log.epoch_linearity,
        }
        partial = path.with_suffix(".partial")
        try:
            torch.save(state, partial)
        except RuntimeError as exc:  # torch reports a failed write (e.g. a full disk) as a RuntimeError
            partial.unlink(missing_ok=True)
            reason = str(exc).splitlines()[0]
            raise StrideError(
                f"cannot write the checkpoint {partial} ({reason}); check that the disk has room and is writable, "
                "then rerun: finished stages and the last checkpoint are kept"
            ) from None
        os.replace(partial, path)

    def _load(self, path: Path, log: TrainingLog) -> int:
        """Restore bank, optimizer and log from a checkpoint; a damaged one is reported and training
        starts over (step 0)."""
        try:
            state = torch.load(path, weights_only=True, map_location=self.device)
        except Exception as exc:  # truncated, not a torch file, or holding objects weights_only refuses
            reason = str(exc).splitlines()[0]
            warnings.warn(f"the checkpoint {path} cannot be read ({reason}); training starts over", stacklevel=2)
            return 0
        self.bank.load_state_dict(state["bank"])
        self.optimizer.load_state_dict(state["optimizer"])
        log.epoch_fidelity = list(state["epoch_fidelity"])
        log.epoch_stability = list(state["epoch_stability"])
        log.epoch_linearity = list(state["epoch_linearity"])
        return int(state["step"])

    def train(
        self,
        checkpoint: Path | None = None,
        progress: bool = True,
        on_step: Callable[[int], None] | None = None,
    ) -> TrainingLog:
        """Run all epochs; with `checkpoint`, save there regularly and resume from it if present."""
        log = TrainingLog()
        start_step = 0
        if checkpoint is not None and checkpoint.exists():
            start_step = self._load(checkpoint, log)
            log.resumed_from_step = start_step
        started = time.perf_counter()
        per_epoch, total = self.steps_per_epoch, self.steps_per_epoch * self.config.epochs
        sums = np.zeros(3)
        counts = np.zeros(3)
        bar = tqdm(total=total, initial=start_step, desc="training operators", disable=not progress, unit="step")
        for step in range(start_step, total):
            epoch, position = divmod(step, per_epoch)
            if position == 0 or step == start_step:
                order = self._epoch_order(epoch)
                if position == 0:
                    sums[:], counts[:] = 0.0, 0.0
            indices = order[position * self.config.batch_size : (position + 1) * self.config.batch_size]
            values = np.array(self._step(indices, step))
            seen = ~np.isnan(values)
            sums[seen] += values[seen]
            counts[seen] += 1
            bar.update(1)
            bar.set_postfix(fidelity=f"{values[0]:.3f}")
            if position == per_epoch - 1:
                means = np.where(counts > 0, sums / np.maximum(counts, 1), np.nan)
                log.epoch_fidelity.append(float(means[0]))
                log.epoch_stability.append(float(means[1]))
                log.epoch_linearity.append(float(means[2]))
            if checkpoint is not None and ((step + 1) % self.config.checkpoint_every == 0 or position == per_epoch - 1):
                self._save(checkpoint, step + 1, log)
            if on_step is not None:
                on_step(step + 1)
        bar.close()
        log.steps = total
        log.seconds = time.perf_counter() - started
        return log
