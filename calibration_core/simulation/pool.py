"""The driver and its worker pool: chunks planned (:func:`plan_chunks`), simulated in worker
processes, and collected into one :class:`StateSimulations` (:func:`simulate_states`)."""

from __future__ import annotations

import os
import time
from typing import Callable, Sequence

import numpy as np
import pandas as pd

from ..areas import STATE_ABBR
from .county_classes import (_probe_task, check_county_invariance, classes_from_signatures,
                             county_weights, CountyClasses, merge_probe_traces, probe_parts,
                             probe_signatures, single_county_classes)
from .results import StateSimulations
from .routing import _chunk_task, _SIM_CACHE, _simulation_classes
from .settings import (DEFAULT_CHUNK_HOUSEHOLDS, DEFAULT_PROBE_HOUSEHOLDS, FROZEN_AT_CLASS,
                       SimulationError, STATE_ORDER, YEAR)
from .stacking import Structure
from .takeup import takeup_specs_for
from .tracing import county_dependent_variables


# --------------------------------------------------------------------------------------------
# driver


def plan_chunks(n_households: int, states: Sequence[int], max_households_per_chunk: int,
                workers: int = 1) -> list[list[int]]:
    """Split ``states`` into consecutive groups of at most ``max_households_per_chunk //
    n_households`` states (at least one), balanced in size, the smaller groups first (the
    first runs traced, ~15% slower); with several workers the number of groups is rounded up
    to a multiple of ``workers`` (while states last), so that no worker runs one more chunk
    than the others."""
    per = max(1, int(max_households_per_chunk) // max(1, n_households))
    n_chunks = -(-len(states) // per)
    if workers > 1:
        n_chunks = min(len(states), -(-n_chunks // workers) * workers)
    sizes = sorted(len(c) for c in np.array_split(np.arange(len(states)), n_chunks))
    ends = np.cumsum(sizes)
    return [list(states[a:b]) for a, b in zip(np.r_[0, ends[:-1]], ends) if b > a]


def simulate_states(
    dataset_path: str | os.PathLike,
    variables: Sequence[str],
    county_table: pd.DataFrame,
    population: pd.Series | None = None,
    states: Sequence[int] = STATE_ORDER,
    max_households_per_chunk: int = DEFAULT_CHUNK_HOUSEHOLDS,
    workers: int = 1,
    year: int = YEAR,
    log: Callable[[str], None] = lambda msg: None,
    route: bool = True,
    county_classes: bool = True,
    n_probes: int = DEFAULT_PROBE_HOUSEHOLDS,
    probe_signature: str = "values",
    state_takeup: Sequence = (),
    plan_only: bool = False,
) -> StateSimulations | dict:
    """Simulate ``variables`` for every household of ``dataset_path`` in every state of ``states``
    and, with ``county_classes``, in every county class of each state.

    Parameters
    ----------
    dataset_path : time-period-arrays H5 of the base households (``stratified_microdata``).
    variables : policyengine-us variable names (:func:`needed_variables`).
    county_table : ``geography.load_county_table`` output: the counties of each state (a
        class is simulated at its most populous county, weighted by ``population``).
    states : state FIPS to simulate (default all 51; the result always has 51 rows, states not
        simulated are filled from the first simulated state - only for tests).
    max_households_per_chunk : households per stacked simulation (memory ~90 kB each; see
        :data:`DEFAULT_CHUNK_HOUSEHOLDS`).
    workers : processes running chunks in parallel (1: in this process).
    route : run each state's own rules on its rows only (:class:`StateRouter`); False runs
        them on every stacked row, as policyengine-core does (for comparisons).
    county_classes : first run the probe (:func:`probe_county_classes`: ``n_probes``
        households in every county, traced) and simulate one state copy per county class, so
        that every county-dependent value is exact for every county; the variables of
        :data:`FROZEN_AT_CLASS` are simulated too (area files carry their class values). Each
        state's default copy computes every variable, its other classes only the
        county-dependent ones (:func:`county_dependent_variables` of the probe's traced graph,
        checked against the probe's values by :func:`check_county_invariance`); their other
        values are the default copy's. False: one copy per state at its most populous county
        (:func:`single_county_classes`; the representative-county mode).
    n_probes, probe_signature : the probe's households and signature
        (:func:`probe_county_classes`); with several workers each probes a part of the
        counties (:func:`probe_parts`: whole states).
    state_takeup : :class:`~calibration_core.aca_takeup.StateTakeUp` inputs set per state copy
        to that state's decision (the area files write the same per cell); one whose
        variables are re-randomised (forced True) is left to the package. Recorded in the
        metadata (``takeup_state_rates``).
    plan_only : stop after the probe (run in this process, one part) and the chunk plan (for
        ``workers``) and return them instead of running the chunks: a dict of ``classes``,
        ``chunks`` (copies of each stacked chunk, chunk 0 traced), ``chunk_variables`` (the
        variables of each chunk), ``variables``, ``forced`` (take-up inputs forced true:
        ``(entity, input)`` tuples and the ``state_takeup`` inputs), ``probe_figures``;
        :mod:`calibration_core.state_chunks` runs each chunk as its own step.

    The first chunk runs traced: its dependency graph decides which variables cannot depend on
    the state (a formula it did not run, such as another state's rules, counts as
    state-dependent). Those are stored once; every other chunk's values of them must equal the
    first chunk's, or :class:`SimulationError` names the variable (a check of the decision).

    Returns :class:`StateSimulations` (with ``plan_only``: the plan, a dict).
    """
    from ..h5_dataset import read_dataset

    t_start = time.time()
    tables, file_year = read_dataset(dataset_path)
    if file_year != year:
        raise SimulationError(f"{dataset_path}: dataset year {file_year}, expected {year}")
    for col in ("state_fips", "county_fips"):
        if col not in tables["household"].columns:
            raise SimulationError(f"{dataset_path}: household table lacks {col!r}")
    structure = Structure.from_tables(tables)
    variables = sorted(set(variables) | (set(FROZEN_AT_CLASS) if county_classes else set()))
    specs = takeup_specs_for(variables)
    forced = [(s.entity, s.input) for s in specs]
    forced += [t for t in state_takeup if t.input not in {s.input for s in specs}]
    single = single_county_classes(county_table, population)
    several = county_table.groupby(county_table["district_geoid"] // 100)[
        "county_fips"].nunique()
    probe = bool(county_classes) and bool((several > 1).any())
    pool = None
    if workers > 1 and not plan_only:
        from ..process_lifetime import worker_pool

        # spawn workers that die with this process (a SIGKILLed build must not leave them
        # finishing their chunks and idling at ~1.8 GB each)
        pool = worker_pool(workers)
    try:
        probe_figures: dict = {}
        if probe:
            t_probe = time.time()
            cw = county_weights(county_table, population)
            parts = probe_parts(cw, workers if pool is not None else 1)
            probed = [v for v in variables if v not in FROZEN_AT_CLASS]
            args = [(str(dataset_path), probed, part, year, forced, n_probes,
                     probe_signature) for part in parts]
            if pool is None:
                _simulation_classes()
                done = [probe_signatures(tables, *a[1:]) for a in args]
            else:  # one part of the counties per worker
                done = list(pool.map(_probe_task, args))
            width = {c.shape[1] for c, _ in done}
            if len(width) != 1:
                raise SimulationError(f"probe parts gave signatures of widths {sorted(width)}")
            codes = np.concatenate([c for c, _ in done], axis=0)
            merged = pd.concat(parts, ignore_index=True)
            readers = sorted({r for _, f in done for r in f.get("readers", [])})
            classes = classes_from_signatures(merged["county_fips"].to_numpy(),
                                              merged["state"].to_numpy(), codes,
                                              merged["weight"].to_numpy(), readers)
            edges, unexplored = merge_probe_traces([f for _, f in done])
            county_dependent = county_dependent_variables(variables, edges, unexplored)
            if probe_signature == "values":  # the probe's values must agree with the graph
                check_county_invariance(codes, done[0][1]["columns"],
                                        merged["state"].to_numpy(),
                                        merged["county_fips"].to_numpy(), county_dependent)
            probe_figures = {
                "probe_households": done[0][1]["probe_households"],
                "probe_copies": int(sum(f["probe_copies"] for _, f in done)),
                "probe_parts": len(done), "signature": probe_signature,
                "readers": readers,
                "probe_seconds": round(time.time() - t_probe, 2),
                "probe_start_seconds": round(max(f.get("probe_start_seconds", 0.0)
                                                 for _, f in done), 2),
                "probe_cpu_seconds": round(sum(f.get("probe_cpu_seconds", 0.0)
                                               for _, f in done), 2),
                "county_dependent": county_dependent}
            split = {k: v for k, v in classes.per_state().items() if v > 1}
            log(f"county classes from a probe of {probe_figures['probe_households']} households"
                f" x {probe_figures['probe_copies']} counties in {len(done)} part(s) "
                f"({probe_figures['probe_seconds']} s): {classes.n_copies} state copies for 51 "
                f"states; classes where more than one: {split}")
        else:
            classes = single
        wanted = set(int(x) for x in states)
        copies = [k for k in range(classes.n_copies) if int(classes.copy_state[k]) in wanted]
        # each state's default copy computes every variable; its other county classes only the
        # county-dependent ones (the rest equal the default copy's: the probe's traced graph)
        defaults = set(classes.state_default()[list(STATE_ORDER)].tolist())
        extra = [k for k in copies if k not in defaults]
        per_class = (probe_figures.get("county_dependent", variables) if extra else variables)
        chunks = plan_chunks(structure.n_households, [k for k in copies if k in defaults],
                             max_households_per_chunk, workers)
        chunk_vars = [variables] * len(chunks)
        if extra and per_class:
            more = plan_chunks(structure.n_households, extra, max_households_per_chunk, workers)
            chunks += more
            chunk_vars += [per_class] * len(more)
        if plan_only:  # the chunks run as steps elsewhere (state_chunks)
            return {"classes": classes, "chunks": chunks, "chunk_variables": chunk_vars,
                    "variables": variables, "forced": forced, "probe_figures": probe_figures}
        tasks = [(str(dataset_path), [int(classes.copy_state[k]) for k in c], vs,
                  [str(classes.copy_county[k]) for k in c], year, forced, i == 0, route)
                 for i, (c, vs) in enumerate(zip(chunks, chunk_vars))]
        # the traced chunk is submitted first, so it never waits behind the others
        results = (map(_chunk_task, tasks, [tables] * len(tasks)) if pool is None
                   else pool.map(_chunk_task, tasks))
        result = _collect(results, tables, structure, variables, specs, classes, chunks,
                          states, workers, year, log, t_start, probe_figures)
        result.metadata["takeup_state_rates"] = {t.input: t.as_dict() for t in state_takeup}
        result.metadata["takeup_state_entities"] = {t.input: t.entity for t in state_takeup}
        return result
    finally:
        _SIM_CACHE.clear()
        if pool is not None:
            from ..process_lifetime import close_pool

            close_pool(pool)  # waited for: their CPU and memory count in this step's cost


def _collect(results, tables, structure, variables, specs, classes: CountyClasses, chunks,
             states, workers, year, log, t_start, probe_figures) -> StateSimulations:
    parts: dict[str, list] = {v: [] for v in variables}  # (copy rows, values) per chunk
    rows_done: list[int] = []
    chunk_times, start_times, cpu_times = [], [], []
    trace = None
    copy_state = classes.copy_state
    for chunk, result in zip(chunks, results):
        chunk_states, values, seconds, start_seconds, pid, trace_info, *rest = result
        rows_done += list(chunk)
        for v in variables:
            if v in values:
                parts[v].append((list(chunk), values[v]))
        chunk_times.append(round(seconds, 2))
        start_times.append(round(start_seconds, 2))
        if rest:
            cpu_times.append(round(float(rest[0]), 2))
        if trace_info is not None:
            trace = trace_info
        started = f", after a policyengine-us start of {start_seconds:.1f} s" if (
            start_seconds >= 0.5) else ""
        only = (f" ({len(values)} county-dependent variable(s))"
                if len(values) < len(variables) else "")
        log(f"{'traced ' if trace_info is not None else ''}chunk of {len(chunk_states)} copies x "
            f"{structure.n_households} households{only}: {seconds:.1f} s (pid {pid}{started})")
    dependence, entity = trace["dependence"], trace["entity"]
    dependent = [v for v in variables if dependence[v]]
    invariant_vars = [v for v in variables if not dependence[v]]
    log(f"state-invariant (stored once): {invariant_vars}; state-dependent: {dependent}")
    invariant: dict[str, np.ndarray] = {}
    for v in invariant_vars:
        rows = [k for c, _ in parts[v] for k in c]
        stacked = np.concatenate([a for _, a in parts[v]], axis=0)
        differs = np.flatnonzero((stacked != stacked[0]).any(axis=1))
        if len(differs):
            state = int(copy_state[rows[differs[0]]])
            county = str(classes.copy_county[rows[differs[0]]])
            raise SimulationError(
                f"{v!r} was classified state-invariant but differs in {STATE_ABBR[state]} "
                f"from {STATE_ABBR[int(copy_state[rows[0]])]}"
                f"{f' (county {county})' if county else ''}: the traced chunk missed a "
                "dependency on the state")
        invariant[v] = stacked[0]
    by_state = {}
    default = classes.state_default()
    done = np.asarray(rows_done, dtype=np.int64)
    for v in dependent:
        rows = np.asarray([k for c, _ in parts[v] for k in c], dtype=np.int64)
        stacked = np.concatenate([a for _, a in parts[v]], axis=0)
        full = np.empty((classes.n_copies,) + stacked.shape[1:], dtype=stacked.dtype)
        full[rows] = stacked
        # county classes that computed only the county-dependent variables: the state's value
        same = np.setdiff1d(done, rows)
        if len(same):
            full[same] = full[default[copy_state[same]]]
        missing = np.setdiff1d(np.arange(classes.n_copies), done)
        if len(missing):  # states not simulated (tests, sampled benches): first simulated state
            full[missing] = stacked[0]
        by_state[v] = full

    meta = {
        "n_households": structure.n_households,
        "n_persons": len(structure.ids["person"]),
        "variables": list(variables), "state_invariant": invariant_vars,
        "state_dependent": dependent,
        "states_simulated": sorted(int(s) for s in states),
        "chunks": [[int(copy_state[k]) for k in c] for c in chunks],
        "chunk_seconds": chunk_times,
        "workers": int(workers), "traced_chunk_states": [int(copy_state[k]) for k in chunks[0]],
        "traced_chunk_seconds": chunk_times[0],
        "traced_chunk_routed_formulas": int(trace.get("routed_formulas", 0)),
        "unroutable_formulas": list(trace.get("unroutable", [])),
        "stacked_seconds": round(float(sum(chunk_times)), 2),
        # policyengine-us start-up paid before each chunk (a worker's first one; 0 after)
        "start_seconds": start_times,
        # CPU seconds of each chunk's task in its process (start-up included)
        "chunk_cpu_seconds": cpu_times,
        "total_seconds": round(time.time() - t_start, 2),
        "representative_county": {STATE_ABBR[int(s)]: str(classes.copy_county[k])
                                  for s, k in zip(STATE_ORDER,
                                                  classes.state_default()[list(STATE_ORDER)])},
        "takeup_inputs_forced_true": [s.input for s in specs],
        "state_copies": int(classes.n_copies),
        "county_classes": classes.per_state(),
        "county_readers": list(classes.readers),
        "probe": {k: v for k, v in probe_figures.items()
                  if k not in ("readers", "probe_seconds", "probe_start_seconds",
                               "probe_cpu_seconds", "county_dependent")},
        # computed in every county class; the other variables once per state (default copy)
        "county_dependent": list(probe_figures.get("county_dependent", [])),
        "probe_seconds": probe_figures.get("probe_seconds", 0.0),
        "probe_start_seconds": probe_figures.get("probe_start_seconds", 0.0),
        "probe_cpu_seconds": probe_figures.get("probe_cpu_seconds", 0.0),
    }
    eligible = sorted({v for s in specs for v in s.variables} & set(variables))
    home = tables["household"]["state_fips"].to_numpy().astype(np.int64)
    return StateSimulations(structure, home, entity, invariant, by_state, dependence, eligible,
                            meta, classes)


