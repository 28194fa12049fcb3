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
