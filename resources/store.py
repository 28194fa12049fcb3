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
