"""The area partitions: 51 states (incl. DC), 436 districts of the 119th Congress, and the
cities of the city catalog (NYC first; 489 with the default catalog).

This is the single source of truth for area keys (``state-CA``, ``district-CA-12``,
``city-NYC``). At-large states and DC's delegate are district ``01``. The district counts are
those of the 119th Congress (ACS 2024 congressional-district list); ``targets_db`` checks the
data agree.

Cities are data, not code: ``cities.csv`` next to this module (or the file named by the
``AREACAL_CITY_CATALOG`` environment variable) lists ``code, name, state_fips, county_fips``,
one row per county of a city; a city file holds the clone-households drawn into its counties.
Adding a city is adding its rows (see the README).
"""
from __future__ import annotations

import csv
import os
import re
from dataclasses import dataclass
from pathlib import Path

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


DEFAULT_CITY_CATALOG = Path(__file__).with_name("cities.csv")
CITY_CATALOG_ENV = "AREACAL_CITY_CATALOG"


class CityCatalogError(ValueError):
    """The city catalog file is missing or malformed."""


@dataclass(frozen=True)
class City:
    code: str  # "NYC": key city-NYC, file cities/NYC.h5
    name: str
    state_fips: int
    county_fips: tuple[str, ...]  # 5-digit FIPS strings, ascending


def city_catalog_path() -> Path:
    """``$AREACAL_CITY_CATALOG`` if set, else the catalog shipped with the package."""
    return Path(os.environ.get(CITY_CATALOG_ENV) or DEFAULT_CITY_CATALOG)


def load_city_catalog(path: str | os.PathLike | None = None) -> list[City]:
    """Cities of a catalog CSV (columns ``code, name, state_fips, county_fips``; one row per
    county), in file order of first appearance. Raises :class:`CityCatalogError` naming the
    file and row for a missing column, a code that is not 2-8 capital letters or digits, a
    county that is not 5 digits of its state, a city in two states or with two names, a county
    in two cities, or an empty catalog."""
    path = Path(path) if path is not None else city_catalog_path()
    if not path.is_file():
        raise CityCatalogError(f"city catalog {path} does not exist")
    with open(path, newline="") as handle:
        rows = list(csv.DictReader(handle))
    need = {"code", "name", "state_fips", "county_fips"}
    if not rows or not need <= set(rows[0]):
        raise CityCatalogError(f"{path}: expected columns {sorted(need)} and at least one row")
    cities: dict[str, dict] = {}
    owner: dict[str, str] = {}
    for i, row in enumerate(rows, start=2):
        code, name = row["code"].strip(), row["name"].strip()
        county = row["county_fips"].strip()
        if not re.fullmatch(r"[A-Z0-9]{2,8}", code):
            raise CityCatalogError(f"{path} row {i}: code {code!r}; expected 2-8 capital "
                                   "letters or digits (the key is city-<code>)")
        try:
            state = int(row["state_fips"])
        except ValueError:
            raise CityCatalogError(f"{path} row {i}: state_fips {row['state_fips']!r} is not "
                                   "a number") from None
        if state not in STATE_ABBR:
            raise CityCatalogError(f"{path} row {i}: state_fips {state} is not one of the 51")
        if not re.fullmatch(r"\d{5}", county) or int(county[:2]) != state:
            raise CityCatalogError(f"{path} row {i}: county_fips {county!r}; expected 5 digits "
                                   f"starting with the state's {state:02d}")
        if county in owner and owner[county] != code:
            raise CityCatalogError(f"{path} row {i}: county {county} is already in city "
                                   f"{owner[county]}")
        owner[county] = code
        entry = cities.setdefault(code, {"name": name, "state": state, "counties": set()})
        if entry["name"] != name or entry["state"] != state:
            raise CityCatalogError(f"{path} row {i}: city {code} has another name or state "
                                   "in an earlier row")
        entry["counties"].add(county)
    return [City(c, e["name"], e["state"], tuple(sorted(e["counties"])))
            for c, e in cities.items()]


@dataclass(frozen=True)
class Area:
    key: str
    kind: str  # "state" | "district" | "city"
    state_fips: int | None
    district_geoid: int | None
    code: str  # "CA", "CA-12", "NYC"
    counties: tuple[str, ...] = ()  # a city's county FIPS (from the catalog)

    @property
    def relative_path(self) -> str:
        folder = {"state": "states", "district": "districts", "city": "cities"}[self.kind]
        return f"{folder}/{self.code}.h5"


def all_areas(catalog: str | os.PathLike | None = None) -> list[Area]:
    """States, districts, then the cities of the catalog (:func:`load_city_catalog`)."""
    areas = [Area(f"state-{a}", "state", f, None, a) for a, f, _, _ in STATES]
    areas += [
        Area(f"district-{a}-{d:02d}", "district", f, f * 100 + d, f"{a}-{d:02d}")
        for a, f, _, n in STATES
        for d in range(1, n + 1)
    ]
    areas += [Area(f"city-{c.code}", "city", c.state_fips, None, c.code, c.county_fips)
              for c in load_city_catalog(catalog)]
    return areas


def all_area_keys() -> list[str]:
    return [a.key for a in all_areas()]


def parse_area_key(key: str) -> Area:
    try:
        return _AREAS_BY_KEY[key]
    except KeyError:
        raise ValueError(
            f"unknown area key {key!r}: expected 'state-XX', 'district-XX-NN' or 'city-XXX' "
            f"(a city of {city_catalog_path()}) for one of the {len(_AREAS_BY_KEY)} areas"
        ) from None


_AREAS_BY_KEY: dict[str, Area] = {a.key: a for a in all_areas()}
assert len(_AREAS_BY_KEY) == 51 + 436 + len(load_city_catalog()), len(_AREAS_BY_KEY)
