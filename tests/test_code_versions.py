"""Stale tracking: each asset's ``code_version`` is a hash of the code it runs
(assets/_code_version.py). A test changes one ``calibration_core`` module in a copy of the
sources and asks Dagster which assets are stale after a build recorded with the current
versions: exactly the assets that run that module (and, through them, their downstream)."""
from __future__ import annotations

import ast
import shutil
from pathlib import Path

import dagster as dg
import pytest

from assets._code_version import REPO, SPECS, code_version, module_closure

PACKAGES = ("assets", "calibration_core", "resources")


@pytest.fixture(scope="module")
def graph():
    import definitions

    return definitions.defs.resolve_asset_graph()


def _executable(graph):
    return sorted((graph.get(k) for k in graph.get_all_asset_keys()
                   if graph.get(k).is_executable), key=lambda n: n.key.to_user_string())


def test_every_asset_has_a_code_hash_version(graph):
    nodes = _executable(graph)
    assert len(nodes) >= 15
    for node in nodes:
        assert node.code_version in SPECS, node.key
        module, entries, simulates = SPECS[node.code_version]
        assert simulates == node.code_version.endswith(
            "+policyengine-us-" + __import__("importlib").metadata.version("policyengine-us"))
    simulating = {n.key.to_user_string() for n in nodes if SPECS[n.code_version][2]}
    assert simulating == {"state_simulations", "validation_report"}


def test_every_module_an_asset_module_imports_is_hashed(graph, tmp_path):
    """Every project module an asset module imports is hashed into at least one of that
    module's assets; one that no code_version names goes into all of them."""
    from assets._code_version import _imports, hashed_files, unclaimed_imports

    by_module: dict[str, list] = {}
    for node in _executable(graph):
        module, entries, _ = SPECS[node.code_version]
        by_module.setdefault(module, []).append(set(hashed_files(module, entries)))
    for module, hashed in by_module.items():
        path = REPO.joinpath(*module.split(".")).with_suffix(".py")
        science = {m for m in _imports(path, module, REPO) if m.startswith("calibration_core")}
        assert science <= set().union(*hashed), module
        assert all(unclaimed_imports(module) <= h for h in hashed), module
    # an import that no code_version names reaches every asset of that module
    root = _copy_sources(tmp_path / "src")
    (root / "calibration_core" / "brand_new.py").write_text("X = 1\n")
    target = root / "assets" / "fit.py"
    target.write_text(target.read_text().replace(
        "import dagster as dg\n", "import dagster as dg\nimport calibration_core.brand_new\n", 1))
    assert unclaimed_imports("assets.fit", root) == {"calibration_core.brand_new"}
    assert "calibration_core.brand_new" in hashed_files("assets.fit", ("calibration_core.fit",),
                                                        root)


def _copy_sources(dest: Path) -> Path:
    for package in PACKAGES:
        shutil.copytree(REPO / package, dest / package,
                        ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    return dest


def _stub_defs(graph, versions: dict[dg.AssetKey, str]) -> dg.Definitions:
    """Assets with the real keys, dependencies and the given code versions (no partitions;
    bodies do nothing): what Dagster needs to judge staleness."""
    specs = []
    for node in _executable(graph):
        deps = [k for k in node.parent_keys if graph.get(k).is_executable]
        specs.append(dg.AssetSpec(node.key, deps=deps, code_version=versions[node.key]))

    from graphlib import TopologicalSorter

    order = list(TopologicalSorter({s.key: {d.asset_key for d in s.deps}
                                    for s in specs}).static_order())

    @dg.multi_asset(specs=specs, can_subset=True)
    def everything(context):
        for key in order:  # a multi-asset yields upstream first
            if key in context.selected_asset_keys:
                yield dg.MaterializeResult(asset_key=key)

    return dg.Definitions(assets=[everything])


def _stale_after(graph, tmp_path, module_rel: str) -> tuple[set[str], set[str]]:
    """(assets stale because of their own code, all stale assets) after ``module_rel`` of a
    copy of the sources changes, for a build recorded with today's versions."""
    from dagster._core.definitions.data_version import CachingStaleStatusResolver, StaleStatus
    from dagster._core.loader import LoadingContextForTest

    root = _copy_sources(tmp_path / "src")
    changed = root / module_rel
    changed.write_text(changed.read_text() + "\n# changed\n")
    nodes = _executable(graph)
    before = {n.key: n.code_version for n in nodes}
    after = {}
    for n in nodes:
        module, entries, simulates = SPECS[n.code_version]
        after[n.key] = code_version(module, *entries, simulates=simulates, root=root)
    with dg.DagsterInstance.ephemeral() as instance:
        built = _stub_defs(graph, before)
        result = built.resolve_implicit_global_asset_job_def().execute_in_process(
            instance=instance)
        assert result.success
        now = _stub_defs(graph, after).resolve_asset_graph()
        # what the UI asks: the status of each asset against the latest materializations
        resolver = CachingStaleStatusResolver(instance, now, LoadingContextForTest(instance))
        stale, own_code = set(), set()
        for n in nodes:
            if resolver.get_status(n.key) == StaleStatus.STALE:
                stale.add(n.key.to_user_string())
            if any(c.asset_key == n.key and c.category.name == "CODE"
                   for c in resolver.get_stale_causes(n.key)):
                own_code.add(n.key.to_user_string())
    return own_code, stale


def test_changing_the_fit_marks_the_fits_stale_not_the_package(graph, tmp_path):
    own_code, stale = _stale_after(graph, tmp_path, "calibration_core/fit/_problem.py")
    print("fit/_problem.py changed: own code", sorted(own_code), "stale", sorted(stale))
    # the fit package is run by the two fits and read by the area assets (load_fit_weights)
    assert own_code == {"regional_weights", "national_weights", "area_datasets",
                        "national_dataset"}
    assert {"calibration_package", "state_simulations", "geography_assignment",
            "targets_db", "stratified_microdata"}.isdisjoint(stale)
    assert {"regional_weights", "national_weights", "area_datasets",
            "national_dataset"} <= stale


def test_changing_the_geography_marks_its_readers_stale(graph, tmp_path):
    own_code, stale = _stale_after(graph, tmp_path, "calibration_core/geography.py")
    print("geography.py changed: own code", sorted(own_code), "stale", sorted(stale))
    expected = {name for name in
                (n.key.to_user_string() for n in _executable(graph))
                if "calibration_core.geography" in module_closure(
                    *SPECS[graph.get(dg.AssetKey(name)).code_version][1])}
    assert own_code == expected
    assert "geography_assignment" in own_code
    assert {"regional_weights", "national_weights", "staged_release"}.isdisjoint(own_code)
