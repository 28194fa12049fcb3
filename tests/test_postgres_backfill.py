"""The PostgreSQL storage profile (deploy/postgres/dagster.yaml) under parallel runs.

A local PostgreSQL server (tests/postgres_server.py, 127.0.0.1 only) holds the run, event log and
schedule storage; ``dagster-daemon`` runs a multi-run backfill of 24 area partitions of the real
``area_datasets`` asset (four per run: six runs), at most two runs at once, through the queued
run coordinator and the default run launcher, exactly as a deployment would. Every partition
must be materialised by exactly one run, every run succeed, two runs overlap, and no storage
error appear. The store is a small synthetic one (tests/area_store_fixtures.py): no
policyengine-us.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from tests.area_store_fixtures import AREA_CONFIG, write_area_inputs
from tests.postgres_server import postgres_bin_dir, postgres_server

REPO = Path(__file__).resolve().parents[1]
N_PARTITIONS = 24
MAX_RUNS_AT_ONCE = 2


@pytest.fixture(scope="module")
def postgres():
    bin_dir = postgres_bin_dir()
    if bin_dir is None:
        if os.environ.get("AREACAL_REQUIRE_POSTGRES") == "1":
            pytest.fail("PostgreSQL binaries (Debian package postgresql) not found, and "
                        "AREACAL_REQUIRE_POSTGRES=1")
        pytest.skip("PostgreSQL binaries (initdb, pg_ctl) not installed")
    pytest.importorskip("dagster_postgres")
    with postgres_server(bin_dir) as server:
        yield server


def _instance_yaml() -> dict:
    config = yaml.safe_load((REPO / "deploy" / "postgres" / "dagster.yaml").read_text())
    config["concurrency"]["runs"]["max_concurrent_runs"] = MAX_RUNS_AT_ONCE
    # dequeue every second instead of every 5 s (the test waits on it)
    config["run_coordinator"] = {"module": "dagster._core.run_coordinator",
                                 "class": "QueuedRunCoordinator",
                                 "config": {"dequeue_interval_seconds": 1}}
    return config


def test_multi_run_backfill_on_postgres(postgres, tmp_path, monkeypatch):
    import dagster as dg
    from dagster._core.execution.backfill import BulkActionStatus, PartitionBackfill
    from dagster._core.storage.dagster_run import DagsterRunStatus
    from dagster_postgres import (PostgresEventLogStorage, PostgresRunStorage,
                                  PostgresScheduleStorage)

    from calibration_core.io_utils import sha256_file
    from calibration_core.areas import all_area_keys, parse_area_key

    store = write_area_inputs(tmp_path / "store")
    home = tmp_path / "dagster_home"
    home.mkdir()
    (home / "dagster.yaml").write_text(yaml.safe_dump(_instance_yaml()))
    workspace = tmp_path / "workspace.yaml"
    workspace.write_text(yaml.safe_dump({"load_from": [{"python_module": {
        "module_name": "tests.pg_backfill_defs", "working_directory": str(REPO),
        "location_name": "pg_backfill"}}]}))
    env = {"DAGSTER_HOME": str(home), "AREACAL_HOME": str(store), **postgres.env()}
    for k, v in env.items():
        monkeypatch.setenv(k, v)

    from tests.pg_backfill_defs import PARTITIONS_PER_RUN, defs

    keys = all_area_keys()[:N_PARTITIONS]
    asset = dg.AssetKey("area_datasets")
    with dg.DagsterInstance.get() as instance:
        assert isinstance(instance.run_storage, PostgresRunStorage)
        assert isinstance(instance.event_log_storage, PostgresEventLogStorage)
        assert isinstance(instance.schedule_storage, PostgresScheduleStorage)
        backfill = PartitionBackfill.from_asset_partitions(
            backfill_id="areacalpg", asset_graph=defs.resolve_asset_graph(),
            partition_names=keys, asset_selection=[asset], backfill_timestamp=time.time(),
            tags={}, dynamic_partitions_store=instance, all_partitions=False,
            title="24 areas", description=None, run_config=AREA_CONFIG)
        instance.add_backfill(backfill)

        log = (tmp_path / "daemon.log").open("w")
        daemon = subprocess.Popen(
            [str(Path(sys.executable).parent / "dagster-daemon"), "run", "-w", str(workspace)],
            cwd=REPO, env={**os.environ, **env}, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True)
        try:
            deadline = time.time() + 600
            status = None
            while time.time() < deadline:
                status = instance.get_backfill("areacalpg").status
                if status != BulkActionStatus.REQUESTED:
                    break
                assert daemon.poll() is None, (tmp_path / "daemon.log").read_text()[-3000:]
                time.sleep(2)
        finally:
            os.killpg(daemon.pid, signal.SIGTERM)
            try:
                daemon.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(daemon.pid, signal.SIGKILL)
                daemon.wait()
            log.close()
        daemon_log = (tmp_path / "daemon.log").read_text()
        assert status == BulkActionStatus.COMPLETED_SUCCESS, (status, daemon_log[-3000:])

        runs = instance.get_runs(filters=dg.RunsFilter(tags={"dagster/backfill": "areacalpg"}))
        assert len(runs) == N_PARTITIONS // PARTITIONS_PER_RUN
        assert all(r.status == DagsterRunStatus.SUCCESS for r in runs), \
            [(r.run_id, r.status) for r in runs]
        # in progress (launched by the queue, not yet finished): at most two at once, and two
        # did overlap (each run's own work takes about a second, its process start longer)
        from dagster import DagsterEventType

        spans = []
        for record in instance.get_run_records(
                filters=dg.RunsFilter(tags={"dagster/backfill": "areacalpg"})):
            starting = instance.all_logs(record.dagster_run.run_id,
                                         of_type=DagsterEventType.RUN_STARTING)
            assert len(starting) == 1 and record.end_time is not None
            spans.append((starting[0].timestamp, record.end_time))
        most = max(sum(1 for s2, e2 in spans if s2 <= s < e2) for s, _ in spans)
        assert most == MAX_RUNS_AT_ONCE, sorted(spans)

        # every partition materialised by exactly one run, and its file is the one recorded
        assert instance.get_materialized_partitions(asset) == set(keys)
        by_partition: dict[str, set[str]] = {}
        for record in instance.fetch_materializations(
                dg.AssetRecordsFilter(asset_key=asset), limit=1000).records:
            by_partition.setdefault(record.partition_key, set()).add(record.run_id)
        assert set(by_partition) == set(keys)
        assert all(len(run_ids) == 1 for run_ids in by_partition.values()), by_partition
        assert len(set().union(*by_partition.values())) == len(runs)
        for key in keys:
            latest = instance.fetch_materializations(
                dg.AssetRecordsFilter(asset_key=asset, asset_partitions=[key]),
                limit=1).records[0].asset_materialization
            path = store / "areas" / parse_area_key(key).relative_path
            assert sha256_file(path) == latest.metadata["sha256"].value
        for word in ("OperationalError", "IntegrityError", "psycopg2.", "deadlock"):
            assert word not in daemon_log, daemon_log[-3000:]
            for run in runs:
                text = "\n".join(str(e.message) for e in instance.all_logs(run.run_id))
                assert word not in text


def test_postgres_profile_is_the_example_with_postgres_storage():
    """deploy/postgres/dagster.yaml = dagster.yaml.example + PostgreSQL run, event log and
    schedule storage (the same pools, run queue, monitoring and retries)."""
    example = yaml.safe_load((REPO / "dagster.yaml.example").read_text())
    profile = yaml.safe_load((REPO / "deploy" / "postgres" / "dagster.yaml").read_text())
    storage = profile.pop("storage")
    assert profile == example
    assert set(storage) == {"postgres"}
    assert set(storage["postgres"]["postgres_db"]) >= {"username", "password", "hostname",
                                                        "db_name", "port"}
