"""Group ``microdata``: real CPS records -> 2024 PolicyEngine-US datasets (base, enhanced, stratified).

Artifacts: ``microdata/cps_source.json`` (which source, its files and hashes),
``microdata/base_2024.h5``, ``microdata/enhanced_2024.h5``, ``microdata/stratified_2024.h5``.
"""

import time

import dagster as dg
import pandas as pd

from assets._code_version import code_version
from assets._metadata import measured
from calibration_core import microdata as md
from calibration_core.h5_dataset import read_dataset, write_dataset
from calibration_core.microdata_parts import takeup_inputs
from calibration_core.io_utils import atomic_write_json, sha256_file
from calibration_core.raw_inputs import load_manifest, raw_path
from resources.settings import BuildSettings
from resources.store import ArtifactStore

YEAR = 2024
SOURCE_JSON = "microdata/cps_source.json"
BASE_H5 = f"microdata/base_{YEAR}.h5"
ENHANCED_H5 = f"microdata/enhanced_{YEAR}.h5"
STRATIFIED_H5 = f"microdata/stratified_{YEAR}.h5"


class CpsSourceConfig(dg.Config):
    prefer: str = "auto"  # "auto" (ASEC CSVs when present), "taxcalc" or "asec"


class BaseConfig(dg.Config):
    benchmark_state_population: bool = True  # post-stratify weights to ACS S0101 2024 states


def _dataset_metadata(store: ArtifactStore, path, tables, seconds: float) -> dict:
    acs = md.acs_state_population(raw_path(store.raw_dir, "acs_S0101_state_2024.json"))
    by_state = md.population_by_state(tables, acs)
    summary = md.summarize(tables)
    table = by_state.reset_index()[["state", "households", "weighted_persons", "acs_s0101",
                                    "pct_diff"]]
    table = table.assign(weighted_persons=table["weighted_persons"].round().astype("int64"),
                         acs_s0101=table["acs_s0101"].round().astype("int64"),
                         pct_diff=table["pct_diff"].round(2))
    return {
        "households": summary["n_household"],
        "persons": summary["n_person"],
        "tax_units": summary["n_tax_unit"],
        "spm_units": summary["n_spm_unit"],
        "weighted_population": summary["weighted_persons"],
        "weighted_households": summary["weighted_households"],
        "states_present": summary["states_present"],
        "states_within_5pct_of_acs": int((by_state["pct_diff"].abs() <= 5).sum()),
        "population_by_state": dg.MetadataValue.md(table.to_markdown(index=False)),
        "path": dg.MetadataValue.path(str(path)),
        "bytes": path.stat().st_size,
        "sha256": sha256_file(path),
        "seconds": round(seconds, 2),
    }


@dg.asset(
    backfill_policy=dg.BackfillPolicy.single_run(),
    group_name="microdata",
    deps=["raw_public_inputs"],
    kinds={"python", "file"},
    code_version=code_version("assets.microdata", "calibration_core.microdata"),
    description=(
        "The CPS source, validated: Tax-Calculator's CPS file (280k real CPS ASEC tax units, "
        "2012-14) with its 2024 weights by default, or Census ASEC public-use CSVs "
        "(hhpubYY/ffpubYY/pppubYY) when the raw folder has them. Writes "
        "`microdata/cps_source.json` (kind, files, sha256). A missing or non-numeric column "
        "fails here, naming the file and the column."
    ),
)
@measured
def cps_source(context: dg.AssetExecutionContext, config: CpsSourceConfig,
               store: ArtifactStore) -> dg.MaterializeResult:
    start = time.perf_counter()
    manifest = load_manifest(store.raw_dir)
    source = md.load_cps_source(store.raw_dir, YEAR, config.prefer)
    records = source.records
    n_records = len(records) if isinstance(records, pd.DataFrame) else len(records["person"])
    info = {
        "kind": source.kind, "data_year": source.data_year, "target_year": YEAR,
        "prefer": config.prefer, "records": n_records,
        "files": {name: manifest["files"].get(name, {}).get("sha256") for name in source.files},
    }
    out = store.path(SOURCE_JSON)
    atomic_write_json(out, info)
    context.log.info(f"CPS source {source.kind}: {n_records} records from {source.files}")
    return dg.MaterializeResult(metadata={
        "kind": source.kind, "records": n_records, "data_year": source.data_year,
        "files": ", ".join(source.files), "path": dg.MetadataValue.path(str(out)),
        "seconds": round(time.perf_counter() - start, 2),
    })


@dg.asset(
    backfill_policy=dg.BackfillPolicy.single_run(),
    group_name="microdata",
    deps=[cps_source],
    kinds={"python", "h5"},
    code_version=code_version("assets.microdata", "calibration_core.microdata",
                              "calibration_core.h5_dataset"),
    description=(
        "2024 PolicyEngine-US dataset of every CPS household (`microdata/base_2024.h5`, "
        "time-period-arrays layout): persons, tax units, SPM units, families, marital units, "
        "households; incomes uprated with growfactors.csv; a county per household; weights WT2024 "
        "post-stratified to ACS S0101 2024 state populations."
    ),
)
@measured
def base_microdata(context: dg.AssetExecutionContext, config: BaseConfig,
                   store: ArtifactStore) -> dg.MaterializeResult:
    start = time.perf_counter()
    import json

    store.sweep_temporaries(context, "microdata")

    prefer = json.loads(store.path(SOURCE_JSON).read_text())["prefer"]
    source = md.load_cps_source(store.raw_dir, YEAR, prefer)
    tables, info = md.build_base_tables(source, store.raw_dir, YEAR,
                                        benchmark=config.benchmark_state_population)
    path = write_dataset(store.path(BASE_H5), tables, YEAR)
    meta = _dataset_metadata(store, path, tables, time.perf_counter() - start)
    meta["source"] = source.kind
    meta["weighted_population_before_benchmark"] = info["weighted_persons_before_benchmark"]
    if "benchmark_factor_by_state" in info:
        factor = info["benchmark_factor_by_state"]
        before = pd.DataFrame({"state_fips": factor.index, "wt2024_vs_acs_pct": (
            100.0 * (1.0 / factor.to_numpy() - 1.0)).round(2), "factor": factor.round(4)})
        meta["wt2024_population_vs_acs_before_benchmark"] = dg.MetadataValue.md(
            before.to_markdown(index=False))
    rules = info["rules_inputs"]
    meta["inputs_imputed"] = ", ".join(rules["imputed"])
    meta["rules_inputs"] = dg.MetadataValue.json(
        {k: v for k, v in rules.items() if k not in ("imputed", "not_available")})
    meta["inputs_not_available"] = dg.MetadataValue.md("\n".join(
        f"- `{k}`: {v}" for k, v in rules["not_available"].items()))
    context.log.info(f"base: {meta['households']} households, {meta['persons']} persons")
    return dg.MaterializeResult(metadata=meta)


@dg.asset(
    backfill_policy=dg.BackfillPolicy.single_run(),
    group_name="microdata",
    deps=[base_microdata],
    kinds={"python", "h5"},
    code_version=code_version("assets.microdata", "calibration_core.microdata",
                              "calibration_core.microdata_parts.enhance",
                              "calibration_core.h5_dataset"),
    description=(
        "Base dataset plus (a) the PUF clone: households doubled, IRS PUF tax variables imputed "
        "onto the copy with quantile regression forests, when puf_*.csv (+ demographics_*.csv) "
        "is in the raw folder; (b) variables imputed from ACS PUMS / SIPP / SCF donor files when "
        "present. Each step is skipped with a metadata note otherwise. "
        "`microdata/enhanced_2024.h5`."
    ),
)
@measured
def enhanced_microdata(context: dg.AssetExecutionContext,
                       store: ArtifactStore) -> dg.MaterializeResult:
    start = time.perf_counter()
    from calibration_core.microdata_parts import enhance

    store.sweep_temporaries(context, "microdata")
    tables, year = read_dataset(store.path(BASE_H5))
    tables, notes = enhance.enhance_tables(tables, store.raw_dir, seed_key="enhanced")
    for step, note in notes.items():
        context.log.info(f"{step}: {note}")
    path = write_dataset(store.path(ENHANCED_H5), tables, year)
    meta = _dataset_metadata(store, path, tables, time.perf_counter() - start)
    meta.update({f"step_{k}": v for k, v in notes.items()})
    return dg.MaterializeResult(metadata=meta)


@dg.asset(
    backfill_policy=dg.BackfillPolicy.single_run(),
    group_name="microdata",
    deps=[enhanced_microdata],
    kinds={"python", "h5"},
    code_version=code_version("assets.microdata", "calibration_core.microdata",
                              "calibration_core.h5_dataset"),
    description=(
        "The preset's N households: every household at or above the top-AGI percentile (at most "
        "N/2), the rest sampled per state with a fixed seed, sampled weights rescaled so each "
        "state's weighted population is preserved; every policyengine-us take-up input drawn "
        "once per entity (`takeup.<input>` keys). `microdata/stratified_2024.h5`."
    ),
)
@measured
def stratified_microdata(context: dg.AssetExecutionContext, store: ArtifactStore,
                         settings: BuildSettings) -> dg.MaterializeResult:
    start = time.perf_counter()
    store.sweep_temporaries(context, "microdata")
    preset = settings.resolve()
    tables, year = read_dataset(store.path(ENHANCED_H5))
    out, info = md.stratify_tables(tables, preset.base_households, preset.top_agi_percentile,
                                   preset.seed)
    # every policyengine-us take-up input, drawn once per base entity (issue 20): the state
    # simulations and every area file read the same values
    out, takeup = takeup_inputs.add_takeup_inputs(out)
    path = write_dataset(store.path(STRATIFIED_H5), out, year)
    meta = _dataset_metadata(store, path, out, time.perf_counter() - start)
    meta.update({"preset": preset.name, "top_households": info["n_top"],
                 "sampled_households": info["n_sampled"],
                 "agi_threshold": info["agi_threshold"] or 0.0,
                 "takeup_inputs": len(takeup),
                 "takeup_weighted_share": dg.MetadataValue.md(pd.DataFrame(
                     [{"input": k, **v} for k, v in takeup.items()]).to_markdown(index=False))})
    context.log.info(f"stratified ({preset.name}): {meta['households']} households")
    return dg.MaterializeResult(metadata=meta)


def _structure_check(store: ArtifactStore, rel: str) -> dg.AssetCheckResult:
    path = store.path(rel)
    tables, _ = read_dataset(path)
    problems = md.structure_problems(tables)
    states = int(tables["household"]["state_fips"].nunique())
    if states != 51:
        problems.append(f"{states} states present, expected 51")
    national = md.acs_national_population(raw_path(store.raw_dir, "acs_S0101_national_2024.json"))
    weighted = md.summarize(tables)["weighted_persons"]
    diff = 100.0 * (weighted / national - 1.0)
    if abs(diff) > 3.0:
        problems.append(f"weighted persons {weighted:,.0f} differ from ACS 2024 population "
                        f"{national:,.0f} by {diff:+.2f}% (limit 3%)")
    return dg.AssetCheckResult(
        passed=not problems,
        metadata={"problems": dg.MetadataValue.md("\n".join(f"- {p}" for p in problems) or "none"),
                  "states": states, "weighted_persons": weighted, "acs_population": national,
                  "pct_diff": round(diff, 3)},
    )


@dg.asset_check(asset=base_microdata, blocking=True,
                description="ids unique, every person in a household, tax unit and SPM unit, "
                            "51 states, weighted persons within 3% of ACS 2024")
def base_microdata_structure(store: ArtifactStore) -> dg.AssetCheckResult:
    return _structure_check(store, BASE_H5)


@dg.asset_check(asset=enhanced_microdata, blocking=True,
                description="same structural checks as base_microdata")
def enhanced_microdata_structure(store: ArtifactStore) -> dg.AssetCheckResult:
    return _structure_check(store, ENHANCED_H5)


@dg.asset_check(asset=stratified_microdata, blocking=True,
                description="same structural checks as base_microdata")
def stratified_microdata_structure(store: ArtifactStore) -> dg.AssetCheckResult:
    return _structure_check(store, STRATIFIED_H5)


@dg.asset_check(asset=stratified_microdata,
                description="loads in policyengine_us.Microsimulation and computes AGI, income "
                            "tax, SNAP and Medicaid (imports policyengine-us: ~1-2 min)")
def stratified_microdata_loads_in_policyengine(store: ArtifactStore) -> dg.AssetCheckResult:
    start = time.perf_counter()
    totals = md.simulate_totals(store.path(STRATIFIED_H5), YEAR)
    finite = all(pd.notna(v) for v in totals.values())
    return dg.AssetCheckResult(
        passed=finite,
        metadata={**{f"total_{k}": float(v) for k, v in totals.items()},
                  "seconds": round(time.perf_counter() - start, 1)},
    )
