from __future__ import annotations

import json
import zipfile

import pytest

from calibration_core import raw_inputs
from calibration_core.raw_inputs import RawInputError
from tests.targets_fixtures import incd_frame


def test_pypi_fetch_extracts_every_file_with_hashes(real_raw_dir):
    manifest = raw_inputs.load_manifest(real_raw_dir)
    required = {r.name for r in raw_inputs.RAW_FILES if r.required}
    assert required <= set(manifest["files"])
    for name, entry in manifest["files"].items():
        path = real_raw_dir / name
        assert path.stat().st_size == entry["size"]
        assert raw_inputs.sha256_file(path) == entry["sha256"]
    assert manifest["packages"]["taxcalc"]["version"] == "6.8.0"


def test_second_fetch_uses_cache_without_pip(real_raw_dir, tmp_path, monkeypatch):
    # the archives are cached: a second fetch must not call pip at all
    def no_network(*args, **kwargs):
        raise AssertionError("pip was called although the cache holds the archives")

    monkeypatch.setattr(raw_inputs.subprocess, "run", no_network)
    manifest = raw_inputs.fetch_from_pypi(tmp_path / "raw2")
    assert manifest["files"]["cps.csv.gz"]["sha256"] == json.loads(
        (real_raw_dir / "manifest.json").read_text())["files"]["cps.csv.gz"]["sha256"]


def test_corrupt_cached_archive_is_refetched_or_refused(tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    cache.mkdir()
    package = raw_inputs.PACKAGES["taxcalc"]
    (cache / package.filename).write_bytes(b"not the real archive")

    def fake_pip(cmd, **kwargs):
        dest = cmd[cmd.index("-d") + 1]
        with open(f"{dest}/{package.filename}", "wb") as fh:
            fh.write(b"tampered")

        class Proc:
            returncode = 0
            stderr = ""
        return Proc()

    monkeypatch.setattr(raw_inputs.subprocess, "run", fake_pip)
    with pytest.raises(RawInputError, match="sha256"):
        raw_inputs._download(package, cache)
    assert (cache / package.filename).read_bytes() == b"not the real archive"


def test_directory_provider_names_missing_files(tmp_path):
    (tmp_path / "agi_state.csv").write_text("GEO_ID\n")
    with pytest.raises(RawInputError, match="acs_S0101_state_2024.json"):
        raw_inputs.collect_from_directory(tmp_path, tmp_path / "out")


def test_directory_provider_copies_required_and_optional(real_raw_dir, tmp_path):
    src = tmp_path / "user"
    src.mkdir()
    for raw in raw_inputs.RAW_FILES:
        if raw.required:
            (src / raw.name).write_bytes((real_raw_dir / raw.name).read_bytes())
    # optional files are validated like the rest before they enter the raw folder
    incd_frame().to_csv(src / "22incd.csv", index=False)
    (src / "unrelated.txt").write_text("x")
    manifest = raw_inputs.collect_from_directory(src, tmp_path / "out")
    assert "22incd.csv" in manifest["files"]
    assert "unrelated.txt" not in manifest["files"]
    assert manifest["provider"] == "directory"


def test_fingerprint_changes_with_content(real_raw_dir):
    manifest = raw_inputs.load_manifest(real_raw_dir)
    changed = json.loads(json.dumps(manifest))
    changed["files"]["agi_state.csv"]["sha256"] = "0" * 64
    assert raw_inputs.manifest_fingerprint(manifest) != raw_inputs.manifest_fingerprint(changed)
    assert zipfile.is_zipfile(real_raw_dir / "snap_fy69tocurrent.zip")
