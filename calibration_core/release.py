"""Releases: a manifest over the area files, a verified staged copy, all-or-nothing promotion.

Layout under the release root (``<store>/release``)::

    versions/<run_id>/manifest.json        the release manifest (below)
    versions/<run_id>/states/CA.h5 ...      every released file, as listed in the manifest
    published -> versions/<run_id>          production: a symbolic link, swapped atomically
    staged.json                             which run was staged last (read by the promote job)

A release is assembled from ``<store>/areas/`` (``states/``, ``districts/``, ``cities/``,
``national/``, ``validation/``). The manifest lists every file with its sha256 and size, the run
id ``{version}_{git sha[:8]}_{UTC YYYYMMDD_HHMMSS}``, the sha256 of every input (the raw-input
manifest, the targets database, the calibration package, the weights), the validation summary and
the run configuration. ``verify_manifest`` re-hashes a folder against its manifest.

Promotion is one ``rename(2)`` of a symbolic link: before it, production is the previous release;
after it, production is the new one, complete and verified. A failure (or a kill) at any earlier
step leaves production unchanged; at worst a temporary link is left behind, which the next
promotion removes.

Command line (exits non-zero on any problem)::

    python -m calibration_core.release verify .areacal/release/published
"""
from __future__ import annotations

import argparse
import contextlib
import datetime as _dt
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path, PurePosixPath
from typing import Callable, Iterable, Mapping

from .io_utils import _fsync_dir, atomic_write_json, sha256_bytes, sha256_file

MANIFEST_NAME = "manifest.json"
MANIFEST_FORMAT = "areacal-release/1"
STAGED_POINTER = "staged.json"
PUBLISHED_LINK = "published"
VERSIONS_DIR = "versions"

# Folders of ``<store>/areas`` that make up a release, and how many files a complete one has.
RELEASE_FOLDERS: tuple[str, ...] = ("states", "districts", "cities", "national", "validation")
EXPECTED_COUNTS: dict[str, int] = {"states": 51, "districts": 436, "cities": 1, "national": 1}
# Inputs hashed into the manifest: the raw manifest (which itself hashes every raw file), and
# every file of the targets database and of the calibration folder (package, weights, ...).
INPUT_FILES: tuple[str, ...] = ("raw/manifest.json",)
INPUT_FOLDERS: tuple[str, ...] = ("targets", "calibration")

RUN_ID_RE = re.compile(r"^[0-9A-Za-z.+-]+_[0-9a-f]{8}_\d{8}_\d{6}$")


class ReleaseError(RuntimeError):
    """A release cannot be staged or promoted (incomplete, corrupt, or the wrong run)."""


# --------------------------------------------------------------------------------------------
# Run identity


def project_version(root: str | os.PathLike | None = None) -> str:
    """The ``version`` of ``pyproject.toml`` (at ``root``, default: this repository)."""
    import tomllib

    root = Path(root) if root else Path(__file__).resolve().parents[1]
    with open(root / "pyproject.toml", "rb") as handle:
        return str(tomllib.load(handle)["project"]["version"])


def git_state(root: str | os.PathLike | None = None) -> tuple[str | None, bool]:
    """(full commit sha or None outside a git checkout, whether tracked files have changes)."""
    root = Path(root) if root else Path(__file__).resolve().parents[1]
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True,
                             text=True, timeout=30, check=True).stdout.strip()
        dirty = bool(subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                                    cwd=root, capture_output=True, text=True, timeout=30,
                                    check=True).stdout.strip())
    except (OSError, subprocess.SubprocessError):
        return None, False
    return (sha if re.fullmatch(r"[0-9a-f]{40}", sha) else None), dirty


def make_run_id(version: str, git_sha: str | None, when: _dt.datetime | None = None) -> str:
    """``{version}_{git sha[:8]}_{UTC YYYYMMDD_HHMMSS}``; sha ``00000000`` outside git."""
    if not re.fullmatch(r"[0-9A-Za-z.+-]+", version or ""):
        raise ValueError(f"release version {version!r}: expected letters, digits, '.', '+', '-'")
    sha = (git_sha or "0" * 8)[:8].lower()
    if not re.fullmatch(r"[0-9a-f]{8}", sha):
        raise ValueError(f"git sha {git_sha!r}: expected at least 8 hex digits")
    when = when or _dt.datetime.now(_dt.timezone.utc)
    if when.tzinfo is None:
        raise ValueError("run-id time must be timezone-aware (UTC)")
    stamp = when.astimezone(_dt.timezone.utc).strftime("%Y%m%d_%H%M%S")
    return f"{version}_{sha}_{stamp}"


def check_run_id(run_id: str) -> str:
    if not RUN_ID_RE.fullmatch(run_id or ""):
        raise ReleaseError(f"run id {run_id!r} is not of the form version_sha8_YYYYMMDD_HHMMSS")
    return run_id


# --------------------------------------------------------------------------------------------
# Gathering files and hashing


def _visible_files(folder: Path) -> list[Path]:
    """Regular files under ``folder`` (recursively), skipping hidden/temporary ``.*`` names."""
    if not folder.is_dir():
        return []
    out = []
    for path in sorted(folder.rglob("*")):
        rel = path.relative_to(folder)
        if any(part.startswith(".") for part in rel.parts):
            continue
        if path.is_file() and not path.is_symlink():
            out.append(path)
    return out


def collect_release_files(areas_dir: str | os.PathLike) -> dict[str, Path]:
    """Release-relative path (``states/CA.h5``) -> absolute file, for every file of a release
    folder (``RELEASE_FOLDERS``) under ``areas_dir``, sorted by path."""
    areas_dir = Path(areas_dir)
    files: dict[str, Path] = {}
    for folder in RELEASE_FOLDERS:
        for path in _visible_files(areas_dir / folder):
            files[path.relative_to(areas_dir).as_posix()] = path
    return dict(sorted(files.items()))


def file_entries(files: Mapping[str, Path]) -> dict[str, dict]:
    """``{relative path: {"sha256", "size"}}`` for the given files."""
    return {rel: {"sha256": sha256_file(path), "size": path.stat().st_size}
            for rel, path in sorted(files.items())}


def release_counts(paths: Iterable[str]) -> dict[str, int]:
    """Number of ``.h5`` files per area folder (states, districts, cities, national)."""
    counts = {kind: 0 for kind in EXPECTED_COUNTS}
    for rel in paths:
        parts = PurePosixPath(rel).parts
        if len(parts) == 2 and parts[0] in counts and parts[1].endswith(".h5"):
            counts[parts[0]] += 1
    return counts


def completeness_problems(counts: Mapping[str, int]) -> list[str]:
    return [f"{kind}: {counts.get(kind, 0)} file(s), expected {n}"
            for kind, n in EXPECTED_COUNTS.items() if counts.get(kind, 0) != n]


def input_digests(store_root: str | os.PathLike) -> dict[str, dict]:
    """sha256 and size of every build input present under the store: ``raw/manifest.json``
    and every file under ``targets/`` and ``calibration/`` (package, weights, diagnostics)."""
    root = Path(store_root)
    files: dict[str, Path] = {}
    for rel in INPUT_FILES:
        if (root / rel).is_file():
            files[rel] = root / rel
    for folder in INPUT_FOLDERS:
        for path in _visible_files(root / folder):
            files[path.relative_to(root).as_posix()] = path
    return file_entries(files)


def read_validation_summary(areas_dir: str | os.PathLike) -> dict | None:
    """``areas/validation/summary.json`` as a dict, or None when absent."""
    path = Path(areas_dir) / "validation" / "summary.json"
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except ValueError as exc:
        raise ReleaseError(f"{path}: not valid JSON ({exc})") from None


def content_digest(manifest: Mapping) -> str:
    """sha256 over what a release contains (file and input hashes, configuration), not over
    when or from which commit it was made: equal inputs and outputs give equal digests."""
    core = {"files": manifest["files"], "inputs": manifest.get("inputs", {}),
            "config": manifest.get("config", {})}
    return sha256_bytes(json.dumps(core, sort_keys=True).encode())


def build_manifest(files: Mapping[str, Path], run_id: str, *, inputs: Mapping[str, dict],
                   validation: dict | None, config: Mapping, version: str,
                   git_sha: str | None, git_dirty: bool, created_utc: str) -> dict:
    """The release manifest (a JSON-able dict) for ``files`` (release path -> file)."""
    entries = file_entries(files)
    counts = release_counts(entries)
    manifest = {
        "format": MANIFEST_FORMAT,
        "run_id": check_run_id(run_id),
        "version": version,
        "git_sha": git_sha,
        "git_dirty": bool(git_dirty),
        "created_utc": created_utc,
        "files": entries,
        "file_count": len(entries),
        "total_bytes": int(sum(e["size"] for e in entries.values())),
        "counts": counts,
        "complete": not completeness_problems(counts),
        "inputs": dict(sorted(inputs.items())),
        "validation": validation,
        "config": dict(config),
    }
    manifest["content_sha256"] = content_digest(manifest)
    return manifest


# --------------------------------------------------------------------------------------------
# Verification


def _safe_relpath(rel: str) -> bool:
    p = PurePosixPath(rel)
    return bool(rel) and not p.is_absolute() and ".." not in p.parts and "\\" not in rel


def verify_manifest(folder: str | os.PathLike, require_complete: bool = False) -> list[str]:
    """Re-hash ``folder`` against ``folder/manifest.json``; return the problems (empty = OK).

    Problems: manifest missing/unreadable/malformed, a listed file missing or with another size
    or sha256, a file present but not listed, an unsafe path, a content digest that does not
    match, and (``require_complete``) fewer area files than a full release has.
    """
    folder = Path(folder)
    path = folder / MANIFEST_NAME
    if not path.is_file():
        return [f"{path}: manifest missing"]
    try:
        manifest = json.loads(path.read_text())
    except ValueError as exc:
        return [f"{path}: not valid JSON ({exc})"]
    if not isinstance(manifest, dict) or not isinstance(manifest.get("files"), dict):
        return [f"{path}: no 'files' table"]
    problems: list[str] = []
    if manifest.get("format") != MANIFEST_FORMAT:
        problems.append(f"{path}: format {manifest.get('format')!r}, expected {MANIFEST_FORMAT!r}")
    if not RUN_ID_RE.fullmatch(str(manifest.get("run_id", ""))):
        problems.append(f"{path}: run_id {manifest.get('run_id')!r} is malformed")
    listed = manifest["files"]
    for rel, entry in sorted(listed.items()):
        if not _safe_relpath(rel):
            problems.append(f"{rel}: unsafe path in manifest")
            continue
        target = folder / rel
        if not target.is_file():
            problems.append(f"{rel}: listed in the manifest but missing")
            continue
        size = target.stat().st_size
        if size != entry.get("size"):
            problems.append(f"{rel}: size {size}, manifest says {entry.get('size')}")
            continue
        digest = sha256_file(target)
        if digest != entry.get("sha256"):
            problems.append(f"{rel}: sha256 {digest}, manifest says {entry.get('sha256')}")
    for target in _visible_files(folder):
        rel = target.relative_to(folder).as_posix()
        if rel != MANIFEST_NAME and rel not in listed:
            problems.append(f"{rel}: present but not listed in the manifest")
    if manifest.get("content_sha256") != content_digest(manifest):
        problems.append(f"{path}: content_sha256 does not match the manifest's tables")
    counts = release_counts(listed)
    if manifest.get("counts") not in (None, counts):
        problems.append(f"{path}: counts {manifest.get('counts')} but files give {counts}")
    if require_complete:
        problems += [f"incomplete release: {p}" for p in completeness_problems(counts)]
    return problems


def read_manifest(folder: str | os.PathLike) -> dict:
    path = Path(folder) / MANIFEST_NAME
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ReleaseError(f"{path}: cannot read the release manifest ({exc})") from None


# --------------------------------------------------------------------------------------------
# Staging (local)


def _link_or_copy(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(src, dst)  # artifacts are replaced by rename, never rewritten in place
    except OSError:
        shutil.copyfile(src, dst)


def stage_release(store_root: str | os.PathLike, run_id: str, *, config: Mapping,
                  version: str, git_sha: str | None, git_dirty: bool = False,
                  release_root: str | os.PathLike | None = None,
                  require_complete: bool = True,
                  fault: Callable[[str], None] | None = None) -> Path:
    """Assemble ``<release_root>/versions/<run_id>/`` from ``<store_root>/areas`` and verify it.

    Files are hard-linked (or copied) into a hidden temporary folder, the manifest is written,
    the folder is verified, then renamed into place: the version folder exists only complete.
    Raises ReleaseError when the release is incomplete (``require_complete``), has no files, or
    fails verification. Returns the version folder.
    """
    check_run_id(run_id)
    store_root = Path(store_root).resolve()
    areas = store_root / "areas"
    files = collect_release_files(areas)
    if not files:
        raise ReleaseError(f"{areas}: no release files (states/, districts/, cities/, "
                           "national/, validation/) - build the area datasets first")
    counts = release_counts(files)
    if require_complete and completeness_problems(counts):
        raise ReleaseError(f"{areas}: incomplete release: "
                           + "; ".join(completeness_problems(counts)))
    root = Path(release_root) if release_root else store_root / "release"
    versions = root / VERSIONS_DIR
    versions.mkdir(parents=True, exist_ok=True)
    final = versions / run_id
    if final.exists():
        raise ReleaseError(f"{final} already exists: a run id is staged once")
    step = fault or (lambda name: None)
    tmp = Path(tempfile.mkdtemp(prefix=f".{run_id}.", dir=versions))
    try:
        step("copy")
        for rel, src in files.items():
            _link_or_copy(src, tmp / rel)
        step("manifest")
        manifest = build_manifest(
            files, run_id, inputs=input_digests(store_root),
            validation=read_validation_summary(areas), config=config, version=version,
            git_sha=git_sha, git_dirty=git_dirty,
            created_utc=_dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"))
        # the manifest describes the files as they were when hashed; re-verify the copies
        atomic_write_json(tmp / MANIFEST_NAME, manifest)
        step("verify")
        problems = verify_manifest(tmp, require_complete=require_complete)
        if problems:
            raise ReleaseError(f"staged copy of {run_id} does not verify: " + "; ".join(problems[:10]))
        step("rename")
        os.chmod(tmp, 0o755)
        os.rename(tmp, final)
        _fsync_dir(versions)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    atomic_write_json(root / STAGED_POINTER, {
        "run_id": run_id, "folder": str(final), "content_sha256": manifest["content_sha256"],
        "manifest_sha256": sha256_file(final / MANIFEST_NAME)})
    return final


def copy_version(folder: str | os.PathLike, release_root: str | os.PathLike) -> Path:
    """Copy a verified release folder to ``<release_root>/versions/<run_id>`` (another disk or
    share), verify the copy in a hidden temporary folder, then rename it into place."""
    folder = Path(folder)
    problems = verify_manifest(folder)
    if problems:
        raise ReleaseError(f"{folder} does not verify: " + "; ".join(problems[:10]))
    run_id = check_run_id(read_manifest(folder)["run_id"])
    versions = Path(release_root) / VERSIONS_DIR
    versions.mkdir(parents=True, exist_ok=True)
    final = versions / run_id
    if final.exists():
        if verify_manifest(final) == [] and (
                sha256_file(final / MANIFEST_NAME) == sha256_file(folder / MANIFEST_NAME)):
            return final  # already staged there, identical
        raise ReleaseError(f"{final} exists and differs from {folder}")
    tmp = Path(tempfile.mkdtemp(prefix=f".{run_id}.", dir=versions))
    try:
        for rel in [*read_manifest(folder)["files"], MANIFEST_NAME]:
            (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(folder / rel, tmp / rel)
        problems = verify_manifest(tmp)
        if problems:
            raise ReleaseError(f"copy of {run_id} in {versions} does not verify: "
                               + "; ".join(problems[:10]))
        os.chmod(tmp, 0o755)
        os.rename(tmp, final)
        _fsync_dir(versions)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final


def staged_pointer(release_root: str | os.PathLike) -> dict:
    """The last staged release (``run_id``, ``folder``, digests); ReleaseError when none."""
    path = Path(release_root) / STAGED_POINTER
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        raise ReleaseError(f"{path}: no staged release - run the stage_release job first") from None


# --------------------------------------------------------------------------------------------
# Promotion (local)

PROMOTION_STEPS: tuple[str, ...] = ("verify", "link", "swap")


def published_run_id(release_root: str | os.PathLike) -> str | None:
    """Run id of the release in production, or None when nothing was published yet."""
    link = Path(release_root) / PUBLISHED_LINK
    if not link.is_symlink():
        return None
    return Path(os.readlink(link)).name


def promote_local(release_root: str | os.PathLike, run_id: str, *,
                  fault: Callable[[str], None] | None = None) -> Path:
    """Make ``versions/<run_id>`` production: verify it completely, then atomically replace the
    ``published`` link. ``fault(step)`` is called before each step (tests inject failures).

    Either ``published`` points at the new, verified release, or it is unchanged.
    """
    check_run_id(run_id)
    root = Path(release_root)
    version = root / VERSIONS_DIR / run_id
    link = root / PUBLISHED_LINK
    if link.exists() and not link.is_symlink():
        raise ReleaseError(f"{link} is a real folder, not a link to versions/<run_id>; move it away")
    for stale in root.glob(f".{PUBLISHED_LINK}.*"):  # left by a promotion killed mid-way
        with contextlib.suppress(OSError):
            stale.unlink()
    step = fault or (lambda name: None)
    step("verify")
    if not version.is_dir():
        raise ReleaseError(f"{version}: no staged release {run_id}")
    problems = verify_manifest(version)
    manifest = read_manifest(version)
    if manifest.get("run_id") != run_id:
        problems.append(f"manifest run_id {manifest.get('run_id')!r} is not {run_id!r}")
    if problems:
        raise ReleaseError(f"release {run_id} does not verify; production unchanged: "
                           + "; ".join(problems[:10]))
    step("link")
    tmp_link = root / f".{PUBLISHED_LINK}.{os.getpid()}.tmp"
    with contextlib.suppress(FileNotFoundError):
        tmp_link.unlink()
    os.symlink(Path(VERSIONS_DIR) / run_id, tmp_link, target_is_directory=True)
    try:
        step("swap")
        os.replace(tmp_link, link)  # the commit point
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp_link.unlink()
        raise
    _fsync_dir(root)
    return link


# --------------------------------------------------------------------------------------------
# Command line


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m calibration_core.release",
                                     description="Check a release folder against its manifest.")
    sub = parser.add_subparsers(dest="command", required=True)
    verify = sub.add_parser("verify", help="re-hash every file; exit 1 on any mismatch")
    verify.add_argument("folder", help="a release folder, e.g. .areacal/release/published")
    verify.add_argument("--require-complete", action="store_true",
                        help="also require 51 states, 436 districts, NYC and the national file")
    args = parser.parse_args(argv)
    folder = Path(args.folder)
    problems = verify_manifest(folder, require_complete=args.require_complete)
    if problems:
        for problem in problems:
            print(f"FAIL {problem}", file=sys.stderr)
        print(f"{folder}: {len(problems)} problem(s)", file=sys.stderr)
        return 1
    manifest = read_manifest(folder)
    print(f"OK {folder.resolve()}: release {manifest['run_id']}, {manifest['file_count']} files, "
          f"{manifest['total_bytes']} bytes, counts {manifest['counts']}, "
          f"complete={manifest['complete']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
