"""Sensors: rebuild on new raw inputs, stage a release when the build is green, report failures.

* ``raw_inputs_changed`` (stopped by default; it starts full builds): the fingerprint of the
  provider's files (``calibration_core.raw_inputs.manifest_fingerprint``) differs from the
  cursor -> a ``build_all`` run over all area partitions.
* ``release_gate``: a new materialization of the release inputs whose run finished, and every
  blocking check upstream of ``staged_release`` passed on it -> a ``stage_release`` run.
* ``failure_report``: any failed run -> ``<store>/reports/failure_<run id>.json``.
* ``orphaned_runs`` (``sensors/orphaned_runs.py``): a STARTED run whose run-worker process died
  (``kill -9``) -> reported failed (``jobs.orphans``).
"""
import datetime as dt
import os
import tempfile
from pathlib import Path

import dagster as dg

from assets.release import release_gate
from calibration_core.io_utils import atomic_write_json, sha256_file
from calibration_core.raw_inputs import (
    MANIFEST_NAME,
    OPTIONAL_FILE_PATTERNS,
    RAW_FILES,
    manifest_fingerprint,
)
from jobs import ALL_AREAS_TAGS, build_all, stage_release
from resources.raw_inputs import DirectoryProvider, RawInputProvider
from resources.store import ArtifactStore
from sensors.orphaned_runs import orphaned_runs


def directory_manifest(folder: str | os.PathLike) -> dict:
    """``{"files": {name: {"sha256", "size"}}}`` for the raw files a ``DirectoryProvider`` would
    take from ``folder`` (the known raw names and the optional patterns), without copying."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"raw-input directory {folder} does not exist or is not a folder")
    names = {raw.name for raw in RAW_FILES}
    files = {}
    for path in sorted(folder.iterdir()):
        if path.is_file() and (path.name in names
                               or any(path.match(p) for p in OPTIONAL_FILE_PATTERNS)):
            files[path.name] = {"sha256": sha256_file(path), "size": path.stat().st_size}
    return {"files": files}


def provider_fingerprint(provider: RawInputProvider) -> str:
    """Fingerprint of the raw inputs the provider would deliver now: the configured directory's
    file hashes, or (other providers) a freshly collected manifest in a temporary folder."""
    if isinstance(provider, DirectoryProvider):
        return manifest_fingerprint(directory_manifest(provider.path))
    with tempfile.TemporaryDirectory(prefix="areacal-raw-") as tmp:
        return manifest_fingerprint(provider.collect(Path(tmp)))


def _built_fingerprint(store: ArtifactStore) -> str | None:
    import json

    path = Path(store.root) / "raw" / MANIFEST_NAME
    try:
        return manifest_fingerprint(json.loads(path.read_text()))
    except (OSError, ValueError, KeyError):
        return None


@dg.sensor(
    name="raw_inputs_changed",
    job=build_all,
    minimum_interval_seconds=3600,
    default_status=dg.DefaultSensorStatus.STOPPED,
    description="New or changed raw public inputs (the provider's file hashes differ from the "
                "last ones seen, or from what the store was built from) -> build_all.",
)
def raw_inputs_changed(context: dg.SensorEvaluationContext, raw_inputs: RawInputProvider,
                       store: ArtifactStore):
    fingerprint = provider_fingerprint(raw_inputs)
    previous = context.cursor or _built_fingerprint(store)
    context.update_cursor(fingerprint)
    if previous == fingerprint:
        return dg.SkipReason(f"raw inputs unchanged (fingerprint {fingerprint[:16]})")
    return dg.RunRequest(
        run_key=f"raw-{(previous or 'none')[:12]}-{fingerprint[:16]}",
        tags={**ALL_AREAS_TAGS, "areacal/raw_fingerprint": fingerprint[:16]},
    )


@dg.sensor(
    name="release_gate",
    job=stage_release,
    minimum_interval_seconds=60,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Stages the latest build (stage_release) once its run finished and every "
                "blocking asset check upstream of the release passed.",
)
def release_gate_sensor(context: dg.SensorEvaluationContext):
    gate = release_gate(context.instance, context.repository_def.asset_graph)
    last = int(context.cursor) if context.cursor else -1
    if gate.build_storage_id is None or gate.build_storage_id <= last:
        return dg.SkipReason("no new build of the release inputs")
    if gate.state == "waiting":
        return dg.SkipReason(gate.summary())  # cursor kept: look again next tick
    context.update_cursor(str(gate.build_storage_id))
    if not gate.open:
        return dg.SkipReason(gate.summary())
    return dg.RunRequest(run_key=f"stage-{gate.build_storage_id}",
                         tags={"areacal/build_run_id": gate.build_run_id or ""})


@dg.run_failure_sensor(
    name="failure_report",
    minimum_interval_seconds=30,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Writes reports/failure_<run id>.json (job, tags, failed steps and their "
                "errors, failed asset checks) for every failed run.",
)
def failure_report(context: dg.RunFailureSensorContext, store: ArtifactStore):
    run = context.dagster_run
    steps = []
    for event in context.get_step_failure_events():
        error = event.step_failure_data.error
        steps.append({"step": event.step_key,
                      "error": error.message.strip() if error else None,
                      "cause": (error.cause.message.strip()
                                if error is not None and error.cause is not None else None)})
    checks = []
    records = context.instance.get_records_for_run(
        run.run_id, of_type=dg.DagsterEventType.ASSET_CHECK_EVALUATION, limit=10_000).records
    for record in records:
        evaluation = record.event_log_entry.dagster_event.event_specific_data
        if not evaluation.passed:
            checks.append({"check": evaluation.asset_check_key.to_user_string(),
                           "severity": evaluation.severity.value,
                           "description": evaluation.description})
    report = {
        "run_id": run.run_id,
        "job": run.job_name,
        "status": str(run.status.value),
        "tags": {k: v for k, v in run.tags.items() if not k.startswith(".dagster")},
        "message": context.failure_event.message,
        "failed_steps": steps,
        "failed_checks": checks,
        "asset_selection": sorted(k.to_user_string() for k in (run.asset_selection or [])),
        "reported_utc": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }
    path = store.path("reports", f"failure_{run.run_id}.json")
    atomic_write_json(path, report)
    context.log.info(f"failure report for run {run.run_id}: {path}")


ALL_SENSORS = [raw_inputs_changed, release_gate_sensor, failure_report, orphaned_runs]
