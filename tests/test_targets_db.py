"""The targets database: build, encoding, reading API, uprating, checks, bad input, Dagster."""
from __future__ import annotations

import json
import shutil
import sqlite3
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from calibration_core import etl
from calibration_core import targets_db as tdb
from calibration_core.etl import TargetsInputError
from tests.targets_fixtures import write_raw_folder


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    raw = write_raw_folder(tmp_path_factory.mktemp("raw"))
    db = tmp_path_factory.mktemp("db") / "targets.db"
    summary = tdb.build_targets_db(raw, db)
    return raw, db, summary


def test_summary_counts_and_geographies(built):
    _, db, summary = built
    assert summary["targets"] == 18 * 488 + 3 * 436 + 102 + 51 + 1020 + 40 + 102
    assert summary["by_level"]["national"] == 18 + 40
    assert tdb.geography_counts(db) == {"national": 1, "state": 51, "district": 436}
    assert summary["sha256"] == tdb.sha256_file(db)


def test_schema_tables_and_views(built):
    _, db, _ = built
    with sqlite3.connect(db) as con:
        names = {r[0] for r in con.execute("SELECT name FROM sqlite_master")}
        overview = pd.read_sql_query("SELECT * FROM target_overview", con)
        sources = pd.read_sql_query("SELECT * FROM sources", con)
    assert {"strata", "stratum_constraints", "targets", "sources", "growth_index",
            "target_overview", "stratum_domain", "idx_targets_stratum"} <= names
    assert overview["domain_variable"].isin(
        ["age", "snap", "medicaid_enrolled", "adjusted_gross_income", "eitc",
         "school_meal_fpg_ratio", None]).all()
    assert len(sources) == 9 and sources["sha256"].str.len().eq(64).all()


def test_geography_and_domain_encoding(built):
    _, db, _ = built
    cons = tdb.read_constraints(db)
    assert list(cons.columns) == ["stratum_id", "constraint_variable", "operation", "value"]
    assert set(cons["operation"]) <= {"==", "!=", ">", ">=", "<", "<="}
    with sqlite3.connect(db) as con:
        strata = pd.read_sql_query("SELECT * FROM strata", con)
    by_id: dict[int, set] = {}
    for sid, var, op, val in cons.itertuples(index=False, name=None):
        by_id.setdefault(sid, set()).add((var, op, val))
    geo = strata[strata.kind == "geography"].set_index(["geo_level", "geo_id"])["stratum_id"]
    assert geo[("national", "US")] not in by_id  # root: no constraints
    assert by_id[geo[("state", "6")]] == {("state_fips", "==", "6")}
    assert by_id[geo[("district", "612")]] == {("congressional_district_geoid", "==", "612")}
    assert by_id[geo[("district", "201")]] == {("congressional_district_geoid", "==", "201")}
    parents = strata.set_index("stratum_id")["parent_stratum_id"]
    assert parents[geo[("district", "612")]] == geo[("state", "6")]
    # every non-geographic child repeats all constraints of its parent; a district lies in
    # its parent state (geography-only pairs are checked by containment, as in the spec)
    info = strata.set_index("stratum_id")[["kind", "geo_level", "geo_id"]].to_dict("index")
    for sid, parent in parents.dropna().astype(int).items():
        if info[sid]["kind"] != "geography":
            assert by_id.get(parent, set()) <= by_id[sid]
        elif info[sid]["geo_level"] == "district":
            assert int(info[sid]["geo_id"]) // 100 == int(info[parent]["geo_id"])
    filers = strata[strata.kind == "filers"]
    assert all(("tax_unit_is_filer", "==", "1") in by_id[s] for s in filers["stratum_id"])
    assert strata["definition_hash"].is_unique


def test_read_targets_columns_and_period_selection(built):
    _, db, _ = built
    t = tdb.read_targets(db)
    assert list(t.columns) == ["target_id", "stratum_id", "variable", "period", "value",
                               "original_value", "uprating_factor", "reconciliation_factor",
                               "source", "unit",
                               "geo_level", "geo_id", "domain", "modelled"]
    assert t["target_id"].dtype == np.int64 and t["modelled"].dtype == bool
    assert not t.duplicated(["stratum_id", "variable"]).any()
    assert set(t["geo_level"]) == {"national", "state", "district"}
    assert set(t.loc[t.geo_level == "national", "geo_id"]) == {"US"}
    # national SOI is published for TY2021..2023 in the fixture; TY2022 and 2023 are stored
    # and the latest period <= 2024 is chosen
    nat_soi = t[(t.source == "IRS SOI") & (t.geo_level == "national")]
    assert len(nat_soi) == 20 and set(nat_soi["period"]) == {2023}
    assert set(t["domain"]) == {"age", "snap", "", "medicaid_enrolled",
                                "adjusted_gross_income", "eitc", "school_meal_fpg_ratio"}
    assert (t.loc[t.domain == "", "variable"] == "household_count").all()
    t2022 = tdb.read_targets(db, year=2022)
    assert set(t2022.loc[(t2022.source == "IRS SOI") & (t2022.geo_level == "national"),
                         "period"]) == {2022}


def test_uprating_is_explicit_per_target(built):
    _, db, _ = built
    t = tdb.read_targets(db)
    np.testing.assert_allclose(t["value"], t["original_value"] * t["uprating_factor"]
                               * t["reconciliation_factor"])
    assert (t.loc[t.period == 2024, "uprating_factor"] == 1.0).all()
    soi = t[(t.source == "IRS SOI") & (t.period == 2022)]
    # fixture growth: CPI-U +3 %/yr; tax-unit weights +1 %/yr
    np.testing.assert_allclose(soi.loc[soi.unit == "usd", "uprating_factor"], 1.03 ** 2)
    np.testing.assert_allclose(soi.loc[soi.unit == "tax_unit", "uprating_factor"], 1.01 ** 2)
    # restated for another year from the stored growth index
    t25 = tdb.read_targets(db, year=2025)
    soi25 = t25[(t25.source == "IRS SOI") & (t25.period == 2022) & (t25.unit == "usd")]
    np.testing.assert_allclose(soi25["uprating_factor"], 1.03 ** 3)
    acs25 = t25[t25.source == "Census ACS S0101"]
    np.testing.assert_allclose(acs25["uprating_factor"], 1.01)


def test_build_is_byte_identical(built, tmp_path):
    raw, db, _ = built
    again = tmp_path / "again.db"
    tdb.build_targets_db(raw, again)
    assert again.read_bytes() == db.read_bytes()


def test_additivity_report(built, tmp_path):
    _, db, _ = built
    report = tdb.additivity_report(db)
    promised = report[report.promised]
    assert len(promised) == 36 and promised["ok"].all()
    assert (promised["max_rel_gap"] == 0).all()
    soi = report[report.source == "IRS SOI"]
    assert len(soi) == 20 and not soi["promised"].any() and (soi["max_rel_gap"] > 0).all()
    # break the ACS promise: move people from one district band to another district's band
    broken = tmp_path / "broken.db"
    broken.write_bytes(db.read_bytes())
    with sqlite3.connect(broken) as con:
        con.execute("UPDATE targets SET value = value + 5 WHERE target_id = (SELECT min(target_id)"
                    " FROM target_overview WHERE geo_level = 'district' AND geo_id = '612' AND "
                    "source = 'Census ACS S0101')")
    bad = tdb.additivity_report(broken)
    failing = bad[~bad.ok]
    assert len(failing) == 1 and failing.iloc[0]["relation"] == "district->state"


def test_policyengine_variable_names_from_source_tree():
    names = tdb.policyengine_variable_names()
    assert len(names) > 5000
    assert {"person_count", "household_count", "tax_unit_count", "age", "snap", "eitc",
            "adjusted_gross_income", "tax_unit_is_filer", "medicaid_enrolled", "state_fips",
            "congressional_district_geoid", "school_meal_fpg_ratio"} <= names
    assert "ucgid_str" not in names and "not_a_policyengine_variable" not in names


def test_unknown_variables(built):
    _, db, _ = built
    known = tdb.policyengine_variable_names()
    assert tdb.unknown_variables(db, known) == {"target_variables": [],
                                                "constraint_variables": []}
    partial = tdb.unknown_variables(db, known - {"snap", "eitc"})
    assert partial == {"target_variables": ["eitc", "snap"],
                       "constraint_variables": ["eitc", "snap"]}


def test_duplicate_targets_across_sources_are_refused(built, tmp_path, monkeypatch):
    raw, _, _ = built
    real = etl.run_all

    def doubled(raw_dir):
        result = real(raw_dir)
        extra = result.targets[result.targets.source_file == "eitc_state.csv"].head(1)
        extra = extra.assign(source_file="agi_state.csv")
        return etl.EtlResult(pd.concat([result.targets, extra], ignore_index=True),
                             result.sources)

    monkeypatch.setattr(etl, "run_all", doubled)
    with pytest.raises(TargetsInputError, match=r"agi_state.csv and eitc_state.csv: duplicated "
                                                r"target for state 1, tax_unit_count"):
        tdb.build_targets_db(raw, tmp_path / "dup.db")
    assert not (tmp_path / "dup.db").exists()
    assert tdb.duplicate_targets(built[1]).empty


def _truncate(path):
    path.write_text(path.read_text()[:1000])


def _drop_json_column(path, column):
    data = json.loads(path.read_text())
    i = data[0].index(column)
    path.write_text(json.dumps([row[:i] + row[i + 1:] for row in data]))


def _set_json_cell(path, row, column, value):
    data = json.loads(path.read_text())
    data[row][data[0].index(column)] = value
    path.write_text(json.dumps(data))


def _negative_medicaid(path):
    f = pd.read_csv(path)
    f.loc[(f["State Abbreviation"] == "NM") & (f["Reporting Period"] == 202412)
          & (f["Final Report"] == "Y"), "Total Medicaid Enrollment"] = -7
    f.to_csv(path, index=False)


def _duplicate_csv_row(path, row):
    f = pd.read_csv(path)
    pd.concat([f, f.iloc[[row]]]).to_csv(path, index=False)


BAD_INPUTS = {
    "truncated_json": ("acs_S0101_state_2024.json", _truncate,
                       r"acs_S0101_state_2024.json: not valid JSON .*char"),
    "missing_column": ("acs_S2201_district_2024.json",
                       lambda p: _drop_json_column(p, "S2201_C03_001E"),
                       r"acs_S2201_district_2024.json: missing column.*S2201_C03_001E"),
    "unknown_geo_id": ("acs_S0101_district_2024.json",
                       lambda p: _set_json_cell(p, 2, "GEO_ID", "5001900US5699"),
                       r"acs_S0101_district_2024.json: unknown GEO_ID '5001900US5699'"),
    "negative_count": ("medicaid_enrollment_2024.csv", _negative_medicaid,
                       r"medicaid_enrollment_2024.csv: state 'NM', Reporting Period 202412: "
                       r"negative count"),
    "duplicated_row": ("agi_state.csv", lambda p: _duplicate_csv_row(p, 40),
                       r"agi_state.csv: duplicated row for 0400000US04 AGI \[-inf, 1.0\)"),
}


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_input_names_file_and_key_and_keeps_previous_db(case, built, tmp_path):
    raw = Path(shutil.copytree(built[0], tmp_path / "raw"))
    db = tmp_path / "targets" / "targets.db"
    db.parent.mkdir()
    db.write_bytes(built[1].read_bytes())  # the previously built database
    before = db.read_bytes()
    name, corrupt, message = BAD_INPUTS[case]
    corrupt(raw / name)
    with pytest.raises(TargetsInputError, match=message):
        tdb.build_targets_db(raw, db)
    assert db.read_bytes() == before
    assert sorted(p.name for p in db.parent.iterdir()) == ["targets.db"]  # no temp file left


def test_validation_failure_keeps_previous_db(built, tmp_path, monkeypatch):
    raw, db, _ = built
    target = tmp_path / "targets.db"
    target.write_bytes(db.read_bytes())
    monkeypatch.setattr(tdb, "EXPECTED_GEOGRAPHIES", {"national": 1, "state": 50,
                                                      "district": 436})
    with pytest.raises(tdb.TargetsDBError, match="geographies"):
        tdb.build_targets_db(raw, target)
    assert target.read_bytes() == db.read_bytes()


def test_real_public_inputs(real_raw_dir, tmp_path):
    db = tmp_path / "targets.db"
    summary = tdb.build_targets_db(real_raw_dir, db)
    assert summary["targets"] >= 8000
    assert tdb.geography_counts(db) == tdb.EXPECTED_GEOGRAPHIES
    t = tdb.read_targets(db)
    assert t.groupby("geo_level")["geo_id"].nunique().to_dict() == {
        "national": 1, "state": 51, "district": 436}
    assert set(t["source"]) == {"Census ACS S0101", "Census ACS S2201", "USDA FNS SNAP",
                                "CMS Medicaid", "IRS SOI"}
    nat_age = t[(t.geo_level == "national") & (t.domain == "age")]["value"].sum()
    assert nat_age == 340_110_990  # ACS 2024 US population
    report = tdb.additivity_report(db)
    assert report.loc[report.promised, "ok"].all() and report["promised"].sum() == 36
    assert tdb.duplicate_targets(db).empty
    assert not any(tdb.unknown_variables(db, tdb.policyengine_variable_names()).values())


def test_materialize_through_dagster(real_raw_dir, tmp_path, dagster_instance):
    import dagster as dg

    import assets.raw_inputs
    import assets.targets_db
    from resources.raw_inputs import PyPICacheProvider
    from resources.store import ArtifactStore

    checks = dg.load_asset_checks_from_modules([assets.targets_db])
    result = dg.materialize(
        [assets.raw_inputs.raw_public_inputs, assets.targets_db.targets_db, *checks],
        resources={"store": ArtifactStore(root=str(tmp_path)),
                   "raw_inputs": PyPICacheProvider()},
        instance=dagster_instance,
    )
    assert result.success
    evaluations = result.get_asset_check_evaluations()
    assert len(evaluations) == 4 and all(e.passed for e in evaluations)
    meta = result.asset_materializations_for_node("targets_db")[0].metadata
    assert meta["total_targets"].value >= 8000
    assert (tmp_path / "targets" / "targets.db").is_file()
    assert meta["sha256"].value == tdb.sha256_file(tmp_path / "targets" / "targets.db")


def test_reconciliation_districts_sum_exactly_to_the_anchor(built):
    """SNAP households: ACS district counts are scaled so that each state's districts sum to
    its FNS total, keeping their ACS shares; the factor is stored per target and per state."""
    from calibration_core.etl import reconcile

    _, db, summary = built
    t = tdb.read_targets(db)
    snap = t[(t.variable == "household_count") & (t.domain == "snap")]
    states = snap[snap.geo_level == "state"].set_index(snap.loc[snap.geo_level == "state",
                                                                "geo_id"].astype(int))
    districts = snap[snap.geo_level == "district"].copy()
    districts["state"] = districts["geo_id"].astype(int) // 100
    sums = districts.groupby("state")["value"].sum()
    assert len(sums) == 51
    np.testing.assert_allclose(sums.to_numpy(), states.loc[sums.index, "value"].to_numpy(),
                               rtol=1e-13)
    # shares within a state are the survey's
    ca = districts[districts.state == 6]
    np.testing.assert_allclose(ca["value"] / ca["value"].sum(),
                               ca["original_value"] / ca["original_value"].sum(), rtol=1e-13)
    # one factor per state, stored on every scaled target and in the reconciliation table
    table = tdb.read_reconciliation(db)
    snap_table = table[table.rule == "snap_households"]
    assert snap_table["applied"].all() and len(snap_table) == 51
    factor = districts.groupby("state")["reconciliation_factor"].agg(["min", "max"])
    np.testing.assert_array_equal(factor["min"], factor["max"])
    np.testing.assert_allclose(snap_table.set_index("parent")["factor"].loc[factor.index],
                               factor["min"])
    # the fixture's national "< $1" AGI band is positive, its states' sum negative: refused
    refused = summary["reconciliation"].loc[~summary["reconciliation"]["applied"]]
    assert refused["family"].tolist() == ["adjusted_gross_income/adjusted_gross_income<1"]
    assert refused["reason"].str.startswith("children sum to").all()
    assert [r.name for r in reconcile.RULES] == ["snap_households", "soi_agi_bands"]
    # SOI: the states of each AGI band (2022) sum to the national band of 2023
    gaps = tdb.hierarchy_gaps(db)
    soi = gaps[gaps.parent_sources == "IRS SOI"].set_index("family")
    assert len(soi) == 20 and (soi["parent_periods"] == "2023").all()
    assert (soi["child_periods"] == "2022").all()
    refused_family = "adjusted_gross_income/adjusted_gross_income<1|tax_unit_is_filer==1"
    assert soi.loc[refused_family, "max_abs_rel_gap"] > 0.1
    assert (soi.drop(refused_family)["max_abs_rel_gap"] < 1e-13).all()
    assert gaps["max_abs_rel_gap"].drop(gaps.index[gaps.family == refused_family]).max() < 1e-13
    st = t[(t.source == "IRS SOI") & (t.geo_level == "state") & (t.reconciliation_factor != 1)]
    assert len(st) == 1020 - 51
    # every other target is untouched
    others = t.drop(districts.index).drop(st.index)
    assert (others["reconciliation_factor"] == 1.0).all()


def test_reconciliation_leaves_incomplete_parents_unscaled_with_a_reason():
    from calibration_core.etl.reconcile import reconcile

    snap = (("snap", ">", "0"),)
    frame = pd.DataFrame({
        "geo_level": ["state", "district", "district", "state", "district"],
        "geo_id": [6, 601, 602, 2, 201], "period": [2024] * 5,
        "variable": ["household_count"] * 5, "domain": [snap] * 5,
        "source": ["USDA FNS SNAP", "Census ACS S2201", "Census ACS S2201", "Census ACS S2201",
                   "Census ACS S2201"],
    })
    factors, report = reconcile(frame, np.array([300.0, 100.0, 50.0, 10.0, 8.0]))
    # CA has 52 districts, only 2 present; AK's "anchor" is of the survey source: no anchor
    np.testing.assert_array_equal(factors, 1.0)
    assert report.set_index("parent")["reason"].to_dict() == {
        2: "no anchor target", 6: "2 of 52 children present"}
