"""Which rows the fit uses and how they weigh: infeasible targets excluded with their reason,
the balanced loss equals its formula, and the refit lowers the data loss."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
import torch

from calibration_core import fit as fitmod
from calibration_core import fit_rows
from calibration_core.fit import FitProblem, fit_preset, run_fit
from calibration_core.package_io import CalibrationPackage, save_package
from calibration_core.synthetic import synthetic_package

THREADS = 1


def test_each_infeasible_case_is_excluded_with_its_reason():
    w0 = np.array([1.0, 2.0, 3.0])
    X = sp.csr_matrix(np.array([
        [1.0, 1.0, 0.0],    # 0: feasible (reach 0 .. 300 at B = 100)
        [0.0, 0.0, 0.0],    # 1: no non-zero entry
        [1.0, 0.0, 1.0],    # 2: zero target
        [-1.0, -2.0, 0.0],  # 3: positive target, every entry negative
        [0.0, 1.0, 0.0],    # 4: 201 > 100 x 2: unreachable within the bound
        [1.0, -1.0, 0.0],   # 5: mixed signs, -150 within [-200, 100]: feasible
        [2.0, 0.0, 0.0],    # 6: negative target, every entry positive
    ]))
    y = np.array([250.0, 5.0, 0.0, 4.0, 201.0, -150.0, -1.0])
    feasible, reason, low, high = fit_rows.feasibility(X, y, w0, max_weight_ratio=100)
    assert feasible.tolist() == [True, False, False, False, False, True, False]
    assert reason.tolist() == ["", "no non-zero entry", "zero target", "opposite sign",
                               "unreachable within B x initial weights", "", "opposite sign"]
    np.testing.assert_allclose(high, [300, 0, 400, 0, 200, 100, 200])
    np.testing.assert_allclose(low, [0, 0, 0, -500, 0, -200, 0])
    # a looser bound makes row 4 reachable
    assert fit_rows.feasibility(X, y, w0, max_weight_ratio=101)[0][4]
    with pytest.raises(fit_rows.FitRowsError):
        fit_rows.feasibility(X, y, w0, max_weight_ratio=0)


def _toy_targets():
    return pd.DataFrame({
        "name": [f"t{i}" for i in range(7)],
        "family": ["age", "age", "age", "age", "snap", "snap", "age"],
        "geo_level": ["district"] * 4 + ["state", "state", "state"],
        "variable": ["person_count"] * 4 + ["snap", "snap", "person_count"],
        "domain": ["age"] * 4 + ["snap", "snap", "age"],
        "source": ["ACS"] * 4 + ["FNS", "FNS", "ACS"],
    })


def test_balanced_loss_weights_follow_their_formula():
    t = _toy_targets()
    fit = np.array([True, True, True, True, True, True, False])  # row 6 not fitted
    v, groups = fit_rows.loss_weights(t, fit)
    # groups: age@district (4 rows), snap@state (2 rows): each |F| * 1 / (n_G * 2)
    np.testing.assert_allclose(v, [6 / 8] * 4 + [6 / 4] * 2 + [0.0])
    assert v.sum() == pytest.approx(fit.sum())
    assert groups.set_index("group")["rows"].to_dict() == {"age @ district": 4, "snap @ state": 2}
    # configured group weight 3 for SNAP: g = (1, 3), Σ g = 4
    v3, _ = fit_rows.loss_weights(t, fit, {"group_weights": [{"family": "snap", "weight": 3}]})
    np.testing.assert_allclose(v3, [6 * 1 / (4 * 4)] * 4 + [6 * 3 / (2 * 4)] * 2 + [0.0])
    # unbalanced: every fitted row 1
    v1, _ = fit_rows.loss_weights(t, fit, {"balance": False})
    np.testing.assert_array_equal(v1, fit.astype(float))
    for bad in ({"group_by": ["nope"]}, {"group_weights": [{"family": "snap"}]},
                {"group_weights": [{"family": "snap", "weight": -1}]}, {"balance": "yes"},
                {"weights": []}):
        with pytest.raises(fit_rows.FitRowsError):
            fit_rows.loss_weights(t, fit, bad)


def _toy_package(tmp_path, loss=None):
    rng = np.random.default_rng(5)
    X = sp.csr_matrix(rng.exponential(1.0, size=(7, 40)) * (rng.random((7, 40)) < 0.5))
    w0 = rng.uniform(0.5, 2.0, 40)
    t = _toy_targets()
    t["value"] = np.asarray(X @ (w0 * rng.uniform(0.5, 1.5, 40))).ravel()
    t["holdout"] = [False] * 6 + [True]
    t["achievable"] = np.diff(X.indptr) > 0
    t["feasible"] = True
    fit = t["achievable"].to_numpy() & ~t["holdout"].to_numpy()
    t["loss_weight"], _ = fit_rows.loss_weights(t, fit, loss)
    folder = tmp_path / "package"
    save_package(CalibrationPackage(X.astype(np.float32), t, w0, {}), folder)
    return folder, X, t


def test_family_weighted_loss_equals_its_formula_on_a_toy_package(tmp_path):
    folder, X, t = _toy_package(tmp_path)
    hp = fit_preset("regional", epochs=0, lambda_l0=0.0, lambda_l2=0.0, refit_epochs=0)
    result = run_fit(folder, tmp_path / "fit", hp, device="cpu", threads=THREADS)
    w = np.load(tmp_path / "fit" / fitmod.WEIGHTS_FILE)
    y = t["value"].to_numpy()
    rel = (np.asarray(X @ w).ravel() - y) / np.maximum(np.abs(y), 1)
    v = t["loss_weight"].to_numpy()
    expected = float(np.sum(v[:6] * rel[:6] ** 2))  # Σ_G g_G/(n_G Σg) |F| Σ_{i∈G} rel_i²
    by_formula = 6 * (np.sum(rel[:4] ** 2) / (4 * 2) + np.sum(rel[4:6] ** 2) / (2 * 2))
    assert expected == pytest.approx(by_formula, rel=1e-12)
    assert result.summary["final_data_loss"] == pytest.approx(expected, rel=1e-6)
    assert result.summary["loss_weights"] == "balanced"
    # the training loss of one step is the same formula at the sampled gates
    from calibration_core._sparse_ops import SparseOperator

    problem = FitProblem.from_package(fitmod.load_package(folder), "x")
    np.testing.assert_allclose(problem.row_weight, v[:6])
    state = fitmod._L0State(problem, hp, torch.device("cpu"))
    state.generator.manual_seed(11)
    gates = state.sample_gates().detach().double().numpy()
    weights = np.exp(state.log_weight.detach().double().numpy()) * gates
    state.generator.manual_seed(11)
    scale = torch.as_tensor(np.sqrt(problem.row_weight) / problem.denominator,
                            dtype=torch.float32)
    out = state.step(SparseOperator(problem.fit_matrix(), "cpu"),
                     torch.as_tensor(problem.y, dtype=torch.float32), scale)
    estimate = np.asarray(problem.fit_matrix() @ weights).ravel()
    rel_step = (estimate - problem.y) / problem.denominator
    assert float(out[1]) == pytest.approx(float(np.sum(problem.row_weight * rel_step ** 2)),
                                          rel=1e-5)


def test_infeasible_rows_stay_out_of_the_fit(tmp_path):
    folder, X, t = _toy_package(tmp_path)
    pkg = fitmod.load_package(folder)
    pkg.targets.loc[2, "feasible"] = False
    folder2 = tmp_path / "package2"
    save_package(pkg, folder2)
    problem = FitProblem.from_package(fitmod.load_package(folder2), "x")
    assert problem.fit_rows.tolist() == [0, 1, 3, 4, 5]


@pytest.fixture(scope="module")
def synthetic_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("pkg") / "package"
    save_package(synthetic_package(300, 3000, 5, seed=3), folder)
    return folder


def test_refit_lowers_the_data_loss_and_resumes_exactly(synthetic_dir, tmp_path):
    hp = fit_preset("regional", epochs=40, refit_epochs=30, log_every=5, checkpoint_every=10,
                    lambda_l0=1e-2)
    result = run_fit(synthetic_dir, tmp_path / "a", hp, device="cpu", threads=THREADS)
    refit = result.summary["refit"]
    assert refit["epochs"] == 30
    assert refit["after"]["data_loss"] < refit["before"]["data_loss"]
    assert result.summary["final_data_loss"] == pytest.approx(refit["after"]["data_loss"],
                                                              rel=1e-4)
    epochs = pd.read_csv(tmp_path / "a" / fitmod.EPOCHS_FILE)
    assert len(epochs) == 71 and (epochs["phase"] == "refit").sum() == 30
    # the gates are fixed: no record switches on in the refit
    w_refit = np.load(tmp_path / "a" / fitmod.WEIGHTS_FILE)
    l0_only = run_fit(synthetic_dir, tmp_path / "b", hp.replace(refit_epochs=0), device="cpu",
                      threads=THREADS)
    w_l0 = np.load(tmp_path / "b" / fitmod.WEIGHTS_FILE)
    assert ((w_refit > 0) == (w_l0 > 0)).all()
    assert l0_only.summary["refit"] is None
    assert result.timing["refit_epochs_run"] == 30 and result.timing["epochs_run"] == 40
    # killed in the refit and resumed: bit-identical weights
    def kill(event):
        if event["event"] == "epoch" and event.get("phase") == "refit" and event["epoch"] == 15:
            raise KeyboardInterrupt("simulated kill")
    with pytest.raises(KeyboardInterrupt):
        run_fit(synthetic_dir, tmp_path / "c", hp, device="cpu", threads=THREADS, progress=kill)
    resumed = run_fit(synthetic_dir, tmp_path / "c", hp, device="cpu", threads=THREADS)
    assert resumed.timing["refit_epochs_run"] == 20  # from the checkpoint at refit epoch 10
    assert np.array_equal(np.load(tmp_path / "c" / fitmod.WEIGHTS_FILE), w_refit)
    s1 = json.loads((tmp_path / "a" / fitmod.SUMMARY_FILE).read_text())
    s2 = json.loads((tmp_path / "c" / fitmod.SUMMARY_FILE).read_text())
    s1.pop("checkpoint"), s2.pop("checkpoint")
    assert s1 == s2


def test_more_l0_epochs_after_a_refit_continue_exactly(synthetic_dir, tmp_path):
    """A checkpoint taken after a refit, resumed with more L0 epochs, drops the refit and ends
    with the weights of a straight fit of that many epochs."""
    hp = fit_preset("regional", epochs=20, refit_epochs=10, log_every=5, checkpoint_every=10,
                    lambda_l0=1e-2)
    run_fit(synthetic_dir, tmp_path / "a", hp, device="cpu", threads=THREADS)
    longer = hp.replace(epochs=30)
    resumed = run_fit(synthetic_dir, tmp_path / "a", longer, device="cpu", threads=THREADS)
    assert resumed.timing["epochs_run"] == 10 and resumed.timing["refit_epochs_run"] == 10
    straight = run_fit(synthetic_dir, tmp_path / "b", longer, device="cpu", threads=THREADS)
    assert np.array_equal(np.load(tmp_path / "a" / fitmod.WEIGHTS_FILE),
                          np.load(tmp_path / "b" / fitmod.WEIGHTS_FILE))
    assert resumed.summary["refit"] == straight.summary["refit"]
