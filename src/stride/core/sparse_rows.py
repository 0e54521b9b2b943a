"""A matrix of mostly zeros kept as compressed rows (CSR), e.g. Lasso scores [n_queries, n_train].

Plain torch tensors (`crow_indices`, `col_indices`, `values`) rather than a torch sparse tensor:
they save to safetensors as they are, and read back without torch's sparse layouts.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
import torch

from stride.errors import StrideError

TENSOR_NAMES = ("crow_indices", "col_indices", "values", "shape")


@dataclass(frozen=True)
class SparseRows:
    """Row i holds `values[crow_indices[i]:crow_indices[i + 1]]` at columns `col_indices[...]`
    (ascending within a row); every other entry is zero."""

    crow_indices: torch.Tensor
    col_indices: torch.Tensor
    values: torch.Tensor
    shape: tuple[int, int]

    @property
    def nnz(self) -> int:
        return int(self.values.numel())

    def dense(self, start: int = 0, stop: int | None = None) -> torch.Tensor:
        """Rows start..stop as a dense tensor [stop - start, columns]."""
        stop = self.shape[0] if stop is None else stop
        first, last = int(self.crow_indices[start]), int(self.crow_indices[stop])
        counts = (self.crow_indices[start + 1 : stop + 1] - self.crow_indices[start:stop]).long()
        device = self.values.device
        rows = torch.repeat_interleave(torch.arange(stop - start, device=device), counts.to(device))
        out = torch.zeros(stop - start, self.shape[1], dtype=self.values.dtype, device=device)
        out[rows, self.col_indices[first:last].long()] = self.values[first:last]
        return out

    def scaled(self, factors: torch.Tensor) -> SparseRows:
        """Row i multiplied by factors[i]."""
        counts = (self.crow_indices[1:] - self.crow_indices[:-1]).long()
        values = self.values * torch.repeat_interleave(factors.to(self.values), counts.to(self.values.device))
        return SparseRows(self.crow_indices, self.col_indices, values, self.shape)

    def to(self, dtype: torch.dtype) -> SparseRows:
        return SparseRows(self.crow_indices, self.col_indices, self.values.to(dtype), self.shape)

    def to_scipy(self) -> sp.csr_matrix:
        arrays = (self.values.cpu().numpy(), self.col_indices.cpu().numpy(), self.crow_indices.cpu().numpy())
        return sp.csr_matrix(arrays, shape=self.shape)

    @classmethod
    def from_scipy(cls, matrix: sp.csr_matrix) -> SparseRows:
        matrix = sp.csr_matrix(matrix)
        matrix.sum_duplicates()
        matrix.sort_indices()
        return cls(
            torch.as_tensor(matrix.indptr.astype(np.int64)),
            torch.as_tensor(matrix.indices.astype(np.int64)),
            torch.as_tensor(matrix.data),
            (int(matrix.shape[0]), int(matrix.shape[1])),
        )

    @classmethod
    def from_padded(cls, indices: torch.Tensor, values: torch.Tensor, columns: int) -> SparseRows:
        """Rows given as padded [rows, m] column indices and values; zero values are dropped."""
        keep = values != 0
        order = torch.argsort(torch.where(keep, indices, columns), dim=1, stable=True)
        indices, values, keep = indices.gather(1, order), values.gather(1, order), keep.gather(1, order)
        crow = torch.zeros(len(indices) + 1, dtype=torch.int64, device=indices.device)
        crow[1:] = torch.cumsum(keep.sum(1), 0)
        return cls(crow, indices[keep].long(), values[keep], (len(indices), columns))

    @staticmethod
    def mean(matrices: list[SparseRows]) -> SparseRows:
        """The entrywise mean of matrices of one shape (float64); its pattern is the union of theirs."""
        total = sum((matrix.to(torch.float64).to_scipy() for matrix in matrices), sp.csr_matrix(matrices[0].shape))
        return SparseRows.from_scipy(total / len(matrices))

    @staticmethod
    def stack(matrices: list[SparseRows]) -> SparseRows:
        """The rows of matrices of one width, one matrix after the other."""
        return SparseRows.from_scipy(sp.vstack([matrix.to_scipy() for matrix in matrices], format="csr"))

    def tensors(self) -> dict[str, torch.Tensor]:
        """The arrays to store (safetensors), `shape` as an int64 pair."""
        return {
            "crow_indices": self.crow_indices.contiguous(),
            "col_indices": self.col_indices.contiguous(),
            "values": self.values.contiguous(),
            "shape": torch.tensor(self.shape, dtype=torch.int64),
        }

    @classmethod
    def from_tensors(cls, tensors: dict[str, torch.Tensor]) -> SparseRows:
        missing = [name for name in TENSOR_NAMES if name not in tensors]
        if missing:
            raise StrideError(f"sparse scores lack the arrays {missing} (found {sorted(tensors)})")
        rows, columns = (int(size) for size in tensors["shape"])
        return cls(tensors["crow_indices"], tensors["col_indices"], tensors["values"], (rows, columns))
