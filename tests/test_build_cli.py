"""The build entry point (``python -m jobs.build_cli``) runs the asset checks with the assets,
so the release gate can see them."""
from __future__ import annotations

import dagster as dg

import assets.raw_inputs
import assets.targets_db
from jobs.partitioned import materialize_graph, split_selection
from resources.raw_inputs import PyPICacheProvider
from resources.store import ArtifactStore


def test_build_evaluates_the_checks_of_the_selection(real_raw_dir, tmp_path, dagster_instance):
    checks = list(dg.load_asset_checks_from_modules([assets.targets_db]))
    defs = dg.Definitions(
        assets=[assets.raw_inputs.raw_public_inputs, assets.targets_db.targets_db],
        asset_checks=checks,
        resources={"store": ArtifactStore(root=str(tmp_path)), "raw_inputs": PyPICacheProvider()})
    assert split_selection(defs, "*") == ([dg.AssetKey("raw_public_inputs"),
                                           dg.AssetKey("targets_db")], [])
    assert materialize_graph(defs, dagster_instance, "*")
    keys = [key for c in checks for key in c.check_keys]
    records = dagster_instance.event_log_storage.get_latest_asset_check_execution_by_key(keys)
    assert len(keys) == 4 and set(records) == set(keys)
    assert all(r.evaluation is not None and r.evaluation.passed for r in records.values())
