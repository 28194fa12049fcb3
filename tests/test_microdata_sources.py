"""Census ASEC reader, PUF clone and donor imputation on small fixture files that the tests write
in the agencies' real column layouts (ASEC hhpub/ffpub/pppub, IRS PUF + demographics, ACS PUMS
person + housing, SIPP pipe-separated monthly file, SCF summary extract)."""
from __future__ import annotations

import shutil

import numpy as np
import pandas as pd
import pytest

from calibration_core import microdata as md
from calibration_core.microdata_parts import enhance, taxcalc_cps
from calibration_core.microdata_parts.geography import assign_counties, county_shares
from calibration_core.microdata_parts.taxcalc_cps import CpsInputError

SUPPORT_FILES = ("growfactors.csv", "county_cd_distributions.csv", "acs_S0101_state_2024.json",
                 "acs_S0101_national_2024.json")


@pytest.fixture()
def raw(real_raw_dir, tmp_path):
    folder = tmp_path / "raw"
    folder.mkdir()
    for name in SUPPORT_FILES:
        shutil.copyfile(real_raw_dir / name, folder / name)
    return folder


# --------------------------------------------------------------------------- ASEC
def _write_asec(folder, drop_person_column=None):
    # household 10 (CA, county 037): married couple + child, two tax units (adult child files);
    # household 20 (TX, county not identified): single adult; household 30: non-interview.
    pd.DataFrame({
        "H_SEQ": [10, 20, 30], "GESTFIPS": [6, 48, 36], "GTCO": [37, 0, 0],
        "HSUP_WGT": [150025, 98000, 0], "H_NUMPER": [4, 1, 0],
    }).to_csv(folder / "hhpub24.csv", index=False)
    pd.DataFrame({"FH_SEQ": [10, 20], "FFPOS": [1, 1], "FSUP_WGT": [150025, 98000]}).to_csv(
        folder / "ffpub24.csv", index=False)
    person = pd.DataFrame({
        "PH_SEQ": [10, 10, 10, 10, 20], "P_SEQ": [1, 2, 3, 4, 1], "A_LINENO": [1, 2, 3, 4, 1],
        "PF_SEQ": [1, 1, 1, 1, 1], "A_AGE": [45, 43, 12, 19, 70], "A_SEX": [1, 2, 2, 1, 2],
        "A_SPOUSE": [2, 1, 0, 0, 0], "MARSUPWT": [150025] * 4 + [98000],
        "TAX_ID": [1, 1, 1, 2, 1], "SPM_ID": [1, 1, 1, 1, 1],
        "WSAL_VAL": [60000, 30000, 0, 8000, 0], "SEMP_VAL": [0, -2000, 0, 0, 0],
        "INT_VAL": [100, 0, 0, 0, 2500], "SS_VAL": [0, 0, 0, 0, 18000],
        "SSI_VAL": [0] * 5, "UC_VAL": [0] * 5, "MCAID": [2, 2, 1, 2, 2],
        "SPM_SNAPSUB": [0, 0, 0, 0, 0],
    })
    if drop_person_column:
        person = person.drop(columns=drop_person_column)
    person.to_csv(folder / "pppub24.csv", index=False)


def test_asec_reader_builds_the_entities(raw):
    _write_asec(raw)
    source = md.load_cps_source(raw)
    assert source.kind == "asec" and source.data_year == 2023
    tables, _ = md.build_base_tables(source, raw, benchmark=False)
    assert md.structure_problems(tables) == []
    hh, person = tables["household"], tables["person"]
    assert hh["household_id"].tolist() == [10, 20]  # the non-interview household is dropped
    assert hh["household_weight"].tolist() == [1500.25, 980.0]
    assert hh["county_fips"].iloc[0] == "06037"  # GTCO where Census identifies the county
    assert hh["county_fips"].iloc[1].startswith("48")
    assert len(tables["tax_unit"]) == 3 and len(tables["spm_unit"]) == 2
    couple = person[person["person_household_id"] == 10]
    assert couple["person_marital_unit_id"].iloc[0] == couple["person_marital_unit_id"].iloc[1]
    assert couple["person_marital_unit_id"].nunique() == 3
    assert couple["is_male"].tolist() == [True, False, False, True]
    factor = taxcalc_cps.growth_factors(raw / "growfactors.csv", 2023, 2024)
    assert couple["employment_income"].tolist() == pytest.approx(
        [60000 * factor["AWAGE"], 30000 * factor["AWAGE"], 0, 8000 * factor["AWAGE"]])
    assert couple["self_employment_income"].iloc[1] == pytest.approx(-2000 * factor["ASCHCL"])
    single = person[person["person_household_id"] == 20]
    assert single["social_security_retirement"].iloc[0] == pytest.approx(
        18000 * factor["ASOCSEC"])
    assert couple["takes_up_medicaid_if_eligible"].tolist() == [False, False, True, False]


def test_asec_missing_column_is_named(raw):
    _write_asec(raw, drop_person_column="A_AGE")
    with pytest.raises(CpsInputError, match=r"pppub24\.csv.*A_AGE"):
        md.load_cps_source(raw)
    # and the embedded default is used when asked for explicitly
    with pytest.raises(Exception, match="cps.csv.gz"):
        md.load_cps_source(raw, prefer="taxcalc")


# --------------------------------------------------------------------------- receivers
@pytest.fixture(scope="module")
def small_base(real_raw_dir):
    """The first 300 real CPS tax units of survey year 2012 as entity tables."""
    records = taxcalc_cps.read_taxcalc_cps(real_raw_dir / "cps.csv.gz",
                                           real_raw_dir / "cps_weights.csv.gz")
    records = records[records["FLPDYR"] == 2012].head(300)
    factors = taxcalc_cps.growth_factors(real_raw_dir / "growfactors.csv", 2014, 2024)
    tables = taxcalc_cps.build_tables(records, factors)
    hh = tables["household"]
    hh["county_fips"] = assign_counties(hh["state_fips"], hh["household_id"],
                                        county_shares(real_raw_dir / "county_cd_distributions.csv"))
    return tables


# --------------------------------------------------------------------------- PUF clone
def _write_puf(folder, n=800, seed=0):
    rng = np.random.default_rng(seed)
    recid = np.arange(1, n + 1)
    mars = rng.choice([1, 2, 4], n, p=[0.5, 0.4, 0.1])
    wages = np.round(rng.lognormal(10.5, 1.2, n) * (rng.random(n) < 0.8))
    puf = pd.DataFrame({
        "RECID": recid, "MARS": mars, "XTOT": 1 + (mars == 2) + rng.integers(0, 3, n),
        "DSI": 0, "EIC": 0, "S006": rng.integers(5000, 50000, n),
        "E00200": wages, "E00300": np.round(rng.exponential(500, n)),
        "E00600": np.round(rng.exponential(800, n)), "E00900": np.round(rng.normal(0, 3000, n)),
        "E26270": np.round(rng.normal(0, 10000, n) * (rng.random(n) < 0.1)),
        "P22250": 0, "P23250": np.round(rng.exponential(4000, n) * (rng.random(n) < 0.2)),
        "E01500": 0, "E01700": 0, "E02400": 0, "E19200": np.round(rng.exponential(3000, n)),
    })
    puf["E00650"] = np.round(puf["E00600"] * 0.7)
    # an IRS aggregate record (dropped by the reader)
    puf.loc[n] = {**{c: 0 for c in puf.columns}, "RECID": 999999, "MARS": 0, "S006": 100,
                  "E00200": 9e9}
    puf.to_csv(folder / "puf_2015.csv", index=False)
    pd.DataFrame({"RECID": recid, "AGERANGE": rng.integers(1, 7, n),
                  "GENDER": rng.integers(1, 3, n), "EARNSPLIT": 0, "AGEDP1": 0, "AGEDP2": 0,
                  "AGEDP3": 0}).to_csv(folder / "demographics_2015.csv", index=False)
    return puf.iloc[:n]


def test_puf_clone_doubles_households_and_imputes_puf_values(raw, small_base):
    puf = _write_puf(raw)
    out, notes = enhance.enhance_tables(small_base, raw, seed_key="t")
    assert notes["puf_clone"].startswith("ran: puf_2015.csv")
    assert "skipped" in notes["acs_donor"]
    n_hh = len(small_base["household"])
    assert len(out["household"]) == 2 * n_hh
    assert len(out["person"]) == 2 * len(small_base["person"])
    assert md.structure_problems(out) == []
    assert out["household"]["household_weight"].sum() == pytest.approx(
        small_base["household"]["household_weight"].sum())
    base_half = out["person"].iloc[:len(small_base["person"])]
    clone = out["person"].iloc[len(small_base["person"]):]
    np.testing.assert_array_equal(base_half["employment_income"],
                                  small_base["person"]["employment_income"])
    factors = taxcalc_cps.growth_factors(raw / "growfactors.csv", 2015, 2024)
    wages = clone["employment_income"].to_numpy()
    heads = clone["is_tax_unit_head"].to_numpy()
    assert (wages[~heads] == 0).all()  # the copy's tax-unit income sits on the head
    assert wages.max() <= puf["E00200"].max() * factors["AWAGE"] + 1e-6
    assert (wages[heads] > 0).mean() > 0.5  # ~80% of PUF units have wages
    assert clone["long_term_capital_gains"].gt(0).any()
    again, _ = enhance.enhance_tables(small_base, raw, seed_key="t")
    pd.testing.assert_frame_equal(again["person"], out["person"])


# --------------------------------------------------------------------------- donors
def _write_donors(folder, seed=1):
    rng = np.random.default_rng(seed)
    n = 400
    serial = [f"2022HU{i:07d}" for i in range(n)]
    ten = rng.choice([1, 2, 3], n)
    pd.DataFrame({
        "RT": "P", "SERIALNO": serial, "SPORDER": 1, "ST": rng.choice([6, 36, 48], n),
        "PWGTP": rng.integers(10, 200, n), "AGEP": rng.integers(18, 90, n),
        "SEX": rng.integers(1, 3, n), "WAGP": np.round(rng.lognormal(10, 1, n)),
        "SEMP": 0, "SSP": 0, "RETP": 0, "ADJINC": 1042311,
    }).to_csv(folder / "psam_p06.csv", index=False)
    pd.DataFrame({
        "RT": "H", "SERIALNO": serial, "ST": 6, "NP": rng.integers(1, 6, n), "TEN": ten,
        "RNTP": np.where(ten == 3, rng.integers(500, 3000, n), np.nan),
        "TAXAMT": np.where(ten < 3, rng.integers(500, 9000, n), np.nan),
        "WGTP": rng.integers(10, 200, n),
    }).to_csv(folder / "psam_h06.csv", index=False)
    rows = []
    for p in range(150):
        for month in range(1, 13):
            rows.append({"SSUID": 1000 + p, "PNUM": 101, "MONTHCODE": month,
                         "WPFINWGT": 2000.0, "TAGE": 20 + p % 60, "ESEX": 1 + p % 2,
                         "TPEARN": 3000.0 * (p % 3), "TJB1_TXAMT": 200.0 * (p % 5 == 0),
                         "TJB2_TXAMT": 0.0, "TVAL_BANK": 1000.0 * p, "TVAL_STMF": 50.0 * p,
                         "TVAL_BOND": 0.0})
    pd.DataFrame(rows).to_csv(folder / "pu2023.csv", sep="|", index=False)
    m = 300
    pd.DataFrame({
        "YY1": np.repeat(np.arange(1, m // 5 + 1), 5), "Y1": np.arange(m), "WGT": 1000.0,
        "AGE": rng.integers(20, 90, m), "HHSEX": rng.integers(1, 3, m),
        "MARRIED": rng.integers(1, 3, m), "KIDS": rng.integers(0, 4, m),
        "WAGEINC": np.round(rng.lognormal(10.5, 1, m)), "INTDIVINC": 0, "SSRETINC": 0,
        "NETWORTH": np.round(rng.normal(3e5, 2e5, m)), "VEH_INST": rng.integers(0, 30000, m),
    }).to_csv(folder / "scfp2022.csv", index=False)


def test_donor_imputation_from_acs_sipp_and_scf(raw, small_base):
    _write_donors(raw)
    out, notes = enhance.enhance_tables(small_base, raw, seed_key="t")
    assert "skipped" in notes["puf_clone"]
    for step in ("acs_donor", "sipp_donor", "scf_donor"):
        assert notes[step].startswith("ran:"), notes[step]
    assert md.structure_problems(out) == []
    person, hh = out["person"], out["household"]
    rent = person["pre_subsidy_rent"].to_numpy()
    assert rent.max() <= 3000 * 12 and (rent >= 0).all()
    assert (rent > 0).any() and (rent == 0).any()  # renters and owners both drawn
    assert person.groupby("person_household_id")["pre_subsidy_rent"].apply(
        lambda s: (s > 0).sum()).max() <= 1  # only the household head pays the rent
    assert set(["tip_income", "bank_account_assets", "stock_assets", "bond_assets"]) <= set(
        person.columns)
    assert (person.loc[person["age"] < 15, "bank_account_assets"] == 0).all()
    assert person["bank_account_assets"].max() <= 1000.0 * 149
    assert {"net_worth", "auto_loan_balance"} <= set(hh.columns)
    assert hh["auto_loan_balance"].between(0, 30000).all()


def test_donor_file_missing_column_is_named(raw, small_base):
    _write_donors(raw)
    scf = pd.read_csv(raw / "scfp2022.csv").drop(columns="NETWORTH")
    scf.to_csv(raw / "scfp2022.csv", index=False)
    with pytest.raises(CpsInputError, match=r"scfp2022\.csv.*NETWORTH"):
        enhance.enhance_tables(small_base, raw, seed_key="t")
