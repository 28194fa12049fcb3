"""What the multiprocess executor's fork server imports once, before it forks the step processes.

Dagster's multiprocess executor starts one process per step. With the default ``spawn`` start
each of them imports everything again: dagster (~1 s), the project (~3 s) and, for the steps
that simulate (the state-simulation chunks, validation's stacked groups, the national check),
policyengine-us, whose start builds the whole tax-benefit system (~25-45 s per process; measured
in ``spec/FEASIBILITY.md``). The ``multiprocess`` profile (``jobs/executors.py``) therefore
starts its steps from a ``forkserver`` that has imported this module: every step process is a
fork of a server that already holds policyengine-us's system (copy-on-write, so the ~0.8 GB is
shared, not copied) and the start is paid once per run instead of once per step.

The project's ``definitions`` are imported here too (~3 s a step otherwise). That adds no
hazard of its own: a forked process has the fork server's environment, ``AREACAL_*`` included,
whatever it imports, and the server is started by the run's process with that run's environment
(``jobs/executors.py`` says when to choose ``spawn`` instead).
"""
from __future__ import annotations

import dagster  # noqa: F401  (the executor's own module is added by Dagster)

from calibration_core.simulation import start_policyengine

start_policyengine()

import definitions  # noqa: E402,F401  (the step processes reconstruct their job from it)
