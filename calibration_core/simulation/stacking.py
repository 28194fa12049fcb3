"""Stacked datasets: the households replicated once per state copy, ids offset per copy
(:class:`Structure`, :func:`stack_tables`), and the representative county of each state."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import pandas as pd

from .settings import ENTITIES, SimulationError


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




