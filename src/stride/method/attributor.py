"""STRIDE behind the Attributor interface: membership -> operators -> responses -> Lasso scores.

With `designs` > 1, independent designs (membership, basis and operators drawn from their own seeds)
each go through these stages and their recovered scores are averaged.

Each stage is stored in the run folder with its arguments, so a rerun skips finished stages and a
run killed while training operators resumes from its last checkpoint.

Measurement and recovery go query block by query block (`stride.method.query_blocks`): the processes
of a torchrun job share them out (`shard_phases`), each block a partial stage of its own, and the
design's whole stage, written by whichever process gets to it first, holds the same arrays as a
single process's.
"""

from __future__ import annotations

import itertools
import warnings
from collections.abc import Callable
from dataclasses import dataclass, fields, replace
from functools import partial
from typing import Any

import numpy as np
import torch
from torch import nn

from stride.attributor import Attributor, MethodContext
from stride.config import AUTO_LOGIT_VOCABULARY, AUTO_PLACE, StrideConfig
from stride.core.device import model_device
from stride.core.sparse_rows import SparseRows
from stride.core.topk import TopScores, chunk_rows, top_scores
from stride.distributed import Shard
from stride.errors import StrideError
from stride.method.expansion import measured_responses, pass_queries
from stride.method.first_order import first_order_family, restricted_gradients
from stride.method.hybrid import cross_fitted_weight
from stride.method.membership import example_subsets, membership_matrix, subset_sizes
from stride.method.mixture import Mixture
from stride.method.operators import HASHED_LOGIT, LOGIT, RESIDUAL, SHARED_LOGIT, OperatorBank, head_output_basis
from stride.method.query_blocks import QueryRange, block_stage, query_blocks
from stride.method.recover import (
    CV_LAMBDAS,
    CV_SPAN,
    SOLVERS,
    cross_validated_lambda,
    lasso_scores,
    resolve_solver,
    standardize,
)
from stride.method.stages import (
    FirstOrderArguments,
    MembershipArguments,
    OperatorArguments,
    RecoveryArguments,
    ResponseArguments,
    from_config,
)
from stride.method.train import OperatorTrainer
from stride.registry import available_methods, create_attributor
from stride.reproducibility import deterministic_algorithms
from stride.store import QUERY_INPUT, STAGES, RunStore, Stage, StageOutput, Tensors
from stride.tasks import CausalLMTask, Examples, Task

FIRST_ORDER_MEMORY = 4 * 2**30  # bytes of training-side first-order features that "auto" accepts (n = 262k)
FIRST_ORDER_RANK = 64  # basis rank of the first-order features (restricted-gradient LDS: 0.43 vs 0.44 at full width)
NOT_PARTNERS = ("stride", "operator-grad")  # methods that cannot be STRIDE's partner
DESIGN_SEED_STRIDE = 1_000_003  # seeds of the designs of one run: seed, seed + this, seed + 2 x this, ...


@dataclass
class Design:
    """One independent subset design: its name (which names its bank and its stages' suffix), seed,
    membership table and the arguments of its operators."""

    name: str
    suffix: str
    seed: int
    table: np.ndarray
    operator_args: OperatorArguments


class StrideAttributor(Attributor):
    """Attribution with steering operators on random subsets and per-query Lasso recovery.

    `task` says how the model is fed, where it is steered and what a loss is (default: a causal LM).
    Each design's trained operators are kept in `banks_` under the design's name. `second`: STRIDE's
    second operator bank (`config.second_layer`), whose scores are mixed in at `config.second_weight`;
    `partner`: another method whose scores are mixed into the final ones (`config.partner_weight`;
    see `create`)."""

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
        partner: Attributor | None = None,
        second: StrideAttributor | None = None,
    ):
        super().__init__(store)
        self.model = model
        self.config = config or StrideConfig()
        self.seed = seed
        self.model_digest = model_digest
        self.progress = progress
        self.task = task or CausalLMTask()
        self.partner = partner
        self.second = second
        self.steered_ = self.task.steered(model, self.config.layer)
        self.layer = self.steered_.location
        self.designs_: list[Design] = []
        self.banks_: dict[str, OperatorBank] = {}
        self.train_digest_ = ""
        self.lambda_: float | None = None
        self.first_order_train_: torch.Tensor | None = None
        self.scores_se_: torch.Tensor | None = None
        self._warned_first_order = False

    def settings(self) -> dict[str, Any]:
        partner = {"partner_settings": self.partner.settings()} if self.partner is not None else {}
        return {**self.config.to_dict(), **self.steered_.settings(), **self.task.settings(), "seed": self.seed,
                **partner}  # fmt: skip

    def _new_bank(self, train: Examples, seed: int) -> OperatorBank:
        config = self.config
        hidden_size, output_size = self.steered_.sizes(train.batch([0]))
        initial = None
        if config.form == SHARED_LOGIT and config.output_init == "head":
            initial = head_output_basis(self.steered_.output_head(), config.output_rank)
        bank = OperatorBank(config.form, config.n_subsets, hidden_size, config.rank, output_size, seed,
                            config.output_rank, initial, config.basis_hidden)  # fmt: skip
        return bank.to(model_device(self.model))  # drawn on the CPU (same on every device), trained on the model's

    def design_seed(self, design: int) -> int:
        """The seed of independent design `design` (design 0 uses the run's seed itself)."""
        return self.seed + DESIGN_SEED_STRIDE * design

    def _inputs(self, **more: str) -> dict[str, str]:
        """What a stage was computed from; a model run in another dtype than float32 is another input."""
        dtype = next(self.model.parameters()).dtype
        precision = {} if dtype == torch.float32 else {"model_dtype": str(dtype).removeprefix("torch.")}
        return {"model": self.model_digest, "train": self.train_digest_, **precision, **more}

    def _resolve_settings(self, train: Examples) -> None:
        """Make form and learning_rate "auto" concrete for this model's sizes (see StrideConfig.resolved)."""
        hidden_size, output_size = self.steered_.sizes(train.batch([0]))
        resolved = self.config.resolved(hidden_size, output_size)
        if resolved.form != self.config.form and resolved.form != LOGIT:
            warnings.warn(f"form auto: the model has {output_size} outputs, more than {AUTO_LOGIT_VOCABULARY}, so "
                          f"the operators take the hashed_logit form ({resolved.output_rank} buckets, second-order "
                          "training and measurement); set form to choose another", stacklevel=3)  # fmt: skip
        self.config = resolved
        self.config.validate(len(train))

    def prepare(self, train: Examples) -> None:
        """Draw each design's membership and train (or load) its operators on `train`."""
        self._resolve_settings(train)
        self.train_digest_ = train.digest
        self.designs_ = [self._prepare_design(train, design) for design in range(self.config.designs)]
        if self._first_order_weight(len(train)) != 0.0:
            self._prepare_first_order(train)
        for prefix, other in self._others():
            other.prepare(train)
            self._record(prefix, other)

    def _others(self) -> list[tuple[str, Attributor]]:
        """The second bank and the partner (those this run has), with the prefix of their records."""
        named: list[tuple[str, Attributor | None]] = [("second", self.second), ("partner", self.partner)]
        return [(prefix, other) for prefix, other in named if other is not None]

    def _record(self, prefix: str, other: Attributor) -> None:
        """Another attributor's stage seconds and records, under "PREFIX_" names, with STRIDE's."""
        self.timings.update({f"{prefix}_{name}": seconds for name, seconds in other.timings.items()})
        self.stage_info.update({f"{prefix}_{name}": info for name, info in other.stage_info.items()})

    def training_parts(self, n_train: int) -> int:
        """Independent parts of a sharded run's training phase: the designs, and the first-order
        features when the scores use them."""
        return self.config.designs + (self._first_order_weight(n_train) != 0.0)

    def _phase_parts(self, train: Examples, queries: Examples) -> tuple[int, int, int]:
        """Independent parts of a sharded run's training, measuring and recovery phases."""
        self._resolve_settings(train)
        designs, n_queries = self.config.designs, len(queries)
        return (self.training_parts(len(train)), designs * len(self._measure_blocks(n_queries)),
                designs * len(query_blocks(n_queries)))  # fmt: skip

    def n_parts(self, train: Examples, queries: Examples) -> int:
        second = self.second.n_parts(train, queries) if self.second is not None else 0
        return max(*self._phase_parts(train, queries), second)

    def parts_description(self, train: Examples, queries: Examples) -> str:
        training, measuring, recovering = self._phase_parts(train, queries)
        first_order = " and the first-order features" if training > self.config.designs else ""
        second = f"; the second bank: {self.second.parts_description(train, queries)}" if self.second else ""
        return (f"{self.config.designs} design(s){first_order} to train, {measuring} (design, query block) "
                f"pair(s) to measure, {recovering} to recover{second}")  # fmt: skip

    def shard_phases(self, train: Examples, queries: Examples, shard: Shard) -> list[Callable[[], None]]:
        """This process's share of a sharded run (`stride.distributed`), as steps that every process
        finishes before any starts the next: train the designs it owns (design d on rank d mod world
        size; the first-order features are part `designs`), measure its (design, query block) pairs
        (round robin over the ranks), store whole the responses of the designs it owns (rank 0 also
        the cross-validated penalty), recover its (design, query block) pairs. Every result lands
        in the run folder, where rank 0's single-process path then finds it. The second bank's
        steps run within the same phases, after the first bank's."""
        phases: list[Callable[[], None]] = [
            partial(self._train_shard, train, queries, shard), partial(self._measure_shard, train, queries, shard),
            partial(self._assemble_shard, queries, shard), partial(self._recover_shard, queries, shard),
        ]  # fmt: skip
        if self.second is None:
            return phases
        second = self.second.shard_phases(train, queries, shard)
        return [partial(_in_turn, first, then) for first, then in zip(phases, second, strict=True)]

    def _train_shard(self, train: Examples, queries: Examples, shard: Shard) -> None:
        self._resolve_settings(train)
        self.train_digest_ = train.digest
        for design in range(self.config.designs):
            if shard.owns(design):
                self._prepare_design(train, design)
        if self._first_order_weight(len(train)) != 0.0 and shard.owns(self.config.designs):
            self._prepare_first_order(train)
            self._first_order_query_features(queries)

    def _measure_shard(self, train: Examples, queries: Examples, shard: Shard) -> None:
        self.designs_ = [self._prepare_design(train, design) for design in range(self.config.designs)]  # all trained
        stages = [self._response_stage(design, queries) for design in self.designs_]
        for design, stage, start, stop in self._owned_blocks(stages, self._measure_blocks(len(queries)), shard):
            self.store.run(block_stage(stage, start, stop), partial(self._measure, design, queries, start, stop))

    def _assemble_shard(self, queries: Examples, shard: Shard) -> None:
        for index, design in enumerate(self.designs_):
            if shard.owns(index):
                self._design_responses(design, queries)
        if shard.leader:
            self._shard_penalty(queries)

    def _recover_shard(self, queries: Examples, shard: Shard) -> None:
        penalty = self._shard_penalty(queries)
        stages = [self._recovery_stage(design, queries, None if index == 0 else penalty)
                  for index, design in enumerate(self.designs_)]  # fmt: skip
        standardized: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        for design, stage, start, stop in self._owned_blocks(stages, query_blocks(len(queries)), shard):
            if design.name not in standardized:
                standardized[design.name] = standardize(self._design_responses(design, queries)[0].double().numpy())
            solve = partial(self._recover_block, design, *standardized[design.name], penalty, start, stop)
            self.store.run(block_stage(stage, start, stop), solve)

    def _owned_blocks(self, stages: list[Stage], blocks: list[tuple[int, int]],
                      shard: Shard) -> list[tuple[Design, Stage, int, int]]:  # fmt: skip
        """This process's (design, query block) pairs of a phase whose designs' stages are `stages`:
        round robin over the ranks, leaving out the designs whose whole stage is finished."""
        pairs = [(design, stage, start, stop) for design, stage in zip(self.designs_, stages, strict=True)
                 if not self.store.finished(stage) for start, stop in blocks]  # fmt: skip
        return [pair for index, pair in enumerate(pairs) if shard.owns(index)]

    def _shard_penalty(self, queries: Examples) -> float:
        """The penalty of every design's Lasso in a sharded run: the fixed one, the one design 0's
        finished recovery recorded, or its cross-validated one, stored by the first process to ask
        (rank 0, before the recovery phase)."""
        design = self.designs_[0]
        stage = self._recovery_stage(design, queries, None)
        if stage.arguments.penalty is not None:
            return stage.arguments.penalty
        finished = self.store.load(stage)
        if finished is not None:
            return finished.info["lambda"]
        responses, _ = self._design_responses(design, queries)
        return self._cross_validated_penalty(design, stage, standardize(responses.double().numpy())[0], keep=True)

    def _partial(self, stage: Stage, compute: Callable[[], StageOutput], keep: bool) -> Tensors:
        """A partial result (a query block's, the penalty): computed and stored when `keep`; else
        loaded when a sharded run stored it, or computed and not stored."""
        if keep:
            return self.store.run(stage, compute).tensors
        finished = self.store.load(stage)
        return finished.tensors if finished is not None else compute()[0]

    def _prepare_first_order(self, train: Examples) -> None:
        stage = Stage("first_order_train", self._first_order_args(), self._inputs())
        stored, _ = self._stage(stage, lambda: self._first_order_features(train, query=False))
        self.first_order_train_ = stored["features"]

    def _prepare_design(self, train: Examples, design: int) -> Design:
        config, seed = self.config, self.design_seed(design)
        name, suffix = f"design{design}", f"_design{design}" if design else ""
        membership = MembershipArguments(len(train), config.n_subsets, config.subsets_per_example, seed)

        def draw() -> StageOutput:
            table = example_subsets(len(train), config.n_subsets, config.subsets_per_example, seed)
            sizes = subset_sizes(table, config.n_subsets)
            info = {"min_size": int(sizes.min()), "max_size": int(sizes.max())}
            return {"example_subsets": torch.as_tensor(table)}, info

        tensors, _ = self._stage(Stage("membership" + suffix, membership, {}), draw)
        table = tensors["example_subsets"].numpy()
        output = {"output_rank": config.output_rank if config.form in (SHARED_LOGIT, HASHED_LOGIT) else None,
                  "output_init": config.output_init if config.form == SHARED_LOGIT else None,
                  "training_expansion": None if config.training_expansion == "exact" else config.training_expansion,
                  }  # fmt: skip
        operator_args = from_config(OperatorArguments, config, seed=seed, layer=self.layer, task=self.task.settings(),
                                    **output)  # fmt: skip
        operators = Stage("operators" + suffix, operator_args, self._inputs())
        bank = self._new_bank(train, seed)

        def fit() -> StageOutput:
            torch.manual_seed(seed)
            trainer = OperatorTrainer(self.steered_, bank, train, table, config, seed)
            with deterministic_algorithms():
                log = trainer.train(checkpoint=self.store.checkpoint(operators), progress=self.progress,
                                    on_step=self._on_step)  # fmt: skip
            return dict(bank.state_dict()), {
                "steps": log.steps, "resumed_from_step": log.resumed_from_step,
                "epoch_fidelity": log.epoch_fidelity, "epoch_stability": log.epoch_stability,
                "epoch_linearity": log.epoch_linearity, "parameters_per_operator": bank.operator_parameters(),
            }  # fmt: skip

        tensors, _ = self._stage(operators, fit)
        bank.load_state_dict(tensors)
        self.banks_[name] = bank
        return Design(name, suffix, seed, table, operator_args)

    _on_step = None  # tests and callers may set a callable(step) to observe (or interrupt) training

    def _prepared(self) -> list[Design]:
        if not self.designs_:
            raise RuntimeError("call prepare() before scoring")
        return self.designs_

    def _response_args(self, design: Design) -> ResponseArguments:
        expansion = self.config.measure_expansion
        operators = {field.name: getattr(design.operator_args, field.name) for field in fields(OperatorArguments)}
        return ResponseArguments(**operators, measure_expansion=None if expansion == "exact" else expansion)

    def _measure_blocks(self, n_queries: int) -> list[tuple[int, int]]:
        config = self.config
        per_pass = pass_queries(config.measure_expansion, n_queries, config.n_subsets, config.measure_rows)
        return query_blocks(n_queries, per_pass)

    def _response_stage(self, design: Design, queries: Examples) -> Stage:
        return Stage("responses" + design.suffix, self._response_args(design),
                     self._inputs(**{QUERY_INPUT: queries.digest}))  # fmt: skip

    def _design_responses(self, design: Design, queries: Examples) -> tuple[torch.Tensor, torch.Tensor]:
        stage = self._response_stage(design, queries)
        tensors, _ = self._stage(stage, partial(self._assembled_responses, design, queries, stage))
        return tensors["responses"], tensors["base_losses"]

    def _assembled_responses(self, design: Design, queries: Examples, stage: Stage) -> StageOutput:
        """Every query's responses: the query blocks a sharded run stored, the others measured here
        (each run of consecutive missing blocks in one go)."""
        blocks = [(start, stop, self.store.load(block_stage(stage, start, stop)))
                  for start, stop in self._measure_blocks(len(queries))]  # fmt: skip
        parts = []
        for missing, group in itertools.groupby(blocks, key=lambda block: block[2] is None):
            run = list(group)
            if missing:
                parts.append(self._measure(design, queries, run[0][0], run[-1][1])[0])
            else:
                parts.extend(stored.tensors for _, _, stored in run)  # type: ignore[union-attr]  # not None here
        measured = {name: torch.cat([part[name] for part in parts]) for name in ("responses", "base_losses")}
        return measured, {"n_queries": len(queries)}

    def _measure(self, design: Design, queries: Examples, start: int, stop: int) -> StageOutput:
        """The responses of queries start..stop to the design's operators, and their base measurements."""
        bank, config = self.banks_[design.name], self.config
        responses, base = measured_responses(self.steered_, bank, QueryRange(queries, start, stop),
                                             config.measure_expansion, config.measure_rows, self.progress)  # fmt: skip
        if not torch.isfinite(responses).all() or not torch.isfinite(base).all():
            raise StrideError("non-finite (NaN/inf) query losses: check the model and the queries")
        return {"responses": responses, "base_losses": base}, {"n_queries": stop - start}

    def responses(self, queries: Examples) -> tuple[torch.Tensor, torch.Tensor]:
        """Measurement drops [n_queries, designs x K] under each operator (design by design) and the
        base measurements [n_queries]."""
        measured = [self._design_responses(design, queries) for design in self._prepared()]
        return torch.cat([responses for responses, _ in measured], dim=1), measured[0][1]

    def _recovery_stage(self, design: Design, queries: Examples, penalty: float | None) -> Stage:
        """A design's recovery stage; `penalty`: the one reused from design 0 (None: chosen by
        cross-validation on this design; the fixed rule's replaces either)."""
        config = self.config
        if config.lambda_rule == "fixed":
            penalty = config.lasso_lambda
        cross_validated = penalty is None
        solver = resolve_solver(config.lasso_solver, len(design.table))
        arguments = RecoveryArguments(
            self._response_args(design), config.lambda_rule, penalty, config.cv_queries if cross_validated else None,
            CV_LAMBDAS if cross_validated else None, CV_SPAN if cross_validated else None, SOLVERS[solver],
        )  # fmt: skip
        return Stage("recovery" + design.suffix, arguments, self._inputs(**{QUERY_INPUT: queries.digest}))

    def _design_scores(self, design: Design, queries: Examples,
                       penalty: float | None) -> tuple[SparseRows, float, torch.Tensor]:  # fmt: skip
        """One design's Lasso scores (sparse), its penalty (None: chosen by the lambda rule, else
        reused) and the responses they were recovered from."""
        responses, _ = self._design_responses(design, queries)
        stage = self._recovery_stage(design, queries, penalty)
        tensors, info = self._stage(stage, partial(self._recover, design, stage, responses))
        return SparseRows.from_tensors(tensors), info["lambda"], responses

    def _recover(self, design: Design, stage: Stage, responses: torch.Tensor) -> StageOutput:
        """A design's Lasso scores, in blocks of QUERY_BLOCK queries (those a sharded run stored are
        loaded). scikit-learn's solver fits every query alone, so its blocks change nothing; the
        batched solver fits a block's queries together, in lockstep, and a query's solution moves
        with the others within the solver's tolerance: so one process solves the same fixed blocks
        as a sharded run, and the two agree bit for bit."""
        standardized, scales = standardize(responses.double().numpy())
        penalty = stage.arguments.penalty
        if penalty is None:
            penalty = self._cross_validated_penalty(design, stage, standardized, keep=False)
        blocks = [self._partial(block_stage(stage, start, stop),
                                partial(self._recover_block, design, standardized, scales, penalty, start, stop),
                                keep=False)
                  for start, stop in query_blocks(len(standardized))]  # fmt: skip
        scores = SparseRows.stack([SparseRows.from_tensors(block) for block in blocks])
        info = {"lambda": penalty, "nonzero_fraction": scores.nnz / max(scores.shape[0] * scores.shape[1], 1)}
        return scores.tensors(), info

    def _recover_block(self, design: Design, standardized: np.ndarray, scales: np.ndarray, penalty: float,
                       start: int, stop: int) -> StageOutput:  # fmt: skip
        """The Lasso scores of queries start..stop (`recover.lasso_scores`)."""
        solver = resolve_solver(self.config.lasso_solver, len(design.table))
        scores = lasso_scores(design.table, self.config.n_subsets, standardized[start:stop], scales[start:stop],
                              penalty, solver)  # fmt: skip
        return scores.tensors(), {}

    def _cross_validated_penalty(self, design: Design, stage: Stage, standardized: np.ndarray, keep: bool) -> float:
        """The penalty chosen by cross-validation on design 0's standardized responses (`stage`: its
        recovery stage), as the partial stage "penalty" (see `_partial`)."""
        config = self.config
        solver = resolve_solver(config.lasso_solver, len(design.table))

        def choose() -> StageOutput:
            chosen = cross_validated_lambda(design.table, config.n_subsets, standardized, config.cv_queries,
                                            design.seed, solver)  # fmt: skip
            return {"penalty": torch.tensor(chosen, dtype=torch.float64)}, {"lambda": chosen}

        return float(self._partial(replace(stage, name="penalty"), choose, keep)["penalty"])

    def _first_order_weight(self, n_train: int) -> float | None:
        """The configured mixing weight; None: to be cross-fitted ("auto" with several designs, while
        the training side's first-order features fit in FIRST_ORDER_MEMORY; above it "auto" is 0)."""
        weight = self.config.first_order_weight
        if weight != "auto":
            return float(weight)
        if self.config.designs < 2:
            return 0.0
        size = 4 * n_train * self.config.first_order_dim
        if size > FIRST_ORDER_MEMORY:
            if not self._warned_first_order:
                self._warned_first_order = True
                warnings.warn(f"the first-order mix is off: its features of {n_train} training examples would take "
                              f"{size / 2**30:.1f} GiB (first_order_dim {self.config.first_order_dim}); set "
                              "first_order_weight, or a smaller first_order_dim, to use it", stacklevel=2)  # fmt: skip
            return 0.0
        return None

    def _first_order_features(self, data: Examples, query: bool) -> StageOutput:
        config = self.config
        family, output_rank, proj_dim = first_order_family(config.form, config.output_rank, FIRST_ORDER_RANK,
                                                           config.first_order_dim)  # fmt: skip
        features = restricted_gradients(self.steered_, data, family, FIRST_ORDER_RANK, self.seed, config.batch_size,
                                        query=query, proj_dim=proj_dim, output_rank=output_rank)  # fmt: skip
        return {"features": features}, {}

    def _first_order_args(self) -> FirstOrderArguments:
        config = self.config
        family, output_rank, _ = first_order_family(config.form, config.output_rank, FIRST_ORDER_RANK,
                                                    config.first_order_dim)  # fmt: skip
        return from_config(FirstOrderArguments, config, layer=self.layer, task=self.task.settings(),
                           rank=FIRST_ORDER_RANK, seed=self.seed, family=None if family == LOGIT else family,
                           family_output_rank=output_rank or None)  # fmt: skip

    def _first_order_query_features(self, queries: Examples) -> torch.Tensor:
        """The queries' first-order features; <g(query), g(example)> with the training-side features
        made in prepare() are the first-order scores."""
        if self.first_order_train_ is None:  # made in prepare() whenever the first-order scores are used
            raise RuntimeError("call prepare() before score()")
        stage = Stage("first_order_queries", self._first_order_args(), self._inputs(**{QUERY_INPUT: queries.digest}))
        stored, _ = self._stage(stage, lambda: self._first_order_features(queries, query=True))
        return stored["features"]

    def score(self, queries: Examples) -> torch.Tensor:
        """Lasso-recovered influence of every training example on every query, averaged over the
        designs (the penalty chosen on the first design serves them all), then mixed with the
        first-order scores when `first_order_weight` asks for it (`stride.method.hybrid`). With two
        or more designs, `scores_se_` holds each score's standard error from their spread."""
        mixture = self._mixture(queries, rows_per_chunk=len(queries))
        scores, self.scores_se_ = mixture.rows_and_errors(0, len(queries))
        return scores.float()

    def score_top(self, queries: Examples, k: int) -> TopScores:
        """The k most and least influential examples per query and the designs' averaged (sparse)
        Lasso scores, computed a chunk of queries at a time: no dense [n_queries, n_train] matrix."""
        n_train = len(self._prepared()[0].table)
        mixture = self._mixture(queries, rows_per_chunk=chunk_rows(n_train))
        return top_scores(mixture.rows, len(queries), n_train, k, sparse=mixture.lasso.to(torch.float32))

    def _mixture(self, queries: Examples, rows_per_chunk: int) -> Mixture:
        """The final scores of `queries` as a recipe (the sparse Lasso average, and the first-order part
        and its weight when used), the weight cross-fitted a chunk of queries at a time when asked."""
        penalty = None
        recovered, responses = [], []
        for design in self._prepared():
            scores, penalty, measured = self._design_scores(design, queries, penalty)
            recovered.append(scores)
            responses.append(measured.double().numpy())
        self.lambda_ = penalty
        mixture = Mixture(SparseRows.mean(recovered), designs=recovered)
        if self.second is not None:  # row chunk by row chunk too: no dense matrix for top-k runs
            mixture.second = self.second._mixture(queries, rows_per_chunk)
            mixture.second_weight = self.config.second_weight
            self._record("second", self.second)
        weight = self._first_order_weight(mixture.lasso.shape[1])
        if weight != 0.0:
            mixture.query_features = self._first_order_query_features(queries)
            mixture.train_features = self.first_order_train_
            criteria: dict[float, float] = {}
            if weight is None:
                weight, criteria = self._cross_fitted_weight(recovered, responses, mixture, rows_per_chunk)
            self.stage_info["hybrid"] = {"first_order_weight": weight, "criteria": criteria}
            mixture.weight = weight
        if self.partner is not None:
            mixture.partner = self.partner.score(queries)
            mixture.partner_weight = self.config.partner_weight
            self._record("partner", self.partner)
        return mixture

    def _cross_fitted_weight(self, recovered: list[SparseRows], responses: list[np.ndarray], mixture: Mixture,
                             rows_per_chunk: int) -> tuple[float, dict[float, float]]:  # fmt: skip
        """`hybrid.cross_fitted_weight` over chunks of queries (its criteria are means over queries)."""
        memberships = [membership_matrix(design.table, self.config.n_subsets) for design in self.designs_]
        n_queries = len(responses[0])
        parts = []
        for start in range(0, n_queries, rows_per_chunk):
            stop = min(start + rows_per_chunk, n_queries)
            chunk = [scores.dense(start, stop).double().numpy() for scores in recovered]
            _, criteria = cross_fitted_weight(chunk, [measured[start:stop] for measured in responses], memberships,
                                              mixture.first_order(start, stop))  # fmt: skip
            parts.append((stop - start, criteria))
        if len(parts) == 1:
            criteria = parts[0][1]
        else:
            criteria = {weight: sum(size * part[weight] for size, part in parts) / n_queries for weight in parts[0][1]}
        return max(criteria, key=criteria.__getitem__), criteria


def _in_turn(first: Callable[[], None], then: Callable[[], None]) -> None:
    first()
    then()


def create(context: MethodContext) -> StrideAttributor:
    """STRIDE, with its second bank (`config.second_layer`) and its partner method (`config.partner`,
    set up from `context.settings`) when it has them."""
    return StrideAttributor(
        context.model, context.stride_config, seed=context.seed, store=context.store,
        model_digest=context.model_digest, progress=context.progress, task=context.task,
        partner=create_partner(context), second=create_second_bank(context),
    )  # fmt: skip


def create_second_bank(context: MethodContext) -> StrideAttributor | None:
    """STRIDE's second operator bank (None without `second_layer`, or with `second_layer: auto` on a
    model without a second place): the run's settings in the residual form at `second_layer` (for
    "auto", the task's `second_place`), without a partner, on designs whose seeds continue the first
    bank's. It keeps its stages in its own run store inside the run's stages folder."""
    config = context.stride_config
    place = context.task.second_place(context.model) if config.second_layer == AUTO_PLACE else config.second_layer
    if place is None:
        return None
    second = replace(config, form=RESIDUAL, layer=place, second_layer=None, partner=None,
                     measure_expansion="exact", training_expansion="exact")  # fmt: skip
    store = RunStore(context.store.root / STAGES / "second_bank") if context.store is not None else None
    try:
        return StrideAttributor(context.model, second, seed=context.seed + DESIGN_SEED_STRIDE * config.designs,
                                store=store, model_digest=context.model_digest, progress=context.progress,
                                task=context.task)  # fmt: skip
    except StrideError as exc:  # the steered place does not exist: say which setting named it
        raise StrideError(f"second_layer {config.second_layer!r}: {exc}") from None


def create_partner(context: MethodContext) -> Attributor | None:
    """The attributor of STRIDE's partner method (None without one). It keeps its stages in its own
    run store inside the run's stages folder, so that its stage names never meet STRIDE's."""
    name = context.stride_config.partner
    if name is None:
        return None
    if name in NOT_PARTNERS or name not in available_methods():
        known = [m for m in available_methods() if m not in NOT_PARTNERS]
        raise StrideError(f"partner must be one of {known}, got {name!r}")
    parameter = next(context.model.parameters(), None)
    if parameter is not None and (parameter.device.type != "cpu" or parameter.dtype != torch.float32):
        raise StrideError(f"partner {name!r} runs on the CPU in float32, so STRIDE with a partner does too; "
                          f"the model is on {parameter.device} in {parameter.dtype}")  # fmt: skip
    store = RunStore(context.store.root / STAGES / f"partner_{name}") if context.store is not None else None
    return create_attributor(name, replace(context, store=store))
