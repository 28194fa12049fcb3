"""Group ``calibration``: clone geography and the calibration package (the state simulations,
a graph of steps, are in ``assets/state_simulations.py``).

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


class GeographyConfig(dg.Config):
    method: str = "population"  # or "uniform" (the reference: every district 1/436)
    top_agi_quantile: float = 0.9


class PackageConfig(dg.Config):
    target_config: Optional[str] = None  # YAML path; None: calibration_core/target_config.yaml


@dg.asset(
    backfill_policy=dg.BackfillPolicy.single_run(),
    group_name="calibration",
    deps=["state_simulations", "targets_db", "raw_public_inputs"],
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
    backfill_policy=dg.BackfillPolicy.single_run(),
    group_name="calibration",
    deps=[geography_assignment, "state_simulations", "targets_db", "stratified_microdata"],
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
