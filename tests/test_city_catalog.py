"""The city catalog (``calibration_core/cities.csv``): cities are data; a city added to the
catalog file alone gets its partition, its cells and its file name."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from calibration_core import assembly as asm
from calibration_core import areas
from calibration_core.geography import GeographyAssignment

ROOT = Path(__file__).resolve().parents[1]


def test_default_catalog_has_nyc_first_and_a_second_city():
    cities = areas.load_city_catalog()
    assert cities[0].code == "NYC" and cities[0].county_fips == areas.NYC_COUNTY_FIPS
    assert len(cities) >= 2
    keys = areas.all_area_keys()
    assert len(keys) == 51 + 436 + len(cities)
    assert [k for k in keys if k.startswith("city-")] == [f"city-{c.code}" for c in cities]


def _catalog_with_philadelphia(tmp_path) -> Path:
    path = tmp_path / "cities.csv"
    text = areas.DEFAULT_CITY_CATALOG.read_text().rstrip("\n")
    path.write_text(text + "\nPHL,Philadelphia,42,42101\n")
    return path


def test_a_third_city_through_the_catalog_file_alone(tmp_path):
    catalog = _catalog_with_philadelphia(tmp_path)
    found = {a.key: a for a in areas.all_areas(catalog)}
    phl = found["city-PHL"]
    assert phl.kind == "city" and phl.state_fips == 42 and phl.counties == ("42101",)
    assert phl.relative_path == "cities/PHL.h5"
    # its cells: the clones drawn into Philadelphia County
    geo = GeographyAssignment(np.arange(3), np.array([[4203, 4203, 4202]]),
                              np.array([["42101", "42091", "42101"]]), np.full((1, 3), 42),
                              np.zeros(3, dtype=bool))
    assert asm.area_cell_mask(geo, phl).tolist() == [[True, False, True]]
    # the Dagster partitions follow the catalog named by AREACAL_CITY_CATALOG
    env = dict(os.environ, AREACAL_CITY_CATALOG=str(catalog))
    code = ("import json; from assets.areas import area_partitions; "
            "print(json.dumps(area_partitions.get_partition_keys()))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, check=True,
                         capture_output=True, text=True).stdout.strip().splitlines()[-1]
    keys = json.loads(out)
    assert keys[-1] == "city-PHL" and len(keys) == len(areas.all_area_keys()) + 1


@pytest.mark.parametrize("row, message", [
    ("phl,Philadelphia,42,42101", "2-8 capital letters"),
    ("PHL,Philadelphia,42,34101", "starting with the state's 42"),
    ("MAN,Manhattan,36,36061", "already in city NYC"),
    ("PHL,Philadelphia,99,42101", "not one of the 51"),
])
def test_bad_catalog_rows_are_named(tmp_path, row, message):
    path = tmp_path / "cities.csv"
    path.write_text(areas.DEFAULT_CITY_CATALOG.read_text().rstrip("\n") + "\n" + row + "\n")
    with pytest.raises(areas.CityCatalogError, match=message):
        areas.load_city_catalog(path)
    with pytest.raises(areas.CityCatalogError, match="does not exist"):
        areas.load_city_catalog(tmp_path / "missing.csv")
