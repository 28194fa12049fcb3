"""Executor profiles: where the steps of a run execute (``AREACAL_EXECUTOR``).

* ``multiprocess`` (default): one process per step on this machine, ``max_concurrent`` = the
  machine's cores (``AREACAL_MAX_CONCURRENT`` overrides). The step processes are forked from a
  ``forkserver`` that has imported ``jobs/step_preload.py`` (policyengine-us's system built
  once per run, not once per step); ``AREACAL_START_METHOD=spawn`` starts each step afresh
  instead. A fork server keeps the environment of the process that started it (the first
  multiprocess run of a process): a process that runs several builds with different
  ``AREACAL_*`` settings, as ``dg.execute_job`` in one Python session may, needs ``spawn``;
* ``dask``: ``dagster-dask``'s executor. ``AREACAL_DASK_SCHEDULER=tcp://host:8786`` sends the
  steps to an existing Dask scheduler; without it each run starts a ``distributed.LocalCluster``.
  With ``AREACAL_DASK_GPU_RESOURCE=GPU`` the weight fits go only to workers started with
  ``--resources GPU=1`` (:func:`gpu_step_tags`). Configuration: ``deploy/dask/executor.yaml``;
* ``k8s``: ``dagster-k8s``'s ``k8s_job_executor``, one Kubernetes Job per step, the weight fits
  on a GPU node (``nvidia.com/gpu: 1`` and a node selector). Configuration:
  ``deploy/k8s/executor.yaml``;
* ``in_process``: every step in the run's own process (``materialize()``; what
  the tests' and ``dg.materialize``'s way; ``AREACAL_EXECUTOR=in_process python -m
  jobs.build_cli`` builds that way).

The engines' packages are imported only when their profile is chosen (extras ``dask``, ``k8s``).
"""
from __future__ import annotations

import json
import os
import re
from pathlib import Path

import dagster as dg
import yaml

DEPLOY = Path(__file__).resolve().parents[1] / "deploy"
PROFILES = ("multiprocess", "dask", "k8s", "in_process")
DEFAULT_PROFILE = "multiprocess"
START_METHODS = ("forkserver", "spawn")
PRELOAD_MODULE = "jobs.step_preload"
DASK_GPU_RESOURCE_ENV = "AREACAL_DASK_GPU_RESOURCE"
DASK_RESOURCE_TAG = "dagster-dask/resource_requirements"  # dagster_dask.executor reads it


def gpu_step_tags(environ=os.environ) -> dict[str, str]:
    """Op tags of the two fits. ``AREACAL_DASK_GPU_RESOURCE=GPU`` (the name of a Dask worker
    resource) gives each fit ``{"dagster-dask/resource_requirements": '{"GPU": 1}'}``: under
    the Dask profile the scheduler then runs the fits only on workers started with ``--resources
    GPU=1`` (``deploy/dask/executor.yaml``). Unset or empty: no tag, since on a cluster without
    such a worker a step that asks for one would wait forever.

    Raises ``ValueError`` for a name that is not a Python identifier (Dask's resource names in
    ``--resources NAME=1``)."""
    name = (environ.get(DASK_GPU_RESOURCE_ENV) or "").strip()
    if not name:
        return {}
    if not name.isidentifier():
        raise ValueError(f"{DASK_GPU_RESOURCE_ENV}={name!r}: expected the name of a Dask worker "
                         "resource, such as GPU")
    return {DASK_RESOURCE_TAG: json.dumps({name: 1})}


def executor_profile() -> str:
    name = os.environ.get("AREACAL_EXECUTOR", DEFAULT_PROFILE).strip() or DEFAULT_PROFILE
    if name not in PROFILES:
        raise ValueError(f"AREACAL_EXECUTOR={name!r}: expected one of {', '.join(PROFILES)}")
    return name


_VAR = re.compile(r"\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?::-(?P<default>[^}]*))?\}")


def expand_env(text: str) -> str:
    """``${VAR}`` and ``${VAR:-default}`` replaced from the environment (comment lines are left
    alone); an unset variable without a default is an error naming it."""
    def repl(match):
        value = os.environ.get(match["name"])
        if value:
            return value
        if match["default"] is not None:
            return match["default"]
        raise KeyError(f"environment variable {match['name']} is not set")
    return "".join(line if line.lstrip().startswith("#") else _VAR.sub(repl, line)
                   for line in text.splitlines(keepends=True))


def load_profile_config(name: str) -> dict:
    """The executor configuration of profile ``name`` from ``deploy/<name>/executor.yaml``
    (environment variables in it are expanded)."""
    path = DEPLOY / name / "executor.yaml"
    text = expand_env(path.read_text())
    config = yaml.safe_load(text) or {}
    if not isinstance(config, dict):
        raise ValueError(f"{path}: expected a mapping of executor configuration")
    return config


def dask_config() -> dict:
    address = os.environ.get("AREACAL_DASK_SCHEDULER")
    if address:
        return {"cluster": {"existing": {"address": address}}}
    return load_profile_config("dask")


def build_executor(name: str | None = None) -> dg.ExecutorDefinition:
    name = name or executor_profile()
    if name == "multiprocess":
        cores = int(os.environ.get("AREACAL_MAX_CONCURRENT") or os.cpu_count() or 1)
        start = os.environ.get("AREACAL_START_METHOD", "forkserver").strip() or "forkserver"
        if start not in START_METHODS:
            raise ValueError(f"AREACAL_START_METHOD={start!r}: expected one of "
                             f"{', '.join(START_METHODS)}")
        start_method = ({"forkserver": {"preload_modules": [PRELOAD_MODULE]}}
                        if start == "forkserver" else {"spawn": {}})
        return dg.multiprocess_executor.configured(
            {"max_concurrent": cores, "start_method": start_method}, name="multiprocess")
    if name == "in_process":
        return dg.in_process_executor
    if name == "dask":
        import dask

        # dagster-dask's executor, passing each step's arguments opaquely (jobs/dask_executor.py)
        from jobs.dask_executor import opaque_args_dask_executor

        # a step may start its own worker processes (state simulations, validation stacks):
        # the workers of a LocalCluster this process starts must not be daemonic
        dask.config.set({"distributed.worker.daemon": False})

        return opaque_args_dask_executor.configured(dask_config(), name="dask")
    if name == "k8s":
        from dagster_k8s import k8s_job_executor

        return k8s_job_executor.configured(load_profile_config("k8s"), name="k8s")
    raise ValueError(name)
