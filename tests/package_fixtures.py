"""Small synthetic inputs in the real formats for the calibration-stage tests.

* :func:`synthetic_tables` - the six PolicyEngine-US entity tables of ``n`` households (1-4
  persons, one tax unit / SPM unit / family per household, couples share a marital unit), with a
  few income inputs, ``state_fips`` (int), ``county_fips`` (5-char str) and ``household_weight``;
* :func:`write_tpa_h5` - those tables as a time-period-arrays H5 (``/<variable>/<year>``), the
  layout ``stratified_microdata`` writes;
* :func:`synthetic_targets` / :func:`synthetic_constraints` - frames in the exact shapes of
  ``targets_db.read_targets`` / ``read_constraints``.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

# one real county per state (FIPS), so SPM geography resolves in policyengine-us
STATE_COUNTY = {6: "06037", 48: "48201", 36: "36061", 12: "12086", 17: "17031", 53: "53033",
                11: "11001", 2: "02020", 28: "28049", 50: "50007"}


def synthetic_tables(n: int, seed: int = 0, states=(6, 48, 36, 12)) -> dict[str, pd.DataFrame]:
    rng = np.random.default_rng(seed)
    size = rng.choice([1, 2, 3, 4], size=n, p=[0.3, 0.35, 0.2, 0.15])
    hh_id = np.arange(1, n + 1) * 10
    person_hh = np.repeat(hh_id, size)
    n_p = len(person_hh)
    rank = np.arange(n_p) - np.repeat(np.cumsum(size) - size, size)
    age = np.where(rank < 2, rng.integers(18, 90, n_p), rng.integers(0, 18, n_p))
    psize = np.repeat(size, size)
    parent2 = (rank == 1) & (psize >= 3)
    age[parent2] = rng.integers(20, 60, parent2.sum())
    pay = np.where((age >= 18) & (age < 67), rng.lognormal(10.3, 1.2, n_p), 0.0)
    pay *= rng.random(n_p) < 0.8
    pay[rng.random(n_p) < 0.01] *= 40  # a rich tail for the AGI routing
    ss = np.where(age >= 65, rng.uniform(8_000, 30_000, n_p), 0.0)
    interest = rng.exponential(300, n_p) * (rng.random(n_p) < 0.3)
    marital = np.where(rank < 2, person_hh * 10 + 1, person_hh * 10 + 2 + rank)
    person = pd.DataFrame({
        "person_id": np.arange(1, n_p + 1),
        "person_household_id": person_hh, "person_tax_unit_id": person_hh,
        "person_spm_unit_id": person_hh, "person_family_id": person_hh,
        "person_marital_unit_id": marital,
        "age": age.astype(np.int64), "is_male": rng.random(n_p) < 0.5,
        "employment_income": np.round(pay, 0), "social_security": np.round(ss, 0),
        "taxable_interest_income": np.round(interest, 0),
    })
    st = np.asarray(states)[rng.integers(0, len(states), n)]
    household = pd.DataFrame({
        "household_id": hh_id, "state_fips": st.astype(np.int64),
        "county_fips": [STATE_COUNTY[s] for s in st],
        "household_weight": rng.uniform(500, 3000, n),
    })
    return {
        "person": person, "household": household,
        "tax_unit": pd.DataFrame({"tax_unit_id": hh_id}),
        "spm_unit": pd.DataFrame({"spm_unit_id": hh_id}),
        "family": pd.DataFrame({"family_id": hh_id}),
        "marital_unit": pd.DataFrame({"marital_unit_id": np.unique(marital)}),
    }


def write_tpa_h5(path, tables: dict[str, pd.DataFrame], year: int = 2024) -> Path:
    """Write ``tables`` as ``/<variable>/<year>`` arrays (strings as fixed-width bytes)."""
    import h5py

    path = Path(path)
    with h5py.File(path, "w") as f:
        for entity, df in tables.items():
            for col in df.columns:
                v = df[col].to_numpy()
                if v.dtype == object:
                    v = v.astype(str).astype("S")
                ds = f.create_group(col)
                ds.attrs["entity"] = np.bytes_(entity)
                ds.create_dataset(str(year), data=v)
    return path


def _stratum_rows(specs):
    """specs: list of (variable, geo_level, geo_id, [(cvar, op, value)], value)."""
    targets, constraints = [], []
    for i, (variable, level, geo_id, cons, value) in enumerate(specs, start=1):
        geo = []
        if level == "state":
            geo = [("state_fips", "==", str(geo_id))]
        elif level == "district":
            geo = [("state_fips", "==", str(int(geo_id) // 100)),
                   ("congressional_district_geoid", "==", str(geo_id))]
        for cvar, op, val in geo + list(cons):
            constraints.append({"stratum_id": i, "constraint_variable": cvar, "operation": op,
                                "value": str(val)})
        domain = ",".join(sorted({c[0] for c in cons} - {"tax_unit_is_filer"}))
        targets.append({"target_id": i, "stratum_id": i, "variable": variable, "period": 2024,
                        "value": float(value), "original_value": float(value),
                        "uprating_factor": 1.0, "source": "test", "unit": "count",
                        "geo_level": level, "geo_id": "US" if level == "national" else str(geo_id),
                        "domain": domain, "modelled": False})
    return pd.DataFrame(targets), pd.DataFrame(constraints)


AGE_BINS = ((0, 18), (18, 65), (65, 200))


def synthetic_targets(population: float = 1.0e6):
    """Targets + constraints in ``read_targets`` / ``read_constraints`` shapes: ages at every
    level, filer AGI bands by state, SNAP households by district, Medicaid by state, EITC
    (a holdout family), one unachievable row (age >= 300)."""
    specs = []
    shares = (0.22, 0.61, 0.17)
    for (lo, hi), share in zip(AGE_BINS, shares):
        cons = [("age", ">=", lo), ("age", "<", hi)]
        specs.append(("person_count", "national", "US", cons, population * share))
        for st in (6, 48):
            specs.append(("person_count", "state", st, cons, population * share / 4))
        for cd in (601, 612, 4807):
            specs.append(("person_count", "district", cd, cons, population * share / 100))
    for st in (6, 48, 36):
        for lo, hi in ((float("-inf"), 50_000), (50_000, float("inf"))):
            cons = [("tax_unit_is_filer", "==", 1)]
            if np.isfinite(lo):
                cons.append(("adjusted_gross_income", ">=", int(lo)))
            if np.isfinite(hi):
                cons.append(("adjusted_gross_income", "<", int(hi)))
            specs.append(("tax_unit_count", "state", st, cons, 1e5))
            specs.append(("adjusted_gross_income", "state", st, cons, 5e9))
        specs.append(("person_count", "state", st, [("medicaid_enrolled", "==", "True")], 2e4))
        specs.append(("snap", "state", st, [("snap", ">", 0)], 1e8))
        specs.append(("eitc", "state", st, [("eitc", ">", 0)], 1e8))
    for cd in (601, 612, 4807, 3612):
        specs.append(("household_count", "district", cd, [("snap", ">", 0)], 3e3))
        specs.append(("household_count", "district", cd, [], 3e5))
    specs.append(("person_count", "national", "US", [("age", ">=", 300)], 10.0))
    return _stratum_rows(specs)
