"""Files that carry the validation report's work between separate steps: its plan and each
step's group totals (plain npz, ``allow_pickle=False``, with a JSON record).

:func:`validation.validate_areas` is :func:`validation.plan_validation`, then
:func:`validation.simulate_group` for every stacked group, then
:func:`validation.finish_validation`. An orchestrator that runs the groups as steps (Dagster:
the graph-backed asset ``validation_report``) saves the plan with :func:`save_plan`, groups
consecutive stacked groups into steps (:func:`plan_steps`, at least
:data:`DEFAULT_STEP_HOUSEHOLDS` households per step), saves each step's totals with
:func:`save_totals` and sums them in group order: the report equals ``validate_areas``'s.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from .io_utils import atomic_write_npz
from .step_groups import group_into_steps
from .validation import (GroupTotals, MAX_HOUSEHOLDS_PER_SIMULATION, ValidationError,
                         ValidationPlan)

# Households a validation step simulates at least. The demo's 488 files (68,134 households)
# took 133 s in two stacked simulations (validation._groups): about 510 households per second,
# so 60,000 households are about 2 minutes, three times the ~40 s policyengine-us start.
DEFAULT_STEP_HOUSEHOLDS = 60_000
ROW_COLUMNS = ("a", "row", "city", "family", "district")


def plan_steps(sizes: Sequence[int], per_step: int, min_steps: int = 1) -> list[list[int]]:
    """Group consecutive items (stacked groups) into steps of at least ``per_step`` households
    each, and at least ``min_steps`` steps, balanced by size; never more steps than items
    (:func:`step_groups.group_into_steps`).

    ``sizes`` (n,): households of each item. Returns the item indices of each step, in order.
    Raises :class:`ValidationError`."""
    try:
        return group_into_steps(sizes, per_step, min_steps)
    except ValueError as exc:
        raise ValidationError(str(exc)) from None


def _meta(meta: dict) -> np.ndarray:
    return np.frombuffer(json.dumps(meta, sort_keys=True).encode(), dtype=np.uint8)


def _read_meta(z, path) -> dict:
    if "meta_json" not in z.files:
        raise ValidationError(f"{path} lacks meta_json")
    return json.loads(z["meta_json"].tobytes().decode())


def save_plan(plan: ValidationPlan, keys: Sequence[str], kinds: Sequence[str],
              steps: Sequence[Sequence[int]], path: str | os.PathLike) -> Path:
    """The plan, the areas' keys and kinds, and the groups of each step, as npz; atomic."""
    arrays = {f"rows__{c}": plan.rows[c].to_numpy() for c in ROW_COLUMNS}
    arrays["meta_json"] = _meta({
        "families": [list(f) for f in plan.families], "pieces": [list(p) for p in plan.pieces],
        "piece_households": list(plan.piece_households), "groups": plan.groups,
        "keys": list(keys), "kinds": list(kinds), "steps": [list(s) for s in steps],
        "max_households": int(plan.max_households)})
    return atomic_write_npz(path, arrays)


def load_plan(path: str | os.PathLike) -> tuple[ValidationPlan, list, list, list]:
    """(plan, keys, kinds, steps) saved by :func:`save_plan`."""
    path = Path(path)
    if not path.is_file():
        raise ValidationError(f"validation plan {path} does not exist")
    with np.load(path, allow_pickle=False) as z:
        meta = _read_meta(z, path)
        rows = pd.DataFrame({c: z[f"rows__{c}"] for c in ROW_COLUMNS})
    plan = ValidationPlan(rows, [tuple(f) for f in meta["families"]],
                          [tuple(p) for p in meta["pieces"]], meta["piece_households"],
                          meta["groups"],
                          # plans saved before the bound was recorded: the default bound
                          int(meta.get("max_households", MAX_HOUSEHOLDS_PER_SIMULATION)))
    return plan, meta["keys"], meta["kinds"], meta["steps"]


def save_totals(totals: dict[int, GroupTotals], path: str | os.PathLike) -> Path:
    """Group index -> totals as npz: ``g<i>__area`` (n_families, n_areas), ``g<i>__city_keys``
    (k, 3) int64 (family, area, district) and ``g<i>__city_values`` (k,); atomic."""
    arrays = {}
    for g, t in totals.items():
        keys = sorted(t.city)
        arrays[f"g{g}__area"] = np.asarray(t.area, dtype=np.float64)
        arrays[f"g{g}__city_keys"] = np.asarray(keys, dtype=np.int64).reshape(-1, 3)
        arrays[f"g{g}__city_values"] = np.asarray([t.city[k] for k in keys], dtype=np.float64)
    arrays["meta_json"] = _meta({"groups": sorted(int(g) for g in totals)})
    return atomic_write_npz(path, arrays)


def load_totals(path: str | os.PathLike) -> dict[int, GroupTotals]:
    path = Path(path)
    if not path.is_file():
        raise ValidationError(f"validation step {path} does not exist")
    out = {}
    with np.load(path, allow_pickle=False) as z:
        for g in _read_meta(z, path)["groups"]:
            keys = z[f"g{g}__city_keys"]
            values = z[f"g{g}__city_values"]
            out[g] = GroupTotals(z[f"g{g}__area"], {tuple(int(x) for x in k): float(v)
                                                      for k, v in zip(keys, values)})
    return out
