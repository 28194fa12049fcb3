"""The Definitions object loads, every job resolves, and the CLI validates the workspace."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_definitions_load_and_jobs_resolve():
    from definitions import defs

    jobs = defs.resolve_all_job_defs()
    assert "build_all" in {job.name for job in jobs}
    graph = defs.resolve_asset_graph()
    assert graph.get(__import__("dagster").AssetKey("raw_public_inputs")).group_name == "raw"


def test_every_asset_has_a_description_and_group():
    from definitions import defs

    graph = defs.resolve_asset_graph()
    for key in graph.get_all_asset_keys():
        node = graph.get(key)
        if not node.is_executable:
            continue
        assert node.description, f"{key.to_user_string()} has no description"
        assert node.group_name and node.group_name != "default", key.to_user_string()


def test_dagster_cli_validates_workspace(tmp_path):
    env = dict(os.environ, DAGSTER_HOME=str(tmp_path))
    proc = subprocess.run(
        [sys.executable, "-m", "dagster", "definitions", "validate", "-w", "workspace.yaml"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]


def test_the_whole_graph_takes_one_cli_partition_range():
    """`dagster asset materialize --partition-range A...B` refuses any selected asset whose
    backfill policy is not single-run (dagster/_cli/asset.py); the README's whole-build command
    names the first and last area partition."""
    import re

    import dagster as dg
    from definitions import defs

    graph = defs.resolve_asset_graph()
    keys = [k for k in graph.get_all_asset_keys() if graph.get(k).is_executable]
    not_single = [k.to_user_string() for k in keys
                  if graph.get(k).backfill_policy != dg.BackfillPolicy.single_run()]
    assert not not_single, f"not BackfillPolicy.single_run(): {not_single}"
    areas = graph.get(dg.AssetKey("area_datasets")).partitions_def.get_partition_keys()
    ranges = re.findall(r"--partition-range (\S+)\.\.\.(\S+)", (ROOT / "README.md").read_text())
    assert ranges and set(ranges) == {(areas[0], areas[-1])}, ranges
