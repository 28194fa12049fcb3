"""Runs whose run-worker process died: mark them failed instead of leaving them ``STARTED``.

A run killed with ``kill -9`` (``python -m jobs.build_cli``, ``dagster asset materialize``) emits
no failure event; without the daemon's run monitoring (a ``dagster dev`` or daemon deployment)
nothing ever changes its status, so the UI shows it running forever and the release gate waits
on it. :func:`fail_orphaned_runs` is the daemon-free sweep: ``jobs.build_cli`` calls it before
each build and the ``orphaned_runs`` sensor every few minutes.

A run is orphaned when its last ``RUN_START`` event (``PIPELINE_START`` in storage) names a pid
that no longer runs here: no such process, a zombie, or a process that started after the event
(the pid was reused). Only runs of a local instance are judged (the default run launcher or
in-process runs: their workers ran on this host); runs still ``STARTING`` without a
``RUN_START`` event are left to run monitoring's start timeout.
"""
from __future__ import annotations

import socket
from dataclasses import dataclass

import dagster as dg

from calibration_core.process_lifetime import process_alive

LOCAL_LAUNCHERS = {"DefaultRunLauncher", "SyncInMemoryRunLauncher"}


@dataclass(frozen=True)
class OrphanedRun:
    run_id: str
    job_name: str
    pid: int
    started: float  # epoch seconds of the RUN_START event

    def describe(self) -> str:
        return f"run {self.run_id} ({self.job_name}): run-worker process {self.pid} is gone"


def run_worker(instance: dg.DagsterInstance, run_id: str) -> tuple[int, float] | None:
    """``(pid, timestamp)`` of the run's last ``RUN_START`` event, or None when it has none."""
    records = instance.get_records_for_run(
        run_id, of_type=dg.DagsterEventType.RUN_START, limit=1, ascending=False).records
    if not records:
        return None
    entry = records[0].event_log_entry
    pid = entry.dagster_event.pid if entry.dagster_event is not None else None
    if pid is None:
        return None
    return int(pid), float(entry.timestamp)


def find_orphaned_runs(instance: dg.DagsterInstance,
                       assume_local: bool | None = None) -> list[OrphanedRun]:
    """``STARTED``/``STARTING`` runs whose run-worker process (the pid of their ``RUN_START``
    event) is dead on this host. ``assume_local``: judge the runs as this host's (default: only
    when the instance launches runs locally, see :data:`LOCAL_LAUNCHERS`)."""
    if assume_local is None:
        assume_local = type(instance.run_launcher).__name__ in LOCAL_LAUNCHERS
    if not assume_local:
        return []
    runs = instance.get_runs(filters=dg.RunsFilter(
        statuses=[dg.DagsterRunStatus.STARTED, dg.DagsterRunStatus.STARTING]))
    orphans = []
    for run in runs:
        worker = run_worker(instance, run.run_id)
        if worker is None:
            continue
        pid, started = worker
        if not process_alive(pid, started_before=started):
            orphans.append(OrphanedRun(run.run_id, run.job_name, pid, started))
    return orphans


def fail_orphaned_runs(instance: dg.DagsterInstance,
                       assume_local: bool | None = None) -> list[OrphanedRun]:
    """Report every run of :func:`find_orphaned_runs` failed (``instance.report_run_failed``,
    message naming the dead pid); returns them."""
    orphans = find_orphaned_runs(instance, assume_local)
    host = socket.gethostname()
    for orphan in orphans:
        run = instance.get_run_by_id(orphan.run_id)
        if run is None or run.status not in (dg.DagsterRunStatus.STARTED,
                                             dg.DagsterRunStatus.STARTING):
            continue  # finished meanwhile
        instance.report_run_failed(
            run, f"Run worker process {orphan.pid} on {host} is no longer running (killed or "
                 "crashed without reporting an end); marked failed by the orphaned-run sweep.")
    return orphans
