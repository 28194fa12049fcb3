"""CMS Medicaid & CHIP performance indicators: Medicaid enrollment by state, December 2024.

File ``medicaid_enrollment_2024.csv`` (data.medicaid.gov; one row per state x month x report
type). Columns read: ``State Abbreviation``, ``Reporting Period`` (YYYYMM), ``Final Report``
(``Y`` = final), ``Total Medicaid Enrollment``. Rows with ``Final Report == "Y"`` are kept; each
state must have at most one final row per month. The target is the final December-2024 value; a
state reporting zero or nothing for that month (e.g. Rhode Island) takes its latest earlier
non-zero final month, and the note says which.

Targets per state (51): ``person_count`` with domain ``medicaid_enrolled == True``, period 2024.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from . import (
    STATE_FIPS_SET, EtlResult, SourceInfo, TargetsInputError, concat_targets, make_targets,
    raw_file, read_csv_table, require_columns, require_complete, state_abbr_to_fips,
)

SOURCE = "CMS Medicaid"
FILE = "medicaid_enrollment_2024.csv"
PERIOD = 2024
REFERENCE_MONTH = 202412
STATE, MONTH, FINAL, ENROLLMENT = (
    "State Abbreviation", "Reporting Period", "Final Report", "Total Medicaid Enrollment")
MEDICAID_DOMAIN = (("medicaid_enrolled", "==", "True"),)


def extract(raw_dir: Path) -> EtlResult:
    path = raw_file(raw_dir, FILE)
    frame = read_csv_table(path, f"CMS Medicaid performance indicators with columns {STATE}, "
                           f"{MONTH}, {FINAL}, {ENROLLMENT}", allow_empty=True,
                           usecols=lambda c: c in (STATE, MONTH, FINAL, ENROLLMENT),
                           dtype={STATE: str, FINAL: str}, low_memory=False)
    require_columns(frame, [STATE, MONTH, FINAL, ENROLLMENT], FILE)
    frame = frame[frame[FINAL].astype(str).str.strip().str.upper() == "Y"].copy()
    frame["state_fips"] = state_abbr_to_fips(frame[STATE], FILE)
    frame = frame[frame["state_fips"] > 0]
    month = pd.to_numeric(frame[MONTH], errors="coerce")
    if month.isna().any():
        bad = frame[month.isna()].iloc[0]
        raise TargetsInputError(f"{FILE}: state {bad[STATE]!r}: {MONTH} {bad[MONTH]!r} is not "
                                "a YYYYMM number")
    frame[MONTH] = month.astype(int)
    enrollment = pd.to_numeric(frame[ENROLLMENT], errors="coerce")
    # an empty cell is "nothing reported" (handled below); text or an infinite value is an error
    garbage = (enrollment.isna() & frame[ENROLLMENT].notna()
               & (frame[ENROLLMENT].astype(str).str.strip() != "")) | np.isinf(enrollment)
    if garbage.any():
        bad = frame[garbage].iloc[0]
        raise TargetsInputError(
            f"{FILE}: state {bad[STATE]!r}, {MONTH} {bad[MONTH]}: {ENROLLMENT} is "
            f"{bad[ENROLLMENT]!r}; expected a finite number of enrollees (or an empty cell)")
    frame[ENROLLMENT] = enrollment
    dup = frame.duplicated(["state_fips", MONTH])
    if dup.any():
        bad = frame[dup].iloc[0]
        raise TargetsInputError(
            f"{FILE}: duplicated final row for state {bad[STATE]!r}, {MONTH} {bad[MONTH]}; "
            "expected one final report per state and month")
    neg = frame[frame[ENROLLMENT] < 0]
    if len(neg):
        bad = neg.iloc[0]
        raise TargetsInputError(
            f"{FILE}: state {bad[STATE]!r}, {MONTH} {bad[MONTH]}: negative count "
            f"{ENROLLMENT} = {bad[ENROLLMENT]:g}")
    usable = frame[(frame[MONTH] <= REFERENCE_MONTH) & (frame[ENROLLMENT] > 0)]
    latest = usable.sort_values(MONTH).groupby("state_fips").tail(1).sort_values("state_fips")
    require_complete(latest["state_fips"], STATE_FIPS_SET, FILE,
                     f"state with a non-zero final {ENROLLMENT} up to {REFERENCE_MONTH}")
    notes = np.where(latest[MONTH] == REFERENCE_MONTH, "final December 2024 enrollment",
                     "December 2024 zero/missing: latest non-zero final month "
                     + latest[MONTH].astype(str))
    targets = make_targets(geo_level="state", geo_ids=latest["state_fips"],
                           variable="person_count", values=latest[ENROLLMENT], period=PERIOD,
                           unit="person", source=SOURCE, source_file=FILE,
                           domain=MEDICAID_DOMAIN)
    targets["notes"] = notes
    source = SourceInfo(SOURCE, FILE, "Centers for Medicare & Medicaid Services",
                        "December 2024 (final reports)",
                        "Medicaid & CHIP state performance indicators: Total Medicaid Enrollment",
                        "https://data.medicaid.gov/dataset/6165f45b-ca93-5bb5-9d06-db29c692a360")
    return EtlResult(concat_targets([targets]), [source])
