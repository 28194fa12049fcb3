"""Real counties in the files and an exact matrix: county classes, files that carry each clone's
own county, and ``X . w`` reproduced by policyengine-us for a county-dependent variable.

The slow test uses Maryland, whose SNAP ABAWD time-limit waiver covered Baltimore City (24510)
from July 2024 but not Montgomery County (24031): a single adult of 35 without income gets SNAP
in Baltimore City for the waived months and loses it to the time limit in Montgomery. Two clones
of every household, one in each county; the matrix is built from the state simulations (a probe
finds two county classes in Maryland) and the state file is simulated by policyengine-us.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from calibration_core import assembly as asm
from calibration_core import package as pkg
from calibration_core import simulation as simu
from calibration_core import validation as val
from calibration_core.areas import parse_area_key
from calibration_core.geography import GeographyAssignment
from calibration_core.h5_dataset import write_dataset
from tests.package_fixtures import synthetic_tables

MD, BALTIMORE_CITY, MONTGOMERY = 24, "24510", "24031"
SNAP = next(t for t in simu.TAKEUP if t.input == "takes_up_snap_if_eligible")

# --------------------------------------------------------------------------------------------
# fast


def test_classes_from_signatures_groups_and_orders():
    county = np.array(["36061", "36047", "36001", "36005", "06037", "06075"])
    state = np.array([36, 36, 36, 36, 6, 6])
    sig = np.array([[1], [1], [0], [1], [0], [0]])
    weight = np.array([10, 20, 5, 3, 100, 8.0])
    c = simu.classes_from_signatures(county, state, sig, weight, ["reader"])
    assert c.n_copies == 52  # NY has two classes, every other state one
    assert c.per_state()["NY"] == 2 and c.per_state()["CA"] == 1
    ny = np.flatnonzero(c.copy_state == 36)
    # the class of the most populous county first (Kings, 20), simulated at Kings
    assert c.copy_county[ny].tolist() == ["36047", "36001"]
    rows = c.copy_index([36, 36, 36, 6], ["36061", "36005", "36001", "06075"])
    assert rows.tolist() == [ny[0], ny[0], ny[1], np.flatnonzero(c.copy_state == 6)[0]]
    assert c.copy_index([36])[0] == ny[0]  # no county: the state's default class
    with pytest.raises(simu.SimulationError, match="not in state 6"):
        c.copy_index([6], ["36001"])
    with pytest.raises(simu.SimulationError, match="'99999' is not in"):
        c.copy_index([36], ["99999"])


def test_state_simulations_value_each_cell_at_its_county_class():
    c = simu.classes_from_signatures(np.array([BALTIMORE_CITY, MONTGOMERY]), np.array([MD, MD]),
                                     np.array([[0], [1]]), np.array([1.0, 2.0]))
    md = np.flatnonzero(c.copy_state == MD)
    tables = synthetic_tables(3, seed=1)
    s = simu.Structure.from_tables(tables)
    table = np.zeros((c.n_copies, 3))
    table[md[0]] = 1.0  # Montgomery's class (more populous) first
    table[md[1]] = 2.0
    sims = simu.StateSimulations(s, np.full(3, MD), {"snap": "spm_unit"}, {}, {"snap": table},
                                 {"snap": ["*"]}, classes=c)
    geo = GeographyAssignment(s.ids["household"], np.full((2, 3), 2407),
                              np.array([[BALTIMORE_CITY] * 3, [MONTGOMERY] * 3]),
                              np.full((2, 3), MD), np.zeros(3, dtype=bool))
    ctx = pkg._Context(sims, geo, np.arange(2)[:, None], {}, {}, {})
    assert pkg.family_values(ctx, "snap", ()).tolist() == [[2.0] * 3, [1.0] * 3]
    blind = pkg._Context(sims, geo, np.arange(2)[:, None], {}, {}, {}, county_aware=False)
    assert pkg.family_values(blind, "snap", ()).tolist() == [[1.0] * 3, [1.0] * 3]


def test_files_carry_the_clone_county_and_its_enum_name():
    tables = synthetic_tables(4, seed=2)
    base = asm.index_base(tables, 2024)
    geo = GeographyAssignment(base.household_id, np.full((2, 4), 2407),
                              np.array([[BALTIMORE_CITY] * 4, [MONTGOMERY] * 4]),
                              np.full((2, 4), MD), np.zeros(4, dtype=bool))
    w = asm.check_weights(np.ones(8), geo)
    hh = asm.build_area_tables(base, geo, w, parse_area_key("state-MD")).tables["household"]
    assert hh["county_fips"].tolist() == [BALTIMORE_CITY] * 4 + [MONTGOMERY] * 4
    assert hh["county"].tolist() == ["BALTIMORE_CITY_MD"] * 4 + ["MONTGOMERY_COUNTY_MD"] * 4
    with pytest.raises(asm.AssemblyError, match="'99999' is not a policyengine-us county"):
        asm.county_enum_names(np.array(["99999"]))


def test_county_dependent_variables_follow_the_traced_graph():
    edges = {"snap": {"snap_gross_income", "snap_utility_allowance", "housing_assistance"},
             "snap_utility_allowance": {"county"}, "snap_gross_income": {"employment_income"},
             "eitc": {"earned_income", "state_code"}, "earned_income": {"employment_income"},
             "md_local_tax": {"md_rate"}, "md_rate": {"md_local_tax"},  # a cycle, no county
             "gated": {"is_eligible"}, "ha_user": {"housing_assistance"}, "loop_a": {"loop_b"},
             "loop_b": {"loop_a", "county_fips"}}
    got = simu.county_dependent_variables(
        ["snap", "eitc", "snap_gross_income", "md_local_tax", "gated", "ha_user", "loop_a",
         "age"], edges, unexplored=["gated"])
    # housing_assistance counts as a county input (computed at each class's county)
    assert got == ["gated", "ha_user", "loop_a", "snap"]


def test_probe_traces_merge_and_the_values_check_the_graph():
    a = {"edges": {"x": ["gate"], "y": ["county"]}, "unexplored": ["x"]}
    b = {"edges": {"x": ["gate", "income"], "z": ["gate"]}, "unexplored": ["z"]}
    edges, unexplored = simu.merge_probe_traces([a, b])
    assert edges["x"] == {"gate", "income"} and unexplored == {"z"}  # x ran in b
    state = np.array([24, 24, 36, 36, 36])
    county = np.array([MONTGOMERY, BALTIMORE_CITY, "36047", "36061", "36081"])
    codes = np.array([[0, 1], [0, 2], [1, 0], [1, 0], [1, 1]])
    columns = {"eitc": (0, 1), "snap": (1, 2)}
    simu.check_county_invariance(codes, columns, state, county, ["snap"])
    codes[4, 0] = 2  # eitc differs in Queens from Kings
    with pytest.raises(simu.SimulationError, match="'eitc' was classified county-invariant.*"
                       "36047 and 36081 of NY"):
        simu.check_county_invariance(codes, columns, state, county, ["snap"])


def test_extra_county_classes_take_the_county_invariant_values_of_their_state():
    c = simu.classes_from_signatures(np.array([MONTGOMERY, BALTIMORE_CITY]), np.array([MD, MD]),
                                     np.array([[0], [1]]), np.array([2.0, 1.0]))
    md = np.flatnonzero(c.copy_state == MD)
    al = np.flatnonzero(c.copy_state == 1)
    tables = synthetic_tables(3, seed=2)
    n_spm = len(tables["spm_unit"])
    n_tu = len(tables["tax_unit"])
    trace = {"dependence": {"snap": ["*"], "eitc": ["*"]},
             "entity": {"snap": "spm_unit", "eitc": "tax_unit"}}
    # the default copies (AL, MD at Montgomery) compute both; Baltimore City's class only snap
    results = [([1, MD], {"snap": np.stack([np.full(n_spm, 1.0), np.full(n_spm, 2.0)]),
                          "eitc": np.stack([np.full(n_tu, 10.0), np.full(n_tu, 20.0)])},
                1.0, 40.0, 1, trace, 41.0),
               ([MD], {"snap": np.full((1, n_spm), 3.0)}, 1.0, 0.0, 2, None, 1.0)]
    out = simu._collect(results, tables, simu.Structure.from_tables(tables), ["eitc", "snap"],
                        [], c, [[al[0], md[0]], [md[1]]], [1, MD], 1, 2024, lambda m: None,
                        0.0, {"county_dependent": ["snap"]})
    assert out.by_state["snap"][md].tolist() == [[2.0] * n_spm, [3.0] * n_spm]
    assert out.by_state["eitc"][md].tolist() == [[20.0] * n_tu, [20.0] * n_tu]
    assert out.metadata["county_dependent"] == ["snap"]
    assert out.metadata["chunk_cpu_seconds"] == [41.0, 1.0]


# --------------------------------------------------------------------------------------------
# slow: policyengine-us


def _maryland_tables(n: int = 16) -> dict[str, pd.DataFrame]:
    """``n`` households in Maryland; the one-person ones are adults of 35 without income
    (subject to the SNAP ABAWD time limit where it is not waived)."""
    tables = synthetic_tables(n, seed=5, states=(6,))
    person, hh = tables["person"], tables["household"]
    size = person.groupby("person_household_id")["person_id"].transform("size").to_numpy()
    single = size == 1
    person.loc[single, "age"] = 35
    for col in ("employment_income", "social_security", "taxable_interest_income"):
        person.loc[single, col] = 0.0
    person.loc[~single, "employment_income"] = np.minimum(
        person.loc[~single, "employment_income"], 15_000.0)
    hh["state_fips"] = MD
    hh["county_fips"] = MONTGOMERY
    assert single.sum() >= 3
    return tables


def _targets(matrix_rows):
    specs = [("state", str(MD), "snap", (("snap", ">", 0.0),)),
             ("state", str(MD), "household_count", (("snap", ">", 0.0),)),
             ("district", "2407", "snap", (("snap", ">", 0.0),)),
             ("district", "2408", "snap", (("snap", ">", 0.0),))]
    return pd.DataFrame(specs, columns=["geo_level", "geo_id", "variable", "constraints"])


def _package_rows(t: pd.DataFrame, matrix) -> pd.DataFrame:
    t = t.copy()
    t["name"] = [pkg.row_name(lv, g, v, c) for lv, g, v, c in
                 zip(t["geo_level"], t["geo_id"], t["variable"], t["constraints"])]
    t["constraints"] = [",".join(f"{v}{o}{pkg._format_value(x)}" for v, o, x in c)
                        for c in t["constraints"]]
    t["value"] = 1.0e6
    t["holdout"] = False
    t["achievable"] = np.diff(matrix.indptr) > 0
    t["domain"] = "snap"
    return t


@pytest.fixture(scope="module")
def maryland(tmp_path_factory):
    tables = _maryland_tables()
    path = tmp_path_factory.mktemp("county") / "md.h5"
    write_dataset(path, tables, 2024)
    county_table = pd.DataFrame({"district_geoid": [2407, 2408],
                                 "county_fips": [BALTIMORE_CITY, MONTGOMERY],
                                 "probability": [1.0, 1.0]})
    population = pd.Series({2407: 700_000.0, 2408: 770_000.0})
    sims = simu.simulate_states(path, ["snap", "adjusted_gross_income"], county_table,
                                population, states=(MD,), workers=1, n_probes=16)
    base = asm.index_base(tables, 2024)
    n = base.n_records
    # clone 0 in Baltimore City (district 7), clone 1 in Montgomery (district 8)
    geo = GeographyAssignment(base.household_id,
                              np.array([[2407] * n, [2408] * n], dtype=np.int64),
                              np.array([[BALTIMORE_CITY] * n, [MONTGOMERY] * n]),
                              np.full((2, n), MD, dtype=np.int64), np.zeros(n, dtype=bool))
    w = np.tile(tables["household"]["household_weight"].to_numpy(), 2)
    return tables, sims, base, geo, w


def _report(maryland, county_aware: bool) -> pd.DataFrame:
    tables, sims, base, geo, w = maryland
    t = _targets(None)
    matrix, _ = pkg.assemble_matrix(t, sims, geo, county_aware=county_aware)
    targets = _package_rows(t, matrix)
    w2 = asm.check_weights(w, geo)
    build = asm.build_area_tables(base, geo, w2, parse_area_key("state-MD"), [SNAP],
                                  frozen=sims)
    assert "housing_assistance" in build.tables["spm_unit"]
    area_set = val.AreaSet(["state-MD"], ["state"], [build.tables],
                           [(build.clone, build.record)], [0])
    return val.validate_areas(area_set, targets, matrix, [w], geo.n_records, 2024)


@pytest.mark.slow
def test_probe_finds_maryland_county_classes(maryland):
    _, sims, *_ = maryland
    assert sims.metadata["county_classes"]["MD"] == 2
    md = np.flatnonzero(sims.classes.copy_state == MD)
    assert sorted(sims.classes.copy_county[md].tolist()) == [MONTGOMERY, BALTIMORE_CITY]
    assert sims.metadata["probe"]["probe_copies"] == 2
    # SNAP (ABAWD waiver areas, housing assistance) in every class; AGI once per state
    assert "snap" in sims.metadata["county_dependent"]
    assert "adjusted_gross_income" not in sims.metadata["county_dependent"]


@pytest.mark.slow
def test_each_county_class_equals_its_own_simulation(maryland):
    """The second class computed only the county-dependent variables; every value of both
    classes equals a simulation of the households at the class's county."""
    tables, sims, *_ = maryland
    md = np.flatnonzero(sims.classes.copy_state == MD)
    forced = [(s.entity, s.input) for s in simu.takeup_specs_for(sims.variables)]
    own = simu.simulate_chunk(tables, [MD] * len(md), sims.variables,
                              sims.classes.copy_county[md].tolist(), 2024, forced)
    assert set(own) == set(sims.variables) and len(sims.variables) == 3  # + housing assistance
    for v in sims.variables:
        got = sims.values_at(v, np.broadcast_to(md[:, None], own[v].shape))
        np.testing.assert_allclose(got, own[v], rtol=1e-9, atol=1e-6, err_msg=v)


@pytest.mark.slow
def test_files_with_real_counties_reproduce_xw_for_snap(maryland):
    report = _report(maryland, county_aware=True)
    snap = report[report["variable"] == "snap"]
    assert len(snap) == 1 and snap["xw_value"].iloc[0] > 0
    assert (report["xw_rel_diff"] <= 0.005).all(), report[["target_name", "sim_value",
                                                           "xw_value"]]
    assert report["consistent"].all()


@pytest.mark.slow
def test_a_matrix_that_ignores_the_clone_county_fails(maryland):
    report = _report(maryland, county_aware=False)
    snap = report[report["variable"] == "snap"]
    assert (snap["xw_rel_diff"] > 0.005).any(), snap[["target_name", "sim_value", "xw_value"]]
    assert not report["consistent"].all()


def test_county_share_report_tvd_and_flag():
    from calibration_core import geography as g

    table = pd.DataFrame({"district_geoid": [2407, 2408, 2408],
                          "county_fips": [BALTIMORE_CITY, MONTGOMERY, BALTIMORE_CITY],
                          "probability": [1.0, 0.8, 0.2]})
    expected = g.expected_county_shares(table, pd.Series({2407: 100.0, 2408: 100.0}))
    assert expected.set_index("county_fips")["expected_share"].to_dict() == pytest.approx(
        {BALTIMORE_CITY: 0.6, MONTGOMERY: 0.4})
    counties = np.array([BALTIMORE_CITY] * 500 + [MONTGOMERY] * 500)
    summary, per_county = g.county_share_report(MD, counties, np.ones(1000), expected)
    assert summary["tvd"] == pytest.approx(0.1) and summary["effective_households"] == 1000
    assert summary["noise_tvd"] < 0.02 and not summary["flagged"]  # 0.1 - noise <= 0.10
    everyone_in_one = np.array([MONTGOMERY] * 1000)
    summary, _ = g.county_share_report(MD, everyone_in_one, np.ones(1000), expected)
    assert summary["tvd"] == pytest.approx(0.6) and summary["flagged"]
    assert summary["counties_in_file"] == 1 and summary["largest_gap_county"] in (
        MONTGOMERY, BALTIMORE_CITY)
    with pytest.raises(g.GeographyError, match="not in the county table"):
        g.county_share_report(MD, np.array(["24001"]), np.ones(1), expected)


def test_probe_parts_split_whole_states_and_probe_rows_are_deterministic():
    cw = pd.DataFrame({"state": [1] * 5 + [2] * 3 + [4] * 4 + [5] * 4,
                       "county_fips": [f"{s:02d}{i:03d}" for s, n in ((1, 5), (2, 3), (4, 4),
                                                                      (5, 4))
                                       for i in range(n)], "weight": 1.0})
    parts = simu.probe_parts(cw, 2)
    assert len(parts) == 2 and sum(len(p) for p in parts) == len(cw)
    assert not set(parts[0]["state"]) & set(parts[1]["state"])  # whole states
    assert [len(p) for p in parts] == [8, 8]
    tables = synthetic_tables(40, seed=3)
    rows = simu.probe_rows(tables, 6)
    assert len(rows) == 6 and np.array_equal(rows, simu.probe_rows(tables, 6))
    assert len(np.unique(rows)) == 6
