"""The validation report's groups as separate steps (calibration_core.validation_steps): the
plan and each step's totals saved and read back, each step holding only its own files, give the
report ``validate_areas`` gives (the policyengine-us call replaced by the files' own input
columns, as tests/test_assembly.py does)."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from calibration_core import assembly as asm
from calibration_core import validation as val
from calibration_core import validation_steps as vsteps
from calibration_core.areas import parse_area_key
from tests.test_assembly import SNAP, _fake_package, setup  # noqa: F401 - a fixture


def _fake_simulate(stacked, variables, year, log=None):
    p, u = stacked.tables["person"], stacked.tables["spm_unit"]
    values = {"age": p["age"].to_numpy(), "employment_income": p["employment_income"].to_numpy(),
              "snap": u["snap_eligible_amount"].to_numpy()
              * u["takes_up_snap_if_eligible"].to_numpy()}
    return ({v: values[v] for v in variables},
            {"age": "person", "employment_income": "person", "snap": "spm_unit"})


def test_groups_as_steps_give_the_report_of_validate_areas(setup, monkeypatch, tmp_path):
    tables, base, geo, w = setup
    w2 = asm.check_weights(w, geo)
    targets, matrix = _fake_package(base, geo, tables)
    keys = ["state-CA", "state-NY", "district-CA-12", "district-NY-10", "city-NYC"]
    builds = [asm.build_area_tables(base, geo, w2, parse_area_key(k), [SNAP]) for k in keys]
    national = asm.build_area_tables(base, geo, w2, None, [SNAP])
    keys, kinds = keys + ["national-US"], [parse_area_key(k).kind for k in keys] + ["national"]
    all_tables = [b.tables for b in builds] + [national.tables]
    cells = [(b.clone, b.record) for b in builds + [national]]
    monkeypatch.setattr(val, "simulate_areas", _fake_simulate)
    whole = val.validate_areas(val.AreaSet(keys, kinds, all_tables, cells, [0] * len(keys)),
                               targets, matrix, [w], geo.n_records, 2024,
                               states_per_simulation=1)

    # the plan (every file read), saved
    plan = val.plan_validation(val.AreaSet(keys, kinds, all_tables, [None] * len(keys),
                                           [None] * len(keys)), targets,
                               states_per_simulation=1)
    assert len(plan.groups) >= 3
    sizes = [sum(plan.piece_households[i] for i in g) for g in plan.groups]
    steps = vsteps.plan_steps(sizes, max(1, sum(sizes) // 2))
    assert len(steps) == 2
    vsteps.save_plan(plan, keys, kinds, steps, tmp_path / "plan.npz")
    # each step reads only the files of its groups
    for s, groups in enumerate(steps):
        plan_s, keys_s, kinds_s, steps_s = vsteps.load_plan(tmp_path / "plan.npz")
        needed = {plan_s.pieces[i][0] for g in groups for i in plan_s.groups[g]}
        only = [t if a in needed else None for a, t in enumerate(all_tables)]
        area_set = val.AreaSet(keys_s, kinds_s, only, [None] * len(keys), [None] * len(keys))
        totals = {g: val.simulate_group(area_set, plan_s, g, 2024) for g in steps_s[s]}
        vsteps.save_totals(totals, tmp_path / f"step_{s}.npz")
    with np.load(tmp_path / "step_0.npz", allow_pickle=False) as z:  # no object arrays
        assert "meta_json" in z.files
    # the finish: totals in group order, X @ w from the cells
    plan, keys, kinds, steps = vsteps.load_plan(tmp_path / "plan.npz")
    totals = {}
    for s in range(len(steps)):
        totals.update(vsteps.load_totals(tmp_path / f"step_{s}.npz"))
    report = val.finish_validation(
        val.AreaSet(keys, kinds, [None] * len(keys), cells, [0] * len(keys)), targets, matrix,
        [w], geo.n_records, plan, [totals[g] for g in range(len(plan.groups))])
    pd.testing.assert_frame_equal(report, whole)
    assert (report["area"] == "city-NYC").any() and report["consistent"].all()
    with pytest.raises(val.ValidationError, match="group totals"):
        val.finish_validation(
            val.AreaSet(keys, kinds, [None] * len(keys), cells, [0] * len(keys)), targets,
            matrix, [w], geo.n_records, plan, [totals[0]])


def test_read_columns_reads_only_what_the_plan_needs(tmp_path):
    from calibration_core.h5_dataset import read_columns, read_dataset, write_dataset
    from tests.package_fixtures import synthetic_tables

    tables = synthetic_tables(5, seed=3, states=(6, 36))
    tables["household"]["county_fips"] = tables["household"]["county_fips"].astype(str)
    write_dataset(tmp_path / "f.h5", tables, 2024)
    full, _ = read_dataset(tmp_path / "f.h5")
    got = read_columns(tmp_path / "f.h5", ["state_fips", "county_fips"])
    for name in got:
        np.testing.assert_array_equal(got[name], full["household"][name].to_numpy())
    with pytest.raises(Exception, match="no variable /nope"):
        read_columns(tmp_path / "f.h5", ["nope"])


def test_plan_steps_groups_consecutive_items_of_enough_work():
    sizes = [6000] * 7
    assert vsteps.plan_steps(sizes, 100_000) == [list(range(7))]  # less than one step's worth
    steps = vsteps.plan_steps(sizes, 20_000)
    assert len(steps) == 2 and sum(steps, []) == list(range(7))
    assert vsteps.plan_steps(sizes, 6000) == [[i] for i in range(7)]  # at most one per item
    steps = vsteps.plan_steps([1000, 9000, 9000, 9000], 9000)
    assert sum(steps, []) == [0, 1, 2, 3] and all(steps)
    with pytest.raises(val.ValidationError):
        vsteps.plan_steps([], 10)
    steps = vsteps.plan_steps(sizes, 100_000, min_steps=3)  # policyengine-us preloaded
    assert len(steps) == 3 and sum(steps, []) == list(range(7))


def test_the_whole_build_plans_with_the_validation_steps_inside_one_run():
    """The build's one run (every asset, the area partitions as a range) has an execution plan
    with validation_report's steps wired to the upstream steps of the same run (a fan-in of
    graph inputs could not be planned: "multiple levels of MultiStepInputSource")."""
    import dagster as dg
    from dagster._core.execution.api import create_execution_plan

    from definitions import defs
    from jobs import ALL_AREAS_TAGS

    node = defs.resolve_asset_graph().get(dg.AssetKey("validation_report"))
    graph = node.assets_def.node_def
    assert {n.name for n in graph.nodes_in_topological_order} == {
        "plan_validation", "simulate_groups", "simulate_national", "finish_validation"}
    assert graph.nodes_in_topological_order[-1].name == "finish_validation"
    assert graph.dependency_structure.is_dynamic_mapped("simulate_groups")
    assert graph.node_named("simulate_groups").definition.retry_policy.max_retries >= 1
    for n in graph.nodes_in_topological_order:  # nothing through the pickling IO manager
        assert all(o.dagster_type.is_nothing for o in n.definition.output_defs), n.name
    plan = create_execution_plan(defs.resolve_job_def("build_all"), tags=ALL_AREAS_TAGS)
    keys = plan.step_keys_to_execute
    assert {"validation_report.plan_validation", "validation_report.simulate_groups[?]",
            "validation_report.simulate_national",
            "validation_report.finish_validation"} <= set(keys)
    # the national file is simulated as soon as it exists, beside the area files' steps
    assert plan.get_step_by_key("validation_report.simulate_national"
                                ).get_execution_dependency_keys() == {"national_dataset"}
    finish = plan.get_step_by_key("validation_report.finish_validation")
    assert finish.step_input_named("national").source.step_output_handle.step_key == \
        "validation_report.simulate_national"
    assert "validation_report.simulate_groups[?]" in finish.get_all_dependency_keys()
    deps = plan.get_step_by_key("validation_report.plan_validation").get_execution_dependency_keys()
    assert {"area_datasets", "national_dataset", "regional_weights"} <= deps


def test_a_file_above_the_simulation_bound_is_simulated_in_runs_of_households(
        setup, monkeypatch, tmp_path):
    """Memory bound (issue 19): a group holding more households than
    ``max_households_per_simulation`` - a full-preset state file alone - is simulated in runs
    of consecutive households whose totals add up to the whole file's: the same report (to
    rounding: the sums are taken in another order), and no simulation above the bound."""
    tables, base, geo, w = setup
    w2 = asm.check_weights(w, geo)
    targets, matrix = _fake_package(base, geo, tables)
    keys = ["state-CA", "state-NY", "district-CA-12", "city-NYC"]
    builds = [asm.build_area_tables(base, geo, w2, parse_area_key(k), [SNAP]) for k in keys]
    national = asm.build_area_tables(base, geo, w2, None, [SNAP])
    keys, kinds = keys + ["national-US"], [parse_area_key(k).kind for k in keys] + ["national"]
    all_tables = [b.tables for b in builds] + [national.tables]
    cells = [(b.clone, b.record) for b in builds + [national]]
    area_set = val.AreaSet(keys, kinds, all_tables, cells, [0] * len(keys))
    sizes = []

    def recording_simulate(stacked, variables, year, log=None):
        sizes.append(len(stacked.tables["household"]))
        return _fake_simulate(stacked, variables, year, log)

    monkeypatch.setattr(val, "simulate_areas", recording_simulate)
    whole = val.validate_areas(area_set, targets, matrix, [w], geo.n_records, 2024)
    largest = max(len(t["household"]) for t in all_tables)
    assert max(sizes) >= largest  # the whole path simulates the largest file in one piece
    bound = max(2, largest // 3)
    sizes.clear()
    messages = []
    split = val.validate_areas(area_set, targets, matrix, [w], geo.n_records, 2024,
                               max_households_per_simulation=bound, log=messages.append)
    assert max(sizes) <= bound and len(sizes) > len(keys)
    assert sum(sizes) == sum(len(t["household"]) for t in all_tables)  # each household once
    pd.testing.assert_frame_equal(split, whole, check_exact=False, rtol=1e-12, atol=1e-6)
    assert split["consistent"].all()
    # the bound travels with the saved plan to the steps
    plan = val.plan_validation(area_set, targets, max_households_per_simulation=bound)
    assert plan.max_households == bound
    vsteps.save_plan(plan, keys, kinds, [[0]], tmp_path / "plan.npz")
    assert vsteps.load_plan(tmp_path / "plan.npz")[0].max_households == bound
    with pytest.raises(val.ValidationError, match="max_households"):
        val._household_batches(all_tables, 0)
