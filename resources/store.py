"""Where artifacts live: one browsable folder tree under ``AREACAL_HOME`` (default ``.areacal``).

``AREACAL_HOME`` may also be an fsspec URL (``s3://bucket/prefix``, through ``s3fs`` and
``universal-pathlib``; extra ``s3``) that several machines share. The store then works on a local
mirror (``root``: ``AREACAL_CACHE``, default a folder under the system's temporary folder) and
keeps it in step with the URL (``url``):

* before each step, every remote object that the mirror lacks or holds in another version (size
  or modification time) is downloaded (to a temporary sibling, then renamed);
* every artifact is uploaded the moment its atomic write completes (``io_utils.atomic_path`` /
  ``atomic_folder`` call the store's uploader), so it is remote before its asset reports it;
  what a step wrote outside those helpers is uploaded when the step ends.

An upload never leaves a partial object under the final key: object stores (S3 and the like)
create an object only when its PUT (or multipart upload) completes; on a filesystem behind a
URL the file is put under a temporary name and moved. ``AREACAL_STORE_ENDPOINT_URL`` points S3
at another endpoint (MinIO, moto); credentials come from the usual AWS variables.
"""
from __future__ import annotations

import hashlib
import os
import re
import tempfile
import time
from pathlib import Path
from typing import Optional

import dagster as dg
from pydantic import PrivateAttr

_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")
# fsspec protocols whose objects appear only complete (a PUT or a completed multipart upload)
OBJECT_STORES = {"s3", "s3a", "gs", "gcs", "az", "abfs", "abfss", "adl", "memory", "oss"}


def default_home() -> str:
    return os.environ.get("AREACAL_HOME", ".areacal")


def is_remote_url(location: str | None) -> bool:
    """Whether ``location`` is an fsspec URL other than a local ``file://`` path."""
    return bool(location) and bool(_URL.match(location)) and not location.startswith(
        ("file://", "local://"))


def default_cache(url: str) -> str:
    """The local mirror of ``url``: ``$AREACAL_CACHE``, else ``<tmp>/areacal-cache/<hash>``."""
    if os.environ.get("AREACAL_CACHE"):
        return os.environ["AREACAL_CACHE"]
    digest = hashlib.sha256(url.encode("utf-8")).hexdigest()[:16]
    return str(Path(tempfile.gettempdir()) / "areacal-cache" / digest)


def store_from_env() -> "ArtifactStore":
    """The store of ``AREACAL_HOME``: a local folder, or a URL with its local mirror."""
    home = default_home()
    if is_remote_url(home):
        return ArtifactStore(root=default_cache(home), url=home,
                             endpoint_url=os.environ.get("AREACAL_STORE_ENDPOINT_URL") or None)
    if home.startswith("file://"):
        home = home[len("file://"):]
    return ArtifactStore(root=home)


class ArtifactStore(dg.ConfigurableResource):
    """Root of every artifact of a build: ``raw/``, ``targets/``, ``microdata/``,
    ``calibration/``, ``areas/states/CA.h5``, ``release/`` ...

    ``root`` is a local folder; with ``url`` (an fsspec URL) it is the local mirror of that
    shared store (module docstring)."""

    root: str = ".areacal"
    url: Optional[str] = None
    endpoint_url: Optional[str] = None  # S3-compatible endpoint (MinIO, moto ...)
    _started: Optional[float] = PrivateAttr(default=None)
    _mirror: Optional["RemoteMirror"] = PrivateAttr(default=None)

    def setup_for_execution(self, context: dg.InitResourceContext) -> None:
        """In a step process of Dagster's multiprocess executor, die with the run process.

        Every asset takes ``store``, so this runs in every step process before the step. Such a
        process is a ``multiprocessing`` child of the run worker (``spawn``, the default: the
        run worker is its parent; ``forkserver``: its parent is the fork server, which outlives
        a killed run worker while its children hold its pipe). Without this a ``kill -9`` of
        ``dagster asset materialize`` leaves the step running to the end, recording a
        materialization in a run that stays STARTED. The run process itself (in-process
        executor, ``jobs.build_cli``, sensors) has no multiprocessing parent and is unaffected.
        """
        if self.url:  # a shared store: bring the mirror up to date, upload every atomic write
            self._started = time.time()
            self._mirror = self.remote()
            self._mirror.attach()
            pulled = self._mirror.pull_all()
            if pulled and context.log is not None:
                context.log.info(f"{len(pulled)} artifact(s) downloaded from {self.url}")
        self._die_with_run_process(context)

    def teardown_after_execution(self, context: dg.InitResourceContext) -> None:
        """With a URL: upload what this step wrote outside the atomic helpers (if anything)."""
        if self.url and self._mirror is not None:
            try:
                self._mirror.push_changed(since=self._started)
            finally:
                self._mirror.detach()

    def remote(self) -> "RemoteMirror":
        """The mirror between ``root`` and ``url`` (a URL store only)."""
        if not self.url:
            raise ValueError("this artifact store has no url: it is a local folder")
        return RemoteMirror(self.url, self.root, self.endpoint_url)

    def _die_with_run_process(self, context) -> None:
        import multiprocessing

        from calibration_core.process_lifetime import die_with_parent, die_with_process

        parent = multiprocessing.parent_process()
        if parent is None or parent.pid is None or parent.pid == os.getpid():
            return
        if os.getppid() == parent.pid:
            reason = die_with_parent(parent.pid)
        else:  # forkserver (or re-parented): watch the run worker itself
            reason = die_with_process(parent.pid)
        if reason and context.log is not None:
            context.log.debug(f"step process {os.getpid()} may outlive its run: {reason}")

    def path(self, *parts: str) -> Path:
        """An absolute path under the root; parent folders are created."""
        path = Path(self.root).resolve().joinpath(*parts)
        path.parent.mkdir(parents=True, exist_ok=True)
        return path

    def folder(self, *parts: str) -> Path:
        path = Path(self.root).resolve().joinpath(*parts)
        path.mkdir(parents=True, exist_ok=True)
        return path

    @property
    def raw_dir(self) -> Path:
        return self.folder("raw")

    def sweep_temporaries(self, context, *folders: str) -> list[Path]:
        """Remove what killed writes left in ``folders`` (relative to the root): temporaries
        older than this run's start whose writer is gone (``io_utils.sweep_stale_temporaries``).
        Called at the start of every asset that writes into those folders."""
        from calibration_core.io_utils import sweep_stale_temporaries

        started = run_start_time(context)
        removed: list[Path] = []
        for rel in folders:
            removed += sweep_stale_temporaries(Path(self.root).resolve() / rel,
                                               older_than=started)
        if removed:
            context.log.info(f"removed {len(removed)} temporary file(s) left by killed writes: "
                             + ", ".join(str(p) for p in removed[:20]))
        return removed


def run_start_time(context) -> float:
    """POSIX time this Dagster run started (its run record), or now when unknown."""
    import time

    try:
        record = context.instance.get_run_record_by_id(context.run.run_id)
        if record is not None and record.start_time:
            return float(record.start_time)
    except Exception:  # noqa: BLE001 - no instance or record (direct invocation): use now
        pass
    return time.time()


class RemoteMirror:
    """A local folder (``local``) kept in step with an fsspec URL (``url``)."""

    def __init__(self, url: str, local: str | os.PathLike, endpoint_url: str | None = None):
        from upath import UPath

        options = {}
        if endpoint_url and url.startswith(("s3://", "s3a://")):
            options["endpoint_url"] = endpoint_url
        self.url = url.rstrip("/")
        self.base = UPath(self.url, **options)
        self.fs = self.base.fs
        self.protocol = (self.fs.protocol if isinstance(self.fs.protocol, str)
                         else self.fs.protocol[0])
        self.prefix = self.base.path.rstrip("/")
        self.local = Path(local).resolve()

    # -- keys and paths ---------------------------------------------------------------------
    def key(self, local_path: str | os.PathLike) -> str:
        rel = Path(local_path).resolve().relative_to(self.local)
        return f"{self.prefix}/{rel.as_posix()}"

    def local_path(self, key: str) -> Path:
        return self.local / key[len(self.prefix) + 1:]

    def remote_files(self) -> dict[str, dict]:
        """key -> info of every object under the URL (no temporaries, no folders)."""
        from calibration_core.io_utils import is_temporary_name

        try:
            found = self.fs.find(self.prefix, detail=True)
        except FileNotFoundError:
            return {}
        return {k: v for k, v in found.items()
                if v.get("type", "file") == "file" and not is_temporary_name(k.rsplit("/", 1)[-1])}

    @staticmethod
    def _mtime(info: dict) -> float | None:
        for name in ("LastModified", "mtime", "last_modified", "updated", "created"):
            value = info.get(name)
            if value is None:
                continue
            if hasattr(value, "timestamp"):
                return float(value.timestamp())
            try:
                return float(value)
            except (TypeError, ValueError):
                continue
        return None

    # -- download -----------------------------------------------------------------------------
    def pull_all(self) -> list[Path]:
        """Download every object the mirror lacks or holds in another version (size, mtime)."""
        pulled = []
        for key, info in sorted(self.remote_files().items()):
            path = self.local_path(key)
            mtime = self._mtime(info)
            if path.is_file():
                st = path.stat()
                if st.st_size == info.get("size") and (mtime is None or
                                                       abs(st.st_mtime - mtime) < 1e-3):
                    continue
            self.pull(key, path, mtime)
            pulled.append(path)
        return pulled

    def pull(self, key: str, path: Path, mtime: float | None = None) -> Path:
        from calibration_core.io_utils import atomic_path

        with atomic_path(path, suffix=".part") as tmp:
            self.fs.get_file(key, str(tmp))
            _ensure_fsync_ok(tmp)
        if mtime is not None:
            os.utime(path, (mtime, mtime))
        return path

    # -- upload -------------------------------------------------------------------------------
    def push(self, path: str | os.PathLike) -> str:
        """Upload one local file to its key; never a partial object under that key."""
        path = Path(path)
        key = self.key(path)
        if self.protocol in OBJECT_STORES:
            self.fs.put_file(str(path), key)
        else:  # a filesystem behind a URL: a temporary name, then one move
            from calibration_core.io_utils import temporary_prefix

            parent, name = key.rsplit("/", 1)
            tmp = f"{parent}/{temporary_prefix(name)}{os.urandom(4).hex()}.tmp"
            self.fs.makedirs(parent, exist_ok=True)
            self.fs.put_file(str(path), tmp)
            self.fs.mv(tmp, key)
        self.fs.invalidate_cache(key.rsplit("/", 1)[0])
        mtime = self._mtime(self.fs.info(key))
        if mtime is not None:  # the mirror's copy is that version: no download next step
            os.utime(path, (mtime, mtime))
        return key

    def push_tree(self, path: str | os.PathLike) -> list[str]:
        """Upload a file, or every file of a folder (an ``atomic_folder`` swap)."""
        path = Path(path)
        if path.is_file():
            return [self.push(path)]
        return [self.push(p) for p in sorted(path.rglob("*"))
                if p.is_file() and not _in_temporary(p, self.local)]

    def push_changed(self, since: float | None) -> list[str]:
        """Upload every mirror file modified after ``since`` that the URL lacks or holds in
        another size (the safety net for writes that bypassed the atomic helpers)."""
        if since is None or not self.local.is_dir():
            return []
        remote = self.remote_files()
        pushed = []
        for path in sorted(self.local.rglob("*")):
            if not path.is_file() or _in_temporary(path, self.local):
                continue
            st = path.stat()
            info = remote.get(self.key(path))
            if st.st_mtime < since and info is not None:
                continue
            if info is not None and info.get("size") == st.st_size and (
                    self._mtime(info) is None or abs(self._mtime(info) - st.st_mtime) < 1e-3):
                continue
            pushed.append(self.push(path))
        return pushed

    # -- hook into io_utils' atomic writes ----------------------------------------------------
    def attach(self) -> None:
        from calibration_core.io_utils import register_mirror

        register_mirror(self.local, self.push_tree)

    def detach(self) -> None:
        from calibration_core.io_utils import unregister_mirror

        unregister_mirror(self.local)


def _in_temporary(path: Path, root: Path) -> bool:
    from calibration_core.io_utils import is_temporary_name

    return any(is_temporary_name(part) for part in path.relative_to(root).parts)


def _ensure_fsync_ok(path: Path) -> None:
    if not path.is_file():
        raise FileNotFoundError(f"download to {path} produced no file")
