"""IRS SOI ETLs: state AGI bands, national Table 1.1, the optional district file, EITC."""
from __future__ import annotations

import pandas as pd
import pytest

from calibration_core.etl import TargetsInputError, irs_eitc, irs_soi
from tests.targets_fixtures import (
    STATE_FIPS, agi_state_frame, incd_frame, soi_targets_frame, write_eitc,
)


@pytest.fixture()
def raw(tmp_path):
    agi_state_frame().to_csv(tmp_path / "agi_state.csv", index=False)
    soi_targets_frame().to_csv(tmp_path / "soi_targets.csv", index=False)
    write_eitc(tmp_path)
    return tmp_path


def test_state_and_national_agi_bands(raw):
    t = irs_soi.extract(raw).targets
    assert t["filer"].all()
    state = t[t.geo_level == "state"]
    assert len(state) == 51 * 10 * 2 and set(state["period"]) == {2022}
    nat = t[t.geo_level == "national"]
    # 19 published bands summed into the 10 state bands, for TY2022 and TY2023, count + amount
    assert len(nat) == 10 * 2 * 2 and set(nat["period"]) == {2022, 2023}
    assert set(nat["domain"]) == set(state["domain"])
    top = (("adjusted_gross_income", ">=", "1000000"),)
    low = (("adjusted_gross_income", "<", "1"),)
    assert top in set(state["domain"]) and low in set(state["domain"])
    n22 = nat[(nat.period == 2022) & (nat.variable == "tax_unit_count")]
    # fine bands 15..19 (1M+) are 15+16+17+18+19 thousand returns in the fixture
    assert n22.set_index(n22["domain"].map(str)).loc[str(top), "value"] == 85_000
    assert n22["value"].sum() == sum(range(1, 20)) * 1000


def test_national_bands_must_match_published_total(raw):
    f = soi_targets_frame()
    f.loc[(f.Year == 2023) & (f["Full population"]) & (~f["Taxable only"])
          & (f["SOI table"] == "Table 1.1") & (f.Variable == "count"), "Value"] += 5
    f.to_csv(raw / "soi_targets.csv", index=False)
    with pytest.raises(TargetsInputError, match="soi_targets.csv: tax year 2023 count: bands sum"):
        irs_soi.extract(raw)


def test_state_file_errors(raw):
    f = agi_state_frame()
    pd.concat([f, f.iloc[[7]]]).to_csv(raw / "agi_state.csv", index=False)
    with pytest.raises(TargetsInputError, match=r"agi_state.csv: duplicated row for "
                                                r"0400000US01 AGI \[25000.0, 50000.0\) IS_COUNT=0"):
        irs_soi.extract(raw)
    f2 = f.copy()
    f2.loc[4, "VALUE"] = -1  # a count row (IS_COUNT=1)
    f2.to_csv(raw / "agi_state.csv", index=False)
    with pytest.raises(TargetsInputError, match="agi_state.csv: 0400000US01 .*negative count"):
        irs_soi.extract(raw)
    f.drop(columns=["IS_COUNT"]).to_csv(raw / "agi_state.csv", index=False)
    with pytest.raises(TargetsInputError, match=r"agi_state.csv: missing column.*IS_COUNT"):
        irs_soi.extract(raw)


def test_district_file_used_when_present(raw):
    incd_frame().to_csv(raw / "22incd.csv", index=False)
    t = irs_soi.extract(raw).targets
    d = t[t.geo_level == "district"]
    assert len(d) == 436 * 9 * 2 and not d["modelled"].any()
    # at-large states come as CONG_DISTRICT 0 -> district 01; state total rows are dropped
    assert {201, 1101, 5601} <= set(d["geo_id"]) and d["geo_id"].max() < 5700
    counts = d[d.variable == "tax_unit_count"].set_index("geo_id")
    stub3 = counts[counts["domain"] == (("adjusted_gross_income", "<", "25000"),
                                        ("adjusted_gross_income", ">=", "10000"))]
    assert stub3.loc[612, "value"] == 300 + 12
    amounts = d[d.variable == "adjusted_gross_income"]
    assert amounts["value"].max() == 50.0 * 9 * 1000  # thousands -> dollars


def test_district_file_duplicate_and_unknown_state(raw):
    f = incd_frame()
    pd.concat([f, f.iloc[[3]]]).to_csv(raw / "22incd.csv", index=False)
    with pytest.raises(TargetsInputError, match="22incd.csv: duplicated row for STATEFIPS 1 "
                                                "CONG_DISTRICT 4 agi_stub 1"):
        irs_soi.extract(raw)
    f.loc[5, "STATEFIPS"] = 3
    f.to_csv(raw / "22incd.csv", index=False)
    with pytest.raises(TargetsInputError, match="22incd.csv: STATEFIPS 3 .*unknown STATEFIPS"):
        irs_soi.extract(raw)


def test_eitc_by_state(raw):
    t = irs_eitc.extract(raw).targets
    assert len(t) == 102 and t["filer"].all()
    assert set(t["domain"]) == {(("eitc", ">", "0"),)}
    assert t[t.variable == "tax_unit_count"].set_index("geo_id").loc[6, "value"] == 5006


def test_eitc_bad_rows(raw):
    frame = pd.DataFrame({"GEO_ID": [f"0400000US{f:02d}" for f in STATE_FIPS],
                          "Returns": [10] * 51, "Amount": [5.0] * 51})
    write_eitc(raw, pd.concat([frame, frame.iloc[[2]]]))
    with pytest.raises(TargetsInputError, match="eitc_state.csv: duplicated row for GEO_ID "
                                                "'0400000US04'"):
        irs_eitc.extract(raw)
    frame.loc[0, "Returns"] = -1
    write_eitc(raw, frame)
    with pytest.raises(TargetsInputError, match="eitc_state.csv: GEO_ID '0400000US01', column "
                                                "Returns: negative count"):
        irs_eitc.extract(raw)
    write_eitc(raw, frame.drop(columns=["Amount"]))
    with pytest.raises(TargetsInputError, match=r"eitc_state.csv: missing column.*Amount"):
        irs_eitc.extract(raw)


def test_old_congress_district_file_is_remapped_and_flagged_modelled(raw):
    from tests.targets_fixtures import DISTRICTS

    f = incd_frame()
    extra = f[(f.STATEFIPS == 6) & (f.CONG_DISTRICT == 52)].assign(CONG_DISTRICT=53)
    pd.concat([f, extra]).to_csv(raw / "22incd.csv", index=False)  # CA with 53 old districts
    code = [f"5001800US{g:04d}" for g in DISTRICTS]
    xw = pd.DataFrame({"code_old": code + ["5001800US0653", "5001800US0653"],
                       "code_new": code + ["5001800US0652", "5001800US0651"],
                       "proportion": [1.0] * len(code) + [0.25, 0.75]})
    xw.to_csv(raw / "district_mapping.csv", index=False)
    d = irs_soi.extract(raw).targets.query("geo_level == 'district'")
    assert len(d) == 436 * 9 * 2 and d["modelled"].all()
    n = d[d.variable == "tax_unit_count"]
    stub2 = n[n["domain"] == (("adjusted_gross_income", "<", "10000"),
                              ("adjusted_gross_income", ">=", "1"))].set_index("geo_id")["value"]
    assert stub2[652] == pytest.approx((200 + 52) * 1.25)
    assert stub2[651] == pytest.approx(200 + 51 + 0.75 * (200 + 52))
    # the population-share crosswalk keeps the national total of the old districts
    assert stub2.sum() == pytest.approx(sum(200 + g % 100 for g in DISTRICTS) + 200 + 52)
