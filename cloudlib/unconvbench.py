"""UnconvBench: the "unconventional crystals" benchmark that CLOUD is also fine-tuned on.

Sources (found by reading the public code; the data could not be downloaded from here)
-------------------------------------------------------------------------------------
* Benchmark paper: H. Wang et al., "CrysToGraph: A Comprehensive Predictive Model for Crystal
  Materials Properties and the Benchmark", arXiv:2407.16131 (UnconvBench is introduced there).
* Code: https://github.com/howardwang1997/unconvbench (MIT licence). ``unconvbench/constant.py``
  names the tasks and their sizes; ``unconvbench/utils/constant.py`` (``DATASETS_MAP``) names the
  JARVIS-style source file and the target key of each; ``unconvbench/utils.py`` makes the 5-fold
  splits (``KFold(5, shuffle=True, random_state=42)`` over row order, ids
  ``<task>-<i+1 zero-padded to len(str(n))>``) and reads the data files.
* Data: figshare article 26657428, https://figshare.com/articles/dataset/UnconvBench/26657428
  ("download them to directory ``datasets``"). The code reads ``datasets/ub_<task>.json``, e.g.
  ``ub_unconvbench_defected.json``: a JSON object ``{"index": [...], "columns": ["structure",
  <target>], "data": [[<pymatgen Structure dict>, <target>], ...]}`` (converted from JARVIS atoms
  with ``JarvisAtomsAdaptor``), and ``datasets/metadata_validation.json`` (the splits, MatBench
  layout ``{"splits": {<task>: {"fold_0": {"train": ids, "test": ids}, ...}}}``).
  Figshare records default to CC BY 4.0, but the record's licence could not be read offline; the
  underlying databases are JARVIS-DFT (NIST, public), 2DMatPedia, C2DB (CC BY 4.0) and QMOF
  (CC BY 4.0) -- cite them with UnconvBench.
* CLOUD (github.com/ChangwenXu98/CLOUD, ``dataset/dataset_cloud.py``) fine-tunes on its own
  processed copies, ``data/unconv/<task>/<fold>/train_and_val.csv`` and ``test.csv`` (column 0 the
  SCOPE string, column 1 the target; e.g. task ``unconvbench_defected``). Those CSVs are not
  published anywhere that could be found.

The six tasks CLOUD reports (short name -> UnconvBench task, upstream source file, target key, rows):

========  =========================  ======================================  ============================  =====
name      UnconvBench task           upstream source (DATASETS_MAP)          target                        rows
========  =========================  ======================================  ============================  =====
2d_e_exf  unconvbench_exfoliation    2dmatpedia_exfoliation.json             exfoliation_energy_per_atom   4527
2d_e_tot  unconvbench_2d_e_tot       c2db_atoms.json                         etot                          3520
2d_gap    unconvbench_2d_gap         c2db_atoms.json                         gap                           3520
qmof      unconvbench_qmof           qmof_sub.json                           energy_total                  5106
supercon  unconvbench_supercon       jarvis_epc_data_figshare_1058.json      Tc                            1058
defected  unconvbench_defected       vacancydb.json                          ef                             530
========  =========================  ======================================  ============================  =====

(UnconvBench also has co2_adsp, src_bulk and bulk_s/m/l, which CLOUD does not use.) UnconvBench's
own metadata leaves units as "TBA"; the usual units of these keys are eV/atom (exfoliation), eV
(gap, ef), K (Tc) and eV (etot, energy_total).

How files are obtained (same order as :func:`cloudlib.registry.fetch`)
------------------------------------------------------------------
1. the cache (``data/cache/unconvbench/...``); 2. figshare, through its public API
(``https://api.figshare.com/v2/articles/26657428/files`` lists each file's ``download_url`` and
``computed_md5``; the md5 is checked), skipped with ``$CLOUD_OFFLINE=1``; 3. ``$CLOUD_DATA_MIRROR``
under the same relative names (``unconvbench/ub_unconvbench_defected.json``,
``unconvbench/metadata_validation.json``, ``cloud/unconv/unconvbench_defected/0/test.csv`` ...).

No sha256 of these files could be learnt offline, so they are **not** in
:data:`cloudlib.registry.REGISTRY` (whose entries all carry a pinned sha256). They live in
:data:`FILES` here with ``sha256=None``: such a file is accepted after a content check (JSON
layout, row count equal to UnconvBench's ``DATASETS_LEN``) and an :class:`UnverifiedDataWarning`.
Fill in the sha256 once a copy has been seen, and the file is then verified like any other.
"""

from __future__ import annotations

import hashlib
import json
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from . import registry
from .errors import ChecksumError, DataError, DataUnavailableError

FIGSHARE_ARTICLE = 26657428
FIGSHARE_LANDING = f"https://figshare.com/articles/dataset/UnconvBench/{FIGSHARE_ARTICLE}"
FIGSHARE_FILES_API = f"https://api.figshare.com/v2/articles/{FIGSHARE_ARTICLE}/files"
N_FOLDS = 5
SPLIT_SEED = 42


class UnverifiedDataWarning(UserWarning):
    """A data file used without a pinned sha256 (only its layout and size were checked)."""


@dataclass(frozen=True)
class Task:
    name: str  # short name used by CLOUD's tables
    ub_name: str  # UnconvBench task name
    target: str  # target key in the UnconvBench file
    n: int  # rows (UnconvBench DATASETS_LEN)
    source: str  # upstream file named in UnconvBench's DATASETS_MAP
    description: str


TASKS: dict[str, Task] = {
    t.name: t
    for t in [
        Task(
            "2d_e_exf",
            "unconvbench_exfoliation",
            "exfoliation_energy_per_atom",
            4527,
            "2dmatpedia_exfoliation.json",
            "2D materials (2DMatPedia): exfoliation energy per atom",
        ),
        Task("2d_e_tot", "unconvbench_2d_e_tot", "etot", 3520, "c2db_atoms.json", "2D materials (C2DB): total energy"),
        Task("2d_gap", "unconvbench_2d_gap", "gap", 3520, "c2db_atoms.json", "2D materials (C2DB): PBE band gap"),
        Task(
            "qmof",
            "unconvbench_qmof",
            "energy_total",
            5106,
            "qmof_sub.json",
            "metal-organic frameworks (QMOF subset): total energy",
        ),
        Task(
            "supercon",
            "unconvbench_supercon",
            "Tc",
            1058,
            "jarvis_epc_data_figshare_1058.json",
            "superconductors (JARVIS e-ph): critical temperature Tc",
        ),
        Task(
            "defected",
            "unconvbench_defected",
            "ef",
            530,
            "vacancydb.json",
            "defected crystals (JARVIS vacancy database): vacancy formation energy",
        ),
    ]
}
_ALIASES = {"exfoliation": "2d_e_exf", "2d_exfoliation": "2d_e_exf"}


def task(name: str) -> Task:
    """The task for a short name (``defected``), an UnconvBench name (``unconvbench_defected``) or alias."""
    key = _ALIASES.get(name, name)
    if key in TASKS:
        return TASKS[key]
    for t in TASKS.values():
        if t.ub_name == name:
            return t
    raise KeyError(f"unknown UnconvBench task {name!r}; known: {sorted(TASKS)} (or their unconvbench_* names)")


def tasks_table() -> pd.DataFrame:
    """The six tasks with their UnconvBench names, targets, sizes and upstream files."""
    return pd.DataFrame([t.__dict__ for t in TASKS.values()]).set_index("name")


# --------------------------------------------------------------------------- file registry


@dataclass(frozen=True)
class UnconvFile:
    """A file of the benchmark. ``name`` is its cache path and its path in the mirror."""

    name: str
    figshare_names: tuple[str, ...] = ()  # file names to look for in the figshare article
    sha256: str | None = None  # None: unknown offline -> content check + UnverifiedDataWarning
    kind: str = "json"  # json (UnconvBench data), splits (metadata_validation.json), csv (CLOUD)
    task: str | None = None
    description: str = ""


def data_file_name(t: Task) -> str:
    return f"unconvbench/ub_{t.ub_name}.json"


SPLITS_FILE = "unconvbench/metadata_validation.json"


def cloud_csv_name(t: Task, fold: int, split: str) -> str:
    """Mirror/cache name of CLOUD's processed CSV (``split`` is ``train_and_val`` or ``test``)."""
    return f"cloud/unconv/{t.ub_name}/{fold}/{split}.csv"


FILES: dict[str, UnconvFile] = {}
for _t in TASKS.values():
    _n = data_file_name(_t)
    FILES[_n] = UnconvFile(
        _n,
        (f"ub_{_t.ub_name}.json", f"ub_{_t.ub_name}.json.gz"),
        None,
        "json",
        _t.name,
        f"UnconvBench {_t.ub_name}: structures and {_t.target}",
    )
    for _fold in range(N_FOLDS):
        for _split in ("train_and_val", "test"):
            _c = cloud_csv_name(_t, _fold, _split)
            FILES[_c] = UnconvFile(_c, (), None, "csv", _t.name, f"CLOUD's SCOPE CSV for {_t.ub_name} fold {_fold}")
FILES[SPLITS_FILE] = UnconvFile(
    SPLITS_FILE, ("metadata_validation.json",), None, "splits", None, "UnconvBench 5-fold splits of every task"
)
del _t, _n, _fold, _split, _c


def _validate(f: UnconvFile, blob: bytes) -> None:
    """Content check for files without a pinned sha256; raises DataError when it does not fit."""
    import gzip

    if f.kind == "csv":
        first = blob[:4096].decode("utf-8", "replace").splitlines()[:1]
        if not first or "," not in first[0] or blob.lstrip()[:1] in (b"<", b"{", b"["):
            raise DataError("not a CSV file with a header of at least two columns", f.name)
        return
    try:
        raw = json.loads(gzip.decompress(blob) if blob[:2] == b"\x1f\x8b" else blob)
    except ValueError as exc:
        raise DataError(f"not JSON: {exc}", f.name) from exc
    if f.kind == "splits":
        splits = raw.get("splits") if isinstance(raw, dict) else None
        if not isinstance(splits, dict) or not splits:
            raise DataError("no 'splits' object", f.name)
        return
    t = TASKS[f.task]
    if not (isinstance(raw, dict) and isinstance(raw.get("data"), list) and isinstance(raw.get("columns"), list)):
        raise DataError("expected {'index', 'columns', 'data'}", f.name)
    if len(raw["columns"]) != 2:
        raise DataError(f"expected 2 columns, got {raw['columns']}", f.name)
    if len(raw["data"]) != t.n:
        raise DataError(f"expected {t.n} rows (UnconvBench DATASETS_LEN), got {len(raw['data'])}", f.name)


def _accept(f: UnconvFile, blob: bytes, source: str) -> None:
    """Verify ``blob``: against the pinned sha256 when there is one, else by content (with a warning)."""
    if f.sha256 is not None:
        got = hashlib.sha256(blob).hexdigest()
        if got != f.sha256:
            raise ChecksumError(f"sha256 mismatch from {source}: expected {f.sha256}, got {got}", f.name)
        return
    _validate(f, blob)
    warnings.warn(
        f"{f.name}: no pinned sha256 (unverified); accepted from {source} after a layout/row-count check only",
        UnverifiedDataWarning,
        stacklevel=4,
    )


def _figshare_listing() -> list[dict]:
    return json.loads(registry.download(FIGSHARE_FILES_API))


def _from_figshare(f: UnconvFile) -> bytes:
    listing = _figshare_listing()
    by_name = {e.get("name"): e for e in listing}
    entry = next((by_name[n] for n in f.figshare_names if n in by_name), None)
    if entry is None:
        raise DataError(
            f"none of {list(f.figshare_names)} in figshare article {FIGSHARE_ARTICLE} "
            f"(it lists {sorted(by_name)[:20]})",
            f.name,
        )
    blob = registry.download(entry["download_url"])
    md5 = entry.get("computed_md5") or entry.get("supplied_md5")
    if md5 and hashlib.md5(blob).hexdigest() != md5:
        raise ChecksumError(f"md5 mismatch with figshare's computed_md5 {md5}", f.name)
    return blob


def fetch(name: str) -> Path:
    """Local path of UnconvBench file ``name`` (see module docstring for the order of sources)."""
    if name not in FILES:
        raise KeyError(f"unknown UnconvBench file {name!r}")
    f = FILES[name]
    hint = (
        f"; get it from {FIGSHARE_LANDING} and place it at $CLOUD_DATA_MIRROR/{name}"
        if f.figshare_names
        else f"; place CLOUD's CSV at $CLOUD_DATA_MIRROR/{name}"
    )
    if f.figshare_names:
        remote, label = (lambda: _from_figshare(f)), f"figshare {FIGSHARE_FILES_API} (article {FIGSHARE_ARTICLE})"
    else:
        remote, label = None, "no public URL (CLOUD did not publish its processed UnconvBench CSVs)"
    return registry.fetch_with(
        name, lambda blob, source: _accept(f, blob, source), remote=remote, remote_label=label, hint=hint
    )


# --------------------------------------------------------------------------- splits and loaders


def _ids(t: Task, index) -> list[str]:
    width = len(str(t.n))
    return [f"{t.ub_name}-{str(i + 1).rjust(width, '0')}" for i in index]


def reproduce_splits(name: str) -> dict[int, tuple[list[str], list[str]]]:
    """UnconvBench's 5-fold splits recomputed exactly as its ``make_splits`` does (KFold, seed 42)."""
    from sklearn.model_selection import KFold

    t = task(name)
    kf = KFold(N_FOLDS, random_state=SPLIT_SEED, shuffle=True)
    return {i: (_ids(t, tr), _ids(t, te)) for i, (tr, te) in enumerate(kf.split(np.arange(t.n)))}


def unconvbench_splits(name: str) -> tuple[dict[int, tuple[list[str], list[str]]], str]:
    """``({fold: (train_ids, test_ids)}, source)``: the published split file when it can be had,
    else :func:`reproduce_splits` (``source`` says which)."""
    t = task(name)
    try:
        raw = json.loads(fetch(SPLITS_FILE).read_text())
        folds = raw["splits"][t.ub_name]
        return {
            i: (list(folds[f"fold_{i}"]["train"]), list(folds[f"fold_{i}"]["test"])) for i in range(N_FOLDS)
        }, SPLITS_FILE
    except (DataUnavailableError, KeyError):
        return reproduce_splits(name), "reproduced: KFold(5, shuffle=True, random_state=42)"


def load_unconvbench_full(name: str) -> pd.DataFrame:
    """A whole UnconvBench task: index UnconvBench id, columns ``structure`` and the target."""
    import gzip

    from pymatgen.core import Structure

    t = task(name)
    blob = fetch(data_file_name(t)).read_bytes()
    raw = json.loads(gzip.decompress(blob) if blob[:2] == b"\x1f\x8b" else blob)
    target = raw["columns"][1]
    df = pd.DataFrame(
        {
            "structure": [Structure.from_dict(d[0]) for d in raw["data"]],
            target: [float(d[1]) for d in raw["data"]],
        },
        index=pd.Index(_ids(t, range(len(raw["data"]))), name="id"),
    )
    if target != t.target:
        warnings.warn(f"{t.ub_name}: target column is {target!r}, UnconvBench names {t.target!r}", stacklevel=2)
    return df


def _load_cloud_csv(t: Task, fold: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    out = []
    for split in ("train_and_val", "test"):
        name = cloud_csv_name(t, fold, split)
        df = pd.read_csv(fetch(name))
        if df.shape[1] < 2:
            raise DataError(f"expected SCOPE and target columns, got {list(df.columns)}", name)
        original = list(df.columns[:2])
        df = df.iloc[:, :2].copy()
        df.columns = ["scope", t.target]
        df.index.name = "row"
        df.attrs.update(source=name, original_columns=original)
        out.append(df)
    return out[0], out[1]


def load_unconvbench(
    name: str,
    fold: int,
    source: str = "auto",
    with_scope: bool = False,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """``(train_and_val, test)`` of an UnconvBench task and fold (0..4).

    ``source``:

    * ``"cloud"`` -- CLOUD's processed CSVs: columns ``scope`` and the target (row index);
    * ``"unconvbench"`` -- the UnconvBench data file and splits: index UnconvBench id, columns
      ``structure`` and the target, plus ``scope`` / ``scope_error`` with ``with_scope=True``;
    * ``"auto"`` -- CLOUD's CSVs when present, else UnconvBench's file.

    Raises :class:`~cloudlib.errors.DataUnavailableError` naming every place tried and the figshare
    URL when no source has the data.
    """
    t = task(name)
    if fold not in range(N_FOLDS):
        raise ValueError(f"fold must be in 0..{N_FOLDS - 1}, got {fold}")
    if source not in ("auto", "cloud", "unconvbench"):
        raise ValueError(f"source must be 'auto', 'cloud' or 'unconvbench', got {source!r}")
    errors: list[str] = []
    if source in ("auto", "cloud"):
        try:
            return _load_cloud_csv(t, fold)
        except DataUnavailableError as exc:
            if source == "cloud":
                raise
            errors.append(str(exc))
    try:
        full = load_unconvbench_full(t.name)
    except DataUnavailableError as exc:
        errors.append(str(exc))
        raise DataUnavailableError(
            f"UnconvBench {t.ub_name} fold {fold} unavailable ({FIGSHARE_LANDING}): " + " || ".join(errors),
            t.name,
        ) from exc
    splits, split_source = unconvbench_splits(t.name)
    train_ids, test_ids = splits[fold]
    if with_scope:
        from .scope import scope_table

        sc = scope_table(full["structure"].to_dict(), progress=False)
        full = full.assign(scope=sc["scope"].reindex(full.index), scope_error=sc["error"].reindex(full.index))
    train, test = full.loc[train_ids], full.loc[test_ids]
    for df in (train, test):
        df.attrs.update(source=data_file_name(t), split_source=split_source)
    return train, test
