"""Small fixture stores in the real layout: 488 area H5 files, the national file, the validation
summary and CSV under ``areas/``, plus the inputs (raw manifest, targets DB, package, weights)."""
from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import h5py
import numpy as np

from calibration_core.areas import all_areas


def write_h5(path: Path, key: str, households: int = 3) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(path, "w") as f:
        f.create_dataset("household_id/2024", data=np.arange(households, dtype=np.int64))
        f.create_dataset("household_weight/2024", data=np.full(households, 1.5))
        f.attrs["area"] = key


def write_fixture_store(root: Path, areas: bool = True, skip: int = 0) -> Path:
    """A store under ``root`` with every input and (``areas``) a complete release, minus the
    last ``skip`` district files."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "raw").mkdir(exist_ok=True)
    (root / "raw" / "manifest.json").write_text(json.dumps(
        {"provider": "directory", "packages": {},
         "files": {"agi_state.csv": {"size": 3, "sha256": "ab" * 32, "origin": "directory:x"}}}))
    (root / "targets").mkdir(exist_ok=True)
    with sqlite3.connect(root / "targets" / "policy_data.db") as db:
        db.execute("create table if not exists targets (id integer primary key, value real)")
        db.execute("insert into targets (value) values (1.0)")
    package = root / "calibration" / "package"
    package.mkdir(parents=True, exist_ok=True)
    np.save(package / "initial_weights.npy", np.ones(4))
    (package / "metadata.json").write_text('{"n_records": 2}')
    np.save(root / "calibration" / "regional_weights.npy", np.arange(4.0))
    if not areas:
        return root
    area_list = all_areas()
    districts = [a for a in area_list if a.kind == "district"]
    dropped = {a.key for a in districts[len(districts) - skip:]} if skip else set()
    for area in area_list:
        if area.key not in dropped:
            write_h5(root / "areas" / area.relative_path, area.key)
    write_h5(root / "areas" / "national" / "US.h5", "national-US", households=5)
    validation = root / "areas" / "validation"
    validation.mkdir(parents=True, exist_ok=True)
    (validation / "summary.json").write_text(json.dumps(
        {"in_sample": {"state": {"mean_rel_abs_error": 0.01}},
         "holdout": {"state": {"mean_rel_abs_error": 0.05}}}))
    (validation / "validation.csv").write_text("area,target,rel_error\nstate-CA,x,0.01\n")
    return root
