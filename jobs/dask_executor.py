"""dagster-dask's executor, with its step arguments passed to Dask as one opaque object.

dask 2025+ (``dask._task_spec.parse_input``) walks every tuple, list and dict given to
``Client.submit`` looking for futures. Dagster's ``KnownExecutionState`` holds ``@record``
objects that are named tuples refusing iteration (``RunOpConcurrency`` as soon as the graph has
a concurrency pool, as the weight fits do), so ``dagster_dask.dask_executor`` 0.29.27 fails with
"Iteration is not allowed on `@record` RunOpConcurrency" before any step runs. This executor is
the same (configuration, cluster types, one Dask task per step, dependencies as futures,
``dagster-dask/resource_requirements`` tags) but hands the step's arguments over inside
:class:`StepArguments`, which Dask passes through untouched.
"""
from __future__ import annotations

import dask.distributed
import dagster as dg
from dagster import _check as check
from dagster._core.definitions.executor_definition import executor
from dagster._core.errors import raise_execution_interrupts
from dagster._core.events import DagsterEvent
from dagster._utils import iterate_with_context
from dagster_dask.executor import (DaskExecutor, dask_executor, get_dask_resource_requirements,
                                   query_on_dask_worker)


class StepArguments:
    """The arguments of ``dagster_dask.executor.query_on_dask_worker``, opaque to Dask."""

    def __init__(self, *args):
        self.args = args


def run_step(dependencies, arguments: StepArguments):
    """Runs in a Dask worker: one step of the run (``dependencies`` only sequence the tasks)."""
    return query_on_dask_worker(dependencies, *arguments.args)


class OpaqueArgsDaskExecutor(DaskExecutor):
    def execute(self, plan_context, execution_plan):
        if not plan_context.instance.is_persistent:
            raise dg.DagsterInvariantViolationError(
                "Dask execution requires a persistent DagsterInstance")
        cluster = self._cluster(plan_context.job_name)
        with dask.distributed.Client(cluster) as client:
            futures, by_step = [], {}
            for level in execution_plan.get_steps_to_execute_by_level():
                for step in level:
                    dependencies = [by_step[key] for step_input in step.step_inputs
                                    for key in step_input.dependency_keys]
                    arguments = StepArguments(
                        plan_context.reconstructable_job, plan_context.dagster_run,
                        plan_context.run_config, [step.key], plan_context.instance.get_ref(),
                        execution_plan.known_state)
                    future = client.submit(run_step, dependencies, arguments,
                                           key=f"{plan_context.job_name}.{step.key}",
                                           resources=get_dask_resource_requirements(step.tags))
                    futures.append(future)
                    by_step[step.key] = future
            completed = dask.distributed.as_completed(futures, with_results=True)
            for _, result in iterate_with_context(raise_execution_interrupts, completed):
                for event in result:
                    yield check.inst(event, DagsterEvent)

    def _cluster(self, job_name: str):
        if self.cluster_type == "existing":
            return self.cluster_configuration["address"]
        if self.cluster_type == "local":
            from dask.distributed import LocalCluster

            return LocalCluster(**self.build_dict(job_name))
        # yarn, ssh, pbs, slurm, kube ...: as dagster-dask builds them
        raise ValueError(f"cluster type {self.cluster_type!r}: use 'existing' (a scheduler "
                         "started by that system) or 'local'")


@executor(name="dask", config_schema=dask_executor.config_schema,
          requirements=dg.multiple_process_executor_requirements())
def opaque_args_dask_executor(init_context):
    """dagster-dask's ``dask_executor``, robust to dask's argument parsing (module docstring)."""
    ((cluster_type, cluster_configuration),) = init_context.executor_config["cluster"].items()
    return OpaqueArgsDaskExecutor(cluster_type, cluster_configuration)
