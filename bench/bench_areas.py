"""Benchmark: build all 488 area files (and the national file) the way ``area_datasets`` does.

Usage::

    python bench/bench_areas.py --store .areacal            # a built store (demo preset)
    python bench/bench_areas.py --microdata PATH.h5 --raw-dir RAW [--clones 16]

With ``--store`` it reads the store's stratified microdata, geography, package metadata,
state-simulation counties and regional / national weights. Without it, it draws a demo-sized
stand-in: the given microdata (the demo preset's stratified file has 3,000 households), a
population-proportional geography over ``--clones`` clones (real county table from
``RAW/county_cd_distributions.csv``, uniform district populations) and lognormal weights with
40% L0 zeros. Files go to a temporary folder (``--out`` to keep them).

Prints a table: inputs load, build (assembly), write (H5 + sha256), per-kind counts and sizes,
and the total against the goal (< 5 minutes on 2 cores; policyengine-us is not imported).
With ``--workers 2`` the 488 areas are split over two processes (each loads the inputs once).
With ``--simulate`` it then times the validation's stacked policyengine-us simulations of the
written files (the national file split by state, ``--states-per-simulation`` states each) for
the target variables of the default target config; the import is timed apart.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from calibration_core import aca_takeup  # noqa: E402
from calibration_core import assembly as asm  # noqa: E402
from calibration_core.areas import STATE_FIPS, all_area_keys, parse_area_key  # noqa: E402
from calibration_core.h5_dataset import read_dataset, write_dataset  # noqa: E402
from calibration_core.io_utils import sha256_file  # noqa: E402
from calibration_core import validation as val  # noqa: E402

GOAL_SECONDS = 300.0
TARGET_VARIABLES = ["adjusted_gross_income", "age", "eitc", "medicaid_enrolled", "snap",
                    "tax_unit_is_filer"]


def _simulate(out: str, states_per_simulation: int) -> None:
    t0 = time.perf_counter()
    import policyengine_us  # noqa: F401

    t_import = time.perf_counter() - t0
    pieces, states = [], []
    for f in sorted(Path(out).rglob("*.h5")):
        t = read_dataset(f)[0]
        st = t["household"]["state_fips"].to_numpy()
        if f.parent.name == "national":
            for s_ in np.unique(st):
                pieces.append(val.subset_tables(t, st == s_))
                states.append(int(s_))
        elif len(st):
            pieces.append(t)
            states.append(int(st[0]))
    order = np.argsort(states, kind="stable")
    pieces = [pieces[i] for i in order]
    states = np.asarray(states)[order]
    sizes = np.array([len(p["household"]) for p in pieces])
    rows = []
    t1 = time.perf_counter()
    for g in val._groups(states, sizes, states_per_simulation,
                         val.MAX_HOUSEHOLDS_PER_SIMULATION):
        t2 = time.perf_counter()
        stacked = val.stack_areas([str(i) for i in g], [pieces[i] for i in g])
        val.simulate_areas(stacked, TARGET_VARIABLES, 2024)
        rows.append({"states": len(set(states[g].tolist())), "households": int(sizes[g].sum()),
                     "seconds": time.perf_counter() - t2})
    print(pd.DataFrame(rows).round(1).to_markdown(index=False))
    print(f"policyengine-us import {t_import:.1f} s; {len(rows)} stacked simulations of "
          f"{int(sizes.sum())} households: {time.perf_counter() - t1:.1f} s")


def _inputs(args):
    t0 = time.perf_counter()
    if args.store:
        from calibration_core.geography import load_geography
        from calibration_core.simulation import load_state_simulations

        root = Path(args.store)
        tables, year = read_dataset(root / "microdata" / "stratified_2024.h5")
        base = asm.index_base(tables, year)
        geo = load_geography(root / "calibration" / "geography_assignment.npz")
        meta = json.loads((root / "calibration" / "package" / "metadata.json").read_text())
        state_takeup = aca_takeup.from_metadata(meta)
        takeup = asm.takeup_for_package(meta.get("takeup_rerandomised", []), state_takeup)
        rep = load_state_simulations(root / "calibration" / "state_simulations.npz") \
            .metadata["representative_county"]
        county = {STATE_FIPS[a]: c for a, c in rep.items()}
        weights = {k: asm.check_weights(np.load(root / "calibration" / k / "weights.npy"), geo)
                   for k in ("regional", "national")}
    else:
        from calibration_core.areas import district_geoids
        from calibration_core.geography import assign_geography, load_county_table
        from calibration_core.simulation import representative_counties, takeup_specs_for

        tables, year = read_dataset(args.microdata)
        base = asm.index_base(tables, year)
        table = load_county_table(Path(args.raw_dir) / "county_cd_distributions.csv")
        pop = pd.Series(1.0, index=district_geoids())
        agi = np.zeros(base.n_records)
        geo = assign_geography(base.household_id, agi, args.clones, table, pop, None)
        rng = np.random.default_rng(0)
        n = geo.n_clones * geo.n_records
        weights = {}
        for k in ("regional", "national"):
            w = rng.lognormal(3.0, 1.0, n)
            w[rng.random(n) < 0.4] = 0.0
            weights[k] = asm.check_weights(w, geo)
        takeup = takeup_specs_for(["snap", "medicaid_enrolled"])
        state_takeup = []
        county = representative_counties(table, pop)
    return base, geo, weights, (takeup, state_takeup), county, time.perf_counter() - t0


def _build(args, keys, out_dir):
    base, geo, weights, takeup, county, t_in = _inputs(args)
    rows = []
    for key in keys:
        t0 = time.perf_counter()
        area = parse_area_key(key) if key != "national-US" else None
        w = weights["national" if area is None else "regional"]
        b = asm.build_area_tables(base, geo, w, area, takeup[0], county, None, takeup[1])
        t1 = time.perf_counter()
        rel = area.relative_path if area is not None else "national/US.h5"
        path = Path(out_dir) / rel
        write_dataset(path, b.tables, base.year)
        sha256_file(path)
        t2 = time.perf_counter()
        rows.append({"area": key, "kind": area.kind if area else "national",
                     "households": b.households, "persons": b.persons,
                     "bytes": path.stat().st_size, "build_s": t1 - t0, "write_s": t2 - t1})
    return rows, t_in, os.getpid()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--store")
    ap.add_argument("--microdata")
    ap.add_argument("--raw-dir")
    ap.add_argument("--clones", type=int, default=16)
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--out")
    ap.add_argument("--simulate", action="store_true")
    ap.add_argument("--states-per-simulation", type=int, default=val.STATES_PER_SIMULATION)
    args = ap.parse_args(argv)
    if not args.store and not (args.microdata and args.raw_dir):
        ap.error("give --store, or --microdata and --raw-dir")
    keys = all_area_keys() + ["national-US"]
    out = args.out or tempfile.mkdtemp(prefix="bench-areas-")
    t0 = time.perf_counter()
    if args.workers <= 1:
        parts = [_build(args, keys, out)]
    else:
        # interleave so both workers get states, districts and the national file alike
        chunks = [keys[i::args.workers] for i in range(args.workers)]
        with ProcessPoolExecutor(args.workers) as pool:
            parts = list(pool.map(_build, [args] * len(chunks), chunks, [out] * len(chunks)))
    total = time.perf_counter() - t0
    df = pd.DataFrame([r for rows, _, _ in parts for r in rows])
    by_kind = df.groupby("kind").agg(files=("area", "size"), households=("households", "sum"),
                                     persons=("persons", "sum"), mb=("bytes", "sum"),
                                     build_s=("build_s", "sum"), write_s=("write_s", "sum"))
    by_kind["mb"] = (by_kind["mb"] / 1e6).round(2)
    print(f"inputs: {args.store or args.microdata}; workers {args.workers}; out {out}")
    print(by_kind.round(2).to_markdown())
    summary = pd.DataFrame([
        {"step": "load inputs (per worker)", "seconds": max(t for _, t, _ in parts)},
        {"step": "assembly (all files)", "seconds": df["build_s"].sum()},
        {"step": "write + sha256 (all files)", "seconds": df["write_s"].sum()},
        {"step": "wall clock, 489 files", "seconds": total},
        {"step": "goal", "seconds": GOAL_SECONDS},
    ])
    print(summary.round(2).to_markdown(index=False))
    print(f"{'PASS' if total < GOAL_SECONDS else 'OVER'}: {len(df)} files in {total:.1f} s "
          f"(empty areas: {int((df['households'] == 0).sum())})")
    if args.simulate:
        _simulate(out, args.states_per_simulation)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
