"""Exact fast paths for policyengine-core / policyengine-us hot spots, installed with our
simulation classes.

1. Start-up (:func:`install_start_speedup`, before policyengine-us is first imported): building
the tax-benefit system extends the uprating indices to 2100, and for each of ~6,700 values it
averages a CPI series over 12 months ending August - each time scanning the whole series
(~1,200 values, parsing every date) for its last observation. The averages are a function of
the series' values and the year alone, so inside that one step each is computed once and
reused while the series is unchanged (``Parameter.update`` replaces ``values_list``; a
changed length counts as a change too). Measured: 4.9 s of a ~45 s start.

2. ``EnumArray.decode_to_str`` (e.g. a household's county as a string, which Wisconsin's CTS
area rule asks for every month): policyengine-core compares the codes with every item of the
enum (``numpy.select`` over ~3,200 counties); here a table from code to name, built once per
enum, is indexed by the codes - the same strings, dtype and "unknown" default. It was 8% of a
profiled 26-state x 1,000-household stack.

3. policyengine-us helpers of a formula that are elementwise in a few distinct values
(:data:`ELEMENTWISE_HELPERS`): SNAP's ABAWD waiver test compares every person's state and
county with 23 states' county lists, each month (``numpy.isin`` on strings: 6% of the stack
above); here it runs once per distinct (state, county) pair and is expanded. Installed only
on the helper's source as verified (a sha256 of it): a changed helper stays as released.

4. SSI's parental deeming groups children by their set of deemors with
``np.unique(keys, axis=0, return_inverse=True)``, which sorts the rows as opaque records (9% of
a profiled 7-state x 3,000-household stack). The module of that formula gets a numpy whose
``unique`` does this one case (2-D integers, rows, inverse) by ``lexsort`` - the same sorted
rows and inverse - and passes every other call to numpy (:data:`NUMPY_WITH_FAST_UNIQUE_ROWS`).

5. A parameter looked up by a vector of keys (``p.amount[state_code_str]``,
``p.fpg[household_size]``). policyengine-core converts the whole key to a unicode array and
sorts it (``numpy.unique``) on every call; on a stack of 6 states x 3,000 households that was
a quarter of the profiled time (string conversion 2.4 s, sorting 3.0 s of 19.8 s). The result
for each row depends only on that row's key, so the lookup is done once per distinct key
(hash-based ``pandas.factorize``, no string conversion) and expanded by the row codes; a
second lookup on the rows so obtained (``p.standard[state_group][household_size]``) is done
once per distinct (record, key) pair. The same values, dtypes and errors.

The stock lookup still serves every case the shortcut does not prove equal: a key that is
not a plain 1-D array (``EnumArray`` has its own cached path), a float or missing key, and a
node indexed per row by other code (its rows' records are not known to be few).
"""
from __future__ import annotations

import functools
import hashlib
import importlib.abc
import importlib.machinery
import inspect
import sys
import types
from contextlib import contextmanager
from functools import cache

import numpy as np
import pandas as pd

_STOCK: dict = {}  # the replaced policyengine-core functions, by name

# key kinds whose elements convert to one string each, as the stock path does
# (``key.astype("str")``): objects (str, Enum members), unicode, bytes, integers, booleans
_SHORTCUT_KINDS = "OUSiub"


@cache  # resolved on every expanded lookup
def _node_class():
    from policyengine_core.parameters.vectorial_parameter_node_at_instant import (
        VectorialParameterNodeAtInstant,
    )

    return VectorialParameterNodeAtInstant


def _vector_lookup(self, key):
    """``VectorialParameterNodeAtInstant.__getitem__`` computed once per distinct key (per
    distinct (row record, key) pair on a node this function expanded to rows)."""
    stock = _STOCK["vectorial_getitem"]
    if type(key) is np.ndarray and key.ndim == 1 and key.dtype.kind in _SHORTCUT_KINDS:
        n_records = len(self.vector)
        expanded_from = self.__dict__.get("_expanded_from")
        if n_records == 1:
            codes, distinct = pd.factorize(key, use_na_sentinel=True)
            if len(distinct) < len(key) and codes.min(initial=0) >= 0:
                # unknown keys raise here, named as the stock path names them
                return _expand(stock(self, np.asarray(distinct)), codes)
        elif expanded_from is not None and n_records == len(key):
            # rows of a node of few records: a row's result depends on (its record, its key)
            compact, record_codes = expanded_from
            key_codes, distinct = pd.factorize(key, use_na_sentinel=True)
            if key_codes.min(initial=0) >= 0:
                pair_codes, pairs = pd.factorize(record_codes * len(distinct) + key_codes)
                if len(pairs) < len(key):
                    records = type(self)(compact._name, compact.vector[pairs // len(distinct)],
                                         compact._instant_str)
                    keys = np.asarray(distinct)[pairs % len(distinct)]
                    return _expand(stock(records, keys), pair_codes)
    return stock(self, key)


def _expand(result, codes: np.ndarray):
    """Rows from per-distinct-key results: values, or a node of records that remembers where
    its rows came from (a further lookup on it is compressed the same way)."""
    if isinstance(result, _node_class()):
        node = type(result)(result._name, result.vector[codes], result._instant_str)
        node.__dict__["_expanded_from"] = (result, codes)
        return node
    return result[codes]


@cache
def _enum_array_class():
    from policyengine_core.enums.enum_array import EnumArray

    return EnumArray


@cache  # per enum class: (code -> name table, its last code); None for an enum the table
# cannot serve (no items, a negative index)
def _name_table(enum) -> tuple[np.ndarray, int] | None:
    names = [str(item.name) for item in enum]
    indices = np.asarray([item.index for item in enum], dtype=np.int64)
    if len(indices) == 0 or indices.min() < 0:
        return None
    # the dtype numpy.select gives the names and the "unknown" default
    table = np.full(int(indices.max()) + 1, "unknown",
                    dtype=f"<U{max(len(n) for n in names + ['unknown'])}")
    distinct, first = np.unique(indices, return_index=True)  # the first item of a code wins
    table[distinct] = np.asarray(names, dtype=table.dtype)[first]
    return table, len(table) - 1


def _decode_to_str(self):
    """``EnumArray.decode_to_str`` by a code -> name table (see the module's item 2)."""
    enum = getattr(self, "possible_values", None)
    codes = self.view(np.ndarray)
    served = None if enum is None else _name_table(enum)
    if served is None or codes.ndim == 0 or codes.dtype.kind not in "iu":
        return _STOCK["decode_to_str"](self)
    table, last = served
    outside = (codes < 0) | (codes > last)
    names = table[np.clip(codes, 0, last)]
    names[outside] = "unknown"
    return names


# variable -> (helper its formulas call by a global name, sha256 of the helper's source as
# verified elementwise): ``helper(p, *arrays)``, each output row a function of the arrays' rows
ELEMENTWISE_HELPERS = {
    "is_in_snap_abawd_waived_area": (
        "in_listed_abawd_waiver_area",
        "86922a3e622c52ffa917cad030771434b73948e2cbde9b7d28a74438692e23d3"),
}


def source_sha256(function) -> str:
    return hashlib.sha256(inspect.getsource(function).encode()).hexdigest()


def on_distinct_rows(helper):
    """``helper(p, *arrays)`` computed once per distinct combination of the arrays' rows and
    expanded; arrays that are not 1-D strings of one length, missing values, or mostly
    distinct rows go to ``helper`` as they are."""

    @functools.wraps(helper)
    def fast(p, *arrays):
        n = len(arrays[0]) if arrays and isinstance(arrays[0], np.ndarray) else -1
        if n < 2 or not all(type(a) is np.ndarray and a.ndim == 1 and len(a) == n
                            and a.dtype.kind in "OU" for a in arrays):
            return helper(p, *arrays)
        combined = np.zeros(n, dtype=np.int64)
        for values in arrays:
            codes, distinct = pd.factorize(values, use_na_sentinel=True)
            if codes.min() < 0:
                return helper(p, *arrays)
            combined = combined * len(distinct) + codes
        row_codes, distinct_rows = pd.factorize(combined)
        if 2 * len(distinct_rows) > n:
            return helper(p, *arrays)
        first = np.unique(row_codes, return_index=True)[1]  # codes number first appearances
        return helper(p, *(values[first] for values in arrays))[row_codes]

    fast.__wrapped_stock__ = helper
    return fast


def unique_rows(ar, *args, **kwargs):
    """``numpy.unique``; ``unique_rows(a, axis=0, return_inverse=True)`` of a 2-D integer
    array by ``lexsort`` (rows in the same lexicographic order, the same inverse)."""
    if (args or kwargs != {"axis": 0, "return_inverse": True} or type(ar) is not np.ndarray
            or ar.ndim != 2 or ar.dtype.kind not in "iu" or 0 in ar.shape):
        return np.unique(ar, *args, **kwargs)
    order = np.lexsort(ar.T[::-1])  # the first column is the primary key
    rows = ar[order]
    starts = np.empty(len(rows), dtype=bool)
    starts[0] = True
    starts[1:] = (rows[1:] != rows[:-1]).any(axis=1)
    inverse = np.empty(len(rows), dtype=np.intp)
    inverse[order] = np.cumsum(starts) - 1
    return rows[starts], inverse


class _NumpyWithFastUniqueRows(types.ModuleType):
    """numpy, but ``unique`` is :func:`unique_rows` (which passes other cases to numpy)."""

    unique = staticmethod(unique_rows)

    def __getattr__(self, name):
        return getattr(np, name)


NUMPY_WITH_FAST_UNIQUE_ROWS = _NumpyWithFastUniqueRows("numpy")
# variables whose formula module gets :data:`NUMPY_WITH_FAST_UNIQUE_ROWS` as ``np``
FAST_UNIQUE_ROWS_FORMULAS = ("ssi_resources_deemed_from_ineligible_parent",)


def _formula_globals(system, variable: str) -> list[dict]:
    found = system.variables.get(variable)
    formulas = [] if found is None else list(found.formulas.values())
    return [f.__globals__ for f in formulas if hasattr(f, "__globals__")]


def _install_formula_speedups() -> None:
    from policyengine_us.system import system

    for variable, (name, verified) in ELEMENTWISE_HELPERS.items():
        for namespace in _formula_globals(system, variable):
            helper = namespace.get(name)
            if callable(helper) and not hasattr(helper, "__wrapped_stock__"):
                try:
                    same = source_sha256(helper) == verified
                except (OSError, TypeError):
                    same = False
                if same:
                    namespace[name] = on_distinct_rows(helper)
    for variable in FAST_UNIQUE_ROWS_FORMULAS:
        for namespace in _formula_globals(system, variable):
            if namespace.get("np") is np:
                namespace["np"] = NUMPY_WITH_FAST_UNIQUE_ROWS


def _uninstall_formula_speedups() -> None:
    from policyengine_us.system import system

    for variable, (name, _) in ELEMENTWISE_HELPERS.items():
        for namespace in _formula_globals(system, variable):
            stock = getattr(namespace.get(name), "__wrapped_stock__", None)
            if stock is not None:
                namespace[name] = stock
    for variable in FAST_UNIQUE_ROWS_FORMULAS:
        for namespace in _formula_globals(system, variable):
            if namespace.get("np") is NUMPY_WITH_FAST_UNIQUE_ROWS:
                namespace["np"] = np


def formula_speedups_installed() -> list[str]:
    """The helpers of :data:`ELEMENTWISE_HELPERS` and the formulas of
    :data:`FAST_UNIQUE_ROWS_FORMULAS` now sped up."""
    from policyengine_us.system import system

    return [name for variable, (name, _) in ELEMENTWISE_HELPERS.items()
            for namespace in _formula_globals(system, variable)
            if hasattr(namespace.get(name), "__wrapped_stock__")] + [
        variable for variable in FAST_UNIQUE_ROWS_FORMULAS
        for namespace in _formula_globals(system, variable)
        if namespace.get("np") is NUMPY_WITH_FAST_UNIQUE_ROWS]


def install() -> None:
    """Install the fast paths 2-5 (idempotent; process-wide: every simulation in this process
    gets them, including a stock ``Microsimulation``)."""
    node, enum_array = _node_class(), _enum_array_class()
    if "vectorial_getitem" not in _STOCK:
        _STOCK["vectorial_getitem"] = node.__getitem__
        _STOCK["decode_to_str"] = enum_array.decode_to_str
    node.__getitem__ = _vector_lookup
    enum_array.decode_to_str = _decode_to_str
    _install_formula_speedups()


def uninstall() -> None:
    if "vectorial_getitem" in _STOCK:
        _node_class().__getitem__ = _STOCK["vectorial_getitem"]
        _enum_array_class().decode_to_str = _STOCK["decode_to_str"]
        _uninstall_formula_speedups()


def installed() -> bool:
    return (_node_class().__getitem__ is _vector_lookup
            and _enum_array_class().decode_to_str is _decode_to_str)


@contextmanager
def stock_engine():
    """policyengine-core exactly as released, inside the block (for baselines)."""
    was = installed()
    uninstall()
    try:
        yield
    finally:
        if was:
            install()


# --------------------------------------------------------------------------------------------
# start-up: CPI averages while the uprating indices are extended

UPRATING_MODULE = "policyengine_us.parameters.uprating_extensions"
# (series, year-or-month) -> value functions of policyengine-us's uprating extensions
CPI_AVERAGES = ("get_average_for_12_months_ending_august", "get_projected_cpi_u_for_month")
EXTEND_ALL = "set_all_uprating_parameters"


def memoized_by_series(function):
    """``function(series, at)`` computed once per (series, at) while ``series.values_list`` is
    the same list of the same length; any other call goes through."""
    cache: dict = {}

    @functools.wraps(function)
    def memo(series, at):
        values = getattr(series, "values_list", None)
        try:
            hit = cache.get((id(series), at))
        except TypeError:  # an unhashable ``at``
            return function(series, at)
        if (hit is not None and hit[0] is series and hit[1] is values
                and hit[2] == len(values)):
            return hit[3]
        result = function(series, at)
        if values is not None:
            cache[(id(series), at)] = (series, values, len(values), result)
        return result

    return memo


def speed_up_uprating_module(module) -> bool:
    """Wrap ``set_all_uprating_parameters`` of the executed uprating module so that while it
    runs, the CPI averages it calls are memoized (:func:`memoized_by_series`); outside it they
    are policyengine-us's own. False (nothing changed) if the module lacks a name."""
    extend_all = getattr(module, EXTEND_ALL, None)
    averages = {name: getattr(module, name, None) for name in CPI_AVERAGES}
    if not callable(extend_all) or not all(callable(f) for f in averages.values()):
        return False

    @functools.wraps(extend_all)
    def extend_all_memoized(*args, **kwargs):
        for name, function in averages.items():
            setattr(module, name, memoized_by_series(function))
        try:
            return extend_all(*args, **kwargs)
        finally:
            for name, function in averages.items():
                setattr(module, name, function)

    extend_all_memoized.__wrapped_stock__ = extend_all
    setattr(module, EXTEND_ALL, extend_all_memoized)
    return True


class _UpratingModuleFinder(importlib.abc.MetaPathFinder):
    """Finds the uprating module as Python would and speeds it up once executed - before
    ``policyengine_us.system`` builds the tax-benefit system with it."""

    def find_spec(self, name, path, target=None):
        if name != UPRATING_MODULE:
            return None
        _remove_finder()
        spec = importlib.machinery.PathFinder.find_spec(name, path, target)
        if spec is None or spec.loader is None:
            return spec
        execute = spec.loader.exec_module

        def exec_module(module):
            execute(module)
            speed_up_uprating_module(module)

        spec.loader.exec_module = exec_module
        return spec


def _remove_finder() -> None:
    sys.meta_path[:] = [f for f in sys.meta_path if not isinstance(f, _UpratingModuleFinder)]


def install_start_speedup() -> bool:
    """Speed up policyengine-us's start (item 1 above) in this process: True if it will apply
    (policyengine-us not imported yet), False if the system is already built."""
    if UPRATING_MODULE in sys.modules:
        return False
    if not any(isinstance(f, _UpratingModuleFinder) for f in sys.meta_path):
        sys.meta_path.insert(0, _UpratingModuleFinder())
    return True
