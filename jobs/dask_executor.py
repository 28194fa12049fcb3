"""dagster-dask's executor, driven step by step so that dynamic outputs and retries work.

``dagster_dask.dask_executor`` 0.29.27 submits the whole execution plan to Dask up front, level
by level (``get_steps_to_execute_by_level``). That cannot run a graph with dynamic outputs (the
mapped steps exist only once their upstream step has run: dagster#9785, "Dynamic out cannot
run on the dask"), its retries are off (``RetryMode.DISABLED``), and its task keys
``f"{job}.{step}"`` collide between runs of one job on a shared cluster (dagster#21418). The
state simulations' chunk steps are dynamic outputs (``assets/state_simulations.py``).

This executor keeps dagster-dask's configuration (its ``cluster`` schema: ``existing`` or
``local``), one Dask task per step and the ``dagster-dask/resource_requirements`` op tag, but
orchestrates the way Dagster's multiprocess executor does: an ``ActiveExecution`` hands out the
steps that are ready (mapped steps included, once their dynamic outputs are known), each is
submitted to the cluster as it becomes ready, and every finished task's events update the
execution. A failed step with a ``RetryPolicy`` is submitted again (retries are enabled by
default, as in the multiprocess executor); task keys carry the run id and the attempt.

The step's arguments go to Dask inside :class:`StepArguments`: dask 2025+
(``dask._task_spec.parse_input``) walks every tuple, list and dict given to ``Client.submit``,
and Dagster's ``KnownExecutionState`` holds ``@record`` named tuples that refuse iteration.
"""
from __future__ import annotations

import sys

import dask.distributed
import dagster as dg
from dagster import _check as check
from dagster._core.definitions.executor_definition import executor
from dagster._core.events import DagsterEvent, EngineEventData
from dagster._core.execution.api import create_execution_plan, execute_plan
from dagster._core.execution.plan.active import ActiveExecution
from dagster._core.execution.plan.instance_concurrency_context import InstanceConcurrencyContext
from dagster._core.execution.retries import RetryMode, get_retries_config
from dagster._core.errors import DagsterExecutionInterruptedError
from dagster._utils.error import serializable_error_info_from_exc_info
from dagster_dask.executor import DaskExecutor, dask_executor, get_dask_resource_requirements

POLL_SECONDS = 0.5  # how long to wait for a finished task before looking for new steps


class StepArguments:
    """The arguments of one step's execution in a worker, opaque to Dask."""

    def __init__(self, *args):
        self.args = args


def run_step(arguments: StepArguments):
    """Runs in a Dask worker: one step of the run; returns its events."""
    recon_job, dagster_run, run_config, step_key, instance_ref, known_state, retry_mode = (
        arguments.args)
    with dg.DagsterInstance.from_ref(instance_ref) as instance:
        subset_job = recon_job.get_subset(op_selection=dagster_run.resolved_op_selection)
        plan = create_execution_plan(subset_job, run_config=run_config,
                                     step_keys_to_execute=[step_key], known_state=known_state)
        return execute_plan(plan, subset_job, instance, dagster_run, run_config=run_config,
                            retry_mode=retry_mode)


class OpaqueArgsDaskExecutor(DaskExecutor):
    def __init__(self, cluster_type, cluster_configuration, retries: RetryMode):
        super().__init__(cluster_type, cluster_configuration)
        self._retries = retries

    @property
    def retries(self) -> RetryMode:
        return self._retries

    def execute(self, plan_context, execution_plan):
        if not plan_context.instance.is_persistent:
            raise dg.DagsterInvariantViolationError(
                "Dask execution requires a persistent DagsterInstance")
        run_id = plan_context.dagster_run.run_id
        cluster = self._cluster(plan_context.job_name)
        yield DagsterEvent.engine_event(
            plan_context, f"Executing steps on Dask ({self.cluster_type} cluster)",
            EngineEventData())
        with dask.distributed.Client(cluster) as client, \
                InstanceConcurrencyContext(plan_context.instance,
                                           plan_context.dagster_run) as concurrency, \
                ActiveExecution(execution_plan, retry_mode=self.retries,
                                instance_concurrency_context=concurrency) as active:
            running: dict[dask.distributed.Future, str] = {}
            try:
                while not active.is_complete or running:
                    if active.check_for_interrupts():
                        for future in running:
                            future.cancel()
                        active.mark_interrupted()
                        raise DagsterExecutionInterruptedError()
                    for step in active.get_steps_to_execute():
                        known = active.get_known_state()
                        attempt = known.get_retry_state().get_attempt_count(step.key)
                        arguments = StepArguments(
                            plan_context.reconstructable_job, plan_context.dagster_run,
                            plan_context.run_config, step.key, plan_context.instance.get_ref(),
                            known, self.retries.for_inner_plan())
                        future = client.submit(
                            run_step, arguments, key=f"{run_id}.{step.key}.{attempt}",
                            pure=False, resources=get_dask_resource_requirements(step.tags))
                        running[future] = step.key
                    yield from active.concurrency_event_iterator(plan_context)
                    if running:
                        try:
                            done = dask.distributed.wait(list(running), timeout=POLL_SECONDS,
                                                         return_when="FIRST_COMPLETED").done
                        except dask.distributed.TimeoutError:
                            done = set()
                        for future in done:
                            key = running.pop(future)
                            yield from self._finished(plan_context, active, future, key)
                    else:
                        active.sleep_til_ready()
                    yield from active.plan_events_iterator(plan_context)
            finally:
                for future in running:
                    future.cancel()

    def _finished(self, plan_context, active, future, key):
        """The events of a finished task; a task that raised (the worker died, or the step
        could not start) fails the step, or schedules its retry under its ``RetryPolicy``."""
        try:
            events = future.result()
        except Exception:  # noqa: BLE001 - reported as the step's failure
            error = serializable_error_info_from_exc_info(sys.exc_info())
            step_context = plan_context.for_step(active.get_step_by_key(key))
            events = [self.log_failure_or_retry_event_after_error(
                step_context, error, active.get_known_state())]
        for event in events:
            yield check.inst(event, DagsterEvent)
            active.handle_event(event)
        active.verify_complete(plan_context, key)

    def _cluster(self, job_name: str):
        if self.cluster_type == "existing":
            return self.cluster_configuration["address"]
        if self.cluster_type == "local":
            from dask.distributed import LocalCluster

            return LocalCluster(**self.build_dict(job_name))
        # yarn, ssh, pbs, slurm, kube ...: start the cluster with that system, pass its address
        raise ValueError(f"cluster type {self.cluster_type!r}: use 'existing' (a scheduler "
                         "started by that system) or 'local'")


@executor(name="dask",
          config_schema={**dask_executor.config_schema.config_type.fields,
                         "retries": get_retries_config()},
          requirements=dg.multiple_process_executor_requirements())
def opaque_args_dask_executor(init_context):
    """dagster-dask's ``dask_executor`` with dynamic outputs and retries (module docstring)."""
    config = init_context.executor_config
    ((cluster_type, cluster_configuration),) = config["cluster"].items()
    retries = RetryMode.from_config(config.get("retries", {"enabled": {}}))
    return OpaqueArgsDaskExecutor(cluster_type, cluster_configuration, retries)
