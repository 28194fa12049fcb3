"""``python -m jobs.release_cli stage|promote|status``: the release steps from a terminal.

Runs the ``stage_release`` or ``promote`` job in the same persistent Dagster instance as
``python -m jobs.build_cli`` (``DAGSTER_HOME``, default ``<AREACAL_HOME>/dagster_home``), so the
release gate sees the build's asset checks and the UI shows the runs. ``status`` prints the staged
and the published run ids.
"""
from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

from jobs.build_cli import ensure_dagster_home

JOBS = {"stage": "stage_release", "promote": "promote"}


def failure_reason(data) -> str:
    """A step failure's reason for a person: a ``dg.Failure``'s description, else the message of
    the innermost error (the ReleaseError, ConnectionError... that Dagster wrapped in a
    DagsterExecutionStepExecutionError), e.g. the first file that does not verify."""
    user = getattr(data, "user_failure_data", None)
    if user is not None and user.description:
        return user.description.strip()
    error = data.error
    while error is not None and error.cause is not None:
        error = error.cause
    if error is None:
        return "(no error recorded)"
    # "calibration_core.release.ReleaseError: ..." -> "ReleaseError: ..."
    return re.sub(r"^(?:[A-Za-z_][\w]*\.)+(?=[A-Za-z_]\w*: )", "", error.message.strip())


def main(argv: list[str] | None = None, defs=None) -> int:
    """Run the command; ``defs``: the Definitions to use (default: definitions.py's)."""
    parser = argparse.ArgumentParser(prog="python -m jobs.release_cli",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("command", choices=[*JOBS, "status"])
    args = parser.parse_args(argv)
    ensure_dagster_home()

    import dagster as dg

    from calibration_core import release as rel

    if defs is None:
        from definitions import defs

    release_root = Path(defs.resources["store"].root).resolve() / "release"
    if args.command == "status":
        try:
            staged = rel.staged_pointer(release_root)["run_id"]
        except rel.ReleaseError:
            staged = None
        print(f"staged: {staged or '(none)'}\n"
              f"published: {rel.published_run_id(release_root) or '(none)'}")
        return 0
    job = defs.resolve_job_def(JOBS[args.command])
    result = job.execute_in_process(instance=dg.DagsterInstance.get(), raise_on_error=False)
    node = "staged_release" if args.command == "stage" else "published_release"
    done = result.success and result.asset_materializations_for_node(node)
    if not result.success:
        for event in result.all_events:
            if event.is_step_failure:
                print(f"{event.step_key}: {failure_reason(event.step_failure_data)}",
                      file=sys.stderr)
    print(f"{JOBS[args.command]} {'succeeded' if done else 'FAILED'} (run {result.run_id})")
    if done and args.command == "promote":
        print(f"verify: python -m calibration_core.release verify {release_root / 'published'}")
    return 0 if done else 1


if __name__ == "__main__":
    sys.exit(main())
