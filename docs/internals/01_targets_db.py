"""Walk-through 1: the targets database (``calibration_core.targets_db``, asset ``targets_db``).

Run: ``python docs/internals/01_targets_db.py`` (about 15 s; toy inputs, no network).

The targets database is a SQLite file of administrative statistics that the weights must
reproduce: Census ACS age bands and SNAP households, USDA FNS SNAP, CMS Medicaid, IRS SOI
returns and AGI by AGI band, and the EITC. Every figure is attached to a *stratum*, a set of
entities defined by constraints (``state_fips == 6``, ``age >= 5``, ``age < 10`` ...), and the
strata form a tree: nation -> 51 states -> 436 districts, each with its filer stratum and its
domain strata (age bands, AGI bands, program recipients).

This script writes small raw files in the agencies' real formats (Census API JSON, the FNS
National Data Bank zip of workbooks, the CMS and IRS CSVs; the same writers the tests use, with
synthetic values), builds the database with the real ETLs, and reads it back through the
reading API the calibration package uses.
"""
from __future__ import annotations

import sqlite3

import _walk  # noqa: F401  (puts the repository on sys.path)
import pandas as pd

from calibration_core import targets_db as tdb
from calibration_core.etl import TargetsInputError
from calibration_core.io_utils import sha256_file
from tests.targets_fixtures import write_raw_folder

OUT = _walk.out_dir("01_targets_db")

# ---------------------------------------------------------------------------------------------
_walk.section("1. Raw files in the real formats")
# The real files come from the raw_public_inputs asset (see docs/data.md); here the test
# fixture writers produce the same formats with synthetic, internally consistent values
# (district age bands sum to the state ones, states to the nation, as in the real ACS).
raw = write_raw_folder(OUT / "raw", with_districts_soi=True)
files = pd.DataFrame([{"file": p.name, "bytes": p.stat().st_size}
                      for p in sorted(raw.iterdir())])
_walk.show(files)

# ---------------------------------------------------------------------------------------------
_walk.section("2. Build: every ETL, strata, uprating, validation, atomic rename")
# build_targets_db runs the six ETLs (calibration_core/etl/), turns each target's
# (geography, filer, domain) into a stratum, uprates each value to 2024 and writes the file in
# a temporary path that is validated before it replaces targets.db.
db = OUT / "targets.db"
summary = tdb.build_targets_db(raw, db)
print(f"{summary['targets']} targets in {summary['strata']} strata, "
      f"built in {summary['seconds']:.1f} s, sha256 {summary['sha256'][:16]}...")
table = summary["by_source_level"].pivot_table(index="source", columns="geo_level",
                                               values="targets", aggfunc="sum", fill_value=0)
table["total"] = table.sum(axis=1)
_walk.show(table.reset_index())
_walk.bar_plot(table.index, table["total"], "targets per source (toy inputs)",
               OUT / "targets_per_source.png", "targets")

# ---------------------------------------------------------------------------------------------
_walk.section("3. The strata tree: nation -> state -> district -> filers -> domains")
with sqlite3.connect(db) as con:
    strata = pd.read_sql_query("SELECT * FROM strata", con)
print(strata.groupby(["kind", "geo_level"]).size().rename("strata").reset_index()
      .to_markdown(index=False))
print("\nThe path from the root to one AGI-band stratum of California's 12th district:")
ca12 = strata[(strata.geo_level == "district") & (strata.geo_id == "612")]
leaf = int(ca12[ca12.notes.str.contains("adjusted_gross_income>=50000")].stratum_id.iloc[0])
chain, sid = [], leaf
by_id = strata.set_index("stratum_id")
while sid is not None and not pd.isna(sid):
    chain.append(int(sid))
    sid = by_id.loc[int(sid), "parent_stratum_id"]
_walk.show(by_id.loc[chain[::-1], ["parent_stratum_id", "kind", "geo_level", "geo_id", "notes"]]
           .reset_index())

# ---------------------------------------------------------------------------------------------
_walk.section("4. Constraints: each stratum repeats its parents' constraints")
# read_constraints is what the matrix builder evaluates on simulated households: an entity is
# in a stratum when it satisfies every row. Values are strings; counts of entities satisfying
# the constraints are person_count / household_count / tax_unit_count targets.
cons = tdb.read_constraints(db)
_walk.show(cons[cons.stratum_id.isin(chain)])

# ---------------------------------------------------------------------------------------------
_walk.section("5. target_overview: one row per target, with geography and domain")
with sqlite3.connect(db) as con:
    overview = pd.read_sql_query(
        "SELECT target_id, stratum_id, variable, period, value, uprating_factor, uprated_value, "
        "source, geo_level, geo_id, domain_variable FROM target_overview "
        "WHERE geo_id IN ('6', '612') ORDER BY geo_level, source, target_id", con).fillna("")
print("California (state 6) and its 12th district, a few rows per source:")
_walk.show(overview.groupby(["geo_id", "source"]).head(3), max_rows=30)

# ---------------------------------------------------------------------------------------------
_walk.section("6. read_targets: one period per (stratum, variable), uprated to 2024")
# IRS SOI national tables exist for 2021-2023: read_targets takes the latest period <= 2024
# and restates it with the growth index (CPI-U for dollars, taxdata's tax-unit weights for
# counts). The toy growfactors.csv has CPI-U growth of 3 % a year.
targets = tdb.read_targets(db)
soi_nat = targets[(targets.source == "IRS SOI") & (targets.geo_level == "national")]
_walk.show(soi_nat[["target_id", "variable", "period", "original_value", "uprating_factor",
                    "value", "domain"]].head(6))
_walk.show(targets.groupby(["source", "geo_level", "variable", "domain"]).size()
           .rename("targets").reset_index())

# ---------------------------------------------------------------------------------------------
_walk.section("7. The checks the targets_db asset runs")
print("geography_counts:", tdb.geography_counts(db))
print("duplicate_targets:", len(tdb.duplicate_targets(db)), "rows")
add = tdb.additivity_report(db)
_walk.show(add.groupby(["source", "relation", "promised"], as_index=False)
           .agg(families=("family", "size"), ok=("ok", "all"),
                max_rel_gap=("max_rel_gap", "max")))
print("(IRS SOI gaps are reported, not failed: its state and district tables are separate "
      "tabulations; the toy SOI values are not made to add up)")
known = tdb.policyengine_variable_names()
print(f"unknown variables (against {len(known)} policyengine-us variables):",
      tdb.unknown_variables(db, known))

# ---------------------------------------------------------------------------------------------
_walk.section("8. Bad input stops the build and leaves the previous database")
before = sha256_file(db)
text = (raw / "medicaid_enrollment_2024.csv").read_text().replace(
    "Total Medicaid Enrollment", "Enrollment")
(raw / "medicaid_enrollment_2024.csv").write_text(text)
try:
    tdb.build_targets_db(raw, db)
except TargetsInputError as exc:
    print("TargetsInputError:", exc)
print("targets.db unchanged:", sha256_file(db) == before)

_walk.done()
