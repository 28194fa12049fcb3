"""Group ``areas``: the validation report, a graph of Dagster steps.

``validation_report`` simulates the area files again with policyengine-us and scores every
target of every area (``calibration_core.validation``). The files are stacked into a few large
simulations (groups); the groups run as Dagster steps that any executor spreads, like the state
simulations' chunks (``assets/state_simulations.py``):

* ``plan_validation``: reads the area files, plans the rows scored and the stacked groups
  (``validation.plan_validation``) and groups them into steps of at least
  ``households_per_step`` households (the ~40 s policyengine-us start of a step's process is at
  most a quarter of it), saved to ``areas/validation/steps/plan.npz``; one dynamic output per
  step;
* ``simulate_groups[gNN]``: reads only its groups' files, simulates them
  (``validation.simulate_group``) and saves the weighted totals (``steps/step_NN.npz``); a
  failed step is retried alone (``RetryPolicy``);
* ``simulate_national``: simulates the national file as soon as it exists (beside the area
  files' steps) and compares its totals with the published figures
  (``areas/validation/national_aggregates.csv``);
* ``finish_validation``: sums the totals in group order, adds ``X @ w``
  (``validation.finish_validation``: the report ``validate_areas`` gives) and writes the
  report, the summary (with the national aggregates) and the county shares.

Its checks read the report it wrote.
"""
import json
import os
import time
from typing import Optional

import dagster as dg
import numpy as np
import pandas as pd

from assets._code_version import code_version
from assets._metadata import markdown_table as _md, measured
from assets.areas import (NATIONAL_FILE, PACKAGE, WEIGHTS, YEAR, _fit_weights, _Inputs,
                          area_path)
from calibration_core import assembly as asm
from calibration_core import national_check
from calibration_core import validation as val
from calibration_core import validation_sample as vsample
from calibration_core import validation_steps as vsteps
from calibration_core.areas import all_area_keys
from calibration_core.h5_dataset import read_columns, read_dataset
from calibration_core.io_utils import atomic_path, atomic_write_json, sha256_file
from calibration_core.package_io import load_package
from calibration_core.step_groups import policyengine_started
from resources.settings import BuildSettings
from resources.store import ArtifactStore

REPORT_CSV = ("areas", "validation", "validation_results.csv")
NATIONAL_AGGREGATES_CSV = ("areas", "validation", "national_aggregates.csv")
SUMMARY_JSON = ("areas", "validation", "summary.json")
COUNTY_SHARES_CSV = ("areas", "validation", "county_shares.csv")
FILE_STRUCTURE_CSV = ("areas", "validation", "file_structure.csv")
STEPS = ("areas", "validation", "steps")
PLAN = STEPS + ("plan.npz",)
NATIONAL_KEY = "national-US"
PLAN_COLUMNS = ("state_fips", "congressional_district_geoid")  # what plan_validation reads


class ValidationConfig(dg.Config):
    """Run config of ``validation_report`` (``ops: {validation_report: {config: ...}}``)."""

    areas: Optional[str] = None  # "all" | "sample" | "rotating"; None: the preset's
    # "rotating": the district slice re-simulated; None: from the regional weights' sha256
    rotation: Optional[int] = None
    max_households_per_simulation: int = val.MAX_HOUSEHOLDS_PER_SIMULATION
    states_per_simulation: int = val.STATES_PER_SIMULATION
    # households a step simulates at least (its policyengine-us start at most a quarter of it)
    households_per_step: int = vsteps.DEFAULT_STEP_HOUSEHOLDS
    # steps expected to run at once: when the steps' processes start with policyengine-us built
    # (the multiprocess executor's fork server) the groups make this many steps at least
    workers: int = 2


def _file(store: ArtifactStore, key: str):
    path = store.path(*NATIONAL_FILE) if key == NATIONAL_KEY else area_path(store, key)
    if not path.is_file():
        raise FileNotFoundError(f"area file {path} ({key}) does not exist: materialize "
                                "area_datasets and national_dataset first")
    return path


def _report_areas(store: ArtifactStore, config: "ValidationConfig", settings: BuildSettings
                  ) -> tuple[str, Optional[int], list]:
    """(mode, rotation or None, areas re-simulated): the run config's mode, else the preset's;
    for ``"rotating"`` the slice from the config, else from the regional weights' sha256 (the
    same fit always checks the same districts, a new fit another slice)."""
    mode = config.areas or settings.resolve().validation_areas
    if mode != "rotating":
        return mode, None, val.areas_for_report(mode)
    rotation = config.rotation
    if rotation is None:
        rotation = vsample.rotation_from_key(sha256_file(store.path(*WEIGHTS["regional"])))
    return mode, int(rotation), val.areas_for_report(mode, int(rotation))


def _step_file(store: ArtifactStore, step: int):
    return store.path(*STEPS, f"step_{step:02d}.npz")


def _area_set(keys, kinds, tables=None, cells=None, wix=None) -> val.AreaSet:
    n = len(keys)
    return val.AreaSet(list(keys), list(kinds), tables or [None] * n, cells or [None] * n,
                       wix or [None] * n)


UPSTREAM = ("area_datasets", "national_dataset", "calibration_package", "regional_weights",
            "national_weights")


# one Nothing input per upstream asset (a fan-in list of graph inputs fails to plan)
@dg.op(ins={name: dg.In(dg.Nothing) for name in UPSTREAM},
       out=dg.DynamicOut(dagster_type=dg.Nothing),
       description="Read the area files, plan the rows and the stacked groups (plan.npz).")
@measured
def plan_validation(context: dg.OpExecutionContext, config: ValidationConfig,
                    store: ArtifactStore, settings: BuildSettings):
    store.sweep_temporaries(context, "areas/validation", "/".join(STEPS))
    for old in store.folder(*STEPS).glob("step_*.npz"):  # an earlier plan's steps
        old.unlink()
    mode, rotation, areas = _report_areas(store, config, settings)
    keys = [a.key for a in areas] + [NATIONAL_KEY]
    kinds = [a.kind for a in areas] + ["national"]
    # the plan needs each file's households' states and districts only
    tables = [{"household": pd.DataFrame(read_columns(_file(store, k), PLAN_COLUMNS))}
              for k in keys]
    package = load_package(store.path(*PACKAGE))
    plan = val.plan_validation(_area_set(keys, kinds, tables), package.targets,
                               config.max_households_per_simulation,
                               config.states_per_simulation)
    group_households = [sum(plan.piece_households[i] for i in g) for g in plan.groups]
    min_steps = config.workers if policyengine_started() else 1
    steps = vsteps.plan_steps(group_households, config.households_per_step, min_steps)
    vsteps.save_plan(plan, keys, kinds, steps, store.path(*PLAN))
    sample = "" if rotation is None else (f", district slice {rotation} of "
                                          f"{vsample.DISTRICT_SLICES}")
    context.log.info(f"validating {len(keys)} files ({mode}{sample}) in {len(plan.groups)} stacked "
                     f"simulation(s) of {group_households} households, {len(steps)} step(s)")
    for s, members in enumerate(steps):
        yield dg.DynamicOutput(None, mapping_key=f"g{s:02d}", metadata={
            "groups": len(members),
            "households": int(sum(group_households[g] for g in members))})


@dg.op(ins={"planned": dg.In(dg.Nothing)}, out=dg.Out(dg.Nothing),
       retry_policy=dg.RetryPolicy(max_retries=2, delay=5),
       description="Simulate the stacked groups of one step (steps/step_NN.npz).")
@measured
def simulate_groups(context: dg.OpExecutionContext, store: ArtifactStore):
    step = int(context.get_mapping_key()[1:])
    plan, keys, kinds, steps = vsteps.load_plan(store.path(*PLAN))
    groups = steps[step]
    needed = sorted({plan.pieces[i][0] for g in groups for i in plan.groups[g]})
    tables = [None] * len(keys)
    for a in needed:  # only this step's files
        tables[a] = read_dataset(_file(store, keys[a]))[0]
    area_set = _area_set(keys, kinds, tables)
    t0 = time.perf_counter()
    totals, seconds = {}, []
    for g in groups:
        t1 = time.perf_counter()
        totals[g] = val.simulate_group(area_set, plan, g, YEAR, log=context.log.info)
        seconds.append(round(time.perf_counter() - t1, 2))
    vsteps.save_totals(totals, _step_file(store, step))
    return dg.Output(None, metadata={
        "step": step, "groups": len(groups), "files": len(needed),
        "households": int(sum(plan.piece_households[i] for g in groups
                              for i in plan.groups[g])),
        "group_seconds": dg.MetadataValue.json(seconds),
        "simulation_seconds": round(time.perf_counter() - t0, 2),
        "pid": dg.MetadataValue.int(os.getpid())})


@dg.op(ins={"national_dataset": dg.In(dg.Nothing)}, out=dg.Out(dg.Nothing),
       retry_policy=dg.RetryPolicy(max_retries=2, delay=5),
       description="The national file's totals against the published figures "
                   "(national_aggregates.csv).")
@measured
def simulate_national(context: dg.OpExecutionContext, store: ArtifactStore):
    """Simulates the national file (``national_check.national_aggregates``) as soon as it
    exists, beside the area steps; ``finish_validation`` reads the table back."""
    aggregates = national_check.national_aggregates(store.path(*NATIONAL_FILE), store.raw_dir,
                                                    YEAR)
    with atomic_path(store.path(*NATIONAL_AGGREGATES_CSV), suffix=".csv") as tmp:
        aggregates.to_csv(tmp, index=False, float_format="%.10g")
    return dg.Output(None, metadata={
        "national_aggregates": dg.MetadataValue.md(national_check.to_markdown(aggregates)),
        "flagged": int((aggregates["status"] == "FLAG").sum())})


@dg.op(ins={"simulated": dg.In(dg.Nothing), "national": dg.In(dg.Nothing)},
       out=dg.Out(dg.Nothing),
       description="Sum the steps' totals, add X @ w, write the report and its summaries.")
@measured
def finish_validation(context: dg.OpExecutionContext, config: ValidationConfig,
                      store: ArtifactStore, settings: BuildSettings):
    t0 = time.perf_counter()
    plan, keys, kinds, steps = vsteps.load_plan(store.path(*PLAN))
    mode, rotation, areas = _report_areas(store, config, settings)
    totals = {}
    for s in range(len(steps)):
        got = vsteps.load_totals(_step_file(store, s))
        if sorted(got) != sorted(steps[s]):
            raise val.ValidationError(f"step {s}: groups {sorted(got)}, planned {steps[s]}")
        totals.update(got)
    package = load_package(store.path(*PACKAGE))
    inputs = _Inputs(store, "regional", "clone")  # geography and cells only
    national_w = _fit_weights(store.path(*WEIGHTS["national"]), "national")
    national_w = asm.check_weights(national_w, inputs.geo, "national weights")
    by_key = {a.key: a for a in areas}
    cells, wix = [], []
    for key in keys:
        if key == NATIONAL_KEY:
            cells.append(asm.active_cells(national_w, np.ones_like(national_w, dtype=bool)))
            wix.append(1)
        else:
            cells.append(asm.active_cells(inputs.weights,
                                          asm.area_cell_mask(inputs.geo, by_key[key])))
            wix.append(0)
    report = val.finish_validation(
        _area_set(keys, kinds, cells=cells, wix=wix), package.targets, package.matrix,
        [inputs.weights.reshape(-1), national_w.reshape(-1)], inputs.geo.n_records, plan,
        [totals[g] for g in range(len(plan.groups))])
    summary = val.summarize(report)
    # national aggregates against published figures (issue 20; spec §6.6): the national_aggregates
    # step's table
    aggregates = pd.read_csv(store.path(*NATIONAL_AGGREGATES_CSV))
    csv_path = store.path(*REPORT_CSV)
    with atomic_path(csv_path, suffix=".csv") as tmp:
        report.to_csv(tmp, index=False, float_format="%.10g")
    in_sample = report[~report["holdout"]]
    bad = in_sample[~in_sample["consistent"]]
    summary_obj = {
        "mode": mode, "areas": len(keys) - 1, "national": True, "rows": len(report),
        "tolerance": val.CONSISTENCY_TOLERANCE,
        "inconsistent_in_sample": int(len(bad)),
        "sanity_failures": int((report["sanity_check"] == "FAIL").sum()),
        "by_level": json.loads(summary.to_json(orient="records")),
        "report_sha256": sha256_file(csv_path),
        "national_aggregates": json.loads(aggregates.to_json(orient="records")),
        "national_aggregates_flagged": int((aggregates["status"] == "FLAG").sum()),
    }
    shares = _county_shares(store, package.targets)
    with atomic_path(store.path(*COUNTY_SHARES_CSV), suffix=".csv") as tmp:
        shares.to_csv(tmp, index=False, float_format="%.6g")
    structure = _file_structure(store, inputs, national_w, set(keys))
    with atomic_path(store.path(*FILE_STRUCTURE_CSV), suffix=".csv") as tmp:
        structure.to_csv(tmp, index=False)
    summary_obj.update({
        "rotation": rotation, "district_slices": vsample.DISTRICT_SLICES if rotation is not None
        else None, "simulated_files": len(keys),
        "files_structure_checked": len(structure),
        "files_structure_mismatched": int((structure["problems"] != "").sum())})
    summary_obj["county_shares_flagged"] = shares.loc[shares["flagged"], "state"].tolist()
    summary_obj["county_tvd_median"] = round(float(shares["tvd"].median()), 4)
    atomic_write_json(store.path(*SUMMARY_JSON), summary_obj)
    worst = report.sort_values("xw_rel_diff", ascending=False).head(10)[
        ["area", "target_name", "sim_value", "xw_value", "xw_rel_diff"]]
    return dg.Output(None, metadata={
        "mode": mode, "areas": len(keys) - 1, "rows": len(report),
        "summary": _md(summary.round(4)),
        "inconsistent_in_sample": int(len(bad)),
        "max_xw_rel_diff_in_sample": float(in_sample["xw_rel_diff"].max())
        if len(in_sample) else 0.0,
        "sanity_failures": summary_obj["sanity_failures"],
        "worst_consistency": _md(worst),
        "national_aggregates": dg.MetadataValue.md(national_check.to_markdown(aggregates)),
        "national_aggregates_flagged": summary_obj["national_aggregates_flagged"],
        "path": dg.MetadataValue.path(str(csv_path)),
        "county_tvd_median": summary_obj["county_tvd_median"],
        "county_shares_flagged": ", ".join(summary_obj["county_shares_flagged"]) or "none",
        "steps": len(steps), "stacked_simulations": len(plan.groups),
        "simulated_files": len(keys),
        "district_slice": "all" if rotation is None else
        f"{rotation} of {vsample.DISTRICT_SLICES}",
        "files_structure_checked": summary_obj["files_structure_checked"],
        "files_structure_mismatched": summary_obj["files_structure_mismatched"],
        "seconds": round(time.perf_counter() - t0, 1),
    })


@dg.config_mapping(config_schema=ValidationConfig.to_config_schema())
def _to_step_config(values: dict) -> dict:
    """The asset's run config goes to its planning and finishing steps."""
    return {"plan_validation": {"config": values}, "finish_validation": {"config": values}}


@dg.graph_asset(
    backfill_policy=dg.BackfillPolicy.single_run(),
    group_name="areas",
    ins={name: dg.AssetIn(dagster_type=dg.Nothing) for name in UPSTREAM},
    kinds={"python", "csv"},
    config=_to_step_config,
    code_version=code_version("assets.validation", "calibration_core.validation",
                              "calibration_core.validation_steps",
                              "calibration_core.validation_sample", "calibration_core.assembly",
                              simulates=True),
    description=(
        "For every area of the report (all 488 by default; a sample with every kind when the "
        "preset says so) and the national file, every target of its geography (in-sample and "
        "hold-out): target, the total policyengine-us computes from the file, X·w, errors and "
        "sanity ceilings (`areas/validation/validation_results.csv`, `summary.json`). The files "
        "are stacked into a few simulations of several files each (ids offset per file; a few "
        "states per simulation, the national file split by state), not one per file. Dagster "
        "steps: `plan_validation`, one `simulate_groups` step per group of stacked simulations "
        "(dynamic outputs; a failed one retries alone; their totals in "
        "`areas/validation/steps/`), `simulate_national` (the national file against published "
        "figures, beside them), `finish_validation`."
    ),
)
def validation_report(area_datasets, national_dataset, calibration_package, regional_weights,
                      national_weights):
    planned = plan_validation(area_datasets=area_datasets, national_dataset=national_dataset,
                              calibration_package=calibration_package,
                              regional_weights=regional_weights,
                              national_weights=national_weights)
    national = simulate_national(national_dataset=national_dataset)
    return finish_validation(simulated=planned.map(lambda p: simulate_groups(p)).collect(),
                             national=national)


def _county_shares(store: ArtifactStore, targets: pd.DataFrame) -> pd.DataFrame:
    """Per state file: its weighted county shares (persons) against the population shares
    expected from the district populations and P(county | district) (TVD, the TVD sampling
    alone would give, flagged: ``geography.county_share_report``)."""
    from calibration_core import geography as geo_mod
    from calibration_core.areas import STATES
    from calibration_core.raw_inputs import raw_path

    county = geo_mod.load_county_table(raw_path(store.raw_dir, geo_mod.COUNTY_TABLE_FILE))
    try:
        population = geo_mod.district_population(targets)
    except geo_mod.GeographyError:  # no district populations in the package: districts equal
        population = pd.Series(1.0, index=county["district_geoid"].unique())
    expected = geo_mod.expected_county_shares(county, population)
    rows = []
    for abbr, fips, _, _ in STATES:
        path = area_path(store, f"state-{abbr}")
        if not path.is_file():
            continue
        tables, _ = read_dataset(path)
        hh = tables["household"]
        persons = np.bincount(tables["person"]["person_household_id"].to_numpy(),
                              minlength=len(hh))
        summary, _ = geo_mod.county_share_report(
            fips, hh["county_fips"].astype(str).to_numpy(),
            hh["household_weight"].to_numpy(float) * persons, expected)
        rows.append(summary)
    return pd.DataFrame(rows, columns=["state", "counties_expected", "counties_in_file", "tvd",
                                       "noise_tvd", "effective_households", "flagged",
                                       "largest_gap_county"])


def _file_structure(store: ArtifactStore, inputs: _Inputs, national_w: np.ndarray,
                    simulated: set) -> pd.DataFrame:
    """One row per file (every area of the catalog and the national file): its households,
    whether policyengine-us re-simulated it in this report, and the problems
    (``validation_sample.file_matches_cells``: the file holds its area's active cells at their
    weights and geography; "" when none)."""
    from calibration_core.areas import all_areas

    geo = inputs.geo
    # with county classes (the default) files are written at each clone's county; without
    # them area_datasets may write one county per state (AreaConfig county "matrix")
    county = geo.county_fips if inputs.frozen is not None else None
    rows = []
    for area in list(all_areas()) + [None]:
        key = NATIONAL_KEY if area is None else area.key
        path = store.path(*NATIONAL_FILE) if area is None else area_path(store, key)
        weights2d = national_w if area is None else inputs.weights
        clone, record = asm.active_cells(weights2d, asm.area_cell_mask(geo, area))
        if not path.is_file():
            problems = [f"{key}: {path} does not exist"]
            households = 0
        else:
            columns = read_columns(path, vsample.STRUCTURE_COLUMNS)
            households = len(columns["household_weight"])
            problems = vsample.file_matches_cells(key, columns, clone, record, weights2d,
                                                  geo.state_fips, geo.district_geoid, county)
        rows.append({"area": key, "households": households, "simulated": key in simulated,
                     "problems": "; ".join(problems)})
    return pd.DataFrame(rows)


def _report(store: ArtifactStore) -> pd.DataFrame:
    return pd.read_csv(store.path(*REPORT_CSV), dtype={"geo_id": str})


@dg.asset_check(asset=validation_report, blocking=True,
                description="|Microsimulation total - X·w| <= 0.5% of max(|X·w|, 1) for every "
                            "in-sample target of every area in the report.")
def xw_consistency(store: ArtifactStore) -> dg.AssetCheckResult:
    report = _report(store)
    rows = report[~report["holdout"].astype(bool)]
    bad = rows[~rows["consistent"].astype(bool)]
    return dg.AssetCheckResult(
        passed=bad.empty,
        metadata={"in_sample_rows": len(rows), "inconsistent": len(bad),
                  "max_xw_rel_diff": float(rows["xw_rel_diff"].max()) if len(rows) else 0.0,
                  "worst": _md(bad.sort_values("xw_rel_diff", ascending=False).head(20)[
                      ["area", "target_name", "sim_value", "xw_value", "xw_rel_diff"]])
                  if len(bad) else "none"})


@dg.asset_check(asset=validation_report, blocking=True,
                description="Every area file and the national file hold exactly their area's "
                            "active cells of the fit, in column order, at the fitted weights "
                            "and the cells' state, district and county: so each file's totals "
                            "are X·w of its cells, including the files policyengine-us did not "
                            "re-simulate (areas/validation/file_structure.csv).")
def files_match_fit(store: ArtifactStore) -> dg.AssetCheckResult:
    table = pd.read_csv(store.path(*FILE_STRUCTURE_CSV), keep_default_na=False)
    bad = table[table["problems"] != ""]
    return dg.AssetCheckResult(
        passed=bad.empty,
        metadata={"files": len(table), "simulated": int(table["simulated"].astype(bool).sum()),
                  "mismatched": len(bad),
                  "details": dg.MetadataValue.md("\n".join(f"- {p}" for p in bad["problems"]
                                                            .head(50))) if len(bad) else "none"})


@dg.asset_check(asset=validation_report, blocking=True,
                description="Every simulated total is finite and under its level's sanity "
                            "ceiling (dollars / persons / households).")
def sanity_ceilings(store: ArtifactStore) -> dg.AssetCheckResult:
    report = _report(store)
    bad = report[report["sanity_check"] == "FAIL"]
    return dg.AssetCheckResult(
        passed=bad.empty,
        metadata={"rows": len(report), "failures": len(bad),
                  "details": _md(bad.head(20)[["area", "target_name", "sanity_reason"]])
                  if len(bad) else "none"})


@dg.asset_check(asset=validation_report, blocking=False,
                description="The national file's totals (income tax, EITC, CTC, SNAP, SSI, "
                            "Medicaid, ACA PTC, TANF, Social Security, ...) against published "
                            "figures (CBO/Treasury/KFF via policyengine-us parameters, IRS SOI "
                            "raw files): every ratio inside its declared tolerance. A warning, "
                            "not a release gate.")
def national_aggregates(store: ArtifactStore) -> dg.AssetCheckResult:
    table = pd.read_csv(store.path(*NATIONAL_AGGREGATES_CSV))
    flagged = table[table["status"] == "FLAG"]
    return dg.AssetCheckResult(
        passed=flagged.empty, severity=dg.AssetCheckSeverity.WARN,
        metadata={"flagged": len(flagged),
                  "flagged_variables": ", ".join(flagged["variable"]) or "none",
                  "table": dg.MetadataValue.md(national_check.to_markdown(table))})


@dg.asset_check(asset=validation_report, blocking=False,
                description="Each state file's weighted county shares (persons) against the "
                            "population shares expected from district populations and "
                            "P(county | district): total variation distance per state; a state "
                            "more than 0.10 above the TVD its sample size alone explains is "
                            "flagged. A warning, not a release gate.")
def county_shares(store: ArtifactStore) -> dg.AssetCheckResult:
    table = pd.read_csv(store.path(*COUNTY_SHARES_CSV))
    flagged = table[table["flagged"].astype(bool)]
    return dg.AssetCheckResult(
        passed=flagged.empty, severity=dg.AssetCheckSeverity.WARN,
        metadata={"flagged": len(flagged), "flagged_states": ", ".join(flagged["state"]) or
                  "none", "tvd_median": round(float(table["tvd"].median()), 4),
                  "table": _md(table.sort_values("tvd", ascending=False).round(4))})


@dg.asset_check(asset=validation_report, blocking=True,
                description="All area files (states, districts, the catalog's cities) and the "
                            "national file exist.")
def area_files_complete(store: ArtifactStore) -> dg.AssetCheckResult:
    missing = [k for k in all_area_keys() if not area_path(store, k).is_file()]
    national = store.path(*NATIONAL_FILE).is_file()
    return dg.AssetCheckResult(
        passed=not missing and national,
        metadata={"area_files": len(all_area_keys()) - len(missing),
                  "missing": ", ".join(missing[:50]) or "none",
                  "national_file": national})
