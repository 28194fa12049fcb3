"""engine_speedups: the fast vector-keyed parameter lookup gives exactly what policyengine-core
gives (values, dtypes, nodes, errors) for the key kinds policyengine-us formulas use; so do the
enum decoding table, the ABAWD waiver helper computed on distinct rows and SSI's unique rows.
Slow: needs policyengine-us (except the tests of ``on_distinct_rows`` and ``unique_rows`` on
inputs of our own)."""
from __future__ import annotations

import numpy as np
import pytest

from calibration_core import engine_speedups

slow = pytest.mark.slow
STATES = np.array(["CA", "NY", "TX", "AK", "HI", "DC", "CA", "CA", "NY", "AK"] * 7, dtype=object)
INSTALLED = ["in_listed_abawd_waiver_area", "ssi_resources_deemed_from_ineligible_parent"]


@pytest.fixture(scope="module")
def parameters():
    from policyengine_us.system import system

    engine_speedups.install()
    return system.parameters("2024-06-01")


def stock(node, key):
    return engine_speedups._STOCK["vectorial_getitem"](node, key)


def vectorial(node):
    """The node's vectorial form: a lookup by a key array goes through it."""
    from policyengine_core.parameters.vectorial_parameter_node_at_instant import (
        VectorialParameterNodeAtInstant,
    )

    return VectorialParameterNodeAtInstant.build_from_node(node)


@pytest.fixture()
def shortcuts(monkeypatch):
    """Counts the lookups the shortcut served (a test of equality must exercise it)."""
    served = []
    expand = engine_speedups._expand

    def counting(result, codes):
        served.append(len(codes))
        return expand(result, codes)

    monkeypatch.setattr(engine_speedups, "_expand", counting)
    return served


def assert_same(got, want):
    if hasattr(want, "vector"):
        assert type(got) is type(want)
        assert got.vector.dtype == want.vector.dtype
        for name in want.vector.dtype.names:
            np.testing.assert_array_equal(got.vector[name], want.vector[name])
    else:
        assert got.dtype == want.dtype
        np.testing.assert_array_equal(got, want)


@slow
def test_installed_with_our_simulation_classes():
    from calibration_core import simulation as simu

    simu._simulation_classes()
    assert engine_speedups.installed()
    assert engine_speedups.formula_speedups_installed() == INSTALLED
    with engine_speedups.stock_engine():
        assert not engine_speedups.installed()
        assert engine_speedups.formula_speedups_installed() == []
    assert engine_speedups.installed()
    assert engine_speedups.formula_speedups_installed() == INSTALLED


@slow
@pytest.mark.parametrize("as_kind", ["object", "unicode"])
def test_state_keys_give_the_stock_values(parameters, as_kind, shortcuts):
    fpg = vectorial(parameters.gov.hhs.fpg.first_person)
    groups = np.where(np.isin(STATES, ["AK", "HI"]), STATES, "CONTIGUOUS_US")
    key = groups.astype(object if as_kind == "object" else str)
    assert_same(fpg[key], stock(fpg, key))
    assert len(np.unique(fpg[key])) == 3  # the three guideline groups differ
    assert shortcuts == [len(key)] * 2


@slow
def test_a_lookup_of_the_rows_it_made_gives_the_stock_values(parameters, shortcuts):
    # p.standard[state_group][household_size], as snap_standard_deduction reads it
    standard = vectorial(parameters.gov.usda.snap.income.deductions.standard)
    groups = np.array(["CONTIGUOUS_US", "AK", "HI", "GU", "VI"] * 14, dtype=object)
    sizes = np.resize(np.arange(1, 7, dtype=np.int32), len(groups))
    first = standard[groups]
    assert_same(first, stock(standard, groups))
    assert first.__dict__.get("_expanded_from") is not None  # the second lookup is compressed
    got, want = first[sizes], stock(stock(standard, groups), sizes)
    assert_same(got, want)
    assert len(np.unique(got)) > 5
    assert shortcuts == [len(groups)] * 2


@slow
def test_integer_keys(parameters, shortcuts):
    sizes = vectorial(parameters.gov.usda.snap.max_allotment.main.CONTIGUOUS_US)
    key = np.resize(np.arange(1, 9), 50)
    assert_same(sizes[key], stock(sizes, key))
    assert_same(sizes[key.astype(np.int32)], stock(sizes, key.astype(np.int32)))
    assert shortcuts == [50, 50]


@slow
def test_an_unknown_key_raises_as_the_stock_lookup_does(parameters):
    from policyengine_core.errors import ParameterNotFoundError

    fpg = vectorial(parameters.gov.hhs.fpg.first_person)
    key = np.array(["AK", "HI", "ATLANTIS", "AK"], dtype=object)
    with pytest.raises(ParameterNotFoundError, match="ATLANTIS"):
        fpg[key]


@slow
def test_cases_left_to_the_stock_lookup(parameters, shortcuts):
    fpg = vectorial(parameters.gov.hhs.fpg.first_person)
    distinct = np.array(["AK", "HI", "CONTIGUOUS_US"], dtype=object)  # nothing to compress
    assert_same(fpg[distinct], stock(fpg, distinct))
    with_missing = np.array(["AK", None, "HI", "AK"], dtype=object)
    with pytest.raises(Exception) as fast_error:
        fpg[with_missing]
    with pytest.raises(Exception) as stock_error:
        stock(fpg, with_missing)
    assert type(fast_error.value) is type(stock_error.value)
    assert shortcuts == []


@slow
@pytest.mark.parametrize("variable", ["county", "state_code", "immigration_status"])
def test_enum_decoding_gives_the_stock_strings(parameters, variable):
    from policyengine_core.enums.enum_array import EnumArray
    from policyengine_us.system import system

    enum = system.variables[variable].possible_values
    codes = np.random.default_rng(7).integers(-2, len(enum) + 3, size=3_000).astype(np.int16)
    for shape in [(3_000,), (3, 1_000)]:
        values = EnumArray(codes.reshape(shape), enum)
        got, want = values.decode_to_str(), engine_speedups._STOCK["decode_to_str"](values)
        assert got.dtype == want.dtype and got.shape == want.shape
        np.testing.assert_array_equal(got, want)
    assert (want == "unknown").any()  # codes outside the enum take the default


@slow
def test_abawd_waiver_helper_on_distinct_rows_gives_the_stock_answer(parameters):
    from policyengine_us.system import system

    assert engine_speedups.formula_speedups_installed() == INSTALLED
    formula = next(iter(system.variables["is_in_snap_abawd_waived_area"].formulas.values()))
    fast = formula.__globals__["in_listed_abawd_waiver_area"]
    helper = fast.__wrapped_stock__
    counties = np.array([c.name for c in system.variables["county"].possible_values])
    pick = np.random.default_rng(3).integers(0, len(counties), 60)
    county = np.repeat(counties[pick], 40)
    state = np.array([c.rsplit("_", 1)[-1] for c in county], dtype=object)
    for date in ["2024-01-01", "2025-06-01", "2026-03-01"]:
        p = system.parameters(date).gov.usda.snap.work_requirements.abawd
        for args in [(state, county.astype(object)), (state.astype(str), county)]:
            got, want = fast(p, *args), helper(p, *args)
            assert got.dtype == want.dtype
            np.testing.assert_array_equal(got, want)
        if date == "2025-06-01":
            assert 0 < want.sum() < len(want)  # some waived, some not


def test_distinct_rows_helper_runs_once_per_distinct_row_and_expands():
    calls = []

    def helper(p, a, b):
        calls.append(len(a))
        return np.char.add(a.astype(str), b.astype(str)) == p

    fast = engine_speedups.on_distinct_rows(helper)
    a = np.array(["NY", "CA", "NY", "TX"] * 25, dtype=object)
    b = np.array(["x", "y", "x", "x"] * 25)
    np.testing.assert_array_equal(fast("NYx", a, b), helper("NYx", a, b))
    assert calls == [3, 100]  # three distinct rows, then the stock call of the comparison


@pytest.mark.parametrize("a, b", [
    (np.array(["NY", None, "NY", "NY"], dtype=object), np.array(["x"] * 4)),  # missing
    (np.array(["NY", "CA", "TX", "WA"]), np.array(["x"] * 4)),  # mostly distinct
    (np.array([1, 1, 1, 1]), np.array(["x"] * 4)),  # not strings
    (np.array(["NY"] * 4), np.array(["x"] * 3)),  # lengths differ
])
def test_distinct_rows_helper_leaves_other_inputs_to_the_helper(a, b):
    calls = []

    def helper(p, *arrays):
        calls.append([len(x) for x in arrays])
        return np.zeros(len(arrays[0]), dtype=bool)

    engine_speedups.on_distinct_rows(helper)(None, a, b)
    assert calls == [[len(a), len(b)]]


@pytest.mark.parametrize("dtype", [np.int64, np.int32, np.uint8])
def test_unique_rows_gives_numpys_rows_and_inverse(dtype):
    rng = np.random.default_rng(5)
    keys = rng.integers(0 if dtype == np.uint8 else -1, 40, size=(5_000, 5)).astype(dtype)
    keys[rng.random(5_000) < 0.6, 1:] = 0  # many equal rows, as children without deemors
    got, want = engine_speedups.unique_rows(keys, axis=0, return_inverse=True), np.unique(
        keys, axis=0, return_inverse=True)
    for g, w in zip(got, want):
        assert g.dtype == w.dtype and g.shape == w.shape
        np.testing.assert_array_equal(g, w)
    assert len(want[0]) < len(keys)


def test_unique_rows_passes_other_calls_to_numpy():
    values = np.array([[3, 1], [3, 1], [2, 9]])
    fast_numpy = engine_speedups.NUMPY_WITH_FAST_UNIQUE_ROWS
    np.testing.assert_array_equal(fast_numpy.unique(values), np.unique(values))
    for got, want in zip(fast_numpy.unique(values, axis=0, return_counts=True),
                         np.unique(values, axis=0, return_counts=True)):
        np.testing.assert_array_equal(got, want)
    floats = values.astype(float)
    for got, want in zip(fast_numpy.unique(floats, axis=0, return_inverse=True),
                         np.unique(floats, axis=0, return_inverse=True)):
        np.testing.assert_array_equal(got, want)
    assert fast_numpy.where is np.where and fast_numpy.ndarray is np.ndarray
