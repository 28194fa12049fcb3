"""Validation at full scale (calibration_core.validation_sample): the declared rotating sample
of re-simulated areas, and the structural check that ties every file, re-simulated or not, to
the fit's cells and weights."""
from __future__ import annotations

import numpy as np
import pytest

from calibration_core import assembly as asm
from calibration_core import validation as val
from calibration_core import validation_sample as vs
from calibration_core.areas import all_areas, parse_area_key
from calibration_core.h5_dataset import read_columns, write_dataset
from tests.test_assembly import SNAP, setup  # noqa: F401 - a fixture


def test_rotating_sample_is_every_state_and_city_and_one_district_slice():
    areas = all_areas()
    districts = [a.key for a in areas if a.kind == "district"]
    seen = []
    for r in range(vs.DISTRICT_SLICES):
        sample = vs.rotating_sample(r)
        kinds = [a.kind for a in sample]
        assert kinds.count("state") == 51
        assert kinds.count("city") == sum(a.kind == "city" for a in areas)
        picked = [a.key for a in sample if a.kind == "district"]
        assert len(picked) in (436 // vs.DISTRICT_SLICES, 436 // vs.DISTRICT_SLICES + 1)
        assert picked == districts[r::vs.DISTRICT_SLICES]
        seen += picked
    # the slices partition the districts: DISTRICT_SLICES rotations check every one once
    assert sorted(seen) == sorted(districts)
    assert [a.key for a in val.areas_for_report("rotating", 3)] == \
        [a.key for a in vs.rotating_sample(3)]


def test_rotation_is_a_stable_function_of_its_key():
    keys = [f"{i:064x}" for i in range(64)]
    rotations = [vs.rotation_from_key(k) for k in keys]
    assert rotations == [vs.rotation_from_key(k) for k in keys]
    assert set(rotations) == set(range(vs.DISTRICT_SLICES))  # 64 keys reach every slice
    with pytest.raises(val.ValidationError, match="rotation must be in 0..7, got 8"):
        val.areas_for_report("rotating", 8)
    with pytest.raises(val.ValidationError, match="'all', 'sample', 'rotating'.*'some'"):
        val.areas_for_report("some")


def _file(setup, tmp_path, key):
    tables, base, geo, w = setup
    w2 = asm.check_weights(w, geo)
    area = parse_area_key(key) if key else None
    build = asm.build_area_tables(base, geo, w2, area, [SNAP])
    path = write_dataset(tmp_path / f"{key or 'national'}.h5", build.tables, 2024)
    clone, record = asm.active_cells(w2, asm.area_cell_mask(geo, area))
    return geo, w2, read_columns(path, vs.STRUCTURE_COLUMNS), clone, record


@pytest.mark.parametrize("key", ["state-CA", "district-NY-10", "city-NYC", None])
def test_a_written_file_matches_its_cells(setup, tmp_path, key):
    geo, w2, columns, clone, record = _file(setup, tmp_path, key)
    assert len(clone) > 0
    assert vs.file_matches_cells(key or "national-US", columns, clone, record, w2,
                                 geo.state_fips, geo.district_geoid, geo.county_fips) == []


def test_a_file_that_differs_from_the_fit_is_named(setup, tmp_path):
    geo, w2, columns, clone, record = _file(setup, tmp_path, "state-CA")
    args = (clone, record, w2, geo.state_fips, geo.district_geoid, geo.county_fips)
    changed = dict(columns, household_weight=columns["household_weight"].copy())
    changed["household_weight"][1] *= 1.001
    (problem,) = vs.file_matches_cells("state-CA", changed, *args)
    assert "state-CA: household_weight of household 1" in problem and "1 household(s)" in problem
    # another area's cells (a district of the same state): the count differs
    d_clone, d_record = asm.active_cells(w2, asm.area_cell_mask(geo,
                                                                parse_area_key("district-CA-12")))
    (problem,) = vs.file_matches_cells("state-CA", columns, d_clone, d_record, *args[2:])
    assert f"{len(clone)} households in the file, {len(d_clone)} active cells" in problem
    # the same households in another county
    moved = dict(columns, county_fips=np.where(np.arange(len(clone)) == 0, "06001",
                                               columns["county_fips"]))
    if geo.county_fips[clone[0], record[0]] != "06001":
        (problem,) = vs.file_matches_cells("state-CA", moved, *args)
        assert "county_fips of household 0" in problem
    # without county (one county per state in the files) the county is not compared
    assert vs.file_matches_cells("state-CA", moved, *args[:5], None) == []
