"""Run a selection of the graph in-process, in one run.

When the selection holds the 488-key area asset, the run covers the whole partition range (the
area assets take ``context.partition_keys`` and build them together, loading the base data once).
"""
from __future__ import annotations

import dagster as dg
from dagster._core.storage.tags import (
    ASSET_PARTITION_RANGE_END_TAG,
    ASSET_PARTITION_RANGE_START_TAG,
)


def split_selection(defs: dg.Definitions, selection: str = "*"):
    graph = defs.resolve_asset_graph()
    keys = dg.AssetSelection.from_string(selection).resolve(graph)
    unpartitioned, partitioned = [], []
    for key in sorted(keys, key=lambda k: k.to_user_string()):
        node = graph.get(key)
        if not node.is_executable:
            continue
        (partitioned if node.partitions_def is not None else unpartitioned).append(key)
    return unpartitioned, partitioned


def materialize_graph(defs: dg.Definitions, instance: dg.DagsterInstance,
                      selection: str = "*", partition_range: tuple[str, str] | None = None,
                      raise_on_error: bool = False, run_config: dict | None = None) -> bool:
    """Materialize ``selection`` (with its checks); returns True when every step and check passed."""
    unpartitioned, partitioned = split_selection(defs, selection)
    # the checks are separate definitions: without them a build would evaluate none and the
    # release gate would find every blocking check "never evaluated"
    assets = list(defs.assets or []) + list(defs.asset_checks or [])
    resources = defs.resources or {}
    tags = None
    if partitioned:
        # one run over the whole partition range: unpartitioned assets downstream of the areas
        # (national_dataset, validation_report) then run after the area files exist
        graph = defs.resolve_asset_graph()
        keys = graph.get(partitioned[0]).partitions_def.get_partition_keys()
        start, end = partition_range or (keys[0], keys[-1])
        tags = {ASSET_PARTITION_RANGE_START_TAG: start, ASSET_PARTITION_RANGE_END_TAG: end}
    result = dg.materialize(assets, selection=unpartitioned + partitioned, instance=instance,
                            resources=resources, raise_on_error=raise_on_error, tags=tags,
                            run_config=run_config)
    evaluations = result.get_asset_check_evaluations()
    return result.success and all(e.passed for e in evaluations)
