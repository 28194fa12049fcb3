"""Issue 20: take-up inputs in every file, inputs derived/imputed for the rules, national check.

Toy records only; no policyengine-us except in the test marked slow.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from calibration_core import assembly as asm
from calibration_core import national_check as nc
from calibration_core.geography import GeographyAssignment
from calibration_core.microdata_parts import rules_inputs as ri
from calibration_core.microdata_parts import takeup_inputs as ti
from calibration_core.simulation import TAKEUP
from tests.package_fixtures import synthetic_tables


def _toy(n=400, seed=3):
    tables = synthetic_tables(n, seed=seed)
    person = tables["person"]
    rank = person.groupby("person_household_id").cumcount().to_numpy()
    person["is_tax_unit_head"] = rank == 0
    person["is_tax_unit_dependent"] = person["age"].to_numpy() < 18
    return tables


# ------------------------------------------------------------------------------ take-up


def test_every_takeup_input_drawn_once_per_entity():
    tables = _toy()
    out, info = ti.add_takeup_inputs(tables)
    assert ti.missing_takeup_inputs(tables) == list(ti.TAKEUP_INPUT_NAMES)
    assert ti.missing_takeup_inputs(out) == []
    assert len(info) == len(ti.TAKEUP_INPUTS) == 20
    for spec in ti.TAKEUP_INPUTS:
        col = out[spec.entity][spec.input]
        assert col.dtype == bool and len(col) == len(tables[spec.entity])
    # the matrix's re-randomised inputs are all covered
    assert {t.input for t in TAKEUP} <= set(ti.TAKEUP_INPUT_NAMES)
    # deterministic, and the same key scheme as the matrix with clone BASE_CLONE
    again, _ = ti.add_takeup_inputs(tables)
    for spec in ti.TAKEUP_INPUTS:
        assert np.array_equal(out[spec.entity][spec.input], again[spec.entity][spec.input])
    hh = tables["household"]["household_id"].to_numpy()  # one SPM unit per household here
    draw = ti.keyed_uniform("takeup.takes_up_tanf_if_eligible", hh, ti.BASE_CLONE, 0)
    assert np.array_equal(out["spm_unit"]["takes_up_tanf_if_eligible"].to_numpy(), draw < 0.22)


def test_takeup_rates_follow_their_rules():
    tables = _toy(3000)
    from calibration_core.simulation import Structure

    s = Structure.from_tables(tables)
    spec = {t.input: t for t in ti.TAKEUP_INPUTS}
    eitc = ti.takeup_rates(spec["takes_up_eitc"], tables, s)
    children, _, _ = ti._tax_unit_features(tables, s)
    assert np.allclose(eitc[children == 0], 0.65) and np.allclose(eitc[children == 1], 0.86)
    med = ti.takeup_rates(spec["takes_up_medicaid_if_eligible"], tables, s)
    state = tables["household"]["state_fips"].to_numpy()[s.household_index["person"]]
    assert np.allclose(med[state == 6], 0.78) and np.allclose(med[state == 48], 0.76)
    age = tables["person"]["age"].to_numpy()
    wic = ti.takeup_rates(spec["takes_up_wic_if_eligible"], tables, s)
    assert np.allclose(wic[(age >= 1) & (age < 5)], 0.46)
    assert (ti.takeup_rates(spec["takes_up_chip_if_eligible"], tables, s) == 1.0).all()
    out, info = ti.add_takeup_inputs(tables)
    assert abs(info["takes_up_snap_if_eligible"]["weighted_share"] - 0.82) < 0.04
    assert info["takes_up_chip_if_eligible"]["weighted_share"] == 1.0
    # reported SSI recipients always take up; the others draw at 0.5
    tables["person"]["ssi_reported"] = np.where(np.arange(len(tables["person"])) % 7 == 0,
                                                4000.0, 0.0)
    out, _ = ti.add_takeup_inputs(tables)
    ssi = out["person"]["takes_up_ssi_if_eligible"].to_numpy()
    reported = tables["person"]["ssi_reported"].to_numpy() > 0
    assert ssi[reported].all() and 0.45 < ssi[~reported].mean() < 0.55


def test_every_area_file_carries_every_takeup_input_and_base_draws_are_shared():
    """Inputs drawn in the microdata reach every assembled file unchanged (the state
    simulations read the same values); re-randomised ones are redrawn per clone."""
    tables, _ = ti.add_takeup_inputs(_toy(60))
    base = asm.index_base(tables, 2024)
    n = base.n_records
    cd = np.tile(np.array([601, 3610, 4807])[np.arange(n) % 3], (2, 1))
    county = np.vectorize({601: "06001", 3610: "36047", 4807: "48201"}.get)(cd).astype("U5")
    geo = GeographyAssignment(base.household_id, cd, county, cd // 100, np.zeros(n, bool))
    w = asm.check_weights(np.full(2 * n, 5.0), geo)
    snap = next(t for t in TAKEUP if t.input == "takes_up_snap_if_eligible")
    build = asm.build_area_tables(base, geo, w, None, [snap])  # national: both clones
    out = build.tables
    assert ti.missing_takeup_inputs(out) == []
    # a non-re-randomised input equals its base value in every clone
    person_record = build.record[out["person"]["person_household_id"].to_numpy()]
    first = tables["person"].groupby("person_household_id").cumcount().to_numpy()
    base_rows = np.flatnonzero(np.isin(tables["person"]["person_household_id"],
                                       base.household_id))
    ssi_base = pd.Series(tables["person"]["takes_up_ssi_if_eligible"].to_numpy()[base_rows],
                         index=pd.MultiIndex.from_arrays(
                             [tables["person"]["person_household_id"].to_numpy()[base_rows],
                              first[base_rows]]))
    out_first = out["person"].groupby("person_household_id").cumcount().to_numpy()
    expect = ssi_base.loc[list(zip(base.household_id[person_record], out_first))].to_numpy()
    assert np.array_equal(out["person"]["takes_up_ssi_if_eligible"].to_numpy(), expect)
    # the re-randomised one differs between clones of the same record somewhere
    spm = out["spm_unit"]["takes_up_snap_if_eligible"].to_numpy()
    assert 0 < spm.mean() < 1


@pytest.mark.slow
def test_policyengine_takeup_inputs_are_all_drawn():
    """Every policyengine-us input named takes_up_* / would_file_* is in TAKEUP_INPUTS, at
    the entity policyengine-us defines it on."""
    from policyengine_us import CountryTaxBenefitSystem

    system = CountryTaxBenefitSystem()
    defined = {name: v.entity.key for name, v in system.variables.items()
               if (name.startswith("takes_up_") or name.startswith("would_file_"))
               and not v.formulas}
    ours = {t.input: t.entity for t in ti.TAKEUP_INPUTS}
    assert defined == ours


# ------------------------------------------------------------------------------ rules inputs


def _housing_toy():
    tables = _toy(500)
    person = tables["person"]
    rng = np.random.default_rng(5)
    head = person["is_tax_unit_head"].to_numpy()
    u = rng.random(len(person))
    person["home_mortgage_interest"] = np.where(head & (u < 0.4), 6000.0, 0.0)
    person["real_estate_taxes"] = np.where(head & (u < 0.65), 3000.0, 0.0)
    return tables


def test_tenure_from_mortgage_interest_and_property_tax():
    tables = _housing_toy()
    out, info = ri.derive_tenure(tables)
    tenure = out["household"]["tenure_type"].to_numpy()
    person = tables["person"][tables["person"]["is_tax_unit_head"]]
    mort = person.set_index("person_household_id")["home_mortgage_interest"].reindex(
        out["household"]["household_id"]).to_numpy() > 0
    tax = person.set_index("person_household_id")["real_estate_taxes"].reindex(
        out["household"]["household_id"]).to_numpy() > 0
    assert (tenure[mort] == "OWNED_WITH_MORTGAGE").all()
    assert (tenure[~mort & tax] == "OWNED_OUTRIGHT").all()
    assert (tenure[~mort & ~tax] == "RENTED").all()
    assert abs(sum(info["tenure_weighted_share"].values()) - 1) < 1e-3


def test_rent_matches_state_totals_and_goes_to_renters_only(tmp_path):
    tables, _ = ri.derive_tenure(_housing_toy())
    path = tmp_path / "acs_housing_costs_2024.csv"
    pd.DataFrame({"state_code": ["CA", "FL", "NY", "TX"], "state_fips": ["06", "12", "36", "48"],
                  "annual_contract_rent": [9e9, 4e9, 7e9, 5e9],
                  "real_estate_taxes": [1, 1, 1, 1]}).to_csv(path, index=False)
    out, info = ri.impute_rent(tables, ri.read_state_rent(path))
    person, hh = out["person"], out["household"]
    w = hh.set_index("household_id")["household_weight"]
    by_state = (person["pre_subsidy_rent"] * w.loc[person["person_household_id"]].to_numpy()
                ).groupby(hh.set_index("household_id")["state_fips"].loc[
                    person["person_household_id"]].to_numpy()).sum()
    assert np.allclose(by_state.loc[[6, 12, 36, 48]].to_numpy(), [9e9, 4e9, 7e9, 5e9])
    renter_ids = hh["household_id"][hh["tenure_type"] == "RENTED"]
    paying = person.loc[person["pre_subsidy_rent"] > 0, "person_household_id"]
    assert set(paying) <= set(renter_ids) and paying.is_unique
    assert info["rent_weighted_total"] == pytest.approx(25e9)
    # a state with renters and no published total is refused, naming it
    with pytest.raises(ri.RulesInputError, match="48"):
        ri.impute_rent(tables, ri.read_state_rent(path).drop(48))


def test_rent_file_with_bad_value_is_refused(tmp_path):
    path = tmp_path / "acs_housing_costs_2024.csv"
    path.write_text("state_code,state_fips,annual_contract_rent\nCA,06,abc\n")
    with pytest.raises(ri.RulesInputError, match="row 2"):
        ri.read_state_rent(path)


def test_esi_share_matches_published_share_and_rises_with_wages():
    tables = _toy(4000)
    out, info = ri.impute_esi(tables, share=0.5)
    assert abs(info["esi_weighted_share"] - 0.5) < 0.03
    person = out["person"]
    esi = person["has_esi"].to_numpy()
    # shared by the members of a tax unit
    assert (person.groupby("person_tax_unit_id")["has_esi"].nunique() == 1).all()
    wages = person.groupby("person_tax_unit_id")["employment_income"].sum()
    unit_esi = person.groupby("person_tax_unit_id")["has_esi"].first()
    assert unit_esi[wages >= 50_000].mean() > unit_esi[wages == 0].mean() + 0.3
    assert esi.dtype == bool
    with pytest.raises(ri.RulesInputError):
        ri.impute_esi(tables, share=0.99)


def test_disability_from_ssdi_and_ssi():
    tables = _toy(50)
    person = tables["person"]
    person["social_security_disability"] = 0.0
    person["ssi_reported"] = 0.0
    person.loc[0, "social_security_disability"] = 9000.0
    person.loc[1, "ssi_reported"] = 5000.0
    person.loc[1, "age"] = 40
    person.loc[2, "ssi_reported"] = 5000.0
    person.loc[2, "age"] = 70
    out, info = ri.derive_disability(tables)
    flag = out["person"]["is_disabled"].to_numpy()
    assert flag[0] and flag[1] and not flag[2] and flag.sum() == 2
    assert np.array_equal(out["person"]["meets_ssi_disability_criteria"].to_numpy(), flag)


def test_add_rules_inputs_names_what_is_missing(tmp_path):
    out, info = ri.add_rules_inputs(_housing_toy(), tmp_path)  # no rent file
    assert "pre_subsidy_rent" not in out["person"].columns and "rent_note" in info
    assert {"tenure_type", "has_esi", "is_disabled"} <= set(info["imputed"])
    assert "immigration_status" in info["not_available"]


# ------------------------------------------------------------------------------ national check


def _raw(tmp_path):
    (tmp_path / "aca_ptc_state.csv").write_text(
        "# IRS SOI\nGEO_ID,Returns,TotalPTCAmount\n0400000US01,10,30000000000\n"
        "0400000US02,5,23900000000\n")
    (tmp_path / "eitc_state.csv").write_text(
        "# IRS SOI\nGEO_ID,Returns,Amount\n0400000US01,10,50000000000\n")
    rows = []
    for var, value in (("income_tax_after_credits", 2.1e12), ("adjusted_gross_income", 14.8e12),
                       ("employment_income", 9.7e12)):
        rows.append({"Year": 2022, "Variable": var, "Filing status": "All",
                     "AGI lower bound": -np.inf, "AGI upper bound": np.inf, "Count": False,
                     "Taxable only": False, "Value": value})
    pd.DataFrame(rows).to_csv(tmp_path / "soi_targets.csv", index=False)
    return tmp_path


def test_national_check_flags_totals_outside_tolerance(tmp_path):
    published = nc.published_figures(_raw(tmp_path), parameters=None)
    ptc = published[(published["variable"] == "aca_ptc") & (published["source"].str.contains(
        "SOI"))]
    assert float(ptc["published"].iloc[0]) == pytest.approx(53.9e9)
    totals = {v: 1.0 for v in nc.VARIABLES}
    totals.update({"aca_ptc": 120e9, "eitc": 52e9, "employment_income": 9.9e12,
                   "adjusted_gross_income": 15e12,
                   "income_tax_before_refundable_credits": 2.2e12})
    table = nc.compare(totals, published)
    status = dict(zip(table["variable"] + "|" + table["source"], table["status"]))
    soi_ptc = next(k for k in status if k.startswith("aca_ptc|IRS SOI"))
    assert status[soi_ptc] == "FLAG"  # 120 / 53.9 = 2.2 > 2
    # the taken-up credit is checked on its own: 1.0 (set above) of 53.9 bn is far below 0.5
    assert status[next(k for k in status if k.startswith("assigned_aca_ptc|IRS SOI"))] == "FLAG"
    totals["assigned_aca_ptc"] = 105.9e9  # the demo build's: 1.96, inside the factor of 2
    table = nc.compare(totals, published)
    assert table.loc[(table["variable"] == "assigned_aca_ptc")
                     & table["source"].str.startswith("IRS SOI"), "status"].item() == "ok"
    assert status[next(k for k in status if k.startswith("eitc|IRS SOI"))] == "ok"
    assert status[next(k for k in status if k.startswith("snap|"))] == "no reference"
    totals["aca_ptc"] = 100e9  # 1.86: inside the factor of 2
    table = nc.compare(totals, published)
    assert table.loc[table["source"].str.startswith("IRS SOI TY2022 premium")
                     & (table["variable"] == "aca_ptc"), "status"].item() == "ok"
    totals["eitc"] = float("nan")
    table = nc.compare(totals, published)
    assert table.loc[table["source"].str.startswith("IRS SOI TY2022 EITC"),
                     "status"].item() == "FLAG"
    assert "FLAG" in nc.to_markdown(table)
    with pytest.raises(KeyError, match="snap"):
        nc.compare({k: v for k, v in totals.items() if k != "snap"}, published)


def test_national_check_parameter_figures_and_bad_file(tmp_path):
    class Node:
        def __init__(self, value=None, children=None):
            self.value, self.children = value, children or {}

        def __call__(self, date):
            return self.value

        def __getattr__(self, name):
            try:
                return self.__dict__["children"][name]
            except KeyError:
                raise AttributeError(name)

    cbo = {k: Node(1e9) for k in ("income_tax", "snap", "ssi", "social_security",
                                  "unemployment_compensation")}
    params = Node(children={"calibration": Node(children={"gov": Node(children={
        "cbo": Node(children=cbo),
        "treasury": Node(children={"tax_expenditures": Node(children={"eitc": Node(67e9)})}),
        "aca": Node(children={"spending": Node(children={"state": Node(children={
            "CA": Node(2e9), "NY": Node(3e9)})})}),
        "hhs": Node(children={"medicaid": Node(children={"totals": Node(children={
            "spending": Node(children={"CA": Node(1e9)})})})}),
    })})})
    published = nc.published_figures(_raw(tmp_path), params)
    aca = published[published["source"].str.startswith("KFF APTC")
                    & (published["variable"] == "aca_ptc")]["published"].item()
    assert aca == 5e9
    assert published.loc[published["source"].str.startswith("Treasury"), "published"].item() \
        == 67e9
    (tmp_path / "aca_ptc_state.csv").write_text("GEO_ID,Returns,TotalPTCAmount\nX,1,-5\n")
    with pytest.raises(nc.NationalCheckError, match="aca_ptc_state.csv.*X"):
        nc.read_soi_ptc(tmp_path / "aca_ptc_state.csv")


def test_national_check_without_optional_soi_file_has_no_reference(tmp_path):
    raw = _raw(tmp_path)
    (raw / "aca_ptc_state.csv").unlink()
    published = nc.published_figures(raw, parameters=None)
    row = published[published["source"].str.startswith("IRS SOI TY2022 premium")
                    & (published["variable"] == "aca_ptc")]
    assert np.isnan(row["published"].item())
    table = nc.compare({v: 1e9 for v in nc.VARIABLES}, published)
    assert table.loc[row.index, "status"].item() == "no reference"


@pytest.mark.slow
def test_national_check_reads_every_policyengine_parameter(tmp_path):
    from policyengine_us import CountryTaxBenefitSystem

    published = nc.published_figures(_raw(tmp_path), CountryTaxBenefitSystem().parameters)
    params = published[published["source"].str.contains("policyengine-us parameter")]
    expected = sorted(c.variable for c in nc.CHECKS if c.kind == "param")
    assert len(expected) == 9  # 7 variables; aca_ptc and assigned_aca_ptc share KFF's APTC
    assert sorted(params["variable"]) == expected, params.to_string()
    assert (params["published"] > 1e9).all(), params.to_string()
    kff = params.loc[params["variable"].isin(["aca_ptc", "assigned_aca_ptc"]), "published"]
    assert kff.nunique() == 1, params.to_string()
    snap = published.loc[published["variable"] == "snap", "published"].item()
    assert 50e9 < snap < 150e9
