"""Atomic file writes and content hashes shared by every stage.

Every artifact is written to a temporary sibling, fsynced, then renamed over its final path, so a
killed run leaves the previous good file (or none) and never a torn one.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Iterator


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


@contextlib.contextmanager
def atomic_path(final_path: str | os.PathLike, suffix: str | None = None) -> Iterator[Path]:
    """Yield a temporary path beside ``final_path``; on success fsync it and rename it into place.

    On any exception the temporary file is removed and ``final_path`` is left untouched.
    """
    final = Path(final_path)
    final.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(
        prefix=f".{final.name}.", suffix=suffix if suffix is not None else ".tmp", dir=final.parent
    )
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


def atomic_write_bytes(final_path: str | os.PathLike, data: bytes) -> Path:
    with atomic_path(final_path) as tmp:
        tmp.write_bytes(data)
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
