"""TRAK (Park et al. 2023) through the `traker` library, with the model output of the context's task.

TRAK linearises a model output f around each checkpoint, projects its per-example gradients with
a random matrix P (phi = P^T grad f), and scores
    tau(q, i) = phi(q)^T (Phi^T Phi + lambda I)^-1 phi(i) * Q(i),
averaged over checkpoints, with Q(i) = -d loss / d f on training example i.

Model output (`output`):
- "loss" (default): f = minus the task's per-example loss (for a causal LM the mean cross-entropy
  over scored tokens, the very loss every stride method attributes); then Q = 1.
- "margin": TRAK's margin form, f = mean over the example's targets of log(p / (1 - p)) of the
  target (for a causal LM: over its scored next tokens; for a classifier: its label), with
  Q = mean over the targets of (1 - p).
Either way f grows when the loss falls, so a positive score means "training on i lowers the
query's loss", the stride convention.

Pitfalls of traker 0.3.2 handled here: its CPU projector frees a single-block projection matrix
before scoring (we always use at least two blocks); `load_from_save_dir=False` never writes the
experiments file scoring needs (we use True on a fresh folder); `finalize_features` frees the
projection matrix with a `del` that fails on its second call (needed here for one lambda per
checkpoint: we put a placeholder back first); GPT-2's padding check cannot be
vmap-traced (we work on a copy of the model with `pad_token_id=None`, which leaves the computation
unchanged, and eager attention); with proj_dim near or above n_train, Phi^T Phi is singular, so
lambda defaults to 0.1 x its mean eigenvalue for each checkpoint.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from stride.attributor import MethodContext
from stride.baselines.common import (
    BaselineAttributor,
    Checkpoint,
    check_checkpoint_settings,
    check_choice,
    check_positive,
    load_checkpoints,
    parse_settings,
    require_library,
)
from stride.core.arrays import require_free_space
from stride.core.batching import index_batches
from stride.core.sketch import PROJECTIONS, GradientProjector, parameter_sizes
from stride.errors import StrideError
from stride.store import Tensors
from stride.tasks import Examples, Task

OUTPUTS = ("loss", "margin")


def _sparse_projector(sizes: dict[str, int], proj_dim: int, seed: int) -> Any:
    """TRAKer's projector interface over stride's count sketch, one sketch per checkpoint."""
    from trak.projectors import AbstractProjector, ProjectionType

    class SparseProjector(AbstractProjector):
        def __init__(self) -> None:
            super().__init__(grad_dim=sum(sizes.values()), proj_dim=proj_dim, seed=seed,
                             proj_type=ProjectionType.rademacher, device="cpu")  # fmt: skip
            self.sketches: dict[int, GradientProjector] = {}

        def project(self, grads: dict[str, torch.Tensor], model_id: int) -> torch.Tensor:
            if model_id not in self.sketches:
                self.sketches[model_id] = GradientProjector(sizes, proj_dim, seed + 7919 * model_id, "sjlt")
            return self.sketches[model_id].project(grads)

        def free_memory(self) -> None:
            """Nothing to free: a count sketch stores two integers per parameter."""

    return SparseProjector()


@dataclass
class TrakSettings:
    """Settings of `trak`.

    Attributes:
        proj_dim: dimension k of the TRAK features; 2048 is TRAKer's default and the authors'
            recommendation for most models (raise it for larger models and training sets).
        output: the linearised model output, "loss" or "margin" (see the module docstring).
        lambda_reg: ridge term added to Phi^T Phi; None means lambda_ratio x its mean eigenvalue.
        lambda_ratio: the factor of that rule (0.1).
        projection: "sjlt" (default): a sparse Johnson-Lindenstrauss transform (count sketch, one
            per checkpoint, as TRAK uses one projection per model), O(n_params) per example;
            "gaussian": TRAKer's own CPU projector with a dense N(0, 1) matrix, regenerated block
            by block for every batch (equally valid, many times slower on CPU: 1.1 min per
            checkpoint here against seconds). Both are JL transforms, which is all TRAK assumes.
        projection_block: columns of the Gaussian matrix generated at once (at least two blocks
            are always used).
        batch_size: examples per vmap'ed gradient batch. TRAKer's CPU projector regenerates the
            whole projection matrix for every batch, so its cost grows with the number of
            batches: 128 (memory 128 x n_params floats) was 8x faster than 16 on the benchmark.
        checkpoints: further model folders (same architecture and tokenizer): TRAK's ensemble.
        include_model: also use the attributed model itself.
    """

    proj_dim: int = 2048
    output: str = "loss"
    lambda_reg: float | None = None
    lambda_ratio: float = 0.1
    projection: str = "sjlt"
    projection_block: int = 100
    batch_size: int = 128
    checkpoints: list[str] = field(default_factory=list)
    include_model: bool = True

    def validate(self) -> None:
        check_positive(self, "proj_dim", "lambda_ratio", "projection_block", "batch_size")
        if self.proj_dim < 2:
            raise StrideError(f"proj_dim must be at least 2, got {self.proj_dim}")
        check_choice(self, "output", OUTPUTS)
        check_choice(self, "projection", PROJECTIONS)
        if self.lambda_reg is not None and (not isinstance(self.lambda_reg, (int, float)) or self.lambda_reg < 0):
            raise StrideError(f"lambda_reg must be None or a non-negative number, got {self.lambda_reg!r}")
        check_checkpoint_settings(self.checkpoints, None)


def _model_output_class() -> type:
    from trak.modelout_functions import AbstractModelOutput

    class TaskOutput(AbstractModelOutput):
        """Per-example output f (higher = lower loss) and Q = -d loss / d f for traker."""

        def __init__(self, task: Task, form: str):
            super().__init__()
            self.task = task
            self.form = form

        def get_output(self, model, weights, buffers, *fields: torch.Tensor) -> torch.Tensor:
            row = self.task.row(fields)
            logits = self.task.functional_outputs(model, weights, buffers, row)
            if self.form == "loss":
                return -self.task.losses(logits, row)[0]
            chosen, mask = self.task.target_log_probs(logits, row)
            # log(p / (1 - p)) with 1 - p = -expm1(log p), stable for p near 1
            margins = chosen - torch.log(-torch.expm1(chosen).clamp_max(-1e-12))
            return (margins * mask).sum() / mask.sum().clamp_min(1.0)

        def get_out_to_loss_grad(self, model, weights, buffers, batch) -> torch.Tensor:
            rows = self.task.batch_type(*batch)
            if self.form == "loss":
                return torch.ones(len(rows), 1)
            with torch.no_grad():
                logits = self.task.functional_outputs(model, weights, buffers, rows)
                chosen, mask = self.task.target_log_probs(logits, rows)
                return (((1 - chosen.exp()) * mask).sum(1) / mask.sum(1).clamp_min(1.0))[:, None]

    return TaskOutput


class TrakAttributor(BaselineAttributor):
    """TRAK's features are one stage (traker's own files kept in its folder); scores another."""

    name = "trak"

    def __init__(self, context: MethodContext, settings: TrakSettings):
        super().__init__(context, settings)
        self.traker_: Any = None
        self.features_folder_: Path | None = None
        self.checkpoints_: list[Checkpoint] = []
        self.lambdas_: list[float] = []
        self.n_train_ = 0

    def settings(self) -> dict[str, Any]:
        return {**super().settings(), "lambda_used": self.lambdas_}

    def _traker(self, folder: Path, train_size: int) -> Any:
        """A TRAKer on `folder`: empty, to featurize; or holding finalized features, to score."""
        from trak import TRAKer
        from trak.projectors import BasicProjector, ProjectionType

        config = self.config
        # Any: config and set_attn_implementation of a Hugging Face model are not in nn.Module's stubs
        model: Any = copy.deepcopy(self.checkpoints_[0].model)
        if hasattr(model, "config"):  # a Hugging Face model: GPT-2's padding check cannot be traced by vmap
            model.config.pad_token_id = None
        if hasattr(model, "set_attn_implementation"):
            model.set_attn_implementation("eager")
        if config.projection == "sjlt":
            projector = _sparse_projector(parameter_sizes(model), config.proj_dim, self.seed)
        else:
            n_params = sum(p.numel() for p in model.parameters())
            block = min(config.projection_block, math.ceil(config.proj_dim / 2))  # >= 2 blocks
            projector = BasicProjector(grad_dim=n_params, proj_dim=config.proj_dim, seed=self.seed,
                                       proj_type=ProjectionType.normal, device="cpu", block_size=block)  # fmt: skip
        return TRAKer(
            model=model, task=_model_output_class()(self.context.task, config.output), train_set_size=train_size,
            save_dir=str(folder), load_from_save_dir=True, device="cpu", projector=projector,
            proj_dim=config.proj_dim, use_half_precision=False, logging_level=logging.ERROR, projector_seed=self.seed,
        )  # fmt: skip

    def _prepare(self, train: Examples) -> None:
        config = self.config
        self.checkpoints_ = load_checkpoints(self.context, config.checkpoints, config.include_model)
        digests = {f"checkpoint {position}": c.digest for position, c in enumerate(self.checkpoints_)}
        stage = dataclasses.replace(self._new_stage("trak_features", **digests), rewritten=("experiments.json",))
        self.features_folder_ = self.store.folder(stage)
        self.n_train_ = len(train)
        tensors, _ = self._stage(stage, lambda: self._featurize(train))
        self.lambdas_ = tensors["lambdas"].tolist()

    def _featurize(self, train: Examples) -> tuple[Tensors, dict[str, Any]]:
        """Projected gradients of every checkpoint, then TRAK's features Phi (Phi^T Phi + lambda I)^-1."""
        config, task = self.config, self.context.task
        assert self.features_folder_ is not None  # set by _prepare, which runs this stage
        self.features_folder_.mkdir(parents=True, exist_ok=True)
        memory_maps = 4 * len(train) * (config.proj_dim + 1) * (2 * len(self.checkpoints_) + 1)  # grads, features
        require_free_space(self.features_folder_, memory_maps + 2**20, "TRAK's memory-mapped features")
        self.traker_ = self._traker(self.features_folder_, len(train))
        for model_id, checkpoint in enumerate(self.checkpoints_):
            self.traker_.load_checkpoint(checkpoint.model.state_dict(), model_id=model_id)
            for indices in index_batches(len(train), config.batch_size):
                batch = train.batch(indices)
                self.traker_.featurize(batch=task.fields(batch), inds=np.asarray(indices))
        lambdas = []
        with self._quiet():
            for model_id in range(len(self.checkpoints_)):
                self.traker_.saver.load_current_store(model_id)
                grads = torch.as_tensor(np.asarray(self.traker_.saver.current_store["grads"]), dtype=torch.float64)
                if config.lambda_reg is None:
                    lam = config.lambda_ratio * float(grads.pow(2).sum()) / config.proj_dim  # trace / k
                else:
                    lam = float(config.lambda_reg)
                lambdas.append(lam)
                self.traker_.score_computer.lambda_reg = lam
                projector = self.traker_.projector
                if not getattr(projector, "proj_matrix_available", True):
                    # finalize_features frees the projection matrix with an unconditional `del`, which
                    # fails the second time; a placeholder lets it run (projection regenerates the blocks)
                    projector.proj_matrix = torch.empty(0)
                self.traker_.finalize_features(model_ids=[model_id])
        return {"lambdas": torch.tensor(lambdas, dtype=torch.float64)}, {}

    def _scores(self, queries: Examples) -> torch.Tensor:
        if self.traker_ is None:  # the features were loaded from the run folder
            if self.features_folder_ is None:
                raise RuntimeError("call prepare() before score()")
            self.traker_ = self._traker(self.features_folder_, self.n_train_)
        experiment = f"queries_{queries.digest[:16]}"
        for model_id, checkpoint in enumerate(self.checkpoints_):
            self.traker_.start_scoring_checkpoint(experiment, checkpoint.model.state_dict(), model_id=model_id,
                                                  num_targets=len(queries))  # fmt: skip
            for indices in index_batches(len(queries), self.config.batch_size):
                batch = queries.batch(indices)
                self.traker_.score(batch=self.context.task.fields(batch), inds=np.asarray(indices))
        with self._quiet():
            scores = self.traker_.finalize_scores(exp_name=experiment)
        return torch.as_tensor(np.array(scores, dtype=np.float32)).T.contiguous()


def create(context: MethodContext) -> TrakAttributor:
    require_library("trak", "pip install traker==0.3.2", "trak")
    return TrakAttributor(context, parse_settings(TrakSettings, context.settings, "trak"))
