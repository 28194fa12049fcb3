"""Clone-and-assign: give every clone of every base household a congressional district, a county
and a state.

For ``n_records`` base households and ``n_clones`` clones, :func:`assign_geography` draws an
``(n_clones, n_records)`` grid of districts. Flattened row-major, cell ``(c, r)`` is the package
column ``c * n_records + r`` (the column order of :mod:`calibration_core.package_io`).

* District: drawn from ``p_pop`` (district population shares, the default) or from the uniform
  distribution over the 436 districts (``method="uniform"``, the reference pipeline's behaviour,
  which over-weights small districts). Households in the top AGI decile draw from ``p_agi``
  instead: district mass proportional to the district's AGI target (state AGI spread over the
  state's districts by population where a district has no AGI target).
* No two clones of a household share a district while avoidable: a clone whose district repeats
  an earlier clone's is redrawn (up to ``max_redraws`` rounds; leftovers are kept).
* County: drawn inside the district from P(county | district) (``county_cd_distributions.csv``).
* State: the district's state (``geoid // 100``).

Every draw is ``io_utils.keyed_uniform(purpose, household_id, clone[, round])``: a pure function
of the household id and clone index, so two runs (or the area builder) get the same numbers, and
no Python loop runs over households or clones (only over the redraw rounds).
"""
from __future__ import annotations

import importlib.util
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from .areas import STATE_ABBR, district_geoids, normalize_district_geoid
from .io_utils import atomic_path, keyed_uniform

COUNTY_TABLE_FILE = "county_cd_distributions.csv"
PURPOSE_DISTRICT = "geography.district"
PURPOSE_COUNTY = "geography.county"
METHODS = ("population", "uniform")


class GeographyError(ValueError):
    """Inputs to clone-and-assign are missing or inconsistent."""


@dataclass
class GeographyAssignment:
    """District / county / state of each clone-household; arrays are ``(n_clones, n_records)``.

    ``county_fips`` holds 5-digit county FIPS strings (``"06037"``); ``household_id`` is the
    base household id of each record (``(n_records,)``).
    """

    household_id: np.ndarray
    district_geoid: np.ndarray
    county_fips: np.ndarray
    state_fips: np.ndarray
    top_agi: np.ndarray  # (n_records,) bool: routed by district AGI
    metadata: dict = field(default_factory=dict)

    @property
    def n_clones(self) -> int:
        return int(self.district_geoid.shape[0])

    @property
    def n_records(self) -> int:
        return int(self.district_geoid.shape[1])

    def column_state(self) -> np.ndarray:
        """State FIPS per package column ``(n_clones * n_records,)``."""
        return self.state_fips.reshape(-1)

    def column_district(self) -> np.ndarray:
        return self.district_geoid.reshape(-1)


# --------------------------------------------------------------------------------------------
# inputs


def _policyengine_us_data_dir() -> Path:
    spec = importlib.util.find_spec("policyengine_us")  # locates the package without importing it
    if spec is None or spec.origin is None:
        raise GeographyError("policyengine-us is not installed: its county FIPS list is needed")
    return Path(os.path.dirname(spec.origin)) / "data"


def county_name_to_fips() -> dict[str, str]:
    """policyengine-us ``County`` enum name (``"BALDWIN_COUNTY_AL"``) -> 5-digit FIPS string.

    Built from policyengine-us's own ``county_fips_2020.csv.gz`` with the enum's name rule.
    """
    path = _policyengine_us_data_dir() / "county_fips_2020.csv.gz"
    table = pd.read_csv(path, dtype=str)
    key = (table["county_name"].str.replace(" ", "_").str.replace("-", "_")
           .str.replace(".", "", regex=False).str.replace("'", "_").str.strip().str.upper()
           + "_" + table["state"])
    return dict(zip(key, table["county_fips"]))


def load_county_table(path: str | os.PathLike) -> pd.DataFrame:
    """Read ``county_cd_distributions.csv`` -> DataFrame ``district_geoid, county_fips, probability``.

    District codes are normalised to our GEOIDs (at-large ``SS01``); counties are mapped to FIPS;
    probabilities are renormalised within each district. Raises :class:`GeographyError` naming the
    file and row for unknown counties, counties outside the district's state, missing districts.
    """
    from .raw_inputs import read_csv_file, shown

    path = Path(path)
    if not path.is_file():
        raise GeographyError(f"county table {path} does not exist")
    raw = read_csv_file(path, "P(county | district): columns cd_geoid, county_name, "
                        "probability, one row per (district, county)", GeographyError)
    need = {"cd_geoid", "county_name", "probability"}
    if not need <= set(raw.columns):
        raise GeographyError(f"{path}: expected columns {sorted(need)}, got {list(raw.columns)}")
    cd = pd.to_numeric(raw["cd_geoid"], errors="coerce").to_numpy(dtype=float)
    bad = ~np.isfinite(cd) | (cd != np.round(cd)) | (cd < 100)
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        raise GeographyError(f"{path} row {row + 2}: cd_geoid {shown(raw['cd_geoid'].iloc[row])}; "
                             "expected a district GEOID state*100+district (e.g. 612)")
    names = county_name_to_fips()
    fips = raw["county_name"].map(names)
    if fips.isna().any():
        row = int(np.flatnonzero(fips.isna().to_numpy())[0])
        raise GeographyError(f"{path} row {row + 2}: unknown county {raw['county_name'].iloc[row]!r}")
    district = raw["cd_geoid"].astype(int).map(normalize_district_geoid)
    unknown = ~district.isin(set(district_geoids())).to_numpy()
    if unknown.any():
        row = int(np.flatnonzero(unknown)[0])
        raise GeographyError(f"{path} row {row + 2}: cd_geoid "
                             f"{shown(raw['cd_geoid'].iloc[row])} is not one of the 436 "
                             "districts of the 119th Congress")
    bad_state = fips.str[:2].astype(int).to_numpy() != (district.to_numpy() // 100)
    if bad_state.any():
        row = int(np.flatnonzero(bad_state)[0])
        raise GeographyError(f"{path} row {row + 2}: county {raw['county_name'].iloc[row]!r} is "
                             f"not in the state of district {district.iloc[row]}")
    prob = pd.to_numeric(raw["probability"], errors="coerce").astype(float)
    bad = ~np.isfinite(prob.to_numpy()) | (prob.to_numpy() < 0)
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        raise GeographyError(f"{path} row {row + 2}: probability "
                             f"{shown(raw['probability'].iloc[row])} for district "
                             f"{district.iloc[row]}"
                             f", county {raw['county_name'].iloc[row]!r}; expected a finite "
                             "probability >= 0")
    table = pd.DataFrame({"district_geoid": district.astype(np.int64), "county_fips": fips,
                          "probability": prob})
    table = table.groupby(["district_geoid", "county_fips"], as_index=False)["probability"].sum()
    missing = sorted(set(district_geoids()) - set(table["district_geoid"]))
    if missing:
        raise GeographyError(f"{path}: no counties for district(s) {missing[:10]}")
    total = table.groupby("district_geoid")["probability"].transform("sum")
    if (total <= 0).any():
        raise GeographyError(f"{path}: district {table['district_geoid'][total <= 0].iloc[0]} "
                             "has probabilities summing to 0; expected a positive total")
    table["probability"] /= total
    return table.sort_values(["district_geoid", "county_fips"]).reset_index(drop=True)


def district_population(targets: pd.DataFrame) -> pd.Series:
    """Population of each of the 436 districts from the targets table (``read_targets`` shape).

    Uses district ``person_count`` rows without a domain when present, else the sum of the
    district ``person_count`` rows whose only domain is ``age`` (age bins partition the people).
    Returns a Series indexed by district GEOID (int), in :func:`areas.district_geoids` order.
    """
    rows = targets[(targets["geo_level"] == "district") & (targets["variable"] == "person_count")]
    total = rows[rows["domain"] == ""]
    if total.empty:
        total = rows[rows["domain"] == "age"]
    if total.empty:
        raise GeographyError("targets have no district person_count rows (total or by age): "
                             "district populations are needed to draw districts")
    pop = total.groupby(total["geo_id"].astype(int))["value"].sum()
    missing = sorted(set(district_geoids()) - set(pop.index))
    if missing:
        raise GeographyError(f"targets lack district population for district(s) {missing[:10]}")
    return pop.reindex(district_geoids()).astype(float)


def _agi_totals(targets: pd.DataFrame, level: str) -> pd.Series:
    rows = targets[(targets["geo_level"] == level)
                   & (targets["variable"] == "adjusted_gross_income")]
    total = rows[rows["domain"] == ""]
    if total.empty:  # AGI bands partition the filers: their sum is the total
        total = rows[rows["domain"] == "adjusted_gross_income"]
    return total.groupby(total["geo_id"].astype(int))["value"].sum()


def district_agi(targets: pd.DataFrame, population: pd.Series) -> tuple[pd.Series, str]:
    """AGI mass of each district for routing top-AGI households: (Series by GEOID, source).

    District AGI target where one exists; elsewhere the state's AGI target spread over its
    districts by population; where neither exists, the population itself (source says which).
    """
    dist = _agi_totals(targets, "district").reindex(population.index)
    state = _agi_totals(targets, "state")
    states = population.index.to_numpy() // 100
    share = population / population.groupby(states).transform("sum")
    spread = pd.Series(states, index=population.index).map(state) * share
    out = dist.fillna(spread)
    n_dist, n_state = int(dist.notna().sum()), int((dist.isna() & spread.notna()).sum())
    if out.isna().all():
        return population.copy(), "population (no AGI targets)"
    # districts with no AGI information: scale population to the AGI per person of the rest
    known = out.notna()
    ratio = out[known].sum() / population[known].sum()
    out = out.fillna(population * ratio)
    source = f"district AGI for {n_dist} districts, state AGI by population for {n_state}"
    return out.clip(lower=0.0), source


# --------------------------------------------------------------------------------------------
# the draws


def _inverse_cdf(cum: np.ndarray, u: np.ndarray) -> np.ndarray:
    idx = np.searchsorted(cum, u * cum[-1], side="right")
    return np.minimum(idx, len(cum) - 1)


def _redraw_duplicates(district_idx: np.ndarray, household_id: np.ndarray, draw_round,
                       max_redraws: int) -> tuple[np.ndarray, int]:
    """Redraw clones whose district repeats an earlier clone of the same household.

    ``district_idx`` is ``(n_clones, n_records)``; ``draw_round(rows, cols, round)`` returns new
    indices for the given cells. Loops over rounds only; returns (districts, cells left repeated).
    """
    n_clones, n_records = district_idx.shape
    if n_clones < 2:
        return district_idx, 0
    clone_rank = np.arange(n_clones)[None, :]
    active = np.arange(n_records)  # records that may still hold a repeat

    def repeats(records):
        sub = district_idx[:, records].T  # (len(records), n_clones)
        order = np.lexsort((np.broadcast_to(clone_rank, sub.shape), sub), axis=1)
        sorted_d = np.take_along_axis(sub, order, axis=1)
        dup = np.zeros_like(sorted_d, dtype=bool)
        dup[:, 1:] = sorted_d[:, 1:] == sorted_d[:, :-1]
        row, pos = np.nonzero(dup)
        return records[row], order[row, pos]  # (record, clone) of each later repeat

    for rnd in range(1, max_redraws + 1):
        rec, clone = repeats(active)
        if len(rec) == 0:
            return district_idx, 0
        district_idx[clone, rec] = draw_round(clone, rec, rnd)
        active = np.unique(rec)
    rec, _ = repeats(active)
    return district_idx, int(len(rec))


def assign_geography(
    household_id: np.ndarray,
    household_agi: np.ndarray,
    n_clones: int,
    county_table: pd.DataFrame,
    population: pd.Series,
    agi_mass: pd.Series | None = None,
    method: str = "population",
    top_agi_quantile: float = 0.9,
    max_redraws: int = 50,
    salt: str = "",
) -> GeographyAssignment:
    """Draw a district, county and state for each of ``n_clones`` clones of each household.

    Parameters
    ----------
    household_id : (n_records,) int - base household ids (the draw keys).
    household_agi : (n_records,) float - household AGI; records at or above its unweighted
        ``top_agi_quantile`` draw districts from ``agi_mass`` instead of ``population``.
    n_clones : int >= 1.
    county_table : DataFrame ``district_geoid, county_fips, probability`` (:func:`load_county_table`).
    population : Series (436,) - district populations, indexed by GEOID.
    agi_mass : Series (436,) or None - district AGI mass (:func:`district_agi`); None disables
        the routing.
    method : ``"population"`` (default) or ``"uniform"`` (every district 1/436, the reference).
    salt : extra key text (e.g. the preset seed) mixed into every purpose string.

    Returns a :class:`GeographyAssignment` with ``(n_clones, n_records)`` arrays.
    """
    household_id = np.asarray(household_id, dtype=np.int64)
    household_agi = np.asarray(household_agi, dtype=float)
    if household_id.ndim != 1 or household_agi.shape != household_id.shape:
        raise GeographyError(f"household_id {household_id.shape} and household_agi "
                             f"{household_agi.shape} must be equal 1-D shapes")
    if len(np.unique(household_id)) != len(household_id):
        raise GeographyError("household ids must be unique")
    if not np.isfinite(household_agi).all():
        raise GeographyError("household AGI has NaN or infinite values")
    if int(n_clones) < 1:
        raise GeographyError(f"n_clones must be >= 1, got {n_clones}")
    if method not in METHODS:
        raise GeographyError(f"method must be one of {METHODS}, got {method!r}")
    geoids = np.asarray(district_geoids(), dtype=np.int64)
    pop = population.reindex(geoids).to_numpy(dtype=float)
    if not np.isfinite(pop).all() or (pop < 0).any() or pop.sum() <= 0:
        raise GeographyError("district populations must be finite, >= 0, for all 436 districts")
    p_base = np.full(len(geoids), 1.0 / len(geoids)) if method == "uniform" else pop / pop.sum()
    cum_base = np.cumsum(p_base)
    n_records = len(household_id)
    n_clones = int(n_clones)

    top = np.zeros(n_records, dtype=bool)
    cum_agi = cum_base
    if agi_mass is not None and n_records:
        mass = agi_mass.reindex(geoids).to_numpy(dtype=float)
        if not np.isfinite(mass).all() or (mass < 0).any() or mass.sum() <= 0:
            raise GeographyError("district AGI mass must be finite and >= 0 with a positive sum")
        cum_agi = np.cumsum(mass / mass.sum())
        top = household_agi >= np.quantile(household_agi, top_agi_quantile)

    clones = np.arange(n_clones, dtype=np.int64)[:, None]
    purpose_d = PURPOSE_DISTRICT + salt

    def draw(clone_idx, rec_idx, rnd):
        u = keyed_uniform(purpose_d, household_id[rec_idx], clone_idx, rnd)
        out = _inverse_cdf(cum_base, u)
        is_top = top[rec_idx]
        if is_top.any():
            out = np.where(is_top, _inverse_cdf(cum_agi, u), out)
        return out

    cc, rr = np.meshgrid(np.arange(n_clones), np.arange(n_records), indexing="ij")
    district_idx = draw(cc, rr, 0).reshape(n_clones, n_records)
    district_idx, left = _redraw_duplicates(district_idx, household_id, draw, max_redraws)
    district = geoids[district_idx]

    # county within the district: one flat CDF, district k occupying [k, k + 1)
    table = county_table.sort_values(["district_geoid", "county_fips"])
    d_pos = np.searchsorted(geoids, table["district_geoid"].to_numpy())
    if not np.array_equal(geoids[d_pos], table["district_geoid"].to_numpy()):
        raise GeographyError("county table has districts outside the 436")
    within = table.groupby("district_geoid")["probability"].cumsum().to_numpy()
    flat_cum = d_pos + np.minimum(within, 1.0)
    flat_cum[np.r_[d_pos[1:] != d_pos[:-1], True]] = d_pos[np.r_[d_pos[1:] != d_pos[:-1], True]] + 1.0
    u_c = keyed_uniform(PURPOSE_COUNTY + salt, household_id[None, :], clones)
    pick = np.searchsorted(flat_cum, district_idx + u_c, side="right")
    pick = np.minimum(pick, len(flat_cum) - 1)
    county_fips = table["county_fips"].to_numpy().astype("U5")[pick]

    state = (district // 100).astype(np.int64)
    counts = np.bincount(district_idx.ravel(), minlength=len(geoids))
    meta = {
        "method": method, "n_records": n_records, "n_clones": n_clones,
        "top_agi_records": int(top.sum()), "top_agi_quantile": top_agi_quantile,
        "repeated_district_cells": left, "districts_used": int((counts > 0).sum()),
        "states_used": int(len(np.unique(state))),
    }
    return GeographyAssignment(household_id, district.astype(np.int64), county_fips,
                               state, top, meta)


# --------------------------------------------------------------------------------------------
# storage


def save_geography(geo: GeographyAssignment, path: str | os.PathLike) -> Path:
    """Write the assignment as a compressed npz (no pickle): keys household_id, district_geoid,
    county_fips (U5), state_fips, top_agi, n_records, n_clones, meta_json (uint8 JSON bytes)."""
    with atomic_path(path, suffix=".npz") as tmp:
        with open(tmp, "wb") as handle:
            np.savez_compressed(
                handle, household_id=geo.household_id, district_geoid=geo.district_geoid,
                county_fips=geo.county_fips.astype("U5"), state_fips=geo.state_fips,
                top_agi=geo.top_agi, n_records=np.int64(geo.n_records),
                n_clones=np.int64(geo.n_clones),
                meta_json=np.frombuffer(json.dumps(geo.metadata, sort_keys=True).encode(),
                                        dtype=np.uint8))
    return Path(path)


def load_geography(path: str | os.PathLike) -> GeographyAssignment:
    path = Path(path)
    if not path.is_file():
        raise GeographyError(f"geography assignment {path} does not exist")
    with np.load(path, allow_pickle=False) as z:
        need = ["household_id", "district_geoid", "county_fips", "state_fips", "top_agi"]
        missing = [k for k in need if k not in z.files]
        if missing:
            raise GeographyError(f"{path} lacks {missing}")
        meta = (json.loads(z["meta_json"].tobytes().decode()) if "meta_json" in z.files else {})
        geo = GeographyAssignment(z["household_id"], z["district_geoid"], z["county_fips"],
                                  z["state_fips"], z["top_agi"], meta)
    if geo.district_geoid.shape != geo.state_fips.shape or geo.district_geoid.shape != \
            geo.county_fips.shape or geo.district_geoid.shape[1] != len(geo.household_id):
        raise GeographyError(f"{path}: inconsistent array shapes")
    return geo


def summarize(geo: GeographyAssignment, population: pd.Series) -> pd.DataFrame:
    """Per state: share of clone-households vs share of population (for asset metadata)."""
    st = geo.state_fips.ravel()
    counts = pd.Series(st).value_counts()
    share = counts / counts.sum()
    pop_state = population.groupby(population.index.to_numpy() // 100).sum()
    pop_share = pop_state / pop_state.sum()
    out = pd.DataFrame({"state": [STATE_ABBR[s] for s in pop_share.index],
                        "population_share": pop_share.to_numpy(),
                        "clone_share": share.reindex(pop_share.index).fillna(0).to_numpy()})
    return out


# --------------------------------------------------------------------------------------------
# validation of the geography: county shares of the state files

#: A state file whose weighted county shares are further than this (total variation distance)
#: from the expected population shares, beyond what its sample size explains (``noise_tvd``),
#: is flagged (the check does not block the build).
COUNTY_TVD_THRESHOLD = 0.10


def expected_county_shares(county_table: pd.DataFrame, population: pd.Series) -> pd.DataFrame:
    """Columns ``state, county_fips, expected_share``: each county's share of its state's
    population, ``sum_d pop(d) P(county | d) / pop(state)`` over the state's districts ``d``
    (``population``: :func:`district_population`, persons)."""
    t = county_table
    mass = t["probability"].to_numpy(float) * t["district_geoid"].map(population).fillna(
        0.0).to_numpy(float)
    by = pd.DataFrame({"state": (t["district_geoid"] // 100).to_numpy(np.int64),
                       "county_fips": t["county_fips"].astype(str).to_numpy(), "mass": mass}
                      ).groupby(["state", "county_fips"], as_index=False)["mass"].sum()
    by["expected_share"] = by["mass"] / by.groupby("state")["mass"].transform("sum")
    return by.drop(columns="mass")


def county_share_report(state_fips: int, county_fips: np.ndarray, person_weight: np.ndarray,
                        expected: pd.DataFrame, threshold: float = COUNTY_TVD_THRESHOLD
                        ) -> tuple[dict, pd.DataFrame]:
    """Weighted county shares of one state file against the expected ones.

    ``county_fips`` (n_households,) 5-digit strings and ``person_weight`` (n_households,) the
    household weight times its persons (a population share); ``expected``:
    :func:`expected_county_shares`. Returns (summary: ``state``, ``counties_expected``,
    ``counties_in_file``, ``tvd`` = half the sum over counties of |file share - expected
    share|, ``noise_tvd`` = the TVD expected from sampling alone, ``0.5 sum_k sqrt(2 p_k (1 -
    p_k) / (pi n_eff))`` with ``n_eff`` = (sum w)^2 / sum w^2 the file's effective number of
    households, ``flagged`` = tvd - noise_tvd > threshold, ``largest_gap_county``; per-county
    table
    ``county_fips, expected_share, file_share``). Raises :class:`GeographyError` when the file
    holds a county outside the state's expected counties."""
    exp = expected[expected["state"] == int(state_fips)].set_index("county_fips")["expected_share"]
    county = np.asarray(county_fips).astype(str)
    w = np.asarray(person_weight, dtype=float)
    got = pd.Series(w).groupby(county).sum()
    outside = sorted(set(got.index) - set(exp.index))
    if outside:
        raise GeographyError(f"state {state_fips}: file counties {outside[:5]} are not in the "
                             "county table for that state")
    file_share = (got / got.sum()).reindex(exp.index).fillna(0.0) if w.sum() > 0 else \
        exp * 0.0
    gap = (file_share - exp).abs()
    tvd = float(0.5 * gap.sum())
    n_eff = float(w.sum() ** 2 / (w ** 2).sum()) if (w ** 2).sum() > 0 else 0.0
    p = exp.to_numpy(float)
    noise = float(0.5 * np.sqrt(2 * p * (1 - p) / (np.pi * n_eff)).sum()) if n_eff else 1.0
    table = pd.DataFrame({"county_fips": exp.index, "expected_share": exp.to_numpy(),
                          "file_share": file_share.to_numpy()})
    summary = {"state": STATE_ABBR[int(state_fips)], "counties_expected": int(len(exp)),
               "counties_in_file": int(len(got)), "tvd": round(tvd, 6),
               "noise_tvd": round(noise, 6), "effective_households": round(n_eff, 1),
               "flagged": bool(tvd - noise > threshold),
               "largest_gap_county": str(gap.idxmax()) if len(gap) else ""}
    return summary, table
