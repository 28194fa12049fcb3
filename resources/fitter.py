"""WeightFitter: where and how the L0 weight fit runs.

One interface, two mechanisms (DAGSTER_GUIDE §3.7):

* ``mode="in_process"`` calls :func:`calibration_core.fit.run_fit` in the step's process (tests,
  CI, a laptop, or a run worker that has the GPU);
* ``mode="pipes"`` runs ``resources/pipes_fit_entry.py`` through a Dagster Pipes client, which
  calls the same ``run_fit`` and streams progress back as Dagster log messages. The default
  client is a :class:`dagster.PipesSubprocessClient` on this machine. A remote GPU is a
  configuration change: give ``pipes_client`` a ``dagster_k8s.PipesK8sClient`` and
  ``pipes_run_options={"image": ..., "base_pod_spec": {... "nvidia.com/gpu": 1 ...}}``, or a
  ``dagster_modal.ModalClient`` and ``pipes_run_options={"func_ref": "<modal app file>"}`` whose
  GPU function calls ``resources.pipes_fit_entry.main()``. The remote side must see the
  artifact store at the same path (a shared volume), because only paths cross the Pipes
  boundary, never arrays.

Both modes write the same files (``weights.npy``, ``diagnostics.csv``, ``epochs.csv``,
``fit_plot.png``, ``fit_summary.json``, ``timing.json``, ``checkpoint.pt``) and give the same
weights for the same inputs, device type and thread count. All but ``timing.json`` are
byte-identical between two identical fits.
"""
from __future__ import annotations

import inspect
import json
import os
import sys
from pathlib import Path
from typing import Any

import dagster as dg

from calibration_core.fit import (TIMING_FILE, FitHyperParameters, fit_preset, format_progress,
                                  package_columns, read_fit_outputs, run_fit)

REPO_ROOT = Path(__file__).resolve().parents[1]
ENTRY_MODULE = "resources.pipes_fit_entry"
PARENT_PID_ENV = "AREACAL_PIPES_PARENT_PID"  # set for local subprocess fits only


class WeightFitter(dg.ConfigurableResource):
    """Runs an L0 weight fit in-process or through Dagster Pipes, on CPU or CUDA."""

    device: str = "auto"  # auto | cpu | cuda[:n]; auto = CUDA when torch sees one
    mode: str = "in_process"  # in_process | pipes
    threads: int = 0  # torch intra-op threads (0: torch's default, = cores)
    pipes_command: list[str] = []  # default: [sys.executable, "-m", "resources.pipes_fit_entry"]
    pipes_run_options: dict[str, Any] = {}  # extra keyword arguments of pipes_client.run(...)
    pipes_client: dg.ResourceDependency[dg.PipesClient] = dg.PipesSubprocessClient(
        cwd=str(REPO_ROOT))

    def validate(self) -> None:
        if self.mode not in {"in_process", "pipes"}:
            raise ValueError(f"WeightFitter.mode must be 'in_process' or 'pipes', got {self.mode!r}")
        if not (self.device in {"auto", "cpu"} or self.device.startswith("cuda")):
            raise ValueError(f"WeightFitter.device must be auto, cpu or cuda[:n], got "
                             f"{self.device!r}")

    def fit(
        self,
        context: dg.AssetExecutionContext,
        package_dir: Path,
        out_dir: Path,
        preset: str,
        overrides: dict,
        *,
        resume: bool = True,
        on_checkpoint_mismatch: str = "error",
    ) -> dict:
        """Fit preset ``preset`` (with hyper-parameter ``overrides``) to the package; return
        ``{"summary": fit_summary.json, "timing": timing.json, "mode": ..., "hp": ...}``.

        ``on_checkpoint_mismatch``: ``error`` raises on a checkpoint of another fit, ``restart``
        logs what differs and starts afresh (the old checkpoint is replaced).
        """
        self.validate()
        hp = fit_preset(preset, n_columns=package_columns(package_dir), **overrides)
        out_dir.mkdir(parents=True, exist_ok=True)
        context.log.info(f"fit {preset} ({self.mode}, device {self.device}): {hp}")
        if self.mode == "in_process":
            self._fit_in_process(context, package_dir, out_dir, hp, resume,
                                 on_checkpoint_mismatch)
        else:
            self._fit_pipes(context, package_dir, out_dir, preset, overrides, resume,
                            on_checkpoint_mismatch)
        return {
            "summary": read_fit_outputs(out_dir),  # complete: every output as the summary lists
            "timing": json.loads((out_dir / TIMING_FILE).read_text()),
            "mode": self.mode,
            "hp": hp,
        }

    def _fit_in_process(self, context, package_dir: Path, out_dir: Path,
                        hp: FitHyperParameters, resume: bool, on_mismatch: str) -> None:
        def progress(event: dict) -> None:
            log = context.log.warning if event["event"] == "checkpoint_discarded" else \
                context.log.info
            log(format_progress(event))

        run_fit(package_dir, out_dir, hp, resume=resume, device=self.device,
                threads=self.threads or None, progress=progress,
                on_checkpoint_mismatch=on_mismatch)

    def _fit_pipes(self, context, package_dir: Path, out_dir: Path, preset: str,
                   overrides: dict, resume: bool, on_mismatch: str) -> None:
        command = list(self.pipes_command) or [sys.executable, "-m", ENTRY_MODULE]
        extras = {
            "package": str(package_dir), "out": str(out_dir), "preset": preset,
            "overrides": {k: v for k, v in overrides.items() if v is not None},
            "device": self.device, "threads": self.threads or None, "resume": resume,
            "on_checkpoint_mismatch": on_mismatch,
        }
        options = dict(self.pipes_run_options)
        if "command" in inspect.signature(self.pipes_client.run).parameters:
            options.setdefault("command", command)  # subprocess, Kubernetes, Docker clients
        if isinstance(self.pipes_client, dg.PipesSubprocessClient):
            # a local fit process dies with this step process (a killed build leaves no fit
            # running on): pipes_fit_entry arms the parent-death signal against this pid
            options["env"] = {**(options.get("env") or {}), PARENT_PID_ENV: str(os.getpid())}
        # clients without a command (e.g. dagster_modal.ModalClient: func_ref=...) take theirs
        # from pipes_run_options and run resources.pipes_fit_entry.main() remotely
        self.pipes_client.run(context=context, extras=extras, **options)
