"""The fit's inputs and settings: constants, errors, hyper-parameters and presets, the problem
taken from a package (:class:`FitProblem`) and the result (:class:`FitResult`). The loss is stated
in :mod:`calibration_core.fit`."""
from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np
import pandas as pd
import scipy.sparse as sp
import torch

from ..io_utils import sha256_bytes
from ..package_io import CalibrationPackage

GAMMA = -0.1
ZETA = 1.1
CHECKPOINT_FORMAT = 1
WEIGHTS_FILE = "weights.npy"
DIAGNOSTICS_FILE = "diagnostics.csv"
EPOCHS_FILE = "epochs.csv"
PLOT_FILE = "fit_plot.png"
SUMMARY_FILE = "fit_summary.json"
TIMING_FILE = "timing.json"
CHECKPOINT_FILE = "checkpoint.pt"
SINGLE_THREAD_NNZ = 1 << 24  # below this many non-zeros the fit runs on one CPU thread

ProgressCallback = Callable[[dict], None]


class FitError(ValueError):
    """The fit cannot run on these inputs (bad package, device or hyper-parameters)."""


class CheckpointMismatchError(FitError):
    """A checkpoint was written for another package, target set, hyper-parameters or device."""


class IncompleteFitError(FitError):
    """A fit folder lacks its summary, or its files disagree with it (a fit killed between two
    outputs, or a file changed since): not a complete fit."""


@dataclass(frozen=True)
class FitHyperParameters:
    """Hyper-parameters of one fit. Every field except ``epochs``, ``refit_epochs``,
    ``checkpoint_every`` and ``log_every`` is part of the checkpoint signature (a resume must
    match it exactly; a fit may be resumed for more epochs or more refit epochs)."""

    lambda_l0: float
    lambda_l2: float
    beta: float = 0.65
    learning_rate: float = 0.15
    epochs: int = 1000
    init_keep_prob: float = 0.999
    log_weight_jitter_sd: float = 0.05
    log_alpha_jitter_sd: float = 0.01
    gamma: float = GAMMA
    zeta: float = ZETA
    seed: int = 42
    refit_epochs: int = 0
    refit_learning_rate: float = 0.05
    refit_lambda_l2: float = 0.0
    checkpoint_every: int = 100
    log_every: int = 10

    def __post_init__(self) -> None:
        checks = [
            (self.lambda_l0 >= 0, "lambda_l0 must be >= 0"),
            (self.lambda_l2 >= 0, "lambda_l2 must be >= 0"),
            (self.beta > 0, "beta must be > 0"),
            (self.learning_rate > 0, "learning_rate must be > 0"),
            (self.epochs >= 0, "epochs must be >= 0"),
            (self.refit_epochs >= 0, "refit_epochs must be >= 0"),
            (self.refit_learning_rate > 0, "refit_learning_rate must be > 0"),
            (self.refit_lambda_l2 >= 0, "refit_lambda_l2 must be >= 0"),
            (0 < self.init_keep_prob < 1, "init_keep_prob must lie in (0, 1)"),
            (self.log_weight_jitter_sd >= 0 and self.log_alpha_jitter_sd >= 0,
             "jitter standard deviations must be >= 0"),
            (self.gamma < 0 < 1 < self.zeta, "need gamma < 0 and zeta > 1"),
            (self.checkpoint_every >= 1, "checkpoint_every must be >= 1"),
            (self.log_every >= 1, "log_every must be >= 1"),
            (0 <= self.seed < 2**63, "seed must be in [0, 2**63)"),
        ]
        for ok, message in checks:
            if not ok:
                raise FitError(f"bad fit hyper-parameters: {message} (got {self})")

    def signature(self) -> dict:
        """The fields a checkpoint must match to be resumed."""
        out = dataclasses.asdict(self)
        for name in ("epochs", "refit_epochs", "checkpoint_every", "log_every"):
            out.pop(name)
        return out

    def replace(self, **overrides: Any) -> "FitHyperParameters":
        """A copy with the given non-None fields replaced; unknown names raise."""
        known = {f.name for f in dataclasses.fields(self)}
        unknown = sorted(set(overrides) - known)
        if unknown:
            raise FitError(f"unknown fit hyper-parameter(s) {unknown}; known: {sorted(known)}")
        return dataclasses.replace(self, **{k: v for k, v in overrides.items() if v is not None})


#: The reference pipeline's production settings (spec §5.3): λ_L0 1e-7 / 2e-2, λ_L2 1e-8 / 1e-12,
#: β 0.65, lr 0.15, 1000 epochs, seed 42, initial keep probability 0.999; then our refit of the
#: selected records, 1000 epochs at lr 0.05 without the L2 term (demo build: regional mean
#: |relative error| 7.0% -> 1.6% on the balanced loss; docs/methodology.md).
REFIT_EPOCHS = 1000
FIT_PRESETS: dict[str, FitHyperParameters] = {
    "regional": FitHyperParameters(lambda_l0=1e-7, lambda_l2=1e-8, refit_epochs=REFIT_EPOCHS),
    "national": FitHyperParameters(lambda_l0=2e-2, lambda_l2=1e-12, refit_epochs=REFIT_EPOCHS),
}


#: Columns of the package the presets' λ_L2 were set for: the reference's production package
#: (about 12,000 base households x 430 clones; our ``full`` build preset).
REFERENCE_COLUMNS = 12_000 * 430


def scaled_lambda_l2(lambda_l2: float, n_columns: int) -> float:
    """λ_L2 for a package of ``n_columns`` columns that penalises weights as ``lambda_l2`` does
    at :data:`REFERENCE_COLUMNS`.

    The L2 term ``λ Σ w_j²`` is not scale-free: the same population spread over ``n_columns``
    columns gives each a weight ∝ 1/n_columns, so the term grows as ``REFERENCE_COLUMNS /
    n_columns`` while the data term (relative errors) does not. Scaling λ by ``n_columns /
    REFERENCE_COLUMNS`` keeps the two in the reference's proportion. Unscaled, the reference's
    1e-8 dominated the loss of the 48,000-column demo package: weight total 53% of the
    population, mean |relative error| 34.5% (3.2% scaled; docs/methodology.md).
    """
    if n_columns <= 0:
        raise FitError(f"n_columns must be > 0 to scale lambda_l2 (got {n_columns})")
    return float(lambda_l2) * n_columns / REFERENCE_COLUMNS


def fit_preset(name: str, n_columns: Optional[int] = None, **overrides: Any
               ) -> FitHyperParameters:
    """The hyper-parameters of preset ``name`` (``regional`` | ``national``) with overrides.

    With ``n_columns`` (the package's), the preset's λ_L2 is scaled to that package size
    (:func:`scaled_lambda_l2`); an explicit ``lambda_l2`` override is used as given.
    """
    try:
        base = FIT_PRESETS[name]
    except KeyError:
        raise FitError(f"unknown fit preset {name!r}: expected one of {sorted(FIT_PRESETS)}") from None
    if n_columns is not None and overrides.get("lambda_l2") is None:
        overrides = {**overrides, "lambda_l2": scaled_lambda_l2(base.lambda_l2, n_columns)}
    return base.replace(**overrides)


def package_columns(package_dir: str | os.PathLike) -> int:
    """Columns of the package in ``package_dir`` (from ``initial_weights.npy``, memory-mapped)."""
    path = Path(package_dir) / "initial_weights.npy"
    if not path.is_file():
        raise FitError(f"{path} does not exist: {package_dir} is not a calibration package")
    return int(np.load(path, mmap_mode="r", allow_pickle=False).shape[0])


def loss_denominator(values: np.ndarray) -> np.ndarray:
    """``d = max(|y|, 1)``: (n,) float64 -> (n,) float64 (see the module docstring for why)."""
    return np.maximum(np.abs(np.asarray(values, dtype=np.float64)), 1.0)


def resolve_device(device: str = "auto") -> torch.device:
    """``auto`` -> CUDA when available, else CPU; ``cuda`` without a GPU raises FitError."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise FitError(f"device {device!r} requested but torch sees no CUDA device "
                           f"(torch {torch.__version__}); use device='auto' or 'cpu'")
        return torch.device(device)
    if device == "cpu":
        return torch.device("cpu")
    raise FitError(f"unknown device {device!r}: expected 'auto', 'cpu' or 'cuda[:n]'")


@dataclass
class FitProblem:
    """The arrays of one fit, taken from a package.

    ``matrix`` (n_targets, n_columns) CSR float32 with all rows; ``fit_rows`` (n_fit,) int64 row
    indices of the achievable in-sample targets; ``y`` and ``denominator`` (n_fit,) float64;
    ``initial_weights`` (n_columns,) float64; ``fingerprint`` the package's sha256 fingerprint;
    ``row_weight`` (n_fit,) float64, the weight ``v_i`` of each fitted row in the loss (the
    package's ``loss_weight`` column; 1 when it has none).
    """

    matrix: sp.csr_matrix
    targets: pd.DataFrame
    fit_rows: np.ndarray
    y: np.ndarray
    denominator: np.ndarray
    initial_weights: np.ndarray
    fingerprint: str
    source: str = "package"
    row_weight: Optional[np.ndarray] = None

    def __post_init__(self) -> None:
        if self.row_weight is None:
            self.row_weight = np.ones(len(self.fit_rows), dtype=np.float64)
        self.row_weight = np.asarray(self.row_weight, dtype=np.float64)
        if self.row_weight.shape != self.fit_rows.shape or not (
                np.isfinite(self.row_weight).all() and (self.row_weight >= 0).all()):
            raise FitError(f"{self.source}: row weights must be finite, >= 0 and one per fitted "
                           f"row (got shape {self.row_weight.shape})")

    @classmethod
    def from_package(cls, package: CalibrationPackage, fingerprint: str,
                     source: str = "package") -> "FitProblem":
        mask = package.fit_mask()
        if "feasible" in package.targets.columns:
            mask = mask & package.targets["feasible"].to_numpy(bool)
        fit_rows = np.flatnonzero(mask).astype(np.int64)
        if fit_rows.size == 0:
            raise FitError(f"{source}: no achievable in-sample target (achievable & feasible & "
                           "~holdout)")
        w0 = package.initial_weights
        if not np.isfinite(w0).all() or (w0 < 0).any():
            bad = int(np.flatnonzero(~np.isfinite(w0) | (w0 < 0))[0])
            raise FitError(f"{source}: initial weight of column {bad} is {w0[bad]!r}; expected a "
                           "finite value >= 0")
        values = package.targets["value"].to_numpy(dtype=np.float64)
        y = values[fit_rows]
        row_weight = (package.targets["loss_weight"].to_numpy(np.float64)[fit_rows]
                      if "loss_weight" in package.targets.columns else None)
        return cls(matrix=package.matrix, targets=package.targets, fit_rows=fit_rows, y=y,
                   denominator=loss_denominator(y), initial_weights=w0,
                   fingerprint=fingerprint, source=source, row_weight=row_weight)

    @property
    def n_columns(self) -> int:
        return self.matrix.shape[1]

    def fit_matrix(self) -> sp.csr_matrix:
        if self.fit_rows.size == self.matrix.shape[0]:
            return self.matrix
        return self.matrix[self.fit_rows]

    def targets_signature(self) -> str:
        """sha256 over the fitted rows' names, values and loss weights (float64 bytes)."""
        names = "\x1f".join(self.targets["name"].astype(str).to_numpy()[self.fit_rows])
        return sha256_bytes(names.encode() + b"\x00" + self.y.tobytes()
                            + self.row_weight.tobytes())


@dataclass
class FitResult:
    out_dir: Path
    weights_path: Path
    checkpoint_path: Path
    summary: dict
    timing: dict
    epochs: pd.DataFrame = field(repr=False)
    diagnostics: pd.DataFrame = field(repr=False)


