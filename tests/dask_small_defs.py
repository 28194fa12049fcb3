"""Code location of tests/test_executor_profiles.py's Dask run: three small assets, one in a
concurrency pool (as the weight fits are), on the project's ``dask`` executor profile."""
import os

import dagster as dg

from jobs.executors import build_executor


@dg.asset
def first():
    return dg.MaterializeResult(metadata={"pid": os.getpid()})


@dg.asset(deps=[first], pool="gpu")
def fitted():
    return dg.MaterializeResult(metadata={"pid": os.getpid()})


@dg.asset(deps=[fitted])
def last():
    return dg.MaterializeResult(metadata={"pid": os.getpid()})


defs = dg.Definitions(assets=[first, fitted, last], executor=build_executor("dask"))
