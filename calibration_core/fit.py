"""L0-regularised calibration weights: the fit of spec §5, fast, exactly resumable and observable.

The problem
-----------
Given a calibration package (``X`` of shape (n_targets, n_columns), targets ``y``, initial weights
``w0``), find per-column log-weights ``θ`` and Hard Concrete gate logits ``a`` (both (n_columns,))
that minimise, by Adam with one full-batch step per epoch,

    L(θ, a) = Σ_{i ∈ F} ((X_i · w − y_i) / d_i)²  +  λ_L0 · Σ_j P(z_j ≠ 0)  +  λ_L2 · Σ_j exp(θ_j)²

where

* ``w_j = exp(θ_j) · z_j`` and the gate ``z_j = clip(sigmoid((ln u − ln(1 − u) + a_j)/β)(ζ − γ) + γ,
  0, 1)`` with ``u ~ U(1e-6, 1 − 1e-6)`` drawn afresh every epoch (the final weights use the
  deterministic gate ``clip(sigmoid(a_j/β)(ζ − γ) + γ, 0, 1)``); γ = −0.1, ζ = 1.1;
* ``P(z_j ≠ 0) = sigmoid(a_j − β ln(−γ/ζ))`` (the expected number of active records);
* ``F`` = the achievable in-sample rows (``targets.achievable & ~targets.holdout``). Unachievable
  rows (all-zero) cannot be moved by any weight and only add a constant; hold-out rows are scored,
  never fitted (the reference keeps both in its loss, spec §7 pitfall 11);
* ``d_i = max(|y_i|, 1)``. The reference divides by ``y + 1``: the same for large positive targets,
  but it divides by zero at ``y = −1``, shrinks the denominator of negative targets (the AGI of the
  ``< $1`` band) and is not the relative error that is reported. ``max(|y|, 1)`` is exactly the
  reported relative error ``(X·w − y)/|y|`` for every target of magnitude ≥ 1, and the absolute
  error (no division by zero) for targets near 0. ``diagnostics.csv`` uses the same denominator.

Initialisation (as the reference): ``θ = ln(w0 + 1e-8) + N(0, 0.05²)``,
``a = logit(init_keep_prob) + N(0, 0.01²)``, all draws from one ``torch.Generator`` seeded with
``seed``. Unlike the reference, one Adam optimiser lives for the whole run (its moments are not
reset at every log interval) and the checkpoint holds the optimiser and generator state, so a fit
killed and resumed ends with bit-identical weights (same device type and thread count).

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
    """Hyper-parameters of one fit. Every field except ``epochs``, ``checkpoint_every`` and
    ``log_every`` is part of the checkpoint signature (a resume must match it exactly)."""

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
    checkpoint_every: int = 100
    log_every: int = 10

    def __post_init__(self) -> None:
        checks = [
            (self.lambda_l0 >= 0, "lambda_l0 must be >= 0"),
            (self.lambda_l2 >= 0, "lambda_l2 must be >= 0"),
            (self.beta > 0, "beta must be > 0"),
            (self.learning_rate > 0, "learning_rate must be > 0"),
            (self.epochs >= 0, "epochs must be >= 0"),
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
        for name in ("epochs", "checkpoint_every", "log_every"):
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
#: β 0.65, lr 0.15, 1000 epochs, seed 42, initial keep probability 0.999.
FIT_PRESETS: dict[str, FitHyperParameters] = {
    "regional": FitHyperParameters(lambda_l0=1e-7, lambda_l2=1e-8),
    "national": FitHyperParameters(lambda_l0=2e-2, lambda_l2=1e-12),
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
    ``initial_weights`` (n_columns,) float64; ``fingerprint`` the package's sha256 fingerprint.
    """

    matrix: sp.csr_matrix
    targets: pd.DataFrame
    fit_rows: np.ndarray
    y: np.ndarray
    denominator: np.ndarray
    initial_weights: np.ndarray
    fingerprint: str
    source: str = "package"

    @classmethod
    def from_package(cls, package: CalibrationPackage, fingerprint: str,
                     source: str = "package") -> "FitProblem":
        mask = package.fit_mask()
        fit_rows = np.flatnonzero(mask).astype(np.int64)
        if fit_rows.size == 0:
            raise FitError(f"{source}: no achievable in-sample target (achievable & ~holdout)")
        w0 = package.initial_weights
        if not np.isfinite(w0).all() or (w0 < 0).any():
            bad = int(np.flatnonzero(~np.isfinite(w0) | (w0 < 0))[0])
            raise FitError(f"{source}: initial weight of column {bad} is {w0[bad]!r}; expected a "
                           "finite value >= 0")
        values = package.targets["value"].to_numpy(dtype=np.float64)
        y = values[fit_rows]
        return cls(matrix=package.matrix, targets=package.targets, fit_rows=fit_rows, y=y,
                   denominator=loss_denominator(y), initial_weights=w0,
                   fingerprint=fingerprint, source=source)

    @property
    def n_columns(self) -> int:
        return self.matrix.shape[1]

    def fit_matrix(self) -> sp.csr_matrix:
        if self.fit_rows.size == self.matrix.shape[0]:
            return self.matrix
        return self.matrix[self.fit_rows]

    def targets_signature(self) -> str:
        """sha256 over the fitted rows' names and values (float64 bytes)."""
        names = "\x1f".join(self.targets["name"].astype(str).to_numpy()[self.fit_rows])
        return sha256_bytes(names.encode() + b"\x00" + self.y.tobytes())


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

    # one epoch ----------------------------------------------------------------------------------
    def step(self, operator: SparseOperator, y: torch.Tensor, inv_d: torch.Tensor) -> torch.Tensor:
        """One Adam step; returns a (4,) tensor: loss, data loss, E[active], Σ exp(θ)²."""
        hp = self.hp
        gates = self.sample_gates()
        scale = torch.exp(self.log_weight)
        estimate = sparse_matvec(operator, scale * gates)
        residual = (estimate - y) * inv_d
        data_loss = residual.square().sum()
        l0 = torch.sigmoid(self.log_alpha + self.l0_shift).sum()
        l2 = scale.square().sum()
        loss = data_loss + hp.lambda_l0 * l0 + hp.lambda_l2 * l2
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        return torch.stack([loss, data_loss, l0, l2]).detach()

    @torch.no_grad()
    def evaluate(self, operator: SparseOperator, y: torch.Tensor, inv_d: torch.Tensor) -> list:
        w = self.deterministic_weights()
        rel = (operator.matvec(w) - y) * inv_d
        abs_rel = rel.abs()
        return [float(self.epoch), float(rel.square().sum()), float(abs_rel.mean()),
                float(abs_rel.max()), float((w > 0).sum())]

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


def check_checkpoint(path: str | os.PathLike, state: dict, signature: dict, epochs: int) -> None:
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
                check_checkpoint(checkpoint_path, saved, signature, hp.epochs)
            except CheckpointMismatchError as exc:
                if on_checkpoint_mismatch != "restart":
                    raise
                notify({"event": "checkpoint_discarded", "path": str(checkpoint_path),
                        "reason": str(exc)})
                saved = None
        operator = SparseOperator(problem.fit_matrix(), dev, tile_columns=tile_columns)
        y = torch.as_tensor(problem.y, dtype=torch.float32).to(dev)
        inv_d = torch.as_tensor(1.0 / problem.denominator, dtype=torch.float32).to(dev)
        state = _L0State(problem, hp, dev)
        if saved is not None:
            state.load_state_dict(saved)
        resumed_from = state.epoch
        setup_seconds = time.perf_counter() - t0
        if state.epoch == 0 and len(state.evals) == 0:
            state.evals = np.asarray([state.evaluate(operator, y, inv_d)])

        t_train = time.perf_counter()
        pending: list[torch.Tensor] = []
        while state.epoch < hp.epochs:
            pending.append(state.step(operator, y, inv_d))
            state.epoch += 1
            log_now = state.epoch % hp.log_every == 0 or state.epoch == hp.epochs
            ckpt_now = state.epoch % hp.checkpoint_every == 0 or state.epoch == hp.epochs
            if log_now or ckpt_now:
                state.history = np.vstack(
                    [state.history, torch.stack(pending).cpu().numpy().astype(np.float64)])
                pending = []
            if log_now:
                state.evals = np.vstack([state.evals, state.evaluate(operator, y, inv_d)])
            if ckpt_now:
                write_checkpoint(checkpoint_path, state.state_dict(signature))
            if log_now:
                elapsed = time.perf_counter() - t_train
                done = state.epoch - resumed_from
                notify({"event": "epoch", "epoch": state.epoch, "epochs": hp.epochs,
                        "loss": float(state.history[-1, 0]),
                        "mean_abs_rel_error": float(state.evals[-1, 2]),
                        "max_abs_rel_error": float(state.evals[-1, 3]),
                        "active_records": int(state.evals[-1, 4]),
                        "elapsed_s": elapsed,
                        "epochs_per_second": done / elapsed if elapsed > 0 else float("nan")})
            if ckpt_now:
                notify({"event": "checkpoint", "epoch": state.epoch, "path": str(checkpoint_path)})
        if hp.epochs == 0 or resumed_from == hp.epochs:
            # nothing trained in this call; make sure the checkpoint exists for the record
            if not checkpoint_path.exists():
                write_checkpoint(checkpoint_path, state.state_dict(signature))
        train_seconds = time.perf_counter() - t_train
        epochs_run = hp.epochs - resumed_from

        weights = state.deterministic_weights().cpu().numpy().astype(np.float64)
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
    diagnostics = pd.DataFrame({
        "target": targets["name"].astype(str).to_numpy(),
        "value": values, "estimate": estimate, "rel_error": rel, "abs_rel_error": np.abs(rel),
        "achievable": targets["achievable"].to_numpy(bool),
        "holdout": targets["holdout"].to_numpy(bool), "in_fit": in_fit,
    })
    with atomic_path(out_dir / DIAGNOSTICS_FILE, suffix=".csv") as tmp:
        diagnostics.to_csv(tmp, index=False, float_format="%.10g", lineterminator="\n")

    epochs = epoch_table(state.history, state.evals)
    with atomic_path(out_dir / EPOCHS_FILE, suffix=".csv") as tmp:
        epochs.to_csv(tmp, index=False, float_format="%.10g", lineterminator="\n")
    atomic_write_bytes(out_dir / PLOT_FILE, plot_fit_history(epochs))

    fitted = np.abs(rel[in_fit])
    holdout_rows = diagnostics["holdout"].to_numpy() & diagnostics["achievable"].to_numpy()
    data_loss = float(np.sum(rel[in_fit] ** 2))
    l0_active = float(torch.sigmoid(state.log_alpha.detach() + state.l0_shift).double().sum())
    l2 = float(torch.exp(state.log_weight.detach()).double().square().sum())
    active = int(np.count_nonzero(weights > 0))
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
        "final_loss": data_loss + hp.lambda_l0 * l0_active + hp.lambda_l2 * l2,
        "final_data_loss": data_loss,
        "final_training_loss": float(state.history[-1, 0]) if len(state.history) else None,
        "mean_abs_rel_error": float(fitted.mean()),
        "median_abs_rel_error": float(np.median(fitted)),
        "max_abs_rel_error": float(fitted.max()),
        "worst_target": str(diagnostics["target"].to_numpy()[in_fit][int(np.argmax(fitted))]),
        "holdout_mean_abs_rel_error": (float(np.abs(rel[holdout_rows]).mean())
                                       if holdout_rows.any() else None),
        "active_records": active,
        "sparsity": 1.0 - active / max(problem.n_columns, 1),
        "expected_active_records": l0_active,
        "weight_sum": float(weights.sum()),
        "checkpoint": _relative_to(checkpoint_path, out_dir),
    }
    summary = seal_fit_outputs(out_dir, summary)
    return FitResult(out_dir=out_dir, weights_path=weights_path, checkpoint_path=checkpoint_path,
                     summary=summary, timing={}, epochs=epochs, diagnostics=diagnostics)


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


def epoch_table(history: np.ndarray, evals: np.ndarray) -> pd.DataFrame:
    """Per-epoch log: (n_epochs,) rows of training loss terms, joined with the deterministic
    evaluations (every ``log_every`` epochs and epoch 0; NaN elsewhere)."""
    table = pd.DataFrame(history, columns=list(_L0State.HISTORY_COLUMNS))
    table.insert(0, "epoch", np.arange(1, len(table) + 1, dtype=np.int64))
    ev = pd.DataFrame(evals, columns=list(_L0State.EVAL_COLUMNS))
    ev["epoch"] = ev["epoch"].astype(np.int64)
    ev["active_records"] = ev["active_records"].astype(np.int64)
    table = ev.merge(table, on="epoch", how="outer").sort_values("epoch", kind="stable")
    cols = ["epoch", *_L0State.HISTORY_COLUMNS, *_L0State.EVAL_COLUMNS[1:]]
    return table[cols].reset_index(drop=True)


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
        return (f"epoch {event['epoch']}/{event['epochs']}: loss {event['loss']:.6g}, "
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
    for name in ("epochs", "seed", "checkpoint_every", "log_every"):
        parser.add_argument("--" + name.replace("_", "-"), type=int, default=None)
    for name in ("lambda_l0", "lambda_l2", "beta", "learning_rate", "init_keep_prob"):
        parser.add_argument("--" + name.replace("_", "-"), type=float, default=None)
    return parser.parse_args(argv)


def main(argv: Optional[list[str]] = None) -> int:
    args = _parse_args(argv)
    overrides = {k: getattr(args, k) for k in (
        "epochs", "seed", "checkpoint_every", "log_every", "lambda_l0", "lambda_l2", "beta",
        "learning_rate", "init_keep_prob")}
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
