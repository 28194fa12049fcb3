"""The build entry point (``python -m jobs.build_cli``) runs the asset checks with the assets,
so the release gate can see them."""
from __future__ import annotations

import dagster as dg

import assets.raw_inputs
import assets.targets_db
from jobs.partitioned import materialize_graph, split_selection
from resources.raw_inputs import PyPICacheProvider
from resources.store import ArtifactStore


def test_build_evaluates_the_checks_of_the_selection(real_raw_dir, tmp_path, dagster_instance):
    checks = list(dg.load_asset_checks_from_modules([assets.targets_db]))
    defs = dg.Definitions(
        assets=[assets.raw_inputs.raw_public_inputs, assets.targets_db.targets_db],
        asset_checks=checks,
        resources={"store": ArtifactStore(root=str(tmp_path)), "raw_inputs": PyPICacheProvider()})
    assert split_selection(defs, "*") == ([dg.AssetKey("raw_public_inputs"),
                                           dg.AssetKey("targets_db")], [])
    assert materialize_graph(defs, dagster_instance, "*")
    keys = [key for c in checks for key in c.check_keys]
    records = dagster_instance.event_log_storage.get_latest_asset_check_execution_by_key(keys)
    assert len(keys) == 4 and set(records) == set(keys)
    assert all(r.evaluation is not None and r.evaluation.passed for r in records.values())


_REEXEC_SCRIPT = r"""
import sys
from pathlib import Path

import dagster as dg
from dagster._core.definitions.reconstruct import ReconstructableRepository

from jobs.partitioned import REPO, reexecute_from_failure

tmp = Path(sys.argv[1])
repo = ReconstructableRepository.for_module("tests.reexec_defs", "defs", working_directory=str(REPO))
with dg.instance_for_test(temp_dir=str(tmp / "home")) as instance:
    try:
        reexecute_from_failure(instance, module="tests.reexec_defs")
        raise SystemExit("a re-execution without a failed run")
    except ValueError as exc:
        assert "no failed run" in str(exc)
    with dg.execute_job(repo.get_reconstructable_job("__ASSET_JOB"), instance,
                        raise_on_error=False) as failed:
        assert not failed.success
    assert (tmp / "ran").read_text().split() == ["first", "second"]
    (tmp / "fail").unlink()
    run_id, ok = reexecute_from_failure(instance, module="tests.reexec_defs")
    assert ok and run_id != failed.run_id
    assert (tmp / "ran").read_text().split() == ["first", "second", "second"]
    run = instance.get_run_by_id(run_id)
    assert run.parent_run_id == failed.run_id and run.status == dg.DagsterRunStatus.SUCCESS
    try:
        reexecute_from_failure(instance, run_id, module="tests.reexec_defs")
        raise SystemExit("a successful run re-executed")
    except ValueError as exc:
        assert "not FAILURE" in str(exc)
print("REEXECUTED", run_id)
"""


def test_a_failed_build_is_re_executed_from_failure(tmp_path):
    """``python -m jobs.build_cli --from-failure``: a new run of the failed run's job that runs
    only the step that failed (``jobs.partitioned.reexecute_from_failure``). In a process of its
    own: ``dg.execute_job`` leaves a SIGTERM handler (KeyboardInterrupt) in its process, which
    must not leak into the test session."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    (tmp_path / "fail").touch()
    (tmp_path / "home").mkdir()
    repo = Path(__file__).resolve().parents[1]
    done = subprocess.run([sys.executable, "-c", _REEXEC_SCRIPT, str(tmp_path)], cwd=repo,
                          env={**os.environ, "AREACAL_TEST_MARKERS": str(tmp_path)},
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    assert "REEXECUTED" in done.stdout
