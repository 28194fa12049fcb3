"""Area assembly and validation on a tiny synthetic base dataset, geography and weights.

The matrix here is built by the package builder itself (``package.assemble_matrix``) from
"simulated" values that are plain input columns, and validation's simulation is replaced by the
same columns read from the stacked area files: so ``sim == X.w`` must hold exactly, including
take-up (the files' redrawn inputs must match the matrix's draws). No policyengine-us.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from calibration_core import assembly as asm
from calibration_core import package as pkg
from calibration_core import validation as val
from calibration_core.areas import parse_area_key
from calibration_core.geography import GeographyAssignment
from calibration_core.h5_dataset import read_dataset, validate_tables, write_dataset
from calibration_core.io_utils import keyed_uniform, sha256_file
from calibration_core.simulation import TAKEUP, StateSimulations, Structure
from tests.package_fixtures import synthetic_tables

N_CLONES = 3
DISTRICTS = np.array([601, 612, 3610, 3612, 4807, 1101])
COUNTIES = {601: "06001", 612: "06075", 3610: "36047", 3612: "36061", 4807: "48201",
            1101: "11001"}
SNAP = next(t for t in TAKEUP if t.input == "takes_up_snap_if_eligible")


def _base(n=40, seed=0):
    tables = synthetic_tables(n, seed=seed)
    # two SPM units in some households, so the take-up rank matters
    person = tables["person"]
    hh = person["person_household_id"].to_numpy()
    rank = person.groupby("person_household_id").cumcount().to_numpy()
    size = person.groupby("person_household_id")["person_id"].transform("size").to_numpy()
    split = (rank >= 2) & (size >= 3)
    spm = np.where(split, hh + 5, hh)
    person["person_spm_unit_id"] = spm
    tables["spm_unit"] = pd.DataFrame({"spm_unit_id": np.unique(spm)})
    tables["spm_unit"]["snap_eligible_amount"] = np.round(
        keyed_uniform("test.snap", tables["spm_unit"]["spm_unit_id"].to_numpy()) * 3000, 0)
    return tables


def _geo(household_id, seed=1):
    rng = np.random.default_rng(seed)
    n = len(household_id)
    cd = DISTRICTS[rng.integers(0, len(DISTRICTS), size=(N_CLONES, n))]
    county = np.vectorize(COUNTIES.get)(cd).astype("U5")
    return GeographyAssignment(np.asarray(household_id), cd, county, cd // 100,
                               np.zeros(n, dtype=bool))


def _weights(geo, seed=2):
    rng = np.random.default_rng(seed)
    w = rng.uniform(10, 100, geo.n_clones * geo.n_records)
    w[rng.random(len(w)) < 0.3] = 0.0  # L0-style zeros
    return w


@pytest.fixture()
def setup():
    tables = _base()
    base = asm.index_base(tables, 2024)
    geo = _geo(base.household_id)
    w = _weights(geo)
    return tables, base, geo, w


def test_memberships_ids_and_weights(setup):
    tables, base, geo, w = setup
    w2 = asm.check_weights(w, geo)
    area = parse_area_key("state-CA")
    build = asm.build_area_tables(base, geo, w2, area, [SNAP])
    out = build.tables
    validate_tables(out)  # ids unique, memberships point at existing ids
    clone, record = build.clone, build.record
    assert ((geo.district_geoid[clone, record] // 100) == 6).all()
    assert (w2[clone, record] > 0).all()
    expected = int(((geo.district_geoid // 100 == 6) & (w2 > 0)).sum())
    assert build.households == expected
    hh = out["household"]
    np.testing.assert_array_equal(hh["household_weight"], w2[clone, record])
    np.testing.assert_array_equal(hh["congressional_district_geoid"],
                                  geo.district_geoid[clone, record])
    assert (hh["state_fips"] == 6).all()
    np.testing.assert_array_equal(hh["county_fips"].astype(str),
                                  geo.county_fips[clone, record])
    for e in asm.ENTITIES:
        np.testing.assert_array_equal(out[e][f"{e}_id"], np.arange(len(out[e])))
    # each new household holds exactly its base record's persons, with their attributes
    s = base.structure
    sizes = np.bincount(s.household_index["person"], minlength=base.n_records)
    got = np.bincount(out["person"]["person_household_id"], minlength=len(hh))
    np.testing.assert_array_equal(got, sizes[record])
    person_ages = out["person"]["age"].to_numpy()
    base_ages = tables["person"]["age"].to_numpy()[base.order["person"]]
    first = base.start["person"][record]
    np.testing.assert_array_equal(person_ages[np.cumsum(got) - got], base_ages[first])
    # a person's SPM unit and tax unit belong to the person's own new household
    p = out["person"]
    for e in ("spm_unit", "tax_unit", "marital_unit", "family"):
        owner = np.full(len(out[e]), -1)
        owner[p[f"person_{e}_id"]] = p["person_household_id"]
        assert (owner >= 0).all()
        members_hh = owner[p[f"person_{e}_id"]]
        np.testing.assert_array_equal(members_hh, p["person_household_id"])
    # weighted population = sum of household weights over persons
    assert build.weighted_population() == pytest.approx(
        float((w2[clone, record] * sizes[record]).sum()))


def test_area_selection_rules(setup):
    _, base, geo, w = setup
    w2 = asm.check_weights(w, geo)
    state = asm.build_area_tables(base, geo, w2, parse_area_key("state-NY"))
    d10 = asm.build_area_tables(base, geo, w2, parse_area_key("district-NY-10"))
    d12 = asm.build_area_tables(base, geo, w2, parse_area_key("district-NY-12"))
    assert state.households == d10.households + d12.households
    assert state.weighted_households() == pytest.approx(
        d10.weighted_households() + d12.weighted_households())
    nyc = asm.build_area_tables(base, geo, w2, parse_area_key("city-NYC"))
    assert nyc.households == state.households  # both synthetic NY districts are NYC counties
    national = asm.build_area_tables(base, geo, w2, None)
    assert national.households == int((w2 > 0).sum())
    empty = asm.build_area_tables(base, geo, w2, parse_area_key("district-WY-01"))
    assert empty.households == 0 and empty.persons == 0
    validate_tables(empty.tables)


def test_county_by_state_replaces_the_clone_county(setup):
    _, base, geo, w = setup
    w2 = asm.check_weights(w, geo)
    build = asm.build_area_tables(base, geo, w2, parse_area_key("state-NY"),
                                  county_by_state={6: "06037", 36: "36047", 48: "48201",
                                                   11: "11001"})
    assert set(build.tables["household"]["county_fips"]) == {"36047"}
    with pytest.raises(asm.AssemblyError, match="lacks state"):
        asm.build_area_tables(base, geo, w2, parse_area_key("state-NY"),
                              county_by_state={6: "06037"})


def test_takeup_redrawn_with_the_matrix_keys(setup):
    _, base, geo, w = setup
    w2 = asm.check_weights(w, geo)
    build = asm.build_area_tables(base, geo, w2, None, [SNAP])
    spm = build.tables["spm_unit"]
    s = base.structure
    rows, cell = asm._expand(base, "spm_unit", build.record)
    hh_id = s.ids["household"][s.household_index["spm_unit"][rows]]
    clone = build.clone[cell]
    expected = keyed_uniform("takeup.takes_up_snap_if_eligible", hh_id, clone,
                             s.rank["spm_unit"][rows]) < SNAP.rate
    np.testing.assert_array_equal(spm["takes_up_snap_if_eligible"].to_numpy(), expected)
    assert (s.rank["spm_unit"] > 0).any()  # the fixture really has second SPM units


def test_rebuild_is_byte_identical_alone_or_in_a_batch(setup, tmp_path):
    tables, base, geo, w = setup
    w2 = asm.check_weights(w, geo)
    key = "district-CA-12"
    # in a batch: other areas first with the same index
    for other in ("state-CA", "district-CA-01", "city-NYC"):
        asm.build_area_tables(base, geo, w2, parse_area_key(other), [SNAP])
    batch = asm.build_area_tables(base, geo, w2, parse_area_key(key), [SNAP])
    write_dataset(tmp_path / "batch.h5", batch.tables, 2024)
    # alone: a fresh index of a fresh copy of the base data
    fresh = asm.index_base(_base(), 2024)
    alone = asm.build_area_tables(fresh, geo, asm.check_weights(w.copy(), geo),
                                  parse_area_key(key), [SNAP])
    write_dataset(tmp_path / "alone.h5", alone.tables, 2024)
    assert sha256_file(tmp_path / "batch.h5") == sha256_file(tmp_path / "alone.h5")
    back, year = read_dataset(tmp_path / "alone.h5")
    assert year == 2024 and len(back["household"]) == batch.households


def test_bad_inputs_are_named(setup):
    tables, base, geo, w = setup
    with pytest.raises(asm.AssemblyError, match="expected 120 weights"):
        asm.check_weights(w[:-1], geo)
    bad = w.copy()
    bad[7] = -1.0
    with pytest.raises(asm.AssemblyError, match="weight 7 .* is -1.0"):
        asm.check_weights(bad, geo)
    broken = {k: v.copy() for k, v in tables.items()}
    tu = broken["person"]["person_tax_unit_id"].to_numpy().copy()
    tu[0] = tu[-1]  # a tax unit with members in two households
    broken["person"]["person_tax_unit_id"] = tu
    with pytest.raises(asm.AssemblyError, match="more than one household"):
        asm.index_base(broken, 2024)
    other = _geo(base.household_id[::-1])
    with pytest.raises(asm.AssemblyError, match="household ids differ"):
        asm.assemble_cells(base, other, np.array([0]), np.array([0]), np.array([1.0]))


def test_parse_constraints_round_trips():
    assert val.parse_constraints("") == ()
    cons = val.parse_constraints("age<40,age>=35")
    assert cons == (("age", "<", 40.0), ("age", ">=", 35.0))
    assert val.parse_constraints("medicaid_enrolled==True") == (("medicaid_enrolled", "==", True),)
    with pytest.raises(val.ValidationError):
        val.parse_constraints("age~3")


def _fake_package(base, geo, tables):
    """A package matrix from the package builder over input columns (no policyengine-us)."""
    s = base.structure
    person = tables["person"]
    spm = tables["spm_unit"]
    invariant = {"age": person["age"].to_numpy(),
                 "employment_income": person["employment_income"].to_numpy(),
                 "snap": spm["snap_eligible_amount"].to_numpy()}
    entity = {"age": "person", "employment_income": "person", "snap": "spm_unit"}
    sims = StateSimulations(structure=s, home_state=tables["household"]["state_fips"].to_numpy(),
                            entity=entity, invariant=invariant, by_state={},
                            dependence={v: [] for v in invariant}, takeup_eligible=["snap"])
    specs = []
    for level, ids in (("national", ["US"]), ("state", ["6", "36", "48", "11"]),
                       ("district", [str(d) for d in DISTRICTS])):
        for g in ids:
            specs += [(level, g, "person_count", (("age", ">=", 18.0),)),
                      (level, g, "person_count", ()),
                      (level, g, "employment_income", (("age", "<", 65.0),)),
                      (level, g, "snap", (("snap", ">", 0.0),)),
                      (level, g, "household_count", (("snap", ">", 0.0),))]
    t = pd.DataFrame(specs, columns=["geo_level", "geo_id", "variable", "constraints"])
    matrix, _ = pkg.assemble_matrix(t, sims, geo)
    t["name"] = [pkg.row_name(lv, g, v, c) for lv, g, v, c in
                 zip(t["geo_level"], t["geo_id"], t["variable"], t["constraints"])]
    t["constraints"] = [",".join(f"{v}{o}{pkg._format_value(x)}" for v, o, x in c)
                        for c in t["constraints"]]
    t["value"] = 1000.0
    t["holdout"] = t["variable"] == "employment_income"
    t["achievable"] = np.diff(matrix.indptr) > 0
    t["domain"] = ""
    return t, matrix


def test_validation_reproduces_xw(setup, monkeypatch):
    tables, base, geo, w = setup
    w2 = asm.check_weights(w, geo)
    targets, matrix = _fake_package(base, geo, tables)
    keys = ["state-CA", "state-NY", "district-CA-12", "district-NY-10", "district-WY-01",
            "city-NYC"]
    builds = [asm.build_area_tables(base, geo, w2, parse_area_key(k), [SNAP]) for k in keys]
    national = asm.build_area_tables(base, geo, w2, None, [SNAP])
    area_set = val.AreaSet(keys + ["national-US"],
                           [parse_area_key(k).kind for k in keys] + ["national"],
                           [b.tables for b in builds] + [national.tables],
                           [(b.clone, b.record) for b in builds + [national]],
                           [0] * len(keys) + [0])
    calls = []

    def fake_simulate(stacked, variables, year, log=None):  # input columns, take-up applied
        calls.append(len(stacked.keys))
        p, u = stacked.tables["person"], stacked.tables["spm_unit"]
        values = {"age": p["age"].to_numpy(), "employment_income":
                  p["employment_income"].to_numpy(),
                  "snap": u["snap_eligible_amount"].to_numpy()
                  * u["takes_up_snap_if_eligible"].to_numpy()}
        return ({v: values[v] for v in variables},
                {"age": "person", "employment_income": "person", "snap": "spm_unit"})

    monkeypatch.setattr(val, "simulate_areas", fake_simulate)
    report = val.validate_areas(area_set, targets, matrix, [w], geo.n_records, 2024)
    assert len(calls) == 1  # one stacked simulation for every file (4 states here)
    assert report["consistent"].all(), report.loc[~report["consistent"]].head()
    # a few states per simulation (the national file split by state): the same totals
    per_state = val.validate_areas(area_set, targets, matrix, [w], geo.n_records, 2024,
                                   states_per_simulation=1)
    assert len(calls) == 1 + 4
    np.testing.assert_allclose(per_state["sim_value"], report["sim_value"], rtol=1e-12)
    assert (report["xw_value"] > 0).any()
    # NYC is scored on its share of each district it overlaps
    nyc = report[report["area"] == "city-NYC"]
    assert set(nyc["geo_id"]) <= {"3610", "3612"} and nyc["rel_error"].isna().all()
    assert set(report.loc[report["area"] == "district-WY-01", "sim_value"]) <= {0.0}
    summary = val.summarize(report)
    assert set(summary["level"]) == {"national", "state", "district", "city"}
    assert set(summary["sample"]) == {"in-sample", "hold-out"}
    # a file whose take-up was not redrawn breaks the invariant, and the report says so
    area_set.tables[0] = asm.build_area_tables(base, geo, w2, parse_area_key("state-CA"),
                                               []).tables
    area_set.tables[0]["spm_unit"]["takes_up_snap_if_eligible"] = True
    report2 = val.validate_areas(area_set, targets, matrix, [w], geo.n_records, 2024)
    bad = report2[~report2["consistent"]]
    assert len(bad) and set(bad["area"]) == {"state-CA"}


def test_stack_areas_keeps_areas_apart(setup):
    _, base, geo, w = setup
    w2 = asm.check_weights(w, geo)
    a = asm.build_area_tables(base, geo, w2, parse_area_key("state-CA")).tables
    b = asm.build_area_tables(base, geo, w2, parse_area_key("state-TX")).tables
    st = val.stack_areas(["state-CA", "state-TX"], [a, b])
    validate_tables(st.tables)
    s = Structure.from_tables(st.tables)
    assert s.n_households == len(a["household"]) + len(b["household"])
    person_area = st.household_area[st.tables["person"]["person_household_id"].to_numpy()]
    np.testing.assert_array_equal(np.bincount(person_area),
                                  [len(a["person"]), len(b["person"])])


def test_sanity_ceilings():
    status, reason = val._sanity(np.array(["district", "state"]),
                                 np.array(["person_count", "snap"]),
                                 np.array([2e6, 1e9]))
    assert list(status) == ["FAIL", "PASS"] and "ceiling" in reason[0]
    # the real at-large Delaware district (ACS: 412,304 households, 1,029,328 persons) passes;
    # the reference's 400,000-household ceiling failed it
    status, _ = val._sanity(np.array(["district", "district"]),
                            np.array(["household_count", "person_count"]),
                            np.array([412_304.0, 1_029_328.0]))
    assert list(status) == ["PASS", "PASS"]


def test_area_datasets_asset_batch_and_single_partition(setup, tmp_path):
    """Through Dagster: a batch of partitions gets one materialization per partition with its
    own figures; one partition rebuilt alone is byte-identical and touches no other file."""
    import json

    import dagster as dg
    from dagster._core.storage.tags import (ASSET_PARTITION_RANGE_END_TAG,
                                            ASSET_PARTITION_RANGE_START_TAG)

    import assets.areas as areas
    from calibration_core.geography import save_geography
    from calibration_core.fit import seal_fit_outputs
    from resources.store import ArtifactStore

    tables, base, geo, w = setup
    root = tmp_path / "store"
    write_dataset(root / "microdata" / "stratified_2024.h5", tables, 2024)
    save_geography(geo, root / "calibration" / "geography_assignment.npz")
    (root / "calibration" / "regional").mkdir(parents=True)
    np.save(root / "calibration" / "regional" / "weights.npy", w)
    seal_fit_outputs(root / "calibration" / "regional")  # the summary that marks it complete
    (root / "calibration" / "package").mkdir(parents=True)
    (root / "calibration" / "package" / "metadata.json").write_text(
        json.dumps({"takeup_rerandomised": ["snap"]}))
    keys = areas.area_partitions.get_partition_keys()
    first, last = keys.index("district-CA-01"), keys.index("district-CA-12")
    store = ArtifactStore(root=str(root))
    config = {"ops": {"area_datasets": {"config": {"county": "clone"}}}}
    with dg.DagsterInstance.ephemeral() as instance:
        result = dg.materialize(
            [areas.area_datasets, areas.area_files_valid], resources={"store": store},
            instance=instance, run_config=config,
            tags={ASSET_PARTITION_RANGE_START_TAG: keys[first],
                  ASSET_PARTITION_RANGE_END_TAG: keys[last]})
        assert result.success
        assert [e.passed for e in result.get_asset_check_evaluations()] == [True]
        key = dg.AssetKey("area_datasets")
        assert instance.get_materialized_partitions(key) == set(keys[first:last + 1])
        meta = {}
        for pk in ("district-CA-01", "district-CA-12"):
            rec = instance.fetch_materializations(
                dg.AssetRecordsFilter(asset_key=key, asset_partitions=[pk]), limit=1).records[0]
            meta[pk] = rec.asset_materialization.metadata
        path = root / "areas" / "districts" / "CA-12.h5"
        assert meta["district-CA-12"]["sha256"].value == sha256_file(path)
        assert meta["district-CA-12"]["households"].value == int(
            ((geo.district_geoid == 612) & (w.reshape(geo.district_geoid.shape) > 0)).sum())
        assert meta["district-CA-01"]["sha256"].value != meta["district-CA-12"]["sha256"].value
        before = sha256_file(path)
        other = root / "areas" / "districts" / "CA-01.h5"
        other_mtime = other.stat().st_mtime_ns
        path.unlink()
        single = dg.materialize([areas.area_datasets, areas.area_files_valid],
                                resources={"store": store}, instance=instance,
                                run_config=config, partition_key="district-CA-12")
        assert single.success
        assert sha256_file(path) == before and other.stat().st_mtime_ns == other_mtime
