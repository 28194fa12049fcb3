"""ACS S0101 (age bands) and S2201 (SNAP households) ETLs on small Census-API-format files."""
from __future__ import annotations

import json

import numpy as np
import pytest

from calibration_core.etl import TargetsInputError, acs_age, acs_snap
from tests.targets_fixtures import DISTRICTS, district_age, write_s0101, write_s2201


@pytest.fixture()
def raw(tmp_path):
    write_s0101(tmp_path)
    write_s2201(tmp_path)
    return tmp_path


def test_age_bands_cover_488_geographies(raw):
    t = acs_age.extract(raw).targets
    assert len(t) == 18 * (1 + 51 + 436)
    assert set(t["variable"]) == {"person_count"}
    assert t.groupby("geo_level")["geo_id"].nunique().to_dict() == {
        "national": 1, "state": 51, "district": 436}
    # at-large Alaska (Census 0200) and DC (1198) are district 01; PR is dropped
    districts = set(t.loc[t.geo_level == "district", "geo_id"])
    assert {201, 1101, 612} <= districts and 7298 not in districts and 7201 not in districts
    ca12 = t[(t.geo_level == "district") & (t.geo_id == 612)].sort_values("notes")
    assert ca12["value"].sum() == district_age(612).sum()


def test_age_band_constraints_are_half_open_whole_years(raw):
    t = acs_age.extract(raw).targets
    domains = set(t["domain"])
    assert (("age", "<", "5"), ("age", ">=", "0")) in domains
    assert (("age", "<", "85"), ("age", ">=", "80")) in domains
    assert (("age", ">=", "85"),) in domains  # open top band: no upper bound
    assert len(domains) == 18


def test_state_and_national_sum_of_districts(raw):
    t = acs_age.extract(raw).targets
    by_level = t.groupby("geo_level")["value"].sum()
    assert by_level["district"] == by_level["state"] == by_level["national"]


def test_s2201_snap_poverty_and_all_households(raw):
    t = acs_snap.extract(raw).targets
    assert len(t) == 3 * 436 and set(t["geo_level"]) == {"district"}
    snap = t[t["domain"] == (("snap", ">", "0"),)]
    assert len(snap) == 436
    assert snap.set_index("geo_id").loc[612, "value"] == 30000 + 612
    total = t[t["domain"] == ()]
    assert (total.set_index("geo_id")["value"] > snap.set_index("geo_id")["value"]).all()
    # S2201_C01_021E: households below the poverty level, cash income under the HHS guideline
    poor = t[t["domain"] == (("school_meal_fpg_ratio", "<", "1"),)]
    assert len(poor) == 436 and (poor["variable"] == "household_count").all()
    assert poor.set_index("geo_id").loc[612, "value"] == 40000 + 612
    assert poor["notes"].str.startswith("S2201_C01_021E").all()


def _rewrite(path, edit):
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data))


def test_truncated_json_names_file(raw):
    path = raw / "acs_S0101_state_2024.json"
    path.write_text(path.read_text()[:500])
    with pytest.raises(TargetsInputError, match="acs_S0101_state_2024.json: not valid JSON"):
        acs_age.extract(raw)


def test_missing_column_names_file_and_column(raw):
    def drop(data):
        i = data[0].index("S0101_C01_007E")
        for row in data:
            del row[i]
    _rewrite(raw / "acs_S0101_district_2024.json", drop)
    with pytest.raises(TargetsInputError,
                       match=r"acs_S0101_district_2024.json: missing column.*S0101_C01_007E"):
        acs_age.extract(raw)


def test_unknown_geo_id_is_refused(raw):
    _rewrite(raw / "acs_S0101_state_2024.json", lambda d: d[1].__setitem__(0, "0400000US03"))
    with pytest.raises(TargetsInputError, match="acs_S0101_state_2024.json: unknown GEO_ID "
                                                "'0400000US03'"):
        acs_age.extract(raw)
    # a district number beyond the state's count in the 119th Congress
    write_s0101(raw)
    _rewrite(raw / "acs_S0101_district_2024.json",
             lambda d: d[1].__setitem__(0, "5001900US0653"))
    with pytest.raises(TargetsInputError, match="unknown GEO_ID '5001900US0653'"):
        acs_age.extract(raw)


def test_negative_count_names_geo_and_column(raw):
    def neg(data):
        data[3][data[0].index("S2201_C03_001E")] = "-666666666"
    _rewrite(raw / "acs_S2201_district_2024.json", neg)
    with pytest.raises(TargetsInputError, match=r"acs_S2201_district_2024.json: GEO_ID "
                                                r"'5001900US0103', column S2201_C03_001E: "
                                                r"negative count"):
        acs_snap.extract(raw)


def test_duplicated_row_names_geo_id(raw):
    _rewrite(raw / "acs_S0101_state_2024.json", lambda d: d.append(list(d[5])))
    with pytest.raises(TargetsInputError, match="acs_S0101_state_2024.json: duplicated row for "
                                                "GEO_ID '0400000US06'"):
        acs_age.extract(raw)


def test_missing_district_is_refused(raw):
    _rewrite(raw / "acs_S2201_district_2024.json", lambda d: d.pop(1))
    with pytest.raises(TargetsInputError, match=r"no row for 1 district geography.*\[101\]"):
        acs_snap.extract(raw)


def test_bands_must_add_to_total(raw):
    def off(data):
        data[1][data[0].index("S0101_C01_001E")] = "1"
    _rewrite(raw / "acs_S0101_national_2024.json", off)
    with pytest.raises(TargetsInputError, match="18 age bands sum to"):
        acs_age.extract(raw)


def test_fixture_sanity():
    assert len(DISTRICTS) == 436 and np.all(district_age(612) > 0)
