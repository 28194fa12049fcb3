"""IRS SOI earned income tax credit by state, TY2022.

File ``eitc_state.csv``: a ``#`` comment line, then ``GEO_ID, Returns, Amount`` (SOI Historical
Table 2, 22in55cmcsv columns N59660 / A59660; Amount already converted to dollars). Targets per
state (51), under the filer stratum with domain ``eitc > 0``, period 2022:
``tax_unit_count`` = Returns, ``eitc`` = Amount.
"""
from __future__ import annotations

from pathlib import Path

from . import (
    STATE_FIPS_SET, EtlResult, SourceInfo, TargetsInputError, concat_targets, make_targets,
    numeric_columns, parse_state_geoid, raw_file, read_csv_table, require_columns,
    require_complete, require_unique,
)

SOURCE = "IRS SOI"
FILE = "eitc_state.csv"
PERIOD = 2022
EITC_DOMAIN = (("eitc", ">", "0"),)


def extract(raw_dir: Path) -> EtlResult:
    path = raw_file(raw_dir, FILE)
    frame = read_csv_table(path, "IRS SOI EITC by state: GEO_ID, Returns, Amount",
                           comment="#", dtype={"GEO_ID": str})
    require_columns(frame, ["GEO_ID", "Returns", "Amount"], FILE)
    frame["geo_id"] = parse_state_geoid(frame["GEO_ID"], FILE)
    frame = frame[frame["geo_id"] > 0]
    key = frame["GEO_ID"].rename("GEO_ID")
    require_unique(key, FILE)
    require_complete(frame["geo_id"], STATE_FIPS_SET, FILE, "state")
    values = numeric_columns(frame, ["Returns", "Amount"], FILE, key)
    values["geo_id"] = frame["geo_id"]
    values = values.sort_values("geo_id")
    frames = [
        make_targets(geo_level="state", geo_ids=values["geo_id"], variable="tax_unit_count",
                     values=values["Returns"], period=PERIOD, unit="tax_unit", source=SOURCE,
                     source_file=FILE, domain=EITC_DOMAIN, filer=True,
                     notes="returns with EITC (N59660), TY2022"),
        make_targets(geo_level="state", geo_ids=values["geo_id"], variable="eitc",
                     values=values["Amount"], period=PERIOD, unit="usd", source=SOURCE,
                     source_file=FILE, domain=EITC_DOMAIN, filer=True,
                     notes="EITC amount (A59660), TY2022, dollars"),
    ]
    source = SourceInfo(SOURCE, FILE, "Internal Revenue Service", "TY2022",
                        "earned income tax credit returns and amount by state (22in55cmcsv)",
                        "https://www.irs.gov/pub/irs-soi/22in55cmcsv.csv")
    return EtlResult(concat_targets([targets for targets in frames]), [source])
