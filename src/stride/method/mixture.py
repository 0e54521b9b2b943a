"""STRIDE's final scores as a recipe evaluated a chunk of query rows at a time: the designs' averaged
Lasso scores, mixed with the first-order scores, a second operator bank and a partner method when a
run has them, with the standard errors carried through the same mix."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from stride.core.sparse_rows import SparseRows
from stride.method.hybrid import mix


@dataclass
class Mixture:
    """STRIDE's final scores, row chunk by row chunk: the designs' averaged Lasso scores, mixed with
    the first-order scores (query features x training features) at `weight` when those are given,
    that mixed with the second bank's scores at `second_weight`, and that with a partner method's
    scores at `partner_weight`, when they are given."""

    lasso: SparseRows
    query_features: torch.Tensor | None = None
    train_features: torch.Tensor | None = None
    weight: float = 0.0
    designs: list[SparseRows] = field(default_factory=list)
    second: Mixture | None = None
    second_weight: float = 0.0
    partner: torch.Tensor | None = None
    partner_weight: float = 0.0

    def rows(self, start: int, stop: int) -> torch.Tensor:
        """Scores of queries start..stop (float64 [stop - start, n_train])."""
        second = self.second.rows(start, stop) if self.second is not None else None
        return self._mixed(start, stop, self._first_bank(start, stop), second)

    def rows_and_errors(self, start: int, stop: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        """`rows(start, stop)` and their standard errors, each bank's scores computed once. The errors
        are the designs' spread, std / sqrt(D), carried through the mix (whose Lasso part has weight
        1 - w; the first-order part and the partner's scores are the same for every design), and the
        second bank's own standard errors carried through its weight and onto the first bank's
        scale; None when neither bank has two designs."""
        first = self._first_bank(start, stop)
        second, second_se = self.second.rows_and_errors(start, stop) if self.second is not None else (None, None)
        share = 1.0 - self.partner_weight if self.partner is not None else 1.0
        variance = None
        if len(self.designs) >= 2:
            spread = torch.stack([design.dense(start, stop).double() for design in self.designs]).std(dim=0)
            lasso_share = (1.0 - self.weight if self.query_features is not None else 1.0) * share
            if second is not None:
                lasso_share *= 1.0 - self.second_weight
            variance = (lasso_share * spread / len(self.designs) ** 0.5) ** 2
        if second is not None and second_se is not None:
            second_spread = second.std(dim=1, correction=0, keepdim=True)
            scale = torch.as_tensor(first.std(axis=1, ddof=0, keepdims=True))
            carried = self.second_weight * share * second_se.double() * scale / second_spread.clamp_min(1e-30)
            variance = carried**2 if variance is None else variance + carried**2
        errors = None if variance is None else variance.sqrt().float()
        return self._mixed(start, stop, first, second), errors

    def first_order(self, start: int, stop: int) -> np.ndarray:
        if self.query_features is None or self.train_features is None:
            raise RuntimeError("this mixture has no first-order scores")
        return (self.query_features[start:stop] @ self.train_features.T).double().numpy()

    def _first_bank(self, start: int, stop: int) -> np.ndarray:
        """The first bank's scores of queries start..stop: its Lasso scores, mixed with the first-order scores."""
        scores = self.lasso.dense(start, stop).double().numpy()
        if self.query_features is not None:
            scores = mix(scores, self.first_order(start, stop), self.weight)
        return scores

    def _mixed(self, start: int, stop: int, first: np.ndarray, second: torch.Tensor | None) -> torch.Tensor:
        """The first bank's scores mixed with the second bank's (when given) and then the partner's."""
        scores = first if second is None else mix(first, second.numpy(), self.second_weight)
        if self.partner is not None:
            scores = mix(scores, self.partner[start:stop].double().numpy(), self.partner_weight)
        return torch.as_tensor(scores)
