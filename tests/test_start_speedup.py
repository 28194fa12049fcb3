"""engine_speedups' start-up part: the CPI averages memoized while policyengine-us extends its
uprating indices give a tax-benefit system with exactly the stock parameter values."""
from __future__ import annotations

import subprocess
import sys
import types
from pathlib import Path

import pytest

from calibration_core import engine_speedups

ROOT = Path(__file__).resolve().parents[1]


class Series:
    """A CPI series as policyengine-core holds it: ``values_list`` replaced on update."""

    def __init__(self, values):
        self.values_list = list(values)

    def update(self, value):
        self.values_list = self.values_list + [value]


def counting_average(calls):
    def average(series, year):
        calls.append(year)
        return sum(series.values_list) / len(series.values_list) + year

    return average


def test_memo_computes_once_per_series_and_year_while_the_series_is_unchanged():
    calls = []
    memo = engine_speedups.memoized_by_series(counting_average(calls))
    cpi, other = Series([1.0, 2.0, 3.0]), Series([10.0])
    assert [memo(cpi, 2030) for _ in range(3)] == [2032.0] * 3
    assert memo(other, 2030) == 2040.0
    assert calls == [2030, 2030]
    cpi.update(6.0)  # a new list: recomputed
    assert memo(cpi, 2030) == 2033.0
    cpi.values_list.append(8.0)  # the same list, longer: recomputed
    assert memo(cpi, 2030) == 2034.0
    assert calls == [2030] * 4


def test_memo_passes_unhashable_keys_through():
    calls = []
    memo = engine_speedups.memoized_by_series(counting_average(calls))
    cpi = Series([2.0])
    with pytest.raises(TypeError):
        memo(cpi, [2030])  # the stock function's own error
    assert calls == [[2030]]


def fake_uprating_module(calls, seen):
    module = types.ModuleType("fake_uprating")
    for name in engine_speedups.CPI_AVERAGES:
        setattr(module, name, counting_average(calls))

    def extend_all(series):
        # resolves the averages through the module, as policyengine-us's functions do
        average = getattr(module, engine_speedups.CPI_AVERAGES[0])
        seen.append(average)
        return [average(series, 2030) for _ in range(4)]

    setattr(module, engine_speedups.EXTEND_ALL, extend_all)
    return module


def test_uprating_module_memoizes_only_inside_the_extension_step():
    calls, seen = [], []
    module = fake_uprating_module(calls, seen)
    stock = {name: getattr(module, name) for name in engine_speedups.CPI_AVERAGES}
    assert engine_speedups.speed_up_uprating_module(module)
    assert getattr(module, engine_speedups.EXTEND_ALL)(Series([4.0])) == [2034.0] * 4
    assert calls == [2030]  # four averages, one computation
    assert seen[0] is not stock[engine_speedups.CPI_AVERAGES[0]]
    # afterwards (later callers, e.g. policyengine-us's tests) get the stock functions
    assert {name: getattr(module, name) for name in engine_speedups.CPI_AVERAGES} == stock


def test_uprating_module_without_the_expected_names_is_left_alone():
    module = types.ModuleType("changed_uprating")
    module.set_all_uprating_parameters = lambda parameters: parameters
    before = dict(vars(module))
    assert not engine_speedups.speed_up_uprating_module(module)
    assert dict(vars(module)) == before


DIGEST = """
import hashlib, sys
sys.path.insert(0, {root!r})
if {fast!r}:
    from calibration_core import engine_speedups
    assert engine_speedups.install_start_speedup()
from policyengine_core.parameters import Parameter
from policyengine_us.system import system
lines = sorted(f"{{p.name}}|{{v.instant_str}}|{{v.value!r}}"
               for p in system.parameters.get_descendants() if isinstance(p, Parameter)
               for v in p.values_list)
module = sys.modules[{module!r}]
print(len(lines), hashlib.sha256("\\n".join(lines).encode()).hexdigest(),
      hasattr(module.set_all_uprating_parameters, "__wrapped_stock__"))
"""


@pytest.mark.slow
def test_sped_up_start_builds_the_stock_parameter_values():
    """Two fresh processes, in parallel: stock policyengine-us and with the start speed-up;
    every parameter value of the built system (1.3 million) must be the same."""
    runs = {fast: subprocess.Popen(
        [sys.executable, "-c", DIGEST.format(root=str(ROOT), fast=fast,
                                             module=engine_speedups.UPRATING_MODULE)],
        stdout=subprocess.PIPE, text=True) for fast in (False, True)}
    out = {}
    for fast, proc in runs.items():
        stdout, _ = proc.communicate(timeout=600)
        assert proc.returncode == 0, stdout
        n, digest, installed = stdout.split()[-3:]
        out[fast] = (int(n), digest, installed == "True")
    assert out[True][2] and not out[False][2]  # the speed-up ran in one only
    assert out[True][:2] == out[False][:2]
    assert out[True][0] > 1_000_000
