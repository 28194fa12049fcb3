"""Walk-through 2: microdata (``calibration_core.microdata``, assets ``cps_source``,
``base_microdata``, ``enhanced_microdata``, ``stratified_microdata``).

Run: ``python docs/internals/02_microdata.py`` (about 10 s; toy inputs, no network).

The base microdata are real CPS ASEC records: by default Tax-Calculator's CPS file (280,005 tax
units of the 2013-2015 ASEC, income years 2012-14, one row per tax unit and no person rows).
The stage rebuilds persons from each unit's head, spouse and dependant counts, groups tax units
into households, families, SPM units and marital units, uprates incomes to 2024 with the file's
growth factors, gives each household a county, benchmarks the weights to the ACS 2024 state
populations, and writes a PolicyEngine-US H5 file (``/<variable>/<year>`` arrays). A stratified
sample (the ``stratified_microdata`` asset) keeps every top-AGI household and samples the rest
per state, rescaling weights so each state's weighted population is unchanged.

This script writes a toy CPS file of 60 tax units in the real column layout, plus the support
files the stage reads, and runs the real functions on it.
"""
from __future__ import annotations

import gzip
import json

import _walk  # noqa: F401  (puts the repository on sys.path)
import h5py
import numpy as np
import pandas as pd

from calibration_core import h5_dataset
from calibration_core import microdata as md
from calibration_core.io_utils import sha256_file
from calibration_core.microdata_parts import taxcalc_cps
from calibration_core.microdata_parts.geography import policyengine_county_table
from tests.targets_fixtures import write_s0101

OUT = _walk.out_dir("02_microdata")
RAW = OUT / "raw"
RAW.mkdir(exist_ok=True)

# ---------------------------------------------------------------------------------------------
_walk.section("1. A toy CPS file in Tax-Calculator's layout")
# 60 tax units in 40 households of California (6), New York (36) and Texas (48). Column names
# and meanings are those of taxcalc's records_variables.json: MARS 2 = joint, nu06/nu13/nu18 =
# persons under 6/13/18 in the unit (head and spouse included), n21 = persons 21+, e00200 wages.
rng = np.random.default_rng(7)
n = 60
cps = pd.DataFrame(0, index=range(n), columns=list(taxcalc_cps.REQUIRED_COLUMNS))
cps["RECID"] = np.arange(1, n + 1)
cps["FLPDYR"] = 2014
cps["h_seq"] = np.r_[np.arange(1, 41), rng.integers(1, 41, 20)]  # 20 second units in a home
cps = cps.sort_values(["h_seq", "RECID"]).reset_index(drop=True)
cps["a_lineno"] = cps.groupby("h_seq").cumcount() + 1
cps["ffpos"] = 1
cps["fips"] = np.array([6, 36, 48])[cps["h_seq"] % 3]
joint = rng.random(n) < 0.45
cps["MARS"] = np.where(joint, 2, 1)
cps["age_head"] = rng.integers(22, 80, n)
cps["age_spouse"] = np.where(joint, cps["age_head"] - rng.integers(0, 5, n), 0)
kids = np.where(cps["age_head"] < 60, rng.integers(0, 3, n), 0)
cps["nu06"] = (kids >= 1).astype(int)
cps["nu13"] = cps["nu06"] + (kids >= 2)
cps["nu18"] = cps["nu13"]
cps["n21"] = 1 + joint
cps["XTOT"] = cps["n21"] + cps["nu18"]
cps["e00200p"] = np.round(rng.lognormal(10.3, 1.0, n) * (rng.random(n) < 0.8), -2)
cps["e00200s"] = np.round(rng.lognormal(10.0, 1.0, n) * joint * (rng.random(n) < 0.6), -2)
cps.loc[0, "e00200p"] = 2_500_000  # one very high earner: always kept by stratification
cps["e00200"] = cps["e00200p"] + cps["e00200s"]
cps["e00300"] = np.round(rng.exponential(300, n))
cps["e02400"] = np.where(cps["age_head"] >= 65, 18_000, 0)
cps["snap_ben"] = np.where(cps["e00200"] < 15_000, 2_400, 0)
cps["mcaid_ben"] = np.where(cps["e00200"] < 20_000, 6_000, 0)
with gzip.open(RAW / "cps.csv.gz", "wt") as fh:
    cps.to_csv(fh, index=False)
weights = pd.DataFrame({f"WT{y}": np.round(rng.uniform(50_000, 150_000, n))
                        for y in range(2014, 2026)})  # weights x 100, as in taxdata
with gzip.open(RAW / "cps_weights.csv.gz", "wt") as fh:
    weights.to_csv(fh, index=False)
# growth factors: one row per year, year-over-year ratios (2 % a year for every column here)
factor_cols = sorted({f for *_, f in taxcalc_cps.VARIABLE_MAP if f != "-"} - {"ASCHCI/ASCHCL"}
                     | {"ASCHCI", "ASCHCL", "ACPIU"})
pd.DataFrame({"YEAR": range(2011, 2031), **{c: 1.02 for c in factor_cols}}).to_csv(
    RAW / "growfactors.csv", index=False)
# P(county | district) in the real file's columns, for a few real counties of the three states
counties = policyengine_county_table()
picks = counties[counties["county_fips"].isin(["06037", "06075", "36061", "36047", "48201",
                                                "48453"])]
pd.DataFrame({"cd_geoid": picks["state_fips"] * 100 + 1, "county_name": picks["key"],
              "probability": [0.7, 0.3, 0.6, 0.4, 0.8, 0.2]}).to_csv(
    RAW / "county_cd_distributions.csv", index=False)
write_s0101(RAW)  # ACS S0101 JSON (synthetic populations) for the state benchmark
_walk.show(cps[["RECID", "h_seq", "a_lineno", "fips", "MARS", "XTOT", "age_head", "age_spouse",
                "nu06", "nu13", "n21", "e00200p", "e00200s", "e02400", "snap_ben"]].head(8))

# ---------------------------------------------------------------------------------------------
_walk.section("2. The mapping: CPS columns -> policyengine-us input variables")
# One table, taxcalc_cps.VARIABLE_MAP: (variable, entity, expression, who gets it, growth
# factor). Everything policyengine-us can compute itself (credits, taxes, benefit amounts) is
# left to its formulas.
vmap = pd.DataFrame(taxcalc_cps.VARIABLE_MAP,
                    columns=["variable", "entity", "cps_expression", "person", "growth_factor"])
_walk.show(vmap, max_rows=60)

# ---------------------------------------------------------------------------------------------
_walk.section("3. Tax units -> the six entity tables")
source = md.load_cps_source(RAW, prefer="taxcalc")
tables, info = md.build_base_tables(source, RAW)
print(f"source kind {source.kind!r}, income year {source.data_year}, files {source.files}")
_walk.show(pd.DataFrame([md.summarize(tables)]))
unit = int(cps.loc[(cps.MARS == 2) & (cps.nu06 > 0), "RECID"].iloc[0])
print(f"\nPersons of tax unit RECID {unit} (a joint unit with a child under 6; the child's age "
      "is drawn inside its band with keyed_uniform('cps_age', RECID, slot)):")
person = tables["person"]
_walk.show(person.loc[person.person_tax_unit_id == unit,
                      ["person_id", "person_household_id", "person_tax_unit_id",
                       "person_family_id", "person_marital_unit_id", "age", "is_male",
                       "is_tax_unit_head", "is_tax_unit_spouse", "employment_income"]])
print("\nHouseholds: state, the county drawn from P(county | state), the benchmarked weight:")
_walk.show(tables["household"].head(6))
print("problems:", md.structure_problems(tables))

# ---------------------------------------------------------------------------------------------
_walk.section("4. Benchmark to ACS state populations")
# The weights are scaled per state so weighted persons equal ACS S0101 (here synthetic).
pop = md.population_by_state(tables, md.acs_state_population(RAW / "acs_S0101_state_2024.json"))
_walk.show(pop[pop.households > 0].reset_index())
print(f"weighted persons before benchmarking: {info['weighted_persons_before_benchmark']:,.0f}")

# ---------------------------------------------------------------------------------------------
_walk.section("5. Stratification: keep the top AGI, sample the rest, rescale per state")
strat, sinfo = md.stratify_tables(tables, n_households=16, top_percentile=95.0, seed=20240101)
print({k: (round(v, 4) if isinstance(v, float) else v) for k, v in sinfo.items()})
before = md.population_by_state(tables)[["households", "weighted_persons"]]
after = md.population_by_state(strat)[["households", "weighted_persons"]]
cmp_ = before.merge(after, left_index=True, right_index=True, suffixes=("_before", "_after"))
cmp_ = cmp_[cmp_.households_before > 0].reset_index()
_walk.show(cmp_)
agi = md.household_agi(tables)
top_ids = tables["household"]["household_id"].to_numpy()[agi >= sinfo["agi_threshold"]]
kept = strat["household"]["household_id"].to_numpy()
print(f"top-AGI households kept: {np.isin(top_ids, kept).all()} ({len(top_ids)} households, "
      f"AGI proxy >= {sinfo['agi_threshold']:,.0f}); their weights are not rescaled")

# ---------------------------------------------------------------------------------------------
_walk.section("6. The H5 file policyengine-us loads")
h5 = h5_dataset.write_dataset(OUT / "stratified_2024.h5", strat, 2024)
with h5py.File(h5) as f:
    rows = [{"group": f"/{name}/2024", "entity": f[name].attrs["entity"].decode(),
             "dtype": str(f[name]["2024"].dtype), "length": f[name]["2024"].shape[0]}
            for name in list(f.keys())]
groups = pd.DataFrame(rows)
print(f"{len(groups)} variables; one example per entity and the membership columns:")
_walk.show(pd.concat([groups.drop_duplicates("entity"),
                      groups[groups.group.str.match(r"/(person_\w+_id|household_weight|age)/")]])
           .drop_duplicates("group"))
again = h5_dataset.write_dataset(OUT / "again.h5", strat, 2024)
print("same tables -> byte-identical file:", sha256_file(h5) == sha256_file(again))
back, year = h5_dataset.read_dataset(h5)
same = np.allclose(back["household"]["household_weight"], strat["household"]["household_weight"])
print(f"read back: year {year}, households {len(back['household'])}, persons "
      f"{len(back['person'])}; weights equal: {same}")
print("Load it with: policyengine_us.Microsimulation(dataset=" + json.dumps(str(h5)) + ")")

_walk.done()
