"""The release jobs against what can go wrong between a build and production (issue 21): a build
file changed after its build, a stage whose upload fails, a corrupted staged file. Runs the real
``stage_release`` / ``promote`` jobs through ``python -m jobs.release_cli`` (in process, on the
stub graph of tests/release_fixtures.py) in a persistent instance, as an operator would."""
from __future__ import annotations

import json
import os
import socket
from pathlib import Path

import dagster as dg
import pytest

from calibration_core import release as rel
from jobs import release_cli
from resources.publisher import HuggingFacePublisher
from tests.release_fixtures import release_test_defs, write_fixture_store


@pytest.fixture()
def dagster_home(tmp_path, monkeypatch):
    home = tmp_path / "dagster_home"
    home.mkdir()
    (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    return home


def _cli(defs, command: str, capsys) -> tuple[int, str, str]:
    capsys.readouterr()
    code = release_cli.main([command], defs=defs)
    out = capsys.readouterr()
    return code, out.out, out.err


def _reasons(err: str) -> list[str]:
    """The CLI's own stderr lines, one per failed step (not Dagster's log and its traces)."""
    return [line for line in err.splitlines()
            if line.startswith(("staged_release: ", "published_release: "))]


def _write_in_place(path: Path, data: bytes = b"CORRUPT!", offset: int = 64) -> None:
    os.chmod(path, 0o644)
    with open(path, "r+b") as handle:
        handle.seek(offset)
        handle.write(data)


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]  # nothing listens once the socket is closed


def test_stage_checks_files_against_their_build_and_promote_names_the_bad_file(
        dagster_home, tmp_path, capsys):
    store = write_fixture_store(tmp_path / "store")
    defs = release_test_defs(store, {"pass": True})
    with dg.DagsterInstance.get() as instance:
        assert defs.resolve_job_def("build").execute_in_process(instance=instance).success
    release = store / "release"

    # (b) a build file written in place after its build: stage fails naming it, stages nothing
    wy = store / "areas" / "states" / "WY.h5"
    original = wy.read_bytes()
    _write_in_place(wy)
    code, out, err = _cli(defs, "stage", capsys)
    assert code == 1 and "stage_release FAILED" in out
    assert any("areas/states/WY.h5" in line and "changed after" in line
               for line in _reasons(err)), err
    assert not (release / "staged.json").exists()
    assert not list((release / "versions").iterdir())

    wy.write_bytes(original)  # back to what the build recorded
    code, out, err = _cli(defs, "stage", capsys)
    assert code == 0, err
    pointer = rel.staged_pointer(release)
    folder = Path(pointer["folder"])
    assert pointer["dagster_run_id"] and rel.verify_manifest(folder, require_complete=True) == []

    # (d) a staged file corrupted before promotion: promote refuses and names it on stderr
    _write_in_place(folder / "states" / "CA.h5")
    code, out, err = _cli(defs, "promote", capsys)
    assert code == 1 and "promote FAILED" in out
    reasons = _reasons(err)
    assert any("states/CA.h5: sha256" in line for line in reasons), err
    assert rel.published_run_id(release) is None

    # (a) through the jobs: once promoted, writing into the build's file leaves production as is
    (folder / "states" / "CA.h5").unlink()
    rel.copy_file(store / "areas" / "states" / "CA.h5", folder / "states" / "CA.h5")
    code, out, err = _cli(defs, "promote", capsys)
    assert code == 0, err
    published = release / "published" / "states" / "WY.h5"
    before = published.read_bytes()
    _write_in_place(wy)
    assert published.read_bytes() == before
    assert rel.verify_manifest(release / "published", require_complete=True) == []


def test_a_stage_that_fails_uploading_cannot_be_promoted(dagster_home, tmp_path, capsys):
    store = write_fixture_store(tmp_path / "store")
    local = release_test_defs(store, {"pass": True})
    unreachable = release_test_defs(store, {"pass": True}, publisher=HuggingFacePublisher(
        repo_id="policyengine-test/areacal", token="hf_unused",
        endpoint=f"http://127.0.0.1:{_closed_port()}"))
    release = store / "release"
    with dg.DagsterInstance.get() as instance:
        assert local.resolve_job_def("build").execute_in_process(instance=instance).success

    code, out, err = _cli(local, "stage", capsys)
    assert code == 0, err
    first = json.loads((release / "staged.json").read_text())

    # the upload is refused: the stage fails, staged.json still names the first release, and
    # the second version folder is not left behind
    code, out, err = _cli(unreachable, "stage", capsys)
    assert code == 1 and "stage_release FAILED" in out
    assert any("Connection refused" in line or "Errno 111" in line
               for line in _reasons(err)), err
    assert json.loads((release / "staged.json").read_text()) == first
    assert [p.name for p in (release / "versions").iterdir()] == [first["run_id"]]

    # promote refuses: the last stage did not succeed, so what is staged is not what was asked
    code, out, err = _cli(local, "promote", capsys)
    assert code == 1 and "promote FAILED" in out
    assert any("promote refused" in line and "the last stage_release run" in line
               and "FAILURE" in line for line in _reasons(err)), err
    assert rel.published_run_id(release) is None

    # a successful stage makes promotion possible again
    code, out, err = _cli(local, "stage", capsys)
    assert code == 0, err
    staged = rel.staged_pointer(release)
    assert staged["run_id"] != first["run_id"]
    code, out, err = _cli(local, "promote", capsys)
    assert code == 0, err
    assert rel.published_run_id(release) == staged["run_id"]


def test_promote_refuses_a_pointer_no_stage_run_wrote(dagster_home, tmp_path, capsys):
    """A staged.json written outside the stage job (by hand, or by an older version that moved
    it before the upload) names no successful stage run: promote refuses and says so."""
    store = write_fixture_store(tmp_path / "store")
    defs = release_test_defs(store, {"pass": True})
    release = store / "release"
    run_id = rel.make_run_id("0.1.0", "0123abcd")
    rel.stage_release(store, run_id, config={}, version="0.1.0", git_sha="0123abcd")
    code, out, err = _cli(defs, "promote", capsys)
    assert code == 1
    assert any("promote refused" in line and "no stage_release run" in line
               for line in _reasons(err)), err
    assert rel.published_run_id(release) is None
