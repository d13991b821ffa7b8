"""SCOPE at jobs=1: this checkout's ``cloudlib.scope`` against an earlier commit's, and both against the spglib floor.

    python -m benchmarks.scope_versions --rev f978fd6 [--n 1000] [--repeats 9] [--chunk 100] [--json FILE]

(from the repository root, in a git checkout). The earlier ``cloudlib/scope.py`` is read with ``git show REV:...``
and imported as a module of its own beside the current one, so both run in one process on the same structures
(the first N of matbench_dielectric, as Structure objects):

* **spglib floor** — ``spglib.get_symmetry_dataset`` alone on (lattice, frac, Z) cells extracted before the
  clock starts, as in ``python -m benchmarks scope``;
* **REV** / **this checkout** — ``scope_table(items, jobs=1)`` of each version.

The three alternate on chunks of ``chunk`` structures and each chunk's best repeat counts (on a shared VM whole
passes differ by several per cent from one repeat to the next); ``scope_table``'s fixed cost per call (~0.3 ms)
is paid per chunk by both versions. The two versions' strings and errors must be identical.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from benchmarks.bench import chunk_times
from benchmarks.scope_executors import machine


def load_version(rev: str):
    """``cloudlib.scope`` as it was at ``rev``, imported as ``cloudlib._scope_at_<rev>``."""
    text = subprocess.run(
        ["git", "show", f"{rev}:cloudlib/scope.py"], capture_output=True, text=True, check=True
    ).stdout
    path = Path(tempfile.mkdtemp()) / "scope_at_rev.py"
    path.write_text(text)
    name = f"cloudlib._scope_at_{rev}"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # pickling of its functions (worker pools) finds it; jobs=1 does not need it
    spec.loader.exec_module(module)
    return module


def compare(rev: str, n: int = 1000, repeats: int = 9, chunk: int = 100) -> dict:
    import spglib

    from cloudlib.matbench_data import load_matbench
    from cloudlib.scope import scope_table

    old = load_version(rev)
    structures = load_matbench("matbench_dielectric")["structure"].iloc[:n]
    items = list(structures.to_dict().items())
    cells = [
        (s.lattice.matrix, s.frac_coords, np.array([site.specie.Z for site in s], dtype=np.intc)) for s in structures
    ]
    methods = {
        "spglib floor": lambda a, b: [
            spglib.get_symmetry_dataset(c, symprec=0.01, angle_tolerance=5.0) for c in cells[a:b]
        ],
        rev: lambda a, b: old.scope_table(dict(items[a:b]), jobs=1, progress=False),
        "this checkout": lambda a, b: scope_table(dict(items[a:b]), jobs=1, progress=False),
    }
    times, first = chunk_times(methods, len(items), chunk, repeats)
    tables = {m: [row for t in first[m] for row in zip(t["scope"], t["error"])] for m in (rev, "this checkout")}
    us = {m: 1e6 * t.min(axis=0).sum() / len(items) for m, t in times.items()}
    floor = us["spglib floor"]
    return {
        "structures": len(items),
        "repeats": repeats,
        "chunk": chunk,
        "microseconds a structure (sum of each chunk's best)": {m: round(v, 1) for m, v in us.items()},
        "beyond the floor (microseconds a structure)": {
            m: round(v - floor, 1) for m, v in us.items() if m != "spglib floor"
        },
        "ratio to the spglib floor": {m: round(floor / v, 3) for m, v in us.items() if m != "spglib floor"},
        "this checkout / rev (speed)": round(us[rev] / us["this checkout"], 3),
        "ratio to the floor, each whole repeat (this checkout)": np.round(
            times["spglib floor"].sum(1) / times["this checkout"].sum(1), 3
        ).tolist(),
        "ratio to the floor, each whole repeat (rev)": np.round(
            times["spglib floor"].sum(1) / times[rev].sum(1), 3
        ).tolist(),
        "identical_output": tables[rev] == tables["this checkout"],
        "machine": machine(),
    }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rev", required=True, help="the earlier commit")
    p.add_argument("--n", type=int, default=1000)
    p.add_argument("--repeats", type=int, default=9)
    p.add_argument("--chunk", type=int, default=100)
    p.add_argument("--json", help="also write the result here")
    args = p.parse_args(argv)
    result = {"command": "python -m benchmarks.scope_versions " + " ".join(argv or sys.argv[1:])}
    result.update(compare(args.rev, args.n, args.repeats, args.chunk))
    print(json.dumps(result, indent=1))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1) + "\n")
    return 0 if result["identical_output"] else 1


if __name__ == "__main__":
    sys.exit(main())
