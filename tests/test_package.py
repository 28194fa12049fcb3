"""Calibration package: target selection, constraint masks, matrix assembly (against a plain
loop over clones x households x targets), hold-outs, unachievable rows, storage, and the
``tiny`` preset end to end on synthetic simulations (no policyengine-us)."""
from __future__ import annotations

import operator

import numpy as np
import pandas as pd
import pytest
import yaml

from calibration_core import package as pkg
from calibration_core.areas import district_geoids
from calibration_core.geography import GeographyAssignment, assign_geography
from calibration_core.package_io import load_package, save_package
from calibration_core.simulation import (STATE_ORDER, StateSimulations, Structure, TAKEUP,
                                         takeup_decisions)
from tests.package_fixtures import synthetic_tables, synthetic_targets

ENTITY = {"age": "person", "adjusted_gross_income": "tax_unit", "tax_unit_is_filer": "tax_unit",
          "snap": "spm_unit", "eitc": "tax_unit", "medicaid_enrolled": "person"}


def fake_simulations(tables, seed=0) -> StateSimulations:
    """Values that depend on the state in a known way, without policyengine-us."""
    rng = np.random.default_rng(seed)
    s = Structure.from_tables(tables)
    n_st = len(STATE_ORDER)
    st = np.asarray(STATE_ORDER, dtype=float)[:, None]
    n_tu, n_spm, n_p = (len(s.ids[e]) for e in ("tax_unit", "spm_unit", "person"))
    pay = tables["person"]["employment_income"].to_numpy()
    agi = np.bincount(s.person_index["tax_unit"], weights=pay, minlength=n_tu)
    by_state = {
        "adjusted_gross_income": agi[None, :] + 10.0 * st,  # AK-like state shifts
        "tax_unit_is_filer": (agi[None, :] + 500 * st) > 12_000,
        "snap": np.where(rng.random((1, n_spm)) < 0.3, 100.0 + st, 0.0) * np.ones((n_st, 1)),
        "eitc": np.where(agi < 40_000, 500.0, 0.0)[None, :] * (st % 3 > 0),
        "medicaid_enrolled": (rng.random((n_st, n_p)) < 0.2),
    }
    invariant = {"age": tables["person"]["age"].to_numpy()}
    dependence = {v: ["*"] for v in by_state} | {"age": []}
    home = tables["household"]["state_fips"].to_numpy()
    return StateSimulations(s, home, dict(ENTITY), invariant, by_state, dependence,
                            ["medicaid_enrolled", "snap"], {"state_invariant": ["age"]})


def fake_geography(sims, n_clones, seed=1) -> GeographyAssignment:
    rng = np.random.default_rng(seed)
    n = sims.structure.n_households
    pool = np.asarray([601, 612, 4807, 3612, 3601, 201, 1101])
    district = pool[rng.integers(0, len(pool), (n_clones, n))]
    county = np.full(district.shape, "06037")
    return GeographyAssignment(sims.structure.ids["household"], district, county,
                               district // 100, np.zeros(n, bool), {})


@pytest.fixture(scope="module")
def setup():
    tables = synthetic_tables(40, seed=3)
    sims = fake_simulations(tables)
    geo = fake_geography(sims, 5)
    targets, constraints = synthetic_targets()
    return tables, sims, geo, targets, constraints


def brute_force(targets, constraints, sims, geo):
    """Dense matrix by explicit loops (test oracle)."""
    s = sims.structure
    ops = {"==": operator.eq, "!=": operator.ne, ">": operator.gt, ">=": operator.ge,
           "<": operator.lt, "<=": operator.le}
    n_rec, n_clones = geo.n_records, geo.n_clones
    out = np.zeros((len(targets), n_rec * n_clones))
    spec_of = {v: sp for sp in TAKEUP for v in sp.variables}

    def value(var, c, entity_row):
        e = sims.entity[var]
        hh = s.household_index[e][entity_row]
        state = geo.state_fips[c, hh]
        if var in sims.invariant:
            v = sims.invariant[var][entity_row]
        else:
            v = sims.by_state[var][STATE_ORDER.index(state), entity_row]
        if var in sims.takeup_eligible:
            d = takeup_decisions(spec_of[var], s.ids["household"][hh], c, s.rank[e][entity_row],
                                 state)
            v = (v and bool(d)) if isinstance(v, (bool, np.bool_)) else v * float(d)
        return v

    for i, row in targets.reset_index(drop=True).iterrows():
        cons = constraints[(constraints.stratum_id == row.stratum_id)
                           & ~constraints.constraint_variable.isin(
                               ["state_fips", "congressional_district_geoid"])]
        for c in range(n_clones):
            for h in range(n_rec):
                st, cd = geo.state_fips[c, h], geo.district_geoid[c, h]
                if row.geo_level == "state" and st != int(row.geo_id):
                    continue
                if row.geo_level == "district" and cd != int(row.geo_id):
                    continue
                persons = np.flatnonzero(s.household_index["person"] == h)

                def ok(p):
                    for _, cr in cons.iterrows():
                        e = sims.entity[cr.constraint_variable]
                        v = value(cr.constraint_variable, c, s.person_index[e][p])
                        if not ops[cr.operation](v, pkg.parse_constraint_value(cr.value)):
                            return False
                    return True

                good = [p for p in persons if ok(p)]
                var = row.variable
                if var == "person_count":
                    x = len(good)
                elif var == "household_count":
                    x = float(len(good) > 0)
                elif var == "tax_unit_count":
                    x = len({s.person_index["tax_unit"][p] for p in good})
                else:
                    e = sims.entity[var]
                    ents = {s.person_index[e][p] for p in good}
                    x = sum(value(var, c, k) for k in ents)
                out[i, c * n_rec + h] = x
    return out


def test_matrix_equals_loop_oracle(setup):
    tables, sims, geo, targets, constraints = setup
    config = {"include": [{"variable": ["person_count", "household_count", "tax_unit_count",
                                        "adjusted_gross_income", "snap", "eitc"]}]}
    weights = tables["household"]["household_weight"].to_numpy()
    package = pkg.build_package(targets, constraints, sims, geo, weights, config)
    t = package.targets
    order = t["target_id"].to_numpy()
    by_id = targets.set_index("target_id").loc[order].reset_index()
    expected = brute_force(by_id, constraints, sims, geo)
    np.testing.assert_allclose(package.matrix.toarray(), expected, rtol=1e-6)
    assert package.matrix.dtype == np.float32
    # take-up really applies: some eligible SNAP units are switched off in some clone
    snap_rows = t.index[t["variable"] == "snap"]
    assert package.matrix[snap_rows].nnz > 0
    assert (package.matrix[snap_rows].toarray() == 0).sum() > 0


def test_unachievable_rows_flagged_by_name(setup):
    tables, sims, geo, targets, constraints = setup
    weights = tables["household"]["household_weight"].to_numpy()
    package = pkg.build_package(targets, constraints, sims, geo, weights, {})
    bad = package.targets.loc[~package.targets["achievable"], "name"].tolist()
    assert "national/person_count/[age>=300]" in bad
    assert package.metadata["unachievable_count"] == len(bad)
    assert set(bad) == set(package.metadata["unachievable"])
    assert not package.fit_mask()[~package.targets["achievable"].to_numpy()].any()


def test_names_order_and_weights(setup):
    tables, sims, geo, targets, constraints = setup
    weights = tables["household"]["household_weight"].to_numpy()
    package = pkg.build_package(targets, constraints, sims, geo, weights, {})
    t = package.targets
    assert t["name"].is_unique
    levels = t["geo_level"].map({"national": 0, "state": 1, "district": 2}).to_numpy()
    assert (np.diff(levels) >= 0).all()
    assert "cd_4807/person_count/[age<65,age>=18]" in set(t["name"])
    assert "state_6/adjusted_gross_income/[adjusted_gross_income<50000,tax_unit_is_filer==1]" \
        in set(t["name"])
    np.testing.assert_allclose(package.initial_weights.reshape(geo.n_clones, -1).sum(0), weights)
    # a district target only touches columns whose clone lies in that district
    row = t.index[t["name"] == "cd_612/household_count"][0]
    cols = package.matrix[row].indices
    assert (geo.district_geoid.reshape(-1)[cols] == 612).all()
    assert len(cols) == (geo.district_geoid == 612).sum()


def test_target_config_include_exclude_holdout(setup, tmp_path):
    _, _, _, targets, _ = setup
    config = {"include": [{"variable": "person_count", "domain": "age"},
                          {"variable": "snap", "geo_level": ["state"]}],
              "exclude": [{"geo_level": "district"}],
              "holdout": [{"variable": "snap", "geo_id": 6}]}
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(config))
    sel = pkg.select_targets(targets, pkg.load_target_config(path))
    assert set(sel["variable"]) == {"person_count", "snap"}
    assert not (sel["geo_level"] == "district").any()
    assert sel.loc[sel["holdout"], "geo_id"].tolist() == ["6"]
    assert len(sel[sel.variable == "person_count"]) == 3 + 6 + 1  # 3 bins x (US + 2 states), age>=300
    with pytest.raises(pkg.PackageBuildError, match="unknown field"):
        pkg.validate_target_config({"include": [{"variabel": "snap"}]})
    with pytest.raises(pkg.PackageBuildError, match="geo_level"):
        pkg.validate_target_config({"include": [{"geo_level": "county"}]})


def test_default_config_loads_and_holds_out_eitc(setup):
    _, _, _, targets, _ = setup
    sel = pkg.select_targets(targets, pkg.load_target_config())
    assert sel.loc[sel["variable"] == "eitc", "holdout"].all()
    assert not sel.loc[sel["variable"] == "person_count", "holdout"].any()


def test_package_roundtrip_and_determinism(setup, tmp_path):
    tables, sims, geo, targets, constraints = setup
    weights = tables["household"]["household_weight"].to_numpy()
    a = pkg.build_package(targets, constraints, sims, geo, weights, {}, {"x": "1"})
    b = pkg.build_package(targets, constraints, sims, geo, weights, {}, {"x": "1"})
    assert (a.matrix != b.matrix).nnz == 0
    save_package(a, tmp_path / "p")
    back = load_package(tmp_path / "p")
    assert (back.matrix != a.matrix).nnz == 0
    assert back.targets["name"].tolist() == a.targets["name"].tolist()
    assert back.metadata["input_sha256"] == {"x": "1"}
    assert back.metadata["nnz"] == a.matrix.nnz
    # two builds of the same inputs give byte-identical folders: no timings in metadata.json
    assert "build_seconds" in a.metadata and "build_seconds" not in back.metadata
    b.metadata["build_seconds"] = a.metadata["build_seconds"] + 1.0
    save_package(b, tmp_path / "q")
    for name in ("matrix.npz", "targets.parquet", "initial_weights.npy", "metadata.json"):
        assert (tmp_path / "p" / name).read_bytes() == (tmp_path / "q" / name).read_bytes(), name


def test_bad_inputs_raise_clearly(setup):
    tables, sims, geo, targets, constraints = setup
    weights = tables["household"]["household_weight"].to_numpy()
    bad = constraints.copy()
    bad.loc[bad.index[-1], "operation"] = "=~"
    with pytest.raises(pkg.PackageBuildError, match="unknown operation"):
        pkg.build_package(targets, bad, sims, geo, weights, {})
    with pytest.raises(pkg.PackageBuildError, match="household weights"):
        pkg.build_package(targets, constraints, sims, geo, weights[:-1], {})
    with pytest.raises(pkg.PackageBuildError, match="selects no targets"):
        pkg.build_package(targets, constraints, sims, geo, weights,
                          {"include": [{"variable": "nothing"}]})
    odd = targets.copy()
    odd.loc[0, "value"] = np.nan
    with pytest.raises(pkg.PackageBuildError, match="non-finite"):
        pkg.build_package(odd, constraints, sims, geo, weights, {})


def test_tiny_preset_package_with_population_check(real_raw_dir):
    """tiny preset (300 households x 4 clones), real county table, population-proportional
    geography; with initial weights the national population lands near its target."""
    from calibration_core.geography import load_county_table
    from calibration_core.presets import get_preset

    preset = get_preset("tiny")
    tables = synthetic_tables(preset.base_households, seed=5)
    sims = fake_simulations(tables)
    targets, constraints = synthetic_targets(population=1.0)
    hh_weight = tables["household"]["household_weight"].to_numpy()
    persons = np.bincount(sims.structure.household_index["person"], minlength=len(hh_weight))
    total = float((hh_weight * persons).sum())
    targets.loc[targets.variable == "person_count", "value"] *= total
    targets = targets.iloc[:-1]  # drop the unachievable age >= 300 row: not a population bin
    pop = pd.Series(1.0, index=district_geoids())
    geo = assign_geography(sims.structure.ids["household"], sims.household_total(
        "adjusted_gross_income"), preset.clones, load_county_table(
        real_raw_dir / "county_cd_distributions.csv"), pop)
    package = pkg.build_package(targets, constraints, sims, geo, hh_weight,
                                pkg.load_target_config())
    assert package.matrix.shape == (len(package.targets), 300 * 4)
    check = pkg.national_population_check(package)
    assert abs(check["relative_error"]) < 0.10
    assert package.metadata["targets_by_level"]["national"] >= 3


@pytest.mark.slow
def test_assets_materialize_through_dagster(real_raw_dir, tmp_path):
    """state_simulations -> geography_assignment -> calibration_package (+ checks) through
    Dagster on a few synthetic households, the real targets DB and the real county table; the
    state simulations in several chunk steps (dynamic outputs of the graph-backed asset)."""
    import shutil

    import dagster as dg

    import assets.package as ap
    import assets.state_simulations as asim
    from calibration_core.h5_dataset import write_dataset
    from calibration_core.targets_db import build_targets_db, read_targets
    from resources.settings import BuildSettings
    from resources.store import ArtifactStore

    store = ArtifactStore(root=str(tmp_path))
    shutil.copy(real_raw_dir / "county_cd_distributions.csv", store.raw_dir)
    build_targets_db(real_raw_dir, store.path("targets", "targets.db"))
    tables = synthetic_tables(12, seed=21, states=(6, 48))
    # weights summing to the national population target, so the population check can pass
    t = read_targets(store.path("targets", "targets.db"))
    national = t[(t.geo_level == "national") & (t.variable == "person_count")
                 & (t.domain == "age")]["value"].sum()
    persons = tables["person"].groupby("person_household_id").size().to_numpy()
    hh = tables["household"]
    hh["household_weight"] = national / persons.sum()
    write_dataset(store.path("microdata", "stratified_2024.h5"), tables, 2024)
    result = dg.materialize(
        [dg.AssetSpec("stratified_microdata"), dg.AssetSpec("targets_db"),
         dg.AssetSpec("raw_public_inputs"), asim.state_simulations, ap.geography_assignment,
         ap.calibration_package, ap.calibration_package_unachievable,
         ap.calibration_package_population],
        resources={"store": store, "settings": BuildSettings(preset="tiny", clones=3)},
        # 12 households, 51 default state copies in two chunks of at most 40 copies (and the
        # other county classes in chunks of their own), steps of one chunk's size
        run_config={"ops": {"state_simulations": {"config": {
            "workers": 1, "max_households_per_chunk": 12 * 40, "households_per_step": 12}}}},
        instance=dg.DagsterInstance.ephemeral(),
        selection=["state_simulations", "geography_assignment", "calibration_package"],
    )
    assert result.success
    package = load_package(tmp_path / "calibration" / "package")
    assert package.matrix.shape[1] == 12 * 3
    assert package.metadata["unachievable_count"] > 0  # 12 households cannot reach 436 districts
    checks = {e.check_name: e.passed for e in result.get_asset_check_evaluations()}
    assert checks == {"calibration_package_unachievable": True,
                      "calibration_package_population": True}
    meta = result.asset_materializations_for_node("calibration_package")[0].metadata
    assert meta["unachievable_count"].value == package.metadata["unachievable_count"]
    sims = result.asset_materializations_for_node("state_simulations")[0].metadata
    assert sims["traced_chunk_routed_formulas"].value > 0  # 40 copies in one stack: routed
    steps = sims["steps"].value
    assert steps >= 2 and sims["chunks"].value >= steps
    chunk_steps = sorted(e.step_key for e in result.all_events if e.is_step_success
                         and e.step_key.startswith("state_simulations.simulate_chunks"))
    assert chunk_steps == [f"state_simulations.simulate_chunks[c{i:02d}]" for i in range(steps)]


def test_default_config_holds_out_the_poverty_households():
    """ACS poverty households are scored, not fitted (docs/methodology.md: fitted, the 2012-14
    base's excess of poor households pulls EITC claimants out of the files)."""
    rows = pd.DataFrame({
        "variable": ["household_count"] * 3, "geo_level": ["district"] * 3,
        "domain": ["school_meal_fpg_ratio", "snap", ""], "source": ["Census ACS S2201"] * 3,
        "geo_id": [612, 612, 612]})
    sel = pkg.select_targets(rows, pkg.load_target_config())
    assert len(sel) == 3
    assert sel["holdout"].tolist() == [True, False, False]
