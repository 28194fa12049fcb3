from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from calibration_core.h5_dataset import DatasetError, read_dataset, write_dataset


def _tables(n_households: int = 3) -> dict[str, pd.DataFrame]:
    hh = np.arange(1, n_households + 1)
    person_hh = np.repeat(hh, 2)
    n = len(person_hh)
    return {
        "person": pd.DataFrame({
            "person_id": np.arange(1, n + 1), "person_household_id": person_hh,
            "person_tax_unit_id": person_hh, "person_spm_unit_id": person_hh,
            "person_family_id": person_hh, "person_marital_unit_id": person_hh,
            "age": np.linspace(1, 80, n), "is_male": np.arange(n) % 2 == 0,
            "employment_income": np.arange(n) * 1000.0,
        }),
        "household": pd.DataFrame({
            "household_id": hh, "state_fips": np.full(n_households, 6, dtype=np.int32),
            "county_fips": ["06037"] * n_households, "household_weight": np.ones(n_households),
        }),
        "tax_unit": pd.DataFrame({"tax_unit_id": hh}),
        "spm_unit": pd.DataFrame({"spm_unit_id": hh}),
        "family": pd.DataFrame({"family_id": hh}),
        "marital_unit": pd.DataFrame({"marital_unit_id": hh}),
    }


def test_round_trip_and_time_period_layout(tmp_path):
    import h5py

    tables = _tables()
    path = write_dataset(tmp_path / "d.h5", tables, 2024)
    with h5py.File(path, "r") as f:
        assert list(f["age"].keys()) == ["2024"]
        assert f["county_fips/2024"].dtype == np.dtype("S5")
        assert f["household_id"].attrs["entity"] == b"household"
    back, year = read_dataset(path)
    assert year == 2024
    for entity, df in tables.items():
        pd.testing.assert_frame_equal(back[entity][df.columns], df, check_dtype=False)
    assert back["household"]["county_fips"].tolist() == ["06037"] * 3


def test_equal_tables_give_identical_bytes(tmp_path):
    # long arrays are compressed: cover both the compressed and the contiguous path
    tables = _tables(3000)
    a = write_dataset(tmp_path / "a.h5", tables, 2024)
    b = write_dataset(tmp_path / "b.h5", {k: v.copy() for k, v in tables.items()}, 2024)
    assert a.read_bytes() == b.read_bytes()
    tables["person"].loc[0, "age"] += 1
    c = write_dataset(tmp_path / "c.h5", tables, 2024)
    assert c.read_bytes() != a.read_bytes()


@pytest.mark.parametrize("mutate, message", [
    (lambda t: t.pop("marital_unit"), "marital_unit"),
    (lambda t: t["tax_unit"].__setitem__("tax_unit_id", [1, 1, 2]), "duplicate"),
    (lambda t: t["person"].__setitem__("person_spm_unit_id", 99), "person_spm_unit_id"),
    (lambda t: t.__setitem__("person", t["person"].drop(columns="person_family_id")),
     "person_family_id"),
    (lambda t: t["person"].__setitem__("age", np.nan), "age"),
])
def test_invalid_tables_fail_and_keep_previous_file(tmp_path, mutate, message):
    path = write_dataset(tmp_path / "d.h5", _tables(), 2024)
    before = path.read_bytes()
    bad = _tables()
    mutate(bad)
    with pytest.raises(DatasetError, match=message):
        write_dataset(path, bad, 2024)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["d.h5"]  # no temporary file left
