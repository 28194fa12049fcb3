"""County classes: the counties of a state that agree on every county-derived value the
targets reach, found by probe households (:func:`probe_county_classes`)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Iterable, Sequence

import numpy as np
import pandas as pd

from ..areas import STATE_ABBR
from .routing import _copies_layout, _microsimulation, _simulation_classes, StateRouter
from .settings import (COUNTY_ROOTS, DEFAULT_PROBE_HOUSEHOLDS, ENTITIES, FROZEN_AT_CLASS,
                       GEO_ROOTS, SimulationError, STATE_ORDER, YEAR)
from .stacking import stack_tables
from .tracing import _as_plain, _edge_tracer, _trace_graph


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
    from ..h5_dataset import read_dataset

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


