"""Tax-Calculator's CPS file (280k CPS ASEC tax units, 2012-14) -> PolicyEngine-US entity tables.

The file (PSLmodels/taxdata, taxcalc 6.8.0 ``cps.csv.gz``) has one row per tax unit and no person
records. Persons are rebuilt from the head, the spouse (MARS == 2) and the dependant counts:
the published age bands are <6 (``nu06``), 6-12 (``nu13 - nu06``), 13-17 (``nu18 - nu13``), 18-20
(``n1820``) and 21+ (``n21``); these counts include the head and spouse, whose own bands are
removed first. Dependants' ages are drawn uniformly inside their band with
``keyed_uniform("cps_age", RECID, slot)``; ``elderly_dependents`` of the 21+ dependants are 65-85.
Sex is not in the file: ``keyed_uniform("cps_sex", RECID, slot) < 0.5`` is male, and a spouse is of
the opposite sex to the head.

Entities: household = (FLPDYR, h_seq) (all its tax units share one state); tax unit = RECID;
family = (household, ffpos); SPM unit = family (the file has no SPM unit id); marital unit = head
and spouse of a joint unit, every other person alone.

Tax-Calculator treats the file as 2014 data (``Records.CPSCSV_YEAR``); incomes are uprated to the
target year with the products of the file's growth factors exactly as ``Records._extrapolate``
does, and the weight is ``WT<year>`` of cps_weights.csv.gz divided by 100.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd

from ..areas import STATE_ABBR
from ..io_utils import keyed_uniform

CPS_DATA_YEAR = 2014  # taxcalc Records.CPSCSV_YEAR

# --- THE mapping table: CPS file column(s) -> policyengine-us input variable ------------------
# (policyengine-us variable, entity, CPS expression, person it goes to, growth factor)
#   person: "head" | "spouse" | "unit" (summed over the SPM unit) | "all" (every unit member)
#   An expression "a-b" is column a minus column b. Flags ("a>0") are booleans.
VARIABLE_MAP: tuple[tuple[str, str, str, str, str], ...] = (
    ("employment_income", "person", "e00200p", "head", "AWAGE"),
    ("employment_income", "person", "e00200s", "spouse", "AWAGE"),
    ("self_employment_income", "person", "e00900p", "head", "ASCHCI/ASCHCL"),
    ("self_employment_income", "person", "e00900s", "spouse", "ASCHCI/ASCHCL"),
    ("farm_income", "person", "e02100p", "head", "ASCHF"),
    ("farm_income", "person", "e02100s", "spouse", "ASCHF"),
    ("taxable_interest_income", "person", "e00300", "head", "AINTS"),
    ("tax_exempt_interest_income", "person", "e00400", "head", "AINTS"),
    ("qualified_dividend_income", "person", "e00650", "head", "ADIVS"),
    ("non_qualified_dividend_income", "person", "e00600-e00650", "head", "ADIVS"),
    ("alimony_income", "person", "e00800", "head", "ATXPY"),
    ("non_sch_d_capital_gains", "person", "e01100", "head", "ACGNS"),
    ("taxable_ira_distributions", "person", "e01400", "head", "ATXPY"),
    ("taxable_private_pension_income", "person", "e01700", "head", "ATXPY"),
    ("tax_exempt_private_pension_income", "person", "e01500-e01700", "head", "ATXPY"),
    ("unemployment_compensation", "person", "e02300", "head", "AUCOMP"),
    # Social Security goes to the head: retirement at 62+, disability below (the reference's
    # fallback rule); policyengine-us sums the components into social_security.
    ("social_security_retirement", "person", "e02400", "head (age >= 62)", "ASOCSEC"),
    ("social_security_disability", "person", "e02400", "head (age < 62)", "ASOCSEC"),
    ("traditional_ira_contributions_desired", "person", "e03150", "head", "ATXPY"),
    ("student_loan_interest", "person", "e03210", "head", "ATXPY"),
    ("health_insurance_premiums", "person", "e03270", "head", "ACPIM"),
    ("self_employed_pension_contributions_desired", "person", "e03300", "head", "ATXPY"),
    ("traditional_401k_contributions_desired", "person", "pencon_p", "head", "AWAGE"),
    ("traditional_401k_contributions_desired", "person", "pencon_s", "spouse", "AWAGE"),
    ("other_medical_expenses", "person", "e17500", "head", "ACPIM"),
    ("real_estate_taxes", "person", "e18500", "head", "ATXPY"),
    ("home_mortgage_interest", "person", "e19200", "head", "AIPD"),
    ("charitable_cash_donations", "person", "e19800", "head", "ATXPY"),
    ("charitable_non_cash_donations", "person", "e20100", "head", "ATXPY"),
    ("ssi_reported", "person", "ssi_ben", "head", "ABENSSI"),
    ("veterans_benefits", "person", "vet_ben", "head", "ABENVET"),
    ("is_blind", "person", "blind_head>0", "head", "-"),
    ("is_blind", "person", "blind_spouse>0", "spouse", "-"),
    ("takes_up_medicaid_if_eligible", "person", "mcaid_ben>0", "all", "-"),
    ("spm_unit_pre_subsidy_childcare_expenses", "spm_unit", "e32800", "unit", "ATXPY"),
    ("takes_up_snap_if_eligible", "spm_unit", "snap_ben>0", "unit", "-"),
)
# Not mapped: e18400 (state/local income or sales tax: a policyengine-us formula), e20400
# (miscellaneous deductions, suspended 2018-25), e03240 (repealed DPAD), mcare_ben, tanf_ben,
# wic_ben, housing_ben, other_ben (benefit values policyengine-us computes), agi_bin, EIC, f2441,
# n24 (policyengine-us recomputes credits from persons).

AGE_BANDS = {  # category -> (low, high) inclusive, dependants only
    "u6": (0, 5), "6_12": (6, 12), "13_17": (13, 17), "18_20": (18, 20), "21_64": (21, 64),
    "65p": (65, 85),
}

REQUIRED_COLUMNS: tuple[str, ...] = tuple(sorted({
    "RECID", "FLPDYR", "h_seq", "ffpos", "a_lineno", "fips", "MARS", "XTOT", "age_head",
    "age_spouse", "nu06", "nu13", "nu18", "n1820", "n21", "elderly_dependents", "e00200",
    "e00900", "e02100",
} | {c for _, _, expr, _, _ in VARIABLE_MAP
     for c in expr.replace(">0", "").split("-")}))


class CpsInputError(ValueError):
    """The CPS source file is missing a column or holds a value of the wrong kind."""


STATE_CODES: tuple[int, ...] = tuple(sorted(STATE_ABBR))  # the 50 states and DC
MAX_AGE = 120
# column -> (lowest, highest) allowed value, inclusive; a record outside is refused
RECORD_RANGES: dict[str, tuple[float, float]] = {
    "age_head": (0, MAX_AGE), "age_spouse": (0, MAX_AGE), "MARS": (1, 5),
    **{c: (0, np.inf) for c in ("XTOT", "nu06", "nu13", "nu18", "n1820", "n21",
                                "elderly_dependents", "h_seq", "ffpos", "a_lineno")},
}
INT_COLUMNS = ("RECID", "FLPDYR", "h_seq", "ffpos", "a_lineno", "fips", "MARS", "XTOT",
               "nu06", "nu13", "nu18", "n1820", "n21", "elderly_dependents")


def _plain(value):
    """A numpy scalar as the Python number it holds (whole floats as ints), for messages."""
    if hasattr(value, "item"):
        value = value.item()
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return value


def _row_label(row: int, keys: pd.DataFrame | None) -> str:
    """``row N`` (1-based, header = row 1) plus the record's id columns when known."""
    label = f"row {row + 2}"
    if keys is not None and len(keys.columns):
        label += " (" + ", ".join(f"{c} {_plain(keys[c].iloc[row])}" for c in keys.columns) + ")"
    return label


def check_values(path, column: str, values: np.ndarray, ok: np.ndarray, expected: str,
                 keys: pd.DataFrame | None = None, error=None) -> None:
    """Raise naming the file, the first offending row (and its record id) and what was expected
    unless every ``ok`` is true. ``values`` are the column's values, used in the message."""
    if ok.all():
        return
    row = int(np.flatnonzero(~ok)[0])
    value = _plain(values[row])
    raise (error or CpsInputError)(
        f"{path}: {_row_label(row, keys)}: column {column!r} is {value!r}; expected {expected} "
        f"({int((~ok).sum())} row(s) affected)")


def _numeric(df: pd.DataFrame, columns, path, keys: pd.DataFrame | None = None) -> pd.DataFrame:
    """The named columns as numbers; a column pandas did not parse as numeric, an empty cell or
    an infinite value is an error that names the file, the column, the first offending row
    (1-based, header = row 1), the record id when ``keys`` holds it, and the value."""
    out = {}
    for col in columns:
        values = df[col]
        if not (pd.api.types.is_numeric_dtype(values) or pd.api.types.is_bool_dtype(values)):
            coerced = pd.to_numeric(values, errors="coerce")
            bad = np.flatnonzero(coerced.isna().to_numpy())
            row = int(bad[0]) if len(bad) else 0
            raise CpsInputError(
                f"{path}: column {col!r} must be numeric; {_row_label(row, keys)} holds "
                f"{values.iloc[row]!r}")
        if values.isna().any():
            row = int(np.flatnonzero(values.isna().to_numpy())[0])
            raise CpsInputError(f"{path}: column {col!r} has an empty value in "
                                f"{_row_label(row, keys)}; expected a number")
        arr = values.to_numpy()
        if not pd.api.types.is_bool_dtype(values):
            check_values(path, col, arr, np.isfinite(arr.astype(float)), "a finite number",
                         keys)
        out[col] = arr
    return pd.DataFrame(out)


def validate_records(records: pd.DataFrame, path) -> None:
    """Codes and ranges of the tax-unit records: state ``fips`` one of the 51 codes, ages in
    0..120, ``MARS`` 1..5, person counts >= 0, id and count columns whole numbers. Raises
    :class:`CpsInputError` naming the file, the row, the RECID and what was expected."""
    keys = records[["RECID"]]
    for col in INT_COLUMNS:
        v = records[col].to_numpy(dtype=float)
        check_values(path, col, v, v == np.round(v), "a whole number", keys)
    fips = records["fips"].to_numpy()
    check_values(path, "fips", fips, np.isin(fips, STATE_CODES),
                 f"a state FIPS code of the 50 states or DC ({', '.join(map(str, STATE_CODES))})",
                 keys)
    for col, (lo, hi) in RECORD_RANGES.items():
        v = records[col].to_numpy(dtype=float)
        what = f"a value in {lo}..{hi}" if np.isfinite(hi) else f"a value >= {lo}"
        check_values(path, col, v, (v >= lo) & (v <= hi), what, keys)


def read_taxcalc_cps(cps_path: str | os.PathLike, weights_path: str | os.PathLike,
                     year: int = 2024) -> pd.DataFrame:
    """Read and validate the CPS file and its weights; return one row per tax unit.

    Returns the columns in :data:`REQUIRED_COLUMNS` (numeric) plus ``weight`` = WT<year> / 100
    (n_units rows, file order). Raises :class:`CpsInputError` naming the file, and the column and
    row (with its RECID) where there is one, when a file cannot be read (truncated, empty), a
    column is missing or non-numeric, a value is empty or infinite, a code or range is violated
    (:func:`validate_records`), a weight is negative, or the two files differ in length.
    """
    from ..raw_inputs import read_csv_file

    cps_path, weights_path = Path(cps_path), Path(weights_path)
    raw = read_csv_file(cps_path, "Tax-Calculator's CPS file: one row per tax unit with "
                        "RECID, fips, MARS, ages, counts and income columns", CpsInputError,
                        keep_default_na=False, na_values=[""])
    missing = [c for c in REQUIRED_COLUMNS if c not in raw.columns]
    if missing:
        raise CpsInputError(f"{cps_path}: missing column(s) {missing}")
    keys = raw[["RECID"]] if "RECID" in raw.columns else None
    records = _numeric(raw, REQUIRED_COLUMNS, cps_path, keys)
    validate_records(records, cps_path)
    wcol = f"WT{year}"
    wraw = read_csv_file(weights_path, f"taxdata CPS weights with a {wcol} column, one row "
                         "per tax unit", CpsInputError, allow_empty=True,
                         usecols=lambda c: c == wcol, keep_default_na=False, na_values=[""])
    if wcol not in wraw.columns:
        raise CpsInputError(f"{weights_path}: missing column {wcol!r} (weights for {year})")
    weight = _numeric(wraw, [wcol], weights_path)[wcol].to_numpy(dtype=float)
    if len(weight) != len(records):
        raise CpsInputError(f"{weights_path}: {len(weight)} rows, but {cps_path} has "
                            f"{len(records)} tax units")
    check_values(weights_path, wcol, weight, weight >= 0, "a weight >= 0",
                 records[["RECID"]])
    if not records["RECID"].is_unique:
        dup = int(np.flatnonzero(records["RECID"].duplicated().to_numpy())[0])
        raise CpsInputError(f"{cps_path}: row {dup + 2}: column 'RECID' repeats "
                            f"{int(records['RECID'].iloc[dup])}; expected unique ids")
    records[list(INT_COLUMNS)] = records[list(INT_COLUMNS)].astype(np.int64)
    records["weight"] = weight / 100.0
    return records


def growth_factors(growfactors_path: str | os.PathLike, from_year: int, to_year: int) -> pd.Series:
    """Cumulative growth factor per column (AWAGE, ATXPY, ...): product of rows from_year+1..to_year.

    Matches Tax-Calculator, which applies row ``Y`` when it moves data from Y-1 to Y. The file is
    validated by :func:`calibration_core.uprating.read_growfactors` (a NaN, empty, infinite or
    non-positive factor raises naming the file, the series and the year).
    """
    from ..uprating import read_growfactors

    gf = read_growfactors(growfactors_path, CpsInputError)
    rows = gf[(gf["YEAR"] > from_year) & (gf["YEAR"] <= to_year)]
    if len(rows) != to_year - from_year:
        raise CpsInputError(f"{growfactors_path}: needs rows YEAR {from_year + 1}..{to_year}")
    return rows.drop(columns="YEAR").prod(axis=0)


def _expr(records: pd.DataFrame, expr: str, factors: pd.Series | None, factor: str) -> np.ndarray:
    if expr.endswith(">0"):
        return records[expr[:-2]].to_numpy() > 0
    parts = expr.split("-")
    value = records[parts[0]].to_numpy(dtype=float).copy()
    for p in parts[1:]:
        value -= records[p].to_numpy(dtype=float)
    if factors is None or factor == "-":
        return value
    if factor == "ASCHCI/ASCHCL":
        return np.where(value >= 0, value * factors["ASCHCI"], value * factors["ASCHCL"])
    return value * factors[factor]


def _dense_ids(*keys: np.ndarray) -> np.ndarray:
    """1-based ids of the distinct key tuples, numbered in sorted key order."""
    frame = pd.DataFrame({f"k{i}": k for i, k in enumerate(keys)})
    return frame.groupby(list(frame.columns), sort=True).ngroup().to_numpy(np.int64) + 1


def build_tables(records: pd.DataFrame, factors: pd.Series | None) -> dict[str, pd.DataFrame]:
    """Tax-unit records (from :func:`read_taxcalc_cps`) -> the six policyengine-us entity tables.

    ``factors``: cumulative growth factors (:func:`growth_factors`) applied to money columns; None
    leaves them in 2014 dollars. Persons are built vectorised: a (n_units, 8) count matrix of
    person categories (head, spouse, dependants by band) is expanded with ``np.repeat``.
    Returns household (household_id, state_fips, household_weight), person (ids, memberships,
    roles, age, is_male, mapped variables), tax_unit, spm_unit, family, marital_unit.
    """
    r = records.reset_index(drop=True)
    n = len(r)
    recid = r["RECID"].to_numpy(np.int64)
    joint = r["MARS"].to_numpy() == 2
    age_head = r["age_head"].to_numpy(dtype=float)
    age_spouse = np.where(joint & (r["age_spouse"].to_numpy() <= 0), age_head,
                          r["age_spouse"].to_numpy(dtype=float))

    # band counts (include head and spouse), then remove the head's and spouse's own bands
    bands = np.stack([r["nu06"], r["nu13"] - r["nu06"], r["nu18"] - r["nu13"], r["n1820"],
                      r["n21"]], axis=1).astype(np.int64).clip(min=0)

    def band_of(age):
        return np.searchsorted([6, 13, 18, 21], age, side="right")

    rows = np.arange(n)
    hb = band_of(age_head)
    bands[rows, hb] = np.maximum(bands[rows, hb] - 1, 0)
    sb = band_of(age_spouse)
    bands[rows, sb] = np.maximum(bands[rows, sb] - joint.astype(np.int64), 0)
    n65 = np.minimum(r["elderly_dependents"].to_numpy(), bands[:, 4])
    counts = np.column_stack([np.ones(n, np.int64), joint.astype(np.int64), bands[:, :4],
                              bands[:, 4] - n65, n65])  # (n, 8)

    per_unit = counts.sum(axis=1)
    flat = np.repeat(np.arange(n * 8), counts.ravel())
    unit, cat = flat // 8, flat % 8
    first = np.concatenate([[0], np.cumsum(per_unit)[:-1]])
    slot = np.arange(len(unit)) - first[unit]
    u_age = keyed_uniform("cps_age", recid[unit], slot)
    lows = np.array([0, 0, 0, 6, 13, 18, 21, 65])
    highs = np.array([0, 0, 5, 12, 17, 20, 64, 85])
    age = lows[cat] + np.floor(u_age * (highs[cat] - lows[cat] + 1))
    age = np.where(cat == 0, age_head[unit], np.where(cat == 1, age_spouse[unit], age))
    male_draw = keyed_uniform("cps_sex", recid[unit], slot) < 0.5
    head_male = male_draw[first]
    is_male = np.where(cat == 1, ~head_male[unit], male_draw)

    # entities
    household_id_u = _dense_ids(r["FLPDYR"].to_numpy(), r["h_seq"].to_numpy())
    family_id_u = _dense_ids(household_id_u, r["ffpos"].to_numpy())
    person_id = np.arange(1, len(unit) + 1, dtype=np.int64)
    marital_key = np.where(cat == 1, first[unit], np.arange(len(unit)))
    marital_id = _dense_ids(marital_key)

    person = pd.DataFrame({
        "person_id": person_id,
        "person_household_id": household_id_u[unit],
        "person_tax_unit_id": recid[unit],
        "person_spm_unit_id": family_id_u[unit],
        "person_family_id": family_id_u[unit],
        "person_marital_unit_id": marital_id,
        "age": age.astype(float),
        "is_male": is_male,
        "is_tax_unit_head": cat == 0,
        "is_tax_unit_spouse": cat == 1,
        "is_tax_unit_dependent": cat >= 2,
    })
    head_rows = first
    spouse_rows = first[joint] + 1
    for variable, entity, expr, who, factor in VARIABLE_MAP:
        value = _expr(r, expr, factors, factor)
        if entity == "spm_unit":
            continue
        if variable not in person.columns:
            person[variable] = np.zeros(len(person), dtype=bool if value.dtype == bool else float)
        col = person[variable].to_numpy().copy()
        if who.startswith("head"):
            if who == "head (age >= 62)":
                value = np.where(age_head >= 62, value, 0.0)
            elif who == "head (age < 62)":
                value = np.where(age_head < 62, value, 0.0)
            col[head_rows] = col[head_rows] + value if col.dtype != bool else value
        elif who == "spouse":
            col[spouse_rows] = (col[spouse_rows] + value[joint] if col.dtype != bool
                                else value[joint])
        elif who == "all":
            col = value[unit]
        person[variable] = col

    # household: state and the weight of the reference person's unit (lowest a_lineno)
    order = np.lexsort((recid, r["a_lineno"].to_numpy(), household_id_u))
    ref = order[np.concatenate([[True], np.diff(household_id_u[order]) != 0])]
    household = pd.DataFrame({
        "household_id": household_id_u[ref],
        "state_fips": r["fips"].to_numpy()[ref].astype(np.int32),
        "household_weight": r["weight"].to_numpy()[ref].astype(float),
    }).sort_values("household_id").reset_index(drop=True)

    spm_ids = np.unique(family_id_u)
    spm = pd.DataFrame({"spm_unit_id": spm_ids})
    for variable, entity, expr, who, factor in VARIABLE_MAP:
        if entity != "spm_unit":
            continue
        value = pd.Series(_expr(r, expr, factors, factor)).groupby(family_id_u)
        spm[variable] = (value.any() if expr.endswith(">0") else value.sum()).loc[spm_ids].to_numpy()
    tables = {
        "person": person,
        "household": household,
        "tax_unit": pd.DataFrame({"tax_unit_id": np.sort(recid)}),
        "spm_unit": spm,
        "family": pd.DataFrame({"family_id": spm_ids.copy()}),
        "marital_unit": pd.DataFrame({"marital_unit_id": np.unique(marital_id)}),
    }
    return tables
