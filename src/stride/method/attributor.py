"""STRIDE behind the Attributor interface: membership -> operators -> responses -> Lasso scores.

With `designs` > 1, independent designs (membership, basis and operators drawn from their own seeds)
each go through these stages and their recovered scores are averaged.

Each stage is stored in the run folder with its arguments, so a rerun skips finished stages and a
run killed while training operators resumes from its last checkpoint.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from stride.attributor import Attributor
from stride.config import StrideConfig
from stride.errors import StrideError
from stride.method.first_order import restricted_gradients
from stride.method.hybrid import cross_fitted_weight, mix
from stride.method.measure import query_responses
from stride.method.membership import example_subsets, membership_matrix, subset_sizes
from stride.method.operators import LOGIT, OperatorBank
from stride.method.recover import CV_LAMBDAS, CV_SPAN, cross_validated_lambda, lasso_scores, standardize
from stride.method.train import OperatorTrainer
from stride.registry import MethodContext, register
from stride.reproducibility import deterministic_algorithms
from stride.store import RunStore
from stride.tasks import CausalLMTask, Examples, Task

TRAINING_FIELDS = (
    "form", "rank", "n_subsets", "subsets_per_example", "epochs", "batch_size", "length_grouping", "learning_rate",
    "stability_weight", "stability_fraction", "linearity_weight", "linearity_sketch_dim",
    "linearity_ridge", "linearity_every",
)  # fmt: skip


FIRST_ORDER_RANK = 64  # basis rank of the first-order features (restricted-gradient LDS: 0.43 vs 0.44 at full width)
DESIGN_SEED_STRIDE = 1_000_003  # seeds of the designs of one run: seed, seed + this, seed + 2 x this, ...


@dataclass
class Design:
    """One independent subset design: its seed, stage-name suffix, membership table and trained operators."""

    seed: int
    suffix: str
    table: np.ndarray
    bank: OperatorBank
    operator_args: dict[str, Any]


class StrideAttributor(Attributor):
    """Attribution with steering operators on random subsets and per-query Lasso recovery.

    `task` says how the model is fed, where it is steered and what a loss is (default: a causal LM)."""

    name = "stride"

    def __init__(
        self,
        model: nn.Module,
        config: StrideConfig | None = None,
        seed: int = 0,
        store: RunStore | None = None,
        model_digest: str = "",
        progress: bool = True,
        task: Task | None = None,
    ):
        super().__init__()
        self.model = model
        self.config = config or StrideConfig()
        self.seed = seed
        self.store = store
        self.model_digest = model_digest
        self.progress = progress
        self.task = task or CausalLMTask()
        self.steered_ = self.task.steered(model, self.config.layer)  # its bank is set by prepare()
        self.layer = self.steered_.location
        self.designs_: list[Design] = []
        self.lambda_: float | None = None
        self.first_order_train_: torch.Tensor | None = None
        self.stage_info: dict[str, Any] = {}

    def settings(self) -> dict[str, Any]:
        return {**self.config.to_dict(), **self.steered_.settings(), **self.task.settings(), "seed": self.seed}

    def _new_bank(self, train: Examples, seed: int) -> OperatorBank:
        config = self.config
        hidden_size, output_size = self.steered_.sizes(train.batch([0]))
        return OperatorBank(config.form, config.n_subsets, hidden_size, config.rank, output_size, seed)

    def design_seed(self, design: int) -> int:
        """The seed of independent design `design` (design 0 uses the run's seed itself)."""
        return self.seed + DESIGN_SEED_STRIDE * design

    def _stage(self, name: str, args: dict[str, Any], compute) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        """Load a finished stage or compute and save it; records its seconds either way."""
        if self.store is not None and self.store.done(name, args):
            tensors, info = self.store.load(name)
            info = {**info, "reused": True}
        else:
            started = time.perf_counter()
            tensors, info = compute()
            info = {**info, "seconds": time.perf_counter() - started}
            if self.store is not None:
                self.store.save(name, tensors, args, info)
            info = {**info, "reused": False}
        self.timings[name] = info.get("seconds", 0.0)
        self.stage_info[name] = info
        return tensors, info

    def prepare(self, train: Examples) -> None:
        """Draw each design's membership and train (or load) its operators on `train`."""
        self.config.validate(len(train))
        self.designs_ = [self._prepare_design(train, design) for design in range(self.config.designs)]
        self.steered_.bank = self.designs_[0].bank
        if self._first_order_weight() != 0.0:
            stored, _ = self._stage("first_order_train", {**self._first_order_args(), "train": train.digest},
                                    lambda: self._first_order_features(train, query=False))  # fmt: skip
            self.first_order_train_ = stored["features"]

    def _prepare_design(self, train: Examples, design: int) -> Design:
        config, seed = self.config, self.design_seed(design)
        suffix = f"_design{design}" if design else ""
        membership_args = {"n": len(train), "K": config.n_subsets, "d": config.subsets_per_example, "seed": seed}

        def draw() -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
            table = example_subsets(len(train), config.n_subsets, config.subsets_per_example, seed)
            sizes = subset_sizes(table, config.n_subsets)
            info = {"min_size": int(sizes.min()), "max_size": int(sizes.max())}
            return {"example_subsets": torch.as_tensor(table)}, info

        tensors, _ = self._stage("membership" + suffix, membership_args, draw)
        table = tensors["example_subsets"].numpy()
        operator_args = {
            **membership_args, "layer": self.layer, "model": self.model_digest, "train": train.digest,
            **{name: getattr(config, name) for name in TRAINING_FIELDS}, **self.task.settings(),
        }  # fmt: skip
        bank = self._new_bank(train, seed)
        self.steered_.bank = bank

        def fit() -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
            torch.manual_seed(seed)
            trainer = OperatorTrainer(self.steered_, train, table, config, seed)
            checkpoint = None
            if self.store is not None:
                checkpoint = self.store.checkpoint_path("operators" + suffix, operator_args)
            with deterministic_algorithms():
                log = trainer.train(checkpoint=checkpoint, progress=self.progress, on_step=self._on_step)
            return dict(bank.state_dict()), {
                "steps": log.steps, "resumed_from_step": log.resumed_from_step,
                "epoch_fidelity": log.epoch_fidelity, "epoch_stability": log.epoch_stability,
                "epoch_linearity": log.epoch_linearity, "parameters_per_operator": bank.operator_parameters(),
            }  # fmt: skip

        tensors, _ = self._stage("operators" + suffix, operator_args, fit)
        bank.load_state_dict(tensors)
        return Design(seed, suffix, table, bank, operator_args)

    _on_step = None  # tests and callers may set a callable(step) to observe (or interrupt) training

    def _prepared(self) -> list[Design]:
        if not self.designs_:
            raise RuntimeError("call prepare() before scoring")
        return self.designs_

    def _design_responses(self, design: Design, queries: Examples) -> tuple[torch.Tensor, torch.Tensor]:
        args = {**design.operator_args, "queries": queries.digest}

        def measure() -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
            self.steered_.bank = design.bank
            responses, base = query_responses(self.steered_, queries, self.config.measure_rows, self.progress)
            if not torch.isfinite(responses).all() or not torch.isfinite(base).all():
                raise StrideError("non-finite (NaN/inf) query losses: check the model and the queries")
            return {"responses": responses, "base_losses": base}, {"n_queries": len(queries)}

        tensors, _ = self._stage("responses" + design.suffix, args, measure)
        return tensors["responses"], tensors["base_losses"]

    def responses(self, queries: Examples) -> tuple[torch.Tensor, torch.Tensor]:
        """Measurement drops [n_queries, designs x K] under each operator (design by design) and the
        base measurements [n_queries]."""
        measured = [self._design_responses(design, queries) for design in self._prepared()]
        return torch.cat([responses for responses, _ in measured], dim=1), measured[0][1]

    def _design_scores(self, design: Design, queries: Examples,
                       penalty: float | None) -> tuple[torch.Tensor, float, torch.Tensor]:  # fmt: skip
        """One design's Lasso scores, its penalty (None: chosen by the lambda rule, else reused) and
        the responses they were recovered from."""
        responses, _ = self._design_responses(design, queries)
        config = self.config
        args = {**design.operator_args, "queries": queries.digest, "lambda_rule": config.lambda_rule}
        if config.lambda_rule == "fixed":
            penalty = config.lasso_lambda
        if penalty is not None:
            args["lasso_lambda"] = penalty
        else:
            args.update(cv_queries=config.cv_queries, cv_lambdas=CV_LAMBDAS, cv_span=CV_SPAN)

        def recover() -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
            membership = membership_matrix(design.table, config.n_subsets)
            standardized, scales = standardize(responses.double().numpy())
            chosen = penalty
            if chosen is None:
                chosen = cross_validated_lambda(membership, standardized, config.cv_queries, design.seed)
            scores = lasso_scores(membership, standardized, scales, chosen)
            info = {"lambda": chosen, "nonzero_fraction": float((scores != 0).mean())}
            return {"scores": torch.as_tensor(scores)}, info

        tensors, info = self._stage("recovery" + design.suffix, args, recover)
        return tensors["scores"], info["lambda"], responses

    def _first_order_weight(self) -> float | None:
        """The configured mixing weight; None: to be cross-fitted ("auto" with several designs)."""
        weight = self.config.first_order_weight
        if weight == "auto":
            return None if self.config.designs > 1 else 0.0
        return float(weight)

    def _first_order_features(self, data: Examples, query: bool) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        features = restricted_gradients(self.steered_, data, LOGIT, FIRST_ORDER_RANK, self.seed,
                                        self.config.batch_size, query=query, proj_dim=self.config.first_order_dim)
        return {"features": features}, {}

    def _first_order_args(self) -> dict[str, Any]:
        return {"model": self.model_digest, "layer": self.layer, "rank": FIRST_ORDER_RANK, "seed": self.seed,
                "dim": self.config.first_order_dim, **self.task.settings()}  # fmt: skip

    def _first_order_scores(self, queries: Examples) -> np.ndarray:
        """<g(query), g(example)> of the logit family (training-side features made in prepare)."""
        stored, _ = self._stage("first_order_queries", {**self._first_order_args(), "queries": queries.digest},
                                lambda: self._first_order_features(queries, query=True))  # fmt: skip
        return (stored["features"] @ self.first_order_train_.T).double().numpy()

    def score(self, queries: Examples) -> torch.Tensor:
        """Lasso-recovered influence of every training example on every query, averaged over the
        designs (the penalty chosen on the first design serves them all), then mixed with the
        first-order scores when `first_order_weight` asks for it (`stride.method.hybrid`)."""
        penalty = None
        recovered, responses = [], []
        for design in self._prepared():
            scores, penalty, measured = self._design_scores(design, queries, penalty)
            recovered.append(scores.double().numpy())
            responses.append(measured.double().numpy())
        self.lambda_ = penalty
        lasso = np.mean(recovered, axis=0)
        weight = self._first_order_weight()
        if weight == 0.0:
            return torch.as_tensor(lasso, dtype=torch.float32)
        first_order = self._first_order_scores(queries)
        criteria = {}
        if weight is None:
            memberships = [membership_matrix(design.table, self.config.n_subsets) for design in self.designs_]
            weight, criteria = cross_fitted_weight(recovered, responses, memberships, first_order)
        self.stage_info["hybrid"] = {"first_order_weight": weight, "criteria": criteria}
        return torch.as_tensor(mix(lasso, first_order, weight), dtype=torch.float32)


@register("stride")
def _create(context: MethodContext) -> StrideAttributor:
    return StrideAttributor(
        context.model, context.stride_config, seed=context.seed, store=context.store,
        model_digest=context.model_digest, progress=context.progress, task=context.task,
    )  # fmt: skip
