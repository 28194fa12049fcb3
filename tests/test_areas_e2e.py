"""The ``tiny`` preset end to end: ``python -m jobs.build_cli --preset tiny`` exactly as the
README gives it (every asset but the release, all 488 area partitions in one batched run, the
preset's own blocking checks), then the ``stage_release`` and ``promote`` jobs and a verified
published manifest on that build's instance; then one district rebuilt alone.
"""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

pytestmark = pytest.mark.slow


def test_tiny_preset_end_to_end(tmp_path, real_raw_dir, monkeypatch):
    import os
    import subprocess
    import sys
    from pathlib import Path

    import dagster as dg

    import assets.areas as areas
    import assets.fit
    import assets.microdata
    import assets.package
    import assets.raw_inputs
    import assets.release
    import assets.state_simulations
    import assets.targets_db
    import assets.validation
    from calibration_core import release as rel
    from calibration_core.areas import all_area_keys
    from calibration_core.io_utils import sha256_file
    from jobs import promote, stage_release
    from resources.fitter import WeightFitter
    from resources.publisher import LocalDirectoryPublisher
    from resources.raw_inputs import DirectoryProvider
    from resources.settings import BuildSettings
    from resources.store import ArtifactStore

    # exactly the README's tiny build, as a user runs it: its own blocking checks (the preset's
    # fit-quality threshold, no run-config override) must pass and every file must be written
    env = {**os.environ, "AREACAL_HOME": str(tmp_path / "store"),
           "DAGSTER_HOME": str(tmp_path / "dagster_home")}
    env.pop("AREACAL_PRESET", None)
    repo = Path(__file__).resolve().parents[1]
    built = subprocess.run([sys.executable, "-m", "jobs.build_cli", "--preset", "tiny"],
                           cwd=repo, env=env, capture_output=True, text=True, timeout=1800)
    assert built.returncode == 0, built.stdout[-3000:] + built.stderr[-5000:]
    assert "build succeeded" in built.stdout

    modules = [assets.raw_inputs, assets.targets_db, assets.microdata,
               assets.state_simulations, assets.package, assets.fit, areas, assets.validation,
               assets.release]
    store = ArtifactStore(root=str(tmp_path / "store"))
    resources = {"store": store, "raw_inputs": DirectoryProvider(path=str(real_raw_dir)),
                 "settings": BuildSettings(preset="tiny"),
                 "fitter": WeightFitter(device="cpu", mode="in_process"),
                 "publisher": LocalDirectoryPublisher()}
    full_defs = dg.Definitions(assets=dg.load_assets_from_modules(modules),
                               asset_checks=dg.load_asset_checks_from_modules(modules),
                               jobs=[stage_release, promote], resources=resources)
    defs = list(full_defs.assets) + list(full_defs.asset_checks)
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "dagster_home"))
    with dg.DagsterInstance.get() as instance:
        checks = {}
        for run in sorted(instance.get_runs(), key=lambda r: r.run_id):
            for e in instance.all_logs(run.run_id):
                if e.dagster_event and e.dagster_event.event_type_value == "ASSET_CHECK_EVALUATION":
                    data = e.dagster_event.event_specific_data
                    checks.setdefault(data.check_name, []).append(data.passed)
        for name in ("area_files_valid", "xw_consistency", "sanity_ceilings",
                     "area_files_complete", "fit_quality", "targets_db_geographies"):
            assert checks.get(name) and all(checks[name]), (name, checks)
        assert len(instance.get_runs()) == 1  # one run over the whole partition range
        # the default executor (multiprocess): a process per step, each forked from a server
        # that had built policyengine-us's system (jobs/step_preload.py), so that no chunk step
        # paid its start (~30-40 s in a spawned process)
        run_id = instance.get_runs()[0].run_id
        starts = instance.all_logs(run_id, of_type=dg.DagsterEventType.STEP_START)
        assert len({e.dagster_event.pid for e in starts}) == len(starts) > 20
        sims = instance.fetch_materializations(dg.AssetKey("state_simulations"),
                                               limit=1).records[0].asset_materialization.metadata
        assert sims["policyengine_start_seconds"].value < 2.0, sims["policyengine_start_seconds"]

        # release: the gate opens on this build's checks; promote; the manifest verifies
        staged = full_defs.resolve_job_def("stage_release").execute_in_process(
            instance=instance, raise_on_error=False)
        assert staged.success and staged.asset_materializations_for_node("staged_release")
        promoted = full_defs.resolve_job_def("promote").execute_in_process(instance=instance)
        assert promoted.asset_materializations_for_node("published_release")
        published = tmp_path / "store" / "release" / "published"
        assert rel.verify_manifest(published, require_complete=True) == []
        manifest = json.loads((published / "manifest.json").read_text())
        assert len(manifest["files"]) >= 489

        # every partition materialized, each with its own figures
        key = dg.AssetKey("area_datasets")
        assert instance.get_materialized_partitions(key) == set(all_area_keys())
        latest = {}
        for pk in ("state-CA", "district-CA-12", "city-NYC"):
            rec = instance.fetch_materializations(
                dg.AssetRecordsFilter(asset_key=key, asset_partitions=[pk]), limit=1).records[0]
            latest[pk] = rec.asset_materialization.metadata
        assert latest["state-CA"]["sha256"].value != latest["district-CA-12"]["sha256"].value
        assert latest["state-CA"]["households"].value >= latest["district-CA-12"]["households"].value
        for pk, kind, code in (("state-CA", "states", "CA"), ("district-CA-12", "districts",
                                                               "CA-12"), ("city-NYC", "cities", "NYC")):
            path = tmp_path / "store" / "areas" / kind / f"{code}.h5"
            assert path.is_file() and sha256_file(path) == latest[pk]["sha256"].value
        assert (tmp_path / "store" / "areas" / "national" / "US.h5").is_file()

        summary = json.loads((tmp_path / "store" / "areas" / "validation" /
                              "summary.json").read_text())
        assert summary["inconsistent_in_sample"] == 0 and summary["sanity_failures"] == 0
        levels = {(r["level"], r["sample"]) for r in summary["by_level"]}
        assert {("national", "in-sample"), ("state", "in-sample"),
                ("district", "in-sample")} <= levels
        # every file, re-simulated or not, holds exactly its area's cells at the fitted weights
        structure = pd.read_csv(tmp_path / "store" / "areas" / "validation" /
                                "file_structure.csv", keep_default_na=False)
        assert len(structure) == len(all_area_keys()) + 1
        assert (structure["problems"] == "").all(), structure[structure["problems"] != ""]
        assert summary["files_structure_mismatched"] == 0
        assert structure["simulated"].sum() == summary["simulated_files"] < len(structure)

        # one district alone: just that file, byte-identical to the batched build's
        target = tmp_path / "store" / "areas" / "districts" / "CA-12.h5"
        other = tmp_path / "store" / "areas" / "states" / "CA.h5"
        before, other_mtime = sha256_file(target), other.stat().st_mtime_ns
        target.unlink()
        single = dg.materialize(defs, resources=resources, instance=instance,
                                selection=["area_datasets"], partition_key="district-CA-12")
        assert single.success
        assert sha256_file(target) == before
        assert other.stat().st_mtime_ns == other_mtime

    # the file loads by path in policyengine-us and gives its own households and weights
    from calibration_core.h5_dataset import read_dataset
    from policyengine_us import Microsimulation

    path = tmp_path / "store" / "areas" / "states" / "CA.h5"
    tables, _ = read_dataset(path)
    sim = Microsimulation(dataset=str(path))
    weights = sim.calculate("household_weight", 2024, use_weights=False)
    np.testing.assert_allclose(np.asarray(weights),
                               tables["household"]["household_weight"].to_numpy(), rtol=1e-6)
    assert (np.asarray(sim.calculate("state_fips", 2024, use_weights=False)) == 6).all()
