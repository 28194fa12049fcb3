"""The result of the state simulations (:class:`StateSimulations`) and its npz/JSON file format
(:func:`save_state_simulations`, :func:`load_state_simulations`)."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..io_utils import atomic_path
from .county_classes import CountyClasses
from .settings import ENTITIES, SimulationError, STATE_ORDER
from .stacking import Structure


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


