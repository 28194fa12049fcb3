"""National aggregates: the national file's program and tax totals against published figures.

The reference's national validation (spec §6.6, ``validate_national_h5.py``) compares the
national H5's EITC, CTC and income tax with IRS / Treasury totals. Here every total of
:data:`CHECKS` is computed from the national file with ``policyengine_us.Microsimulation``
(weighted sum for 2024) and compared with each published figure for it:

* policyengine-us 2.68.0 parameters ``calibration.gov.*`` (CBO baseline outlays / receipts,
  Treasury tax expenditures, KFF/MACPAC Medicaid spending, KFF ACA premium tax credits by state),
  value in effect on 2024-01-01;
* raw input files: IRS SOI TY2022 (``aca_ptc_state.csv``: premium tax credit by state,
  ``eitc_state.csv``: EITC by state, ``soi_targets.csv``: Publication 1304 totals).

Each comparison has a declared tolerance: the ratio simulated / published must lie in
``[low, high]``; outside it the row is ``FLAG``. Published years differ from 2024 (SOI TY2022),
which the tolerances absorb; the source column names the year. :func:`compare` is pure (tests);
:func:`simulate_totals` imports policyengine-us (~40 s, ~1 GB).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

import numpy as np
import pandas as pd

YEAR = 2024
PARAM_DATE = "2024-01-01"


@dataclass(frozen=True)
class Check:
    """One comparison. kind: ``param`` (policyengine-us parameter ``ref``, summed over its
    children when ``by_state``), ``soi_state`` (sum of column ``column`` of raw CSV ``ref``),
    ``soi_national`` (soi_targets.csv variable ``ref``, TY2022, all returns), or ``none``
    (no published figure reachable offline: reported, never flagged)."""

    variable: str
    kind: str
    ref: str
    source: str
    low: float
    high: float
    column: str = ""
    by_state: bool = False


CHECKS: tuple[Check, ...] = (
    Check("income_tax", "param", "calibration.gov.cbo.income_tax",
          "CBO individual income tax receipts 2024 (policyengine-us parameter)", 0.75, 1.25),
    Check("income_tax_before_refundable_credits", "soi_national", "income_tax_after_credits",
          "IRS SOI TY2022 income tax after credits (Pub. 1304, soi_targets.csv)", 0.75, 1.33),
    Check("adjusted_gross_income", "soi_national", "adjusted_gross_income",
          "IRS SOI TY2022 AGI (Pub. 1304, soi_targets.csv)", 0.8, 1.33),
    Check("employment_income", "soi_national", "employment_income",
          "IRS SOI TY2022 wages and salaries (Pub. 1304, soi_targets.csv)", 0.8, 1.33),
    Check("eitc", "param", "calibration.gov.treasury.tax_expenditures.eitc",
          "Treasury tax expenditure, EITC 2024 (policyengine-us parameter)", 0.75, 1.25),
    Check("eitc", "soi_state", "eitc_state.csv", "IRS SOI TY2022 EITC, sum of states",
          0.75, 1.25, column="Amount"),
    Check("refundable_ctc", "none", "", "no published 2024 total in the raw inputs", 0, np.inf),
    Check("ctc", "none", "", "no published 2024 total in the raw inputs", 0, np.inf),
    Check("aca_ptc", "soi_state", "aca_ptc_state.csv",
          "IRS SOI TY2022 premium tax credit, sum of states", 0.5, 2.0,
          column="TotalPTCAmount"),
    Check("aca_ptc", "param", "calibration.gov.aca.spending.state",
          "KFF APTC by state 2024 (policyengine-us parameter, summed)", 0.5, 2.0,
          by_state=True),
    # the credit of the units that take up Marketplace coverage (takes_up_aca_if_eligible,
    # calibrated per state: aca_takeup); policyengine-us's aca_ptc ignores take-up for filers
    Check("assigned_aca_ptc", "soi_state", "aca_ptc_state.csv",
          "IRS SOI TY2022 premium tax credit, sum of states", 0.5, 2.0,
          column="TotalPTCAmount"),
    Check("assigned_aca_ptc", "param", "calibration.gov.aca.spending.state",
          "KFF APTC by state 2024 (policyengine-us parameter, summed)", 0.5, 2.0,
          by_state=True),
    Check("snap", "param", "calibration.gov.cbo.snap",
          "CBO SNAP benefits 2024 (policyengine-us parameter)", 0.75, 1.25),
    Check("ssi", "param", "calibration.gov.cbo.ssi",
          "CBO SSI outlays 2024 (policyengine-us parameter)", 0.5, 1.5),
    Check("social_security", "param", "calibration.gov.cbo.social_security",
          "CBO Social Security benefits 2024 (policyengine-us parameter)", 0.75, 1.25),
    Check("unemployment_compensation", "param", "calibration.gov.cbo.unemployment_compensation",
          "CBO unemployment compensation 2024 (policyengine-us parameter)", 0.5, 1.5),
    Check("medicaid", "param", "calibration.gov.hhs.medicaid.totals.spending",
          "KFF/MACPAC total Medicaid spending by state, latest <= 2024 (policyengine-us "
          "parameter, summed)", 0.5, 1.5, by_state=True),
    Check("tanf", "none", "", "no published 2024 total in the raw inputs", 0, np.inf),
)
VARIABLES: tuple[str, ...] = tuple(dict.fromkeys(c.variable for c in CHECKS))
COLUMNS = ["variable", "simulated", "published", "ratio", "low", "high", "status", "source"]


class NationalCheckError(ValueError):
    """A published figure cannot be read (file, row or parameter named)."""


def read_soi_ptc(path: str | os.PathLike) -> pd.Series:
    """IRS SOI TY2022 premium tax credit ($) by ``GEO_ID`` from ``aca_ptc_state.csv`` (a ``#``
    comment line, then ``GEO_ID, Returns, TotalPTCAmount``)."""
    return _read_state_column(path, "TotalPTCAmount")


def _read_state_column(path: str | os.PathLike, column: str) -> pd.Series:
    from .raw_inputs import read_csv_file

    df = read_csv_file(path, f"state table with GEO_ID and {column}", NationalCheckError,
                       comment="#")
    if "GEO_ID" not in df.columns or column not in df.columns:
        raise NationalCheckError(f"{path}: needs columns GEO_ID and {column}, has "
                                 f"{list(df.columns)}")
    values = pd.to_numeric(df[column], errors="coerce").to_numpy(dtype=float)
    bad = ~np.isfinite(values) | (values < 0)
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        raise NationalCheckError(f"{path}: {column} of {df['GEO_ID'].iloc[row]} is "
                                 f"{df[column].iloc[row]!r}, expected a number >= 0")
    return pd.Series(values, index=df["GEO_ID"].astype(str).to_numpy(), name=column)


def _soi_national(raw_dir: Path, variable: str) -> float:
    from .raw_inputs import read_csv_file

    path = raw_dir / "soi_targets.csv"
    df = read_csv_file(path, "IRS SOI Publication 1304 national table", NationalCheckError)
    rows = df[(df["Year"] == 2022) & (df["Variable"] == variable)
              & (df["Filing status"] == "All") & (~df["Count"].astype(bool))
              & (~df["Taxable only"].astype(bool))
              & (df["AGI lower bound"] == -np.inf) & (df["AGI upper bound"] == np.inf)]
    if len(rows) != 1:
        raise NationalCheckError(f"{path}: {len(rows)} all-returns TY2022 rows of {variable!r}, "
                                 "expected 1")
    return float(rows["Value"].iloc[0])


def _param_value(parameters, check: Check) -> float:
    node = parameters
    try:
        for part in check.ref.split("."):
            node = getattr(node, part)
    except AttributeError as exc:
        raise NationalCheckError(f"policyengine-us has no parameter {check.ref}") from exc
    if check.by_state:
        states = [child for name, child in node.children.items()
                  if len(name) == 2 and name.isupper()]
        if not states:
            raise NationalCheckError(f"policyengine-us parameter {check.ref} has no state "
                                     "children to sum")
        return float(sum(child(PARAM_DATE) for child in states))
    return float(node(PARAM_DATE))


def published_figures(raw_dir: str | os.PathLike, parameters=None) -> pd.DataFrame:
    """One row per :data:`CHECKS` entry: ``variable, published ($ or NaN), low, high, source``.

    ``parameters``: the policyengine-us parameter tree (``system.parameters``); None leaves the
    ``param`` rows' figures NaN (status ``no reference``), as does an absent optional SOI state
    file. Raises :class:`NationalCheckError` for a file or parameter that cannot be read.
    """
    raw_dir = Path(raw_dir)
    rows = []
    for c in CHECKS:
        value = np.nan
        if c.kind == "param" and parameters is not None:
            value = _param_value(parameters, c)
        elif c.kind == "soi_state" and (raw_dir / c.ref).is_file():  # optional raw file
            value = float(_read_state_column(raw_dir / c.ref, c.column).sum())
        elif c.kind == "soi_national":
            value = _soi_national(raw_dir, c.ref)
        rows.append({"variable": c.variable, "published": value, "low": c.low,
                     "high": c.high, "source": c.source})
    return pd.DataFrame(rows)


def compare(totals: Mapping[str, float], published: pd.DataFrame) -> pd.DataFrame:
    """The aggregates table: ``published`` (:func:`published_figures`) with ``simulated``
    (``totals[variable]``, $), ``ratio`` = simulated / published and ``status``: ``ok`` when
    low <= ratio <= high, ``FLAG`` otherwise (a non-finite simulated total is flagged too),
    ``no reference`` when the published figure is NaN. Raises KeyError naming a variable
    missing from ``totals``."""
    out = published.copy()
    missing = sorted(set(out["variable"]) - set(totals))
    if missing:
        raise KeyError(f"no simulated total for {missing}")
    sim = np.array([float(totals[v]) for v in out["variable"]])
    pub = out["published"].to_numpy(dtype=float)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = sim / pub
    ok = (ratio >= out["low"].to_numpy()) & (ratio <= out["high"].to_numpy())
    status = np.where(~np.isfinite(pub), "no reference",
                      np.where(np.isfinite(sim) & ok, "ok", "FLAG"))
    out["simulated"] = sim
    out["ratio"] = ratio
    out["status"] = status
    return out[COLUMNS]


def simulate_totals(h5_path: str | os.PathLike, variables=VARIABLES, year: int = YEAR
                    ) -> tuple[dict[str, float], object]:
    """Weighted 2024 totals ($) of ``variables`` from the H5 in one
    ``policyengine_us.Microsimulation``, and the simulation's parameter tree."""
    from policyengine_us import Microsimulation

    sim = Microsimulation(dataset=str(h5_path))
    totals = {v: float(sim.calculate(v, year).sum()) for v in variables}
    return totals, sim.tax_benefit_system.parameters


def national_aggregates(h5_path: str | os.PathLike, raw_dir: str | os.PathLike,
                        year: int = YEAR) -> pd.DataFrame:
    """:func:`compare` of the national file's totals with every published figure."""
    totals, parameters = simulate_totals(h5_path, VARIABLES, year)
    return compare(totals, published_figures(raw_dir, parameters))


def to_markdown(table: pd.DataFrame) -> str:
    """The table as the UI and the methodology show it ($ billions, ratio, tolerance)."""
    t = pd.DataFrame({
        "variable": table["variable"],
        "simulated $bn": (table["simulated"] / 1e9).round(1),
        "published $bn": (table["published"] / 1e9).round(1),
        "ratio": table["ratio"].round(2),
        "tolerance": [f"{lo:g}-{hi:g}" if np.isfinite(hi) else "-"
                      for lo, hi in zip(table["low"], table["high"])],
        "status": table["status"], "source": table["source"]})
    return t.to_markdown(index=False)
