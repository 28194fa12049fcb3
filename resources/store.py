"""Where artifacts live: one browsable folder tree under ``AREACAL_HOME`` (default ``.areacal``)."""
from __future__ import annotations

import os
from pathlib import Path

import dagster as dg


def default_home() -> str:
    return os.environ.get("AREACAL_HOME", ".areacal")


class ArtifactStore(dg.ConfigurableResource):
    """Root of every artifact of a build: ``raw/``, ``targets/``, ``microdata/``,
    ``calibration/``, ``areas/states/CA.h5``, ``release/`` ..."""

    root: str = ".areacal"

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
