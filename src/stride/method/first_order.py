"""First-order view of an operator family: per-example gradients w.r.t. one zero operator.

Make one operator of a family (form, steered place, rank, basis) infinitesimally small. Training
it on a subset S moves it along -sum_{z in S} g(z), where g(z) = dL(z)/da at a = 0 is the gradient
of example z's loss with respect to the operator's own numbers a (logit form: sum over tokens of
dL/do_t (B h_t)^T; shared_logit / hashed_logit forms: U^T dL/do_t (B h_t)^T, a random projection
(a signed bucketing) of the logit form's; residual form: dL/dh'_t (B h_t)^T through the blocks
above). Query q's loss
then changes by -eta <g(q), sum_{z in S} g(z)>, so <g(q), g(z)> is what STRIDE measures to first
order, before finite steps, the subset design and the Lasso add their own errors.

The `operator-grad` diagnostic scores with these dot products; STRIDE's hybrid mixes them (for the
logit form with a rank-64 basis, count-sketched; for shared_logit and hashed_logit operators, their
own family's features, whose width does not grow with the vocabulary) into its Lasso scores.
"""

from __future__ import annotations

import torch

from stride.core.batching import index_batches
from stride.core.sketch import GradientProjector
from stride.method.operators import HASHED_LOGIT, LOGIT, SHARED_LOGIT, OperatorBank, operator_width
from stride.method.steering import Steered
from stride.tasks import Examples


def restricted_gradients(steered: Steered, data: Examples, form: str, rank: int, seed: int, batch_size: int,
                         query: bool = False, proj_dim: int = 0, output_rank: int = 0) -> torch.Tensor:  # fmt: skip
    """Per-example gradients of the loss (`query`: the measurement) w.r.t. one zero operator of the
    family at `steered`'s place -> [len(data), output width x rank], or their count sketch
    [len(data), proj_dim] when `proj_dim` > 0. The basis is drawn as STRIDE draws it from `seed`
    (rank 0: the identity; `output_rank`: r' of the shared_logit form)."""
    hidden_size, output_size = steered.sizes(data.batch([0]))
    width = rank or hidden_size
    size = operator_width(form, hidden_size, output_size, output_rank) * width
    projector = GradientProjector({"operator": size}, proj_dim, seed) if proj_dim else None
    features = torch.empty(len(data), proj_dim or size)
    for indices in index_batches(len(data), batch_size):
        batch = data.batch(indices)
        base = steered.base(batch)
        # one zero operator per row
        bank = OperatorBank(form, len(indices), hidden_size, width, output_size, seed, output_rank)
        if rank == 0:
            bank.basis.data = torch.eye(hidden_size)
        bank = bank.to(base.logits.device)
        bank.basis.requires_grad_(False)
        rows = torch.arange(len(indices), device=base.logits.device)
        outputs = steered.steered_logits(bank, base, batch, rows, rows)
        values = steered.task.measurement(outputs, batch) if query else steered.task.losses(outputs, batch)
        (gradient,) = torch.autograd.grad(values.sum(), bank.coefficients)
        gradient = gradient.reshape(len(indices), -1).float().cpu()
        features[indices] = projector.project({"operator": gradient}) if projector else gradient
    return features


def first_order_family(form: str, output_rank: int, rank: int, proj_dim: int) -> tuple[str, int, int]:
    """The family of STRIDE's first-order features for operators of `form` (with their `output_rank`),
    as (form, output rank, count-sketch width): the logit family sketched to `proj_dim`; for
    shared_logit operators the shared_logit family whose r' x `rank` features are `proj_dim` wide
    without a sketch; for hashed_logit operators their own family, sketched. The latter two never
    form a [rows, vocab x rank] gradient."""
    if form == SHARED_LOGIT:
        return SHARED_LOGIT, max(1, proj_dim // rank), 0
    if form == HASHED_LOGIT:
        return HASHED_LOGIT, output_rank, proj_dim
    return LOGIT, 0, proj_dim
