"""Base microdata from the real Tax-Calculator CPS file, person construction, stratification and
bad CPS input (the materialize() test leaves the previous artifacts intact)."""
from __future__ import annotations

import gzip
import shutil

import numpy as np
import pandas as pd
import pytest

from calibration_core import microdata as md
from calibration_core.microdata_parts import taxcalc_cps
from calibration_core.raw_inputs import raw_path

SUPPORT_FILES = ("growfactors.csv", "county_cd_distributions.csv", "acs_S0101_state_2024.json",
                 "acs_S0101_national_2024.json")


@pytest.fixture(scope="module")
def real_base(real_raw_dir):
    source = md.load_cps_source(real_raw_dir)
    tables, info = md.build_base_tables(source, real_raw_dir)
    return source, tables, info


def test_real_base_structure_population_and_states(real_base, real_raw_dir):
    source, tables, info = real_base
    assert source.kind == "taxcalc" and len(source.records) == 280_005
    assert md.structure_problems(tables) == []
    summary = md.summarize(tables)
    assert summary["n_household"] == 200_576  # distinct (FLPDYR, h_seq)
    assert summary["n_tax_unit"] == 280_005
    # persons rebuilt from head/spouse/dependants agree with XTOT for nearly every unit
    assert abs(summary["n_person"] - source.records["XTOT"].sum()) < 0.001 * summary["n_person"]
    national = md.acs_national_population(raw_path(real_raw_dir, "acs_S0101_national_2024.json"))
    assert summary["weighted_persons"] == pytest.approx(national, rel=1e-6)
    # WT2024 alone over-counts the 2024 population (taxdata's tax-unit projection)
    assert info["weighted_persons_before_benchmark"] > 1.1 * national
    by_state = md.population_by_state(tables, md.acs_state_population(
        raw_path(real_raw_dir, "acs_S0101_state_2024.json")))
    assert len(by_state) == 51 and (by_state["households"] > 0).all()
    np.testing.assert_allclose(by_state["pct_diff"], 0.0, atol=1e-6)
    hh = tables["household"]
    assert hh["county_fips"].str.fullmatch(r"\d{5}").all()
    assert (hh["county_fips"].str[:2].astype(int) == hh["state_fips"]).all()


def test_incomes_are_uprated_with_taxcalc_growfactors(real_base, real_raw_dir):
    source, tables, _ = real_base
    factors = taxcalc_cps.growth_factors(raw_path(real_raw_dir, "growfactors.csv"), 2014, 2024)
    person = tables["person"]
    assert person["employment_income"].sum() == pytest.approx(
        source.records["e00200"].sum() * factors["AWAGE"], rel=1e-9)
    assert (person["social_security_retirement"] + person["social_security_disability"]).sum() \
        == pytest.approx(source.records["e02400"].sum() * factors["ASOCSEC"], rel=1e-9)
    # record RECID 2: a joint unit, head 45 and spouse 40, each with their own wages
    unit = person[person["person_tax_unit_id"] == 2]
    assert unit["age"].tolist() == [45.0, 40.0]
    assert unit["person_marital_unit_id"].nunique() == 1
    assert unit["employment_income"].tolist() == pytest.approx(
        [20075 * factors["AWAGE"], 23725 * factors["AWAGE"]])


def _records(**overrides) -> pd.DataFrame:
    base = {c: 0 for c in taxcalc_cps.REQUIRED_COLUMNS}
    base.update(RECID=1, FLPDYR=2014, h_seq=1, ffpos=1, a_lineno=1, fips=6, MARS=1, XTOT=1,
                age_head=40, n21=1, weight=100.0)
    base.update(overrides)
    return pd.DataFrame([base])


def test_persons_are_built_inside_the_published_age_bands():
    family = _records(RECID=7, MARS=2, XTOT=5, age_head=38, age_spouse=36, nu06=1, nu13=2,
                      nu18=3, n21=2)
    elderly = _records(RECID=8, h_seq=2, MARS=4, XTOT=2, age_head=50, n21=2,
                       elderly_dependents=1)
    tables = taxcalc_cps.build_tables(pd.concat([family, elderly], ignore_index=True), None)
    p = tables["person"]
    fam = p[p["person_tax_unit_id"] == 7]
    assert fam["is_tax_unit_head"].tolist() == [True, False, False, False, False]
    assert fam["is_tax_unit_spouse"].tolist() == [False, True, False, False, False]
    ages = fam["age"].tolist()
    assert ages[:2] == [38, 36]
    assert 0 <= ages[2] <= 5 and 6 <= ages[3] <= 12 and 13 <= ages[4] <= 17
    assert fam["is_male"].iloc[0] != fam["is_male"].iloc[1]
    old = p[p["person_tax_unit_id"] == 8]
    assert len(old) == 2 and 65 <= old["age"].iloc[1] <= 85
    assert p["person_marital_unit_id"].nunique() == 6  # couple, 3 children, 2 in unit 8
    # draws are salted by the record id: the same record gets the same ages in another file
    alone = taxcalc_cps.build_tables(family, None)["person"]
    assert alone["age"].tolist() == ages
    assert alone["is_male"].tolist() == fam["is_male"].tolist()


def test_stratification_keeps_top_and_preserves_state_totals(real_base):
    _, tables, _ = real_base
    before = md.population_by_state(tables)["weighted_persons"]
    agi = md.household_agi(tables)
    for n, pct in ((300, 99.0), (3000, 99.5)):
        out, info = md.stratify_tables(tables, n, pct, seed=20240101)
        assert len(out["household"]) == n
        assert md.structure_problems(out) == []
        after = md.population_by_state(out)["weighted_persons"]
        np.testing.assert_allclose(after.to_numpy(), before.to_numpy(), rtol=1e-9)
        top_ids = tables["household"]["household_id"].to_numpy()[np.argsort(-agi)[:info["n_top"]]]
        assert np.isin(top_ids, out["household"]["household_id"]).all()
    again, _ = md.stratify_tables(tables, 3000, 99.5, seed=20240101)
    other, _ = md.stratify_tables(tables, 3000, 99.5, seed=7)
    assert again["household"]["household_id"].tolist() == out["household"]["household_id"].tolist()
    assert other["household"]["household_id"].tolist() != out["household"]["household_id"].tolist()


# --------------------------------------------------------------------------- bad input
def _small_raw(real_raw_dir, dest, n_units=3000):
    raw = dest / "raw"
    raw.mkdir(parents=True)
    for name in SUPPORT_FILES:
        shutil.copyfile(real_raw_dir / name, raw / name)
    cps = pd.read_csv(real_raw_dir / "cps.csv.gz", nrows=n_units)
    weights = pd.read_csv(real_raw_dir / "cps_weights.csv.gz", nrows=n_units)
    (raw / "manifest.json").write_text('{"provider": "test", "files": {}}\n')
    return raw, cps, weights


def _write_csv_gz(df: pd.DataFrame, path) -> None:
    with gzip.open(path, "wt") as fh:
        df.to_csv(fh, index=False)


def _materialize(store_root):
    import dagster as dg

    import assets.microdata as am
    from resources.settings import BuildSettings
    from resources.store import ArtifactStore

    return dg.materialize(
        [am.cps_source, am.base_microdata],
        resources={"store": ArtifactStore(root=str(store_root)),
                   "settings": BuildSettings(preset="tiny")},
        instance=dg.DagsterInstance.ephemeral(), raise_on_error=False,
    )


def _failure_message(result) -> str:
    messages = []
    for event in result.all_events:
        if event.is_step_failure:
            error = event.event_specific_data.error
            while error is not None:  # the step error wraps the CpsInputError as its cause
                messages.append(error.message)
                error = error.cause
    return "\n".join(messages)


def test_bad_cps_input_names_the_column_and_keeps_artifacts(real_raw_dir, tmp_path):
    raw, cps, weights = _small_raw(real_raw_dir, tmp_path)
    _write_csv_gz(cps, raw / "cps.csv.gz")
    _write_csv_gz(weights, raw / "cps_weights.csv.gz")
    assert _materialize(tmp_path).success
    base = tmp_path / "microdata" / "base_2024.h5"
    source_json = tmp_path / "microdata" / "cps_source.json"
    good = (base.read_bytes(), source_json.read_bytes())

    _write_csv_gz(cps.drop(columns="MARS"), raw / "cps.csv.gz")
    result = _materialize(tmp_path)
    assert not result.success
    assert "'MARS'" in _failure_message(result) and "cps.csv.gz" in _failure_message(result)
    assert (base.read_bytes(), source_json.read_bytes()) == good

    _write_csv_gz(cps, raw / "cps.csv.gz")
    bad_weights = weights.astype({"WT2024": object})
    bad_weights.loc[17, "WT2024"] = "n/a"
    _write_csv_gz(bad_weights, raw / "cps_weights.csv.gz")
    result = _materialize(tmp_path)
    assert not result.success
    message = _failure_message(result)
    assert "'WT2024'" in message and "cps_weights.csv.gz" in message and "'n/a'" in message
    assert (base.read_bytes(), source_json.read_bytes()) == good
