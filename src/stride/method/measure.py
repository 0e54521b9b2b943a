"""Measurement: y[x, k] = L_base(x) - L_{steered by a_k}(x) for every query x and operator k.

No gradients; each query batch gets one base pass, then the K operators run in chunks through the
blocks above the steered one.
"""

from __future__ import annotations

import torch
from tqdm.auto import tqdm

from stride.data import TokenizedData
from stride.losses import sequence_losses
from stride.method.steering import SteeredModel


@torch.no_grad()
def query_responses(
    steered: SteeredModel, queries: TokenizedData, rows_per_pass: int = 256, progress: bool = True
) -> tuple[torch.Tensor, torch.Tensor]:
    """Loss drops [n_queries, K] under each operator, and the base losses [n_queries]."""
    n_subsets = steered.bank.n_subsets
    queries_per_pass = max(1, min(len(queries), rows_per_pass // min(n_subsets, rows_per_pass)))
    subsets_per_pass = max(1, rows_per_pass // queries_per_pass)
    responses = torch.empty(len(queries), n_subsets)
    base_losses = torch.empty(len(queries))
    n_passes = -(-len(queries) // queries_per_pass) * -(-n_subsets // subsets_per_pass)
    bar = tqdm(total=n_passes, desc="measuring queries", disable=not progress, unit="pass")
    for start in range(0, len(queries), queries_per_pass):
        indices = list(range(start, min(start + queries_per_pass, len(queries))))
        batch = queries.batch(indices)
        base = steered.base(batch)
        base_loss = sequence_losses(base.logits, batch)
        base_losses[indices] = base_loss
        n_batch = len(indices)
        for first in range(0, n_subsets, subsets_per_pass):
            subset_ids = torch.arange(first, min(first + subsets_per_pass, n_subsets))
            rows = torch.arange(n_batch).repeat_interleave(len(subset_ids))
            logits = steered.steered_logits(base, batch, rows, subset_ids.repeat(n_batch))
            steered_loss = sequence_losses(logits, batch.select(rows)).view(n_batch, len(subset_ids))
            responses[start : start + n_batch, first : first + len(subset_ids)] = base_loss[:, None] - steered_loss
            bar.update(1)
    bar.close()
    return responses, base_losses
