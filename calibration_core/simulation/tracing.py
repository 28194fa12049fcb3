"""Which variables to simulate, and which of them depend on the state: the policyengine-us
dependency graph recorded by a tracer (:func:`classify_state_dependence`)."""

from __future__ import annotations

from typing import Iterable, Sequence

import numpy as np
import pandas as pd

from ..areas import STATE_FIPS
from .settings import (ALL_STATES, COUNT_VARIABLES, COUNTY_ROOTS, FROZEN_AT_CLASS,
                       GEO_CONSTRAINT_VARIABLES, GEO_ROOTS, SimulationError)


# --------------------------------------------------------------------------------------------
# which variables


def needed_variables(targets: pd.DataFrame, constraints: pd.DataFrame) -> list[str]:
    """Sorted policyengine-us variables the targets need: every target variable except the
    entity counts, every non-geographic constraint variable of the targets' strata, and
    ``adjusted_gross_income`` (geography routes the top AGI decile by it)."""
    for col in ("variable", "stratum_id"):
        if col not in targets.columns:
            raise SimulationError(f"targets table lacks column {col!r}")
    used = constraints[constraints["stratum_id"].isin(targets["stratum_id"])]
    names = set(targets["variable"]) - set(COUNT_VARIABLES)
    names |= set(used["constraint_variable"]) - GEO_CONSTRAINT_VARIABLES
    names.add("adjusted_gross_income")
    return sorted(names)


def classify_state_dependence(
    variables: Sequence[str],
    edges: dict[str, Iterable[str]],
    state_gate: dict[str, str],
    unexplored: Iterable[str] = (),
) -> dict[str, list[str]]:
    """For each variable, the states in which its value may differ from elsewhere.

    ``edges[v]`` lists the variables ``v`` was computed from (a traced dependency graph);
    ``state_gate[v]`` is the state a variable is defined for only (policyengine-us
    ``defined_for = StateCode.XX``: zero elsewhere); ``unexplored`` are variables whose formula
    did not run in the trace (their inputs are unknown). Returns ``{v: []}`` for state-invariant
    variables, ``{v: ["AK", ...]}`` when only those states' own rules reach ``v``, and
    ``{v: ["*"]}`` when ``v`` reads the geography directly or through an unexplored variable.
    A variable is state-invariant iff the result is ``[]``.
    """
    unexplored = set(unexplored)
    memo: dict[str, frozenset] = {}
    star = frozenset({ALL_STATES})

    def reach(root: str) -> frozenset:
        # iterative DFS with memo; cycles (rare) are cut conservatively
        stack = [(root, iter(sorted(edges.get(root, ()))))]
        acc: dict[str, set] = {root: set()}
        on_path = {root}
        while stack:
            node, children = stack[-1]
            advanced = False
            for child in children:
                if child in memo:
                    acc[node] |= memo[child]
                    continue
                if child in GEO_ROOTS or child in unexplored:
                    acc[node] |= star
                    continue
                if child in state_gate:
                    acc[node].add(state_gate[child])
                    continue
                if child in on_path:
                    continue
                acc[child] = set()
                on_path.add(child)
                stack.append((child, iter(sorted(edges.get(child, ())))))
                advanced = True
                break
            if not advanced:
                stack.pop()
                on_path.discard(node)
                result = frozenset(star if ALL_STATES in acc[node] else acc[node])
                memo[node] = result
                if stack:
                    acc[stack[-1][0]] |= result
        return memo[root]

    out = {}
    for v in variables:
        if v in GEO_ROOTS or v in unexplored:
            out[v] = [ALL_STATES]
        elif v in state_gate:
            out[v] = [state_gate[v]]
        else:
            out[v] = sorted(reach(v))
    return out


def county_dependent_variables(
    variables: Iterable[str],
    edges: dict[str, Iterable[str]],
    unexplored: Iterable[str] = (),
    roots: Iterable[str] = COUNTY_ROOTS | set(FROZEN_AT_CLASS),
) -> list[str]:
    """The ``variables`` whose value may differ between counties of one state (sorted).

    ``edges[v]`` lists the variables ``v`` was computed from (a traced dependency graph, the
    probe's: every state's rules ran there); ``unexplored`` are variables whose formula did not
    run in the trace. A variable is county-dependent iff it is a ``root`` (default
    :data:`COUNTY_ROOTS` and the :data:`FROZEN_AT_CLASS` variables, which the probe holds as
    inputs but the state simulations compute at each class's county) or unexplored, or the
    graph reaches one of those from it - a reverse breadth-first search, exact on cycles.
    The others take one value per state whatever the county, so the state simulations compute
    them once per state (the state's default copy), not once per county class.
    """
    bad = set(roots) | set(unexplored)
    parents: dict[str, set] = {}
    for v, kids in edges.items():
        for k in kids:
            parents.setdefault(k, set()).add(v)
    seen, frontier = set(bad), list(bad)
    while frontier:
        node = frontier.pop()
        for p in parents.get(node, ()):
            if p not in seen:
                seen.add(p)
                frontier.append(p)
    return sorted(v for v in set(variables) if v in seen)


# --------------------------------------------------------------------------------------------
# policyengine-us side


def _edge_tracer():
    """A policyengine-core tracer that records only which variable requested which: about 15%
    overhead, against several times for the full tracer (timings, values, parameters)."""
    from collections import defaultdict

    from policyengine_core.tracers import SimpleTracer

    class EdgeTracer(SimpleTracer):
        def __init__(self) -> None:
            super().__init__()
            self.edges: dict[str, set] = defaultdict(set)

        def record_calculation_start(self, variable, period, branch_name="default") -> None:
            if self._stack:
                self.edges[self._stack[-1]["name"]].add(variable)
            else:
                self.edges[variable]
            super().record_calculation_start(variable, period, branch_name)

    return EdgeTracer()


def _trace_graph(sim) -> tuple[dict[str, set], set]:
    """(edges, unexplored) from an edge tracer: edges[v] = names v's formula requested (every
    request, cached or not, in every branch); a variable with a formula whose only recorded
    request is its ``defined_for`` mask is unexplored."""
    edges = {k: set(v) for k, v in sim.tracer.edges.items()}
    router = getattr(sim, "router", None)
    if router is not None:
        for k, v in router.edges().items():
            edges.setdefault(k, set()).update(v)
    tbs = sim.tax_benefit_system
    unexplored = set()
    for name, kids in edges.items():
        var = tbs.variables.get(name)
        if var is None or not var.formulas or var.defined_for is None:
            continue
        gate = getattr(var.defined_for, "name", var.defined_for)
        if kids <= {gate}:
            unexplored.add(name)
    return edges, unexplored


def _state_gates(tbs) -> dict[str, str]:
    """Variable -> state abbr for variables defined only for one state (directly, or through a
    ``defined_for`` chain ending at a state indicator such as ``AK``)."""
    abbrs = set(STATE_FIPS)
    direct: dict[str, str] = {}
    for name, var in tbs.variables.items():
        d = var.defined_for
        if d is None:
            continue
        d = getattr(d, "name", d)
        direct[name] = str(d)
    gates: dict[str, str] = {}
    for name in direct:
        seen, cur = set(), name
        while cur in direct and cur not in seen:
            seen.add(cur)
            cur = direct[cur]
            if cur in abbrs:
                gates[name] = cur
                break
            # an intermediate gate that defaults to a positive value is "on" outside the state
            default = getattr(tbs.variables.get(cur), "default_value", 0)
            if not isinstance(default, (bool, int, float, np.number)) or default > 0:
                break
    return gates


def variable_entities(tbs, variables: Iterable[str]) -> dict[str, str]:
    """Variable -> entity key (person, tax_unit, ...) from a policyengine-us tax-benefit system;
    names that are not policyengine-us variables raise :class:`SimulationError`."""
    unknown = [v for v in variables if v not in tbs.variables]
    if unknown:
        raise SimulationError(f"variable(s) {unknown} are not policyengine-us variables")
    return {v: tbs.variables[v].entity.key for v in variables}


def _as_plain(values) -> np.ndarray:
    """policyengine result -> plain ndarray (enums decoded to str)."""
    if hasattr(values, "decode_to_str"):
        return np.asarray(values.decode_to_str()).astype(str)
    arr = np.asarray(values)
    if arr.dtype == object:
        arr = arr.astype(str)
    return arr


