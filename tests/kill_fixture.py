"""A one-asset code location for tests/test_kill.py: its step takes the ``store`` resource, like
every asset of the graph, and runs two stub chunks on the state simulations' worker pool
(``calibration_core.process_lifetime.worker_pool``). ``AREACAL_KILL_MARKERS`` names the folder
where the step and the workers write their pids.

``python -m tests.kill_fixture`` runs it in-process, as ``jobs.build_cli`` does; ``dagster asset
materialize -m tests.kill_fixture --select sleeper`` runs the step in its own process."""
import os
import sys
from pathlib import Path

import dagster as dg

from calibration_core.process_lifetime import worker_pool
from resources.store import ArtifactStore
from tests.kill_worker import stub_chunk


@dg.asset
def sleeper(store: ArtifactStore) -> None:
    markers = os.environ["AREACAL_KILL_MARKERS"]
    Path(markers, f"step-{os.getpid()}").write_text(str(os.getppid()))
    pool = worker_pool(2)
    try:
        list(pool.map(stub_chunk, [markers, markers]))
    finally:
        pool.shutdown(wait=False, cancel_futures=True)
    Path(store.path("done")).write_text("")


defs = dg.Definitions(assets=[sleeper],
                      resources={"store": ArtifactStore(root=os.environ.get("AREACAL_HOME", "."))})


if __name__ == "__main__":
    result = dg.materialize([sleeper], instance=dg.DagsterInstance.get(),
                            resources=defs.resources)
    sys.exit(0 if result.success else 1)
