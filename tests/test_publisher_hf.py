"""HuggingFacePublisher against a loopback Hub endpoint that records what the real
``huggingface_hub`` client sends: staging is one commit under ``staging/<run_id>/``, promotion is
one commit of copies plus the manifest, the token travels only in the Authorization header."""
from __future__ import annotations

import datetime as dt
import json
import logging
import secrets
from pathlib import Path

import dagster as dg
import pytest

from calibration_core import release as rel
from resources.publisher import HuggingFacePublisher, LocalDirectoryPublisher
from tests.hub_server import FakeHub
from tests.release_fixtures import release_test_defs, write_fixture_store

REPO = "policyengine-test/areacal"


def _stage(store: Path, second: int) -> Path:
    run_id = rel.make_run_id("0.1.0", "0123abcd", dt.datetime(2025, 3, 4, 5, 6, second,
                                                              tzinfo=dt.timezone.utc))
    return rel.stage_release(store, run_id, config={"preset": "tiny"}, version="0.1.0",
                             git_sha="0123abcd")


@pytest.fixture(scope="module")
def staged(tmp_path_factory):
    store = write_fixture_store(tmp_path_factory.mktemp("hfstore"))
    return store, _stage(store, 0), _stage(store, 1)


@pytest.fixture()
def token(monkeypatch):
    value = "hf_" + secrets.token_hex(12)
    monkeypatch.setenv("AREACAL_TEST_HF_TOKEN", value)
    return value


def _publisher(hub: FakeHub) -> HuggingFacePublisher:
    resource = HuggingFacePublisher(repo_id=REPO, token=dg.EnvVar("AREACAL_TEST_HF_TOKEN"),
                                    endpoint=hub.url)
    return resource.process_config_and_initialize()  # resolves the EnvVar as Dagster does


def _commit_requests(hub: FakeHub, since: int = 0) -> list[dict]:
    return [r for r in hub.requests[since:] if r["method"] == "POST" and "/commit/" in r["path"]]


def _production(hub: FakeHub) -> dict[str, bytes]:
    return {p: d for p, d in hub.files.items() if not p.startswith(("staging/", "releases/"))}


def test_stage_and_promote_are_one_commit_each(staged, token, tmp_path, caplog, capfd):
    caplog.set_level(logging.DEBUG)
    store, first, _ = staged
    manifest = rel.read_manifest(first)
    run_id = first.name
    with FakeHub(REPO, token) as hub:
        publisher = _publisher(hub)
        out = publisher.stage(first, run_id, store / "release")
        assert len(hub.commits) == 1 and len(_commit_requests(hub)) == 1
        assert out["commit"] == hub.head
        assert set(hub.files) == {f"staging/{run_id}/{p}"
                                  for p in [*manifest["files"], "manifest.json"]}
        assert hub.files[f"staging/{run_id}/states/CA.h5"] == (first / "states/CA.h5").read_bytes()
        assert _production(hub) == {}
        assert publisher.staged_problems(first, run_id, "main") == []

        n = len(hub.requests)
        out = publisher.promote(first, run_id, store / "release")
        commits = _commit_requests(hub, n)
        assert len(commits) == 1 and len(hub.commits) == 2
        promotion = hub.commits[-1]
        assert promotion["parent"] == hub.commits[0]["oid"] == out["parent"]
        assert promotion["summary"] == f"Release {run_id}"
        # the NDJSON body: header, one entry per released file, the two manifests
        assert len(promotion["operations"]) == manifest["file_count"] + 2
        assert b'"parentCommit"' in commits[0]["body"]
        assert commits[0]["content_type"] == "application/x-ndjson"
        # what the real client asked for before committing
        asked = {r["path"].split("/")[-2] for r in hub.requests[n:] if r["path"].startswith("/api/")}
        assert asked == {"revision", "paths-info", "preupload", "commit"}
        # regular (non-LFS) sources are read back through /resolve/ and sent in the commit
        assert any("/resolve/" in r["path"] for r in hub.requests[n:])

        # production now holds exactly the release, and it verifies from the Hub's bytes
        production = _production(hub)
        assert set(production) == {*manifest["files"], "manifest.json"}
        assert hub.files[f"releases/{run_id}/manifest.json"] == production["manifest.json"]
        mirror = tmp_path / "mirror"
        for path, data in production.items():
            (mirror / path).parent.mkdir(parents=True, exist_ok=True)
            (mirror / path).write_bytes(data)
        assert rel.verify_manifest(mirror, require_complete=True) == []

        # the token went only into the Authorization header, never into logs or output
        assert all(r["authorization"] == f"Bearer {token}" for r in hub.requests)
        assert all(token.encode() not in r["body"] for r in hub.requests)
    out, err = capfd.readouterr()
    assert token not in caplog.text + out + err
    assert token not in repr(publisher)


def test_a_corrupt_staging_or_a_moved_branch_changes_nothing(staged, token, monkeypatch):
    store, first, second = staged
    with FakeHub(REPO, token) as hub:
        publisher = _publisher(hub)
        publisher.stage(first, first.name, store / "release")
        publisher.promote(first, first.name, store / "release")
        publisher.stage(second, second.name, store / "release")
        before, head = _production(hub), hub.head

        hub.tamper(f"staging/{second.name}/districts/CA-12.h5", b"corrupted")
        with pytest.raises(rel.ReleaseError, match="districts/CA-12.h5: size"):
            publisher.promote(second, second.name, store / "release")
        assert hub.head == head and _production(hub) == before
        hub.tamper(f"staging/{second.name}/districts/CA-12.h5",
                   (second / "districts/CA-12.h5").read_bytes())

        # someone commits between the check and the promotion commit: the Hub refuses it
        original = HuggingFacePublisher.staged_problems

        def racing(self, *args):
            problems = original(self, *args)
            moved = "f" * 40
            hub.snapshots[moved] = dict(hub.files)
            hub.head = moved
            return problems

        monkeypatch.setattr(HuggingFacePublisher, "staged_problems", racing)
        with pytest.raises(Exception, match="412|commit has happened"):
            publisher.promote(second, second.name, store / "release")
        assert _production(hub) == before
        monkeypatch.undo()

        publisher.promote(second, second.name, store / "release")
        assert _production(hub)["manifest.json"] == (second / "manifest.json").read_bytes()


def test_a_wrong_token_is_refused_and_nothing_is_committed(staged, token):
    store, first, _ = staged
    with FakeHub(REPO, token) as hub:
        bad = HuggingFacePublisher(repo_id=REPO, token="hf_wrong", endpoint=hub.url)
        with pytest.raises(Exception, match="401|Invalid credentials"):
            bad.stage(first, first.name, store / "release")
        assert hub.commits == []


def test_local_publisher_can_mirror_to_another_folder(staged, tmp_path):
    store, first, second = staged
    publisher = LocalDirectoryPublisher(root=str(tmp_path / "share"))
    out = publisher.stage(first, first.name, store / "release")
    assert Path(out["location"]) == tmp_path / "share" / "versions" / first.name
    assert rel.verify_manifest(out["location"]) == []
    publisher.promote(first, first.name, store / "release")
    assert rel.published_run_id(tmp_path / "share") == first.name
    assert rel.published_run_id(store / "release") is None  # the store's own link untouched


def test_release_jobs_publish_to_the_hub_without_leaking_the_token(token, tmp_path):
    """stage_release and promote with the Hub publisher configured as in definitions.py
    (token=dg.EnvVar): two commits, and the token appears in no event, log or run config."""
    from dagster._serdes import serialize_value

    store = write_fixture_store(tmp_path / "store")
    with FakeHub(REPO, token) as hub, dg.instance_for_test() as instance:
        publisher = HuggingFacePublisher(repo_id=REPO, endpoint=hub.url,
                                         token=dg.EnvVar("AREACAL_TEST_HF_TOKEN"))
        defs = release_test_defs(store, {"pass": True}, publisher=publisher)
        assert defs.resolve_job_def("build").execute_in_process(instance=instance).success
        runs = [defs.resolve_job_def(name).execute_in_process(instance=instance)
                for name in ("stage_release", "promote")]
        assert all(r.success for r in runs)
        run_id = runs[0].asset_materializations_for_node("staged_release")[0].metadata[
            "run_id"].value
        assert [c["summary"] for c in hub.commits] == [f"Stage release {run_id}",
                                                       f"Release {run_id}"]
        assert _production(hub)["manifest.json"] == (
            store / "release" / "versions" / run_id / "manifest.json").read_bytes()
        for run in instance.get_runs():
            assert token not in json.dumps(run.run_config, default=str)
            for entry in instance.all_logs(run.run_id):
                assert token not in serialize_value(entry)
