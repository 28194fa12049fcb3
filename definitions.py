"""The one Definitions object: assets, checks, jobs, sensors, resources and executor.

The artifact root is ``AREACAL_HOME``; raw inputs come from ``AREACAL_RAW_DIR`` when set;
the build size by ``AREACAL_PRESET`` (``tiny`` | ``demo`` | ``full``).
"""
from __future__ import annotations

import os

import dagster as dg

import assets.raw_inputs
from jobs import ALL_JOBS
from resources.raw_inputs import DirectoryProvider, PyPICacheProvider
from resources.settings import BuildSettings
from resources.store import ArtifactStore, default_home

ASSET_MODULES = [assets.raw_inputs]


def build_resources() -> dict:
    raw_dir = os.environ.get("AREACAL_RAW_DIR")
    provider = (
        DirectoryProvider(path=raw_dir)
        if raw_dir
        else PyPICacheProvider(extra_directory=os.environ.get("AREACAL_EXTRA_RAW_DIR"))
    )
    return {
        "store": ArtifactStore(root=default_home()),
        "raw_inputs": provider,
        "settings": BuildSettings(),
    }


all_assets = dg.load_assets_from_modules(ASSET_MODULES)
all_checks = dg.load_asset_checks_from_modules(ASSET_MODULES)



defs = dg.Definitions(
    assets=all_assets,
    asset_checks=all_checks,
    jobs=ALL_JOBS,
    resources=build_resources(),
)
