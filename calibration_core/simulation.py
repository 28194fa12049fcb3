"""The value of every target and constraint variable for every base household in every state.

The calibration matrix needs, for each clone-household, the values its household would have in
the state its clone was placed in. Instead of the reference pipeline's loop of 51 full
simulations (one per state, every variable recomputed in each), :func:`simulate_states`

1. splits the states into chunks (:func:`plan_chunks`) and simulates each chunk *stacked*: the
   households replicated once per state of the chunk (ids offset per copy, ``state_fips`` and a
   county of that state set per copy), computing only the variables the targets need
   (:func:`needed_variables`); chunks bound memory and run in parallel worker processes;
2. runs the first chunk traced and decides from the policyengine-us dependency graph it
   records which of those variables cannot depend on the state
   (:func:`classify_state_dependence`): a variable is state-invariant when nothing it is
   computed from reads the household's geography (``state_fips``, ``county_fips`` and what
   derives from them); a formula the chunk did not run (another state's rules) counts as
   state-dependent. Invariant variables are stored once, after a check that every chunk
   computed the same values for them;
3. runs each state's own rules (formulas ``defined_for`` one state) on that state's rows only
   (:class:`StateRouter`): policyengine-core would run them on every row of the stack and mask
   afterwards, which made stacking k states cost k times each state's rules.

Take-up (spec §4.7): for the variables a take-up input gates (``snap``, ``medicaid_enrolled``,
``aca_ptc``, ``tanf``, ``ssi`` ...) the simulations compute the *eligible* value (take-up forced
to True); the package builder applies per-clone take-up decisions with :func:`takeup_decisions`,
whose draws are ``keyed_uniform("takeup.<input>", household_id, clone, entity_rank)`` - the area
builder calls the same function to write matching take-up inputs.

policyengine-us is imported only inside the functions that simulate (~45 s per process).
"""
from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Sequence

import numpy as np
import pandas as pd

from .areas import STATE_ABBR, STATE_FIPS, STATES
from .io_utils import atomic_path, keyed_uniform

YEAR = 2024
ENTITIES = ("person", "household", "tax_unit", "spm_unit", "family", "marital_unit")
COUNT_VARIABLES = {"person_count": "person", "household_count": "household",
                   "tax_unit_count": "tax_unit", "spm_unit_count": "spm_unit",
                   "family_count": "family", "marital_unit_count": "marital_unit"}
GEO_CONSTRAINT_VARIABLES = frozenset({"state_fips", "congressional_district_geoid", "ucgid_str",
                                      "county_fips", "county"})
# inputs whose change moves a household; everything computed from them depends on the state
GEO_ROOTS = frozenset({"state_fips", "county_fips", "county", "state_code", "state_code_str",
                       "state_name", "zip_code", "in_nyc", "county_str", "state_group",
                       "congressional_district_geoid"})
# inputs that differ between counties of one state: a formula reading one of them directly is a
# *county reader*; the values of the county readers the targets reach define the county classes
COUNTY_ROOTS = frozenset({"county_fips", "county", "county_str", "in_nyc", "zip_code",
                          "three_digit_zip_code", "congressional_district_geoid",
                          "block_geoid", "tract_geoid", "cbsa_code", "place_fips", "puma",
                          "zcta", "sldu", "sldl", "vtd"})
ALL_STATES = "*"
STATE_ORDER: tuple[int, ...] = tuple(sorted(fips for _, fips, _, _ in STATES))
# Households per stacked simulation: a memory bound (about 90 kB per household: a 51-state stack
# of 1,000 households held 4.5 GB). Since each state's own rules run on its rows only
# (StateRouter), a larger stack no longer costs more per state, and the per-simulation start is
# shared: bench/bench_state_simulations.py --compare-unrouted, 2 workers, 1,000 households, 51
# states: 96 s with 26,000 against 154 s unrouted with 6,000 (that setting's optimum); 3,000:
# 151 s against 258 s (the unrouted path still answered weighted then). 40,000 was slower at
# 3,000 households (156-161 s against 150-153 s).
DEFAULT_CHUNK_HOUSEHOLDS = 26_000
# Probe households placed in every county to find the county classes (probe_county_classes):
# 12 x 3,106 counties of the demo build ran in 44 s traced and split 19 states (72 copies)
DEFAULT_PROBE_HOUSEHOLDS = 12
# County-dependent values no handful of probes can class: HUD's housing assistance payment
# (fair market rents and income limits of each county or metro area) enters SNAP's shelter
# deduction. With county classes the state simulations compute it at each class's county and
# the area files carry that value as an input (assembly), so SNAP in the files equals the
# matrix's; without it, 6 of 11,109 in-sample demo rows missed X.w by 0.5-1.65% (state SNAP).
# The probe holds them at 0 (an input): classes need not follow fair market rents (probes with
# housing assistance split one 3,000-household sample into 543 classes).
FROZEN_AT_CLASS: dict[str, str] = {"housing_assistance": "spm_unit"}  # variable -> entity


class SimulationError(ValueError):
    """Inputs to the state simulations are missing or inconsistent."""


# --------------------------------------------------------------------------------------------
# take-up (rates: policyengine-us-data 1.115.4, policyengine_us_data/parameters/take_up/*.yaml)

_MEDICAID_RATES = {
    "AK": 0.88, "AL": 0.92, "AR": 0.79, "AZ": 0.95, "CA": 0.78, "CO": 0.99, "CT": 0.89,
    "DC": 0.99, "DE": 0.86, "FL": 0.98, "GA": 0.73, "HI": 0.88, "IA": 0.84, "ID": 0.78,
    "IL": 0.85, "IN": 0.99, "KS": 0.92, "KY": 0.87, "LA": 0.79, "MA": 0.94, "MD": 0.95,
    "ME": 0.92, "MI": 0.91, "MN": 0.89, "MO": 0.89, "MS": 0.75, "MT": 0.83, "NC": 0.94,
    "ND": 0.91, "NE": 0.79, "NH": 0.84, "NJ": 0.74, "NM": 0.84, "NV": 0.93, "NY": 0.86,
    "OH": 0.82, "OK": 0.77, "OR": 0.92, "PA": 0.64, "RI": 0.94, "SC": 0.93, "SD": 0.88,
    "TN": 0.92, "TX": 0.76, "UT": 0.53, "VA": 0.82, "VT": 0.93, "WA": 0.98, "WI": 0.91,
    "WV": 0.83, "WY": 0.70,
}


@dataclass(frozen=True)
class TakeUp:
    """A take-up input (bool, at ``entity``) gating ``variables`` (at the same entity)."""

    input: str
    entity: str
    variables: tuple[str, ...]
    rate: float | None = None  # national rate
    state_rates: dict | None = None  # state abbr -> rate

    def rates(self, state_fips: np.ndarray) -> np.ndarray:
        """Take-up rate for each element of ``state_fips`` (any shape)."""
        state_fips = np.asarray(state_fips, dtype=np.int64)
        if self.state_rates is None:
            return np.full(state_fips.shape, float(self.rate))
        table = np.zeros(max(STATE_ABBR) + 1)
        for fips, abbr in STATE_ABBR.items():
            table[fips] = self.state_rates[abbr]
        return table[state_fips]


TAKEUP: tuple[TakeUp, ...] = (
    TakeUp("takes_up_snap_if_eligible", "spm_unit", ("snap",), rate=0.82),
    TakeUp("takes_up_medicaid_if_eligible", "person", ("medicaid_enrolled", "medicaid"),
           state_rates=_MEDICAID_RATES),
    TakeUp("takes_up_aca_if_eligible", "tax_unit", ("aca_ptc",), rate=0.672),
    TakeUp("takes_up_tanf_if_eligible", "spm_unit", ("tanf",), rate=0.22),
    TakeUp("takes_up_ssi_if_eligible", "person", ("ssi",), rate=0.50),
    TakeUp("takes_up_head_start_if_eligible", "person", ("head_start",), rate=0.30),
    TakeUp("takes_up_early_head_start_if_eligible", "person", ("early_head_start",), rate=0.09),
    TakeUp("takes_up_dc_ptc", "tax_unit", ("dc_property_tax_credit",), rate=0.32),
)


def takeup_specs_for(variables: Iterable[str]) -> list[TakeUp]:
    """The take-up specs that gate any of ``variables``."""
    wanted = set(variables)
    return [spec for spec in TAKEUP if wanted & set(spec.variables)]


def takeup_draws(takeup_input: str, household_id, clone_index, entity_rank) -> np.ndarray:
    """Uniform [0, 1) draw per entity: ``keyed_uniform("takeup.<input>", household_id, clone,
    rank of the entity within its household)``; arguments broadcast (any shapes)."""
    return keyed_uniform(f"takeup.{takeup_input}", household_id, clone_index, entity_rank)


def takeup_decisions(spec: TakeUp, household_id, clone_index, entity_rank,
                     state_fips) -> np.ndarray:
    """Bool take-up decision per entity: ``draw < rate(state)``; arguments broadcast.

    The matrix builder and the area builder both call this, so an area file's take-up inputs
    reproduce the values the matrix was built from.
    """
    draws = takeup_draws(spec.input, household_id, clone_index, entity_rank)
    return draws < spec.rates(state_fips)


# --------------------------------------------------------------------------------------------
# which variables


def needed_variables(targets: pd.DataFrame, constraints: pd.DataFrame) -> list[str]:
    """Sorted policyengine-us variables the targets need: every target variable except the
    entity counts, every non-geographic constraint variable of the targets' strata, and
    ``adjusted_gross_income`` (geography routes the top AGI decile by it)."""
    for col in ("variable", "stratum_id"):
        if col not in targets.columns:
            raise SimulationError(f"targets table lacks column {col!r}")
    used = constraints[constraints["stratum_id"].isin(targets["stratum_id"])]
    names = set(targets["variable"]) - set(COUNT_VARIABLES)
    names |= set(used["constraint_variable"]) - GEO_CONSTRAINT_VARIABLES
    names.add("adjusted_gross_income")
    return sorted(names)


def classify_state_dependence(
    variables: Sequence[str],
    edges: dict[str, Iterable[str]],
    state_gate: dict[str, str],
    unexplored: Iterable[str] = (),
) -> dict[str, list[str]]:
    """For each variable, the states in which its value may differ from elsewhere.

    ``edges[v]`` lists the variables ``v`` was computed from (a traced dependency graph);
    ``state_gate[v]`` is the state a variable is defined for only (policyengine-us
    ``defined_for = StateCode.XX``: zero elsewhere); ``unexplored`` are variables whose formula
    did not run in the trace (their inputs are unknown). Returns ``{v: []}`` for state-invariant
    variables, ``{v: ["AK", ...]}`` when only those states' own rules reach ``v``, and
    ``{v: ["*"]}`` when ``v`` reads the geography directly or through an unexplored variable.
    A variable is state-invariant iff the result is ``[]``.
    """
    unexplored = set(unexplored)
    memo: dict[str, frozenset] = {}
    star = frozenset({ALL_STATES})

    def reach(root: str) -> frozenset:
        # iterative DFS with memo; cycles (rare) are cut conservatively
        stack = [(root, iter(sorted(edges.get(root, ()))))]
        acc: dict[str, set] = {root: set()}
        on_path = {root}
        while stack:
            node, children = stack[-1]
            advanced = False
            for child in children:
                if child in memo:
                    acc[node] |= memo[child]
                    continue
                if child in GEO_ROOTS or child in unexplored:
                    acc[node] |= star
                    continue
                if child in state_gate:
                    acc[node].add(state_gate[child])
                    continue
                if child in on_path:
                    continue
                acc[child] = set()
                on_path.add(child)
                stack.append((child, iter(sorted(edges.get(child, ())))))
                advanced = True
                break
            if not advanced:
                stack.pop()
                on_path.discard(node)
                result = frozenset(star if ALL_STATES in acc[node] else acc[node])
                memo[node] = result
                if stack:
                    acc[stack[-1][0]] |= result
        return memo[root]

    out = {}
    for v in variables:
        if v in GEO_ROOTS or v in unexplored:
            out[v] = [ALL_STATES]
        elif v in state_gate:
            out[v] = [state_gate[v]]
        else:
            out[v] = sorted(reach(v))
    return out


def county_dependent_variables(
    variables: Iterable[str],
    edges: dict[str, Iterable[str]],
    unexplored: Iterable[str] = (),
    roots: Iterable[str] = COUNTY_ROOTS | set(FROZEN_AT_CLASS),
) -> list[str]:
    """The ``variables`` whose value may differ between counties of one state (sorted).

    ``edges[v]`` lists the variables ``v`` was computed from (a traced dependency graph, the
    probe's: every state's rules ran there); ``unexplored`` are variables whose formula did not
    run in the trace. A variable is county-dependent iff it is a ``root`` (default
    :data:`COUNTY_ROOTS` and the :data:`FROZEN_AT_CLASS` variables, which the probe holds as
    inputs but the state simulations compute at each class's county) or unexplored, or the
    graph reaches one of those from it - a reverse breadth-first search, exact on cycles.
    The others take one value per state whatever the county, so the state simulations compute
    them once per state (the state's default copy), not once per county class.
    """
    bad = set(roots) | set(unexplored)
    parents: dict[str, set] = {}
    for v, kids in edges.items():
        for k in kids:
            parents.setdefault(k, set()).add(v)
    seen, frontier = set(bad), list(bad)
    while frontier:
        node = frontier.pop()
        for p in parents.get(node, ()):
            if p not in seen:
                seen.add(p)
                frontier.append(p)
    return sorted(v for v in set(variables) if v in seen)


# --------------------------------------------------------------------------------------------
# policyengine-us side


def _edge_tracer():
    """A policyengine-core tracer that records only which variable requested which: about 15%
    overhead, against several times for the full tracer (timings, values, parameters)."""
    from collections import defaultdict

    from policyengine_core.tracers import SimpleTracer

    class EdgeTracer(SimpleTracer):
        def __init__(self) -> None:
            super().__init__()
            self.edges: dict[str, set] = defaultdict(set)

        def record_calculation_start(self, variable, period, branch_name="default") -> None:
            if self._stack:
                self.edges[self._stack[-1]["name"]].add(variable)
            else:
                self.edges[variable]
            super().record_calculation_start(variable, period, branch_name)

    return EdgeTracer()


def _trace_graph(sim) -> tuple[dict[str, set], set]:
    """(edges, unexplored) from an edge tracer: edges[v] = names v's formula requested (every
    request, cached or not, in every branch); a variable with a formula whose only recorded
    request is its ``defined_for`` mask is unexplored."""
    edges = {k: set(v) for k, v in sim.tracer.edges.items()}
    router = getattr(sim, "router", None)
    if router is not None:
        for k, v in router.edges().items():
            edges.setdefault(k, set()).update(v)
    tbs = sim.tax_benefit_system
    unexplored = set()
    for name, kids in edges.items():
        var = tbs.variables.get(name)
        if var is None or not var.formulas or var.defined_for is None:
            continue
        gate = getattr(var.defined_for, "name", var.defined_for)
        if kids <= {gate}:
            unexplored.add(name)
    return edges, unexplored


def _state_gates(tbs) -> dict[str, str]:
    """Variable -> state abbr for variables defined only for one state (directly, or through a
    ``defined_for`` chain ending at a state indicator such as ``AK``)."""
    abbrs = set(STATE_FIPS)
    direct: dict[str, str] = {}
    for name, var in tbs.variables.items():
        d = var.defined_for
        if d is None:
            continue
        d = getattr(d, "name", d)
        direct[name] = str(d)
    gates: dict[str, str] = {}
    for name in direct:
        seen, cur = set(), name
        while cur in direct and cur not in seen:
            seen.add(cur)
            cur = direct[cur]
            if cur in abbrs:
                gates[name] = cur
                break
            # an intermediate gate that defaults to a positive value is "on" outside the state
            default = getattr(tbs.variables.get(cur), "default_value", 0)
            if not isinstance(default, (bool, int, float, np.number)) or default > 0:
                break
    return gates


def variable_entities(tbs, variables: Iterable[str]) -> dict[str, str]:
    """Variable -> entity key (person, tax_unit, ...) from a policyengine-us tax-benefit system;
    names that are not policyengine-us variables raise :class:`SimulationError`."""
    unknown = [v for v in variables if v not in tbs.variables]
    if unknown:
        raise SimulationError(f"variable(s) {unknown} are not policyengine-us variables")
    return {v: tbs.variables[v].entity.key for v in variables}


def _as_plain(values) -> np.ndarray:
    """policyengine result -> plain ndarray (enums decoded to str)."""
    if hasattr(values, "decode_to_str"):
        return np.asarray(values.decode_to_str()).astype(str)
    arr = np.asarray(values)
    if arr.dtype == object:
        arr = arr.astype(str)
    return arr


# --------------------------------------------------------------------------------------------
# datasets


@dataclass
class Structure:
    """Entity membership of the base households (dataset order).

    ``ids[e]`` (n_e,) entity ids; ``household_index[e]`` (n_e,) row of each entity's household;
    ``person_index[e]`` (n_person,) row of each person's entity ``e``; ``rank[e]`` (n_e,) the
    entity's 0-based rank within its household (by dataset order).
    """

    ids: dict[str, np.ndarray]
    household_index: dict[str, np.ndarray]
    person_index: dict[str, np.ndarray]
    rank: dict[str, np.ndarray]

    @property
    def n_households(self) -> int:
        return len(self.ids["household"])

    @classmethod
    def from_tables(cls, tables: dict[str, pd.DataFrame]) -> "Structure":
        person = tables["person"]
        hh_ids = tables["household"]["household_id"].to_numpy()
        hh_pos = pd.Index(hh_ids)
        p_hh = hh_pos.get_indexer(person["person_household_id"].to_numpy())
        if (p_hh < 0).any():
            raise SimulationError("person_household_id refers to unknown households")
        ids, hidx, pidx, rank = {}, {}, {}, {}
        for e in ENTITIES:
            e_ids = tables[e][f"{e}_id"].to_numpy()
            ids[e] = e_ids
            if e == "person":
                pidx[e] = np.arange(len(person))
                hidx[e] = p_hh
            else:
                p_e = pd.Index(e_ids).get_indexer(person[f"person_{e}_id"].to_numpy())
                if (p_e < 0).any():
                    raise SimulationError(f"person_{e}_id refers to unknown {e} ids")
                pidx[e] = p_e
                # household of an entity: that of its first member
                first = np.full(len(e_ids), -1)
                order = np.arange(len(person))[::-1]
                first[p_e[order]] = order
                if (first < 0).any():
                    raise SimulationError(f"{e} without members in the person table")
                hidx[e] = p_hh[first]
            # rank within household by dataset order
            h = hidx[e]
            order = np.argsort(h, kind="stable")
            starts = np.r_[0, np.flatnonzero(np.diff(h[order])) + 1]
            counts = np.diff(np.r_[starts, len(h)])
            r = np.empty(len(h), dtype=np.int64)
            r[order] = np.arange(len(h)) - np.repeat(starts, counts)
            rank[e] = r
        return cls(ids, hidx, pidx, rank)


def representative_counties(county_table: pd.DataFrame,
                            population: pd.Series | None = None) -> dict[int, str]:
    """State FIPS -> the county FIPS with the largest population share in the state (the county
    a state copy of the households gets; county-dependent rules use it)."""
    t = county_table.copy()
    w = t["probability"]
    if population is not None:
        w = w * t["district_geoid"].map(population).fillna(0.0)
    t["w"] = w
    t["state"] = t["district_geoid"] // 100
    by = t.groupby(["state", "county_fips"], as_index=False)["w"].sum()
    by = by.sort_values(["state", "w", "county_fips"], ascending=[True, False, True])
    return dict(zip(by.groupby("state").head(1)["state"].astype(int),
                    by.groupby("state").head(1)["county_fips"]))


def stack_tables(tables: dict[str, pd.DataFrame], states: Sequence[int | None],
                 counties: dict[int, str] | Sequence[str] | None,
                 forced_true: Sequence[tuple[str, str]] = (),
                 ) -> dict[str, pd.DataFrame]:
    """Replicate the households once per state: copy k gets ids ``id + k * offset`` (offset a
    power of ten above every id), ``state_fips = states[k]`` and county ``counties[state]``
    when ``counties`` is a mapping, ``counties[k]`` when it is a sequence aligned with
    ``states`` (one county per copy: several copies of one state in different counties);
    a ``None`` state keeps the households where they live. ``forced_true``: (entity, input)
    columns set to True in every copy (take-up inputs); an entry that is a
    :class:`~calibration_core.aca_takeup.StateTakeUp` sets its input per copy to that copy's
    state decision (:func:`state_takeup_values`)."""
    per_copy = counties is not None and not isinstance(counties, dict)
    if per_copy and len(counties) != len(states):
        raise SimulationError(f"{len(counties)} counties for {len(states)} state copies")
    max_id = max(int(tables[e][f"{e}_id"].max()) for e in ENTITIES if len(tables[e]))
    offset = 10 ** len(str(max(max_id, 1)))
    n_copies = len(states)
    placed = np.array([x is not None for x in states], dtype=bool)
    if placed.any():
        copy_state = np.array([int(x) if x is not None else 0 for x in states], dtype=np.int64)
        copy_county = np.array([(counties[k] if per_copy else counties[int(x)])
                                if x is not None else "" for k, x in enumerate(states)],
                               dtype=object)
    by_state = [f for f in forced_true if not isinstance(f, tuple)]
    per_state = {f.input: (f.entity, state_takeup_values(tables, f, states)) for f in by_state}
    out = {}
    for e in ENTITIES:  # vectorised: copy k is rows k*n .. (k+1)*n (probes stack ~3,100 copies)
        df = tables[e]
        for entry in forced_true:
            if isinstance(entry, tuple) and entry[0] == e:
                df = df.assign(**{entry[1]: True})
        if n_copies == 1 and not placed[0] and not any(ent == e for ent, _ in
                                                        per_state.values()):
            out[e] = df
            continue
        n = len(df)
        id_cols = [c for c in df.columns if c == f"{e}_id" or (e == "person" and c.endswith("_id")
                                                                 and c.startswith("person_"))]
        part = df.iloc[np.tile(np.arange(n), n_copies)].reset_index(drop=True)
        shift = np.repeat(np.arange(n_copies, dtype=np.int64) * offset, n)
        for c in id_cols:
            part[c] = df[c].to_numpy()[np.tile(np.arange(n), n_copies)] + shift.astype(
                df[c].dtype if df[c].dtype.kind in "iu" else np.int64)
        if e == "household" and placed.any():
            on = np.repeat(placed, n)
            old_state = part["state_fips"].to_numpy() if "state_fips" in part else None
            old_county = part["county_fips"].to_numpy() if "county_fips" in part else None
            state = np.repeat(copy_state, n)
            county = np.repeat(copy_county, n)
            if not on.all():
                state = np.where(on, state, old_state)
                county = np.where(on, county, old_county)
            part["state_fips"] = state.astype(np.int64)
            part["county_fips"] = (pd.array(county, dtype=df["county_fips"].dtype)
                                   if "county_fips" in df.columns else county)
        for col, (ent, values) in per_state.items():  # (n_copies, n) state decisions
            if ent == e:
                part[col] = np.asarray(values).reshape(-1)
        out[e] = part
    return out


def state_takeup_values(tables: dict[str, pd.DataFrame], takeup, states: Sequence[int | None]
                        ) -> np.ndarray:
    """(len(states), n_entity) bool: ``takeup.decisions`` (a
    :class:`~calibration_core.aca_takeup.StateTakeUp`) of every ``takeup.entity`` of ``tables``
    placed in each state of ``states`` (None: its own household's state), keyed by the base
    household id and the entity's rank, as the area assembler keys them."""
    s = Structure.from_tables(tables)
    e = takeup.entity
    hh_id = s.ids["household"][s.household_index[e]]
    home = tables["household"]["state_fips"].to_numpy().astype(np.int64)[s.household_index[e]]
    rows = [home if st is None else np.full(len(hh_id), int(st), dtype=np.int64)
            for st in states]
    state = np.stack(rows) if rows else np.zeros((0, len(hh_id)), dtype=np.int64)
    return takeup.decisions(hh_id[None, :], s.rank[e][None, :], state)


def _microsimulation(tables: dict[str, pd.DataFrame], year: int, kind: str = "plain"):
    """A policyengine-us Microsimulation of ``tables`` that answers unweighted by default;
    ``kind`` "stacked" or "block" gives the routing subclasses (:func:`_simulation_classes`)."""
    from policyengine_us.data.dataset_schema import USSingleYearDataset

    cls = _simulation_classes()[kind]
    dataset = USSingleYearDataset(**tables, time_period=year)
    return cls(dataset=dataset, dataset_end_year=year)


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


def _simulation_classes() -> dict:
    """The Microsimulation subclasses this module builds (on first use: policyengine-us imports
    slowly): "plain" (unweighted by default), "stacked" and "block" (state routing). Also
    installs :mod:`engine_speedups` (exact; process-wide; its start-up part only if
    policyengine-us is not imported yet)."""
    if _SIMULATION_CLASSES:
        return _SIMULATION_CLASSES
    from . import engine_speedups

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
        from .h5_dataset import read_dataset

        tables, _ = read_dataset(path)
    t0 = time.time()
    _simulation_classes()  # a worker's first chunk starts policyengine-us (~40 s)
    t1 = time.time()
    trace_info = {} if trace else None
    values = simulate_chunk(tables, states, variables, counties, year, forced_true,
                            reuse_key=_dataset_key(path), trace_into=trace_info, route=route)
    return (list(states), values, time.time() - t1, t1 - t0, os.getpid(), trace_info,
            time.process_time() - cpu)


# --------------------------------------------------------------------------------------------
# result


@dataclass
class StateSimulations:
    """Values of the needed variables for every base household in every state and county class.

    ``invariant[v]`` (n_entity,) for state-invariant variables; ``by_state[v]`` (n_copies,
    n_entity) for the others, one row per state copy of ``classes`` (a state's county classes,
    :class:`CountyClasses`; without ``classes``, the 51 rows of :data:`STATE_ORDER`);
    ``entity[v]`` the variable's entity; ``dependence[v]`` the classification (``[]``
    invariant, ``["AK", ...]``, or ``["*"]``); ``takeup_eligible`` lists the variables holding
    eligible values (take-up forced to True).
    """

    structure: Structure
    home_state: np.ndarray  # (n_households,) state FIPS where each household lives
    entity: dict[str, str]
    invariant: dict[str, np.ndarray]
    by_state: dict[str, np.ndarray]
    dependence: dict[str, list[str]]
    takeup_eligible: list[str] = field(default_factory=list)
    metadata: dict = field(default_factory=dict)
    classes: CountyClasses | None = None

    def __post_init__(self) -> None:
        if self.classes is None:  # one row per state, no county known
            self.classes = CountyClasses(np.asarray(STATE_ORDER, dtype=np.int64),
                                         np.full(len(STATE_ORDER), "", dtype="U5"),
                                         np.zeros(0, dtype="U5"), np.zeros(0, dtype=np.int64))

    def copy_index(self, state_fips, county_fips=None) -> np.ndarray:
        """Row of ``by_state`` for each (state, county): :meth:`CountyClasses.copy_index`."""
        return self.classes.copy_index(state_fips, county_fips)

    def values_at(self, variable: str, copy_rows: np.ndarray) -> np.ndarray:
        """Values of ``variable`` at the state copies ``copy_rows`` (shape ``(..., n_entity)``
        or broadcastable, from :meth:`copy_index` per entity); returns that shape."""
        if variable in self.invariant:
            base = self.invariant[variable]
            return np.broadcast_to(base, np.broadcast_shapes(np.shape(copy_rows), base.shape))
        if variable not in self.by_state:
            raise SimulationError(f"variable {variable!r} was not simulated")
        table = self.by_state[variable]
        rows = np.asarray(copy_rows)
        cols = np.arange(table.shape[1])
        return table[rows, np.broadcast_to(cols, rows.shape)]

    @property
    def variables(self) -> list[str]:
        return sorted(set(self.invariant) | set(self.by_state))

    def values(self, variable: str, state_fips: np.ndarray, county_fips: np.ndarray | None = None
               ) -> np.ndarray:
        """Values of ``variable`` for entities placed in ``state_fips`` (and ``county_fips``,
        5-digit strings; None: each state's default county class).

        ``state_fips`` has shape ``(..., n_entity)`` (or broadcasts to it); returns that shape.
        """
        if variable in self.invariant:
            return self.values_at(variable, np.asarray(state_fips))
        return self.values_at(variable, self.copy_index(state_fips, county_fips))

    def household_total(self, variable: str) -> np.ndarray:
        """(n_households,) float: ``variable`` summed over each household's entities, every
        household in its own state (e.g. household AGI for the geography's AGI routing)."""
        s = self.structure
        entity = self.entity[variable]
        hidx = s.household_index[entity]
        values = self.values(variable, self.home_state[hidx]).astype(float)
        return np.bincount(hidx, weights=values, minlength=s.n_households)


#: Figures of a run that are not a function of its inputs (wall times): reported by the asset,
#: kept in ``StateSimulations.metadata`` in memory, never written into the file.
TIMING_METADATA_KEYS = ("chunk_seconds", "traced_chunk_seconds", "stacked_seconds",
                        "start_seconds", "total_seconds", "probe_seconds",
                        "probe_start_seconds", "chunk_cpu_seconds", "probe_cpu_seconds")


def save_state_simulations(result: StateSimulations, path: str | os.PathLike) -> Path:
    """npz (no pickle): ``inv__<v>``, ``st__<v>``, ``ids__<e>``, ``hidx__<e>``, ``pidx__<e>``,
    ``rank__<e>`` arrays plus ``meta_json`` (entities, dependence, take-up, metadata without
    :data:`TIMING_METADATA_KEYS`): equal results give byte-identical files."""
    arrays = {}
    for v, a in result.invariant.items():
        arrays[f"inv__{v}"] = a
    for v, a in result.by_state.items():
        arrays[f"st__{v}"] = a
    s = result.structure
    for e in ENTITIES:
        arrays[f"ids__{e}"] = s.ids[e]
        arrays[f"hidx__{e}"] = s.household_index[e]
        arrays[f"pidx__{e}"] = s.person_index[e]
        arrays[f"rank__{e}"] = s.rank[e]
    arrays["home_state"] = np.asarray(result.home_state, dtype=np.int64)
    c = result.classes
    arrays["copy_state"] = np.asarray(c.copy_state, dtype=np.int64)
    arrays["copy_county"] = np.asarray(c.copy_county).astype("U5")
    arrays["class_county_fips"] = np.asarray(c.county_fips).astype("U5")
    arrays["class_county_copy"] = np.asarray(c.county_copy, dtype=np.int64)
    saved = {k: v for k, v in result.metadata.items() if k not in TIMING_METADATA_KEYS}
    meta = {"entity": result.entity, "dependence": result.dependence,
            "takeup_eligible": result.takeup_eligible, "metadata": saved,
            "state_order": list(STATE_ORDER), "county_readers": list(c.readers)}
    arrays["meta_json"] = np.frombuffer(json.dumps(meta, sort_keys=True, default=str).encode(),
                                        dtype=np.uint8)
    with atomic_path(path, suffix=".npz") as tmp:
        with open(tmp, "wb") as handle:
            np.savez_compressed(handle, **{k: arrays[k] for k in sorted(arrays)})
    return Path(path)


def load_state_simulations(path: str | os.PathLike) -> StateSimulations:
    path = Path(path)
    if not path.is_file():
        raise SimulationError(f"state simulations file {path} does not exist")
    with np.load(path, allow_pickle=False) as z:
        if "meta_json" not in z.files:
            raise SimulationError(f"{path} lacks meta_json: not a state simulations file")
        meta = json.loads(z["meta_json"].tobytes().decode())
        inv = {k[5:]: z[k] for k in z.files if k.startswith("inv__")}
        st = {k[4:]: z[k] for k in z.files if k.startswith("st__")}
        structure = Structure(
            {e: z[f"ids__{e}"] for e in ENTITIES}, {e: z[f"hidx__{e}"] for e in ENTITIES},
            {e: z[f"pidx__{e}"] for e in ENTITIES}, {e: z[f"rank__{e}"] for e in ENTITIES})
        home_state = z["home_state"]
        classes = None
        if "copy_state" in z.files:
            classes = CountyClasses(z["copy_state"], z["copy_county"], z["class_county_fips"],
                                    z["class_county_copy"], meta.get("county_readers", []))
    if tuple(meta.get("state_order", ())) != STATE_ORDER:
        raise SimulationError(f"{path}: unexpected state order")
    result = StateSimulations(structure, home_state, meta["entity"], inv, st,
                              meta["dependence"], meta.get("takeup_eligible", []),
                              meta.get("metadata", {}), classes)
    n_rows = {a.shape[0] for a in st.values()}
    if n_rows and n_rows != {result.classes.n_copies}:
        raise SimulationError(f"{path}: {sorted(n_rows)} state rows, {result.classes.n_copies} "
                              "state copies")
    return result


# --------------------------------------------------------------------------------------------
# county classes


@dataclass
class CountyClasses:
    """The state copies the state simulations run: one per county class of each state.

    Counties of a state that agree on the value of every *county reader* the targets reach (a
    formula reading ``county_fips``, ``county``, ``in_nyc`` ... directly, :data:`COUNTY_ROOTS`:
    SNAP's ABAWD waiver areas and utility regions, New York City's taxes, Maryland's county
    rates ...) get the same value of every target variable, so one simulation of the class, at
    its most populous county, serves all of them.

    ``copy_state`` (n_copies,) int64 state FIPS, ascending, a state's classes consecutive (its
    most populous county's class first: the state's *default* copy, used where no county is
    given); ``copy_county`` (n_copies,) U5 the county each copy is simulated at (``""``: no
    county known for the state); ``county_fips`` (n_counties,) U5 ascending and
    ``county_copy`` (n_counties,) int64 the copy of each county; ``readers`` the county readers
    whose values defined the classes (empty: one class per state, counties not simulated).
    """

    copy_state: np.ndarray
    copy_county: np.ndarray
    county_fips: np.ndarray
    county_copy: np.ndarray
    readers: list[str] = field(default_factory=list)

    @property
    def n_copies(self) -> int:
        return len(self.copy_state)

    def state_default(self) -> np.ndarray:
        """(max state FIPS + 1,) int64: each state's default copy (-1: not a state)."""
        table = np.full(max(STATE_ORDER) + 1, -1, dtype=np.int64)
        first = np.r_[True, self.copy_state[1:] != self.copy_state[:-1]]
        table[self.copy_state[first]] = np.flatnonzero(first)
        return table

    def per_state(self) -> dict[str, int]:
        """State abbr -> number of classes (copies)."""
        states, counts = np.unique(self.copy_state, return_counts=True)
        return {STATE_ABBR[int(s)]: int(n) for s, n in zip(states, counts)}

    def copy_index(self, state_fips, county_fips=None) -> np.ndarray:
        """Copy row of each (state, county) pair; arrays of any (equal, broadcastable) shape.

        ``county_fips`` None, or classes that know no county (one copy per state, simulations
        from before county classes): the state's default copy. Raises
        :class:`SimulationError` for a state outside the 51, a county not in the classes, or a
        county of another state.
        """
        state = np.asarray(state_fips, dtype=np.int64)
        if county_fips is None or len(self.county_fips) == 0:
            default = self.state_default()
            if state.size and (state.min() < 0 or state.max() >= len(default)):
                raise SimulationError("state FIPS outside the 51 states")
            rows = default[state]
            if (rows < 0).any():
                raise SimulationError("state FIPS outside the 51 states")
            return rows
        county = np.asarray(county_fips).astype("U5")
        pos = np.searchsorted(self.county_fips, county)
        pos = np.minimum(pos, max(len(self.county_fips) - 1, 0))
        found = (self.county_fips[pos] == county) if len(self.county_fips) else \
            np.zeros(county.shape, dtype=bool)
        if not found.all():
            bad = str(county[~found].ravel()[0])
            raise SimulationError(f"county {bad!r} is not in the state simulations' county "
                                  "classes (county table of the build)")
        rows = self.county_copy[pos]
        wrong = self.copy_state[rows] != state
        if wrong.any():
            i = np.flatnonzero(wrong.ravel())[0]
            raise SimulationError(f"county {str(county.ravel()[i])!r} is not in state "
                                  f"{np.broadcast_to(state, county.shape).ravel()[i]}")
        return rows


def county_weights(county_table: pd.DataFrame, population: pd.Series | None = None
                   ) -> pd.DataFrame:
    """Columns ``state, county_fips, weight`` (ascending FIPS): each county's population
    (``sum_d pop(d) * P(county | d)``; without ``population`` the probabilities' sum)."""
    t = county_table
    w = t["probability"].to_numpy(dtype=float)
    if population is not None:
        w = w * t["district_geoid"].map(population).fillna(0.0).to_numpy(dtype=float)
    by = pd.DataFrame({"county_fips": t["county_fips"].astype(str).to_numpy(), "w": w}
                      ).groupby("county_fips", as_index=False)["w"].sum()
    by["state"] = by["county_fips"].str[:2].astype(np.int64)
    return by.rename(columns={"w": "weight"})[["state", "county_fips", "weight"]]


def classes_from_signatures(county_fips, state_fips, signature, weight,
                            readers: Sequence[str] = ()) -> CountyClasses:
    """Group counties into classes: equal state and equal ``signature`` row.

    ``county_fips`` (n,) U5; ``state_fips`` (n,) int; ``signature`` (n, k) int codes (the
    county readers' values, factorised); ``weight`` (n,) county populations (a class's
    representative county is its most populous, ties to the lower FIPS; a state's classes are
    ordered by the population of their representative, the largest first). Every one of the 51
    states gets at least one copy (county ``""`` where none of its counties is given).
    """
    county = np.asarray(county_fips).astype("U5")
    state = np.asarray(state_fips, dtype=np.int64)
    weight = np.asarray(weight, dtype=float)
    sig = np.asarray(signature, dtype=np.int64).reshape(len(county), -1)
    _, sig_id = np.unique(sig, axis=0, return_inverse=True) if sig.shape[1] else \
        (None, np.zeros(len(county), dtype=np.int64))
    sig_id = np.asarray(sig_id).reshape(-1)
    # one key per (state, signature); representative = heaviest county, ties lower FIPS
    key = state * (int(sig_id.max(initial=0)) + 1) + sig_id
    order = np.lexsort((county, -weight, key))
    first = np.r_[True, key[order][1:] != key[order][:-1]]
    rep_rows = order[first]  # one per class, grouped by key
    rep_state, rep_county, rep_w = state[rep_rows], county[rep_rows], weight[rep_rows]
    # the state's classes: by representative weight (largest first), then FIPS
    class_order = np.lexsort((rep_county, -rep_w, rep_state))
    copy_of_class = np.empty(len(rep_rows), dtype=np.int64)
    copy_of_class[class_order] = np.arange(len(rep_rows))
    class_of_county = np.cumsum(first) - 1  # in `order`
    county_copy = np.empty(len(county), dtype=np.int64)
    county_copy[order] = copy_of_class[class_of_county]
    copy_state = rep_state[class_order]
    copy_county = rep_county[class_order]
    missing = sorted(set(STATE_ORDER) - set(copy_state.tolist()))
    if missing:  # states without counties: one copy each, no county
        copy_state = np.r_[copy_state, missing].astype(np.int64)
        copy_county = np.r_[copy_county, [""] * len(missing)].astype("U5")
        resort = np.argsort(copy_state, kind="stable")
        inverse = np.empty_like(resort)
        inverse[resort] = np.arange(len(resort))
        copy_state, copy_county = copy_state[resort], copy_county[resort]
        county_copy = inverse[county_copy]
    by_fips = np.argsort(county, kind="stable")
    return CountyClasses(copy_state, copy_county, county[by_fips], county_copy[by_fips],
                         sorted(readers))


def single_county_classes(county_table: pd.DataFrame, population: pd.Series | None = None
                          ) -> CountyClasses:
    """One class per state, simulated at its most populous county (the representative-county
    mode: files reproduce ``X . w`` only when every household sits in that county)."""
    cw = county_weights(county_table, population)
    return classes_from_signatures(cw["county_fips"].to_numpy(), cw["state"].to_numpy(),
                                   np.zeros((len(cw), 0), dtype=np.int64),
                                   cw["weight"].to_numpy())


def _subset_households(tables: dict[str, pd.DataFrame], rows: np.ndarray
                       ) -> dict[str, pd.DataFrame]:
    """The households at ``rows`` of the household table with their persons and entities."""
    hh = tables["household"].iloc[np.sort(rows)].reset_index(drop=True)
    person = tables["person"]
    keep = person["person_household_id"].isin(hh["household_id"]).to_numpy()
    person = person.loc[keep].reset_index(drop=True)
    out = {"person": person, "household": hh}
    for e in ENTITIES:
        if e in out:
            continue
        ids = tables[e][f"{e}_id"]
        out[e] = tables[e].loc[ids.isin(person[f"person_{e}_id"]).to_numpy()].reset_index(
            drop=True)
    return out


def probe_rows(tables: dict[str, pd.DataFrame], n_probes: int) -> np.ndarray:
    """Household rows of the probe (deterministic): two thirds of ``n_probes`` among the
    lowest-income fifth of the households (where county rules - SNAP waivers and utility
    regions, state supplements - bite), the rest over all; each group spread evenly over
    household size (persons), ties by dataset order. Income: the sum of the person table's
    ``*_income`` columns."""
    person = tables["person"]
    hh_ids = tables["household"]["household_id"].to_numpy()
    row = pd.Index(hh_ids).get_indexer(person["person_household_id"].to_numpy())
    cols = [c for c in person.columns if c.endswith("_income")
            and pd.api.types.is_numeric_dtype(person[c])]
    income = np.bincount(row, weights=person[cols].to_numpy(float).sum(axis=1) if cols
                         else np.zeros(len(person)), minlength=len(hh_ids))
    size = np.bincount(row, minlength=len(hh_ids))
    n_probes = max(1, int(n_probes))
    low = np.flatnonzero(income <= np.quantile(income, 0.2)) if len(income) else row[:0]

    def spread(rows: np.ndarray, k: int) -> np.ndarray:
        if k <= 0 or len(rows) == 0:
            return rows[:0]
        order = rows[np.lexsort((rows, -size[rows]))]
        return order[np.unique(np.linspace(0, len(order) - 1, k).round().astype(int))]

    k_low = -(-2 * n_probes // 3)
    picked = spread(low, k_low)
    rest = np.setdiff1d(np.arange(len(hh_ids)), picked)
    return np.sort(np.r_[picked, spread(rest, n_probes - len(picked))]).astype(np.int64)


def probe_county_classes(tables: dict[str, pd.DataFrame], variables: Sequence[str],
                         county_table: pd.DataFrame, population: pd.Series | None = None,
                         year: int = YEAR, forced_true: Sequence[tuple[str, str]] = (),
                         n_probes: int = DEFAULT_PROBE_HOUSEHOLDS, signature: str = "values"
                         ) -> tuple[CountyClasses, dict]:
    """County classes from a *probe* simulation (policyengine-us).

    ``n_probes`` households (:func:`probe_rows`: mostly low-income ones, where county rules
    bite) are placed in every county of ``county_table`` (one stacked copy per county, about
    3,100; each state's rules routed to its rows) and ``variables`` computed. Each county's
    *signature* is, with ``signature="values"`` (default), the values of ``variables`` for the
    probe households there: counties of a state with equal signatures form a class
    (:func:`classes_from_signatures`). With ``signature="readers"`` the probe runs traced and
    the signature is the values, in every month of ``year``, of the *county readers* the
    traced graph reaches from ``variables`` (formulas requesting a :data:`COUNTY_ROOTS` input):
    exact for any household but far finer - on the demo build 58 readers (fair market rents,
    area median incomes, sales-tax tables, child-care regions ...) split the 3,106 counties
    into 2,788 classes, against 72 copies from the values of 12 probes.

    Returns (classes, figures: ``probe_households``, ``probe_copies``, ``probe_seconds``;
    traced: ``readers`` and ``unexplored_reached`` - formulas the probe did not run).
    """
    cw = county_weights(county_table, population)
    codes, figures = probe_signatures(tables, variables, cw, year, forced_true, n_probes,
                                      signature)
    classes = classes_from_signatures(cw["county_fips"].to_numpy(), cw["state"].to_numpy(),
                                      codes, cw["weight"].to_numpy(), figures.get("readers", []))
    return classes, figures


def probe_signatures(tables: dict[str, pd.DataFrame], variables: Sequence[str],
                     counties: pd.DataFrame, year: int = YEAR,
                     forced_true: Sequence[tuple[str, str]] = (),
                     n_probes: int = DEFAULT_PROBE_HOUSEHOLDS, signature: str = "values"
                     ) -> tuple[np.ndarray, dict]:
    """The probe of :func:`probe_county_classes` for the counties of ``counties``
    (:func:`county_weights` rows, a state's counties together): (codes ``(n_counties, k)``
    int64 - factorised values, comparable between counties of one state -, figures). The probe
    runs traced (edge tracer): figures ``edges`` (variable -> the names its formula
    requested), ``unexplored`` (:func:`_trace_graph`; both without the rules defined only for
    states outside ``counties``) and, for ``signature="values"``, ``columns`` (variable -> its
    (start, stop) columns of the codes)."""
    if signature not in ("values", "readers"):
        raise SimulationError(f"signature must be 'values' or 'readers', got {signature!r}")
    t0 = time.time()
    county = counties["county_fips"].to_numpy().astype("U5")
    states = counties["state"].to_numpy().astype(np.int64)
    sub = _subset_households(tables, probe_rows(tables, n_probes))
    for v, e in FROZEN_AT_CLASS.items():  # held fixed: the files carry their class values
        sub[e] = sub[e].assign(**{v: 0.0})
    stacked = stack_tables(sub, states.tolist(), county.tolist(), forced_true)
    sim = _microsimulation(stacked, year, kind="stacked")
    sim.router = StateRouter(sim, *_copies_layout(sub, states.tolist()), year)
    traced = signature == "readers"
    # always traced (edges only, ~15%): the graph tells which variables can depend on the county
    sim.trace = True
    sim.tracer = _edge_tracer()
    n_copies = len(county)
    codes, figures, columns = [], {}, {}

    def add(values) -> None:
        values = _as_plain(values)
        if values.dtype.kind == "f":
            values = np.round(values, 2)
        _, code = np.unique(values, return_inverse=True)
        codes.append(np.asarray(code, dtype=np.int64).reshape(n_copies, -1))

    try:
        for v in variables:
            values = sim.calculate(v, year, use_weights=False)
            if not traced:
                start = sum(c.shape[1] for c in codes)
                add(values)
                columns[v] = (start, start + codes[-1].shape[1])
        edges, unexplored = _trace_graph(sim)
        # another state's own rules (defined for that state only) never run on these counties:
        # left out here, they are traced in the part holding their state
        here = {STATE_ABBR[int(x)] for x in np.unique(states)}
        elsewhere = {k for k, a in sim.router.gates.items() if a not in here}
        figures.update(edges={k: sorted(x) for k, x in edges.items() if k not in elsewhere},
                       unexplored=sorted(unexplored - elsewhere), columns=columns)
        if traced:
            reached, stack = set(), list(variables)
            while stack:
                v = stack.pop()
                if v in reached:
                    continue
                reached.add(v)
                stack.extend(k for k in edges.get(v, ()) if k not in GEO_ROOTS)
            readers = sorted(v for v in reached if v not in GEO_ROOTS
                             and set(edges.get(v, ())) & COUNTY_ROOTS)
            tbs = sim.tax_benefit_system
            for v in readers:
                month = str(tbs.variables[v].definition_period) == "month"
                for period in ([f"{year}-{m:02d}" for m in range(1, 13)] if month else [year]):
                    add(sim.calculate(v, period, use_weights=False))
            figures.update(readers=readers,
                           unexplored_reached=sorted(set(unexplored) & reached))
    finally:
        sim.trace = False
    out = (np.concatenate(codes, axis=1) if codes else np.zeros((n_copies, 0), dtype=np.int64))
    figures.update(probe_households=int(len(sub["household"])), probe_copies=int(n_copies),
                   probe_seconds=round(time.time() - t0, 2))
    return out, figures


def probe_parts(cw: pd.DataFrame, parts: int) -> list[pd.DataFrame]:
    """Split :func:`county_weights` rows into ``parts`` groups of whole states, balanced by
    county count (consecutive states), for parallel probes."""
    per_state = cw.groupby("state").size()
    n = per_state.to_numpy()
    mid = np.cumsum(n) - n / 2  # a state goes to the part holding its middle county
    group = np.minimum((parts * mid / n.sum()).astype(np.int64), parts - 1)
    state_group = dict(zip(per_state.index.tolist(), group.tolist()))
    g = cw["state"].map(state_group).to_numpy()
    return [cw[g == k].reset_index(drop=True) for k in range(parts) if (g == k).any()]


def _probe_task(args):
    """:func:`probe_signatures` in a worker (reads the dataset); start-up seconds in figures."""
    from .h5_dataset import read_dataset

    path, variables, counties, year, forced, n_probes, signature = args
    cpu = time.process_time()
    tables, _ = read_dataset(path)
    t0 = time.time()
    _simulation_classes()
    start = time.time() - t0
    codes, figures = probe_signatures(tables, variables, counties, year, forced, n_probes,
                                      signature)
    figures["probe_start_seconds"] = round(start, 2)
    figures["probe_cpu_seconds"] = round(time.process_time() - cpu, 2)
    return codes, figures


def merge_probe_traces(figures: Sequence[dict]) -> tuple[dict[str, set], set]:
    """(edges, unexplored) of several probe parts (:func:`probe_signatures` figures, which
    leave out the rules of states outside their part): edges united; a variable is unexplored
    iff it is unexplored in every part that reached it (a formula that ran in one part has its
    requests recorded there)."""
    edges: dict[str, set] = {}
    reached_in: dict[str, int] = {}
    unexplored_in: dict[str, int] = {}
    for f in figures:
        for k, kids in f.get("edges", {}).items():
            edges.setdefault(k, set()).update(kids)
            reached_in[k] = reached_in.get(k, 0) + 1
        for k in f.get("unexplored", ()):
            unexplored_in[k] = unexplored_in.get(k, 0) + 1
    unexplored = {k for k, n in unexplored_in.items() if n == reached_in.get(k, 0)}
    return edges, unexplored


def check_county_invariance(codes: np.ndarray, columns: dict[str, Sequence[int]],
                            state_fips: np.ndarray, county_fips: np.ndarray,
                            county_dependent: Iterable[str]) -> None:
    """Raise :class:`SimulationError` when a variable the traced graph calls county-invariant
    (not in ``county_dependent``) has different probe values in two counties of one state:
    the trace missed a dependency, and computing it once per state would be wrong.
    ``codes`` (n_counties, k) and ``columns`` from :func:`probe_signatures`."""
    dependent = set(county_dependent)
    state = np.asarray(state_fips, dtype=np.int64)
    order = np.argsort(state, kind="stable")
    first = np.r_[True, state[order][1:] != state[order][:-1]]
    head = order[np.flatnonzero(first)[np.cumsum(first) - 1]]  # first county of the state
    for v, (a, b) in columns.items():
        if v in dependent or b <= a:
            continue
        block = codes[:, a:b]
        differs = np.flatnonzero((block[order] != block[head]).any(axis=1))
        if len(differs):
            i, j = order[differs[0]], head[differs[0]]
            raise SimulationError(
                f"{v!r} was classified county-invariant (the probe's traced graph reaches no "
                f"county input from it) but differs between counties {county_fips[j]} and "
                f"{county_fips[i]} of {STATE_ABBR[int(state[i])]}")


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
) -> StateSimulations:
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

    The first chunk runs traced: its dependency graph decides which variables cannot depend on
    the state (a formula it did not run, such as another state's rules, counts as
    state-dependent). Those are stored once; every other chunk's values of them must equal the
    first chunk's, or :class:`SimulationError` names the variable (a check of the decision).

    Returns :class:`StateSimulations`.
    """
    from .h5_dataset import read_dataset

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
    if workers > 1:
        from .process_lifetime import worker_pool

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
            # the results are in: let the workers tear their simulations down (~10 s for a
            # 26,000-household stack) without holding up the caller
            pool.shutdown(wait=False, cancel_futures=True)


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


