"""USDA FNS SNAP ETL on a small FY24.xlsx in a zip, laid out like the National Data Bank's."""
from __future__ import annotations

import zipfile

import pytest

from calibration_core.areas import STATES
from calibration_core.etl import TargetsInputError, fns_snap
from tests.targets_fixtures import fns_values, fns_workbook, write_fns_zip


def test_state_households_and_cost(tmp_path):
    write_fns_zip(tmp_path)
    t = fns_snap.extract(tmp_path).targets
    assert len(t) == 102 and set(t["geo_level"]) == {"state"}
    assert set(t["domain"]) == {(("snap", ">", "0"),)}
    hh = t[t.variable == "household_count"].set_index("geo_id")["value"]
    cost = t[t.variable == "snap"].set_index("geo_id")["value"]
    assert hh[6] == fns_values(6)[0] and cost[6] == fns_values(6)[1]
    assert set(t["period"]) == {2024}
    assert set(t.loc[t.variable == "snap", "unit"]) == {"usd"}


def test_missing_state_is_refused(tmp_path):
    states = [(n, f) for _, f, n, _ in STATES if n != "Wyoming"]
    write_fns_zip(tmp_path, fns_workbook(states))
    with pytest.raises(TargetsInputError, match=r"FY24.xlsx: no row for 1 state.*\[56\]"):
        fns_snap.extract(tmp_path)


def test_unknown_state_names_sheet_and_row(tmp_path):
    states = [(n, f) for _, f, n, _ in STATES] + [("Atlantis", 99)]
    write_fns_zip(tmp_path, fns_workbook(states))
    with pytest.raises(TargetsInputError, match=r"FY24.xlsx, sheet \w+, row \d+: unknown state "
                                                r"'Atlantis'"):
        fns_snap.extract(tmp_path)


def test_duplicated_state_is_refused(tmp_path):
    states = [(n, f) for _, f, n, _ in STATES] + [("Texas", 48)]
    write_fns_zip(tmp_path, fns_workbook(states))
    with pytest.raises(TargetsInputError, match="duplicated row for state 'Texas'"):
        fns_snap.extract(tmp_path)


def test_negative_households_is_refused(tmp_path):
    # rewrite the first Total row of sheet SERO with a negative household count
    import io

    import openpyxl

    book = openpyxl.load_workbook(io.BytesIO(fns_workbook()))
    ws = book["SERO"]
    for row in ws.iter_rows():
        if row[0].value == "Total":
            row[1].value = -3
            break
    buf = io.BytesIO()
    book.save(buf)
    write_fns_zip(tmp_path, buf.getvalue())
    with pytest.raises(TargetsInputError, match=r"sheet SERO, state '\w+.*': negative count "
                                                r"households"):
        fns_snap.extract(tmp_path)


def test_missing_member_and_bad_layout(tmp_path):
    with zipfile.ZipFile(tmp_path / "snap_fy69tocurrent.zip", "w") as zf:
        zf.writestr("FY23.xlsx", b"x")
    with pytest.raises(TargetsInputError, match="member FY24.xlsx is missing"):
        fns_snap.extract(tmp_path)
    import io

    import openpyxl

    book = openpyxl.load_workbook(io.BytesIO(fns_workbook()))
    book["MWRO"]["D6"] = "Benefits"  # the Cost column header moved
    buf = io.BytesIO()
    book.save(buf)
    write_fns_zip(tmp_path, buf.getvalue())
    with pytest.raises(TargetsInputError, match="sheet MWRO: missing column header"):
        fns_snap.extract(tmp_path)
