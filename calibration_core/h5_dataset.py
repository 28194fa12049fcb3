"""PolicyEngine-US datasets as time-period-arrays H5 files: ``/<variable>/<year>`` -> 1-D array.

This is the layout of policyengine-us-data's CPS files; ``policyengine_us.Microsimulation(
dataset=path)`` loads it without any download (spec FEASIBILITY §3). Each variable group also
carries an ``entity`` attribute (``person``, ``household``, ``tax_unit``, ``spm_unit``, ``family``,
``marital_unit``) so :func:`read_dataset` can rebuild the entity tables; policyengine-us ignores it.

Writes are atomic (temporary sibling, fsync, rename) and deterministic: variables are written in
sorted order (long arrays gzip-compressed in fixed chunks), and HDF5 object timestamps are switched off, so equal
tables give byte-identical files.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from .io_utils import atomic_path

ENTITIES: tuple[str, ...] = ("person", "household", "tax_unit", "spm_unit", "family",
                             "marital_unit")
GROUP_ENTITIES: tuple[str, ...] = ENTITIES[1:]
COMPRESS_MIN_SIZE = 4096  # arrays at least this long are stored gzip-compressed (chunked)


class DatasetError(ValueError):
    """A dataset's tables or file do not have the PolicyEngine-US structure."""


def validate_tables(tables: dict[str, pd.DataFrame]) -> None:
    """Check the six entity tables and their id / membership columns.

    Requires: every entity in :data:`ENTITIES`; ``<entity>_id`` in each table, integer and unique;
    ``person_<entity>_id`` in the person table for each group entity, every value an existing id;
    no column name used by two tables. Raises :class:`DatasetError` naming the table and column.
    """
    missing = [e for e in ENTITIES if e not in tables]
    if missing:
        raise DatasetError(f"dataset lacks entity table(s) {missing}; all six are required")
    unknown = sorted(set(tables) - set(ENTITIES))
    if unknown:
        raise DatasetError(f"unknown entity table(s) {unknown}; expected {list(ENTITIES)}")
    seen: dict[str, str] = {}
    for entity in ENTITIES:
        df = tables[entity]
        id_col = f"{entity}_id"
        if id_col not in df.columns:
            raise DatasetError(f"table {entity!r} lacks its id column {id_col!r}")
        ids = df[id_col].to_numpy()
        if not np.issubdtype(ids.dtype, np.integer):
            raise DatasetError(f"table {entity!r} column {id_col!r} must be integer, got {ids.dtype}")
        if len(np.unique(ids)) != len(ids):
            raise DatasetError(f"table {entity!r} column {id_col!r} has duplicate ids")
        for col in df.columns:
            if col in seen:
                raise DatasetError(f"column {col!r} appears in tables {seen[col]!r} and {entity!r}")
            seen[col] = entity
    person = tables["person"]
    for entity in GROUP_ENTITIES:
        col = f"person_{entity}_id"
        if col not in person.columns:
            raise DatasetError(f"table 'person' lacks membership column {col!r}")
        known = np.isin(person[col].to_numpy(), tables[entity][f"{entity}_id"].to_numpy())
        if not known.all():
            bad = person[col].to_numpy()[~known][:5]
            raise DatasetError(f"table 'person' column {col!r} refers to unknown {entity} ids "
                               f"{bad.tolist()} ({int((~known).sum())} persons)")


def _as_array(series: pd.Series, entity: str) -> np.ndarray:
    values = series.to_numpy()
    if values.dtype == bool or np.issubdtype(values.dtype, np.number):
        if np.issubdtype(values.dtype, np.floating) and not np.isfinite(values).all():
            raise DatasetError(f"table {entity!r} column {series.name!r} has NaN or infinite values")
        return np.ascontiguousarray(values)
    # strings (e.g. county_fips "06037"): fixed-width bytes, which policyengine-us decodes
    text = series.astype(str).to_numpy()
    if pd.isna(series).any():
        raise DatasetError(f"table {entity!r} column {series.name!r} has missing values")
    width = max(1, max((len(t) for t in text), default=1))
    return np.asarray([t.encode("ascii") for t in text], dtype=f"S{width}")


def write_dataset(path: str | os.PathLike, tables: dict[str, pd.DataFrame], year: int) -> Path:
    """Write the six entity tables as a time-period-arrays H5 file for ``year``; return the path.

    ``tables`` maps entity name -> DataFrame with one row per entity instance (n_entity rows), one
    column per PolicyEngine-US variable. Every column becomes dataset ``/<column>/<year>`` (1-D,
    length n_entity). Validated first (:func:`validate_tables`); the file is replaced atomically and
    its bytes depend only on the tables' contents.
    """
    import h5py

    validate_tables(tables)
    columns = sorted((col, entity) for entity in ENTITIES for col in tables[entity].columns)
    arrays = [(col, entity, _as_array(tables[entity][col], entity)) for col, entity in columns]
    with atomic_path(path, suffix=".h5") as tmp:
        fcpl = h5py.h5p.create(h5py.h5p.FILE_CREATE)
        fcpl.set_obj_track_times(False)  # the root group's timestamps
        fid = h5py.h5f.create(str(tmp).encode(), h5py.h5f.ACC_TRUNC, fcpl=fcpl)
        gcpl = h5py.h5p.create(h5py.h5p.GROUP_CREATE)
        gcpl.set_obj_track_times(False)
        with h5py.File(fid) as f:
            for col, entity, values in arrays:
                gid = h5py.h5g.create(f.id, col.encode(), gcpl=gcpl)
                group = h5py.Group(gid)
                group.attrs.create("entity", np.bytes_(entity))
                options = {}
                if values.size >= COMPRESS_MIN_SIZE:  # gzip is deterministic for equal input
                    options = dict(compression="gzip", compression_opts=4, shuffle=True,
                                   chunks=(min(values.size, 1 << 20),))
                group.create_dataset(str(year), data=values, track_times=False, **options)
    return Path(path)


def read_dataset(path: str | os.PathLike) -> tuple[dict[str, pd.DataFrame], int]:
    """Read a file written by :func:`write_dataset` (or any tpa H5 with one year): (tables, year).

    Variables without an ``entity`` attribute are placed by array length when exactly one entity
    has that many rows; otherwise :class:`DatasetError` names the variable.
    """
    import h5py

    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"dataset {path} does not exist")
    columns: dict[str, dict[str, np.ndarray]] = {e: {} for e in ENTITIES}
    unplaced: dict[str, np.ndarray] = {}
    years: set[str] = set()
    with h5py.File(path, "r") as f:
        for name in f.keys():
            group = f[name]
            if not isinstance(group, h5py.Group) or len(group.keys()) != 1:
                raise DatasetError(f"{path}: /{name} is not a group holding one year's array")
            (year_key,) = group.keys()
            years.add(year_key)
            values = group[year_key][()]
            if values.dtype.kind == "S":
                values = values.astype(str).astype(object)
            entity = group.attrs.get("entity")
            if entity is None:
                unplaced[name] = values
            else:
                columns[entity.decode() if isinstance(entity, bytes) else str(entity)][name] = values
    if len(years) != 1:
        raise DatasetError(f"{path}: expected one year, found {sorted(years)}")
    lengths = {e: len(columns[e][f"{e}_id"]) for e in ENTITIES if f"{e}_id" in columns[e]}
    for name, values in unplaced.items():
        match = [e for e, n in lengths.items() if n == len(values)]
        if len(match) != 1:
            raise DatasetError(f"{path}: cannot tell the entity of /{name} (length {len(values)})")
        columns[match[0]][name] = values
    tables = {e: pd.DataFrame(columns[e]) for e in ENTITIES}
    return tables, int(years.pop())


def read_columns(path: str | os.PathLike, names: Sequence[str]) -> dict[str, np.ndarray]:
    """Only the variables ``names`` of a file written by :func:`write_dataset` (one year):
    ``{name: (n_entity,) array}``, bytes decoded to str; a missing name raises
    :class:`DatasetError`. Cheaper than :func:`read_dataset` when a few columns suffice."""
    import h5py

    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"dataset {path} does not exist")
    out = {}
    with h5py.File(path, "r") as f:
        for name in names:
            group = f.get(name)
            if not isinstance(group, h5py.Group) or len(group.keys()) != 1:
                raise DatasetError(f"{path}: no variable /{name} holding one year's array")
            (year_key,) = group.keys()
            values = group[year_key][()]
            out[name] = values.astype(str) if values.dtype.kind == "S" else values
    return out
