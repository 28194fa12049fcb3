"""``orphaned_runs``: runs whose run-worker process died (``kill -9``, OOM) -> marked failed.

The daemon-free counterpart of the instance's run monitoring (``dagster.yaml.example``), which
only acts on runs it launched itself; see :mod:`jobs.orphans`. A run marked failed here then gets
its ``failure_report`` like any other failed run.
"""
import dagster as dg

from jobs.orphans import fail_orphaned_runs


@dg.sensor(
    name="orphaned_runs",
    minimum_interval_seconds=120,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Marks failed every STARTED/STARTING run whose run-worker process (the pid of its "
                "RUN_START event) no longer runs on this host.",
)
def orphaned_runs(context: dg.SensorEvaluationContext):
    marked = fail_orphaned_runs(context.instance)
    for orphan in marked:
        context.log.warning(f"marked failed: {orphan.describe()}")
    if not marked:
        return dg.SkipReason("no orphaned runs")
    return dg.SkipReason("marked failed: " + "; ".join(o.describe() for o in marked))
