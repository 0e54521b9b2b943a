import numpy as np
import pytest

from stride.errors import StrideError
from stride.method.membership import example_subsets, membership_matrix, subset_sizes


def test_every_example_joins_exactly_d_distinct_subsets():
    table = example_subsets(n_examples=500, n_subsets=40, per_example=7, seed=3)
    matrix = membership_matrix(table, 40)
    assert matrix.shape == (40, 500)
    column_sums = np.asarray(matrix.sum(axis=0)).ravel()
    assert (column_sums == 7).all()
    assert set(np.unique(matrix.data)) == {1.0}
    assert subset_sizes(table, 40).sum() == 500 * 7
    assert (subset_sizes(table, 40) > 0).all()


def test_design_is_seeded_and_uniform_enough():
    a = example_subsets(2000, 50, 5, seed=1)
    assert np.array_equal(a, example_subsets(2000, 50, 5, seed=1))
    assert not np.array_equal(a, example_subsets(2000, 50, 5, seed=2))
    sizes = subset_sizes(a, 50)
    assert abs(sizes.mean() - 200) < 1e-9 and sizes.min() > 140 and sizes.max() < 260


@pytest.mark.parametrize("d,k", [(0, 10), (11, 10)])
def test_d_out_of_range_is_refused(d, k):
    with pytest.raises(StrideError, match="d must be between"):
        example_subsets(10, k, d, seed=0)
