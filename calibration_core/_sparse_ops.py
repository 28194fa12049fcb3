"""The fit's hot path: ``X @ w`` and ``X.T @ g`` on a fixed CSR matrix, as a torch autograd op.

The matrix is converted once, when the operator is built; every epoch then runs two sparse
matrix-vector products and no format conversion:

* backward ``X.T @ g`` uses the CSR layout of ``X.T`` (one row per column of ``X``). Each output
  element is a dot product that gathers from ``g`` (n_targets floats, cache-resident), so the pass
  streams the matrix once at close to memory bandwidth;
* forward ``X @ w`` on the CPU uses column tiles of ``X``, each a CSR matrix over a slice of
  ``w`` small enough to stay in cache (``tile_columns`` columns; 256Ki floats = 1 MiB). A single
  CSR ``X`` with millions of columns gathers ``w`` at random from main memory and runs about 5x
  slower. The tile results are summed in a fixed order. On CUDA a single CSR matrix is used
  (cuSPARSE).

On the CPU both products run on torch's CSR kernels (MKL, int32 indices, torch's intra-op
threads). Each output element is computed by one thread in a fixed order, so results are
identical from run to run for a given thread count.
"""
from __future__ import annotations

import warnings

import numpy as np
import scipy.sparse as sp
import torch

DEFAULT_TILE_COLUMNS = 1 << 18


def _to_torch_csr(matrix: sp.csr_matrix, device: torch.device) -> torch.Tensor:
    """A torch CSR tensor (int32 indices, float32 values) with the same entries as ``matrix``."""
    matrix = sp.csr_matrix(matrix, dtype=np.float32)
    if matrix.nnz >= np.iinfo(np.int32).max:
        raise ValueError(f"matrix has {matrix.nnz} non-zeros; int32 CSR indices hold < 2**31")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "sparse CSR support is in beta" / invariant checks
        tensor = torch.sparse_csr_tensor(
            torch.from_numpy(np.ascontiguousarray(matrix.indptr, dtype=np.int32)),
            torch.from_numpy(np.ascontiguousarray(matrix.indices, dtype=np.int32)),
            torch.from_numpy(np.ascontiguousarray(matrix.data, dtype=np.float32)),
            size=matrix.shape,
            dtype=torch.float32,
        )
    return tensor.to(device) if device.type != "cpu" else tensor


class SparseOperator:
    """A fixed sparse matrix ``X`` (n_rows, n_cols) ready for repeated ``X @ w`` and ``X.T @ g``.

    Parameters
    ----------
    matrix : scipy.sparse matrix, shape (n_rows, n_cols)
    device : torch.device
    tile_columns : int
        Column-tile width of the forward product on the CPU (ignored on CUDA).
    """

    def __init__(self, matrix: sp.spmatrix, device: torch.device | str = "cpu",
                 tile_columns: int = DEFAULT_TILE_COLUMNS) -> None:
        device = torch.device(device)
        csr = sp.csr_matrix(matrix, dtype=np.float32)
        csr.sort_indices()
        self.shape = csr.shape
        self.nnz = int(csr.nnz)
        self.device = device
        transposed = csr.T.tocsr()  # (n_cols, n_rows); one row per column of X
        transposed.sort_indices()
        self._transposed = _to_torch_csr(transposed, device)
        if device.type == "cpu" and csr.shape[1] > tile_columns:
            self._tiles = [
                (start, min(start + tile_columns, csr.shape[1]),
                 _to_torch_csr(transposed[start:start + tile_columns].T.tocsr(), device))
                for start in range(0, csr.shape[1], tile_columns)
            ]
        else:
            self._tiles = [(0, csr.shape[1], _to_torch_csr(csr, device))]

    @property
    def n_tiles(self) -> int:
        return len(self._tiles)

    def matvec(self, w: torch.Tensor) -> torch.Tensor:
        """``X @ w``: (n_cols,) float32 -> (n_rows,) float32."""
        if len(self._tiles) == 1:
            return self._tiles[0][2] @ w
        out = torch.zeros(self.shape[0], dtype=w.dtype, device=w.device)
        for start, end, tile in self._tiles:
            out += tile @ w[start:end]
        return out

    def rmatvec(self, g: torch.Tensor) -> torch.Tensor:
        """``X.T @ g``: (n_rows,) float32 -> (n_cols,) float32."""
        return self._transposed @ g

    def bytes_per_epoch(self) -> dict[str, int]:
        """Bytes the two products must move per call, at minimum (each matrix entry read once).

        Per non-zero: 4 bytes value + 4 bytes column index, in each product; plus the row
        pointers, the input vector read once and the output vector written once.
        """
        n_rows, n_cols = self.shape
        forward = 8 * self.nnz + 4 * (n_rows + 1) * len(self._tiles) + 4 * n_cols + 4 * n_rows
        backward = 8 * self.nnz + 4 * (n_cols + 1) + 4 * n_rows + 4 * n_cols
        return {"forward": forward, "backward": backward, "total": forward + backward}


class _MatVec(torch.autograd.Function):
    """``y = X @ w`` with ``dL/dw = X.T @ dL/dy``; ``X`` is constant (no gradient)."""

    @staticmethod
    def forward(ctx, w: torch.Tensor, operator: SparseOperator) -> torch.Tensor:
        ctx.operator = operator
        return operator.matvec(w)

    @staticmethod
    def backward(ctx, grad_y: torch.Tensor):
        return ctx.operator.rmatvec(grad_y.contiguous()), None


def sparse_matvec(operator: SparseOperator, w: torch.Tensor) -> torch.Tensor:
    """Differentiable ``X @ w`` (float32) for a :class:`SparseOperator` ``X``."""
    return _MatVec.apply(w, operator)
