"""Code location of tests/test_executor_profiles.py's Dask runs: three small assets, one in a
concurrency pool and asking Dask for the GPU worker resource named in
``AREACAL_DASK_GPU_RESOURCE`` (as the weight fits do), and a graph-backed asset that fans out
into dynamic steps (as ``state_simulations`` does) whose second step fails once and is retried
alone, on the project's ``dask`` executor profile. ``AREACAL_TEST_MARKERS`` names a folder for
the marker file of that first failure."""
import os
from pathlib import Path

import dagster as dg

from jobs.executors import build_executor, gpu_step_tags


@dg.asset
def first():
    return dg.MaterializeResult(metadata={"pid": os.getpid()})


@dg.asset(deps=[first], pool="gpu", op_tags=gpu_step_tags())  # as the weight fits
def fitted():
    return dg.MaterializeResult(metadata={"pid": os.getpid()})


@dg.asset(deps=[fitted])
def last():
    return dg.MaterializeResult(metadata={"pid": os.getpid()})


@dg.op(ins={"upstream": dg.In(dg.Nothing)}, out=dg.DynamicOut(dg.Nothing))
def plan_parts():
    for i in range(3):
        yield dg.DynamicOutput(None, mapping_key=f"c{i:02d}")


@dg.op(ins={"planned": dg.In(dg.Nothing)}, out=dg.Out(dg.Nothing),
       retry_policy=dg.RetryPolicy(max_retries=1))
def run_part(context: dg.OpExecutionContext):
    marker = Path(os.environ["AREACAL_TEST_MARKERS"]) / "failed_once"
    if context.get_mapping_key() == "c01" and not marker.exists():
        marker.touch()
        raise RuntimeError("a chunk fails on its first attempt")
    return dg.Output(None, metadata={"pid": os.getpid()})


@dg.op(ins={"parts": dg.In(dg.Nothing)}, out=dg.Out(dg.Nothing))
def collect_parts():
    return dg.Output(None, metadata={"pid": os.getpid()})


@dg.graph_asset(ins={"last": dg.AssetIn(dagster_type=dg.Nothing)})
def fanned(last):
    return collect_parts(plan_parts(last).map(lambda p: run_part(p)).collect())


defs = dg.Definitions(assets=[first, fitted, last, fanned], executor=build_executor("dask"))
