"""Bench: ``state_simulations`` against the reference pipeline's way, and matrix assembly.

For the same households (default: 1,000 and the demo preset's 3,000, stratified from the real
CPS file) and the same variables (those the targets DB needs), times

* reference: one policyengine-us simulation per state, every needed variable computed in each
  (one simulation reused across states with ``branches.clear()`` + ``drop_computed_arrays()``,
  the fastest correct variant of spec/FEASIBILITY §6), with ``--reference-engine`` stock
  (policyengine-us's Microsimulation, as the reference ran it) and/or unweighted (our class:
  unweighted answers inside, 3.4x faster on its own, and ``engine_speedups`` - the
  like-for-like comparison);
* ours: :func:`calibration_core.simulation.simulate_states` - stacked multi-state chunks
  (``--chunk`` households per chunk) on ``--workers`` processes, the first chunk traced to find
  the state-invariant variables (stored once);
* assembly: :func:`calibration_core.package.build_package` for the demo preset's clones;
* with ``--compare-unrouted CHUNK``, also ours without :class:`~calibration_core.simulation.
  StateRouter` (each state's own rules on every stacked row, as policyengine-core runs them) in
  chunks of CHUNK households - the previous default was 6,000, the best chunk without routing;
* with ``--compare-county-classes``, ours (one state copy per county class, the default:
  probe, then every variable in each state's default copy and the county-dependent ones in
  its other classes) against ours with one copy per state at its most populous county
  (``county_classes=False``, the representative-county mode), one after the other in this
  command; a table gives wall and CPU seconds (this process and every worker task,
  policyengine-us starts included), the probe's share, state copies and their ratios, and the
  classes per state. The demo build's own figures: ``--n 3000 --skip-reference
  --compare-county-classes`` (2 workers, chunk 26,000, as the asset runs).

Ours always runs all 51 states. The reference runs in a fresh process (its one-off start-up is
counted, as in the reference) on ``--ref-states K`` states (default 51); with K < 51 its
51-state time is extrapolated as first state + mean of the others x 50, and the table says so.
The CPU may be shared: the table prints the load average.

    python bench/bench_state_simulations.py --raw RAW_DIR --db targets.db [--n 1000 3000]
        [--ref-states 8] [--chunk 26000] [--workers 2] [--compare-unrouted 6000]
        [--compare-county-classes]
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from calibration_core import geography as geo_mod  # noqa: E402
from calibration_core import package as pkg  # noqa: E402
from calibration_core import simulation as simu  # noqa: E402
from calibration_core import targets_db as tdb  # noqa: E402
from calibration_core.h5_dataset import read_dataset, write_dataset  # noqa: E402
from calibration_core.presets import get_preset  # noqa: E402

# a spread of cheap and expensive states (NY is the costliest in spec/FEASIBILITY §6)
SAMPLE_ORDER = (36, 6, 48, 2, 12, 17, 42, 30, 51, 37, 55, 8, 11, 39, 26, 13)


def make_dataset(raw: Path, n: int, out: Path) -> Path:
    from calibration_core import microdata as md

    source = md.load_cps_source(raw, 2024, "auto")
    tables, _ = md.build_base_tables(source, raw, 2024, benchmark=True)
    strat, _ = md.stratify_tables(tables, n, get_preset("demo").top_agi_percentile, 20240101)
    return write_dataset(out, strat, 2024)


def reference_loop(path: Path, variables, states, counties, engine: str) -> dict:
    """One reused simulation, one state after another (spec §4.4 / FEASIBILITY §6); ``engine``
    "stock": policyengine-us's Microsimulation, as the reference ran it; "unweighted": ours
    (:func:`calibration_core.simulation._microsimulation`, unweighted answers inside)."""
    tables, _ = read_dataset(path)
    specs = simu.takeup_specs_for(variables)
    forced = [(s.entity, s.input) for s in specs]
    t0 = time.perf_counter()
    stacked = simu.stack_tables(tables, [states[0]], counties, forced)
    if engine == "stock":
        from policyengine_us import Microsimulation
        from policyengine_us.data.dataset_schema import USSingleYearDataset

        sim = Microsimulation(dataset=USSingleYearDataset(**stacked, time_period=2024),
                              dataset_end_year=2024)
    else:
        sim = simu._microsimulation(stacked, 2024)
    n = len(tables["household"])
    per_state = []
    for state in states:
        t = time.perf_counter()
        sim.set_input("state_fips", 2024, np.full(n, state))
        sim.set_input("county_fips", 2024, np.full(n, counties[state]))
        sim.branches.clear()
        sim.drop_computed_arrays()
        for v in variables:
            sim.calculate(v, 2024, use_weights=False)
        per_state.append(time.perf_counter() - t)
    return {"seconds": time.perf_counter() - t0, "per_state": per_state}


def timed_run(path, variables, county, population, states, args, county_classes=True):
    """simulate_states once: (result, figures) - wall and CPU seconds (this process plus every
    worker's tasks, their policyengine-us starts included), copies, probe."""
    t, cpu = time.perf_counter(), time.process_time()
    sims = simu.simulate_states(path, variables, county, population, states=states,
                                max_households_per_chunk=args.chunk, workers=args.workers,
                                county_classes=county_classes,
                                log=lambda msg: print("   ", msg, flush=True))
    wall, cpu = time.perf_counter() - t, time.process_time() - cpu
    m = sims.metadata
    workers_cpu = sum(m.get("chunk_cpu_seconds", [])) + m.get("probe_cpu_seconds", 0.0)
    return sims, {
        "wall s": wall, "CPU s": cpu + workers_cpu,
        "probe wall s": m.get("probe_seconds", 0.0),
        "probe CPU s": m.get("probe_cpu_seconds", 0.0),
        "chunks": len(m["chunks"]), "chunk wall s (sum)": sum(m["chunk_seconds"]),
        "state copies": m["state_copies"], "classes": m["county_classes"],
        "county-dependent": m.get("county_dependent", []),
        "load": os.getloadavg()[0]}


def county_class_table(n: int, on: dict, off: dict, args) -> str:
    """The --compare-county-classes table (county classes ON against one copy per state)."""
    rows = ["wall s", "CPU s", "probe wall s", "probe CPU s", "chunk wall s (sum)", "chunks",
            "state copies", "load"]
    table = pd.DataFrame({
        "county classes (default)": [on[r] for r in rows],
        "one copy per state": [off[r] for r in rows],
        "ratio": [on[r] / off[r] if off[r] else float("nan") for r in rows]}, index=rows)
    split = {k: v for k, v in on["classes"].items() if v > 1}
    lines = [f"county classes vs one copy per state: {n:,} households, 51 states, "
             f"chunk {args.chunk:,}, {args.workers} workers, {os.cpu_count()} CPUs "
             "(load: 1-minute load average at the end of the run)",
             table.to_string(float_format=lambda x: f"{x:,.2f}"),
             f"classes per state ({on['state copies']} state copies; "
             f"{51 - len(split)} states with one class): {split}",
             f"computed in every class (county-dependent): {on['county-dependent']}"]
    return "\n".join(lines)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--raw", type=Path, required=True, help="raw folder (raw_public_inputs)")
    ap.add_argument("--db", type=Path, required=True, help="targets.db")
    ap.add_argument("--n", type=int, nargs="+", default=[1000, 3000])
    ap.add_argument("--ref-states", type=int, default=51,
                    help="states the reference loop runs (51 = all; fewer: extrapolated)")
    ap.add_argument("--chunk", type=int, default=simu.DEFAULT_CHUNK_HOUSEHOLDS)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--skip-reference", action="store_true")
    ap.add_argument("--reference-engine", nargs="+", choices=["stock", "unweighted"],
                    default=["stock", "unweighted"],
                    help="stock: policyengine-us's Microsimulation, as the reference ran it; "
                    "unweighted: the same simulation class as ours")
    ap.add_argument("--compare-unrouted", type=int, default=0, metavar="CHUNK",
                    help="also time ours without routing, CHUNK households per simulation")
    ap.add_argument("--work", type=Path, default=None)
    ap.add_argument("--compare-county-classes", action="store_true",
                    help="also run simulate_states with one copy per state (county_classes="
                         "False, the representative-county mode) and print the ratio")
    args = ap.parse_args(argv)

    work = args.work or Path(tempfile.mkdtemp(prefix="bench_sims_"))
    work.mkdir(parents=True, exist_ok=True)
    targets = tdb.read_targets(args.db)
    constraints = tdb.read_constraints(args.db)
    variables = simu.needed_variables(targets, constraints)
    county = geo_mod.load_county_table(args.raw / geo_mod.COUNTY_TABLE_FILE)
    population = geo_mod.district_population(targets)
    counties = simu.representative_counties(county, population)
    states = list(simu.STATE_ORDER)
    ref_states = states if args.ref_states >= 51 else list(SAMPLE_ORDER[: args.ref_states])
    rows, comparisons = [], []
    for n in args.n:
        path = work / f"households_{n}.h5"
        if not path.exists():
            make_dataset(args.raw, n, path)
        print(f"[{n}] ours: simulate_states, 51 states, chunk {args.chunk}, "
              f"{args.workers} workers", flush=True)
        sims, ours = timed_run(path, variables, county, population, states, args)
        m = sims.metadata
        ours_wall = ours["wall s"]
        # the traced chunk and each worker's policyengine-us start included
        ours_cpu = sum(m["chunk_seconds"]) + sum(m["start_seconds"])
        if args.compare_county_classes:  # county classes against one copy per state
            print(f"[{n}] ours with one copy per state (county_classes=False)", flush=True)
            _, one = timed_run(path, variables, county, population, states, args,
                               county_classes=False)
            comparisons.append(county_class_table(n, ours, one, args))
            print(comparisons[-1], flush=True)
        unrouted = {}
        if args.compare_unrouted:
            print(f"[{n}] ours without routing: chunk {args.compare_unrouted}", flush=True)
            t = time.perf_counter()
            plain = simu.simulate_states(path, variables, county, population, states=states,
                                         max_households_per_chunk=args.compare_unrouted,
                                         workers=args.workers, route=False,
                                         log=lambda m: print("   ", m, flush=True))
            unrouted = {"wall": time.perf_counter() - t,
                        "cpu": sum(plain.metadata["chunk_seconds"])
                        + sum(plain.metadata["start_seconds"])}
            for v in sims.variables:  # the same values either way
                a = sims.invariant.get(v, sims.by_state.get(v))
                b = plain.invariant.get(v, plain.by_state.get(v))
                if a.shape != b.shape or not np.array_equal(a, b):
                    raise SystemExit(f"routed and unrouted values of {v!r} differ")
        ref_51 = {}
        for engine in ([] if args.skip_reference else args.reference_engine):
            print(f"[{n}] reference ({engine}): one simulation per state, {len(ref_states)} "
                  "states, fresh process", flush=True)
            import multiprocessing as mp
            from concurrent.futures import ProcessPoolExecutor

            with ProcessPoolExecutor(1, mp_context=mp.get_context("spawn")) as pool:
                ref = pool.submit(reference_loop, path, variables, ref_states, counties,
                                  engine).result()
            ps = ref["per_state"]
            setup = ref["seconds"] - sum(ps)  # import + first simulation object
            ref_51[engine] = setup + ps[0] + (np.mean(ps[1:]) if len(ps) > 1 else ps[0]) * 50
            print(f"    measured {ref['seconds']:.1f} s; per state: {np.round(ps, 1).tolist()}",
                  flush=True)
        # assembly for the demo preset's clones
        preset = get_preset("demo")
        agi_mass, _ = geo_mod.district_agi(targets, population)
        geo = geo_mod.assign_geography(sims.structure.ids["household"],
                                       sims.household_total("adjusted_gross_income"),
                                       preset.clones, county, population, agi_mass)
        tables, _ = read_dataset(path)
        t = time.perf_counter()
        package = pkg.build_package(targets, constraints, sims, geo,
                                    tables["household"]["household_weight"].to_numpy(),
                                    pkg.load_target_config())
        build = time.perf_counter() - t
        row = {"households": n, "reference states run": len(ref_states),
               "ours wall s (51 states)": round(ours_wall, 1),
               "ours cpu s (all chunks)": round(ours_cpu, 1)}
        for engine, seconds in ref_51.items():
            row[f"reference {engine} s (51 states)"] = round(seconds, 1)
            row[f"speed-up wall vs {engine}"] = round(seconds / ours_wall, 2)
            row[f"speed-up cpu vs {engine}"] = round(seconds / ours_cpu, 2)
        rows.append({
            **row,
            "unrouted wall s": round(unrouted.get("wall", float("nan")), 1),
            "unrouted cpu s": round(unrouted.get("cpu", float("nan")), 1),
            "ours: policyengine-us starts s": [x for x in m["start_seconds"] if x >= 0.5],
            "ours: traced chunk s": m["traced_chunk_seconds"],
            "ours: chunks": len(m["chunks"]), "ours: chunk s": m["chunk_seconds"],
            "package": f"{package.n_targets} x {package.n_columns}",
            "nnz": package.matrix.nnz, "assembly s": package.metadata["assembly_seconds"],
            "package build s": round(build, 2),
        })
        print(f"    invariant: {m['state_invariant']}; dependent: {m['state_dependent']}")
    table = pd.DataFrame(rows)
    print()
    print(f"load average {os.getloadavg()}, {os.cpu_count()} CPUs (shared with other work);"
          f" chunk = {args.chunk} households, workers = {args.workers}")
    if len(ref_states) < 51:
        print(f"reference ran states {ref_states}; its 51-state time is extrapolated: first "
              "state (incl. start-up) + mean of the rest x 50")
    print(table.T.to_string(header=False))
    for text in comparisons:
        print()
        print(text)


if __name__ == "__main__":
    main()
