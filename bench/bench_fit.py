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

    python bench/bench_fit.py                       # demo-like, 1M-column and full-size matrices
    python bench/bench_fit.py --sizes demo --epochs 100 --threads 1
    python bench/bench_fit.py --sizes full --full-epochs 3

Each fit runs in its own process (peak memory is reported); l0-python is skipped where its
measured bytes per non-zero would exceed 80% of the available memory (its COO tensors, int64
indices and per-epoch coalescing need ~70 B per non-zero; the full-size matrix has 200M).
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
from calibration_core.package_io import load_package, save_package  # noqa: E402
from calibration_core.synthetic import synthetic_package  # noqa: E402

SIZES = {
    # ~ the demo preset: 3,000 households x 16 clones, ~5k targets
    "demo": dict(n_targets=5_000, n_columns=48_000, nnz_per_column=40),
    # a fifth of the production matrix: where l0-python still fits in memory here
    "mid": dict(n_targets=18_000, n_columns=1_000_000, nnz_per_column=40),
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


def worker(kind: str, folder: Path, hp, device: str, threads: int | None,
           result_dir: Path) -> None:
    """Run one implementation on one package; write its parameters and timing to result_dir."""
    if threads:
        torch.set_num_threads(threads)
    if kind == "ours":
        with tempfile.TemporaryDirectory() as out:
            result = run_fit(folder, out, hp, resume=False, device=device, threads=threads)
            state = torch.load(result.checkpoint_path, weights_only=True)
        log_weight, log_alpha = state["log_weight"], state["log_alpha"]
        info = {"seconds_per_epoch": result.timing["seconds_per_epoch"],
                "setup_seconds": result.timing["setup_seconds"]}
    else:
        from l0.calibration import SparseCalibrationWeights

        package = load_package(folder)
        problem = FitProblem.from_package(package, "-")
        matrix, y, w0, n = (problem.fit_matrix(), problem.y, problem.initial_weights,
                            problem.n_columns)
        del package, problem
        torch.manual_seed(hp.seed)
        model = SparseCalibrationWeights(
            n, beta=hp.beta, gamma=hp.gamma, zeta=hp.zeta, init_keep_prob=hp.init_keep_prob,
            init_weights=w0, log_weight_jitter_sd=hp.log_weight_jitter_sd,
            log_alpha_jitter_sd=hp.log_alpha_jitter_sd, device=device)
        t = time.perf_counter()
        model._convert_sparse_to_torch(matrix)  # its one-time conversion is not counted
        setup = time.perf_counter() - t
        t = time.perf_counter()
        model.fit(matrix, y, lambda_l0=hp.lambda_l0, lambda_l2=hp.lambda_l2,
                  lr=hp.learning_rate, epochs=hp.epochs, loss_type="relative", verbose=False)
        info = {"seconds_per_epoch": (time.perf_counter() - t) / hp.epochs,
                "setup_seconds": setup}
        log_weight, log_alpha = model.log_weight.detach(), model.log_alpha.detach()
    np.save(result_dir / "log_weight.npy", log_weight.cpu().numpy().astype(np.float64))
    np.save(result_dir / "log_alpha.npy", log_alpha.cpu().numpy().astype(np.float64))
    status = Path("/proc/self/status").read_text().splitlines()
    hwm = [int(line.split()[1]) for line in status if line.startswith("VmHWM:")]
    info["peak_rss_GB"] = hwm[0] * 1024 / 1e9 if hwm else float("nan")
    (result_dir / "result.json").write_text(json.dumps(info))


def run_worker(kind: str, folder: Path, args, epochs: int) -> dict | None:
    """Run :func:`worker` in a fresh process (so each gets the whole memory); None if it died."""
    import subprocess

    with tempfile.TemporaryDirectory() as result_dir:
        command = [sys.executable, __file__, "--worker", kind, "--package", str(folder),
                   "--result-dir", result_dir, "--preset", args.preset, "--worker-epochs",
                   str(epochs), "--device", args.device]
        if args.threads:
            command += ["--threads", str(args.threads)]
        done = subprocess.run(command)
        if done.returncode != 0:
            print(f"  {kind} worker failed (exit {done.returncode})", flush=True)
            return None
        out = json.loads((Path(result_dir) / "result.json").read_text())
        out["log_weight"] = np.load(Path(result_dir) / "log_weight.npy")
        out["log_alpha"] = np.load(Path(result_dir) / "log_alpha.npy")
        return out


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


def available_memory_bytes() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) * 1024
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="demo,mid,full")
    parser.add_argument("--preset", default="regional")
    parser.add_argument("--epochs", type=int, default=50, help="epochs at the demo size")
    parser.add_argument("--full-epochs", type=int, default=3, help="epochs at mid and full size")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--l0-bytes-per-nnz", type=float, default=None,
                        help="skip l0-python where nnz x this exceeds 80%% of free memory "
                             "(default: measured at the previous size, else 70)")
    parser.add_argument("--cache", default=os.environ.get("AREACAL_BENCH_CACHE",
                                                          "/tmp/areacal_bench"))
    parser.add_argument("--json", default=None, help="also write the results here")
    parser.add_argument("--worker", choices=["ours", "l0"], help=argparse.SUPPRESS)
    parser.add_argument("--package", help=argparse.SUPPRESS)
    parser.add_argument("--result-dir", help=argparse.SUPPRESS)
    parser.add_argument("--worker-epochs", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        hp = fit_preset(args.preset, epochs=args.worker_epochs, log_every=args.worker_epochs,
                        refit_epochs=0,  # the L0 epochs only: the refit is timed apart
                        checkpoint_every=args.worker_epochs)
        worker(args.worker, Path(args.package), hp, args.device, args.threads,
               Path(args.result_dir))
        return 0
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
    l0_bytes_per_nnz = args.l0_bytes_per_nnz or 70.0
    for name in [s for s in args.sizes.split(",") if s]:
        folder = package_for(name, cache)
        epochs = args.epochs if name == "demo" else args.full_epochs
        hp = fit_preset(args.preset, epochs=epochs, refit_epochs=0)
        problem = FitProblem.from_package(load_package(folder), "-")
        nnz = int(problem.fit_matrix().nnz)
        prod_s, nbytes = product_seconds(problem, args.device)
        shape = f"{problem.fit_rows.size}x{problem.n_columns}"
        del problem
        ours = run_worker("ours", folder, args, epochs)
        need = nnz * l0_bytes_per_nnz
        if need > 0.8 * available_memory_bytes():
            print(f"[{name}] l0-python skipped: needs ~{need / 1e9:.0f} GB "
                  f"({l0_bytes_per_nnz:.0f} B/nnz), {available_memory_bytes() / 1e9:.0f} GB "
                  "available", flush=True)
            theirs = None
        else:
            theirs = run_worker("l0", folder, args, epochs)
            if theirs and not args.l0_bytes_per_nnz:
                l0_bytes_per_nnz = theirs["peak_rss_GB"] * 1e9 / nnz
        problem = FitProblem.from_package(load_package(folder), "-")
        row = {"size": name, "shape": shape, "nnz": nnz, "epochs": epochs}
        for label, res in (("ours", ours), ("l0python", theirs)):
            if res is None:
                continue
            o = objective(problem, hp, res["log_weight"], res["log_alpha"])
            row.update({f"{label}_s_per_epoch": res["seconds_per_epoch"],
                        f"{label}_loss": o["loss"], f"{label}_mean_err": o["mean_abs_rel_error"],
                        f"{label}_active": o["active"], f"{label}_peak_GB": res["peak_rss_GB"]})
            print(f"[{name}] {label}: {res['seconds_per_epoch']:.4f} s/epoch, loss "
                  f"{o['loss']:.6g}, mean |rel err| {o['mean_abs_rel_error']:.4%}, "
                  f"peak RSS {res['peak_rss_GB']:.1f} GB", flush=True)
        del problem
        if ours and theirs:
            row["speedup"] = theirs["seconds_per_epoch"] / ours["seconds_per_epoch"]
        row.update({
            "product_GB_per_epoch": nbytes["total"] / 1e9,
            "bandwidth_bound_s": nbytes["total"] / bandwidth,
            "products_measured_s": prod_s,
            "products_vs_bound": prod_s / (nbytes["total"] / bandwidth),
        })
        if ours:
            row["epoch_vs_bound"] = ours["seconds_per_epoch"] / (nbytes["total"] / bandwidth)
        rows.append(row)
    import pandas as pd

    table = pd.DataFrame(rows).set_index("size").T
    print(f"\nload average now {os.getloadavg()[0]:.2f}")
    with pd.option_context("display.width", 200, "display.max_rows", 100):
        print(table.to_string(float_format=lambda v: f"{v:.4g}"))
    if args.json:
        Path(args.json).write_text(json.dumps({"bandwidth_Bps": bandwidth, "rows": rows},
                                              indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
