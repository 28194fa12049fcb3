"""Validation of area datasets against their targets and against the calibrated ``X @ w``.

For every area in the report and every target of that area's geography (in-sample and
hold-out) the report gives the target value, the total policyengine-us computes from the area
file (``sim_value``), the total the calibration matrix gives for the area's cells
(``xw_value``), and the errors (spec ORIGINAL_PIPELINE §6.6, without its defects, §7 items
15-16):

* ``sim_value`` is computed with the matrix builder's own value function
  (:func:`calibration_core.package.family_values`: constraints on person-mapped values, an
  entity qualifies when one member meets them, counts of persons / entities / households) over
  the households of the file, weighted by the file's ``household_weight``;
* many area files are read into ONE stacked simulation (ids offset per file, so areas stay
  apart), computing each needed variable once for all of them (:func:`simulate_areas`);
* blocking consistency: ``|sim_value - xw_value| <= tol * max(|xw_value|, 1)`` (tol 0.5%) for
  every in-sample target of every area;
* NYC is scored on its share of each district it overlaps: the file's households in that
  district against ``X[row, NYC cells] @ w``; its target error is left out (a part of a
  district is not comparable with the district's target);
* sanity ceilings on ``|sim_value|`` by level (dollars, persons, households), as the reference,
  but with district ceilings above the largest real district (the reference's 400,000
  households fails at-large Delaware's real 412,304).

No Dagster here; policyengine-us is imported only inside :func:`simulate_areas`.
"""
from __future__ import annotations

import gc
import re
import time
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np
import pandas as pd
import scipy.sparse as sp

from .areas import Area, all_areas, parse_area_key
from .geography import GeographyAssignment
from .h5_dataset import ENTITIES, GROUP_ENTITIES
from .package import OPS, _format_value, parse_constraint_value
from .simulation import COUNT_VARIABLES, StateSimulations, Structure

CONSISTENCY_TOLERANCE = 0.005  # |sim - X.w| <= 0.5% of max(|X.w|, 1)
# sanity ceilings on |sim_value| (spec §6.6): dollars, persons, households. The reference's
# district ceilings (1e6 persons, 4e5 households) lie below real districts: Delaware's at-large
# district has 1.03 M persons and 412,304 households (ACS 2023), NY-12 404,396 households; ours
# sit 50% above the largest district, which still catches a blown-up file.
SANITY_CEILINGS = {
    "national": {"dollars": 30e12, "persons": 340e6, "households": 135e6},
    "state": {"dollars": 5e12, "persons": 40e6, "households": 15e6},
    "city": {"dollars": 5e12, "persons": 40e6, "households": 15e6},
    "district": {"dollars": 500e9, "persons": 1.5e6, "households": 600e3},
}
# areas validated when the preset asks for a sample: every kind, small and large, at-large, DC
SAMPLE_AREAS = ("state-CA", "state-NY", "state-WY", "state-DC", "district-CA-12",
                "district-NY-10", "district-TX-07", "district-WY-01", "district-DC-01",
                "city-NYC")
REPORT_COLUMNS = [
    "area", "area_kind", "level", "geo_id", "target_name", "variable", "domain", "holdout",
    "achievable", "exclusion_reason", "target_value", "sim_value", "xw_value", "error", "rel_error",
    "abs_rel_error", "xw_abs_diff", "xw_rel_diff", "consistent", "sanity_check",
    "sanity_reason",
]


class ValidationError(ValueError):
    """Inputs to validation are missing or inconsistent."""


VALIDATION_MODES = ("all", "sample", "rotating")


def areas_for_report(mode: str, rotation: int = 0) -> list[Area]:
    """The areas policyengine-us re-simulates. ``"all"``: the 488 areas; ``"sample"``:
    :data:`SAMPLE_AREAS` (every kind); ``"rotating"``: every state and city and the districts
    of slice ``rotation`` (:func:`calibration_core.validation_sample.rotating_sample`, the full
    preset's mode). Raises :class:`ValidationError` for another mode or a rotation outside
    ``0 .. DISTRICT_SLICES - 1``."""
    from .validation_sample import SampleError, rotating_sample

    if mode == "all":
        return all_areas()
    if mode == "sample":
        return [parse_area_key(k) for k in SAMPLE_AREAS]
    if mode == "rotating":
        try:
            return rotating_sample(rotation)
        except SampleError as exc:
            raise ValidationError(f"validation_areas 'rotating': {exc}") from exc
    raise ValidationError(f"validation_areas must be one of {VALIDATION_MODES}, got {mode!r}")


# --------------------------------------------------------------------------------------------
# constraints from the package's targets table


_CONSTRAINT = re.compile(r"^([A-Za-z_][A-Za-z0-9_]*)(==|!=|>=|<=|>|<)(.*)$")


def parse_constraints(text: str) -> tuple:
    """Package ``constraints`` text (``"age<40,age>=35"``) -> the tuple the matrix builder used
    (``(("age", "<", 40.0), ("age", ">=", 35.0))``); the text must round-trip exactly."""
    text = "" if text is None else str(text)
    if not text:
        return ()
    items = []
    for part in text.split(","):
        m = _CONSTRAINT.match(part)
        if m is None or m.group(2) not in OPS:
            raise ValidationError(f"cannot parse constraint {part!r} in {text!r}")
        items.append((m.group(1), m.group(2), parse_constraint_value(m.group(3))))
    cons = tuple(items)
    again = ",".join(f"{v}{o}{_format_value(x)}" for v, o, x in cons)
    if again != text:
        raise ValidationError(f"constraint text {text!r} does not round-trip ({again!r})")
    return cons


# --------------------------------------------------------------------------------------------
# stacking area files


@dataclass
class StackedAreas:
    """Area tables concatenated with ids offset per area.

    ``tables``: the six stacked entity tables; ``household_area`` (n_households,) index into
    ``keys`` of each household's area; ``keys``: area keys in stacking order.
    """

    tables: dict[str, pd.DataFrame]
    household_area: np.ndarray
    keys: list[str]


def stack_areas(keys: Sequence[str], tables: Sequence[dict[str, pd.DataFrame]]) -> StackedAreas:
    """Concatenate area tables; entity ``e`` ids of area ``a`` are offset by the number of
    ``e`` rows of the areas before it (each file's ids are ``0..n-1``, :mod:`assembly`)."""
    if len(keys) != len(tables):
        raise ValidationError("one table set per area key is needed")
    out = {}
    sizes = {e: np.array([len(t[e]) for t in tables], dtype=np.int64) for e in ENTITIES}
    offsets = {e: np.cumsum(sizes[e]) - sizes[e] for e in ENTITIES}
    for e in ENTITIES:
        frames = [t[e] for t in tables]
        cols = list(frames[0].columns)
        for k, f in zip(keys, frames):
            if list(f.columns) != cols:
                raise ValidationError(f"area {k}: table {e!r} columns differ from {keys[0]}'s")
        df = pd.concat(frames, ignore_index=True) if len(frames) > 1 else frames[0].copy()
        shift = np.repeat(offsets[e], sizes[e])
        df[f"{e}_id"] = df[f"{e}_id"].to_numpy() + shift
        out[e] = df
    p_area = np.repeat(np.arange(len(keys)), sizes["person"])
    for e in GROUP_ENTITIES:
        col = f"person_{e}_id"
        out["person"][col] = out["person"][col].to_numpy() + offsets[e][p_area]
    household_area = np.repeat(np.arange(len(keys)), sizes["household"])
    return StackedAreas(out, household_area, list(keys))


def simulate_areas(stacked: StackedAreas, variables: Sequence[str], year: int,
                   log: Callable[[str], None] = lambda m: None, route: bool = True
                   ) -> tuple[dict, dict]:
    """One policyengine-us simulation of the stacked areas: ``({variable: values at its
    entity, unweighted}, {variable: entity})``. With ``route``, each state's own rules run on
    that state's rows only (:class:`~calibration_core.simulation.StateRouter`; the areas are
    stacked in state order, so each state's rows are contiguous)."""
    from .simulation import StateRouter, _as_plain, _microsimulation, state_layout
    from .simulation import variable_entities

    t0 = time.time()
    layout, templates = state_layout(stacked.tables) if route else ({}, {})
    sim = _microsimulation(stacked.tables, year, kind="stacked" if len(layout) > 1 else "plain")
    if len(layout) > 1:
        sim.router = StateRouter(sim, layout, templates, year)
    entity = variable_entities(sim.tax_benefit_system, variables)
    values = {}
    for v in variables:
        t1 = time.time()
        values[v] = _as_plain(sim.calculate(v, year, use_weights=False))
        log(f"  {v}: {time.time() - t1:.1f} s")
    del sim
    log(f"stacked simulation of {len(stacked.tables['household'])} households "
        f"({len(stacked.keys)} areas): {time.time() - t0:.1f} s")
    return values, entity


def household_values(stacked: StackedAreas, values: dict, entity: dict,
                     families: Sequence[tuple[str, tuple]]) -> dict:
    """``{(variable, constraints): (n_households,) float64}``: each stacked household's value
    of each family, by the matrix builder's :func:`calibration_core.package.family_values`
    (here over one "clone" whose households are the stacked file households)."""
    from . import package as pkg

    s = Structure.from_tables(stacked.tables)
    n = s.n_households
    hh = stacked.tables["household"]
    sims = StateSimulations(structure=s, home_state=hh["state_fips"].to_numpy(),
                            entity=dict(entity), invariant=dict(values), by_state={},
                            dependence={v: [] for v in values}, takeup_eligible=[])
    geo = GeographyAssignment(
        s.ids["household"], hh["congressional_district_geoid"].to_numpy()[None, :],
        hh["county_fips"].to_numpy().astype("U5")[None, :],
        hh["state_fips"].to_numpy()[None, :], np.zeros(n, dtype=bool))
    ctx = pkg._Context(sims, geo, np.zeros((1, 1), dtype=np.int64), {}, {}, {})
    return {fam: np.asarray(pkg.family_values(ctx, fam[0], fam[1]))[0].astype(np.float64)
            for fam in families}


# --------------------------------------------------------------------------------------------
# the report


def _sanity(level: np.ndarray, variable: np.ndarray, sim: np.ndarray) -> tuple:
    kind = np.where(variable == "household_count", "households",
                    np.where(np.isin(variable, list(COUNT_VARIABLES)), "persons", "dollars"))
    ceiling = np.array([SANITY_CEILINGS[lv][k] for lv, k in zip(level, kind)], dtype=float)
    fail = ~np.isfinite(sim) | (np.abs(sim) > ceiling)
    reason = np.full(len(sim), "", dtype=object)
    for i in np.flatnonzero(fail):  # failures only
        reason[i] = f"|sim| {abs(sim[i]):.4g} > {level[i]} {kind[i]} ceiling {ceiling[i]:.4g}"
    return np.where(fail, "FAIL", "PASS"), reason


@dataclass
class AreaSet:
    """Area files validated together (stacked into as few simulations as memory allows).

    ``keys`` area keys (``"national-US"`` for the national file); ``kinds`` their kinds
    (state, district, city, national); ``tables`` their datasets; ``cells`` their (clone,
    record) arrays; ``weight_index`` which of the weight vectors built each file.
    """

    keys: list[str]
    kinds: list[str]
    tables: list[dict]
    cells: list[tuple[np.ndarray, np.ndarray]] = field(default_factory=list)
    weight_index: list[int] = field(default_factory=list)


def area_targets(targets: pd.DataFrame, area_key: str, kind: str,
                 districts_present: Sequence[int] = ()) -> np.ndarray:
    """Row indices of the package targets scored for one area: national rows for the national
    file, the state's rows for a state, the district's for a district, and for NYC the rows of
    every district it has households in."""
    level = targets["geo_level"].to_numpy()
    geo_id = targets["geo_id"].astype(str).to_numpy()
    if kind == "national":
        mask = level == "national"
    elif kind == "state":
        mask = (level == "state") & (geo_id == str(parse_area_key(area_key).state_fips))
    elif kind == "district":
        mask = (level == "district") & (geo_id == str(parse_area_key(area_key).district_geoid))
    elif kind == "city":
        mask = (level == "district") & np.isin(geo_id, [str(int(d)) for d in districts_present])
    else:
        raise ValidationError(f"unknown area kind {kind!r}")
    return np.flatnonzero(mask)


def subset_tables(tables: dict[str, pd.DataFrame], keep: np.ndarray) -> dict[str, pd.DataFrame]:
    """The households ``keep`` (bool, (n_households,)) of a dataset whose ids are ``0..n-1``
    (:mod:`assembly`), with their persons and entities, re-numbered ``0..m-1``."""
    person = tables["person"]
    p_keep = keep[person["person_household_id"].to_numpy()]
    out = {"person": person.loc[p_keep].reset_index(drop=True)}
    for e in ("household",) + tuple(x for x in GROUP_ENTITIES if x != "household"):
        ids = tables[e][f"{e}_id"].to_numpy()
        used = np.zeros(len(ids), dtype=bool)
        used[out["person"][f"person_{e}_id"].to_numpy()] = True
        new_id = np.cumsum(used) - 1
        df = tables[e].loc[used].reset_index(drop=True)
        df[f"{e}_id"] = np.arange(int(used.sum()), dtype=np.int64)
        out[e] = df
        out["person"][f"person_{e}_id"] = new_id[out["person"][f"person_{e}_id"].to_numpy()]
    pid = np.arange(len(out["person"]), dtype=np.int64)
    out["person"]["person_id"] = pid
    return {e: out[e] for e in ENTITIES}


def _groups(states: np.ndarray, sizes: np.ndarray, max_states: int, max_households: int
            ) -> list[list[int]]:
    """Consecutive groups of pieces (already sorted by state) with at most ``max_states``
    distinct states and ``max_households`` households (a larger piece is a group of its own).

    Without routing policyengine-us runs every state-specific formula over all households of a
    simulation holding that state, so cost grew with households x states (Medicaid enrolment
    of 3.4k households: 11.6 s for one state, 40.9 s for 31). :func:`simulate_areas` routes
    each state's rules to its own rows, so the bound is memory (about 90 kB per household):
    the demo's 488 files (68,134 households) took 133 s in two simulations of 25-27 states
    against 192 s in seven of 8 states unrouted."""
    groups, cur, cur_states, cur_n = [], [], set(), 0
    for i, (st, n) in enumerate(zip(states.tolist(), sizes.tolist())):
        new_states = cur_states | {st}
        if cur and (len(new_states) > max_states or cur_n + n > max_households):
            groups.append(cur)
            cur, new_states, cur_n = [], {st}, 0
        cur.append(i)
        cur_states = new_states
        cur_n += n
    if cur:
        groups.append(cur)
    return groups


# Bounds of one stacked validation simulation: memory (about 90 kB per household); with each
# state's rules routed to its own rows, mixing all 51 states costs nothing extra (_groups).
MAX_HOUSEHOLDS_PER_SIMULATION = 35_000
STATES_PER_SIMULATION = 51


def validate_areas(
    area_set: AreaSet,
    targets: pd.DataFrame,
    matrix: sp.csr_matrix,
    weights: Sequence[np.ndarray],
    n_records: int,
    year: int,
    max_households_per_simulation: int = MAX_HOUSEHOLDS_PER_SIMULATION,
    states_per_simulation: int = STATES_PER_SIMULATION,
    log: Callable[[str], None] = lambda m: None,
) -> pd.DataFrame:
    """The report rows (:data:`REPORT_COLUMNS`) for the areas of ``area_set``.

    Parameters
    ----------
    area_set : the files, their cells and which weight vector built each.
    targets : the package's targets table (``name, value, holdout, achievable, variable,
        geo_level, geo_id, constraints``), one row per matrix row.
    matrix : CSR (n_targets, n_clones * n_records), the package matrix.
    weights : weight vectors (n_clones * n_records,), indexed by ``area_set.weight_index``.
    max_households_per_simulation, states_per_simulation : bounds of one stacked simulation
        (memory: about 90 kB per household; see :func:`_groups`). Files are stacked
        whole, except the national file, which is split by state.

    The three parts an orchestrator may run as separate steps: :func:`plan_validation`,
    :func:`simulate_group` for every group of the plan (any process; each needs only its
    group's files), :func:`finish_validation`.
    """
    plan = plan_validation(area_set, targets, max_households_per_simulation,
                           states_per_simulation)
    log(f"validating {len(area_set.keys)} files in {len(plan.groups)} stacked simulation(s)")
    totals = [simulate_group(area_set, plan, g, year, log) for g in range(len(plan.groups))]
    return finish_validation(area_set, targets, matrix, weights, n_records, plan, totals)


@dataclass
class ValidationPlan:
    """What the report scores and how the files are simulated.

    ``rows``: one row per (area, target row) scored: ``a`` (area index), ``row`` (target
    row), ``city``, ``family`` (index into ``families``), ``district`` (NYC rows: the
    district); ``families``: ``(variable, constraint text)`` of each family; ``pieces``:
    ``(area index, state FIPS)`` of each stacked piece, in stacking order (an area file whole,
    the national file one piece per state); ``groups``: the pieces of each stacked simulation;
    ``max_households``: households one simulation holds at most (a larger file is simulated in
    runs of consecutive households: :func:`simulate_group`).
    """

    rows: pd.DataFrame
    families: list[tuple[str, str]]
    pieces: list[tuple[int, int]]
    piece_households: list[int]
    groups: list[list[int]]
    max_households: int = MAX_HOUSEHOLDS_PER_SIMULATION


@dataclass
class GroupTotals:
    """One group's weighted totals: ``area`` (n_families, n_areas) per family and area, and
    for NYC's districts ``city`` {(family, area, district): total}."""

    area: np.ndarray
    city: dict


def plan_validation(area_set: AreaSet, targets: pd.DataFrame,
                    max_households_per_simulation: int = MAX_HOUSEHOLDS_PER_SIMULATION,
                    states_per_simulation: int = STATES_PER_SIMULATION) -> ValidationPlan:
    """The rows scored, the families and the stacked groups (:class:`ValidationPlan`); needs
    ``area_set.tables`` (households and their states, NYC's districts)."""
    need = {"name", "value", "holdout", "achievable", "variable", "geo_level", "geo_id",
            "constraints"}
    if not need <= set(targets.columns):
        raise ValidationError(f"targets table lacks {sorted(need - set(targets.columns))}")
    n_areas = len(area_set.keys)
    if not (len(area_set.kinds) == len(area_set.tables) == len(area_set.cells)
            == len(area_set.weight_index) == n_areas):
        raise ValidationError("area set lists differ in length")
    targets = targets.reset_index(drop=True)
    cons_text = targets["constraints"].fillna("").astype(str).to_numpy()
    variable = targets["variable"].to_numpy().astype(str)
    family_code, families = pd.factorize(pd.Series(variable) + "|" + pd.Series(cons_text))
    family_list = [(variable[np.flatnonzero(family_code == i)[0]],
                    cons_text[np.flatnonzero(family_code == i)[0]]) for i in range(len(families))]

    # one row per (area, target row) scored
    parts = []
    for a in range(n_areas):
        kind = area_set.kinds[a]
        hh = area_set.tables[a]["household"]
        present = np.unique(hh["congressional_district_geoid"].to_numpy()) if kind == "city" \
            else ()
        rows = area_targets(targets, area_set.keys[a], kind, present)
        parts.append(pd.DataFrame({"a": a, "row": rows, "city": kind == "city"}))
    plan = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(
        {"a": [], "row": [], "city": []})
    plan["a"] = plan["a"].astype(np.int64)
    plan["row"] = plan["row"].astype(np.int64)
    plan["city"] = plan["city"].astype(bool)
    plan["family"] = family_code[plan["row"].to_numpy()]
    plan["district"] = np.where(plan["city"],
                                pd.to_numeric(targets["geo_id"].astype(str), errors="coerce")
                                .fillna(0).to_numpy()[plan["row"].to_numpy()], 0).astype(np.int64)

    # pieces: each area file whole, the national file split by state; simulated in groups of
    # a few states (ordered by state); each needed variable once per group
    pieces, sizes = [], []
    for a in range(n_areas):
        st = area_set.tables[a]["household"]["state_fips"].to_numpy()
        if len(st) == 0:
            continue  # an empty file: every total is 0
        if area_set.kinds[a] == "national":
            for s_, n_ in zip(*np.unique(st, return_counts=True)):
                pieces.append((a, int(s_)))
                sizes.append(int(n_))
        else:
            pieces.append((a, int(st[0])))
            sizes.append(len(st))
    order = sorted(range(len(pieces)), key=lambda i: (pieces[i][1], pieces[i][0]))
    pieces = [pieces[i] for i in order]
    sizes = [sizes[i] for i in order]
    groups = _groups(np.asarray([p[1] for p in pieces], dtype=np.int64),
                     np.asarray(sizes, dtype=np.int64), states_per_simulation,
                     max_households_per_simulation)
    return ValidationPlan(plan, family_list, pieces, sizes, groups,
                          int(max_households_per_simulation))


def _piece_tables(area_set: AreaSet, plan: ValidationPlan, i: int) -> dict:
    a, state = plan.pieces[i]
    t = area_set.tables[a]
    if t is None:
        raise ValidationError(f"area {area_set.keys[a]}: its file is not loaded")
    if area_set.kinds[a] == "national":
        return subset_tables(t, t["household"]["state_fips"].to_numpy() == state)
    return t


def _household_batches(tables: Sequence[dict], max_households: int
                       ) -> list[list[tuple[int, dict]]]:
    """The pieces' tables in batches of at most ``max_households`` households (a piece larger
    than that cut into equal runs of consecutive households, each a batch of its own):
    ``[[(piece position, tables), ...], ...]``, every household once, in order."""
    if max_households < 1:
        raise ValidationError(f"max_households must be positive, got {max_households}")
    batches, cur, cur_n = [], [], 0
    for pos, t in enumerate(tables):
        n = len(t["household"])
        if n > max_households:
            if cur:
                batches.append(cur)
                cur, cur_n = [], 0
            parts = -(-n // max_households)
            cut = np.arange(n) * parts // n  # part of each household: equal consecutive runs
            batches.extend([[(pos, subset_tables(t, cut == k))] for k in range(parts)])
            continue
        if cur and cur_n + n > max_households:
            batches.append(cur)
            cur, cur_n = [], 0
        cur.append((pos, t))
        cur_n += n
    if cur:
        batches.append(cur)
    return batches


def simulate_group(area_set: AreaSet, plan: ValidationPlan, group: int, year: int,
                   log: Callable[[str], None] = lambda m: None,
                   max_households: int | None = None) -> GroupTotals:
    """One stacked simulation: the files of ``plan.groups[group]`` (only their
    ``area_set.tables`` are read), each needed family's weighted total per area.

    Memory is bounded by ``max_households`` (default: the plan's) households per simulation
    (about 90 kB per household;
    :func:`_groups`): a group above it - one file larger than the bound, such as a full-preset
    state file (California: 567,003 households took over 20 GB whole and was killed) - is
    simulated in runs of consecutive households (:func:`_household_batches`) whose totals add
    up (every target is a sum over households). Raises :class:`ValidationError` for a file
    that is not loaded."""
    n_areas = len(area_set.keys)
    members = plan.groups[group]
    piece_area = np.asarray([plan.pieces[i][0] for i in members], dtype=np.int64)
    plan_area = plan.rows["a"].to_numpy()
    plan_family = plan.rows["family"].to_numpy()
    city_areas = np.unique(plan_area[plan.rows["city"].to_numpy()])
    totals = GroupTotals(np.zeros((len(plan.families), n_areas)), {})
    fams = np.unique(plan_family[np.isin(plan_area, np.unique(piece_area))])
    if not len(fams):
        return totals
    needed = [(plan.families[f][0], parse_constraints(plan.families[f][1])) for f in fams]
    variables = sorted({v for v, _ in needed if v not in COUNT_VARIABLES}
                       | {c[0] for _, cons in needed for c in cons})
    max_households = int(max_households or plan.max_households)
    batches = _household_batches([_piece_tables(area_set, plan, i) for i in members],
                                 max_households)
    if len(batches) > 1:
        log(f"group {group}: {len(batches)} simulations of at most {max_households:,} "
            "households")
    for batch in batches:
        batch_area = piece_area[[pos for pos, _ in batch]]
        stacked = stack_areas([area_set.keys[a] for a in batch_area], [t for _, t in batch])
        values, entity = simulate_areas(stacked, variables, year, log)
        hv = household_values(stacked, values, entity, needed)
        del values
        if len(batches) > 1:
            # a policyengine-us simulation is a web of reference cycles (simulation,
            # populations, holders): without a collection each run's ~1 GB stayed, and a
            # 417,000-household file's 12 runs grew one process past 13 GB
            gc.collect()
        hh = stacked.tables["household"]
        w = hh["household_weight"].to_numpy(dtype=np.float64)
        hh_area = batch_area[stacked.household_area]
        in_city = np.isin(hh_area, city_areas)
        cd = hh["congressional_district_geoid"].to_numpy().astype(np.int64)
        for f, fam in zip(fams, needed):
            contrib = hv[fam] * w
            totals.area[f] += np.bincount(hh_area, weights=contrib, minlength=n_areas)
            if in_city.any():
                key = pd.Series(contrib[in_city]).groupby([hh_area[in_city], cd[in_city]]).sum()
                for (a_, d_), v_ in key.items():  # districts of NYC only (a handful)
                    k = (int(f), int(a_), int(d_))
                    totals.city[k] = totals.city.get(k, 0.0) + float(v_)
    return totals


def finish_validation(area_set: AreaSet, targets: pd.DataFrame, matrix: sp.csr_matrix,
                      weights: Sequence[np.ndarray], n_records: int, plan: ValidationPlan,
                      totals: Sequence[GroupTotals]) -> pd.DataFrame:
    """The report from every group's totals (summed in group order) and ``X @ w`` (needs
    ``area_set.cells`` and ``weight_index``, not the files)."""
    n_areas = len(area_set.keys)
    if matrix.shape[0] != len(targets):
        raise ValidationError(f"matrix has {matrix.shape[0]} rows, targets {len(targets)}")
    weights = [np.asarray(w, dtype=np.float64) for w in weights]
    for w in weights:
        if w.shape != (matrix.shape[1],):
            raise ValidationError(f"weights have shape {w.shape}, matrix {matrix.shape}")
    if len(totals) != len(plan.groups):
        raise ValidationError(f"{len(totals)} group totals for {len(plan.groups)} groups")
    targets = targets.reset_index(drop=True)
    variable = targets["variable"].to_numpy().astype(str)
    fam_area = np.zeros((len(plan.families), n_areas))
    fam_city: dict[tuple[int, int, int], float] = {}
    for t in totals:
        fam_area += t.area
        for k, v in t.city.items():
            fam_city[k] = fam_city.get(k, 0.0) + v
    rows_df = plan.rows
    plan_area = rows_df["a"].to_numpy()
    plan_family = rows_df["family"].to_numpy()
    sim_value = fam_area[plan_family, plan_area]
    for i in np.flatnonzero(rows_df["city"].to_numpy()):  # NYC rows (a few hundred)
        sim_value[i] = fam_city.get((int(plan_family[i]), int(plan_area[i]),
                                     int(rows_df["district"].iat[i])), 0.0)

    # X.w: the full row for state / district / national areas (a target's non-zeros are the
    # cells of its geography); for NYC the row restricted to the city's own cells
    rows = rows_df["row"].to_numpy()
    xw_full = [np.asarray(matrix @ w, dtype=np.float64) for w in weights]
    wix = np.asarray(area_set.weight_index)[plan_area]
    xw = np.array([xw_full[i][r] for i, r in zip(wix, rows)]) if len(rows) else np.zeros(0)
    for a in np.unique(plan_area[rows_df["city"].to_numpy()]):
        sel = np.flatnonzero(plan_area == a)
        clone, record = area_set.cells[a]
        cols = np.asarray(clone, dtype=np.int64) * n_records + np.asarray(record, dtype=np.int64)
        w = weights[area_set.weight_index[a]]
        xw[sel] = np.asarray(matrix[rows[sel]][:, cols] @ w[cols], dtype=np.float64)

    df = pd.DataFrame({
        "area": np.asarray(area_set.keys, dtype=object)[plan_area],
        "area_kind": np.asarray(area_set.kinds, dtype=object)[plan_area],
        "level": targets["geo_level"].to_numpy()[rows],
        "geo_id": targets["geo_id"].astype(str).to_numpy()[rows],
        "target_name": targets["name"].to_numpy()[rows],
        "variable": variable[rows],
        "domain": (targets["domain"].to_numpy()[rows] if "domain" in targets.columns
                   else np.full(len(rows), "")),
        "holdout": targets["holdout"].to_numpy(bool)[rows],
        "achievable": targets["achievable"].to_numpy(bool)[rows],
        # why the fit left the row out (calibration_core.fit_rows), "" for fitted/hold-out rows
        "exclusion_reason": (targets["exclusion_reason"].astype(str).to_numpy()[rows]
                             if "exclusion_reason" in targets.columns
                             else np.full(len(rows), "", dtype=object)),
        "target_value": targets["value"].to_numpy(float)[rows],
        "sim_value": sim_value, "xw_value": xw,
    })
    t = df["target_value"].to_numpy()
    err = sim_value - t
    with np.errstate(divide="ignore", invalid="ignore"):
        rel = np.where(t != 0, err / np.where(t != 0, t, 1.0),
                       np.where(err == 0, 0.0, np.sign(err) * np.inf))
    partial = rows_df["city"].to_numpy()
    df["error"] = np.where(partial, np.nan, err)
    df["rel_error"] = np.where(partial, np.nan, rel)
    df["abs_rel_error"] = np.abs(df["rel_error"])
    df["xw_abs_diff"] = np.abs(sim_value - xw)
    df["xw_rel_diff"] = df["xw_abs_diff"] / np.maximum(np.abs(xw), 1.0)
    df["consistent"] = df["xw_rel_diff"] <= CONSISTENCY_TOLERANCE
    level = np.where(df["area_kind"] == "city", "city", df["level"])
    df["level"] = level
    df["sanity_check"], df["sanity_reason"] = _sanity(level, df["variable"].to_numpy(),
                                                      sim_value)
    return df[REPORT_COLUMNS]


def summarize(report: pd.DataFrame) -> pd.DataFrame:
    """Errors by level and sample (in-sample / hold-out): targets, areas, mean / median / p90 /
    max absolute relative error against the target (file totals), share within 10%, the
    largest ``|sim - X.w|`` relative difference, inconsistent rows and sanity failures."""
    if report.empty:
        return pd.DataFrame()
    df = report.assign(sample=np.where(report["holdout"], "hold-out", "in-sample"))
    rows = []
    for (level, sample), g in df.groupby(["level", "sample"], sort=True):
        e = g["abs_rel_error"].replace([np.inf], np.nan).dropna()
        rows.append({
            "level": level, "sample": sample, "targets": len(g), "areas": g["area"].nunique(),
            "mean_abs_rel_error": float(e.mean()) if len(e) else np.nan,
            "median_abs_rel_error": float(e.median()) if len(e) else np.nan,
            "p90_abs_rel_error": float(e.quantile(0.9)) if len(e) else np.nan,
            "max_abs_rel_error": float(e.max()) if len(e) else np.nan,
            "within_10pct": float((e <= 0.10).mean()) if len(e) else np.nan,
            "infinite_rel_error": int(np.isinf(g["abs_rel_error"]).sum()),
            "max_xw_rel_diff": float(g["xw_rel_diff"].max()),
            "inconsistent": int((~g["consistent"]).sum()),
            "sanity_failures": int((g["sanity_check"] == "FAIL").sum()),
        })
    return pd.DataFrame(rows)
