"""ACA take-up calibrated per state (calibration_core.aca_takeup): the rate derivation on toy
counts, the eligible table on toy records, one uniform per tax unit shared by the base draw, the
state simulations' copies and the area files. No policyengine-us."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from calibration_core import aca_takeup as at
from calibration_core import assembly as asm
from calibration_core.areas import STATE_ABBR
from calibration_core.geography import GeographyAssignment
from calibration_core.microdata_parts import takeup_inputs as ti
from calibration_core.simulation import TAKEUP, Structure, stack_tables
from tests.package_fixtures import synthetic_tables

STATES = np.array(sorted(STATE_ABBR))
AT = {int(f): k for k, f in enumerate(STATES)}  # state FIPS -> position in STATES


def _eligible(direct, n, persons):
    return pd.DataFrame({"eligible_units_direct": direct, "eligible_sample_units": n,
                         "persons": persons}, index=STATES)


def test_rate_is_published_over_eligible_and_capped():
    persons = np.full(51, 1e6)
    direct = np.full(51, 1e5)
    published = pd.Series(np.full(51, 2e4), index=STATES)
    published[36] = 3e5  # more returns than eligible units: capped at 1
    table = at.derive_state_rates(_eligible(direct, np.full(51, 50.0), persons), published,
                                  shrink_units=0)
    assert table.loc[6, "rate"] == pytest.approx(0.2)
    assert table.loc[36, "rate"] == 1.0
    assert table.loc[36, "state"] == "NY"
    assert table["eligible_units"].to_numpy() == pytest.approx(direct)
    assert list(table.columns) == at.COLUMNS


def test_small_samples_shrink_toward_the_national_rate():
    persons = np.full(51, 1e6)
    direct = np.full(51, 1e5)
    direct[AT[36]] = 1e4  # New York: few eligible units per person in the sample ...
    n = np.full(51, 1000.0)
    n[AT[36]] = 5.0  # ... but only 5 of them
    published = pd.Series(np.full(51, 5e3), index=STATES)
    table = at.derive_state_rates(_eligible(direct, n, persons), published, shrink_units=20)
    national = direct.sum() / persons.sum()
    lam = 5 / 25
    expect = (lam * 1e4 / 1e6 + (1 - lam) * national) * 1e6
    assert table.loc[36, "eligible_units"] == pytest.approx(expect)
    assert table.loc[36, "rate"] == pytest.approx(5e3 / expect)
    # a well-sampled state stays close to its own estimate
    lam6 = 1000 / 1020
    assert table.loc[6, "eligible_units"] == pytest.approx(
        (lam6 * 0.1 + (1 - lam6) * national) * 1e6)
    # a state with no eligible sample unit takes the national rate
    direct[AT[2]], n[AT[2]] = 0.0, 0.0
    table = at.derive_state_rates(_eligible(direct, n, persons), published, shrink_units=20)
    assert table.loc[2, "eligible_units"] == pytest.approx(direct.sum() / persons.sum() * 1e6)


def test_rate_derivation_refuses_bad_counts():
    persons, direct, n = np.full(51, 1e6), np.full(51, 1e5), np.full(51, 50.0)
    published = pd.Series(np.full(51, 2e4), index=STATES)
    with pytest.raises(at.AcaTakeUpError, match="lack state FIPS"):
        at.derive_state_rates(_eligible(direct, n, persons), published.drop(36))
    bad = persons.copy()
    bad[AT[36]] = 0
    with pytest.raises(at.AcaTakeUpError, match="NY"):
        at.derive_state_rates(_eligible(direct, n, bad), published)
    with pytest.raises(at.AcaTakeUpError, match="no tax unit is eligible"):
        at.derive_state_rates(_eligible(direct * 0, n * 0, persons), published)
    with pytest.raises(at.AcaTakeUpError, match="lacks"):
        at.derive_state_rates(_eligible(direct, n, persons).drop(columns="persons"), published)


def test_eligible_table_counts_weighted_units_with_a_credit():
    tables = synthetic_tables(200, seed=5)
    s = Structure.from_tables(tables)
    n_tu = len(s.ids["tax_unit"])
    credit = np.where(np.arange(n_tu) % 3 == 0, 1200.0, 0.0)
    table = at.eligible_table(tables, credit)
    hw = tables["household"]["household_weight"].to_numpy(float)
    state = tables["household"]["state_fips"].to_numpy()
    tu_hh = s.household_index["tax_unit"]
    for fips in np.unique(state):
        in_s = state[tu_hh] == fips
        assert table.loc[fips, "eligible_units_direct"] == pytest.approx(
            (hw[tu_hh] * (credit > 0) * in_s).sum())
        assert table.loc[fips, "eligible_sample_units"] == ((credit > 0) & in_s).sum()
        assert table.loc[fips, "persons"] == pytest.approx(
            hw[s.household_index["person"]][state[s.household_index["person"]] == fips].sum())
    with pytest.raises(at.AcaTakeUpError, match="shape"):
        at.eligible_table(tables, credit[:-1])


def test_published_units_from_the_soi_file(tmp_path):
    rows = "".join(f"0400000US{f:02d},{1000 + f},{9000 + f}\n" for f in STATES)
    path = tmp_path / "aca_ptc_state.csv"
    path.write_text("# IRS SOI\nGEO_ID,Returns,TotalPTCAmount\n" + rows)
    units = at.read_published_units(path)
    assert units[36] == 1036 and len(units) == 51
    path.write_text("# IRS SOI\nGEO_ID,Returns,TotalPTCAmount\n" + rows.replace(
        "0400000US36", "0500000US36"))
    with pytest.raises(at.AcaTakeUpError, match="0500000US36"):
        at.read_published_units(path)
    path.write_text("# IRS SOI\nGEO_ID,Returns,TotalPTCAmount\n" + "".join(
        r + "\n" for r in rows.splitlines() if not r.startswith("0400000US36")))
    with pytest.raises(at.AcaTakeUpError, match=r"\[36\]"):
        at.read_published_units(path)


def _takeup(rates: dict[int, float]) -> at.StateTakeUp:
    full = {int(f): 0.5 for f in STATES}
    full.update(rates)
    return at.StateTakeUp(at.INPUT, at.ENTITY, tuple(sorted(full.items())))


def test_state_decision_shares_the_base_draw_uniform():
    tables, _ = ti.add_takeup_inputs(synthetic_tables(300, seed=2))
    s = Structure.from_tables(tables)
    hh_id = s.ids["household"][s.household_index["tax_unit"]]
    rank = s.rank["tax_unit"]
    base = tables["tax_unit"][at.INPUT].to_numpy()
    flat = next(t for t in ti.TAKEUP_INPUTS if t.input == at.INPUT).rate
    # at the base draw's rate the state decision is the base draw itself
    same = _takeup({int(f): flat for f in STATES})
    assert np.array_equal(same.decisions(hh_id, rank, np.full(len(hh_id), 6)), base)
    # a lower state rate only turns take-up off (one uniform, a lower threshold)
    low = _takeup({36: 0.1}).decisions(hh_id, rank, np.full(len(hh_id), 36))
    assert not (low & ~base).any() and 0 < low.mean() < base.mean()
    with pytest.raises(at.AcaTakeUpError, match="72"):
        same.decisions(hh_id, rank, np.full(len(hh_id), 72))
    # metadata round trip
    back = at.from_metadata({"takeup_state_rates": {at.INPUT: same.as_dict()},
                             "takeup_state_entities": {at.INPUT: at.ENTITY}})
    assert back == [same]
    spec = next(t for t in TAKEUP if t.input == at.INPUT)
    rated = at.rated_spec(spec, back)
    assert rated.state_rates["NY"] == pytest.approx(flat) and rated.rate is None


def test_state_copies_and_area_files_carry_the_same_decisions():
    """X·w stays exact: the value the state simulations give a tax unit in state s (its copy
    for s) is the value every area file writes for it when its clone lies in s."""
    tables, _ = ti.add_takeup_inputs(synthetic_tables(60, seed=4))
    takeup = _takeup({6: 0.9, 36: 0.05, 48: 0.4})
    stacked = stack_tables(tables, [6, 36, 48], {6: "06037", 36: "36047", 48: "48201"},
                           [takeup])
    n_tu = len(tables["tax_unit"])
    copies = stacked["tax_unit"][at.INPUT].to_numpy().reshape(3, n_tu)
    assert copies[0].mean() > copies[2].mean() > copies[1].mean()
    # the area files: every record in CA (clone 0), NY (clone 1) and TX (clone 2)
    base = asm.index_base(tables, 2024)
    n = base.n_records
    cd = np.repeat(np.array([[601], [3610], [4807]]), n, axis=1)
    county = np.vectorize({601: "06037", 3610: "36047", 4807: "48201"}.get)(cd).astype("U5")
    geo = GeographyAssignment(base.household_id, cd, county, cd // 100, np.zeros(n, bool))
    w = asm.check_weights(np.full(3 * n, 2.0), geo)
    build = asm.build_area_tables(base, geo, w, None, [], None, None, [takeup])
    out = build.tables["tax_unit"][at.INPUT].to_numpy()
    # cells in column order: clone 0's tax units (base order), then clone 1's, then clone 2's
    assert np.array_equal(out, copies.ravel())
    # a re-randomised ACA input is left to its spec: the state take-up does not overwrite it
    spec = at.rated_spec(next(t for t in TAKEUP if t.input == at.INPUT), [takeup])
    build = asm.build_area_tables(base, geo, w, None, [spec], None, None, [takeup])
    redrawn = build.tables["tax_unit"][at.INPUT].to_numpy()
    assert not np.array_equal(redrawn, copies.ravel())


def test_enrolment_growth_uprates_the_soi_counts(tmp_path):
    from calibration_core.areas import STATE_NAME

    path = tmp_path / "aca_ptc_multipliers_2022_2024.csv"
    rows = "".join(f"{STATE_NAME[int(f)]},{100},{150 if f == 36 else 200},0\n" for f in STATES)
    path.write_text("state,enroll_2022,enroll_2024,vol_mult\n" + rows)
    growth = at.read_enrolment_growth(path)
    assert growth[36] == pytest.approx(1.5) and growth[6] == pytest.approx(2.0)
    path.write_text("state,enroll_2022,enroll_2024,vol_mult\n" + rows.replace("New York,100",
                                                                               "New York,0"))
    with pytest.raises(at.AcaTakeUpError, match="New York"):
        at.read_enrolment_growth(path)
    path.write_text("state,enroll_2022,enroll_2024,vol_mult\n" + rows.replace("New York",
                                                                               "Nova York"))
    with pytest.raises(at.AcaTakeUpError, match="Nova York"):
        at.read_enrolment_growth(path)
