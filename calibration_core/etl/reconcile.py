"""Hierarchical reconciliation of survey counts to administrative totals (spec §2.5, switched on).

Two sources can measure the same family at two levels and disagree: ACS S2201 counts 15.6 M
SNAP households over the 436 districts, USDA FNS 22.2 M over the 51 states (the survey
under-reports receipt). A fit given both cannot meet both. A :class:`ReconcileRule` declares,
for one family (variable + non-geographic constraints), the *anchor* (level and source that is
kept) and the *scaled* level and source; :func:`reconcile` multiplies every scaled target of a
parent geography by

    f_p = anchor_p / Σ_{c in p} scaled_c          (uprated values, calibration year)

so the scaled targets keep the survey's shares within their parent and sum to the anchor. Each
target keeps its published value and uprating factor; the factor is stored beside them
(``targets.reconciliation_factor``, 1 for every target no rule touches) and the calibration
value is ``value x uprating_factor x reconciliation_factor``.

A parent without an anchor, or whose scaled children are incomplete or sum to zero, is left
unscaled (factor 1) and reported with its reason.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from ..areas import STATES

#: children of each state at the district level (at-large states and DC: 1)
DISTRICTS_PER_STATE = {fips: n for _, fips, _, n in STATES}


LEVEL_PAIRS = {("district", "state"), ("state", "national")}


@dataclass(frozen=True)
class ReconcileRule:
    """Scale ``scaled_source`` targets at ``scaled_level`` so that, in every family of the
    rule, the children of a parent sum to its ``anchor_source`` target at ``anchor_level``.

    A family is one variable of ``variables`` with one exact constraint set whose constraint
    variables are ``domain_variables`` (comma-joined, sorted; e.g. each AGI band is a family).
    Where an anchor is published for several periods, the latest period up to the calibration
    year is the anchor (the one :func:`calibration_core.targets_db.read_targets` selects).
    """

    name: str
    variables: tuple
    domain_variables: str
    anchor_level: str
    anchor_source: str
    scaled_level: str
    scaled_source: str
    why: str = ""

    def __post_init__(self) -> None:
        if (self.scaled_level, self.anchor_level) not in LEVEL_PAIRS:
            raise ValueError(f"reconcile rule {self.name}: {self.scaled_level} -> "
                             f"{self.anchor_level} is not a parent relation")


#: The declared rules.
RULES: tuple[ReconcileRule, ...] = (
    ReconcileRule(
        name="snap_households", variables=("household_count",), domain_variables="snap",
        anchor_level="state", anchor_source="USDA FNS SNAP",
        scaled_level="district", scaled_source="Census ACS S2201",
        why="ACS survey counts of SNAP households under-report the FNS administrative caseload "
            "(15.6 M against 22.2 M); districts keep their ACS shares of their state's FNS "
            "total"),
    ReconcileRule(
        name="soi_agi_bands", variables=("tax_unit_count", "adjusted_gross_income"),
        domain_variables="adjusted_gross_income",
        anchor_level="national", anchor_source="IRS SOI",
        scaled_level="state", scaled_source="IRS SOI",
        why="the SOI state tables are of an earlier tax year (2022) than the national table "
            "(2023); uprating by CPI and tax-unit growth leaves gaps of up to 17% per AGI band. "
            "States keep their 2022 shares of the 2023 national band"),
)

REPORT_COLUMNS = ["rule", "family", "parent", "anchor", "scaled_sum", "factor", "children",
                  "applied", "reason"]


def _parent(level: str, geo: np.ndarray) -> np.ndarray:
    return geo // 100 if level == "district" else np.zeros_like(geo)


def _expected_children(level: str, parent: int) -> int:
    return DISTRICTS_PER_STATE.get(parent, -1) if level == "district" else 51


def _domain_variables(domain: tuple) -> str:
    return ",".join(sorted({c[0] for c in domain}))


def reconcile(targets: pd.DataFrame, values: np.ndarray,
              rules: tuple[ReconcileRule, ...] = RULES,
              year: int = 2024) -> tuple[np.ndarray, pd.DataFrame]:
    """Reconciliation factors for ``targets`` and a report per (rule, family, parent).

    Parameters
    ----------
    targets : frame with ``geo_level``, ``geo_id`` (int: 0, state FIPS, district GEOID),
        ``variable``, ``domain`` (tuple of constraint triples), ``source``, ``period``; one row
        per target.
    values : (n,) float64, the targets' uprated values.
    year : calibration year (selects the anchor's period).

    Returns
    -------
    factors : (n,) float64, 1 where no rule applies.
    report : one row per (rule, family, parent): anchor, scaled_sum (before), factor,
        children, applied (bool) and the reason when not applied.
    """
    values = np.asarray(values, dtype=np.float64)
    factors = np.ones(len(targets), dtype=np.float64)
    rows = []
    geo = targets["geo_id"].to_numpy(dtype=np.int64)
    level = targets["geo_level"].to_numpy()
    source = targets["source"].to_numpy()
    period = targets["period"].to_numpy(dtype=np.int64)
    dom_vars = targets["domain"].map(_domain_variables).to_numpy()
    family_key = (targets["variable"] + "/" + targets["domain"].map(
        lambda d: "|".join(f"{v}{o}{x}" for v, o, x in sorted(d)))).to_numpy()
    for rule in rules:
        in_rule = targets["variable"].isin(rule.variables).to_numpy() & (
            dom_vars == rule.domain_variables)
        for family in sorted(set(family_key[in_rule])):
            fam = in_rule & (family_key == family)
            anchor = fam & (level == rule.anchor_level) & (source == rule.anchor_source)
            if anchor.any():  # latest anchor period <= year, else the earliest
                periods = period[anchor]
                eligible = periods[periods <= year]
                chosen = eligible.max() if eligible.size else periods.min()
                anchor &= period == chosen
            scaled = fam & (level == rule.scaled_level) & (source == rule.scaled_source)
            anchors = pd.Series(values[anchor], index=geo[anchor])
            if anchors.index.duplicated().any():
                raise ValueError(f"reconcile rule {rule.name}, {family}: two anchor targets "
                                 f"for {anchors.index[anchors.index.duplicated()][0]}")
            child_rows = np.flatnonzero(scaled)
            child_parent = _parent(rule.scaled_level, geo[child_rows])
            for parent in sorted(set(child_parent.tolist()) | set(anchors.index.tolist())):
                mine = child_rows[child_parent == parent]
                total = float(values[mine].sum())
                a = float(anchors.get(parent, np.nan))
                expected = _expected_children(rule.scaled_level, parent)
                reason = ""
                if np.isnan(a):
                    reason = "no anchor target"
                elif len(mine) != expected:
                    reason = f"{len(mine)} of {expected} children present"
                elif total == 0 or (a != 0 and np.sign(total) != np.sign(a)):
                    reason = f"children sum to {total:g} against the anchor {a:g}"
                factor = a / total if not reason else 1.0
                factors[mine] = factor
                rows.append({"rule": rule.name, "family": family, "parent": int(parent),
                             "anchor": a, "scaled_sum": total, "factor": factor,
                             "children": int(len(mine)), "applied": not reason,
                             "reason": reason})
    return factors, pd.DataFrame(rows, columns=REPORT_COLUMNS)
