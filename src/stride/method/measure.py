"""Measurement: y[x, k] = L_base(x) - L_{steered by a_k}(x) for every query x and operator k.

No gradients; each query batch gets one base pass, then the K operators run in chunks through the
blocks above the steered one.
"""

from __future__ import annotations

import torch
from tqdm.auto import tqdm

from stride.method.operators import OperatorBank
from stride.method.steering import Steered
from stride.tasks import Examples


def queries_per_pass(n_queries: int, n_subsets: int, rows_per_pass: int) -> int:
    """How many queries one measuring pass holds: with K >= rows_per_pass one (its operators then
    take several passes), else as many as fit K rows each."""
    return max(1, min(n_queries, rows_per_pass // min(n_subsets, rows_per_pass)))


@torch.no_grad()
def query_responses(
    steered: Steered, bank: OperatorBank, queries: Examples, rows_per_pass: int = 256, progress: bool = True
) -> tuple[torch.Tensor, torch.Tensor]:
    """Drops of the task's measurement [n_queries, K] under each operator of `bank`, and its base values
    [n_queries], on the CPU (the passes run on the bank's and the model's device)."""
    n_subsets, device = bank.n_subsets, bank.basis.device
    per_pass = queries_per_pass(len(queries), n_subsets, rows_per_pass)
    subsets_per_pass = max(1, rows_per_pass // per_pass)
    responses = torch.empty(len(queries), n_subsets)
    base_losses = torch.empty(len(queries))
    n_passes = -(-len(queries) // per_pass) * -(-n_subsets // subsets_per_pass)
    bar = tqdm(total=n_passes, desc="measuring queries", disable=not progress, unit="pass")
    for start in range(0, len(queries), per_pass):
        indices = list(range(start, min(start + per_pass, len(queries))))
        batch = queries.batch(indices)
        base = steered.base(batch)
        base_loss = steered.task.measurement(base.logits, batch)
        base_losses[indices] = base_loss.cpu()
        n_batch = len(indices)
        for first in range(0, n_subsets, subsets_per_pass):
            subset_ids = torch.arange(first, min(first + subsets_per_pass, n_subsets), device=device)
            rows = torch.arange(n_batch, device=device).repeat_interleave(len(subset_ids))
            logits = steered.steered_logits(bank, base, batch, rows, subset_ids.repeat(n_batch))
            steered_loss = steered.task.measurement(logits, batch.select(rows)).view(n_batch, len(subset_ids))
            drops = base_loss[:, None] - steered_loss
            responses[start : start + n_batch, first : first + len(subset_ids)] = drops.cpu()
            bar.update(1)
    bar.close()
    return responses, base_losses
