"""The subset design: K random subsets, every training example in exactly d of them.

M in {0,1}^{K x n} is the adjacency matrix of a left-d-regular bipartite graph (an expander with
high probability). It is kept as the [n, d] table of each example's subsets and turned into a
scipy sparse matrix on demand; it is never dense.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from stride.errors import StrideError


def example_subsets(n_examples: int, n_subsets: int, per_example: int, seed: int, chunk: int = 4096) -> np.ndarray:
    """For each example, `per_example` distinct subset ids drawn uniformly: int32 [n, d], rows sorted."""
    if n_examples < 1:
        raise StrideError("the training set is empty")
    if not 1 <= per_example <= n_subsets:
        raise StrideError(f"d must be between 1 and K={n_subsets}, got {per_example}")
    rng = np.random.default_rng(seed)
    table = np.empty((n_examples, per_example), dtype=np.int32)
    for start in range(0, n_examples, chunk):
        stop = min(start + chunk, n_examples)
        keys = rng.random((stop - start, n_subsets))
        table[start:stop] = np.sort(np.argpartition(keys, per_example - 1, axis=1)[:, :per_example], axis=1)
    return table


def membership_matrix(table: np.ndarray, n_subsets: int) -> sp.csr_matrix:
    """The sparse K x n membership matrix M (float64 ones) of an [n, d] subset table."""
    n_examples, per_example = table.shape
    columns = np.repeat(np.arange(n_examples), per_example)
    values = np.ones(n_examples * per_example)
    return sp.csr_matrix((values, (table.ravel(), columns)), shape=(n_subsets, n_examples))


def subset_sizes(table: np.ndarray, n_subsets: int) -> np.ndarray:
    """How many examples each of the K subsets holds."""
    return np.bincount(table.ravel(), minlength=n_subsets)
