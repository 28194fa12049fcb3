"""The documentation runs and stays readable: every walk-through in docs/internals/ executes
without error (each in its own Python process, as a reader would run it), every Markdown file
keeps its lines to 100 characters, relative links point at files that exist, and the README
links the methodology and data pages."""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
INTERNALS = ROOT / "docs" / "internals"
WALKTHROUGHS = sorted(INTERNALS.glob("[0-9][0-9]_*.py"))
STAGES = ("01_targets_db", "02_microdata", "03_package", "04_fit", "05_areas",
          "06_orchestration")
MAX_LINE = 100


def markdown_files() -> list[Path]:
    """README.md and every *.md of the repository outside hidden folders (.venv, .git, ...)."""
    out = []
    for path in sorted(ROOT.rglob("*.md")):
        rel = path.relative_to(ROOT)
        if not any(part.startswith(".") or part in {"node_modules", "build"}
                   for part in rel.parts[:-1]):
            out.append(path)
    return out


def test_every_stage_has_a_walkthrough():
    names = {p.stem for p in WALKTHROUGHS}
    missing = [s for s in STAGES if s not in names]
    assert not missing, f"docs/internals lacks walk-through(s) {missing}"
    readme = (INTERNALS / "README.md").read_text()
    unlisted = [p.name for p in WALKTHROUGHS if p.name not in readme]
    assert not unlisted, f"docs/internals/README.md does not describe {unlisted}"


@pytest.mark.parametrize("script", WALKTHROUGHS, ids=[p.stem for p in WALKTHROUGHS])
def test_walkthrough_runs(script, tmp_path):
    env = {**os.environ, "AREACAL_DOCS_OUT": str(tmp_path), "MPLBACKEND": "Agg"}
    proc = subprocess.run([sys.executable, str(script)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, (
        f"{script.relative_to(ROOT)} exited with {proc.returncode}\n--- stdout (tail)\n"
        f"{proc.stdout[-3000:]}\n--- stderr (tail)\n{proc.stderr[-5000:]}")
    assert "finished in" in proc.stdout  # it ran to its last line


@pytest.mark.parametrize("path", markdown_files(),
                         ids=[str(p.relative_to(ROOT)) for p in markdown_files()])
def test_markdown_lines_at_most_100_characters(path):
    long = [(i, len(line)) for i, line in enumerate(path.read_text().splitlines(), 1)
            if len(line) > MAX_LINE]
    assert not long, (f"{path.relative_to(ROOT)}: lines longer than {MAX_LINE} characters "
                      f"(line, length): {long[:10]}")


_LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


@pytest.mark.parametrize("path", markdown_files(),
                         ids=[str(p.relative_to(ROOT)) for p in markdown_files()])
def test_markdown_relative_links_resolve(path):
    broken = []
    for target in _LINK.findall(path.read_text()):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target) or target.startswith("#"):
            continue  # http(s), mailto, in-page anchors
        file_part = target.split("#", 1)[0]
        if file_part and not (path.parent / file_part).exists():
            broken.append(target)
    assert not broken, f"{path.relative_to(ROOT)}: links to missing files {broken}"


def test_readme_links_the_docs():
    readme = (ROOT / "README.md").read_text()
    for page in ("docs/methodology.md", "docs/data.md"):
        assert f"]({page}" in readme, f"README.md does not link {page}"
        assert (ROOT / page).is_file(), f"{page} does not exist"
