"""Enhancement of the base dataset: PUF clone and donor-survey imputation (spec ORIGINAL §3.2-3.4).

Both use quantile regression forests (quantile-forest's ``RandomForestQuantileRegressor``) with
chained imputation: variable j is predicted from the predictors plus variables 1..j-1, and each
receiver gets the forest's conditional quantile at its own uniform draw
``keyed_uniform(purpose + variable, receiver id)`` (taken on a 39-point quantile grid), so draws
are reproducible and keep the conditional spread instead of regressing to the median.

* PUF clone (``puf_YYYY.csv`` + ``demographics_YYYY.csv``, IRS PUF names): every household is
  copied; ids of the copy are offset by the largest id of each entity; on the copy the PUF tax
  variables of :data:`PUF_VARIABLE_MAP` are imputed to each tax unit's head from (head age, head
  sex, joint filing, dependants). Each half keeps half of the original weight (the reference
  gives the copy weight 0, which leaves calibration nothing to start from).
* Donors: ACS PUMS (``psam_pXX.csv`` + ``psam_hXX.csv``: rent and real-estate taxes of the
  household head), SIPP (``pu20YY.csv``, ``|``-separated: tips and bank / stock / bond assets of
  persons 15+), SCF summary extract (``scfp20YY.csv`` / ``rscfp20YY.csv``: household net worth and
  vehicle-loan balance).
Each step runs only when its files are in the raw folder; otherwise its note says why it was
skipped.
"""
from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np
import pandas as pd

from ..h5_dataset import ENTITIES, GROUP_ENTITIES
from ..io_utils import keyed_uniform, stable_seed
from .taxcalc_cps import CpsInputError

QUANTILE_GRID = np.linspace(0.025, 0.975, 39)


class DonorInputError(CpsInputError):
    """A donor file (PUF, ACS, SIPP, SCF) is missing a column or malformed."""


# --------------------------------------------------------------------------- QRF core
def qrf_impute(train_x: np.ndarray, train_y: np.ndarray, predict_x: np.ndarray,
               receiver_keys: np.ndarray, purpose: str, names: list[str],
               sample_weight: np.ndarray | None = None, n_estimators: int = 40,
               min_samples_leaf: int = 5, chunk: int = 50_000) -> np.ndarray:
    """Chained QRF imputation.

    train_x: (n_donor, p) predictors; train_y: (n_donor, k) targets in chain order ``names``;
    predict_x: (n_receiver, p); receiver_keys: (n_receiver,) int ids for the quantile draws.
    Returns (n_receiver, k): column j is the conditional quantile q_ij of target j given the
    predictors and targets < j, with q_ij = grid[floor(u_ij · len(grid))],
    u_ij = keyed_uniform(purpose + ":" + names[j], receiver_keys).
    """
    from quantile_forest import RandomForestQuantileRegressor

    train_x = np.asarray(train_x, dtype=float)
    train_y = np.asarray(train_y, dtype=float)
    predict_x = np.asarray(predict_x, dtype=float)
    if train_x.shape[0] != train_y.shape[0] or train_x.shape[1] != predict_x.shape[1]:
        raise ValueError(f"qrf_impute: shapes {train_x.shape}, {train_y.shape}, "
                         f"{predict_x.shape} do not agree")
    out = np.zeros((predict_x.shape[0], train_y.shape[1]))
    xt, xp = train_x, predict_x
    for j, name in enumerate(names):
        model = RandomForestQuantileRegressor(
            n_estimators=n_estimators, min_samples_leaf=min_samples_leaf,
            random_state=stable_seed(purpose, name) % (2**31), n_jobs=1)
        model.fit(xt, train_y[:, j], sample_weight=sample_weight)
        u = keyed_uniform(f"{purpose}:{name}", receiver_keys)
        pick = np.minimum((u * len(QUANTILE_GRID)).astype(int), len(QUANTILE_GRID) - 1)
        for s in range(0, xp.shape[0], chunk):
            q = model.predict(xp[s:s + chunk], quantiles=list(QUANTILE_GRID))
            out[s:s + chunk, j] = q[np.arange(q.shape[0]), pick[s:s + chunk]]
        xt = np.column_stack([xt, train_y[:, j]])
        xp = np.column_stack([xp, out[:, j]])
    return out


# --------------------------------------------------------------------------- helpers
def tax_unit_roles(person: pd.DataFrame) -> pd.DataFrame:
    """Head / spouse / dependant flags per person (n_person rows, person order).

    Uses is_tax_unit_head/spouse/dependent when present; otherwise the head is the oldest member
    of the tax unit (ties: lowest person_id), the spouse the head's marital-unit partner.
    """
    if {"is_tax_unit_head", "is_tax_unit_spouse"} <= set(person.columns):
        head = person["is_tax_unit_head"].to_numpy(bool)
        spouse = person["is_tax_unit_spouse"].to_numpy(bool)
    else:
        order = np.lexsort((person["person_id"].to_numpy(), -person["age"].to_numpy(),
                            person["person_tax_unit_id"].to_numpy()))
        tu = person["person_tax_unit_id"].to_numpy()[order]
        first = np.concatenate([[True], tu[1:] != tu[:-1]])
        head = np.zeros(len(person), bool)
        head[order[first]] = True
        head_mu = pd.Series(person["person_marital_unit_id"].to_numpy()[head],
                            index=person["person_tax_unit_id"].to_numpy()[head])
        mu_of_head = head_mu.reindex(person["person_tax_unit_id"].to_numpy()).to_numpy()
        spouse = (person["person_marital_unit_id"].to_numpy() == mu_of_head) & ~head
    return pd.DataFrame({"head": head, "spouse": spouse, "dependent": ~head & ~spouse})


def tax_unit_features(person: pd.DataFrame) -> pd.DataFrame:
    """Per tax unit (sorted by id): head_age, head_is_male, is_joint, n_dependents, head_row."""
    roles = tax_unit_roles(person)
    tu = person["person_tax_unit_id"].to_numpy()
    head_rows = np.flatnonzero(roles["head"].to_numpy())
    df = pd.DataFrame({"tax_unit_id": tu[head_rows], "head_row": head_rows,
                       "head_age": person["age"].to_numpy(float)[head_rows],
                       "head_is_male": person["is_male"].to_numpy(float)[head_rows]
                       if "is_male" in person else 0.5})
    df["is_joint"] = pd.Series(roles["spouse"].to_numpy()).groupby(tu).any().reindex(
        df["tax_unit_id"]).to_numpy(float)
    df["n_dependents"] = pd.Series(roles["dependent"].to_numpy()).groupby(tu).sum().reindex(
        df["tax_unit_id"]).to_numpy(float)
    return df.sort_values("tax_unit_id").reset_index(drop=True)


def _find(raw_dir: Path, pattern: str) -> list[Path]:
    rx = re.compile(pattern, re.IGNORECASE)
    return sorted(p for p in raw_dir.iterdir() if p.is_file() and rx.fullmatch(p.name))


def _read(path: Path, expected: str, **kwargs) -> pd.DataFrame:
    """``pandas.read_csv`` through the one reading helper: a damaged or empty donor file raises
    DonorInputError naming the file and what it should hold."""
    from ..raw_inputs import read_csv_file

    return read_csv_file(path, expected, DonorInputError, **kwargs)


def _columns(df: pd.DataFrame, path: Path, required, text=("SERIALNO", "SSUID")
             ) -> pd.DataFrame:
    """Upper-case the column names; every ``required`` column must exist and, unless it is an
    identifier in ``text``, be numeric. DonorInputError names the file and the column."""
    df = df.rename(columns={c: c.strip().upper() for c in df.columns})
    missing = [c for c in required if c not in df.columns]
    if missing:
        raise DonorInputError(f"{path}: missing column(s) {missing}")
    for c in required:
        if c not in text and not pd.api.types.is_numeric_dtype(df[c]):
            raise DonorInputError(f"{path}: column {c!r} must be numeric")
    return df


def _set_person(person: pd.DataFrame, variable: str, rows: np.ndarray, values: np.ndarray,
                clear_rows: np.ndarray | None = None) -> None:
    col = person[variable].to_numpy(float).copy() if variable in person else np.zeros(len(person))
    if clear_rows is not None:
        col[clear_rows] = 0.0
    col[rows] = values
    person[variable] = col


# --------------------------------------------------------------------------- PUF clone
# (PUF column expression, policyengine-us variable, growth factor); "A-B" = A minus B
PUF_VARIABLE_MAP: tuple[tuple[str, str, str], ...] = (
    ("E00200", "employment_income", "AWAGE"),
    ("E00900", "self_employment_income", "ASCHCI/ASCHCL"),
    ("E26270", "partnership_s_corp_income", "ASCHEI/ASCHEL"),
    ("E00300", "taxable_interest_income", "AINTS"),
    ("E00400", "tax_exempt_interest_income", "AINTS"),
    ("E00650", "qualified_dividend_income", "ADIVS"),
    ("E00600-E00650", "non_qualified_dividend_income", "ADIVS"),
    ("P22250", "short_term_capital_gains", "ACGNS"),
    ("P23250", "long_term_capital_gains", "ACGNS"),
    ("E01400", "taxable_ira_distributions", "ATXPY"),
    ("E01700", "taxable_private_pension_income", "ATXPY"),
    ("E01500-E01700", "tax_exempt_private_pension_income", "ATXPY"),
    ("E02400", "social_security", "ASOCSEC"),
    ("E02300", "unemployment_compensation", "AUCOMP"),
    ("E18500", "real_estate_taxes", "ATXPY"),
    ("E19200", "home_mortgage_interest", "AIPD"),
    ("E19800", "charitable_cash_donations", "ATXPY"),
    ("E20100", "charitable_non_cash_donations", "ATXPY"),
    ("E17500", "other_medical_expenses", "ACPIM"),
)
PUF_REQUIRED = ("RECID", "MARS", "XTOT", "S006", "E00200")
PUF_AGE_MIDPOINT = {1: 22.0, 2: 30.0, 3: 40.0, 4: 50.0, 5: 60.0, 6: 72.0}  # AGERANGE bands


def read_puf(puf_path: Path, demographics_path: Path | None) -> pd.DataFrame:
    """PUF tax units with predictors (head_age, head_is_male, is_joint, n_dependents), weight
    S006/100 and every PUF_VARIABLE_MAP source column present; aggregate records (MARS 0 or
    RECID >= 999996) dropped."""
    puf = _columns(_read(puf_path, "an IRS PUF CSV"), puf_path, PUF_REQUIRED)
    puf = puf[(puf["MARS"] > 0) & (puf["RECID"] < 999996)].reset_index(drop=True)
    if demographics_path is not None:
        demo = _columns(_read(demographics_path, "the PUF demographics CSV"), demographics_path,
                        ("RECID", "AGERANGE", "GENDER"))
        puf = puf.merge(demo[["RECID", "AGERANGE", "GENDER"]], on="RECID", how="left")
    age = puf["AGERANGE"].map(PUF_AGE_MIDPOINT) if "AGERANGE" in puf else pd.Series(np.nan,
                                                                                    puf.index)
    joint = (puf["MARS"] == 2).to_numpy(float)
    return puf.assign(
        head_age=age.fillna(45.0).to_numpy(float),
        head_is_male=(puf["GENDER"] == 1).to_numpy(float) if "GENDER" in puf else 0.5,
        is_joint=joint,
        n_dependents=np.maximum(puf["XTOT"].to_numpy(float) - 1 - joint, 0),
        weight=puf["S006"].to_numpy(float) / 100.0,
    )


def _puf_value(puf: pd.DataFrame, expr: str, factor: str, factors: pd.Series | None):
    parts = expr.split("-")
    if any(p not in puf.columns for p in parts):
        return None
    v = puf[parts[0]].to_numpy(float).copy()
    for p in parts[1:]:
        v -= puf[p].to_numpy(float)
    if factors is None:
        return v
    if "/" in factor:
        pos, neg = factor.split("/")
        return np.where(v >= 0, v * factors[pos], v * factors[neg])
    return v * factors[factor]


def offset_ids(tables: dict[str, pd.DataFrame], offset: int) -> dict[str, pd.DataFrame]:
    """A copy of the tables with every id and membership id increased by ``offset``."""
    out = {}
    for entity in ENTITIES:
        df = tables[entity].copy()
        df[f"{entity}_id"] = df[f"{entity}_id"].to_numpy() + offset
        if entity == "person":
            for g in GROUP_ENTITIES:
                df[f"person_{g}_id"] = df[f"person_{g}_id"].to_numpy() + offset
        out[entity] = df
    return out


def puf_clone(tables: dict[str, pd.DataFrame], puf: pd.DataFrame, factors: pd.Series | None,
              purpose: str = "puf_clone", max_train: int = 20_000, top_percentile: float = 99.5
              ) -> tuple[dict[str, pd.DataFrame], dict]:
    """Double the households and impute PUF tax variables onto the copy (see module docstring).

    Training set: every PUF record at or above the ``top_percentile`` of E00200+E00300+E00600+
    E00900+P23250 plus a keyed random rest up to ``max_train`` records, weighted by S006.
    Returns (tables with 2x households, info).
    """
    targets = [(expr, var, f) for expr, var, f in PUF_VARIABLE_MAP
               if _puf_value(puf, expr, f, None) is not None]
    names = [var for _, var, _ in targets]
    y = np.column_stack([_puf_value(puf, expr, f, factors) for expr, _, f in targets])
    income = sum(puf[c].to_numpy(float) for c in ("E00200", "E00300", "E00600", "E00900",
                                                  "P23250") if c in puf.columns)
    top = income >= np.percentile(income, top_percentile)
    u = keyed_uniform(f"{purpose}:train", puf["RECID"].to_numpy())
    rest_budget = max(max_train - int(top.sum()), 0)
    rest = ~top & (np.argsort(np.argsort(np.where(top, 2.0, u))) < rest_budget)
    train = top | rest
    predictors = ["head_age", "head_is_male", "is_joint", "n_dependents"]

    offset = int(max(tables[e][f"{e}_id"].max() for e in ENTITIES))
    clone = offset_ids(tables, offset)
    person = clone["person"]
    feats = tax_unit_features(person)
    pred = qrf_impute(puf.loc[train, predictors].to_numpy(float), y[train],
                      feats[predictors].to_numpy(float), feats["tax_unit_id"].to_numpy(),
                      purpose, names, sample_weight=puf.loc[train, "weight"].to_numpy(float))
    all_rows = np.arange(len(person))
    head_rows = feats["head_row"].to_numpy()
    for j, var in enumerate(names):
        value = pred[:, j]
        if var == "social_security":  # split as the reference's fallback: 62+ retirement
            old = feats["head_age"].to_numpy() >= 62
            _set_person(person, "social_security_retirement", head_rows, np.where(old, value, 0),
                        clear_rows=all_rows)
            _set_person(person, "social_security_disability", head_rows, np.where(old, 0, value),
                        clear_rows=all_rows)
            continue
        _set_person(person, var, head_rows, value, clear_rows=all_rows)
    base = {e: tables[e].copy() for e in ENTITIES}
    for var in names + ["social_security_retirement", "social_security_disability"]:
        if var in person.columns and var not in base["person"].columns:
            base["person"][var] = np.zeros(len(base["person"]))
    base["household"]["household_weight"] = base["household"]["household_weight"] / 2.0
    clone["household"]["household_weight"] = clone["household"]["household_weight"] / 2.0
    clone["person"] = person
    out = {e: pd.concat([base[e], clone[e][base[e].columns]], ignore_index=True)
           for e in ENTITIES}
    info = {"puf_records": int(len(puf)), "puf_training_records": int(train.sum()),
            "imputed_variables": names, "id_offset": offset}
    return out, info


# --------------------------------------------------------------------------- donors
def _household_heads(tables) -> np.ndarray:
    """Row index (into person) of each household's head: the tax-unit head with the lowest
    person_id in the household; (n_household,) in household-table order."""
    person = tables["person"]
    roles = tax_unit_roles(person)
    rows = np.flatnonzero(roles["head"].to_numpy())
    hh = person["person_household_id"].to_numpy()[rows]
    order = np.lexsort((person["person_id"].to_numpy()[rows], hh))
    first = rows[order][np.concatenate([[True], np.diff(hh[order]) != 0])]
    by_hh = pd.Series(first, index=person["person_household_id"].to_numpy()[first])
    return by_hh.reindex(tables["household"]["household_id"].to_numpy()).to_numpy()


def _hh_sum(tables, column: str) -> np.ndarray:
    person = tables["person"]
    hh_ids = tables["household"]["household_id"].to_numpy()
    idx = np.searchsorted(hh_ids, person["person_household_id"].to_numpy())
    v = person[column].to_numpy(float) if column in person else np.zeros(len(person))
    return np.bincount(idx, weights=v, minlength=len(hh_ids))


def _person_col(person, name):
    return person[name].to_numpy(float) if name in person else np.zeros(len(person))


def impute_acs(tables, p_path: Path, h_path: Path, purpose="acs") -> tuple[dict, dict]:
    """Rent (``pre_subsidy_rent``) and ``real_estate_taxes`` of household heads from ACS PUMS.

    Donors: reference persons (SPORDER 1) joined to their housing record. Targets: rent =
    12·RNTP for renters (TEN 3), else 0; taxes = TAXAMT for owners (TEN 1, 2), else 0.
    Predictors: age, is_male, wages, self-employment, Social Security, retirement income,
    household size, state. A head's existing positive real_estate_taxes is kept.
    """
    p = _columns(_read(p_path, "an ACS PUMS person CSV"), p_path,
                 ("SERIALNO", "SPORDER", "AGEP", "SEX", "ST", "WAGP", "SEMP", "SSP", "RETP"))
    h = _columns(_read(h_path, "an ACS PUMS housing CSV"), h_path,
                 ("SERIALNO", "NP", "TEN", "RNTP", "TAXAMT", "WGTP"))
    d = p[p["SPORDER"] == 1].merge(h, on="SERIALNO", how="inner", suffixes=("", "_h"))
    d = d[d["NP"] > 0]
    adj = d["ADJINC"].to_numpy(float) / 1e6 if "ADJINC" in d else 1.0
    x_d = np.column_stack([d["AGEP"], d["SEX"] == 1, d["WAGP"] * adj, d["SEMP"] * adj,
                           d["SSP"] * adj, d["RETP"] * adj, d["NP"], d["ST"]]).astype(float)
    ten = d["TEN"].fillna(0).to_numpy()
    y_d = np.column_stack([np.where(ten == 3, 12 * d["RNTP"].fillna(0), 0.0),
                           np.where(np.isin(ten, [1, 2]), d["TAXAMT"].fillna(0), 0.0)])
    person = tables["person"].copy()
    heads = _household_heads(tables)
    size = np.bincount(np.searchsorted(tables["household"]["household_id"].to_numpy(),
                                       person["person_household_id"].to_numpy()),
                       minlength=len(heads))
    x_r = np.column_stack([
        person["age"].to_numpy(float)[heads], _person_col(person, "is_male")[heads],
        _person_col(person, "employment_income")[heads],
        _person_col(person, "self_employment_income")[heads],
        (_person_col(person, "social_security_retirement")
         + _person_col(person, "social_security_disability"))[heads],
        (_person_col(person, "taxable_private_pension_income")
         + _person_col(person, "tax_exempt_private_pension_income"))[heads],
        size, tables["household"]["state_fips"].to_numpy(float)])
    pred = qrf_impute(x_d, y_d, x_r, tables["household"]["household_id"].to_numpy(), purpose,
                      ["pre_subsidy_rent", "real_estate_taxes"],
                      sample_weight=d["WGTP"].to_numpy(float))
    _set_person(person, "pre_subsidy_rent", heads, np.maximum(pred[:, 0], 0))
    current = _person_col(person, "real_estate_taxes")[heads]
    _set_person(person, "real_estate_taxes", heads,
                np.where(current > 0, current, np.maximum(pred[:, 1], 0)))
    out = dict(tables)
    out["person"] = person
    return out, {"donors": int(len(d)), "variables": ["pre_subsidy_rent", "real_estate_taxes"]}


SIPP_ASSETS = {"TVAL_BANK": "bank_account_assets", "TVAL_STMF": "stock_assets",
               "TVAL_BOND": "bond_assets"}


def impute_sipp(tables, path: Path, purpose="sipp") -> tuple[dict, dict]:
    """tip_income and bank / stock / bond assets of persons aged 15+ from SIPP.

    Donor person-year: annual earnings Σ TPEARN, annual tips Σ TJBk_TXAMT over months and jobs,
    age TAGE, sex ESEX and the assets (TVAL_BANK, TVAL_STMF, TVAL_BOND) in MONTHCODE 12, weight
    WPFINWGT of month 12. Predictors: employment income, age, is_female.
    """
    s = _read(path, "a pipe-separated SIPP public-use file", sep="|")
    s = _columns(s, path, ("SSUID", "PNUM", "MONTHCODE", "WPFINWGT", "TAGE", "ESEX", "TPEARN"))
    tips = [c for c in s.columns if re.fullmatch(r"TJB\d_TXAMT", c)]
    assets = [c for c in SIPP_ASSETS if c in s.columns]
    s["_tips"] = s[tips].fillna(0).sum(axis=1) if tips else 0.0
    key = ["SSUID", "PNUM"]
    g = s.groupby(key, sort=True)
    annual = g[["TPEARN", "_tips"]].sum()
    dec = s[s["MONTHCODE"] == 12].set_index(key)
    d = annual.join(dec[["TAGE", "ESEX", "WPFINWGT"] + assets], how="inner")
    d = d[d["TAGE"] >= 15]
    names = ["tip_income"] + [SIPP_ASSETS[a] for a in assets]
    x_d = np.column_stack([d["TPEARN"], d["TAGE"], d["ESEX"] == 2]).astype(float)
    y_d = np.column_stack([d["_tips"]] + [d[a].fillna(0) for a in assets]).astype(float)
    person = tables["person"].copy()
    rows = np.flatnonzero(person["age"].to_numpy() >= 15)
    x_r = np.column_stack([_person_col(person, "employment_income")[rows],
                           person["age"].to_numpy(float)[rows],
                           1.0 - _person_col(person, "is_male")[rows]])
    pred = qrf_impute(x_d, y_d, x_r, person["person_id"].to_numpy()[rows], purpose, names,
                      sample_weight=d["WPFINWGT"].to_numpy(float))
    for j, name in enumerate(names):
        _set_person(person, name, rows, np.maximum(pred[:, j], 0))
    out = dict(tables)
    out["person"] = person
    return out, {"donors": int(len(d)), "variables": names}


def impute_scf(tables, path: Path, purpose="scf") -> tuple[dict, dict]:
    """Household ``net_worth`` and ``auto_loan_balance`` (VEH_INST) from the SCF summary extract.

    Predictors (head / household): age, is_female, is_married, children, wages,
    interest + dividends, Social Security + pensions. Weight WGT (all implicates).
    """
    s = _columns(_read(path, "an SCF summary extract CSV"), path,
                 ("WGT", "AGE", "HHSEX", "MARRIED", "KIDS", "WAGEINC", "INTDIVINC", "SSRETINC",
                  "NETWORTH", "VEH_INST"))
    x_d = np.column_stack([s["AGE"], s["HHSEX"] == 2, s["MARRIED"] == 1, s["KIDS"],
                           s["WAGEINC"], s["INTDIVINC"], s["SSRETINC"]]).astype(float)
    y_d = s[["NETWORTH", "VEH_INST"]].to_numpy(float)
    person = tables["person"]
    heads = _household_heads(tables)
    roles = tax_unit_roles(person)
    hh_ids = tables["household"]["household_id"].to_numpy()
    kids = np.bincount(np.searchsorted(hh_ids, person["person_household_id"].to_numpy()),
                       weights=(person["age"].to_numpy() < 18).astype(float),
                       minlength=len(hh_ids))
    married = pd.Series(roles["spouse"].to_numpy()).groupby(
        person["person_household_id"].to_numpy()).any().reindex(hh_ids).to_numpy(float)
    intdiv = sum(_hh_sum(tables, c) for c in ("taxable_interest_income",
                                               "qualified_dividend_income",
                                               "non_qualified_dividend_income"))
    ssret = sum(_hh_sum(tables, c) for c in ("social_security_retirement",
                                              "social_security_disability",
                                              "taxable_private_pension_income"))
    x_r = np.column_stack([person["age"].to_numpy(float)[heads],
                           1.0 - _person_col(person, "is_male")[heads], married, kids,
                           _hh_sum(tables, "employment_income"), intdiv, ssret])
    pred = qrf_impute(x_d, y_d, x_r, hh_ids, purpose, ["net_worth", "auto_loan_balance"],
                      sample_weight=s["WGT"].to_numpy(float))
    hh = tables["household"].copy()
    hh["net_worth"] = pred[:, 0]
    hh["auto_loan_balance"] = np.maximum(pred[:, 1], 0)
    out = dict(tables)
    out["household"] = hh
    return out, {"donors": int(len(s)), "variables": ["net_worth", "auto_loan_balance"]}


# --------------------------------------------------------------------------- orchestration
def enhance_tables(tables: dict[str, pd.DataFrame], raw_dir: str | os.PathLike,
                   seed_key: str = "enhanced", year: int = 2024
                   ) -> tuple[dict[str, pd.DataFrame], dict[str, str]]:
    """Run every enhancement whose files are in ``raw_dir``; return (tables, note per step).

    Order: PUF clone, then ACS, SIPP and SCF donors (the copy's imputed incomes then condition
    the donor models). Notes say what ran (records, variables) or why a step was skipped.
    """
    from .taxcalc_cps import growth_factors

    raw_dir = Path(raw_dir)
    notes: dict[str, str] = {}
    pufs = _find(raw_dir, r"puf_(\d{4})\.csv")
    if pufs:
        puf_path = pufs[-1]
        puf_year = int(re.search(r"(\d{4})", puf_path.name).group(1))
        demo = _find(raw_dir, rf"demographics_{puf_year}\.csv")
        puf = read_puf(puf_path, demo[0] if demo else None)
        factors = growth_factors(raw_dir / "growfactors.csv", puf_year, year)
        tables, info = puf_clone(tables, puf, factors, purpose=f"{seed_key}:puf")
        notes["puf_clone"] = (f"ran: {puf_path.name}, {info['puf_training_records']} training "
                              f"records, {len(info['imputed_variables'])} variables "
                              f"({', '.join(info['imputed_variables'])})")
    else:
        notes["puf_clone"] = "skipped: no puf_YYYY.csv in the raw folder"
    p_files = _find(raw_dir, r"psam_p\w*\.csv")
    h_files = _find(raw_dir, r"psam_h\w*\.csv")
    if p_files and h_files:
        tables, info = impute_acs(tables, p_files[0], h_files[0], purpose=f"{seed_key}:acs")
        notes["acs_donor"] = f"ran: {p_files[0].name} + {h_files[0].name}, {info['donors']} donors"
    else:
        notes["acs_donor"] = "skipped: needs psam_pXX.csv and psam_hXX.csv (ACS PUMS)"
    sipp = _find(raw_dir, r"pu20\d\d\.csv")
    if sipp:
        tables, info = impute_sipp(tables, sipp[-1], purpose=f"{seed_key}:sipp")
        notes["sipp_donor"] = f"ran: {sipp[-1].name}, {info['donors']} donors"
    else:
        notes["sipp_donor"] = "skipped: no pu20YY.csv (SIPP)"
    scf = _find(raw_dir, r"r?scfp20\d\d\.csv")
    if scf:
        tables, info = impute_scf(tables, scf[-1], purpose=f"{seed_key}:scf")
        notes["scf_donor"] = f"ran: {scf[-1].name}, {info['donors']} donors"
    else:
        notes["scf_donor"] = "skipped: no scfp20YY.csv / rscfp20YY.csv (SCF)"
    return tables, notes
