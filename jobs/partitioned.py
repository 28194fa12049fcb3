"""Run a selection of the graph in one run.

When the selection holds the 488-key area asset, the run covers the whole partition range (the
area assets take ``context.partition_keys`` and build them together, loading the base data once).

By default the run executes in this process (``dg.materialize``). With ``executor`` (or
``AREACAL_EXECUTOR`` set: ``multiprocess``, ``dask``, ``k8s``) it runs the project's
``definitions`` module, reconstructed by the chosen executor's step processes or workers
(``dg.execute_job``), with the executor of that profile (``jobs/executors.py``).
"""
from __future__ import annotations

import os
from pathlib import Path

import dagster as dg
from dagster._core.storage.tags import (
    ASSET_PARTITION_RANGE_END_TAG,
    ASSET_PARTITION_RANGE_START_TAG,
)


def split_selection(defs: dg.Definitions, selection: str = "*"):
    graph = defs.resolve_asset_graph()
    keys = dg.AssetSelection.from_string(selection).resolve(graph)
    unpartitioned, partitioned = [], []
    for key in sorted(keys, key=lambda k: k.to_user_string()):
        node = graph.get(key)
        if not node.is_executable:
            continue
        (partitioned if node.partitions_def is not None else unpartitioned).append(key)
    return unpartitioned, partitioned


REPO = Path(__file__).resolve().parents[1]
IMPLICIT_ASSET_JOB = "__ASSET_JOB"  # the job of every asset, which Definitions builds


def build_executor_name(executor: str | None = None) -> str:
    """``executor``, else ``AREACAL_EXECUTOR`` when set, else ``in_process``."""
    return executor or os.environ.get("AREACAL_EXECUTOR") or "in_process"


def materialize_graph(defs: dg.Definitions, instance: dg.DagsterInstance,
                      selection: str = "*", partition_range: tuple[str, str] | None = None,
                      raise_on_error: bool = False, run_config: dict | None = None,
                      executor: str | None = None) -> bool:
    """Materialize ``selection`` (with its checks); returns True when every step passed and
    every check passed or only warns (severity WARN: a diagnostic, never a gate).

    ``executor`` other than ``in_process`` runs ``definitions.defs`` (whose executor is the
    ``AREACAL_EXECUTOR`` profile, so that variable must name the same one) out of process."""
    unpartitioned, partitioned = split_selection(defs, selection)
    # the checks are separate definitions: without them a build would evaluate none and the
    # release gate would find every blocking check "never evaluated"
    assets = list(defs.assets or []) + list(defs.asset_checks or [])
    resources = defs.resources or {}
    tags = None
    if partitioned:
        # one run over the whole partition range: unpartitioned assets downstream of the areas
        # (national_dataset, validation_report) then run after the area files exist
        graph = defs.resolve_asset_graph()
        keys = graph.get(partitioned[0]).partitions_def.get_partition_keys()
        start, end = partition_range or (keys[0], keys[-1])
        tags = {ASSET_PARTITION_RANGE_START_TAG: start, ASSET_PARTITION_RANGE_END_TAG: end}
    name = build_executor_name(executor)
    if name == "in_process":
        result = dg.materialize(assets, selection=unpartitioned + partitioned,
                                instance=instance, resources=resources,
                                raise_on_error=raise_on_error, tags=tags, run_config=run_config)
        return result.success and _checks_hold(result.get_asset_check_evaluations())
    return _execute_out_of_process(name, instance, unpartitioned + partitioned, tags,
                                   run_config, raise_on_error)


def _execute_out_of_process(name, instance, keys, tags, run_config, raise_on_error) -> bool:
    """One run of the implicit asset job of ``definitions.defs`` over ``keys`` (and their
    checks), executed by the ``name`` executor profile."""
    from dagster._core.definitions.reconstruct import ReconstructableRepository

    from jobs.executors import executor_profile

    if executor_profile() != name:
        raise ValueError(f"executor {name!r} needs AREACAL_EXECUTOR={name} (the step processes "
                         "rebuild definitions.defs from the environment)")
    if not instance.is_persistent:
        raise ValueError(f"the {name} executor needs a persistent Dagster instance (DAGSTER_HOME)")
    repo = ReconstructableRepository.for_module("definitions", "defs",
                                                working_directory=str(REPO))
    job = repo.get_reconstructable_job(IMPLICIT_ASSET_JOB)
    with dg.execute_job(job, instance, run_config=run_config, tags=tags,
                        raise_on_error=raise_on_error, asset_selection=list(keys)) as result:
        evaluations = [e.event_specific_data for e in result.all_events
                       if e.event_type_value == "ASSET_CHECK_EVALUATION"]
        return result.success and _checks_hold(evaluations)


def reexecute_from_failure(instance: dg.DagsterInstance, run_id: str | None = None,
                           module: str = "definitions") -> tuple[str, bool]:
    """Re-execute a failed run from failure (what the UI's "Re-execute from failure" does): a new
    run of the same job and selection that runs only the steps that failed or did not run, with
    the executor of the module's ``defs`` (the ``AREACAL_EXECUTOR`` profile for
    ``definitions``); the completed steps' artifacts are reused.

    ``run_id``: the failed run, default the latest failed one. Returns (the new run's id,
    success: every step passed and every check passed or only warns). Raises ``ValueError``
    when there is no failed run, or when the run is not a run of the module's ``defs`` (a run of
    ``materialize()``, the in-process profile, has no job to reconstruct)."""
    from dagster._core.definitions.reconstruct import ReconstructableRepository

    if run_id is None:
        failed = instance.get_runs(filters=dg.RunsFilter(statuses=[dg.DagsterRunStatus.FAILURE]),
                                   limit=1)
        if not failed:
            raise ValueError("no failed run to re-execute in this Dagster instance")
        run_id = failed[0].run_id
    run = instance.get_run_by_id(run_id)
    if run is None:
        raise ValueError(f"run {run_id} is not in this Dagster instance")
    if run.status != dg.DagsterRunStatus.FAILURE:
        raise ValueError(f"run {run_id} is {run.status.value}, not FAILURE")
    repo = ReconstructableRepository.for_module(module, "defs", working_directory=str(REPO))
    if run.job_name not in repo.get_definition().job_names:
        raise ValueError(f"run {run_id} ran job {run.job_name!r}, which {module}.defs does not "
                         "define (a run of materialize() cannot be re-executed from failure)")
    options = dg.ReexecutionOptions.from_failure(run_id, instance)
    with dg.execute_job(repo.get_reconstructable_job(run.job_name), instance,
                        reexecution_options=options, raise_on_error=False) as result:
        evaluations = [e.event_specific_data for e in result.all_events
                       if e.event_type_value == "ASSET_CHECK_EVALUATION"]
        return result.run_id, result.success and _checks_hold(evaluations)


def _checks_hold(evaluations) -> bool:
    """Every check passed, or failed with severity WARN."""
    return all(e.passed or e.severity == dg.AssetCheckSeverity.WARN for e in evaluations)
