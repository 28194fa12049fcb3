"""Release manifest, verification, staging and all-or-nothing promotion (calibration_core.release),
and the release assets and jobs (staged_release, published_release, promote)."""
from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from calibration_core import release as rel
from calibration_core.areas import load_city_catalog
from tests.release_fixtures import write_fixture_store

ROOT = Path(__file__).resolve().parents[1]
CONFIG = {"preset": "tiny", "clones": 4}


def _stage(store: Path, second: int = 0, **kw) -> Path:
    run_id = rel.make_run_id("0.1.0", "b005aa262f81be69",
                             dt.datetime(2025, 1, 2, 3, 4, second, tzinfo=dt.timezone.utc))
    return rel.stage_release(store, run_id, config=CONFIG, version="0.1.0",
                             git_sha="b005aa262f81be69", **kw)


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    return write_fixture_store(tmp_path_factory.mktemp("store"))


def test_run_id_format():
    when = dt.datetime(2025, 7, 31, 23, 59, 58, tzinfo=dt.timezone.utc)
    assert rel.make_run_id("1.2.3", "ABCDEF0123456789", when) == "1.2.3_abcdef01_20250731_235958"
    assert rel.make_run_id("1.2.3", None, when) == "1.2.3_00000000_20250731_235958"
    with pytest.raises(ValueError, match="version"):
        rel.make_run_id("1 2", "abcdef01", when)
    with pytest.raises(ValueError, match="timezone"):
        rel.make_run_id("1.2.3", "abcdef01", dt.datetime(2025, 1, 1))


def test_two_stages_in_the_same_second_get_different_run_ids(tmp_path):
    when = dt.datetime(2025, 7, 31, 23, 59, 59, tzinfo=dt.timezone.utc)
    versions = tmp_path / "versions"
    first = rel.unused_run_id(versions, "1.2.3", "abcdef01", when)
    assert first == "1.2.3_abcdef01_20250731_235959"
    (versions / first).mkdir(parents=True)
    # a stage still copying into its hidden folder holds its id too
    (versions / ".1.2.3_abcdef01_20250801_000000.p123.abcdefgh").mkdir()
    second = rel.unused_run_id(versions, "1.2.3", "abcdef01", when)
    assert second == "1.2.3_abcdef01_20250801_000001"
    assert rel.check_run_id(second) == second


def test_stage_writes_a_complete_manifest_that_verifies(store, tmp_path):
    folder = _stage(store, release_root=tmp_path / "rel")
    manifest = rel.read_manifest(folder)
    assert folder.name == manifest["run_id"] == "0.1.0_b005aa26_20250102_030400"
    assert manifest["counts"] == rel.expected_counts()
    assert manifest["counts"]["states"] == 51 and manifest["counts"]["districts"] == 436
    assert manifest["counts"]["cities"] == len(load_city_catalog()) >= 2
    assert manifest["complete"] is True
    # every area of the catalog + national + validation summary + csv
    assert manifest["file_count"] == sum(rel.expected_counts().values()) + 2
    entry = manifest["files"]["districts/CA-12.h5"]
    assert entry["size"] == (store / "areas/districts/CA-12.h5").stat().st_size
    assert entry["sha256"] == rel.sha256_file(store / "areas/districts/CA-12.h5")
    assert set(manifest["inputs"]) == {
        "raw/manifest.json", "targets/policy_data.db", "calibration/package/initial_weights.npy",
        "calibration/package/metadata.json", "calibration/regional_weights.npy"}
    assert manifest["validation"]["holdout"]["state"]["mean_rel_abs_error"] == 0.05
    assert manifest["config"] == CONFIG
    assert rel.verify_manifest(folder, require_complete=True) == []
    assert rel.staged_pointer(tmp_path / "rel")["run_id"] == manifest["run_id"]
    # same inputs and outputs -> same content digest, whatever the run id
    again = _stage(store, second=1, release_root=tmp_path / "rel")
    assert rel.read_manifest(again)["content_sha256"] == manifest["content_sha256"]
    with pytest.raises(rel.ReleaseError, match="already exists"):
        _stage(store, release_root=tmp_path / "rel")


def _cli_verify(folder: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "calibration_core.release", "verify", str(folder)],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)


def test_verify_finds_every_kind_of_tampering(store, tmp_path):
    folder = _stage(store, release_root=tmp_path / "rel")
    ok = _cli_verify(folder)
    assert ok.returncode == 0 and ok.stdout.startswith("OK"), ok.stderr
    # staged files are read-only copies: replace them to tamper (the store's files stay as built)
    for path in folder.rglob("*.h5"):
        data = path.read_bytes()
        path.unlink()
        path.write_bytes(data)
    (folder / "states/CA.h5").write_bytes(b"x" * (folder / "states/CA.h5").stat().st_size)
    (folder / "districts/TX-01.h5").write_bytes(b"short")
    (folder / "cities/NYC.h5").unlink()
    (folder / "states/ZZ.h5").write_bytes(b"extra")
    problems = rel.verify_manifest(folder)
    assert any(p.startswith("states/CA.h5: sha256") for p in problems), problems
    assert any(p.startswith("districts/TX-01.h5: size") for p in problems), problems
    assert "cities/NYC.h5: listed in the manifest but missing" in problems
    assert "states/ZZ.h5: present but not listed in the manifest" in problems
    bad = _cli_verify(folder)
    assert bad.returncode == 1 and "FAIL states/CA.h5: sha256" in bad.stderr
    # an edited manifest no longer matches its own digest
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["config"]["preset"] = "full"
    (folder / "manifest.json").write_text(json.dumps(manifest))
    assert any("content_sha256" in p for p in rel.verify_manifest(folder))
    assert _cli_verify(tmp_path / "nowhere").returncode == 1


def test_incomplete_or_empty_release_is_refused(tmp_path):
    partial = write_fixture_store(tmp_path / "partial", skip=3)
    with pytest.raises(rel.ReleaseError, match="districts: 433 file"):
        _stage(partial)
    assert not list((partial / "release" / "versions").glob("*"))
    folder = _stage(partial, require_complete=False)
    assert rel.read_manifest(folder)["complete"] is False
    assert any("incomplete" in p for p in rel.verify_manifest(folder, require_complete=True))
    empty = write_fixture_store(tmp_path / "empty", areas=False)
    with pytest.raises(rel.ReleaseError, match="no release files"):
        _stage(empty)


def _write_in_place(path: Path, data: bytes = b"CORRUPT!", offset: int = 64) -> None:
    """What a rebuild that opens a file for update does: same inode, new bytes."""
    with open(path, "r+b") as handle:
        handle.seek(offset)
        handle.write(data)


def test_a_published_release_owns_its_bytes(tmp_path):
    """An in-place write into a build file after promotion changes neither the published file
    nor its verification: the release holds copies (reflinks at most), never hard links."""
    store = write_fixture_store(tmp_path / "store")
    root = tmp_path / "rel"
    folder = _stage(store, release_root=root)
    rel.promote_local(root, folder.name)
    build_file = store / "areas/states/WY.h5"
    published = root / "published" / "states/WY.h5"
    before = published.read_bytes()
    assert before == build_file.read_bytes()
    for staged in folder.rglob("*"):
        if staged.is_file():
            source = store / "areas" / staged.relative_to(folder)
            assert staged.stat().st_nlink == 1, staged
            if source.exists():
                assert not os.path.samefile(staged, source), staged
            assert not staged.stat().st_mode & 0o222, f"{staged} is writable"
    _write_in_place(build_file)
    assert build_file.read_bytes() != before
    assert published.read_bytes() == before
    assert rel.verify_manifest(root / "published", require_complete=True) == []
    assert _cli_verify(root / "published").returncode == 0


def test_a_build_file_changed_after_its_build_is_not_staged(tmp_path):
    store = write_fixture_store(tmp_path / "store")
    recorded = {rel_path: rel.sha256_file(path)
                for rel_path, path in rel.collect_release_files(store / "areas").items()}
    _write_in_place(store / "areas/states/WY.h5")
    with pytest.raises(rel.ReleaseError, match=r"areas/states/WY\.h5: sha256 .* changed after"):
        _stage(store, recorded=recorded)
    assert list((store / "release" / "versions").iterdir()) == []
    assert not (store / "release" / "staged.json").exists()
    # an area file the build has no record of is refused too; other files need no record
    del recorded["states/WY.h5"], recorded["validation/validation.csv"]
    with pytest.raises(rel.ReleaseError, match=r"areas/states/WY\.h5: the build recorded no"):
        _stage(store, recorded=recorded)
    recorded["states/WY.h5"] = rel.sha256_file(store / "areas/states/WY.h5")  # rebuilt
    folder = _stage(store, recorded=recorded)
    assert rel.verify_manifest(folder, require_complete=True) == []


def test_staged_json_moves_only_when_asked(store, tmp_path):
    """The stage job stages with write_pointer=False and writes the pointer after its upload."""
    root = tmp_path / "rel"
    folder = _stage(store, release_root=root, write_pointer=False)
    assert not (root / "staged.json").exists()
    pointer = rel.write_staged_pointer(root, folder, dagster_run_id="abc")
    assert rel.staged_pointer(root) == pointer
    assert pointer["run_id"] == folder.name and pointer["dagster_run_id"] == "abc"


@pytest.mark.parametrize("step", ["hash", "copy", "manifest", "verify", "rename"])
def test_failed_staging_leaves_nothing(store, tmp_path, step):
    def fault(name):
        if name == step:
            raise RuntimeError(f"injected at {name}")

    with pytest.raises(RuntimeError, match="injected"):
        _stage(store, release_root=tmp_path / "rel", fault=fault)
    assert list((tmp_path / "rel" / "versions").iterdir()) == []
    assert not (tmp_path / "rel" / "staged.json").exists()


def _published_state(root: Path):
    link = root / "published"
    return os.readlink(link), rel.verify_manifest(link)


def test_promotion_is_all_or_nothing(store, tmp_path):
    root = tmp_path / "rel"
    first = _stage(store, second=0, release_root=root)
    second = _stage(store, second=1, release_root=root)
    assert rel.published_run_id(root) is None
    rel.promote_local(root, first.name)
    before = _published_state(root)
    assert before == ("versions/" + first.name, [])
    for step in rel.PROMOTION_STEPS:
        def fault(name, step=step):
            if name == step:
                raise RuntimeError(f"injected at {name}")

        with pytest.raises(RuntimeError, match="injected"):
            rel.promote_local(root, second.name, fault=fault)
        assert _published_state(root) == before, step
        assert not list(root.glob(".published.*")), step
    # a corrupt staged release is refused before anything changes
    (second / "validation/validation.csv").unlink()
    (second / "validation/validation.csv").write_text("tampered\n")
    with pytest.raises(rel.ReleaseError, match="production unchanged"):
        rel.promote_local(root, second.name)
    assert _published_state(root) == before
    third = _stage(store, second=2, release_root=root)
    rel.promote_local(root, third.name)
    assert _published_state(root) == ("versions/" + third.name, [])
    assert rel.published_run_id(root) == third.name
    assert _cli_verify(root / "published").returncode == 0


KILLER = """
import os, sys
from calibration_core.release import promote_local
root, run_id, step = sys.argv[1:]
def fault(name):
    if name == step:
        os._exit(9)  # as if killed: no cleanup, no exception handlers
promote_local(root, run_id, fault=fault)
"""


def test_killing_the_promotion_midway_leaves_production_unchanged(store, tmp_path):
    root = tmp_path / "rel"
    first = _stage(store, second=0, release_root=root)
    second = _stage(store, second=1, release_root=root)
    rel.promote_local(root, first.name)
    before = _published_state(root)
    for step in rel.PROMOTION_STEPS:
        proc = subprocess.run([sys.executable, "-c", KILLER, str(root), second.name, step],
                              cwd=ROOT, capture_output=True, text=True, timeout=120)
        assert proc.returncode == 9, proc.stderr
        assert _published_state(root) == before, step
    # a leftover temporary link from the kill does not block the next promotion
    rel.promote_local(root, second.name)
    assert _published_state(root) == ("versions/" + second.name, [])
    assert not list(root.glob(".published.*"))


def test_a_killed_stages_hidden_folder_is_swept_by_the_next_stage(store, tmp_path):
    """A stage killed while copying leaves ``versions/.<run_id>.p<pid>.<random>/``; the next
    stage removes it (its writer is gone) and keeps a live writer's folder."""
    from calibration_core.io_utils import temporary_prefix

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    versions = tmp_path / "rel" / rel.VERSIONS_DIR
    versions.mkdir(parents=True)
    run_id = "0.1.0_deadbeef_20240101_000000"
    killed = versions / (temporary_prefix(run_id).replace(f".p{os.getpid()}.",
                                                          f".p{dead.pid}.") + "abcd1234")
    live = versions / (temporary_prefix(run_id) + "efgh5678")
    for folder in (killed, live):
        folder.mkdir()
        (folder / "partial.h5").write_bytes(b"partial")
        past = time.time() - 3600
        os.utime(folder, (past, past))
    _stage(store, release_root=tmp_path / "rel")
    assert not killed.exists() and live.exists()
