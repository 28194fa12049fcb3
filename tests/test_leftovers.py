"""Leftovers (issue 21, case 7): temporaries of killed writes are swept at the next write, and a
fit folder whose outputs are not all there (weights without their summary, or a summary of
other weights) is detected and never used as a complete fit."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
import time

import dagster as dg
import numpy as np
import pytest

from calibration_core import fit as fitmod
from calibration_core.io_utils import atomic_path, is_temporary_name, sweep_stale_temporaries
from calibration_core.package_io import save_package
from calibration_core.synthetic import synthetic_package

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _dead_pid() -> int:
    """The pid of a process that has exited (and been reaped)."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def _age(path, seconds=3600.0):
    past = time.time() - seconds
    os.utime(path, (past, past), follow_symlinks=False)


def test_a_killed_write_leaves_a_temporary_that_the_next_sweep_removes(tmp_path):
    folder = tmp_path / "districts"
    folder.mkdir()
    (folder / "MA-01.h5").write_bytes(b"the last good file")
    script = textwrap.dedent(f"""
        import os, sys
        sys.path.insert(0, {REPO!r})
        from calibration_core.io_utils import atomic_path
        with atomic_path({str(folder / "MA-01.h5")!r}, suffix=".h5") as tmp:
            tmp.write_bytes(b"half a file")
            os.kill(os.getpid(), 9)
    """)
    proc = subprocess.run([sys.executable, "-c", script])
    assert proc.returncode == -9
    left = [p for p in folder.iterdir() if p.name != "MA-01.h5"]
    assert len(left) == 1 and left[0].name.startswith(".MA-01.h5.p") and is_temporary_name(
        left[0].name), left
    assert (folder / "MA-01.h5").read_bytes() == b"the last good file"
    # the next run starts after the kill: the writer is gone, the file older than the run
    removed = sweep_stale_temporaries(folder, older_than=time.time() + 1)
    assert removed == left and sorted(p.name for p in folder.iterdir()) == ["MA-01.h5"]


def test_sweep_removes_only_stale_temporaries_of_dead_writers(tmp_path):
    dead, me = _dead_pid(), os.getpid()
    names = {
        f".MA-01.h5.p{dead}.k2j3h4g5.h5": True,  # killed writer
        ".MA-02.h5.abc_123.h5": False,  # not a mkstemp name (7 random characters)
        ".MA-03.h5.x8y7z6w5.h5": True,  # an earlier version's temporary (no pid)
        f".MA-04.h5.p{me}.q1w2e3r4.h5": False,  # a live writer's (this process)
        f".weights.npy.p{dead}.zzzzzzzz.npy": True,
        ".keep": False, "MA-05.h5": False, ".hidden_notes.txt": False,
    }
    for name in names:
        (tmp_path / name).write_bytes(b"x")
    fresh = tmp_path / f".MA-06.h5.p{dead}.aaaaaaaa.h5"  # written after the run started
    fresh.write_bytes(b"x")
    stage = tmp_path / f".package.p{dead}.a1b2c3d4"  # a staging folder of a killed swap
    (stage / "sub").mkdir(parents=True)
    (stage / "sub" / "matrix.npz").write_bytes(b"x")
    old_with_final = tmp_path / ".package.old"
    old_with_final.mkdir()
    (tmp_path / "package").mkdir()
    old_alone = tmp_path / ".regional.old"  # its folder is missing: the last good copy, kept
    old_alone.mkdir()
    for path in tmp_path.iterdir():
        if path != fresh:
            _age(path)
    started = time.time() - 60
    removed = {p.name for p in sweep_stale_temporaries(tmp_path, older_than=started)}
    expected = {n for n, stale in names.items() if stale} | {stage.name, ".package.old"}
    assert removed == expected
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        {n for n, stale in names.items() if not stale}
        | {fresh.name, "package", ".regional.old"})
    assert sweep_stale_temporaries(tmp_path / "missing") == []


def test_package_swap_publishes_all_files_together(tmp_path):
    folder = tmp_path / "calibration" / "package"
    save_package(synthetic_package(30, 100, 3, seed=1), folder)
    before = {p.name: p.read_bytes() for p in folder.iterdir()}

    class Boom(Exception):
        pass

    import calibration_core.package_io as pio

    original = pio.np.save

    def failing_save(*args, **kwargs):
        raise Boom("killed while writing the package")

    pio.np.save = failing_save
    try:
        with pytest.raises(Boom):
            save_package(synthetic_package(30, 100, 3, seed=2), folder)
    finally:
        pio.np.save = original
    # the old package is whole, and no staging folder is left beside it
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before
    assert [p.name for p in folder.parent.iterdir()] == ["package"]
    assert oct(folder.stat().st_mode & 0o777) == "0o755"


# ---------------------------------------------------------------------------------------------
# fit folders


@pytest.fixture(scope="module")
def package_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("left") / "package"
    save_package(synthetic_package(150, 1200, 4, seed=7), folder)
    return folder


def _hp(epochs=20):
    return fitmod.fit_preset("regional", epochs=epochs, checkpoint_every=10, log_every=5)


def _complete_fit(package_dir, out):
    return fitmod.run_fit(package_dir, out, _hp(), device="cpu", threads=1)


def test_weights_without_summary_are_an_incomplete_fit(package_dir, tmp_path):
    out = tmp_path / "calibration" / "regional"
    _complete_fit(package_dir, out)
    weights, summary = fitmod.load_fit_weights(out)
    assert summary["files"]["weights.npy"] == summary["weights_sha256"]
    (out / fitmod.SUMMARY_FILE).unlink()  # killed after weights.npy, before the summary
    with pytest.raises(fitmod.IncompleteFitError, match="has weights but no fit_summary.json"):
        fitmod.read_fit_outputs(out)
    with pytest.raises(fitmod.IncompleteFitError):
        fitmod.load_fit_weights(out)

    # the area assets refuse it (before loading anything else)
    from assets.areas import _Inputs
    from resources.store import ArtifactStore

    store = ArtifactStore(root=str(tmp_path))
    with pytest.raises(fitmod.IncompleteFitError, match="fit_summary.json"):
        _Inputs(store, "regional", "clone")

    # a resumed fit completes the folder: same weights, summary back
    fitmod.run_fit(package_dir, out, _hp(), device="cpu", threads=1)
    again, _ = fitmod.load_fit_weights(out)
    np.testing.assert_array_equal(again, weights)


def test_a_refit_killed_between_outputs_leaves_no_mixed_folder(package_dir, tmp_path,
                                                             monkeypatch):
    out = tmp_path / "regional"
    _complete_fit(package_dir, out)
    old_weights = (out / fitmod.WEIGHTS_FILE).read_bytes()

    def killed(*args, **kwargs):
        raise KeyboardInterrupt("killed after weights.npy and diagnostics.csv")

    monkeypatch.setattr(fitmod, "plot_fit_history", killed)
    with pytest.raises(KeyboardInterrupt):
        fitmod.run_fit(package_dir, out, _hp(epochs=30), device="cpu", threads=1)
    assert (out / fitmod.WEIGHTS_FILE).read_bytes() != old_weights  # new weights were written
    # ... and the old summary (of the old weights) is not there to vouch for them
    with pytest.raises(fitmod.IncompleteFitError):
        fitmod.read_fit_outputs(out)


def test_a_changed_output_breaks_the_summary(package_dir, tmp_path):
    out = tmp_path / "regional"
    _complete_fit(package_dir, out)
    (out / fitmod.DIAGNOSTICS_FILE).write_text("target,value\n")
    with pytest.raises(fitmod.IncompleteFitError, match="diagnostics.csv does not match"):
        fitmod.read_fit_outputs(out)
    fitmod.seal_fit_outputs(out, {"note": "re-sealed"})
    assert fitmod.read_fit_outputs(out)["note"] == "re-sealed"


def test_fit_asset_sweeps_stale_temporaries_and_completes_an_incomplete_folder(
        package_dir, tmp_path):
    from assets import fit as fit_assets
    from resources.fitter import WeightFitter
    from resources.settings import BuildSettings
    from resources.store import ArtifactStore

    shutil.copytree(package_dir, tmp_path / "calibration" / "package")
    out = tmp_path / "calibration" / "regional"
    out.mkdir(parents=True)
    dead = _dead_pid()
    stale = [out / f".weights.npy.p{dead}.abcdefgh.npy", out / ".checkpoint.pt.x1y2z3w4.pt"]
    for path in stale:
        path.write_bytes(b"left by a killed fit")
        _age(path)
    np.save(out / fitmod.WEIGHTS_FILE, np.ones(3))  # weights of a killed fit, no summary
    store = ArtifactStore(root=str(tmp_path))
    resources = {"store": store,
                 "settings": BuildSettings(preset="tiny", regional_epochs=10, national_epochs=10),
                 "fitter": WeightFitter(mode="in_process", device="cpu", threads=1)}
    # the quality check of the incomplete folder fails and says why
    check = fit_assets._quality_check("regional", fit_assets.FitQualityConfig(), store,
                                      BuildSettings(preset="demo"))
    assert not check.passed and "no fit_summary.json" in check.description
    instance = dg.DagsterInstance.ephemeral()
    result = dg.materialize([fit_assets.regional_weights, fit_assets.regional_weights_fit_quality],
                            resources=resources, instance=instance,
                            run_config={"ops": {"regional_weights_fit_quality": {
                                "config": {"max_mean_abs_rel_error": 10.0}}}})
    assert result.success
    assert not any(path.exists() for path in stale)
    assert [p.name for p in out.iterdir() if p.name.startswith(".")] == []
    summary = fitmod.read_fit_outputs(out)
    assert summary["n_columns"] == 1200
    assert all(e.passed for e in result.get_asset_check_evaluations())


def test_raw_inputs_asset_sweeps_a_killed_collects_staging_folder(real_raw_dir, tmp_path):
    """A collect killed mid-way leaves ``.raw.staging.p<pid>.<random>`` beside ``raw/``; the
    next ``raw_public_inputs`` run removes it (and keeps visible files)."""
    import assets.raw_inputs
    from calibration_core.io_utils import temporary_prefix
    from resources.raw_inputs import DirectoryProvider
    from resources.store import ArtifactStore

    root = tmp_path / "store"
    root.mkdir()
    stale = root / temporary_prefix("raw.staging").replace(f".p{os.getpid()}.",
                                                            f".p{_dead_pid()}.")
    stale = stale.with_name(stale.name + "abcd1234")
    stale.mkdir()
    (stale / "cps.csv.gz").write_bytes(b"partial")
    _age(stale)
    keep = root / "notes.txt"
    keep.write_text("mine")
    result = dg.materialize(
        [assets.raw_inputs.raw_public_inputs],
        resources={"store": ArtifactStore(root=str(root)),
                   "raw_inputs": DirectoryProvider(path=str(real_raw_dir))})
    assert result.success
    assert not stale.exists() and keep.read_text() == "mine"
    assert (root / "raw" / "manifest.json").is_file()
