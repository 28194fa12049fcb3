"""IRS Statistics of Income: individual returns and AGI by AGI band (filers only).

All SOI targets hang under the geography's "tax filers" stratum (``tax_unit_is_filer == 1``) and
carry the AGI band ``adjusted_gross_income >= lo`` and ``adjusted_gross_income < hi`` (an infinite
bound is omitted; AGI is in whole dollars, so SOI's "no AGI" band ``<= 0`` is ``< 1``). Two
variables per band: ``tax_unit_count`` (number of returns) and ``adjusted_gross_income`` (dollars).

* **States** (51), ``agi_state.csv`` (SOI Historical Table 2, ``22in55cmcsv``, TY2022; long format
  ``GEO_ID, GEO_NAME, AGI_LOWER_BOUND, AGI_UPPER_BOUND, VALUE, IS_COUNT, VARIABLE``; amounts in
  dollars): 10 bands ``<1, 1-10k, 10-25k, 25-50k, 50-75k, 75-100k, 100-200k, 200-500k, 500k-1M,
  1M+``.
* **Nation**, ``soi_targets.csv`` (Publication 1304 Table 1.1, filing status All, all returns, TY2022
  and TY2023): the 19 published bands are summed exactly into the same 10 bands, so the national
  strata match the state strata band for band. TY2023 is the latest; TY2022 is kept so the state
  sums can be compared with the nation in the same tax year.
* **Districts** (436), only when the raw folder has ``22incd.csv`` (SOI congressional-district
  file, TY2022; columns ``STATEFIPS, STATE, CONG_DISTRICT, agi_stub, N1, A00100``, A in thousands):
  9 stubs, the last being ``500k+``. If every state has as many districts in the file as in the
  119th Congress, districts map one to one (``00`` at-large -> ``01``); otherwise the file is
  taken as 116th-Congress districts and re-mapped with ``district_mapping.csv`` (population
  shares, ``new = M^T old``) and the targets are flagged ``modelled``.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd

from . import (
    DISTRICT_SET, STATE_FIPS_SET, EtlResult, SourceInfo, TargetsInputError, band,
    concat_targets, make_targets, numeric_columns, parse_state_geoid, raw_file, read_csv_table,
    require_columns, require_complete, shown,
)
from ..areas import DISTRICT_COUNT, STATE_ABBR, normalize_district_geoid

SOURCE = "IRS SOI"
STATE_FILE = "agi_state.csv"
NATIONAL_FILE = "soi_targets.csv"
DISTRICT_FILE = "22incd.csv"
CROSSWALK_FILE = "district_mapping.csv"
STATE_PERIOD = 2022
DISTRICT_PERIOD = 2022
NATIONAL_YEARS = (2022, 2023)
INF = math.inf
# the 10 bands of the state file; national fine bands are summed into these
STATE_EDGES = (-INF, 1.0, 10e3, 25e3, 50e3, 75e3, 100e3, 200e3, 500e3, 1e6, INF)
# SOI geographic-file AGI stubs 1..9
DISTRICT_STUBS = {1: (-INF, 1.0), 2: (1.0, 10e3), 3: (10e3, 25e3), 4: (25e3, 50e3),
                  5: (50e3, 75e3), 6: (75e3, 100e3), 7: (100e3, 200e3), 8: (200e3, 500e3),
                  9: (500e3, INF)}
VARIABLES = {"count": ("tax_unit_count", "tax_unit"), "amount": ("adjusted_gross_income", "usd")}


def agi_domain(lo: float, hi: float) -> tuple:
    return band("adjusted_gross_income", lo, hi)


def _band_targets(table: pd.DataFrame, *, level: str, period: int, file: str,
                  modelled: bool = False, notes: str = "") -> list[pd.DataFrame]:
    """``table`` columns: geo_id, lo, hi, kind ('count'|'amount'), value -> target frames."""
    frames = []
    for (lo, hi, kind), part in table.groupby(["lo", "hi", "kind"], sort=True):
        variable, unit = VARIABLES[kind]
        part = part.sort_values("geo_id")
        frames.append(make_targets(
            geo_level=level, geo_ids=part["geo_id"], variable=variable, values=part["value"],
            period=period, unit=unit, source=SOURCE, source_file=file,
            domain=agi_domain(lo, hi), filer=True, modelled=modelled, notes=notes))
    return frames


def read_state_file(path: Path) -> pd.DataFrame:
    """agi_state.csv -> geo_id, lo, hi, kind, value (51 states x 10 bands x 2)."""
    file = path.name
    frame = read_csv_table(path, "IRS SOI state AGI bands: GEO_ID, AGI_LOWER_BOUND, "
                           "AGI_UPPER_BOUND, VALUE, IS_COUNT", dtype={"GEO_ID": str})
    cols = ["GEO_ID", "AGI_LOWER_BOUND", "AGI_UPPER_BOUND", "VALUE", "IS_COUNT"]
    require_columns(frame, cols, file)
    frame["geo_id"] = parse_state_geoid(frame["GEO_ID"], file)
    frame = frame[frame["geo_id"] > 0].copy()
    key = (frame["GEO_ID"] + " AGI [" + frame["AGI_LOWER_BOUND"].astype(str) + ", "
           + frame["AGI_UPPER_BOUND"].astype(str) + ") IS_COUNT="
           + frame["IS_COUNT"].astype(str)).rename("key")
    key = key.reset_index(drop=True).set_axis(frame.index)
    bounds = numeric_columns(frame, ["AGI_LOWER_BOUND", "AGI_UPPER_BOUND"], file, key,
                             nonnegative=False, finite=False)
    numbers = numeric_columns(frame, ["VALUE", "IS_COUNT"], file, key, nonnegative=False)
    numbers[["AGI_LOWER_BOUND", "AGI_UPPER_BOUND"]] = bounds
    not_flag = ~numbers["IS_COUNT"].isin([0, 1])
    if not_flag.any():
        raise TargetsInputError(f"{file}: {key[not_flag].iloc[0]}: IS_COUNT is "
                                f"{shown(frame.loc[not_flag, 'IS_COUNT'].iloc[0])}; expected 1 "
                                "(number of returns) or 0 (amount)")
    frame[["lo", "hi", "value"]] = numbers[["AGI_LOWER_BOUND", "AGI_UPPER_BOUND", "VALUE"]]
    frame["kind"] = np.where(numbers["IS_COUNT"] == 1, "count", "amount")
    dup = key.duplicated()
    if dup.any():
        raise TargetsInputError(f"{file}: duplicated row for {key[dup].iloc[0]}")
    neg = (frame["kind"] == "count") & (frame["value"] < 0)
    if neg.any():
        raise TargetsInputError(
            f"{file}: {key[neg].iloc[0]}: negative count {frame.loc[neg, 'value'].iloc[0]:g}")
    expected = set(zip(STATE_EDGES[:-1], STATE_EDGES[1:]))
    bad_band = ~pd.Series(list(zip(frame["lo"], frame["hi"])), index=frame.index).isin(expected)
    if bad_band.any():
        raise TargetsInputError(f"{file}: {key[bad_band].iloc[0]}: unexpected AGI band; expected "
                                f"the 10 bands with edges {STATE_EDGES}")
    per_state = frame.groupby("geo_id").size()
    require_complete(per_state.index, STATE_FIPS_SET, file, "state")
    short = per_state[per_state != 20]
    if len(short):
        raise TargetsInputError(f"{file}: state {STATE_ABBR[short.index[0]]} has "
                                f"{short.iloc[0]} rows; expected 10 bands x (count, amount)")
    return frame[["geo_id", "lo", "hi", "kind", "value"]]


def read_national_file(path: Path, years=NATIONAL_YEARS) -> pd.DataFrame:
    """soi_targets.csv Table 1.1 (All filers, all returns) summed into the 10 state bands.

    Returns geo_id (0), period, lo, hi, kind, value. Checks that the fine bands tile the range
    and that their sum equals the published all-returns total.
    """
    file = path.name
    frame = read_csv_table(path, "IRS SOI Publication 1304 tables: Year, SOI table, Variable, "
                           "Filing status, AGI bounds, flags, Value")
    cols = ["Year", "SOI table", "Variable", "Filing status", "AGI lower bound",
            "AGI upper bound", "Count", "Taxable only", "Full population", "Value"]
    require_columns(frame, cols, file)
    row_key = ("row " + pd.Series(np.arange(len(frame)) + 2, index=frame.index).astype(str)
               + " (Year " + frame["Year"].astype(str) + ", " + frame["SOI table"].astype(str)
               + ", " + frame["Variable"].astype(str) + ")").rename("key")
    for flag in ("Count", "Taxable only", "Full population"):
        not_bool = ~frame[flag].isin([True, False])
        if not_bool.any():
            raise TargetsInputError(f"{file}: {row_key[not_bool].iloc[0]}: {flag} is "
                                    f"{shown(frame.loc[not_bool, flag].iloc[0])}; expected True or "
                                    "False")
    year = numeric_columns(frame, ["Year"], file, row_key)["Year"]
    if (year != year.round()).any():
        raise TargetsInputError(f"{file}: {row_key[year != year.round()].iloc[0]}: Year is not "
                                "a whole tax year")
    frame["Year"] = year.astype(np.int64)
    sel = frame[(frame["SOI table"] == "Table 1.1") & (frame["Filing status"] == "All")
                & ~frame["Taxable only"].astype(bool)
                & (((frame["Variable"] == "count") & frame["Count"].astype(bool))
                   | ((frame["Variable"] == "adjusted_gross_income")
                      & ~frame["Count"].astype(bool)))
                & frame["Year"].isin(years)].copy()
    sel[["AGI lower bound", "AGI upper bound"]] = numeric_columns(
        sel, ["AGI lower bound", "AGI upper bound"], file, row_key[sel.index],
        nonnegative=False, finite=False)
    sel["Value"] = numeric_columns(sel, ["Value"], file, row_key[sel.index],
                                   nonnegative=False)["Value"]
    sel["kind"] = np.where(sel["Variable"] == "count", "count", "amount")
    key = ("Year " + sel["Year"].astype(str) + " " + sel["Variable"] + " AGI ["
           + sel["AGI lower bound"].astype(str) + ", " + sel["AGI upper bound"].astype(str)
           + ")" + np.where(sel["Full population"].astype(bool), " (all returns)", ""))
    dup = key.duplicated()
    if dup.any():
        raise TargetsInputError(f"{file}: duplicated row for {key[dup].iloc[0]}")
    neg = (sel["kind"] == "count") & (sel["Value"] < 0)
    if neg.any():
        raise TargetsInputError(f"{file}: {key[neg].iloc[0]}: negative count "
                                f"{sel.loc[neg, 'Value'].iloc[0]:g}")
    missing_years = sorted(set(years) - set(sel["Year"]))
    if missing_years:
        raise TargetsInputError(f"{file}: no Table 1.1 AGI rows for tax year(s) {missing_years}")
    totals = sel[sel["Full population"].astype(bool)].set_index(["Year", "kind"])["Value"]
    bands = sel[~sel["Full population"].astype(bool)].copy()
    lo = bands["AGI lower bound"].to_numpy(dtype=float)
    hi = bands["AGI upper bound"].to_numpy(dtype=float)
    hi = np.where(hi == 0.0, 1.0, hi)  # "no AGI" (<= 0) is < 1 in whole dollars
    edges = np.asarray(STATE_EDGES)
    idx = np.searchsorted(edges, lo, side="right") - 1
    if (hi > edges[np.clip(idx + 1, 0, len(edges) - 1)]).any():
        bad = key[bands.index[hi > edges[np.clip(idx + 1, 0, len(edges) - 1)]][0]]
        raise TargetsInputError(f"{file}: {bad}: band straddles the state band edges {STATE_EDGES}")
    bands["lo"], bands["hi"] = edges[idx], edges[idx + 1]
    out = bands.groupby(["Year", "kind", "lo", "hi"], as_index=False)["Value"].sum()
    counts = out.groupby(["Year", "kind"]).size()
    if (counts != len(edges) - 1).any():
        bad = counts[counts != len(edges) - 1].index[0]
        raise TargetsInputError(f"{file}: tax year {bad[0]} {bad[1]}: fine bands cover "
                                f"{counts[bad]} of the {len(edges) - 1} state bands")
    sums = out.groupby(["Year", "kind"])["Value"].sum()
    for k, total in totals.items():
        if k in sums.index and abs(sums[k] - total) > 1e-6 * abs(total) + 1:
            raise TargetsInputError(f"{file}: tax year {k[0]} {k[1]}: bands sum to {sums[k]:.0f}"
                                    f", not the all-returns total {total:.0f}")
    out = out.rename(columns={"Year": "period", "Value": "value"})
    out["geo_id"] = 0
    return out[["geo_id", "period", "lo", "hi", "kind", "value"]]


def _district_counts(frame: pd.DataFrame) -> dict[int, int]:
    nonzero = frame[frame["CONG_DISTRICT"] > 0].groupby("STATEFIPS")["CONG_DISTRICT"].nunique()
    return {int(s): int(nonzero.get(s, 0)) or 1 for s in frame["STATEFIPS"].unique()}


def read_district_file(path: Path, crosswalk: Path | None) -> tuple[pd.DataFrame, bool]:
    """22incd.csv -> (geo_id, lo, hi, kind, value) for 436 districts x 9 stubs x 2; modelled?"""
    file = path.name
    frame = read_csv_table(path, "IRS SOI congressional-district file: STATEFIPS, "
                           "CONG_DISTRICT, agi_stub, N1, A00100", dtype={"STATE": str},
                           thousands=",")
    cols = ["STATEFIPS", "CONG_DISTRICT", "agi_stub", "N1", "A00100"]
    require_columns(frame, cols, file)
    key = ("STATEFIPS " + frame["STATEFIPS"].astype(str) + " CONG_DISTRICT "
           + frame["CONG_DISTRICT"].astype(str) + " agi_stub "
           + frame["agi_stub"].astype(str)).rename("key")
    nums = numeric_columns(frame, cols, file, key, nonnegative=False)
    frame = nums.astype({"STATEFIPS": int, "CONG_DISTRICT": int, "agi_stub": int})
    if (frame["N1"] < 0).any():
        raise TargetsInputError(f"{file}: {key[frame['N1'] < 0].iloc[0]}: negative count N1 "
                                f"{frame.loc[frame['N1'] < 0, 'N1'].iloc[0]:g}")
    unknown = ~frame["STATEFIPS"].isin(STATE_FIPS_SET | {0}) & (frame["STATEFIPS"] < 60)
    if unknown.any():
        raise TargetsInputError(f"{file}: {key[unknown].iloc[0]}: unknown STATEFIPS")
    frame = frame[frame["STATEFIPS"].isin(STATE_FIPS_SET) & frame["agi_stub"].isin(DISTRICT_STUBS)]
    counts = _district_counts(frame)
    # multi-district states: CONG_DISTRICT 0 is the state total; at-large states: 0 = the district
    multi = frame["STATEFIPS"].map(counts) > 1
    frame = frame[~(multi & (frame["CONG_DISTRICT"] == 0))].copy()
    dup = frame.duplicated(["STATEFIPS", "CONG_DISTRICT", "agi_stub"])
    if dup.any():
        raise TargetsInputError(f"{file}: duplicated row for {key[dup[dup].index[0]]}")
    frame["code"] = (frame["STATEFIPS"] * 100 + frame["CONG_DISTRICT"]).map(
        normalize_district_geoid)
    same = all(counts.get(f, 0) == DISTRICT_COUNT[STATE_ABBR[f]] for f in STATE_FIPS_SET)
    stubs = frame.groupby("code")["agi_stub"].nunique()
    if (stubs != len(DISTRICT_STUBS)).any():
        raise TargetsInputError(f"{file}: district {stubs.index[stubs != 9][0]} has "
                                f"{stubs[stubs != 9].iloc[0]} AGI stubs; expected 1..9")
    long = pd.concat([
        frame.assign(kind="count", value=frame["N1"]),
        frame.assign(kind="amount", value=frame["A00100"] * 1000.0),
    ])
    long["lo"] = long["agi_stub"].map(lambda s: DISTRICT_STUBS[s][0])
    long["hi"] = long["agi_stub"].map(lambda s: DISTRICT_STUBS[s][1])
    if same:
        unknown = ~long["code"].isin(DISTRICT_SET)
        if unknown.any():
            raise TargetsInputError(f"{file}: unknown district {long['code'][unknown].iloc[0]}")
        require_complete(long["code"], DISTRICT_SET, file, "district")
        return long.rename(columns={"code": "geo_id"})[["geo_id", "lo", "hi", "kind", "value"]], \
            False
    if crosswalk is None:
        raise TargetsInputError(f"{file}: district counts differ from the 119th Congress and "
                                f"{CROSSWALK_FILE} is missing")
    xw = read_crosswalk(crosswalk)
    unknown = ~long["code"].isin(set(xw["code"]))
    if unknown.any():
        raise TargetsInputError(f"{file}: district {long['code'][unknown].iloc[0]} is neither a "
                                f"119th-Congress code nor an old code of {CROSSWALK_FILE}")
    mapped = long.merge(xw, on="code")
    mapped["value"] = mapped["value"] * mapped["share"]
    out = mapped.groupby(["geo_id", "lo", "hi", "kind"], as_index=False)["value"].sum()
    require_complete(out["geo_id"], DISTRICT_SET, file, "district")
    return out, True


def read_crosswalk(path: Path) -> pd.DataFrame:
    """district_mapping.csv -> code (old district), geo_id (119th district), share in 0..1.

    Codes are GEOID strings ending in ``ssdd``; a code that does not parse, a new code outside
    the 436 districts, or a proportion that is not a number in 0..1 names the file and row."""
    file = path.name
    xw = read_csv_table(path, "116th -> 119th district crosswalk: code_old, code_new, "
                        "proportion", dtype=str)
    require_columns(xw, ["code_old", "code_new", "proportion"], file)
    key = ("row " + pd.Series(np.arange(len(xw)) + 2, index=xw.index).astype(str) + " ("
           + xw["code_old"].astype(str) + " -> " + xw["code_new"].astype(str) + ")").rename("key")
    codes = {}
    for col in ("code_old", "code_new"):
        text = xw[col].astype(str).str.strip().str[-4:]
        ok = text.str.fullmatch(r"\d{4}")
        if not ok.all():
            raise TargetsInputError(f"{file}: {key[~ok].iloc[0]}: {col} "
                                    f"{shown(xw[col][~ok].iloc[0])}; expected a district GEOID "
                                    "ending in ssdd")
        codes[col] = text.astype(int).map(normalize_district_geoid)
    unknown = ~codes["code_new"].isin(DISTRICT_SET)
    if unknown.any():
        raise TargetsInputError(f"{file}: {key[unknown].iloc[0]}: code_new is not one of the 436 "
                                "districts of the 119th Congress")
    share = numeric_columns(xw, ["proportion"], file, key)["proportion"]
    above = share > 1 + 1e-9
    if above.any():
        raise TargetsInputError(f"{file}: {key[above].iloc[0]}: proportion "
                                f"{share[above].iloc[0]:g}; expected a share in 0..1")
    return pd.DataFrame({"code": codes["code_old"], "geo_id": codes["code_new"], "share": share})


def extract(raw_dir: Path) -> EtlResult:
    frames, sources = [], []
    state_path = raw_file(raw_dir, STATE_FILE)
    frames += _band_targets(read_state_file(state_path), level="state", period=STATE_PERIOD,
                            file=STATE_FILE, notes="SOI Historical Table 2 (in55cm), TY2022")
    sources.append(SourceInfo(SOURCE, STATE_FILE, "Internal Revenue Service", "TY2022",
                              "returns and AGI by 10 AGI bands, states (22in55cmcsv)",
                              "https://www.irs.gov/pub/irs-soi/22in55cmcsv.csv"))
    nat = read_national_file(raw_file(raw_dir, NATIONAL_FILE))
    for period, part in nat.groupby("period"):
        frames += _band_targets(part, level="national", period=int(period), file=NATIONAL_FILE,
                                notes=f"Publication 1304 Table 1.1, TY{period}, bands summed")
    sources.append(SourceInfo(SOURCE, NATIONAL_FILE, "Internal Revenue Service",
                              "TY" + "/".join(map(str, NATIONAL_YEARS)),
                              "Publication 1304 Table 1.1: returns and AGI by AGI band, nation",
                              "https://www.irs.gov/statistics/soi-tax-stats-individual-statistical"
                              "-tables-by-size-of-adjusted-gross-income"))
    district_path = Path(raw_dir) / DISTRICT_FILE
    if district_path.is_file():
        crosswalk = Path(raw_dir) / CROSSWALK_FILE
        table, modelled = read_district_file(
            district_path, crosswalk if crosswalk.is_file() else None)
        frames += _band_targets(table, level="district", period=DISTRICT_PERIOD,
                                file=DISTRICT_FILE, modelled=modelled,
                                notes="SOI congressional-district file, TY2022"
                                + (" re-mapped 116th->119th by population" if modelled else ""))
        sources.append(SourceInfo(SOURCE, DISTRICT_FILE, "Internal Revenue Service", "TY2022",
                                  "returns and AGI by 9 AGI stubs, congressional districts",
                                  "https://www.irs.gov/pub/irs-soi/22incd.csv"))
    return EtlResult(concat_targets(frames), sources)
