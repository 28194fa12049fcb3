"""A small artifact store from which the real ``area_datasets`` asset builds area files with no
policyengine-us: synthetic base tables (``package_fixtures.synthetic_tables``), a clone
geography over a few real districts, sealed regional weights and a package metadata file.
Area files need ``county="clone"`` config (the store has no state simulations).

Used by the storage tests (PostgreSQL backfill, S3 store), which are about orchestration and
storage, not about the files' content (tests/test_assembly.py covers that).
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from tests.package_fixtures import synthetic_tables

N_CLONES = 3
# real districts of the synthetic states (CA, TX, NY, FL) and their counties
DISTRICTS = {601: "06001", 612: "06075", 614: "06081", 4807: "48201", 4818: "48201",
             3610: "36047", 3612: "36061", 1223: "12086", 1227: "12086"}
AREA_CONFIG = {"ops": {"area_datasets": {"config": {"county": "clone"}}}}


def write_area_inputs(root: Path, n: int = 40, seed: int = 0) -> Path:
    """The inputs ``area_datasets`` reads, under ``root``; returns ``root``."""
    from calibration_core.fit import seal_fit_outputs
    from calibration_core.geography import GeographyAssignment, save_geography
    from calibration_core.h5_dataset import write_dataset

    root = Path(root)
    tables = synthetic_tables(n, seed=seed)
    write_dataset(root / "microdata" / "stratified_2024.h5", tables, 2024)
    household_id = np.sort(tables["household"]["household_id"].to_numpy())
    rng = np.random.default_rng(seed + 1)
    codes = np.array(sorted(DISTRICTS))
    cd = codes[rng.integers(0, len(codes), size=(N_CLONES, len(household_id)))]
    county = np.vectorize(DISTRICTS.get)(cd).astype("U5")
    geo = GeographyAssignment(household_id, cd, county, cd // 100,
                              np.zeros(len(household_id), dtype=bool))
    save_geography(geo, root / "calibration" / "geography_assignment.npz")
    weights = rng.uniform(10, 100, N_CLONES * len(household_id))
    weights[rng.random(len(weights)) < 0.3] = 0.0
    (root / "calibration" / "regional").mkdir(parents=True, exist_ok=True)
    np.save(root / "calibration" / "regional" / "weights.npy", weights)
    seal_fit_outputs(root / "calibration" / "regional")
    (root / "calibration" / "package").mkdir(parents=True, exist_ok=True)
    (root / "calibration" / "package" / "metadata.json").write_text(
        json.dumps({"takeup_rerandomised": ["snap"]}))
    return root
