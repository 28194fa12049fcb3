"""The targets database: administrative calibration targets from real public statistics (SQLite).

Built by :func:`build_targets_db` from the raw folder (``raw_public_inputs``) by the ETLs in
``calibration_core.etl``; read by :func:`read_targets` and :func:`read_constraints`.

Tables
------
``strata(stratum_id, definition_hash UNIQUE, parent_stratum_id, kind, geo_level, geo_id, notes)``
    ``kind`` is ``geography`` | ``filers`` | ``domain``; ``geo_level`` is ``national`` | ``state``
    | ``district``; ``geo_id`` is ``"US"``, the state FIPS (``"6"``) or the district GEOID
    (``"612"``). ``definition_hash`` = sha256 of ``"<parent_stratum_id>|"`` + the sorted
    ``variable+operation+value`` constraint strings joined by newlines.
``stratum_constraints(stratum_id, constraint_variable, operation, value)``
    one row per predicate; a stratum is the set of entities satisfying all of its rows.
``targets(target_id, stratum_id, variable, period, reform_id, value, unit, source, source_file,
active, modelled, uprating_basis, uprating_factor, uprated_value, reconciliation_factor, notes)``
    ``value`` is the figure as published for ``period``; ``uprated_value = value *
    uprating_factor`` restates it for the DB's calibration year (``build_info``);
    ``reconciliation_factor`` (1 unless a rule of :mod:`calibration_core.etl.reconcile` scales
    the target to an administrative anchor) multiplies it into the calibration value.
    UNIQUE ``(stratum_id, variable, period, reform_id)``.
``sources(source, file, agency, vintage, description, url, sha256)``
    one row per raw file used; ``targets.source`` is one of these source names.
``reconciliation(rule, family, parent, anchor, scaled_sum, factor, children, applied, reason)``
    one row per (reconciliation rule, family, parent geography): the anchor, the scaled
    targets' sum before scaling, the factor applied (1 and a reason when not applied).
``growth_index(year, basis, value)``, ``build_info(key, value)``
    the uprating indices (``calibration_core.uprating``) and build facts (calibration year,
    schema version). No timestamps: equal inputs give a byte-identical file.
Views: ``stratum_domain(stratum_id, domain_variable)``, ``target_overview`` (one row per target
with geo_level, geo_id, domain, source, value, uprated value).

Strata and constraint encoding
------------------------------
* Geography: the root stratum "United States" (``geo_level = national``, ``geo_id = "US"``) has
  no constraints. Its 51 children (states incl. DC) have ``state_fips == <int>``; each state's
  children (436 districts of the 119th Congress in all) have ``congressional_district_geoid ==
  <int>`` with GEOID ``state_fips * 100 + district``, at-large states and DC as district 01
  (``calibration_core.areas``). Puerto Rico and ``ZZ`` rows of the sources are dropped.
* Filers: IRS SOI figures count filed returns; they hang under a per-geography "tax filers"
  stratum (parent = the geography) with the geography's constraint plus
  ``tax_unit_is_filer == 1``.
* Domains hang under the geography (or its filer stratum) and repeat its constraints, plus:
  age band ``age >= lo`` and ``age < hi + 1`` (ages are whole years; 85+ is ``age >= 85``);
  AGI band ``adjusted_gross_income >= lo`` and ``adjusted_gross_income < hi`` (an infinite bound
  is omitted; "no AGI" is ``< 1``); recipients ``snap > 0``, ``eitc > 0``,
  ``medicaid_enrolled == True``.
* Values are strings: integers without a decimal point, ``True``/``False`` for booleans.
* Count targets use ``person_count``, ``household_count``, ``tax_unit_count``: the number of
  entities of that type satisfying every constraint of the stratum. Dollar targets
  (``adjusted_gross_income``, ``snap``, ``eitc``) are sums over those entities.
* ``domain`` (in :func:`read_targets` and the views) = the sorted, comma-joined distinct
  constraint variables other than ``state_fips``, ``congressional_district_geoid`` and
  ``tax_unit_is_filer``; ``""`` when none.
"""
from __future__ import annotations

import hashlib
import math
import os
import re
import sqlite3
import time
from pathlib import Path

import numpy as np
import pandas as pd

from . import etl, uprating
from .areas import STATES, district_geoids
from .etl import TargetsInputError, reconcile
from .io_utils import atomic_path, sha256_file

SCHEMA_VERSION = "2"
CALIBRATION_YEAR = 2024
GEO_LEVELS = ("national", "state", "district")
GEO_VARIABLES = ("state_fips", "congressional_district_geoid")
NON_DOMAIN_VARIABLES = frozenset({*GEO_VARIABLES, "tax_unit_is_filer", "ucgid_str"})
FILER_CONSTRAINT = ("tax_unit_is_filer", "==", "1")
EXPECTED_GEOGRAPHIES = {"national": 1, "state": 51, "district": 436}

# (source, relation) pairs whose publisher promises that lower levels add up to the higher one.
# ACS subject tables tabulate the same survey for every geography, so districts sum to states and
# states to the nation. SOI state tables exclude returns filed from abroad / APO addresses that
# the national table includes, and the district file is a separate tabulation: gaps are reported.
PROMISED_ADDITIVE = frozenset({
    ("Census ACS S0101", "district->state"),
    ("Census ACS S0101", "state->national"),
})
ADDITIVE_RTOL = 1e-9

SCHEMA = """
CREATE TABLE build_info (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE sources (
    source TEXT NOT NULL, file TEXT NOT NULL, agency TEXT NOT NULL, vintage TEXT NOT NULL,
    description TEXT NOT NULL, url TEXT, sha256 TEXT NOT NULL,
    PRIMARY KEY (source, file));
CREATE TABLE strata (
    stratum_id INTEGER PRIMARY KEY,
    definition_hash TEXT NOT NULL UNIQUE,
    parent_stratum_id INTEGER REFERENCES strata(stratum_id),
    kind TEXT NOT NULL CHECK (kind IN ('geography', 'filers', 'domain')),
    geo_level TEXT NOT NULL CHECK (geo_level IN ('national', 'state', 'district')),
    geo_id TEXT NOT NULL,
    notes TEXT);
CREATE TABLE stratum_constraints (
    stratum_id INTEGER NOT NULL REFERENCES strata(stratum_id),
    constraint_variable TEXT NOT NULL,
    operation TEXT NOT NULL CHECK (operation IN ('==', '!=', '>', '>=', '<', '<=')),
    value TEXT NOT NULL,
    PRIMARY KEY (stratum_id, constraint_variable, operation));
CREATE TABLE targets (
    target_id INTEGER PRIMARY KEY,
    stratum_id INTEGER NOT NULL REFERENCES strata(stratum_id),
    variable TEXT NOT NULL,
    period INTEGER NOT NULL CHECK (period BETWEEN 2010 AND 2035),
    reform_id INTEGER NOT NULL DEFAULT 0,
    value REAL NOT NULL,
    unit TEXT NOT NULL CHECK (unit IN ('person', 'household', 'tax_unit', 'usd')),
    source TEXT NOT NULL,
    source_file TEXT NOT NULL,
    active INTEGER NOT NULL DEFAULT 1 CHECK (active IN (0, 1)),
    modelled INTEGER NOT NULL DEFAULT 0 CHECK (modelled IN (0, 1)),
    uprating_basis TEXT NOT NULL CHECK (uprating_basis IN ('count', 'cpi_u')),
    uprating_factor REAL NOT NULL,
    uprated_value REAL NOT NULL,
    reconciliation_factor REAL NOT NULL DEFAULT 1,
    notes TEXT,
    UNIQUE (stratum_id, variable, period, reform_id),
    FOREIGN KEY (source, source_file) REFERENCES sources(source, file));
CREATE TABLE reconciliation (
    rule TEXT NOT NULL, family TEXT NOT NULL, parent INTEGER NOT NULL, anchor REAL,
    scaled_sum REAL NOT NULL, factor REAL NOT NULL, children INTEGER NOT NULL,
    applied INTEGER NOT NULL, reason TEXT,
    PRIMARY KEY (rule, family, parent));
CREATE TABLE growth_index (
    year INTEGER NOT NULL, basis TEXT NOT NULL, value REAL NOT NULL,
    PRIMARY KEY (year, basis));
CREATE INDEX idx_strata_parent ON strata(parent_stratum_id);
CREATE INDEX idx_strata_geo ON strata(geo_level, geo_id);
CREATE INDEX idx_constraints_variable ON stratum_constraints(constraint_variable);
CREATE INDEX idx_targets_stratum ON targets(stratum_id);
CREATE INDEX idx_targets_variable_period ON targets(variable, period);
CREATE INDEX idx_targets_source ON targets(source);
CREATE VIEW stratum_domain AS
    SELECT DISTINCT stratum_id, constraint_variable AS domain_variable
    FROM stratum_constraints
    WHERE constraint_variable NOT IN
        ('state_fips', 'congressional_district_geoid', 'tax_unit_is_filer', 'ucgid_str');
CREATE VIEW target_overview AS
    SELECT t.target_id, t.stratum_id, t.variable, t.reform_id, t.period, t.value,
           t.uprating_factor, t.uprated_value, t.unit, t.source, t.source_file, t.active,
           t.modelled, s.geo_level, s.geo_id, s.kind AS stratum_kind,
           (SELECT group_concat(domain_variable, ',') FROM
                (SELECT domain_variable FROM stratum_domain d
                 WHERE d.stratum_id = t.stratum_id ORDER BY domain_variable)) AS domain_variable
    FROM targets t JOIN strata s USING (stratum_id);
CREATE VIEW geography_summary AS
    SELECT geo_level, count(DISTINCT geo_id) AS geographies, count(*) AS targets
    FROM target_overview GROUP BY geo_level;
"""


class TargetsDBError(ValueError):
    """The built database fails a validation rule; the previous database is left in place."""


# --- build ------------------------------------------------------------------------------------

def _level_order(levels: pd.Series) -> pd.Series:
    return levels.map({lvl: i for i, lvl in enumerate(GEO_LEVELS)})


def _geo_id_text(level: str, geo_id: int) -> str:
    return "US" if level == "national" else str(int(geo_id))


def _geo_constraints(level: str, geo_id: int) -> list[tuple[str, str, str]]:
    if level == "national":
        return []
    if level == "state":
        return [("state_fips", "==", str(int(geo_id)))]
    return [("congressional_district_geoid", "==", str(int(geo_id)))]


def _domain_key(domain: tuple) -> str:
    return "|".join(f"{v}{op}{val}" for v, op, val in domain)


def _definition_hash(parent: int | None, constraints: list[tuple[str, str, str]]) -> str:
    text = f"{'' if parent is None else parent}|" + "\n".join(
        sorted(f"{v}{op}{val}" for v, op, val in constraints))
    return hashlib.sha256(text.encode()).hexdigest()


def _strata_tables(targets: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """Strata, their constraints, and ``targets`` with a ``stratum_id`` column.

    Ids are deterministic: the 488 geographies first (nation, states by FIPS, districts by
    GEOID), then filer strata, then domain strata ordered by (domain, level, geography).
    """
    geo_rows = [("national", 0, None)]
    geo_rows += [("state", fips, 1) for _, fips, _, _ in STATES]
    state_ids = {fips: i + 2 for i, (_, fips, _, _) in enumerate(STATES)}
    geo_rows += [("district", g, state_ids[g // 100]) for g in district_geoids()]
    strata = [{"stratum_id": i + 1, "kind": "geography", "geo_level": lvl, "geo": gid,
               "parent": parent, "filer": False, "domain": (),
               "notes": ("United States" if lvl == "national" else f"{lvl} {gid}")}
              for i, (lvl, gid, parent) in enumerate(geo_rows)]
    geo_index = {(s["geo_level"], s["geo"]): s["stratum_id"] for s in strata}

    keys = targets[["geo_level", "geo_id", "filer", "domain"]].copy()
    keys["domain_key"] = keys["domain"].map(_domain_key)
    keys["order"] = _level_order(keys["geo_level"])
    unknown = [k for k in zip(keys["geo_level"], keys["geo_id"]) if k not in geo_index]
    if unknown:
        raise TargetsDBError(f"targets for unknown geographies, e.g. {unknown[:3]}")
    filers = (keys[keys["filer"]].drop_duplicates(["geo_level", "geo_id"])
              .sort_values(["order", "geo_id"]))
    filer_index = {}
    for lvl, gid in zip(filers["geo_level"], filers["geo_id"]):
        sid = len(strata) + 1
        filer_index[(lvl, gid)] = sid
        strata.append({"stratum_id": sid, "kind": "filers", "geo_level": lvl, "geo": gid,
                       "parent": geo_index[(lvl, gid)], "filer": True, "domain": (),
                       "notes": f"{lvl} {gid} - tax filers"})
    doms = (keys[keys["domain_key"] != ""]
            .drop_duplicates(["geo_level", "geo_id", "filer", "domain_key"])
            .sort_values(["domain_key", "order", "geo_id", "filer"]))
    for lvl, gid, filer, dom, dkey in zip(doms["geo_level"], doms["geo_id"], doms["filer"],
                                          doms["domain"], doms["domain_key"]):
        parent = filer_index[(lvl, gid)] if filer else geo_index[(lvl, gid)]
        strata.append({"stratum_id": len(strata) + 1, "kind": "domain", "geo_level": lvl,
                       "geo": gid, "parent": parent, "filer": bool(filer), "domain": dom,
                       "notes": f"{lvl} {gid}{' filers' if filer else ''}: {dkey}"})

    constraint_rows, hashes = [], []
    for s in strata:
        cons = _geo_constraints(s["geo_level"], s["geo"])
        if s["filer"]:
            cons.append(FILER_CONSTRAINT)
        cons += list(s["domain"])
        hashes.append(_definition_hash(s["parent"], cons))
        constraint_rows += [(s["stratum_id"], v, op, val) for v, op, val in cons]
    strata_df = pd.DataFrame(strata)
    strata_df["definition_hash"] = hashes
    strata_df["geo_id"] = [_geo_id_text(lvl, g) for lvl, g in
                           zip(strata_df["geo_level"], strata_df["geo"])]
    constraints = pd.DataFrame(constraint_rows, columns=["stratum_id", "constraint_variable",
                                                         "operation", "value"])
    dup = constraints.duplicated(["stratum_id", "constraint_variable", "operation"])
    if dup.any():
        raise TargetsDBError(f"stratum {constraints[dup].iloc[0]['stratum_id']} repeats the "
                             f"constraint {tuple(constraints[dup].iloc[0])[1:]}")

    lookup = pd.DataFrame({
        "geo_level": strata_df["geo_level"], "geo_id": strata_df["geo"],
        "filer": strata_df["filer"], "domain_key": strata_df["domain"].map(_domain_key),
        "stratum_id": strata_df["stratum_id"],
    })
    out = targets.assign(domain_key=keys["domain_key"]).merge(
        lookup, on=["geo_level", "geo_id", "filer", "domain_key"], how="left", validate="m:1")
    if out["stratum_id"].isna().any():
        raise TargetsDBError("internal error: a target has no stratum")
    return strata_df, constraints, out


def _check_target_frame(targets: pd.DataFrame) -> None:
    """Duplicates, non-finite values and negative counts -> TargetsInputError naming the file."""
    key_cols = ["geo_level", "geo_id", "filer", "domain", "variable", "period"]
    dup = targets.duplicated(key_cols, keep=False)
    if dup.any():
        rows = targets[dup].sort_values(["geo_level", "geo_id", "variable"]).head(2)
        first = rows.iloc[0]
        raise TargetsInputError(
            f"{' and '.join(sorted(set(rows['source_file'])))}: duplicated target for "
            f"{first['geo_level']} {first['geo_id']}, {first['variable']} "
            f"[{_domain_key(first['domain'])}] period {first['period']}")
    bad = ~np.isfinite(targets["value"].to_numpy(dtype=float))
    neg = targets["variable"].str.endswith("_count") & (targets["value"] < 0)
    for mask, what in ((bad, "non-finite value"), (neg.to_numpy(), "negative count")):
        if mask.any():
            row = targets[mask].iloc[0]
            raise TargetsInputError(
                f"{row['source_file']}: {what} {row['value']} for {row['geo_level']} "
                f"{row['geo_id']}, {row['variable']} [{_domain_key(row['domain'])}]")


def _sources_frame(sources: list[etl.SourceInfo], raw_dir: Path) -> pd.DataFrame:
    rows = {}
    for s in sources:
        rows[(s.source, s.file)] = {
            "source": s.source, "file": s.file, "agency": s.agency, "vintage": s.vintage,
            "description": s.description, "url": s.url,
            "sha256": sha256_file(raw_dir / s.file),
        }
    return pd.DataFrame(sorted(rows.values(), key=lambda r: (r["source"], r["file"])))


def _rows(frame: pd.DataFrame) -> list[tuple]:
    """Rows as tuples of plain Python scalars (column-wise conversion, no per-cell pandas)."""
    return list(zip(*(frame[c].tolist() for c in frame.columns)))


def _write(path: Path, strata: pd.DataFrame, constraints: pd.DataFrame, targets: pd.DataFrame,
           sources: pd.DataFrame, growth: pd.DataFrame, year: int,
           reconciliation: pd.DataFrame) -> None:
    con = sqlite3.connect(path)
    try:
        con.execute("PRAGMA foreign_keys = ON")
        con.executescript(SCHEMA)
        with con:
            con.executemany("INSERT INTO build_info VALUES (?, ?)", [
                ("calibration_year", str(year)), ("schema_version", SCHEMA_VERSION)])
            con.executemany("INSERT INTO sources VALUES (?, ?, ?, ?, ?, ?, ?)",
                            _rows(sources[["source", "file", "agency", "vintage", "description",
                                           "url", "sha256"]]))
            con.executemany(
                "INSERT INTO strata VALUES (?, ?, ?, ?, ?, ?, ?)",
                zip(strata["stratum_id"].astype(int).tolist(), strata["definition_hash"],
                    [None if p is None or (isinstance(p, float) and math.isnan(p)) else int(p)
                     for p in strata["parent"]],
                    strata["kind"], strata["geo_level"], strata["geo_id"], strata["notes"]))
            con.executemany("INSERT INTO stratum_constraints VALUES (?, ?, ?, ?)",
                            _rows(constraints.astype({"stratum_id": int})))
            cols = ["target_id", "stratum_id", "variable", "period", "reform_id", "value",
                    "unit", "source", "source_file", "active", "modelled", "uprating_basis",
                    "uprating_factor", "uprated_value", "reconciliation_factor", "notes"]
            rows = targets[cols].astype({"target_id": int, "stratum_id": int, "period": int,
                                         "reform_id": int, "active": int, "modelled": int})
            con.executemany(f"INSERT INTO targets VALUES ({', '.join('?' * len(cols))})",
                            _rows(rows))
            con.executemany(
                "INSERT INTO reconciliation VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                _rows(reconciliation[list(reconcile.REPORT_COLUMNS)].astype(
                    {"parent": int, "children": int, "applied": int})))
            con.executemany("INSERT INTO growth_index VALUES (?, ?, ?)",
                            _rows(growth[["year", "basis", "index"]].astype({"year": int})))
        con.execute("VACUUM")
    finally:
        con.close()


def validate_db(db_path: str | os.PathLike) -> None:
    """Raise TargetsDBError unless the file has exactly 1/51/436 geographies, no duplicate
    (stratum, variable, period), every target on an existing stratum, every stratum but the root
    with constraints, and integrity_check ok."""
    con = sqlite3.connect(f"file:{Path(db_path)}?mode=ro", uri=True)
    try:
        if con.execute("PRAGMA integrity_check").fetchone()[0] != "ok":
            raise TargetsDBError(f"{db_path}: SQLite integrity_check failed")
        counts = geography_counts_con(con)
        if counts != EXPECTED_GEOGRAPHIES:
            raise TargetsDBError(f"{db_path}: geographies {counts}, expected "
                                 f"{EXPECTED_GEOGRAPHIES}")
        dup = con.execute("SELECT stratum_id, variable, period, count(*) FROM targets GROUP BY "
                          "1, 2, 3 HAVING count(*) > 1 LIMIT 1").fetchone()
        if dup:
            raise TargetsDBError(f"{db_path}: duplicated target {dup[:3]}")
        orphan = con.execute("SELECT count(*) FROM targets WHERE stratum_id NOT IN "
                             "(SELECT stratum_id FROM strata)").fetchone()[0]
        bare = con.execute("SELECT count(*) FROM strata WHERE stratum_id NOT IN (SELECT "
                           "stratum_id FROM stratum_constraints) AND parent_stratum_id IS NOT "
                           "NULL").fetchone()[0]
        if orphan or bare:
            raise TargetsDBError(f"{db_path}: {orphan} targets without a stratum, {bare} "
                                 "non-root strata without constraints")
    finally:
        con.close()


def build_targets_db(raw_dir: str | os.PathLike, db_path: str | os.PathLike,
                     year: int = CALIBRATION_YEAR) -> dict:
    """Run every ETL on ``raw_dir`` and write the SQLite database ``db_path`` atomically.

    The database is built in a temporary file beside ``db_path``, validated
    (:func:`validate_db`), then renamed over it: on any error (bad input, failed validation) the
    previous ``db_path`` is left byte-identical. Same inputs give a byte-identical file.

    Returns a summary: ``targets`` (total), ``by_source`` / ``by_level`` / ``by_source_level``
    (counts), ``strata``, ``seconds``, ``sha256``.
    """
    start = time.perf_counter()
    raw_dir = Path(raw_dir)
    result = etl.run_all(raw_dir)
    targets = result.targets
    _check_target_frame(targets)
    growth = uprating.growth_index(raw_dir)
    strata, constraints, targets = _strata_tables(targets)
    targets = targets.sort_values(["stratum_id", "variable", "period"]).reset_index(drop=True)
    targets["target_id"] = np.arange(1, len(targets) + 1)
    targets["reform_id"] = 0
    targets["active"] = 1
    targets["uprating_basis"] = uprating.basis_for(targets["variable"])
    targets["uprating_factor"] = uprating.uprating_factors(
        targets["period"], targets["uprating_basis"], year, growth)
    targets["uprated_value"] = targets["value"] * targets["uprating_factor"]
    targets["reconciliation_factor"], reconciliation = reconcile.reconcile(
        targets, targets["uprated_value"].to_numpy(), year=year)
    sources = _sources_frame(result.sources, raw_dir)
    db_path = Path(db_path)
    with atomic_path(db_path, suffix=".db.tmp") as tmp:
        tmp.unlink()  # sqlite creates the file itself
        _write(tmp, strata, constraints, targets, sources, growth, year, reconciliation)
        validate_db(tmp)
    by_source_level = (targets.groupby(["source", "geo_level"]).size()
                       .rename("targets").reset_index())
    return {
        "targets": int(len(targets)),
        "strata": int(len(strata)),
        "by_source": {k: int(v) for k, v in targets.groupby("source").size().items()},
        "by_level": {k: int(v) for k, v in targets.groupby("geo_level").size().items()},
        "by_source_level": by_source_level,
        "modelled": int(targets["modelled"].sum()),
        "reconciliation": reconciliation,
        "seconds": time.perf_counter() - start,
        "sha256": sha256_file(db_path),
    }


# --- reading API ------------------------------------------------------------------------------

def _connect_ro(db_path: str | os.PathLike) -> sqlite3.Connection:
    path = Path(db_path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: targets database not found (materialize targets_db)")
    return sqlite3.connect(f"file:{path.resolve()}?mode=ro", uri=True)


def read_reconciliation(db_path: str | os.PathLike) -> pd.DataFrame:
    """The ``reconciliation`` table: one row per (rule, family, parent geography), sorted."""
    con = _connect_ro(db_path)
    try:
        return pd.read_sql_query("SELECT * FROM reconciliation ORDER BY rule, family, parent",
                                 con)
    finally:
        con.close()


def read_constraints(db_path: str | os.PathLike) -> pd.DataFrame:
    """Every stratum constraint: columns stratum_id:int, constraint_variable:str,
    operation:str (``== != > >= < <=``), value:str; sorted by stratum_id, variable."""
    with _connect_ro(db_path) as con:
        df = pd.read_sql_query(
            "SELECT stratum_id, constraint_variable, operation, value FROM stratum_constraints "
            "ORDER BY stratum_id, constraint_variable, operation", con)
    con.close()
    return df.astype({"stratum_id": np.int64, "constraint_variable": str, "operation": str,
                      "value": str})


def _domains(constraints: pd.DataFrame) -> pd.Series:
    dom = constraints[~constraints["constraint_variable"].isin(NON_DOMAIN_VARIABLES)]
    return (dom.drop_duplicates(["stratum_id", "constraint_variable"])
            .sort_values(["stratum_id", "constraint_variable"])
            .groupby("stratum_id")["constraint_variable"].agg(",".join))


def read_targets(db_path: str | os.PathLike, year: int = CALIBRATION_YEAR) -> pd.DataFrame:
    """One row per (stratum, variable): the active target of the latest period ``<= year``
    (else the earliest period), uprated to ``year``.

    Columns: target_id:int, stratum_id:int, variable:str, period:int, value:float (uprated to
    ``year`` and reconciled: ``original_value * uprating_factor * reconciliation_factor``),
    original_value:float (as published for ``period``), uprating_factor:float,
    reconciliation_factor:float (1 unless a reconciliation rule scaled it; computed at the DB's
    calibration year), source:str, unit:str, geo_level:str (national|state|district),
    geo_id:str ("US", "6", "612"), domain:str (sorted comma-joined non-geographic constraint
    variables, "" if none; ``tax_unit_is_filer`` is not a domain variable), modelled:bool. Sorted by target_id.
    """
    con = _connect_ro(db_path)
    try:
        t = pd.read_sql_query(
            "SELECT t.target_id, t.stratum_id, t.variable, t.period, t.value AS original_value, "
            "t.uprating_basis, t.uprating_factor, t.reconciliation_factor, t.source, t.unit, "
            "t.modelled, s.geo_level, "
            "s.geo_id FROM targets t JOIN strata s USING (stratum_id) "
            "WHERE t.active = 1 AND t.reform_id = 0", con)
        built_year = int(con.execute("SELECT value FROM build_info WHERE key = "
                                     "'calibration_year'").fetchone()[0])
        growth = pd.read_sql_query("SELECT year, basis, value AS 'index' FROM growth_index", con)
        cons = pd.read_sql_query("SELECT stratum_id, constraint_variable FROM "
                                 "stratum_constraints", con)
    finally:
        con.close()
    # period selection per (stratum, variable): latest <= year, else earliest
    t["_eligible"] = t["period"] <= year
    t["_rank"] = np.where(t["_eligible"], -t["period"], t["period"] + 10_000)
    t = (t.sort_values(["stratum_id", "variable", "_rank"])
         .drop_duplicates(["stratum_id", "variable"], keep="first"))
    if int(year) != built_year:
        t["uprating_factor"] = uprating.uprating_factors(t["period"], t["uprating_basis"],
                                                         int(year), growth)
    t["value"] = t["original_value"] * t["uprating_factor"] * t["reconciliation_factor"]
    t["domain"] = t["stratum_id"].map(_domains(cons)).fillna("")
    t["modelled"] = t["modelled"].astype(bool)
    cols = ["target_id", "stratum_id", "variable", "period", "value", "original_value",
            "uprating_factor", "reconciliation_factor", "source", "unit", "geo_level", "geo_id",
            "domain", "modelled"]
    out = t[cols].sort_values("target_id").reset_index(drop=True)
    return out.astype({"target_id": np.int64, "stratum_id": np.int64, "period": np.int64,
                       "value": float, "original_value": float, "uprating_factor": float,
                       "reconciliation_factor": float, "variable": str, "source": str,
                       "unit": str, "geo_level": str,
                       "geo_id": str, "domain": str})


# --- checks (used by the asset checks) --------------------------------------------------------

def geography_counts_con(con: sqlite3.Connection) -> dict[str, int]:
    rows = con.execute("SELECT geo_level, count(DISTINCT geo_id) FROM strata WHERE kind = "
                       "'geography' GROUP BY geo_level").fetchall()
    return {level: int(n) for level, n in rows}


def geography_counts(db_path: str | os.PathLike) -> dict[str, int]:
    """Number of geographic strata per level, e.g. ``{"national": 1, "state": 51, ...}``."""
    con = _connect_ro(db_path)
    try:
        return geography_counts_con(con)
    finally:
        con.close()


def duplicate_targets(db_path: str | os.PathLike) -> pd.DataFrame:
    """(stratum_id, variable, period, n) for every key held by more than one target row."""
    con = _connect_ro(db_path)
    try:
        return pd.read_sql_query("SELECT stratum_id, variable, period, count(*) AS n FROM "
                                 "targets GROUP BY 1, 2, 3 HAVING count(*) > 1", con)
    finally:
        con.close()


def additivity_report(db_path: str | os.PathLike) -> pd.DataFrame:
    """Sum of child-geography targets against the parent target, per additive family.

    A family is (source, variable, period, non-geographic constraints); relations are
    ``district->state`` and ``state->national``, compared on published values of the same period.
    One row per (family, relation) that has both levels: parents, complete_parents (parents all
    of whose children are present), sum_children, sum_parents, max_rel_gap (over complete
    parents), promised (in PROMISED_ADDITIVE), ok (not promised, or max_rel_gap <= 1e-9).
    """
    con = _connect_ro(db_path)
    try:
        t = pd.read_sql_query(
            "SELECT t.stratum_id, t.variable, t.period, t.value, t.source, s.geo_level, s.geo_id "
            "FROM targets t JOIN strata s USING (stratum_id) WHERE t.active = 1", con)
        cons = pd.read_sql_query("SELECT stratum_id, constraint_variable, operation, value "
                                 "FROM stratum_constraints", con)
    finally:
        con.close()
    cons = cons[~cons["constraint_variable"].isin(GEO_VARIABLES)]
    fam = (cons.assign(c=cons["constraint_variable"] + cons["operation"] + cons["value"])
           .sort_values(["stratum_id", "c"]).groupby("stratum_id")["c"].agg("|".join))
    t["family"] = t["stratum_id"].map(fam).fillna("")
    t["geo"] = np.where(t["geo_level"] == "national", 0,
                        pd.to_numeric(t["geo_id"], errors="coerce").fillna(0)).astype(int)
    expected_children = {("district", s): n for _, s, _, n in STATES}
    rows = []
    key = ["source", "variable", "period", "family"]
    for child_level, parent_level, relation in (("district", "state", "district->state"),
                                                ("state", "national", "state->national")):
        child = t[t["geo_level"] == child_level].copy()
        parent = t[t["geo_level"] == parent_level].copy()
        child["parent_geo"] = child["geo"] // 100 if child_level == "district" else 0
        sums = (child.groupby([*key, "parent_geo"])
                .agg(children=("value", "size"), sum_children=("value", "sum")).reset_index())
        merged = parent.rename(columns={"geo": "parent_geo"}).merge(sums, on=[*key, "parent_geo"])
        if merged.empty:
            continue
        if child_level == "district":
            need = merged["parent_geo"].map(lambda s: expected_children[("district", s)])
        else:
            need = pd.Series(51, index=merged.index)
        merged["complete"] = merged["children"] == need
        gap = (merged["sum_children"] - merged["value"]).abs() / merged["value"].abs().clip(1e-12)
        merged["rel_gap"] = np.where(merged["complete"], gap, np.nan)
        for k, g in merged.groupby(key):
            promised = (k[0], relation) in PROMISED_ADDITIVE
            max_gap = float(np.nanmax(g["rel_gap"])) if g["complete"].any() else float("nan")
            rows.append({
                "source": k[0], "variable": k[1], "period": int(k[2]), "family": k[3],
                "relation": relation, "parents": int(len(g)),
                "complete_parents": int(g["complete"].sum()),
                "sum_children": float(g["sum_children"].sum()),
                "sum_parents": float(g["value"].sum()), "max_rel_gap": max_gap,
                "promised": promised,
                "ok": (not promised) or (g["complete"].all() and max_gap <= ADDITIVE_RTOL),
            })
    return pd.DataFrame(rows, columns=["source", "variable", "period", "family", "relation",
                                       "parents", "complete_parents", "sum_children",
                                       "sum_parents", "max_rel_gap", "promised", "ok"])


def hierarchy_gaps(db_path: str | os.PathLike, year: int = CALIBRATION_YEAR) -> pd.DataFrame:
    """Gaps between levels in the values the calibration uses (uprated and reconciled, the
    period :func:`read_targets` selects), across sources and periods.

    A family is (variable, non-geographic constraints incl. the filer constraint); relations
    ``district->state`` and ``state->national``. One row per (family, relation) with both
    levels: child_sources / parent_sources, child_periods / parent_periods, complete_parents,
    sum_children, sum_parents (complete parents only), rel_gap = sum_children / sum_parents
    - 1, max_abs_rel_gap over complete parents. A fit given both levels cannot meet both where
    the gap is not 0; :mod:`calibration_core.etl.reconcile` removes the gaps it has a rule for.
    """
    t = read_targets(db_path, year)
    cons = read_constraints(db_path)
    cons = cons[~cons["constraint_variable"].isin(GEO_VARIABLES)]
    fam = (cons.assign(c=cons["constraint_variable"] + cons["operation"] + cons["value"])
           .sort_values(["stratum_id", "c"]).groupby("stratum_id")["c"].agg("|".join))
    t["family"] = t["variable"] + "/" + t["stratum_id"].map(fam).fillna("")
    t["geo"] = np.where(t["geo_level"] == "national", 0,
                        pd.to_numeric(t["geo_id"], errors="coerce").fillna(0)).astype(int)
    per_state = {fips: n for _, fips, _, n in STATES}
    rows = []
    for child_level, parent_level, relation in (("district", "state", "district->state"),
                                                ("state", "national", "state->national")):
        child = t[t["geo_level"] == child_level].copy()
        parent = t[t["geo_level"] == parent_level].copy()
        child["parent_geo"] = child["geo"] // 100 if child_level == "district" else 0
        sums = (child.groupby(["family", "parent_geo"])
                .agg(children=("value", "size"), sum_children=("value", "sum"),
                     child_sources=("source", lambda s: ",".join(sorted(set(s)))),
                     child_periods=("period", lambda s: ",".join(map(str, sorted(set(s))))))
                .reset_index())
        merged = parent.rename(columns={"geo": "parent_geo"}).merge(
            sums, on=["family", "parent_geo"])
        if merged.empty:
            continue
        need = (merged["parent_geo"].map(per_state) if child_level == "district"
                else pd.Series(51, index=merged.index))
        merged = merged[merged["children"] == need]
        for family, g in merged.groupby("family"):
            gap = g["sum_children"] / g["value"].where(g["value"] != 0) - 1
            rows.append({
                "family": family, "relation": relation,
                "child_sources": ",".join(sorted(set(",".join(g["child_sources"]).split(",")))),
                "parent_sources": ",".join(sorted(set(g["source"]))),
                "child_periods": ",".join(sorted(set(",".join(g["child_periods"]).split(",")))),
                "parent_periods": ",".join(map(str, sorted(set(g["period"])))),
                "complete_parents": int(len(g)),
                "sum_children": float(g["sum_children"].sum()),
                "sum_parents": float(g["value"].sum()),
                "rel_gap": float(g["sum_children"].sum() / g["value"].sum() - 1)
                if g["value"].sum() else float("nan"),
                "max_abs_rel_gap": float(np.nanmax(np.abs(gap))) if gap.notna().any()
                else float("nan"),
            })
    return pd.DataFrame(rows, columns=["family", "relation", "child_sources", "parent_sources",
                                       "child_periods", "parent_periods", "complete_parents",
                                       "sum_children", "sum_parents", "rel_gap",
                                       "max_abs_rel_gap"])


_VARIABLE_CLASS = re.compile(rb"^class\s+(\w+)\s*\(\s*Variable\s*\)", re.M)


def policyengine_variable_names(package: str = "policyengine_us") -> frozenset[str]:
    """Names of every ``class <name>(Variable)`` under the package's ``variables/`` tree.

    Reads the installed package's source files (located with importlib, not imported: importing
    policyengine_us takes about a minute), so the check runs in well under a second.
    """
    import importlib.util

    spec = importlib.util.find_spec(package)
    if spec is None or spec.origin is None:
        raise ModuleNotFoundError(f"{package} is not installed")
    root = Path(spec.origin).parent / "variables"
    names: set[str] = set()
    for folder, _, files in os.walk(root):
        for name in files:
            if name.endswith(".py"):
                names.update(m.decode() for m in
                             _VARIABLE_CLASS.findall((Path(folder) / name).read_bytes()))
    return frozenset(names)


def unknown_variables(db_path: str | os.PathLike,
                      known: frozenset[str] | set[str]) -> dict[str, list[str]]:
    """Target variables and constraint variables of the database that are not in ``known``."""
    con = _connect_ro(db_path)
    try:
        targets = {r[0] for r in con.execute("SELECT DISTINCT variable FROM targets")}
        constraint = {r[0] for r in con.execute(
            "SELECT DISTINCT constraint_variable FROM stratum_constraints")}
    finally:
        con.close()
    return {"target_variables": sorted(targets - set(known)),
            "constraint_variables": sorted(constraint - set(known))}
