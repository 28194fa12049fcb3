"""Census ACS 1-year 2024 subject table S2201 (Food Stamps/SNAP): households, districts.

File ``acs_S2201_district_2024.json`` (Census API list of lists; GEO_ID ``5001900USssdd``; PR and
``ZZ`` dropped; at-large/DC -> district 01). Columns read:

* ``S2201_C03_001E`` households receiving SNAP in the past 12 months -> ``household_count``
  with domain ``snap > 0`` (survey count; it under-counts the FNS administrative totals);
* ``S2201_C01_001E`` all households -> ``household_count`` with no domain.

Period 2024, 436 districts each. Districts only: no state or national S2201 file is cached.
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
SNAP_DOMAIN = (("snap", ">", "0"),)


def extract(raw_dir: Path) -> EtlResult:
    path = raw_file(raw_dir, FILE)
    values = read_acs_table(path, "district", [ALL_HOUSEHOLDS, SNAP_HOUSEHOLDS])
    frames = [
        make_targets(geo_level="district", geo_ids=values.index, variable="household_count",
                     values=values[SNAP_HOUSEHOLDS], period=PERIOD, unit="household",
                     source=SOURCE, source_file=FILE, domain=SNAP_DOMAIN,
                     notes=f"{SNAP_HOUSEHOLDS}: households receiving SNAP (ACS survey)"),
        make_targets(geo_level="district", geo_ids=values.index, variable="household_count",
                     values=values[ALL_HOUSEHOLDS], period=PERIOD, unit="household",
                     source=SOURCE, source_file=FILE,
                     notes=f"{ALL_HOUSEHOLDS}: all households"),
    ]
    source = SourceInfo(SOURCE, FILE, "U.S. Census Bureau", "ACS 1-year 2024",
                        "S2201 Food Stamps/SNAP, 119th-Congress districts",
                        "https://api.census.gov/data/2024/acs/acs1/subject?get=group(S2201)")
    return EtlResult(concat_targets(frames), [source])
