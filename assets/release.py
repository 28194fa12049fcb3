"""Group ``release``: stage a verified release of the area files, then (manually) promote it.

``staged_release`` runs only in the ``stage_release`` job (launched by the ``release_gate`` sensor
once every blocking check of the latest build passed, or by hand), ``published_release`` only in
the manual ``promote`` job. In any other run (a ``*`` selection, a UI "materialize all") they log
why and materialize nothing, so no build can publish before the gate (spec pitfalls 19 and 24).

The gate reads check events; the stage also reads the files: each area file must still have the
sha256 its materialization recorded, or the stage fails naming it. ``staged.json`` moves only once
the whole stage (publisher upload included) succeeded, and ``published_release`` promotes only
the release of the last ``stage_release`` run, only when that run succeeded.
"""

import dataclasses
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import dagster as dg
import pandas as pd

from assets._code_version import code_version
from assets._metadata import measured
from calibration_core import release as rel
from calibration_core.areas import parse_area_key
from resources.publisher import Publisher
from resources.settings import BuildSettings
from resources.store import ArtifactStore

RELEASE_INPUTS = [dg.AssetKey("area_datasets"), dg.AssetKey("national_dataset"),
                  dg.AssetKey("validation_report")]
STAGE_JOB = "stage_release"
PROMOTE_JOB = "promote"


# --------------------------------------------------------------------------------------------
# The gate: every blocking check upstream of the release passed on the latest materialization


@dataclass
class GateStatus:
    state: str  # "open" | "closed" | "waiting" | "empty"
    build_storage_id: Optional[int] = None  # latest materialization among the release inputs
    build_run_id: Optional[str] = None
    problems: list = field(default_factory=list)
    checks: int = 0

    @property
    def open(self) -> bool:
        return self.state == "open"

    def summary(self) -> str:
        head = f"release gate {self.state}: {self.checks} blocking check(s)"
        return head + ("; " + "; ".join(self.problems[:20]) if self.problems else "")


def _latest_materialization(instance: dg.DagsterInstance, key: dg.AssetKey):
    records = instance.fetch_materializations(key, limit=1).records
    return records[0] if records else None


def release_gate(instance: dg.DagsterInstance, asset_graph,
                 target: dg.AssetKey = dg.AssetKey("staged_release")) -> GateStatus:
    """Whether the latest build may be released: for every blocking asset check on an asset
    upstream of ``target``, the latest evaluation passed and is not older than the asset's
    latest materialization. ``waiting`` while the run that built the inputs is still going."""
    parents = asset_graph.get(target).parent_keys
    latest = [r for r in (_latest_materialization(instance, k) for k in parents) if r]
    if not latest:
        return GateStatus("empty", problems=["none of the release inputs was ever materialized"])
    newest = max(latest, key=lambda r: r.storage_id)
    status = GateStatus("open", newest.storage_id, newest.run_id)
    run = instance.get_run_by_id(newest.run_id)
    if run is not None and not run.is_finished:
        status.state = "waiting"
        status.problems.append(f"run {newest.run_id} that built the release inputs is still going")
        return status
    ancestors = asset_graph.get_ancestor_asset_keys(target)
    blocking = sorted((k for k in asset_graph.get_check_keys_for_assets(ancestors)
                       if asset_graph.get_check_spec(k).blocking),
                      key=lambda k: k.to_user_string())
    status.checks = len(blocking)
    records = instance.event_log_storage.get_latest_asset_check_execution_by_key(blocking)
    for key in blocking:
        name = key.to_user_string()
        record = records.get(key)
        if record is None:
            status.problems.append(f"{name} was never evaluated")
            continue
        if record.status.value == "PLANNED":
            status.problems.append(f"{name} did not complete (run {record.run_id})")
            continue
        evaluation = record.evaluation
        if not evaluation or not evaluation.passed:
            text = f": {evaluation.description}" if evaluation and evaluation.description else ""
            status.problems.append(f"{name} failed{text}")
            continue
        mat = _latest_materialization(instance, key.asset_key)
        if mat is not None and record.event is not None and record.event.timestamp < mat.timestamp:
            status.problems.append(f"{name} passed on an older materialization of "
                                   f"{key.asset_key.to_user_string()}")
    if status.problems:
        status.state = "closed"
    return status


def recorded_digests(instance: dg.DagsterInstance, areas_dir: Path) -> dict[str, Optional[str]]:
    """Release path -> the sha256 the build recorded when it wrote that file: the ``sha256``
    metadata of each ``area_datasets`` partition's latest materialization (``states/CA.h5``...),
    of ``national_dataset``'s (``national/US.h5``), and the ``report_sha256`` that
    ``validation/summary.json`` holds for ``validation/validation_results.csv``. A value is None
    where the latest materialization recorded no sha256."""
    out: dict[str, Optional[str]] = {}
    key = dg.AssetKey("area_datasets")
    ids = instance.get_latest_storage_id_by_partition(
        key, dg.DagsterEventType.ASSET_MATERIALIZATION)
    if ids:
        records = instance.fetch_materializations(
            dg.AssetRecordsFilter(asset_key=key, storage_ids=list(ids.values())),
            limit=len(ids)).records
        for record in records:
            mat = record.asset_materialization
            try:
                path = parse_area_key(mat.partition).relative_path
            except (ValueError, KeyError, TypeError):
                continue  # a partition that is no area of this code version
            value = mat.metadata.get("sha256")
            out[path] = getattr(value, "value", value)
    national = _latest_materialization(instance, dg.AssetKey("national_dataset"))
    if national is not None:
        value = national.asset_materialization.metadata.get("sha256")
        out["national/US.h5"] = getattr(value, "value", value)
    summary = rel.read_validation_summary(areas_dir) or {}
    if summary.get("report_sha256"):
        out["validation/validation_results.csv"] = summary["report_sha256"]
    return out


def stage_run_problem(instance: dg.DagsterInstance, pointer: dict) -> Optional[str]:
    """Why the release ``staged.json`` names may not be promoted (None: it may): it must come
    from a ``stage_release`` run of this instance that succeeded, materialized that very
    release, and is the latest stage run (a newer failed or unfinished stage means the operator
    staged something else, which did not complete)."""
    run_id = pointer.get("run_id")
    stage_run_id = pointer.get("dagster_run_id")
    if not stage_run_id:
        return (f"staged.json names release {run_id} but no stage_release run: it was not "
                f"written by a successful `{STAGE_JOB}` run; stage again")
    run = instance.get_run_by_id(stage_run_id)
    if run is None:
        return f"stage run {stage_run_id} of release {run_id} is not in this Dagster instance"
    if run.status != dg.DagsterRunStatus.SUCCESS:
        return f"stage run {stage_run_id} of release {run_id} ended {run.status.value}, not SUCCESS"
    mats = instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=dg.AssetKey("staged_release")), limit=1).records
    staged = mats[0] if mats else None
    meta_run = None
    if staged is not None:
        value = staged.asset_materialization.metadata.get("run_id")
        meta_run = getattr(value, "value", value)
    if staged is None or staged.run_id != stage_run_id or meta_run != run_id:
        return (f"staged.json names release {run_id} of run {stage_run_id}, but the latest "
                f"staged_release materialization is {meta_run or '(none)'} of run "
                f"{staged.run_id if staged else '(none)'}")
    latest = instance.get_runs(filters=dg.RunsFilter(job_name=STAGE_JOB), limit=1)
    if latest and latest[0].run_id != stage_run_id:
        last = latest[0]
        state = "is still running" if not last.is_finished else f"ended {last.status.value}"
        return (f"the last {STAGE_JOB} run {last.run_id} {state}; staged.json still names "
                f"{run_id} from the earlier run {stage_run_id}. Stage again and promote what "
                "that stage produced")
    return None


def _asset_graph(context: dg.AssetExecutionContext):
    """The whole asset graph (with every asset check): the code location's, or in an in-process
    run, which has no repository, the graph the asset job was cut from."""
    try:
        return context.repository_def.asset_graph
    except Exception:  # dagster raises a CheckError outside a code location
        graph = context.job_def.asset_layer.asset_graph
        return getattr(graph, "source_asset_graph", graph)


def _skip_outside(context: dg.AssetExecutionContext, job: str) -> bool:
    if context.run.job_name == job:
        return False
    context.log.warning(f"{context.asset_key.to_user_string()} is materialized only by the "
                        f"`{job}` job; run {context.run.job_name!r} leaves it unchanged")
    return True


def _md(rows: list[dict]) -> dg.MetadataValue:
    return dg.MetadataValue.md(pd.DataFrame(rows).to_markdown(index=False) if rows else "(none)")


def _flatten(prefix: str, value, out: list[dict]) -> None:
    if isinstance(value, dict):
        for k, v in value.items():
            _flatten(f"{prefix}.{k}" if prefix else str(k), v, out)
    else:
        out.append({"field": prefix, "value": value})


# --------------------------------------------------------------------------------------------
# Assets


def _stage_result(manifest: dict, folder: Path, location: dict, gate: GateStatus,
                  sha: Optional[str], dirty: bool, publisher: Publisher,
                  started: float) -> dg.MaterializeResult:
    validation: list[dict] = []
    _flatten("", manifest.get("validation") or {}, validation)
    return dg.MaterializeResult(
        metadata={
            "run_id": manifest["run_id"],
            "file_count": manifest["file_count"],
            "total_bytes": manifest["total_bytes"],
            "complete": manifest["complete"],
            "counts": _md([{"folder": k, "files": v} for k, v in manifest["counts"].items()]),
            "inputs": _md([{"input": k, "bytes": v["size"], "sha256": v["sha256"][:16]}
                           for k, v in manifest["inputs"].items()]),
            "validation": _md(validation),
            "blocking_checks_passed": gate.checks,
            "git_sha": sha or "(not a git checkout)",
            "git_dirty": dirty,
            "content_sha256": manifest["content_sha256"],
            "manifest": dg.MetadataValue.path(str(folder / rel.MANIFEST_NAME)),
            "staged_at": str(location["location"]),
            "publisher": publisher.describe(),
            "seconds": round(time.time() - started, 2),
        },
        data_version=dg.DataVersion(manifest["content_sha256"][:32]),
    )


class StageConfig(dg.Config):
    version: Optional[str] = None  # default: pyproject.toml's version
    allow_incomplete: bool = False  # stage even without all 488 areas + national (debugging)


@dg.asset(
    backfill_policy=dg.BackfillPolicy.single_run(),
    group_name="release",
    deps=RELEASE_INPUTS,
    kinds={"python", "file"},
    tags={"areacal/stage": "release"},
    code_version=code_version("assets.release", "calibration_core.release"),
    output_required=False,
    description=(
        "A verified release under `release/versions/<run_id>/`: every area file, the national "
        "file and the validation report, with `manifest.json` (sha256 and size of every file, "
        "run id `{version}_{sha8}_{UTC time}`, sha256 of every input, the validation summary, "
        "the preset). Then handed to the publisher's staging area (a `staging/<run_id>/` "
        "commit on the Hub). Runs only in the `stage_release` job, only when every blocking "
        "check of the latest build passed."
    ),
)
@measured
def staged_release(context: dg.AssetExecutionContext, config: StageConfig, store: ArtifactStore,
                   publisher: Publisher, settings: BuildSettings):
    if _skip_outside(context, STAGE_JOB):
        return
    gate = release_gate(context.instance, _asset_graph(context), context.asset_key)
    if not gate.open:
        raise dg.Failure(description=gate.summary(),
                         metadata={"problems": _md([{"problem": p} for p in gate.problems])})
    started = time.time()
    version = config.version or rel.project_version()
    sha, dirty = rel.git_state()
    preset = dataclasses.asdict(settings.resolve())
    release_root = store.folder("release")
    run_id = rel.unused_run_id(Path(release_root) / rel.VERSIONS_DIR, version, sha)
    recorded = recorded_digests(context.instance, Path(store.root) / "areas")
    folder = rel.stage_release(store.root, run_id, config=preset, version=version, git_sha=sha,
                               git_dirty=dirty, release_root=release_root,
                               require_complete=not config.allow_incomplete,
                               recorded=recorded, write_pointer=False)
    try:
        manifest = rel.read_manifest(folder)
        location = publisher.stage(folder, run_id, release_root)
        result = _stage_result(manifest, folder, location, gate, sha, dirty, publisher, started)
        # the last step: only a stage that did everything else moves the pointer promote reads
        rel.write_staged_pointer(release_root, folder, dagster_run_id=context.run.run_id,
                                 staged_at=str(location["location"]),
                                 publisher=publisher.describe())
    except BaseException:
        # staged.json did not move: remove the local copy so nothing half-staged remains
        shutil.rmtree(folder, ignore_errors=True)
        raise
    context.log.info(f"staged {run_id}: {manifest['file_count']} files at {location['location']}")
    yield result


@dg.asset(
    backfill_policy=dg.BackfillPolicy.single_run(),
    group_name="release",
    deps=[staged_release],
    kinds={"python", "file"},
    tags={"areacal/stage": "release"},
    code_version=code_version("assets.release", "calibration_core.release"),
    output_required=False,
    description=(
        "Production: the last staged release, verified again and promoted all-or-nothing (an "
        "atomic swap of `release/published`, or one Hub commit of copies plus the manifest). "
        "Materialized only by the manual `promote` job."
    ),
)
@measured
def published_release(context: dg.AssetExecutionContext, store: ArtifactStore,
                      publisher: Publisher):
    if _skip_outside(context, PROMOTE_JOB):
        return
    release_root = store.folder("release")
    try:
        pointer = rel.staged_pointer(release_root)
    except rel.ReleaseError as exc:
        raise dg.Failure(description=f"promote refused; production unchanged: {exc}") from None
    run_id, folder = pointer["run_id"], Path(pointer["folder"])
    refused = stage_run_problem(context.instance, pointer)
    if refused:
        raise dg.Failure(description=f"promote refused; production unchanged: {refused}")
    problems = rel.verify_manifest(folder)
    if problems:
        more = f" (and {len(problems) - 1} more problem(s))" if len(problems) > 1 else ""
        raise dg.Failure(description=f"staged release {run_id} does not verify; nothing "
                                     f"promoted. First bad file: {problems[0]}{more}",
                         metadata={"problems": _md([{"problem": p} for p in problems[:50]])})
    previous = rel.published_run_id(release_root)
    out = publisher.promote(folder, run_id, release_root)
    manifest = rel.read_manifest(folder)
    context.log.info(f"promoted {run_id} (previous: {previous}) to {out['location']}")
    yield dg.MaterializeResult(
        metadata={
            "run_id": run_id,
            "previous_run_id": previous or "(none)",
            "file_count": manifest["file_count"],
            "total_bytes": manifest["total_bytes"],
            "content_sha256": manifest["content_sha256"],
            "location": str(out["location"]),
            "commit": str(out.get("commit", "")),
            **({"verify": f"python -m calibration_core.release verify {out['location']}"}
               if Path(str(out["location"])).exists() else {}),
        },
        data_version=dg.DataVersion(manifest["content_sha256"][:32]),
    )
