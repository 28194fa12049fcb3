"""Walk-through 6: orchestration (``definitions.py``, ``jobs/``, ``sensors/``,
``assets/release.py``, ``calibration_core.release``).

Run: ``python docs/internals/06_orchestration.py`` (about 40 s; toy inputs, no network).

The pipeline is a Dagster asset graph. This script shows, on toy inputs in a temporary store:

1. the release run id ``{version}_{git sha[:8]}_{UTC YYYYMMDD_HHMMSS}``;
2. the area partitions (489 with the default city catalog) and how a build splits into an
   unpartitioned run and batched partition runs (backfills);
3. a ``dg.materialize`` of ``raw_public_inputs -> targets_db`` with its asset checks, and a
   failed re-materialization that leaves the previous database in place;
4. sensors evaluated with ``dg.build_sensor_context``: ``raw_inputs_changed`` (new raw files ->
   ``build_all``) and ``release_gate`` (a green build -> ``stage_release``);
5. a local release: stage (manifest with sha256 of every file, verified copy), promote (one
   atomic symlink swap), verify.
"""
from __future__ import annotations

import datetime as dt
import json
import shutil
import subprocess
import sys

import _walk  # noqa: F401  (puts the repository on sys.path)
import dagster as dg
import pandas as pd

from calibration_core import release as rel
from calibration_core.areas import all_areas, all_area_keys
from calibration_core.io_utils import sha256_file
from calibration_core.raw_inputs import RAW_FILES, fetch_from_pypi
from tests.release_fixtures import release_test_defs, write_fixture_store
from tests.targets_fixtures import write_raw_folder

OUT = _walk.out_dir("06_orchestration")
QUIET = _walk.quiet_dagster()  # run config: Dagster's console log off (its events are printed)

# ---------------------------------------------------------------------------------------------
_walk.section("1. Run ids")
# Every staged release is named by the project version, the commit and the UTC time; the
# content digest in its manifest depends only on what it contains.
version = rel.project_version()
sha, dirty = rel.git_state()
when = dt.datetime(2025, 1, 15, 12, 30, 0, tzinfo=dt.timezone.utc)
run_id = rel.make_run_id(version, sha, when)
print(f"version {version}, commit {sha and sha[:12]}, tracked files changed: {dirty}")
print(f"run id for {when.isoformat()}: {run_id}")
print("outside git the sha is 00000000:", rel.make_run_id(version, None, when))
try:
    rel.check_run_id("latest")
except rel.ReleaseError as exc:
    print("check_run_id('latest') ->", exc)

# ---------------------------------------------------------------------------------------------
_walk.section("2. The area partitions")
areas = pd.DataFrame([vars(a) | {"file": a.relative_path} for a in all_areas()])
_walk.show(areas.groupby("kind").agg(partitions=("key", "size"), first=("key", "first"),
                                     last=("key", "last"), example_file=("file", "first"))
           .reset_index())
print(f"\n{len(all_area_keys())} keys; at-large states and DC are district 01:",
      [k for k in all_area_keys() if k.startswith(("district-AK", "district-DC"))])

from definitions import defs  # noqa: E402  (the one Definitions object of the project)
from jobs import ALL_AREAS_TAGS  # noqa: E402
from jobs.partitioned import split_selection  # noqa: E402

graph = defs.resolve_asset_graph()
nodes = [graph.get(k) for k in sorted(graph.get_all_asset_keys(), key=lambda k: k.path)]
_walk.show(pd.DataFrame([{
    "asset": n.key.to_user_string(), "group": n.group_name,
    "partitions": (len(n.partitions_def.get_partition_keys()) if n.partitions_def else ""),
    "executable": n.is_executable} for n in nodes]).sort_values(["group", "asset"]))
unpartitioned, partitioned = split_selection(defs, "* and not group:release")
print("\nA build (python -m jobs.build_cli) is one run over the whole partition range:")
print("  unpartitioned assets:", [k.to_user_string() for k in unpartitioned])
print("  partitioned assets:",
      [k.to_user_string() for k in partitioned] or "(area assets not registered yet)")
print("  range tags:", ALL_AREAS_TAGS)
print("A backfill of a few areas launches the rebuild_areas job over a range, e.g. tags",
      {k: v for k, v in zip(ALL_AREAS_TAGS, ("district-CA-01", "district-CA-52"))})
jobs = pd.DataFrame([{"job": j.name, "description": (j.description or "").split(". ")[0]}
                     for j in defs.jobs])
_walk.show(jobs)

# ---------------------------------------------------------------------------------------------
_walk.section("3. dg.materialize: raw_public_inputs -> targets_db, with its checks")
import assets.raw_inputs  # noqa: E402
import assets.targets_db  # noqa: E402
from resources.raw_inputs import DirectoryProvider  # noqa: E402
from resources.store import ArtifactStore  # noqa: E402

# A user's raw folder (DirectoryProvider) must hold every required file under the names in
# docs/data.md, and raw_public_inputs validates each (format, columns, ranges, codes) before
# it replaces anything in raw/. The toy folder has the targets inputs in their real formats;
# the CPS files (checked against each other: one weight row per tax unit) and the files the
# targets stage does not read (crosswalks ...) are the real ones from the pinned packages.
raw_in = write_raw_folder(OUT / "raw_in")
real_raw = OUT / "real_raw"
fetch_from_pypi(real_raw)
for f in RAW_FILES:
    if f.required and (f.name.startswith("cps") or not (raw_in / f.name).exists()):
        shutil.copyfile(real_raw / f.name, raw_in / f.name)
store_root = OUT / "store"
resources = {"store": ArtifactStore(root=str(store_root)),
             "raw_inputs": DirectoryProvider(path=str(raw_in))}
checks = dg.load_asset_checks_from_modules([assets.targets_db])
with dg.DagsterInstance.ephemeral() as instance:
    result = dg.materialize(
        [assets.raw_inputs.raw_public_inputs, assets.targets_db.targets_db, *checks],
        resources=resources, instance=instance, run_config=QUIET)
    print("success:", result.success)
    meta = result.asset_materializations_for_node("targets_db")[0].metadata
    for key in ("total_targets", "strata", "build_seconds", "sha256"):
        print(f"  {key}: {meta[key].value}")
    print(meta["targets_by_source_and_level"].value)
    _walk.show(pd.DataFrame([{"check": e.check_name, "passed": e.passed,
                              "blocking": e.blocking} for e in
                             result.get_asset_check_evaluations()]))
    print("\nartifacts:", sorted(str(p.relative_to(store_root)) for p in store_root.rglob("*")
                                 if p.is_file() and p.parent.name != "raw")
          + [f"raw/ ({len(list((store_root / 'raw').iterdir()))} files)"])

    # a broken input: the step fails with the file and column named, targets.db is untouched
    db = store_root / "targets" / "targets.db"
    before = sha256_file(db)
    fns = raw_in / "agi_state.csv"
    good = fns.read_bytes()
    fns.write_text(fns.read_text().replace("AGI_LOWER_BOUND", "LOWER"))
    failed = dg.materialize(
        [assets.raw_inputs.raw_public_inputs, assets.targets_db.targets_db, *checks],
        resources=resources, instance=instance, raise_on_error=False, run_config=QUIET)
    error = next(e for e in failed.all_events if e.is_step_failure).step_failure_data.error
    while error.cause is not None:
        error = error.cause
    print("\nbroken agi_state.csv -> success:", failed.success)
    print("  error:", error.message.strip()[:160])
    print("  targets.db unchanged:", sha256_file(db) == before)
    fns.write_bytes(good)

# ---------------------------------------------------------------------------------------------
_walk.section("4. Sensors with dg.build_sensor_context")
from sensors import raw_inputs_changed, release_gate_sensor  # noqa: E402

with dg.DagsterInstance.ephemeral() as instance:
    def raw_tick(cursor):
        with dg.build_sensor_context(instance=instance, cursor=cursor,
                                     resources=resources) as context:
            return raw_inputs_changed.evaluate_tick(context)

    def describe(tick):
        if tick.run_requests:
            r = tick.run_requests[0]
            tags = {k: v for k, v in r.tags.items()
                    if k.startswith(("dagster/asset", "areacal"))}
            return f"RunRequest {r.run_key} for build_all, tags {tags}"
        return f"skip: {tick.skip_message}"

    # The failed run of section 3 (the broken agi_state.csv) left raw/ and its manifest as
    # they were (raw_public_inputs validates a file before it replaces anything), and the
    # folder holds the restored file again: no change, no build. Editing a file requests one.
    first = raw_tick(None)
    print("first tick (no cursor):", describe(first))
    second = raw_tick(first.cursor)
    print("next tick, same files:", describe(second))
    (raw_in / "eitc_state.csv").write_text((raw_in / "eitc_state.csv").read_text() + "\n")
    third = raw_tick(second.cursor)
    print("after editing eitc_state.csv:", describe(third))
    print("and then:", describe(raw_tick(third.cursor)))

    # The release gate on a stub graph (tests/release_fixtures.py): stub area assets whose
    # blocking check we set red, then green; the real release assets, jobs and sensors.
    gate_store = write_fixture_store(OUT / "release_store")
    check = {"pass": False, "why": "hold-out error 31% > 25%"}
    gate_defs = release_test_defs(gate_store, check)

    def gate_tick(cursor):
        return release_gate_sensor.evaluate_tick(
            dg.build_sensor_context(instance=instance, cursor=cursor, definitions=gate_defs))

    gate_defs.resolve_job_def("build").execute_in_process(instance=instance, run_config=QUIET,
                                                          raise_on_error=False)
    red = gate_tick(None)
    print("\nrelease_gate after a red build:", red.skip_message)
    check["pass"] = True
    green_run = gate_defs.resolve_job_def("build").execute_in_process(instance=instance,
                                                                      run_config=QUIET)
    green = gate_tick(red.cursor)
    print("release_gate after a green build:", [r.job_name or "stage_release"
                                                for r in green.run_requests],
          "tags", green.run_requests[0].tags, "(build run", green_run.run_id[:8] + ")")
    print("and once only:", gate_tick(green.cursor).skip_message)

# ---------------------------------------------------------------------------------------------
_walk.section("5. Stage and promote a local release")
# calibration_core.release on the fixture store of section 4: every area file, the national file
# and a validation summary (tiny H5 files; tests/release_fixtures.py). The stage_release and
# promote jobs call these same functions.
store = gate_store  # the same fixture store
release_root = store / "release"
config = {"name": "toy", "clones": 4}
v1 = rel.stage_release(store, run_id, config=config, version=version, git_sha=sha,
                       release_root=release_root)
manifest = rel.read_manifest(v1)
print(f"staged {v1.relative_to(store)}: {manifest['file_count']} files, "
      f"{manifest['total_bytes']} bytes, counts {manifest['counts']}, "
      f"complete {manifest['complete']}")
print("inputs hashed:", list(manifest["inputs"]))
print("published before promotion:", rel.published_run_id(release_root))
rel.promote_local(release_root, run_id)
print("published after promotion:", rel.published_run_id(release_root),
      "->", (release_root / "published").readlink())

# a second release; a promotion that fails at its commit point leaves production unchanged
run_id2 = rel.make_run_id(version, sha, when + dt.timedelta(days=1))
rel.stage_release(store, run_id2, config=config, version=version, git_sha=sha,
                  release_root=release_root)


def kill_at_swap(step):
    if step == "swap":
        raise KeyboardInterrupt("killed just before the swap")


try:
    rel.promote_local(release_root, run_id2, fault=kill_at_swap)
except KeyboardInterrupt as exc:
    print(f"promotion of {run_id2} killed ({exc}); published is still",
          rel.published_run_id(release_root))
rel.promote_local(release_root, run_id2)
print("promoted again:", rel.published_run_id(release_root))

# corrupt a staged file: verification names it
victim = release_root / "versions" / run_id / "states" / "CA.h5"
victim.unlink()
shutil.copyfile(store / "areas" / "states" / "TX.h5", victim)
print("problems in the tampered version:", rel.verify_manifest(release_root / "versions" / run_id))
proc = subprocess.run([sys.executable, "-m", "calibration_core.release", "verify",
                       str(release_root / "published"), "--require-complete"],
                      cwd=_walk.ROOT, capture_output=True, text=True, timeout=120)
print("python -m calibration_core.release verify .../published --require-complete ->",
      proc.returncode, proc.stdout.strip()[:150])
print("staged pointer:", json.dumps(rel.staged_pointer(release_root))[:120], "...")

_walk.done()
