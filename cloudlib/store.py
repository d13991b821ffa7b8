"""One resumable store for every long computation: a folder of finished parts.

A part is one JSON file (gzip-compressed when asked) named by its key, holding the ``settings`` that made it
beside its payload, and written atomically, so whatever kills a run leaves only whole parts. A rerun asks
:meth:`PartStore.get` for each part it needs and computes only the missing ones; a part made with other settings
does not count (it is recomputed and overwritten). Settings are compared as canonical JSON (sorted keys), so a
dict read back from disk equals the dict it was written from.

Every long study keeps its results in such a store:

* the study runner (:class:`cloudlib.study.FitStore`): one fit per part (``data/multitask/parts``);
* the scaling sweep (:mod:`cloudlib.sweep`): one finished pre-training run, one downstream fit per part
  (``data/sweep/laptop``);
* the CHGNet phonon table (:mod:`cloudlib.phonon_table`): one material, one session per part;
* the OPTIMADE harvester (:mod:`cloudlib.harvest`): one page of structures per part.
"""

from __future__ import annotations

import gzip
import json
import os
from pathlib import Path
from typing import Any

from .io import write_bytes

#: the key of a part is its file name without the suffix: no separators, no leading dot
_BAD_KEY_CHARS = ("/", "\\", "\0")


def canonical(settings: Any) -> str:
    """``settings`` as the string two parts are compared by (a string is taken as it is)."""
    return settings if isinstance(settings, str) else json.dumps(settings, sort_keys=True)


class PartStore:
    """A folder of finished parts, one file per key: ``{"settings": ..., **payload}``.

    ``settings``: any JSON-able value saying what the parts depend on (stored as given, compared by
    :func:`canonical`). ``compress``: write ``KEY.json.gz`` instead of ``KEY.json`` (big parts, e.g. harvest pages).
    """

    def __init__(self, folder: str | os.PathLike, settings: Any, compress: bool = False):
        self.folder = Path(folder)
        self.settings = settings
        self.suffix = ".json.gz" if compress else ".json"
        self._canonical = canonical(settings)

    def __repr__(self) -> str:
        return f"PartStore({str(self.folder)!r}, {self.suffix})"

    def path(self, key: str) -> Path:
        """The file of part ``key``."""
        key = str(key)
        if not key or key.startswith(".") or any(c in key for c in _BAD_KEY_CHARS):
            raise ValueError(f"part key {key!r} is not a plain file name")
        return self.folder / f"{key}{self.suffix}"

    def read(self, key: str) -> dict | None:
        """Part ``key`` as stored (with its ``settings``), whatever settings made it; None when there is none or it
        cannot be read (a damaged part counts as missing and is made again)."""
        p = self.path(key)
        if not p.is_file():
            return None
        try:
            raw = p.read_bytes()
            part = json.loads(gzip.decompress(raw) if self.suffix.endswith(".gz") else raw)
        except (OSError, ValueError, EOFError):
            return None
        return part if isinstance(part, dict) else None

    def get(self, key: str) -> dict | None:
        """The payload of part ``key`` if it was made with these settings, else None."""
        part = self.read(key)
        if part is None or canonical(part.get("settings")) != self._canonical:
            return None
        return {k: v for k, v in part.items() if k != "settings"}

    def __contains__(self, key: str) -> bool:
        return self.get(key) is not None

    def put(self, key: str, payload: dict) -> Path:
        """Write part ``key`` atomically (over any part of that key)."""
        if "settings" in payload:
            raise ValueError("a part's payload may not have a 'settings' entry (the store writes it)")
        data = (json.dumps({"settings": self.settings, **payload}, indent=2) + "\n").encode()
        if self.suffix.endswith(".gz"):
            data = gzip.compress(data, mtime=0)
        return write_bytes(self.path(key), data)

    def keys(self) -> list[str]:
        """The keys of every part in the folder (any settings), sorted."""
        if not self.folder.is_dir():
            return []
        n = len(self.suffix)
        return sorted(p.name[:-n] for p in self.folder.iterdir() if p.name.endswith(self.suffix) and p.is_file())

    def done(self) -> list[str]:
        """The keys of the parts made with these settings, sorted."""
        return [k for k in self.keys() if k in self]
