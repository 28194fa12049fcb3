"""Which package rows the fit uses, and how much each weighs in its loss.

Two steps of the package build (:func:`calibration_core.package.build_package`), both pure
functions of the matrix, the targets and the target config:

1. :func:`feasibility` flags every row that no non-negative weights can meet, with a reason,
   before the fit sees it (an infeasible row otherwise pulls on every record it touches for as
   long as the fit runs, and dominates a loss of squared relative errors):

   * ``no non-zero entry`` - no record contributes (``X_i = 0``);
   * ``zero target`` - ``y_i = 0`` while records contribute: met only by switching off every
     record of the row;
   * ``opposite sign`` - ``y_i`` has the opposite sign to every non-zero of ``X_i``;
   * ``unreachable within B x initial weights`` - with every weight in ``[0, B * w0_j]`` the
     row reaches at most ``[B * Σ_j min(X_ij, 0) w0_j, B * Σ_j max(X_ij, 0) w0_j]``, and
     ``y_i`` lies outside (``B`` = ``feasibility.max_weight_ratio`` of the target config,
     default 100: a clone would need more than 100 times its initial weight, about 6 times the
     survey weight of its whole base household at 16 clones).

   Flagged rows get ``feasible = False`` and ``exclusion_reason``; they stay in the package and
   validation scores them, but the fit leaves them out.

2. :func:`loss_weights` gives each fitted row ``i`` the weight ``v_i`` of the balanced loss

       v_i = |F| * g_{G(i)} / (n_{G(i)} * Σ_{G in groups(F)} g_G)

   where ``F`` is the set of fitted rows, ``G(i)`` the row's group (by default its family and
   geographic level: ``snap/snap @ state`` is one group of 51 rows, ``person_count/age @
   district`` one of 7,809), ``n_G`` the group's fitted rows and ``g_G`` its configured weight
   (``loss.group_weights`` rules, default 1). Every group then contributes in proportion to
   ``g_G`` whatever its size, and ``Σ_i v_i = |F|``: with groups of equal size and weight every
   ``v_i = 1`` (the unweighted loss), so the L0 and L2 terms keep their scale. ``loss.balance:
   false`` gives ``v_i = 1`` for every fitted row. Rows outside ``F`` get 0.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
import scipy.sparse as sp

DEFAULT_MAX_WEIGHT_RATIO = 100.0
DEFAULT_GROUP_BY = ("family", "geo_level")
GROUP_FIELDS = ("family", "geo_level", "variable", "domain", "source")
REASONS = ("no non-zero entry", "zero target", "opposite sign",
           "unreachable within B x initial weights")


class FitRowsError(ValueError):
    """The target config's ``feasibility`` or ``loss`` section is malformed."""


def feasibility(matrix: sp.csr_matrix, values: np.ndarray, initial_weights: np.ndarray,
                max_weight_ratio: float = DEFAULT_MAX_WEIGHT_RATIO
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Flag rows that non-negative weights bounded by ``max_weight_ratio * w0`` cannot meet.

    Parameters
    ----------
    matrix : (n_rows, n_columns) CSR.
    values : (n_rows,) targets ``y``.
    initial_weights : (n_columns,) ``w0 >= 0``.
    max_weight_ratio : ``B > 0``.

    Returns
    -------
    feasible : (n_rows,) bool.
    reason : (n_rows,) object, ``""`` for feasible rows, else one of :data:`REASONS` (the
        first that applies, in that order).
    reach_low, reach_high : (n_rows,) float64, the interval ``B * X_i^- w0``, ``B * X_i^+ w0``.
    """
    if not max_weight_ratio > 0:
        raise FitRowsError(f"feasibility.max_weight_ratio must be > 0 (got {max_weight_ratio})")
    X = sp.csr_matrix(matrix, dtype=np.float64)
    y = np.asarray(values, dtype=np.float64)
    w0 = np.asarray(initial_weights, dtype=np.float64)
    nnz = np.diff(X.indptr)
    pos, neg = X.copy(), X.copy()
    pos.data = np.maximum(pos.data, 0.0)
    neg.data = np.minimum(neg.data, 0.0)
    has_pos = np.asarray((pos != 0).sum(axis=1)).ravel() > 0
    has_neg = np.asarray((neg != 0).sum(axis=1)).ravel() > 0
    high = max_weight_ratio * np.asarray(pos @ w0).ravel()
    low = max_weight_ratio * np.asarray(neg @ w0).ravel()
    reason = np.full(len(y), "", dtype=object)
    checks = (
        (nnz == 0, REASONS[0]),
        (y == 0, REASONS[1]),
        (((y > 0) & ~has_pos) | ((y < 0) & ~has_neg), REASONS[2]),
        ((y > high) | (y < low), REASONS[3]),
    )
    for mask, text in checks:
        reason[(reason == "") & mask] = text
    return reason == "", reason, low, high


def _rule_mask(table: pd.DataFrame, rule: dict) -> np.ndarray:
    mask = np.ones(len(table), dtype=bool)
    for f, want in rule.items():
        if f == "weight":
            continue
        values = want if isinstance(want, list) else [want]
        mask &= table[f].astype(str).isin([str(v) for v in values]).to_numpy()
    return mask


def validate_loss_config(loss: dict | None, source: str = "target config") -> dict:
    """The ``loss`` section with defaults: ``balance`` (bool, default True), ``group_by`` (list of
    :data:`GROUP_FIELDS`, default family and geo_level), ``group_weights`` (rules: fields of
    GROUP_FIELDS plus ``weight >= 0``; the last matching rule sets a group's weight)."""
    loss = dict(loss or {})
    unknown = set(loss) - {"balance", "group_by", "group_weights"}
    if unknown:
        raise FitRowsError(f"{source}: loss has unknown key(s) {sorted(unknown)}; expected "
                           "balance, group_by, group_weights")
    balance = loss.get("balance", True)
    if not isinstance(balance, bool):
        raise FitRowsError(f"{source}: loss.balance must be true or false (got {balance!r})")
    group_by = loss.get("group_by", list(DEFAULT_GROUP_BY))
    if (not isinstance(group_by, list) or not group_by
            or any(g not in GROUP_FIELDS for g in group_by)):
        raise FitRowsError(f"{source}: loss.group_by must be a non-empty list of "
                           f"{list(GROUP_FIELDS)} (got {group_by!r})")
    rules = loss.get("group_weights") or []
    if not isinstance(rules, list):
        raise FitRowsError(f"{source}: loss.group_weights must be a list of rules")
    for i, rule in enumerate(rules):
        if not isinstance(rule, dict) or "weight" not in rule:
            raise FitRowsError(f"{source}: loss.group_weights[{i}] must be a mapping with a "
                               "weight")
        bad = set(rule) - {*GROUP_FIELDS, "weight"}
        if bad:
            raise FitRowsError(f"{source}: loss.group_weights[{i}] has unknown field(s) "
                               f"{sorted(bad)}; allowed: {[*GROUP_FIELDS, 'weight']}")
        weight = rule["weight"]
        if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not weight >= 0:
            raise FitRowsError(f"{source}: loss.group_weights[{i}].weight must be a number "
                               f">= 0 (got {weight!r})")
    return {"balance": balance, "group_by": list(group_by), "group_weights": list(rules)}


def validate_feasibility_config(section: dict | None, source: str = "target config") -> dict:
    """The ``feasibility`` section with defaults: ``max_weight_ratio`` (default 100)."""
    section = dict(section or {})
    unknown = set(section) - {"max_weight_ratio"}
    if unknown:
        raise FitRowsError(f"{source}: feasibility has unknown key(s) {sorted(unknown)}; "
                           "expected max_weight_ratio")
    ratio = section.get("max_weight_ratio", DEFAULT_MAX_WEIGHT_RATIO)
    if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not ratio > 0:
        raise FitRowsError(f"{source}: feasibility.max_weight_ratio must be a number > 0 "
                           f"(got {ratio!r})")
    return {"max_weight_ratio": float(ratio)}


def loss_weights(targets: pd.DataFrame, fit_mask: np.ndarray, loss: dict | None = None
                 ) -> tuple[np.ndarray, pd.DataFrame]:
    """Per-row weights ``v`` of the balanced loss (module docstring) and a table per group.

    Parameters
    ----------
    targets : the package's targets with the columns named by ``loss.group_by``.
    fit_mask : (n_rows,) bool, the fitted rows ``F``.
    loss : the target config's ``loss`` section (:func:`validate_loss_config`).

    Returns
    -------
    v : (n_rows,) float64, 0 outside ``F``, ``Σ v = |F|``.
    groups : one row per group of ``F``: the group_by fields, rows, group_weight, row_weight.
    """
    cfg = validate_loss_config(loss)
    fit_mask = np.asarray(fit_mask, dtype=bool)
    v = np.zeros(len(targets), dtype=np.float64)
    keys = targets[cfg["group_by"]].astype(str)
    label = keys.agg(" @ ".join, axis=1) if len(keys) else pd.Series([], dtype=str)
    g = np.ones(len(targets), dtype=np.float64)
    for rule in cfg["group_weights"]:
        g[_rule_mask(targets, rule)] = float(rule["weight"])
    fitted = np.flatnonzero(fit_mask)
    table = pd.DataFrame({"group": label.to_numpy()[fitted], "group_weight": g[fitted]})
    per_group = table.groupby("group", sort=True).agg(rows=("group", "size"),
                                                      group_weight=("group_weight", "first"))
    if (table.groupby("group")["group_weight"].nunique() > 1).any():
        bad = per_group.index[(table.groupby("group")["group_weight"].nunique() > 1)][0]
        raise FitRowsError(f"loss.group_weights give the rows of group {bad!r} different "
                           "weights; a weight applies to a whole group")
    n_fit = len(fitted)
    if not cfg["balance"]:
        v[fitted] = 1.0
        per_group["row_weight"] = 1.0
    elif n_fit:
        total = float(per_group["group_weight"].sum())
        if total <= 0:
            raise FitRowsError("loss.group_weights set every fitted group's weight to 0")
        per_group["row_weight"] = n_fit * per_group["group_weight"] / (per_group["rows"] * total)
        v[fitted] = per_group["row_weight"].reindex(table["group"]).to_numpy()
    else:
        per_group["row_weight"] = []
    return v, per_group.reset_index()
