"""ASTRA (Wang et al. 2025, arXiv 2507.14740): influence functions whose inverse-Hessian-vector
products are refined by stochastic Neumann-series iterations preconditioned with EK-FAC.

score[q, i] = grad L_i^T x_q, where x_q approximately solves (G + damping I) x_q = grad L_q and G
is the Fisher of the training loss over the tracked linear layers (all of them jointly, not one
block per layer as in EK-FAC): G = mean over training examples of g g^T, with g the example's loss
gradient at targets drawn from the model (the true Fisher, as kronfluence fits it) or at the data's
own targets (`use_empirical_fisher`). Starting from x = 0, every iteration draws a batch B of
training examples and takes the step

    x <- x + step_size * P^-1 (grad L_q - (G_B + damping I) x),   G_B = mean over i in B of g_i g_i^T,

with P^-1 = (EK-FAC + damping I)^-1 read from the factors kronfluence fitted (the same stage as
`ekfac`). With step size 1 the first iteration gives EK-FAC's own answer; later ones remove the
error of EK-FAC's layer-by-layer, Kronecker-factored approximation. G_B x takes one exact
per-example gradient per batch example and serves every query at once. The training gradients are
then streamed (exact, never stored), as exact `graddot` does. Sign convention as `ekfac`: positive =
training on i lowers the query's loss.

Where this differs from the paper: its authors form G_B x from Gauss-Newton-vector products over a
mini-batch's tokens; here G_B is built from one sampled per-example gradient per example (the
matrix kronfluence's EK-FAC approximates, and one gradient serves every query), which has rank
|B| and so is noisier: the automatic step comes out small (docs/ablations.md §16).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, cast

import torch
from torch import nn
from torch.func import functional_call, grad, vmap

from stride.attributor import MethodContext
from stride.baselines.common import (
    check_choice,
    check_optional_positive,
    parse_settings,
    queries_per_pass,
    require_library,
)
from stride.baselines.ekfac import FACTORS, KRONFLUENCE_INSTALL, MODULE_SETS, EkfacAttributor, linear_copy
from stride.core.batching import index_batches
from stride.errors import StrideError
from stride.store import QUERY_INPUT
from stride.tasks import Examples, Task

POWER_STEPS = 20  # power iterations that size the automatic step
Vectors = dict[str, torch.Tensor]  # one [rows, out, in (+1 for the bias)] tensor per tracked layer


@dataclass
class AstraSettings:
    """Settings of `astra`.

    Attributes:
        iterations: preconditioned Neumann-series steps; 1 (with step size 1) is EK-FAC itself. 20
            (chosen here, not taken from the paper): 60 gained another 0.013 / 0.009 LDS on the
            benchmark at 1.6x the time, 200 nothing more from scratch (docs/ablations.md §16).
        step_size: the step of each iteration. The iteration converges when step_size x the largest
            eigenvalue of P^-1 (G + damping I) stays below 2; 1 is the plain preconditioned series,
            which diverges here: that eigenvalue was 6-14 with exact whole-set products on a
            3,240-parameter GPT-2 (EK-FAC's blocks miss the correlations between layers) and
            600-2,800 with 64-example batches on the 0.1-0.5M-parameter benchmark models (a batch's
            Fisher has rank 64). None: 1 / that eigenvalue, found by 20 power iterations on the
            first batch.
        damping: the damping added to G (and to EK-FAC in the preconditioner). None: 0.1 x the mean
            EK-FAC eigenvalue over all tracked layers (kronfluence's heuristic, made global). The
            iterations need it: a stochastic G_B has rank |B|, and without damping its noise is
            amplified along EK-FAC's near-zero eigen-directions.
        curvature_batch_size: training examples per iteration's Fisher-vector product (the whole
            training set when larger: then, with the empirical Fisher, each step is exact); 64 chosen
            here, not tuned.
        use_empirical_fisher: G (and the EK-FAC factors) from the data's own targets instead of
            targets drawn from the model.
        modules: the tracked linear layers, as for `ekfac` ("auto", "all" or "blocks").
        batch_size: examples per batch of per-example gradients and of kronfluence's factor fit
            (memory: batch_size x tracked parameters floats).
        query_memory_gib: memory for the queries' solution vectors (four copies of the tracked
            parameters per query). As many queries as fit in it are solved together, and each such
            pass runs all the iterations again (their per-example gradients included): more memory,
            fewer passes. The scores do not depend on it, so the stages do not record it. None: 1 GiB.
    """

    iterations: int = 20
    step_size: float | None = None
    damping: float | None = None
    curvature_batch_size: int = 64
    use_empirical_fisher: bool = False
    modules: str = "auto"
    batch_size: int = 16
    query_memory_gib: float | None = None

    @property
    def strategy(self) -> str:
        """The preconditioner's kronfluence strategy (ekfac.py fits the factors with it)."""
        return "ekfac"

    def validate(self) -> None:
        for name in ("iterations", "curvature_batch_size", "batch_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise StrideError(f"{name} must be a positive integer, got {value!r}")
        check_choice(self, "modules", MODULE_SETS)
        check_optional_positive(self, "step_size", "damping", "query_memory_gib")


@dataclass
class EkfacInverse:
    """(EK-FAC + damping I)^-1 from kronfluence's factors: per layer, v -> Q_S (Q_S^T v Q_A / (Λ + λ)) Q_A^T."""

    gradient_eigenvectors: Vectors
    activation_eigenvectors: Vectors
    eigenvalues: Vectors

    @classmethod
    def from_factors(cls, factors: dict[str, dict[str, torch.Tensor]]) -> EkfacInverse:
        counts = factors["num_lambda_processed"]
        return cls(
            {name: q.float() for name, q in factors["gradient_eigenvectors"].items()},
            {name: q.float() for name, q in factors["activation_eigenvectors"].items()},
            {name: (m.double() / counts[name].double()).float() for name, m in factors["lambda_matrix"].items()},
        )

    def mean_eigenvalue(self) -> float:
        values = torch.cat([v.flatten() for v in self.eigenvalues.values()])
        return float(values.double().mean())

    def apply(self, vectors: Vectors, damping: float, power: int = -1) -> Vectors:
        """(EK-FAC + damping I)^power v for every row of v (power -1: the inverse)."""
        out = {}
        for name, v in vectors.items():
            q_s, q_a = self.gradient_eigenvectors[name], self.activation_eigenvectors[name]
            rotated = q_s.T @ v @ q_a * (self.eigenvalues[name] + damping) ** power
            out[name] = q_s @ rotated @ q_a.T
        return out


class LayerGradients:
    """Exact per-example loss gradients of the tracked linear layers, in kronfluence's layout
    [rows, out, in (+1: the bias as last column)].

    Each tracked layer's own use of its weight is differentiated, also when the weight is tied to
    another (GPT-2's output head and input embedding), as kronfluence sees it."""

    def __init__(self, model: nn.Module, names: list[str], task: Task):
        self.model, self.task = model, task
        self.layers: dict[str, nn.Linear] = {}
        for name in names:
            module = model.get_submodule(name)
            if not isinstance(module, nn.Linear):
                raise StrideError(f"astra tracks linear layers only; {name} is a {type(module).__name__}")
            self.layers[name] = module
        self.params = {name: p.detach() for name, p in model.named_parameters(remove_duplicate=False)}
        self.buffers = dict(model.named_buffers())

    def shapes(self) -> dict[str, tuple[int, int]]:
        return {name: (m.out_features, m.in_features + (m.bias is not None)) for name, m in self.layers.items()}

    def __call__(self, batch: Any, query: bool = False, generator: torch.Generator | None = None) -> Vectors:
        """The batch's per-example gradients: of the query measurement (`query`), or of the training
        loss at the data's targets or, with `generator`, at targets drawn from the model's own
        predictions on the batch (the true Fisher's samples, as kronfluence draws them)."""
        task = self.task
        targets = batch
        if generator is not None:
            with torch.no_grad():
                targets = task.sample_targets(task.outputs(self.model, batch), batch, generator)
        per_row = task.measurement if query else task.losses
        tracked = {f"{name}.{kind}" for name, m in self.layers.items() for kind in ("weight", "bias")
                   if getattr(m, kind) is not None}  # fmt: skip
        frozen = {k: v for k, v in self.params.items() if k not in tracked}
        fields, target_fields = task.fields(batch), task.fields(targets)

        def loss(values: dict[str, torch.Tensor], *both: torch.Tensor) -> torch.Tensor:
            # the model sees the example's own inputs; the loss scores them against the (drawn) targets
            row, target_row = task.row(both[: len(fields)]), task.row(both[len(fields) :])
            args, kwargs = task.call_arguments(row)
            output = functional_call(self.model, ({**frozen, **values}, self.buffers), args, kwargs, tie_weights=False)
            return per_row(task.logits_of(output), target_row)[0]

        values = {k: self.params[k] for k in tracked}
        with task.traceable(self.model):
            grads = vmap(grad(loss), in_dims=(None, *[0] * (2 * len(fields))))(values, *fields, *target_fields)
        out = {}
        for name, m in self.layers.items():
            weight = grads[f"{name}.weight"].float()
            out[name] = weight if m.bias is None else torch.cat([weight, grads[f"{name}.bias"].float()[..., None]], -1)
        return out


def inner(a: Vectors, b: Vectors) -> torch.Tensor:
    """[rows of a, rows of b] inner products summed over layers."""
    return sum((torch.einsum("aij,bij->ab", a[name], b[name]) for name in a), torch.zeros(()))


def curvature_batches(n: int, size: int, iterations: int, generator: torch.Generator) -> Iterator[list[int]]:
    """`iterations` batches of `size` training indices, without replacement within each pass over the data."""
    order: list[int] = []
    for _ in range(iterations):
        if size >= n:
            yield list(range(n))
            continue
        if len(order) < size:
            order = torch.randperm(n, generator=generator).tolist()
        batch, order = order[:size], order[size:]
        yield batch


def fisher_product(x: Vectors, grads: list[Vectors], n: int) -> Vectors:
    """G_B x = mean over the batch's n examples of g (g^T x), from the batch's gradients in chunks."""
    out = {name: torch.zeros_like(t) for name, t in x.items()}
    for g in grads:
        weights = inner(x, g) / n  # [rows of x, examples]
        for name in out:
            out[name] += torch.einsum("qb,bij->qij", weights, g[name])
    return out


def largest_eigenvalue(grads: list[Vectors], n: int, inverse: EkfacInverse, damping: float, seed: int,
                       steps: int = POWER_STEPS) -> float:  # fmt: skip
    """The largest eigenvalue of P^-1 A, A = G_B + damping I: power iteration from a seeded random
    vector, read off as the Rayleigh quotient x^T A x / x^T P x (P^-1 A is symmetric in P's inner
    product, so the quotient never exceeds that eigenvalue)."""
    generator = torch.Generator().manual_seed(seed)
    x = {name: torch.randn((1, *t.shape[1:]), generator=generator) for name, t in grads[0].items()}
    value = 0.0
    for _ in range(steps):
        product = fisher_product(x, grads, n)
        a_x = {name: product[name] + damping * x[name] for name in x}
        value = float(inner(x, a_x)) / float(inner(x, inverse.apply(x, damping, power=1)))
        x = inverse.apply(a_x, damping)
        norm = float(inner(x, x).sqrt())
        x = {name: t / norm for name, t in x.items()}
    return value


def solve(v: Vectors, gradients: LayerGradients, train: Examples, inverse: EkfacInverse, damping: float,
          config: AstraSettings, seed: int) -> tuple[Vectors, float]:  # fmt: skip
    """x ≈ (G + damping I)^-1 v for every row of v: preconditioned stochastic Neumann-series steps
    from 0. Returns x and the step size used (config.step_size, or 1 / the largest eigenvalue of
    P^-1 (G_B + damping I) on the first batch)."""
    generator = torch.Generator().manual_seed(seed)
    sample = None if config.use_empirical_fisher else generator
    step = config.step_size
    x = {name: torch.zeros_like(t) for name, t in v.items()}
    batches = curvature_batches(len(train), config.curvature_batch_size, config.iterations, generator)
    for iteration, batch in enumerate(batches):
        residual = {name: t - damping * x[name] for name, t in v.items()}
        if iteration > 0 or step is None:  # G_B x is zero at x = 0
            grads = [gradients(train.batch([batch[r] for r in rows]), generator=sample)
                     for rows in index_batches(len(batch), config.batch_size)]  # fmt: skip
            if step is None:
                step = 1.0 / largest_eigenvalue(grads, len(batch), inverse, damping, seed)
            product = fisher_product(x, grads, len(batch))
            residual = {name: t - product[name] for name, t in residual.items()}
        update = inverse.apply(residual, damping)
        x = {name: x[name] + step * update[name] for name in x}
    assert step is not None
    return x, step


class AstraAttributor(EkfacAttributor):
    """EK-FAC factors (kronfluence, the `ekfac_factors` stage), then the iterations and the streamed
    training gradients in the scores stage."""

    name = "astra"
    unrecorded_settings = ("query_memory_gib",)

    def __init__(self, context: MethodContext, settings: AstraSettings):
        super().__init__(context, cast(Any, settings))  # ekfac's factor stage reads the fields both share
        self.solver_: dict[str, float] = {}

    def score(self, queries: Examples) -> torch.Tensor:
        """The scores stage, whose info records the damping and step size the solve used."""
        stage = self._new_stage("scores", **{QUERY_INPUT: queries.digest})
        tensors, _ = self._stage(stage, lambda: ({"scores": self._scores(queries)}, self.solver_))
        return tensors["scores"]

    def _scores(self, queries: Examples) -> torch.Tensor:
        if self.train_ is None:
            raise RuntimeError("call prepare() before score()")
        config, train = self.config, self.train_.data
        inverse = EkfacInverse.from_factors(self._analyzer().load_all_factors(FACTORS))
        damping = 0.1 * inverse.mean_eigenvalue() if config.damping is None else float(config.damping)
        model = linear_copy(self.context.model)
        model.eval()
        gradients = LayerGradients(model, list(inverse.eigenvalues), self.context.task)
        per_query = 16 * sum(o * i for o, i in gradients.shapes().values())
        chunk = queries_per_pass(config.query_memory_gib, per_query)
        scores = torch.zeros(len(queries), len(train), dtype=torch.float64)
        for first in range(0, len(queries), chunk):
            rows = list(range(first, min(first + chunk, len(queries))))
            v: Vectors = {}
            for part in index_batches(len(rows), config.batch_size):
                grads = gradients(queries.batch([rows[r] for r in part]), query=True)
                v = {name: torch.cat([v[name], g]) if name in v else g for name, g in grads.items()}
            x, step = solve(v, gradients, train, inverse, damping, config, self.seed)
            self.solver_ = {"damping": damping, "step_size": step}
            for indices in index_batches(len(train), config.batch_size):
                scores[rows[0] : rows[-1] + 1, indices] = inner(x, gradients(train.batch(indices))).double()
        return scores.float()


def create(context: MethodContext) -> AstraAttributor:
    require_library("kronfluence", KRONFLUENCE_INSTALL, "astra")
    return AstraAttributor(context, parse_settings(AstraSettings, context.settings, "astra"))
