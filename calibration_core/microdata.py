"""Stage 1, microdata: real CPS records -> 2024 PolicyEngine-US datasets (base, enhanced, stratified).

Public functions (pure; tables are the dict of six entity DataFrames that
:mod:`calibration_core.h5_dataset` writes):

* :func:`load_cps_source` — which CPS source the raw folder holds, validated (Tax-Calculator's CPS
  file by default; Census ASEC public-use CSVs ``hhpub/ffpub/pppub`` when present);
* :func:`build_base_tables` — the source -> entity tables for the target year, incomes uprated,
  counties assigned, weights benchmarked to ACS S0101 state populations;
* :func:`enhance_tables` — PUF clone and donor imputation (see ``microdata_parts``);
* :func:`stratify_tables` — keep the top-AGI households, sample the rest per state, rescale;
* :func:`structure_problems`, :func:`population_by_state`, :func:`summarize` — checks/metadata.

The column -> policyengine-us variable mapping of the CPS file is the one table
``microdata_parts.taxcalc_cps.VARIABLE_MAP``.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from .areas import STATE_ABBR
from .h5_dataset import ENTITIES, GROUP_ENTITIES, DatasetError, validate_tables
from .io_utils import keyed_uniform
from .microdata_parts import rules_inputs, taxcalc_cps
from .microdata_parts.geography import (acs_national_population, acs_state_population,
                                        assign_counties, county_shares)
from .microdata_parts.taxcalc_cps import VARIABLE_MAP, CpsInputError

__all__ = [
    "VARIABLE_MAP", "CpsInputError", "CpsSource", "load_cps_source", "build_base_tables",
    "benchmark_state_population", "household_agi", "stratify_tables", "structure_problems",
    "population_by_state", "summarize", "acs_national_population", "acs_state_population",
]

# income variables summed (per household) into the AGI proxy used by stratification
AGI_COMPONENTS: tuple[str, ...] = (
    "employment_income", "self_employment_income", "farm_income", "taxable_interest_income",
    "qualified_dividend_income", "non_qualified_dividend_income", "alimony_income",
    "non_sch_d_capital_gains", "long_term_capital_gains", "short_term_capital_gains",
    "taxable_ira_distributions", "taxable_private_pension_income", "unemployment_compensation",
    "partnership_s_corp_income", "rental_income",
)


@dataclass
class CpsSource:
    """A validated CPS source. kind: "taxcalc" (records = tax units) or "asec" (records = dict of
    household / family / person tables with Census column names); data_year: the income year."""

    kind: str
    records: object
    data_year: int
    files: list[str] = field(default_factory=list)


_ASEC_RE = re.compile(r"^(hh|ff|pp)pub(\d{2})\.csv$", re.IGNORECASE)


def find_asec_files(raw_dir: str | os.PathLike) -> dict[str, Path] | None:
    """The newest complete set of Census ASEC CSVs (hhpubYY, ffpubYY, pppubYY) in raw_dir, or None."""
    sets: dict[str, dict[str, Path]] = {}
    for path in sorted(Path(raw_dir).iterdir()):
        m = _ASEC_RE.match(path.name)
        if m:
            sets.setdefault(m.group(2), {})[m.group(1).lower()] = path
    complete = [yy for yy, files in sets.items() if set(files) == {"hh", "ff", "pp"}]
    if not complete:
        return None
    return sets[max(complete)]


def load_cps_source(raw_dir: str | os.PathLike, year: int = 2024,
                    prefer: str = "auto") -> CpsSource:
    """Read and validate the CPS source in ``raw_dir``.

    prefer: "auto" (ASEC CSVs when a complete hhpub/ffpub/pppub set is present, else
    Tax-Calculator's file), "taxcalc" or "asec". Raises CpsInputError naming file and column.
    """
    from .raw_inputs import raw_path

    raw_dir = Path(raw_dir)
    if prefer not in {"auto", "taxcalc", "asec"}:
        raise ValueError(f"prefer must be auto, taxcalc or asec, got {prefer!r}")
    asec = find_asec_files(raw_dir) if prefer in {"auto", "asec"} else None
    if prefer == "asec" and asec is None:
        raise CpsInputError(f"{raw_dir}: no complete set of hhpubYY/ffpubYY/pppubYY.csv files")
    if asec is not None:
        from .microdata_parts import asec as asec_reader

        tables = asec_reader.read_asec(asec["hh"], asec["ff"], asec["pp"])
        survey_year = 2000 + int(_ASEC_RE.match(asec["hh"].name).group(2))
        return CpsSource("asec", tables, survey_year - 1, [p.name for p in asec.values()])
    cps = raw_path(raw_dir, "cps.csv.gz")
    weights = raw_path(raw_dir, "cps_weights.csv.gz")
    records = taxcalc_cps.read_taxcalc_cps(cps, weights, year)
    return CpsSource("taxcalc", records, taxcalc_cps.CPS_DATA_YEAR, [cps.name, weights.name])


def build_base_tables(source: CpsSource, raw_dir: str | os.PathLike, year: int = 2024,
                      benchmark: bool = True) -> tuple[dict[str, pd.DataFrame], dict]:
    """Entity tables for ``year`` from a validated source, plus facts for metadata.

    Incomes are uprated from the source's data year with growfactors.csv; every household gets
    a county (:func:`geography.assign_counties`); with ``benchmark`` the household weights are
    scaled per state so weighted persons equal the ACS S0101 2024 state population
    (:func:`benchmark_state_population`); tenure, rent, ESI and disability are derived or
    imputed (:func:`microdata_parts.rules_inputs.add_rules_inputs`, after benchmarking, so
    imputed totals match published ones at the benchmarked weights). Returns (tables, info)
    where info holds the weighted population before benchmarking, the per-state factors and
    ``rules_inputs`` (each imputation's facts and the inputs not available).
    """
    from .raw_inputs import raw_path

    raw_dir = Path(raw_dir)
    factors = taxcalc_cps.growth_factors(raw_path(raw_dir, "growfactors.csv"),
                                         source.data_year, year)
    if source.kind == "taxcalc":
        tables = taxcalc_cps.build_tables(source.records, factors)
    elif source.kind == "asec":
        from .microdata_parts import asec as asec_reader

        tables = asec_reader.build_tables(source.records, factors)
    else:
        raise ValueError(f"unknown CPS source kind {source.kind!r}")
    shares = county_shares(raw_path(raw_dir, "county_cd_distributions.csv"))
    hh = tables["household"]
    county = assign_counties(hh["state_fips"].to_numpy(), hh["household_id"].to_numpy(), shares)
    if "_gtco_county_fips" in hh.columns:  # ASEC: Census's county where it identifies one
        known = hh["_gtco_county_fips"].isin(set(shares["county_fips"])).to_numpy()
        county = np.where(known, hh["_gtco_county_fips"].to_numpy(), county)
        hh = hh.drop(columns="_gtco_county_fips")
    hh["county_fips"] = county.astype(str)
    tables["household"] = hh
    info = {"source": source.kind, "data_year": source.data_year,
            "weighted_persons_before_benchmark": float(_person_weights(tables).sum())}
    if benchmark:
        state_pop = acs_state_population(raw_path(raw_dir, "acs_S0101_state_2024.json"))
        tables, state_factor = benchmark_state_population(tables, state_pop)
        info["benchmark_factor_by_state"] = state_factor
    # inputs the rules need that the source lacks (tenure, rent, ESI, disability): issue 20
    tables, info["rules_inputs"] = rules_inputs.add_rules_inputs(tables, raw_dir)
    validate_tables(tables)
    return tables, info


def _person_weights(tables: dict[str, pd.DataFrame]) -> np.ndarray:
    hh = tables["household"]
    idx = np.searchsorted(hh["household_id"].to_numpy(),
                          tables["person"]["person_household_id"].to_numpy())
    return hh["household_weight"].to_numpy()[idx]


def _persons_per_household(tables) -> np.ndarray:
    hh_ids = tables["household"]["household_id"].to_numpy()
    idx = np.searchsorted(hh_ids, tables["person"]["person_household_id"].to_numpy())
    return np.bincount(idx, minlength=len(hh_ids))


def benchmark_state_population(tables: dict[str, pd.DataFrame], state_pop: pd.Series
                               ) -> tuple[dict[str, pd.DataFrame], pd.Series]:
    """Scale household weights per state so Σ persons·weight = state_pop[state].

    state_pop: Series indexed by state FIPS (51). Returns new tables and the factor per state.
    Tax-Calculator's WT2024 are tax-unit weights projected by taxdata; their person total is
    ~394 M against 340 M people in 2024, and state shares are those of 2012-14, so the base
    file is post-stratified to 2024 state populations before anything else uses it.
    """
    hh = tables["household"].copy()
    persons = _persons_per_household(tables)
    current = pd.Series(persons * hh["household_weight"].to_numpy()).groupby(
        hh["state_fips"].to_numpy()).sum()
    missing = sorted(set(current.index) - set(state_pop.index))
    if missing:
        raise DatasetError(f"no ACS population for state FIPS {missing}")
    factor = (state_pop.reindex(current.index) / current).rename("factor")
    hh["household_weight"] = hh["household_weight"].to_numpy() * factor.loc[
        hh["state_fips"].to_numpy()].to_numpy()
    out = dict(tables)
    out["household"] = hh
    return out, factor


def household_agi(tables: dict[str, pd.DataFrame]) -> np.ndarray:
    """AGI proxy per household (n_households,): Σ of the income variables in AGI_COMPONENTS
    present in the person table. A stand-in for policyengine-us's AGI, cheap enough to rank
    200k households without a simulation (Social Security and above-the-line deductions left out).
    """
    person = tables["person"]
    cols = [c for c in AGI_COMPONENTS if c in person.columns]
    income = person[cols].to_numpy(dtype=float).sum(axis=1) if cols else np.zeros(len(person))
    hh_ids = tables["household"]["household_id"].to_numpy()
    idx = np.searchsorted(hh_ids, person["person_household_id"].to_numpy())
    return np.bincount(idx, weights=income, minlength=len(hh_ids))


def subset_tables(tables: dict[str, pd.DataFrame], household_ids: np.ndarray
                  ) -> dict[str, pd.DataFrame]:
    """The households with the given ids and every person and group entity they contain."""
    keep_hh = np.isin(tables["household"]["household_id"].to_numpy(), household_ids)
    person = tables["person"]
    keep_p = np.isin(person["person_household_id"].to_numpy(), household_ids)
    out = {"household": tables["household"][keep_hh].reset_index(drop=True),
           "person": person[keep_p].reset_index(drop=True)}
    for entity in GROUP_ENTITIES[1:]:
        ids = np.unique(out["person"][f"person_{entity}_id"].to_numpy())
        table = tables[entity]
        out[entity] = table[np.isin(table[f"{entity}_id"].to_numpy(), ids)].reset_index(drop=True)
    return {e: out[e] for e in ENTITIES}


def stratify_tables(tables: dict[str, pd.DataFrame], n_households: int,
                    top_percentile: float, seed: int, min_per_state: int = 2
                    ) -> tuple[dict[str, pd.DataFrame], dict]:
    """Keep the top-AGI households, sample the rest per state to ``n_households`` in total.

    1. top = households whose AGI proxy (:func:`household_agi`) is at or above the
       ``top_percentile`` percentile of the households (unweighted, as the reference), capped at
       the ``n_households // 2`` highest so the sample keeps room for the rest (tiny preset);
    2. the other households are sampled per state without replacement: state s gets
       ``k_s ≈ (n_households - n_top) · n_s / Σ n`` (largest remainders, at least
       ``min(min_per_state, n_s)``), taking the k_s with the smallest keyed_uniform(seed, id);
    3. sampled weights in state s are multiplied by Σ_{pool s} w·persons / Σ_{sample s}
       w·persons, so each state's weighted persons (hence the national total) are preserved;
       top households keep their weights.
    Returns (tables, info) with counts and the AGI threshold. Deterministic given ``seed``.
    """
    hh = tables["household"]
    n_total = len(hh)
    if n_households >= n_total:
        return tables, {"n_top": 0, "n_sampled": n_total, "agi_threshold": None, "all_kept": True}
    agi = household_agi(tables)
    ids = hh["household_id"].to_numpy()
    state = hh["state_fips"].to_numpy()
    weight = hh["household_weight"].to_numpy(dtype=float)
    persons = _persons_per_household(tables)
    threshold = float(np.percentile(agi, top_percentile))
    order = np.lexsort((ids, -agi))
    n_top = min(int((agi >= threshold).sum()), n_households // 2)
    top = np.zeros(n_total, dtype=bool)
    top[order[:n_top]] = True

    pool = ~top
    states, pool_count = np.unique(state[pool], return_counts=True)
    budget = n_households - n_top
    floor_k = np.minimum(min_per_state, pool_count)
    if floor_k.sum() > budget:
        raise ValueError(f"n_households={n_households} too small for {len(states)} states "
                         f"x {min_per_state} households after {n_top} top households")
    share = (budget - floor_k.sum()) * np.maximum(pool_count - floor_k, 0) / max(
        np.maximum(pool_count - floor_k, 0).sum(), 1)
    k = floor_k + np.floor(share).astype(int)
    remainder = budget - k.sum()
    if remainder > 0:
        frac_order = np.lexsort((states, -(share - np.floor(share))))
        k[frac_order[:remainder]] += 1
    k = np.minimum(k, pool_count)

    u = keyed_uniform("stratify", np.full(n_total, seed), ids)
    pool_idx = np.flatnonzero(pool)
    ranked = pool_idx[np.lexsort((u[pool_idx], state[pool_idx]))]
    st_ranked = state[ranked]
    start = np.searchsorted(st_ranked, states)
    rank_in_state = np.arange(len(ranked)) - np.repeat(start, pool_count)
    chosen = ranked[rank_in_state < np.repeat(k, pool_count)]
    sampled = np.zeros(n_total, dtype=bool)
    sampled[chosen] = True

    wp = weight * persons
    pool_total = pd.Series(wp[pool]).groupby(state[pool]).sum()
    sample_total = pd.Series(wp[sampled]).groupby(state[sampled]).sum()
    factor = (pool_total / sample_total).reindex(states).fillna(1.0)
    new_weight = weight.copy()
    new_weight[sampled] *= factor.loc[state[sampled]].to_numpy()

    keep = top | sampled
    out = subset_tables(tables, ids[keep])
    hh_new = out["household"].copy()
    hh_new["household_weight"] = new_weight[keep]
    out["household"] = hh_new
    info = {"n_top": int(n_top), "n_sampled": int(sampled.sum()), "agi_threshold": threshold,
            "n_above_threshold": int((agi >= threshold).sum()), "all_kept": False,
            "min_rescale_factor": float(factor.min()), "max_rescale_factor": float(factor.max())}
    return out, info


def structure_problems(tables: dict[str, pd.DataFrame]) -> list[str]:
    """Problems that would make the dataset unusable (empty list when none): missing tables or
    id columns, duplicate ids, persons whose household / tax unit / SPM unit / family / marital
    unit does not exist, groups without members, non-positive or non-finite weights,
    county_fips not a 5-digit code inside the household's state."""
    problems: list[str] = []
    try:
        validate_tables(tables)
    except DatasetError as exc:
        return [str(exc)]
    person = tables["person"]
    for entity in GROUP_ENTITIES:
        members = np.unique(person[f"person_{entity}_id"].to_numpy())
        empty = ~np.isin(tables[entity][f"{entity}_id"].to_numpy(), members)
        if empty.any():
            problems.append(f"{int(empty.sum())} {entity}(s) without any person")
    hh = tables["household"]
    w = hh["household_weight"].to_numpy(dtype=float)
    if not np.isfinite(w).all() or (w < 0).any():
        problems.append("household_weight has negative or non-finite values")
    county = hh["county_fips"].astype(str)
    bad = ~county.str.fullmatch(r"\d{5}") | (county.str[:2].map(
        lambda s: int(s) if s.isdigit() else -1) != hh["state_fips"].astype(int))
    if bad.any():
        problems.append(f"{int(bad.sum())} household(s) with county_fips not 5 digits in the state")
    return problems


def population_by_state(tables: dict[str, pd.DataFrame], acs: pd.Series | None = None
                        ) -> pd.DataFrame:
    """Weighted persons per state (51 rows, index state FIPS) with ACS S0101 and % difference."""
    person_w = _person_weights(tables)
    hh = tables["household"]
    idx = np.searchsorted(hh["household_id"].to_numpy(),
                          tables["person"]["person_household_id"].to_numpy())
    st = hh["state_fips"].to_numpy()[idx]
    pop = pd.Series(person_w).groupby(st).sum()
    out = pd.DataFrame({"state": [STATE_ABBR.get(int(s), str(s)) for s in sorted(STATE_ABBR)]},
                       index=pd.Index(sorted(STATE_ABBR), name="state_fips"))
    out["households"] = pd.Series(hh["state_fips"].to_numpy()).value_counts().reindex(
        out.index).fillna(0).astype(int)
    out["weighted_persons"] = pop.reindex(out.index).fillna(0.0)
    if acs is not None:
        out["acs_s0101"] = acs.reindex(out.index)
        out["pct_diff"] = 100.0 * (out["weighted_persons"] / out["acs_s0101"] - 1.0)
    return out


def summarize(tables: dict[str, pd.DataFrame]) -> dict:
    """Counts of every entity, weighted persons and households, states present."""
    hh = tables["household"]
    return {
        **{f"n_{e}": int(len(tables[e])) for e in ENTITIES},
        "weighted_households": float(hh["household_weight"].sum()),
        "weighted_persons": float(_person_weights(tables).sum()),
        "states_present": int(hh["state_fips"].nunique()),
    }


SIMULATED_VARIABLES: tuple[str, ...] = ("adjusted_gross_income", "income_tax", "snap", "medicaid")


def simulate_totals(path: str | os.PathLike, year: int = 2024,
                    variables: tuple[str, ...] = SIMULATED_VARIABLES) -> dict[str, float]:
    """Load the H5 in one ``policyengine_us.Microsimulation`` and return the weighted total of
    each variable for ``year`` (imports policyengine-us: ~1 min and ~1 GB)."""
    from policyengine_us import Microsimulation

    sim = Microsimulation(dataset=str(path))
    return {v: float(sim.calculate(v, year).sum()) for v in variables}
