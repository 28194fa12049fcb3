"""Consecutive work items (stacked simulations) grouped into orchestrator steps.

The state simulations' chunks (:mod:`state_chunks`) and validation's stacked groups
(:mod:`validation_steps`) run as Dagster steps. A step in a fresh process first pays the
policyengine-us start (~40 s, ``spec/FEASIBILITY.md``), so each step holds at least ``per_step``
households; where the steps' processes start with policyengine-us already built (the
multiprocess executor's fork server, ``jobs/step_preload.py``, or one process for every step)
that start costs nothing, and ``min_steps`` (the steps that run at once) is what matters.
"""
from __future__ import annotations

import sys
from typing import Sequence

import numpy as np


def policyengine_started() -> bool:
    """True when this process has policyengine-us's tax-benefit system built already (its
    steps, forked from the same server or run in this process, will not pay the start)."""
    return "policyengine_us.system" in sys.modules


def group_into_steps(sizes: Sequence[float], per_step: int, min_steps: int = 1
                     ) -> list[list[int]]:
    """Group consecutive items into ``max(min_steps, total // per_step)`` steps (never more
    than the items), balanced by size: an item goes to the step holding its middle.

    ``sizes`` (n,): each item's households (or household copies). Returns the item indices of
    each step, in order, every item once. Raises ``ValueError`` for no items, ``per_step < 1`` or
    ``min_steps < 1``."""
    sizes = np.asarray(sizes, dtype=np.float64)
    if len(sizes) == 0:
        raise ValueError("nothing to group into steps")
    if per_step < 1:
        raise ValueError(f"households per step must be positive, got {per_step}")
    if min_steps < 1:
        raise ValueError(f"steps at least must be positive, got {min_steps}")
    n_steps = int(min(len(sizes), max(1, min_steps, sizes.sum() // per_step)))
    middle = np.cumsum(sizes) - sizes / 2
    step = np.minimum((n_steps * middle / sizes.sum()).astype(np.int64), n_steps - 1)
    return [np.flatnonzero(step == s).tolist() for s in range(n_steps) if (step == s).any()]
