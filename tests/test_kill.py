"""``kill -9`` of a build leaves nothing behind (issue 21, item 2).

* A real build process (its own session) runs a step that starts two pool workers through the
  state simulations' pool (``calibration_core.process_lifetime.worker_pool``); it is killed with
  SIGKILL mid-step; within seconds no process of its session may remain - neither the workers
  nor, under the multiprocess executor (``dagster asset materialize``), the step process - and
  the orphan sweep (``jobs.orphans``, run by ``jobs.build_cli`` and the ``orphaned_runs``
  sensor) marks the run FAILURE instead of leaving it STARTED.
* The orphan finder on a live pid, a dead pid and a reused pid; the sensor.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import dagster as dg
import pytest
from dagster._core.events import DagsterEvent
from dagster._core.events.log import EventLogEntry
from dagster._core.instance.ref import InstanceRef
from dagster._core.test_utils import create_run_for_test

from calibration_core.process_lifetime import die_with_parent, process_alive, process_start_time
from jobs.orphans import fail_orphaned_runs, find_orphaned_runs
from sensors.orphaned_runs import orphaned_runs

ROOT = Path(__file__).resolve().parents[1]
DAGSTER = Path(sys.executable).with_name("dagster")

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"),
                                reason="parent-death signal and /proc are Linux-only")


def _session_members(sid: int) -> dict[int, str]:
    """pid -> command line of every live (non-zombie) process in session ``sid``."""
    members = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        fields = stat[stat.rfind(")") + 2:].split()
        if int(fields[3]) == sid and fields[0] not in ("Z", "X"):
            members[int(entry)] = cmdline.strip()
    return members


def _wait_for(predicate, timeout: float, what: str, proc=None):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = predicate()
        if value:
            return value
        if proc is not None and proc.poll() is not None:
            out = proc.stdout.read() if proc.stdout else ""
            pytest.fail(f"build exited ({proc.returncode}) before {what}:\n{out[-3000:]}")
        time.sleep(0.2)
    return predicate()


@pytest.mark.parametrize("executor", ["in_process", "multiprocess", "forkserver"])
def test_kill_9_of_a_build_leaves_no_process_and_no_started_run(tmp_path, executor):
    home, markers = tmp_path / "dagster_home", tmp_path / "markers"
    home.mkdir()
    markers.mkdir()
    env = {**os.environ, "DAGSTER_HOME": str(home), "AREACAL_HOME": str(tmp_path / "store"),
           "AREACAL_KILL_MARKERS": str(markers),
           "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    if executor == "in_process":  # as jobs.build_cli runs a build
        command = [sys.executable, "-m", "tests.kill_fixture"]
    else:  # one process per step, as `dagster asset materialize` runs it
        command = [str(DAGSTER), "asset", "materialize", "-m", "tests.kill_fixture",
                   "--select", "sleeper"]
        if executor == "forkserver":  # steps forked by a fork server, not by the run process
            config = tmp_path / "forkserver.yaml"
            config.write_text("execution:\n  config:\n    multiprocess:\n      start_method:\n"
                              "        forkserver: {}\n")
            command += ["-c", str(config)]
    build = subprocess.Popen(command, cwd=ROOT, env=env, start_new_session=True,
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        workers = _wait_for(lambda: sorted(markers.glob("worker-*")) if len(
            list(markers.glob("worker-*"))) == 2 else None, 50, "both workers started", build)
        assert workers, f"workers not started; markers: {os.listdir(markers)}"
        step_marker = next(markers.glob("step-*"))
        step, step_parent = int(step_marker.name.split("-")[1]), int(step_marker.read_text())
        recorded = {step} | {int(p.name.split("-")[1]) for p in workers}
        if executor == "in_process":
            assert step == build.pid
        elif executor == "multiprocess":  # spawn: the run process is the step's parent
            assert step != build.pid and step_parent == build.pid
        else:  # the fork server is the step's parent
            assert step != build.pid and step_parent not in (build.pid, 1)
        assert all(process_alive(pid) for pid in recorded)

        os.kill(build.pid, signal.SIGKILL)
        build.wait(timeout=10)
        survivors = _wait_for(lambda: not _session_members(build.pid), 10, "")
        left = _session_members(build.pid)
        assert survivors and not left, f"processes survived the kill: {left}"
        assert not any(process_alive(pid) for pid in recorded)
        assert not list(markers.glob("finished-*"))
    finally:
        for pid in _session_members(build.pid):
            os.kill(pid, signal.SIGKILL)
        if build.poll() is None:
            build.kill()

    with dg.DagsterInstance.from_ref(InstanceRef.from_dir(str(home))) as instance:
        (run,) = instance.get_runs()
        assert run.status == dg.DagsterRunStatus.STARTED  # what a killed run looks like
        marked = fail_orphaned_runs(instance)
        assert [o.run_id for o in marked] == [run.run_id] and marked[0].pid == build.pid
        run = instance.get_run_by_id(run.run_id)
        assert run.status == dg.DagsterRunStatus.FAILURE
        failure = instance.get_records_for_run(
            run.run_id, of_type=dg.DagsterEventType.RUN_FAILURE).records
        assert str(build.pid) in failure[0].event_log_entry.dagster_event.message
        assert fail_orphaned_runs(instance) == []


# --------------------------------------------------------------------------------------------
# the orphan finder, the sensor and the helper


def _started_run(instance, pid: int, timestamp: float | None = None):
    run = create_run_for_test(instance, job_name="build_all",
                              status=dg.DagsterRunStatus.NOT_STARTED)
    event = DagsterEvent(dg.DagsterEventType.RUN_START.value, job_name="build_all",
                         message="Started execution of run.", pid=pid)
    instance.handle_new_event(EventLogEntry(
        error_info=None, level="DEBUG", user_message="", run_id=run.run_id,
        timestamp=time.time() if timestamp is None else timestamp, dagster_event=event))
    assert instance.get_run_by_id(run.run_id).status == dg.DagsterRunStatus.STARTED
    return run.run_id


def _dead_pid() -> int:
    child = subprocess.Popen(["true"])
    child.wait()
    return child.pid


def test_orphan_finder_marks_only_runs_whose_worker_is_gone():
    with dg.instance_for_test() as instance:
        live = _started_run(instance, os.getpid())
        dead_pid = _dead_pid()
        dead = _started_run(instance, dead_pid)
        # a live pid that started after the event: the run's worker is gone, its pid reused
        reused = _started_run(instance, os.getpid(), timestamp=process_start_time(os.getpid())
                              - 3600)
        starting = create_run_for_test(instance, job_name="build_all",
                                       status=dg.DagsterRunStatus.STARTING).run_id

        assert find_orphaned_runs(instance, assume_local=False) == []
        found = {o.run_id: o.pid for o in find_orphaned_runs(instance)}
        assert found == {dead: dead_pid, reused: os.getpid()}

        context = dg.build_sensor_context(instance=instance)
        result = orphaned_runs.evaluate_tick(context)
        assert not result.run_requests and dead in result.skip_message
        status = {r: instance.get_run_by_id(r).status for r in (live, dead, reused, starting)}
        assert status == {live: dg.DagsterRunStatus.STARTED, dead: dg.DagsterRunStatus.FAILURE,
                          reused: dg.DagsterRunStatus.FAILURE,
                          starting: dg.DagsterRunStatus.STARTING}
        failure = instance.get_records_for_run(
            dead, of_type=dg.DagsterEventType.RUN_FAILURE).records
        assert f"process {dead_pid}" in failure[0].event_log_entry.dagster_event.message
        assert orphaned_runs.evaluate_tick(context).skip_message == "no orphaned runs"


def test_process_helpers():
    assert process_alive(os.getpid(), started_before=time.time())
    assert not process_alive(_dead_pid())
    assert not process_alive(os.getpid(), started_before=process_start_time(os.getpid()) - 60)
    # a child whose expected parent is not its parent exits at once (the parent "died" before
    # the signal was armed); one with the right parent is armed and runs on
    code = ("import os, sys; from calibration_core.process_lifetime import die_with_parent; "
            "print(die_with_parent(int(sys.argv[1])))")
    wrong = subprocess.run([sys.executable, "-c", code, "1"], cwd=ROOT, capture_output=True,
                           text=True)
    assert wrong.returncode == 1 and wrong.stdout == ""
    right = subprocess.run([sys.executable, "-c", code, str(os.getpid())], cwd=ROOT,
                           capture_output=True, text=True)
    assert right.returncode == 0 and right.stdout.strip() == "None"
