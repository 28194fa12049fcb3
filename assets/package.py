"""Group ``calibration``: state simulations, clone geography and the calibration package.

Artifacts (under the store root): ``calibration/state_simulations.npz``,
``calibration/geography_assignment.npz``, ``calibration/package/`` (matrix.npz, targets.parquet,
initial_weights.npy, metadata.json; see ``calibration_core.package_io``).

Every file is a function of the inputs (equal inputs, byte-identical files); wall times are
reported as Dagster metadata only. Each asset first removes temporaries that killed writes left
in ``calibration/``.
"""

import time
from typing import Optional

import dagster as dg
import numpy as np
import pandas as pd

from assets._metadata import markdown_table as _md, measured
from assets._code_version import code_version
from calibration_core import aca_takeup
from calibration_core import geography as geo_mod
from calibration_core import package as pkg
from calibration_core import simulation as simu
from calibration_core import targets_db as tdb
from calibration_core.h5_dataset import read_dataset
from calibration_core.io_utils import sha256_file
from calibration_core.package_io import load_package, save_package
from calibration_core.raw_inputs import raw_path
from resources.settings import BuildSettings
from resources.store import ArtifactStore

TARGETS_DB = ("targets", "targets.db")
MICRODATA = ("microdata", "stratified_2024.h5")
SIMULATIONS = ("calibration", "state_simulations.npz")
GEOGRAPHY = ("calibration", "geography_assignment.npz")
PACKAGE = ("calibration", "package")
YEAR = 2024


def _inputs(store: ArtifactStore):
    db = store.path(*TARGETS_DB)
    return tdb.read_targets(db, YEAR), tdb.read_constraints(db)


class StateSimulationsConfig(dg.Config):
    workers: int = 2  # processes running stacked chunks in parallel
    max_households_per_chunk: int = simu.DEFAULT_CHUNK_HOUSEHOLDS  # bounds memory per worker
    # one state copy per county class (a probe finds the classes; exact X.w with every
    # household in its own county); False: one copy per state at its most populous county
    county_classes: bool = True
    probe_households: int = simu.DEFAULT_PROBE_HOUSEHOLDS
    # ACA take-up calibrated per state to the SOI count of credit returns (aca_takeup); False
    # (or no aca_ptc_state.csv among the raw inputs) keeps the flat base draw
    aca_state_takeup: bool = True


class GeographyConfig(dg.Config):
    method: str = "population"  # or "uniform" (the reference: every district 1/436)
    top_agi_quantile: float = 0.9


class PackageConfig(dg.Config):
    target_config: Optional[str] = None  # YAML path; None: calibration_core/target_config.yaml


@dg.asset(
    group_name="calibration",
    deps=["stratified_microdata", "targets_db", "raw_public_inputs"],
    kinds={"python", "numpy"},
    code_version=code_version("assets.package", "calibration_core.simulation",
                              "calibration_core.targets_db", "calibration_core.h5_dataset",
                              "calibration_core.aca_takeup", simulates=True),
    description=(
        "Every target and constraint variable of every base household as if it lived in each "
        "of the 51 states (`calibration/state_simulations.npz`), from stacked simulations "
        "(households copied into several states each, ids offset) in chunks of at most "
        f"{simu.DEFAULT_CHUNK_HOUSEHOLDS:,} rows on parallel processes; each state's own rules "
        "run on that state's rows only. The first chunk runs traced: policyengine-us's dependency "
        "graph decides which variables cannot depend on the state (stored once, checked equal "
        "in every chunk). "
        "Take-up-gated variables hold eligible values; the package applies seeded take-up."
    ),
)
@measured
def state_simulations(context: dg.AssetExecutionContext, config: StateSimulationsConfig,
                      store: ArtifactStore) -> dg.MaterializeResult:
    targets, constraints = _inputs(store)
    variables = simu.needed_variables(targets, constraints)
    county = geo_mod.load_county_table(raw_path(store.raw_dir, geo_mod.COUNTY_TABLE_FILE))
    population = geo_mod.district_population(targets)
    out = store.path(*SIMULATIONS)
    store.sweep_temporaries(context, "calibration")
    state_takeup, aca_meta = [], {"aca_state_takeup": "off"}
    published = store.raw_dir / aca_takeup.PUBLISHED_FILE
    if config.aca_state_takeup and published.is_file():
        growth = store.raw_dir / aca_takeup.GROWTH_FILE
        takeup, table, figures = aca_takeup.calibrate(store.path(*MICRODATA), published, YEAR,
                                                      growth if growth.is_file() else None)
        state_takeup = [takeup]
        context.log.info(f"ACA take-up calibrated per state: {figures['eligible_units']:,.0f} "
                         f"eligible tax units, {figures['published_units']:,.0f} SOI returns "
                         f"(uprated to 2024), "
                         f"national rate {figures['national_rate']:.3f}")
        aca_meta = {"aca_state_takeup": _md(table.round(3), index=True),
                    "aca_eligible_units": round(figures["eligible_units"]),
                    "aca_eligible_credit_usd": round(figures["eligible_credit_usd"]),
                    "aca_published_units": round(figures["published_units"]),
                    "aca_soi_returns_2022": round(figures["soi_returns_2022"]),
                    "aca_national_takeup_rate": round(figures["national_rate"], 4),
                    "aca_takeup_source": figures["source"]}
    elif config.aca_state_takeup:
        context.log.warning(f"{published} absent: ACA take-up stays the flat base draw")
    context.log.info(f"simulating {variables} for all 51 states")
    result = simu.simulate_states(
        store.path(*MICRODATA), variables, county, population,
        max_households_per_chunk=config.max_households_per_chunk, workers=config.workers,
        log=context.log.info, county_classes=config.county_classes,
        n_probes=config.probe_households, state_takeup=state_takeup)
    simu.save_state_simulations(result, out)
    m = result.metadata
    dep = pd.DataFrame({"variable": list(result.dependence),
                        "entity": [result.entity[v] for v in result.dependence],
                        "depends_on_state": [", ".join(d) if d else "no (computed once)"
                                             for d in result.dependence.values()]})
    digest = sha256_file(out)
    return dg.MaterializeResult(metadata={
        "path": dg.MetadataValue.path(str(out)),
        "households": m["n_households"], "persons": m["n_persons"],
        "variables": dg.MetadataValue.md(dep.to_markdown(index=False)),
        "state_invariant": ", ".join(m["state_invariant"]) or "(none)",
        "chunks": len(m["chunks"]), "chunk_seconds": dg.MetadataValue.json(m["chunk_seconds"]),
        "traced_chunk_seconds": m["traced_chunk_seconds"], "stacked_seconds": m["stacked_seconds"],
        "policyengine_start_seconds": round(float(sum(m["start_seconds"])), 2),
        # state rules computed on their own state's rows (StateRouter), and those that could not
        "traced_chunk_routed_formulas": m["traced_chunk_routed_formulas"],
        "unroutable_formulas": ", ".join(m["unroutable_formulas"]) or "(none)",
        "total_seconds": m["total_seconds"],
        "takeup_inputs_forced_true": ", ".join(m["takeup_inputs_forced_true"]) or "(none)",
        # county classes: state copies simulated (51 = one per state) and classes per state
        "state_copies": m["state_copies"],
        "county_classes": dg.MetadataValue.json(
            {k: v for k, v in m["county_classes"].items() if v > 1}),
        "probe_seconds": m["probe_seconds"],
        # computed in every county class; the others once per state (the default copy)
        "county_dependent": ", ".join(m.get("county_dependent", [])) or "(none)",
        "sha256": digest, **aca_meta,
    }, data_version=dg.DataVersion(digest[:32]))


@dg.asset(
    group_name="calibration",
    deps=[state_simulations, "targets_db", "raw_public_inputs"],
    kinds={"python", "numpy"},
    code_version=code_version("assets.package", "calibration_core.geography"),
    description=(
        "Clone-and-assign (`calibration/geography_assignment.npz`): for each of the preset's "
        "clones of each household a district drawn in proportion to district population "
        "(top-AGI decile: to district AGI), a county inside it, and its state; no two clones of "
        "a household in one district while avoidable; draws keyed by (purpose, household id, "
        "clone)."
    ),
)
@measured
def geography_assignment(context: dg.AssetExecutionContext, config: GeographyConfig,
                         store: ArtifactStore, settings: BuildSettings) -> dg.MaterializeResult:
    preset = settings.resolve()
    targets, _ = _inputs(store)
    county = geo_mod.load_county_table(raw_path(store.raw_dir, geo_mod.COUNTY_TABLE_FILE))
    population = geo_mod.district_population(targets)
    agi_mass, agi_source = geo_mod.district_agi(targets, population)
    sims = simu.load_state_simulations(store.path(*SIMULATIONS))
    store.sweep_temporaries(context, "calibration")
    agi = sims.household_total("adjusted_gross_income")
    start = time.perf_counter()
    geo = geo_mod.assign_geography(
        sims.structure.ids["household"], agi, preset.clones, county, population, agi_mass,
        method=config.method, top_agi_quantile=config.top_agi_quantile, salt=str(preset.seed))
    seconds = time.perf_counter() - start
    out = geo_mod.save_geography(geo, store.path(*GEOGRAPHY))
    shares = geo_mod.summarize(geo, population)
    worst = shares.assign(diff=(shares["clone_share"] - shares["population_share"]).abs())
    digest = sha256_file(out)
    context.log.info(f"{geo.n_records} households x {geo.n_clones} clones in {seconds:.2f} s")
    return dg.MaterializeResult(metadata={
        "path": dg.MetadataValue.path(str(out)),
        "records": geo.n_records, "clones": geo.n_clones, "method": config.method,
        "top_agi_records": geo.metadata["top_agi_records"], "agi_routing_source": agi_source,
        "repeated_district_cells": geo.metadata["repeated_district_cells"],
        "districts_used": geo.metadata["districts_used"],
        "state_shares": _md(worst.sort_values("diff", ascending=False).head(10).round(4)),
        "seconds": round(seconds, 3), "sha256": digest,
    }, data_version=dg.DataVersion(digest[:32]))


@dg.asset(
    group_name="calibration",
    deps=[geography_assignment, state_simulations, "targets_db", "stratified_microdata"],
    kinds={"python", "scipy", "parquet"},
    code_version=code_version("assets.package", "calibration_core.package",
                              "calibration_core.package_io", "calibration_core.simulation",
                              "calibration_core.geography", "calibration_core.targets_db",
                              "calibration_core.aca_takeup"),
    description=(
        "`calibration/package/`: targets selected by the target config (YAML include/exclude/"
        "holdout rules), a CSR float32 matrix of targets x clone-households built per "
        "(variable, constraints) family without loops over clones or targets, the targets "
        "table (names, values, holdout, achievable), initial weights (base weight / clones) "
        "and metadata with every input's sha256."
    ),
)
@measured
def calibration_package(context: dg.AssetExecutionContext, config: PackageConfig,
                        store: ArtifactStore) -> dg.MaterializeResult:
    start = time.perf_counter()
    store.sweep_temporaries(context, "calibration")
    targets, constraints = _inputs(store)
    target_config = pkg.load_target_config(config.target_config)
    sims = simu.load_state_simulations(store.path(*SIMULATIONS))
    geo = geo_mod.load_geography(store.path(*GEOGRAPHY))
    tables, _ = read_dataset(store.path(*MICRODATA))
    weights = tables["household"]["household_weight"].to_numpy(dtype=float)
    config_path = config.target_config or str(pkg.DEFAULT_TARGET_CONFIG)
    sha = {"targets_db": sha256_file(store.path(*TARGETS_DB)),
           "stratified_microdata": sha256_file(store.path(*MICRODATA)),
           "state_simulations": sha256_file(store.path(*SIMULATIONS)),
           "geography_assignment": sha256_file(store.path(*GEOGRAPHY)),
           "target_config": sha256_file(config_path),
           "county_cd_distributions": sha256_file(raw_path(store.raw_dir,
                                                           geo_mod.COUNTY_TABLE_FILE))}
    package = pkg.build_package(targets, constraints, sims, geo, weights, target_config,
                                input_sha256=sha, year=YEAR, log=context.log.info)
    # as given in run config, or the default's place in the repository: no absolute path of
    # this checkout in the package (its content and sha256 are recorded too)
    package.metadata["target_config_path"] = (config.target_config
                                              or "calibration_core/target_config.yaml")
    folder = save_package(package, store.path(*PACKAGE))
    m = package.metadata
    fam = pd.DataFrame(m["targets_by_family"]).T.fillna(0).astype(int)
    unach = package.targets.loc[~package.targets["achievable"], ["name", "value"]]
    check = m.get("initial_population_check", {})
    return dg.MaterializeResult(metadata={
        "path": dg.MetadataValue.path(str(folder)),
        "shape": f"{package.n_targets} x {package.n_columns}", "nnz": m["nnz"],
        "density": round(m["density"], 6), "targets_by_level": dg.MetadataValue.json(
            m["targets_by_level"]),
        "targets_by_family": _md(fam, index=True), "holdout_targets": m["holdout_targets"],
        "unachievable_count": m["unachievable_count"],
        "unachievable": _md(unach.head(50)) if len(unach) else "none",
        "initial_population_error_pct": round(100 * check.get("relative_error", float("nan")),
                                              2),
        "assembly_seconds": m["assembly_seconds"],
        "build_seconds": round(time.perf_counter() - start, 2),
        "input_sha256": dg.MetadataValue.json(sha),
    })


@dg.asset_check(asset=calibration_package,
                description="Unachievable (all-zero) rows are reported by name and left out of "
                            "the loss (achievable=False, outside the fit mask).")
def calibration_package_unachievable(store: ArtifactStore) -> dg.AssetCheckResult:
    package = load_package(store.path(*PACKAGE))
    zero_rows = np.diff(package.matrix.indptr) == 0
    in_loss = zero_rows & package.fit_mask()
    names = package.targets.loc[zero_rows, "name"].tolist()
    return dg.AssetCheckResult(
        passed=not in_loss.any(),
        severity=dg.AssetCheckSeverity.ERROR if in_loss.any() else dg.AssetCheckSeverity.WARN,
        metadata={"unachievable_count": len(names),
                  "unachievable": dg.MetadataValue.md("\n".join(f"- {n}" for n in names[:200]))
                  if names else "none",
                  "in_loss": int(in_loss.sum())},
    )


@dg.asset_check(asset=calibration_package,
                description="With the initial weights the national population is within 10% of "
                            "its target.")
def calibration_package_population(store: ArtifactStore) -> dg.AssetCheckResult:
    package = load_package(store.path(*PACKAGE))
    check = pkg.national_population_check(package)
    if not check:
        return dg.AssetCheckResult(passed=False, metadata={"reason": "no national population "
                                                                      "target in the package"})
    return dg.AssetCheckResult(
        passed=abs(check["relative_error"]) <= 0.10,
        metadata={"target": check["target"], "estimate": check["estimate"],
                  "relative_error_pct": round(100 * check["relative_error"], 3)})
