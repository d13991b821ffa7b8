"""Composition features for the classical baselines: the 132 Magpie descriptors of matminer.

* :func:`magpie_features` -- ``ElementProperty.from_preset("magpie")`` on compositions, structures or formulas,
  one row per input (failures kept as NaN rows and reported), cached under :func:`cloudlib.paths.derived_dir`.
* :func:`as_composition` -- a pymatgen Composition from a formula, Composition, Structure or structure dict.

Timings on the 2-core development machine (matbench_dielectric, 4,764 compositions): featurization ~7 s serial
(``jobs=2`` was slower, ~13 s, because matminer's multiprocessing pays to ship the featurizer and rows to the
workers), a cached reload ~1 s.
"""

from __future__ import annotations

import hashlib
import json
import warnings
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from . import paths
from .io import write_csv, write_json

#: Bump when the feature definition or the cache format changes.
MAGPIE_CACHE_VERSION = 1


def _magpie_featurizer(jobs: int = 1):
    from matminer.featurizers.composition import ElementProperty

    # impute_nan=False: missing elemental data stays NaN (as in matminer <= 0.7, which MatBench used);
    # rf_magpie imputes with training medians instead of matminer's global averages.
    ep = ElementProperty.from_preset("magpie", impute_nan=False)
    ep.set_n_jobs(jobs)
    return ep


def magpie_labels() -> list[str]:
    """The 132 Magpie feature names (``MagpieData <stat> <property>``)."""
    return list(_magpie_featurizer().feature_labels())


def _as_items(items) -> tuple[pd.Index, list]:
    if isinstance(items, pd.Series):
        return items.index, list(items.values)
    if isinstance(items, Mapping):
        return pd.Index(list(items.keys())), list(items.values())
    if isinstance(items, (str, bytes)) or not isinstance(items, Iterable):
        raise TypeError("give a sequence, Series or mapping of compositions/structures, not a single item")
    values = list(items)
    return pd.RangeIndex(len(values)), values


def as_composition(item: Any):
    """A pymatgen Composition from a formula, Composition, Structure (anything with
    ``.composition``) or pymatgen structure dict."""
    from pymatgen.core import Composition, Structure

    if isinstance(item, Composition):
        comp = item
    elif hasattr(item, "composition"):
        comp = item.composition
    elif isinstance(item, str):
        comp = Composition(item)
    elif isinstance(item, dict) and "sites" in item:
        comp = Structure.from_dict(item).composition
    else:
        raise TypeError(f"cannot make a composition from {type(item).__name__}")
    if comp.num_atoms <= 0:
        raise ValueError("empty composition")
    return comp


def _last_line(text: str) -> str:
    lines = [ln for ln in str(text).strip().splitlines() if ln.strip()]
    return lines[-1].strip() if lines else str(text)


def _inputs_digest(index: pd.Index, formulas: list[str | None]) -> str:
    h = hashlib.sha256()
    for i, f in zip(index, formulas):
        h.update(f"{i}\t{f}\n".encode())
    return h.hexdigest()


def _cache_paths(cache_key: str) -> tuple[Path, Path]:
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in str(cache_key))
    stem = paths.derived_dir() / f"magpie-v{MAGPIE_CACHE_VERSION}_{safe}"
    return Path(f"{stem}.csv.gz"), Path(f"{stem}.json")


def _report(failed: dict) -> None:
    if failed:
        first = "; ".join(f"{k}: {v}" for k, v in list(failed.items())[:3])
        warnings.warn(
            f"Magpie featurization failed for {len(failed)} row(s), kept as NaN rows (see .attrs['failed']): {first}",
            RuntimeWarning,
            stacklevel=3,
        )


def magpie_features(
    items,
    cache_key: str | None = None,
    jobs: int = 1,
    refresh: bool = False,
) -> pd.DataFrame:
    """Magpie composition features, one row per input, never dropped.

    ``items`` is a Series / mapping id -> item (ids become the index) or a sequence (index 0..n-1);
    an item is a formula string, a pymatgen ``Composition``, a ``Structure`` (its composition is
    used) or a structure dict. Rows whose composition cannot be parsed or featurized are kept as
    all-NaN rows; ``df.attrs["failed"]`` maps their ids to the error and a ``RuntimeWarning``
    reports them.

    With ``cache_key`` (e.g. ``"matbench_dielectric"``) the table is cached under
    ``paths.derived_dir()`` (written atomically, with a JSON sidecar holding the errors and a digest
    of the inputs); a later call with the same inputs reads it back, a call with different inputs
    recomputes and overwrites it. ``jobs`` is passed to matminer's ``set_n_jobs``; 1 is fastest
    here (see module docstring).
    """
    index, values = _as_items(items)
    comps, formulas, failed = [], [], {}
    for i, item in zip(index, values):
        try:
            comp = as_composition(item)
            comps.append(comp)
            formulas.append(comp.formula)
        except Exception as exc:  # any unparsable input is reported per row, never raised
            comps.append(None)
            formulas.append(None)
            failed[i] = f"{type(exc).__name__}: {exc}"
    digest = _inputs_digest(index, formulas)
    labels = magpie_labels()

    if cache_key is not None and not refresh:
        csv_path, meta_path = _cache_paths(cache_key)
        if csv_path.exists() and meta_path.exists():
            meta = json.loads(meta_path.read_text())
            if meta.get("inputs_sha256") == digest and meta.get("n_rows") == len(index):
                df = pd.read_csv(csv_path, index_col=0, float_precision="round_trip")
                df = df.astype(float)
                df.index = index  # exact ids and dtype of the caller's index
                df.index.name = "id"
                df.columns = labels
                df.attrs["failed"] = {k: v for k, v in zip(index, meta["failed_rows"]) if v is not None}
                _report(df.attrs["failed"])
                return df

    ok = [k for k, c in enumerate(comps) if c is not None]
    X = np.full((len(index), len(labels)), np.nan)
    if ok:
        ep = _magpie_featurizer(jobs)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            rows = ep.featurize_many([comps[k] for k in ok], ignore_errors=True, return_errors=True, pbar=False)
        for k, row in zip(ok, rows):
            err = row[-1]
            if isinstance(err, str) and err:
                failed[index[k]] = _last_line(err)
            else:
                X[k] = np.asarray(row[:-1], dtype=float)
    df = pd.DataFrame(X, index=index, columns=labels)
    df.index.name = "id"
    # keep failures in input order
    df.attrs["failed"] = {i: failed[i] for i in index if i in failed}

    if cache_key is not None:
        csv_path, meta_path = _cache_paths(cache_key)
        write_csv(csv_path, df)
        write_json(
            meta_path,
            {
                "cache_key": cache_key,
                "version": MAGPIE_CACHE_VERSION,
                "n_rows": len(index),
                "n_features": len(labels),
                "inputs_sha256": digest,
                "failed_rows": [df.attrs["failed"].get(i) for i in index],
            },
        )
    _report(df.attrs["failed"])
    return df
