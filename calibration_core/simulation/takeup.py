"""Take-up (spec §4.7): the rates, and the per-clone decisions drawn from stable keys
(``keyed_uniform("takeup.<input>", household_id, clone, entity_rank)``) that the package and
the area files share."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

import numpy as np

from ..areas import STATE_ABBR
from ..io_utils import keyed_uniform


# --------------------------------------------------------------------------------------------
# take-up (rates: policyengine-us-data 1.115.4, policyengine_us_data/parameters/take_up/*.yaml)

_MEDICAID_RATES = {
    "AK": 0.88, "AL": 0.92, "AR": 0.79, "AZ": 0.95, "CA": 0.78, "CO": 0.99, "CT": 0.89,
    "DC": 0.99, "DE": 0.86, "FL": 0.98, "GA": 0.73, "HI": 0.88, "IA": 0.84, "ID": 0.78,
    "IL": 0.85, "IN": 0.99, "KS": 0.92, "KY": 0.87, "LA": 0.79, "MA": 0.94, "MD": 0.95,
    "ME": 0.92, "MI": 0.91, "MN": 0.89, "MO": 0.89, "MS": 0.75, "MT": 0.83, "NC": 0.94,
    "ND": 0.91, "NE": 0.79, "NH": 0.84, "NJ": 0.74, "NM": 0.84, "NV": 0.93, "NY": 0.86,
    "OH": 0.82, "OK": 0.77, "OR": 0.92, "PA": 0.64, "RI": 0.94, "SC": 0.93, "SD": 0.88,
    "TN": 0.92, "TX": 0.76, "UT": 0.53, "VA": 0.82, "VT": 0.93, "WA": 0.98, "WI": 0.91,
    "WV": 0.83, "WY": 0.70,
}


@dataclass(frozen=True)
class TakeUp:
    """A take-up input (bool, at ``entity``) gating ``variables`` (at the same entity)."""

    input: str
    entity: str
    variables: tuple[str, ...]
    rate: float | None = None  # national rate
    state_rates: dict | None = None  # state abbr -> rate

    def rates(self, state_fips: np.ndarray) -> np.ndarray:
        """Take-up rate for each element of ``state_fips`` (any shape)."""
        state_fips = np.asarray(state_fips, dtype=np.int64)
        if self.state_rates is None:
            return np.full(state_fips.shape, float(self.rate))
        table = np.zeros(max(STATE_ABBR) + 1)
        for fips, abbr in STATE_ABBR.items():
            table[fips] = self.state_rates[abbr]
        return table[state_fips]


TAKEUP: tuple[TakeUp, ...] = (
    TakeUp("takes_up_snap_if_eligible", "spm_unit", ("snap",), rate=0.82),
    TakeUp("takes_up_medicaid_if_eligible", "person", ("medicaid_enrolled", "medicaid"),
           state_rates=_MEDICAID_RATES),
    TakeUp("takes_up_aca_if_eligible", "tax_unit", ("aca_ptc",), rate=0.672),
    TakeUp("takes_up_tanf_if_eligible", "spm_unit", ("tanf",), rate=0.22),
    TakeUp("takes_up_ssi_if_eligible", "person", ("ssi",), rate=0.50),
    TakeUp("takes_up_head_start_if_eligible", "person", ("head_start",), rate=0.30),
    TakeUp("takes_up_early_head_start_if_eligible", "person", ("early_head_start",), rate=0.09),
    TakeUp("takes_up_dc_ptc", "tax_unit", ("dc_property_tax_credit",), rate=0.32),
)


def takeup_specs_for(variables: Iterable[str]) -> list[TakeUp]:
    """The take-up specs that gate any of ``variables``."""
    wanted = set(variables)
    return [spec for spec in TAKEUP if wanted & set(spec.variables)]


def takeup_draws(takeup_input: str, household_id, clone_index, entity_rank) -> np.ndarray:
    """Uniform [0, 1) draw per entity: ``keyed_uniform("takeup.<input>", household_id, clone,
    rank of the entity within its household)``; arguments broadcast (any shapes)."""
    return keyed_uniform(f"takeup.{takeup_input}", household_id, clone_index, entity_rank)


def takeup_decisions(spec: TakeUp, household_id, clone_index, entity_rank,
                     state_fips) -> np.ndarray:
    """Bool take-up decision per entity: ``draw < rate(state)``; arguments broadcast.

    The matrix builder and the area builder both call this, so an area file's take-up inputs
    reproduce the values the matrix was built from.
    """
    draws = takeup_draws(spec.input, household_id, clone_index, entity_rank)
    return draws < spec.rates(state_fips)


