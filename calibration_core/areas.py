"""The 488 area partitions: 51 states (incl. DC), 436 districts of the 119th Congress, NYC.

This is the single source of truth for area keys (``state-CA``, ``district-CA-12``, ``city-NYC``).
At-large states and DC's delegate are district ``01``. The district counts are those of the
119th Congress (ACS 2024 congressional-district list); ``targets_db`` checks the data agree.
"""
from __future__ import annotations

from dataclasses import dataclass

# (abbr, fips, name, districts in the 119th Congress)
STATES: tuple[tuple[str, int, str, int], ...] = (
    ("AL", 1, "Alabama", 7), ("AK", 2, "Alaska", 1), ("AZ", 4, "Arizona", 9),
    ("AR", 5, "Arkansas", 4), ("CA", 6, "California", 52), ("CO", 8, "Colorado", 8),
    ("CT", 9, "Connecticut", 5), ("DE", 10, "Delaware", 1), ("DC", 11, "District of Columbia", 1),
    ("FL", 12, "Florida", 28), ("GA", 13, "Georgia", 14), ("HI", 15, "Hawaii", 2),
    ("ID", 16, "Idaho", 2), ("IL", 17, "Illinois", 17), ("IN", 18, "Indiana", 9),
    ("IA", 19, "Iowa", 4), ("KS", 20, "Kansas", 4), ("KY", 21, "Kentucky", 6),
    ("LA", 22, "Louisiana", 6), ("ME", 23, "Maine", 2), ("MD", 24, "Maryland", 8),
    ("MA", 25, "Massachusetts", 9), ("MI", 26, "Michigan", 13), ("MN", 27, "Minnesota", 8),
    ("MS", 28, "Mississippi", 4), ("MO", 29, "Missouri", 8), ("MT", 30, "Montana", 2),
    ("NE", 31, "Nebraska", 3), ("NV", 32, "Nevada", 4), ("NH", 33, "New Hampshire", 2),
    ("NJ", 34, "New Jersey", 12), ("NM", 35, "New Mexico", 3), ("NY", 36, "New York", 26),
    ("NC", 37, "North Carolina", 14), ("ND", 38, "North Dakota", 1), ("OH", 39, "Ohio", 15),
    ("OK", 40, "Oklahoma", 5), ("OR", 41, "Oregon", 6), ("PA", 42, "Pennsylvania", 17),
    ("RI", 44, "Rhode Island", 2), ("SC", 45, "South Carolina", 7), ("SD", 46, "South Dakota", 1),
    ("TN", 47, "Tennessee", 9), ("TX", 48, "Texas", 38), ("UT", 49, "Utah", 4),
    ("VT", 50, "Vermont", 1), ("VA", 51, "Virginia", 11), ("WA", 53, "Washington", 10),
    ("WV", 54, "West Virginia", 2), ("WI", 55, "Wisconsin", 8), ("WY", 56, "Wyoming", 1),
)

STATE_FIPS: dict[str, int] = {abbr: fips for abbr, fips, _, _ in STATES}
STATE_ABBR: dict[int, str] = {fips: abbr for abbr, fips, _, _ in STATES}
STATE_NAME: dict[int, str] = {fips: name for _, fips, name, _ in STATES}
DISTRICT_COUNT: dict[str, int] = {abbr: n for abbr, _, _, n in STATES}

# NYC = its five counties (policyengine-us County enum names).
NYC_COUNTIES: tuple[str, ...] = (
    "BRONX_COUNTY_NY", "KINGS_COUNTY_NY", "NEW_YORK_COUNTY_NY", "QUEENS_COUNTY_NY",
    "RICHMOND_COUNTY_NY",
)
NYC_COUNTY_FIPS: tuple[str, ...] = ("36005", "36047", "36061", "36081", "36085")


def district_geoids() -> list[int]:
    """The 436 district GEOIDs as integers ``state_fips * 100 + district`` (at-large = 01)."""
    return [fips * 100 + d for abbr, fips, _, n in STATES for d in range(1, n + 1)]


def census_district_code(geoid: int) -> int:
    """Our GEOID (at-large ``01``) -> Census's (at-large ``00``, DC ``98``)."""
    state, district = divmod(int(geoid), 100)
    if state == 11:
        return state * 100 + 98
    if DISTRICT_COUNT[STATE_ABBR[state]] == 1:
        return state * 100
    return int(geoid)


def normalize_district_geoid(census_code: int) -> int:
    """Census district code (``SS00`` at-large, ``1198`` DC) -> our GEOID (``SS01``)."""
    state, district = divmod(int(census_code), 100)
    if district in (0, 98):
        district = 1
    return state * 100 + district


@dataclass(frozen=True)
class Area:
    key: str
    kind: str  # "state" | "district" | "city"
    state_fips: int | None
    district_geoid: int | None
    code: str  # "CA", "CA-12", "NYC"

    @property
    def relative_path(self) -> str:
        folder = {"state": "states", "district": "districts", "city": "cities"}[self.kind]
        return f"{folder}/{self.code}.h5"


def all_areas() -> list[Area]:
    areas = [Area(f"state-{a}", "state", f, None, a) for a, f, _, _ in STATES]
    areas += [
        Area(f"district-{a}-{d:02d}", "district", f, f * 100 + d, f"{a}-{d:02d}")
        for a, f, _, n in STATES
        for d in range(1, n + 1)
    ]
    areas.append(Area("city-NYC", "city", 36, None, "NYC"))
    return areas


def all_area_keys() -> list[str]:
    return [a.key for a in all_areas()]


def parse_area_key(key: str) -> Area:
    try:
        return _AREAS_BY_KEY[key]
    except KeyError:
        raise ValueError(
            f"unknown area key {key!r}: expected 'state-XX', 'district-XX-NN' or 'city-NYC' "
            "for one of the 488 areas"
        ) from None


_AREAS_BY_KEY: dict[str, Area] = {a.key: a for a in all_areas()}
assert len(_AREAS_BY_KEY) == 488, len(_AREAS_BY_KEY)
