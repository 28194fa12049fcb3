"""The state simulations as steps (calibration_core.state_chunks): grouping chunks into steps
(fast), the plan and step files (fast), and - marked slow - each step's chunks equal to what
``simulate_states`` (one process, its own chunk loop) computes for the same households, and the
collected file byte-identical to its file."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from calibration_core import simulation as simu
from calibration_core.aca_takeup import StateTakeUp
from calibration_core import state_chunks as sc
from calibration_core.h5_dataset import write_dataset
from tests.package_fixtures import STATE_COUNTY, synthetic_tables, synthetic_targets

# --------------------------------------------------------------------------------------------
# fast


def test_plan_steps_groups_consecutive_chunks_of_enough_work():
    # 7 chunks of 6,000 household copies: 42,000 in all
    sizes = [6000] * 7
    assert sc.plan_steps(sizes, 100_000) == [list(range(7))]  # less than one step's worth
    steps = sc.plan_steps(sizes, 20_000)
    assert len(steps) == 2 and sum(steps, []) == list(range(7))
    assert all(sum(sizes[i] for i in s) >= 18_000 for s in steps)
    steps = sc.plan_steps(sizes, 6000)
    assert steps == [[i] for i in range(7)]  # never more steps than chunks
    # a small first chunk (the traced one) does not make an empty step
    steps = sc.plan_steps([1000, 9000, 9000, 9000], 9000)
    assert sum(steps, []) == [0, 1, 2, 3] and all(steps)
    with pytest.raises(simu.SimulationError):
        sc.plan_steps([], 10)
    with pytest.raises(simu.SimulationError):
        sc.plan_steps([10], 0)
    # steps whose processes start with policyengine-us built: at least one per worker
    steps = sc.plan_steps(sizes, 100_000, min_steps=2)
    assert len(steps) == 2 and sum(steps, []) == list(range(7))
    assert sc.plan_steps([5000], 100_000, min_steps=2) == [[0]]  # never more than the chunks
    with pytest.raises(simu.SimulationError, match="steps at least"):
        sc.plan_steps(sizes, 100, min_steps=0)


def _plan() -> sc.StatePlan:
    classes = simu.CountyClasses(np.array([1, 2, 2], dtype=np.int64),
                                 np.array(["01001", "02013", "02020"]),
                                 np.array(["01001", "02013", "02020"]),
                                 np.array([0, 1, 2], dtype=np.int64), ["county_reader"])
    return sc.StatePlan(classes, [[0], [1, 2]], [[0], [1]], ["snap", "age"],
                        [("spm_unit", "takes_up_snap_if_eligible")], [1, 2], 2, 5,
                        probe_figures={"probe_copies": 3}, planned_at=12.5)


def test_plan_and_step_files_round_trip_without_pickle(tmp_path):
    plan = _plan()
    sc.save_plan(plan, tmp_path / "plan.npz")
    back = sc.load_plan(tmp_path / "plan.npz")
    assert back.chunks == plan.chunks and back.steps == plan.steps
    assert back.forced == plan.forced and back.probe_figures == plan.probe_figures
    np.testing.assert_array_equal(back.classes.copy_county, plan.classes.copy_county)
    assert back.classes.readers == ["county_reader"]
    assert back.chunk_task("x.h5", 1) == ("x.h5", [2, 2], ["snap", "age"], ["02013", "02020"],
                                          2024, [("spm_unit", "takes_up_snap_if_eligible")],
                                          False, True)
    # county classes beyond a state's default copy compute the county-dependent variables
    # only; a per-state take-up input rides in the plan as itself
    aca = StateTakeUp("takes_up_aca_if_eligible", "tax_unit", ((1, 0.5), (2, 0.25)))
    plan.chunk_variables = [["snap", "age"], ["snap"]]
    plan.forced = plan.forced + [aca]
    plan.state_takeup = [aca]
    sc.save_plan(plan, tmp_path / "plan2.npz")
    back = sc.load_plan(tmp_path / "plan2.npz")
    assert back.chunk_variables == [["snap", "age"], ["snap"]] and back.state_takeup == [aca]
    assert back.chunk_task("x.h5", 1) == ("x.h5", [2, 2], ["snap"], ["02013", "02020"], 2024,
                                          [("spm_unit", "takes_up_snap_if_eligible"), aca],
                                          False, True)
    values = {"snap": np.arange(4, dtype=np.float32).reshape(2, 2),
              "age": np.array([["a", "b"], ["c", "d"]])}
    trace = {"dependence": {"snap": ["*"], "age": []}, "entity": {"snap": "spm_unit"},
             "routed_formulas": 3, "unroutable": []}
    sc.save_step([([2, 2], values, 1.5, 0.0, 7, trace, 2.5)], [1], tmp_path / "step.npz")
    with np.load(tmp_path / "step.npz", allow_pickle=False) as z:  # no object arrays
        assert sorted(z.files) == ["c1__age", "c1__snap", "meta_json"]
    (states, got, seconds, start, pid, got_trace, cpu), = sc.load_step(
        tmp_path / "step.npz").values()
    assert states == [2, 2] and seconds == 1.5 and pid == 7 and got_trace == trace
    assert cpu == 2.5  # the chunk's CPU seconds ride along (metadata chunk_cpu_seconds)
    for v in values:
        assert got[v].dtype == values[v].dtype
        np.testing.assert_array_equal(got[v], values[v])


def test_collect_refuses_steps_that_do_not_match_the_plan(tmp_path):
    plan = _plan()
    values = {"snap": np.zeros((1, 2)), "age": np.zeros((1, 2))}
    sc.save_step([([1], values, 1.0, 0.0, 1, None)], [0], tmp_path / "s0.npz")
    with pytest.raises(simu.SimulationError, match="step files"):
        sc.collect_steps(plan, "unused.h5", [tmp_path / "s0.npz"])
    with pytest.raises(simu.SimulationError, match="chunks"):
        sc.collect_steps(plan, "unused.h5", [tmp_path / "s0.npz", tmp_path / "s0.npz"])


# --------------------------------------------------------------------------------------------
# slow: policyengine-us

STATES = (2, 36, 48, 6)  # Alaska, New York, Texas, California
N_HOUSEHOLDS = 12


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    tables = synthetic_tables(N_HOUSEHOLDS, seed=11, states=(6, 17))
    path = tmp_path_factory.mktemp("chunks") / "small.h5"
    write_dataset(path, tables, 2024)
    county = pd.DataFrame([{"district_geoid": s * 100 + 1, "county_fips": c, "probability": 1.0}
                           for s, c in STATE_COUNTY.items()])
    targets, constraints = synthetic_targets()
    return path, county, simu.needed_variables(targets, constraints)


@pytest.mark.slow
def test_each_step_equals_simulate_states_for_the_same_households(inputs, tmp_path):
    path, county, variables = inputs
    per_chunk = 2 * N_HOUSEHOLDS  # two states per stacked chunk
    # today's way: simulate_states runs its chunks itself (in this process)
    whole = simu.simulate_states(path, variables, county, states=STATES,
                                 max_households_per_chunk=per_chunk, workers=1)
    # as Dagster runs it: a plan, one step per chunk (each in its own call), a collect
    plan = sc.plan_state_simulations(path, variables, county, states=STATES,
                                     max_households_per_chunk=per_chunk,
                                     households_per_step=per_chunk, workers=1)
    # the same chunks (state copies), the same traced first one
    assert [[int(plan.classes.copy_state[k]) for k in c] for c in plan.chunks] == \
        whole.metadata["chunks"]
    assert len(plan.steps) == 2 == len(plan.chunks)
    sc.save_plan(plan, tmp_path / "plan.npz")
    plan = sc.load_plan(tmp_path / "plan.npz")
    paths = []
    for step in range(len(plan.steps)):
        paths.append(tmp_path / f"step_{step}.npz")
        figures = sc.run_step(plan, step, path, paths[-1])
        assert figures["copies"] == 2 and figures["household_copies"] == 2 * N_HOUSEHOLDS
        # one step's chunk holds exactly simulate_states' values for those state copies
        (states, values, _, _, _, trace, *_), = sc.load_step(paths[-1]).values()
        assert (trace is not None) == (step == 0)  # the first chunk runs traced
        rows = [simu.STATE_ORDER.index(s) for s in states]
        for v in variables:
            want = (np.broadcast_to(whole.invariant[v], values[v].shape)
                    if v in whole.invariant else whole.by_state[v][rows])
            np.testing.assert_array_equal(values[v], want, err_msg=f"{v} in {states}")
    collected = sc.collect_steps(plan, path, paths)
    assert collected.dependence == whole.dependence
    # the assembled file is the one simulate_states' result gives, byte for byte
    simu.save_state_simulations(whole, tmp_path / "whole.npz")
    simu.save_state_simulations(collected, tmp_path / "steps.npz")
    assert (tmp_path / "whole.npz").read_bytes() == (tmp_path / "steps.npz").read_bytes()


def test_the_asset_is_a_graph_of_dynamic_chunk_steps_that_retry():
    """``state_simulations`` keeps its key and is plan -> mapped chunk steps -> collect, the
    chunk step with a retry policy (a failed chunk retries alone)."""
    import dagster as dg

    from definitions import defs

    node = defs.resolve_asset_graph().get(dg.AssetKey("state_simulations"))
    graph = node.assets_def.node_def
    assert isinstance(graph, dg.GraphDefinition)
    order = [n.name for n in graph.nodes_in_topological_order]
    assert order == ["plan_chunks", "simulate_chunks", "collect_chunks"]
    deps = graph.dependency_structure
    assert deps.is_dynamic_mapped("simulate_chunks") and not deps.is_dynamic_mapped(
        "collect_chunks")
    assert graph.node_named("simulate_chunks").definition.retry_policy.max_retries >= 1
    # the ops pass nothing through Dagster's (pickling) IO manager
    for n in graph.nodes_in_topological_order:
        assert all(o.dagster_type.is_nothing for o in n.definition.output_defs), n.name
    assert {k.to_user_string() for k in node.child_keys} >= {"geography_assignment",
                                                             "calibration_package"}


def test_the_whole_build_plans_with_the_graph_assets_inside_one_run():
    """The build's one run (every asset, the area partitions as a range) has an execution plan
    with the graph assets' steps wired to upstream steps of the same run (a fan-in of their
    graph inputs could not be planned: "multiple levels of MultiStepInputSource")."""
    from dagster._core.execution.api import create_execution_plan

    from definitions import defs
    from jobs import ALL_AREAS_TAGS

    plan = create_execution_plan(defs.resolve_job_def("build_all"), tags=ALL_AREAS_TAGS)
    keys = plan.step_keys_to_execute
    for graph_steps in (["state_simulations.plan_chunks", "state_simulations.simulate_chunks[?]",
                         "state_simulations.collect_chunks"],
                        ["validation_report.plan_validation",
                         "validation_report.simulate_groups[?]",
                         "validation_report.finish_validation"]):
        assert all(k in keys for k in graph_steps), graph_steps
    def deps(key):
        return plan.get_step_by_key(key).get_execution_dependency_keys()

    assert {"stratified_microdata", "targets_db", "raw_public_inputs"} <= deps(
        "state_simulations.plan_chunks")
    assert {"area_datasets", "national_dataset", "regional_weights"} <= deps(
        "validation_report.plan_validation")


@pytest.mark.slow
def test_steps_keep_the_county_classes_and_equal_simulate_states(tmp_path):
    """With a county probe (two Maryland counties that differ for SNAP) and a per-state take-up
    input: the plan holds both classes, the second one computing only the county-dependent
    variables, and the steps' file is simulate_states' byte for byte."""
    from calibration_core import aca_takeup as at
    from tests.test_county_geography import (BALTIMORE_CITY, MD, MONTGOMERY,
                                             _maryland_tables)

    path = tmp_path / "md.h5"
    write_dataset(path, _maryland_tables(), 2024)
    county = pd.DataFrame({"district_geoid": [2407, 2408],
                           "county_fips": [BALTIMORE_CITY, MONTGOMERY],
                           "probability": [1.0, 1.0]})
    population = pd.Series({2407: 700_000.0, 2408: 770_000.0})
    takeup = at.StateTakeUp(at.INPUT, at.ENTITY,
                            tuple((f, 0.5) for f in sorted(simu.STATE_ORDER)))
    kwargs = dict(states=(MD,), n_probes=16, state_takeup=[takeup])
    variables = ["snap", "adjusted_gross_income"]
    whole = simu.simulate_states(path, variables, county, population, workers=1, **kwargs)
    plan = sc.plan_state_simulations(path, variables, county, population, workers=1,
                                     households_per_step=1, **kwargs)
    assert plan.classes.n_copies == whole.classes.n_copies and len(plan.chunks) == 2
    assert len(plan.steps) == 2  # the default copy and the second class in their own steps
    assert set(plan.chunk_variables[0]) == set(whole.variables)
    assert plan.chunk_variables[1] == whole.metadata["county_dependent"]
    assert "adjusted_gross_income" not in plan.chunk_variables[1]
    sc.save_plan(plan, tmp_path / "plan.npz")
    plan = sc.load_plan(tmp_path / "plan.npz")
    assert plan.state_takeup == [takeup] and takeup in plan.forced
    paths = [tmp_path / f"step_{s}.npz" for s in range(len(plan.steps))]
    for s, p in enumerate(paths):
        sc.run_step(plan, s, path, p)
    collected = sc.collect_steps(plan, path, paths)
    assert collected.metadata["county_classes"]["MD"] == 2
    assert collected.metadata["takeup_state_rates"] == whole.metadata["takeup_state_rates"]
    simu.save_state_simulations(whole, tmp_path / "whole.npz")
    simu.save_state_simulations(collected, tmp_path / "steps.npz")
    assert (tmp_path / "whole.npz").read_bytes() == (tmp_path / "steps.npz").read_bytes()


def test_chunk_size_comes_from_the_preset_unless_run_config_sets_it():
    """The full preset bounds each stacked state simulation at 12,000 households (26,000 took
    8.9 GB per chunk process there); the others keep the simulation default."""
    from calibration_core.presets import PRESETS

    assert PRESETS["demo"].state_chunk_households == simu.DEFAULT_CHUNK_HOUSEHOLDS
    assert PRESETS["tiny"].state_chunk_households == simu.DEFAULT_CHUNK_HOUSEHOLDS
    assert PRESETS["full"].state_chunk_households == 12_000
    from assets.state_simulations import StateSimulationsConfig

    assert StateSimulationsConfig().max_households_per_chunk is None  # the preset's
