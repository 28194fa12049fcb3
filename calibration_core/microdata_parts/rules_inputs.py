"""Inputs policyengine-us rules read that the CPS file lacks: tenure, rent, ESI, disability.

Each function takes the six entity tables (``calibration_core.h5_dataset`` layout) and returns new
tables plus a dict of facts for the dataset metadata. :func:`add_rules_inputs` runs them all.

* :func:`derive_tenure` - household ``tenure_type`` from what the tax units report: a household
  with mortgage interest (``home_mortgage_interest``, CPS ``e19200``) owns with a mortgage, one
  with only real-estate taxes (``real_estate_taxes``, ``e18500``) owns outright, any other rents.
* :func:`impute_rent` - ``pre_subsidy_rent`` (annual $, on the household's first person) of
  renter households: ``k_s · max(income, $10,000) ** 0.25`` with ``k_s`` set per state so the
  weighted total equals the state's aggregate contract rent, ACS 2024 1-year B25060 x 12
  (``acs_housing_costs_2024.csv`` of policyengine-us-data 1.115.4, column
  ``annual_contract_rent``). The 0.25 income elasticity is an assumption (only the state totals
  are published); income = the household's income columns of :data:`INCOME_COLUMNS`.
* :func:`impute_esi` - person ``has_esi``: every member of a tax unit gets the unit's draw
  ``keyed_uniform("esi", household_id, tax-unit rank) < min(c · p(band), 0.98)``, p by the
  head + spouse wage band (:data:`ESI_BAND_PROBABILITY`, an assumed shape rising with earnings),
  ``c`` solved so the weighted share of persons with ESI equals :data:`ESI_SHARE`: 53.7 %,
  employment-based coverage in 2023 (Census, Health Insurance Coverage in the United States:
  2023, P60-284, Table 1). The figure is not in the raw inputs; it is named in docs/data.md.
* :func:`derive_disability` - person ``is_disabled`` and ``meets_ssi_disability_criteria``:
  Social Security disability benefits
  (``social_security_disability`` > 0, the CPS head under 62 with benefits) or SSI reported
  (``ssi_reported`` > 0) under 65.

Errors: :class:`RulesInputError` names the missing column or state. No policyengine-us import.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd

from ..io_utils import keyed_uniform

INCOME_COLUMNS: tuple[str, ...] = (
    "employment_income", "self_employment_income", "farm_income", "taxable_interest_income",
    "qualified_dividend_income", "non_qualified_dividend_income", "taxable_ira_distributions",
    "taxable_private_pension_income", "tax_exempt_private_pension_income",
    "unemployment_compensation", "social_security_retirement", "social_security_disability",
    "ssi_reported", "veterans_benefits", "rental_income", "alimony_income",
)
RENT_INCOME_ELASTICITY = 0.25
RENT_INCOME_FLOOR = 10_000.0
# (head + spouse wages lower bound $, relative ESI probability): assumed shape, scaled to ESI_SHARE
ESI_BAND_PROBABILITY: tuple[tuple[float, float], ...] = (
    (0.0, 0.03), (1.0, 0.12), (10_000.0, 0.35), (25_000.0, 0.62), (50_000.0, 0.80),
    (100_000.0, 0.88))
ESI_SHARE = 0.537  # Census P60-284 (2023): employment-based coverage, share of all persons
ESI_CAP = 0.98
RENT_SOURCE = ("ACS 2024 1-year B25060 aggregate contract rent x 12, via policyengine-us-data "
               "1.115.4 calibration_targets/acs_housing_costs_2024.csv")


class RulesInputError(ValueError):
    """A table lacks a column an input is derived from, or a state has no published total."""


def _person_hh_rows(tables) -> np.ndarray:
    hh_ids = tables["household"]["household_id"].to_numpy()
    rows = pd.Index(hh_ids).get_indexer(tables["person"]["person_household_id"].to_numpy())
    if (rows < 0).any():
        raise RulesInputError("person_household_id refers to unknown households")
    return rows


def _col(person: pd.DataFrame, name: str) -> np.ndarray:
    return (person[name].to_numpy(dtype=float) if name in person.columns
            else np.zeros(len(person)))


def _person_weight(tables, rows) -> np.ndarray:
    return tables["household"]["household_weight"].to_numpy(dtype=float)[rows]


def derive_tenure(tables: dict[str, pd.DataFrame]) -> tuple[dict[str, pd.DataFrame], dict]:
    """Household ``tenure_type`` (str: ``OWNED_WITH_MORTGAGE`` | ``OWNED_OUTRIGHT`` | ``RENTED``)
    from the persons' ``home_mortgage_interest`` and ``real_estate_taxes`` ($, any > 0).
    Info: the weighted share of households per tenure."""
    person = tables["person"]
    rows = _person_hh_rows(tables)
    n = len(tables["household"])
    mortgage = np.bincount(rows, weights=np.abs(_col(person, "home_mortgage_interest")),
                           minlength=n) > 0
    taxes = np.bincount(rows, weights=np.abs(_col(person, "real_estate_taxes")),
                        minlength=n) > 0
    tenure = np.where(mortgage, "OWNED_WITH_MORTGAGE",
                      np.where(taxes, "OWNED_OUTRIGHT", "RENTED")).astype(object)
    out = dict(tables)
    hh = tables["household"].copy()
    hh["tenure_type"] = tenure
    out["household"] = hh
    w = hh["household_weight"].to_numpy(dtype=float)
    share = {k: round(float(w[tenure == k].sum() / w.sum()), 4)
             for k in ("OWNED_WITH_MORTGAGE", "OWNED_OUTRIGHT", "RENTED")}
    return out, {"tenure_weighted_share": share}


def read_state_rent(path: str | os.PathLike) -> pd.Series:
    """ACS state aggregate annual contract rent ($) by state FIPS (51 rows) from
    ``acs_housing_costs_2024.csv`` (``state_fips``, ``annual_contract_rent``)."""
    from ..raw_inputs import read_csv_file

    df = read_csv_file(path, "ACS state housing costs: state_fips, annual_contract_rent",
                       RulesInputError, dtype={"state_fips": str})
    for col in ("state_fips", "annual_contract_rent"):
        if col not in df.columns:
            raise RulesInputError(f"{path}: lacks column {col!r}")
    rent = pd.to_numeric(df["annual_contract_rent"], errors="coerce")
    bad = ~np.isfinite(rent.to_numpy(dtype=float)) | (rent.to_numpy(dtype=float) <= 0)
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        raise RulesInputError(f"{path}: row {row + 2} annual_contract_rent "
                              f"{df['annual_contract_rent'].iloc[row]!r} is not a positive number")
    return pd.Series(rent.to_numpy(dtype=float), index=df["state_fips"].astype(int).to_numpy(),
                     name="annual_contract_rent")


def impute_rent(tables: dict[str, pd.DataFrame], state_rent: pd.Series
                ) -> tuple[dict[str, pd.DataFrame], dict]:
    """``pre_subsidy_rent`` ($/year) on the first person of every ``RENTED`` household (0 for
    every other person): ``k_s · max(income, RENT_INCOME_FLOOR) ** RENT_INCOME_ELASTICITY``
    with Σ_renters in s household_weight · rent = ``state_rent[s]``.

    Needs ``tenure_type`` (:func:`derive_tenure`). Raises :class:`RulesInputError` when a state
    with renters has no published total. Info: the weighted national total and renter count.
    """
    hh = tables["household"]
    if "tenure_type" not in hh.columns:
        raise RulesInputError("household table lacks tenure_type: run derive_tenure first")
    person = tables["person"]
    rows = _person_hh_rows(tables)
    n = len(hh)
    income = np.zeros(n)
    for c in INCOME_COLUMNS:
        income += np.bincount(rows, weights=_col(person, c), minlength=n)
    renter = (hh["tenure_type"].astype(str) == "RENTED").to_numpy()
    state = hh["state_fips"].to_numpy().astype(int)
    missing = sorted(set(state[renter].tolist()) - set(state_rent.index.tolist()))
    if missing:
        raise RulesInputError(f"no published contract rent for state FIPS {missing}")
    w = hh["household_weight"].to_numpy(dtype=float)
    shape = np.where(renter, np.maximum(income, RENT_INCOME_FLOOR) ** RENT_INCOME_ELASTICITY, 0.0)
    fitted = pd.Series(w * shape).groupby(state).sum()
    k = (state_rent.reindex(fitted.index) / fitted.replace(0.0, np.nan)).fillna(0.0)
    rent_hh = shape * k.loc[state].to_numpy()
    first = np.full(n, -1)
    order = np.arange(len(person))[::-1]
    first[rows[order]] = order
    value = np.zeros(len(person))
    has = first >= 0
    value[first[has]] = rent_hh[has]
    out = dict(tables)
    p = person.copy()
    p["pre_subsidy_rent"] = value
    out["person"] = p
    return out, {"rent_weighted_total": float((w * rent_hh).sum()),
                 "rent_published_total": float(state_rent.reindex(
                     np.unique(state[renter])).sum()),
                 "renter_households_weighted": float(w[renter].sum()),
                 "rent_source": RENT_SOURCE}


def _esi_probability(wages: np.ndarray) -> np.ndarray:
    bounds = np.array([b for b, _ in ESI_BAND_PROBABILITY])
    probs = np.array([p for _, p in ESI_BAND_PROBABILITY])
    band = np.searchsorted(bounds, wages, side="right") - 1
    return probs[np.clip(band, 0, len(probs) - 1)]


def impute_esi(tables: dict[str, pd.DataFrame], share: float = ESI_SHARE
               ) -> tuple[dict[str, pd.DataFrame], dict]:
    """Person ``has_esi`` (bool), one draw per tax unit shared by its members (module doc).

    ``share``: the weighted share of persons to cover (0 < share < ESI_CAP). The scale ``c`` is
    found by bisection on the expected share; the realised share differs from it by sampling
    noise only. Info: target share, realised weighted share, scale.
    """
    if not 0.0 < share < ESI_CAP:
        raise RulesInputError(f"ESI share {share} must be in (0, {ESI_CAP})")
    from ..simulation import Structure

    person = tables["person"]
    s = Structure.from_tables(tables)
    idx = s.person_index["tax_unit"]
    n_tu = len(s.ids["tax_unit"])
    dep = person["is_tax_unit_dependent"].to_numpy().astype(bool) if (
        "is_tax_unit_dependent" in person.columns) else np.zeros(len(person), bool)
    wages = np.bincount(idx, weights=np.where(dep, 0.0, _col(person, "employment_income")),
                        minlength=n_tu)
    base = _esi_probability(wages)
    rows = _person_hh_rows(tables)
    pw = _person_weight(tables, rows)
    tu_pw = np.bincount(idx, weights=pw, minlength=n_tu)  # weighted persons per tax unit
    total = tu_pw.sum()

    def expected(c):
        return float((np.minimum(c * base, ESI_CAP) * tu_pw).sum() / total)

    lo, hi = 0.0, 1.0
    while expected(hi) < share and hi < 1e3:
        hi *= 2
    for _ in range(60):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if expected(mid) < share else (lo, mid)
    c = 0.5 * (lo + hi)
    hh_id = s.ids["household"][s.household_index["tax_unit"]]
    covered = keyed_uniform("esi", hh_id, s.rank["tax_unit"]) < np.minimum(c * base, ESI_CAP)
    out = dict(tables)
    p = person.copy()
    p["has_esi"] = covered[idx]
    out["person"] = p
    return out, {"esi_target_share": share, "esi_source": "Census P60-284 (2023) 53.7%",
                 "esi_weighted_share": round(float((pw * covered[idx]).sum() / pw.sum()), 4),
                 "esi_scale": round(c, 4)}


def derive_disability(tables: dict[str, pd.DataFrame]) -> tuple[dict[str, pd.DataFrame], dict]:
    """Person ``is_disabled`` and ``meets_ssi_disability_criteria`` (the input SSI's disability
    test reads): ``social_security_disability`` > 0, or ``ssi_reported`` > 0 and ``age`` < 65.
    Info: weighted persons flagged."""
    person = tables["person"]
    if "age" not in person.columns:
        raise RulesInputError("person table lacks 'age'")
    disabled = (_col(person, "social_security_disability") > 0) | (
        (_col(person, "ssi_reported") > 0) & (person["age"].to_numpy(dtype=float) < 65))
    out = dict(tables)
    p = person.copy()
    p["is_disabled"] = disabled
    # SSI reads its own input (no formula in policyengine-us 2.68.0): the same flag
    p["meets_ssi_disability_criteria"] = disabled
    out["person"] = p
    pw = _person_weight(tables, _person_hh_rows(tables))
    return out, {"disabled_persons_weighted": float((pw * disabled).sum())}


# inputs the main programs read that no column of the CPS file gives and nothing here imputes:
# (input, what it makes unreliable). Written into the dataset metadata and docs/data.md.
NOT_AVAILABLE: tuple[tuple[str, str], ...] = (
    ("offered_aca_disqualifying_esi", "aca_ptc: only current ESI (has_esi) bars the credit; "
                                      "the count of credit units is calibrated per state "
                                      "(calibration_core.aca_takeup), not who they are"),
    ("has_marketplace_health_coverage_at_interview", "ACA take-up is not anchored on reports "
                                                     "(calibrated per state to SOI returns)"),
    ("immigration_status", "everyone is a citizen: SNAP, SSI, Medicaid, ACA and EITC "
                           "immigrant rules never bind"),
    ("months_receiving_social_security_disability", "Medicare via SSDI under 65 is not "
                                                     "modelled"),
    ("assessed_property_value / home value", "property-tax credits and state homestead rules"),
    ("childcare hours, provider type", "CCDF/state child-care subsidies (expenses themselves "
                                       "are from Form 2441, e32800)"),
    ("utility costs (heating/cooling expense)", "SNAP standard utility allowance uses the "
                                                "state default; LIHEAP"),
    ("assets (bank accounts, vehicles)", "SSI and TANF asset tests pass for everyone"),
)


def add_rules_inputs(tables: dict[str, pd.DataFrame], raw_dir: str | os.PathLike | None
                     ) -> tuple[dict[str, pd.DataFrame], dict]:
    """Tenure, rent (when ``raw_dir`` holds ``acs_housing_costs_2024.csv``), ESI and disability.

    Returns (tables, info); info holds each step's facts, ``imputed`` (the inputs written) and
    ``not_available`` (input -> outputs it makes unreliable).
    """
    info: dict = {"imputed": []}
    tables, facts = derive_tenure(tables)
    info.update(facts)
    info["imputed"].append("tenure_type")
    rent_path = Path(raw_dir) / "acs_housing_costs_2024.csv" if raw_dir else None
    if rent_path is not None and rent_path.is_file():
        tables, facts = impute_rent(tables, read_state_rent(rent_path))
        info.update(facts)
        info["imputed"].append("pre_subsidy_rent")
    else:
        info["rent_note"] = "pre_subsidy_rent not imputed: acs_housing_costs_2024.csv absent"
    tables, facts = impute_esi(tables)
    info.update(facts)
    tables, facts = derive_disability(tables)
    info.update(facts)
    info["imputed"] += ["has_esi", "is_disabled", "meets_ssi_disability_criteria"]
    info["not_available"] = {name: why for name, why in NOT_AVAILABLE}
    return tables, info
