"""The state simulations as separate steps: plan, chunk steps, collect.

:func:`simulation.simulate_states` runs the probe, plans the stacked chunks and runs them in a
process pool of its own. An orchestrator that runs each piece as its own step (Dagster: the
graph-backed asset ``state_simulations``, ``assets/state_simulations.py``) calls instead

1. :func:`plan_state_simulations` once: the probe (county classes) and the chunk plan, with
   the chunks grouped into *steps* (:func:`plan_steps`), saved by :func:`save_plan` (npz);
2. :func:`run_step` once per step, in any process or machine: the step's stacked chunks one
   after the other in one process (the stacked simulation is reused between them, and
   policyengine-us starts once per step), their values saved as one npz
   (:func:`save_step`);
3. :func:`collect_steps` once: the steps' values assembled exactly as ``simulate_states``
   assembles its pool's (same chunk plan, same traced first chunk, same checks), so the
   result - and the saved file - equals ``simulate_states``'s for the same inputs.

The county classes stay as ``simulate_states`` makes them: the plan runs the traced county
probe (in the planning process, one part), checks the probe's values against its graph
(``check_county_invariance``), and plans each state's default copies with every variable and
the other county classes with the county-dependent variables only (``chunk_variables``); the
collect step fills those classes' other values from the state's default copy. Per-state
take-up inputs (:class:`~calibration_core.aca_takeup.StateTakeUp`) ride in the plan.

A step is sized so that the policyengine-us start (about 40 s per process) is at most a quarter
of it: at least :data:`DEFAULT_STEP_HOUSEHOLDS` simulated household copies (households x state
copies) per step, unless the steps' processes start with policyengine-us built
(:mod:`step_groups`), when ``min_steps`` steps share the chunks. Every file here is a plain npz (``allow_pickle=False``) with a JSON record.
"""
from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from . import simulation as simu
from .aca_takeup import StateTakeUp
from .io_utils import atomic_write_npz
from .step_groups import group_into_steps
from .simulation.routing import _chunk_task

# Household copies (households x state copies) a step simulates at least. The demo build's 72
# copies x about 3,500 households took 116 s of chunk time (docs/methodology.md, "County
# dependence"): about 2,200 copies per second, so 260,000 copies are about 120 s, three times the
# policyengine-us start (~40 s) that a step in its own process pays first.
DEFAULT_STEP_HOUSEHOLDS = 260_000


@dataclass
class StatePlan:
    """What the chunk steps run and the collect step assembles.

    ``classes``: the state copies (:class:`simulation.CountyClasses`); ``chunks``: the copies
    of each stacked simulation (rows of ``classes``), chunk 0 runs traced; ``chunk_variables``:
    the variables each chunk computes (all of ``variables`` for the states' default copies,
    the county-dependent ones for the other county classes); ``steps``: the chunks of each
    step (consecutive, every chunk once); ``variables``, ``forced`` (take-up inputs forced
    true: ``(entity, input)`` tuples and per-state :class:`StateTakeUp` inputs), ``route``,
    ``year``, ``states`` (state FIPS simulated), ``workers`` (the parallel steps the chunk
    count was rounded for), ``probe_figures``, ``n_households``, ``state_takeup`` (every
    per-state take-up input, for the metadata).
    """

    classes: simu.CountyClasses
    chunks: list[list[int]]
    steps: list[list[int]]
    variables: list[str]
    forced: list
    states: list[int]
    workers: int
    n_households: int
    year: int = simu.YEAR
    route: bool = True
    probe_figures: dict = field(default_factory=dict)
    planned_at: float = 0.0  # wall clock of the plan's start (total_seconds; a timing)
    chunk_variables: list[list[str]] | None = None  # None: every chunk all ``variables``
    state_takeup: list = field(default_factory=list)

    def variables_of(self, chunk: int) -> list[str]:
        """The variables ``chunk`` computes."""
        return list(self.variables if self.chunk_variables is None
                    else self.chunk_variables[chunk])

    def chunk_task(self, dataset_path: str | os.PathLike, chunk: int) -> tuple:
        """The arguments of ``simulation._chunk_task`` for ``chunk``."""
        copies = self.chunks[chunk]
        return (str(dataset_path), [int(self.classes.copy_state[k]) for k in copies],
                self.variables_of(chunk), [str(self.classes.copy_county[k]) for k in copies],
                self.year, self.forced, chunk == 0, self.route)


def plan_steps(chunk_households: Sequence[int], households_per_step: int,
               min_steps: int = 1) -> list[list[int]]:
    """Group consecutive chunks into steps of at least ``households_per_step`` simulated
    household copies each, and at least ``min_steps`` steps (never more than the chunks),
    balanced by size (:func:`step_groups.group_into_steps`).

    ``chunk_households`` (n_chunks,): household copies of each chunk (households x copies).
    Returns the chunk indices of each step, in order. Raises :class:`SimulationError`."""
    try:
        return group_into_steps(chunk_households, households_per_step, min_steps)
    except ValueError as exc:
        raise simu.SimulationError(str(exc)) from None


def plan_state_simulations(dataset_path, variables, county_table, population=None,
                           states: Sequence[int] = simu.STATE_ORDER,
                           max_households_per_chunk: int = simu.DEFAULT_CHUNK_HOUSEHOLDS,
                           households_per_step: int = DEFAULT_STEP_HOUSEHOLDS,
                           min_steps: int = 1, workers: int = 1, year: int = simu.YEAR,
                           log: Callable[[str], None] = lambda m: None, route: bool = True,
                           county_classes: bool = True,
                           n_probes: int = simu.DEFAULT_PROBE_HOUSEHOLDS,
                           probe_signature: str = "values",
                           state_takeup: Sequence[StateTakeUp] = ()) -> StatePlan:
    """The probe and the chunk plan of :func:`simulation.simulate_states` (same arguments; the
    probe runs in this process, in one part), with the chunks grouped into steps
    (:func:`plan_steps`: at least ``min_steps``).

    ``workers`` only rounds the number of chunks, as ``simulate_states`` does for its pool
    (the same chunks, hence the same traced first chunk and the same file)."""
    started = time.time()
    from .h5_dataset import read_dataset

    planned = simu.simulate_states(
        dataset_path, variables, county_table, population, states=states,
        max_households_per_chunk=max_households_per_chunk, workers=workers, year=year, log=log,
        route=route, county_classes=county_classes, n_probes=n_probes,
        probe_signature=probe_signature, state_takeup=state_takeup, plan_only=True)
    tables, _ = read_dataset(dataset_path)
    n_households = len(tables["household"])
    chunks = [list(map(int, c)) for c in planned["chunks"]]
    steps = plan_steps([n_households * len(c) for c in chunks], households_per_step, min_steps)
    return StatePlan(planned["classes"], chunks, steps, list(planned["variables"]),
                     list(planned["forced"]), sorted(int(s) for s in states),
                     int(workers), n_households, year, bool(route), planned["probe_figures"],
                     started, [list(v) for v in planned["chunk_variables"]],
                     list(state_takeup))


# --------------------------------------------------------------------------------------------
# files


def _meta_bytes(meta: dict) -> np.ndarray:
    return np.frombuffer(json.dumps(meta, sort_keys=True).encode(), dtype=np.uint8)


def _read_meta(z, path) -> dict:
    if "meta_json" not in z.files:
        raise simu.SimulationError(f"{path} lacks meta_json")
    return json.loads(z["meta_json"].tobytes().decode())


def _takeup_json(t: StateTakeUp) -> dict:
    return {"input": t.input, "entity": t.entity, "rates": [[int(f), float(r)]
                                                            for f, r in t.rates]}


def _takeup_from_json(d: dict) -> StateTakeUp:
    return StateTakeUp(d["input"], d["entity"], tuple((int(f), float(r)) for f, r in d["rates"]))


def _forced_json(f) -> list | dict:
    """A forced take-up input: an ``(entity, input)`` tuple as a list, a
    :class:`StateTakeUp` as a mapping."""
    return list(f) if isinstance(f, tuple) else _takeup_json(f)


def _forced_from_json(f):
    return _takeup_from_json(f) if isinstance(f, dict) else tuple(f)


def save_plan(plan: StatePlan, path: str | os.PathLike) -> Path:
    """The plan as npz (classes as arrays, the rest as JSON); atomic."""
    c = plan.classes
    meta = {"chunks": plan.chunks, "steps": plan.steps, "variables": plan.variables,
            "chunk_variables": plan.chunk_variables,
            "state_takeup": [_takeup_json(t) for t in plan.state_takeup],
            "forced": [_forced_json(f) for f in plan.forced], "states": plan.states,
            "workers": plan.workers, "n_households": plan.n_households, "year": plan.year,
            "route": plan.route, "probe_figures": plan.probe_figures,
            "planned_at": plan.planned_at, "readers": list(c.readers)}
    arrays = {"copy_state": np.asarray(c.copy_state, dtype=np.int64),
              "copy_county": np.asarray(c.copy_county).astype("U5"),
              "county_fips": np.asarray(c.county_fips).astype("U5"),
              "county_copy": np.asarray(c.county_copy, dtype=np.int64),
              "meta_json": _meta_bytes(meta)}
    return atomic_write_npz(path, arrays)


def load_plan(path: str | os.PathLike) -> StatePlan:
    path = Path(path)
    if not path.is_file():
        raise simu.SimulationError(f"state simulation plan {path} does not exist")
    with np.load(path, allow_pickle=False) as z:
        meta = _read_meta(z, path)
        classes = simu.CountyClasses(z["copy_state"], z["copy_county"], z["county_fips"],
                                     z["county_copy"], meta["readers"])
    return StatePlan(classes, meta["chunks"], meta["steps"], meta["variables"],
                     [_forced_from_json(f) for f in meta["forced"]], meta["states"],
                     meta["workers"], meta["n_households"], meta["year"], meta["route"],
                     meta["probe_figures"], meta["planned_at"], meta.get("chunk_variables"),
                     [_takeup_from_json(t) for t in meta.get("state_takeup", [])])


def save_step(results: list[tuple], chunk_indices: Sequence[int], path: str | os.PathLike
              ) -> Path:
    """A step's chunk results (``simulation._chunk_task`` tuples) as npz: ``c<i>__<variable>``
    arrays and a JSON record of each chunk (states, seconds, policyengine-us start, pid, the
    traced chunk's dependence figures, CPU seconds); atomic."""
    arrays, records = {}, []
    for i, (states, values, seconds, start, pid, trace, *rest) in zip(chunk_indices, results):
        for v, a in values.items():
            a = np.asarray(a)
            if a.dtype == object:
                raise simu.SimulationError(f"{v!r}: object values cannot be saved")
            arrays[f"c{i}__{v}"] = a
        records.append({"chunk": int(i), "states": [int(s) for s in states],
                        "variables": sorted(values), "seconds": float(seconds),
                        "start_seconds": float(start), "pid": int(pid), "trace": trace,
                        "cpu_seconds": [float(x) for x in rest[:1]]})
    arrays["meta_json"] = _meta_bytes({"chunks": records})
    return atomic_write_npz(path, arrays)


def load_step(path: str | os.PathLike) -> dict[int, tuple]:
    """Chunk index -> the ``simulation._chunk_task`` tuple saved by :func:`save_step`."""
    path = Path(path)
    if not path.is_file():
        raise simu.SimulationError(f"state simulation step {path} does not exist")
    out = {}
    with np.load(path, allow_pickle=False) as z:
        for r in _read_meta(z, path)["chunks"]:
            values = {v: z[f"c{r['chunk']}__{v}"] for v in r["variables"]}
            out[r["chunk"]] = (r["states"], values, r["seconds"], r["start_seconds"], r["pid"],
                               r["trace"], *r.get("cpu_seconds", []))
    return out


# --------------------------------------------------------------------------------------------
# steps


def run_step(plan: StatePlan, step: int, dataset_path: str | os.PathLike,
             out_path: str | os.PathLike, log: Callable[[str], None] = lambda m: None) -> dict:
    """Run the chunks of ``plan.steps[step]`` in this process, one after the other (each
    reuses the previous one's stacked simulation), and save them (:func:`save_step`).

    Returns figures: ``chunks``, ``copies``, ``household_copies``, ``chunk_seconds``,
    ``start_seconds`` (policyengine-us start paid by this step; 0 when already imported)."""
    from .h5_dataset import read_dataset

    if not 0 <= step < len(plan.steps):
        raise simu.SimulationError(f"step {step} of a plan of {len(plan.steps)} steps")
    tables, file_year = read_dataset(dataset_path)
    if file_year != plan.year or len(tables["household"]) != plan.n_households:
        raise simu.SimulationError(
            f"{dataset_path}: {len(tables['household'])} households of {file_year}; the plan "
            f"was made for {plan.n_households} of {plan.year} (plan again)")
    indices = plan.steps[step]
    results = []
    try:
        for i in indices:
            task = plan.chunk_task(dataset_path, i)
            results.append(_chunk_task(task, tables))
            states, values, seconds, start, _, trace, *_ = results[-1]
            only = (f" ({len(values)} county-dependent variable(s))"
                    if len(values) < len(plan.variables) else "")
            log(f"{'traced ' if trace is not None else ''}chunk {i} of {len(plan.chunks)}: "
                f"{len(states)} copies x {plan.n_households} households{only}, {seconds:.1f} s"
                + (f" after a policyengine-us start of {start:.1f} s" if start >= 0.5 else ""))
    finally:
        simu._SIM_CACHE.clear()  # a kept stack holds ~90 kB per household copy
    save_step(results, indices, out_path)
    return {"chunks": len(indices), "copies": int(sum(len(plan.chunks[i]) for i in indices)),
            "household_copies": int(sum(len(plan.chunks[i]) for i in indices)
                                    * plan.n_households),
            "chunk_seconds": [round(r[2], 2) for r in results],
            "start_seconds": round(float(sum(r[3] for r in results)), 2)}


def collect_steps(plan: StatePlan, dataset_path: str | os.PathLike,
                  step_paths: Sequence[str | os.PathLike],
                  log: Callable[[str], None] = lambda m: None) -> simu.StateSimulations:
    """The :class:`simulation.StateSimulations` of every step's chunks, assembled and checked
    as :func:`simulation.simulate_states` does (``step_paths[s]``: the file of step ``s``)."""
    from .h5_dataset import read_dataset

    if len(step_paths) != len(plan.steps):
        raise simu.SimulationError(f"{len(step_paths)} step files for {len(plan.steps)} steps")
    found: dict[int, tuple] = {}
    for s, path in enumerate(step_paths):
        got = load_step(path)
        if sorted(got) != sorted(plan.steps[s]):
            raise simu.SimulationError(f"{path}: chunks {sorted(got)}, the plan's step {s} has "
                                       f"{sorted(plan.steps[s])}")
        found.update(got)
    results = []
    for i, copies in enumerate(plan.chunks):
        states, values = found[i][:2]
        expected = [int(plan.classes.copy_state[k]) for k in copies]
        if list(states) != expected or set(values) != set(plan.variables_of(i)):
            raise simu.SimulationError(f"chunk {i} holds other states or variables than planned")
        results.append(found[i])
    tables, _ = read_dataset(dataset_path)
    structure = simu.Structure.from_tables(tables)
    specs = simu.takeup_specs_for(plan.variables)
    result = simu._collect(results, tables, structure, plan.variables, specs, plan.classes,
                           plan.chunks, plan.states, plan.workers, plan.year, log,
                           plan.planned_at or time.time(), plan.probe_figures)
    # as simulate_states records them
    result.metadata["takeup_state_rates"] = {t.input: t.as_dict() for t in plan.state_takeup}
    result.metadata["takeup_state_entities"] = {t.input: t.entity for t in plan.state_takeup}
    return result
