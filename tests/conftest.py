"""Shared fixtures. The real raw inputs come from the pinned PyPI packages (cached after the
first fetch); policyengine-us is imported only by tests marked ``slow``."""
from __future__ import annotations

import os
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def real_raw_dir(tmp_path_factory) -> Path:
    """The real public raw inputs, extracted once per test session."""
    from calibration_core.raw_inputs import fetch_from_pypi

    dest = tmp_path_factory.mktemp("raw")
    fetch_from_pypi(dest)
    return dest


@pytest.fixture()
def dagster_instance(tmp_path):
    import dagster as dg

    os.environ.setdefault("DAGSTER_HOME", str(tmp_path))
    with dg.DagsterInstance.ephemeral() as instance:
        yield instance
