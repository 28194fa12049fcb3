"""docs/internals/README.md's orchestration reference is what
docs/internals/orchestration_reference.py generates from the Definitions (step graph, steps,
artifacts, checks, code-version inputs, reruns by executor) and lists every module."""
from __future__ import annotations

import importlib.util
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FIX = "run `python docs/internals/orchestration_reference.py --write` and commit the README"


def _generator():
    spec = importlib.util.spec_from_file_location(
        "orchestration_reference", ROOT / "docs" / "internals" / "orchestration_reference.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _split(text: str) -> tuple[str, str]:
    head, _, files = text.partition("### Files\n")
    return head, files


def test_reference_matches_the_definitions():
    gen = _generator()
    current = gen.current()
    assert current is not None, f"docs/internals/README.md has no orchestration reference: {FIX}"
    generated = gen.generate()
    # the graph, the steps and the executor notes exactly
    assert _split(current)[0] == _split(generated)[0], f"the reference is stale: {FIX}"
    # every module of the packages listed, one line each (its docstring may be reworded)
    listed = set(re.findall(r"^- `([^`]+\.py)`:", _split(current)[1], flags=re.M))
    expected = {p.relative_to(ROOT).as_posix() for p in gen.tracked_modules()}
    assert listed == expected, (f"modules missing {sorted(expected - listed)}, gone "
                                f"{sorted(listed - expected)}: {FIX}")


def test_every_asset_has_a_rerun_note():
    import definitions

    gen = _generator()
    graph = definitions.defs.resolve_asset_graph()
    names = {k.to_user_string() for k in graph.get_all_asset_keys() if graph.get(k).is_executable}
    assert set(gen.RERUN) == names
