"""The one Definitions object: assets, checks, jobs, sensors, resources and executor.

The artifact root is ``AREACAL_HOME``; raw inputs come from ``AREACAL_RAW_DIR`` when set;
the build size by ``AREACAL_PRESET`` (``tiny`` | ``demo`` | ``full``); where steps run by
``AREACAL_EXECUTOR`` (``multiprocess`` | ``dask`` | ``k8s``: ``jobs/executors.py``).
"""
from __future__ import annotations

import os

import dagster as dg

import assets.areas
import assets.fit
import assets.raw_inputs
import assets.microdata
import assets.package
import assets.release
import assets.state_simulations
import assets.validation
import assets.targets_db
from jobs import ALL_JOBS
from jobs.executors import build_executor
from resources.fitter import WeightFitter
from resources.publisher import HuggingFacePublisher, LocalDirectoryPublisher
from resources.raw_inputs import DirectoryProvider, PyPICacheProvider
from resources.settings import BuildSettings
from resources.store import store_from_env
from sensors import ALL_SENSORS

ASSET_MODULES = [assets.raw_inputs, assets.targets_db, assets.microdata,
                 assets.state_simulations, assets.package,
                 assets.fit, assets.areas, assets.validation, assets.release]


def build_publisher():
    """``AREACAL_PUBLISHER=huggingface`` with ``AREACAL_HF_REPO`` (token: ``HF_TOKEN``) publishes
    to the Hub; otherwise releases go to ``<store>/release`` (``AREACAL_RELEASE_DIR`` overrides)."""
    if os.environ.get("AREACAL_PUBLISHER", "local") == "huggingface":
        return HuggingFacePublisher(
            repo_id=os.environ["AREACAL_HF_REPO"],
            repo_type=os.environ.get("AREACAL_HF_REPO_TYPE", "dataset"),
            endpoint=os.environ.get("AREACAL_HF_ENDPOINT") or None,
            token=dg.EnvVar("HF_TOKEN"),
        )
    return LocalDirectoryPublisher(root=os.environ.get("AREACAL_RELEASE_DIR") or None)


def build_resources() -> dict:
    raw_dir = os.environ.get("AREACAL_RAW_DIR")
    provider = (
        DirectoryProvider(path=raw_dir)
        if raw_dir
        else PyPICacheProvider(extra_directory=os.environ.get("AREACAL_EXTRA_RAW_DIR"))
    )
    return {
        "store": store_from_env(),  # AREACAL_HOME: a folder, or s3://... (resources/store.py)
        "raw_inputs": provider,
        "settings": BuildSettings(),
        "publisher": build_publisher(),
        "fitter": WeightFitter(device=os.environ.get("AREACAL_FIT_DEVICE", "auto"),
                               mode=os.environ.get("AREACAL_FIT_MODE", "in_process")),
    }


all_assets = dg.load_assets_from_modules(ASSET_MODULES)
all_checks = dg.load_asset_checks_from_modules(ASSET_MODULES)



defs = dg.Definitions(
    assets=all_assets,
    asset_checks=all_checks,
    jobs=ALL_JOBS,
    sensors=ALL_SENSORS,
    resources=build_resources(),
    # AREACAL_EXECUTOR: multiprocess (default) | dask | k8s | in_process (jobs/executors.py)
    executor=build_executor(),
)
