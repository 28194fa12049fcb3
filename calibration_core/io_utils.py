"""Atomic file writes and content hashes shared by every stage.

Every artifact is written to a temporary sibling, fsynced, then renamed over its final path, so a
killed run leaves the previous good file (or none) and never a torn one. A kill can leave the
temporary sibling behind (``.CA.h5.p1234.k2j3h4g5.h5``: the final name, the writer's pid, a random
part); :func:`sweep_stale_temporaries`, called at the start of each asset that writes into a
folder, removes those whose writer is gone.

A folder may be registered as the local mirror of a shared store (:func:`register_mirror`):
every file or folder that an atomic write puts in place under it is then handed to the
mirror's uploader right after the rename, before the write returns.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import tempfile
import time
from pathlib import Path
from typing import Callable, Iterator


def sha256_file(path: str | os.PathLike, chunk_size: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(chunk_size), b""):
            digest.update(block)
    return digest.hexdigest()


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _fsync_dir(directory: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def temporary_prefix(final_name: str) -> str:
    """Prefix of a temporary sibling of ``final_name`` made by this process:
    ``.{final_name}.p{pid}.`` (``tempfile`` appends 8 random characters and a suffix). The pid
    lets :func:`sweep_stale_temporaries` tell a live writer's file from a killed one's."""
    return f".{final_name}.p{os.getpid()}."


# .{name}.p{pid}.{8 random}{suffix}  (this module's temporaries, files and folders)
_TEMP_RE = re.compile(r"^\.(?P<name>.+)\.p(?P<pid>\d+)\.[a-z0-9_]{8}(\.[A-Za-z0-9]+)?$")
# .{name}.{8 random}{suffix}: temporaries of earlier versions (no pid) and mkdtemp folders
_LEGACY_TEMP_RE = re.compile(r"^\.(?P<name>.+)\.[a-z0-9_]{8}(\.[A-Za-z0-9]+)?$")
# .{name}.old: the previous folder that a folder swap moves aside for a moment
_OLD_RE = re.compile(r"^\.(?P<name>.+)\.old$")


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True  # exists (another user's), or unknown: keep the file
    return True


def is_temporary_name(name: str) -> bool:
    """Whether ``name`` is a temporary sibling made by :func:`atomic_path`, a folder staged by
    :func:`temporary_folder` (or their predecessors without a pid), or a ``.X.old`` folder."""
    return bool(_TEMP_RE.match(name) or _LEGACY_TEMP_RE.match(name) or _OLD_RE.match(name))


def sweep_stale_temporaries(folder: str | os.PathLike, older_than: float | None = None, *,
                            min_age_seconds: float = 0.0) -> list[Path]:
    """Remove the temporaries that killed writes left in ``folder`` (not recursive); return them.

    A hidden entry counts as a temporary when its name is one :func:`is_temporary_name`
    recognises (``.MA-01.h5.p1234.k2j3h4g5.h5``, ``.package.p1234.a1b2c3d4``,
    ``.MA-01.h5.k2j3h4g5.h5``, ``.package.old``). It is removed, file or folder, when

    * it was last modified before ``older_than`` (a POSIX time, normally the start of the run;
      None: now) and at least ``min_age_seconds`` ago, and
    * its name carries no pid, or that pid is no live process on this machine (a writer of
      another run, still at work, keeps its file whatever its age).

    Visible files are never touched, nor hidden entries of other shapes.
    """
    folder = Path(folder)
    if not folder.is_dir():
        return []
    now = time.time()
    cutoff = min(now if older_than is None else float(older_than), now - float(min_age_seconds))
    removed = []
    for entry in sorted(folder.iterdir()):
        name = entry.name
        if not name.startswith(".") or not is_temporary_name(name):
            continue
        try:
            mtime = entry.lstat().st_mtime
        except FileNotFoundError:
            continue
        if mtime >= cutoff:
            continue
        match = _TEMP_RE.match(name)
        if match and _pid_alive(int(match["pid"])):
            continue
        old = _OLD_RE.match(name)
        if old and not (folder / old["name"]).exists():
            continue  # a folder swap was killed between its two renames: the last good copy
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            with contextlib.suppress(FileNotFoundError):
                entry.unlink()
        removed.append(entry)
    if removed:
        _fsync_dir(folder)
    return removed


# local mirror root -> uploader(path) of a shared artifact store (resources.store.RemoteMirror)
_MIRRORS: dict[Path, Callable[[Path], object]] = {}


def register_mirror(root: str | os.PathLike, upload: Callable[[Path], object]) -> None:
    """Hand every atomic write completed under ``root`` to ``upload`` (a file or a folder)."""
    _MIRRORS[Path(root).resolve()] = upload


def unregister_mirror(root: str | os.PathLike) -> None:
    _MIRRORS.pop(Path(root).resolve(), None)


def _published(final: Path) -> None:
    if not _MIRRORS:
        return
    final = final.resolve()
    for root, upload in list(_MIRRORS.items()):
        if final == root or root in final.parents:
            upload(final)


@contextlib.contextmanager
def atomic_path(final_path: str | os.PathLike, suffix: str | None = None) -> Iterator[Path]:
    """Yield a temporary path beside ``final_path``; on success fsync it and rename it into place.

    On any exception the temporary file is removed and ``final_path`` is left untouched.
    """
    final = Path(final_path)
    final.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(
        prefix=temporary_prefix(final.name), suffix=suffix if suffix is not None else ".tmp",
        dir=final.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; artifacts are meant to be browsed and shared
        with open(tmp, "rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, final)
        _fsync_dir(final.parent)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise
    _published(final)


@contextlib.contextmanager
def atomic_folder(final_dir: str | os.PathLike) -> Iterator[Path]:
    """Yield an empty temporary sibling folder; on success fsync what was written into it and
    put it in place of ``final_dir`` (files that belong together are published together).

    The swap is two renames: ``final_dir`` -> ``.{name}.old``, then the new folder ->
    ``final_dir``; the old folder is removed after. A kill between the two leaves no
    ``final_dir`` and the previous complete folder as ``.{name}.old`` (which the sweep keeps
    while ``final_dir`` is missing). On any exception the temporary folder is removed and
    ``final_dir`` is left untouched.
    """
    final = Path(final_dir)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=temporary_prefix(final.name), dir=final.parent))
    try:
        yield tmp
        for path in sorted(tmp.rglob("*")):
            if path.is_file() and not path.is_symlink():
                with open(path, "rb+") as handle:
                    os.fsync(handle.fileno())
        _fsync_dir(tmp)
        os.chmod(tmp, 0o755)  # mkdtemp makes 0700
        old = None
        if final.exists():
            old = final.with_name(f".{final.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(final, old)
        os.replace(tmp, final)
        _fsync_dir(final.parent)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _published(final)


def atomic_write_bytes(final_path: str | os.PathLike, data: bytes) -> Path:
    with atomic_path(final_path) as tmp:
        tmp.write_bytes(data)
    return Path(final_path)


def atomic_write_npz(final_path: str | os.PathLike, arrays: dict) -> Path:
    """Write ``arrays`` (name -> numpy array, no object arrays) as an uncompressed ``.npz``
    through a temporary file and a rename, so a reader never sees a partial file."""
    import numpy as np

    with atomic_path(final_path, suffix=".npz") as tmp:
        with open(tmp, "wb") as handle:
            np.savez(handle, **arrays)
    return Path(final_path)


def atomic_write_json(final_path: str | os.PathLike, obj) -> Path:
    """Write JSON with sorted keys and a trailing newline, so equal content gives equal bytes."""
    text = json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n"
    return atomic_write_bytes(final_path, text.encode("utf-8"))


def stable_seed(*keys: object) -> int:
    """A 63-bit seed derived from stable keys (purpose, household id, clone index ...).

    Python's ``hash`` is salted per process; sha256 of the keys' text is the same everywhere.
    """
    text = "\x1f".join(str(k) for k in keys)
    return int.from_bytes(hashlib.sha256(text.encode("utf-8")).digest()[:8], "little") >> 1


_MASK64 = (1 << 64) - 1


def _splitmix64(x: "np.ndarray") -> "np.ndarray":
    import numpy as np

    x = (x + np.uint64(0x9E3779B97F4A7C15)) & np.uint64(_MASK64)
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def keyed_uniform(purpose: str, *keys) -> "np.ndarray":
    """Uniform [0, 1) draws, one per element of the broadcast integer ``keys``.

    Each draw is a pure function of (purpose, key values): the matrix builder and the area
    assembler get the same number for (e.g.) ("snap_takeup", household_id, clone_index) without
    sharing any random-generator state, and without a Python loop over records.
    """
    import numpy as np

    arrays = np.broadcast_arrays(*[np.asarray(k, dtype=np.int64) for k in keys])
    with np.errstate(over="ignore"):
        state = np.full(arrays[0].shape, stable_seed(purpose), dtype=np.uint64)
        for arr in arrays:
            state = _splitmix64(state ^ arr.astype(np.uint64))
    return (state >> np.uint64(11)).astype(np.float64) * (1.0 / (1 << 53))
