"""State populations (ACS S0101) and a deterministic county for every household."""
from __future__ import annotations

import importlib.util
import json
import os
import re
from pathlib import Path

import numpy as np
import pandas as pd

from ..areas import STATE_ABBR
from ..io_utils import keyed_uniform


class GeographyError(ValueError):
    """A geography input is missing or malformed."""


def _s0101_table(path: Path) -> pd.DataFrame:
    try:
        rows = json.loads(Path(path).read_text())
        header, body = rows[0], rows[1:]
        df = pd.DataFrame(body, columns=header)
        total = pd.to_numeric(df["S0101_C01_001E"], errors="raise").astype(float)
    except (ValueError, KeyError, IndexError, TypeError) as exc:
        raise GeographyError(
            f"{path}: expected a Census API JSON table with GEO_ID and S0101_C01_001E ({exc})"
        ) from exc
    bad = ~np.isfinite(total.to_numpy()) | (total.to_numpy() < 0)
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        raise GeographyError(
            f"{path}: GEO_ID {df['GEO_ID'].iloc[row]}: S0101_C01_001E is "
            f"{df['S0101_C01_001E'].iloc[row]!r}; expected a finite population >= 0")
    return pd.DataFrame({"GEO_ID": df["GEO_ID"].astype(str), "NAME": df["NAME"], "pop": total})


def acs_national_population(path: str | os.PathLike) -> float:
    """Total 2024 US population: S0101_C01_001E of GEO_ID 0100000US in the national S0101 JSON."""
    df = _s0101_table(Path(path))
    row = df[df["GEO_ID"] == "0100000US"]
    if len(row) != 1:
        raise GeographyError(f"{path}: no row with GEO_ID 0100000US")
    return float(row["pop"].iloc[0])


def acs_state_population(path: str | os.PathLike) -> pd.Series:
    """2024 population of the 50 states + DC (index: state FIPS int, 51 rows) from S0101 JSON."""
    df = _s0101_table(Path(path))
    df = df[df["GEO_ID"].str.startswith("0400000US")]
    fips = df["GEO_ID"].str[-2:].astype(int)
    out = pd.Series(df["pop"].to_numpy(), index=fips.to_numpy(), name="acs_population")
    out = out[out.index.isin(list(STATE_ABBR))].sort_index()
    if len(out) != 51:
        raise GeographyError(f"{path}: expected 51 states incl. DC, found {len(out)}")
    if (out <= 0).any():
        raise GeographyError(f"{path}: state FIPS {int(out.index[(out <= 0).to_numpy()][0])} "
                             "has population 0; expected a positive S0101_C01_001E")
    out.index.name = "state_fips"
    return out


def policyengine_county_table() -> pd.DataFrame:
    """policyengine-us's ``data/county_fips_2020.csv.gz`` (state, county_name, county_fips),
    read from the installed package without importing it; adds the County enum ``key``."""
    spec = importlib.util.find_spec("policyengine_us")
    if spec is None or not spec.submodule_search_locations:
        raise GeographyError("policyengine-us is not installed: cannot read its county table")
    path = Path(list(spec.submodule_search_locations)[0]) / "data" / "county_fips_2020.csv.gz"
    df = pd.read_csv(path, dtype={"county_fips": int})
    df["key"] = [re.sub(r"[^A-Z0-9]+", "_", n.upper()).strip("_") + "_" + s
                 for n, s in zip(df["county_name"], df["state"])]
    df["state_fips"] = df["county_fips"] // 1000
    df["county_fips"] = df["county_fips"].map(lambda v: f"{v:05d}")
    return df[["state_fips", "state", "county_name", "county_fips", "key"]]


def county_shares(county_cd_path: str | os.PathLike) -> pd.DataFrame:
    """Each county's share of its state's population, ``Σ_CD P(county | CD)`` normalised per
    state (districts within a state have near-equal populations). Columns: state_fips,
    county_fips (5-char str), share. Counties are policyengine-us's (all names match)."""
    from ..raw_inputs import read_csv_file, shown

    cd = read_csv_file(county_cd_path, "P(county | district): columns cd_geoid, county_name, "
                       "probability, one row per (district, county)", GeographyError)
    missing = {"cd_geoid", "county_name", "probability"} - set(cd.columns)
    if missing:
        raise GeographyError(f"{county_cd_path}: missing column(s) {sorted(missing)}")
    prob = pd.to_numeric(cd["probability"], errors="coerce").to_numpy(dtype=float)
    bad = ~np.isfinite(prob) | (prob < 0) | (prob > 1 + 1e-9)
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        raise GeographyError(
            f"{county_cd_path}: row {row + 2} (district {cd['cd_geoid'].iloc[row]}, county "
            f"{cd['county_name'].iloc[row]}): probability {shown(cd['probability'].iloc[row])}; "
            "expected a number in 0..1")
    cd = cd.assign(probability=prob)
    pe = policyengine_county_table().set_index("key")
    unknown = sorted(set(cd["county_name"]) - set(pe.index))
    if unknown:
        row = int(np.flatnonzero(cd["county_name"].isin(unknown).to_numpy())[0])
        raise GeographyError(f"{county_cd_path}: row {row + 2}: county "
                             f"{cd['county_name'].iloc[row]!r} unknown to policyengine-us "
                             f"({len(unknown)} such: {unknown[:5]}); expected County enum names "
                             "like BALDWIN_COUNTY_AL")
    cd = cd.assign(county_fips=pe.loc[cd["county_name"], "county_fips"].to_numpy())
    cd["state_fips"] = cd["county_fips"].str[:2].astype(int)
    out = cd.groupby(["state_fips", "county_fips"], as_index=False)["probability"].sum()
    out["share"] = out["probability"] / out.groupby("state_fips")["probability"].transform("sum")
    return out[["state_fips", "county_fips", "share"]].sort_values(
        ["state_fips", "county_fips"]).reset_index(drop=True)


def assign_counties(state_fips: np.ndarray, household_id: np.ndarray,
                    shares: pd.DataFrame, purpose: str = "base_county") -> np.ndarray:
    """One county per household inside its state, drawn with probability = county share.

    state_fips, household_id: (n,) ints. Returns (n,) array of 5-char county FIPS strings. The
    draw is keyed_uniform(purpose, household_id), so it depends only on the household id.
    """
    state_fips = np.asarray(state_fips, dtype=np.int64)
    unknown = sorted(set(np.unique(state_fips)) - set(shares["state_fips"]))
    if unknown:
        raise GeographyError(f"no counties known for state FIPS {unknown}")
    shares = shares.sort_values(["state_fips", "county_fips"]).reset_index(drop=True)
    # global cumulative share: state s occupies (s_index, s_index + 1] on one axis
    state_codes = np.unique(shares["state_fips"].to_numpy())
    s_index = np.searchsorted(state_codes, shares["state_fips"].to_numpy())
    cum = shares.groupby("state_fips")["share"].cumsum().to_numpy()
    cum = np.minimum(cum, 1.0)
    axis = s_index + cum
    last = shares.groupby("state_fips").cumcount(ascending=False).to_numpy() == 0
    axis[last] = s_index[last] + 1.0  # guard against rounding below 1
    u = keyed_uniform(purpose, household_id)
    pos = np.searchsorted(state_codes, state_fips) + u
    idx = np.searchsorted(axis, pos, side="right")
    return shares["county_fips"].to_numpy()[idx].astype(str)
