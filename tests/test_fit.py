"""The L0 weight fit: convergence, exact kill/resume, checkpoint refusal, determinism, Dagster
assets in-process and through Pipes, and the blocking quality check."""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import dagster as dg
import numpy as np
import pandas as pd
import pytest

from calibration_core import fit as fitmod
from calibration_core.fit import CheckpointMismatchError, fit_preset, run_fit
from calibration_core.package_io import load_package, save_package
from calibration_core.synthetic import synthetic_package

THREADS = 1  # bit-identical results need the same thread count; 1 is also fastest on tiny data


@pytest.fixture(scope="module")
def package_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("pkg") / "package"
    save_package(synthetic_package(300, 3000, 5, seed=3), folder)
    return folder


def _hp(**overrides):
    base = dict(epochs=40, checkpoint_every=10, log_every=5, refit_epochs=0)  # L0 phase only
    base.update(overrides)
    return fit_preset("regional", **base)


def test_loss_decreases_and_outputs(package_dir, tmp_path):
    result = run_fit(package_dir, tmp_path, _hp(epochs=60), device="cpu", threads=THREADS)
    epochs = pd.read_csv(tmp_path / fitmod.EPOCHS_FILE)
    evals = epochs.dropna(subset=["mean_abs_rel_error"])
    assert list(evals["epoch"])[:2] == [0, 5] and evals["epoch"].iloc[-1] == 60
    assert evals["eval_data_loss"].iloc[-1] < 0.2 * evals["eval_data_loss"].iloc[0]
    assert epochs["loss"].iloc[-10:].mean() < epochs["loss"].iloc[1:11].mean()
    assert result.summary["mean_abs_rel_error"] < evals["mean_abs_rel_error"].iloc[0]

    weights = np.load(tmp_path / fitmod.WEIGHTS_FILE)
    package = load_package(package_dir)
    assert weights.shape == (package.n_columns,) and (weights >= 0).all()
    diag = pd.read_csv(tmp_path / fitmod.DIAGNOSTICS_FILE)
    assert list(diag.columns[:7]) == ["target", "value", "estimate", "rel_error",
                                      "abs_rel_error", "achievable", "holdout"]
    np.testing.assert_allclose(diag["estimate"], package.matrix @ weights, rtol=1e-9)
    fitted = diag[diag["in_fit"]]
    assert fitted["achievable"].all() and not fitted["holdout"].any()
    assert result.summary["mean_abs_rel_error"] == pytest.approx(fitted["abs_rel_error"].mean())
    # the unachievable rows are reported but not fitted
    assert (~diag["achievable"]).sum() == 2 and not diag.loc[~diag["achievable"], "in_fit"].any()
    assert (tmp_path / fitmod.PLOT_FILE).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    summary = json.loads((tmp_path / fitmod.SUMMARY_FILE).read_text())
    assert summary["active_records"] == int((weights > 0).sum())


def test_kill_and_resume_gives_identical_weights(package_dir, tmp_path):
    straight = run_fit(package_dir, tmp_path / "straight", _hp(), device="cpu", threads=THREADS)

    def kill_at_25(event):
        if event["event"] == "epoch" and event["epoch"] == 25:
            raise KeyboardInterrupt("simulated kill")

    killed = tmp_path / "killed"
    with pytest.raises(KeyboardInterrupt):
        run_fit(package_dir, killed, _hp(), device="cpu", threads=THREADS, progress=kill_at_25)
    assert not (killed / fitmod.WEIGHTS_FILE).exists()
    assert fitmod.read_checkpoint(killed / fitmod.CHECKPOINT_FILE)["epoch"] == 20
    resumed = run_fit(package_dir, killed, _hp(), device="cpu", threads=THREADS)
    assert resumed.timing["resumed_from_epoch"] == 20
    assert (killed / fitmod.WEIGHTS_FILE).read_bytes() == straight.weights_path.read_bytes()
    for name in (fitmod.EPOCHS_FILE, fitmod.DIAGNOSTICS_FILE, fitmod.SUMMARY_FILE):
        a = (killed / name).read_bytes().replace(str(killed).encode(), b"X")
        b = (tmp_path / "straight" / name).read_bytes().replace(
            str(tmp_path / "straight").encode(), b"X")
        assert a == b, name


def test_more_epochs_continue_an_earlier_fit_exactly(package_dir, tmp_path):
    straight = run_fit(package_dir, tmp_path / "a", _hp(epochs=30), device="cpu", threads=THREADS)
    run_fit(package_dir, tmp_path / "b", _hp(epochs=20), device="cpu", threads=THREADS)
    longer = run_fit(package_dir, tmp_path / "b", _hp(epochs=30), device="cpu", threads=THREADS)
    assert longer.timing["resumed_from_epoch"] == 20
    assert longer.weights_path.read_bytes() == straight.weights_path.read_bytes()


def test_checkpoint_of_another_fit_is_refused(package_dir, tmp_path):
    run_fit(package_dir, tmp_path, _hp(epochs=10), device="cpu", threads=THREADS)
    with pytest.raises(CheckpointMismatchError, match="lambda_l0"):
        run_fit(package_dir, tmp_path, _hp(epochs=10, lambda_l0=2e-2), device="cpu")
    with pytest.raises(CheckpointMismatchError, match="past the requested"):
        run_fit(package_dir, tmp_path, _hp(epochs=5), device="cpu")

    other = tmp_path / "other_package"
    package = load_package(package_dir)
    first_fitted = int(np.flatnonzero(package.fit_mask())[0])
    package.targets.loc[first_fitted, "value"] *= 1.5  # another target set
    save_package(package, other)
    with pytest.raises(CheckpointMismatchError, match="package_fingerprint.*targets_sha256"):
        run_fit(other, tmp_path, _hp(epochs=10), device="cpu")

    events = []
    result = run_fit(other, tmp_path, _hp(epochs=10), device="cpu", threads=THREADS,
                     progress=events.append, on_checkpoint_mismatch="restart")
    assert [e["event"] for e in events][0] == "checkpoint_discarded"
    assert result.timing["resumed_from_epoch"] == 0

    (tmp_path / "bad.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(fitmod.FitError, match="bad.pt cannot be read"):
        run_fit(package_dir, tmp_path / "x", _hp(), checkpoint_path=tmp_path / "bad.pt")


def test_deterministic_and_seeded(package_dir, tmp_path):
    a = run_fit(package_dir, tmp_path / "a", _hp(epochs=15), device="cpu", threads=THREADS,
                resume=False)
    b = run_fit(package_dir, tmp_path / "b", _hp(epochs=15), device="cpu", threads=THREADS,
                resume=False)
    for name in (fitmod.WEIGHTS_FILE, fitmod.DIAGNOSTICS_FILE, fitmod.EPOCHS_FILE,
                 fitmod.PLOT_FILE):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name
    c = run_fit(package_dir, tmp_path / "c", _hp(epochs=15, seed=7), device="cpu",
                threads=THREADS)
    assert not np.array_equal(np.load(a.weights_path), np.load(c.weights_path))
    assert a.summary["weights_sha256"] == b.summary["weights_sha256"]


def test_cli_and_bad_inputs(package_dir, tmp_path, capsys):
    assert fitmod.main(["--package", str(package_dir), "--out", str(tmp_path / "cli"),
                        "--preset", "national", "--epochs", "5", "--device", "cpu",
                        "--threads", "1"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["summary"]["hyper_parameters"]["lambda_l0"] == 2e-2
    # the CLI scales the preset's lambda_l2 to this 3,000-column package
    assert printed["summary"]["hyper_parameters"]["lambda_l2"] == pytest.approx(
        1e-12 * 3000 / fitmod.REFERENCE_COLUMNS)
    assert (tmp_path / "cli" / fitmod.WEIGHTS_FILE).exists()
    with pytest.raises(fitmod.FitError, match="unknown fit preset"):
        fit_preset("local")
    with pytest.raises(fitmod.FitError, match="init_keep_prob"):
        fit_preset("regional", init_keep_prob=1.0)
    if not fitmod.torch.cuda.is_available():
        with pytest.raises(fitmod.FitError, match="no CUDA device"):
            fitmod.resolve_device("cuda")
        assert fitmod.resolve_device("auto").type == "cpu"


# ------------------------------------------------------------------------------------------------
# Dagster


def _store_with_package(root, package_dir):
    from resources.store import ArtifactStore

    shutil.copytree(package_dir, root / "calibration" / "package")
    return ArtifactStore(root=str(root))


def _resources(store, mode):
    from resources.fitter import WeightFitter
    from resources.settings import BuildSettings

    return {"store": store, "settings": BuildSettings(preset="tiny", regional_epochs=20,
                                                      national_epochs=20),
            "fitter": WeightFitter(mode=mode, device="cpu", threads=THREADS)}


def test_pipes_mode_gives_the_in_process_weights(package_dir, tmp_path):
    from assets import fit as fit_assets

    weights = {}
    for mode in ("in_process", "pipes"):
        root = tmp_path / mode
        store = _store_with_package(root, package_dir)
        instance = dg.DagsterInstance.ephemeral()
        result = dg.materialize(
            [fit_assets.regional_weights, fit_assets.regional_weights_fit_quality],
            resources=_resources(store, mode), instance=instance)
        assert result.success
        assert all(e.passed for e in result.get_asset_check_evaluations())
        meta = result.asset_materializations_for_node("regional_weights")[0].metadata
        assert meta["mode"].value == mode and meta["device"].value == "cpu"
        assert meta["epochs"].value == 20
        assert meta["plot"].value.startswith("![")
        for key in ("mean_abs_rel_error", "median_abs_rel_error", "max_abs_rel_error",
                    "active_records", "sparsity", "epochs_per_second", "final_loss"):
            assert key in meta, key
        weights[mode] = (root / "calibration" / "regional" / "weights.npy").read_bytes()
        messages = [entry.user_message for entry in instance.all_logs(result.run_id)]
        assert any("epoch 20/20" in m for m in messages), f"no progress logged in {mode} mode"
    assert weights["pipes"] == weights["in_process"]


def test_two_fits_separate_checkpoints_and_blocking_check(package_dir, tmp_path):
    from assets import fit as fit_assets

    @dg.asset(deps=[fit_assets.regional_weights])
    def downstream_area() -> None:
        return None

    store = _store_with_package(tmp_path, package_dir)
    result = dg.materialize(
        [fit_assets.regional_weights, fit_assets.national_weights,
         fit_assets.regional_weights_fit_quality, fit_assets.national_weights_fit_quality,
         downstream_area],
        resources=_resources(store, "in_process"), instance=dg.DagsterInstance.ephemeral(),
        run_config={"ops": {"regional_weights_fit_quality": {
            "config": {"max_mean_abs_rel_error": 1e-9}}}},
        raise_on_error=False,
    )
    evaluations = {(e.asset_key.path[-1], e.check_name): e.passed
                   for e in result.get_asset_check_evaluations()}
    assert evaluations == {("regional_weights", "fit_quality"): False,
                           ("national_weights", "fit_quality"): True}
    materialized = {e.asset_key.path[-1] for e in result.get_asset_materialization_events()}
    assert materialized == {"regional_weights", "national_weights"}  # downstream skipped
    regional = json.loads((tmp_path / "calibration/regional/fit_summary.json").read_text())
    national = json.loads((tmp_path / "calibration/national/fit_summary.json").read_text())
    # each fit has its own checkpoint, recorded relative to its folder (no absolute path)
    regional_ckpt = (tmp_path / "calibration/regional" / regional["checkpoint"]).resolve()
    national_ckpt = (tmp_path / "calibration/national" / national["checkpoint"]).resolve()
    assert regional["checkpoint"] == "checkpoint.pt"
    assert regional_ckpt != national_ckpt and regional_ckpt.is_file() and national_ckpt.is_file()
    assert national["expected_active_records"] < regional["expected_active_records"]


def test_lambda_l2_scales_with_package_columns(package_dir, tmp_path):
    ref = fitmod.REFERENCE_COLUMNS
    assert fit_preset("regional", n_columns=ref).lambda_l2 == pytest.approx(1e-8)
    assert fit_preset("regional", n_columns=ref // 10).lambda_l2 == pytest.approx(1e-9)
    assert fit_preset("regional", n_columns=48_000, lambda_l2=3e-9).lambda_l2 == 3e-9
    assert fitmod.package_columns(package_dir) == 3000
    with pytest.raises(fitmod.FitError, match="not a calibration package"):
        fitmod.package_columns(tmp_path)
    with pytest.raises(fitmod.FitError, match="n_columns must be > 0"):
        fitmod.scaled_lambda_l2(1e-8, 0)
    # the invariance the scaling exists for: the same population spread evenly over N columns
    # gets the same L2 term as over the reference's columns
    population = 134e6
    for n in (3000, 48_000, ref):
        lam = fit_preset("regional", n_columns=n).lambda_l2
        reference_term = 1e-8 * ref * (population / ref) ** 2
        assert lam * n * (population / n) ** 2 == pytest.approx(reference_term)


def test_pipes_fit_process_ends_when_its_step_process_is_gone(tmp_path):
    """A local Pipes fit arms the parent-death signal against the pid the step passed: when
    that process is already gone (here: a pid that is not its parent), it exits at once,
    before reading any Pipes context."""
    import subprocess
    import sys

    from resources.fitter import PARENT_PID_ENV

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    env = {**os.environ, PARENT_PID_ENV: str(dead.pid)}
    done = subprocess.run([sys.executable, "-m", "resources.pipes_fit_entry"], env=env,
                          cwd=Path(__file__).resolve().parents[1], capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 1 and "Traceback" not in done.stderr
