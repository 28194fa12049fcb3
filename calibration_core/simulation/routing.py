"""State routing: each state's own rules run on that state's rows only (:class:`StateRouter`),
and one chunk of stacked states simulated (:func:`simulate_chunk`)."""

from __future__ import annotations

import hashlib
import os
import time
from typing import Sequence

import numpy as np
import pandas as pd

from ..areas import STATE_ABBR
from .settings import ENTITIES, YEAR
from .stacking import stack_tables, state_takeup_values, Structure
from .tracing import (_as_plain, _edge_tracer, _state_gates, _trace_graph,
                      classify_state_dependence, variable_entities)


# --------------------------------------------------------------------------------------------
# a state's own rules on that state's rows only
#
# policyengine-core runs a formula gated by ``defined_for`` (e.g. ``StateCode.AK``: 3,970
# policyengine-us variables) on every row and masks the result afterwards; it skips it only when
# no row is in the state. In a stack of k states each state's own rules therefore run on k times
# the rows they need: in a 51-state stack of 1,000 households 82% of the time went to other
# states' rows (Alaska's child-care rate alone: 49 s). The router sends such a formula to a small
# "block" simulation of the rows of its state (one copy of the households, or one state's area
# files in validation); everything the formula reads that is not that state's own rule comes
# from the stacked simulation, sliced to the block, so shared work is still done once for all
# states. A formula that opens a branch (a counterfactual with changed inputs) cannot be served
# from a block and runs on all rows.


class _Unroutable(Exception):
    """A block simulation was asked for something it cannot answer from the stacked one."""


class StateRouter:
    """Routes the state-gated formulas of a stacked simulation to per-state block simulations.

    ``layout[abbr][entity]``: the rows (a slice) of each state at each entity - every state's
    rows must be contiguous (:func:`state_layout`); ``templates[abbr]``: id-only tables of
    those rows (block simulations are built from them; they hold no inputs - every input comes
    from the stacked simulation).
    """

    def __init__(self, parent, layout: dict[str, dict[str, slice]],
                 templates: dict[str, dict[str, pd.DataFrame]], year: int):
        self.parent = parent
        self.year = year
        self.gates = _state_gates(parent.tax_benefit_system)
        self.blocks: dict[str, object] = {}
        self.templates: dict[str, dict[str, pd.DataFrame]] = {}
        self.spare: dict[str, list] = {}  # emptied blocks by the ids they were built from
        self.blocks_built = self.blocks_reused = 0
        self.unroutable: set[str] = set()
        self.place(layout, templates)

    def place(self, layout: dict[str, dict[str, slice]],
              templates: dict[str, dict[str, pd.DataFrame]]) -> None:
        """Where each state's rows are (a reused stack moves its copies). The blocks of the
        previous placement are kept aside and serve, emptied, any state whose block has the
        same ids (every copy of a stack has): building one costs ~0.12 s, emptying ~0.01 s."""
        for abbr, sim in self.blocks.items():
            self.spare.setdefault(self._ids_key(self.templates[abbr]), []).append(sim)
        self.layout, self.templates = layout, templates
        self.blocks = {}
        self.routed_calls = 0

    @staticmethod
    def _ids_key(template: dict[str, pd.DataFrame]) -> str:
        digest = hashlib.blake2b(digest_size=16)
        for e in ENTITIES:
            digest.update(e.encode())
            for c in template[e].columns:
                digest.update(c.encode())
                digest.update(np.ascontiguousarray(template[e][c].to_numpy()).tobytes())
        return digest.hexdigest()

    def rows(self, abbr: str, entity: str) -> slice:
        return self.layout[abbr][entity]

    def state_of(self, variable, period) -> str | None:
        """The state whose block computes ``variable`` (None: compute on all rows)."""
        abbr = self.gates.get(variable.name)
        if (abbr is None or abbr not in self.layout or variable.name in self.unroutable
                or variable.get_formula(period) is None):
            return None
        return abbr

    def block(self, abbr: str):
        sim = self.blocks.get(abbr)
        if sim is None:
            spare = self.spare.get(self._ids_key(self.templates[abbr])) if self.spare else None
            if spare:
                sim = spare.pop()
                sim.branches.clear()
                sim.drop_computed_arrays()  # the state it served before
                self.blocks_reused += 1
            else:
                sim = _microsimulation(self.templates[abbr], self.year, kind="block")
                self.blocks_built += 1
            sim.router, sim.abbr = self, abbr
            sim.trace = bool(getattr(self.parent, "trace", False))
            if sim.trace:
                sim.tracer = _edge_tracer()
            self.blocks[abbr] = sim
        return sim

    def edges(self) -> dict[str, set]:
        """Dependency edges recorded inside the blocks (traced stacks only)."""
        out: dict[str, set] = {}
        for sim in self.blocks.values():
            for k, v in getattr(sim.tracer, "edges", {}).items():
                out.setdefault(k, set()).update(v)
        return out


def state_layout(tables: dict[str, pd.DataFrame]
                 ) -> tuple[dict[str, dict[str, slice]], dict[str, dict[str, pd.DataFrame]]]:
    """(layout, templates) for :class:`StateRouter` from stacked entity tables: each state's
    rows at every entity (an entity belongs to its first member's household's state) and
    id-only tables of them. A state whose rows are not contiguous at some entity (or a
    household table without ``state_fips``) is left out: its rules run on every row."""
    if "state_fips" not in tables["household"].columns:
        return {}, {}
    structure = Structure.from_tables(tables)
    hh_state = tables["household"]["state_fips"].to_numpy().astype(np.int64)
    spans: dict[int, dict[str, slice]] = {}
    broken: set[int] = set()
    for e in ENTITIES:
        state = hh_state[structure.household_index[e]]
        starts = np.flatnonzero(np.r_[True, state[1:] != state[:-1]])
        ends = np.r_[starts[1:], len(state)]
        runs = state[starts]
        uniq, n_runs = np.unique(runs, return_counts=True)
        broken |= set(uniq[n_runs > 1].tolist())
        for st, a, b in zip(runs.tolist(), starts.tolist(), ends.tolist()):
            spans.setdefault(st, {})[e] = slice(a, b)
    layout, templates = {}, {}
    for st, rows in spans.items():
        if st in broken or st not in STATE_ABBR or len(rows) != len(ENTITIES):
            continue
        abbr = STATE_ABBR[st]
        layout[abbr] = rows
        templates[abbr] = {e: tables[e].iloc[rows[e]][
            [c for c in tables[e].columns if c.endswith("_id")]].reset_index(drop=True)
            for e in ENTITIES}
    return layout, templates


_SIMULATION_CLASSES: dict = {}


def start_policyengine() -> float:
    """Import policyengine-us and build its tax-benefit system in this process, with
    :mod:`engine_speedups` installed (what the first simulation of a process would do).

    Returns the seconds it took (0 when this process, or the process it was forked from,
    already did). Used by the multiprocess executor's fork server (``jobs/step_preload.py``) so
    that its step processes start with the system built."""
    import time

    started = time.perf_counter()
    _simulation_classes()
    return round(time.perf_counter() - started, 2)


def _simulation_classes() -> dict:
    """The Microsimulation subclasses this module builds (on first use: policyengine-us imports
    slowly): "plain" (unweighted by default), "stacked" and "block" (state routing). Also
    installs :mod:`engine_speedups` (exact; process-wide; its start-up part only if
    policyengine-us is not imported yet)."""
    if _SIMULATION_CLASSES:
        return _SIMULATION_CLASSES
    from .. import engine_speedups

    engine_speedups.install_start_speedup()  # before policyengine-us builds its system
    from policyengine_core.periods import Period
    from policyengine_core.periods import period as make_period
    from policyengine_core.simulations import Simulation as CoreSimulation
    from policyengine_us import Microsimulation

    engine_speedups.install()

    class UnweightedSimulation(Microsimulation):
        """Answers unweighted by default. policyengine-core sums a month variable over a year
        with ``self.calculate(v, month)`` and divides a year with ``self.calculate_divide``
        (blocks read the stack that way too); a Microsimulation answers those weighted -
        projects the household weights onto the entity and builds a pandas series, each time.
        No value here needs weights: a one-state simulation of 1,000 households computed the
        targets' variables 3.4x faster unweighted, with identical values."""

        def calculate(self, variable_name, period=None, map_to=None, use_weights=False,
                      decode_enums=True):
            return super().calculate(variable_name, period, map_to, use_weights, decode_enums)

        def calculate_add(self, variable_name, period=None, map_to=None, use_weights=False):
            return super().calculate_add(variable_name, period, map_to, use_weights)

        def calculate_divide(self, variable_name, period=None, map_to=None, use_weights=False):
            return super().calculate_divide(variable_name, period, map_to, use_weights)

    class StackedSimulation(UnweightedSimulation):
        """A stack of state copies whose state-gated formulas run in per-state blocks."""

        router: StateRouter | None = None

        def _run_formula(self, variable, population, period):
            router = self.router
            abbr = None if router is None or router.parent is not self else (
                router.state_of(variable, period))
            if abbr is None:  # branches of the stack (own inputs) compute as usual
                return super()._run_formula(variable, population, period)
            block = router.block(abbr)
            try:
                values = CoreSimulation.calculate(block, variable.name, period)
            except _Unroutable:
                router.unroutable.add(variable.name)
                return super()._run_formula(variable, population, period)
            router.routed_calls += 1
            full = population.get_holder(variable.name).default_array()
            full[router.rows(abbr, variable.entity.key)] = values
            return full

    class BlockSimulation(UnweightedSimulation):
        """The rows of one state: computes that state's own rules, reads the rest from the
        stack."""

        router: StateRouter
        abbr: str

        def _own(self, name: str, period) -> bool:
            """Computed here: this state's rule, unless the stack already holds a value for it
            (a dataset input, or computed on every row before)."""
            if self.router.gates.get(name) != self.abbr:
                return False
            if period is None:
                period = self.default_calculation_period
            if not isinstance(period, Period):
                period = make_period(period)
            return self.router.parent.get_array(name, period) is None

        def _note_edge(self, name: str) -> None:
            edges = getattr(self.tracer, "edges", None)
            if edges is not None and self.tracer._stack:
                edges[self.tracer._stack[-1]["name"]].add(name)

        def _from_stack(self, method, name, period, map_to=None, decode_enums=False):
            self._note_edge(name)
            entity = self.tax_benefit_system.variables[name].entity.key
            values = method(self.router.parent, name, period)
            if isinstance(values, pd.Series):
                # a month variable summed to a year comes back as a (Micro)Series indexed by
                # row; a slice of it would keep the stack's row labels
                values = pd.Series.to_numpy(values)
            values = values[self.router.rows(self.abbr, entity)]
            if decode_enums and hasattr(values, "decode_to_str"):
                values = values.decode_to_str()
            if map_to is not None:
                values = self.map_result(values, entity, map_to)
            return values

        def calculate(self, variable_name, period=None, map_to=None, use_weights=False,
                      decode_enums=False):
            if self._own(variable_name, period):
                return CoreSimulation.calculate(self, variable_name, period, map_to,
                                                decode_enums)
            return self._from_stack(CoreSimulation.calculate, variable_name, period, map_to,
                                    decode_enums)

        def calculate_add(self, variable_name, period=None, map_to=None, use_weights=False,
                          decode_enums=False):
            if self._own(variable_name, period):
                return super().calculate_add(variable_name, period, map_to, use_weights=False)
            return self._from_stack(CoreSimulation.calculate_add, variable_name, period, map_to)

        def calculate_divide(self, variable_name, period=None, map_to=None, use_weights=False,
                             decode_enums=False):
            if self._own(variable_name, period):
                return super().calculate_divide(variable_name, period, map_to, use_weights=False)
            return self._from_stack(CoreSimulation.calculate_divide, variable_name, period,
                                    map_to)

        def get_array(self, variable_name, period):
            if self._own(variable_name, period):
                return super().get_array(variable_name, period)
            values = self.router.parent.get_array(variable_name, period)
            if values is None:
                return None
            entity = self.tax_benefit_system.variables[variable_name].entity.key
            return values[self.router.rows(self.abbr, entity)]

        def get_branch(self, *args, **kwargs):
            raise _Unroutable("a block simulation has no inputs to branch from")

    _SIMULATION_CLASSES.update(plain=UnweightedSimulation, stacked=StackedSimulation,
                               block=BlockSimulation)
    return _SIMULATION_CLASSES


# per process: stacked simulations kept for reuse, keyed by (dataset key, states per chunk)
_SIM_CACHE: dict = {}


def simulate_chunk(tables: dict[str, pd.DataFrame], states: Sequence[int],
                   variables: Sequence[str], counties: dict[int, str] | Sequence[str],
                   year: int = YEAR,
                   forced_true: Sequence[tuple[str, str]] = (), reuse_key=None,
                   trace_into: dict | None = None, route: bool = True
                   ) -> dict[str, np.ndarray]:
    """One stacked simulation of the households copied into each of ``states`` (a state may
    repeat, consecutively: one copy per county class), copy k at county ``counties[k]`` (or
    ``counties[state]`` for a mapping).

    With ``reuse_key``, a simulation of the same shape built earlier in this process is reused:
    its copies are moved to ``states`` (``state_fips``, ``county_fips``), its branches cleared
    and its computed arrays dropped (spec/FEASIBILITY §6: all three are needed for exact
    results), which saves building and warming a new simulation per chunk.

    With ``trace_into`` (a dict), the simulation records which variable requested which and
    stores there ``dependence`` (:func:`classify_state_dependence` of ``variables``) and
    ``entity`` (variable -> entity): the dependency graph comes with the chunk's values; also
    ``routed_formulas`` (state rules computed in per-state blocks) and ``unroutable``.

    With ``route`` (default) and more than one state, each state's own rules run on that
    state's rows only (:class:`StateRouter`); ``route=False`` runs them on every row, as
    policyengine-core does (the bench's comparison).

    Returns ``{variable: (len(states), n_entity) array}`` at each variable's own entity, rows in
    ``states`` order, columns in dataset order.
    """
    route = bool(route) and len(states) > 1
    if isinstance(counties, dict):
        counties = [counties[int(x)] for x in states]
    counties = [str(c) for c in counties]
    key = (None if reuse_key is None
           else (reuse_key, len(states), tuple(forced_true), year, route))
    sim = _SIM_CACHE.get(key) if key is not None else None
    if sim is None:
        stacked = stack_tables(tables, list(states), counties, forced_true)
        sim = _microsimulation(stacked, year, kind="stacked" if route else "plain")
        if route:
            sim.router = StateRouter(sim, *_copies_layout(tables, states), year)
        if key is not None:
            _SIM_CACHE.clear()  # one kept simulation per process bounds memory
            _SIM_CACHE[key] = sim
    else:
        n = len(tables["household"])
        sim.set_input("state_fips", year, np.repeat(np.asarray(states, dtype=np.int64), n))
        sim.set_input("county_fips", year, np.repeat(np.asarray(counties), n))
        for f in forced_true:
            if not isinstance(f, tuple):  # a state take-up follows its copies' states
                sim.set_input(f.input, year, state_takeup_values(tables, f, states).ravel())
        sim.branches.clear()
        sim.drop_computed_arrays()
        if getattr(sim, "router", None) is not None:
            sim.router.place(*_copies_layout(tables, states))
    entity = variable_entities(sim.tax_benefit_system, variables)  # unknown names: clear error
    if trace_into is not None:
        sim.trace = True  # also makes branches share the tracer and skips the untraced fast path
        sim.tracer = _edge_tracer()
    try:
        out = {}
        for v in variables:
            values = _as_plain(sim.calculate(v, year, use_weights=False))
            out[v] = values.reshape(len(states), -1)
        if trace_into is not None:
            edges, unexplored = _trace_graph(sim)
            # a state take-up input differs between state copies: what reads it depends on state
            unexplored |= {f.input for f in forced_true if not isinstance(f, tuple)}
            router = getattr(sim, "router", None)
            gates = router.gates if router is not None else _state_gates(sim.tax_benefit_system)
            trace_into["dependence"] = classify_state_dependence(variables, edges, gates,
                                                                 unexplored)
            trace_into["entity"] = entity
            trace_into["routed_formulas"] = 0 if router is None else router.routed_calls
            trace_into["unroutable"] = [] if router is None else sorted(router.unroutable)
    finally:
        if trace_into is not None:
            sim.trace = False  # a reused simulation runs untraced
    return out


def _copies_layout(tables: dict[str, pd.DataFrame], states: Sequence[int]):
    """:class:`StateRouter` layout of :func:`stack_tables` copies: copy k holds rows
    ``k * n_e .. (k + 1) * n_e`` of every entity. A state's consecutive copies (its county
    classes) form one block; blocks of m copies are built from the same ids (the first m
    copies'), so a reused stack reuses them. A state in non-consecutive copies would make its
    rows two blocks: nothing is routed then."""
    abbrs = [STATE_ABBR[int(s)] for s in states]
    starts = [k for k in range(len(abbrs)) if k == 0 or abbrs[k] != abbrs[k - 1]]
    runs = [abbrs[k] for k in starts]
    if len(set(runs)) != len(runs):
        return {}, {}
    ends = starts[1:] + [len(abbrs)]
    n = {e: len(tables[e]) for e in ENTITIES}
    ids = {e: tables[e][[c for c in tables[e].columns if c.endswith("_id")]] for e in ENTITIES}
    templates_by_size: dict[int, dict[str, pd.DataFrame]] = {}
    layout, templates = {}, {}
    for a, k0, k1 in zip(runs, starts, ends):
        m = k1 - k0
        if m not in templates_by_size:
            templates_by_size[m] = ids if m == 1 else stack_tables(ids, [None] * m, None)
        layout[a] = {e: slice(k0 * n[e], k1 * n[e]) for e in ENTITIES}
        templates[a] = templates_by_size[m]
    return layout, templates


def _dataset_key(path) -> tuple:
    st = os.stat(path)
    return (str(path), st.st_mtime_ns, st.st_size)


def _chunk_task(args, tables: dict[str, pd.DataFrame] | None = None):
    """One chunk, in a worker (reads the dataset) or in this process (``tables`` given):
    (states, values, seconds, policyengine-us start seconds, pid, trace, CPU seconds)."""
    path, states, variables, counties, year, forced_true, trace, route = args
    cpu = time.process_time()
    if tables is None:
        from ..h5_dataset import read_dataset

        tables, _ = read_dataset(path)
    t0 = time.time()
    _simulation_classes()  # a worker's first chunk starts policyengine-us (~40 s)
    t1 = time.time()
    trace_info = {} if trace else None
    values = simulate_chunk(tables, states, variables, counties, year, forced_true,
                            reuse_key=_dataset_key(path), trace_into=trace_info, route=route)
    return (list(states), values, time.time() - t1, t1 - t0, os.getpid(), trace_info,
            time.process_time() - cpu)


def _microsimulation(tables: dict[str, pd.DataFrame], year: int, kind: str = "plain"):
    """A policyengine-us Microsimulation of ``tables`` that answers unweighted by default;
    ``kind`` "stacked" or "block" gives the routing subclasses (:func:`_simulation_classes`)."""
    from policyengine_us.data.dataset_schema import USSingleYearDataset

    cls = _simulation_classes()[kind]
    dataset = USSingleYearDataset(**tables, time_period=year)
    return cls(dataset=dataset, dataset_end_year=year)
