"""State simulations: dependency classification, take-up draws, entity structure (fast), and -
marked slow - stacked multi-state simulations against separate per-state simulations."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from calibration_core import engine_speedups
from calibration_core import simulation as simu
from calibration_core.h5_dataset import write_dataset
from tests.package_fixtures import STATE_COUNTY, synthetic_tables, synthetic_targets

# --------------------------------------------------------------------------------------------
# fast


def test_classify_state_dependence_on_a_graph():
    edges = {
        "agi": ["wages", "pfd"],  # pfd is Alaska-only
        "pfd": ["AK"],
        "wages": ["employment_income"],
        "tax": ["agi", "state_tax"],
        "state_tax": ["ca_tax", "state_code"],
        "ca_tax": ["CA"],
        "mystery": ["gated_unknown"],
        "loop_a": ["loop_b"], "loop_b": ["loop_a", "wages"],
    }
    gates = {"pfd": "AK", "ca_tax": "CA"}
    out = simu.classify_state_dependence(
        ["agi", "wages", "tax", "mystery", "loop_a", "employment_income", "pfd"], edges, gates,
        unexplored={"gated_unknown"})
    assert out["wages"] == [] and out["employment_income"] == [] and out["loop_a"] == []
    assert out["agi"] == ["AK"]
    assert out["pfd"] == ["AK"]
    assert out["tax"] == ["*"]  # reads state_code directly
    assert out["mystery"] == ["*"]  # an unexplored formula is not trusted


def test_needed_variables_from_targets():
    targets, constraints = synthetic_targets()
    assert simu.needed_variables(targets, constraints) == [
        "adjusted_gross_income", "age", "eitc", "medicaid_enrolled", "snap", "tax_unit_is_filer"]


def test_takeup_draws_are_keyed_and_match_rates():
    spec = next(s for s in simu.TAKEUP if s.input == "takes_up_snap_if_eligible")
    hh = np.arange(20_000)
    a = simu.takeup_decisions(spec, hh, 3, 0, 6)
    b = simu.takeup_decisions(spec, hh[::-1], 3, 0, 6)[::-1]  # order does not matter
    np.testing.assert_array_equal(a, b)
    assert abs(a.mean() - 0.82) < 0.01
    c = simu.takeup_decisions(spec, hh, 4, 0, 6)  # another clone: other draws
    assert (a != c).mean() > 0.2
    med = next(s for s in simu.TAKEUP if s.input == "takes_up_medicaid_if_eligible")
    assert med.rates(np.array([49, 36])).tolist() == [0.53, 0.86]  # UT, NY


def test_structure_ranks_and_membership():
    tables = synthetic_tables(30, seed=4)
    s = simu.Structure.from_tables(tables)
    person = tables["person"]
    assert (s.ids["household"][s.household_index["person"]]
            == person["person_household_id"].to_numpy()).all()
    # marital units: rank within household counts 0, 1, ... per household
    hh = s.household_index["marital_unit"]
    for h in np.unique(hh)[:10]:
        assert sorted(s.rank["marital_unit"][hh == h]) == list(range((hh == h).sum()))


def test_plan_chunks_bounds_households():
    chunks = simu.plan_chunks(3000, list(simu.STATE_ORDER), 20_000)
    assert sum(len(c) for c in chunks) == 51
    assert max(len(c) for c in chunks) * 3000 <= 20_000
    assert simu.plan_chunks(300, list(simu.STATE_ORDER), 20_000) == [list(simu.STATE_ORDER)]
    # more households than the bound: one state per simulation
    assert simu.plan_chunks(12_000, list(simu.STATE_ORDER), 6_000) == [
        [s] for s in simu.STATE_ORDER]
    # 7 chunks of <= 8 states would leave one of two workers a chunk more: 8 chunks instead
    two = simu.plan_chunks(3000, list(simu.STATE_ORDER), 26_000, workers=2)
    assert len(two) == 8 and sorted({len(c) for c in two}) == [6, 7]
    assert [s for c in two for s in c] == list(simu.STATE_ORDER)
    assert len(two[0]) == 6  # the traced (slower) chunk is one of the smaller ones
    assert len(simu.plan_chunks(1000, list(simu.STATE_ORDER), 26_000, workers=2)) == 2


def _tables_in_state_order(tables):
    """The households of ``tables`` re-ordered by state at every entity (areas are stacked so)."""
    from calibration_core.microdata import subset_tables

    hh = tables["household"]
    parts = [subset_tables(tables, hh.loc[hh["state_fips"] == st, "household_id"].to_numpy())
             for st in sorted(hh["state_fips"].unique())]
    return {e: pd.concat([p[e] for p in parts], ignore_index=True) for e in simu.ENTITIES}


def test_state_layout_finds_each_states_rows():
    tables = _tables_in_state_order(synthetic_tables(9, seed=4, states=(6, 17)))
    layout, templates = simu.state_layout(tables)
    assert set(layout) == {"CA", "IL"}
    hh_state = tables["household"]["state_fips"].to_numpy()
    for abbr, fips in (("CA", 6), ("IL", 17)):
        rows = layout[abbr]
        assert (hh_state[rows["household"]] == fips).all()
        assert (hh_state[rows["household"]] == fips).sum() == (hh_state == fips).sum()
        persons = tables["person"].iloc[rows["person"]]
        assert persons["person_household_id"].isin(
            tables["household"]["household_id"][hh_state == fips]).all()
        assert list(templates[abbr]["tax_unit"].columns) == ["tax_unit_id"]
        assert len(templates[abbr]["person"]) == rows["person"].stop - rows["person"].start
    # interleaved: a state whose rows are split is not routed (its rules run on every row)
    mixed = synthetic_tables(9, seed=4, states=(6, 17))
    hh = mixed["household"]["state_fips"].to_numpy()
    starts = hh[np.r_[True, hh[1:] != hh[:-1]]]
    split = {simu.STATE_ABBR[st] for st in (6, 17) if (starts == st).sum() > 1}
    assert split  # the fixture interleaves
    assert set(simu.state_layout(mixed)[0]) == {"CA", "IL"} - split


def _chunk_results(age_in_second_chunk):
    tables = synthetic_tables(3, seed=2)
    n_person = len(tables["person"])
    age = np.arange(n_person, dtype=float)
    trace = {"dependence": {"age": [], "snap": ["*"]}, "entity": {"age": "person",
                                                                  "snap": "spm_unit"}}
    n_spm = len(tables["spm_unit"])
    # (states, values, seconds, policyengine-us start seconds, pid, trace)
    results = [([1, 2], {"age": np.stack([age, age]), "snap": np.ones((2, n_spm))}, 1.0, 40.0,
                1, trace),
               ([4], {"age": age_in_second_chunk(age)[None], "snap": np.zeros((1, n_spm))},
                1.0, 0.0, 2, None)]
    return tables, results


def test_invariant_variables_are_stored_once_and_checked_in_every_chunk():
    for tamper, ok in ((lambda a: a, True), (lambda a: a + 1, False)):
        tables, results = _chunk_results(tamper)
        classes = simu.StateSimulations(None, None, {}, {}, {}, {}).classes  # 51 copies
        # chunks list state copies: AL, AK | AZ (rows 0, 1 | 2 of the 51)
        args = (tables, simu.Structure.from_tables(tables), ["age", "snap"], [], classes,
                [[0, 1], [2]], [1, 2, 4], 1, 2024, lambda m: None, 0.0, {})
        if ok:
            out = simu._collect(results, *args)
            assert set(out.invariant) == {"age"} and set(out.by_state) == {"snap"}
            assert out.by_state["snap"].shape[0] == 51
            assert out.metadata["traced_chunk_states"] == [1, 2]
            assert out.metadata["start_seconds"] == [40.0, 0.0]
        else:
            with pytest.raises(simu.SimulationError, match="'age' was classified "
                               "state-invariant but differs in AZ from AL"):
                simu._collect(results, *args)


def test_stack_tables_offsets_ids_and_moves_households():
    tables = synthetic_tables(5, seed=1)
    out = simu.stack_tables(tables, [2, 36], {2: "02020", 36: "36061"},
                            [("spm_unit", "takes_up_snap_if_eligible")])
    hh = out["household"]
    assert len(hh) == 10 and hh["household_id"].is_unique
    assert hh["state_fips"].tolist() == [2] * 5 + [36] * 5
    assert set(hh["county_fips"]) == {"02020", "36061"}
    p = out["person"]
    assert p["person_household_id"].isin(hh["household_id"]).all()
    assert out["spm_unit"]["takes_up_snap_if_eligible"].all()


# --------------------------------------------------------------------------------------------
# slow: policyengine-us

STATES = (2, 36, 48, 6)  # Alaska (permanent fund dividend), New York, Texas, California
N_HOUSEHOLDS = 12


@pytest.fixture(scope="session")
def small_dataset(tmp_path_factory):
    tables = synthetic_tables(N_HOUSEHOLDS, seed=11, states=(6, 17))
    path = tmp_path_factory.mktemp("sim") / "small.h5"
    write_dataset(path, tables, 2024)
    return path, tables


@pytest.fixture(scope="session")
def county_table():
    rows = [{"district_geoid": s * 100 + 1, "county_fips": c, "probability": 1.0}
            for s, c in STATE_COUNTY.items()]
    return pd.DataFrame(rows)


@pytest.fixture(scope="session")
def stacked(small_dataset, county_table):
    path, _ = small_dataset
    targets, constraints = synthetic_targets()
    variables = simu.needed_variables(targets, constraints)
    # two chunks of 2 states, in this process: the second reuses the first one's simulation
    return simu.simulate_states(path, variables, county_table, states=STATES,
                                max_households_per_chunk=2 * N_HOUSEHOLDS, workers=1)


@pytest.fixture(scope="session")
def separate(small_dataset, county_table, stacked):
    """One stock policyengine-us Microsimulation per state (weighted answers inside, as the
    reference pipeline ran it; without our engine speed-ups), reused across states."""
    from policyengine_us import Microsimulation
    from policyengine_us.data.dataset_schema import USSingleYearDataset

    from calibration_core.simulation import _as_plain, stack_tables

    _, tables = small_dataset
    counties = simu.representative_counties(county_table)
    forced = [(s.entity, s.input) for s in simu.takeup_specs_for(stacked.variables)]
    dataset = USSingleYearDataset(**stack_tables(tables, [STATES[0]], counties, forced),
                                  time_period=2024)
    sim = Microsimulation(dataset=dataset, dataset_end_year=2024)
    assert type(sim) is Microsimulation  # the stock class, not ours
    out = {}
    with engine_speedups.stock_engine():  # policyengine-core as released
        for state in STATES:
            sim.set_input("state_fips", 2024, np.full(N_HOUSEHOLDS, state))
            sim.set_input("county_fips", 2024, np.full(N_HOUSEHOLDS, counties[state]))
            sim.branches.clear()
            sim.drop_computed_arrays()
            out[state] = {v: _as_plain(sim.calculate(v, 2024, use_weights=False))
                          for v in stacked.variables}
    return out


@pytest.mark.slow
def test_stacked_equals_separate_state_simulations(stacked, separate):
    # two chunks (workers=2) that together hold every state once; which state goes where is
    # plan_chunks' business (county classes balance them)
    chunks = stacked.metadata["chunks"]
    assert len(chunks) == 2 and sorted(s for c in chunks for s in c) == sorted(STATES)
    # policyengine-us starts once per process: nothing is paid before the second chunk
    start = stacked.metadata["start_seconds"]
    assert len(start) == 2 and start[0] >= 0 and start[1] < 0.5
    for state in STATES:
        row = simu.STATE_ORDER.index(state)
        for v in stacked.variables:
            got = (stacked.invariant[v] if v in stacked.invariant else stacked.by_state[v][row])
            want = separate[state][v]
            if got.dtype.kind in "fi":
                np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-3, err_msg=f"{v} {state}")
            else:
                np.testing.assert_array_equal(got, want, err_msg=f"{v} in {state}")


@pytest.mark.slow
def test_state_rules_ran_on_their_own_rows(stacked):
    # the equality above covers the routed values; this shows routing happened at all
    assert stacked.metadata["traced_chunk_routed_formulas"] > 0
    assert stacked.metadata["unroutable_formulas"] == []


@pytest.mark.slow
def test_a_reused_stack_reuses_its_blocks_and_stays_exact(small_dataset, county_table,
                                                          stacked, separate):
    """The second chunk of a reused stack serves its states from the first chunk's emptied
    block simulations; every value still equals the state simulated on its own."""
    _, tables = small_dataset
    counties = simu.representative_counties(county_table)
    forced = [(s.entity, s.input) for s in simu.takeup_specs_for(stacked.variables)]
    simu._SIM_CACHE.clear()
    try:
        for chunk in ([2, 36], [48, 6]):
            out = simu.simulate_chunk(tables, chunk, stacked.variables, counties,
                                      forced_true=forced, reuse_key="reuse-test")
            for k, state in enumerate(chunk):
                for v in stacked.variables:
                    np.testing.assert_array_equal(out[v][k], separate[state][v],
                                                  err_msg=f"{v} in {state}")
        sim = next(iter(simu._SIM_CACHE.values()))
        router = sim.router
        assert router.blocks_reused >= 1 and router.blocks_built <= 2
        # the stack answers unweighted (no per-month weight projection): plain arrays
        assert isinstance(sim.calculate_add("snap", 2024), np.ndarray)
    finally:
        simu._SIM_CACHE.clear()


@pytest.mark.slow
def test_a_state_rule_that_branches_runs_on_all_rows(small_dataset, county_table):
    """Delaware's EITC choice compares its tax in two branches (a counterfactual with changed
    inputs): a block simulation cannot serve it, so it falls back to every row - and the stack
    still equals Delaware simulated alone."""
    _, tables = small_dataset
    counties = {**simu.representative_counties(county_table), 10: "10003"}
    variables = ["de_income_tax", "de_eitc"]
    info: dict = {}
    stacked = simu.simulate_chunk(tables, [2, 10], variables, counties, trace_into=info)
    alone = simu.simulate_chunk(tables, [10], variables, counties)
    assert "de_income_tax_if_claiming_refundable_eitc" in info["unroutable"]
    assert info["routed_formulas"] > 0
    for v in variables:
        np.testing.assert_allclose(stacked[v][1], alone[v][0], rtol=1e-6, err_msg=v)
        assert (stacked[v][0] == 0).all()  # Delaware's rules are zero in Alaska


@pytest.mark.slow
def test_stacked_areas_route_state_rules_exactly(small_dataset):
    """validation's stacked area simulation: two states, routed and unrouted, equal values."""
    from calibration_core import validation as val

    _, tables = small_dataset
    ordered = _tables_in_state_order(tables)
    stacked = val.StackedAreas(ordered, np.zeros(len(ordered["household"]), dtype=int), ["x"])
    assert len(simu.state_layout(ordered)[0]) == 2
    variables = ["snap", "eitc", "adjusted_gross_income", "medicaid_enrolled"]
    routed, _ = val.simulate_areas(stacked, variables, 2024, route=True)
    plain, _ = val.simulate_areas(stacked, variables, 2024, route=False)
    for v in variables:
        np.testing.assert_array_equal(routed[v], plain[v], err_msg=v)


@pytest.mark.slow
def test_state_invariance_decision(stacked, separate):
    dep = stacked.dependence
    assert dep["age"] == []  # an input
    assert set(stacked.invariant) == {v for v, d in dep.items() if not d}
    # invariant variables are equal in very different states
    for v in stacked.invariant:
        np.testing.assert_array_equal(separate[2][v], separate[48][v])
        np.testing.assert_array_equal(separate[36][v], separate[48][v])
    # AGI is state-dependent: the trace finds Alaska's permanent fund dividend, which a
    # comparison of two lower-48 states would miss
    assert "adjusted_gross_income" in stacked.by_state
    assert dep["adjusted_gross_income"] == ["*"] or "AK" in dep["adjusted_gross_income"]
    ak, tx = (stacked.by_state["adjusted_gross_income"][simu.STATE_ORDER.index(s)]
              for s in (2, 48))
    assert (ak > tx).any()
    assert dep["snap"] == ["*"] and dep["medicaid_enrolled"] == ["*"]


@pytest.mark.slow
def test_state_simulations_roundtrip(stacked, tmp_path):
    simu.save_state_simulations(stacked, tmp_path / "s.npz")
    back = simu.load_state_simulations(tmp_path / "s.npz")
    assert back.variables == stacked.variables and back.dependence == stacked.dependence
    for v in stacked.by_state:
        np.testing.assert_array_equal(back.by_state[v], stacked.by_state[v])
    np.testing.assert_array_equal(back.home_state, stacked.home_state)
    hh_agi = back.household_total("adjusted_gross_income")
    assert hh_agi.shape == (N_HOUSEHOLDS,) and np.isfinite(hh_agi).all()


@pytest.mark.slow
def test_a_file_simulated_in_runs_of_households_gives_the_whole_totals(small_dataset):
    """validation.simulate_group cuts a file above its memory bound into runs of consecutive
    households (validation._household_batches): with real policyengine-us, the runs' totals of
    every validated variable add up to the whole file's (households do not interact)."""
    from calibration_core import validation as val

    _, tables = small_dataset
    ordered = _tables_in_state_order(tables)
    # ids 0..n-1 at every entity, in row order, as an area file has them (assembly)
    for e in simu.ENTITIES:
        if e == "person":
            continue
        old = ordered[e][f"{e}_id"].to_numpy()
        ordered[e][f"{e}_id"] = np.arange(len(old))
        ordered["person"][f"person_{e}_id"] = pd.Index(old).get_indexer(
            ordered["person"][f"person_{e}_id"].to_numpy())
    ordered["person"]["person_id"] = np.arange(len(ordered["person"]))
    n = len(ordered["household"])
    variables = ["snap", "eitc", "adjusted_gross_income", "medicaid_enrolled"]
    whole, _ = val.simulate_areas(
        val.StackedAreas(ordered, np.zeros(n, dtype=int), ["x"]), variables, 2024)
    batches = val._household_batches([ordered], max(1, n // 3))
    assert len(batches) == 3 and all(len(b) == 1 for b in batches)
    parts = []
    for [(pos, t)] in batches:
        stacked = val.StackedAreas(t, np.zeros(len(t["household"]), dtype=int), ["x"])
        parts.append(val.simulate_areas(stacked, variables, 2024)[0])
    assert sum(len(t["household"]) for [(_, t)] in batches) == n
    for v in variables:
        total = sum(float(np.sum(p[v])) for p in parts)
        assert total == pytest.approx(float(np.sum(whole[v])), rel=1e-9), v
