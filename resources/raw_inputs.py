"""Raw-input providers: where the real public files come from."""
from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path
from typing import Optional

import dagster as dg

from calibration_core import raw_inputs


class RawInputProvider(dg.ConfigurableResource, ABC):
    """Puts every raw input file into ``dest`` and returns the manifest (name -> size, sha256)."""

    @abstractmethod
    def collect(self, dest: Path) -> dict: ...


class PyPICacheProvider(RawInputProvider):
    """Default: pinned registry packages that ship cached public responses (see docs/data.md).

    ``cache_dir`` keeps the downloaded archives (default ``$AREACAL_CACHE`` or
    ``~/.cache/areacal/pypi``), so a second build needs no network. ``extra_directory`` adds optional
    files the packages lack (``22incd.csv``, PUF, donors, ASEC CSVs).
    """

    cache_dir: Optional[str] = None
    extra_directory: Optional[str] = None

    def collect(self, dest: Path) -> dict:
        return raw_inputs.fetch_from_pypi(dest, self.cache_dir, self.extra_directory)


class DirectoryProvider(RawInputProvider):
    """A user's folder with the agencies' files under the names in docs/data.md."""

    path: str

    def collect(self, dest: Path) -> dict:
        return raw_inputs.collect_from_directory(self.path, dest)
