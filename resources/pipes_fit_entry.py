"""The Dagster Pipes side of the weight fit: ``python -m resources.pipes_fit_entry``.

Launched by :class:`resources.fitter.WeightFitter` in ``pipes`` mode (a local subprocess, a
Kubernetes pod, a Modal function ...). It needs only ``dagster-pipes``, torch and
``calibration_core``; it reads its arguments from the Pipes extras (paths, preset, overrides,
device), runs :func:`calibration_core.fit.run_fit` and streams progress as Pipes log messages.
The outputs are files under ``out``; the asset reads them after the process ends.
"""
from __future__ import annotations

import os

from dagster_pipes import open_dagster_pipes

from calibration_core.fit import fit_preset, format_progress, package_columns, run_fit
from calibration_core.process_lifetime import die_with_parent

PARENT_PID_ENV = "AREACAL_PIPES_PARENT_PID"  # same name as resources.fitter.PARENT_PID_ENV


def main() -> None:
    parent = os.environ.get(PARENT_PID_ENV)
    if parent:  # a local subprocess of the step: end with it (remote runners do not set it)
        die_with_parent(expected_parent=int(parent))
    with open_dagster_pipes() as pipes:
        extras = pipes.extras
        hp = fit_preset(extras["preset"], n_columns=package_columns(extras["package"]),
                        **(extras.get("overrides") or {}))

        def progress(event: dict) -> None:
            if event["event"] == "checkpoint_discarded":
                pipes.log.warning(format_progress(event))
            else:
                pipes.log.info(format_progress(event))

        result = run_fit(
            extras["package"], extras["out"], hp,
            resume=bool(extras.get("resume", True)),
            device=extras.get("device") or "auto",
            threads=extras.get("threads") or None,
            on_checkpoint_mismatch=extras.get("on_checkpoint_mismatch", "error"),
            progress=progress,
        )
        pipes.report_custom_message({
            "weights_sha256": result.summary["weights_sha256"],
            "epochs": result.summary["epochs"],
            "device": result.timing["device"],
        })


if __name__ == "__main__":
    main()
