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

A release owns its bytes: every file is copied into the version folder (a reflink where the
filesystem can share blocks copy-on-write, else ``copy_file_range``/``sendfile``; never a hard
link), made read-only and verified against the manifest, so nothing the build writes later can
reach a staged or published file. Before copying, each build file is checked against the sha256
the build recorded for it (``recorded``): a file changed after its build stops the stage, named.
``staged.json`` is written last, only when the whole stage succeeded.

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

from .io_utils import (_fsync_dir, atomic_write_json, sha256_bytes, sha256_file,
                       sweep_stale_temporaries, temporary_prefix)

MANIFEST_NAME = "manifest.json"
MANIFEST_FORMAT = "areacal-release/1"
STAGED_POINTER = "staged.json"
PUBLISHED_LINK = "published"
VERSIONS_DIR = "versions"

# Folders of ``<store>/areas`` that make up a release, and how many files a complete one has.
RELEASE_FOLDERS: tuple[str, ...] = ("states", "districts", "cities", "national", "validation")
AREA_FOLDERS: tuple[str, ...] = ("states", "districts", "cities", "national")


def expected_counts() -> dict[str, int]:
    """Files a complete release holds per area folder: 51 states, 436 districts, one file per
    city of the city catalog (:func:`calibration_core.areas.all_areas`), one national file."""
    from .areas import all_areas

    counts = {"states": 0, "districts": 0, "cities": 0, "national": 1}
    for area in all_areas():
        counts[{"state": "states", "district": "districts", "city": "cities"}[area.kind]] += 1
    return counts
# Inputs hashed into the manifest: the raw manifest (which itself hashes every raw file), and
# every file of the targets database and of the calibration folder (package, weights, ...).
INPUT_FILES: tuple[str, ...] = ("raw/manifest.json",)
INPUT_FOLDERS: tuple[str, ...] = ("targets", "calibration")
# Files of those folders that record how long a step took (wall time, device), not what it
# built: they differ between two identical builds, so they are not hashed into the release.
UNHASHED_NAMES: frozenset[str] = frozenset({"timing.json"})

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


def unused_run_id(versions_dir: str | os.PathLike, version: str, git_sha: str | None,
                  when: _dt.datetime | None = None) -> str:
    """:func:`make_run_id` for ``when`` (default now), moved on a second at a time past ids that
    already have a folder (or a hidden staging folder) in ``versions_dir``.

    Two stages started within the same UTC second would otherwise share an id, and the second
    would fail with "already exists". Raises ReleaseError if no id is free within an hour.
    """
    when = when or _dt.datetime.now(_dt.timezone.utc)
    versions = Path(versions_dir)
    taken = {p.name for p in versions.iterdir()} if versions.is_dir() else set()
    for offset in range(3600):
        run_id = make_run_id(version, git_sha, when + _dt.timedelta(seconds=offset))
        if run_id not in taken and not any(name.startswith(f".{run_id}.") for name in taken):
            return run_id
    raise ReleaseError(f"{versions}: no free run id within an hour of {when:%Y-%m-%d %H:%M:%S}")


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
    counts = {kind: 0 for kind in AREA_FOLDERS}
    for rel in paths:
        parts = PurePosixPath(rel).parts
        if len(parts) == 2 and parts[0] in counts and parts[1].endswith(".h5"):
            counts[parts[0]] += 1
    return counts


def completeness_problems(counts: Mapping[str, int]) -> list[str]:
    return [f"{kind}: {counts.get(kind, 0)} file(s), expected {n}"
            for kind, n in expected_counts().items() if counts.get(kind, 0) != n]


def input_digests(store_root: str | os.PathLike) -> dict[str, dict]:
    """sha256 and size of every build input present under the store: ``raw/manifest.json``
    and every file under ``targets/`` and ``calibration/`` (package, weights, diagnostics),
    except the timing records named in :data:`UNHASHED_NAMES`."""
    root = Path(store_root)
    files: dict[str, Path] = {}
    for rel in INPUT_FILES:
        if (root / rel).is_file():
            files[rel] = root / rel
    for folder in INPUT_FOLDERS:
        for path in _visible_files(root / folder):
            if path.name not in UNHASHED_NAMES:
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
                   git_sha: str | None, git_dirty: bool, created_utc: str,
                   entries: Mapping[str, dict] | None = None) -> dict:
    """The release manifest (a JSON-able dict) for ``files`` (release path -> file);
    ``entries``: their sha256 and size when already computed (``file_entries``)."""
    entries = dict(sorted(entries.items())) if entries is not None else file_entries(files)
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


_FICLONE = 0x40049409  # ioctl(dst, FICLONE, src): share the blocks copy-on-write (Linux)


def copy_file(src: str | os.PathLike, dst: str | os.PathLike) -> str:
    """Copy ``src`` to a new file ``dst`` that owns its bytes, fsync it and make it read-only;
    return how: ``"reflink"`` (blocks shared copy-on-write: a later write to either file does
    not reach the other), ``"copy_file_range"`` or ``"copyfile"``. Never a hard link."""
    src, dst = Path(src), Path(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    how = "copyfile"
    with open(src, "rb") as fin, open(dst, "xb") as fout:
        try:
            import fcntl

            fcntl.ioctl(fout.fileno(), _FICLONE, fin.fileno())
            how = "reflink"
        except (ImportError, OSError):
            try:
                remaining = os.fstat(fin.fileno()).st_size
                while remaining > 0:
                    n = os.copy_file_range(fin.fileno(), fout.fileno(), remaining)
                    if n == 0:
                        break
                    remaining -= n
                how = "copy_file_range"
            except (AttributeError, OSError):
                fout.seek(0)
                fout.truncate()
                fin.seek(0)
                shutil.copyfileobj(fin, fout, 1 << 20)
        fout.flush()
        os.fsync(fout.fileno())
    os.chmod(dst, 0o444)
    return how


def recorded_problems(entries: Mapping[str, dict], recorded: Mapping[str, str | None]) -> list[str]:
    """Build files that are not what the build wrote: for each release file (``entries``, as
    ``file_entries`` gives), its sha256 against the one the build recorded (``recorded``:
    release path -> sha256, None when the build recorded none). Every ``.h5`` area file must
    have a record; other files (validation) are checked when one is given."""
    problems = []
    for rel, entry in sorted(entries.items()):
        want = recorded.get(rel)
        if want is None:
            if rel.endswith(".h5"):
                problems.append(f"areas/{rel}: the build recorded no sha256 for it "
                                "(not written by area_datasets / national_dataset?)")
        elif entry["sha256"] != want:
            problems.append(f"areas/{rel}: sha256 {entry['sha256']}, but its build recorded "
                            f"{want}: changed after it was built")
    return problems


def stage_release(store_root: str | os.PathLike, run_id: str, *, config: Mapping,
                  version: str, git_sha: str | None, git_dirty: bool = False,
                  release_root: str | os.PathLike | None = None,
                  require_complete: bool = True,
                  recorded: Mapping[str, str | None] | None = None,
                  write_pointer: bool = True,
                  fault: Callable[[str], None] | None = None) -> Path:
    """Assemble ``<release_root>/versions/<run_id>/`` from ``<store_root>/areas`` and verify it.

    Every file is hashed and (``recorded``: release path -> sha256 the build recorded) checked
    against its build's record, then copied (:func:`copy_file`: the release owns its bytes) into
    a hidden temporary folder; the manifest is written, the copy verified against it, and the
    folder renamed into place: the version folder exists only complete. Then, when
    ``write_pointer``, ``staged.json`` names it (a caller with more steps to do, such as a remote
    upload, passes False and calls :func:`write_staged_pointer` once they succeeded).
    Raises ReleaseError when the release is incomplete (``require_complete``), has no files, a
    file differs from its build's record, or the copy fails verification. Returns the folder.
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
    # hidden staging folders of killed stages (their writer's pid is gone) go first
    sweep_stale_temporaries(versions)
    final = versions / run_id
    if final.exists():
        raise ReleaseError(f"{final} already exists: a run id is staged once")
    step = fault or (lambda name: None)
    step("hash")
    entries = file_entries(files)
    if recorded is not None:
        problems = recorded_problems(entries, recorded)
        if problems:
            raise ReleaseError(f"{len(problems)} build file(s) differ from what their build "
                               f"recorded; nothing staged: " + "; ".join(problems[:10]))
    tmp = Path(tempfile.mkdtemp(prefix=temporary_prefix(run_id), dir=versions))
    try:
        step("copy")
        for rel, src in files.items():
            copy_file(src, tmp / rel)
        step("manifest")
        manifest = build_manifest(
            files, run_id, inputs=input_digests(store_root),
            validation=read_validation_summary(areas), config=config, version=version,
            git_sha=git_sha, git_dirty=git_dirty, entries=entries,
            created_utc=_dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"))
        atomic_write_json(tmp / MANIFEST_NAME, manifest)
        os.chmod(tmp / MANIFEST_NAME, 0o444)
        # the manifest holds the build files' hashes; the copies must have exactly those bytes
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
    if write_pointer:
        write_staged_pointer(root, final)
    return final


def write_staged_pointer(release_root: str | os.PathLike, folder: str | os.PathLike,
                         **extra) -> dict:
    """Point ``staged.json`` at the version ``folder`` (after it verifies again); ``extra``
    (e.g. the Dagster run that staged it, where it was published) is recorded alongside.
    Call it only once every step of the stage succeeded: promote reads this pointer."""
    folder = Path(folder)
    problems = verify_manifest(folder)
    if problems:
        raise ReleaseError(f"{folder} does not verify; staged.json unchanged: "
                           + "; ".join(problems[:10]))
    manifest = read_manifest(folder)
    pointer = {"run_id": manifest["run_id"], "folder": str(folder),
               "content_sha256": manifest["content_sha256"],
               "manifest_sha256": sha256_file(folder / MANIFEST_NAME), **extra}
    atomic_write_json(Path(release_root) / STAGED_POINTER, pointer)
    return pointer


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
    tmp = Path(tempfile.mkdtemp(prefix=temporary_prefix(run_id), dir=versions))
    try:
        for rel in [*read_manifest(folder)["files"], MANIFEST_NAME]:
            copy_file(folder / rel, tmp / rel)
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
