"""Walk-through 3: the calibration package (``calibration_core.geography``, ``simulation``,
``package``, ``package_io``; assets ``state_simulations``, ``geography_assignment``,
``calibration_package``).

Run: ``python docs/internals/03_package.py`` (about 30 s; toy inputs, no network, and no
policyengine-us: the state simulations are toy arrays here).

The package is what the weight fit reads: a sparse matrix ``X`` (targets x clone-households), the
targets ``y`` and initial weights ``w0``. Every base household is *cloned* ``n_clones`` times and
each clone is placed in a congressional district (hence a state and a county); entry ``X[i, j]``
is what clone-household ``j`` contributes to target ``i`` (its persons in an age band, its AGI in
a band, its SNAP dollars ...) when the clone lies in the target's geography, else 0.

The values a household would have in each state come from ``simulate_states``: a few *stacked*
policyengine-us simulations (the households copied once per state), the first of them traced to
find which target variables can depend on the state at all (those are stored once). That step needs policyengine-us (about a minute to import); this script shows its pure
parts and replaces the simulated values by toy arrays of the same shapes.
"""
from __future__ import annotations

import _walk  # noqa: F401  (puts the repository on sys.path)
import numpy as np
import pandas as pd

from calibration_core import geography as geog
from calibration_core import package as pkg
from calibration_core import simulation as sim
from calibration_core import targets_db as tdb
from calibration_core.areas import STATE_ABBR, STATE_FIPS, census_district_code, district_geoids
from calibration_core.package_io import load_package, package_fingerprint, save_package
from tests.package_fixtures import synthetic_tables
from tests.targets_fixtures import write_raw_folder

OUT = _walk.out_dir("03_package")
N_HOUSEHOLDS, N_CLONES, SALT = 300, 8, "20240101"

# ---------------------------------------------------------------------------------------------
_walk.section("1. Targets and the toy county table")
raw = write_raw_folder(OUT / "raw", with_districts_soi=True)  # as in 01_targets_db.py
db = OUT / "targets.db"
tdb.build_targets_db(raw, db)
targets, constraints = tdb.read_targets(db), tdb.read_constraints(db)
print(f"{len(targets)} targets, {constraints.stratum_id.nunique()} constrained strata")
# county_cd_distributions.csv in its real columns: P(county | district), here two counties of
# the district's state per district (real policyengine-us county names, made-up shares)
names = pd.Series(geog.county_name_to_fips(), name="fips").rename_axis("county_name")
names = names.reset_index()
names["state"] = names["fips"].str[:2].astype(int)
first2 = names.sort_values("fips").groupby("state").head(2)
cd = pd.DataFrame({"geoid": district_geoids()})
cd["state"] = cd["geoid"] // 100
cd = cd.merge(first2, on="state").sort_values(["geoid", "fips"])
cd["probability"] = np.where(cd.groupby("geoid").cumcount() == 0, 0.7, 0.3)
cd["cd_geoid"] = cd["geoid"].map(census_district_code)  # Census codes: at-large 00, DC 98
cd[["cd_geoid", "county_name", "probability"]].to_csv(OUT / "county_cd_distributions.csv",
                                                      index=False)
county_table = geog.load_county_table(OUT / "county_cd_distributions.csv")
_walk.show(county_table.head(4))

# ---------------------------------------------------------------------------------------------
_walk.section("2. Which variables, and which of them depend on the state")
variables = sim.needed_variables(targets, constraints)
print("variables the targets need:", variables)
# classify_state_dependence reads a traced dependency graph; a toy graph shows its rules: a
# variable reaching the geography is state-dependent everywhere ("*"), one reaching only rules
# defined for one state depends on that state, the rest are computed once.
edges = {"snap": {"snap_net_income", "snap_max_allotment"}, "snap_max_allotment": {"state_code"},
         "snap_net_income": {"employment_income"}, "eitc": {"earned_income", "filing_status"},
         "state_income_tax": {"ca_income_tax", "ny_income_tax"},
         "ca_income_tax": {"employment_income"}, "ny_income_tax": {"employment_income"}}
gates = {"ca_income_tax": "CA", "ny_income_tax": "NY"}
print("toy graph ->", sim.classify_state_dependence(["snap", "eitc", "state_income_tax"], edges,
                                                    gates))
for n in (300, 3_000, 12_000):  # the tiny, demo and full presets' base households
    chunks = sim.plan_chunks(n, list(sim.STATE_ORDER), sim.DEFAULT_CHUNK_HOUSEHOLDS)
    print(f"{n:>6} households x 51 states, <= {sim.DEFAULT_CHUNK_HOUSEHOLDS:,} households per "
          f"stacked simulation: {len(chunks)} simulation(s) of {[len(c) for c in chunks][:3]}"
          " ... states")
tables = synthetic_tables(N_HOUSEHOLDS, seed=3)  # six entity tables, tests/package_fixtures.py
counties = sim.representative_counties(county_table)
stacked = sim.stack_tables({e: t.head(2) if e == "household" else t[
    t[f"person_household_id" if e == "person" else f"{e}_id"].isin(
        tables["household"]["household_id"].head(2))] for e, t in tables.items()},
    [6, 48, 36], counties)
print("\nstack_tables: the first two households copied into CA, TX and NY (ids offset per "
      "copy, county = the state's most populous in the county table):")
_walk.show(stacked["household"][["household_id", "state_fips", "county_fips"]])

# ---------------------------------------------------------------------------------------------
_walk.section("2b. County dependence: county classes, the probe, what runs per class")
# Files put every clone in its own county, so the matrix must value each cell at that county
# for every variable the county can change (SNAP's ABAWD waiver areas and utility regions, New
# York City's taxes, Maryland's county rates ...). Simulating 3,106 counties is out of reach;
# simulate_states instead
#   1. probes: 12 base households (probe_rows: mostly low-income) in every county, one stacked
#      copy per county, every needed variable computed, traced (edges only);
#   2. groups each state's counties whose probe values agree into classes
#      (classes_from_signatures), each simulated at its most populous county, the class of the
#      state's most populous county first (the state's default copy);
#   3. reads the probe's traced graph: a variable is county-dependent iff it reaches a county
#      input (COUNTY_ROOTS), a formula the probe did not run, or housing_assistance (HUD fair
#      market rents: no 12 probes can class them; it is computed per class and the files carry
#      its class value as an input). The probe's values must agree: a variable called
#      county-invariant whose values differ between two counties of a state stops the build;
#   4. simulates every variable in each state's default copy, and only the county-dependent
#      ones in its other classes (their other values are the default copy's).
# A toy graph and toy probe values (policyengine-us is not run here):
edges = {"snap": {"snap_net_income", "snap_utility_allowance", "housing_assistance"},
         "snap_utility_allowance": {"county"}, "snap_net_income": {"employment_income"},
         "eitc": {"earned_income", "state_code"}, "earned_income": {"employment_income"},
         "adjusted_gross_income": {"employment_income"}}
dependent = sim.county_dependent_variables(["snap", "eitc", "adjusted_gross_income"], edges)
print("county-dependent (computed in every class):", dependent)
ny = ["36047", "36081", "36061", "36005", "36059", "36103", "36001", "36029"]  # Kings ... Erie
pop = [2.6, 2.3, 1.6, 1.4, 1.4, 1.5, 0.3, 0.9]  # millions
# probe codes per county: column 0 SNAP of the probes (NYC's utility allowance, Nassau/Suffolk's,
# the rest's), column 1 EITC (equal everywhere: the graph says so and the check confirms it)
codes = np.array([[0, 0], [0, 0], [0, 0], [0, 0], [1, 0], [1, 0], [2, 0], [2, 0]])
sim.check_county_invariance(codes, {"snap": (0, 1), "eitc": (1, 2)}, np.full(8, 36),
                            np.array(ny), dependent)
classes = sim.classes_from_signatures(np.array(ny), np.full(8, 36), codes, np.array(pop))
rows = np.flatnonzero(classes.copy_state == 36)
print(f"{classes.n_copies} state copies for 51 states (NY: {len(rows)} classes, simulated at "
      f"{classes.copy_county[rows].tolist()}, the first NY's default copy)")
_walk.show(pd.DataFrame({"county": ny, "population_m": pop,
                         "copy": classes.copy_index(np.full(8, 36), np.array(ny))}))
defaults = set(classes.state_default()[list(sim.STATE_ORDER)].tolist())
extra = [k for k in range(classes.n_copies) if k not in defaults]
print(f"chunks at 3,000 households: {len(sim.plan_chunks(3000, sorted(defaults), 26_000, 2))} "
      f"with every variable for the 51 default copies, "
      f"{len(sim.plan_chunks(3000, extra, 26_000, 2))} with {dependent} only for the "
      f"{len(extra)} other classes")
# Measured (bench/bench_state_simulations.py --n 3000 --skip-reference
# --compare-county-classes; docs/methodology.md, "County dependence"): the demo's 72 copies
# (19 states with 2-3 classes) against 51 copies at one county per state - see the table there.

# ---------------------------------------------------------------------------------------------
_walk.section("3. Toy state simulations (shapes of simulate_states' result)")
# Invariant variables: one value per entity. State-dependent ones: (51, n_entity), rows in
# STATE_ORDER. Toy rules (not policyengine-us's): SNAP larger in Alaska and Hawaii, Medicaid
# eligibility up to 20k of income in some states and 8k in the others, the SPM unit's income
# over the 2024 HHS poverty guideline for its size (the ACS poverty family's constraint).
structure = sim.Structure.from_tables(tables)
person = tables["person"]
income = (person["employment_income"] + person["taxable_interest_income"]).to_numpy()
agi = np.bincount(structure.person_index["tax_unit"], weights=income,
                  minlength=len(structure.ids["tax_unit"]))
n_spm = len(structure.ids["spm_unit"])
spm_income = np.bincount(structure.person_index["spm_unit"], weights=income, minlength=n_spm)
states = np.asarray(sim.STATE_ORDER)
snap_scale = np.where(np.isin(states, [STATE_FIPS["AK"], STATE_FIPS["HI"]]), 1.5, 1.0)
snap = np.maximum(0.0, 3_000 - 0.3 * spm_income)[None, :] * snap_scale[:, None]
spm_size = np.bincount(structure.person_index["spm_unit"], minlength=n_spm)
fpg_ratio = spm_income / (15_060.0 + 5_380.0 * (spm_size - 1))
generous = (states % 2 == 0)[:, None]
p_income = income[None, :]
medicaid = np.where(generous, p_income < 20_000, p_income < 8_000) & (person["age"].to_numpy()
                                                                        < 65)
sims = sim.StateSimulations(
    structure, tables["household"]["state_fips"].to_numpy(),
    entity={"age": "person", "adjusted_gross_income": "tax_unit", "tax_unit_is_filer":
            "tax_unit", "eitc": "tax_unit", "snap": "spm_unit", "medicaid_enrolled": "person",
            "school_meal_fpg_ratio": "spm_unit"},
    invariant={"age": person["age"].to_numpy(), "adjusted_gross_income": agi,
               "tax_unit_is_filer": agi > 14_600,
               "eitc": np.where((agi > 0) & (agi < 40_000), 800.0, 0.0),
               "school_meal_fpg_ratio": fpg_ratio},
    by_state={"snap": snap, "medicaid_enrolled": medicaid},
    dependence={"age": [], "adjusted_gross_income": [], "tax_unit_is_filer": [], "eitc": [],
                "school_meal_fpg_ratio": [], "snap": ["*"], "medicaid_enrolled": ["*"]},
    takeup_eligible=["medicaid_enrolled", "snap"])
missing = set(variables) - set(sims.variables)
assert not missing, f"toy simulations lack {missing}"
print(f"{structure.n_households} households, {len(structure.ids['person'])} persons; "
      f"state-invariant: {sorted(sims.invariant)}; by state: {sorted(sims.by_state)}")
print("SNAP of SPM unit 0 placed in AL, AK, CA:",
      sims.values("snap", np.broadcast_to(np.array([[1], [2], [6]]), (3, n_spm)))[:, 0])

# ---------------------------------------------------------------------------------------------
_walk.section("4. Geography: districts by population, top-AGI households by AGI")
population = geog.district_population(targets)
agi_mass, agi_source = geog.district_agi(targets, population)
print("AGI mass:", agi_source)
hh_agi = sims.household_total("adjusted_gross_income")
geo = geog.assign_geography(structure.ids["household"], hh_agi, N_CLONES, county_table,
                            population, agi_mass, salt=SALT)
print({k: v for k, v in geo.metadata.items()})
first = pd.DataFrame({"clone": range(N_CLONES), "district": geo.district_geoid[:, 0],
                      "state": [STATE_ABBR[s] for s in geo.state_fips[:, 0]],
                      "county": geo.county_fips[:, 0],
                      "package_column": np.arange(N_CLONES) * N_HOUSEHOLDS})
print(f"\nThe {N_CLONES} clones of household id {geo.household_id[0]} (no district repeats):")
_walk.show(first)
again = geog.assign_geography(structure.ids["household"], hh_agi, N_CLONES, county_table,
                              population, agi_mass, salt=SALT)
print("same inputs -> same draws:", np.array_equal(again.county_fips, geo.county_fips))

# Why population-proportional: the reference drew districts uniformly (1/436), which gives a
# district of 500k people as many clones as one of 900k. Why many clones: coverage.
uni = geog.assign_geography(structure.ids["household"], hh_agi, N_CLONES, county_table,
                            population, None, method="uniform", salt=SALT)
cells = N_HOUSEHOLDS * N_CLONES
compare = pd.DataFrame({
    "population_share": population / population.sum(),
    "clones_population": pd.Series(geo.district_geoid.ravel()).value_counts() / cells,
    "clones_uniform": pd.Series(uni.district_geoid.ravel()).value_counts() / cells,
}).fillna(0.0)
compare.index.name = "district"
ends = compare.sort_values("population_share").iloc[[0, 1, -2, -1]]
print("\nshares of clones in the smallest and largest toy districts:")
_walk.show(ends.reset_index().astype({"district": str}), floatfmt=".5f")
pop_err = (compare.clones_population - compare.population_share).abs().sum()
uni_err = (compare.clones_uniform - compare.population_share).abs().sum()
print(f"total variation from the population shares: population draw {pop_err / 2:.3f}, "
      f"uniform draw {uni_err / 2:.3f}")
cover = []
for k in (1, 4, 8, 16):
    g = geog.assign_geography(structure.ids["household"], hh_agi, k, county_table, population,
                              agi_mass, salt=SALT)
    per = np.bincount(np.searchsorted(district_geoids(), g.district_geoid.ravel()),
                      minlength=436)
    cover.append({"clones": k, "clone_households": k * N_HOUSEHOLDS,
                  "districts_with_none": int((per == 0).sum()), "min_per_district": per.min(),
                  "median_per_district": float(np.median(per))})
print(f"\ncoverage of the 436 districts by {N_HOUSEHOLDS} households:")
_walk.show(pd.DataFrame(cover))
ratio = (agi_mass / agi_mass.sum()) / (population / population.sum())  # AGI per person, rel.
lands = ratio.reindex(geo.district_geoid.ravel()).to_numpy().reshape(geo.district_geoid.shape)
print(f"{int(geo.top_agi.sum())} top-AGI households (top decile of AGI) draw districts by AGI "
      f"mass: their clones land in districts with {lands[:, geo.top_agi].mean():.3f}x the "
      f"average AGI per person, the others' in {lands[:, ~geo.top_agi].mean():.3f}x (the toy "
      "SOI file spreads AGI evenly)")
rich = population.index[population.index // 100 == STATE_FIPS["CA"]][:10]
skewed = population.where(~population.index.isin(rich), population * 5.0)  # 10 rich districts
g = geog.assign_geography(structure.ids["household"], hh_agi, N_CLONES, county_table, population,
                          skewed, salt=SALT)
in_rich = np.isin(g.district_geoid, rich)
print(f"with 10 districts holding 5x the AGI per person: {in_rich[:, g.top_agi].mean():.1%} of "
      f"the top-AGI clones land there, {in_rich[:, ~g.top_agi].mean():.1%} of the others "
      f"(population share {population[rich].sum() / population.sum():.1%})")

# ---------------------------------------------------------------------------------------------
_walk.section("5. Take-up draws")
# Take-up is decided per clone: keyed_uniform("takeup.<input>", household id, clone, rank of
# the entity in its household) < rate(state). The area builder calls the same function.
spec = next(s for s in sim.TAKEUP if s.input == "takes_up_snap_if_eligible")
hh_of_spm = structure.ids["household"][structure.household_index["spm_unit"]]
decide = sim.takeup_decisions(spec, hh_of_spm[None, :], np.arange(N_CLONES)[:, None],
                              structure.rank["spm_unit"][None, :],
                              geo.state_fips[:, structure.household_index["spm_unit"]])
print(f"SNAP take-up rate {spec.rate}: share of (clone, SPM unit) taking up {decide.mean():.3f}; "
      f"household {hh_of_spm[0]} by clone: {decide[:, 0].astype(int).tolist()}")
med = next(s for s in sim.TAKEUP if s.input == "takes_up_medicaid_if_eligible")
print("Medicaid take-up rates by state (CA, TX, UT):",
      med.rates(np.array([STATE_FIPS["CA"], STATE_FIPS["TX"], STATE_FIPS["UT"]])))

# ---------------------------------------------------------------------------------------------
_walk.section("6. The matrix")
config = pkg.load_target_config()  # calibration_core/target_config.yaml
weights = tables["household"]["household_weight"].to_numpy()
# toy base weights count 2-3 persons per household; scale them to the toy national population
# (the real base is benchmarked to ACS state populations in the microdata stage)
persons = np.bincount(structure.household_index["person"], minlength=N_HOUSEHOLDS)
national = targets[(targets.geo_level == "national") & (targets.variable == "person_count")
                   & (targets.domain == "age")]["value"].sum()
weights = weights * national / (weights * persons).sum()
package = pkg.build_package(targets, constraints, sims, geo, weights, config,
                            input_sha256={"targets_db": tdb.sha256_file(db)})
meta = package.metadata
print(f"X: {package.matrix.shape[0]} targets x {package.matrix.shape[1]} clone-households "
      f"({N_CLONES} x {N_HOUSEHOLDS}), nnz {meta['nnz']}, density {meta['density']:.4f}, "
      f"{meta['families']} families, built in {meta['build_seconds']} s")
print(f"hold-out targets {meta['holdout_targets']}, unachievable {meta['unachievable_count']} "
      "(no clone lands in them, or no household meets their constraints)")
fam = pd.DataFrame(meta["targets_by_family"]).T.fillna(0).astype(int)
_walk.show(fam.reset_index().rename(columns={"index": "family"}))
t = package.targets
t_show = t[["name", "value", "holdout", "achievable", "nnz"]]
_walk.show(pd.concat([t_show[t.geo_level == "national"].head(3),
                      t_show[t.name.str.startswith("state_6/")].head(3),
                      t_show[t.name.str.startswith("cd_612/")].head(3)]))
col = int(np.argmax(np.diff(package.matrix.tocsc().indptr)))
entries = package.matrix.tocsc()[:, col]
print(f"\ncolumn {col} = clone {col // N_HOUSEHOLDS} of record {col % N_HOUSEHOLDS}, placed in "
      f"district {geo.district_geoid.ravel()[col]}: {entries.nnz} non-zero entries, e.g.")
rows = entries.nonzero()[0]
_walk.show(pd.DataFrame({"target": t["name"].to_numpy()[rows],
                         "X[i, j]": entries.toarray().ravel()[rows]}).head(8))
check = meta["initial_population_check"]
print(f"\ninitial weights: national population {check['estimate']:,.0f} vs target "
      f"{check['target']:,.0f} ({check['relative_error']:+.2%})")
est = np.asarray(package.matrix @ package.initial_weights)
rel = np.abs(est - t["value"].to_numpy()) / np.maximum(np.abs(t["value"].to_numpy()), 1)
fit_rows = package.fit_mask()
print(f"median |relative error| of X.w0 over the {fit_rows.sum()} fitted targets: "
      f"{np.median(rel[fit_rows]):.1%} (the toy targets are not mutually consistent; the fit "
      "of 04_fit.py is what reduces such errors)")

# ---------------------------------------------------------------------------------------------
_walk.section("7. On disk: npz + parquet + JSON, no pickle")
folder = save_package(package, OUT / "package")
for p in sorted(folder.iterdir()):
    print(f"  {p.name:22s} {p.stat().st_size:>9,} bytes")
back = load_package(folder)
print("reloaded: same matrix", (back.matrix != package.matrix).nnz == 0,
      "| fingerprint", package_fingerprint(folder)[:16])
geog.save_geography(geo, OUT / "geography_assignment.npz")
print("geography_assignment.npz:", (OUT / "geography_assignment.npz").stat().st_size, "bytes")

_walk.done()
