"""Batched Lasso on the sparse membership: every query at once, in torch, on the tensors' device.

For each problem p (one query's responses y_p over the rows it uses: all K subsets, or the
training rows of a cross-validation fold) it solves

    w_p = argmin_w 1/(2 K_p) ||y_p - c_p - M w||^2 + alpha_p ||w||_1      (sum over the K_p rows used)

with a free intercept c_p: scikit-learn's Lasso(fit_intercept=True). M is read only through its
[n, d] subset table (every row's d subsets distinct) and is never densified: its columns are centred
over the rows used by a rank-one correction (column means mu), and the residual is kept as a part
updated at the rows of the updated columns plus one offset per problem.

Why this algorithm: with n >> K a solution has at most about K non-zeros, and one product M^T R over
all n columns costs far more than solving on a few hundred columns. So, working sets:
1. a pass over all n columns (M^T R in float32, `embedding_bag` over chunks of the table) gives
   every column's correlation with the residual, the largest of which makes the full problem's
   duality gap (float64 on the working set, float32 outside it); problems below `tol` are done;
2. the others get a working set: their support, then the columns of largest correlation (violators
   of the optimality conditions first), max(FIRST_WORKING_SET, GROWTH x support size) in all;
3. block coordinate descent on the working sets (`WorkingSets`: columns without a common subset
   are updated together; all problems in lockstep), until each working set's duality gap is below
   INNER_FRACTION x tol; then back to 1.
Each problem is first divided by its penalty (threshold 1), which makes the soft threshold one
call for every problem. The gap is scikit-learn's (the objective times K_p, dual point rescaled by
max |X^T r|) relative to ||y_p - mean(y_p)||^2, so `tol` means what scikit-learn's `tol` means.
Every operation is deterministic on CPU, so the same inputs give the same solution.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from stride.core.sparse_rows import SparseRows

FIRST_WORKING_SET = 256  # working-set size while a problem's support is empty or small
GROWTH = 1.5  # working-set size / support size
INNER_FRACTION = 0.5  # working-set gap target, as a fraction of the full problem's tolerance
CHUNK_COLUMNS = 65_536  # columns of M per step of a pass over all of them
COLOUR_PROBLEMS = 64  # colour working sets into blocks when at most this many problems run together
GAP_EVERY = 5  # coordinate-descent sweeps between two working-set gap evaluations
MAX_PASSES = 100  # passes over all columns at most (a problem still above tol keeps its last solution)
MAX_SWEEPS = 5_000  # sweeps per working set at most


@dataclass(frozen=True)
class Problems:
    """Responses centred over the rows each problem uses, and what the objective needs of them."""

    table: torch.Tensor  # int64 [n, d]: the subsets of each column of M
    n_subsets: int
    centred: torch.Tensor  # float64 [P, K]: y_p minus its mean over the rows used, 0 elsewhere
    means: torch.Tensor  # [P]: those means
    rows: torch.Tensor | None  # float64 [P, K] of 0/1, the rows each problem uses (None: all)
    thresholds: torch.Tensor  # [P]: alpha_p x K_p, the penalty of the unnormalised objective
    used: torch.Tensor  # [P]: K_p

    @property
    def n_columns(self) -> int:
        return int(self.table.shape[0])

    def rescaled(self) -> Problems:
        """The same problems divided by their thresholds, so that every threshold is 1 (a solution
        scales by the same factor)."""
        scale = self.thresholds
        return Problems(self.table, self.n_subsets, self.centred / scale[:, None], self.means / scale, self.rows,
                        torch.ones_like(scale), self.used)  # fmt: skip

    def subset(self, selected: torch.Tensor) -> Problems:
        rows = None if self.rows is None else self.rows[selected]
        return Problems(self.table, self.n_subsets, self.centred[selected], self.means[selected], rows,
                        self.thresholds[selected], self.used[selected])  # fmt: skip


def problems(
    table: torch.Tensor, n_subsets: int, responses: torch.Tensor, alphas: torch.Tensor, rows: torch.Tensor | None
) -> Problems:
    """Centre `responses` [P, K] over `rows` ([P, K] 0/1, None: all rows); `alphas` [P] are the penalties."""
    responses = responses.double()
    if rows is None:
        used = torch.full((len(responses),), float(n_subsets), dtype=torch.float64, device=responses.device)
        means = responses.mean(1)
        centred = responses - means[:, None]
    else:
        rows = rows.double()
        used = rows.sum(1)
        means = (responses * rows).sum(1) / used
        centred = (responses - means[:, None]) * rows
    thresholds = alphas.to(responses) * used
    return Problems(table.long(), n_subsets, centred, means, rows, thresholds, used)


@dataclass
class Solution:
    """Per problem its support (`indices`, `weights`), intercept and final relative duality gap, and
    `ranking`: the last pass's columns (support first, then by decreasing |x_j^T r|), from which a
    warm start at another penalty builds its first working set (the sequential strong rule's order)."""

    indices: list[torch.Tensor]
    weights: list[torch.Tensor]
    intercepts: torch.Tensor
    gaps: torch.Tensor
    ranking: list[torch.Tensor]
    passes: int
    sweeps: int

    def coefficients(self, n_columns: int) -> SparseRows:
        """The solutions as a float64 [P, n] sparse matrix."""
        return SparseRows.from_padded(_pad(self.indices, 0), _pad(self.weights, 0.0), n_columns)


def _pad(vectors: list[torch.Tensor], fill: float) -> torch.Tensor:
    """Stack 1-D tensors of different lengths into [len, longest], padded with `fill`."""
    longest = max((len(vector) for vector in vectors), default=0)
    out = vectors[0].new_full((len(vectors), longest), fill)
    for row, vector in enumerate(vectors):
        out[row, : len(vector)] = vector
    return out


def correlations(
    problems: Problems, residuals: torch.Tensor, working: WorkingSets | None, keep: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """One pass over all n columns: per problem the largest |x_j^T r| (float64 on the working set,
    float32 outside it) and its ranking: the `keep` columns of largest |x_j^T r|, support first.

    `residuals` [P, K] sum to zero over each problem's rows, so x_j^T r = M_j^T r: the centring term
    mu_j (1^T r) vanishes."""
    table, n, device = problems.table, problems.n_columns, residuals.device
    weights = residuals.T.float().contiguous()  # [K, P]
    outside = torch.zeros(len(residuals), dtype=torch.float32, device=device)
    best_scores = weights.new_empty((len(residuals), 0))
    best_columns = torch.empty((len(residuals), 0), dtype=torch.int64, device=device)
    if working is None:
        columns = torch.empty((len(residuals), 0), dtype=torch.int64, device=device)
        exact, problem_ids = columns.float(), columns
    else:
        columns = torch.where(working.valid, working.columns, -1)
        exact = working.correlations().abs().float()
        exact = torch.where(working.by_problem(working.weights) != 0, torch.inf, exact)
        problem_ids = torch.arange(len(residuals), device=device)[:, None].expand_as(columns)
    for start in range(0, n, CHUNK_COLUMNS):
        stop = min(start + CHUNK_COLUMNS, n)
        scores = F.embedding_bag(table[start:stop], weights, mode="sum").abs_()  # [c, P]
        inside = (columns >= start) & (columns < stop)
        places = (columns[inside] - start, problem_ids[inside])
        scores[places] = -1.0
        outside = torch.maximum(outside, scores.amax(0))
        if keep == 0:
            continue
        scores[places] = exact[inside]
        chunk_scores, chunk_columns = _candidates(scores, best_scores, keep)
        best_scores = torch.cat([best_scores, chunk_scores], 1)
        best_columns = torch.cat([best_columns, chunk_columns + start], 1)
        best_scores, order = best_scores.topk(min(keep, best_scores.shape[1]), dim=1)
        best_columns = best_columns.gather(1, order)
    largest = outside.double()
    if working is not None:
        largest = torch.maximum(largest, working.dual_norms())
    return largest, best_columns


def _candidates(scores: torch.Tensor, best: torch.Tensor, keep: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The entries of a chunk `scores` [c, P] that may enter each problem's `keep` best so far (`best`
    [P, <= keep], decreasing): all of its top `keep` while `best` is not full, then only those above
    its last value (few, once some chunks are in). -> [P, width] scores (-inf padding) and chunk rows."""
    if best.shape[1] < keep:
        values, rows = scores.topk(min(keep, len(scores)), dim=0)
        return values.T, rows.T
    row, problem = torch.nonzero(scores > best[:, -1], as_tuple=True)
    order = torch.sort(problem, stable=True).indices  # grouped by problem, rows ascending in a group
    row, problem = row[order], problem[order]
    counts = torch.bincount(problem, minlength=best.shape[0])
    slot = torch.arange(len(problem), device=scores.device) - (torch.cumsum(counts, 0) - counts)[problem]
    width = int(counts.max()) if len(problem) else 0
    values = torch.full((best.shape[0], width), -torch.inf, device=scores.device)
    rows = torch.zeros((best.shape[0], width), dtype=torch.int64, device=scores.device)
    values[problem, slot], rows[problem, slot] = scores[row, problem], row
    return values, rows


def duality_gaps(
    problems: Problems, residuals: torch.Tensor, l1_norms: torch.Tensor, dual_norms: torch.Tensor
) -> torch.Tensor:
    """Duality gaps of the unnormalised objectives 1/2 ||r||^2 + a ||w||_1, relative to ||y_c||^2
    (the dual point is r, shrunk when max |X^T r| exceeds a)."""
    thresholds, centred = problems.thresholds, problems.centred
    scale = torch.where(dual_norms > thresholds, thresholds / dual_norms.clamp_min(1e-300), 1.0)
    squared = (residuals * residuals).sum(1)
    gaps = 0.5 * squared * (1 + scale**2) + thresholds * l1_norms - scale * (residuals * centred).sum(1)
    norms = (centred * centred).sum(1)
    return torch.where(norms > 0, gaps.clamp_min(0) / norms.clamp_min(1e-300), 0.0)


@dataclass
class WorkingSets:
    """Block coordinate descent on one working set per problem, all problems in lockstep.

    A problem's working columns are split into blocks of columns that share no subset (greedy
    colouring; one column per block when more than COLOUR_PROBLEMS problems run, where the work per
    step rather than the number of steps dominates). A block's columns are updated at once with
    curvature c_j (the rows of column j the problem uses): that bounds the block's Hessian
    diag(c) - c c^T / K_p, so the step is a majorise-minimise step and never raises the objective.

    Position b * width + s is slot s of block b; per-position arrays are [n_blocks, P, width] (rows:
    [n_blocks, P, width * d]). The residual of problem p is `partial[p] + offset[p]` on its rows
    (0 elsewhere)."""

    problems: Problems
    columns: torch.Tensor  # [P, m], m = n_blocks x width
    valid: torch.Tensor  # [P, m]
    subsets: torch.Tensor  # [n_blocks, P, width * d]
    in_rows: torch.Tensor | None  # [n_blocks, P, width * d] 0/1: which of those rows the problem uses
    counts: torch.Tensor  # [n_blocks, P, width]: c_j (0 for padding)
    inverse_counts: torch.Tensor  # 1 / c_j (0 for padding and columns without a used row)
    means: torch.Tensor  # mu_j = c_j / K_p
    weights: torch.Tensor  # [n_blocks, P, width]
    partial: torch.Tensor  # [P, K]
    offset: torch.Tensor  # [P]

    @classmethod
    def build(
        cls, problems: Problems, columns: torch.Tensor, valid: torch.Tensor, weights: torch.Tensor
    ) -> WorkingSets:
        """Working sets of `columns` [P, m0] (where `valid`) starting from `weights` [P, m0]."""
        n_problems = len(columns)
        subsets = problems.table[columns]
        if n_problems <= COLOUR_PROBLEMS:
            block, slot = _colour(subsets, valid, problems.n_subsets)
        else:
            block, slot = torch.cumsum(valid, 1) - 1, torch.zeros_like(columns)
        block, slot = torch.where(valid, block, 0), torch.where(valid, slot, 0)
        n_blocks, width = int(block.max()) + 1, int(slot.max()) + 1
        place = torch.where(valid, block * width + slot, n_blocks * width)  # invalid: dropped below
        size = n_blocks * width
        laid = [torch.zeros((n_problems, size + 1), dtype=x.dtype, device=x.device).scatter_(1, place, x)[:, :size]
                for x in (columns, valid, weights.double())]  # fmt: skip
        columns, valid, weights = laid
        subsets = problems.table[columns]  # [P, m, d]
        d = subsets.shape[2]
        if problems.rows is None:
            in_rows = None
            counts = valid.double() * d
        else:
            flags = problems.rows.gather(1, subsets.view(n_problems, -1)).view(n_problems, size, d) * valid[:, :, None]
            counts = flags.sum(2)
            in_rows = _blocks(flags.view(n_problems, size * d), n_blocks)
        inverse = torch.where(counts > 0, 1.0 / counts.clamp_min(1.0), 0.0)
        placeholder = problems.centred.new_empty(0)  # the residual, computed from the weights below
        state = cls(problems, columns, valid, _blocks(subsets.view(n_problems, size * d), n_blocks), in_rows,
                    _blocks(counts, n_blocks), _blocks(inverse, n_blocks),
                    _blocks(counts / problems.used[:, None], n_blocks), _blocks(weights, n_blocks),
                    placeholder, placeholder)  # fmt: skip
        state.partial, state.offset = state.exact_residual()
        return state

    def by_problem(self, blocked: torch.Tensor) -> torch.Tensor:
        """A [n_blocks, P, width * e] array as [P, m * e]."""
        return blocked.transpose(0, 1).reshape(len(self.columns), -1)

    def exact_residual(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(y_c - M_W w) on the rows used, and the offset mu_W^T w (the centring of M_W w)."""
        d = self.problems.table.shape[1]
        weights = self.by_problem(self.weights)
        product = torch.zeros_like(self.problems.centred)
        spread = weights[:, :, None].expand(*weights.shape, d).reshape(len(weights), -1)
        product.scatter_add_(1, self.by_problem(self.subsets), spread)
        partial = self.problems.centred - product
        if self.problems.rows is not None:
            partial = partial * self.problems.rows
        return partial, (self.by_problem(self.means) * weights).sum(1)

    def residual(self) -> torch.Tensor:
        """The residual r [P, K]."""
        rows = self.problems.rows
        return self.partial + self.offset[:, None] * (1.0 if rows is None else rows)

    def sweep(self) -> None:
        """One pass over every block (thresholds must be 1: `solve` rescales each problem so)."""
        partial, offset = self.partial, self.offset
        n_problems, width = self.weights.shape[1:]
        for block in range(len(self.weights)):
            rows, old = self.subsets[block], self.weights[block]
            gathered = partial.gather(1, rows).view(n_problems, width, -1).sum(2)
            correlation = torch.addcmul(gathered, offset[:, None], self.counts[block])  # x_j^T r
            new = F.softshrink(torch.addcmul(correlation, old, self.counts[block]), 1.0) * self.inverse_counts[block]
            decrease = old - new
            old.copy_(new)
            step = decrease.repeat_interleave(rows.shape[1] // width, dim=1)
            partial.scatter_add_(1, rows, step if self.in_rows is None else step * self.in_rows[block])
            offset.sub_((decrease * self.means[block]).sum(1))

    def correlations(self) -> torch.Tensor:
        """x_j^T r of every working column [P, m] (float64)."""
        n_problems, size = self.columns.shape
        gathered = self.partial.gather(1, self.by_problem(self.subsets)).view(n_problems, size, -1).sum(2)
        return gathered + self.offset[:, None] * self.by_problem(self.counts)

    def dual_norms(self) -> torch.Tensor:
        """max |x_j^T r| over each problem's working set."""
        if self.valid.shape[1] == 0:
            return torch.zeros_like(self.offset)
        return torch.where(self.valid, self.correlations().abs(), 0.0).amax(1)

    def gaps(self) -> torch.Tensor:
        """Relative duality gaps of the problems restricted to their working sets."""
        l1_norms = self.weights.abs().sum((0, 2))
        return duality_gaps(self.problems, self.residual(), l1_norms, self.dual_norms())

    def solve(self, tol: float, max_sweeps: int) -> int:
        """Sweep until every working set's gap is below `tol` (checked every GAP_EVERY sweeps); the sweeps run."""
        for sweeps in range(1, max_sweeps + 1):
            self.sweep()
            if sweeps % GAP_EVERY == 0 and bool((self.gaps() <= tol).all()):
                return sweeps
        return max_sweeps


def _blocks(values: torch.Tensor, n_blocks: int) -> torch.Tensor:
    """[P, n_blocks * e] -> [n_blocks, P, e] (contiguous: one block's values are adjacent)."""
    return values.view(len(values), n_blocks, -1).transpose(0, 1).contiguous()


def _colour(subsets: torch.Tensor, valid: torch.Tensor, n_subsets: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Greedy first-fit colouring of each problem's columns ([P, m0, d] subsets) into blocks of columns
    with no subset in common: (block, slot within the block) of every column [P, m0]."""
    n_problems, size, d = subsets.shape
    capacity = max(1, min(size, 4 * -(-size * d // n_subsets) + 8))
    occupied = torch.zeros((n_problems, capacity, n_subsets), dtype=torch.bool, device=subsets.device)
    filled = torch.zeros((n_problems, capacity), dtype=torch.int64, device=subsets.device)
    block, slot = torch.zeros_like(valid, dtype=torch.int64), torch.zeros_like(valid, dtype=torch.int64)
    everyone = torch.arange(n_problems, device=subsets.device)
    for position in range(size):
        rows = subsets[:, position]
        clash = occupied.gather(2, rows[:, None, :].expand(n_problems, occupied.shape[1], d)).any(2)
        if bool(clash.all(1).any()):  # some problem needs a new block: make room
            occupied = torch.cat([occupied, torch.zeros_like(occupied)], 1)
            filled = torch.cat([filled, torch.zeros_like(filled)], 1)
            clash = torch.cat([clash, torch.zeros_like(clash)], 1)
        chosen = clash.to(torch.int8).argmin(1)
        block[:, position], slot[:, position] = chosen, filled[everyone, chosen]
        taken = valid[:, position]
        filled[everyone, chosen] += taken.long()
        occupied[everyone[:, None], chosen[:, None], rows] |= taken[:, None]
    return block, slot


def solve(
    table: torch.Tensor,
    n_subsets: int,
    responses: torch.Tensor,
    alphas: torch.Tensor,
    rows: torch.Tensor | None = None,
    tol: float = 1e-6,
    start: Solution | None = None,
) -> Solution:
    """Lasso solutions of every problem (see the module docstring): `table` [n, d] int, the subsets of
    each column of the K x n membership; `responses` [P, K]; `alphas` [P]; `rows` [P, K] 0/1 or None;
    `start`: the solution of the same problems at other penalties, to start from (a path)."""
    if not bool((alphas > 0).all()):
        raise ValueError("every penalty must be positive")
    original = problems(table, n_subsets, responses, alphas, rows)
    batch = original.rescaled()  # thresholds 1: weights are in units of 1 / threshold
    n_problems, device = len(responses), responses.device
    gaps = torch.full((n_problems,), torch.inf, dtype=torch.float64, device=device)
    if start is None:
        indices = [torch.empty(0, dtype=torch.int64, device=device)] * n_problems
        weights = [torch.empty(0, dtype=torch.float64, device=device)] * n_problems
        dual_norms, ranking = correlations(batch, batch.centred, None, min(FIRST_WORKING_SET, batch.n_columns))
        gaps = duality_gaps(batch, batch.centred, torch.zeros_like(gaps), dual_norms)
        rankings = list(ranking)
    else:
        indices, rankings = list(start.indices), list(start.ranking)
        weights = [values / threshold for values, threshold in zip(start.weights, original.thresholds)]
    active = torch.nonzero(gaps > tol).flatten()
    passes = sweeps = 0
    while len(active) and passes < MAX_PASSES:
        members = active.tolist()
        current = batch.subset(active)
        working = _working_sets(current, [rankings[p] for p in members], [indices[p] for p in members],
                                [weights[p] for p in members])  # fmt: skip
        sweeps += working.solve(INNER_FRACTION * tol, MAX_SWEEPS)
        solved = working.by_problem(working.weights)
        for position, problem in enumerate(members):
            nonzero = working.valid[position] & (solved[position] != 0)
            indices[problem] = working.columns[position][nonzero]
            weights[problem] = solved[position][nonzero]
        residuals = working.residual()
        keep = max(_sizes(current, [indices[p] for p in members]))
        dual_norms, ranking = correlations(current, residuals, working, keep)
        l1_norms = torch.stack([weights[p].abs().sum() for p in members])
        gaps[active] = duality_gaps(current, residuals, l1_norms, dual_norms)
        for position, problem in enumerate(members):
            rankings[problem] = ranking[position]
        active = active[gaps[active] > tol]
        passes += 1
    weights = [values * threshold for values, threshold in zip(weights, original.thresholds)]
    intercepts = original.means - torch.stack([(_column_means(original, p, indices[p]) * weights[p]).sum()
                                               for p in range(n_problems)])  # fmt: skip
    return Solution(indices, weights, intercepts, gaps, rankings, passes, sweeps)


def _sizes(batch: Problems, supports: list[torch.Tensor]) -> list[int]:
    """Working-set sizes: GROWTH x the support, at least FIRST_WORKING_SET, at most n."""
    return [min(batch.n_columns, max(FIRST_WORKING_SET, int(GROWTH * len(support)))) for support in supports]


def _working_sets(
    batch: Problems, rankings: list[torch.Tensor], supports: list[torch.Tensor], weights: list[torch.Tensor]
) -> WorkingSets:
    """Each problem's working set (the head of its ranking, in ascending column order) holding its
    current weights."""
    n = batch.n_columns
    sizes = _sizes(batch, supports)
    columns = rankings[0].new_full((len(sizes), max(sizes)), n)
    for row, (ranking, size) in enumerate(zip(rankings, sizes)):
        columns[row, :size] = ranking[:size]
    columns = columns.sort(dim=1).values
    start = torch.zeros(columns.shape, dtype=torch.float64, device=columns.device)
    for row, (support, values) in enumerate(zip(supports, weights)):
        start[row, torch.searchsorted(columns[row], support)] = values
    valid = columns < n
    return WorkingSets.build(batch, torch.where(valid, columns, 0), valid, start)


def _column_means(batch: Problems, problem: int, columns: torch.Tensor) -> torch.Tensor:
    """mu_j of `columns` over the rows problem `problem` uses."""
    subsets = batch.table[columns]
    if batch.rows is None:
        return torch.full((len(columns),), subsets.shape[1] / batch.n_subsets, dtype=torch.float64,
                          device=columns.device)  # fmt: skip
    return batch.rows[problem][subsets].sum(1) / batch.used[problem]


def predictions(table: torch.Tensor, n_subsets: int, solution: Solution) -> torch.Tensor:
    """c_p + M w_p on every row [P, K] (uncentred: the fitted responses)."""
    out = torch.zeros(len(solution.indices), n_subsets, dtype=torch.float64, device=solution.intercepts.device)
    for problem, (columns, weights) in enumerate(zip(solution.indices, solution.weights)):
        subsets = table[columns]
        out[problem].index_add_(0, subsets.flatten(), weights[:, None].expand_as(subsets).flatten())
    return out + solution.intercepts[:, None]


def largest_correlations(table: torch.Tensor, n_subsets: int, responses: torch.Tensor) -> torch.Tensor:
    """max_j |x_j^T y_c| per row of `responses` [P, K], all rows used (K x the smallest penalty that
    zeroes every coefficient)."""
    batch = problems(table, n_subsets, responses, torch.zeros(len(responses)), None)
    largest, _ = correlations(batch, batch.centred, None, 0)
    return largest
