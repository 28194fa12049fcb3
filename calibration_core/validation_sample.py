"""Validation at full scale: which area files policyengine-us re-simulates, and how every other
file is still tied to ``X @ w``.

The problem. ``validation_report`` re-simulates area files with policyengine-us and compares
each target's total with ``X @ w`` restricted to the area's cells (the blocking consistency
check, :mod:`calibration_core.validation`). At the full preset the 488 files hold about 4.8 M
clone-households per level (states, and again districts): re-simulating all of them costs more
than the rest of the build together, and it is the reference's three-hour step
(spec ORIGINAL_PIPELINE §1.4, §6.6). This module splits the check in two:

* **A declared, seeded sample is re-simulated** (mode ``"rotating"``): every state, every city,
  the national file, and one slice of the districts: district ``j`` (its index in
  :func:`calibration_core.areas.all_areas` order) when ``j % DISTRICT_SLICES == rotation``.
  ``rotation`` comes from a stable key (by default the regional weights' sha256), so the same
  inputs give the same sample and a new fit checks another slice; ``DISTRICT_SLICES``
  consecutive rotations cover every district.
* **Every file's structure is checked against the fit** (:func:`file_matches_cells`, no
  simulation): an area file written by :func:`calibration_core.assembly.build_area_tables` holds
  its area's active cells (weight > 0, clone in the area) in column order, one household each,
  at the cell's weight, state, district and county. When that holds, the file's total of a
  target is ``sum_k w_k v_k`` over exactly the cells whose matrix columns ``X @ w`` sums; the
  household values ``v_k`` are those of the same cells in the state file (same assembly, same
  inputs: base record, clone county class, take-up keyed by household, clone and state), which
  the simulated state files tie to ``X @ w`` target by target.

No Dagster and no policyengine-us here.
"""
from __future__ import annotations

import hashlib
from typing import Mapping, Sequence

import numpy as np

from .areas import Area, all_areas

DISTRICT_SLICES = 8  # 436 districts -> 54 or 55 re-simulated per run
# columns :func:`file_matches_cells` reads from a file's household table
STRUCTURE_COLUMNS = ("household_weight", "state_fips", "congressional_district_geoid",
                     "county_fips")


class SampleError(ValueError):
    """A rotation or a sample request that cannot be honoured (the value is named)."""


def rotation_from_key(key: str, slices: int = DISTRICT_SLICES) -> int:
    """The district slice ``0 .. slices-1`` of a stable key (e.g. a weights file's sha256):
    the first 8 bytes of ``sha256(key)`` modulo ``slices``. Raises :class:`SampleError` for
    ``slices < 1``."""
    if slices < 1:
        raise SampleError(f"slices must be >= 1, got {slices}")
    return int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big") % slices


def rotating_sample(rotation: int, slices: int = DISTRICT_SLICES,
                    areas: Sequence[Area] | None = None) -> list[Area]:
    """Every state and city, and the districts ``j`` (index among the districts, in
    ``areas`` order: :func:`all_areas` by default) with ``j % slices == rotation``; in ``areas``
    order. Raises :class:`SampleError` unless ``0 <= rotation < slices``."""
    if slices < 1 or not 0 <= int(rotation) < slices:
        raise SampleError(f"rotation must be in 0..{slices - 1}, got {rotation}")
    areas = list(all_areas() if areas is None else areas)
    out, j = [], 0
    for area in areas:
        if area.kind == "district":
            if j % slices == rotation:
                out.append(area)
            j += 1
        else:
            out.append(area)
    return out


def file_matches_cells(key: str, household: Mapping[str, np.ndarray], clone: np.ndarray,
                       record: np.ndarray, weights2d: np.ndarray, state_fips: np.ndarray,
                       district_geoid: np.ndarray, county_fips: np.ndarray | None = None
                       ) -> list[str]:
    """Problems (empty when none) between an area file's households and the area's active cells.

    household : the file's household columns :data:`STRUCTURE_COLUMNS` (``county_fips``
        optional), each ``(A_file,)``.
    clone, record : (A,) int - the area's active cells in column order
        (:func:`calibration_core.assembly.active_cells`).
    weights2d : (n_clones, n_records) float64 - the fitted weights.
    state_fips, district_geoid : (n_clones, n_records) int - the clone geography;
    county_fips : (n_clones, n_records) str, or None when the files carry one county per state.

    Household ``k`` of the file must be cell ``(clone[k], record[k])``: the same count, the
    weight ``weights2d[clone[k], record[k]]`` exactly (the file stores the float64 weight), the
    cell's state and district, and its county when given. Each problem names the area, the
    column and the first household that differs.
    """
    problems = []
    clone = np.asarray(clone, dtype=np.int64)
    record = np.asarray(record, dtype=np.int64)
    n_file = len(household["household_weight"])
    if n_file != len(clone):
        return [f"{key}: {n_file} households in the file, {len(clone)} active cells in the fit"]
    expected = {"household_weight": weights2d[clone, record],
                "state_fips": state_fips[clone, record],
                "congressional_district_geoid": district_geoid[clone, record]}
    if county_fips is not None and "county_fips" in household:
        expected["county_fips"] = county_fips[clone, record]
    for column, want in expected.items():
        got = np.asarray(household[column])
        if column == "county_fips":
            differ = got.astype(str) != np.asarray(want).astype(str)
        elif column == "household_weight":
            differ = got.astype(np.float64) != want.astype(np.float64)
        else:
            differ = got.astype(np.int64) != want.astype(np.int64)
        if differ.any():
            k = int(np.flatnonzero(differ)[0])
            problems.append(f"{key}: {column} of household {k} is {got[k]!r}, the fit's cell "
                            f"(clone {clone[k]}, record {record[k]}) has {want[k]!r} "
                            f"({int(differ.sum())} household(s) differ)")
    return problems
