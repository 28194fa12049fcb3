"""Uprating targets from the period they were published for to the calibration year.

Two growth indices, both read from Tax-Calculator's files in the raw folder (taxcalc 6.8.0,
built by PSLmodels/taxdata from CBO projections):

* ``cpi_u`` for dollar targets: the cumulative product of ``ACPIU`` in ``growfactors.csv`` (each
  row is the year-over-year CPI-U ratio). Dollar amounts published for an earlier year are
  restated in calibration-year prices; real growth is not added, because the calibration fits
  the survey's own income distribution and only the price level differs between vintages.
* ``count`` for count targets (``*_count``): the total of taxdata's CPS tax-unit weights
  ``WT{year}`` in ``cps_weights.csv.gz``. ``growfactors.csv`` has no population column; these
  weights are taxdata's projection of the number of tax units, which is exactly the population
  the count targets that need uprating count (IRS SOI returns). Counts published for the
  calibration year itself (ACS, FNS, CMS 2024) get factor 1.

``factor(period -> year) = index[year] / index[period]``.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd

GROWFACTORS_FILE = "growfactors.csv"
WEIGHTS_FILE = "cps_weights.csv.gz"
BASES = ("count", "cpi_u")


class UpratingError(ValueError):
    """The growth files lack a year or are malformed."""


def growth_index(raw_dir: str | os.PathLike) -> pd.DataFrame:
    """Long frame ``year, basis, index`` for both bases over the years the files cover.

    ``cpi_u``: 1.0 in the first growfactors year, cumulative ``ACPIU`` after it.
    ``count``: sum of ``WT{year}`` weights (x100 in the file, divided back), i.e. tax units.
    """
    raw_dir = Path(raw_dir)
    gf_path = raw_dir / GROWFACTORS_FILE
    try:
        gf = pd.read_csv(gf_path)
    except (OSError, ValueError) as exc:
        raise UpratingError(f"{gf_path}: cannot read growth factors ({exc})") from exc
    for col in ("YEAR", "ACPIU"):
        if col not in gf.columns:
            raise UpratingError(f"{gf_path.name}: missing column {col}")
    gf = gf.sort_values("YEAR")
    cpi = pd.DataFrame({"year": gf["YEAR"].astype(int), "basis": "cpi_u",
                        "index": np.cumprod(gf["ACPIU"].to_numpy(dtype=float))})
    w_path = raw_dir / WEIGHTS_FILE
    try:
        weights = pd.read_csv(w_path)
    except (OSError, ValueError) as exc:
        raise UpratingError(f"{w_path}: cannot read CPS weights ({exc})") from exc
    cols = [c for c in weights.columns if c.startswith("WT") and c[2:].isdigit()]
    if not cols:
        raise UpratingError(f"{w_path.name}: no WT<year> columns")
    totals = weights[cols].sum(axis=0).to_numpy(dtype=float) / 100.0
    count = pd.DataFrame({"year": [int(c[2:]) for c in cols], "basis": "count",
                          "index": totals})
    out = pd.concat([cpi, count], ignore_index=True)
    if (out["index"] <= 0).any() or not np.isfinite(out["index"]).all():
        raise UpratingError(f"{gf_path.name}/{w_path.name}: non-positive growth index")
    return out.sort_values(["basis", "year"]).reset_index(drop=True)


def basis_for(variables: pd.Series) -> pd.Series:
    """``count`` for ``*_count`` variables, ``cpi_u`` for everything else (dollar amounts)."""
    return pd.Series(np.where(variables.astype(str).str.endswith("_count"), "count", "cpi_u"),
                     index=variables.index)


def uprating_factors(periods: pd.Series, bases: pd.Series, year: int,
                     index: pd.DataFrame) -> np.ndarray:
    """Factor ``index[basis, year] / index[basis, period]`` per row; 1 where period == year.

    ``periods`` and ``bases`` have one entry per target (shape (n,)); returns shape (n,).
    Raises if a needed year is outside the index.
    """
    lookup = index.set_index(["basis", "year"])["index"]
    periods = np.asarray(periods, dtype=np.int64)
    bases = np.asarray(bases, dtype=object)
    need = pd.MultiIndex.from_arrays([bases, periods])
    to = pd.MultiIndex.from_arrays([bases, np.full(len(periods), int(year))])
    same = periods == int(year)
    missing = sorted({k for k, ok in zip(list(need) + list(to), list(same) * 2)
                      if not ok and k not in lookup.index})
    if missing:
        raise UpratingError(f"no growth index for (basis, year) {missing[:3]}; available years "
                            f"{int(index['year'].min())}-{int(index['year'].max())}")
    factors = np.ones(len(periods))
    if (~same).any():
        factors[~same] = (lookup.reindex(to[~same]).to_numpy()
                          / lookup.reindex(need[~same]).to_numpy())
    return factors
