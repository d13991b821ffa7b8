"""The overlapping-atoms check before and after issue 12: peak memory and time, same cells, one run.

    python -m benchmarks overlap [--sizes 8000 64000] [--old-max 8000] [--repeats 3] [--json out.json]

(from the repository root; also ``python -m benchmarks.overlap``).

* **all pairs (before)** — the check as it was (:func:`all_pairs_check`, verbatim): the n x n x 3 array of
  fractional differences, rounded to the nearest image, times the lattice, then the n^2 squared distances.
  Time and memory O(n^2): the difference array alone is 24 n^2 bytes and the peak about 56 n^2 (the
  difference array, the Cartesian one and the distances), so it only runs up to ``--old-max`` atoms;
  above, the table gives what it would allocate.
* **neighbour list (now)** — :func:`cloudlib.scope.check_overlap`: a k-d tree over the sites and the
  periodic images near the cell's faces (LLL-reduced basis), the pairs closer than ``min_distance``, their
  distance by the same rounded-image formula. O(n log n) time, O(n) memory.

Each (method, size) runs in a fresh subprocess, so its peak resident set size (``ru_maxrss``) is its own.
The cell is a jittered simple-cubic grid (2.2 A spacing, +-0.11 A jitter: no overlaps, so every pair is
examined) built before the clock starts; the child reports its RSS peak before the check (interpreter,
numpy, scipy, pymatgen and the cell) and after it; the difference is what the check itself took.
The check runs ``repeats`` times; the best time counts.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

MIN_DISTANCE = 0.5
SPACING = 2.2


def all_pairs_closest(lattice: np.ndarray, frac: np.ndarray, min_distance: float) -> tuple | None:
    """The check before issue 12 (``cloudlib.scope._check_overlap`` at commit 20eb54c), verbatim, returning
    instead of raising: (squared distance, i, j) of the closest pair if closer than ``min_distance``, else None
    (the form ``cloudlib.scope._closest_pair`` returns, so the tests compare the two exactly)."""
    n = len(frac)
    if n < 2:
        return None
    d = frac[:, None, :] - frac[None, :, :]
    d -= np.rint(d)
    cart = d.reshape(-1, 3) @ lattice
    dist2 = np.einsum("ij,ij->i", cart, cart)
    dist2[:: n + 1] = np.inf  # self-distances
    k = int(dist2.argmin())
    if dist2[k] < min_distance**2:
        i, j = sorted(divmod(k, n))
        return float(dist2[k]), i, j
    return None


def all_pairs_check(lattice: np.ndarray, frac: np.ndarray, min_distance: float) -> tuple | None:
    """:func:`all_pairs_closest` as (i, j, distance), or None."""
    hit = all_pairs_closest(lattice, frac, min_distance)
    return None if hit is None else (hit[1], hit[2], float(np.sqrt(hit[0])))


def grid_cell(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A jittered simple-cubic cell of side**3 >= n sites (exactly n for cubes: 8,000 = 20^3, 64,000 = 40^3)."""
    side = round(n ** (1 / 3))
    if side**3 != n:
        raise ValueError(f"{n} is not a cube")
    rng = np.random.default_rng(seed)
    grid = np.indices((side,) * 3).reshape(3, -1).T
    frac = (grid + rng.uniform(-0.05, 0.05, size=grid.shape)) / side
    return np.eye(3) * SPACING * side, frac


def _rss_bytes() -> int:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024  # Linux reports KiB


def _child(method: str, n: int, repeats: int) -> dict:
    from cloudlib.errors import OverlappingAtomsError
    from cloudlib.scope import check_overlap

    lattice, frac = grid_cell(n)
    small_lattice, small_frac = grid_cell(27 * 8)
    check_overlap("warm-up", small_lattice, small_frac, MIN_DISTANCE)  # imports scipy, pymatgen's Lattice
    all_pairs_check(small_lattice, small_frac, MIN_DISTANCE)

    def new():
        try:
            check_overlap("cell", lattice, frac, MIN_DISTANCE)
        except OverlappingAtomsError as exc:
            return str(exc)
        return None

    run = new if method == "new" else (lambda: all_pairs_check(lattice, frac, MIN_DISTANCE))
    before = _rss_bytes()
    best, out = float("inf"), None
    for _ in range(repeats):
        t = time.perf_counter()
        out = run()
        best = min(best, time.perf_counter() - t)
    return {"seconds": best, "rss_before": before, "rss_peak": _rss_bytes(), "overlap": out}


def measure(method: str, n: int, repeats: int) -> dict:
    """Run one (method, size) in a fresh interpreter; its result dict."""
    cmd = [sys.executable, "-m", "benchmarks.overlap", "--child", method, str(n), "--repeats", str(repeats)]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=Path(__file__).resolve().parents[1])
    if proc.returncode != 0:
        raise RuntimeError(f"{method} at {n} atoms failed ({proc.returncode}): {proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _gib(b: float) -> float:
    return round(b / 2**30, 3)


def bench_overlap(sizes=(8000, 64000), old_max: int = 8000, repeats: int = 3) -> dict:
    rows = {}
    for n in sizes:
        row = {}
        new = measure("new", n, repeats)
        row["neighbour list"] = {
            "seconds": round(new["seconds"], 4),
            "peak_rss_gib": _gib(new["rss_peak"]),
            "check_rss_gib": _gib(new["rss_peak"] - new["rss_before"]),
        }
        if n <= old_max:
            old = measure("old", n, min(repeats, 2))
            row["all pairs"] = {
                "seconds": round(old["seconds"], 3),
                "peak_rss_gib": _gib(old["rss_peak"]),
                "check_rss_gib": _gib(old["rss_peak"] - old["rss_before"]),
            }
            row["ratios (all pairs / neighbour list)"] = {
                "time": round(old["seconds"] / new["seconds"], 1),
                "check memory": round(
                    (old["rss_peak"] - old["rss_before"]) / max(new["rss_peak"] - new["rss_before"], 1), 1
                ),
            }
            row["same answer"] = old["overlap"] is None and new["overlap"] is None
        else:
            row["all pairs"] = {
                "not run": f"first array 24 n^2 B = {_gib(24 * n * n):,} GiB, peak ~56 n^2 B = {_gib(56 * n * n):,} GiB"
            }
        rows[f"{n} atoms"] = row
    return rows


def _print(result: dict) -> None:
    for size, row in result.items():
        print(f"\n== {size}")
        for method, values in row.items():
            if isinstance(values, dict):
                print(f"  {method}:")
                for k, v in values.items():
                    print(f"    {k:<20} {v}")
            else:
                print(f"  {method:<22} {values}")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks overlap", description=__doc__.splitlines()[0])
    p.add_argument("--sizes", type=int, nargs="+", default=[8000, 64000], help="atoms per cell (cubes)")
    p.add_argument("--old-max", type=int, default=8000, help="largest cell the all-pairs check runs on")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--json", help="also write the results here")
    p.add_argument("--child", nargs=2, metavar=("METHOD", "N"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        print(json.dumps(_child(args.child[0], int(args.child[1]), args.repeats)))
        return 0
    print(f"machine: {platform.processor() or platform.machine()}, python {platform.python_version()}")
    result = bench_overlap(tuple(args.sizes), args.old_max, args.repeats)
    _print(result)
    if args.json:
        from cloudlib.io import write_json

        write_json(args.json, result)
    return 0 if all(row.get("same answer", True) for row in result.values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
