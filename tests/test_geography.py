"""Clone-and-assign: keyed determinism, population-proportional districts (and the uniform
option), top-AGI routing, no repeated districts, counties inside districts, bad input."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from calibration_core import geography as g
from calibration_core.areas import STATE_ABBR, district_geoids

GEOIDS = np.asarray(district_geoids())


@pytest.fixture(scope="module")
def county_table(real_raw_dir):
    return g.load_county_table(real_raw_dir / g.COUNTY_TABLE_FILE)


@pytest.fixture(scope="module")
def population():
    rng = np.random.default_rng(0)
    pop = pd.Series(rng.uniform(5e5, 9e5, len(GEOIDS)), index=GEOIDS)
    pop[601] = 3e6  # one big district, to see proportionality
    return pop


def test_county_table_covers_every_district(county_table):
    assert set(county_table["district_geoid"]) == set(GEOIDS)
    sums = county_table.groupby("district_geoid")["probability"].sum()
    np.testing.assert_allclose(sums.to_numpy(), 1.0)
    assert (county_table["county_fips"].str[:2].astype(int)
            == county_table["district_geoid"] // 100).all()
    # at-large and DC codes normalised to 01
    assert {201, 1101, 5601}.issubset(set(county_table["district_geoid"]))


def test_shapes_states_counties_and_determinism(county_table, population):
    hid = np.arange(500) * 3 + 7
    agi = np.linspace(0, 1e6, 500)
    a = g.assign_geography(hid, agi, 8, county_table, population)
    b = g.assign_geography(hid, agi, 8, county_table, population)
    assert a.district_geoid.shape == (8, 500) == a.county_fips.shape == a.state_fips.shape
    np.testing.assert_array_equal(a.district_geoid, b.district_geoid)
    np.testing.assert_array_equal(a.county_fips, b.county_fips)
    np.testing.assert_array_equal(a.state_fips, a.district_geoid // 100)
    assert (np.char.ljust(a.county_fips, 5).astype("U2").astype(int) == a.state_fips).all()
    # the county lies in its district's county list
    pairs = set(zip(county_table["district_geoid"], county_table["county_fips"]))
    assert all((d, c) in pairs for d, c in zip(a.district_geoid.ravel(), a.county_fips.ravel()))
    # a different salt gives different draws
    c = g.assign_geography(hid, agi, 8, county_table, population, salt="other")
    assert (c.district_geoid != a.district_geoid).mean() > 0.9


def test_draws_are_keyed_by_household_and_clone(county_table, population):
    hid = np.arange(1, 301)
    agi = np.zeros(300)
    full = g.assign_geography(hid, agi, 5, county_table, population)
    part = g.assign_geography(hid[::-3], agi[::-3], 5, county_table, population)
    np.testing.assert_array_equal(part.district_geoid, full.district_geoid[:, ::-3])
    np.testing.assert_array_equal(part.county_fips, full.county_fips[:, ::-3])


def test_population_proportional_and_uniform_option(county_table, population):
    hid = np.arange(20_000)
    agi = np.zeros(len(hid))
    geo = g.assign_geography(hid, agi, 10, county_table, population)
    share = np.bincount(np.searchsorted(GEOIDS, geo.district_geoid.ravel()),
                        minlength=len(GEOIDS)) / geo.district_geoid.size
    expected = (population / population.sum()).to_numpy()
    big = np.searchsorted(GEOIDS, 601)
    assert abs(share[big] - expected[big]) < 0.15 * expected[big]
    assert np.abs(share - expected).sum() < 0.08  # total variation distance
    uni = g.assign_geography(hid, agi, 10, county_table, population, method="uniform")
    share_u = np.bincount(np.searchsorted(GEOIDS, uni.district_geoid.ravel()),
                          minlength=len(GEOIDS)) / uni.district_geoid.size
    assert abs(share_u[big] - 1 / len(GEOIDS)) < 0.5 / len(GEOIDS)
    with pytest.raises(g.GeographyError, match="method"):
        g.assign_geography(hid[:5], agi[:5], 2, county_table, population, method="blocks")


def test_top_agi_decile_routed_by_agi_mass(county_table, population):
    hid = np.arange(2_000)
    agi = np.arange(2_000, dtype=float)
    mass = pd.Series(0.0, index=GEOIDS)
    mass[[601, 612]] = 1.0  # all AGI in two California districts
    geo = g.assign_geography(hid, agi, 2, county_table, population, agi_mass=mass)
    top = agi >= np.quantile(agi, 0.9)
    assert geo.top_agi.sum() == top.sum()
    assert set(np.unique(geo.district_geoid[:, top])) == {601, 612}
    rest = geo.district_geoid[:, ~top]
    assert len(np.unique(rest)) > 300 and (rest // 100 != 6).mean() > 0.8


def test_no_repeated_district_while_avoidable(county_table, population):
    hid = np.arange(400)
    geo = g.assign_geography(hid, np.zeros(400), 40, county_table, population)
    d = np.sort(geo.district_geoid, axis=0)
    assert not (d[1:] == d[:-1]).any()
    assert geo.metadata["repeated_district_cells"] == 0
    # more clones than districts: repeats are unavoidable and reported
    many = g.assign_geography(hid[:3], np.zeros(3), 440, county_table, population)
    assert many.metadata["repeated_district_cells"] >= 3 * 4


def test_district_population_and_agi_from_targets():
    rows = []
    for d in GEOIDS:
        for lo in (0, 50):
            rows.append(("person_count", "district", str(d), "age", 1000.0 + (d == 601) * 1e4))
    for st in (6, 48):
        rows.append(("adjusted_gross_income", "state", str(st), "", 1e9))
    rows.append(("adjusted_gross_income", "district", "4801", "", 5e8))
    t = pd.DataFrame(rows, columns=["variable", "geo_level", "geo_id", "domain", "value"])
    pop = g.district_population(t)
    assert pop[601] == 2 * 11000 and pop[602] == 2000
    mass, source = g.district_agi(t, pop)
    assert mass[4801] == 5e8  # district target wins
    ca = [d for d in GEOIDS if d // 100 == 6]
    np.testing.assert_allclose(mass[ca].sum(), 1e9)
    assert mass[601] / mass[602] == pytest.approx(11.0)  # spread by population
    assert "state AGI" in source
    assert (mass > 0).all()  # states without AGI targets fall back to population
    with pytest.raises(g.GeographyError, match="person_count"):
        g.district_population(t[t.variable != "person_count"])


def test_bad_county_table_names_the_row(tmp_path):
    bad = tmp_path / "c.csv"
    bad.write_text("cd_geoid,county_name,probability\n101,BALDWIN_COUNTY_AL,1.0\n"
                   "102,NOT_A_COUNTY_AL,1.0\n")
    with pytest.raises(g.GeographyError, match="row 3: unknown county 'NOT_A_COUNTY_AL'"):
        g.load_county_table(bad)
    wrong = tmp_path / "w.csv"
    wrong.write_text("cd_geoid,county_name,probability\n101,KINGS_COUNTY_NY,1.0\n")
    with pytest.raises(g.GeographyError, match="row 2: county 'KINGS_COUNTY_NY' is not in"):
        g.load_county_table(wrong)
    with pytest.raises(g.GeographyError, match="does not exist"):
        g.load_county_table(tmp_path / "missing.csv")


def test_bad_inputs_raise(county_table, population):
    with pytest.raises(g.GeographyError, match="unique"):
        g.assign_geography(np.array([1, 1]), np.zeros(2), 2, county_table, population)
    with pytest.raises(g.GeographyError, match="NaN"):
        g.assign_geography(np.array([1, 2]), np.array([0, np.nan]), 2, county_table, population)
    with pytest.raises(g.GeographyError, match="436"):
        g.assign_geography(np.array([1]), np.zeros(1), 2, county_table, population.iloc[:-1])


def test_save_load_roundtrip_without_pickle(county_table, population, tmp_path):
    geo = g.assign_geography(np.arange(50), np.zeros(50), 3, county_table, population)
    path = g.save_geography(geo, tmp_path / "geo.npz")
    with np.load(path, allow_pickle=False) as z:
        assert z["county_fips"].dtype.kind == "U"
    back = g.load_geography(path)
    np.testing.assert_array_equal(back.district_geoid, geo.district_geoid)
    np.testing.assert_array_equal(back.county_fips, geo.county_fips)
    assert back.metadata == geo.metadata and back.metadata["n_clones"] == 3
    table = g.summarize(back, population)
    assert len(table) == 51 and set(table["state"]) == set(STATE_ABBR.values())
