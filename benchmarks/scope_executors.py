"""SCOPE throughput by executor: this process, the local process pool, a dask cluster; same structures, one run.

    python -m benchmarks.scope_executors [--n 600] [--repeats 3] [--json FILE]

(from the repository root). On the first N structures of matbench_dielectric, as Structure objects:

* **spglib floor** — ``spglib.get_symmetry_dataset`` alone on (lattice, frac, Z) cells extracted before the
  clock starts, as in ``python -m benchmarks scope``: the symmetry search any SCOPE code pays for;
* **jobs=1** — ``scope_table(items, jobs=1)``: everything in this process;
* **pool jobs=2** — ``scope_table(items, jobs=2)``: the local pool of 2 worker processes (fork where the platform
  has it), started and stopped inside each timed call, as a user runs it;
* **dask 2x1** — ``scope_table(items, executor=client)`` on a ``distributed.LocalCluster`` of 2 worker processes
  x 1 thread on loopback. The cluster's start-up and a warm-up call (the workers import cloudlib, pymatgen and
  spglib on their first task) are timed apart and not in the rate. This process validates each structure into a
  light cell and pickles it for the cluster (as for spawned workers); that cost alone is reported as
  **client packing**.

Each method runs ``repeats`` times, interleaved; the best time counts. The tables (strings and errors) must be
identical across jobs=1, the pool and dask. Rates are structures per second of wall time; "per worker" divides
by the worker processes the method uses (1, 2, 2).
"""

from __future__ import annotations

import argparse
import logging
import os
import pickle
import platform
import time

import numpy as np

from benchmarks.bench import _best, _print, process_scaling_ceiling


def machine() -> dict:
    """CPU model and the flags that matter here (from /proc/cpuinfo where there is one)."""
    model, flags = platform.processor() or platform.machine(), set()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name") and ":" in line:
                    model = line.split(":", 1)[1].strip()
                elif line.startswith("flags") and ":" in line:
                    flags = set(line.split(":", 1)[1].split())
    except OSError:
        pass
    wanted = ("avx2", "avx512f", "avx512_bf16", "amx_bf16")
    return {
        "cpu": model,
        "cores": os.cpu_count(),
        "flags": " ".join(f for f in wanted if f in flags) or "none of avx2+",
    }


def bench_executors(n: int = 600, repeats: int = 3, workers: int = 2) -> dict:
    import dask
    import distributed
    import spglib

    from cloudlib.matbench_data import load_matbench
    from cloudlib.scope import MAX_ATOMS, as_structure, scope_table, structure_cell

    structures = load_matbench("matbench_dielectric")["structure"].iloc[:n]
    items = structures.to_dict()
    n = len(items)
    cells = [
        (s.lattice.matrix, s.frac_coords, np.array([site.specie.Z for site in s], dtype=np.intc)) for s in structures
    ]

    def run_floor():
        return [spglib.get_symmetry_dataset(c, symprec=0.01, angle_tolerance=5.0) for c in cells]

    def run_packing():
        return [
            pickle.dumps(
                (k, structure_cell(as_structure(v, k, MAX_ATOMS), k, MAX_ATOMS)), protocol=pickle.HIGHEST_PROTOCOL
            )
            for k, v in items.items()
        ]

    t0 = time.perf_counter()
    with dask.config.set({"distributed.scheduler.allowed-failures": 3}):
        cluster = distributed.LocalCluster(
            n_workers=workers,
            threads_per_worker=1,
            processes=True,
            dashboard_address=None,
            host="127.0.0.1",
            silence_logs=logging.ERROR,
        )
    client = distributed.Client(cluster)
    startup = time.perf_counter() - t0
    try:
        t0 = time.perf_counter()
        scope_table(dict(list(items.items())[: 4 * workers]), executor=client, progress=False, chunksize=1)
        warmup = time.perf_counter() - t0
        runs = {
            "spglib floor": run_floor,
            "client packing": run_packing,
            "jobs=1": lambda: scope_table(items, jobs=1, progress=False),
            f"pool jobs={workers}": lambda: scope_table(items, jobs=workers, progress=False),
            f"dask {workers}x1": lambda: scope_table(items, executor=client, progress=False),
        }
        timings: dict[str, list[float]] = {k: [] for k in runs}
        outputs: dict = {}
        for _ in range(repeats):  # interleaved, so drift in the machine's load hits every method alike
            for name, fn in runs.items():
                t, out = _best(fn, 1)
                timings[name].append(t)
                outputs[name] = out
    finally:
        client.close()
        cluster.close()
    rate = {k: n / min(v) for k, v in timings.items()}
    procs = {"jobs=1": 1, f"pool jobs={workers}": workers, f"dask {workers}x1": workers}
    tables = [outputs[k] for k in procs]
    identical = all(t.equals(tables[0]) for t in tables[1:])
    one, pool, dsk = (rate[k] for k in procs)
    return {
        "machine": machine(),
        "structures": n,
        "mean_atoms": round(float(np.mean([len(s) for s in structures])), 1),
        "repeats": repeats,
        "rates_per_s": {k: round(v, 1) for k, v in rate.items()},
        "per_worker_per_s": {k: round(rate[k] / p, 1) for k, p in procs.items()},
        "ratios": {
            "jobs=1 / spglib floor": round(one / rate["spglib floor"], 3),
            f"pool jobs={workers} / jobs=1": round(pool / one, 3),
            f"dask {workers}x1 / jobs=1": round(dsk / one, 3),
            f"dask {workers}x1 / pool jobs={workers}": round(dsk / pool, 3),
            f"machine ceiling, {workers} processes (pure Python control)": round(
                process_scaling_ceiling(jobs=workers), 3
            ),
        },
        "dask_seconds_apart": {"cluster start-up": round(startup, 2), "warm-up call": round(warmup, 2)},
        "errors": int(tables[0]["error"].notna().sum()),
        "identical_output": bool(identical),
    }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.scope_executors", description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=600, help="structures (first N of matbench_dielectric)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--json", help="also write the results here")
    args = p.parse_args(argv)
    result = bench_executors(args.n, args.repeats)
    _print("SCOPE by executor (structures/s, same structures, one run)", result)
    if args.json:
        from cloudlib.io import write_json

        write_json(args.json, {"scope_executors": result})
    return 0 if result["identical_output"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
