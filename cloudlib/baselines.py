"""Classical baselines and out-of-distribution splits for the fine-tuning experiments.

* :func:`dummy_predict` -- the floor: training mean (sklearn ``DummyRegressor``) for regression,
  class prior (``DummyClassifier(strategy="prior")``) for classification.
* :func:`magpie_features` -- the 132 Magpie composition descriptors of matminer
  (``ElementProperty.from_preset("magpie")``), cached under :func:`cloudlib.paths.derived_dir`.
* :func:`rf_magpie` -- a random forest on Magpie features, the composition half of MatBench's
  ``RF-SCM/Magpie`` reference (Dunn et al. 2020 used Magpie + sine Coulomb matrix and 500 trees).
  Here the forest sees Magpie only, so it is a *composition-only* baseline: it cannot tell
  polymorphs apart, which is exactly what a structure model such as CLOUD should beat.
* :func:`leave_cluster_out_splits` with :func:`dielectric_crystal_systems` (leave one crystal system
  out on matbench_dielectric) or :func:`chemical_family` (leave one anion family out) -- OOD splits.

Timings on the 2-core development machine (matbench_dielectric, 4,764 compositions): Magpie
featurization ~7 s serial (``jobs=2`` was slower, ~13 s, because matminer's multiprocessing pays
to ship the featurizer and rows to the workers), a cached reload ~1 s; one
``rf_magpie`` fit on 3,811 rows x 132 features: ~11-13 s with 100 trees, ~21 s with 200, ~54 s with
500 (MatBench's setting), all with ``n_jobs=-1``. The MAE on fold-0 barely moves between 100 and
500 trees (0.459 vs 0.457), so :data:`N_ESTIMATORS_LAPTOP` = 100 is the default and
:data:`N_ESTIMATORS_MATBENCH` = 500 the paper setting.
"""
from __future__ import annotations

import gzip
import hashlib
import json
import warnings
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from . import data, paths
from .io import write_csv, write_json

#: Trees in the MatBench v0.1 RF-SCM/Magpie reference.
N_ESTIMATORS_MATBENCH = 500
#: Laptop default: one fit on ~3,800 rows takes ~11 s on 2 cores, MAE within 1 % of 500 trees.
N_ESTIMATORS_LAPTOP = 100
#: Bump when the feature definition or the cache format changes.
MAGPIE_CACHE_VERSION = 1

TASK_TYPES = ("regression", "classification")


# --------------------------------------------------------------------------- dummy baseline


def _check_task(task: str) -> None:
    if task not in TASK_TYPES:
        raise ValueError(f"task must be one of {TASK_TYPES}, got {task!r}")


def _n_rows(X) -> int:
    return X if isinstance(X, (int, np.integer)) else len(X)


def dummy_predict(train_X, train_y, test_X, task: str = "regression", proba: bool = False) -> np.ndarray:
    """Predictions of the trivial baseline: the training mean, or the class prior.

    ``train_X`` / ``test_X`` are only used for their length (an int is accepted for ``test_X``).
    For classification, ``proba=True`` returns the prior probability of the positive (last) class,
    the score MatBench's ROC-AUC needs; otherwise the majority class.
    """
    from sklearn.dummy import DummyClassifier, DummyRegressor

    _check_task(task)
    y = np.asarray(train_y)
    Xtr = np.zeros((len(y), 1))
    Xte = np.zeros((_n_rows(test_X), 1))
    if task == "regression":
        return DummyRegressor(strategy="mean").fit(Xtr, y).predict(Xte)
    model = DummyClassifier(strategy="prior").fit(Xtr, y)
    return model.predict_proba(Xte)[:, -1] if proba else model.predict(Xte)


# --------------------------------------------------------------------------- Magpie features


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


def _to_composition(item: Any):
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
            f"Magpie featurization failed for {len(failed)} row(s), kept as NaN rows "
            f"(see .attrs['failed']): {first}",
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
            comp = _to_composition(item)
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


# --------------------------------------------------------------------------- random forest


def _impute(train: np.ndarray, test: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Fill NaN with the training column medians (0 for columns that are NaN throughout)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN column
        med = np.nanmedian(train, axis=0)
    med = np.where(np.isnan(med), 0.0, med)
    return np.where(np.isnan(train), med, train), np.where(np.isnan(test), med, test)


def rf_magpie(
    train_X,
    train_y,
    test_X,
    task: str = "regression",
    seed: int = 0,
    n_estimators: int = N_ESTIMATORS_LAPTOP,
    n_jobs: int = -1,
    proba: bool = False,
    drop_failed_train: bool = True,
) -> np.ndarray:
    """Random-forest predictions on Magpie features (MatBench's RF-SCM/Magpie, composition part).

    NaN features are imputed with the training medians (all-NaN columns with 0). Training rows that
    are entirely NaN (failed featurization) carry no information and are left out of the fit when
    ``drop_failed_train``; test rows are always predicted (a failed one gets the median profile).
    Deterministic for a given ``seed``. Default 100 trees (laptop); MatBench used
    :data:`N_ESTIMATORS_MATBENCH` = 500. For classification, ``proba=True`` returns the probability
    of the positive (last) class.
    """
    from sklearn.ensemble import RandomForestClassifier, RandomForestRegressor

    _check_task(task)
    Xtr = np.asarray(train_X, dtype=float)
    Xte = np.asarray(test_X, dtype=float)
    y = np.asarray(train_y)
    if len(Xtr) != len(y):
        raise ValueError(f"train_X has {len(Xtr)} rows but train_y has {len(y)}")
    if drop_failed_train:
        keep = ~np.isnan(Xtr).all(axis=1)
        Xtr, y = Xtr[keep], y[keep]
    if len(Xtr) == 0:
        raise ValueError("no usable training rows")
    Xtr, Xte = _impute(Xtr, Xte)
    kw = dict(n_estimators=n_estimators, random_state=seed, n_jobs=n_jobs)
    if task == "regression":
        model = RandomForestRegressor(**kw).fit(Xtr, y.astype(float))
    else:
        model = RandomForestClassifier(**kw).fit(Xtr, y)
    # Trees are seeded one by one, so the fit is the same for any n_jobs; threaded prediction sums
    # the trees in a racy order (last-bit differences), so predict serially (cheap) to be bitwise
    # reproducible.
    model.set_params(n_jobs=1)
    if task == "regression" or not proba:
        return model.predict(Xte)
    return model.predict_proba(Xte)[:, -1]


def score_splits(
    X: pd.DataFrame,
    y: pd.Series,
    splits: list[tuple[str, list, list]],
    seed: int = 0,
    n_estimators: int = N_ESTIMATORS_LAPTOP,
) -> pd.DataFrame:
    """MAE of the dummy and the Magpie random forest on each (name, train_ids, test_ids) split."""
    rows = []
    for name, tr, te in splits:
        y_tr, y_te = y.loc[tr].to_numpy(float), y.loc[te].to_numpy(float)
        dummy = dummy_predict(tr, y_tr, len(te))
        rf = rf_magpie(X.loc[tr], y_tr, X.loc[te], seed=seed, n_estimators=n_estimators)
        rows.append(
            {
                "split": name,
                "n_train": len(tr),
                "n_test": len(te),
                "dummy_mae": float(np.mean(np.abs(dummy - y_te))),
                "rf_magpie_mae": float(np.mean(np.abs(rf - y_te))),
            }
        )
    return pd.DataFrame(rows).set_index("split")


# --------------------------------------------------------------------------- OOD splits


def leave_cluster_out_splits(groups: pd.Series, min_size: int = 1) -> list[tuple[str, list, list]]:
    """Leave-one-cluster-out splits: ``[(group, train_ids, test_ids), ...]``, groups sorted by name.

    ``groups`` maps id -> group label. Every group with at least ``min_size`` members is the test set
    once, with all other ids as training set. Ids in smaller groups, or with a missing (NaN) label,
    are never tested but always trained on, so every split covers all ids. Ids keep the order of
    ``groups``.
    """
    if not isinstance(groups, pd.Series):
        raise TypeError("groups must be a pandas Series id -> group")
    if groups.index.has_duplicates:
        raise ValueError("groups has duplicate ids")
    if min_size < 1:
        raise ValueError("min_size must be >= 1")
    counts = groups.dropna().value_counts()
    names = sorted(g for g, n in counts.items() if n >= min_size)
    ids = groups.index
    out = []
    for g in names:
        mask = (groups == g).to_numpy()
        out.append((str(g), list(ids[~mask]), list(ids[mask])))
    return out


def dielectric_metadata() -> pd.DataFrame:
    """Per-row metadata of matbench_dielectric from the pinned crystal-toolkit file, by MatBench id.

    Columns ``crystal_system``, ``spg_num``, ``spg_symbol``, ``formula``, ``volume``, ``n``.
    """
    raw = json.loads(gzip.decompress(data.fetch(data.REGISTRY_DIELECTRIC).read_bytes()))
    keys = sorted(raw["crystal_sys"], key=int)
    task = "matbench_dielectric"
    cols = {"crystal_sys": "crystal_system", "spg_num": "spg_num", "spg_symbol": "spg_symbol",
            "formula": "formula", "volume": "volume", "n": "n"}
    df = pd.DataFrame(
        {new: [raw[old][k] for k in keys] for old, new in cols.items() if old in raw},
        index=pd.Index([data.matbench_id(task, int(k)) for k in keys], name="id"),
    )
    return df


def dielectric_crystal_systems() -> pd.Series:
    """MatBench id -> crystal system (7 systems) for matbench_dielectric (4,764 rows)."""
    return dielectric_metadata()["crystal_system"]


#: Anion families by the most electronegative element (Pauling), see :func:`chemical_family`.
ANION_FAMILIES = {
    "F": "fluoride",
    "O": "oxide",
    "S": "chalcogenide", "Se": "chalcogenide", "Te": "chalcogenide",
    "Cl": "halide", "Br": "halide", "I": "halide",
    "N": "pnictide", "P": "pnictide", "As": "pnictide", "Sb": "pnictide", "Bi": "pnictide",
}


def chemical_family(item) -> str:
    """Anion family of a compound: the family of its most electronegative element (Pauling scale).

    ``fluoride`` (F), ``oxide`` (O), ``chalcogenide`` (S, Se, Te), ``halide`` (Cl, Br, I),
    ``pnictide`` (N, P, As, Sb, Bi), else ``other`` (hydrides, carbides, borides, intermetallics,
    single elements). So an oxyfluoride counts as a fluoride and a hydroxide as an oxide.
    ``item``: formula, Composition or Structure. Use it as an alternative grouping for
    :func:`leave_cluster_out_splits`, e.g. ``pd.Series({i: chemical_family(f) for i, f in ...})``.
    """
    comp = _to_composition(item)
    els = [e for e in comp.elements if getattr(e, "symbol", None)]
    if len(els) < 2:
        return "other"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pymatgen warns for elements without a Pauling value
        scored = [(float(e.X), e.symbol) for e in els if not np.isnan(float(e.X))]
    if not scored:
        return "other"
    _, symbol = max(scored)
    return ANION_FAMILIES.get(symbol, "other")


def matbench_magpie(task: str = "matbench_dielectric", jobs: int = 1, refresh: bool = False) -> pd.DataFrame:
    """Cached Magpie features of a whole MatBench task, indexed by MatBench id.

    matbench_dielectric is featurized from the formulas of the crystal-toolkit file (no structures
    need parsing); other tasks from ``load_matbench(task)`` structures.
    """
    if task == "matbench_dielectric":
        items = dielectric_metadata()["formula"]
    else:
        items = data.load_matbench(task)["structure"]
    return magpie_features(items, cache_key=task, jobs=jobs, refresh=refresh)
