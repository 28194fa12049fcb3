"""Small fixture stores in the real layout: every area H5 file (489 with the default city
catalog), the national file, the validation summary and CSV under ``areas/``, plus the inputs (raw manifest, targets DB, package, weights)."""
from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import h5py
import numpy as np

from calibration_core.areas import all_areas, parse_area_key
from calibration_core.io_utils import sha256_file


def write_h5(path: Path, key: str, households: int = 3) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(path, "w") as f:
        f.create_dataset("household_id/2024", data=np.arange(households, dtype=np.int64))
        f.create_dataset("household_weight/2024", data=np.full(households, 1.5))
        f.attrs["area"] = key


def write_fixture_store(root: Path, areas: bool = True, skip: int = 0) -> Path:
    """A store under ``root`` with every input and (``areas``) a complete release, minus the
    last ``skip`` district files."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "raw").mkdir(exist_ok=True)
    (root / "raw" / "manifest.json").write_text(json.dumps(
        {"provider": "directory", "packages": {},
         "files": {"agi_state.csv": {"size": 3, "sha256": "ab" * 32, "origin": "directory:x"}}}))
    (root / "targets").mkdir(exist_ok=True)
    with sqlite3.connect(root / "targets" / "policy_data.db") as db:
        db.execute("create table if not exists targets (id integer primary key, value real)")
        db.execute("insert into targets (value) values (1.0)")
    package = root / "calibration" / "package"
    package.mkdir(parents=True, exist_ok=True)
    np.save(package / "initial_weights.npy", np.ones(4))
    (package / "metadata.json").write_text('{"n_records": 2}')
    np.save(root / "calibration" / "regional_weights.npy", np.arange(4.0))
    if not areas:
        return root
    area_list = all_areas()
    districts = [a for a in area_list if a.kind == "district"]
    dropped = {a.key for a in districts[len(districts) - skip:]} if skip else set()
    for area in area_list:
        if area.key not in dropped:
            write_h5(root / "areas" / area.relative_path, area.key)
    write_h5(root / "areas" / "national" / "US.h5", "national-US", households=5)
    validation = root / "areas" / "validation"
    validation.mkdir(parents=True, exist_ok=True)
    (validation / "summary.json").write_text(json.dumps(
        {"in_sample": {"state": {"mean_rel_abs_error": 0.01}},
         "holdout": {"state": {"mean_rel_abs_error": 0.05}}}))
    (validation / "validation.csv").write_text("area,target,rel_error\nstate-CA,x,0.01\n")
    return root


def release_test_defs(store_root: Path, check: dict, publisher=None) -> dg.Definitions:
    """Stub area assets (a blocking check whose result ``check["pass"]`` sets) plus the real
    release assets, jobs and sensors, on a store at ``store_root``. Like the real ones, the
    stubs record each file's sha256 in its materialization (``area_datasets`` partitioned by
    area, built in one run over all area partitions), which staging checks the files against."""
    import dagster as dg

    from assets.release import published_release, staged_release
    from jobs import ALL_AREAS_TAGS, promote, stage_release
    from resources.publisher import LocalDirectoryPublisher
    from resources.raw_inputs import DirectoryProvider
    from resources.settings import BuildSettings
    from resources.store import ArtifactStore
    from sensors import ALL_SENSORS

    areas_dir = Path(store_root) / "areas"

    # like assets/areas.py: partitioned, one batched run, each partition's own materialization
    # recording its file's sha256 (which staging checks the file against)
    @dg.asset(name="area_datasets", group_name="areas",
              partitions_def=dg.StaticPartitionsDefinition([a.key for a in all_areas()]),
              backfill_policy=dg.BackfillPolicy.single_run())
    def area_datasets(context):
        keys = list(context.partition_keys)
        yield dg.MaterializeResult(metadata={"areas": len(keys)})
        for key in keys:
            path = areas_dir / parse_area_key(key).relative_path
            meta = {"sha256": sha256_file(path)} if path.is_file() else {}
            yield dg.AssetMaterialization(asset_key=context.asset_key, partition=key,
                                          metadata=meta)

    @dg.asset(name="national_dataset", group_name="areas")
    def national_dataset():
        return dg.MaterializeResult(metadata={"sha256": sha256_file(areas_dir / "national/US.h5")})

    @dg.asset(name="validation_report", group_name="areas", deps=[area_datasets])
    def validation_report():
        return dg.MaterializeResult()

    @dg.asset_check(asset=validation_report, blocking=True)
    def errors_within_tolerance():
        return dg.AssetCheckResult(passed=check["pass"], description=check.get("why"))

    @dg.asset_check(asset=area_datasets, blocking=False)
    def informational():
        return dg.AssetCheckResult(passed=False, severity=dg.AssetCheckSeverity.WARN)

    build = dg.define_asset_job("build", selection=dg.AssetSelection.groups("areas"),
                                tags=ALL_AREAS_TAGS)
    return dg.Definitions(
        assets=[area_datasets, national_dataset, validation_report, staged_release,
                published_release],
        asset_checks=[errors_within_tolerance, informational],
        jobs=[build, stage_release, promote],
        sensors=ALL_SENSORS,
        resources={"store": ArtifactStore(root=str(store_root)),
                   "publisher": publisher or LocalDirectoryPublisher(),
                   "settings": BuildSettings(preset="tiny"),
                   "raw_inputs": DirectoryProvider(path=str(store_root))},
    )
