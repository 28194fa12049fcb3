"""The ``tiny`` preset end to end through Dagster: every asset but the release, all 488 area
partitions in one batched run with the blocking checks (as ``python -m jobs.build_cli`` runs
them); the ``stage_release`` and ``promote`` jobs and a verified published manifest; then one
district rebuilt alone.

One process imports policyengine-us (the state simulations run with ``workers=1``); the
validation report's stacked simulation reuses it.
"""
from __future__ import annotations

import json

import numpy as np
import pytest

pytestmark = pytest.mark.slow


def test_tiny_preset_end_to_end(tmp_path, real_raw_dir):
    import dagster as dg

    import assets.areas as areas
    import assets.fit
    import assets.microdata
    import assets.package
    import assets.raw_inputs
    import assets.release
    import assets.targets_db
    from calibration_core import release as rel
    from calibration_core.areas import all_area_keys
    from calibration_core.io_utils import sha256_file
    from jobs import promote, stage_release
    from jobs.partitioned import materialize_graph
    from resources.fitter import WeightFitter
    from resources.publisher import LocalDirectoryPublisher
    from resources.raw_inputs import DirectoryProvider
    from resources.settings import BuildSettings
    from resources.store import ArtifactStore

    modules = [assets.raw_inputs, assets.targets_db, assets.microdata, assets.package,
               assets.fit, areas, assets.release]
    store = ArtifactStore(root=str(tmp_path / "store"))
    resources = {"store": store, "raw_inputs": DirectoryProvider(path=str(real_raw_dir)),
                 "settings": BuildSettings(preset="tiny"),
                 "fitter": WeightFitter(device="cpu", mode="in_process"),
                 "publisher": LocalDirectoryPublisher()}
    full_defs = dg.Definitions(assets=dg.load_assets_from_modules(modules),
                               asset_checks=dg.load_asset_checks_from_modules(modules),
                               jobs=[stage_release, promote], resources=resources)
    defs = list(full_defs.assets) + list(full_defs.asset_checks)
    # the tiny preset's fits (300 households x 4 clones for 10k targets) are far from the fit
    # quality bar that production builds must meet; this test is about the area stage
    lenient = {"config": {"max_mean_abs_rel_error": 10.0}}
    run_config = {"ops": {"state_simulations": {"config": {"workers": 1}},
                          "regional_weights_fit_quality": lenient,
                          "national_weights_fit_quality": lenient}}
    with dg.DagsterInstance.ephemeral() as instance:
        assert materialize_graph(full_defs, instance, "* and not group:release",
                                 run_config=run_config)
        runs = instance.get_runs()
        assert len(runs) == 1  # one run over the whole partition range
        result = instance.all_logs(runs[0].run_id)
        checks = {e.dagster_event.event_specific_data.check_name:
                  e.dagster_event.event_specific_data.passed
                  for e in result if e.dagster_event and
                  e.dagster_event.event_type_value == "ASSET_CHECK_EVALUATION"}
        for name in ("area_files_valid", "xw_consistency", "sanity_ceilings",
                     "area_files_complete", "fit_quality", "targets_db_geographies"):
            assert checks.get(name) is True, (name, checks)

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
