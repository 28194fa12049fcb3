"""Local-area datasets: the active clone-households of an area as a PolicyEngine-US dataset.

The calibrated weights ``w`` have one entry per package column ``j = clone * n_records +
record`` (:mod:`calibration_core.package_io`). An area (state, district, NYC, or the nation)
is a set of cells ``(clone, record)`` of the ``(n_clones, n_records)`` geography grid
(:class:`~calibration_core.geography.GeographyAssignment`); its dataset holds every *active*
cell of the area (``w > 0``) as one household, with all its persons and group entities copied
from the base record under fresh ids (spec ORIGINAL_PIPELINE §6.3):

* cells are taken in column order, each household's entities in base dataset order, so the
  file depends only on the area's cells: an area built alone or in a batch of 488 gives the
  same tables (and :func:`calibration_core.h5_dataset.write_dataset` the same bytes);
* ``household_weight`` = the cell's calibrated weight; ``state_fips``, ``county_fips``,
  ``county`` (the policyengine-us ``County`` enum name of that FIPS) and
  ``congressional_district_geoid`` from the geography grid: every household sits in its own
  clone's county, which the matrix valued it at (its county class in the state simulations).
  ``county_by_state`` (the representative-county mode, an option) replaces the county by one
  per state, see :func:`build_area_tables`;
* take-up inputs (``takes_up_snap_if_eligible`` ...) are redrawn with
  :func:`calibration_core.simulation.takeup_decisions`, keyed by (base household id, clone,
  entity rank within the household, the clone's state) exactly as the matrix builder does, so
  the totals policyengine-us computes from the file equal ``X @ w`` restricted to the area.

Everything is index arithmetic on arrays (``np.repeat`` / ``searchsorted``); nothing loops over
households, persons or clones. The base data is indexed once (:func:`index_base`) and reused for
every area of a batch. No Dagster here.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np
import pandas as pd

from .areas import NYC_COUNTY_FIPS, Area
from .geography import GeographyAssignment
from .h5_dataset import ENTITIES, GROUP_ENTITIES, validate_tables
from .simulation import (FROZEN_AT_CLASS, TAKEUP, StateSimulations, Structure, TakeUp,
                         takeup_decisions, takeup_specs_for)

# household geography inputs written per cell; stale copies of these (and of what derives
# from the old location) are dropped from the base household table
GEOGRAPHY_COLUMNS = ("state_fips", "county_fips", "county", "congressional_district_geoid")
STALE_GEOGRAPHY = frozenset({"county_str", "zip_code", "in_nyc", "state_code",
                             "state_name", "block_geoid", "tract_geoid", "cbsa_code", "sldu",
                             "sldl", "place_fips", "vtd", "puma", "zcta"})


class AssemblyError(ValueError):
    """Base data, geography or weights cannot make an area dataset."""


# --------------------------------------------------------------------------------------------
# the base data, indexed once per batch


@dataclass
class BaseIndex:
    """The base dataset with, per entity ``e``, its rows grouped by household.

    ``structure``: :class:`~calibration_core.simulation.Structure` (household row, person ->
    entity row and rank within the household of every entity, in dataset order);
    ``order[e]`` (n_e,) entity rows sorted by household (stable, so dataset order inside a
    household); ``start[e]``, ``count[e]`` (n_records,) where each household's run begins in
    ``order[e]`` and how long it is.
    """

    tables: dict[str, pd.DataFrame]
    year: int
    structure: Structure
    order: dict[str, np.ndarray]
    start: dict[str, np.ndarray]
    count: dict[str, np.ndarray]

    @property
    def n_records(self) -> int:
        return self.structure.n_households

    @property
    def household_id(self) -> np.ndarray:
        return self.structure.ids["household"]


def index_base(tables: dict[str, pd.DataFrame], year: int) -> BaseIndex:
    """Validate the six base tables and index their entities by household.

    Raises :class:`AssemblyError` when a group entity's members live in different households
    (an entity must belong to exactly one household to be copied with it).
    """
    validate_tables(tables)
    s = Structure.from_tables(tables)
    order, start, count = {}, {}, {}
    n = s.n_households
    person_hh = s.household_index["person"]
    for e in ENTITIES:
        h = s.household_index[e]
        if e != "person":
            split = h[s.person_index[e]] != person_hh
            if split.any():
                p = int(np.flatnonzero(split)[0])
                raise AssemblyError(
                    f"base table {e!r}: {e} id {s.ids[e][s.person_index[e][p]]} has members in "
                    f"more than one household (person id {s.ids['person'][p]}); every {e} must "
                    "belong to one household")
        order[e] = np.argsort(h, kind="stable")
        count[e] = np.bincount(h, minlength=n).astype(np.int64)
        start[e] = np.cumsum(count[e]) - count[e]
    if (count["person"] == 0).any():
        r = int(np.flatnonzero(count["person"] == 0)[0])
        raise AssemblyError(f"base household id {s.ids['household'][r]} has no persons")
    return BaseIndex(tables, int(year), s, order, start, count)


# --------------------------------------------------------------------------------------------
# which cells


def area_cell_mask(geo: GeographyAssignment, area: Area | None) -> np.ndarray:
    """(n_clones, n_records) bool: the cells whose clone lies in ``area`` (None: the nation).

    State: the clone's district is in the state; district: equal GEOID; city: the clone's
    county is one of the city's counties (``area.counties``, from the city catalog; NYC: its
    five boroughs, :data:`calibration_core.areas.NYC_COUNTY_FIPS`).
    """
    if area is None:
        return np.ones(geo.district_geoid.shape, dtype=bool)
    if area.kind == "state":
        return geo.district_geoid // 100 == area.state_fips
    if area.kind == "district":
        return geo.district_geoid == area.district_geoid
    if area.kind == "city":
        counties = area.counties or (NYC_COUNTY_FIPS if area.code == "NYC" else ())
        if not counties:
            raise AssemblyError(f"city {area.key!r} lists no counties")
        return np.isin(geo.county_fips.astype("U5"), np.asarray(counties, dtype="U5"))
    raise AssemblyError(f"no selection rule for area {area.key!r}")


def check_weights(weights: np.ndarray, geo: GeographyAssignment, source: str = "weights"
                  ) -> np.ndarray:
    """``weights`` as float64 ``(n_clones, n_records)``; raises :class:`AssemblyError` unless it
    has ``n_clones * n_records`` finite, non-negative entries."""
    w = np.asarray(weights, dtype=np.float64)
    n = geo.n_clones * geo.n_records
    if w.ndim != 1 or w.shape[0] != n:
        raise AssemblyError(f"{source}: expected {n} weights (n_clones {geo.n_clones} x "
                            f"n_records {geo.n_records}), got shape {w.shape}")
    bad = ~np.isfinite(w) | (w < 0)
    if bad.any():
        j = int(np.flatnonzero(bad)[0])
        raise AssemblyError(f"{source}: weight {j} (clone {j // geo.n_records}, record "
                            f"{j % geo.n_records}) is {w[j]}; weights must be finite and >= 0")
    return w.reshape(geo.n_clones, geo.n_records)


def active_cells(weights2d: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(clone, record) int64 arrays of the cells with ``mask`` and weight > 0, in column order."""
    clone, record = np.nonzero(mask & (weights2d > 0))  # row-major: column order
    return clone.astype(np.int64), record.astype(np.int64)


# --------------------------------------------------------------------------------------------
# assembly


def _expand(base: BaseIndex, entity: str, record: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For households ``record`` (A,), the base rows of their ``entity`` instances (E,) in cell
    order, and the cell (0..A-1) of each."""
    n_k = base.count[entity][record]
    cell = np.repeat(np.arange(len(record), dtype=np.int64), n_k)
    offset = np.arange(len(cell), dtype=np.int64) - np.repeat(np.cumsum(n_k) - n_k, n_k)
    rows = base.order[entity][base.start[entity][record][cell] + offset]
    return rows, cell


def assemble_cells(
    base: BaseIndex,
    geo: GeographyAssignment,
    clone: np.ndarray,
    record: np.ndarray,
    weight: np.ndarray,
    takeup: Sequence[TakeUp] = (),
    county_by_state: Mapping[int, str] | None = None,
    frozen: StateSimulations | None = None,
    state_takeup: Sequence = (),
) -> dict[str, pd.DataFrame]:
    """The six entity tables of the households ``(clone[k], record[k])``, k = 0..A-1.

    Parameters
    ----------
    base : :func:`index_base` of the base dataset (household order = ``geo.household_id``).
    geo : the clone geography, ``(n_clones, n_records)``.
    clone, record : (A,) int - the cells, one household each, in output order.
    weight : (A,) float - their household weights.
    takeup : take-up specs whose input is redrawn per cell (the ones the matrix re-randomised).
    county_by_state : state FIPS -> county FIPS written instead of the cell's own county (the
        county the state simulations placed every household of that state in); None keeps the
        cell's county from ``geo``.
    frozen : state simulations with county classes: each of their
        :data:`~calibration_core.simulation.FROZEN_AT_CLASS` variables is written as an input,
        the value at the cell's state and county class (the value the matrix's other
        variables were computed with; HUD housing assistance, whose county fair market rents
        no class captures). None writes none.
    state_takeup : :class:`~calibration_core.aca_takeup.StateTakeUp` inputs not in ``takeup``:
        each entity's decision for the cell's state (base household id, entity rank), as the
        state simulations set them per state copy.

    Returns tables with fresh ids ``0..n-1`` per entity and consistent ``person_<e>_id``
    memberships; household geography and weight per cell; take-up inputs redrawn.
    """
    clone = np.asarray(clone, dtype=np.int64)
    record = np.asarray(record, dtype=np.int64)
    weight = np.asarray(weight, dtype=np.float64)
    if not (clone.shape == record.shape == weight.shape) or clone.ndim != 1:
        raise AssemblyError(f"clone {clone.shape}, record {record.shape} and weight "
                            f"{weight.shape} must be equal 1-D shapes")
    if geo.n_records != base.n_records or not np.array_equal(geo.household_id,
                                                              base.household_id):
        raise AssemblyError("the geography's household ids differ from the base dataset's "
                            f"({geo.n_records} vs {base.n_records} records, or another order)")
    s = base.structure
    rows, cells = {}, {}
    for e in ENTITIES:
        rows[e], cells[e] = _expand(base, e, record)

    out: dict[str, pd.DataFrame] = {}
    for e in ENTITIES:
        df = base.tables[e]
        drop = STALE_GEOGRAPHY | set(GEOGRAPHY_COLUMNS) if e == "household" else set()
        data = {c: df[c].to_numpy()[rows[e]] for c in df.columns if c not in drop}
        data[f"{e}_id"] = np.arange(len(rows[e]), dtype=np.int64)
        out[e] = data

    # memberships: person -> new row of its entity, by binary search on (cell, base row)
    p_rows, p_cell = rows["person"], cells["person"]
    for e in GROUP_ENTITIES:
        n_e = np.int64(len(s.ids[e]))
        key_e = cells[e] * n_e + rows[e]  # ascending: cells ascend, rows ascend inside a cell
        key_p = p_cell * n_e + s.person_index[e][p_rows]
        pos = np.searchsorted(key_e, key_p)
        if len(key_p) and (pos.max() >= len(key_e) or not np.array_equal(key_e[pos], key_p)):
            raise AssemblyError(f"person -> {e} membership could not be remapped")
        out["person"][f"person_{e}_id"] = pos.astype(np.int64)

    # household: weight and geography per cell
    hh = out["household"]
    state = geo.state_fips[clone, record].astype(np.int64)
    hh["household_weight"] = weight
    hh["state_fips"] = state
    hh["congressional_district_geoid"] = geo.district_geoid[clone, record].astype(np.int64)
    if county_by_state is None:
        county = geo.county_fips[clone, record].astype("U5")
    else:
        lookup = {int(k): str(v) for k, v in county_by_state.items()}
        missing = sorted(set(np.unique(state).tolist()) - set(lookup))
        if missing:
            raise AssemblyError(f"county_by_state lacks state(s) {missing}")
        table = np.array([lookup.get(i, "") for i in range(max(lookup) + 1)], dtype="U5")
        county = table[state]
    hh["county_fips"] = county.astype(object)
    hh["county"] = county_enum_names(county).astype(object)

    # values computed at the cell's county class, written as inputs
    if frozen is not None:
        cell_copy = frozen.copy_index(state, county)
        for v in FROZEN_AT_CLASS:
            if v not in frozen.entity:
                continue
            e = frozen.entity[v]
            base_rows, cell = rows[e], cells[e]
            table = frozen.invariant.get(v)
            out[e][v] = (table[base_rows] if table is not None
                         else frozen.by_state[v][cell_copy[cell], base_rows])

    # take-up, keyed like the matrix: (base household id, clone, rank in household, state)
    for spec in takeup:
        e = spec.entity
        base_rows, cell = rows[e], cells[e]
        hh_id = s.ids["household"][s.household_index[e][base_rows]]
        out[e][spec.input] = takeup_decisions(spec, hh_id, clone[cell], s.rank[e][base_rows],
                                              state[cell])
    redrawn = {spec.input for spec in takeup}
    for t in state_takeup:
        if t.input in redrawn:
            continue
        e = t.entity
        base_rows, cell = rows[e], cells[e]
        hh_id = s.ids["household"][s.household_index[e][base_rows]]
        out[e][t.input] = t.decisions(hh_id, s.rank[e][base_rows], state[cell])
    return {e: pd.DataFrame(out[e]) for e in ENTITIES}


def county_enum_names(county_fips: np.ndarray) -> np.ndarray:
    """(n,) str: the policyengine-us ``County`` enum name (``"KINGS_COUNTY_NY"``) of each
    5-digit county FIPS (policyengine-us's own ``county_fips_2020`` table,
    :func:`calibration_core.geography.county_name_to_fips`); ``""`` -> ``"UNKNOWN"``. Raises
    :class:`AssemblyError` for a FIPS policyengine-us does not know."""
    fips = np.asarray(county_fips).astype("U5")
    keys, values = _county_enum_table()
    pos = np.minimum(np.searchsorted(keys, fips), len(keys) - 1)
    found = keys[pos] == fips
    blank = fips == ""
    if not (found | blank).all():
        raise AssemblyError(f"county FIPS {str(fips[~(found | blank)][0])!r} is not a policyengine-us "
                            "county")
    return np.where(blank, "UNKNOWN", values[pos])


_COUNTY_ENUM: list = []


def _county_enum_table() -> tuple[np.ndarray, np.ndarray]:
    if not _COUNTY_ENUM:
        from .geography import county_name_to_fips

        pairs = sorted((f, n) for n, f in county_name_to_fips().items())
        _COUNTY_ENUM.append((np.array([f for f, _ in pairs], dtype="U5"),
                             np.array([n for _, n in pairs], dtype=object).astype(str)))
    return _COUNTY_ENUM[0]


def takeup_for_package(rerandomised_variables: Sequence[str], state_takeup: Sequence = ()
                       ) -> list[TakeUp]:
    """The take-up specs the package re-randomised (its metadata's ``takeup_rerandomised``
    variable list): the ones whose input an area file must redraw; an input with calibrated
    state rates (``state_takeup``, :func:`calibration_core.aca_takeup.from_metadata`) gets
    them, as the package did."""
    from .aca_takeup import rated_spec

    specs = [rated_spec(t, state_takeup) for t in takeup_specs_for(rerandomised_variables)]
    unknown = set(rerandomised_variables) - {v for t in TAKEUP for v in t.variables}
    if unknown:
        raise AssemblyError(f"take-up variables {sorted(unknown)} have no take-up spec")
    return specs


@dataclass
class AreaBuild:
    """One area's tables and figures."""

    key: str
    tables: dict[str, pd.DataFrame]
    clone: np.ndarray
    record: np.ndarray

    @property
    def households(self) -> int:
        return len(self.tables["household"])

    @property
    def persons(self) -> int:
        return len(self.tables["person"])

    def weighted_population(self) -> float:
        hw = self.tables["household"]["household_weight"].to_numpy()
        return float(hw[self.tables["person"]["person_household_id"].to_numpy()].sum())

    def weighted_households(self) -> float:
        return float(self.tables["household"]["household_weight"].sum())


def build_area_tables(
    base: BaseIndex,
    geo: GeographyAssignment,
    weights2d: np.ndarray,
    area: Area | None,
    takeup: Sequence[TakeUp] = (),
    county_by_state: Mapping[int, str] | None = None,
    frozen: StateSimulations | None = None,
    state_takeup: Sequence = (),
) -> AreaBuild:
    """The dataset of ``area`` (None: the nation): its active cells (weight > 0, clone in the
    area, :func:`area_cell_mask`) assembled by :func:`assemble_cells`.

    ``weights2d`` is :func:`check_weights` output ``(n_clones, n_records)``.
    """
    clone, record = active_cells(weights2d, area_cell_mask(geo, area))
    tables = assemble_cells(base, geo, clone, record, weights2d[clone, record], takeup,
                            county_by_state, frozen, state_takeup)
    return AreaBuild(area.key if area is not None else "national-US", tables, clone, record)
