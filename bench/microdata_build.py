"""Time the microdata stage on the real raw inputs and print sizes and the state-population table.

    python bench/microdata_build.py [RAW_DIR] [--preset demo] [--out DIR]

RAW_DIR defaults to ``$AREACAL_HOME/raw`` (run ``raw_public_inputs`` first) or fetches the
pinned packages into a temporary folder. Prints: step timings, file sizes, weighted population
before/after benchmarking, and the stratified file's weighted population by state vs ACS S0101.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from calibration_core import microdata as md  # noqa: E402
from calibration_core.h5_dataset import write_dataset  # noqa: E402
from calibration_core.microdata_parts import enhance  # noqa: E402
from calibration_core.presets import get_preset  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("raw_dir", nargs="?")
    parser.add_argument("--preset", default="demo")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    raw = Path(args.raw_dir or Path(os.environ.get("AREACAL_HOME", ".areacal")) / "raw")
    if not (raw / "cps.csv.gz").exists():
        from calibration_core.raw_inputs import fetch_from_pypi

        raw = Path(tempfile.mkdtemp()) / "raw"
        fetch_from_pypi(raw)
    out = Path(args.out or tempfile.mkdtemp())
    preset = get_preset(args.preset)
    rows = []

    def step(name, fn):
        start = time.perf_counter()
        value = fn()
        rows.append((name, time.perf_counter() - start))
        return value

    source = step("read + validate CPS source", lambda: md.load_cps_source(raw))
    tables, info = step("build base tables", lambda: md.build_base_tables(source, raw))
    base = step("write base_2024.h5", lambda: write_dataset(out / "base_2024.h5", tables, 2024))
    enhanced_tables, notes = step("enhance (PUF/donors when present)",
                                  lambda: enhance.enhance_tables(tables, raw))
    enhanced = step("write enhanced_2024.h5",
                    lambda: write_dataset(out / "enhanced_2024.h5", enhanced_tables, 2024))
    strat, sinfo = step("stratify", lambda: md.stratify_tables(
        enhanced_tables, preset.base_households, preset.top_agi_percentile, preset.seed))
    strat_path = step("write stratified_2024.h5",
                      lambda: write_dataset(out / "stratified_2024.h5", strat, 2024))

    print(f"\n## timings (preset {preset.name}, source {source.kind})\n")
    print("| step | seconds |\n|---|---:|")
    for name, seconds in rows:
        print(f"| {name} | {seconds:.2f} |")
    print("\n## files\n\n| file | households | persons | MB |\n|---|---:|---:|---:|")
    for path, t in ((base, tables), (enhanced, enhanced_tables), (strat_path, strat)):
        print(f"| {path.name} | {len(t['household']):,} | {len(t['person']):,} | "
              f"{path.stat().st_size / 1e6:.2f} |")
    print(f"\nenhancement: {notes}")
    print(f"stratification: {sinfo}")
    acs = md.acs_state_population(raw / "acs_S0101_state_2024.json")
    national = md.acs_national_population(raw / "acs_S0101_national_2024.json")
    factor = info["benchmark_factor_by_state"]
    raw_pct = 100.0 * (1.0 / factor - 1.0)
    raw_pop = acs / factor
    share_pct = 100.0 * ((raw_pop / raw_pop.sum()) / (acs / acs.sum()) - 1.0)
    print(f"\nWT2024 weighted persons before benchmarking: "
          f"{info['weighted_persons_before_benchmark']:,.0f} vs ACS {national:,.0f} "
          f"({100 * (info['weighted_persons_before_benchmark'] / national - 1):+.1f}%); "
          f"states within 5%: raw {int((raw_pct.abs() <= 5).sum())}, "
          f"after national scaling only {int((share_pct.abs() <= 5).sum())}")
    table = md.population_by_state(strat, acs).reset_index()
    table["wt2024_pct_diff"] = raw_pct.reindex(table["state_fips"]).to_numpy()
    table["nationally_scaled_pct_diff"] = share_pct.reindex(table["state_fips"]).to_numpy()
    table = table.assign(weighted_persons=table["weighted_persons"].round().astype("int64"),
                         acs_s0101=table["acs_s0101"].round().astype("int64"))
    print(f"\n## {strat_path.name}: weighted population by state vs ACS S0101 2024 "
          f"({int((table['pct_diff'].abs() <= 5).sum())} of 51 states within 5%)\n")
    print(table.drop(columns="state_fips").to_markdown(index=False, floatfmt=".2f"))


if __name__ == "__main__":
    main()
