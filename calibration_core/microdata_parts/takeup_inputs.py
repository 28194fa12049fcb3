"""Every policyengine-us take-up input, drawn once per base entity and written into the microdata.

policyengine-us 2.68.0 gates programs on boolean inputs whose default is "takes up" (True) or
"does not file" (False): 18 ``takes_up_*`` variables plus ``would_file_taxes_voluntarily`` and
``would_file_if_eligible_for_refundable_credit`` (:data:`TAKEUP_INPUTS`). A file that leaves one
out runs that program at 100 % take-up.

Two kinds of draw, one key scheme (``keyed_uniform("takeup.<input>", household_id, clone,
rank of the entity within its household)``, :func:`calibration_core.simulation.takeup_draws`):

* the inputs the calibration matrix re-randomises per clone (those of the fitted target
  variables: ``simulation.takeup_specs_for``) are forced True in the state simulations and redrawn
  per (household, clone) by the package and the area assembler - unchanged here;
* every input is also drawn here once per *base* entity with the clone key :data:`BASE_CLONE`
  (a clone index no clone has) and written into the stratified microdata as an ordinary input.
  The state simulations read these values, and the area assembler copies them into every file,
  so the take-ups the matrix does not re-randomise (SSI and TANF, which count as income for
  SNAP; Head Start; the ACA credit when ``aca_ptc`` is not fitted ...) are the same in the
  matrix and in every file: the X·w invariant stays exact whatever the target config, and which
  inputs a file carries no longer depends on it.

Rates (:data:`TAKEUP_INPUTS`, ``rate_source``): policyengine-us-data 1.115.4,
``policyengine_us_data/parameters/take_up/*.yaml`` (latest value with year <= 2024), the same
files the reference reads (spec §4.7). Inputs with no rate there are written with
policyengine-us's default value and listed as such (``rate is None``); see docs/data.md.
No policyengine-us import: this module works on the entity tables.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from ..io_utils import keyed_uniform

# clone key of the base draws: no clone has index -1, so they are independent of every per-clone
# draw the matrix and the area files make for the re-randomised inputs
BASE_CLONE = -1
_PUD = "policyengine-us-data 1.115.4 parameters/take_up/"


@dataclass(frozen=True)
class TakeUpInput:
    """One take-up input: name, entity, rate rule and where the rate comes from.

    rule: ``"flat"`` (``rate``), ``"medicaid_state"`` (state table of
    :data:`calibration_core.simulation.TAKEUP`), ``"eitc_children"``, ``"wic_age"``,
    ``"voluntary_filing"``, or ``"default"`` (no published rate: policyengine-us's default
    ``default`` written for every entity).
    """

    input: str
    entity: str
    rule: str
    rate: float | None = None
    default: bool = True
    rate_source: str = ""
    anchor: str = ""  # column (same entity) whose reported receipt > 0 forces take-up True


TAKEUP_INPUTS: tuple[TakeUpInput, ...] = (
    TakeUpInput("takes_up_snap_if_eligible", "spm_unit", "flat", 0.82, rate_source=_PUD + "snap.yaml"),
    TakeUpInput("takes_up_medicaid_if_eligible", "person", "medicaid_state",
                rate_source=_PUD + "medicaid.yaml (by state, 0.53-0.99)"),
    TakeUpInput("takes_up_aca_if_eligible", "tax_unit", "flat", 0.672, rate_source=_PUD + "aca.yaml"),
    TakeUpInput("takes_up_tanf_if_eligible", "spm_unit", "flat", 0.22, rate_source=_PUD + "tanf.yaml"),
    TakeUpInput("takes_up_ssi_if_eligible", "person", "flat", 0.50,
                rate_source=_PUD + "ssi.yaml; reported SSI recipients take up",
                anchor="ssi_reported"),
    TakeUpInput("takes_up_head_start_if_eligible", "person", "flat", 0.30,
                rate_source=_PUD + "head_start.yaml (2021-09-01)"),
    TakeUpInput("takes_up_early_head_start_if_eligible", "person", "flat", 0.09,
                rate_source=_PUD + "early_head_start.yaml"),
    TakeUpInput("takes_up_dc_ptc", "tax_unit", "flat", 0.32, rate_source=_PUD + "dc_ptc.yaml"),
    TakeUpInput("takes_up_eitc", "tax_unit", "eitc_children",
                rate_source=_PUD + "eitc.yaml (0 children 0.65, 1: 0.86, 2+: 0.85)"),
    TakeUpInput("takes_up_housing_assistance_if_eligible", "spm_unit", "flat", 0.28,
                rate_source=_PUD + "housing_assistance.yaml (2023)"),
    TakeUpInput("takes_up_wic_if_eligible", "person", "wic_age",
                rate_source=_PUD + "wic_takeup.yaml 2022 (infant 0.784, child 1-4 0.46, "
                "others 0.456 = pregnant)"),
    TakeUpInput("would_file_taxes_voluntarily", "tax_unit", "voluntary_filing", default=False,
                rate_source=_PUD + "voluntary_filing.yaml (children x wages x head 65+)"),
    # no rate in the raw inputs: policyengine-us's default, written explicitly
    TakeUpInput("takes_up_chip_if_eligible", "person", "default", rate_source="none: default True"),
    TakeUpInput("takes_up_medicare_if_eligible", "person", "default",
                rate_source="none: default True"),
    TakeUpInput("takes_up_medicare_part_d_if_eligible", "person", "default",
                rate_source="none: default True"),
    TakeUpInput("takes_up_basic_health_program_if_eligible", "person", "default",
                rate_source="none: default True"),
    TakeUpInput("takes_up_ca_premium_subsidy_if_eligible", "tax_unit", "default",
                rate_source="none: default True"),
    TakeUpInput("takes_up_co_premium_assistance_if_eligible", "tax_unit", "default",
                rate_source="none: default True"),
    TakeUpInput("takes_up_nm_premium_assistance_if_eligible", "tax_unit", "default",
                rate_source="none: default True"),
    TakeUpInput("would_file_if_eligible_for_refundable_credit", "tax_unit", "default",
                rate_source="none: default True"),
)
TAKEUP_INPUT_NAMES: tuple[str, ...] = tuple(t.input for t in TAKEUP_INPUTS)

_EITC_RATES = np.array([0.65, 0.86, 0.85, 0.85])  # by qualifying children 0, 1, 2, 3+
# voluntary filing [with children][wage band zero/low/medium/high][head 65+]
_VOLUNTARY = np.array([[[0.2, 0.05], [0.24, 0.04], [0.0, 0.0], [0.0, 0.005]],
                       [[0.5, 0.075], [0.6, 0.06], [0.0, 0.0], [0.025, 0.0037]]])


class TakeUpInputError(ValueError):
    """The tables lack a column a take-up rate needs."""


def _person_column(person: pd.DataFrame, name: str) -> np.ndarray:
    if name not in person.columns:
        raise TakeUpInputError(f"person table lacks {name!r}, needed for take-up rates")
    return person[name].to_numpy()


def _tax_unit_features(tables, structure) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per tax unit (dataset order): child dependants (< 19), head+spouse wages, head age."""
    person = tables["person"]
    idx = structure.person_index["tax_unit"]
    n = len(structure.ids["tax_unit"])
    age = _person_column(person, "age").astype(float)
    dep = person["is_tax_unit_dependent"].to_numpy().astype(bool) if (
        "is_tax_unit_dependent" in person.columns) else np.zeros(len(person), bool)
    head = person["is_tax_unit_head"].to_numpy().astype(bool) if (
        "is_tax_unit_head" in person.columns) else np.zeros(len(person), bool)
    wages = person["employment_income"].to_numpy(dtype=float) if (
        "employment_income" in person.columns) else np.zeros(len(person))
    children = np.bincount(idx, weights=(dep & (age < 19)).astype(float), minlength=n)
    earn = np.bincount(idx, weights=np.where(dep, 0.0, wages), minlength=n)
    head_age = np.zeros(n)
    head_age[idx[head]] = age[head]
    return children, earn, head_age


def takeup_rates(spec: TakeUpInput, tables: dict[str, pd.DataFrame], structure
                 ) -> np.ndarray:
    """Take-up probability per entity of ``spec.entity`` (dataset order), float (n_entity,).

    ``structure`` is :class:`calibration_core.simulation.Structure` of ``tables``; the state
    of an entity is its household's ``state_fips``.
    """
    from ..areas import STATE_ABBR
    from ..simulation import TAKEUP

    n = len(structure.ids[spec.entity])
    if spec.rule == "flat":
        return np.full(n, float(spec.rate))
    if spec.rule == "default":
        return np.full(n, 1.0 if spec.default else 0.0)
    if spec.rule == "medicaid_state":
        med = next(t for t in TAKEUP if t.input == spec.input)
        state = tables["household"]["state_fips"].to_numpy().astype(np.int64)
        unknown = sorted(set(state.tolist()) - set(STATE_ABBR))
        if unknown:
            raise TakeUpInputError(f"household state_fips {unknown} have no Medicaid rate")
        return med.rates(state[structure.household_index[spec.entity]])
    if spec.rule == "wic_age":
        age = _person_column(tables["person"], "age").astype(float)
        return np.where(age < 1, 0.784, np.where(age < 5, 0.46, 0.456))
    children, wages, head_age = _tax_unit_features(tables, structure)
    if spec.rule == "eitc_children":
        return _EITC_RATES[np.minimum(children, 3).astype(int)]
    if spec.rule == "voluntary_filing":
        band = np.searchsorted([0.0, 15_000.0, 30_000.0], wages, side="right")
        band = np.where(wages <= 0, 0, band)
        return _VOLUNTARY[(children > 0).astype(int), band, (head_age >= 65).astype(int)]
    raise TakeUpInputError(f"unknown take-up rule {spec.rule!r} for {spec.input}")


def add_takeup_inputs(tables: dict[str, pd.DataFrame]) -> tuple[dict[str, pd.DataFrame], dict]:
    """``tables`` with every input of :data:`TAKEUP_INPUTS` set: one bool per entity,
    ``keyed_uniform("takeup.<input>", household_id, BASE_CLONE, rank in household) < rate``.

    Existing columns of the same names (e.g. reported receipt flags of the CPS file) are
    replaced, so the values the state simulations read are the draws the files carry. An input
    with an ``anchor`` (SSI: ``ssi_reported``) is True for every entity reporting receipt, as
    the reference anchors reported recipients (spec §4.7); the others draw at the rate.
    Returns (new tables, info) where info maps each input to its weighted take-up share
    (household weights) and rate source. Raises :class:`TakeUpInputError` when a column a rate
    needs is missing. Deterministic: a pure function of the ids and the tables.
    """
    from ..simulation import Structure

    structure = Structure.from_tables(tables)
    out = {e: t.copy() for e, t in tables.items()}
    hh_weight = tables["household"]["household_weight"].to_numpy(dtype=float)
    info = {}
    for spec in TAKEUP_INPUTS:
        e = spec.entity
        hh_row = structure.household_index[e]
        hh_id = structure.ids["household"][hh_row]
        draw = keyed_uniform(f"takeup.{spec.input}", hh_id, BASE_CLONE, structure.rank[e])
        value = draw < takeup_rates(spec, tables, structure)
        if spec.anchor and spec.anchor in tables[e].columns:
            value |= tables[e][spec.anchor].to_numpy(dtype=float) > 0
        out[e][spec.input] = value
        w = hh_weight[hh_row]
        info[spec.input] = {"entity": e, "weighted_share": round(float(
            (w * value).sum() / max(w.sum(), 1e-300)), 4), "source": spec.rate_source}
    return out, info


def missing_takeup_inputs(tables: dict[str, pd.DataFrame]) -> list[str]:
    """The inputs of :data:`TAKEUP_INPUTS` absent from their entity's table (empty: complete)."""
    return [t.input for t in TAKEUP_INPUTS if t.input not in tables[t.entity].columns]
