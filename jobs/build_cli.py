"""``python -m jobs.build_cli``: the README's main command.

Builds the whole graph for the preset in ``AREACAL_PRESET`` (default ``demo``) into
``AREACAL_HOME`` (default ``.areacal``), recording the runs in a persistent Dagster instance
(``DAGSTER_HOME``, default ``<AREACAL_HOME>/dagster_home``) so that ``dagster dev`` shows them.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path


def ensure_dagster_home() -> Path:
    home = Path(os.environ.get("DAGSTER_HOME") or
                Path(os.environ.get("AREACAL_HOME", ".areacal")) / "dagster_home").resolve()
    home.mkdir(parents=True, exist_ok=True)
    os.environ["DAGSTER_HOME"] = str(home)
    config = home / "dagster.yaml"
    example = Path(__file__).resolve().parents[1] / "dagster.yaml.example"
    if not config.exists() and example.exists():
        config.write_text(example.read_text())
    return home


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", help="tiny | demo | full (default: $AREACAL_PRESET or demo)")
    parser.add_argument("--select", default="* and not group:release",
                        help="Dagster asset selection (default: every asset but the release, which "
                             "its own jobs stage and promote)")
    parser.add_argument("--from-failure", nargs="?", const="latest", metavar="RUN_ID",
                        help="re-execute a failed build from failure instead (default: the "
                             "latest failed run): only the steps that failed or did not run")
    args = parser.parse_args(argv)
    if args.preset:
        os.environ["AREACAL_PRESET"] = args.preset
    ensure_dagster_home()

    import dagster as dg

    from definitions import defs
    from jobs.orphans import fail_orphaned_runs

    started = time.time()
    instance = dg.DagsterInstance.get()
    # runs of an earlier build that was killed (kill -9, OOM) would stay STARTED forever
    for orphan in fail_orphaned_runs(instance):
        print(f"marked failed: {orphan.describe()}")
    if args.from_failure:
        from jobs.partitioned import reexecute_from_failure

        run_id, result = reexecute_from_failure(
            instance, None if args.from_failure == "latest" else args.from_failure)
        print(f"re-execution {run_id}: ", end="")
    else:
        result = build(defs, instance, args.select)
    print(f"build {'succeeded' if result else 'FAILED'} in {time.time() - started:.0f} s; "
          f"artifacts under {os.path.abspath(os.environ.get('AREACAL_HOME', '.areacal'))}")
    return 0 if result else 1


def build(defs, instance, selection: str = "*") -> bool:
    """Materialize ``selection`` (the area partitions as one batched range) in one run, with the
    executor of the ``AREACAL_EXECUTOR`` profile (``multiprocess`` unless set:
    ``jobs/executors.py``)."""
    from jobs.executors import executor_profile
    from jobs.partitioned import materialize_graph

    return materialize_graph(defs, instance, selection, executor=executor_profile())


if __name__ == "__main__":
    sys.exit(main())
