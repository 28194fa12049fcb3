"""Code versions of the assets, from the code they run, so Dagster marks exactly the assets that
a code change makes stale (``code_version`` of each ``@dg.asset``).

An asset's version is a sha256 over the source of its own asset module and of the
``calibration_core`` (and ``resources``) modules it names, with everything those import inside
the project, found by reading their ``import`` statements (no module is imported). A module
that its asset module imports but none of that module's ``code_version`` calls names is hashed
into all of that module's assets (:func:`unclaimed_imports`). Assets that
run policyengine-us simulations (``simulates=True``) also hash the installed policyengine-us
version. A change to ``calibration_core/fit/`` therefore makes the two weight fits stale
(and, through them, what depends on their data), never the calibration package; a fit
hyper-parameter is run config, so a refit after changing one reuses the package as it is.
"""
from __future__ import annotations

import ast
import hashlib
from functools import lru_cache
from importlib import metadata
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# code version -> the (asset module, entries, simulates) it was computed from (for tests/docs)
SPECS: dict[str, tuple[str, tuple[str, ...], bool]] = {}
FOLLOWED = ("calibration_core", "resources")  # packages whose imports are followed


def module_file(name: str, root: Path = REPO) -> Path | None:
    """The source file of dotted module ``name`` under ``root`` (a module or a package)."""
    base = root.joinpath(*name.split("."))
    for path in (base.with_suffix(".py"), base / "__init__.py"):
        if path.is_file():
            return path
    return None


@lru_cache(maxsize=None)
def _imports(path: Path, name: str, root: Path) -> frozenset[str]:
    """Project modules that ``path`` (module ``name``) imports, anywhere in its body."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[:len(parts) - node.level + 1])
                base = f"{base}.{node.module}" if node.module else base
            else:
                base = node.module or ""
            found.add(base)
            # `from pkg import module` names a module when such a file exists
            found.update(f"{base}.{alias.name}" for alias in node.names
                         if module_file(f"{base}.{alias.name}", root) is not None)
    return frozenset(m for m in found if m.split(".")[0] in FOLLOWED and module_file(m, root))


def module_closure(*names: str, root: Path = REPO) -> dict[str, Path]:
    """``names`` and every project module they import, transitively: name -> file."""
    seen: dict[str, Path] = {}
    todo = list(names)
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        path = module_file(name, root)
        if path is None:
            raise ModuleNotFoundError(f"no source for module {name} under {root}")
        seen[name] = path
        todo.extend(_imports(path, name, root) - set(seen))
        # a package's modules load their package's __init__ first
        parent = name.rpartition(".")[0]
        if parent and parent not in seen:
            todo.append(parent)
    return dict(sorted(seen.items()))


@lru_cache(maxsize=None)
def declared_entries(asset_module: str, root: Path = REPO) -> frozenset[str]:
    """Every module named by a ``code_version(...)`` call in ``asset_module`` (read, not run)."""
    path = module_file(asset_module, root)
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "code_version":
            names.update(a.value for a in node.args[1:]
                         if isinstance(a, ast.Constant) and isinstance(a.value, str))
    return frozenset(names)


def unclaimed_imports(asset_module: str, root: Path = REPO) -> set[str]:
    """``calibration_core`` modules the asset module imports that no ``code_version`` of it
    names, directly or through their imports (``resources`` are plumbing: an asset names the
    one it computes with, e.g. the fitter): which of its assets runs them is unknown, so all of its
    assets hash them (a new import can make too many assets stale, never too few)."""
    path = module_file(asset_module, root)
    declared = module_closure(*sorted(declared_entries(asset_module, root)), root=root)
    return {m for m in _imports(path, asset_module, root)
            if m.startswith("calibration_core") and m not in declared}


def hashed_files(asset_module: str, entries: tuple[str, ...], root: Path = REPO) -> dict:
    """module name -> file of everything an asset's code version hashes."""
    return {asset_module: module_file(asset_module, root),
            **module_closure(*entries, *sorted(unclaimed_imports(asset_module, root)),
                             root=root)}


@lru_cache(maxsize=None)
def _digest(asset_module: str, entries: tuple[str, ...], simulates: bool, root: Path) -> str:
    digest = hashlib.sha256()
    files = hashed_files(asset_module, entries, root)
    for name in sorted(files):
        digest.update(name.encode() + b"\0" + files[name].read_bytes() + b"\0")
    version = digest.hexdigest()[:16]
    if simulates:
        version += f"+policyengine-us-{metadata.version('policyengine-us')}"
    return version


def code_version(asset_module: str, *entries: str, simulates: bool = False,
                 root: Path | None = None) -> str:
    """The code version of an asset defined in ``asset_module`` (its file is hashed, not
    followed) that runs ``entries`` (dotted ``calibration_core``/``resources`` modules, whose
    project imports are followed)."""
    version = _digest(asset_module, tuple(entries), simulates, Path(root or REPO).resolve())
    if root is None:
        SPECS[version] = (asset_module, tuple(entries), simulates)
    return version
