"""Stub task of the kill tests' worker pool (no dagster import: spawned workers start fast)."""
import os
import time
from pathlib import Path


def stub_chunk(marker_dir: str) -> int:
    """Record this worker's pid, then 'compute' for a minute (a state-simulation chunk)."""
    Path(marker_dir, f"worker-{os.getpid()}").write_text(str(os.getppid()))
    time.sleep(60)
    Path(marker_dir, f"finished-{os.getpid()}").write_text("")
    return os.getpid()
