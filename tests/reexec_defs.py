"""Code location of tests/test_build_cli.py's re-execution from failure: ``first`` then
``second``, which fails while the marker file ``AREACAL_TEST_MARKERS/fail`` exists; each asset
appends its name to ``AREACAL_TEST_MARKERS/ran`` (which steps a run executed)."""
import os
from pathlib import Path

import dagster as dg


def _ran(name: str) -> None:
    folder = Path(os.environ["AREACAL_TEST_MARKERS"])
    with open(folder / "ran", "a") as f:
        f.write(name + "\n")


@dg.asset
def first():
    _ran("first")


@dg.asset(deps=[first])
def second():
    _ran("second")
    if (Path(os.environ["AREACAL_TEST_MARKERS"]) / "fail").exists():
        raise RuntimeError("marker file present: failing on purpose")


defs = dg.Definitions(assets=[first, second], executor=dg.in_process_executor)
