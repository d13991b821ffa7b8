"""Crystals as users hand them over: a path (a structure file, a folder, a JSON of structures) or Python
objects (a Structure, a list or mapping of them, of structure dicts or of file paths), turned into the
``id -> item`` mapping :func:`cloudlib.scope.scope_table` takes.

Unreadable inputs raise :class:`~cloudlib.errors.InputError` naming the path; per-structure problems (a CIF
that does not parse, a disordered site) are left to :func:`~cloudlib.scope.scope_table`, which reports them
per row.
"""

from __future__ import annotations

import gzip
import json
import os
from collections.abc import Mapping
from pathlib import Path

import pandas as pd

from .errors import InputError


def read_inputs(path: str | os.PathLike) -> dict:
    """Structures named by a path: a structure file, a folder of CIFs, or a JSON of structures.

    JSON (optionally gzipped): a dict id -> pymatgen structure dict, or a pandas-JSON frame with a ``structure``
    column (orient ``columns``, ``index``, ``split`` or ``records``). Returns a dict id -> item.
    """
    p = Path(path)
    if p.is_dir():
        cifs = sorted(q for q in p.iterdir() if q.is_file() and q.suffix.lower() == ".cif")
        if not cifs:
            raise InputError("folder holds no .cif files", str(p))
        return {q.name: str(q) for q in cifs}
    if not p.exists():
        raise InputError("no such file or folder", str(p))
    name = p.name.lower()
    if name.endswith(".json") or name.endswith(".json.gz"):
        raw = gzip.decompress(p.read_bytes()) if name.endswith(".gz") else p.read_bytes()
        try:
            obj = json.loads(raw)
        except ValueError as exc:
            raise InputError(f"not valid JSON ({exc})", str(p)) from exc
        return structures_from_json(obj, p)
    return {p.name: str(p)}


def structures_from_json(obj, source: object = None) -> dict:
    """id -> structure dict from a parsed JSON document (the layouts :func:`read_inputs` accepts)."""
    if isinstance(obj, dict) and isinstance(obj.get("structure"), dict):  # pandas orient="columns"
        return dict(obj["structure"])
    if isinstance(obj, dict) and {"columns", "data"} <= set(obj) and "structure" in obj["columns"]:  # "split"
        col = obj["columns"].index("structure")
        index = obj.get("index", range(len(obj["data"])))
        return {str(i): row[col] for i, row in zip(index, obj["data"])}
    if isinstance(obj, list) and obj and all(isinstance(r, dict) and "structure" in r for r in obj):  # "records"
        key = next((k for k in ("id", "material_id", "mbid") if k in obj[0]), None)
        return {str(r[key]) if key else str(i): r["structure"] for i, r in enumerate(obj)}
    if isinstance(obj, dict) and obj and all(isinstance(v, dict) for v in obj.values()):
        if all("structure" in v for v in obj.values()):  # orient="index"
            return {k: v["structure"] for k, v in obj.items()}
        if all("lattice" in v and "sites" in v for v in obj.values()):  # id -> structure dict
            return dict(obj)
    raise InputError(
        "expected a dict id -> structure dict or a pandas-JSON frame with a 'structure' column", str(source)
    )


def as_items(inputs) -> dict:
    """id -> item for anything :func:`cloudlib.predictor.predict` accepts: a Structure, a path (see
    :func:`read_inputs`), a Series or mapping id -> item, or a sequence of items (ids: the paths when the items
    are distinct paths, else 0..n-1)."""
    from pymatgen.core import Structure

    if isinstance(inputs, Structure):
        return {0: inputs}
    if isinstance(inputs, (str, os.PathLike)):
        return read_inputs(inputs)
    if isinstance(inputs, pd.Series):
        return dict(inputs.items())
    if isinstance(inputs, Mapping):
        return dict(inputs)
    items = list(inputs)
    if items and all(isinstance(x, (str, os.PathLike)) for x in items):
        keys = [str(x) for x in items]
        if len(set(keys)) == len(keys):
            return dict(zip(keys, items))
    return dict(enumerate(items))
