"""Small helpers shared by the walk-throughs: the repository on ``sys.path``, an output folder,
section headings, tables and plots. Nothing here computes anything of the pipeline.

``AREACAL_DOCS_OUT``: folder for the PNG plots and toy files (default: ``areacal-docs`` in the
system's temporary folder). Each walk-through empties its own sub-folder when it starts, so
repeated runs do not pile up files.
"""
from __future__ import annotations

import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

_START = time.perf_counter()


def out_dir(name: str) -> Path:
    """``$AREACAL_DOCS_OUT/<name>`` (default ``<tmp>/areacal-docs/<name>``), emptied."""
    base = Path(os.environ.get("AREACAL_DOCS_OUT") or Path(tempfile.gettempdir()) / "areacal-docs")
    path = base / name
    if path.exists():
        shutil.rmtree(path)
    path.mkdir(parents=True)
    print(f"output folder: {path}")
    return path


def section(title: str) -> None:
    print(f"\n## {title}  [{time.perf_counter() - _START:5.1f} s]\n")


def show(frame, floatfmt: str = ",.6g", index: bool = False, max_rows: int = 40) -> None:
    """Print a DataFrame as a Markdown table (at most ``max_rows`` rows)."""
    import pandas as pd

    if isinstance(frame, pd.Series):
        frame = frame.to_frame()
    if len(frame) > max_rows:
        print(f"(first {max_rows} of {len(frame)} rows)")
        frame = frame.head(max_rows)
    print(frame.to_markdown(index=index, floatfmt=floatfmt))


def bar_plot(labels, values, title: str, path: Path, xlabel: str = "") -> None:
    """A horizontal bar chart: PNG with matplotlib when it is installed, else a text chart."""
    labels, values = [str(v) for v in labels], [float(v) for v in values]
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        plt = None
    if plt is not None:
        fig, ax = plt.subplots(figsize=(6, 0.3 * len(labels) + 1))
        ax.barh(labels[::-1], values[::-1])
        ax.set_title(title)
        ax.set_xlabel(xlabel)
        fig.tight_layout()
        fig.savefig(path, dpi=80)
        plt.close(fig)
        print(f"plot: {path}")
    text_bars(labels, values, title)


def text_bars(labels, values, title: str = "", width: int = 50) -> None:
    """Print a text bar chart (one row per label)."""
    top = max((abs(v) for v in values), default=1.0) or 1.0
    pad = max(len(str(lbl)) for lbl in labels)
    if title:
        print(title)
    for lbl, v in zip(labels, values):
        print(f"  {str(lbl):>{pad}} | {'#' * int(round(width * abs(v) / top)):<{width}} {v:,.4g}")


def line_plot(series: dict, title: str, path: Path, xlabel: str = "", ylabel: str = "",
              logy: bool = False) -> None:
    """Several (x, y) curves in one PNG (matplotlib if installed; otherwise nothing is drawn)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("(matplotlib not installed: no plot)")
        return
    fig, ax = plt.subplots(figsize=(6, 3.5))
    for name, (x, y) in series.items():
        ax.plot(x, y, label=str(name))
    if logy:
        ax.set_yscale("log")
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
    print(f"plot: {path}")


def done() -> None:
    print(f"\nfinished in {time.perf_counter() - _START:.1f} s")


def quiet_dagster() -> dict:
    """Silence Dagster's beta warnings and return a run config whose console logger prints
    only critical events (the walk-throughs print what they show themselves)."""
    import warnings

    warnings.filterwarnings("ignore", message=".*currently in beta.*")
    warnings.filterwarnings("ignore", message=".*is deprecated.*")
    return {"loggers": {"console": {"config": {"log_level": "CRITICAL"}}}}
