"""Census ACS 1-year 2024 subject table S2201 (Food Stamps/SNAP): households, districts.

File ``acs_S2201_district_2024.json`` (Census API list of lists; GEO_ID ``5001900USssdd``; PR and
``ZZ`` dropped; at-large/DC -> district 01). Columns read:

* ``S2201_C03_001E`` households receiving SNAP in the past 12 months -> ``household_count``
  with domain ``snap > 0`` (survey count; it under-counts the FNS administrative totals);
* ``S2201_C01_001E`` all households -> ``household_count`` with no domain;
* ``S2201_C01_021E`` households below the poverty level in the past 12 months ->
  ``household_count`` with domain ``school_meal_fpg_ratio < 1`` (:data:`POVERTY_DOMAIN`).

Period 2024, 436 districts each. Districts only: no state or national S2201 file is cached.

The poverty approximation. ACS gives a household the official poverty status (OPM) of its
householder's family: the family's pre-tax money income (earnings, Social Security, SSI, cash
public assistance, pensions, interest, dividends, rents, unemployment and veterans' benefits,
child support ...; not capital gains, tax credits or non-cash benefits) against Census's
threshold for its size and number of children. policyengine-us 2.68.0 has no OPM flag: its
``in_poverty`` is the supplemental measure (taxes, benefits, expenses and SPM thresholds). The
closest variable is ``school_meal_fpg_ratio`` (SPM unit): ``school_meal_countable_income`` (the
gross cash income of 7 CFR 245.6: the OPM's sources but farm income and alimony) divided by
``spm_unit_fpg``, the HHS poverty guideline for the unit's size (2024: $15,060 + $5,380 per
further person in the 48 states and DC; Alaska $18,810 + $6,730, Hawaii $17,310 + $6,190:
policyengine-us ``gov.hhs.fpg``), which HHS derives from the previous year's Census
thresholds. Three differences remain: the guideline has one line per size where the thresholds
vary with the number of children and the householder's age; the SPM unit of the microdata is
the CPS family (``taxcalc_cps``: the file has no SPM unit id); and a household counts when any
of its members is in a unit below the line (package constraints qualify an entity through any
member), where ACS looks at the householder's family only. The national totals this gives
are measured in docs/methodology.md ("Targets and their sources"); the default target config
scores the family as a hold-out (``target_config.yaml``).
"""
from __future__ import annotations

from pathlib import Path

from . import EtlResult, SourceInfo, concat_targets, make_targets, raw_file
from .acs_age import read_acs_table

SOURCE = "Census ACS S2201"
PERIOD = 2024
FILE = "acs_S2201_district_2024.json"
SNAP_HOUSEHOLDS = "S2201_C03_001E"
ALL_HOUSEHOLDS = "S2201_C01_001E"
POVERTY_HOUSEHOLDS = "S2201_C01_021E"
SNAP_DOMAIN = (("snap", ">", "0"),)
#: households below the poverty level: a unit whose cash income is under the HHS guideline
POVERTY_DOMAIN = (("school_meal_fpg_ratio", "<", "1"),)


def extract(raw_dir: Path) -> EtlResult:
    path = raw_file(raw_dir, FILE)
    values = read_acs_table(path, "district", [ALL_HOUSEHOLDS, SNAP_HOUSEHOLDS,
                                                POVERTY_HOUSEHOLDS])
    frames = [
        make_targets(geo_level="district", geo_ids=values.index, variable="household_count",
                     values=values[SNAP_HOUSEHOLDS], period=PERIOD, unit="household",
                     source=SOURCE, source_file=FILE, domain=SNAP_DOMAIN,
                     notes=f"{SNAP_HOUSEHOLDS}: households receiving SNAP (ACS survey)"),
        make_targets(geo_level="district", geo_ids=values.index, variable="household_count",
                     values=values[ALL_HOUSEHOLDS], period=PERIOD, unit="household",
                     source=SOURCE, source_file=FILE,
                     notes=f"{ALL_HOUSEHOLDS}: all households"),
        make_targets(geo_level="district", geo_ids=values.index, variable="household_count",
                     values=values[POVERTY_HOUSEHOLDS], period=PERIOD, unit="household",
                     source=SOURCE, source_file=FILE, domain=POVERTY_DOMAIN,
                     notes=f"{POVERTY_HOUSEHOLDS}: households below the poverty level in the "
                           "past 12 months (ACS official measure; modelled as cash income "
                           "under the HHS poverty guideline)"),
    ]
    source = SourceInfo(SOURCE, FILE, "U.S. Census Bureau", "ACS 1-year 2024",
                        "S2201 Food Stamps/SNAP, 119th-Congress districts",
                        "https://api.census.gov/data/2024/acs/acs1/subject?get=group(S2201)")
    return EtlResult(concat_targets(frames), [source])
