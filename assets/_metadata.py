"""Metadata helpers shared by the asset modules: Markdown tables and the cost of each step."""
from __future__ import annotations

import functools
import inspect
import os
import resource
import sys
import time
from dataclasses import dataclass

import dagster as dg
import pandas as pd


def markdown_table(frame: pd.DataFrame, index: bool = False) -> dg.MetadataValue:
    """A table as Markdown metadata, which the Dagster UI renders."""
    return dg.MetadataValue.md(frame.to_markdown(index=index))


# ru_maxrss is in kilobytes on Linux, in bytes on macOS (getrusage(2))
_RSS_UNIT = 1 if sys.platform == "darwin" else 1024


@dataclass(frozen=True)
class _Usage:
    wall: float
    cpu: float  # user + system seconds of this process and of its waited-for children

    @classmethod
    def now(cls) -> "_Usage":
        t = os.times()
        return cls(time.perf_counter(), t.user + t.system + t.children_user + t.children_system)


def step_cost(start: _Usage) -> dict[str, dg.MetadataValue]:
    """The cost of a step since ``start``, as Dagster metadata (the UI charts numeric entries
    across materializations):

    * ``step/wall_seconds``: elapsed time;
    * ``step/cpu_seconds``: user + system CPU of this process and of the child processes it
      has waited for (simulation workers), so ``cpu / wall`` near the worker count means the
      workers were busy;
    * ``step/peak_rss_mib``: peak resident memory of this process (``getrusage`` ru_maxrss).
      Under the multiprocess executor each step has its own process, so this is the step's
      peak; under the in-process executor it is the run process's peak so far;
    * ``step/children_peak_rss_mib``: the largest peak of a finished child (0 if none).
    """
    end = _Usage.now()
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * _RSS_UNIT / 2**20
    kids = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * _RSS_UNIT / 2**20
    return {
        "step/wall_seconds": dg.MetadataValue.float(round(end.wall - start.wall, 2)),
        "step/cpu_seconds": dg.MetadataValue.float(round(end.cpu - start.cpu, 2)),
        "step/peak_rss_mib": dg.MetadataValue.float(round(own, 1)),
        "step/children_peak_rss_mib": dg.MetadataValue.float(round(kids, 1)),
    }


def _with_cost(event, start: _Usage):
    if isinstance(event, dg.MaterializeResult):
        return event._replace(metadata={**(event.metadata or {}), **step_cost(start)})
    if isinstance(event, dg.Output):  # the ops of a graph-backed asset
        return event.with_metadata({**(event.metadata or {}), **step_cost(start)})
    if isinstance(event, dg.DynamicOutput):
        return dg.DynamicOutput(event.value, event.mapping_key, event.output_name,
                                metadata={**(event.metadata or {}), **step_cost(start)})
    return event


def measured(fn):
    """Decorate an asset function (under ``@dg.asset``), or an op of a graph-backed asset, so
    that the ``MaterializeResult`` (or ``Output``, ``DynamicOutput``) it returns, or each one it
    yields, carries :func:`step_cost` metadata measured from the call's
    start to that event. Other events (per-partition ``AssetMaterialization``s) pass unchanged. The signature Dagster inspects (context, config, resources) is the
    function's own (``functools.wraps``)."""
    if inspect.isgeneratorfunction(fn):
        @functools.wraps(fn)
        def generator(*args, **kwargs):
            start = _Usage.now()
            for event in fn(*args, **kwargs):
                yield _with_cost(event, start)
        return generator

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        start = _Usage.now()
        return _with_cost(fn(*args, **kwargs), start)
    return wrapper
