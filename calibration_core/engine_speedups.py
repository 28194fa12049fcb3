"""Exact fast paths for policyengine-core hot spots, installed with our simulation classes.

Only one so far: a parameter looked up by a vector of keys (``p.amount[state_code_str]``,
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


def install() -> None:
    """Install the fast paths (idempotent; process-wide: every simulation in this process
    gets them, including a stock ``Microsimulation``)."""
    node = _node_class()
    if "vectorial_getitem" not in _STOCK:
        _STOCK["vectorial_getitem"] = node.__getitem__
    node.__getitem__ = _vector_lookup


def uninstall() -> None:
    if "vectorial_getitem" in _STOCK:
        _node_class().__getitem__ = _STOCK["vectorial_getitem"]


def installed() -> bool:
    return _node_class().__getitem__ is _vector_lookup


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
