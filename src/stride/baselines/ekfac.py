"""EK-FAC influence functions (Grosse et al. 2023) through the `kronfluence` library.

score[q, i] = grad L_q^T (G + damping I)^-1 grad L_i, with G the eigenvalue-corrected
Kronecker-factored Gauss-Newton of the tracked linear layers, fitted on the training set.
Kronfluence's pairwise scores already mean "positive = training on i lowers the query's loss"
(the stride convention): its measurement here is the task's per-example measurement (for a causal
LM the mean cross-entropy over scored tokens) and its training loss the sum of the task's
per-example losses.

Adaptations to Hugging Face causal LMs: kronfluence tracks `nn.Linear` (and `nn.Conv2d`), so GPT-2's
`Conv1D` layers are replaced on a copy of the model by equivalent `nn.Linear` layers (same
outputs, weight transposed); the padding mask is handed to kronfluence as an integer tensor, which
it requires. By default ("auto") every linear layer is tracked, the output head included, as
kronfluence's authors run it; a head whose gradient covariance (vocab x vocab) would exceed
models.HEAD_FACTOR_BYTES is left out, with a warning, and only the decoder blocks are tracked then.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import shutil
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import Dataset

from stride.attributor import MethodContext
from stride.baselines.common import BaselineAttributor, check_choice, check_positive, parse_settings, require_library
from stride.errors import StrideError
from stride.models import decoder_blocks, tracked_module_set
from stride.store import Tensors
from stride.tasks import Examples, batch_fields

STRATEGIES = ("ekfac", "kfac", "diagonal", "identity")
FACTORS = "factors"  # kronfluence's name of the fitted factors
MODULE_SETS = ("auto", "all", "blocks")
KRONFLUENCE_INSTALL = (
    "pip install --no-deps kronfluence==1.0.1 and pip install einops einconv opt-einsum "
    "accelerate (a plain install of kronfluence pulls a CUDA build of torch)"
)


@dataclass
class EkfacSettings:
    """Settings of `ekfac`.

    Attributes:
        strategy: kronfluence's curvature approximation ("ekfac" is the method's own).
        damping_factor: damping of the inverse; kronfluence's default 1e-8. None lets kronfluence
            use its heuristic of 0.1 x the mean eigenvalue.
        use_empirical_fisher: fit the curvature with the data's own next tokens instead of tokens
            sampled from the model (kronfluence's default is the true Fisher, sampled).
        modules: "all" (every linear and 2-d convolution layer, the output head included), "blocks"
            (the linear layers inside the decoder blocks of a causal LM) or "auto" ("all" unless the
            head's vocab x vocab covariance exceeds 1 GiB, i.e. a vocabulary over 16,384: "blocks").
            (kronfluence's own runs that scored 0.06-0.09 LDS above the blocks-only default tracked all.)
        batch_size: examples per batch when fitting factors and computing scores.
    """

    strategy: str = "ekfac"
    damping_factor: float | None = 1e-8
    use_empirical_fisher: bool = False
    modules: str = "auto"
    batch_size: int = 16

    def validate(self) -> None:
        check_choice(self, "strategy", STRATEGIES)
        check_choice(self, "modules", MODULE_SETS)
        check_positive(self, "batch_size")
        damping = self.damping_factor
        if damping is not None and (not isinstance(damping, (int, float)) or damping < 0):
            raise StrideError(f"damping_factor must be None or a non-negative number, got {self.damping_factor!r}")


def linear_copy(model: nn.Module) -> nn.Module:
    """A copy of `model` whose transformers `Conv1D` layers (y = x W + b, W: in x out) are nn.Linear."""
    model = copy.deepcopy(model)
    for parent in list(model.modules()):
        for child_name, child in list(parent.named_children()):
            if type(child).__name__ == "Conv1D" and hasattr(child, "nf"):
                conv: Any = child  # transformers' Conv1D: its weight and bias are not typed in nn.Module's stubs
                n_in, n_out = conv.weight.shape
                linear = nn.Linear(n_in, n_out, bias=conv.bias is not None, dtype=conv.weight.dtype)
                with torch.no_grad():
                    linear.weight.copy_(conv.weight.T)
                    if conv.bias is not None:
                        linear.bias.copy_(conv.bias)
                linear.requires_grad_(False)
                setattr(parent, child_name, linear)
    return model


def _task_class() -> type:
    from kronfluence.task import Task

    class KronfluenceTask(Task):
        """The stride task's per-example losses (summed) and measurement, as kronfluence asks for them."""

        def __init__(self, task, modules: list[str] | None, seed: int):
            super().__init__()
            self.task = task
            self.modules = modules
            self.generator = torch.Generator().manual_seed(seed)

        def compute_train_loss(self, batch: Any, model: nn.Module, sample: bool = False) -> torch.Tensor:
            rows = self.task.batch_type(**batch)
            logits = self.task.outputs(model, rows)
            if sample:  # targets drawn from the model: the true Fisher
                rows = self.task.sample_targets(logits, rows, self.generator)
            return self.task.losses(logits, rows).sum()

        def compute_measurement(self, batch: Any, model: nn.Module) -> torch.Tensor:
            rows = self.task.batch_type(**batch)
            return self.task.measurement(self.task.outputs(model, rows), rows).sum()

        def get_influence_tracked_modules(self) -> list[str] | None:
            return self.modules

        def get_attention_mask(self, batch: Any) -> torch.Tensor | None:
            return self.task.attention_mask(self.task.batch_type(**batch))

    return KronfluenceTask


class _Examples(Dataset):
    """(set tag, index) pairs: kronfluence uses one collate function for queries and training examples."""

    def __init__(self, data: Examples, tag: str):
        self.data = data
        self.tag = tag

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, index: int) -> tuple[str, int]:
        return self.tag, index


class _Collate:
    """Pads a batch of (tag, index) pairs of one set into kronfluence's batch dict."""

    def __init__(self, *sets: _Examples):
        self.sets = {examples.tag: examples.data for examples in sets}

    def __call__(self, items: list[tuple[str, int]]) -> dict[str, torch.Tensor]:
        tags = {tag for tag, _ in items}
        if len(tags) != 1:
            raise RuntimeError("a kronfluence batch mixed queries and training examples")
        return batch_fields(self.sets[tags.pop()].batch([index for _, index in items]))


def _tracked_names(model: nn.Module, which: str, method: str) -> list[str] | None:
    """kronfluence's tracked modules: None for all of them, else the decoder blocks' linear layers."""
    if tracked_module_set(model, which, method) == "all":
        return None
    inside = {id(m) for m in decoder_blocks(model).modules()}
    names = [name for name, m in model.named_modules() if isinstance(m, nn.Linear) and id(m) in inside]
    if not names:
        raise StrideError("the decoder blocks hold no linear layers for EK-FAC to track")
    return names


class EkfacAttributor(BaselineAttributor):
    """EK-FAC factors are one stage (kronfluence's own files kept in its folder); scores another."""

    name = "ekfac"

    def __init__(self, context: MethodContext, settings: EkfacSettings):
        super().__init__(context, settings)
        self.analyzer_: Any = None
        self.factors_folder_: Path | None = None
        self.train_: _Examples | None = None

    def _analyzer(self) -> Any:
        """A kronfluence Analyzer whose factors and scores live in the factors stage's folder."""
        from kronfluence.analyzer import Analyzer, prepare_model

        if self.analyzer_ is None:
            model = linear_copy(self.context.model)
            model.eval()
            task = _task_class()(self.context.task, _tracked_names(model, self.config.modules, self.name), self.seed)
            with self._quiet(), _library_warnings_off():
                model = prepare_model(model, task)
                self.analyzer_ = Analyzer(analysis_name="ekfac", model=model, task=task, cpu=True,
                                          disable_tqdm=not self.context.progress, output_dir=str(self.factors_folder_),
                                          log_level=logging.ERROR)  # fmt: skip
        return self.analyzer_

    def _prepare(self, train: Examples) -> None:
        self.train_ = _Examples(train, "train")
        stage = self._new_stage("ekfac_factors")
        self.factors_folder_ = self.store.folder(stage)
        self._stage(stage, self._fit_factors)

    def _fit_factors(self) -> tuple[Tensors, dict[str, Any]]:
        from kronfluence.arguments import FactorArguments
        from kronfluence.utils.dataset import DataLoaderKwargs

        assert self.train_ is not None  # set by _prepare, which runs this stage
        config = self.config
        analyzer = self._analyzer()
        with self._quiet(), _library_warnings_off():
            analyzer.set_dataloader_kwargs(DataLoaderKwargs(collate_fn=_Collate(self.train_)))
            torch.manual_seed(self.seed)
            analyzer.fit_all_factors(
                factors_name=FACTORS, dataset=self.train_, per_device_batch_size=config.batch_size,
                factor_args=FactorArguments(strategy=config.strategy, use_empirical_fisher=config.use_empirical_fisher),
                overwrite_output_dir=True,
            )  # fmt: skip
        return {}, {}

    def _scores(self, queries: Examples) -> torch.Tensor:
        from kronfluence.arguments import ScoreArguments
        from kronfluence.utils.dataset import DataLoaderKwargs

        if self.train_ is None:
            raise RuntimeError("call prepare() before score()")
        analyzer = self._analyzer()
        name = f"scores_{queries.digest[:16]}"
        query_set = _Examples(queries, "queries")
        with self._quiet(), _library_warnings_off():
            analyzer.set_dataloader_kwargs(DataLoaderKwargs(collate_fn=_Collate(query_set, self.train_)))
            analyzer.compute_pairwise_scores(
                scores_name=name, factors_name=FACTORS, query_dataset=query_set,
                train_dataset=self.train_, per_device_query_batch_size=self.config.batch_size,
                per_device_train_batch_size=self.config.batch_size,
                score_args=ScoreArguments(damping_factor=self.config.damping_factor), overwrite_output_dir=True,
            )  # fmt: skip
            scores = analyzer.load_pairwise_scores(name)["all_modules"]
        # the run store keeps the scores; kronfluence's copy would only travel with the factors stage
        shutil.rmtree(analyzer.scores_output_dir(name), ignore_errors=True)
        return scores.float().contiguous()


@contextlib.contextmanager
def _library_warnings_off() -> Iterator[None]:
    """kronfluence 1.0.1 builds a torch.cuda.amp.GradScaler (deprecated) even on CPU, warning every time."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=FutureWarning, message=".*GradScaler")
        yield


def create(context: MethodContext) -> EkfacAttributor:
    require_library("kronfluence", KRONFLUENCE_INSTALL, "ekfac")
    return EkfacAttributor(context, parse_settings(EkfacSettings, context.settings, "ekfac"))
