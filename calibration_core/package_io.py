"""The calibration package on disk: the contract between the package builder and the weight fit.

A package is a folder holding

* ``matrix.npz`` - ``scipy.sparse`` CSR, float32, shape (n_targets, n_columns): entry (i, j) is
  the contribution of clone-household j (column ``clone * n_records + record``) to target i;
* ``targets.parquet`` - one row per matrix row, in row order, with at least the columns
  ``name`` (unique str), ``value`` (float64, the target uprated to the year), ``holdout`` (bool:
  kept out of the fit, scored by validation) and ``achievable`` (bool: the row has a non-zero);
  descriptive columns (variable, geo_level, geo_id, domain, source, ...) may follow;
* ``initial_weights.npy`` - float64 (n_columns,);
* ``metadata.json`` - JSON: n_records, n_clones, year, input sha256s, build figures, ...

No pickle anywhere: ``load_package`` reads with ``allow_pickle=False``. Every file is a function
of the inputs: equal inputs give byte-identical packages (the build's timings, in memory as
``metadata[...]_seconds``, are left out of ``metadata.json``; the asset reports them to Dagster).
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp

from .io_utils import atomic_folder, sha256_bytes, sha256_file

MATRIX_FILE = "matrix.npz"
TARGETS_FILE = "targets.parquet"
WEIGHTS_FILE = "initial_weights.npy"
METADATA_FILE = "metadata.json"
REQUIRED_TARGET_COLUMNS = ("name", "value", "holdout", "achievable")
#: Metadata of a build that is not a function of its inputs: kept in memory, never saved.
TIMING_METADATA_KEYS = ("select_seconds", "assembly_seconds", "build_seconds")


class PackageError(ValueError):
    """A calibration package is missing, inconsistent or malformed."""


@dataclass
class CalibrationPackage:
    matrix: sp.csr_matrix
    targets: pd.DataFrame
    initial_weights: np.ndarray
    metadata: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.matrix = sp.csr_matrix(self.matrix, dtype=np.float32)
        self.matrix.sort_indices()
        self.initial_weights = np.asarray(self.initial_weights, dtype=np.float64)
        self.validate()

    @property
    def n_targets(self) -> int:
        return self.matrix.shape[0]

    @property
    def n_columns(self) -> int:
        return self.matrix.shape[1]

    def validate(self, source: str = "package") -> None:
        missing = [c for c in REQUIRED_TARGET_COLUMNS if c not in self.targets.columns]
        if missing:
            raise PackageError(f"{source}: targets table lacks column(s) {missing}")
        if len(self.targets) != self.n_targets:
            raise PackageError(
                f"{source}: {len(self.targets)} target rows but the matrix has {self.n_targets} rows"
            )
        if self.initial_weights.shape != (self.n_columns,):
            raise PackageError(
                f"{source}: initial weights have shape {self.initial_weights.shape}, expected "
                f"({self.n_columns},)"
            )
        if self.targets["name"].duplicated().any():
            dup = self.targets.loc[self.targets["name"].duplicated(), "name"].iloc[0]
            raise PackageError(f"{source}: duplicated target name {dup!r}")
        if not np.isfinite(self.targets["value"].to_numpy(dtype=float)).all():
            bad = self.targets.loc[~np.isfinite(self.targets["value"].astype(float)), "name"]
            raise PackageError(f"{source}: non-finite target value for {bad.iloc[0]!r}")
        if not np.isfinite(self.matrix.data).all():
            raise PackageError(f"{source}: matrix has non-finite entries")

    def fit_mask(self) -> np.ndarray:
        """Rows the loss uses: achievable in-sample targets."""
        return (self.targets["achievable"].to_numpy(bool)
                & ~self.targets["holdout"].to_numpy(bool))


def save_package(package: CalibrationPackage, folder: str | os.PathLike) -> Path:
    """Write the package into ``folder`` atomically, all files together (a sibling temporary
    folder, then renamed into place: :func:`calibration_core.io_utils.atomic_folder`)."""
    folder = Path(folder)
    with atomic_folder(folder) as tmp:
        sp.save_npz(tmp / MATRIX_FILE, package.matrix, compressed=True)
        package.targets.reset_index(drop=True).to_parquet(tmp / TARGETS_FILE, index=False)
        np.save(tmp / WEIGHTS_FILE, package.initial_weights, allow_pickle=False)
        (tmp / METADATA_FILE).write_text(json.dumps(saved_metadata(package), indent=2,
                                                    sort_keys=True, default=str))
    return folder


def saved_metadata(package: CalibrationPackage) -> dict:
    """What ``metadata.json`` holds: the package's metadata without its timings
    (:data:`TIMING_METADATA_KEYS`), plus the matrix shape and non-zero count."""
    meta = {k: v for k, v in package.metadata.items() if k not in TIMING_METADATA_KEYS}
    meta["shape"] = list(package.matrix.shape)
    meta["nnz"] = int(package.matrix.nnz)
    return meta


def load_package(folder: str | os.PathLike) -> CalibrationPackage:
    folder = Path(folder)
    for name in (MATRIX_FILE, TARGETS_FILE, WEIGHTS_FILE, METADATA_FILE):
        if not (folder / name).is_file():
            raise PackageError(f"calibration package {folder} lacks {name}")
    matrix = sp.load_npz(folder / MATRIX_FILE).tocsr()
    targets = pd.read_parquet(folder / TARGETS_FILE)
    weights = np.load(folder / WEIGHTS_FILE, allow_pickle=False)
    metadata = json.loads((folder / METADATA_FILE).read_text())
    package = CalibrationPackage.__new__(CalibrationPackage)
    package.matrix, package.targets, package.initial_weights, package.metadata = (
        sp.csr_matrix(matrix, dtype=np.float32), targets, weights.astype(np.float64), metadata)
    package.validate(source=str(folder))
    return package


def package_fingerprint(folder: str | os.PathLike) -> str:
    """sha256 over the package's files: a checkpoint or weights file records it and refuses others."""
    folder = Path(folder)
    parts = [f"{name}:{sha256_file(folder / name)}"
             for name in (MATRIX_FILE, TARGETS_FILE, WEIGHTS_FILE)]
    return sha256_bytes("\n".join(parts).encode())
