"""Asset jobs: what a user launches from the UI, the CLI or CI.

* ``build_all`` - every asset except the release group (raw inputs to validation report);
* ``rebuild_areas`` - ``area_datasets`` for a partition subset (launch with a partition or range);
* ``refit`` - the weights and everything downstream of them (areas, national, validation);
* ``stage_release`` - ``staged_release`` (launched by the ``release_gate`` sensor, or by hand);
* ``promote`` - ``published_release``: manual, the only way anything reaches production.

Selections name keys through selection strings, which resolve to nothing (not to an error) while
an asset is not defined yet. A job holding the 488-partition ``area_datasets`` is launched over
all partitions with ``ALL_AREAS_TAGS`` (one batched run; see jobs/partitioned.py).
"""
import dagster as dg
from dagster._core.storage.tags import (
    ASSET_PARTITION_RANGE_END_TAG,
    ASSET_PARTITION_RANGE_START_TAG,
)

from calibration_core.areas import all_area_keys

RELEASE = dg.AssetSelection.groups("release")
# keys named by the release assets' deps exist as stubs until their assets are defined
MATERIALIZABLE = dg.AssetSelection.all().materializable()

_AREA_KEYS = all_area_keys()
ALL_AREAS_TAGS = {ASSET_PARTITION_RANGE_START_TAG: _AREA_KEYS[0],
                  ASSET_PARTITION_RANGE_END_TAG: _AREA_KEYS[-1]}

build_all = dg.define_asset_job(
    "build_all",
    selection=dg.AssetSelection.all() - RELEASE,
    description="Every asset of the graph, from raw public inputs to the area datasets and the "
                "validation report, with their checks. Never stages or publishes a release.",
)

rebuild_areas = dg.define_asset_job(
    "rebuild_areas",
    selection=dg.AssetSelection.from_string('key:"area_datasets"') & MATERIALIZABLE,
    description="Rebuild a subset of the 488 area files (launch with a partition key or range, "
                "e.g. district-CA-12, or a backfill over a few states) from the current weights.",
)

refit = dg.define_asset_job(
    "refit",
    selection=(dg.AssetSelection.from_string('key:"regional_weights" or key:"national_weights"')
               .downstream() - RELEASE) & MATERIALIZABLE,
    description="Fit the regional and national weights again and rebuild everything downstream "
                "(area files, national file, validation); launch over all area partitions.",
)

stage_release = dg.define_asset_job(
    "stage_release",
    selection=dg.AssetSelection.assets("staged_release"),
    description="Stage the latest build as a verified release (manifest with sha256 of every "
                "file and input). Refuses when a blocking check of the build failed.",
)

promote = dg.define_asset_job(
    "promote",
    selection=dg.AssetSelection.assets("published_release"),
    description="Manual: promote the last staged release to production, all-or-nothing.",
    tags={"areacal/manual": "true"},
)

ALL_JOBS = [build_all, rebuild_areas, refit, stage_release, promote]
