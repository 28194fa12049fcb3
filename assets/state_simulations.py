"""The graph-backed asset ``state_simulations``: plan, one step per group of chunks, collect.

The state simulations are the build's CPU-heavy work. They run as Dagster steps, so any
executor spreads them (the multiprocess executor over the cores, Dask over its workers, the
Kubernetes executor over pods), the UI shows each chunk step with its own timing, and a failed
chunk step retries alone (``RetryPolicy``) or is re-executed from failure without the others:

* ``plan_chunks``: the ACA take-up rates per state (``calibration_core.aca_takeup``), the
  traced county probe (county classes, the county-dependent variables, checked against the
  probe's values) and the chunk plan
  (``calibration_core.state_chunks.plan_state_simulations``), saved to
  ``calibration/state_simulations_steps/plan.npz``; one dynamic output per step;
* ``simulate_chunks[cNN]``: the stacked chunks of step NN, one after the other in one process
  (policyengine-us starts once per step: a step holds at least ``households_per_step``
  household copies, so that the start is at most a quarter of it), saved to
  ``calibration/state_simulations_steps/step_NN.npz``;
* ``collect_chunks``: every step's values assembled and checked as before into
  ``calibration/state_simulations.npz``: the asset's materialization.

Why dynamic outputs and not partitions: the number of steps follows from the data (the probe's
county classes and the households), known only after the plan; the chunks are not addressable
pieces of the artifact a user would rebuild one by one (the collect step checks every chunk
against the traced first one), and the downstream assets read the one assembled file. Values
pass between the steps as npz files in the artifact store; the outputs are ``Nothing``, so
Dagster's (pickling) IO manager stores nothing.
"""

import json
import os
import time
from typing import Optional

import dagster as dg
import pandas as pd

from assets._code_version import code_version
from assets._metadata import measured
from calibration_core import aca_takeup
from calibration_core import geography as geo_mod
from calibration_core import simulation as simu
from calibration_core import state_chunks as chunks_mod
from calibration_core import targets_db as tdb
from calibration_core.io_utils import atomic_write_json, sha256_file
from calibration_core.raw_inputs import raw_path
from calibration_core.step_groups import policyengine_started
from resources.settings import BuildSettings
from resources.store import ArtifactStore

TARGETS_DB = ("targets", "targets.db")
MICRODATA = ("microdata", "stratified_2024.h5")
SIMULATIONS = ("calibration", "state_simulations.npz")
STEPS = ("calibration", "state_simulations_steps")
PLAN = STEPS + ("plan.npz",)
ACA_META = STEPS + ("aca_takeup.json",)  # the plan step's ACA take-up figures (metadata only)
YEAR = 2024


def step_file(store: ArtifactStore, step: int):
    return store.path(*STEPS, f"step_{step:02d}.npz")


def mapping_key(step: int) -> str:
    return f"c{step:02d}"


class StateSimulationsConfig(dg.Config):
    """Run config of ``state_simulations`` (``ops: {state_simulations: {config: ...}}``)."""

    # chunk steps expected to run at once: the number of stacked chunks is rounded up to a
    # multiple of it (so that no step runs one more chunk than another)
    workers: int = 2
    # bounds memory per chunk; None: the preset's state_chunk_households
    max_households_per_chunk: Optional[int] = None
    # household copies (households x state copies) per step at least: the policyengine-us
    # start of a step's process (~40 s) stays at most a quarter of the step; when the steps'
    # processes start with policyengine-us built (the multiprocess executor's fork server),
    # `workers` steps at least
    households_per_step: int = chunks_mod.DEFAULT_STEP_HOUSEHOLDS
    # one state copy per county class (a probe finds the classes; exact X.w with every
    # household in its own county); False: one copy per state at its most populous county
    county_classes: bool = True
    probe_households: int = simu.DEFAULT_PROBE_HOUSEHOLDS
    # ACA take-up calibrated per state to the SOI count of credit returns (aca_takeup); False
    # (or no aca_ptc_state.csv among the raw inputs) keeps the flat base draw
    aca_state_takeup: bool = True


UPSTREAM = ("stratified_microdata", "targets_db", "raw_public_inputs")


# one Nothing input per upstream asset: a fan-in list of graph inputs fails to plan when the
# upstream assets run in the same run ("multiple levels of MultiStepInputSource")
@dg.op(ins={name: dg.In(dg.Nothing) for name in UPSTREAM},
       out=dg.DynamicOut(dagster_type=dg.Nothing),
       description="Probe the county classes and plan the chunks and steps (plan.npz).")
@measured
def plan_chunks(context: dg.OpExecutionContext, config: StateSimulationsConfig,
                store: ArtifactStore, settings: BuildSettings):
    db = store.path(*TARGETS_DB)
    targets, constraints = tdb.read_targets(db, YEAR), tdb.read_constraints(db)
    variables = simu.needed_variables(targets, constraints)
    county = geo_mod.load_county_table(raw_path(store.raw_dir, geo_mod.COUNTY_TABLE_FILE))
    population = geo_mod.district_population(targets)
    store.sweep_temporaries(context, "calibration", "/".join(STEPS))
    for old in store.folder(*STEPS).glob("step_*.npz"):  # an earlier plan's steps
        old.unlink()
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
        # JSON for the collect step (which renders the table as Markdown metadata)
        aca_meta = {"aca_state_takeup": table.round(3).to_markdown(index=True),
                    "aca_eligible_units": round(figures["eligible_units"]),
                    "aca_eligible_credit_usd": round(figures["eligible_credit_usd"]),
                    "aca_published_units": round(figures["published_units"]),
                    "aca_soi_returns_2022": round(figures["soi_returns_2022"]),
                    "aca_national_takeup_rate": round(figures["national_rate"], 4),
                    "aca_takeup_source": figures["source"]}
    elif config.aca_state_takeup:
        context.log.warning(f"{published} absent: ACA take-up stays the flat base draw")
    context.log.info(f"simulating {variables} for all 51 states")
    # steps forked with policyengine-us built (or run in this process) pay no start: one step
    # per worker then, however small (calibration_core.step_groups)
    min_steps = config.workers if policyengine_started() else 1
    plan = chunks_mod.plan_state_simulations(
        store.path(*MICRODATA), variables, county, population,
        max_households_per_chunk=(config.max_households_per_chunk
                                  or settings.resolve().state_chunk_households),
        households_per_step=config.households_per_step, min_steps=min_steps,
        workers=config.workers,
        log=context.log.info, county_classes=config.county_classes,
        n_probes=config.probe_households, state_takeup=state_takeup)
    chunks_mod.save_plan(plan, store.path(*PLAN))
    # the ACA figures ride to the collect step's materialization
    atomic_write_json(store.path(*ACA_META), aca_meta)
    context.log.info(
        f"{plan.classes.n_copies} state copies x {plan.n_households} households in "
        f"{len(plan.chunks)} chunks, {len(plan.steps)} step(s): "
        f"{[[len(plan.chunks[i]) for i in s] for s in plan.steps]} copies per chunk")
    for s, members in enumerate(plan.steps):
        yield dg.DynamicOutput(None, mapping_key=mapping_key(s), metadata={
            "chunks": len(members),
            "copies": int(sum(len(plan.chunks[i]) for i in members))})


@dg.op(ins={"planned": dg.In(dg.Nothing)}, out=dg.Out(dg.Nothing),
       retry_policy=dg.RetryPolicy(max_retries=2, delay=5),
       description="Simulate the stacked chunks of one step (step_NN.npz).")
@measured
def simulate_chunks(context: dg.OpExecutionContext, store: ArtifactStore):
    step = int(context.get_mapping_key()[1:])
    plan = chunks_mod.load_plan(store.path(*PLAN))
    figures = chunks_mod.run_step(plan, step, store.path(*MICRODATA), step_file(store, step),
                                  log=context.log.info)
    return dg.Output(None, metadata={
        "step": step, "chunks": figures["chunks"], "copies": figures["copies"],
        "household_copies": figures["household_copies"],
        "chunk_seconds": dg.MetadataValue.json(figures["chunk_seconds"]),
        "policyengine_start_seconds": figures["start_seconds"],
        "pid": dg.MetadataValue.int(os.getpid())})


@dg.op(ins={"simulated": dg.In(dg.Nothing)}, out=dg.Out(dg.Nothing),
       description="Assemble and check every step's values (calibration/state_simulations.npz).")
@measured
def collect_chunks(context: dg.OpExecutionContext, store: ArtifactStore):
    plan = chunks_mod.load_plan(store.path(*PLAN))
    aca_file = store.path(*ACA_META)
    aca_meta = json.loads(aca_file.read_text()) if aca_file.is_file() else {}
    if aca_meta.get("aca_state_takeup", "off") != "off":  # the per-state table
        aca_meta["aca_state_takeup"] = dg.MetadataValue.md(aca_meta["aca_state_takeup"])
    out = store.path(*SIMULATIONS)
    result = chunks_mod.collect_steps(plan, store.path(*MICRODATA),
                                      [step_file(store, s) for s in range(len(plan.steps))],
                                      log=context.log.info)
    simu.save_state_simulations(result, out)
    m = result.metadata
    dep = pd.DataFrame({"variable": list(result.dependence),
                        "entity": [result.entity[v] for v in result.dependence],
                        "depends_on_state": [", ".join(d) if d else "no (computed once)"
                                             for d in result.dependence.values()]})
    digest = sha256_file(out)
    return dg.Output(None, data_version=dg.DataVersion(digest[:32]), metadata={
        "path": dg.MetadataValue.path(str(out)),
        "households": m["n_households"], "persons": m["n_persons"],
        "variables": dg.MetadataValue.md(dep.to_markdown(index=False)),
        "state_invariant": ", ".join(m["state_invariant"]) or "(none)",
        "chunks": len(m["chunks"]), "steps": len(plan.steps),
        "chunk_seconds": dg.MetadataValue.json(m["chunk_seconds"]),
        "traced_chunk_seconds": m["traced_chunk_seconds"], "stacked_seconds": m["stacked_seconds"],
        # policyengine-us start paid by the steps (each step's process pays it once)
        "policyengine_start_seconds": round(float(sum(m["start_seconds"])), 2),
        # state rules computed on their own state's rows (StateRouter), and those that could not
        "traced_chunk_routed_formulas": m["traced_chunk_routed_formulas"],
        "unroutable_formulas": ", ".join(m["unroutable_formulas"]) or "(none)",
        # from the plan's start to the end of the collect step
        "total_seconds": round(time.time() - plan.planned_at, 2),
        "takeup_inputs_forced_true": ", ".join(m["takeup_inputs_forced_true"]) or "(none)",
        # county classes: state copies simulated (51 = one per state) and classes per state
        "state_copies": m["state_copies"],
        "county_classes": dg.MetadataValue.json(
            {k: v for k, v in m["county_classes"].items() if v > 1}),
        "probe_seconds": m["probe_seconds"],
        # computed in every county class; the others once per state (the default copy)
        "county_dependent": ", ".join(m.get("county_dependent", [])) or "(none)",
        "sha256": digest, **aca_meta,
    })


@dg.config_mapping(config_schema=StateSimulationsConfig.to_config_schema())
def _to_plan_config(values: dict) -> dict:
    """The asset's run config goes to its planning step (the others read the plan)."""
    return {"plan_chunks": {"config": values}}


@dg.graph_asset(
    backfill_policy=dg.BackfillPolicy.single_run(),
    group_name="calibration",
    ins={name: dg.AssetIn(dagster_type=dg.Nothing) for name in UPSTREAM},
    kinds={"python", "numpy"},
    config=_to_plan_config,
    code_version=code_version("assets.state_simulations", "calibration_core.state_chunks",
                              "calibration_core.simulation", "calibration_core.targets_db",
                              "calibration_core.h5_dataset", "calibration_core.aca_takeup",
                              simulates=True),
    description=(
        "Every target and constraint variable of every base household as if it lived in each "
        "of the 51 states (`calibration/state_simulations.npz`; the steps' plan and values "
        "in `calibration/state_simulations_steps/`), from stacked simulations "
        "(households copied into several states each, ids offset) in chunks of at most "
        f"{simu.DEFAULT_CHUNK_HOUSEHOLDS:,} rows; each state's own rules run on that state's "
        "rows only. Dagster steps: `plan_chunks` (probe and plan), one `simulate_chunks` step "
        "per group of chunks (dynamic outputs: the executor runs them in parallel; a failed "
        "one retries alone), `collect_chunks`. The first chunk runs traced: policyengine-us's "
        "dependency graph decides which variables cannot depend on the state (stored once, "
        "checked equal in every chunk). Take-up-gated variables hold eligible values; the "
        "package applies seeded take-up."
    ),
)
def state_simulations(stratified_microdata, targets_db, raw_public_inputs):
    planned = plan_chunks(stratified_microdata=stratified_microdata, targets_db=targets_db,
                          raw_public_inputs=raw_public_inputs)
    return collect_chunks(planned.map(lambda p: simulate_chunks(p)).collect())
