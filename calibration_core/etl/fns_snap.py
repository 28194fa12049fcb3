"""USDA FNS SNAP National Data Bank: households and benefit dollars by state, FY2024.

File ``snap_fy69tocurrent.zip``, member ``FY24.xlsx`` (one sheet per FNS region: NERO, MARO, SERO,
MWRO, SWRO, MPRO, WRO, plus "US Summary"). Each region sheet lists, per state, a name row, twelve
month rows (Oct 2023 .. Sep 2024) and a ``Total`` row whose columns are: average monthly
participating households, average monthly persons, annual benefit cost ($), cost per household,
cost per person. The header row ``Fiscal Year and Month | Participation | | Cost`` and the next
row ``| Household | Persons`` fix the column layout; the ETL refuses another layout.

Targets per state (51), period 2024 (FY2024 = Oct 2023 - Sep 2024), domain ``snap > 0``:

* ``household_count`` = Total-row households (average monthly caseload);
* ``snap`` = Total-row cost, annual benefit dollars.

Territories (Guam, Virgin Islands, ...) and the region subtotal rows are dropped. No national
target: the "US Summary" sheet includes the territories.
"""
from __future__ import annotations

import io
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd

from . import (
    STATE_FIPS_BY_NAME, EtlResult, SourceInfo, TargetsInputError, concat_targets, make_targets,
    raw_file, require_complete, require_unique, STATE_FIPS_SET,
)

SOURCE = "USDA FNS SNAP"
FILE = "snap_fy69tocurrent.zip"
FISCAL_YEAR = 2024
MEMBER = "FY24.xlsx"
REGION_SHEETS = ("NERO", "MARO", "SERO", "MWRO", "SWRO", "MPRO", "WRO")
NON_STATES = frozenset({
    "puerto rico", "guam", "virgin islands", "american samoa",
    "commonwealth of northern mariana islands", "northern mariana islands",
})
SNAP_DOMAIN = (("snap", ">", "0"),)


def _sheet_totals(rows: list[tuple], sheet: str, where: str) -> list[tuple[str, tuple, int]]:
    """(state name, Total row cells, row number) for every ``Total`` row of one region sheet."""
    header = next((i for i, r in enumerate(rows)
                   if r and isinstance(r[0], str) and r[0].strip() == "Fiscal Year and Month"), None)
    if (header is None or header + 1 >= len(rows) or len(rows[header]) < 4
            or str(rows[header][3]).strip() != "Cost"
            or str(rows[header + 1][1]).strip() != "Household"):
        raise TargetsInputError(
            f"{where}, sheet {sheet}: missing column header 'Fiscal Year and Month | Participation"
            " | | Cost' with 'Household' below it; the FNS layout changed"
        )
    out, current = [], None
    for number, row in enumerate(rows[header + 2:], start=header + 3):
        label = row[0] if row else None
        if not isinstance(label, str) or not label.strip():
            continue
        label = label.strip()
        rest = [v for v in row[1:] if v is not None]
        if not rest:
            if label.startswith(("Footnotes", "ALL DATA", "1.")):
                break
            current = label
            continue
        if label == "Total":
            if current is None:
                raise TargetsInputError(f"{where}, sheet {sheet}, row {number}: Total row "
                                        "without a state name above it")
            out.append((current, row, number))
            current = None
    return out


def read_fns_workbook(data: bytes, where: str) -> pd.DataFrame:
    """Total rows of every region sheet: columns state_fips, name, households, cost, sheet."""
    import openpyxl

    try:
        wb = openpyxl.load_workbook(io.BytesIO(data), read_only=True, data_only=True)
    except Exception as exc:  # openpyxl raises several types for corrupt files
        raise TargetsInputError(f"{where}: not a readable xlsx workbook ({exc})") from exc
    missing = [s for s in REGION_SHEETS if s not in wb.sheetnames]
    if missing:
        raise TargetsInputError(f"{where}: missing sheet(s) {missing}; found {wb.sheetnames}")
    records = []
    for sheet in REGION_SHEETS:
        rows = list(wb[sheet].iter_rows(values_only=True))
        for name, row, number in _sheet_totals(rows, sheet, where):
            key = name.lower()
            if key in NON_STATES or name == sheet:
                continue
            if key not in STATE_FIPS_BY_NAME:
                raise TargetsInputError(
                    f"{where}, sheet {sheet}, row {number}: unknown state {name!r}")
            try:
                households, cost = float(row[1]), float(row[3])
            except (TypeError, ValueError, IndexError) as exc:
                raise TargetsInputError(
                    f"{where}, sheet {sheet}, row {number}, state {name!r}: Total row has no "
                    f"numeric Household/Cost ({row[:4]!r})") from exc
            records.append((STATE_FIPS_BY_NAME[key], name, households, cost, sheet, number))
    wb.close()
    return pd.DataFrame(records, columns=["state_fips", "name", "households", "cost", "sheet",
                                          "row"])


def extract(raw_dir: Path) -> EtlResult:
    path = raw_file(raw_dir, FILE)
    where = f"{FILE}:{MEMBER}"
    try:
        with zipfile.ZipFile(path) as zf:
            if MEMBER not in zf.namelist():
                raise TargetsInputError(f"{FILE}: member {MEMBER} is missing from the zip")
            data = zf.read(MEMBER)
    except zipfile.BadZipFile as exc:
        raise TargetsInputError(f"{FILE}: not a zip archive ({exc})") from exc
    table = read_fns_workbook(data, where)
    require_unique(table["name"].rename("state"), where)
    require_complete(table["state_fips"], STATE_FIPS_SET, where, "state")
    for col in ("households", "cost"):
        bad_rows = table[~np.isfinite(table[col]) | (table[col] < 0)]
        if len(bad_rows):
            bad = bad_rows.iloc[0]
            what = "negative count" if np.isfinite(bad[col]) else "non-finite value"
            raise TargetsInputError(
                f"{where}, sheet {bad['sheet']}, state {bad['name']!r}: {what} {col} = "
                f"{bad[col]:g} (Total row {bad['row']}); expected a finite non-negative number")
    table = table.sort_values("state_fips")
    frames = [
        make_targets(geo_level="state", geo_ids=table["state_fips"], variable="household_count",
                     values=table["households"], period=FISCAL_YEAR, unit="household",
                     source=SOURCE, source_file=FILE, domain=SNAP_DOMAIN,
                     notes="FY2024 average monthly participating households"),
        make_targets(geo_level="state", geo_ids=table["state_fips"], variable="snap",
                     values=table["cost"], period=FISCAL_YEAR, unit="usd", source=SOURCE,
                     source_file=FILE, domain=SNAP_DOMAIN,
                     notes="FY2024 benefit cost, annual dollars"),
    ]
    source = SourceInfo(SOURCE, FILE, "USDA Food and Nutrition Service", "FY2024",
                        "SNAP National Data Bank state participation and benefits (FY24.xlsx)",
                        "https://www.fns.usda.gov/pd/supplemental-nutrition-assistance-program-snap")
    return EtlResult(concat_targets(frames), [source])
