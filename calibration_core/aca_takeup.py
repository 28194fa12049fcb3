"""ACA premium tax credit take-up calibrated per state to the IRS count of credit returns.

Why: the CPS file has no Marketplace enrolment, no immigration status and no employer offers
(``offered_aca_disqualifying_esi``), so policyengine-us finds far more tax units eligible for a
premium tax credit than claim one (demo build: 26.5 M eligible tax units in the base file,
33.8 M in the national file, against 7.84 M SOI returns). A flat rate (policyengine-us-data's
0.672) cannot match that state by state: Medicaid expansion, Basic Health Programs and premiums
move the eligible pool of each state differently.

What it does not do: policyengine-us 2.68.0 pays ``aca_ptc`` to every eligible tax unit that
files a return (``files_return_for_aca_ptc = tax_unit_is_filer | (takes_up & credit > 0)``),
and eligibility for a refundable credit makes a unit file, so ``aca_ptc`` barely depends on this
input; ``assigned_aca_ptc``, ``person_receives_aca`` and the Marketplace premium proxies do.

What (a ratio calibration of the take-up rate, one per state ``s``):

    r_s = min(1, T_s / E_s)

* ``T_s`` - published tax units with a credit in 2024: IRS SOI TY2022 returns with a premium
  tax credit, ``aca_ptc_state.csv`` column ``Returns`` (Historical Table 2, N85770;
  policyengine-us-data 1.115.4 ``calibration_targets/``; 7.84 M returns, $53.9 B), times the
  state's growth of Marketplace enrolment with APTC from 2022 to 2024, ``enroll_2024 /
  enroll_2022`` of ``aca_ptc_multipliers_2022_2024.csv`` (same package; CMS; the reference's
  ``vol_mult``, spec §5): 2022 is the latest year SOI publishes by state and the files are of
  2024. Without that file the TY2022 counts are used as they are.
* ``E_s`` - weighted tax units of the base microdata that policyengine-us gives a positive
  credit when they take it up (``aca_ptc > 0`` with ``takes_up_aca_if_eligible`` True), each
  household simulated in its own state and county (:func:`simulate_eligible`, one simulation).
  States are small samples (demo: ~60 households a state), so ``E_s`` is a composite
  (small-area) estimate :func:`derive_state_rates`: the direct rate ``E_s^dir / P_s`` (eligible
  units per person) and the national one ``E / P`` weighted ``n_s / (n_s + K)`` and
  ``K / (n_s + K)``, ``n_s`` the sample's eligible units in ``s``, ``K`` = :data:`SHRINK_UNITS`,
  times the state's weighted persons ``P_s``.

How it reaches the files without breaking ``X·w``: the decision of a tax unit placed in state
``s`` is ``u < r_s`` where ``u = keyed_uniform("takeup.takes_up_aca_if_eligible", household_id,
BASE_CLONE, rank in household)`` - the same uniform as the base draw of
:mod:`calibration_core.microdata_parts.takeup_inputs`, only the threshold follows the state.
The state simulations set it per state copy (:func:`calibration_core.simulation.stack_tables`),
the area assembler per cell (:func:`calibration_core.assembly.assemble_cells`), so both see the
same value. When ``aca_ptc`` is a fitted target the input is re-randomised per clone instead and
these rates become the spec's state rates (package and assembler alike).

No Dagster; policyengine-us only in :func:`simulate_eligible`.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Mapping

import numpy as np
import pandas as pd

from .areas import STATE_ABBR
from .io_utils import keyed_uniform

INPUT = "takes_up_aca_if_eligible"
ENTITY = "tax_unit"
PUBLISHED_FILE = "aca_ptc_state.csv"
GROWTH_FILE = "aca_ptc_multipliers_2022_2024.csv"
PUBLISHED_SOURCE = ("IRS SOI TY2022 returns with a premium tax credit by state (Historical "
                    "Table 2, N85770), policyengine-us-data 1.115.4 aca_ptc_state.csv")
GROWTH_SOURCE = ("x CMS Marketplace enrolment with APTC 2024 / 2022 by state, "
                 "policyengine-us-data 1.115.4 aca_ptc_multipliers_2022_2024.csv")
# eligible sample units at which a state's own estimate and the national one weigh alike
SHRINK_UNITS = 20.0
BASE_CLONE = -1  # = takeup_inputs.BASE_CLONE: the base draw's clone key
COLUMNS = ["state", "published_units", "eligible_units_direct", "eligible_sample_units",
           "persons", "eligible_units", "rate"]


class AcaTakeUpError(ValueError):
    """Published counts or eligible counts cannot give a rate (state or column named)."""


@dataclass(frozen=True)
class StateTakeUp:
    """A take-up input whose decision is a fixed per-entity uniform below a per-state rate.

    ``rates``: ((state FIPS, rate), ...) for every state (hashable, so it can ride in the
    state simulations' cache key and worker arguments).
    """

    input: str
    entity: str
    rates: tuple[tuple[int, float], ...]

    def table(self) -> np.ndarray:
        """Rate indexed by state FIPS (float, length max FIPS + 1; unknown FIPS -> NaN)."""
        out = np.full(max(STATE_ABBR) + 1, np.nan)
        for fips, rate in self.rates:
            out[int(fips)] = float(rate)
        return out

    def decisions(self, household_id, rank, state_fips) -> np.ndarray:
        """Bool per entity: ``keyed_uniform("takeup.<input>", household_id, BASE_CLONE, rank)
        < rate[state_fips]``; arguments broadcast. Raises for a state without a rate."""
        state = np.asarray(state_fips, dtype=np.int64)
        table = self.table()
        if state.size and (state.min() < 0 or state.max() >= len(table)
                           or np.isnan(table[state]).any()):
            bad = sorted(set(state.ravel().tolist()) - {int(f) for f, _ in self.rates})
            raise AcaTakeUpError(f"{self.input}: no take-up rate for state FIPS {bad}")
        u = keyed_uniform(f"takeup.{self.input}", household_id, BASE_CLONE, rank)
        return u < table[state]

    def as_dict(self) -> dict[str, float]:
        """{state abbreviation: rate} (metadata, :class:`~calibration_core.simulation.TakeUp`
        ``state_rates``)."""
        return {STATE_ABBR[int(f)]: float(r) for f, r in self.rates}

    @classmethod
    def from_dict(cls, input: str, entity: str, rates: Mapping[str, float]) -> "StateTakeUp":
        from .areas import STATE_FIPS

        unknown = sorted(set(rates) - set(STATE_FIPS))
        if unknown:
            raise AcaTakeUpError(f"{input}: unknown state(s) {unknown}")
        return cls(input, entity, tuple(sorted((int(STATE_FIPS[a]), float(r))
                                               for a, r in rates.items())))


def read_published_units(path: str | os.PathLike) -> pd.Series:
    """SOI TY2022 returns with a premium tax credit (float) indexed by state FIPS (int), from
    ``aca_ptc_state.csv`` (``#`` comment, then ``GEO_ID, Returns, TotalPTCAmount``; GEO_ID
    ``0400000USSS``). Raises :class:`AcaTakeUpError` for a bad GEO_ID or a missing state."""
    from .national_check import NationalCheckError, _read_state_column

    try:
        returns = _read_state_column(path, "Returns")
    except NationalCheckError as exc:
        raise AcaTakeUpError(str(exc)) from None
    geo = pd.Series(returns.index.astype(str))
    ok = geo.str.fullmatch(r"0400000US\d\d")
    if not ok.all():
        raise AcaTakeUpError(f"{path}: GEO_ID {geo[~ok].iloc[0]!r} is not a state "
                             "(expected 0400000USSS)")
    fips = geo.str[-2:].astype(int).to_numpy()
    missing = sorted(set(STATE_ABBR) - set(fips.tolist()))
    if missing:
        raise AcaTakeUpError(f"{path}: no row for state FIPS {missing}")
    return pd.Series(returns.to_numpy(), index=fips, name="published_units")


def read_enrolment_growth(path: str | os.PathLike) -> pd.Series:
    """``enroll_2024 / enroll_2022`` (float) indexed by state FIPS from
    ``aca_ptc_multipliers_2022_2024.csv`` (``state`` = full state name, ``enroll_2022``,
    ``enroll_2024``: Marketplace consumers with APTC). Raises :class:`AcaTakeUpError` for an
    unknown name, a non-positive count or a missing state."""
    from .areas import STATE_NAME
    from .raw_inputs import read_csv_file

    df = read_csv_file(path, "state, enroll_2022, enroll_2024", AcaTakeUpError)
    need = {"state", "enroll_2022", "enroll_2024"}
    if not need <= set(df.columns):
        raise AcaTakeUpError(f"{path}: needs columns {sorted(need)}, has {list(df.columns)}")
    by_name = {name: fips for fips, name in STATE_NAME.items()}
    fips = df["state"].astype(str).str.strip().map(by_name)
    if fips.isna().any():
        raise AcaTakeUpError(f"{path}: unknown state {df['state'][fips.isna()].iloc[0]!r}")
    old = pd.to_numeric(df["enroll_2022"], errors="coerce").to_numpy(dtype=float)
    new = pd.to_numeric(df["enroll_2024"], errors="coerce").to_numpy(dtype=float)
    bad = ~(np.isfinite(old) & np.isfinite(new) & (old > 0) & (new > 0))
    if bad.any():
        raise AcaTakeUpError(f"{path}: enrolment of {df['state'].iloc[np.flatnonzero(bad)[0]]} "
                             "is not a positive number")
    growth = pd.Series(new / old, index=fips.astype(int).to_numpy(), name="growth")
    missing = sorted(set(STATE_ABBR) - set(growth.index))
    if missing:
        raise AcaTakeUpError(f"{path}: no row for state FIPS {missing}")
    return growth


def derive_state_rates(eligible: pd.DataFrame, published: pd.Series,
                       shrink_units: float = SHRINK_UNITS) -> pd.DataFrame:
    """Per-state take-up rates ``min(1, T_s / E_s)`` (module doc), one row per state FIPS.

    Parameters
    ----------
    eligible : one row per state FIPS (index, int) with ``eligible_units_direct`` (weighted
        tax units with a positive credit at full take-up), ``eligible_sample_units``
        (unweighted count of those units) and ``persons`` (weighted persons); states absent
        count as zero eligible units and are estimated from the national rate.
    published : ``T_s`` indexed by state FIPS (:func:`read_published_units`).
    shrink_units : ``K`` of the composite weight ``n_s / (n_s + K)``; 0 = direct estimates.

    Returns a frame indexed by FIPS with :data:`COLUMNS`; ``eligible_units`` is the composite
    ``E_s`` and ``rate`` in [0, 1]. Raises :class:`AcaTakeUpError` when a published state has
    no persons, when nothing is eligible nationally, or for negative inputs.
    """
    need = {"eligible_units_direct", "eligible_sample_units", "persons"}
    if not need <= set(eligible.columns):
        raise AcaTakeUpError(f"eligible table lacks {sorted(need - set(eligible.columns))}")
    states = np.array(sorted(STATE_ABBR))
    missing = sorted(set(states.tolist()) - set(int(i) for i in published.index))
    if missing:
        raise AcaTakeUpError(f"published counts lack state FIPS {missing}")
    e = eligible.reindex(states).fillna(0.0)
    t = published.reindex(states).to_numpy(dtype=float)
    direct = e["eligible_units_direct"].to_numpy(dtype=float)
    n = e["eligible_sample_units"].to_numpy(dtype=float)
    persons = e["persons"].to_numpy(dtype=float)
    if (t < 0).any() or (direct < 0).any() or (n < 0).any() or (persons < 0).any():
        raise AcaTakeUpError("published or eligible counts are negative")
    if (persons <= 0).any():
        bad = [STATE_ABBR[int(s)] for s in states[persons <= 0]]
        raise AcaTakeUpError(f"no persons in the microdata for state(s) {bad}")
    if direct.sum() <= 0:
        raise AcaTakeUpError("no tax unit is eligible for a premium tax credit in the microdata")
    national = direct.sum() / persons.sum()
    lam = n / (n + shrink_units) if shrink_units > 0 else np.ones_like(n)
    composite = (lam * direct / persons + (1 - lam) * national) * persons
    rate = np.minimum(1.0, t / composite)
    return pd.DataFrame({"state": [STATE_ABBR[int(s)] for s in states], "published_units": t,
                         "eligible_units_direct": direct, "eligible_sample_units": n,
                         "persons": persons, "eligible_units": composite, "rate": rate},
                        index=pd.Index(states, name="state_fips"))[COLUMNS]


def eligible_table(tables: dict[str, pd.DataFrame], credit: np.ndarray) -> pd.DataFrame:
    """The ``eligible`` frame of :func:`derive_state_rates` from the entity tables and the
    credit each tax unit (dataset order) gets at full take-up ($, (n_tax_unit,)). Weights:
    ``household_weight``; state: the household's ``state_fips``."""
    from .simulation import Structure

    s = Structure.from_tables(tables)
    credit = np.asarray(credit, dtype=float)
    if credit.shape != (len(s.ids[ENTITY]),):
        raise AcaTakeUpError(f"credit has shape {credit.shape}, expected "
                             f"({len(s.ids[ENTITY])},) tax units")
    hh = tables["household"]
    hw = hh["household_weight"].to_numpy(dtype=float)
    state = hh["state_fips"].to_numpy().astype(np.int64)
    tu_hh = s.household_index[ENTITY]
    pos = credit > 0
    frame = pd.DataFrame({"state_fips": state[tu_hh], "eligible_units_direct": hw[tu_hh] * pos,
                          "eligible_sample_units": pos.astype(float)})
    by = frame.groupby("state_fips").sum()
    persons = pd.Series(hw[s.household_index["person"]]).groupby(
        state[s.household_index["person"]]).sum()
    by["persons"] = persons.reindex(by.index).fillna(0.0)
    missing = persons.index.difference(by.index)
    for fips in missing:
        by.loc[fips] = [0.0, 0.0, float(persons[fips])]
    return by.sort_index()


def simulate_eligible(dataset_path: str | os.PathLike, year: int = 2024
                      ) -> tuple[pd.DataFrame, dict]:
    """:func:`eligible_table` of the H5 at ``dataset_path``: one policyengine-us simulation with
    ``takes_up_aca_if_eligible`` True for every tax unit, each household in its own state and
    county. Returns (table, figures: eligible units, credit $ at full take-up, seconds)."""
    import time

    from .h5_dataset import read_dataset
    from .simulation import _as_plain, _microsimulation

    t0 = time.time()
    tables, _ = read_dataset(dataset_path)
    tables = dict(tables)
    tables[ENTITY] = tables[ENTITY].assign(**{INPUT: True})
    sim = _microsimulation(tables, year)
    credit = np.asarray(_as_plain(sim.calculate("aca_ptc", year, use_weights=False)), float)
    table = eligible_table(tables, credit)
    from .simulation import Structure

    s = Structure.from_tables(tables)
    hw = tables["household"]["household_weight"].to_numpy(dtype=float)[s.household_index[ENTITY]]
    figures = {"eligible_units": float(table["eligible_units_direct"].sum()),
               "eligible_credit_usd": float((hw * credit).sum()),
               "seconds": round(time.time() - t0, 1)}
    return table, figures


def calibrate(dataset_path: str | os.PathLike, published_path: str | os.PathLike,
              year: int = 2024, growth_path: str | os.PathLike | None = None
              ) -> tuple[StateTakeUp, pd.DataFrame, dict]:
    """Rates for ``dataset_path`` from ``published_path`` (:func:`simulate_eligible`,
    :func:`read_published_units` times :func:`read_enrolment_growth` of ``growth_path`` when
    given, :func:`derive_state_rates`): (the input's :class:`StateTakeUp`, the per-state table
    with ``soi_returns_2022`` and ``growth``, figures incl. the weighted national rate)."""
    soi = read_published_units(published_path)
    growth = (read_enrolment_growth(growth_path).reindex(soi.index) if growth_path is not None
              else pd.Series(1.0, index=soi.index))
    published = soi * growth
    eligible, figures = simulate_eligible(dataset_path, year)
    table = derive_state_rates(eligible, published)
    table.insert(1, "soi_returns_2022", soi.reindex(table.index).to_numpy())
    table.insert(2, "growth", growth.reindex(table.index).to_numpy())
    takeup = StateTakeUp(INPUT, ENTITY, tuple((int(f), float(r))
                                              for f, r in table["rate"].items()))
    figures["published_units"] = float(table["published_units"].sum())
    figures["national_rate"] = float((table["rate"] * table["eligible_units"]).sum()
                                     / table["eligible_units"].sum())
    figures["soi_returns_2022"] = float(soi.sum())
    figures["source"] = PUBLISHED_SOURCE + (" " + GROWTH_SOURCE if growth_path else "")
    return takeup, table, figures


def from_metadata(meta: Mapping) -> list[StateTakeUp]:
    """The :class:`StateTakeUp` inputs recorded in state-simulation or package metadata
    (``takeup_state_rates``: {input: {abbr: rate}}, ``takeup_state_entities``: {input:
    entity}); [] when none were."""
    rates = meta.get("takeup_state_rates") or {}
    entities = meta.get("takeup_state_entities") or {}
    missing = sorted(set(rates) - set(entities))
    if missing:
        raise AcaTakeUpError(f"metadata gives rates but no entity for {missing}")
    return [StateTakeUp.from_dict(i, entities[i], r) for i, r in sorted(rates.items())]


def rated_spec(spec, state_takeups):
    """``spec`` (a :class:`~calibration_core.simulation.TakeUp`) with the state rates of the
    :class:`StateTakeUp` of the same input, if any: a re-randomised input draws per clone
    against the same calibrated rates."""
    from dataclasses import replace

    for t in state_takeups:
        if t.input == spec.input:
            return replace(spec, rate=None, state_rates=t.as_dict())
    return spec
