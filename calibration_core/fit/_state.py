"""The fit's state on one device: parameters, optimisers, generator, history, the L0 and refit
steps, and the checkpoint (written, read, checked). The loss is stated in
:mod:`calibration_core.fit`."""
from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from .._sparse_ops import SparseOperator, sparse_matvec
from ..io_utils import atomic_write_bytes

from ._problem import (CHECKPOINT_FORMAT, CheckpointMismatchError, FitError, FitHyperParameters,
                       FitProblem)

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

    def load_state_dict(self, state: dict, epochs: Optional[int] = None) -> None:
        """Restore a checkpoint. With ``epochs`` past the checkpoint's L0 epochs, a refit it
        holds is dropped (the L0 parameters, optimiser and generator in it are those of the end
        of its L0 epochs), so the L0 fit continues exactly as a longer fit would have."""
        with torch.no_grad():
            self.log_weight.copy_(state["log_weight"].to(self.device))
            self.log_alpha.copy_(state["log_alpha"].to(self.device))
        self.optimizer.load_state_dict(state["optimizer"])
        self.generator.set_state(state["rng_state"])
        self.epoch = int(state["epoch"])
        self.history = state["history"].numpy().astype(np.float64)
        self.evals = state["evals"].numpy().astype(np.float64)
        refit = state.get("refit")
        if refit is not None and epochs is not None and self.epoch < epochs:
            self.history = self.history[:self.epoch]
            self.evals = self.evals[self.evals[:, 0] <= self.epoch]
            refit = None
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
    if refit is not None and int(state["epoch"]) == epochs:  # (more L0 epochs drop the refit)
        if refit_epochs is not None and int(refit["epoch"]) > refit_epochs:
            raise CheckpointMismatchError(
                f"checkpoint {path} is at refit epoch {refit['epoch']}, past the requested "
                f"{refit_epochs}; delete it or ask for at least as many refit epochs")


