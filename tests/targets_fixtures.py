"""Small raw input files in the real formats of the targets ETLs, written by the tests.

``write_raw_folder(path)`` writes every file the targets database reads: Census API JSON (list of
lists with GEO_IDs like ``0400000US06`` / ``5001900US0612``), the FNS zip with an ``FY24.xlsx``
workbook laid out like the National Data Bank's, and the CMS / IRS SOI / Tax-Calculator CSVs.
Values are synthetic but consistent: district age bands sum to the state ones and states to the
nation, as in the real ACS files. ``EXPECTED`` lists a few values the tests check.
"""
from __future__ import annotations

import gzip
import io
import json
import math
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd

from calibration_core.areas import STATES, census_district_code, district_geoids

STATE_FIPS = [fips for _, fips, _, _ in STATES]
DISTRICTS = district_geoids()
AGE_COLS = [f"S0101_C01_{i:03d}E" for i in range(2, 20)]


def district_age(geoid: int) -> np.ndarray:
    """18 synthetic band populations of one district (integers, deterministic)."""
    return np.array([1000 + (geoid % 97) * 10 + 7 * b for b in range(18)], dtype=np.int64)


def _acs_rows(level: str) -> tuple[list[str], list[list]]:
    header = ["GEO_ID", "NAME", "S0101_C01_001E", "S0101_C01_001M", *AGE_COLS]
    if level == "district":
        header += ["state", "congressional district"]
    elif level == "state":
        header += ["state"]
    else:
        header += ["us"]
    by_district = {g: district_age(g) for g in DISTRICTS}
    by_state = {s: sum(v for g, v in by_district.items() if g // 100 == s) for s in STATE_FIPS}
    rows = []
    if level == "district":
        for g in DISTRICTS:
            code = census_district_code(g)
            v = by_district[g]
            rows.append([f"5001900US{code:04d}", f"District {g}", str(v.sum()), "10",
                         *map(str, v), f"{g // 100:02d}", f"{code % 100:02d}"])
        rows.append(["5001900US7298", "Resident Commissioner District, Puerto Rico", "100", "1",
                     *["5"] * 17, "15", "72", "98"])
    elif level == "state":
        for s in STATE_FIPS:
            v = by_state[s]
            rows.append([f"0400000US{s:02d}", f"State {s}", str(v.sum()), "10", *map(str, v),
                         f"{s:02d}"])
        rows.append(["0400000US72", "Puerto Rico", "100", "1", *["5"] * 17, "15", "72"])
    else:
        v = sum(by_state.values())
        rows.append(["0100000US", "United States", str(v.sum()), "10", *map(str, v), "1"])
    return header, rows


def write_census_json(path: Path, header: list[str], rows: list[list]) -> None:
    path.write_text(json.dumps([header, *rows]))


def write_s0101(raw: Path) -> None:
    for level in ("national", "state", "district"):
        header, rows = _acs_rows(level)
        write_census_json(raw / f"acs_S0101_{level}_2024.json", header, rows)


def write_s2201(raw: Path) -> None:
    header = ["GEO_ID", "NAME", "S2201_C01_001E", "S2201_C03_001E", "S2201_C03_001M",
              "S2201_C01_021E", "state", "congressional district"]
    rows = []
    for g in DISTRICTS:
        code = census_district_code(g)
        rows.append([f"5001900US{code:04d}", f"District {g}", str(300000 + g),
                     str(30000 + g), "900", str(40000 + g), f"{g // 100:02d}",
                     f"{code % 100:02d}"])
    rows.append(["5001900US09ZZ", "District (at Large) ZZ, Connecticut", "0", "0", "0", "0",
                 "09", "ZZ"])
    write_census_json(raw / "acs_S2201_district_2024.json", header, rows)


FNS_REGIONS = ("NERO", "MARO", "SERO", "MWRO", "SWRO", "MPRO", "WRO")
MONTHS = ["Oct 2023", "Nov 2023", "Dec 2023", "Jan 2024", "Feb 2024", "Mar 2024", "Apr 2024",
          "May 2024", "Jun 2024", "Jul 2024", "Aug 2024", "Sep 2024"]


def fns_values(fips: int) -> tuple[float, float]:
    """(average monthly households, annual cost) of the synthetic FY2024 Total row."""
    return 10000.0 + 100 * fips + 0.25, 5.0e7 + 1e5 * fips


def fns_workbook(states: list[tuple[str, int]] | None = None, extra_rows=None) -> bytes:
    """FY24.xlsx bytes in the FNS layout; ``states`` = (name, fips) list, default all 51."""
    import openpyxl

    if states is None:
        states = [(name, fips) for _, fips, name, _ in STATES]
    wb = openpyxl.Workbook()
    wb.remove(wb.active)
    for r, region in enumerate(FNS_REGIONS):
        ws = wb.create_sheet(region)
        ws.append(["National Data Bank Version 8.2 PUBLIC - Supplemental Nutrition Assistance "
                   "Program", None, None, None, None, None])
        ws.append(["SNAP Monthly State Participation and Benefit Summary, Fiscal Year 2024"])
        ws.append([" "])
        ws.append([None])
        ws.append([" ", "Total 1/"])
        ws.append(["Fiscal Year and Month", "Participation 1/", None, "Cost", "Cost Per", None])
        ws.append([None, "Household", "Persons", None, "Household", "Persons"])
        for name, fips in states[r::len(FNS_REGIONS)]:
            hh, cost = fns_values(fips)
            ws.append([name])
            for m in MONTHS:
                ws.append([m, hh, 2 * hh, cost / 12, cost / 12 / hh, cost / 24 / hh])
            ws.append(["Total", hh, 2 * hh, cost, cost / 12 / hh, cost / 24 / hh])
            ws.append([None])
        if region == "WRO":
            ws.append(["Guam"])
            ws.append(["Oct 2023", "--", "--", "--", "--", "--"])
            ws.append(["Total", "--", "--", "--", "--", "--"])
            ws.append([None])
        for row in (extra_rows or {}).get(region, []):
            ws.append(row)
        ws.append([region])
        ws.append(["Total", 1, 2, 3, 4, 5])
        ws.append([None])
        ws.append(["Footnotes:"])
        ws.append(["ALL DATA SUBJECT TO REVISION"])
    ws = wb.create_sheet("US Summary")
    ws.append(["US Summary"])
    buf = io.BytesIO()
    wb.save(buf)
    return buf.getvalue()


def write_fns_zip(raw: Path, workbook: bytes | None = None) -> None:
    with zipfile.ZipFile(raw / "snap_fy69tocurrent.zip", "w") as zf:
        zf.writestr("FY23.xlsx", b"not read")
        zf.writestr("FY24.xlsx", fns_workbook() if workbook is None else workbook)


def medicaid_value(fips: int) -> float:
    return 100000.0 + 1000 * fips


def write_medicaid(raw: Path) -> None:
    rows = []
    for abbr, fips, name, _ in STATES:
        for period in (202411, 202412):
            value = medicaid_value(fips) + (period % 100)
            if abbr == "RI" and period == 202412:
                value = 0.0  # as in the real file: RI reports zero for Dec 2024
            rows.append([abbr, name, period, "N", "P", value - 5])
            rows.append([abbr, name, period, "Y", "U", value])
    rows.append(["PR", "Puerto Rico", 202412, "Y", "U", 999.0])
    pd.DataFrame(rows, columns=["State Abbreviation", "State Name", "Reporting Period",
                                "Final Report", "Preliminary or Updated",
                                "Total Medicaid Enrollment"]).to_csv(
        raw / "medicaid_enrollment_2024.csv", index=False)


STATE_EDGES = (-math.inf, 1.0, 10e3, 25e3, 50e3, 75e3, 100e3, 200e3, 500e3, 1e6, math.inf)


def agi_state_frame() -> pd.DataFrame:
    rows = []
    for abbr, fips, _, _ in STATES:
        for b, (lo, hi) in enumerate(zip(STATE_EDGES[:-1], STATE_EDGES[1:])):
            count = 1000 * fips + 10 * b + 1
            rows.append([f"0400000US{fips:02d}", abbr, lo, hi, count, 1,
                         "adjusted_gross_income/count"])
            amount = -5e6 if b == 0 else count * (lo + (min(hi, 2e6) - lo) / 2)
            rows.append([f"0400000US{fips:02d}", abbr, lo, hi, int(amount), 0,
                         "adjusted_gross_income/amount"])
    return pd.DataFrame(rows, columns=["GEO_ID", "GEO_NAME", "AGI_LOWER_BOUND",
                                       "AGI_UPPER_BOUND", "VALUE", "IS_COUNT", "VARIABLE"])


NATIONAL_FINE = [(-math.inf, 0.0), (1.0, 5e3), (5e3, 10e3), (10e3, 15e3), (15e3, 20e3),
                 (20e3, 25e3), (25e3, 30e3), (30e3, 40e3), (40e3, 50e3), (50e3, 75e3),
                 (75e3, 100e3), (100e3, 200e3), (200e3, 500e3), (500e3, 1e6), (1e6, 1.5e6),
                 (1.5e6, 2e6), (2e6, 5e6), (5e6, 10e6), (10e6, math.inf)]


def soi_targets_frame() -> pd.DataFrame:
    rows = []
    for year in (2021, 2022, 2023):
        for variable, is_count in (("count", True), ("adjusted_gross_income", False)):
            values = [(1 + i) * (1000.0 if is_count else 1e9) * (1 + (year - 2022) / 10)
                      for i in range(len(NATIONAL_FINE))]
            for (lo, hi), v in zip(NATIONAL_FINE, values):
                rows.append([year, "Table 1.1", "B", 11, variable, "All", lo, hi, is_count,
                             False, False, v])
            rows.append([year, "Table 1.1", "B", 10, variable, "All", -math.inf, math.inf,
                         is_count, False, True, sum(values)])
            # rows the ETL must ignore: taxable-only and single filers
            rows.append([year, "Table 1.1", "C", 10, variable, "All", -math.inf, math.inf,
                         is_count, True, True, 1.0])
            rows.append([year, "Table 1.2", "D", 10, variable, "Single", -math.inf, math.inf,
                         is_count, False, True, 2.0])
    return pd.DataFrame(rows, columns=["Year", "SOI table", "XLSX column", "XLSX row",
                                       "Variable", "Filing status", "AGI lower bound",
                                       "AGI upper bound", "Count", "Taxable only",
                                       "Full population", "Value"])


def write_eitc(raw: Path, frame: pd.DataFrame | None = None) -> None:
    if frame is None:
        frame = pd.DataFrame({
            "GEO_ID": [f"0400000US{f:02d}" for f in STATE_FIPS],
            "Returns": [5000 + f for f in STATE_FIPS],
            "Amount": [1e7 + 1e4 * f for f in STATE_FIPS],
        })
    text = "# IRS SOI Historical Table 2 (2022in55cmcsv.csv), EIC columns\n"
    (raw / "eitc_state.csv").write_text(text + frame.to_csv(index=False))


def write_growth(raw: Path) -> None:
    years = list(range(2011, 2031))
    pd.DataFrame({"YEAR": years, "ATXPY": 1.0, "ACPIU": [1.0] + [1.03] * (len(years) - 1),
                  "AWAGE": 1.0}).to_csv(raw / "growfactors.csv", index=False)
    weights = pd.DataFrame({f"WT{y}": [100.0 * 1.01 ** (y - 2014) * k for k in (1, 2, 3)]
                            for y in range(2014, 2031)})
    with gzip.open(raw / "cps_weights.csv.gz", "wt") as fh:
        weights.to_csv(fh, index=False)


def incd_frame() -> pd.DataFrame:
    """22incd.csv-format rows: US, state totals (multi-district states) and districts."""
    rows = []
    by_state: dict[int, list[int]] = {}
    for g in DISTRICTS:
        by_state.setdefault(g // 100, []).append(g)
    for abbr, fips, _, n in STATES:
        for stub in range(1, 10):
            for g in by_state[fips]:
                cd = 0 if n == 1 else g % 100
                rows.append([fips, abbr, cd, stub, 100 * stub + g % 100, 200 * stub,
                             50.0 * stub * (1 if stub > 1 else -1)])
            if n > 1:
                rows.append([fips, abbr, 0, stub, 1, 1, 1.0])  # state total row, dropped
            rows.append([0, "US", 0, stub, 9, 9, 9.0]) if fips == 1 else None
    return pd.DataFrame(rows, columns=["STATEFIPS", "STATE", "CONG_DISTRICT", "agi_stub", "N1",
                                       "N2", "A00100"])


def write_raw_folder(raw: Path, with_districts_soi: bool = False) -> Path:
    raw.mkdir(parents=True, exist_ok=True)
    write_s0101(raw)
    write_s2201(raw)
    write_fns_zip(raw)
    write_medicaid(raw)
    agi_state_frame().to_csv(raw / "agi_state.csv", index=False)
    soi_targets_frame().to_csv(raw / "soi_targets.csv", index=False)
    write_eitc(raw)
    write_growth(raw)
    if with_districts_soi:
        incd_frame().to_csv(raw / "22incd.csv", index=False)
    return raw
