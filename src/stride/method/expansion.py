"""Second-order measurement of shared_logit and hashed_logit operators: no full-vocabulary softmax
per operator.

A shared_logit operator k moves the logits of token t by U z_kt with z_kt = a_k c_t, c_t = B h_t.
Around the base logits o_t (softmax p_t, target y_t) the token loss changes by

    l(o + U z) - l(o) = (mu_t - u_{y_t}) . z + 1/2 z^T S_t z + O(|z|^3),

with mu_t = U^T p_t (the mean of U's rows under p_t) and S_t = U^T diag(p_t) U - mu_t mu_t^T (their
covariance). A query's measurement is the weighted mean over its scored tokens (weights w_t), so
its response y_k = L_base - L_k is

    y_k ~ -<a_k, G> - 1/2 vec(a_k)^T Q vec(a_k),
    G = sum_t w_t (mu_t - u_{y_t}) c_t^T  [r' x r],   Q = sum_t w_t S_t (x) c_t c_t^T  [r'r x r'r].

G and Q take one pass over the vocabulary per token (for mu and U^T diag(p) U), after which all
K operators cost O(K (r' r)^2) per query, independent of the vocabulary and of the length.

For hashed_logit operators U is the signed hashing S (m buckets), whose U^T diag(p) U is diagonal:
the bucket masses q_b = sum of p_v over the bucket's tokens. So with mu = S^T p,

    y_k ~ -sum_t w_t [(mu_t - s(y_t) e_b(y_t)) . z_kt + 1/2 sum_b q_tb z_ktb^2 - 1/2 (mu_t . z_kt)^2],

which needs one pass over the vocabulary per token and O(K m r (T + r)) per query for all K.
"""

from __future__ import annotations

from typing import cast

import torch
from tqdm.auto import tqdm

from stride.data import Batch
from stride.errors import StrideError
from stride.method.measure import queries_per_pass, query_responses
from stride.method.operators import HASHED_LOGIT, SHARED_LOGIT, OperatorBank
from stride.method.steering import Steered
from stride.tasks import CausalLMTask, Examples

EXACT = "exact"
SECOND_ORDER = "second_order"
SECOND_ORDER_QUERIES = 8  # queries per pass of the second-order measurement
VOCAB_CHUNK = 8192  # vocabulary rows per step of U^T diag(p) U (bounds its [tokens, chunk, r'^2] product)


def check_second_order(steered: Steered, bank: OperatorBank) -> None:
    """Raise StrideError unless the second-order measurement applies (shared_logit or hashed_logit
    operators on a causal LM)."""
    if bank.form not in (SHARED_LOGIT, HASHED_LOGIT):
        raise StrideError(
            f"measure_expansion 'second_order' needs form 'shared_logit' or 'hashed_logit', got {bank.form!r}"
        )
    if not isinstance(steered.task, CausalLMTask):
        raise StrideError(
            "measure_expansion 'second_order' expands the causal-LM cross-entropy; use 'exact' for "
            f"{type(steered.task).__name__}"
        )


def token_weights(batch: Batch) -> torch.Tensor:
    """Each predicting token's weight in its row's mean loss [rows, T - 1]: 1 / (scored tokens) on a
    scored token, 0 elsewhere."""
    mask = batch.loss_mask[:, 1:].float()
    return mask / mask.sum(1, keepdim=True).clamp_min(1.0)


def bucket_sums(bank: OperatorBank, probs: torch.Tensor,
                targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:  # fmt: skip
    """For a hashed_logit bank and next-token probabilities [rows, T, vocab] with their targets
    [rows, T]: each bucket's mass q, the mean mu = S^T p and the loss slope mu - s(y) e_b(y), each
    [rows, T, m]."""
    buckets, signs = cast(torch.Tensor, bank.buckets), cast(torch.Tensor, bank.signs)
    rows, length, _ = probs.shape
    n_buckets = bank.coefficients.shape[1]
    mass = probs.new_zeros(rows, length, n_buckets).index_add_(2, buckets, probs)
    mean = probs.new_zeros(rows, length, n_buckets).index_add_(2, buckets, probs * signs)
    slope = mean.scatter_add(2, buckets[targets][..., None], -signs[targets][..., None])
    return mass, mean, slope


def _u_moments(probs: torch.Tensor, output_basis: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean U^T p [tokens, r'] and second moment U^T diag(p) U [tokens, r', r'] of U's rows under each
    row of `probs` [tokens, vocab], a chunk of the vocabulary at a time."""
    rank = output_basis.shape[1]
    second = probs.new_zeros(probs.shape[0], rank * rank)
    for start in range(0, output_basis.shape[0], VOCAB_CHUNK):
        rows = output_basis[start : start + VOCAB_CHUNK]
        outer = (rows[:, :, None] * rows[:, None, :]).reshape(len(rows), rank * rank)
        second += probs[:, start : start + VOCAB_CHUNK] @ outer
    return probs @ output_basis, second.view(-1, rank, rank)


def query_terms(bank: OperatorBank, logits: torch.Tensor, hidden: torch.Tensor,
                batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
    """G [n, r', r] and Q [n, r' r, r' r] of each query of `batch` (see the module docstring) from its
    base logits [n, T, vocab] and steered-place representation [n, T, d_model]."""
    assert bank.output_basis is not None  # check_second_order: shared_logit banks have one
    output_basis = bank.output_basis.float()
    predicting, targets = logits[:, :-1].float(), batch.input_ids[:, 1:]
    weights = token_weights(batch)
    n, length, vocab = predicting.shape
    mean, second = _u_moments(torch.softmax(predicting, dim=-1).reshape(-1, vocab), output_basis)
    rank_out = output_basis.shape[1]
    mean, second = mean.view(n, length, rank_out), second.view(n, length, rank_out, rank_out)
    covariance = second - mean[..., :, None] * mean[..., None, :]
    slope = mean - output_basis[targets]
    codes = bank.codes(hidden[:, :-1].float())
    rank = codes.shape[-1]
    weighted = weights[..., None] * codes
    linear = slope.transpose(1, 2) @ weighted  # [n, r', r]
    code_outer = (weighted[..., :, None] * codes[..., None, :]).reshape(n, length, rank * rank)
    quadratic = covariance.reshape(n, length, -1).transpose(1, 2) @ code_outer  # [n, (o, p), (r, s)]
    # vec(a_k) runs over (o, r) with r fastest, as a_k.reshape(-1) does: order Q's axes (o, r), (p, s)
    quadratic = quadratic.view(n, rank_out, rank_out, rank, rank).permute(0, 1, 3, 2, 4)
    return linear, quadratic.reshape(n, rank_out * rank, rank_out * rank)


def hashed_responses(bank: OperatorBank, logits: torch.Tensor, hidden: torch.Tensor, batch: Batch) -> torch.Tensor:
    """Second-order responses [n, K] of hashed_logit operators (see the module docstring) from the
    base logits [n, T, vocab] and steered-place representation [n, T, d_model] of `batch`."""
    coefficients = bank.coefficients.float()  # [K, m, r]
    n_buckets = coefficients.shape[1]
    predicting, targets = logits[:, :-1].float(), batch.input_ids[:, 1:]
    weights = token_weights(batch)
    probs = torch.softmax(predicting, dim=-1)
    n, length, _ = probs.shape
    mass, mean, slope = bucket_sums(bank, probs, targets)  # q, mu = S^T p, mu - s(y) e_b(y)
    codes = bank.codes(hidden[:, :-1].float())  # [n, T, r]
    weighted = weights[..., None] * codes
    linear = torch.einsum("kbr,nbr->nk", coefficients, slope.transpose(1, 2) @ weighted)
    code_outer = (weighted[..., :, None] * codes[..., None, :]).reshape(n, length, -1)
    rank = codes.shape[-1]
    diagonal = (mass.transpose(1, 2) @ code_outer).view(n, n_buckets, rank, rank)
    spread = torch.einsum("kbr,nbrs,kbs->nk", coefficients, diagonal, coefficients)
    along_mean = torch.einsum("kbr,ntb->nktr", coefficients, mean)  # a_k^T mu_t
    shift = torch.einsum("nktr,ntr->nkt", along_mean, codes)  # mu_t . z_kt
    centre = torch.einsum("nt,nkt->nk", weights, shift.square())
    return -(linear + 0.5 * spread - 0.5 * centre)


@torch.no_grad()
def second_order_responses(steered: Steered, bank: OperatorBank, queries: Examples,
                           queries_per_pass: int = SECOND_ORDER_QUERIES,
                           progress: bool = True) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
    """Approximate drops of the queries' measurement [n_queries, K] under each shared_logit or
    hashed_logit operator of `bank` (second order in the logit shift), and the exact base values
    [n_queries], on the CPU."""
    check_second_order(steered, bank)
    coefficients = bank.coefficients.float().reshape(bank.n_subsets, -1)
    responses = torch.empty(len(queries), bank.n_subsets)
    base_losses = torch.empty(len(queries))
    starts = range(0, len(queries), queries_per_pass)
    for start in tqdm(starts, desc="measuring queries (second order)", disable=not progress, unit="pass"):
        indices = list(range(start, min(start + queries_per_pass, len(queries))))
        batch = queries.batch(indices)
        base = steered.base(batch)
        base_losses[indices] = steered.task.measurement(base.logits, batch).cpu()
        if bank.form == HASHED_LOGIT:
            responses[indices] = hashed_responses(bank, base.logits, base.hidden, batch).cpu()
            continue
        linear, quadratic = query_terms(bank, base.logits, base.hidden, batch)
        first = linear.reshape(len(indices), -1) @ coefficients.T
        second = torch.einsum("nkj,kj->nk", coefficients @ quadratic, coefficients)
        responses[indices] = -(first + 0.5 * second).cpu()
    return responses, base_losses


def pass_queries(expansion: str, n_queries: int, n_subsets: int, rows_per_pass: int) -> int:
    """How many queries one pass of `measured_responses` holds. Passes start at multiples of it and
    each query's responses depend only on its own pass, so queries start..stop (start a multiple of
    it) measure as those rows of a measurement of all queries, bit for bit."""
    if expansion == SECOND_ORDER:
        return SECOND_ORDER_QUERIES
    return queries_per_pass(n_queries, n_subsets, rows_per_pass)


def measured_responses(steered: Steered, bank: OperatorBank, queries: Examples, expansion: str, rows_per_pass: int,
                       progress: bool = True) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
    """The queries' responses [n_queries, K] and base values [n_queries], measured exactly (one
    steered forward per query and operator) or to second order (`expansion`, see the module docstring)."""
    if expansion == SECOND_ORDER:
        return second_order_responses(steered, bank, queries, progress=progress)
    return query_responses(steered, bank, queries, rows_per_pass, progress)
