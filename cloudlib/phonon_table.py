"""The committed CHGNet phonon table ``data/chgnet_cv``: which crystals, how each is computed, how the table is written.

:class:`TableSettings` is everything that determines the table: the :class:`~cloudlib.phonons.PhononSettings` of
each calculation (:data:`TABLE_PHONONS`, the settings that made the committed table), the temperatures and the
:class:`Selection` of candidates. Its :meth:`~TableSettings.record` is the ``settings`` block of the table's
provenance and :meth:`~TableSettings.hash` names the checkpoint (both unchanged from the script that made the
committed table, so its provenance stays valid).

* :func:`select` -- the deterministic candidate list: ordered crystals of matbench_dielectric and of the matcalc MP
  binary elasticity set whose primitive cell has <= ``max_prim_atoms`` atoms, one per (reduced formula, space
  group), in a seeded round-robin over space groups (at most ``per_system`` picks per chemical system) so that any
  prefix of the list is diverse (the list for a larger limit extends the one for a smaller limit); corundum Al2O3
  (mb-dielectric-4256, R-3c, 10 atoms) first. Candidates whose phonon run would need more than ``max_force_atoms``
  (displacements + 1) x supercell atoms of CHGNet evaluations are skipped (mostly low-symmetry cells).
* :func:`run` -- each candidate's :func:`~cloudlib.phonons.phonon_cv`, written as one part of the table's
  :class:`~cloudlib.store.PartStore` (``data/cache/chgnet_cv/<hash>/materials/<id>.json``, atomically); a rerun
  skips the ids already there, so a kill loses at most the material in progress; a time budget stops it cleanly.
  Each session is a part of ``<hash>/sessions``. (A checkpoint of the earlier format, ``checkpoint-<hash>.jsonl``,
  is moved into the store once, when :func:`checkpoint` first opens it.)
* :func:`finalize` -- the committed outputs, written atomically: ``chgnet_cv.csv`` and ``provenance.json``.

``scripts/make_chgnet_cv.py`` is the command line over these.
"""

from __future__ import annotations

import dataclasses
import datetime
import gzip
import hashlib
import json
import os
import platform
import signal
import sys
import time
import warnings
from dataclasses import dataclass, field
from importlib.metadata import version
from pathlib import Path

import numpy as np
import pandas as pd

from . import paths, phonons
from .errors import CloudError
from .io import write_bytes, write_csv, write_json
from .phonons import TEMPERATURES, PhononSettings
from .store import PartStore

DIELECTRIC = "pypi/crystal_toolkit-2026.7.20/matbench_dielectric.json.gz"
ELASTICITY = "matcalc/mp-binary-pbe-elasticity-2025.1.json.gz"
CORUNDUM = "mb-dielectric-4256"  # Al2O3, R-3c (167): compared with experiment in notebook 05

#: The phonon settings of the committed table: a 160-atom supercell cap and the minimum-frequency stability
#: rule alone (the library's defaults are 200 atoms and, in addition, at most 2 % imaginary modes).
TABLE_PHONONS = PhononSettings(max_supercell_atoms=160, max_imag_fraction=None)


@dataclass(frozen=True)
class Selection:
    """Which candidates, in which order (see :func:`select`)."""

    limit: int = 600
    seed: int = 0
    max_prim_atoms: int = 8
    per_system: int = 2
    max_force_atoms: int = 3000


@dataclass(frozen=True)
class TableSettings:
    """Everything that determines the table."""

    phonons: PhononSettings = TABLE_PHONONS
    selection: Selection = field(default_factory=Selection)
    temperatures: tuple = TEMPERATURES

    def record(self) -> dict:
        """The provenance's ``settings`` block."""
        rec = {"temperatures_K": list(self.temperatures), **self.phonons.record()}
        stability = {k: rec.pop(k) for k in ("max_imag_fraction", "imag_floor_thz", "stability_rule") if k in rec}
        rec["selection"] = {
            "sources": [DIELECTRIC, ELASTICITY],
            "limit": self.selection.limit,
            "seed": self.selection.seed,
            "max_prim_atoms": self.selection.max_prim_atoms,
            "per_system": self.selection.per_system,
            "max_force_atoms": self.selection.max_force_atoms,
            "always_first": CORUNDUM,
        }
        rec.update(stability)
        return rec

    def computation(self) -> dict:
        """What one material's row depends on: :meth:`record` without the selection's ``limit`` (the candidate list
        is prefix-stable in it)."""
        s = self.record()
        s["selection"].pop("limit", None)
        return s

    def hash(self) -> str:
        """Names the checkpoint."""
        return hashlib.sha256(json.dumps(self.computation(), sort_keys=True).encode()).hexdigest()[:10]

    def checkpoint(self) -> Path:
        """The checkpoint folder of these settings: ``materials/`` and ``sessions/`` stores, the selection cache."""
        return paths.cache_dir() / "chgnet_cv" / self.hash()


# --------------------------------------------------------------------------- selection


def _candidates() -> list[tuple[str, str, object]]:
    """(id, source, structure) of every offline candidate, in a fixed order."""
    import ast

    from pymatgen.core import Structure

    from .matbench_data import load_matbench
    from .registry import fetch

    df = load_matbench("matbench_dielectric")
    out = [(i, "matbench_dielectric", s) for i, s in df["structure"].items()]
    for r in json.loads(gzip.decompress(fetch(ELASTICITY).read_bytes())):
        d = r["structure"]
        out.append(
            (
                r["mp_id"],
                "matcalc_mp_elasticity",
                Structure.from_dict(d if isinstance(d, dict) else ast.literal_eval(d)),
            )
        )
    return out


def _plan(structure, ph: PhononSettings, name=None) -> dict:
    return phonons.displacement_plan(
        structure, ph.symprec, ph.supercell_min_length, ph.max_supercell_atoms, ph.displacement, name=name
    )


def select(settings: TableSettings, log=print) -> list[dict]:
    """The deterministic candidate list (see the module docstring): dicts with id, source, structure, spacegroup
    and the :func:`~cloudlib.phonons.displacement_plan`."""
    from pymatgen.symmetry.analyzer import SpacegroupAnalyzer

    sel, ph = settings.selection, settings.phonons
    pool: dict[tuple, dict] = {}
    first = None
    for cid, source, s in _candidates():
        if cid == CORUNDUM:
            first = {"id": cid, "source": source, "structure": s}
            continue
        if not s.is_ordered or len(s) > 4 * sel.max_prim_atoms:  # (conventional cells of F lattices)
            continue
        try:
            sga = SpacegroupAnalyzer(s, symprec=1e-3)
            spg = sga.get_space_group_number()
            n_prim = len(sga.find_primitive())
        except Exception:
            continue
        if n_prim > sel.max_prim_atoms:
            continue
        pool.setdefault(
            (s.composition.reduced_formula, spg), {"id": cid, "source": source, "structure": s, "spacegroup": spg}
        )
    if first is not None:
        first.update(_plan(first["structure"], ph))
    log(f"pool: {len(pool)} unique (formula, space group) with <= {sel.max_prim_atoms} atoms per primitive cell")
    keys = sorted(pool, key=lambda k: (k[1], k[0]))
    buckets: dict[int, list] = {}
    for j in np.random.default_rng(sel.seed).permutation(len(keys)):
        buckets.setdefault(keys[j][1], []).append(pool[keys[j]])
    spgs = sorted(buckets)
    picked = [first] if first is not None else []
    first_key = None if first is None else (first["structure"].composition.reduced_formula, first["spacegroup"])
    systems: dict[str, int] = {}
    skipped_cost = 0
    while len(picked) < sel.limit and any(buckets.values()):
        for spg in spgs:
            if len(picked) >= sel.limit:
                break
            bucket = buckets[spg]
            while bucket:
                c = bucket.pop(0)
                if (c["structure"].composition.reduced_formula, c["spacegroup"]) == first_key:
                    continue  # another copy of corundum (the pool is keyed without it)
                system = c["structure"].composition.chemical_system
                if systems.get(system, 0) >= sel.per_system:
                    continue
                try:
                    plan = _plan(c["structure"], ph, name=c["id"])
                except CloudError:
                    continue
                if plan["force_atoms"] > sel.max_force_atoms:
                    skipped_cost += 1
                    continue
                c.update(plan)
                systems[system] = systems.get(system, 0) + 1
                picked.append(c)
                break
    log(f"selected {len(picked)} candidates ({skipped_cost} skipped for cost > {sel.max_force_atoms} force-atoms)")
    return picked


def cached_selection(settings: TableSettings, ckpt: Path, log=print) -> list[dict]:
    """:func:`select`, cached with the structures in the checkpoint folder (selection takes minutes)."""
    from pymatgen.core import Structure

    limit = settings.selection.limit
    cache = Path(ckpt) / "candidates.json.gz"
    if cache.exists():
        saved = json.loads(gzip.decompress(cache.read_bytes()))
        if saved["limit"] >= limit or saved["exhausted"]:
            cands = saved["candidates"][:limit]
            for c in cands:
                c["structure"] = Structure.from_dict(c["structure"])
            log(f"selection: {len(cands)} candidates from {cache.name}")
            return cands
    cands = select(settings, log)
    blob = {
        "limit": limit,
        "exhausted": len(cands) < limit,
        "candidates": [{**c, "structure": c["structure"].as_dict()} for c in cands],
    }
    write_bytes(cache, gzip.compress(json.dumps(blob).encode()))
    return cands


# --------------------------------------------------------------------------- the checkpoint and the run


def stores(settings: TableSettings, ckpt: Path | None = None) -> tuple[PartStore, PartStore]:
    """The (materials, sessions) stores of the checkpoint folder ``ckpt`` (default :meth:`TableSettings.checkpoint`);
    a checkpoint of the earlier one-file format beside it is moved in first."""
    ckpt = Path(ckpt) if ckpt is not None else settings.checkpoint()
    materials = PartStore(ckpt / "materials", settings.computation())
    sessions = PartStore(ckpt / "sessions", settings.computation())
    _migrate_jsonl(ckpt.parent / f"checkpoint-{ckpt.name}.jsonl", ckpt, materials, sessions)
    return materials, sessions


def _jsonl(path: Path) -> list[dict]:
    """The rows of a file of JSON lines; a last line cut short by a kill is skipped."""
    rows = []
    for line in path.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except ValueError:
            continue
    return rows


def _migrate_jsonl(legacy: Path, ckpt: Path, materials: PartStore, sessions: PartStore) -> None:
    """Move a checkpoint of the earlier format (``checkpoint-<hash>.jsonl`` with ``.sessions.jsonl``,
    ``.selection.json`` and ``.candidates.json.gz`` beside it) into the stores, once (the first row of an id wins,
    as it did when the table was finalized from it)."""
    if not legacy.is_file() or materials.keys():
        return
    for row in _jsonl(legacy):
        if row["id"] not in materials:
            materials.put(row["id"], {"row": row})
    side = legacy.with_suffix(".sessions.jsonl")
    for i, session in enumerate(_jsonl(side) if side.is_file() else []):
        sessions.put(f"session-{i:04d}", {"session": session})
    for suffix, name in ((".selection.json", "selection.json"), (".candidates.json.gz", "candidates.json.gz")):
        if legacy.with_suffix(suffix).is_file():
            os.replace(legacy.with_suffix(suffix), ckpt / name)
    for p in (legacy, side):
        if p.is_file():
            os.replace(p, p.with_name(p.name + ".migrated"))


def compute_row(candidate: dict, settings: TableSettings, model) -> dict:
    """One checkpoint row: id, source, the SCOPE string, and the phonon result (status ok) or the error (failed)."""
    from .scope import structure_to_scope

    row = {"id": candidate["id"], "source": candidate["source"]}
    try:
        row["scope"] = structure_to_scope(candidate["structure"])
    except CloudError as exc:
        row["scope"] = None
        row["scope_error"] = str(exc)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            r = phonons.phonon_cv(
                candidate["structure"],
                temperatures=list(settings.temperatures),
                model=model,
                settings=settings.phonons,
                name=candidate["id"],
            )
        row.update(status="ok", **r.as_row())
        row["structure"] = r.structure.as_dict()
    except Exception as exc:  # noqa: BLE001 - CloudError or a library error: record and go on
        row.update(status="failed", error=f"{type(exc).__name__}: {exc}")
    row.pop("name", None)
    return row


def run(
    settings: TableSettings,
    ckpt: Path | None = None,
    threads: int = 1,
    time_budget_min: float | None = None,
    log=print,
    command: str | None = None,
) -> dict:
    """Compute the candidates not yet in the checkpoint, in order, until done or out of time (SIGTERM / Ctrl-C:
    the material in progress is dropped). Stores this session as a part of the ``sessions`` store and returns it.
    ``ckpt``: the checkpoint folder (default :meth:`TableSettings.checkpoint`)."""
    import torch

    ckpt = Path(ckpt) if ckpt is not None else settings.checkpoint()
    materials, sessions = stores(settings, ckpt)
    torch.set_num_threads(threads)
    t_start = time.time()
    done = set(materials.done())
    cands = cached_selection(settings, ckpt, log)
    todo = [c for c in cands if c["id"] not in done]
    log(f"{len(cands) - len(todo)} already in {ckpt}; {len(todo)} to compute")
    write_json(ckpt / "selection.json", [{k: v for k, v in c.items() if k != "structure"} for c in cands])
    model = phonons.load_model()
    n_new, interrupted = 0, False

    def stop(signum, frame):
        raise KeyboardInterrupt

    old = signal.signal(signal.SIGTERM, stop)
    try:
        for c in todo:
            if time_budget_min is not None and time.time() - t_start > time_budget_min * 60:
                log(f"time budget of {time_budget_min} min reached after {n_new} materials; stopping")
                break
            row = compute_row(c, settings, model)
            materials.put(c["id"], {"row": row})
            n_new += 1
            if row["status"] == "ok":
                msg = (
                    f"Cv(300K)={row.get(phonons.cv_column(300), float('nan')):.1f} n={row['n_atoms']} "
                    f"min_f={row['min_freq_thz']:+.3f} {'stable' if row['stable'] else 'UNSTABLE'}"
                )
            else:
                msg = row["error"][:200]
            log(
                f"[{len(done) + n_new}/{len(cands)}] {c['id']} {row.get('formula', '')} {msg} ({row.get('wall_s', 0):.1f} s)"
            )
    except KeyboardInterrupt:
        interrupted = True
        log("interrupted: the material in progress is not recorded; rerun to resume")
    finally:
        signal.signal(signal.SIGTERM, old)
    session = {
        "start": datetime.datetime.fromtimestamp(t_start, datetime.timezone.utc).isoformat(timespec="seconds"),
        "wall_s": round(time.time() - t_start, 1),
        "new_materials": n_new,
        "command": command or " ".join([Path(sys.executable).name, *sys.argv]),
        "threads": threads,
        "interrupted": interrupted,
    }
    sessions.put(f"session-{len(sessions.keys()):04d}", {"session": session})
    return session


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


def finalize(settings: TableSettings, ckpt: Path | None = None, out: Path | None = None, log=print) -> dict:
    """Write ``out/chgnet_cv.csv`` (the finished materials, in selection order, one row each) and
    ``out/provenance.json`` from the checkpoint folder ``ckpt``; return the provenance."""
    ckpt = Path(ckpt) if ckpt is not None else settings.checkpoint()
    materials, session_store = stores(settings, ckpt)
    out = Path(out) if out is not None else paths.data_dir() / "chgnet_cv"
    s = settings.record()
    uniq = [materials.get(k)["row"] for k in materials.done()]
    sel_path = ckpt / "selection.json"
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
    sessions = [session_store.get(k)["session"] for k in session_store.done()]
    from .registry import REGISTRY

    sources = {}
    for name in (DIELECTRIC, ELASTICITY):
        ds = REGISTRY[name]
        sources[name] = {
            "sha256": ds.sha256,
            "url": ds.url or f"PyPI {ds.archive} :: {ds.member}",
            "licence": ds.licence,
        }
    n_stable = int(table["stable"].sum()) if len(table) else 0
    wall = pd.to_numeric(table["wall_s"])
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
        "settings_hash": settings.hash(),
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
            "sum_material_wall_s": round(float(wall.sum()), 1) if len(table) else 0.0,
            "mean_material_wall_s": round(float(wall.mean()), 2) if len(table) else None,
            "sessions": sessions,
            "total_session_wall_s": round(sum(x["wall_s"] for x in sessions), 1),
            "machine": f"{platform.machine()} {platform.processor() or ''}".strip(),
        },
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": "OMP_NUM_THREADS=1 nice -n 10 .venv/bin/python scripts/make_chgnet_cv.py "
        f"--limit {settings.selection.limit}",
        "script": "scripts/make_chgnet_cv.py (cloudlib.phonon_table)",
    }
    write_csv(out / "chgnet_cv.csv", table, index=False)
    write_json(out / "provenance.json", prov)
    log(f"wrote {out / 'chgnet_cv.csv'}: {len(table)} computed, {n_stable} stable, {len(failed)} failed")
    return prov


def with_overrides(settings: TableSettings, **kw) -> TableSettings:
    """``settings`` with fields of its :class:`Selection` or :class:`~cloudlib.phonons.PhononSettings` changed by
    name (an unknown name: TypeError naming it)."""
    sel_fields = {f.name for f in dataclasses.fields(Selection)}
    ph_fields = {f.name for f in dataclasses.fields(PhononSettings)}
    unknown = set(kw) - sel_fields - ph_fields
    if unknown:
        raise TypeError(f"unknown settings {sorted(unknown)}")
    return dataclasses.replace(
        settings,
        selection=dataclasses.replace(settings.selection, **{k: v for k, v in kw.items() if k in sel_fields}),
        phonons=dataclasses.replace(settings.phonons, **{k: v for k, v in kw.items() if k in ph_fields}),
    )
