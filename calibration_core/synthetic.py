"""Synthetic calibration packages with a known solution, for tests and benchmarks of the fit.

Real packages come from the package builder; these have the same format and the same kind of
structure (a few non-zeros per clone-household column, count-like and dollar-like rows whose
scales differ by orders of magnitude), built without a Python loop over columns or rows.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
import scipy.sparse as sp

from .package_io import CalibrationPackage


def synthetic_package(
    n_targets: int,
    n_columns: int,
    nnz_per_column: int,
    *,
    seed: int = 0,
    holdout_share: float = 0.05,
    unachievable: int = 2,
    target_noise: float = 0.02,
    initial_noise: float = 0.5,
) -> CalibrationPackage:
    """A package whose targets are nearly reachable from a hidden weight vector.

    ``X`` (n_targets, n_columns) has ``nnz_per_column`` entries per column at uniformly drawn
    rows (duplicates summed), values ``Exp(1) * row_scale`` with row scales 1 (counts) or 1e4
    (dollars); the last ``unachievable`` rows are empty. Hidden weights ``w* ~ LogNormal(ln 50, 1)``;
    targets ``y = X w* (1 + N(0, target_noise²))``; initial weights ``w* · LogNormal(0,
    initial_noise²)``, so the fit has work to do. A ``holdout_share`` of rows is held out.
    """
    if not (n_targets > unachievable >= 0 and n_columns > 0 and 0 < nnz_per_column):
        raise ValueError(f"bad synthetic sizes: {n_targets=} {n_columns=} {nnz_per_column=} "
                         f"{unachievable=}")
    rng = np.random.default_rng(seed)
    n_live = n_targets - unachievable
    rows = rng.integers(0, n_live, size=(n_columns, nnz_per_column), dtype=np.int32)
    rows.sort(axis=1)
    row_scale = np.where(rng.random(n_targets) < 0.3, 1e4, 1.0).astype(np.float32)
    values = rng.exponential(1.0, size=rows.shape).astype(np.float32) * row_scale[rows]
    indptr = np.arange(n_columns + 1, dtype=np.int64) * nnz_per_column
    transposed = sp.csr_matrix((values.ravel(), rows.ravel(), indptr),
                               shape=(n_columns, n_targets))
    transposed.sum_duplicates()
    matrix = transposed.T.tocsr()
    hidden = rng.lognormal(np.log(50.0), 1.0, size=n_columns)
    y = np.asarray(matrix @ hidden, dtype=np.float64)
    y *= 1.0 + target_noise * rng.standard_normal(n_targets)
    initial = hidden * rng.lognormal(0.0, initial_noise, size=n_columns)
    achievable = np.diff(matrix.indptr) > 0
    holdout = (rng.random(n_targets) < holdout_share) & achievable
    targets = pd.DataFrame({
        "name": [f"target_{i:06d}" for i in range(n_targets)],
        "value": y,
        "holdout": holdout,
        "achievable": achievable,
        "variable": np.where(row_scale > 1, "dollars", "count"),
    })
    return CalibrationPackage(
        matrix=matrix, targets=targets, initial_weights=initial,
        metadata={"synthetic": True, "seed": seed, "n_records": n_columns, "n_clones": 1},
    )
