"""ETLs from raw public files to long target tables, one module per source.

Every ETL is a function ``extract(raw_dir) -> EtlResult``. Its ``targets`` frame has one row per
published figure, with the columns of ``TARGET_COLUMNS``:

=============  ====================================================================================
geo_level      ``"national"`` | ``"state"`` | ``"district"``
geo_id         int: 0 for the nation, state FIPS (6), district GEOID ``state*100+district`` (612);
               at-large states and DC are district 01 (``calibration_core.areas``)
filer          bool: the stratum sits under the geography's "tax filers" stratum
               (adds ``tax_unit_is_filer == 1``; IRS SOI tables count filed returns only)
domain         tuple of ``(variable, operation, value)`` string triples, sorted: the non-geographic
               constraints (age band, AGI band, program recipiency); ``()`` when none
variable       policyengine-us variable the target sums (``person_count``, ``snap`` ...)
period         int year the figure refers to (tax year, fiscal year, survey year)
value          float as published (dollars in dollars, not thousands)
unit           ``"person"`` | ``"household"`` | ``"tax_unit"`` | ``"usd"``
source         registered source name (``Census ACS S0101`` ...)
source_file    raw file name the value came from
modelled       bool: True when apportioned by a model rather than published for that geography
notes          free text
=============  ====================================================================================

All ETLs validate at the boundary: a malformed file raises ``TargetsInputError`` naming the file,
the key (GEO_ID, state, row, column) and what was expected. Nothing is written by an ETL.
"""
from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Sequence

import numpy as np
import pandas as pd

from ..areas import STATE_ABBR, STATE_FIPS, STATES, district_geoids, normalize_district_geoid
from ..raw_inputs import read_csv_file, shown

TARGET_COLUMNS = [
    "geo_level", "geo_id", "filer", "domain", "variable", "period", "value", "unit", "source",
    "source_file", "modelled", "notes",
]

GEO_LEVELS = ("national", "state", "district")
UNITS = ("person", "household", "tax_unit", "usd")
OPERATIONS = ("==", "!=", ">", ">=", "<", "<=")

STATE_FIPS_SET = frozenset(fips for _, fips, _, _ in STATES)
DISTRICT_SET = frozenset(district_geoids())
STATE_FIPS_BY_NAME = {name.lower(): fips for _, fips, name, _ in STATES}
# Census / FNS geographies that are not part of the 50 states + DC universe and are dropped
TERRITORY_STATE_FIPS = frozenset({60, 66, 69, 72, 78})


class TargetsInputError(ValueError):
    """A raw input file does not have the content an ETL expects."""


@dataclass(frozen=True)
class SourceInfo:
    """One raw file used by an ETL: provenance row of the ``sources`` table."""

    source: str
    file: str
    agency: str
    vintage: str
    description: str
    url: str = ""


@dataclass
class EtlResult:
    targets: pd.DataFrame
    sources: list[SourceInfo] = field(default_factory=list)


# --- constraint helpers -----------------------------------------------------------------------

def fmt_value(value) -> str:
    """String encoding of a constraint value: ints without a decimal point, ``True``/``False``."""
    if isinstance(value, (bool, np.bool_)):
        return "True" if value else "False"
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    value = float(value)
    if math.isfinite(value) and value == int(value):
        return str(int(value))
    return repr(value)


def band(variable: str, lo: float, hi: float) -> tuple[tuple[str, str, str], ...]:
    """Constraints of the half-open band ``lo <= variable < hi``; infinite bounds are omitted."""
    out = []
    if math.isfinite(lo):
        out.append((variable, ">=", fmt_value(lo)))
    if math.isfinite(hi):
        out.append((variable, "<", fmt_value(hi)))
    return tuple(out)


def domain(*parts: Iterable[tuple[str, str, str]]) -> tuple[tuple[str, str, str], ...]:
    """Concatenate constraint triples and sort them: the canonical ``domain`` cell."""
    return tuple(sorted(c for part in parts for c in part))


# --- target frame -----------------------------------------------------------------------------

def make_targets(*, geo_level: str, geo_ids: Sequence[int], variable: str, values: Sequence[float],
                 period: int, unit: str, source: str, source_file: str,
                 domain: tuple = (), filer: bool = False, modelled: bool = False,
                 notes: str = "") -> pd.DataFrame:
    """A target frame of ``len(geo_ids)`` rows sharing every field except geography and value.

    ``domain`` is stored sorted, so equal constraint sets compare equal."""
    domain = tuple(sorted(domain))
    geo_ids = np.asarray(geo_ids, dtype=np.int64)
    values = np.asarray(values, dtype=np.float64)
    if geo_ids.shape != values.shape:
        raise ValueError(f"geo_ids {geo_ids.shape} and values {values.shape} differ in shape")
    n = len(geo_ids)
    return pd.DataFrame({
        "geo_level": [geo_level] * n, "geo_id": geo_ids, "filer": [bool(filer)] * n,
        "domain": [domain] * n, "variable": [variable] * n,
        "period": np.full(n, int(period), dtype=np.int64), "value": values,
        "unit": [unit] * n, "source": [source] * n, "source_file": [source_file] * n,
        "modelled": [bool(modelled)] * n, "notes": [notes] * n,
    })


def concat_targets(frames: Iterable[pd.DataFrame]) -> pd.DataFrame:
    frames = [f for f in frames if len(f)]
    if not frames:
        return pd.DataFrame({c: [] for c in TARGET_COLUMNS})
    return pd.concat(frames, ignore_index=True)[TARGET_COLUMNS]


# --- file readers and validators --------------------------------------------------------------

def raw_file(raw_dir: str | os.PathLike, name: str) -> Path:
    path = Path(raw_dir) / name
    if not path.is_file():
        raise TargetsInputError(f"{path}: raw input file is missing (materialize raw_public_inputs)")
    return path


def read_census_json(path: Path) -> pd.DataFrame:
    """A Census API response (JSON list of lists, first row = header) as a frame of strings."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise TargetsInputError(
            f"{path.name}: not valid JSON ({exc}); expected a Census API list of lists"
        ) from exc
    if (not isinstance(data, list) or len(data) < 2
            or not all(isinstance(r, list) for r in data)):
        raise TargetsInputError(
            f"{path.name}: expected a JSON list of lists (header row + data rows)"
        )
    header = data[0]
    for i, row in enumerate(data[1:], start=1):
        if len(row) != len(header):
            raise TargetsInputError(
                f"{path.name}: data row {i} has {len(row)} fields, header has {len(header)}"
            )
    if len(set(header)) != len(header):
        dup = sorted({h for h in header if header.count(h) > 1})
        raise TargetsInputError(f"{path.name}: duplicated column(s) {dup} in the header row")
    return pd.DataFrame(data[1:], columns=header, dtype=object)


def require_columns(frame: pd.DataFrame, columns: Iterable[str], file: str) -> None:
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise TargetsInputError(
            f"{file}: missing column(s) {missing}; found {len(frame.columns)} columns"
        )


def read_csv_table(path: Path, expected: str, **kwargs) -> pd.DataFrame:
    """``pandas.read_csv`` through the one reading helper: an empty, truncated or unparsable
    file raises :class:`TargetsInputError` naming the file and what it should hold."""
    return read_csv_file(path, expected, TargetsInputError, **kwargs)


def numeric_columns(frame: pd.DataFrame, columns: Sequence[str], file: str,
                    key: pd.Series, *, nonnegative: bool = True,
                    finite: bool = True) -> pd.DataFrame:
    """Parse ``columns`` to float; a clear error naming the key for unparsable, infinite or
    negative cells.

    ``key`` labels each row (GEO_ID, state ...) in messages. Census marks suppressed or missing
    estimates with large negative sentinels (-666666666 ...): with ``nonnegative`` they are
    refused like any negative count. ``finite=False`` lets ``inf`` / ``-inf`` through (open
    AGI band edges).
    """
    columns = list(columns)
    out = frame[columns].apply(pd.to_numeric, errors="coerce").astype(np.float64)
    bad = out.isna().to_numpy()
    if finite:
        bad = bad | ~np.isfinite(out.to_numpy())
    if bad.any():
        r, c = np.argwhere(bad)[0]
        raise TargetsInputError(
            f"{file}: {key.name} {key.iloc[r]!r}, column {columns[c]}: value "
            f"{shown(frame[columns[c]].iloc[r])} is not a {'finite ' if finite else ''}number"
        )
    if nonnegative:
        neg = out.to_numpy() < 0
        if neg.any():
            r, c = np.argwhere(neg)[0]
            raise TargetsInputError(
                f"{file}: {key.name} {key.iloc[r]!r}, column {columns[c]}: negative count "
                f"{out.iloc[r, c]:g}; expected a non-negative number"
            )
    return out


def require_unique(keys: pd.Series, file: str) -> None:
    dup = keys[keys.duplicated()]
    if len(dup):
        raise TargetsInputError(
            f"{file}: duplicated row for {keys.name} {dup.iloc[0]!r}; expected one row per key"
        )


def require_complete(found: Iterable[int], expected: Iterable[int], file: str, what: str) -> None:
    missing = sorted(set(expected) - set(found))
    if missing:
        raise TargetsInputError(
            f"{file}: no row for {len(missing)} {what}(s), e.g. {missing[:5]}"
        )


def parse_state_geoid(geo_ids: pd.Series, file: str) -> pd.Series:
    """``0400000US06`` -> 6; territories -> -1 (dropped by callers); anything else is an error."""
    s = geo_ids.astype(str)
    ok = s.str.fullmatch(r"0400000US\d{2}")
    if not ok.all():
        raise TargetsInputError(
            f"{file}: GEO_ID {s[~ok].iloc[0]!r} is not a state GEO_ID (expected 0400000USss)"
        )
    fips = s.str[-2:].astype(int)
    known = fips.isin(STATE_FIPS_SET)
    territory = fips.isin(TERRITORY_STATE_FIPS)
    if not (known | territory).all():
        raise TargetsInputError(
            f"{file}: unknown GEO_ID {s[~(known | territory)].iloc[0]!r} (no such state)"
        )
    return fips.where(known, -1)


def parse_district_geoid(geo_ids: pd.Series, file: str) -> pd.Series:
    """``5001900US0612`` -> 612, ``...US0200`` (at-large) -> 201, DC ``1198`` -> 1101.

    Puerto Rico and ``ZZ`` (undefined water areas) -> -1, dropped by callers; any other unknown
    code is an error.
    """
    s = geo_ids.astype(str)
    ok = s.str.fullmatch(r"500\d{4}US\d{2}(\d{2}|ZZ)")
    if not ok.all():
        raise TargetsInputError(
            f"{file}: GEO_ID {s[~ok].iloc[0]!r} is not a district GEO_ID (expected 50019..USssdd)"
        )
    code = s.str[-4:]
    zz = code.str.endswith("ZZ")
    state = code.str[:2].astype(int)
    raw = pd.to_numeric(code.where(~zz, "0"), errors="coerce").astype(int)
    geoid = raw.map(normalize_district_geoid)
    territory = state.isin(TERRITORY_STATE_FIPS) | zz
    known = geoid.isin(DISTRICT_SET) & ~territory
    if not (known | territory).all():
        raise TargetsInputError(
            f"{file}: unknown GEO_ID {s[~(known | territory)].iloc[0]!r} "
            "(not a 119th-Congress district)"
        )
    return geoid.where(known, -1)


def state_abbr_to_fips(abbr: pd.Series, file: str) -> pd.Series:
    s = abbr.astype(str).str.strip().str.upper()
    fips = s.map(STATE_FIPS)
    territory = s.isin(["PR", "GU", "VI", "AS", "MP"])
    if (fips.isna() & ~territory).any():
        raise TargetsInputError(
            f"{file}: unknown state {s[fips.isna() & ~territory].iloc[0]!r} "
            "(expected a 2-letter abbreviation of a state or DC)"
        )
    return fips.fillna(-1).astype(int)


__all__ = [
    "TARGET_COLUMNS", "TargetsInputError", "SourceInfo", "EtlResult", "make_targets",
    "concat_targets", "band", "domain", "fmt_value", "STATE_ABBR", "ETL_NAMES", "run_all",
]

ETL_NAMES = ("acs_age", "acs_snap", "fns_snap", "cms_medicaid", "irs_soi", "irs_eitc")


def _registry() -> list[tuple[str, Callable[[Path], EtlResult]]]:
    from . import acs_age, acs_snap, cms_medicaid, fns_snap, irs_eitc, irs_soi

    return [
        ("acs_age", acs_age.extract), ("acs_snap", acs_snap.extract),
        ("fns_snap", fns_snap.extract), ("cms_medicaid", cms_medicaid.extract),
        ("irs_soi", irs_soi.extract), ("irs_eitc", irs_eitc.extract),
    ]


def run_all(raw_dir: str | os.PathLike) -> EtlResult:
    """Run every ETL on ``raw_dir``; concatenated targets and the sources they used."""
    frames, sources = [], []
    for _, extract in _registry():
        result = extract(Path(raw_dir))
        frames.append(result.targets)
        sources.extend(result.sources)
    return EtlResult(concat_targets(frames), sources)

