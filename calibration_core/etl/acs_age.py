"""Census ACS 1-year 2024 subject table S0101: population in 18 age bands, nation/states/districts.

Files (Census API responses, JSON list of lists, header row first): ``acs_S0101_national_2024.json``
(GEO_ID ``0100000US``), ``acs_S0101_state_2024.json`` (``0400000USss``; Puerto Rico dropped),
``acs_S0101_district_2024.json`` (``5001900USssdd``; PR dropped, at-large ``00`` and DC ``98``
become district ``01``). Columns read: ``S0101_C01_001E`` (total population, used only to check
that the bands add up) and ``S0101_C01_002E`` .. ``S0101_C01_019E`` = ages 0-4, 5-9, ..., 80-84,
85+.

Targets: ``person_count`` with domain ``age >= lo`` and ``age < hi + 1`` (85+: ``age >= 85``
only), period 2024, for 1 + 51 + 436 geographies = 18 x 488 = 8,784 targets.
"""
from __future__ import annotations

import math
from pathlib import Path

import pandas as pd

from . import (
    DISTRICT_SET, STATE_FIPS_SET, EtlResult, SourceInfo, TargetsInputError, band, concat_targets,
    make_targets, numeric_columns, parse_district_geoid, parse_state_geoid, raw_file,
    read_census_json, require_columns, require_complete, require_unique,
)

SOURCE = "Census ACS S0101"
PERIOD = 2024
FILES = {
    "national": "acs_S0101_national_2024.json",
    "state": "acs_S0101_state_2024.json",
    "district": "acs_S0101_district_2024.json",
}
TOTAL_COLUMN = "S0101_C01_001E"
# (column, lowest age, highest age inclusive or inf)
AGE_BANDS: tuple[tuple[str, int, float], ...] = tuple(
    (f"S0101_C01_{i + 2:03d}E", 5 * i, 5 * i + 4 if i < 17 else math.inf) for i in range(18)
)


def age_domain(lo: int, hi: float) -> tuple:
    """``age >= lo`` and ``age < hi + 1`` (ages are whole years); open top band has no upper."""
    return band("age", lo, hi + 1)


def _geo_ids(frame: pd.DataFrame, level: str, file: str) -> pd.Series:
    require_columns(frame, ["GEO_ID"], file)
    geo = frame["GEO_ID"].astype(str)
    if level == "national":
        bad = geo[geo != "0100000US"]
        if len(bad):
            raise TargetsInputError(f"{file}: unknown GEO_ID {bad.iloc[0]!r}; expected 0100000US")
        return pd.Series(0, index=frame.index, name="GEO_ID")
    if level == "state":
        return parse_state_geoid(geo, file)
    return parse_district_geoid(geo, file)


def read_acs_table(path: Path, level: str, columns: list[str]) -> pd.DataFrame:
    """Rows of one Census API file for the 1/51/436 geographies of ``level``; float columns.

    Returns a frame indexed by geo id (0, state FIPS, district GEOID) with ``columns``.
    Validates: JSON shape, columns present, GEO_IDs known, no duplicates, full coverage,
    non-negative numbers.
    """
    file = path.name
    frame = read_census_json(path)
    require_columns(frame, ["GEO_ID", *columns], file)
    geo = _geo_ids(frame, level, file)
    keep = geo >= 0
    frame, geo = frame[keep], geo[keep]
    key = frame["GEO_ID"].astype(str).rename("GEO_ID")
    require_unique(key, file)
    require_unique(geo.rename("geography"), file)
    expected = {"national": {0}, "state": STATE_FIPS_SET, "district": DISTRICT_SET}[level]
    require_complete(geo, expected, file, f"{level} geography")
    values = numeric_columns(frame, columns, file, key)
    values.index = geo.to_numpy()
    return values.sort_index()


def extract(raw_dir: Path) -> EtlResult:
    frames, sources = [], []
    band_cols = [c for c, _, _ in AGE_BANDS]
    for level, name in FILES.items():
        path = raw_file(raw_dir, name)
        values = read_acs_table(path, level, [TOTAL_COLUMN, *band_cols])
        gap = (values[band_cols].sum(axis=1) - values[TOTAL_COLUMN]).abs()
        if (gap > 0.5).any():
            geo = gap.idxmax()
            raise TargetsInputError(
                f"{name}: geography {geo}: the 18 age bands sum to "
                f"{values.loc[geo, band_cols].sum():.0f}, not the total {TOTAL_COLUMN} "
                f"{values.loc[geo, TOTAL_COLUMN]:.0f}"
            )
        for col, lo, hi in AGE_BANDS:
            frames.append(make_targets(
                geo_level=level, geo_ids=values.index, variable="person_count",
                values=values[col], period=PERIOD, unit="person", source=SOURCE,
                source_file=name, domain=age_domain(lo, hi),
                notes=f"{col}: population aged {lo}{'+' if math.isinf(hi) else f'-{int(hi)}'}",
            ))
        sources.append(SourceInfo(
            SOURCE, name, "U.S. Census Bureau", "ACS 1-year 2024",
            f"S0101 Age and Sex, {level} ({len(values)} geographies)",
            "https://api.census.gov/data/2024/acs/acs1/subject?get=group(S0101)",
        ))
    return EtlResult(concat_targets(frames), sources)
