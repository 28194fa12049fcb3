"""CMS Medicaid enrollment ETL on a small CSV in the data.medicaid.gov layout."""
from __future__ import annotations

import pandas as pd
import pytest

from calibration_core.etl import TargetsInputError, cms_medicaid
from tests.targets_fixtures import medicaid_value, write_medicaid

FILE = "medicaid_enrollment_2024.csv"


@pytest.fixture()
def raw(tmp_path):
    write_medicaid(tmp_path)
    return tmp_path


def test_final_december_enrollment_per_state(raw):
    t = cms_medicaid.extract(raw).targets
    assert len(t) == 51 and set(t["geo_level"]) == {"state"}
    assert set(t["domain"]) == {(("medicaid_enrolled", "==", "True"),)}
    values = t.set_index("geo_id")["value"]
    assert values[6] == medicaid_value(6) + 12  # final (Y) December row, not the preliminary
    # Rhode Island reports 0 for Dec 2024: the latest earlier non-zero final month is used
    assert values[44] == medicaid_value(44) + 11
    assert "202411" in t.set_index("geo_id").loc[44, "notes"]


def _edit(raw, fn):
    frame = pd.read_csv(raw / FILE)
    fn(frame).to_csv(raw / FILE, index=False)


def test_missing_column(raw):
    _edit(raw, lambda f: f.drop(columns=["Final Report"]))
    with pytest.raises(TargetsInputError, match=f"{FILE}: missing column.*Final Report"):
        cms_medicaid.extract(raw)


def test_unknown_state(raw):
    _edit(raw, lambda f: f.replace({"State Abbreviation": {"WY": "XX"}}))
    with pytest.raises(TargetsInputError, match=f"{FILE}: unknown state 'XX'"):
        cms_medicaid.extract(raw)


def test_negative_count(raw):
    def neg(f):
        f.loc[(f["State Abbreviation"] == "OH") & (f["Final Report"] == "Y"),
              "Total Medicaid Enrollment"] = -10
        return f
    _edit(raw, neg)
    with pytest.raises(TargetsInputError, match=f"{FILE}: state 'OH'.*negative count"):
        cms_medicaid.extract(raw)


def test_duplicated_final_row(raw):
    _edit(raw, lambda f: pd.concat([f, f[(f["State Abbreviation"] == "TX")
                                         & (f["Final Report"] == "Y")].head(1)]))
    with pytest.raises(TargetsInputError, match=f"{FILE}: duplicated final row for state 'TX', "
                                                "Reporting Period 202411"):
        cms_medicaid.extract(raw)
