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


def _first_bad(mask: np.ndarray) -> int:
    return int(np.flatnonzero(mask)[0])


def _shown(value) -> str:
    from .raw_inputs import shown

    return shown(value)


def read_growfactors(path: str | os.PathLike,
                     error: type[Exception] = UpratingError) -> pd.DataFrame:
    """``growfactors.csv`` validated at the boundary: one row per consecutive ``YEAR``, every
    other column a series of finite growth factors > 0 (float).

    A NaN, an empty cell, text, an infinite or a non-positive factor raises ``error`` naming the
    file, the series and the year: a NaN would otherwise be skipped by a product of factors and
    silently lower every uprated amount.
    """
    from .raw_inputs import read_csv_file

    path = Path(path)
    gf = read_csv_file(path, "Tax-Calculator growth factors: YEAR plus one column per series",
                       error)
    if "YEAR" not in gf.columns:
        raise error(f"{path}: missing column 'YEAR'; expected YEAR plus one column per series")
    year = pd.to_numeric(gf["YEAR"], errors="coerce")
    bad = year.isna().to_numpy() | (year.to_numpy() != np.round(year.to_numpy()))
    if bad.any():
        row = _first_bad(bad)
        raise error(f"{path}: row {row + 2}: YEAR {_shown(gf['YEAR'].iloc[row])} is not a "
                    "whole year")
    year = year.astype(np.int64)
    if not year.is_unique or not (np.diff(np.sort(year.to_numpy())) == 1).all():
        raise error(f"{path}: YEAR must list consecutive years once each; found "
                    f"{sorted(year.tolist())[:5]}...")
    out = {"YEAR": year.to_numpy()}
    for col in gf.columns:
        if col == "YEAR":
            continue
        values = pd.to_numeric(gf[col], errors="coerce").to_numpy(dtype=float)
        bad = ~np.isfinite(values) | (values <= 0)
        if bad.any():
            row = _first_bad(bad)
            raise error(f"{path}: series {col} for YEAR {int(year.iloc[row])} (row {row + 2}) "
                        f"is {_shown(gf[col].iloc[row])}; expected a finite growth factor > 0")
        out[col] = values
    return pd.DataFrame(out).sort_values("YEAR").reset_index(drop=True)


def read_weight_totals(path: str | os.PathLike,
                       error: type[Exception] = UpratingError) -> pd.Series:
    """Total of each ``WT{year}`` column of ``cps_weights.csv.gz`` (x100 in the file, divided
    back), indexed by year. Every weight must be a finite number >= 0: a NaN would be skipped by
    the sum; the error names the file, the column (year) and the row."""
    from .raw_inputs import read_csv_file

    path = Path(path)
    weights = read_csv_file(path, "taxdata CPS weights: one WT<year> column per year, "
                            "one row per tax unit", error)
    cols = [c for c in weights.columns if c.startswith("WT") and c[2:].isdigit()]
    if not cols:
        raise error(f"{path}: no WT<year> columns; expected WT2014..WT2036")
    values = weights[cols].apply(pd.to_numeric, errors="coerce").to_numpy(dtype=float)
    bad = ~np.isfinite(values) | (values < 0)
    if bad.any():
        r, c = np.argwhere(bad)[0]
        raise error(f"{path}: column {cols[c]} row {r + 2} (tax unit {r + 1}) holds "
                    f"{_shown(weights[cols[c]].iloc[r])}; expected a finite weight >= 0")
    return pd.Series(values.sum(axis=0) / 100.0, index=[int(c[2:]) for c in cols])


def growth_index(raw_dir: str | os.PathLike) -> pd.DataFrame:
    """Long frame ``year, basis, index`` for both bases over the years the files cover.

    ``cpi_u``: 1.0 in the first growfactors year, cumulative ``ACPIU`` after it.
    ``count``: sum of ``WT{year}`` weights (x100 in the file, divided back), i.e. tax units.
    Both files are validated by :func:`read_growfactors` and :func:`read_weight_totals`.
    """
    raw_dir = Path(raw_dir)
    gf_path = raw_dir / GROWFACTORS_FILE
    gf = read_growfactors(gf_path)
    if "ACPIU" not in gf.columns:
        raise UpratingError(f"{gf_path}: missing column ACPIU (CPI-U growth factors)")
    cpi = pd.DataFrame({"year": gf["YEAR"].astype(int), "basis": "cpi_u",
                        "index": np.cumprod(gf["ACPIU"].to_numpy(dtype=float))})
    w_path = raw_dir / WEIGHTS_FILE
    totals = read_weight_totals(w_path)
    count = pd.DataFrame({"year": totals.index.astype(int), "basis": "count",
                          "index": totals.to_numpy()})
    zero = count[count["index"] <= 0]
    if len(zero):
        raise UpratingError(f"{w_path}: column WT{int(zero['year'].iloc[0])} sums to 0; "
                            "expected a positive number of tax units")
    out = pd.concat([cpi, count], ignore_index=True)
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
