"""LoGra (Choe et al. 2024, "What is your data worth to GPT?"): low-rank gradient projection.

For a linear layer y = W x, an example's gradient is sum_t delta_t x_t^T (delta = d loss / d y).
LoGra projects it with a Kronecker-structured matrix, P_out (sum_t delta_t x_t^T) P_in^T =
sum_t (P_out delta_t)(P_in x_t)^T, so only the rank-r projections of the layer's inputs and output
gradients are ever formed (forward hooks and tensor hooks, one batch at a time), never the full
per-example gradient. Per layer l the projected gradients g_l (r_out * r_in numbers) are then
preconditioned with the damped empirical Fisher of the training set in the projected space,
H_l = G_l^T G_l / n + lambda_l I, lambda_l = 0.1 x the mean eigenvalue of G_l^T G_l / n (LogIX's
"raw" Hessian and its default damping), and
    score[q, i] = sum_l g_l(q)^T H_l^-1 g_l(i).
Positive means "upweighting i lowers the query's loss" (an influence function with the
minus signs of upweighting and of the loss change cancelling): the stride convention.

The projections are, by default, LoGra's "pca" initialisation as its authors run it: per layer,
the top-`rank` eigenvectors of the K-FAC factors A = E[x x^T] (inputs) and S = E[delta delta^T]
(output gradients), fitted on the training set (a stage). The preconditioner is then the EK-FAC
eigenvalue correction in that basis: each projected coordinate is divided by its mean square over
the training set plus lambda_l (`hessian: ekfac`); `hessian: raw` keeps the full projected Fisher
above. `initialization: random` draws seeded Gaussian projections instead. A side whose dimension
is at most `rank` is not projected at all (exact). GPT-2's `Conv1D` and `nn.Linear` are both
tracked, every one by default, the output head included (`modules: auto` leaves the head out
above a 16,384-token vocabulary, whose S would be vocab x vocab).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, cast

import torch
from torch import nn

from stride.attributor import MethodContext
from stride.baselines.common import check_choice, check_positive, parse_settings
from stride.baselines.inner_product import FEATURES, InnerProductAttributor, Part
from stride.core.batching import index_batches
from stride.data import Batch
from stride.errors import StrideError
from stride.losses import sequence_losses
from stride.models import decoder_blocks, tracked_module_set
from stride.store import Tensors
from stride.tasks import Examples

MODULE_SETS = ("auto", "all", "blocks")
INITIALIZATIONS = ("pca", "random")
HESSIANS = ("ekfac", "raw")


@dataclass
class LograSettings:
    """Settings of `logra`.

    Attributes:
        rank: projection rank per side (input and output gradient); the paper's default is 64,
            so a layer's projected gradient has up to 64 x 64 = 4096 numbers.
        damping_ratio: lambda_l = damping_ratio x the mean (corrected) eigenvalue of layer l.
        modules: "all" (every linear layer, the output head included), "blocks" (those inside the
            decoder blocks) or "auto" ("all" unless the head's factor would exceed 1 GiB).
        initialization: "pca" (top eigenvectors of the K-FAC factors) or "random" (Gaussian).
        hessian: "ekfac" (eigenvalue-corrected diagonal in the projected basis) or "raw" (the full
            projected empirical Fisher, inverted through an SVD).
        batch_size: examples per forward/backward pass.
    """

    rank: int = 64
    damping_ratio: float = 0.1
    modules: str = "auto"
    initialization: str = "pca"
    hessian: str = "ekfac"
    batch_size: int = 16

    def validate(self) -> None:
        check_positive(self, "rank", "damping_ratio", "batch_size")
        check_choice(self, "modules", MODULE_SETS)
        check_choice(self, "initialization", INITIALIZATIONS)
        check_choice(self, "hessian", HESSIANS)
        if self.hessian == "ekfac" and self.initialization != "pca":
            raise StrideError("logra: hessian 'ekfac' (a diagonal in the K-FAC eigenbasis) needs initialization 'pca'; "
                              "use hessian 'raw' with random projections")  # fmt: skip


def layer_dims(module: nn.Module) -> tuple[int, int] | None:
    """(inputs, outputs) of an nn.Linear or a transformers Conv1D (weight: inputs x outputs); else None."""
    if isinstance(module, nn.Linear):
        return module.in_features, module.out_features
    if type(module).__name__ == "Conv1D" and getattr(module, "weight", None) is not None:
        n_in, n_out = cast(torch.Tensor, module.weight).shape  # Conv1D's weight: a parameter, not a module
        return n_in, n_out
    return None


def tracked_layers(model: nn.Module, which: str) -> dict[str, nn.Module]:
    """The linear layers LoGra tracks: all, those of the decoder blocks, or "auto" (all unless the
    output head's vocab x vocab factor would not fit, `models.tracked_module_set`)."""
    which = tracked_module_set(model, which, "logra")
    inside = {id(m) for m in decoder_blocks(model).modules()} if which == "blocks" else None
    layers = {name: m for name, m in model.named_modules()
              if layer_dims(m) is not None and (inside is None or id(m) in inside)}  # fmt: skip
    if not layers:
        raise StrideError("the model has no linear layers for LoGra to track")
    return layers


class KroneckerProjector:
    """P_in (r_in x inputs) and P_out (r_out x outputs) per layer; None means no projection (a side of
    at most `rank` dimensions). Seeded Gaussian matrices, or `from_factors`: principal directions."""

    def __init__(self, layers: dict[str, nn.Module], rank: int, seed: int):
        self.matrices: dict[str, tuple[torch.Tensor | None, torch.Tensor | None]] = {}
        self.shapes: dict[str, tuple[int, int]] = {}  # (r_out, r_in): a layer's projected gradient
        for position, (name, module) in enumerate(layers.items()):
            generator = torch.Generator().manual_seed(seed * 1_000_003 + position)
            n_in, n_out = _dims(module)
            self.matrices[name] = (self._draw(n_in, rank, generator), self._draw(n_out, rank, generator))
            self.shapes[name] = (min(n_out, rank), min(n_in, rank))

    @staticmethod
    def _draw(dim: int, rank: int, generator: torch.Generator) -> torch.Tensor | None:
        if dim <= rank:
            return None
        return torch.randn(rank, dim, generator=generator) / math.sqrt(rank)

    def use_factors(self, factors: dict[str, torch.Tensor], rank: int) -> None:
        """Replace each projected side by the top-`rank` eigenvectors of its K-FAC factor
        (`factors["in:NAME"]`, `factors["out:NAME"]`): LoGra's PCA initialisation."""
        for name, (p_in, p_out) in self.matrices.items():
            self.matrices[name] = (
                None if p_in is None else _top_eigenvectors(factors[f"in:{name}"], rank),
                None if p_out is None else _top_eigenvectors(factors[f"out:{name}"], rank),
            )


def _dims(module: nn.Module) -> tuple[int, int]:
    dims = layer_dims(module)
    assert dims is not None  # tracked_layers keeps only the layers that have dims
    return dims


def _top_eigenvectors(factor: torch.Tensor, rank: int) -> torch.Tensor:
    """The `rank` leading eigenvectors of a symmetric factor, as rows [rank, dim] (signs fixed so
    each row's largest entry is positive, which makes them deterministic)."""
    _, vectors = torch.linalg.eigh(factor.double())
    top = vectors[:, -rank:].flip(1).T
    signs = torch.sign(top.gather(1, top.abs().argmax(1, keepdim=True)))
    return (top * signs).float()


def _apply(matrix: torch.Tensor | None, values: torch.Tensor) -> torch.Tensor:
    return values if matrix is None else values @ matrix.T


Activity = dict[str, tuple[torch.Tensor, torch.Tensor]]


def layer_activity(model: nn.Module, layers: dict[str, nn.Module], projector: KroneckerProjector | None,
                   data: Examples, batch_size: int) -> Iterator[tuple[Batch, Activity]]:  # fmt: skip
    """Per batch, every layer's inputs x and output gradients delta of the summed example losses,
    [rows, tokens, dim] each (projected when a projector is given); zeros for a layer the loss
    does not reach."""
    inputs: dict[str, torch.Tensor] = {}
    grads: dict[str, torch.Tensor] = {}

    def capture(name: str):
        p_in, p_out = projector.matrices[name] if projector else (None, None)

        def on_output_grad(grad: torch.Tensor) -> None:
            grads[name] = _apply(p_out, grad.detach().float())

        def hook(module: nn.Module, args: tuple, output: Any) -> None:
            inputs[name] = _apply(p_in, args[0].detach().float())
            tensor = output[0] if isinstance(output, tuple) else output
            if tensor.requires_grad:
                tensor.register_hook(on_output_grad)

        return hook

    def make_differentiable(module: nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor:
        # the model is frozen: a graph from the embeddings on is enough to reach every layer's output
        return output.detach().requires_grad_(True)

    handles = [module.register_forward_hook(capture(name)) for name, module in layers.items()]
    hf_model: Any = model  # a Hugging Face model: get_input_embeddings is not in nn.Module's stubs
    handles.append(hf_model.get_input_embeddings().register_forward_hook(make_differentiable))
    try:
        for indices in index_batches(len(data), batch_size):
            batch = data.batch(indices)
            with torch.enable_grad():
                logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, use_cache=False).logits
                # the batch's losses are summed: each example's output gradients are those of its own loss
                sequence_losses(logits, batch).sum().backward()
            width = {name: projector.shapes[name][0] if projector else _dims(m)[1] for name, m in layers.items()}
            yield batch, {name: (inputs[name], grads.get(name, torch.zeros(*inputs[name].shape[:2], width[name])))
                          for name in layers}  # fmt: skip
            inputs.clear()
            grads.clear()
    finally:
        for handle in handles:
            handle.remove()


def projected_layer_gradients(model: nn.Module, layers: dict[str, nn.Module], projector: KroneckerProjector,
                              data: Examples, batch_size: int) -> dict[str, torch.Tensor]:  # fmt: skip
    """Per layer, every example's projected loss gradient P_out (sum_t delta_t x_t^T) P_in^T -> [n, r_out * r_in]."""
    out: dict[str, list[torch.Tensor]] = {name: [] for name in layers}
    for batch, activity in layer_activity(model, layers, projector, data, batch_size):
        for name, (x, delta) in activity.items():
            out[name].append(torch.einsum("bto,bti->boi", delta, x).reshape(len(batch), -1))
    return {name: torch.cat(parts) for name, parts in out.items()}


def kfac_factors(model: nn.Module, layers: dict[str, nn.Module], data: Examples, batch_size: int) -> Tensors:
    """Per layer, A = mean x x^T over the training set's tokens (`in:NAME`) and S = mean delta delta^T
    (`out:NAME`), delta the output gradient of the example's loss."""
    sums: Tensors = {}
    tokens = 0
    for batch, activity in layer_activity(model, layers, None, data, batch_size):
        real = batch.attention_mask.bool()
        tokens += int(real.sum())
        for name, (x, delta) in activity.items():
            for key, values in ((f"in:{name}", x[real]), (f"out:{name}", delta[real])):
                product = values.double().T @ values.double()
                sums[key] = product if key not in sums else sums[key] + product
    return {key: (value / max(tokens, 1)).float() for key, value in sums.items()}


def eigenvalue_corrected(features: torch.Tensor, damping_ratio: float) -> tuple[torch.Tensor, float]:
    """G / (h + lambda) for G [n, d]: h the mean square of each projected coordinate over the
    training set (EK-FAC's corrected eigenvalue in the projected eigenbasis), lambda =
    damping_ratio x mean(h)."""
    h = features.double().pow(2).mean(0)
    damping = damping_ratio * float(h.mean())
    if damping <= 0:  # an all-zero layer (e.g. gradients that vanish): it contributes nothing
        return torch.zeros_like(features), 0.0
    return (features.double() / (h + damping)).float(), damping


def preconditioned(features: torch.Tensor, damping_ratio: float) -> tuple[torch.Tensor, float]:
    """G (G^T G / n + lambda I)^-1 for G [n, d], lambda = damping_ratio x mean eigenvalue of G^T G / n.

    Computed from the thin SVD G = U S V^T: G H^-1 = U diag(s / (s^2 / n + lambda)) V^T (exact, since
    G's rows lie in the span of V); it costs n d min(n, d) and never forms a d x d inverse."""
    n, d = features.shape
    work = features.double()
    u, s, vh = torch.linalg.svd(work, full_matrices=False)
    damping = damping_ratio * float(s.pow(2).sum()) / (n * d)
    if damping <= 0:  # an all-zero layer (e.g. gradients that vanish): it contributes nothing
        return torch.zeros_like(features), 0.0
    scaled = u * (s / (s.pow(2) / n + damping))
    return (scaled @ vh).float(), damping


class LograAttributor(InnerProductAttributor):
    """Preconditioned projected training gradients against raw projected query gradients."""

    name = "logra"

    def __init__(self, context: MethodContext, settings: LograSettings):
        super().__init__(context, settings)
        self.layers_ = tracked_layers(context.model, settings.modules)
        self.projector_ = KroneckerProjector(self.layers_, settings.rank, self.seed)

    def settings(self) -> dict[str, Any]:
        dampings = self.train_["model"]["dampings"].tolist() if self.train_ else []
        return {**super().settings(), "projected_shapes": {n: list(s) for n, s in self.projector_.shapes.items()},
                "dampings": dict(zip(self.layers_, dampings))}  # fmt: skip

    def _prepare(self, train: Examples) -> None:
        if self.config.initialization == "pca":
            model, batch_size = self.context.model, self.config.batch_size
            factors, _ = self._stage(self._new_stage("logra_factors"),
                                     lambda: (kfac_factors(model, self.layers_, train, batch_size), {}))  # fmt: skip
            self.projector_.use_factors(factors, self.config.rank)
        super()._prepare(train)

    def _gradients(self, data: Examples) -> dict[str, torch.Tensor]:
        model, batch_size = self.context.model, self.config.batch_size
        return projected_layer_gradients(model, self.layers_, self.projector_, data, batch_size)

    def train_features(self, part: Part, train: Examples) -> Tensors:
        precondition = eigenvalue_corrected if self.config.hessian == "ekfac" else preconditioned
        parts, dampings = [], []
        for features in self._gradients(train).values():
            part_features, damping = precondition(features, self.config.damping_ratio)
            parts.append(part_features)
            dampings.append(damping)
        return {FEATURES: torch.cat(parts, dim=1), "dampings": torch.tensor(dampings)}

    def query_features(self, part: Part, queries: Examples) -> torch.Tensor:
        return torch.cat(list(self._gradients(queries).values()), dim=1)


def create(context: MethodContext) -> LograAttributor:
    return LograAttributor(context, parse_settings(LograSettings, context.settings, "logra"))
