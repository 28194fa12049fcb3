"""Bad inputs stop at the boundary that reads them, with a message naming the file and the row or
key (issue 21, item 5): NaN growth factors, impossible CPS records, damaged or empty files, and a
bad provided file that must not replace what ``raw/`` holds.

Every fixture is written here in the real formats (Tax-Calculator's CPS / weights / growth files,
the county table, the targets ETLs' files from ``tests.targets_fixtures``); no download, and
policyengine-us is never imported (its county list is read from the installed package's data).
"""
from __future__ import annotations

import gzip
import json

import numpy as np
import pandas as pd
import pytest

from calibration_core import geography, raw_inputs, uprating
from calibration_core.areas import census_district_code, district_geoids
from calibration_core.etl import TargetsInputError
from calibration_core.microdata_parts import geography as mgeo
from calibration_core.microdata_parts import taxcalc_cps
from calibration_core.microdata_parts.taxcalc_cps import CpsInputError
from calibration_core.raw_inputs import RawInputError
from tests import targets_fixtures as tf


# --------------------------------------------------------------------------- fixture writers
def cps_frame(n: int = 3) -> pd.DataFrame:
    """``n`` single-person tax units in Tax-Calculator's CPS layout (every required column)."""
    frame = pd.DataFrame({c: np.zeros(n, dtype=np.int64) for c in taxcalc_cps.REQUIRED_COLUMNS})
    frame = frame.assign(RECID=np.arange(1, n + 1) * 10, FLPDYR=2014, h_seq=np.arange(1, n + 1),
                         ffpos=1, a_lineno=1, fips=6, MARS=1, XTOT=1, age_head=40, n21=1,
                         e00200=50000)
    return frame


def write_gz(frame: pd.DataFrame, path) -> None:
    with gzip.open(path, "wt") as fh:
        frame.to_csv(fh, index=False)


def write_cps(raw, frame: pd.DataFrame | None = None) -> None:
    """cps.csv.gz with three tax units, matching the three rows of targets_fixtures' weights."""
    write_gz(cps_frame() if frame is None else frame, raw / "cps.csv.gz")


def county_keys() -> pd.DataFrame:
    """One real county per state, named as both county readers name policyengine-us counties."""
    pe = mgeo.policyengine_county_table()
    by_rule = set(geography.county_name_to_fips())
    pe = pe[pe["key"].isin(by_rule)]
    return pe.groupby("state_fips", as_index=False).first()


def write_county_table(raw) -> None:
    counties = county_keys().set_index("state_fips")["key"]
    rows = [(census_district_code(g), counties[g // 100], 1.0) for g in district_geoids()]
    pd.DataFrame(rows, columns=["cd_geoid", "county_name", "probability"]).to_csv(
        raw / "county_cd_distributions.csv", index=False)


def write_complete_raw(raw):
    """Every required raw file in its real format (small, synthetic values)."""
    tf.write_raw_folder(raw)
    write_cps(raw)
    write_county_table(raw)
    pd.DataFrame({"code_old": ["5001800US0601"], "code_new": ["5001800US0601"],
                  "proportion": [1.0]}).to_csv(raw / "district_mapping.csv", index=False)
    pd.DataFrame({"district": ["CA-01"], "median_rent": [1500]}).to_csv(
        raw / "national_and_district_rents_2023.csv", index=False)
    (raw / "acs5_congressional_districts_2024.json").write_text(
        json.dumps([["NAME", "state", "congressional district"], ["District 1", "06", "01"]]))
    (raw / "records_variables.json").write_text(json.dumps({"read": {}, "calc": {}}))
    return raw


def snapshot(folder) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


# --------------------------------------------------------------------------- growth factors
def test_nan_growth_factor_is_refused_naming_file_series_and_year(tmp_path):
    tf.write_growth(tmp_path)
    path = tmp_path / "growfactors.csv"
    gf = pd.read_csv(path)
    gf["AWAGE"] = 1.04
    gf.loc[gf["YEAR"] == 2019, "AWAGE"] = np.nan  # empty cell in the CSV
    gf.to_csv(path, index=False)
    # today's product of factors skipped the NaN: the 2014->2024 wage factor quietly dropped 4%
    with pytest.raises(CpsInputError) as err:
        taxcalc_cps.growth_factors(path, 2014, 2024)
    message = str(err.value)
    assert str(path) in message and "AWAGE" in message and "2019" in message

    gf = pd.read_csv(path).fillna(1.04)
    gf.loc[gf["YEAR"] == 2016, "ACPIU"] = np.nan
    gf.to_csv(path, index=False)
    with pytest.raises(uprating.UpratingError) as err:
        uprating.growth_index(tmp_path)
    message = str(err.value)
    assert "growfactors.csv" in message and "ACPIU" in message and "2016" in message


def test_non_positive_and_text_growth_factors_are_refused(tmp_path):
    tf.write_growth(tmp_path)
    path = tmp_path / "growfactors.csv"
    gf = pd.read_csv(path).astype({"ATXPY": object})
    gf.loc[gf["YEAR"] == 2021, "ATXPY"] = "1.02x"
    gf.to_csv(path, index=False)
    with pytest.raises(CpsInputError, match=r"growfactors\.csv: series ATXPY for YEAR 2021 .*"
                                            r"'1.02x'"):
        taxcalc_cps.growth_factors(path, 2014, 2024)
    gf.loc[gf["YEAR"] == 2021, "ATXPY"] = -1.0
    gf.to_csv(path, index=False)
    with pytest.raises(CpsInputError, match=r"growfactors\.csv: series ATXPY for YEAR 2021"):
        taxcalc_cps.growth_factors(path, 2014, 2024)


def test_nan_cps_weight_is_refused_by_the_count_index(tmp_path):
    tf.write_growth(tmp_path)
    path = tmp_path / "cps_weights.csv.gz"
    weights = pd.read_csv(path)
    weights.loc[1, "WT2020"] = np.nan  # the sum of weights would skip it
    write_gz(weights, path)
    with pytest.raises(uprating.UpratingError) as err:
        uprating.growth_index(tmp_path)
    message = str(err.value)
    assert "cps_weights.csv.gz" in message and "WT2020" in message and "row 3" in message


# --------------------------------------------------------------------------- CPS records
def test_negative_age_is_refused_naming_file_row_and_recid(tmp_path):
    tf.write_growth(tmp_path)
    cps = cps_frame()
    cps.loc[1, "age_head"] = -4
    write_cps(tmp_path, cps)
    with pytest.raises(CpsInputError) as err:
        taxcalc_cps.read_taxcalc_cps(tmp_path / "cps.csv.gz", tmp_path / "cps_weights.csv.gz")
    message = str(err.value)
    assert str(tmp_path / "cps.csv.gz") in message
    assert "row 3" in message and "RECID 20" in message and "age_head" in message
    assert "0..120" in message


def test_unknown_state_code_is_refused_naming_file_row_and_codes(tmp_path):
    tf.write_growth(tmp_path)
    cps = cps_frame()
    cps.loc[2, "fips"] = 3  # not a state: FIPS 3 was reserved for American Samoa, never used
    write_cps(tmp_path, cps)
    with pytest.raises(CpsInputError) as err:
        taxcalc_cps.read_taxcalc_cps(tmp_path / "cps.csv.gz", tmp_path / "cps_weights.csv.gz")
    message = str(err.value)
    assert str(tmp_path / "cps.csv.gz") in message
    assert "row 4" in message and "RECID 30" in message and "'fips' is 3" in message
    assert "state FIPS code" in message and "56" in message


def test_infinite_income_and_negative_count_are_refused(tmp_path):
    tf.write_growth(tmp_path)
    cps = cps_frame().astype({"e00200": float})
    cps.loc[0, "e00200"] = np.inf
    write_cps(tmp_path, cps)
    with pytest.raises(CpsInputError, match=r"cps\.csv\.gz: row 2 \(RECID 10\): column 'e00200' "
                                            r"is inf; expected a finite number"):
        taxcalc_cps.read_taxcalc_cps(tmp_path / "cps.csv.gz", tmp_path / "cps_weights.csv.gz")
    cps = cps_frame()
    cps.loc[0, "nu18"] = -1
    write_cps(tmp_path, cps)
    with pytest.raises(CpsInputError, match=r"cps\.csv\.gz: row 2 \(RECID 10\): column 'nu18'"):
        taxcalc_cps.read_taxcalc_cps(tmp_path / "cps.csv.gz", tmp_path / "cps_weights.csv.gz")


def test_asec_negative_age_and_unknown_state_are_refused(tmp_path):
    from calibration_core.microdata_parts import asec

    pd.DataFrame({"H_SEQ": [10, 20], "GESTFIPS": [6, 48], "HSUP_WGT": [150025, 98000]}).to_csv(
        tmp_path / "hhpub24.csv", index=False)
    pd.DataFrame({"FH_SEQ": [10, 20], "FFPOS": [1, 1]}).to_csv(tmp_path / "ffpub24.csv",
                                                                index=False)
    person = pd.DataFrame({"PH_SEQ": [10, 10, 20], "A_LINENO": [1, 2, 1], "PF_SEQ": [1, 1, 1],
                           "A_AGE": [45, -1, 70], "A_SEX": [1, 2, 2], "A_SPOUSE": [0, 0, 0],
                           "MARSUPWT": [150025, 150025, 98000], "WSAL_VAL": [1, 2, 3]})
    person.to_csv(tmp_path / "pppub24.csv", index=False)
    paths = [tmp_path / f"{k}pub24.csv" for k in ("hh", "ff", "pp")]
    with pytest.raises(CpsInputError, match=r"pppub24\.csv: row 3 \(PH_SEQ 10, A_LINENO 2\): "
                                            r"column 'A_AGE' is -1"):
        asec.read_asec(*paths)
    person.loc[1, "A_AGE"] = 44
    person.to_csv(tmp_path / "pppub24.csv", index=False)
    pd.DataFrame({"H_SEQ": [10, 20], "GESTFIPS": [6, 72], "HSUP_WGT": [150025, 98000]}).to_csv(
        tmp_path / "hhpub24.csv", index=False)
    with pytest.raises(CpsInputError, match=r"hhpub24\.csv: row 3 \(H_SEQ 20\): column "
                                            r"'GESTFIPS' is 72; expected a state FIPS code"):
        asec.read_asec(*paths)


# --------------------------------------------------------------------------- damaged files
def test_truncated_cps_gz_names_the_file(tmp_path):
    tf.write_growth(tmp_path)
    write_cps(tmp_path, cps_frame(2000))
    data = (tmp_path / "cps.csv.gz").read_bytes()
    (tmp_path / "cps.csv.gz").write_bytes(data[: len(data) // 2])
    with pytest.raises(CpsInputError) as err:  # today: a bare EOFError
        taxcalc_cps.read_taxcalc_cps(tmp_path / "cps.csv.gz", tmp_path / "cps_weights.csv.gz")
    message = str(err.value)
    assert str(tmp_path / "cps.csv.gz") in message and "truncated" in message
    assert "Tax-Calculator's CPS file" in message
    assert isinstance(err.value.__cause__, EOFError)


def test_empty_county_table_names_the_file(tmp_path):
    path = tmp_path / "county_cd_distributions.csv"
    path.write_bytes(b"")
    for reader, error in ((mgeo.county_shares, mgeo.GeographyError),
                          (geography.load_county_table, geography.GeographyError)):
        with pytest.raises(error) as err:  # today: a bare EmptyDataError
            reader(path)
        message = str(err.value)
        assert str(path) in message and "empty" in message and "cd_geoid" in message
    path.write_text("cd_geoid,county_name,probability\n")  # a header and no rows
    with pytest.raises(ValueError, match=r"county_cd_distributions\.csv: has no data rows"):
        mgeo.county_shares(path)


def test_county_table_nan_probability_and_unknown_district_name_the_row(tmp_path):
    path = tmp_path / "county_cd_distributions.csv"
    write_county_table(tmp_path)
    table = pd.read_csv(path)
    good = table.copy()
    table.loc[4, "probability"] = np.nan
    table.to_csv(path, index=False)
    with pytest.raises(mgeo.GeographyError, match=r"county_cd_distributions\.csv: row 6 .*"
                                                  r"probability empty or NaN"):
        mgeo.county_shares(path)
    with pytest.raises(geography.GeographyError, match=r"county_cd_distributions\.csv row 6: "
                                                       r"probability empty or NaN"):
        geography.load_county_table(path)
    good.loc[0, "cd_geoid"] = 199  # Alabama has 7 districts
    good.to_csv(path, index=False)
    with pytest.raises(geography.GeographyError, match=r"row 2: cd_geoid 199 is not one of the "
                                                       r"436 districts"):
        geography.load_county_table(path)


def test_empty_and_truncated_etl_files_name_the_file(tmp_path):
    from calibration_core.etl import irs_eitc, irs_soi

    tf.write_raw_folder(tmp_path)
    (tmp_path / "eitc_state.csv").write_bytes(b"")
    with pytest.raises(TargetsInputError, match=r"eitc_state\.csv: cannot be read: the file is "
                                                r"empty.*expected IRS SOI EITC"):
        irs_eitc.extract(tmp_path)
    frame = tf.soi_targets_frame()
    frame.loc[3, "Value"] = np.nan  # a fine band: the band sum would skip it
    frame.to_csv(tmp_path / "soi_targets.csv", index=False)
    with pytest.raises(TargetsInputError, match=r"soi_targets\.csv: key 'row 5 \(Year 2021, "
                                                r"Table 1\.1, count\)', column Value: value "
                                                r"empty or NaN is not a finite number"):
        irs_soi.read_national_file(tmp_path / "soi_targets.csv", years=(2021, 2022))


def test_soi_state_file_refuses_infinite_values_and_unknown_flags(tmp_path):
    from calibration_core.etl import irs_soi

    frame = tf.agi_state_frame().astype({"VALUE": float})
    frame.loc[5, "VALUE"] = np.inf
    frame.to_csv(tmp_path / "agi_state.csv", index=False)
    with pytest.raises(TargetsInputError, match=r"agi_state\.csv: key '0400000US01 .* column "
                                                r"VALUE: value inf is not a finite number"):
        irs_soi.read_state_file(tmp_path / "agi_state.csv")
    frame = tf.agi_state_frame()
    frame.loc[2, "IS_COUNT"] = 2
    frame.to_csv(tmp_path / "agi_state.csv", index=False)
    with pytest.raises(TargetsInputError, match=r"agi_state\.csv: 0400000US01 .*IS_COUNT is 2"):
        irs_soi.read_state_file(tmp_path / "agi_state.csv")


def test_medicaid_text_enrollment_names_state_and_month(tmp_path):
    from calibration_core.etl import cms_medicaid

    tf.write_raw_folder(tmp_path)
    path = tmp_path / "medicaid_enrollment_2024.csv"
    frame = pd.read_csv(path).astype({"Total Medicaid Enrollment": object})
    row = frame.index[(frame["State Abbreviation"] == "OH") & (frame["Final Report"] == "Y")
                      & (frame["Reporting Period"] == 202412)][0]
    frame.loc[row, "Total Medicaid Enrollment"] = "see note"
    frame.to_csv(path, index=False)
    with pytest.raises(TargetsInputError, match=r"medicaid_enrollment_2024\.csv: state 'OH', "
                                                r"Reporting Period 202412: .*'see note'"):
        cms_medicaid.extract(tmp_path)


# --------------------------------------------------------------------------- raw/ stays intact
def test_good_directory_is_validated_and_installed(tmp_path):
    src = write_complete_raw(tmp_path / "user")
    manifest = raw_inputs.collect_from_directory(src, tmp_path / "raw")
    assert set(manifest["files"]) >= {r.name for r in raw_inputs.RAW_FILES if r.required}
    assert snapshot(tmp_path / "raw")["cps.csv.gz"] == (src / "cps.csv.gz").read_bytes()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".raw.staging")]


@pytest.mark.parametrize("damage", ["truncated_cps", "negative_age", "nan_growth",
                                    "empty_county_table"])
def test_bad_provided_file_leaves_raw_and_manifest_byte_identical(tmp_path, damage):
    src = write_complete_raw(tmp_path / "user")
    raw = tmp_path / "raw"
    raw_inputs.collect_from_directory(src, raw)
    before = snapshot(raw)
    assert "manifest.json" in before

    if damage == "truncated_cps":
        bad = "cps.csv.gz"
        write_cps(src, cps_frame(3).assign(e00200=123))  # changed content, then cut short
        data = (src / bad).read_bytes()
        (src / bad).write_bytes(data[: len(data) - 12])
        expected = "truncated"
    elif damage == "negative_age":
        bad = "cps.csv.gz"
        write_cps(src, cps_frame().assign(age_head=[40, -2, 50]))
        expected = "row 3 (RECID 20): column 'age_head' is -2"
    elif damage == "nan_growth":
        bad = "growfactors.csv"
        gf = pd.read_csv(src / bad)
        gf.loc[gf["YEAR"] == 2018, "AWAGE"] = np.nan
        gf.to_csv(src / bad, index=False)
        expected = "series AWAGE for YEAR 2018"
    else:
        bad = "county_cd_distributions.csv"
        (src / bad).write_bytes(b"")
        expected = "empty"

    with pytest.raises(RawInputError) as err:
        raw_inputs.collect_from_directory(src, raw)
    message = str(err.value)
    assert f"raw input {bad} (directory:{src / bad})" in message
    assert expected in message and "left unchanged" in message
    assert snapshot(raw) == before  # every file and the manifest, byte for byte
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".raw.staging")]


def test_raw_public_inputs_asset_refuses_a_bad_provided_file(tmp_path):
    """The asset itself: a failed materialization leaves raw/ and its manifest as they were."""
    import dagster as dg

    from assets.raw_inputs import raw_public_inputs
    from resources.raw_inputs import DirectoryProvider
    from resources.store import ArtifactStore

    src = write_complete_raw(tmp_path / "user")
    store = ArtifactStore(root=str(tmp_path / "home"))

    def materialize():
        return dg.materialize([raw_public_inputs], instance=dg.DagsterInstance.ephemeral(),
                              resources={"store": store,
                                         "raw_inputs": DirectoryProvider(path=str(src))},
                              raise_on_error=False)

    assert materialize().success
    before = snapshot(store.raw_dir)
    cps = cps_frame()
    cps.loc[0, "fips"] = 99
    write_cps(src, cps)
    result = materialize()
    assert not result.success
    messages = []
    for event in result.all_events:
        if event.is_step_failure:
            error = event.event_specific_data.error
            while error is not None:
                messages.append(error.message)
                error = error.cause
    text = "\n".join(messages)
    assert "cps.csv.gz" in text and "RECID 10" in text and "'fips' is 99" in text
    assert snapshot(store.raw_dir) == before
