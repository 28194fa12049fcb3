"""Accuracy tables from a validation report (calibration_core.accuracy) on a toy report."""
import pandas as pd
import pytest

from calibration_core import accuracy


def _report():
    rows = [
        # area, level, name, variable, domain, holdout, achievable, reason, target, sim, err
        ("state-AK", "state", "s2/age", "person_count", "age", False, True, "", 100, 140, 0.40),
        ("state-AK", "state", "s2/agi", "adjusted_gross_income", "adjusted_gross_income",
         False, True, "", 100, 101, 0.01),
        ("state-AK", "state", "s2/eitc", "eitc", "eitc", True, True, "", 100, 150, 0.50),
        ("district-CA-12", "district", "cd612/age85", "person_count", "age", False, True,
         "unreachable within B x initial weights", 100, 0, 1.0),
        ("district-CA-12", "district", "cd612/hh", "household_count", "", False, True, "",
         100, 110, 0.10),
        ("district-CA-12", "district", "cd612/never", "person_count", "age", False, False,
         "no non-zero entry", 100, 0, 1.0),
        ("city-NYC", "city", "nyc/age", "person_count", "age", False, True, "", 100, 200, 1.0),
    ]
    cols = ["area", "level", "target_name", "variable", "domain", "holdout", "achievable",
            "exclusion_reason", "target_value", "sim_value", "abs_rel_error"]
    df = pd.DataFrame(rows, columns=cols)
    df["geo_id"] = 0
    return df


def test_large_errors_in_sample_achievable_non_city_only():
    big = accuracy.large_errors(_report(), 0.25)
    # the hold-out EITC row, the unachievable row and the city row are left out
    assert list(big["target_name"]) == ["cd612/age85", "s2/age"]
    assert list(big["reason"]) == ["unreachable within B x initial weights", ""]
    assert list(big["family"]) == ["person_count/age", "person_count/age"]
    groups = accuracy.large_error_groups(_report(), 0.25)
    assert groups["rows"].tolist() == [1, 1] and groups["areas"].tolist() == [
        "district-CA-12", "state-AK"]


def test_family_means_split_samples_and_families():
    fam = accuracy.family_means(_report()).set_index(["level", "sample", "family"])
    assert fam.loc[("state", "hold-out", "eitc/eitc"), "mean"] == pytest.approx(0.5)
    assert fam.loc[("district", "in-sample", "household_count"), "rows"] == 1
    assert fam.loc[("district", "in-sample", "person_count/age"), "mean"] == pytest.approx(1.0)
    assert "city" not in fam.index.get_level_values("level")


def test_missing_column_names_file(tmp_path):
    path = tmp_path / "validation_results.csv"
    _report().drop(columns=["exclusion_reason"]).to_csv(path, index=False)
    with pytest.raises(accuracy.AccuracyInputError,
                       match=r"validation_results.csv: missing column\(s\) \['exclusion_reason'\]"):
        accuracy.read_results(path)
    _report().to_csv(path, index=False)
    assert accuracy.main([str(path)]) == 0


def test_level_summary_all_and_fitted_rows():
    table = accuracy.level_summary(_report()).set_index(["level", "sample", "rows"])
    # district in-sample: the unreachable row counts in "all", not in "fitted"
    all_rows = table.loc[("district", "in-sample", "all")]
    assert all_rows["targets"] == 2 and all_rows["mean"] == pytest.approx(0.55)
    assert all_rows["max"] == 1.0 and all_rows["within_10pct"] == pytest.approx(0.5)
    fitted = table.loc[("district", "in-sample", "fitted")]
    assert fitted["targets"] == 1 and fitted["mean"] == pytest.approx(0.10)
    state = table.loc[("state", "in-sample", "all")]
    assert state["median"] == pytest.approx(0.205) and state["p90"] == pytest.approx(0.361)
    # the hold-out has no "fitted" row; cities and unachievable rows are not scored
    assert ("state", "hold-out", "all") in table.index
    assert ("state", "hold-out", "fitted") not in table.index
    assert "city" not in table.index.get_level_values("level")
