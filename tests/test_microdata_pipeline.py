"""raw_public_inputs -> stratified_microdata at the ``tiny`` preset, then one policyengine-us
Microsimulation on the result (the asset check) computing AGI, income tax, SNAP and Medicaid."""
from __future__ import annotations

import pytest


@pytest.mark.slow
def test_tiny_build_loads_in_policyengine(tmp_path):
    import dagster as dg

    import assets.microdata as am
    import assets.raw_inputs as ar
    from calibration_core.h5_dataset import read_dataset
    from resources.raw_inputs import PyPICacheProvider
    from resources.settings import BuildSettings
    from resources.store import ArtifactStore

    result = dg.materialize(
        [ar.raw_public_inputs, am.cps_source, am.base_microdata, am.enhanced_microdata,
         am.stratified_microdata, am.stratified_microdata_structure,
         am.stratified_microdata_loads_in_policyengine],
        resources={"store": ArtifactStore(root=str(tmp_path)), "raw_inputs": PyPICacheProvider(),
                   "settings": BuildSettings(preset="tiny")},
        instance=dg.DagsterInstance.ephemeral(),
    )
    assert result.success
    checks = {c.check_name: c for c in result.get_asset_check_evaluations()}
    assert checks["stratified_microdata_structure"].passed
    sim = checks["stratified_microdata_loads_in_policyengine"]
    assert sim.passed
    totals = {k: v.value for k, v in sim.metadata.items() if k.startswith("total_")}
    # weighted 2024 totals of a 300-household sample: loose but meaningful ranges
    assert 5e12 < totals["total_adjusted_gross_income"] < 5e13
    assert 5e11 < totals["total_income_tax"] < 1e13
    assert totals["total_snap"] > 0 and totals["total_medicaid"] > 0

    tables, year = read_dataset(tmp_path / "microdata" / "stratified_2024.h5")
    assert year == 2024 and len(tables["household"]) == 300
    assert tables["household"]["state_fips"].nunique() == 51
    meta = result.asset_materializations_for_node("stratified_microdata")[0].metadata
    assert meta["households"].value == 300
    assert "| state" in meta["population_by_state"].value
