"""The interface every attribution method implements: prepare on the training set, then score queries."""

from __future__ import annotations

import contextlib
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from stride.config import StrideConfig
from stride.core.topk import TopScores, top_scores
from stride.distributed import Shard
from stride.store import RunStore, Stage, StageOutput, Tensors
from stride.tasks import CausalLMTask, Examples, Task


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


class Attributor(ABC):
    """Scores [n_queries, n_train]; positive = training on the example lowers the query's loss.

    `prepare` runs once per training set; `score` may then run on any number of query sets. Every
    expensive step runs through `_stage`, so it is cached in the run store, resumed after a kill
    and reused by `--reuse-from`. `timings` maps stage names to seconds, `stage_info` holds what
    each stage recorded, and `settings()` records every choice, for info.json.
    """

    name: str = ""

    def __init__(self, store: RunStore | None = None) -> None:
        self.store = store if store is not None else RunStore()
        self.timings: dict[str, float] = {}
        self.stage_info: dict[str, dict[str, Any]] = {}

    @abstractmethod
    def settings(self) -> dict[str, Any]:
        """Every setting that changes the scores."""

    @abstractmethod
    def prepare(self, train: Examples) -> None:
        """Do the per-training-set work (fit operators, factors, projections ...)."""

    @abstractmethod
    def score(self, queries: Examples) -> torch.Tensor:
        """The float32 score matrix [len(queries), n_train] of the prepared training set."""

    def n_parts(self, train: Examples, queries: Examples) -> int:
        """The most independent parts that any phase of a sharded run on these data has, which the
        processes of a torchrun job share out (1: no sharding)."""
        return 1

    def parts_description(self, train: Examples, queries: Examples) -> str:
        """What the independent parts are, for messages."""
        return "it does not shard"

    def shard_phases(self, train: Examples, queries: Examples, shard: Shard) -> list[Callable[[], None]]:
        """This process's share of a sharded run (`stride.distributed`), as steps that every process
        finishes before any starts the next; only methods with n_parts() > 1."""
        raise NotImplementedError(f"{self.name} does not shard over processes")

    def score_top(self, queries: Examples, k: int) -> TopScores:
        """Per query the k most and k least influential examples (`attribute(top_k=k)`). This default
        takes them from `score`; a method whose scores come in parts (STRIDE) overrides it so that no
        dense [n_queries, n_train] matrix is built, and adds its sparse scores."""
        scores = self.score(queries)
        return top_scores(lambda start, stop: scores[start:stop], len(scores), scores.shape[1], k)

    def _stage(self, stage: Stage, compute: Callable[[], StageOutput]) -> tuple[Tensors, dict[str, Any]]:
        """Load a finished stage from the run store or compute (and store) it; records its seconds."""
        result = self.store.run(stage, compute)
        self.timings[stage.name] = result.seconds
        self.stage_info[stage.name] = {**result.info, "reused": result.reused}
        return result.tensors, result.info

    @contextlib.contextmanager
    def _timed(self, name: str) -> Iterator[None]:
        """Add the seconds of a step that is not stored (e.g. building a library object) to `timings`."""
        started = time.perf_counter()
        yield
        self.timings[name] = self.timings.get(name, 0.0) + time.perf_counter() - started
