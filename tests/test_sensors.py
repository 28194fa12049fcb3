"""Sensors with dg.build_sensor_context: raw-input changes -> build_all, the release gate ->
stage_release, failed runs -> a failure report; and the gate -> stage -> promote path end to end
on a fixture store (stub upstream assets with a blocking check)."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import dagster as dg
import pytest

from calibration_core import release as rel
from calibration_core.areas import all_area_keys
from calibration_core.raw_inputs import load_manifest, manifest_fingerprint
from jobs import ALL_AREAS_TAGS
from resources.raw_inputs import DirectoryProvider
from resources.store import ArtifactStore
from sensors import (
    directory_manifest,
    failure_report,
    raw_inputs_changed,
    release_gate_sensor,
)
from tests.release_fixtures import release_test_defs, write_fixture_store

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture()
def instance():
    with dg.instance_for_test() as inst:
        yield inst


# --------------------------------------------------------------------------------------------
# raw_inputs_changed


def _raw_tick(instance, raw_dir: Path, store_root: Path, cursor: str | None):
    # the store resource sets itself up per execution (a context manager), so the sensor's
    # context is opened as one, as the daemon does
    with dg.build_sensor_context(
            instance=instance, cursor=cursor,
            resources={"raw_inputs": DirectoryProvider(path=str(raw_dir)),
                       "store": ArtifactStore(root=str(store_root))}) as context:
        return raw_inputs_changed.evaluate_tick(context)


def test_raw_input_change_requests_build_all(instance, tmp_path):
    raw = tmp_path / "raw_in"
    raw.mkdir()
    (raw / "agi_state.csv").write_text("STATE,AGI_STUB,N1\nAL,1,10\n")
    (raw / "22incd.csv").write_text("STATE,CONG_DISTRICT\nAL,1\n")
    (raw / "notes.txt").write_text("not a raw input")
    store = tmp_path / "store"

    first = _raw_tick(instance, raw, store, None)
    assert len(first.run_requests) == 1
    request = first.run_requests[0]
    assert {k: request.tags[k] for k in ALL_AREAS_TAGS} == ALL_AREAS_TAGS
    assert sorted(ALL_AREAS_TAGS.values()) == sorted([all_area_keys()[0], all_area_keys()[-1]])
    assert all_area_keys()[0] == "state-AL" and all_area_keys()[-1].startswith("city-")
    fingerprint = first.cursor
    assert fingerprint == manifest_fingerprint(directory_manifest(raw))

    assert _raw_tick(instance, raw, store, fingerprint).run_requests == []
    (raw / "notes.txt").write_text("still not a raw input")
    assert _raw_tick(instance, raw, store, fingerprint).run_requests == []

    (raw / "agi_state.csv").write_text("STATE,AGI_STUB,N1\nAL,1,11\n")
    changed = _raw_tick(instance, raw, store, fingerprint)
    assert len(changed.run_requests) == 1 and changed.cursor != fingerprint
    assert changed.run_requests[0].run_key != request.run_key

    # no cursor yet, but the store was built from exactly these files: nothing to do
    (store / "raw").mkdir(parents=True)
    (store / "raw" / "manifest.json").write_text(json.dumps(directory_manifest(raw)))
    fresh = _raw_tick(instance, raw, store, None)
    assert fresh.run_requests == [] and fresh.cursor == changed.cursor


def test_directory_fingerprint_matches_a_built_raw_manifest(real_raw_dir):
    """The sensor's cheap hash of a folder equals the fingerprint raw_public_inputs records."""
    built = manifest_fingerprint(load_manifest(real_raw_dir))
    assert manifest_fingerprint(directory_manifest(real_raw_dir)) == built


# --------------------------------------------------------------------------------------------
# release gate, staging, promotion, failure reports


def _gate_tick(instance, defs, cursor):
    with dg.build_sensor_context(instance=instance, cursor=cursor,
                                 definitions=defs) as context:
        return release_gate_sensor.evaluate_tick(context)


def _report_failure(instance, defs, run_id, store_root):
    run = instance.get_run_by_id(run_id)
    event = instance.get_records_for_run(
        run_id, of_type=dg.DagsterEventType.RUN_FAILURE).records[0].event_log_entry.dagster_event
    with dg.build_run_status_sensor_context(
            sensor_name="failure_report", dagster_event=event, dagster_instance=instance,
            dagster_run=run, resources={"store": ArtifactStore(root=str(store_root))},
    ) as status_context:
        failure_report(status_context.for_run_failure())
    return json.loads((store_root / "reports" / f"failure_{run_id}.json").read_text())


def test_gate_stages_only_green_builds_then_promote_publishes(instance, tmp_path):
    store = write_fixture_store(tmp_path / "store")
    check = {"pass": False, "why": "hold-out error 31% > 25%"}
    defs = release_test_defs(store, check)

    skip = _gate_tick(instance, defs, None)
    assert skip.run_requests == [] and "no new build" in skip.skip_message

    # a red build: the gate stays shut, and the failed run gets a report
    red = defs.resolve_job_def("build").execute_in_process(instance=instance,
                                                           raise_on_error=False)
    assert not red.success
    tick = _gate_tick(instance, defs, None)
    assert tick.run_requests == []
    assert "validation_report:errors_within_tolerance failed: hold-out error 31%" in tick.skip_message
    assert "informational" not in tick.skip_message  # non-blocking checks do not gate
    assert _gate_tick(instance, defs, tick.cursor).run_requests == []
    report = _report_failure(instance, defs, red.run_id, store)
    assert report["job"] == "build" and report["run_id"] == red.run_id
    assert [s["step"] for s in report["failed_steps"]] == [
        "validation_report_errors_within_tolerance"]
    assert {"check": "validation_report:errors_within_tolerance", "severity": "ERROR",
            "description": "hold-out error 31% > 25%"} in report["failed_checks"]

    # staging by hand while the latest build is red fails, and stages nothing
    refused = defs.resolve_job_def("stage_release").execute_in_process(instance=instance,
                                                                       raise_on_error=False)
    assert not refused.success
    assert not (store / "release" / "versions").exists() or \
        not list((store / "release" / "versions").iterdir())

    # a green build opens the gate: one stage_release request, once
    check["pass"] = True
    green = defs.resolve_job_def("build").execute_in_process(instance=instance)
    assert green.success
    tick2 = _gate_tick(instance, defs, tick.cursor)
    assert [r.job_name for r in tick2.run_requests] in (["stage_release"], [None])
    assert tick2.run_requests[0].tags["areacal/build_run_id"] == green.run_id
    assert _gate_tick(instance, defs, tick2.cursor).run_requests == []

    staged = defs.resolve_job_def("stage_release").execute_in_process(instance=instance)
    assert staged.success
    meta = staged.asset_materializations_for_node("staged_release")[0].metadata
    run_id = meta["run_id"].value
    assert rel.RUN_ID_RE.fullmatch(run_id)
    # every area of the city catalog + the national file + the two validation files
    assert meta["file_count"].value == len(all_area_keys()) + 3
    assert meta["blocking_checks_passed"].value == 1
    assert rel.staged_pointer(store / "release")["run_id"] == run_id
    assert rel.published_run_id(store / "release") is None  # staging never publishes

    promoted = defs.resolve_job_def("promote").execute_in_process(instance=instance)
    assert promoted.success
    assert rel.published_run_id(store / "release") == run_id
    manifest = rel.read_manifest(store / "release" / "published")
    assert manifest["config"]["name"] == "tiny" and manifest["complete"]
    proc = subprocess.run([sys.executable, "-m", "calibration_core.release", "verify",
                           str(store / "release" / "published")],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr


def test_release_assets_do_nothing_outside_their_jobs(instance, tmp_path):
    """A '*' materialization (e.g. a plain build) neither stages nor publishes anything."""
    store = write_fixture_store(tmp_path / "store")
    defs = release_test_defs(store, {"pass": True})
    result = dg.materialize(
        [*defs.assets], selection=["staged_release", "published_release"],
        instance=instance, resources=defs.resources)
    assert result.success
    assert result.asset_materializations_for_node("staged_release") == []
    assert result.asset_materializations_for_node("published_release") == []
    assert not (store / "release" / "versions").exists()
    assert rel.published_run_id(store / "release") is None


def test_gate_stays_shut_when_a_blocking_check_did_not_run_on_the_latest_build(instance, tmp_path):
    store = write_fixture_store(tmp_path / "store")
    defs = release_test_defs(store, {"pass": True})
    assert defs.resolve_job_def("build").execute_in_process(instance=instance).success
    green = _gate_tick(instance, defs, None)
    assert len(green.run_requests) == 1
    # validation_report rebuilt without its check: the earlier pass says nothing about it
    rebuilt = dg.materialize([*defs.assets], instance=instance, resources=defs.resources,
                             selection=dg.AssetSelection.assets("validation_report").without_checks())
    assert rebuilt.success
    tick = _gate_tick(instance, defs, green.cursor)
    assert tick.run_requests == []
    assert "errors_within_tolerance passed on an older materialization" in tick.skip_message
