"""Walk-through 4: the L0 weight fit (``calibration_core.fit``; assets ``regional_weights``,
``national_weights``).

Run: ``python docs/internals/04_fit.py`` (about 20 s on a CPU; no GPU needed).

The fit finds one weight per clone-household column of the package so that ``X @ w`` matches the
targets, while switching most columns off. Each weight is ``w_j = exp(theta_j) * z_j`` with a
Hard Concrete gate ``z_j`` in [0, 1] that is exactly 0 or exactly 1 with positive probability;
the L0 penalty ``lambda_L0 * sum_j P(z_j != 0)`` is the expected number of active records. The
loss, exactly as implemented (see the docstring of calibration_core/fit/__init__.py):

    L = sum_{i in F} ((X_i . w - y_i) / max(|y_i|, 1))^2
        + lambda_L0 * sum_j P(z_j != 0) + lambda_L2 * sum_j exp(theta_j)^2

over F = the achievable, in-sample targets (hold-out rows are scored, never fitted).

This script fits a synthetic package (``calibration_core.synthetic.synthetic_package``: the
package format, targets nearly reachable from a hidden weight vector) with the two presets,
``regional`` (lambda_L0 = 1e-7) and ``national`` (lambda_L0 = 2e-2), and shows the effect of
lambda_L0 on the number of active records and on the error; then it kills and resumes a fit.
"""
from __future__ import annotations

import json

import _walk  # noqa: F401  (puts the repository on sys.path)
import numpy as np
import pandas as pd
import torch

from calibration_core import fit
from calibration_core.package_io import package_fingerprint, save_package
from calibration_core.synthetic import synthetic_package

OUT = _walk.out_dir("04_fit")
EPOCHS = 300

# ---------------------------------------------------------------------------------------------
_walk.section("1. A package to fit")
package = synthetic_package(n_targets=400, n_columns=5000, nnz_per_column=4, seed=0)
pkg_dir = save_package(package, OUT / "package")
t = package.targets
print(f"X {package.matrix.shape}, nnz {package.matrix.nnz}; targets: "
      f"{int(package.fit_mask().sum())} fitted, {int(t.holdout.sum())} hold-out, "
      f"{int((~t.achievable).sum())} unachievable")
_walk.show(t.head(5))

# ---------------------------------------------------------------------------------------------
_walk.section("2. Hard Concrete gates")
# The gate of column j: s = sigmoid((ln u - ln(1-u) + a_j) / beta), u ~ U(0, 1) drawn every
# epoch, stretched to (gamma, zeta) = (-0.1, 1.1) and clipped to [0, 1]: the clipping puts
# probability mass on exactly 0 and exactly 1. The final weights use the noise-free gate.
# The fit's own gate sampler (fit._L0State, the fit's internal state) on five values of a_j:
hp = fit.fit_preset("regional")
problem = fit.FitProblem.from_package(package, package_fingerprint(pkg_dir))
state = fit._L0State(problem, hp, torch.device("cpu"))
logits = np.repeat([-4.0, -2.0, 0.0, 2.0, 4.0], 1000)
with torch.no_grad():
    state.log_alpha.copy_(torch.as_tensor(logits, dtype=torch.float32))
    draws = np.stack([state.sample_gates().numpy() for _ in range(20)])  # 20 epochs' draws
    w_det = state.deterministic_weights().numpy() / np.exp(state.log_weight.numpy())
    p_active = torch.sigmoid(state.log_alpha + state.l0_shift).numpy()
rows = []
for a in np.unique(logits):
    sel = logits == a
    z = draws[:, sel]
    rows.append({"a_j": a, "share z == 0": (z == 0).mean(), "share 0 < z < 1":
                 ((z > 0) & (z < 1)).mean(), "share z == 1": (z == 1).mean(),
                 "P(z != 0) (the L0 term)": p_active[sel][0],
                 "final gate": w_det[sel][0]})
_walk.show(pd.DataFrame(rows), floatfmt=".3f")

# ---------------------------------------------------------------------------------------------
_walk.section("3. Two values of lambda_L0: the regional and national presets")
results, curves = {}, {}
for preset in ("regional", "national"):
    hp = fit.fit_preset(preset, epochs=EPOCHS, log_every=25, checkpoint_every=100)
    res = fit.run_fit(pkg_dir, OUT / preset, hp, device="cpu", threads=1, resume=False)
    results[preset] = res
    ev = res.epochs.dropna(subset=["active_records"])
    curves[preset] = ev
    print(f"{preset}: lambda_L0 {hp.lambda_l0:g}, lambda_L2 {hp.lambda_l2:g}, "
          f"{res.timing['train_seconds']} s for {EPOCHS} epochs")
summary = pd.DataFrame({
    p: {"lambda_L0": r.summary["hyper_parameters"]["lambda_l0"],
        "active records": r.summary["active_records"],
        "of columns": r.summary["n_columns"],
        "mean |rel err|, fitted": r.summary["mean_abs_rel_error"],
        "max |rel err|, fitted": r.summary["max_abs_rel_error"],
        "mean |rel err|, hold-out": r.summary["holdout_mean_abs_rel_error"],
        "sum of weights": r.summary["weight_sum"],
        "mean weight of active": r.summary["weight_sum"] / r.summary["active_records"]}
    for p, r in results.items()})
_walk.show(summary.reset_index().rename(columns={"index": ""}), floatfmt=",.4g")
print(f"(the hidden weights average {50 * np.exp(0.5):.0f} per column, about "
      f"{5000 * 50 * np.exp(0.5):,.0f} in all; the initial weights sum to "
      f"{package.initial_weights.sum():,.0f})")
# L0 prunes without shrinking: the national fit switches three quarters of the records off and
# the survivors carry the weight of the pruned ones (the weight sum stays close to the regional
# fit's). An L1 penalty, lambda * sum_j |w_j|, also zeroes weights but pulls every surviving
# weight towards 0 as well; the L0 term counts records and leaves their size to the data.
print("\nthe national fit, every 50 epochs:")
ev = curves["national"]
_walk.show(ev[ev.epoch % 50 == 0][["epoch", "loss", "data_loss", "l0_expected_active",
                                   "mean_abs_rel_error", "active_records"]])
_walk.line_plot({p: (c["epoch"], c["active_records"]) for p, c in curves.items()},
                "active records by epoch", OUT / "active_records.png", "epoch", "records")
_walk.line_plot({p: (c["epoch"], c["mean_abs_rel_error"]) for p, c in curves.items()},
                "mean |relative error| by epoch", OUT / "error.png", "epoch", "", logy=True)
print("the fit's own plot:", results["national"].out_dir / fit.PLOT_FILE)
diag = results["national"].diagnostics
print("\nworst fitted targets of the national fit (diagnostics.csv):")
_walk.show(diag[diag.in_fit].sort_values("abs_rel_error", ascending=False).head(5))

# ---------------------------------------------------------------------------------------------
_walk.section("4. Killed and resumed: the same weights")
hp = fit.fit_preset("national", epochs=EPOCHS, log_every=25, checkpoint_every=100)


def stop_at_100(event):
    if event["event"] == "checkpoint" and event["epoch"] == 100:
        raise KeyboardInterrupt("killed after the checkpoint at epoch 100")


try:
    fit.run_fit(pkg_dir, OUT / "resumed", hp, device="cpu", threads=1, progress=stop_at_100)
except KeyboardInterrupt as exc:
    print(exc)
resumed = fit.run_fit(pkg_dir, OUT / "resumed", hp, device="cpu", threads=1)
same = resumed.summary["weights_sha256"] == results["national"].summary["weights_sha256"]
print(f"resumed from epoch {resumed.timing['resumed_from_epoch']}; weights identical to the "
      f"uninterrupted fit: {same}")
other = fit.fit_preset("national", epochs=EPOCHS, lambda_l0=1e-3)
try:
    fit.run_fit(pkg_dir, OUT / "resumed", other, device="cpu", threads=1)
except fit.CheckpointMismatchError as exc:
    print("a checkpoint of another fit is refused:", str(exc)[:150], "...")
print("\noutputs:", sorted(p.name for p in (OUT / "national").iterdir()))
print("fit_summary.json keys:", list(json.loads((OUT / "national" / fit.SUMMARY_FILE)
                                                .read_text()))[:12], "...")
print("\nthe same fit from a terminal:\n  python -m calibration_core.fit --package "
      f"{pkg_dir} --out /tmp/fit --preset national --epochs {EPOCHS} --device cpu")

_walk.done()
