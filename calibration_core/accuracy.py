"""Accuracy tables of a build, from ``areas/validation/validation_results.csv``.

The methodology's accuracy section is generated from these functions (``python -m
calibration_core.accuracy RESULTS_CSV``), so its figures can be re-measured after any build:

* :func:`level_summary` - per geographic level and sample (in-sample, hold-out), over all
  achievable rows and over the fitted ones (no exclusion reason): rows, mean, median, 90th
  percentile and max absolute relative error, and the share within 10% (the methodology's
  accuracy table);
* :func:`family_means` - mean / max absolute relative error and row count per geographic level
  and target family (``variable/domain``), in-sample and hold-out apart;
* :func:`large_errors` - every in-sample target above a threshold (default 25%), with its area,
  family, target, file estimate, error and the fit's exclusion reason where it has one;
* :func:`large_error_groups` - the same rows counted per (level, family, reason).

Input: the validation report's rows (``calibration_core.validation.validate_areas``), with at
least the columns of :data:`REQUIRED`. Only achievable rows count (a row no record reaches is
not an error of the weights), and city rows are left out: a city has no targets of its own,
its rows are its shares of the districts it overlaps. Raises :class:`AccuracyInputError`
naming the file and the missing columns.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import pandas as pd

REQUIRED = ("area", "level", "geo_id", "target_name", "variable", "domain", "holdout",
            "achievable", "exclusion_reason", "target_value", "sim_value", "abs_rel_error")
DEFAULT_THRESHOLD = 0.25


class AccuracyInputError(ValueError):
    """The validation results lack a column the tables need."""


def read_results(path: str | Path) -> pd.DataFrame:
    """``validation_results.csv`` as a frame; raises :class:`AccuracyInputError` naming the file
    and the missing columns."""
    frame = pd.read_csv(path, keep_default_na=False, na_values=[""])
    missing = [c for c in REQUIRED if c not in frame.columns]
    if missing:
        raise AccuracyInputError(f"{path}: missing column(s) {missing} (expected the validation "
                                 "report's validation_results.csv)")
    return frame


def scored(results: pd.DataFrame) -> pd.DataFrame:
    """Achievable, non-city rows with a ``family`` column (``variable/domain``; no domain:
    the variable alone) and ``reason`` (the fit's exclusion reason, ``""`` when fitted)."""
    d = results[results["achievable"].astype(bool) & (results["level"] != "city")].copy()
    domain = d["domain"].fillna("").astype(str)
    d["family"] = np.where(domain == "", d["variable"], d["variable"] + "/" + domain)
    d["reason"] = d["exclusion_reason"].fillna("").astype(str)
    return d


def level_summary(results: pd.DataFrame) -> pd.DataFrame:
    """One row per (level, sample, rows): ``rows`` is ``"all"`` (every achievable row) or
    ``"fitted"`` (those without an exclusion reason; in-sample only). Columns ``targets``,
    ``mean``, ``median``, ``p90``, ``max`` (fractions) and ``within_10pct`` (share of rows with
    an error of at most 0.10)."""
    d = scored(results)
    d["sample"] = np.where(d["holdout"].astype(bool), "hold-out", "in-sample")
    parts = [d.assign(rows="all"),
             d[(d["sample"] == "in-sample") & (d["reason"] == "")].assign(rows="fitted")]
    both = pd.concat(parts, ignore_index=True)
    err = both.groupby(["level", "sample", "rows"], sort=True)["abs_rel_error"]
    return err.agg(targets="size", mean="mean", median="median",
                   p90=lambda e: float(np.quantile(e, 0.9)), max="max",
                   within_10pct=lambda e: float((e <= 0.10).mean())).reset_index()


def family_means(results: pd.DataFrame) -> pd.DataFrame:
    """One row per (level, sample, family): rows, mean and max |relative error| (fractions)."""
    d = scored(results)
    d["sample"] = np.where(d["holdout"].astype(bool), "hold-out", "in-sample")
    out = (d.groupby(["level", "sample", "family"], sort=True)["abs_rel_error"]
           .agg(rows="size", mean="mean", max="max").reset_index())
    return out


def large_errors(results: pd.DataFrame, threshold: float = DEFAULT_THRESHOLD) -> pd.DataFrame:
    """In-sample rows with ``abs_rel_error > threshold``: area, family, target name, target
    value, file estimate, error and reason, sorted by level, family and descending error."""
    d = scored(results)
    d = d[~d["holdout"].astype(bool) & (d["abs_rel_error"] > threshold)]
    cols = ["area", "level", "family", "target_name", "target_value", "sim_value",
            "abs_rel_error", "reason"]
    return (d[cols].sort_values(["level", "family", "abs_rel_error"],
                                ascending=[True, True, False]).reset_index(drop=True))


def large_error_groups(results: pd.DataFrame, threshold: float = DEFAULT_THRESHOLD
                       ) -> pd.DataFrame:
    """:func:`large_errors` counted per (level, family, reason), with the areas concerned."""
    big = large_errors(results, threshold)
    if big.empty:
        return pd.DataFrame(columns=["level", "family", "reason", "rows", "areas"])
    return (big.groupby(["level", "family", "reason"], sort=True)
            .agg(rows=("area", "size"),
                 areas=("area", lambda a: ", ".join(sorted(set(a)))))
            .reset_index())


def _markdown(frame: pd.DataFrame) -> str:
    cols = list(frame.columns)
    lines = ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    for row in frame.itertuples(index=False):
        cells = []
        for v in row:
            if isinstance(v, float):
                cells.append(f"{v:,.4g}" if abs(v) < 10 else f"{v:,.0f}")
            else:
                cells.append(str(v))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m calibration_core.accuracy",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("results", help="areas/validation/validation_results.csv")
    parser.add_argument("--threshold", type=float, default=DEFAULT_THRESHOLD)
    args = parser.parse_args(argv)
    results = read_results(args.results)
    pct = ["mean", "median", "p90", "max", "within_10pct"]
    levels = level_summary(results).assign(**{c: (lambda f, c=c: (100 * f[c]).round(2))
                                              for c in pct})
    print("## |relative error| per level (%)\n\n" + _markdown(levels) + "\n")
    fam = family_means(results).assign(mean=lambda f: (100 * f["mean"]).round(2),
                                       max=lambda f: (100 * f["max"]).round(1))
    print("## Mean |relative error| per family (%)\n\n" + _markdown(fam) + "\n")
    big = large_errors(results, args.threshold).assign(
        abs_rel_error=lambda f: (100 * f["abs_rel_error"]).round(1))
    print(f"## In-sample targets above {args.threshold:.0%}: {len(big)}\n\n"
          + _markdown(large_error_groups(results, args.threshold)) + "\n\n"
          + _markdown(big))
    return 0


if __name__ == "__main__":
    sys.exit(main())
