"""engine_speedups: the fast vector-keyed parameter lookup gives exactly what policyengine-core
gives (values, dtypes, nodes, errors) for the key kinds policyengine-us formulas use. Slow:
needs policyengine-us."""
from __future__ import annotations

import numpy as np
import pytest

from calibration_core import engine_speedups

pytestmark = pytest.mark.slow

STATES = np.array(["CA", "NY", "TX", "AK", "HI", "DC", "CA", "CA", "NY", "AK"] * 7, dtype=object)


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


def test_installed_with_our_simulation_classes():
    from calibration_core import simulation as simu

    simu._simulation_classes()
    assert engine_speedups.installed()
    with engine_speedups.stock_engine():
        assert not engine_speedups.installed()
    assert engine_speedups.installed()


@pytest.mark.parametrize("as_kind", ["object", "unicode"])
def test_state_keys_give_the_stock_values(parameters, as_kind, shortcuts):
    fpg = vectorial(parameters.gov.hhs.fpg.first_person)
    groups = np.where(np.isin(STATES, ["AK", "HI"]), STATES, "CONTIGUOUS_US")
    key = groups.astype(object if as_kind == "object" else str)
    assert_same(fpg[key], stock(fpg, key))
    assert len(np.unique(fpg[key])) == 3  # the three guideline groups differ
    assert shortcuts == [len(key)] * 2


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


def test_integer_keys(parameters, shortcuts):
    sizes = vectorial(parameters.gov.usda.snap.max_allotment.main.CONTIGUOUS_US)
    key = np.resize(np.arange(1, 9), 50)
    assert_same(sizes[key], stock(sizes, key))
    assert_same(sizes[key.astype(np.int32)], stock(sizes, key.astype(np.int32)))
    assert shortcuts == [50, 50]


def test_an_unknown_key_raises_as_the_stock_lookup_does(parameters):
    from policyengine_core.errors import ParameterNotFoundError

    fpg = vectorial(parameters.gov.hhs.fpg.first_person)
    key = np.array(["AK", "HI", "ATLANTIS", "AK"], dtype=object)
    with pytest.raises(ParameterNotFoundError, match="ATLANTIS"):
        fpg[key]


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
