"""Code location of tests/test_postgres_backfill.py: the real ``area_datasets`` asset, backfilled
four partitions per run, on the store at ``AREACAL_HOME`` (tests/area_store_fixtures.py)."""
import os

import dagster as dg

import assets.areas as areas
from resources.store import ArtifactStore

PARTITIONS_PER_RUN = 4

area_datasets = areas.area_datasets.with_attributes(
    backfill_policy=dg.BackfillPolicy.multi_run(max_partitions_per_run=PARTITIONS_PER_RUN))

defs = dg.Definitions(
    assets=[area_datasets],
    resources={"store": ArtifactStore(root=os.environ.get("AREACAL_HOME", ".areacal"))},
    executor=dg.in_process_executor,  # one process per run: the runs are what runs in parallel
)
