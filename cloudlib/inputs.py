"""Crystals as users hand them over: a path (a structure file, a folder, a JSON of structures) or Python
objects (a Structure, a list or mapping of them, of structure dicts or of file paths), turned into the
``id -> item`` mapping :func:`cloudlib.scope.scope_table` takes.

No row is lost on the way:

* a CIF with several data blocks gives one item per block, ids ``file#block``;
* a folder gives every file in a format pymatgen reads (CIF, POSCAR/CONTCAR/``*.vasp``, ``*.xsf``, ``*.res``,
  ``*.cssr``, structure JSON/YAML, gzipped or not); the files it skips are counted by reason
  (:attr:`Inputs.skipped`), so the caller can say so;
* a JSON's records keep their own ids (``id``, ``material_id``, ``mp_id`` ...) when they have them, and one
  malformed entry becomes one error item (a :class:`~cloudlib.errors.StructureParseError` that
  :func:`~cloudlib.scope.scope_table` reports on its row), not a rejected file;
* file names that are not valid UTF-8 get printable ids (``\\xff`` escapes), so writing the results cannot fail.

Unreadable inputs raise :class:`~cloudlib.errors.InputError` naming the path (a missing path, an empty
folder, a truncated ``.json.gz``, a JSON that holds no structures).
"""

from __future__ import annotations

import bz2
import gzip
import json
import lzma
import os
import re
from collections import Counter
from collections.abc import Mapping
from pathlib import Path

import pandas as pd

from .errors import InputError, StructureParseError

#: record fields that name an entry, most specific first
ID_FIELDS = ("id", "material_id", "mp_id", "mpid", "task_id", "mbid", "jid", "entry_id", "name")

_COMPRESSED = {".gz": gzip.decompress, ".bz2": bz2.decompress, ".xz": lzma.decompress}
_STRUCTURE_SUFFIXES = {".cif", ".mcif", ".vasp", ".poscar", ".xsf", ".res", ".cssr", ".json", ".yaml", ".yml"}
_STRUCTURE_PREFIXES = ("POSCAR", "CONTCAR")
_DATA_BLOCK = re.compile(r"^[ \t]*data_(\S*)", re.IGNORECASE | re.MULTILINE)


class Inputs(dict):
    """``id -> item`` with :attr:`skipped`: files a folder held that are not read, ``reason -> count``."""

    def __init__(self, *args, skipped: Counter | None = None, **kw):
        super().__init__(*args, **kw)
        self.skipped: Counter = Counter(skipped or {})

    def skipped_text(self) -> str:
        """``"3 files skipped: 2 not a structure format (.txt, .png), 1 hidden"``, or ``""``."""
        if not self.skipped:
            return ""
        n = sum(self.skipped.values())
        parts = ", ".join(f"{c} {reason}" for reason, c in self.skipped.most_common())
        return f"{n} file{'s' if n != 1 else ''} skipped: {parts}"


def printable(text: object) -> str:
    """``text`` as a string that any UTF-8 writer accepts: undecodable bytes of a file name (surrogate escapes)
    become ``\\xNN``."""
    s = str(text)
    try:
        s.encode("utf-8")
        return s
    except UnicodeEncodeError:
        return s.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def _base_suffix(name: str) -> tuple[str, str]:
    """(suffix without compression, compression suffix or "") of a file name, lower case."""
    p = Path(name.lower())
    comp = p.suffix if p.suffix in _COMPRESSED else ""
    if comp:
        p = p.with_suffix("")
    return p.suffix, comp


def is_structure_file(name: str) -> bool:
    """Whether a file name is one of the formats :func:`read_inputs` reads from a folder."""
    suffix, _ = _base_suffix(name)
    stem = name.split(".")[0].upper()
    return suffix in _STRUCTURE_SUFFIXES or stem.startswith(_STRUCTURE_PREFIXES) or name.lower() == "vasprun.xml"


def _read_bytes(p: Path) -> bytes:
    """The bytes of a file, decompressed by suffix; InputError for an unreadable or corrupt file."""
    try:
        raw = p.read_bytes()
    except OSError as exc:
        raise InputError(f"cannot read ({exc.strerror or exc})", printable(p)) from exc
    _, comp = _base_suffix(p.name)
    if comp:
        try:
            raw = _COMPRESSED[comp](raw)
        except (OSError, EOFError, ValueError, lzma.LZMAError) as exc:
            raise InputError(f"not a valid {comp} file ({type(exc).__name__}: {exc})", printable(p)) from exc
    return raw


def cif_blocks(text: str) -> list[tuple[str, str]]:
    """``(block name, block text)`` for every ``data_`` block of a CIF (one entry, the whole text, if it has none
    or one)."""
    starts = [(m.start(), m.group(1)) for m in _DATA_BLOCK.finditer(text)]
    if len(starts) <= 1:
        return [(starts[0][1] if starts else "", text)]
    return [
        (name, text[a : (starts[k + 1][0] if k + 1 < len(starts) else len(text))]) for k, (a, name) in enumerate(starts)
    ]


def _unique(key: str, out: Mapping) -> str:
    if key not in out:
        return key
    k = 2
    while f"{key}#{k}" in out:
        k += 1
    return f"{key}#{k}"


def _file_items(p: Path, label: str) -> dict:
    """id -> item for one structure file: one item, or one per CIF data block / JSON entry."""
    from .scope import CifText

    suffix, comp = _base_suffix(p.name)
    if suffix == ".json":
        return _json_items(p, label)
    if suffix in (".cif", ".mcif"):
        try:
            text = _read_bytes(p).decode("utf-8", "replace")
        except InputError as exc:
            return {label: StructureParseError(str(exc).split(": ", 1)[-1], label)}
        blocks = cif_blocks(text)
        if len(blocks) > 1:
            out: dict = {}
            for k, (name, block) in enumerate(blocks):
                out[_unique(f"{label}#{name or k}", out)] = CifText(block)
            return out
        if comp:  # pymatgen reads .cif.gz itself, but the text is in hand
            return {label: CifText(text)}
    return {label: str(p)}


def _json_items(p: Path, label: str, top: bool = False) -> dict:
    try:
        raw = _read_bytes(p)
    except InputError:
        if top:
            raise
        return {label: StructureParseError("not a readable (compressed) JSON file", label)}
    try:
        obj = json.loads(raw)
    except ValueError as exc:
        if top:
            raise InputError(f"not valid JSON ({exc})", printable(p)) from exc
        return {label: StructureParseError(f"not valid JSON ({exc})", label)}
    if _is_structure_dict(obj):
        return {label: obj}
    try:
        entries = structures_from_json(obj, printable(p))
    except InputError as exc:
        if top:
            raise
        return {label: StructureParseError(str(exc).split(": ", 1)[-1], label)}
    return entries if top else {f"{label}#{k}": v for k, v in entries.items()}


def read_inputs(path: str | os.PathLike) -> Inputs:
    """Structures named by a path: a structure file, a folder of structure files, or a JSON of structures.

    JSON (optionally gzipped): a dict id -> pymatgen structure dict, a single structure dict, a list of records
    with a ``structure`` field (ids from :data:`ID_FIELDS`), or a pandas-JSON frame with a ``structure`` column
    (orient ``columns``, ``index``, ``split`` or ``records``). Returns :class:`Inputs` (a dict id -> item).
    """
    p = Path(path)
    if p.is_dir():
        items: dict = {}
        skipped: Counter = Counter()
        for q in sorted(p.iterdir()):
            name = q.name
            if name.startswith("."):
                skipped["hidden"] += 1
            elif q.is_dir():
                skipped["subfolders (not searched)"] += 1
            elif not q.is_file():
                skipped["not a regular file"] += 1
            elif not is_structure_file(name):
                skipped[f"not a structure format ({_base_suffix(name)[0] or 'no suffix'})"] += 1
            else:
                for k, v in _file_items(q, printable(name)).items():
                    items[_unique(k, items)] = v
        if not items:
            why = f" ({Inputs(skipped=skipped).skipped_text()})" if skipped else ""
            raise InputError(f"folder holds no structure files{why}", printable(p))
        return Inputs(items, skipped=skipped)
    if not p.exists():
        raise InputError("no such file or folder", printable(p))
    if not p.is_file():
        raise InputError("not a regular file or a folder", printable(p))
    suffix, _ = _base_suffix(p.name)
    if suffix == ".json":
        return Inputs(_json_items(p, printable(p.name), top=True))
    return Inputs(_file_items(p, printable(p.name)))


def _is_structure_dict(v) -> bool:
    return isinstance(v, Mapping) and "lattice" in v and "sites" in v


def _record_id(r: Mapping, i: int) -> str:
    for k in ID_FIELDS:
        v = r.get(k)
        if isinstance(v, (str, int)) and not isinstance(v, bool) and str(v):
            return str(v)
    return str(i)


def _entry(v, key: object):
    """The structure of one JSON entry, or the error item that names what is wrong with it."""
    if isinstance(v, Mapping) and "structure" in v:
        return v["structure"]
    if _is_structure_dict(v):
        return v
    what = type(v).__name__ if not isinstance(v, Mapping) else f"dict with keys {sorted(map(str, v))[:6]}"
    return StructureParseError(f"entry is not a structure (no 'structure' field or lattice/sites; got a {what})", key)


def structures_from_json(obj, source: object = None) -> dict:
    """id -> structure dict (or an error item for a malformed entry) from a parsed JSON document (the layouts
    :func:`read_inputs` accepts). InputError when no entry of the document is a structure."""
    out: dict = {}
    if isinstance(obj, dict) and isinstance(obj.get("structure"), dict):  # pandas orient="columns"
        for k, v in obj["structure"].items():
            out[str(k)] = v if _is_structure_dict(v) else _entry(v, k)
    elif isinstance(obj, dict) and {"columns", "data"} <= set(obj) and "structure" in (obj.get("columns") or []):
        col = obj["columns"].index("structure")  # orient="split"
        index = obj.get("index") or range(len(obj["data"]))
        for i, row in zip(index, obj["data"]):
            ok = isinstance(row, list) and len(row) > col
            out[_unique(str(i), out)] = _entry(row[col], i) if ok else StructureParseError("malformed row", i)
    elif isinstance(obj, list) and any(
        isinstance(r, Mapping) and ("structure" in r or _is_structure_dict(r)) for r in obj
    ):
        for i, r in enumerate(obj):  # records (or a list of structure dicts)
            key = _record_id(r, i) if isinstance(r, Mapping) else str(i)
            key = _unique(key, out)
            out[key] = _entry(r, key)
    elif isinstance(obj, dict) and any(
        isinstance(v, Mapping) and ("structure" in v or _is_structure_dict(v)) for v in obj.values()
    ):
        for k, v in obj.items():  # orient="index", or id -> structure dict
            out[str(k)] = _entry(v, k)
    else:
        raise InputError(
            "expected a dict id -> structure dict, a list of records with a 'structure' field or a pandas-JSON "
            "frame with a 'structure' column",
            str(source),
        )
    return out


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
        keys = [printable(x) for x in items]
        if len(set(keys)) == len(keys):
            return dict(zip(keys, items))
    return dict(enumerate(items))
