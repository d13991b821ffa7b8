#!/usr/bin/env python
"""Phonon heat capacities Cv(T) of a few hundred small crystals with CHGNet + phonopy (resumable).

    OMP_NUM_THREADS=1 nice -n 10 .venv/bin/python scripts/make_chgnet_cv.py --limit 600 --time-budget-min 55
    .venv/bin/python scripts/make_chgnet_cv.py --finalize          # write the committed table only

The committed table was made by the first command (one session, about 45 min on one core).

Candidates (deterministic, see :func:`select`): ordered crystals of matbench_dielectric and of the
matcalc MP binary elasticity set whose primitive cell has <= 8 atoms, one per (reduced formula, space
group), in a seeded round-robin over space groups (at most ``--per-system`` picks per chemical system)
so that any prefix of the list is diverse (the list for a larger limit extends the one for a smaller
limit); corundum Al2O3 (mb-dielectric-4256, R-3c, 10 atoms) comes
first. Candidates whose phonon run would need more than ``--max-force-atoms`` (displacements + 1) x
supercell atoms of CHGNet evaluations are skipped (this mostly removes low-symmetry cells, which need
many displacements).

Each finished material is appended (one JSON line, flushed and fsynced) to
``data/cache/chgnet_cv/checkpoint-<settings hash>.jsonl``; a rerun skips ids already there, so a kill
loses at most the material in progress. At the end (or with ``--finalize``) the committed outputs are
written atomically: ``data/chgnet_cv/chgnet_cv.csv`` and ``data/chgnet_cv/provenance.json``.
"""

from __future__ import annotations

import argparse
import os
import sys


def _args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--limit", type=int, default=600, help="number of candidates to select (default 600)")
    p.add_argument("--time-budget-min", type=float, default=None, help="stop cleanly after this many minutes")
    p.add_argument("--threads", type=int, default=1, help="torch/OpenMP threads (default 1)")
    p.add_argument("--finalize", action="store_true", help="only write the committed table from the checkpoint")
    p.add_argument("--no-finalize", action="store_true", help="do not write the committed table at the end")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-prim-atoms", type=int, default=8)
    p.add_argument("--per-system", type=int, default=2, help="max picks per chemical system (default 2)")
    p.add_argument("--max-force-atoms", type=int, default=3000, help="cost cap, see module docstring")
    p.add_argument("--supercell-min-length", type=float, default=10.0)
    p.add_argument("--max-supercell-atoms", type=int, default=160)
    p.add_argument("--mesh-length", type=float, default=60.0)
    p.add_argument("--displacement", type=float, default=0.03, help="A (see cloudlib.phonons)")
    p.add_argument("--imaginary-tol-thz", type=float, default=0.3)
    p.add_argument(
        "--max-imag-fraction",
        type=float,
        default=None,
        help="also call a crystal unstable when more than this share of its modes is imaginary "
        "(default: off, the rule of the committed table; cloudlib.phonons uses 0.02)",
    )
    p.add_argument("--out", default=None, help="output folder (default data/chgnet_cv)")
    return p.parse_args(argv)


ARGS = _args() if __name__ == "__main__" else None
if ARGS is not None:  # before numpy/torch are imported
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[var] = str(ARGS.threads)

import datetime  # noqa: E402
import gzip  # noqa: E402
import hashlib  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import signal  # noqa: E402
import time  # noqa: E402
import warnings  # noqa: E402
from importlib.metadata import version  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from cloudlib import paths, phonons  # noqa: E402
from cloudlib.errors import CloudError  # noqa: E402
from cloudlib.io import write_csv, write_json  # noqa: E402
from cloudlib.matbench_data import load_matbench  # noqa: E402
from cloudlib.registry import REGISTRY, fetch  # noqa: E402

DIELECTRIC = "pypi/crystal_toolkit-2026.7.20/matbench_dielectric.json.gz"
ELASTICITY = "matcalc/mp-binary-pbe-elasticity-2025.1.json.gz"
CORUNDUM = "mb-dielectric-4256"  # Al2O3, R-3c (167): compared with experiment in the notebook


def settings(args) -> dict:
    s = {
        "temperatures_K": list(phonons.TEMPERATURES),
        "relax": True,
        "fmax_ev_per_A": 0.01,
        "relax_steps": 300,
        "relax_optimizer": "FIRE on FrechetCellFilter with FixSymmetry (chgnet StructOptimizer)",
        "symprec": 1e-3,
        "supercell_min_length_A": args.supercell_min_length,
        "max_supercell_atoms": args.max_supercell_atoms,
        "displacement_A": args.displacement,
        "mesh_length_A": args.mesh_length,
        "imaginary_tol_thz": args.imaginary_tol_thz,
        "selection": {
            "sources": [DIELECTRIC, ELASTICITY],
            "limit": args.limit,
            "seed": args.seed,
            "max_prim_atoms": args.max_prim_atoms,
            "per_system": args.per_system,
            "max_force_atoms": args.max_force_atoms,
            "always_first": CORUNDUM,
        },
    }
    if args.max_imag_fraction is not None:
        s.update(
            {
                "max_imag_fraction": args.max_imag_fraction,
                "imag_floor_thz": phonons.IMAG_FLOOR_THZ,
                "stability_rule": "min_freq_thz >= -imaginary_tol_thz and imag_fraction <= max_imag_fraction",
            }
        )
    return s


def settings_hash(s: dict) -> str:
    """Names the checkpoint. ``limit`` is left out: the candidate list is prefix-stable in it."""
    s = json.loads(json.dumps(s))
    s["selection"].pop("limit", None)
    return hashlib.sha256(json.dumps(s, sort_keys=True).encode()).hexdigest()[:10]


# --------------------------------------------------------------------------- selection


def _candidates() -> list[tuple[str, str, object]]:
    """(id, source, structure) of every offline candidate, in a fixed order."""
    from pymatgen.core import Structure

    out = []
    df = load_matbench("matbench_dielectric")
    out += [(i, "matbench_dielectric", s) for i, s in df["structure"].items()]
    rows = json.loads(gzip.decompress(fetch(ELASTICITY).read_bytes()))
    import ast

    for r in rows:
        d = r["structure"]
        d = d if isinstance(d, dict) else ast.literal_eval(d)
        out.append((r["mp_id"], "matcalc_mp_elasticity", Structure.from_dict(d)))
    return out


def select(args, log=print) -> list[dict]:
    """The deterministic candidate list (see the module docstring)."""
    from pymatgen.symmetry.analyzer import SpacegroupAnalyzer

    pool: dict[tuple, dict] = {}
    first = None
    for cid, source, s in _candidates():
        if cid == CORUNDUM:
            first = {"id": cid, "source": source, "structure": s}
            continue
        if not s.is_ordered or len(s) > 4 * args.max_prim_atoms:  # (conventional cells of F lattices)
            continue
        try:
            sga = SpacegroupAnalyzer(s, symprec=1e-3)
            spg = sga.get_space_group_number()
            n_prim = len(sga.find_primitive())
        except Exception:
            continue
        if n_prim > args.max_prim_atoms:
            continue
        key = (s.composition.reduced_formula, spg)
        pool.setdefault(key, {"id": cid, "source": source, "structure": s, "spacegroup": spg})
    if first is not None:
        first.update(
            phonons.displacement_plan(
                first["structure"], 1e-3, args.supercell_min_length, args.max_supercell_atoms, args.displacement
            )
        )
    log(f"pool: {len(pool)} unique (formula, space group) with <= {args.max_prim_atoms} atoms per primitive cell")
    rng = np.random.default_rng(args.seed)
    keys = sorted(pool, key=lambda k: (k[1], k[0]))
    order = rng.permutation(len(keys))
    buckets: dict[int, list] = {}
    for j in order:
        buckets.setdefault(keys[j][1], []).append(pool[keys[j]])
    spgs = sorted(buckets)
    picked = [first] if first is not None else []
    systems: dict[str, int] = {}
    skipped_cost = 0
    while len(picked) < args.limit and any(buckets.values()):
        for spg in spgs:
            if len(picked) >= args.limit:
                break
            bucket = buckets[spg]
            while bucket:
                c = bucket.pop(0)
                if first is not None and (c["structure"].composition.reduced_formula, c["spacegroup"]) == (
                    first["structure"].composition.reduced_formula,
                    first["spacegroup"],
                ):
                    continue  # another copy of corundum (the pool is keyed without it)
                system = c["structure"].composition.chemical_system
                if systems.get(system, 0) >= args.per_system:
                    continue
                try:
                    plan = phonons.displacement_plan(
                        c["structure"],
                        1e-3,
                        args.supercell_min_length,
                        args.max_supercell_atoms,
                        args.displacement,
                        name=c["id"],
                    )
                except CloudError:
                    continue
                if plan["force_atoms"] > args.max_force_atoms:
                    skipped_cost += 1
                    continue
                c.update(plan)
                systems[system] = systems.get(system, 0) + 1
                picked.append(c)
                break
    log(f"selected {len(picked)} candidates ({skipped_cost} skipped for cost > {args.max_force_atoms} force-atoms)")
    return picked


# --------------------------------------------------------------------------- checkpoint


def _read_jsonl(path: Path) -> list[dict]:
    if not path.exists():
        return []
    rows = []
    for line in path.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except ValueError:  # a line cut short by a kill: that material is simply redone
            continue
    return rows


def _append(path: Path, row: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        f.write(json.dumps(row) + "\n")
        f.flush()
        os.fsync(f.fileno())


class _Stop:
    """SIGTERM/SIGINT: finish (or abandon) the current material, then stop without finalizing twice."""

    def __init__(self):
        self.requested = False
        signal.signal(signal.SIGTERM, self._handler)

    def _handler(self, signum, frame):
        self.requested = True
        raise KeyboardInterrupt


def run(args, ckpt: Path, log=print) -> dict:
    import torch

    torch.set_num_threads(args.threads)
    t_start = time.time()
    done = {r["id"] for r in _read_jsonl(ckpt)}
    cands = _cached_selection(args, ckpt, log)
    todo = [c for c in cands if c["id"] not in done]
    log(f"{len(cands) - len(todo)} already in {ckpt.name}; {len(todo)} to compute")
    _write_selection(ckpt, cands)
    model = phonons.load_model()
    s = settings(args)
    n_new = 0
    stop = _Stop()
    budget_s = None if args.time_budget_min is None else args.time_budget_min * 60
    try:
        for c in todo:
            elapsed = time.time() - t_start
            if budget_s is not None and elapsed > budget_s:
                log(f"time budget of {args.time_budget_min} min reached after {n_new} materials; stopping")
                break
            from cloudlib.scope import structure_to_scope

            row = {"id": c["id"], "source": c["source"]}
            try:
                row["scope"] = structure_to_scope(c["structure"])
            except CloudError as exc:
                row["scope"] = None
                row["scope_error"] = str(exc)
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    r = phonons.phonon_cv(
                        c["structure"],
                        temperatures=s["temperatures_K"],
                        model=model,
                        fmax=s["fmax_ev_per_A"],
                        relax_steps=s["relax_steps"],
                        symprec=s["symprec"],
                        supercell_min_length=s["supercell_min_length_A"],
                        max_supercell_atoms=s["max_supercell_atoms"],
                        displacement=s["displacement_A"],
                        mesh_length=s["mesh_length_A"],
                        imaginary_tol_thz=s["imaginary_tol_thz"],
                        max_imag_fraction=s.get("max_imag_fraction"),
                        name=c["id"],
                    )
                row.update(status="ok", **r.as_row())
                row["structure"] = r.structure.as_dict()
                msg = f"Cv(300K)={r.cv_at(300):.1f} n={r.n_atoms} min_f={r.min_freq_thz:+.3f} {'stable' if r.stable else 'UNSTABLE'}"
            except Exception as exc:  # noqa: BLE001 - CloudError or a library error: record and go on
                row.update(status="failed", error=f"{type(exc).__name__}: {exc}")
                msg = row["error"][:200]
            row.pop("name", None)
            _append(ckpt, row)
            n_new += 1
            log(
                f"[{len(done) + n_new}/{len(cands)}] {c['id']} {row.get('formula', '')} {msg} ({row.get('wall_s', 0):.1f} s)"
            )
    except KeyboardInterrupt:
        stop.requested = True
        log("interrupted: the material in progress is not recorded; rerun to resume")
    session = {
        "start": datetime.datetime.fromtimestamp(t_start, datetime.timezone.utc).isoformat(timespec="seconds"),
        "wall_s": round(time.time() - t_start, 1),
        "new_materials": n_new,
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "threads": args.threads,
        "interrupted": stop.requested,
    }
    _append(ckpt.with_suffix(".sessions.jsonl"), session)
    return session


def _write_selection(ckpt: Path, cands: list[dict]) -> None:
    sel = [{k: v for k, v in c.items() if k != "structure"} for c in cands]
    write_json(ckpt.with_suffix(".selection.json"), sel)


def _cached_selection(args, ckpt: Path, log) -> list[dict]:
    """:func:`select`, cached with the structures next to the checkpoint (selection takes minutes)."""
    from pymatgen.core import Structure

    cache = ckpt.with_suffix(".candidates.json.gz")
    if cache.exists():
        saved = json.loads(gzip.decompress(cache.read_bytes()))
        if saved["limit"] >= args.limit or saved["exhausted"]:
            cands = saved["candidates"][: args.limit]
            for c in cands:
                c["structure"] = Structure.from_dict(c["structure"])
            log(f"selection: {len(cands)} candidates from {cache.name}")
            return cands
    cands = select(args, log)
    blob = {
        "limit": args.limit,
        "exhausted": len(cands) < args.limit,
        "candidates": [{**c, "structure": c["structure"].as_dict()} for c in cands],
    }
    from cloudlib.io import write_bytes

    write_bytes(cache, gzip.compress(json.dumps(blob).encode()))
    return cands


# --------------------------------------------------------------------------- finalize

COLUMNS = [
    "id",
    "source",
    "formula",
    "scope",
    "n_atoms",
    "spacegroup",
    "stable",
    "min_freq_thz",
    "min_freq_q",
    "imag_fraction",
    "energy_ev_per_atom",
    "volume_change",
    "relax_converged",
    "n_displacements",
    "supercell_atoms",
    "mesh",
    "wall_s",
]


def finalize(args, ckpt: Path, out: Path, log=print) -> dict:
    s = settings(args)
    rows = _read_jsonl(ckpt)
    seen, uniq = set(), []
    for r in rows:
        if r["id"] not in seen:
            seen.add(r["id"])
            uniq.append(r)
    sel_path = ckpt.with_suffix(".selection.json")
    order = {c["id"]: i for i, c in enumerate(json.loads(sel_path.read_text()))} if sel_path.exists() else {}
    uniq.sort(key=lambda r: order.get(r["id"], len(order)))
    ok = [r for r in uniq if r["status"] == "ok"]
    failed = [{"id": r["id"], "source": r["source"], "error": r["error"]} for r in uniq if r["status"] != "ok"]
    cv_cols = [phonons.cv_column(t) for t in s["temperatures_K"]]
    table = pd.DataFrame([{k: r.get(k) for k in COLUMNS + cv_cols} for r in ok], columns=COLUMNS + cv_cols)
    table["mesh"] = table["mesh"].map(lambda m: "x".join(str(x) for x in m) if isinstance(m, list) else m)
    table["min_freq_q"] = table["min_freq_q"].map(lambda q: " ".join(f"{x:g}" for x in q) if isinstance(q, list) else q)
    table["min_freq_thz"] = table["min_freq_thz"].round(4)
    table["imag_fraction"] = pd.to_numeric(table["imag_fraction"], errors="coerce").round(5)
    table["energy_ev_per_atom"] = table["energy_ev_per_atom"].round(5)
    table["volume_change"] = table["volume_change"].round(5)
    table["wall_s"] = table["wall_s"].round(2)
    table[cv_cols] = table[cv_cols].round(4)
    sessions = _read_jsonl(ckpt.with_suffix(".sessions.jsonl"))
    sources = {}
    for name in (DIELECTRIC, ELASTICITY):
        ds = REGISTRY[name]
        sources[name] = {
            "sha256": ds.sha256,
            "url": ds.url or f"PyPI {ds.archive} :: {ds.member}",
            "licence": ds.licence,
        }
    n_stable = int(table["stable"].sum()) if len(table) else 0
    prov = {
        "description": (
            "Harmonic phonon heat capacity Cv(T) at constant volume, J/(K mol of cells), the cell being the "
            "CHGNet-relaxed primitive cell with n_atoms atoms (the CLOUD-DEBYE convention; 3 n_atoms R is the "
            "classical limit). CHGNet forces, phonopy finite displacements. Rows with stable=False have "
            "imaginary modes (see settings.stability_rule) and should be filtered out for training."
        ),
        "units": {
            "cv_*K": "J/(K mol of cells)",
            "min_freq_thz": "THz (negative = imaginary)",
            "energy_ev_per_atom": "eV/atom (CHGNet)",
            "volume_change": "relaxed/input volume - 1",
            "wall_s": "s per material (1 CPU thread)",
        },
        "counts": {
            "selected": len(order) or None,
            "computed": len(table),
            "stable": n_stable,
            "unstable_imaginary": len(table) - n_stable,
            "failed": len(failed),
        },
        "failed": failed,
        "settings": s,
        "settings_hash": settings_hash(s),
        "versions": {
            "chgnet": version("chgnet"),
            "chgnet_model": str(getattr(phonons.load_model(), "version", "unknown")),
            "phonopy": version("phonopy"),
            "pymatgen": version("pymatgen"),
            "ase": version("ase"),
            "spglib": version("spglib"),
            "torch": version("torch"),
            "numpy": version("numpy"),
            "python": platform.python_version(),
        },
        "sources": sources,
        "compute": {
            "sum_material_wall_s": round(float(pd.to_numeric(table["wall_s"]).sum()), 1) if len(table) else 0.0,
            "mean_material_wall_s": round(float(pd.to_numeric(table["wall_s"]).mean()), 2) if len(table) else None,
            "sessions": sessions,
            "total_session_wall_s": round(sum(x["wall_s"] for x in sessions), 1),
            "machine": f"{platform.machine()} {platform.processor() or ''}".strip(),
        },
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": "OMP_NUM_THREADS=1 nice -n 10 .venv/bin/python scripts/make_chgnet_cv.py "
        f"--limit {args.limit} --time-budget-min {args.time_budget_min}",
        "script": "scripts/make_chgnet_cv.py",
    }
    write_csv(out / "chgnet_cv.csv", table, index=False)
    write_json(out / "provenance.json", prov)
    log(f"wrote {out / 'chgnet_cv.csv'}: {len(table)} computed, {n_stable} stable, {len(failed)} failed")
    return prov


def main(args) -> int:
    s = settings(args)
    ckpt = paths.cache_dir() / "chgnet_cv" / f"checkpoint-{settings_hash(s)}.jsonl"
    out = Path(args.out) if args.out else paths.data_dir() / "chgnet_cv"

    def log(msg):
        print(f"{time.strftime('%H:%M:%S')} {msg}", flush=True)

    if not args.finalize:
        run(args, ckpt, log)
    if args.finalize or not args.no_finalize:
        finalize(args, ckpt, out, log)
    return 0


if __name__ == "__main__":
    sys.exit(main(ARGS))
