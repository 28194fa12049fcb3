"""Group ``areas``: the 488 area datasets and the national dataset (the validation report, a
graph of steps, is in ``assets/validation.py``).

Artifacts (under the store root): ``areas/states/CA.h5``, ``areas/districts/CA-12.h5``,
``areas/cities/NYC.h5`` (one per partition of :data:`area_partitions`),
``areas/national/US.h5``.

``area_datasets`` is partitioned by the 488 area keys and backfilled in one run
(``BackfillPolicy.single_run``, as every asset of the graph): a run builds the partitions it is
given in one step, loading the base data, geography and weights once (all 488 at the full preset:
230 s, under 10.1 GB; README "What a full build needs"), and ``dagster asset materialize
--partition-range`` accepts the whole graph, which Dagster's CLI allows only when every selected
asset has a single-run policy. Each partition gets its own materialization with its own metadata
(households, persons, weighted population, file size, sha256).

Weights are read only from a complete fit folder (``fit_summary.json`` present and every output
matching it: ``calibration_core.fit.load_fit_weights``). Each asset first removes temporaries
that killed writes left in the folders it writes (``.MA-01.h5.p1234.k2j3h4g5.h5``).
"""

import json
import time
from pathlib import Path
from typing import Optional

import dagster as dg
import numpy as np
import pandas as pd
from dagster._core.storage.tags import (
    ASSET_PARTITION_RANGE_END_TAG,
    ASSET_PARTITION_RANGE_START_TAG,
)

from assets._metadata import markdown_table as _md, measured
from assets._code_version import code_version
from calibration_core import aca_takeup
from calibration_core import assembly as asm
from calibration_core.areas import STATE_FIPS, all_area_keys, parse_area_key
from calibration_core.fit import load_fit_weights
from calibration_core.geography import load_geography
from calibration_core.h5_dataset import read_dataset, validate_tables, write_dataset
from calibration_core.io_utils import sha256_file
from calibration_core.package_io import METADATA_FILE
from calibration_core.simulation import load_state_simulations
from resources.store import ArtifactStore

YEAR = 2024
MICRODATA = ("microdata", "stratified_2024.h5")
SIMULATIONS = ("calibration", "state_simulations.npz")
GEOGRAPHY = ("calibration", "geography_assignment.npz")
PACKAGE = ("calibration", "package")
WEIGHTS = {"regional": ("calibration", "regional", "weights.npy"),
           "national": ("calibration", "national", "weights.npy")}
AREA_FOLDERS = ("areas/states", "areas/districts", "areas/cities")
AREAS = "areas"
NATIONAL_FILE = ("areas", "national", "US.h5")

area_partitions = dg.StaticPartitionsDefinition(all_area_keys())


class AreaConfig(dg.Config):
    # "clone" (default): each household in the county drawn for its clone, which the package
    # valued it at (exact with state_simulations' county_classes, the default); "matrix":
    # every household of a state in the one county its state's copy was simulated at (the
    # representative-county mode, with county_classes off)
    county: str = "clone"


def area_path(store: ArtifactStore, key: str) -> Path:
    return store.path(AREAS, parse_area_key(key).relative_path)


class _Inputs:
    """Base data, geography, weights and take-up specs, loaded once per run."""

    def __init__(self, store: ArtifactStore, which: str, county: str):
        if county not in ("matrix", "clone"):
            raise ValueError(f"area config county must be 'matrix' or 'clone', got {county!r}")
        t0 = time.perf_counter()
        weights_path = store.path(*WEIGHTS[which])
        weights = _fit_weights(weights_path, which)
        tables, year = read_dataset(store.path(*MICRODATA))
        self.base = asm.index_base(tables, year)
        self.geo = load_geography(store.path(*GEOGRAPHY))
        self.weights = asm.check_weights(weights, self.geo, str(weights_path))
        meta = json.loads(store.path(*PACKAGE, METADATA_FILE).read_text())
        # per-state take-up rates the state simulations used (calibration_core.aca_takeup)
        self.state_takeup = aca_takeup.from_metadata(meta)
        self.takeup = asm.takeup_for_package(meta.get("takeup_rerandomised", []),
                                             self.state_takeup)
        self.county_by_state = None
        self.frozen = None
        if county == "clone" and store.path(*SIMULATIONS).is_file():
            # values computed at each cell's county class (simulation.FROZEN_AT_CLASS)
            sims = load_state_simulations(store.path(*SIMULATIONS))
            self.frozen = sims if sims.metadata.get("probe") else None
        if county == "matrix":
            sims_meta = load_state_simulations(store.path(*SIMULATIONS)).metadata
            rep = sims_meta.get("representative_county")
            if not rep:
                raise ValueError(f"{store.path(*SIMULATIONS)} records no representative county")
            self.county_by_state = {STATE_FIPS[abbr]: c for abbr, c in rep.items()}
        self.county = county
        self.seconds = time.perf_counter() - t0

    def build(self, key: Optional[str]) -> asm.AreaBuild:
        area = parse_area_key(key) if key is not None else None
        return asm.build_area_tables(self.base, self.geo, self.weights, area, self.takeup,
                                     self.county_by_state, self.frozen, self.state_takeup)


def _fit_weights(weights_path: Path, which: str) -> np.ndarray:
    """The weights of the complete ``which`` fit; a missing or incomplete fit folder raises,
    naming what to materialize (a fit killed between its outputs is never used)."""
    if not weights_path.is_file():
        raise FileNotFoundError(f"{which} weights {weights_path} do not exist: materialize "
                                f"{which}_weights first")
    weights, _ = load_fit_weights(weights_path.parent)
    return weights


def _write(build: asm.AreaBuild, path: Path, year: int, seconds: float) -> dict:
    write_dataset(path, build.tables, year)
    return {
        "households": build.households, "persons": build.persons,
        "tax_units": len(build.tables["tax_unit"]),
        "weighted_population": round(build.weighted_population(), 1),
        "weighted_households": round(build.weighted_households(), 1),
        "base_records_used": int(len(np.unique(build.record))),
        "file_bytes": path.stat().st_size, "sha256": sha256_file(path),
        "path": dg.MetadataValue.path(str(path)), "seconds": round(seconds, 3),
    }


def run_partition_keys(context) -> list[str]:
    """The area keys of the current run: its partition, its partition range, or all 488."""
    tags = context.run.tags
    keys = all_area_keys()
    if tags.get("dagster/partition") in keys:
        return [tags["dagster/partition"]]
    start, end = tags.get(ASSET_PARTITION_RANGE_START_TAG), tags.get(ASSET_PARTITION_RANGE_END_TAG)
    if start in keys and end in keys:
        return keys[keys.index(start): keys.index(end) + 1]
    return keys


@dg.asset(
    group_name="areas",
    partitions_def=area_partitions,
    backfill_policy=dg.BackfillPolicy.single_run(),
    deps=["regional_weights", "geography_assignment", "calibration_package",
          "stratified_microdata", "state_simulations"],
    kinds={"python", "h5"},
    code_version=code_version("assets.areas", "calibration_core.assembly", "calibration_core.fit",
                              "calibration_core.geography", "calibration_core.h5_dataset",
                              "calibration_core.package_io", "calibration_core.aca_takeup"),
    description=(
        "One PolicyEngine-US dataset per area (`areas/states/CA.h5`, `areas/districts/CA-12.h5`, "
        "`areas/cities/NYC.h5`): the area's active clone-households (regional weight > 0, clone's "
        "district in the area; NYC: clone's county in the five boroughs), persons and every "
        "entity copied with fresh ids, household_weight = calibrated weight, state / county / "
        "district geography, take-up redrawn with the matrix's keys so policyengine-us "
        "reproduces X·w. Partitions are built in batches: the base data is loaded once per run."
    ),
)
@measured
def area_datasets(context: dg.AssetExecutionContext, config: AreaConfig, store: ArtifactStore):
    keys = list(context.partition_keys)
    t0 = time.perf_counter()
    store.sweep_temporaries(context, *AREA_FOLDERS)
    inputs = _Inputs(store, "regional", config.county)
    context.log.info(f"building {len(keys)} area files (inputs loaded in {inputs.seconds:.2f} s)")
    per_area, empty = {}, []
    for i, key in enumerate(keys):
        t1 = time.perf_counter()
        build = inputs.build(key)
        per_area[key] = _write(build, area_path(store, key), inputs.base.year,
                               time.perf_counter() - t1)
        per_area[key]["county_source"] = inputs.county
        if build.households == 0:
            empty.append(key)
        if (i + 1) % 50 == 0:
            context.log.info(f"{i + 1}/{len(keys)} areas written")
    seconds = time.perf_counter() - t0
    if empty:
        context.log.warning(f"{len(empty)} area(s) have no household with a positive weight: "
                            f"{empty[:20]}")
    if len(keys) == 1:
        yield dg.MaterializeResult(metadata=per_area[keys[0]])
        return
    table = pd.DataFrame([{"area": k, **{c: per_area[k][c] for c in
                                          ("households", "persons", "weighted_population",
                                           "file_bytes")}} for k in keys])
    # the batch's own event first (Dagster copies it to every partition of the run), then one
    # materialization per area with that area's figures, which becomes each partition's latest
    yield dg.MaterializeResult(metadata={
        "areas": len(keys), "households": int(table["households"].sum()),
        "persons": int(table["persons"].sum()), "empty_areas": len(empty),
        "seconds": round(seconds, 2), "input_seconds": round(inputs.seconds, 2),
        "largest": _md(table.sort_values("households", ascending=False).head(10)),
    })
    for key in keys:
        yield dg.AssetMaterialization(asset_key=context.asset_key, partition=key,
                                      metadata=per_area[key])


def check_area_file(store: ArtifactStore, key: str, county_by_state=None) -> list[str]:
    """Structural problems of one area file (empty list when sound): ids unique, memberships
    valid, weights > 0, every household with persons, geography inside the area."""
    path = area_path(store, key)
    if not path.is_file():
        return [f"{key}: {path} does not exist"]
    try:
        tables, _ = read_dataset(path)
        validate_tables(tables)
    except Exception as exc:  # noqa: BLE001 - reported as a failed check
        return [f"{key}: {exc}"]
    problems = []
    hh = tables["household"]
    if len(hh) == 0:
        return []
    if not (hh["household_weight"].to_numpy() > 0).all():
        problems.append(f"{key}: a household weight is not > 0")
    members = np.bincount(tables["person"]["person_household_id"].to_numpy(), minlength=len(hh))
    if (members == 0).any():
        problems.append(f"{key}: {(members == 0).sum()} household(s) without persons")
    area = parse_area_key(key)
    cd = hh["congressional_district_geoid"].to_numpy()
    state = hh["state_fips"].to_numpy()
    if not (state == cd // 100).all():
        problems.append(f"{key}: state_fips disagrees with congressional_district_geoid")
    if area.kind == "state" and not (state == area.state_fips).all():
        problems.append(f"{key}: households outside state {area.state_fips}")
    if area.kind == "district" and not (cd == area.district_geoid).all():
        problems.append(f"{key}: households outside district {area.district_geoid}")
    if area.kind == "city" and not (state == area.state_fips).all():
        problems.append(f"{key}: households outside state {area.state_fips}")
    return problems


@dg.asset_check(asset=area_datasets, blocking=True,
                description="The files of this run's partitions load and are sound: unique "
                            "ids, valid memberships, weights > 0, households with persons, "
                            "geography inside the area.")
def area_files_valid(context: dg.AssetCheckExecutionContext,
                     store: ArtifactStore) -> dg.AssetCheckResult:
    keys = run_partition_keys(context)
    problems = [p for k in keys for p in check_area_file(store, k)]
    households = {}
    for k in keys:
        path = area_path(store, k)
        if path.is_file():
            import h5py

            with h5py.File(path, "r") as f:
                households[k] = len(f["household_id"][str(YEAR)]) if "household_id" in f else 0
    empty = sorted(k for k, n in households.items() if n == 0)
    return dg.AssetCheckResult(
        passed=not problems,
        metadata={"areas_checked": len(keys), "problems": len(problems),
                  "details": dg.MetadataValue.md("\n".join(f"- {p}" for p in problems[:100]))
                  if problems else "none",
                  "empty_areas": len(empty),
                  "empty_area_keys": ", ".join(empty[:50]) or "none"})


@dg.asset(
    backfill_policy=dg.BackfillPolicy.single_run(),
    group_name="areas",
    deps=["national_weights", "geography_assignment", "calibration_package",
          "stratified_microdata", "state_simulations"],
    kinds={"python", "h5"},
    code_version=code_version("assets.areas", "calibration_core.assembly", "calibration_core.fit",
                              "calibration_core.geography", "calibration_core.h5_dataset",
                              "calibration_core.package_io", "calibration_core.aca_takeup"),
    description=(
        "The national PolicyEngine-US dataset (`areas/national/US.h5`): every clone-household "
        "with a positive national weight (the national fit's own weights), assembled like the "
        "area files."
    ),
)
@measured
def national_dataset(context: dg.AssetExecutionContext, config: AreaConfig,
                     store: ArtifactStore) -> dg.MaterializeResult:
    t0 = time.perf_counter()
    store.sweep_temporaries(context, "areas/national")
    inputs = _Inputs(store, "national", config.county)
    build = inputs.build(None)
    if build.households == 0:
        raise ValueError("the national weights have no positive entry: no national dataset")
    meta = _write(build, store.path(*NATIONAL_FILE), inputs.base.year, time.perf_counter() - t0)
    meta["county_source"] = inputs.county
    context.log.info(f"national file: {build.households} households, {build.persons} persons")
    return dg.MaterializeResult(metadata=meta)
