"""Constants of the state simulations: the simulated year, entities, the geography roots that
make a variable state- or county-dependent, the chunk and probe sizes, and the error raised
for bad inputs."""

from __future__ import annotations

from ..areas import STATES


YEAR = 2024
ENTITIES = ("person", "household", "tax_unit", "spm_unit", "family", "marital_unit")
COUNT_VARIABLES = {"person_count": "person", "household_count": "household",
                   "tax_unit_count": "tax_unit", "spm_unit_count": "spm_unit",
                   "family_count": "family", "marital_unit_count": "marital_unit"}
GEO_CONSTRAINT_VARIABLES = frozenset({"state_fips", "congressional_district_geoid", "ucgid_str",
                                      "county_fips", "county"})
# inputs whose change moves a household; everything computed from them depends on the state
GEO_ROOTS = frozenset({"state_fips", "county_fips", "county", "state_code", "state_code_str",
                       "state_name", "zip_code", "in_nyc", "county_str", "state_group",
                       "congressional_district_geoid"})
# inputs that differ between counties of one state: a formula reading one of them directly is a
# *county reader*; the values of the county readers the targets reach define the county classes
COUNTY_ROOTS = frozenset({"county_fips", "county", "county_str", "in_nyc", "zip_code",
                          "three_digit_zip_code", "congressional_district_geoid",
                          "block_geoid", "tract_geoid", "cbsa_code", "place_fips", "puma",
                          "zcta", "sldu", "sldl", "vtd"})
ALL_STATES = "*"
STATE_ORDER: tuple[int, ...] = tuple(sorted(fips for _, fips, _, _ in STATES))
# Households per stacked simulation: a memory bound (about 90 kB per household: a 51-state stack
# of 1,000 households held 4.5 GB). Since each state's own rules run on its rows only
# (StateRouter), a larger stack no longer costs more per state, and the per-simulation start is
# shared: bench/bench_state_simulations.py --compare-unrouted, 2 workers, 1,000 households, 51
# states: 96 s with 26,000 against 154 s unrouted with 6,000 (that setting's optimum); 3,000:
# 151 s against 258 s (the unrouted path still answered weighted then). 40,000 was slower at
# 3,000 households (156-161 s against 150-153 s).
DEFAULT_CHUNK_HOUSEHOLDS = 26_000
# Probe households placed in every county to find the county classes (probe_county_classes):
# 12 x 3,106 counties of the demo build ran in 44 s traced and split 19 states (72 copies)
DEFAULT_PROBE_HOUSEHOLDS = 12
# County-dependent values no handful of probes can class: HUD's housing assistance payment
# (fair market rents and income limits of each county or metro area) enters SNAP's shelter
# deduction. With county classes the state simulations compute it at each class's county and
# the area files carry that value as an input (assembly), so SNAP in the files equals the
# matrix's; without it, 6 of 11,109 in-sample demo rows missed X.w by 0.5-1.65% (state SNAP).
# The probe holds them at 0 (an input): classes need not follow fair market rents (probes with
# housing assistance split one 3,000-household sample into 543 classes).
FROZEN_AT_CLASS: dict[str, str] = {"housing_assistance": "spm_unit"}  # variable -> entity


class SimulationError(ValueError):
    """Inputs to the state simulations are missing or inconsistent."""


