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

CLI: ``python -m calibration_core.fit --package DIR --out DIR --preset regional [--epochs N]``
(:mod:`calibration_core.fit.__main__`).

Layout: :mod:`._problem` (constants, errors, hyper-parameters and presets, :class:`FitProblem`),
:mod:`._state` (parameters, optimisers, the L0 and refit steps, checkpoints), this module
(:func:`run_fit` and the outputs), :mod:`.__main__` (the CLI). Every public name is importable
from ``calibration_core.fit``.
"""
from __future__ import annotations

import dataclasses
import json
import os
import time
from pathlib import Path
from typing import Optional

import numpy as np
import pandas as pd
import torch

from .._sparse_ops import DEFAULT_TILE_COLUMNS, SparseOperator
from ..io_utils import atomic_path, atomic_write_bytes, atomic_write_json, sha256_file
from ..package_io import load_package, package_fingerprint
from ._problem import (  # noqa: F401 - the package's public names, re-exported
                       CHECKPOINT_FILE, CHECKPOINT_FORMAT, DIAGNOSTICS_FILE, EPOCHS_FILE,
                       FIT_PRESETS, GAMMA, PLOT_FILE, REFERENCE_COLUMNS, REFIT_EPOCHS,
                       SINGLE_THREAD_NNZ, SUMMARY_FILE, TIMING_FILE, WEIGHTS_FILE, ZETA,
                       CheckpointMismatchError, FitError, FitHyperParameters, FitProblem,
                       FitResult, IncompleteFitError, ProgressCallback, fit_preset,
                       loss_denominator, package_columns, resolve_device, scaled_lambda_l2)
from ._state import (_L0State, _signature, _signature_differences,  # noqa: F401
                     check_checkpoint, checkpoint_bytes, read_checkpoint, write_checkpoint)

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
            state.load_state_dict(saved, hp.epochs)
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



def main(argv: Optional[list[str]] = None) -> int:
    """``python -m calibration_core.fit`` (:mod:`calibration_core.fit.__main__`)."""
    from .__main__ import main as cli_main

    return cli_main(argv)
