"""Group ``release``: stage a verified release of the area files, then (manually) promote it.

``staged_release`` runs only in the ``stage_release`` job (launched by the ``release_gate`` sensor
once every blocking check of the latest build passed, or by hand), ``published_release`` only in
the manual ``promote`` job. In any other run (a ``*`` selection, a UI "materialize all") they log
why and materialize nothing, so no build can publish before the gate (spec pitfalls 19 and 24).
"""

import dataclasses
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import dagster as dg
import pandas as pd

from calibration_core import release as rel
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


class StageConfig(dg.Config):
    version: Optional[str] = None  # default: pyproject.toml's version
    allow_incomplete: bool = False  # stage even without all 488 areas + national (debugging)


@dg.asset(
    group_name="release",
    deps=RELEASE_INPUTS,
    kinds={"python", "file"},
    tags={"areacal/stage": "release"},
    code_version="1",
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
    run_id = rel.make_run_id(version, sha)
    preset = dataclasses.asdict(settings.resolve())
    release_root = store.folder("release")
    folder = rel.stage_release(store.root, run_id, config=preset, version=version, git_sha=sha,
                               git_dirty=dirty, release_root=release_root,
                               require_complete=not config.allow_incomplete)
    manifest = rel.read_manifest(folder)
    location = publisher.stage(folder, run_id, release_root)
    context.log.info(f"staged {run_id}: {manifest['file_count']} files at {location['location']}")
    validation: list[dict] = []
    _flatten("", manifest.get("validation") or {}, validation)
    yield dg.MaterializeResult(
        metadata={
            "run_id": run_id,
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


@dg.asset(
    group_name="release",
    deps=[staged_release],
    kinds={"python", "file"},
    tags={"areacal/stage": "release"},
    code_version="1",
    output_required=False,
    description=(
        "Production: the last staged release, verified again and promoted all-or-nothing (an "
        "atomic swap of `release/published`, or one Hub commit of copies plus the manifest). "
        "Materialized only by the manual `promote` job."
    ),
)
def published_release(context: dg.AssetExecutionContext, store: ArtifactStore,
                      publisher: Publisher):
    if _skip_outside(context, PROMOTE_JOB):
        return
    release_root = store.folder("release")
    pointer = rel.staged_pointer(release_root)
    run_id, folder = pointer["run_id"], Path(pointer["folder"])
    problems = rel.verify_manifest(folder)
    if problems:
        raise dg.Failure(description=f"staged release {run_id} does not verify; nothing promoted",
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
