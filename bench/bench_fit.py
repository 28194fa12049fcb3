"""Benchmark: this project's L0 fit against l0-python's SparseCalibrationWeights.

Both fit the same synthetic package (same rows: achievable in-sample targets) with the same
hyper-parameters and epochs (one full-batch Adam step per epoch each). Printed per size:

* seconds per epoch of each fit, and the ratio;
* the final loss of each, evaluated the same way (deterministic gates,
  Σ((X·w − y)/max(|y|, 1))² + λ_L0·E[active] + λ_L2·Σ exp(θ)²), the mean |relative error| and
  the active records;
* the bytes the two matrix products must move per epoch (each non-zero's value and index read
  once per product), the time that takes at this machine's measured copy bandwidth, and the
  measured time of the two products alone.

Usage (needs the ``bench`` extra: ``pip install -e .[bench]``)::

    python bench/bench_fit.py                       # demo-like and full-size matrices
    python bench/bench_fit.py --sizes demo --epochs 100
    python bench/bench_fit.py --sizes full --full-epochs 3

Packages are cached under ``--cache`` (default ``/tmp/areacal_bench``); the full-size one takes a
few minutes and ~2 GB of disk to build once.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from calibration_core._sparse_ops import SparseOperator  # noqa: E402
from calibration_core.fit import FitProblem, fit_preset, loss_denominator, run_fit  # noqa: E402
from calibration_core.package_io import load_package, package_fingerprint, save_package  # noqa: E402
from calibration_core.synthetic import synthetic_package  # noqa: E402

SIZES = {
    # ~ the demo preset: 3,000 households x 16 clones, ~5k targets
    "demo": dict(n_targets=5_000, n_columns=48_000, nnz_per_column=40),
    # the production matrix: 12k households x 430 clones, ~18k targets, ~40 non-zeros per column
    "full": dict(n_targets=18_000, n_columns=5_000_000, nnz_per_column=40),
}


def copy_bandwidth(n_bytes: int = 1 << 30, repeats: int = 5) -> float:
    """Best-of-``repeats`` numpy copy of ``n_bytes``: (bytes read + bytes written) / second."""
    a = np.ones(n_bytes // 8)
    b = np.empty_like(a)
    np.copyto(b, a)
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        np.copyto(b, a)
        best = min(best, time.perf_counter() - t)
    return 2 * a.nbytes / best


def package_for(name: str, cache: Path) -> Path:
    folder = cache / f"package_{name}"
    if not (folder / "metadata.json").exists():
        t = time.perf_counter()
        save_package(synthetic_package(**SIZES[name], seed=7), folder)
        print(f"[{name}] built synthetic package in {time.perf_counter() - t:.1f} s", flush=True)
    return folder


def objective(problem: FitProblem, hp, log_weight: np.ndarray, log_alpha: np.ndarray) -> dict:
    """The fit objective with deterministic gates, float64, evaluated on the fitted rows."""
    z = np.clip(1 / (1 + np.exp(-log_alpha / hp.beta)) * (hp.zeta - hp.gamma) + hp.gamma, 0, 1)
    w = np.exp(log_weight) * z
    rel = (problem.fit_matrix() @ w - problem.y) / loss_denominator(problem.y)
    shift = -hp.beta * np.log(-hp.gamma / hp.zeta)
    l0 = float(np.sum(1 / (1 + np.exp(-(log_alpha + shift)))))
    l2 = float(np.sum(np.exp(log_weight) ** 2))
    return {"loss": float(np.sum(rel**2)) + hp.lambda_l0 * l0 + hp.lambda_l2 * l2,
            "mean_abs_rel_error": float(np.mean(np.abs(rel))),
            "active": int(np.count_nonzero(w > 0))}


def bench_ours(folder: Path, hp, device: str, threads: int | None) -> dict:
    with tempfile.TemporaryDirectory() as out:
        result = run_fit(folder, out, hp, resume=False, device=device, threads=threads)
        state = torch.load(result.checkpoint_path, weights_only=True)
        log_weight = state["log_weight"].numpy().astype(np.float64)
        log_alpha = state["log_alpha"].numpy().astype(np.float64)
    return {"seconds_per_epoch": result.timing["seconds_per_epoch"],
            "setup_seconds": result.timing["setup_seconds"],
            "log_weight": log_weight, "log_alpha": log_alpha,
            "tiles": result.timing["forward_tiles"]}


def bench_l0python(problem: FitProblem, hp, epochs: int, device: str) -> dict:
    from l0.calibration import SparseCalibrationWeights

    torch.manual_seed(hp.seed)
    model = SparseCalibrationWeights(
        problem.n_columns, beta=hp.beta, gamma=hp.gamma, zeta=hp.zeta,
        init_keep_prob=hp.init_keep_prob, init_weights=problem.initial_weights,
        log_weight_jitter_sd=hp.log_weight_jitter_sd,
        log_alpha_jitter_sd=hp.log_alpha_jitter_sd, device=device)
    matrix = problem.fit_matrix()
    model._convert_sparse_to_torch(matrix)  # its one-time conversion is not counted
    t = time.perf_counter()
    model.fit(matrix, problem.y, lambda_l0=hp.lambda_l0, lambda_l2=hp.lambda_l2,
              lr=hp.learning_rate, epochs=epochs, loss_type="relative", verbose=False)
    seconds = time.perf_counter() - t
    return {"seconds_per_epoch": seconds / epochs,
            "log_weight": model.log_weight.detach().cpu().numpy().astype(np.float64),
            "log_alpha": model.log_alpha.detach().cpu().numpy().astype(np.float64)}


def product_seconds(problem: FitProblem, device: str, repeats: int = 5) -> tuple[float, dict]:
    """Best-of time of one X@w plus one X.T@g, and the operator's byte count."""
    dev = torch.device("cuda" if device == "auto" and torch.cuda.is_available() else
                       ("cpu" if device == "auto" else device))
    operator = SparseOperator(problem.fit_matrix(), dev)
    w = torch.ones(problem.n_columns, device=dev)
    g = torch.ones(problem.fit_rows.size, device=dev)
    operator.rmatvec(operator.matvec(w))
    best = float("inf")
    for _ in range(repeats):
        if dev.type == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        operator.matvec(w)
        operator.rmatvec(g)
        if dev.type == "cuda":
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t)
    return best, operator.bytes_per_epoch()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="demo,full")
    parser.add_argument("--preset", default="regional")
    parser.add_argument("--epochs", type=int, default=50, help="epochs at the demo size")
    parser.add_argument("--full-epochs", type=int, default=3, help="epochs at the full size")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--cache", default=os.environ.get("AREACAL_BENCH_CACHE",
                                                          "/tmp/areacal_bench"))
    parser.add_argument("--json", default=None, help="also write the results here")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    cache = Path(args.cache)
    cache.mkdir(parents=True, exist_ok=True)

    bandwidth = copy_bandwidth()
    print(f"machine: {os.cpu_count()} CPUs, torch {torch.__version__}, "
          f"{torch.get_num_threads()} torch threads, device {args.device}, "
          f"load average {os.getloadavg()[0]:.2f} (shared machine)")
    print(f"measured copy bandwidth (read+write): {bandwidth / 1e9:.1f} GB/s")
    rows = []
    for name in [s for s in args.sizes.split(",") if s]:
        folder = package_for(name, cache)
        epochs = args.epochs if name == "demo" else args.full_epochs
        hp = fit_preset(args.preset, epochs=epochs, log_every=epochs, checkpoint_every=epochs)
        problem = FitProblem.from_package(load_package(folder), package_fingerprint(folder))
        prod_s, nbytes = product_seconds(problem, args.device)
        ours = bench_ours(folder, hp, args.device, args.threads)
        o = objective(problem, hp, ours["log_weight"], ours["log_alpha"])
        print(f"[{name}] ours: {ours['seconds_per_epoch']:.4f} s/epoch, loss {o['loss']:.6g}",
              flush=True)
        theirs = bench_l0python(problem, hp, epochs, args.device)
        t = objective(problem, hp, theirs["log_weight"], theirs["log_alpha"])
        print(f"[{name}] l0-python: {theirs['seconds_per_epoch']:.4f} s/epoch, "
              f"loss {t['loss']:.6g}", flush=True)
        rows.append({
            "size": name, "shape": f"{problem.fit_rows.size}x{problem.n_columns}",
            "nnz": int(problem.fit_matrix().nnz), "epochs": epochs,
            "ours_s_per_epoch": ours["seconds_per_epoch"],
            "l0python_s_per_epoch": theirs["seconds_per_epoch"],
            "speedup": theirs["seconds_per_epoch"] / ours["seconds_per_epoch"],
            "ours_loss": o["loss"], "l0python_loss": t["loss"],
            "ours_mean_err": o["mean_abs_rel_error"], "l0python_mean_err": t["mean_abs_rel_error"],
            "ours_active": o["active"], "l0python_active": t["active"],
            "product_GB_per_epoch": nbytes["total"] / 1e9,
            "bandwidth_bound_s": nbytes["total"] / bandwidth,
            "products_measured_s": prod_s,
            "products_vs_bound": prod_s / (nbytes["total"] / bandwidth),
            "epoch_vs_bound": ours["seconds_per_epoch"] / (nbytes["total"] / bandwidth),
        })
        del problem
    import pandas as pd

    table = pd.DataFrame(rows)
    with pd.option_context("display.width", 250, "display.max_columns", 40):
        print(table.to_string(index=False, float_format=lambda v: f"{v:.4g}"))
    if args.json:
        Path(args.json).write_text(json.dumps({"bandwidth_Bps": bandwidth, "rows": rows},
                                              indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
