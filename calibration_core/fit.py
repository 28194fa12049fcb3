"""L0-regularised calibration weights: the fit of spec §5, fast, exactly resumable and observable.

The problem
-----------
Given a calibration package (``X`` of shape (n_targets, n_columns), targets ``y``, initial weights
``w0``, per-row loss weights ``v``), find per-column log-weights ``θ`` and Hard Concrete gate
logits ``a`` (both (n_columns,)) that minimise, by Adam with one full-batch step per epoch,

    L(θ, a) = Σ_{i ∈ F} v_i ((X_i · w − y_i) / d_i)²  +  λ_L0 · Σ_j P(z_j ≠ 0)  +  λ_L2 · Σ_j exp(θ_j)²

where

* ``w_j = exp(θ_j) · z_j`` and the gate ``z_j = clip(sigmoid((ln u − ln(1 − u) + a_j)/β)(ζ − γ) + γ,
  0, 1)`` with ``u ~ U(1e-6, 1 − 1e-6)`` drawn afresh every epoch (the final weights use the
  deterministic gate ``clip(sigmoid(a_j/β)(ζ − γ) + γ, 0, 1)``); γ = −0.1, ζ = 1.1;
* ``P(z_j ≠ 0) = sigmoid(a_j − β ln(−γ/ζ))`` (the expected number of active records);
* ``F`` = the achievable, feasible in-sample rows (``targets.achievable & targets.feasible &
  ~targets.holdout``). Unachievable rows (all-zero) cannot be moved by any weight and only add a
  constant; infeasible rows (:mod:`calibration_core.fit_rows`: zero target, opposite sign,
  unreachable within a bound) would dominate the loss; hold-out rows are scored, never fitted
  (the reference keeps all of them in its loss, spec §7 pitfall 11);
* ``v_i`` = the package's ``loss_weight`` column (1 when absent): the balanced loss of
  :mod:`calibration_core.fit_rows`, ``v_i = |F| g_G / (n_G Σ_G' g_G')`` for row ``i`` of group
  ``G`` (family x geographic level by default, ``n_G`` fitted rows, configured weight ``g_G``),
  so every group counts in proportion to ``g_G`` whatever its size and ``Σ v = |F|``;
* ``d_i = max(|y_i|, 1)``. The reference divides by ``y + 1``: the same for large positive targets,
  but it divides by zero at ``y = −1``, shrinks the denominator of negative targets (the AGI of the
  ``< $1`` band) and is not the relative error that is reported. ``max(|y|, 1)`` is exactly the
  reported relative error ``(X·w − y)/|y|`` for every target of magnitude ≥ 1, and the absolute
  error (no division by zero) for targets near 0. ``diagnostics.csv`` uses the same denominator.

The refit (``refit_epochs`` > 0): after the L0 epochs the gates are fixed at their deterministic
values, the records with ``w_j > 0`` (the set ``A``) are kept, and Adam (``refit_learning_rate``)
minimises over ``φ`` ((|A|,), initialised at ``ln w_j``)

    R(φ) = Σ_{i ∈ F} v_i ((Σ_{j ∈ A} X_ij exp(φ_j) − y_i) / d_i)²  +  λ_R · Σ_{j ∈ A} exp(φ_j)²

(the same data term, no L0 term, no gate noise; ``λ_R`` = ``refit_lambda_l2``, default 0: the
L2 term's only purpose is to keep the gated fit's weights from running away while records are
being selected, and at the reference's proportion it holds the weight total below the
population, see docs/methodology.md); the final weights are ``exp(φ)`` on ``A`` and 0
elsewhere. The fit summary reports the data loss and errors before and after (``refit``).

Initialisation (as the reference): ``θ = ln(w0 + 1e-8) + N(0, 0.05²)``,
``a = logit(init_keep_prob) + N(0, 0.01²)``, all draws from one ``torch.Generator`` seeded with
``seed``. Unlike the reference, one Adam optimiser lives for the whole run (its moments are not
reset at every log interval) and the checkpoint holds the optimiser and generator state, so a fit
killed and resumed ends with bit-identical weights (same device type and thread count); the
checkpoint of a refit holds its columns, parameters and optimiser too.

Outputs of :func:`run_fit` in ``out_dir``: ``weights.npy`` (float64, (n_columns,)),
``diagnostics.csv``, ``epochs.csv``, ``fit_plot.png``, ``fit_summary.json`` (deterministic) and
``timing.json`` (wall time, device; not deterministic: the one file of the folder that differs
between two identical fits). The checkpoint (default ``out_dir/checkpoint.pt``) is one file per
fit, byte-identical for identical fits. The outputs are published together: the old summary is
removed first and the new one written last, listing the sha256 of every other output, so a fit
killed between two files leaves a folder that :func:`read_fit_outputs` refuses as incomplete
(the next run resumes from the checkpoint and completes it).

CLI: ``python -m calibration_core.fit --package DIR --out DIR --preset regional [--epochs N]``.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np
import pandas as pd
import scipy.sparse as sp
import torch

from ._sparse_ops import DEFAULT_TILE_COLUMNS, SparseOperator, sparse_matvec
from .io_utils import atomic_path, atomic_write_bytes, atomic_write_json, sha256_bytes, sha256_file
from .package_io import CalibrationPackage, load_package, package_fingerprint

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


# ------------------------------------------------------------------------------------------------
# The model


class _L0State:
    """Parameters, optimiser, generator and history of one fit on one device."""

    HISTORY_COLUMNS = ("loss", "data_loss", "l0_expected_active", "l2_penalty")
    EVAL_COLUMNS = ("epoch", "eval_data_loss", "mean_abs_rel_error", "max_abs_rel_error",
                    "active_records")

    def __init__(self, problem: FitProblem, hp: FitHyperParameters, device: torch.device) -> None:
        self.hp = hp
        self.device = device
        self.generator = torch.Generator(device=device)
        self.generator.manual_seed(int(hp.seed))
        n = problem.n_columns
        keep_logit = math.log(hp.init_keep_prob / (1.0 - hp.init_keep_prob))
        log_alpha = torch.full((n,), keep_logit, dtype=torch.float32, device=device)
        if hp.log_alpha_jitter_sd > 0:
            log_alpha += hp.log_alpha_jitter_sd * torch.randn(
                n, generator=self.generator, device=device, dtype=torch.float32)
        log_weight = torch.log(torch.as_tensor(problem.initial_weights + 1e-8,
                                               dtype=torch.float32).to(device))
        if hp.log_weight_jitter_sd > 0:
            log_weight += hp.log_weight_jitter_sd * torch.randn(
                n, generator=self.generator, device=device, dtype=torch.float32)
        self.log_weight = log_weight.requires_grad_(True)
        self.log_alpha = log_alpha.requires_grad_(True)
        self.optimizer = torch.optim.Adam([self.log_weight, self.log_alpha],
                                          lr=hp.learning_rate, fused=True)
        self.epoch = 0
        # the refit (after the L0 epochs): active columns, their log-weights and optimiser
        self.refit_epoch = 0
        self.refit_columns: Optional[torch.Tensor] = None
        self.refit_log_weight: Optional[torch.Tensor] = None
        self.refit_optimizer: Optional[torch.optim.Optimizer] = None
        self.history = np.zeros((0, len(self.HISTORY_COLUMNS)), dtype=np.float64)
        self.evals = np.zeros((0, len(self.EVAL_COLUMNS)), dtype=np.float64)
        self.l0_shift = -hp.beta * math.log(-hp.gamma / hp.zeta)

    # gates --------------------------------------------------------------------------------------
    def sample_gates(self) -> torch.Tensor:
        hp = self.hp
        u = torch.rand(self.log_alpha.shape, generator=self.generator, device=self.device,
                       dtype=torch.float32).clamp_(1e-6, 1 - 1e-6)
        noise = torch.log(u) - torch.log1p(-u)  # ln u − ln(1 − u)
        s = torch.sigmoid((noise + self.log_alpha) / hp.beta)
        return torch.clamp(s * (hp.zeta - hp.gamma) + hp.gamma, 0.0, 1.0)

    @torch.no_grad()
    def deterministic_weights(self) -> torch.Tensor:
        hp = self.hp
        z = torch.clamp(torch.sigmoid(self.log_alpha / hp.beta) * (hp.zeta - hp.gamma) + hp.gamma,
                        0.0, 1.0)
        return torch.exp(self.log_weight) * z

    @torch.no_grad()
    def weights(self) -> torch.Tensor:
        """The current final weights: the refit's once it started, else the gated weights."""
        if self.refit_columns is None:
            return self.deterministic_weights()
        w = torch.zeros_like(self.log_weight)
        w[self.refit_columns.to(self.device)] = torch.exp(self.refit_log_weight)
        return w

    @property
    def total_epochs(self) -> int:
        return self.epoch + self.refit_epoch

    # one epoch ----------------------------------------------------------------------------------
    def step(self, operator: SparseOperator, y: torch.Tensor, loss_scale: torch.Tensor
             ) -> torch.Tensor:
        """One Adam step; returns a (4,) tensor: loss, data loss, E[active], Σ exp(θ)².
        ``loss_scale`` = sqrt(v) / d per fitted row."""
        hp = self.hp
        gates = self.sample_gates()
        scale = torch.exp(self.log_weight)
        estimate = sparse_matvec(operator, scale * gates)
        residual = (estimate - y) * loss_scale
        data_loss = residual.square().sum()
        l0 = torch.sigmoid(self.log_alpha + self.l0_shift).sum()
        l2 = scale.square().sum()
        loss = data_loss + hp.lambda_l0 * l0 + hp.lambda_l2 * l2
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        return torch.stack([loss, data_loss, l0, l2]).detach()

    def start_refit(self) -> None:
        """Fix the gates: the refit fits ``ln w`` of the records the L0 fit kept."""
        w = self.deterministic_weights()
        columns = torch.nonzero(w > 0).flatten()
        self.refit_columns = columns.cpu()
        self.refit_log_weight = torch.log(w[columns]).detach().clone().requires_grad_(True)
        self.refit_optimizer = torch.optim.Adam([self.refit_log_weight],
                                                lr=self.hp.refit_learning_rate, fused=True)
        self.refit_epoch = 0

    def refit_step(self, operator: SparseOperator, y: torch.Tensor, loss_scale: torch.Tensor
                   ) -> torch.Tensor:
        """One Adam step of the refit on the active columns (``operator`` = their columns of
        the fitted rows); returns loss, data loss, active records, Σ w²."""
        w = torch.exp(self.refit_log_weight)
        residual = (sparse_matvec(operator, w) - y) * loss_scale
        data_loss = residual.square().sum()
        l2 = w.square().sum()
        loss = data_loss + self.hp.refit_lambda_l2 * l2
        self.refit_optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.refit_optimizer.step()
        active = torch.tensor(float(w.numel()), dtype=loss.dtype, device=loss.device)
        return torch.stack([loss, data_loss, active, l2]).detach()

    @torch.no_grad()
    def evaluate(self, operator: SparseOperator, y: torch.Tensor, inv_d: torch.Tensor,
                 row_weight: torch.Tensor) -> list:
        """[epoch, Σ v rel², mean |rel|, max |rel|, active] at the current final weights."""
        w = self.weights()
        rel = (operator.matvec(w) - y) * inv_d
        abs_rel = rel.abs()
        return [float(self.total_epochs), float((row_weight * rel.square()).sum()),
                float(abs_rel.mean()), float(abs_rel.max()), float((w > 0).sum())]

    # checkpoint ---------------------------------------------------------------------------------
    def state_dict(self, signature: dict) -> dict:
        def cpu(obj):
            if isinstance(obj, torch.Tensor):
                return obj.detach().cpu()
            if isinstance(obj, dict):
                return {k: cpu(v) for k, v in obj.items()}
            if isinstance(obj, list):
                return [cpu(v) for v in obj]
            return obj

        return {
            "format_version": CHECKPOINT_FORMAT,
            "signature": signature,
            "epoch": int(self.epoch),
            "log_weight": cpu(self.log_weight),
            "log_alpha": cpu(self.log_alpha),
            "optimizer": cpu(self.optimizer.state_dict()),
            "rng_state": self.generator.get_state().cpu(),
            "history": torch.from_numpy(self.history.copy()),
            "evals": torch.from_numpy(self.evals.copy()),
            "refit": None if self.refit_columns is None else {
                "epoch": int(self.refit_epoch),
                "columns": self.refit_columns.clone(),
                "log_weight": cpu(self.refit_log_weight),
                "optimizer": cpu(self.refit_optimizer.state_dict()),
            },
        }

    def load_state_dict(self, state: dict) -> None:
        with torch.no_grad():
            self.log_weight.copy_(state["log_weight"].to(self.device))
            self.log_alpha.copy_(state["log_alpha"].to(self.device))
        self.optimizer.load_state_dict(state["optimizer"])
        self.generator.set_state(state["rng_state"])
        self.epoch = int(state["epoch"])
        self.history = state["history"].numpy().astype(np.float64)
        self.evals = state["evals"].numpy().astype(np.float64)
        refit = state.get("refit")
        if refit is not None:
            self.refit_columns = refit["columns"].to(torch.int64)
            self.refit_log_weight = refit["log_weight"].to(self.device).clone().requires_grad_(
                True)
            self.refit_optimizer = torch.optim.Adam([self.refit_log_weight],
                                                    lr=self.hp.refit_learning_rate, fused=True)
            self.refit_optimizer.load_state_dict(refit["optimizer"])
            self.refit_epoch = int(refit["epoch"])


def _signature(problem: FitProblem, hp: FitHyperParameters, device: torch.device) -> dict:
    return {
        "package_fingerprint": problem.fingerprint,
        "targets_sha256": problem.targets_signature(),
        "n_columns": int(problem.n_columns),
        "n_fit_targets": int(problem.fit_rows.size),
        "device_type": device.type,
        "hyper_parameters": hp.signature(),
    }


def _signature_differences(saved: dict, wanted: dict) -> list[str]:
    diffs = []
    for key in sorted(set(saved) | set(wanted)):
        a, b = saved.get(key), wanted.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            diffs += [f"hyper-parameter {k}: checkpoint {a.get(k)!r}, requested {b.get(k)!r}"
                      for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]
        elif a != b:
            diffs.append(f"{key}: checkpoint {a!r}, requested {b!r}")
    return diffs


def checkpoint_bytes(state: dict) -> bytes:
    """``torch.save`` of ``state`` into memory: equal states give equal bytes.

    ``torch.save`` to a path names the zip's records after the file's stem (under
    ``atomic_path``, a temporary random name), so every write differed; into a buffer they are
    always ``archive/...``.
    """
    import io

    buffer = io.BytesIO()
    torch.save(state, buffer)
    return buffer.getvalue()


def write_checkpoint(path: str | os.PathLike, state: dict) -> Path:
    """Write a checkpoint atomically (temporary sibling, fsync, rename)."""
    return atomic_write_bytes(path, checkpoint_bytes(state))


def read_checkpoint(path: str | os.PathLike) -> dict:
    """Load a checkpoint (``torch.load(weights_only=True)``: tensors, dicts, numbers, strings)."""
    path = Path(path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unreadable file gets the same clear message
        raise FitError(f"checkpoint {path} cannot be read ({type(exc).__name__}: {exc}); "
                       "delete it to start the fit afresh") from exc
    if not isinstance(state, dict) or state.get("format_version") != CHECKPOINT_FORMAT:
        raise FitError(f"checkpoint {path} is not a format-{CHECKPOINT_FORMAT} fit checkpoint")
    return state


def check_checkpoint(path: str | os.PathLike, state: dict, signature: dict, epochs: int,
                     refit_epochs: Optional[int] = None) -> None:
    """Raise CheckpointMismatchError unless ``state`` was written for ``signature``."""
    diffs = _signature_differences(state.get("signature", {}), signature)
    if diffs:
        raise CheckpointMismatchError(
            f"checkpoint {path} belongs to another fit and was not resumed: " + "; ".join(diffs)
            + ". Delete it (or run with resume disabled) to start afresh.")
    if int(state["epoch"]) > epochs:
        raise CheckpointMismatchError(
            f"checkpoint {path} is at epoch {state['epoch']}, past the requested {epochs} epochs; "
            "delete it or ask for at least as many epochs")
    refit = state.get("refit")
    if refit is not None:
        if int(state["epoch"]) != epochs:
            raise CheckpointMismatchError(
                f"checkpoint {path} started its refit after {state['epoch']} L0 epochs, not the "
                f"requested {epochs}; delete it or ask for {state['epoch']} epochs")
        if refit_epochs is not None and int(refit["epoch"]) > refit_epochs:
            raise CheckpointMismatchError(
                f"checkpoint {path} is at refit epoch {refit['epoch']}, past the requested "
                f"{refit_epochs}; delete it or ask for at least as many refit epochs")


# ------------------------------------------------------------------------------------------------
# The whole fit


def run_fit(
    package_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    hp: FitHyperParameters,
    *,
    checkpoint_path: str | os.PathLike | None = None,
    resume: bool = True,
    device: str = "auto",
    threads: Optional[int] = None,
    progress: Optional[ProgressCallback] = None,
    on_checkpoint_mismatch: str = "error",
    tile_columns: int = DEFAULT_TILE_COLUMNS,
) -> FitResult:
    """Fit L0 weights to the package in ``package_dir`` and write the outputs into ``out_dir``.

    Parameters
    ----------
    package_dir : folder written by :func:`calibration_core.package_io.save_package`.
    out_dir : output folder (created); every file is written atomically.
    hp : hyper-parameters (see :data:`FIT_PRESETS`).
    checkpoint_path : the fit's one checkpoint file (default ``out_dir/checkpoint.pt``), written
        every ``hp.checkpoint_every`` epochs and at the end.
    resume : continue from ``checkpoint_path`` when it exists. A checkpoint of another package,
        target set, hyper-parameters or device type raises :class:`CheckpointMismatchError`.
    device : ``auto`` | ``cpu`` | ``cuda[:n]``.
    threads : torch intra-op threads for this call. None: 1 for matrices under
        ``SINGLE_THREAD_NNZ`` non-zeros (there a second thread costs more in synchronisation than
        it gains, and on a busy machine far more), else torch's default (the core count).
        Results are bit-identical for a given thread count.
    progress : called with a dict at every log interval (``event="epoch"``), after every
        checkpoint (``event="checkpoint"``), when a checkpoint is discarded
        (``event="checkpoint_discarded"``) and at the end (``event="done"``). An exception it
        raises stops the fit (the last checkpoint stays).
    on_checkpoint_mismatch : ``error`` (default) raises :class:`CheckpointMismatchError` for a
        checkpoint of another fit; ``restart`` reports it and starts afresh (the stale file is
        overwritten at the first checkpoint).

    Returns
    -------
    FitResult with the summary figures that also go to ``fit_summary.json``.
    """
    package_dir, out_dir = Path(package_dir), Path(out_dir)
    checkpoint_path = Path(checkpoint_path) if checkpoint_path else out_dir / CHECKPOINT_FILE
    if not isinstance(hp, FitHyperParameters):
        raise FitError(f"hp must be FitHyperParameters, got {type(hp).__name__}")
    if on_checkpoint_mismatch not in ("error", "restart"):
        raise FitError("on_checkpoint_mismatch must be 'error' or 'restart', got "
                       f"{on_checkpoint_mismatch!r}")
    dev = resolve_device(device)
    notify = progress or (lambda event: None)
    previous_threads = torch.get_num_threads()
    try:
        t0 = time.perf_counter()
        package = load_package(package_dir)
        if threads or package.matrix.nnz < SINGLE_THREAD_NNZ:
            torch.set_num_threads(int(threads or 1))
        problem = FitProblem.from_package(package, package_fingerprint(package_dir),
                                          source=str(package_dir))
        signature = _signature(problem, hp, dev)
        saved = None
        if resume and checkpoint_path.exists():
            saved = read_checkpoint(checkpoint_path)
            try:
                check_checkpoint(checkpoint_path, saved, signature, hp.epochs, hp.refit_epochs)
            except CheckpointMismatchError as exc:
                if on_checkpoint_mismatch != "restart":
                    raise
                notify({"event": "checkpoint_discarded", "path": str(checkpoint_path),
                        "reason": str(exc)})
                saved = None
        operator = SparseOperator(problem.fit_matrix(), dev, tile_columns=tile_columns)
        y = torch.as_tensor(problem.y, dtype=torch.float32).to(dev)
        inv_d = torch.as_tensor(1.0 / problem.denominator, dtype=torch.float32).to(dev)
        row_weight = torch.as_tensor(problem.row_weight, dtype=torch.float32).to(dev)
        loss_scale = torch.as_tensor(np.sqrt(problem.row_weight) / problem.denominator,
                                     dtype=torch.float32).to(dev)
        state = _L0State(problem, hp, dev)
        if saved is not None:
            state.load_state_dict(saved)
        resumed_from = state.epoch
        refit_resumed_from = state.refit_epoch
        setup_seconds = time.perf_counter() - t0
        if state.epoch == 0 and len(state.evals) == 0:
            state.evals = np.asarray([state.evaluate(operator, y, inv_d, row_weight)])

        pending: list[torch.Tensor] = []

        def bookkeeping(done: int, total: int, phase: str, started: float, first: int) -> None:
            """After an epoch of ``phase``: flush the history, evaluate, checkpoint, report."""
            nonlocal pending
            log_now = done % hp.log_every == 0 or done == total
            ckpt_now = done % hp.checkpoint_every == 0 or done == total
            if log_now or ckpt_now:
                state.history = np.vstack(
                    [state.history, torch.stack(pending).cpu().numpy().astype(np.float64)])
                pending = []
            if log_now:
                state.evals = np.vstack([state.evals,
                                         state.evaluate(operator, y, inv_d, row_weight)])
            if ckpt_now:
                write_checkpoint(checkpoint_path, state.state_dict(signature))
            if log_now:
                elapsed = time.perf_counter() - started
                notify({"event": "epoch", "phase": phase, "epoch": done, "epochs": total,
                        "loss": float(state.history[-1, 0]),
                        "mean_abs_rel_error": float(state.evals[-1, 2]),
                        "max_abs_rel_error": float(state.evals[-1, 3]),
                        "active_records": int(state.evals[-1, 4]),
                        "elapsed_s": elapsed,
                        "epochs_per_second": (done - first) / elapsed if elapsed > 0
                        else float("nan")})
            if ckpt_now:
                notify({"event": "checkpoint", "epoch": state.total_epochs,
                        "path": str(checkpoint_path)})

        t_train = time.perf_counter()
        while state.epoch < hp.epochs:
            pending.append(state.step(operator, y, loss_scale))
            state.epoch += 1
            bookkeeping(state.epoch, hp.epochs, "l0", t_train, resumed_from)
        if hp.epochs == 0 or resumed_from == hp.epochs:
            # nothing trained in this call; make sure the checkpoint exists for the record
            if not checkpoint_path.exists():
                write_checkpoint(checkpoint_path, state.state_dict(signature))
        train_seconds = time.perf_counter() - t_train
        epochs_run = hp.epochs - resumed_from

        t_refit = time.perf_counter()
        refit_operator = None
        if hp.refit_epochs > 0:
            if state.refit_columns is None:
                state.start_refit()
            refit_operator = SparseOperator(
                problem.fit_matrix()[:, state.refit_columns.numpy()], dev,
                tile_columns=tile_columns)
            while state.refit_epoch < hp.refit_epochs:
                pending.append(state.refit_step(refit_operator, y, loss_scale))
                state.refit_epoch += 1
                bookkeeping(state.refit_epoch, hp.refit_epochs, "refit", t_refit,
                            refit_resumed_from)
        refit_seconds = time.perf_counter() - t_refit
        refit_run = max(0, hp.refit_epochs - refit_resumed_from) if hp.refit_epochs else 0

        weights = state.weights().cpu().numpy().astype(np.float64)
        result = _write_outputs(out_dir, problem, hp, state, weights, checkpoint_path)
        timing = {
            "device": str(dev), "threads": torch.get_num_threads(),
            "setup_seconds": round(setup_seconds, 3),
            "train_seconds": round(train_seconds, 3),
            "epochs_run": int(epochs_run), "resumed_from_epoch": int(resumed_from),
            "epochs_per_second": (epochs_run / train_seconds) if train_seconds > 0 and epochs_run
            else None,
            "seconds_per_epoch": (train_seconds / epochs_run) if epochs_run else None,
            "matrix_nnz_fit": operator.nnz, "forward_tiles": operator.n_tiles,
            "matrix_bytes_per_epoch": operator.bytes_per_epoch()["total"],
            "refit_seconds": round(refit_seconds, 3) if hp.refit_epochs else None,
            "refit_epochs_run": int(refit_run),
            "refit_seconds_per_epoch": (refit_seconds / refit_run) if refit_run else None,
            "refit_matrix_nnz": refit_operator.nnz if refit_operator is not None else None,
        }
        atomic_write_json(out_dir / TIMING_FILE, timing)
        result.timing = timing
        notify({"event": "done", **{k: result.summary[k] for k in (
            "epochs", "final_loss", "mean_abs_rel_error", "active_records")}, **timing})
        return result
    finally:
        torch.set_num_threads(previous_threads)


def _write_outputs(out_dir: Path, problem: FitProblem, hp: FitHyperParameters, state: _L0State,
                   weights: np.ndarray, checkpoint_path: Path) -> FitResult:
    """weights.npy, diagnostics.csv, epochs.csv, fit_plot.png, then fit_summary.json (last).

    The previous summary is removed first: from then until the new one is written the folder
    reads as incomplete (:func:`read_fit_outputs`), never as a mix of two fits.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / SUMMARY_FILE).unlink(missing_ok=True)
    weights_path = out_dir / WEIGHTS_FILE
    with atomic_path(weights_path, suffix=".npy") as tmp:
        np.save(tmp, weights, allow_pickle=False)

    targets = problem.targets
    values = targets["value"].to_numpy(dtype=np.float64)
    estimate = np.asarray(problem.matrix @ weights, dtype=np.float64)
    rel = (estimate - values) / loss_denominator(values)
    in_fit = np.zeros(len(targets), dtype=bool)
    in_fit[problem.fit_rows] = True
    v = np.zeros(len(targets), dtype=np.float64)
    v[problem.fit_rows] = problem.row_weight
    diagnostics = pd.DataFrame({
        "target": targets["name"].astype(str).to_numpy(),
        "value": values, "estimate": estimate, "rel_error": rel, "abs_rel_error": np.abs(rel),
        "achievable": targets["achievable"].to_numpy(bool),
        "holdout": targets["holdout"].to_numpy(bool), "in_fit": in_fit, "loss_weight": v,
    })
    with atomic_path(out_dir / DIAGNOSTICS_FILE, suffix=".csv") as tmp:
        diagnostics.to_csv(tmp, index=False, float_format="%.10g", lineterminator="\n")

    epochs = epoch_table(state.history, state.evals, l0_epochs=state.epoch)
    with atomic_path(out_dir / EPOCHS_FILE, suffix=".csv") as tmp:
        epochs.to_csv(tmp, index=False, float_format="%.10g", lineterminator="\n")
    atomic_write_bytes(out_dir / PLOT_FILE, plot_fit_history(epochs))

    fitted = np.abs(rel[in_fit])
    holdout_rows = diagnostics["holdout"].to_numpy() & diagnostics["achievable"].to_numpy()
    data_loss = float(np.sum(v * rel ** 2))
    l0_active = float(torch.sigmoid(state.log_alpha.detach() + state.l0_shift).double().sum())
    l2 = float(torch.exp(state.log_weight.detach()).double().square().sum())
    if state.refit_columns is not None:  # the refit's loss: no L0 term, L2 on its weights
        l2 = float(np.square(weights).sum())
    active = int(np.count_nonzero(weights > 0))
    group = _loss_groups(targets)
    by_group = (pd.DataFrame({"group": group[in_fit], "e": np.abs(rel[in_fit])})
                .groupby("group", sort=True)["e"].mean())
    refit = None
    if state.refit_columns is not None:
        ev = epochs.dropna(subset=["mean_abs_rel_error"]).set_index("epoch")
        before, after = ev.loc[state.epoch], ev.loc[state.total_epochs]
        refit = {"epochs": int(state.refit_epoch), "records": int(len(state.refit_columns)),
                 "before": {"data_loss": float(before["eval_data_loss"]),
                            "mean_abs_rel_error": float(before["mean_abs_rel_error"]),
                            "max_abs_rel_error": float(before["max_abs_rel_error"])},
                 "after": {"data_loss": float(after["eval_data_loss"]),
                           "mean_abs_rel_error": float(after["mean_abs_rel_error"]),
                           "max_abs_rel_error": float(after["max_abs_rel_error"])}}
    summary = {
        "package_fingerprint": problem.fingerprint,
        "hyper_parameters": dataclasses.asdict(hp),
        "epochs": int(state.epoch),
        "n_columns": int(problem.n_columns),
        "n_targets": int(len(targets)),
        "n_fit_targets": int(in_fit.sum()),
        "n_holdout_targets": int(diagnostics["holdout"].sum()),
        "n_unachievable_targets": int((~diagnostics["achievable"]).sum()),
        "loss_denominator": "max(|value|, 1)",
        "loss_weights": ("uniform" if np.all(problem.row_weight == 1.0) else "balanced"),
        "final_loss": (data_loss + hp.refit_lambda_l2 * l2 if state.refit_columns is not None
                       else data_loss + hp.lambda_l0 * l0_active + hp.lambda_l2 * l2),
        "final_data_loss": data_loss,
        "final_unweighted_data_loss": float(np.sum(rel[in_fit] ** 2)),
        "final_training_loss": float(state.history[-1, 0]) if len(state.history) else None,
        "mean_abs_rel_error": float(fitted.mean()),
        "median_abs_rel_error": float(np.median(fitted)),
        "max_abs_rel_error": float(fitted.max()),
        "worst_target": str(diagnostics["target"].to_numpy()[in_fit][int(np.argmax(fitted))]),
        "holdout_mean_abs_rel_error": (float(np.abs(rel[holdout_rows]).mean())
                                       if holdout_rows.any() else None),
        "group_mean_abs_rel_error": {k: float(x) for k, x in by_group.items()},
        "refit": refit,
        "active_records": active,
        "sparsity": 1.0 - active / max(problem.n_columns, 1),
        "expected_active_records": l0_active,  # of the L0 phase's gates
        "weight_sum": float(weights.sum()),
        "checkpoint": _relative_to(checkpoint_path, out_dir),
    }
    summary = seal_fit_outputs(out_dir, summary)
    return FitResult(out_dir=out_dir, weights_path=weights_path, checkpoint_path=checkpoint_path,
                     summary=summary, timing={}, epochs=epochs, diagnostics=diagnostics)


def _loss_groups(targets: pd.DataFrame) -> np.ndarray:
    """``family @ geo_level`` of every row (``name`` when the table has no family)."""
    if {"family", "geo_level"} <= set(targets.columns):
        return (targets["family"].astype(str) + " @ " + targets["geo_level"].astype(str)
                ).to_numpy()
    return targets["name"].astype(str).to_numpy()


def _relative_to(path: Path, folder: Path) -> str:
    """``path`` relative to ``folder`` (POSIX): no absolute path in a deterministic file."""
    return Path(os.path.relpath(Path(path).resolve(), Path(folder).resolve())).as_posix()


#: The outputs a summary vouches for (every one but the summary, timing.json and the checkpoint).
OUTPUT_FILES = (WEIGHTS_FILE, DIAGNOSTICS_FILE, EPOCHS_FILE, PLOT_FILE)


def seal_fit_outputs(out_dir: str | os.PathLike, summary: dict | None = None) -> dict:
    """Write ``fit_summary.json`` (``summary`` plus the sha256 of every output present:
    ``files`` and ``weights_sha256``), the last file of a fit. Returns the written summary.

    :func:`run_fit` calls it; it also publishes weights made elsewhere (tests, an imported fit)
    as a complete fit folder, which is what the area assets accept.
    """
    out_dir = Path(out_dir)
    weights_path = out_dir / WEIGHTS_FILE
    if not weights_path.is_file():
        raise IncompleteFitError(f"{weights_path} does not exist: nothing to seal")
    summary = dict(summary or {})
    summary["files"] = {name: sha256_file(out_dir / name) for name in OUTPUT_FILES
                        if (out_dir / name).is_file()}
    summary["weights_sha256"] = summary["files"][WEIGHTS_FILE]
    atomic_write_json(out_dir / SUMMARY_FILE, summary)
    return summary


def read_fit_outputs(out_dir: str | os.PathLike) -> dict:
    """The summary of the complete fit in ``out_dir``; :class:`IncompleteFitError` naming what
    is wrong when the summary is missing or unreadable, or a file it lists is missing or has
    another sha256 (a fit killed between its outputs, or a file changed since)."""
    out_dir = Path(out_dir)
    summary_path = out_dir / SUMMARY_FILE
    if not summary_path.is_file():
        what = "has weights but no" if (out_dir / WEIGHTS_FILE).exists() else "has no"
        raise IncompleteFitError(
            f"fit folder {out_dir} {what} {SUMMARY_FILE}: the fit did not finish (killed between "
            "its outputs?); materialize the weights again (it resumes from the checkpoint)")
    try:
        summary = json.loads(summary_path.read_text())
    except ValueError as exc:
        raise IncompleteFitError(f"{summary_path} is not valid JSON ({exc})") from None
    files = summary.get("files") or {WEIGHTS_FILE: summary.get("weights_sha256")}
    for name, expected in sorted(files.items()):
        path = out_dir / name
        if not path.is_file():
            raise IncompleteFitError(f"{path} is missing but {summary_path} lists it")
        if sha256_file(path) != expected:
            raise IncompleteFitError(
                f"{path} does not match {summary_path} (sha256 differs): the fit folder mixes "
                "two fits or was changed; materialize the weights again")
    return summary


def load_fit_weights(out_dir: str | os.PathLike) -> tuple[np.ndarray, dict]:
    """(weights (n_columns,) float64, summary) of the complete fit in ``out_dir``
    (:func:`read_fit_outputs` first: an incomplete folder raises :class:`IncompleteFitError`)."""
    summary = read_fit_outputs(out_dir)
    return np.load(Path(out_dir) / WEIGHTS_FILE, allow_pickle=False), summary


def epoch_table(history: np.ndarray, evals: np.ndarray, l0_epochs: Optional[int] = None
                ) -> pd.DataFrame:
    """Per-epoch log: (n_epochs,) rows of training loss terms, joined with the deterministic
    evaluations (every ``log_every`` epochs and epoch 0; NaN elsewhere). Epochs after
    ``l0_epochs`` are the refit's (``phase`` = ``refit``; their ``l0_expected_active`` column
    holds the fixed number of active records)."""
    table = pd.DataFrame(history, columns=list(_L0State.HISTORY_COLUMNS))
    table.insert(0, "epoch", np.arange(1, len(table) + 1, dtype=np.int64))
    ev = pd.DataFrame(evals, columns=list(_L0State.EVAL_COLUMNS))
    ev["epoch"] = ev["epoch"].astype(np.int64)
    ev["active_records"] = ev["active_records"].astype(np.int64)
    table = ev.merge(table, on="epoch", how="outer").sort_values("epoch", kind="stable")
    cols = ["epoch", *_L0State.HISTORY_COLUMNS, *_L0State.EVAL_COLUMNS[1:]]
    table = table[cols].reset_index(drop=True)
    if l0_epochs is not None and len(table) and table["epoch"].max() > l0_epochs:
        table.insert(1, "phase", np.where(table["epoch"] > l0_epochs, "refit", "l0"))
    return table


def plot_fit_history(epochs: pd.DataFrame) -> bytes:
    """A PNG (bytes): mean/max |relative error| and active records by epoch."""
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ev = epochs.dropna(subset=["mean_abs_rel_error"])
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(9, 3.2), dpi=90)
    ax1.plot(ev["epoch"], ev["mean_abs_rel_error"], label="mean")
    ax1.plot(ev["epoch"], ev["max_abs_rel_error"], label="max", alpha=0.6)
    ax1.set_yscale("log")
    ax1.set_xlabel("epoch")
    ax1.set_title("|relative error|, fitted targets")
    ax1.legend()
    ax2.plot(ev["epoch"], ev["active_records"], color="tab:green")
    ax2.set_xlabel("epoch")
    ax2.set_title("active records")
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", metadata={"Software": None})
    plt.close(fig)
    return buffer.getvalue()


def format_progress(event: dict) -> str:
    """One log line for a progress event of :func:`run_fit`."""
    kind = event.get("event")
    if kind == "epoch":
        phase = "refit epoch" if event.get("phase") == "refit" else "epoch"
        return (f"{phase} {event['epoch']}/{event['epochs']}: loss {event['loss']:.6g}, "
                f"mean |rel err| {event['mean_abs_rel_error']:.4%}, "
                f"max {event['max_abs_rel_error']:.2%}, active {event['active_records']}, "
                f"{event['epochs_per_second']:.2f} epochs/s")
    if kind == "checkpoint":
        return f"checkpoint at epoch {event['epoch']}: {event['path']}"
    if kind == "checkpoint_discarded":
        return f"starting afresh: {event['reason']}"
    if kind == "done":
        return (f"fit done: {event['epochs']} epochs, final loss {event['final_loss']:.6g}, "
                f"mean |rel err| {event['mean_abs_rel_error']:.4%}, active "
                f"{event['active_records']}, device {event['device']}, "
                f"{event['train_seconds']} s training")
    return json.dumps(event, default=str)


# ------------------------------------------------------------------------------------------------
# CLI


def _parse_args(argv: Optional[list[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m calibration_core.fit",
        description="Fit L0-regularised calibration weights to a calibration package.")
    parser.add_argument("--package", required=True, help="calibration package folder")
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--preset", default="regional", choices=sorted(FIT_PRESETS))
    parser.add_argument("--checkpoint", default=None,
                        help="checkpoint file (default OUT/checkpoint.pt)")
    parser.add_argument("--no-resume", action="store_true", help="ignore an existing checkpoint")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda[:n]")
    parser.add_argument("--threads", type=int, default=None)
    for name in ("epochs", "refit_epochs", "seed", "checkpoint_every", "log_every"):
        parser.add_argument("--" + name.replace("_", "-"), type=int, default=None)
    for name in ("lambda_l0", "lambda_l2", "beta", "learning_rate", "init_keep_prob",
                 "refit_learning_rate", "refit_lambda_l2"):
        parser.add_argument("--" + name.replace("_", "-"), type=float, default=None)
    return parser.parse_args(argv)


def main(argv: Optional[list[str]] = None) -> int:
    args = _parse_args(argv)
    overrides = {k: getattr(args, k) for k in (
        "epochs", "refit_epochs", "seed", "checkpoint_every", "log_every", "lambda_l0",
        "lambda_l2", "beta", "learning_rate", "init_keep_prob", "refit_learning_rate",
        "refit_lambda_l2")}
    hp = fit_preset(args.preset, n_columns=package_columns(args.package), **overrides)

    def report(event: dict) -> None:
        print(format_progress(event), file=sys.stderr, flush=True)

    result = run_fit(args.package, args.out, hp, checkpoint_path=args.checkpoint,
                     resume=not args.no_resume, device=args.device, threads=args.threads,
                     progress=report)
    print(json.dumps({"summary": result.summary, "timing": result.timing}, indent=2,
                     default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
