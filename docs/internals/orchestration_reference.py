"""The orchestration reference of docs/internals/README.md, generated from the Definitions.

``python docs/internals/orchestration_reference.py`` prints it; ``--write`` replaces the part of
docs/internals/README.md between its two markers. ``tests/test_orchestration_reference.py``
fails when the README differs from what this script generates, so the step graph, the
artifact paths, the retry notes and the file table cannot go stale.

Everything comes from the code: the asset graph and checks of ``definitions.defs``, each
asset's description (its artifact paths are the backquoted paths in it), its partitions,
backfill policy, pool and code-version inputs (``assets/_code_version.py``), and the first line
of every module's docstring. Only the one-line "rerun" note per asset is written here
(:data:`RERUN`), and the test requires one for every asset.
"""
from __future__ import annotations

import ast
import re
import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "docs" / "internals" / "README.md"
START = "<!-- orchestration-reference:start (generated: docs/internals/orchestration_reference.py) -->"
END = "<!-- orchestration-reference:end -->"
PACKAGES = ("calibration_core", "assets", "resources", "jobs", "sensors")
WIDTH = 100

# what re-running each asset's step does (any executor: the step writes the same artifact)
RERUN = {
    "raw_public_inputs": "collects the files again into a staging folder, validates them and "
                         "replaces `raw/` only when every file passed.",
    "targets_db": "rebuilds the database into a temporary file and renames it over the old one; "
                  "a failed ETL leaves the previous database.",
    "cps_source": "re-reads the CPS source and rewrites its record of it.",
    "base_microdata": "rebuilds the base tables; the H5 file is replaced atomically.",
    "enhanced_microdata": "re-imputes with the same seeds: byte-identical output.",
    "stratified_microdata": "re-samples with the same seeds: byte-identical output.",
    "state_simulations": "plans again (probe), then simulates every chunk step again (about 40 s "
                         "of policyengine-us start per step process); a failed chunk step is "
                         "retried alone (RetryPolicy, 2 retries) and a re-execution from failure "
                         "reruns only the failed chunk steps and the collect step (the plan and "
                         "the finished steps' npz files are reused); the npz is replaced "
                         "atomically.",
    "geography_assignment": "redraws with the same salted seeds: byte-identical output.",
    "calibration_package": "rebuilds the matrix into a temporary folder swapped in whole.",
    "regional_weights": "resumes from its own checkpoint when the package and settings match, "
                        "else fits from the start; outputs are published together.",
    "national_weights": "as regional_weights, with its own checkpoint.",
    "area_datasets": "rebuilds only the partitions of the run (one file each, atomic); other "
                     "area files are untouched.",
    "national_dataset": "rebuilds `areas/national/US.h5` from the national weights.",
    "validation_report": "plans again, re-simulates every group step (a failed one is retried "
                         "alone: RetryPolicy, 2 retries; a re-execution from failure reruns only "
                         "the failed steps and the finish) and rewrites the report.",
    "staged_release": "stages a new version folder; the previous staged one stays until "
                      "promoted or swept.",
    "published_release": "promotes the last staged release again (an atomic symlink swap).",
}

EXECUTORS = [
    ("multiprocess (default; `jobs.build_cli`)", "one process per step, `max_concurrent` = "
     "cores, forked from a server that has built policyengine-us's system "
     "(`jobs/step_preload.py`)",
     "a step with a `RetryPolicy` (the state simulations' chunk steps, validation's "
     "simulation steps) runs again in a new process, alone; `run_retries` re-launches a "
     "failed run from the failed step (completed steps are reused); "
     "`python -m jobs.build_cli --from-failure` or the UI re-executes from failure"),
    ("dask", "one Dask task per step on the cluster's workers, submitted as it becomes ready "
     "(dynamic steps included: `jobs/dask_executor.py`)",
     "a step with a `RetryPolicy` (the state simulations' chunk steps, validation's "
     "simulation steps) is submitted again under the executor's `retries` (enabled by "
     "default); otherwise re-execute the run from failure: the completed steps' "
     "artifacts in the shared store are reused"),
    ("k8s", "one Kubernetes Job per step (fits on a GPU node)",
     "executor `retries` re-creates the failed step's Job; run retries and re-execution as "
     "for multiprocess"),
    ("in_process (`materialize()`, the tests)", "every step in the run's process, one after "
     "the other",
     "a step with a `RetryPolicy` runs again in place; otherwise rerun the build: each asset rewrites its own artifact atomically"),
]


def _wrap(text: str, indent: str = "", first: str = "") -> list[str]:
    return textwrap.wrap(text, WIDTH, initial_indent=first or indent, subsequent_indent=indent,
                         break_long_words=False, break_on_hyphens=False)


def tracked_modules() -> list[Path]:
    """Every tracked .py of the packages (all of them outside git)."""
    try:
        out = subprocess.run(["git", "ls-files", "--", *PACKAGES], cwd=ROOT, check=True,
                             capture_output=True, text=True).stdout.split()
        files = [ROOT / f for f in out if f.endswith(".py")]
    except (OSError, subprocess.CalledProcessError):
        files = [p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py")]
    return sorted((p for p in files if p.is_file() and "__pycache__" not in p.parts),
                  key=lambda p: p.relative_to(ROOT).as_posix())


def first_doc_line(path: Path) -> str:
    doc = ast.get_docstring(ast.parse(path.read_text(encoding="utf-8"))) or ""
    line = doc.strip().split("\n\n")[0].replace("\n", " ")
    return re.sub(r"\s+", " ", line).strip() or "(no docstring)"


def artifacts(description: str) -> list[str]:
    seen = []
    for path in re.findall(r"`([^`\s]*/[^`\s]*)`", description or ""):
        if path not in seen:
            seen.append(path)
    return seen


def graph_steps(name: str, assets_def) -> str:
    """The steps of a graph-backed asset, in order: ``name.op`` each, ``[cNN]`` after a step
    mapped over dynamic outputs (one per output), with its retry policy; steps that depend on
    none of each other (the same depth in the graph) are joined by ``|``."""
    graph = assets_def.node_def
    deps = graph.dependency_structure
    depth: dict[str, int] = {}
    levels: dict[int, list[str]] = {}
    for node in graph.nodes_in_topological_order:
        upstream = [o.node_name for o in deps.all_upstream_outputs_from_node(node.name)]
        depth[node.name] = 1 + max((depth[u] for u in upstream), default=-1)
        text = f"`{name}.{node.name}" + ("[cNN]`" if deps.is_dynamic_mapped(node.name) else "`")
        policy = node.definition.retry_policy
        if policy is not None:
            text += f" ({policy.max_retries} retries)"
        levels.setdefault(depth[node.name], []).append(text)
    return "steps: " + " -> ".join(" | ".join(levels[d]) for d in sorted(levels))


def generate() -> str:
    sys.path.insert(0, str(ROOT))
    import dagster as dg

    import definitions
    from assets._code_version import SPECS

    defs = definitions.defs
    graph = defs.resolve_asset_graph()
    nodes = sorted((graph.get(k) for k in graph.get_all_asset_keys()
                    if graph.get(k).is_executable), key=lambda n: n.key.to_user_string())
    names = {n.key: n.key.to_user_string() for n in nodes}
    order = list(graph.toposorted_asset_keys)
    nodes.sort(key=lambda n: (order.index(n.key), names[n.key]))
    checks: dict[str, list[str]] = {}
    for check in defs.asset_checks or []:
        for spec in check.check_specs:
            blocking = " (blocking)" if getattr(spec, "blocking", False) else ""
            checks.setdefault(spec.asset_key.to_user_string(), []).append(
                f"`{spec.name}`{blocking}")

    out = [START, "", "## Orchestration reference", "",
           *_wrap("Generated from `definitions.defs` by `docs/internals/orchestration_reference"
                  ".py` (`--write` updates this part; `tests/test_orchestration_reference.py` "
                  "fails when it is stale)."), "",
           "### Step graph", "",
           *_wrap("One step per asset (and one per asset check, after its asset), except "
                  "graph-backed assets, whose steps are listed under the asset (`steps:`; "
                  "`[cNN]`: one step per dynamic output). Each arrow is a dependency: a step "
                  "starts when every step it points from has succeeded."),
           "", "```mermaid", "flowchart TD"]
    for node in nodes:
        for parent in sorted(node.parent_keys, key=lambda k: k.to_user_string()):
            if parent in names:
                out.append(f"    {names[parent]} --> {names[node.key]}")
    out += ["```", "", "### Steps", ""]
    for node in nodes:
        name = names[node.key]
        bits = [f"group `{node.group_name}`"]
        if node.partitions_def is not None:
            bits.append(f"{len(node.partitions_def.get_partition_keys())} partitions")
        policy = node.backfill_policy
        if node.partitions_def is not None and policy is not None:
            bits.append(f"backfills of {policy.max_partitions_per_run} partitions per run"
                        if policy.max_partitions_per_run else "a backfill in one run")
        pool = getattr(node, "pool", None)
        if pool:
            bits.append(f"pool `{pool}`")
        out.append(f"#### `{name}`")
        out.append("")
        upstream = [f"`{names[p]}`" for p in sorted(node.parent_keys, key=str) if p in names]
        out += _wrap(", ".join(bits) + "; after " + (", ".join(upstream) or "nothing") + ".",
                     "  ", "- ")
        paths = artifacts(node.description)
        out += _wrap("artifact: " + (", ".join(f"`{p}`" for p in paths) or "(metadata only)"),
                     "  ", "- ")
        out += _wrap(graph_steps(name, node.assets_def), "  ", "- ") if isinstance(
            node.assets_def.node_def, dg.GraphDefinition) else []
        if checks.get(name):
            out += _wrap("checks: " + ", ".join(sorted(checks[name])), "  ", "- ")
        module, entries, simulates = SPECS[node.code_version]
        code = [f"`{module}`", *(f"`{e}`" for e in entries)]
        out += _wrap("code version from: " + ", ".join(code) + (" and the policyengine-us "
                     "version" if simulates else ""), "  ", "- ")
        out += _wrap("rerun: " + RERUN[name], "  ", "- ")
        out.append("")
    out += ["### Retries and reruns by executor", ""]
    for name, where, failed in EXECUTORS:
        out += _wrap(f"**{name}**: {where}. A failed step: {failed}.", "  ", "- ")
    out += ["", "### Files", ""]
    for path in tracked_modules():
        rel = path.relative_to(ROOT).as_posix()
        out += _wrap(f"`{rel}`: {first_doc_line(path)}", "  ", "- ")
    out += ["", END]
    return "\n".join(out) + "\n"


def current() -> str | None:
    text = README.read_text()
    if START not in text or END not in text:
        return None
    return text[text.index(START): text.index(END) + len(END)] + "\n"


def write() -> None:
    text = README.read_text()
    generated = generate()
    if START in text and END in text:
        text = text[:text.index(START)] + generated + text[text.index(END) + len(END) + 1:]
    else:
        text = text.rstrip("\n") + "\n\n" + generated
    README.write_text(text)


if __name__ == "__main__":
    if "--write" in sys.argv[1:]:
        write()
    else:
        sys.stdout.write(generate())
