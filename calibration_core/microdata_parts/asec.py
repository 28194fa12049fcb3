"""Census CPS ASEC public-use CSVs (``hhpubYY.csv``, ``ffpubYY.csv``, ``pppubYY.csv``) -> entity tables.

Column names are Census's (ASEC public-use data dictionary): household H_SEQ, GESTFIPS, GTCO,
HSUP_WGT; family FH_SEQ, FFPOS; person PH_SEQ, A_LINENO, PF_SEQ, A_AGE, A_SEX, A_SPOUSE, MARSUPWT,
TAX_ID, SPM_ID and the income recodes (WSAL_VAL, SEMP_VAL, ...). Weights carry two implied
decimals. Entities: household = H_SEQ; family = (H_SEQ, PF_SEQ); tax unit = (H_SEQ, TAX_ID) when the
file has TAX_ID (ASEC 2019+), else the family; SPM unit = (H_SEQ, SPM_ID) when present, else the
family; marital unit = a person and the spouse named by A_SPOUSE, everyone else alone. Households
without persons (non-interviews) are dropped. A county comes from GTCO when Census identifies it.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd

from .taxcalc_cps import MAX_AGE, STATE_CODES, CpsInputError, _dense_ids, _row_label, check_values

HOUSEHOLD_COLUMNS = ("H_SEQ", "GESTFIPS", "HSUP_WGT")
FAMILY_COLUMNS = ("FH_SEQ", "FFPOS")
PERSON_COLUMNS = ("PH_SEQ", "A_LINENO", "PF_SEQ", "A_AGE", "A_SEX", "A_SPOUSE", "MARSUPWT",
                  "WSAL_VAL")

# (policyengine-us variable, entity, ASEC column, growth factor); optional columns are skipped
# when the file lacks them. "X==1" is a flag.
ASEC_VARIABLE_MAP: tuple[tuple[str, str, str, str], ...] = (
    ("employment_income", "person", "WSAL_VAL", "AWAGE"),
    ("self_employment_income", "person", "SEMP_VAL", "ASCHCI/ASCHCL"),
    ("farm_income", "person", "FRSE_VAL", "ASCHF"),
    ("taxable_interest_income", "person", "INT_VAL", "AINTS"),
    ("qualified_dividend_income", "person", "DIV_VAL", "ADIVS"),
    ("rental_income", "person", "RNT_VAL", "ASCHEI/ASCHEL"),
    ("social_security_retirement", "person", "SS_VAL (age >= 62)", "ASOCSEC"),
    ("social_security_disability", "person", "SS_VAL (age < 62)", "ASOCSEC"),
    ("ssi_reported", "person", "SSI_VAL", "ABENSSI"),
    ("unemployment_compensation", "person", "UC_VAL", "AUCOMP"),
    ("veterans_benefits", "person", "VET_VAL", "ABENVET"),
    ("child_support_received", "person", "CSP_VAL", "ATXPY"),
    ("takes_up_medicaid_if_eligible", "person", "MCAID==1", "-"),
    ("takes_up_snap_if_eligible", "spm_unit", "SPM_SNAPSUB>0", "-"),
)


def _read(path: Path, required, kind: str) -> pd.DataFrame:
    from ..raw_inputs import read_csv_file

    df = read_csv_file(path, f"a Census ASEC {kind} public-use CSV with columns "
                       f"{', '.join(required)}", CpsInputError)
    df.columns = [c.strip().upper() for c in df.columns]
    missing = [c for c in required if c not in df.columns]
    if missing:
        raise CpsInputError(f"{path}: missing {kind} column(s) {missing}")
    keys = df[[c for c in ("H_SEQ", "FH_SEQ", "PH_SEQ", "A_LINENO") if c in df.columns]]
    for col in df.columns:
        if col in required or any(col == m[2].split(" ")[0].split("==")[0].split(">")[0]
                                  for m in ASEC_VARIABLE_MAP) or col in ("TAX_ID", "SPM_ID",
                                                                        "GTCO"):
            if not pd.api.types.is_numeric_dtype(df[col]):
                bad = pd.to_numeric(df[col], errors="coerce").isna().to_numpy()
                row = int(np.flatnonzero(bad)[0]) if bad.any() else 0
                raise CpsInputError(f"{path}: column {col!r} must be numeric; "
                                    f"{_row_label(row, keys)} holds {df[col].iloc[row]!r}")
            values = df[col].to_numpy(dtype=float)
            check_values(path, col, values, np.isfinite(values), "a finite number", keys)
    return df


def _validate_codes(hh: pd.DataFrame, pp: pd.DataFrame, hh_path, pp_path) -> None:
    """State codes, ages, sex codes and weights of the ASEC records (file, row, key named)."""
    hkeys, pkeys = hh[["H_SEQ"]], pp[["PH_SEQ", "A_LINENO"]]
    state = hh["GESTFIPS"].to_numpy()
    check_values(hh_path, "GESTFIPS", state, np.isin(state, STATE_CODES),
                 f"a state FIPS code of the 50 states or DC ({', '.join(map(str, STATE_CODES))})",
                 hkeys)
    weight = hh["HSUP_WGT"].to_numpy(dtype=float)
    check_values(hh_path, "HSUP_WGT", weight, weight >= 0, "a weight >= 0", hkeys)
    age = pp["A_AGE"].to_numpy(dtype=float)
    check_values(pp_path, "A_AGE", age, (age >= 0) & (age <= MAX_AGE),
                 f"an age in 0..{MAX_AGE}", pkeys)
    sex = pp["A_SEX"].to_numpy()
    check_values(pp_path, "A_SEX", sex, np.isin(sex, (1, 2)), "1 (male) or 2 (female)", pkeys)
    weight = pp["MARSUPWT"].to_numpy(dtype=float)
    check_values(pp_path, "MARSUPWT", weight, weight >= 0, "a weight >= 0", pkeys)


def read_asec(hh_path: str | os.PathLike, ff_path: str | os.PathLike,
              pp_path: str | os.PathLike) -> dict[str, pd.DataFrame]:
    """Read and validate the three ASEC CSVs; returns {"household", "family", "person"} with
    upper-case Census column names. Every person must belong to a listed household and family;
    state codes, ages, sex codes and weights must be valid (errors name file, row and key)."""
    hh = _read(Path(hh_path), HOUSEHOLD_COLUMNS, "household")
    ff = _read(Path(ff_path), FAMILY_COLUMNS, "family")
    pp = _read(Path(pp_path), PERSON_COLUMNS, "person")
    if not np.isin(pp["PH_SEQ"], hh["H_SEQ"]).all():
        raise CpsInputError(f"{pp_path}: column 'PH_SEQ' names households absent from {hh_path}")
    fam_key = pp["PH_SEQ"].astype(np.int64) * 100 + pp["PF_SEQ"].astype(np.int64)
    ff_key = ff["FH_SEQ"].astype(np.int64) * 100 + ff["FFPOS"].astype(np.int64)
    if not np.isin(fam_key, ff_key).all():
        raise CpsInputError(f"{pp_path}: column 'PF_SEQ' names families absent from {ff_path}")
    _validate_codes(hh, pp, hh_path, pp_path)
    return {"household": hh, "family": ff, "person": pp}


def _value(pp: pd.DataFrame, column: str, factor: str, factors) -> np.ndarray | None:
    if "==" in column:
        name, val = column.split("==")
        return (pp[name].to_numpy() == int(val)) if name in pp.columns else None
    if column.endswith(">0"):
        name = column[:-2]
        return (pp[name].to_numpy() > 0) if name in pp.columns else None
    name = column.split(" ")[0]
    if name not in pp.columns:
        return None
    v = pp[name].to_numpy(dtype=float)
    if "age >= 62" in column:
        v = np.where(pp["A_AGE"].to_numpy() >= 62, v, 0.0)
    elif "age < 62" in column:
        v = np.where(pp["A_AGE"].to_numpy() < 62, v, 0.0)
    if factors is None or factor == "-":
        return v
    if "/" in factor:
        pos, neg = factor.split("/")
        return np.where(v >= 0, v * factors[pos], v * factors[neg])
    return v * factors[factor]


def build_tables(asec: dict[str, pd.DataFrame], factors: pd.Series | None
                 ) -> dict[str, pd.DataFrame]:
    """ASEC tables (from :func:`read_asec`) -> the six policyengine-us entity tables.

    ``factors``: cumulative growth factors from the income year to the target year (None: none).
    The household table holds household_id (= H_SEQ), state_fips, household_weight (HSUP_WGT/100)
    and, where GTCO identifies the county, ``_gtco_county_fips`` (dropped by the caller after
    county assignment). Vectorised over persons.
    """
    pp = asec["person"].sort_values(["PH_SEQ", "A_LINENO"]).reset_index(drop=True)
    hh = asec["household"]
    hh = hh[hh["H_SEQ"].isin(pp["PH_SEQ"])].sort_values("H_SEQ").reset_index(drop=True)
    h_seq = pp["PH_SEQ"].to_numpy(np.int64)
    line = pp["A_LINENO"].to_numpy(np.int64)
    family = _dense_ids(h_seq, pp["PF_SEQ"].to_numpy())
    tax = _dense_ids(h_seq, pp["TAX_ID"].to_numpy()) if "TAX_ID" in pp.columns else family
    spm = _dense_ids(h_seq, pp["SPM_ID"].to_numpy()) if "SPM_ID" in pp.columns else family
    spouse = pp["A_SPOUSE"].to_numpy(np.int64)
    marital = _dense_ids(h_seq, np.where(spouse > 0, np.minimum(line, spouse), line))
    person = pd.DataFrame({
        "person_id": h_seq * 100 + line,
        "person_household_id": h_seq,
        "person_tax_unit_id": tax,
        "person_spm_unit_id": spm,
        "person_family_id": family,
        "person_marital_unit_id": marital,
        "age": pp["A_AGE"].to_numpy(dtype=float),
        "is_male": pp["A_SEX"].to_numpy() == 1,
    })
    spm_table = pd.DataFrame({"spm_unit_id": np.unique(spm)})
    for variable, entity, column, factor in ASEC_VARIABLE_MAP:
        value = _value(pp, column, factor, factors)
        if value is None:
            continue
        if entity == "person":
            person[variable] = person[variable].to_numpy() + value if variable in person else value
        else:
            agg = pd.Series(value).groupby(spm)
            spm_table[variable] = (agg.any() if value.dtype == bool else agg.sum()).loc[
                spm_table["spm_unit_id"]].to_numpy()
    household = pd.DataFrame({
        "household_id": hh["H_SEQ"].to_numpy(np.int64),
        "state_fips": hh["GESTFIPS"].to_numpy().astype(np.int32),
        "household_weight": hh["HSUP_WGT"].to_numpy(dtype=float) / 100.0,
    })
    if "GTCO" in hh.columns:
        gtco = hh["GTCO"].to_numpy(np.int64)
        code = pd.Series(household["state_fips"].to_numpy(np.int64) * 1000 + gtco)
        household["_gtco_county_fips"] = np.where(gtco > 0, code.astype(str).str.zfill(5), "")
    return {
        "person": person,
        "household": household,
        "tax_unit": pd.DataFrame({"tax_unit_id": np.unique(tax)}),
        "spm_unit": spm_table,
        "family": pd.DataFrame({"family_id": np.unique(family)}),
        "marital_unit": pd.DataFrame({"marital_unit_id": np.unique(marital)}),
    }
