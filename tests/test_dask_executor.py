"""The Dask profile builds the same bytes as the default one: the tiny preset built by
``python -m jobs.build_cli`` with the default profile (multiprocess: one process per step), then
again with ``AREACAL_EXECUTOR=dask`` against a ``distributed.LocalCluster`` of two worker
processes on 127.0.0.1 that this test starts and stops, through Dagster's own CLI as the README
gives it: ``dagster asset materialize -m definitions --select '* and not group:release'
--partition-range <first area>...<last area>`` (one run of the whole graph; the CLI takes a range
only because every asset has ``BackfillPolicy.single_run()``). Every step of the Dask run must
have executed in a Dask worker, its blocking checks must have run, and every area file (one per
partition, plus the national file) must be byte-identical to the multiprocess build's.

Each build is one run of the whole graph; together they take a few minutes (policyengine-us
starts in the state-simulation and validation steps of each)."""
from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[1]
TIMINGS: dict[str, float] = {}


def _build(tmp: Path, name: str, raw_dir: Path, dagster_cli: bool = False,
           **env) -> tuple[Path, Path]:
    """The tiny preset built into ``tmp/name`` by ``python -m jobs.build_cli`` or, with
    ``dagster_cli``, by ``dagster asset materialize`` of every asset but the release over every
    area partition, with the instance configuration the README has a user copy
    (``dagster.yaml.example``)."""
    from calibration_core.areas import all_area_keys

    store, home = tmp / name / "store", tmp / name / "dagster_home"
    home.mkdir(parents=True, exist_ok=True)
    full_env = {**os.environ, "AREACAL_HOME": str(store), "DAGSTER_HOME": str(home),
                "AREACAL_RAW_DIR": str(raw_dir), "AREACAL_PRESET": "tiny", **env}
    if "AREACAL_EXECUTOR" not in env:  # the default profile
        full_env.pop("AREACAL_EXECUTOR", None)
    if dagster_cli:
        (home / "dagster.yaml").write_text((REPO / "dagster.yaml.example").read_text())
        keys = all_area_keys()
        command = [str(Path(sys.executable).parent / "dagster"), "asset", "materialize", "-m",
                   "definitions", "--select", "* and not group:release",
                   "--partition-range", f"{keys[0]}...{keys[-1]}"]
    else:
        command = [sys.executable, "-m", "jobs.build_cli"]
    started = time.perf_counter()
    built = subprocess.run(command, cwd=REPO, env=full_env, capture_output=True, text=True,
                           timeout=2400)
    TIMINGS[name] = time.perf_counter() - started
    assert built.returncode == 0, _why(home) + built.stdout[-2000:] + built.stderr[-3000:]
    if not dagster_cli:
        assert "build succeeded" in built.stdout
    return store, home


def _why(home: Path) -> str:
    """The failed steps and checks of the runs recorded in ``home``."""
    import dagster as dg

    lines = []
    try:
        with dg.DagsterInstance.from_config(str(home)) as instance:
            for run in instance.get_runs():
                for e in instance.all_logs(run.run_id):
                    event = e.dagster_event
                    if event is None:
                        continue
                    if event.event_type_value == "STEP_FAILURE":
                        error = event.event_specific_data.error
                        lines.append(f"step {event.step_key} failed: "
                                     f"{error.message if error else ''}"[:1500])
                    elif (event.event_type_value == "ASSET_CHECK_EVALUATION"
                          and not event.event_specific_data.passed):
                        lines.append(f"check {event.event_specific_data.check_name} failed: "
                                     f"{event.event_specific_data.metadata}"[:800])
    except Exception as exc:  # noqa: BLE001 - only a diagnostic
        lines.append(f"(could not read the instance: {exc})")
    return "\n".join(lines) + "\n"


@pytest.fixture(scope="module")
def multiprocess_build(tmp_path_factory, real_raw_dir):
    """The tiny preset built once per test session with the default (multiprocess) profile."""
    return _build(tmp_path_factory.mktemp("builds"), "multiprocess", real_raw_dir)


def _area_files(store: Path) -> dict[str, str]:
    from calibration_core.io_utils import sha256_file

    return {p.relative_to(store).as_posix(): sha256_file(p)
            for p in sorted((store / "areas").rglob("*.h5"))}


def test_dask_build_is_byte_identical_to_multiprocess(multiprocess_build, real_raw_dir,
                                                      tmp_path, monkeypatch):
    pytest.importorskip("dagster_dask")
    import dagster as dg
    from dask.distributed import Client, LocalCluster

    mp_store, _ = multiprocess_build
    # the workers inherit this process's environment and sys.path (they import `definitions`)
    monkeypatch.setenv("AREACAL_EXECUTOR", "dask")
    monkeypatch.setenv("AREACAL_HOME", str(tmp_path / "dask" / "store"))
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "dask" / "dagster_home"))
    monkeypatch.setenv("AREACAL_RAW_DIR", str(real_raw_dir))
    monkeypatch.setenv("AREACAL_PRESET", "tiny")
    monkeypatch.syspath_prepend(str(REPO))
    import dask

    with dask.config.set({"distributed.worker.daemon": False}), \
            LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                         dashboard_address=None) as cluster, Client(cluster) as client:
        address = cluster.scheduler_address
        assert address.startswith("tcp://127.0.0.1:")
        worker_pids = set(client.run(os.getpid).values())
        assert len(worker_pids) == 2
        store, home = _build(tmp_path, "dask", real_raw_dir, dagster_cli=True,
                             AREACAL_EXECUTOR="dask", AREACAL_DASK_SCHEDULER=address)
    print(f"tiny build: multiprocess {TIMINGS.get('multiprocess', float('nan')):.0f} s, "
          f"dask {TIMINGS['dask']:.0f} s")

    # every step of the Dask run executed in one of the two workers
    with dg.DagsterInstance.from_config(str(home)) as instance:
        runs = instance.get_runs()
        assert len(runs) == 1 and runs[0].status == dg.DagsterRunStatus.SUCCESS
        starts = instance.all_logs(runs[0].run_id, of_type=dg.DagsterEventType.STEP_START)
        assert len(starts) >= 16
        step_pids = {e.dagster_event.pid for e in starts}
        assert step_pids <= worker_pids, (step_pids, worker_pids)
        # the CLI ran the selected assets' checks too, blocking ones included, and all passed
        checks = [e.dagster_event.event_specific_data for e in instance.all_logs(
            runs[0].run_id, of_type=dg.DagsterEventType.ASSET_CHECK_EVALUATION)]
        names = {c.check_name for c in checks}
        assert {"area_files_valid", "fit_quality"} <= names, sorted(names)
        assert all(c.passed for c in checks if c.severity == dg.AssetCheckSeverity.ERROR)

    from calibration_core.areas import all_area_keys

    expected, got = _area_files(mp_store), _area_files(store)
    assert len(expected) == len(all_area_keys()) + 1  # every area and the national file
    assert got == expected
