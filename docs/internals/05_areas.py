"""Walk-through 5: area datasets and validation (``calibration_core.assembly``, ``validation``;
assets ``area_datasets``, ``national_dataset``, ``validation_report``).

Run: ``python docs/internals/05_areas.py`` (about 20 s; toy inputs, no policyengine-us).

An area file holds every *active* clone-household of the area (weight > 0 and clone placed in
the area) as one household, its persons and groups copied from the base record under fresh ids,
with the clone's state, district and county, its calibrated weight, and take-up inputs redrawn
exactly as the matrix builder drew them. Hence the invariant the validation checks: the totals
policyengine-us computes from a file equal ``X @ w`` restricted to the area.

Here the chain is small and self-contained: toy base households, toy rules standing in for
policyengine-us (used both to build the package and to compute the files' totals), a clone
geography, a short L0 fit, then the files of California, CA-12, New York City and the nation,
and the validation report, produced by ``validation.validate_areas`` with its one
policyengine-us call (``simulate_areas``) replaced by the same toy rules.
"""
from __future__ import annotations

import _walk  # noqa: F401  (puts the repository on sys.path)
import numpy as np
import pandas as pd

from calibration_core import assembly as asm
from calibration_core import fit
from calibration_core import geography as geog
from calibration_core import package as pkg
from calibration_core import simulation as sim
from calibration_core import validation as val
from calibration_core.areas import NYC_COUNTY_FIPS, STATE_FIPS, district_geoids, parse_area_key
from calibration_core.h5_dataset import read_dataset, write_dataset
from calibration_core.io_utils import sha256_file
from calibration_core.package_io import save_package
from tests.package_fixtures import synthetic_tables, synthetic_targets

OUT = _walk.out_dir("05_areas")
N_HOUSEHOLDS, N_CLONES, YEAR = 250, 16, 2024

# ---------------------------------------------------------------------------------------------
_walk.section("1. Toy rules standing in for policyengine-us")
STATES = np.asarray(sim.STATE_ORDER)
ENTITY = {"age": "person", "adjusted_gross_income": "tax_unit", "tax_unit_is_filer": "tax_unit",
          "eitc": "tax_unit", "snap": "spm_unit", "medicaid_enrolled": "person"}


def snap_scale(state):  # toy: SNAP 50 % larger in Alaska and Hawaii
    return np.where(np.isin(state, [STATE_FIPS["AK"], STATE_FIPS["HI"]]), 1.5, 1.0)


def medicaid_limit(state):  # toy: income limit 20k in even-FIPS states, 8k elsewhere
    return np.where(np.asarray(state) % 2 == 0, 20_000.0, 8_000.0)


def toy_rules(tables, household_state):
    """Values of the target variables for ``tables`` with households in ``household_state``
    ((n_households,), or (n_states, n_households) for every state at once); take-up inputs
    present in the tables gate SNAP and Medicaid, as in policyengine-us."""
    s = sim.Structure.from_tables(tables)
    person = tables["person"]
    income = (person["employment_income"] + person["taxable_interest_income"]).to_numpy()
    agi = np.bincount(s.person_index["tax_unit"], weights=income,
                      minlength=len(s.ids["tax_unit"]))
    spm_income = np.bincount(s.person_index["spm_unit"], weights=income,
                             minlength=len(s.ids["spm_unit"]))
    state = np.asarray(household_state)
    spm_state = state[..., s.household_index["spm_unit"]]
    person_state = state[..., s.household_index["person"]]
    snap = np.maximum(0.0, 3_000 - 0.3 * spm_income) * snap_scale(spm_state)
    medicaid = (income < medicaid_limit(person_state)) & (person["age"].to_numpy() < 65)
    if "takes_up_snap_if_eligible" in tables["spm_unit"]:
        snap = snap * tables["spm_unit"]["takes_up_snap_if_eligible"].to_numpy()
    if "takes_up_medicaid_if_eligible" in person:
        medicaid = medicaid & person["takes_up_medicaid_if_eligible"].to_numpy()
    return {"age": person["age"].to_numpy(), "adjusted_gross_income": agi,
            "tax_unit_is_filer": agi > 14_600, "eitc": np.where((agi > 0) & (agi < 40_000),
                                                                 800.0, 0.0),
            "snap": snap, "medicaid_enrolled": medicaid}


base_tables = synthetic_tables(N_HOUSEHOLDS, seed=5)  # tests/package_fixtures.py
structure = sim.Structure.from_tables(base_tables)
every_state = np.broadcast_to(STATES[:, None], (len(STATES), structure.n_households))
by_state = toy_rules(base_tables, every_state)  # eligible values (no take-up columns yet)
home = base_tables["household"]["state_fips"].to_numpy()
at_home = toy_rules(base_tables, home)
sims = sim.StateSimulations(
    structure, home, ENTITY,
    invariant={v: at_home[v] for v in ("age", "adjusted_gross_income", "tax_unit_is_filer",
                                       "eitc")},
    by_state={v: by_state[v] for v in ("snap", "medicaid_enrolled")},
    dependence={v: [] for v in ENTITY} | {"snap": ["*"], "medicaid_enrolled": ["*"]},
    takeup_eligible=["medicaid_enrolled", "snap"])
print(f"{structure.n_households} base households, {len(structure.ids['person'])} persons; "
      f"state-dependent: {sorted(sims.by_state)}")

# ---------------------------------------------------------------------------------------------
_walk.section("2. Geography, package and a short L0 fit")
names = pd.Series(geog.county_name_to_fips(), name="fips").rename_axis("county_name")
names = names.reset_index()
names["state"] = names["fips"].str[:2].astype(int)
cd = pd.DataFrame({"geoid": district_geoids()})
cd["state"] = cd["geoid"] // 100
cd = cd.merge(names.sort_values("fips").groupby("state").head(2), on="state")
nyc = names[names["fips"].isin(NYC_COUNTY_FIPS)]
ny_city = cd[(cd.state == 36) & (cd.geoid % 100 <= 13)]["geoid"].unique()  # toy: NY-01..13
cd = pd.concat([cd[~cd.geoid.isin(ny_city)],
                pd.DataFrame({"geoid": np.repeat(ny_city, len(nyc)), "state": 36,
                              "county_name": np.tile(nyc["county_name"], len(ny_city)),
                              "fips": np.tile(nyc["fips"], len(ny_city))})])
cd["probability"] = 1.0  # equal shares inside each district
cd.rename(columns={"geoid": "cd_geoid"})[["cd_geoid", "county_name", "probability"]].to_csv(
    OUT / "county_cd_distributions.csv", index=False)
county_table = geog.load_county_table(OUT / "county_cd_distributions.csv")
population = pd.Series(760_000.0, index=district_geoids())  # toy: equal districts
geo = geog.assign_geography(structure.ids["household"], sims.household_total(
    "adjusted_gross_income"), N_CLONES, county_table, population, None, salt="05")
targets, constraints = synthetic_targets(population=2.0e6)  # tests/package_fixtures.py
weights0 = base_tables["household"]["household_weight"].to_numpy()
package = pkg.build_package(targets, constraints, sims, geo, weights0,
                            {"holdout": [{"variable": "eitc"}]})
pkg_dir = save_package(package, OUT / "package")
hp = fit.fit_preset("national", epochs=400, lambda_l0=5e-3, log_every=50)
result = fit.run_fit(pkg_dir, OUT / "fit", hp, device="cpu", threads=1, resume=False)
w = np.load(result.weights_path)
print(f"package {package.matrix.shape}, {int(package.fit_mask().sum())} fitted targets; fit: "
      f"{result.summary['active_records']} of {len(w)} clone-households active, mean |rel "
      f"err| {result.summary['mean_abs_rel_error']:.2%}")

# ---------------------------------------------------------------------------------------------
_walk.section("3. Which cells belong to which area")
weights2d = asm.check_weights(w, geo)
rows = []
for key in ("state-CA", "district-CA-12", "city-NYC", "state-NY", None):
    area = parse_area_key(key) if key else None
    mask = asm.area_cell_mask(geo, area)
    clone, record = asm.active_cells(weights2d, mask)
    rows.append({"area": key or "national", "cells in area": int(mask.sum()),
                 "active cells (households)": len(clone),
                 "distinct base records": len(np.unique(record)),
                 "weighted households": weights2d[clone, record].sum()})
_walk.show(pd.DataFrame(rows))
print("A state's cells are its districts' cells; a city's are the cells whose county is one of "
      f"its counties in calibration_core/cities.csv (NYC: {NYC_COUNTY_FIPS}).")

# County classes (methodology, "County dependence"): every file holds each clone in its own
# county, and the matrix values each cell at that county. The state simulations run one copy per
# county class - counties of a state where a probe of households gets equal values. Here, toy
# signatures: New York's five boroughs share one value (in New York City), its other counties
# another; the classes map every county to the copy (row of StateSimulations.by_state) that
# values it.
counties = np.array(sorted(set(geo.county_fips.ravel())))
state_of = np.array([int(c[:2]) for c in counties])
signature = np.isin(counties, NYC_COUNTY_FIPS).astype(int)[:, None]
classes = sim.classes_from_signatures(counties, state_of, signature, np.ones(len(counties)))
ny = classes.copy_state == STATE_FIPS["NY"]
in_ny = state_of == STATE_FIPS["NY"]
_walk.show(pd.DataFrame({"New York county": counties[in_ny],
                         "copy (class) row": classes.copy_index(state_of[in_ny],
                                                                counties[in_ny])}))
print(f"{classes.n_copies} state copies for 51 states; New York's simulated at "
      f"{classes.copy_county[ny].tolist()} (each class at its most populous county).")

# ---------------------------------------------------------------------------------------------
_walk.section("4. Assemble the files")
base = asm.index_base(base_tables, YEAR)
takeup = asm.takeup_for_package(package.metadata["takeup_rerandomised"])
print("take-up inputs redrawn per cell:", [t.input for t in takeup])
builds = {}
for key in ("state-CA", "district-CA-12", "city-NYC"):
    builds[key] = asm.build_area_tables(base, geo, weights2d, parse_area_key(key), takeup)
builds["national-US"] = asm.build_area_tables(base, geo, weights2d, None, takeup)
files = {}
for key, b in builds.items():
    rel = "national/US.h5" if key == "national-US" else parse_area_key(key).relative_path
    files[key] = write_dataset(OUT / "areas" / rel, b.tables, YEAR)
_walk.show(pd.DataFrame([{"area": k, "file": str(p.relative_to(OUT)), "households": b.households,
                          "persons": b.persons, "weighted persons": b.weighted_population(),
                          "bytes": p.stat().st_size}
                         for (k, b), p in zip(builds.items(), files.values())]))
ca12 = builds["district-CA-12"]
print("\nCA-12: each household is one (clone, base record) cell with a fresh id:")
hh = ca12.tables["household"]
_walk.show(pd.DataFrame({"household_id": hh["household_id"], "clone": ca12.clone,
                         "base record": ca12.record,
                         "base household id": geo.household_id[ca12.record],
                         "weight": hh["household_weight"], "state_fips": hh["state_fips"],
                         "district": hh["congressional_district_geoid"],
                         "county": hh["county_fips"]}).head(6))
print("\nits persons and their memberships (ids 0..n-1 per entity):")
_walk.show(ca12.tables["person"][["person_id", "person_household_id", "person_tax_unit_id",
                                  "person_spm_unit_id", "person_marital_unit_id", "age",
                                  "takes_up_medicaid_if_eligible"]].head(8))
alone = asm.build_area_tables(base, geo, weights2d, parse_area_key("district-CA-12"), takeup)
again = write_dataset(OUT / "ca12_alone.h5", alone.tables, YEAR)
print("\nCA-12 built alone and in the batch: byte-identical files:",
      sha256_file(again) == sha256_file(files["district-CA-12"]))
tables_back, year = read_dataset(files["district-CA-12"])
print(f"read back: year {year}, {len(tables_back['household'])} households")

# ---------------------------------------------------------------------------------------------
_walk.section("5. Validation: the files' totals against the targets and against X.w")


def toy_simulate_areas(stacked, variables, year, log=lambda m: None):
    """Stand-in for validation.simulate_areas (one policyengine-us simulation of the stacked
    files): the toy rules on the files' own columns, households in their own states."""
    values = toy_rules(stacked.tables, stacked.tables["household"]["state_fips"].to_numpy())
    return {v: values[v] for v in variables}, {v: ENTITY[v] for v in variables}


val.simulate_areas = toy_simulate_areas  # the only policyengine-us call of validate_areas
keys = list(builds)
area_set = val.AreaSet(keys=keys, kinds=["state", "district", "city", "national"],
                       tables=[builds[k].tables for k in keys],
                       cells=[(builds[k].clone, builds[k].record) for k in keys],
                       weight_index=[0] * len(keys))
report = val.validate_areas(area_set, package.targets, package.matrix, [w], geo.n_records, YEAR)
cols = ["area", "target_name", "holdout", "target_value", "sim_value", "xw_value",
        "rel_error", "consistent"]
print("CA-12 and California rows of the report:")
_walk.show(report[report.area.isin(["district-CA-12", "state-CA"])][cols], max_rows=20)
print(f"\nall {len(report)} rows consistent (|sim - X.w| <= "
      f"{val.CONSISTENCY_TOLERANCE:.1%} of max(|X.w|, 1)): {bool(report.consistent.all())}; "
      f"largest relative difference {report.xw_rel_diff.max():.2e}")
print("NYC is scored on its share of each district it overlaps (no target error):")
_walk.show(report[report.area == "city-NYC"][cols].head(4))
print("\nsummary by level and sample (validation.summarize):")
_walk.show(val.summarize(report)[["level", "sample", "targets", "areas", "mean_abs_rel_error",
                                  "max_abs_rel_error", "inconsistent", "sanity_failures"]])

_walk.done()
