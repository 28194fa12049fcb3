"""Every asset step reports its wall time, CPU time and peak memory as metadata
(assets._metadata.measured), so the UI shows where a build's time and memory go."""

import dagster as dg
import numpy as np

from assets._metadata import measured

COST_KEYS = {"step/wall_seconds", "step/cpu_seconds", "step/peak_rss_mib",
             "step/children_peak_rss_mib"}


@dg.asset
@measured
def busy(context: dg.AssetExecutionContext) -> dg.MaterializeResult:
    block = np.ones((64, 2**20 // 8 * 4))  # 256 MiB held while the step runs
    total = 0.0
    for _ in range(20):
        total += float(block.sum())
    return dg.MaterializeResult(metadata={"total": total})


@dg.asset(partitions_def=dg.StaticPartitionsDefinition(["a", "b"]))
@measured
def batched(context: dg.AssetExecutionContext):
    yield dg.MaterializeResult(metadata={"areas": 2})
    for key in ("a", "b"):
        yield dg.AssetMaterialization(asset_key=context.asset_key, partition=key,
                                      metadata={"own": key})


def test_returned_result_carries_the_steps_cost():
    result = dg.materialize([busy])
    assert result.success
    meta = result.asset_materializations_for_node("busy")[0].metadata
    assert COST_KEYS <= set(meta) and meta["total"].value > 0
    assert meta["step/wall_seconds"].value > 0 and meta["step/cpu_seconds"].value > 0
    assert meta["step/peak_rss_mib"].value >= 256  # the block it held


def test_generator_keeps_its_events_and_costs_its_batch_event():
    with dg.DagsterInstance.ephemeral() as instance:
        result = dg.materialize([batched], instance=instance,
                                tags={"dagster/asset_partition_range_start": "a",
                                      "dagster/asset_partition_range_end": "b"})
        assert result.success
        events = result.asset_materializations_for_node("batched")
        with_cost = [e for e in events if COST_KEYS <= set(e.metadata)]
        own = sorted(e.metadata["own"].value for e in events if "own" in e.metadata)
        assert own == ["a", "b"] and with_cost and all("own" not in e.metadata
                                                       for e in with_cost)


def test_every_asset_of_the_project_reports_its_cost():
    """Each asset of definitions.py is wrapped by ``measured``, and each op of a graph-backed
    asset (a new asset or op without it fails)."""
    import dagster as dg

    from definitions import defs

    unmeasured, ops = [], 0
    for asset in defs.assets:
        node = asset.node_def
        for op in ([n.definition for n in node.nodes_in_topological_order]
                   if isinstance(node, dg.GraphDefinition) else [asset.op]):
            ops += 1
            fn = op.compute_fn.decorated_fn
            if not fn.__code__.co_qualname.startswith("measured.<locals>."):
                unmeasured.append(op.name)
    assert unmeasured == [] and ops > len(defs.assets)  # the graph's ops were looked at


def _burn(seconds: float) -> float:
    import time

    end, x = time.process_time() + seconds, 0.0
    while time.process_time() < end:
        x += 1.0
    return x


@dg.asset
@measured
def pooled(context: dg.AssetExecutionContext) -> dg.MaterializeResult:
    from calibration_core.process_lifetime import close_pool, worker_pool

    pool = worker_pool(2)
    list(pool.map(_burn, [1.0, 1.0]))
    close_pool(pool)
    return dg.MaterializeResult()


def test_a_step_with_a_worker_pool_counts_its_workers_cpu():
    """The state simulations' pool is closed with ``close_pool``: its workers are reaped inside
    the step, so their CPU (2 x 1 s here) is the step's, not the next step's."""
    result = dg.materialize([pooled])
    md = result.asset_materializations_for_node("pooled")[0].metadata
    assert md["step/cpu_seconds"].value >= 1.8, md["step/cpu_seconds"]
    assert md["step/children_peak_rss_mib"].value > 0
