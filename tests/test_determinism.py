"""Deterministic artifacts (issue 21, case 6): produced twice from the same inputs, in other
folders and under other temporary names, the state simulations, the calibration package, every
fit output but ``timing.json`` and the checkpoint are byte-identical, and so are the release's
input digests of two such stores. Timings live in memory, in Dagster metadata and in
``timing.json`` only."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from calibration_core import fit as fitmod
from calibration_core import simulation as simu
from calibration_core.package_io import TIMING_METADATA_KEYS, load_package, save_package
from calibration_core.synthetic import synthetic_package
from tests.package_fixtures import synthetic_tables

#: The one kind of file whose content is a run's wall times, never a function of its inputs.
TIMING_FILES = {fitmod.TIMING_FILE}


def _files(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def _state_simulations(run: int) -> simu.StateSimulations:
    """A small StateSimulations as ``simulate_states`` returns it, with this run's timings."""
    tables = synthetic_tables(12, seed=4)
    structure = simu.Structure.from_tables(tables)
    n_states = len(simu.STATE_ORDER)
    n_person = len(structure.ids["person"])
    rng = np.random.default_rng(0)
    metadata = {
        "n_households": structure.n_households, "n_persons": n_person,
        "variables": ["age", "snap"], "state_invariant": ["age"], "state_dependent": ["snap"],
        "chunks": [[1, 2], [4]], "workers": 2,
        "representative_county": {"AL": "01073"},
        # the run's own figures: they differ between two identical runs
        "chunk_seconds": [12.3 + run, 4.5], "traced_chunk_seconds": 12.3 + run,
        "stacked_seconds": 16.8 + run, "start_seconds": [40.1 + run, 0.0],
        "total_seconds": 60.0 + run,
    }
    return simu.StateSimulations(
        structure, tables["household"]["state_fips"].to_numpy().astype(np.int64),
        {"age": "person", "snap": "spm_unit"},
        {"age": tables["person"]["age"].to_numpy().astype(np.float32)},
        {"snap": rng.uniform(0, 500, (n_states, structure.n_households)).astype(np.float32)},
        {"age": [], "snap": ["*"]}, ["snap"], metadata)


def test_state_simulations_file_has_no_timings_and_is_byte_identical(tmp_path):
    paths = []
    for run in (1, 2):
        result = _state_simulations(run)
        path = tmp_path / f"build{run}" / "calibration" / "state_simulations.npz"
        simu.save_state_simulations(result, path)
        paths.append(path)
        # the caller (the asset) still has the timings to report
        assert result.metadata["total_seconds"] == 60.0 + run
    assert paths[0].read_bytes() == paths[1].read_bytes()
    loaded = simu.load_state_simulations(paths[0])
    assert not set(simu.TIMING_METADATA_KEYS) & set(loaded.metadata)
    assert loaded.metadata["chunks"] == [[1, 2], [4]]
    np.testing.assert_array_equal(loaded.by_state["snap"], _state_simulations(1).by_state["snap"])


def test_package_is_byte_identical_without_timings(tmp_path):
    folders = []
    for run in (1, 2):
        package = synthetic_package(40, 200, 3, seed=5)
        package.metadata.update({"select_seconds": 0.1 * run, "assembly_seconds": 2.0 * run,
                                 "build_seconds": 3.0 * run, "n_clones": 3})
        folder = tmp_path / f"build{run}" / "calibration" / "package"
        if run == 2:  # a second write over an existing package gives the same bytes too
            save_package(synthetic_package(10, 20, 2, seed=9), folder)
        save_package(package, folder)
        folders.append(folder)
    first, second = _files(folders[0]), _files(folders[1])
    assert sorted(first) == ["initial_weights.npy", "matrix.npz", "metadata.json",
                             "targets.parquet"]
    assert first == second
    meta = json.loads(first["metadata.json"])
    assert not set(TIMING_METADATA_KEYS) & set(meta) and meta["n_clones"] == 3
    assert str(tmp_path) not in first["metadata.json"].decode()
    assert load_package(folders[0]).metadata == meta
    # nothing hidden left beside the package (staging folder, previous package)
    assert [p.name for p in folders[1].parent.iterdir()] == ["package"]


@pytest.fixture(scope="module")
def package_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("det") / "package"
    save_package(synthetic_package(200, 1500, 4, seed=3), folder)
    return folder


def _fit(package_dir, out_dir, epochs=20):
    hp = fitmod.fit_preset("regional", epochs=epochs, checkpoint_every=10, log_every=5)
    return fitmod.run_fit(package_dir, out_dir, hp, device="cpu", threads=1)


def test_fit_outputs_and_checkpoint_are_byte_identical(package_dir, tmp_path):
    outs = [tmp_path / "one" / "calibration" / "regional",
            tmp_path / "two" / "elsewhere" / "regional"]
    for out in outs:
        _fit(package_dir, out)
    first, second = _files(outs[0]), _files(outs[1])
    assert set(first) == {"weights.npy", "diagnostics.csv", "epochs.csv", "fit_plot.png",
                          "fit_summary.json", "timing.json", "checkpoint.pt"}
    differing = sorted(name for name in first if first[name] != second[name])
    assert set(differing) <= TIMING_FILES, differing
    summary = json.loads(first["fit_summary.json"])
    assert summary["checkpoint"] == "checkpoint.pt"
    assert str(tmp_path) not in first["fit_summary.json"].decode()
    # the checkpoint's zip records carry a fixed archive name, not the temporary file's
    import zipfile

    names = zipfile.ZipFile(outs[0] / "checkpoint.pt").namelist()
    assert names and all(n.startswith("archive/") for n in names), names
    assert not any(key.endswith("_seconds") for key in summary)


def test_release_input_digests_of_two_identical_builds_are_equal(package_dir, tmp_path):
    from calibration_core import release

    roots = [tmp_path / "a", tmp_path / "b"]
    for run, root in enumerate(roots, start=1):
        (root / "raw").mkdir(parents=True)
        (root / "raw" / "manifest.json").write_text('{"files": {}}\n')
        (root / "targets").mkdir()
        (root / "targets" / "targets.db").write_bytes(b"same database")
        simu.save_state_simulations(_state_simulations(run),
                                    root / "calibration" / "state_simulations.npz")
        package = synthetic_package(200, 1500, 4, seed=3)
        package.metadata["build_seconds"] = float(run)
        save_package(package, root / "calibration" / "package")
        _fit(root / "calibration" / "package", root / "calibration" / "regional", epochs=10)
    digests = [release.input_digests(root) for root in roots]
    assert "calibration/regional/checkpoint.pt" in digests[0]
    assert "calibration/state_simulations.npz" in digests[0]
    differing = sorted(k for k in digests[0] if digests[0][k] != digests[1].get(k))
    assert digests[0] == digests[1], (
        f"{differing} differ between two identical builds: release.input_digests must skip "
        f"the unhashed timing files {sorted(TIMING_FILES)}")
    manifests = [{"files": {}, "inputs": d, "config": {"preset": "tiny"}} for d in digests]
    assert release.content_digest(manifests[0]) == release.content_digest(manifests[1])
