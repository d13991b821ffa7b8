"""MatBench data: the official v0.1 metadata and folds, the tasks' structures and targets, the authors' strings.

* :func:`matbench_metadata`, :func:`matbench_split` (official v0.1 folds, from the pinned matbench 0.6 wheel),
  :func:`matbench_id`;
* :func:`load_matbench` -- a task as a DataFrame indexed by MatBench id (matbench_dielectric from the pinned
  crystal-toolkit wheel; other tasks through matminer's download, which needs internet);
* :func:`load_paper_dielectric_scope` -- the authors' SCOPE strings of matbench_dielectric fold 0;
* :func:`dielectric_metadata`, :func:`dielectric_crystal_systems` -- per-row metadata (crystal system, space
  group, formula) of matbench_dielectric, for the out-of-distribution split.
"""

from __future__ import annotations

import gzip
import json

import pandas as pd

from .errors import DataError, DataUnavailableError
from .registry import fetch

REGISTRY_DIELECTRIC = "pypi/crystal_toolkit-2026.7.20/matbench_dielectric.json.gz"


def matbench_metadata(task: str | None = None) -> dict:
    """MatBench v0.1 metadata (target column, task type, unit, n_samples, mad ...)."""
    meta = json.loads(fetch("pypi/matbench-0.6/matbench_v0.1_dataset_metadata.json").read_text())
    if task is None:
        return meta
    if task not in meta:
        raise KeyError(f"unknown MatBench task {task!r}; known: {sorted(meta)}")
    return meta[task]


def matbench_id(task: str, i: int) -> str:
    """MatBench id of row i (0-based) of a task, e.g. ``mb-dielectric-0001``."""
    return f"mb-{task.replace('matbench_', '').replace('_', '-')}-{i + 1:04d}"


_SPLITS: dict | None = None


def matbench_split(task: str, fold: int) -> tuple[list[str], list[str]]:
    """Official MatBench v0.1 (train_ids, test_ids) for ``fold`` in 0..4."""
    global _SPLITS
    if _SPLITS is None:
        _SPLITS = json.loads(fetch("pypi/matbench-0.6/matbench_v0.1_validation.json").read_text())["splits"]
    if task not in _SPLITS:
        raise KeyError(f"unknown MatBench task {task!r}; known: {sorted(_SPLITS)}")
    folds = _SPLITS[task]
    key = f"fold_{fold}"
    if key not in folds:
        raise KeyError(f"{task} has folds {sorted(folds)}, not {key}")
    return list(folds[key]["train"]), list(folds[key]["test"])


def _matbench_from_matminer(task: str) -> pd.DataFrame:
    from matminer.datasets import load_dataset

    df = load_dataset(task)
    df.index = [matbench_id(task, i) for i in range(len(df))]
    return df


def load_matbench(task: str) -> pd.DataFrame:
    """A MatBench task as a DataFrame indexed by MatBench id, columns ``structure`` and the target.

    matbench_dielectric comes from the pinned crystal-toolkit wheel on PyPI (4,764 rows, target
    ``n``); every task is also tried through matminer's own download (figshare), which needs internet.
    """
    from pymatgen.core import Structure

    meta = matbench_metadata(task)
    target = meta["target"]
    errors = []
    if task == "matbench_dielectric":
        try:
            raw = json.loads(gzip.decompress(fetch(REGISTRY_DIELECTRIC).read_bytes()))
            keys = sorted(raw["structure"], key=int)
            df = pd.DataFrame(
                {
                    "structure": [Structure.from_dict(raw["structure"][k]) for k in keys],
                    target: [float(raw[target][k]) for k in keys],
                },
                index=pd.Index([matbench_id(task, int(k)) for k in keys], name="id"),
            )
            _expect_rows(df, meta, task)
            return df
        except DataError as exc:
            errors.append(str(exc))
    try:
        df = _matbench_from_matminer(task)
    except Exception as exc:  # matminer raises assorted network/IO errors
        errors.append(f"matminer.load_dataset: {type(exc).__name__}: {exc}")
        raise DataUnavailableError("; ".join(errors), task) from exc
    df.index.name = "id"
    _expect_rows(df, meta, task)
    return df[["structure", target]]


def _expect_rows(df: pd.DataFrame, meta: dict, task: str) -> None:
    n = meta.get("n_samples")
    if n is not None and len(df) != n:
        raise DataError(f"expected {n} rows, got {len(df)}", task)


def load_paper_dielectric_scope() -> pd.DataFrame:
    """The authors' SCOPE strings for matbench_dielectric fold 0, indexed by MatBench id.

    Columns ``scope``, ``n`` and ``split`` (``train_and_val`` / ``test``); the CSVs list rows in
    MatBench id order of the official fold-0 split, which is how ids are attached here.
    """
    train_ids, test_ids = matbench_split("matbench_dielectric", 0)
    parts = []
    for split, ids in (("train_and_val", train_ids), ("test", test_ids)):
        df = pd.read_csv(fetch(f"cloud/finetune_dielectric_{split}.csv"))
        if len(df) != len(ids):
            raise DataError(f"{len(df)} rows but fold 0 has {len(ids)} {split} ids", f"finetune_dielectric_{split}")
        df.index = pd.Index(ids, name="id")
        df["split"] = split
        parts.append(df)
    return pd.concat(parts)


def dielectric_metadata() -> pd.DataFrame:
    """Per-row metadata of matbench_dielectric from the pinned crystal-toolkit file, by MatBench id.

    Columns ``crystal_system``, ``spg_num``, ``spg_symbol``, ``formula``, ``volume``, ``n``.
    """
    raw = json.loads(gzip.decompress(fetch(REGISTRY_DIELECTRIC).read_bytes()))
    keys = sorted(raw["crystal_sys"], key=int)
    task = "matbench_dielectric"
    cols = {
        "crystal_sys": "crystal_system",
        "spg_num": "spg_num",
        "spg_symbol": "spg_symbol",
        "formula": "formula",
        "volume": "volume",
        "n": "n",
    }
    df = pd.DataFrame(
        {new: [raw[old][k] for k in keys] for old, new in cols.items() if old in raw},
        index=pd.Index([matbench_id(task, int(k)) for k in keys], name="id"),
    )
    return df


def dielectric_crystal_systems() -> pd.Series:
    """MatBench id -> crystal system (7 systems) for matbench_dielectric (4,764 rows)."""
    return dielectric_metadata()["crystal_system"]
