"""The offline pre-training corpus: every real crystal reachable without the internet, as deduplicated SCOPE.

* :func:`corpus_sources` -- name -> loader of each source (the authors' 10 k sample of their OPTIMADE corpus,
  matbench_dielectric, four matminer 0.3.9 datasets, pymatgen's AFLOW prototypes, CDVAE's perov_5 and all 18,928
  Castelli perovskites, two matcalc benchmark sets, carbon_24, the JARVIS superconductors, 508 matbench_jdft2d
  entries, 3DSC's 4,704 Materials Project CIFs, CoRE MOF 2019);
* :func:`build_corpus` / :func:`load_pretraining_corpus` -- SCOPE for every crystal, failures kept, deduplicated
  with provenance and a per-source count table, cached under ``data/derived``. Strings longer than the
  model's block size (:data:`BLOCK_TOKENS`) are counted and left out. ``holdout`` removes every string a
  source produced (e.g. ``matbench_dielectric``: no MatBench test crystal's string is pre-trained on).
"""

from __future__ import annotations

import gzip
import json
import os
from collections.abc import Iterable, Iterator
from pathlib import Path

import pandas as pd

from . import offline_data, paths
from .errors import DataError
from .matbench_data import load_matbench
from .registry import fetch

#: SCOPE tokens a corpus string may have: the model's 64 positions less [CLS] and [SEP].
BLOCK_TOKENS = 62


def _read_csv_text(name: str) -> pd.DataFrame:
    return pd.read_csv(fetch(name), comment=None, skiprows=1, low_memory=False)


def corpus_sources() -> dict[str, callable]:
    """Offline sources of crystals: name -> loader returning a Mapping id -> structure item.

    Items are what :func:`cloudlib.scope.scope_table` accepts; the loader for ``cloud_10k`` returns
    SCOPE strings directly (the authors' sample of their OPTIMADE corpus).
    """
    from .scope import CifText, DictText

    def dielectric():
        return load_matbench("matbench_dielectric")["structure"].to_dict()

    def flla():
        df = _read_csv_text("pypi/matminer-0.3.9/flla_2015.csv")
        return {f"flla:{m}": DictText(s) for m, s in zip(df.material_id, df.structure)}

    def piezo():
        return {
            f"piezoelectric_tensor:{m}": s for m, s in offline_data.matminer_structures("piezoelectric_tensor").items()
        }

    def jarvis(file, prefix):
        def load():
            splits = offline_data.jarvis_structures(f"jarvis_leaderboard/{file}")
            return {f"{prefix}:{k}": v for rows in splits.values() for k, v in rows.items()}

        return load

    def jdft2d():
        return offline_data.load_jdft2d_partial()["structure"].to_dict()

    def dsc3():
        return {f"3dsc:{k}": v for k, v in offline_data.dsc3_mp_cifs().items()}

    def core_mof():
        return {f"core_mof:{k}": v for k, v in offline_data.core_mof_cifs().items()}

    def matminer_cif(file):
        def load():
            df = _read_csv_text(f"pypi/matminer-0.3.9/{file}.csv")
            return {f"{file}:{m}": CifText(s) for m, s in zip(df.material_id, df.structure)}

        return load

    def prototypes():
        from importlib.resources import files

        raw = files("pymatgen.analysis.prototypes").joinpath("aflow_prototypes.json.gz").read_bytes()
        protos = json.loads(gzip.decompress(raw))
        return {f"aflow:{i}:{p['tags']['aflow']}": p["snl"] for i, p in enumerate(protos)}  # labels repeat

    def perov():
        out = {}
        for split in ("val", "test"):
            df = pd.read_csv(fetch(f"cdvae/perov_5_{split}.csv"))
            out.update({f"perov_5:{m}": CifText(c) for m, c in zip(df.material_id, df.cif)})
        return out

    def matcalc(file, key):
        def load():
            rows = json.loads(gzip.decompress(fetch(f"matcalc/{file}").read_bytes()))
            return {f"matcalc:{r[key]}": DictText(r["structure"]) for r in rows}

        return load

    def cloud_10k():
        df = pd.read_csv(fetch("cloud/pretrain_cloud_10k.csv"))
        return {f"cloud_10k:{i}": s for i, s in enumerate(df["cloud"])}

    return {
        "cloud_10k": cloud_10k,
        "matbench_dielectric": dielectric,
        "matminer_flla_2015": flla,
        "matminer_elastic_tensor": matminer_cif("elastic_tensor"),
        "matminer_dielectric_constant": matminer_cif("dielectric_constant"),
        "pymatgen_aflow_prototypes": prototypes,
        "cdvae_perov_5": perov,
        "matcalc_mp_elasticity": matcalc("mp-binary-pbe-elasticity-2025.1.json.gz", "mp_id"),
        "matcalc_wbm": matcalc("wbm-random-pbe52-equilibrium-2025.1.json.gz", "material_id"),
        "matminer_piezoelectric_tensor": piezo,
        "jarvis_castelli_perovskites": jarvis("atomgen_perov5_heat_ref.json.zip", "castelli"),
        "jarvis_carbon_24": jarvis("atomgen_carbon24_energy_per_atom.json.zip", "carbon_24"),
        "jarvis_supercon": jarvis("atomgen_dft_3d_Tc_supercon.json.zip", "supercon"),
        "matbench_jdft2d_partial": jdft2d,
        "3dsc_mp": dsc3,
        "core_mof_2019": core_mof,
    }


STRING_SOURCES = {"cloud_10k"}
#: Part of the corpus cache's file name: bump it whenever a loader or SCOPE itself changes output.
CORPUS_VERSION = 3


def n_tokens(scope: str) -> int:
    """SCOPE tokens in a string (the tokenizer's words: one per whitespace-separated item)."""
    return len(scope.split())


def build_corpus(
    sources: list[str] | None = None,
    jobs: int = 1,
    limit: int | None = None,
    progress: bool = True,
    executor=None,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Compute the pre-training corpus: (rows, per-source table). Not cached; see load_pretraining_corpus.

    ``rows`` has one row per input crystal (index ``id``; columns ``source``, ``scope``, ``error``),
    failures kept. The table has, per source: structures, ok (valid SCOPE), unique strings, and
    ``new unique`` (strings not already contributed by an earlier source in the order given).
    ``limit`` takes the first N items of each source (smoke runs). ``executor`` (a ``distributed.Client``):
    SCOPE runs on that cluster instead of ``jobs`` local processes (:func:`cloudlib.scope.scope_table`).
    """
    from .scope import scope_table

    loaders = corpus_sources()
    names = list(loaders) if sources is None else list(sources)
    unknown = set(names) - set(loaders)
    if unknown:
        raise KeyError(f"unknown corpus sources {sorted(unknown)}; known: {sorted(loaders)}")
    frames, table, seen = [], [], set()
    for name in names:
        try:
            items = loaders[name]()
        except DataError as exc:
            table.append(
                {
                    "source": name,
                    "structures": 0,
                    "ok": 0,
                    "unique": 0,
                    "too long": 0,
                    "new unique": 0,
                    "note": f"unavailable: {exc}",
                }
            )
            continue
        if limit is not None:
            items = dict(list(items.items())[:limit])
        if name in STRING_SOURCES:
            df = pd.DataFrame({"scope": list(items.values()), "error": None}, index=pd.Index(list(items), name="id"))
        else:
            df = scope_table(items, jobs=jobs, progress=progress, executor=executor)
        df.insert(0, "source", name)
        frames.append(df)
        ok = df["scope"].dropna()
        uniq = set(ok)
        fits = {u for u in uniq if n_tokens(u) <= BLOCK_TOKENS}
        table.append(
            {
                "source": name,
                "structures": len(df),
                "ok": len(ok),
                "unique": len(uniq),
                "too long": len(uniq) - len(fits),
                "new unique": len(fits - seen),
                "note": "",
            }
        )
        seen |= fits
    rows = pd.concat(frames) if frames else pd.DataFrame(columns=["source", "scope", "error"])
    tab = pd.DataFrame(table).set_index("source")
    every = set(rows["scope"].dropna())
    tab.loc["total (deduplicated)"] = [
        int(tab["structures"].sum()),
        int(tab["ok"].sum()),
        len(every),
        len(every) - len(seen),
        len(seen),
        "",
    ]
    return rows, tab


def corpus_stem(sources: list[str] | None = None, limit: int | None = None) -> str:
    """File-name stem of a corpus build: version, sources, size."""
    key = "all" if sources is None else "-".join(sources)
    size = "full" if limit is None else f"limit{limit}"
    return f"corpus-v{CORPUS_VERSION}_{key}_{size}"


def shipped_corpus_dir() -> Path:
    """Where the committed full corpus lives (``data/corpus``): SCOPE of every offline crystal takes ~30 min on
    2 cores (CoRE MOF alone ~20), so it is data, rebuilt by ``python -m cloudlib corpus --jobs 2 --ship``."""
    return paths.data_dir() / "corpus"


def ship_corpus(jobs: int = 2, progress: bool = True) -> Path:
    """Build the full corpus from scratch and write it, its source table and its provenance (every input's
    sha256, the SCOPE libraries' versions, the wall time) to :func:`shipped_corpus_dir`."""
    import importlib.metadata as md
    import platform
    import time

    from .io import write_csv, write_json
    from .registry import REGISTRY

    t0 = time.perf_counter()
    rows, table = build_corpus(jobs=jobs, progress=progress)
    wall = time.perf_counter() - t0
    out = shipped_corpus_dir()
    stem = out / corpus_stem()
    write_csv(Path(f"{stem}_rows.csv.gz"), rows)
    write_csv(Path(f"{stem}_table.csv"), table)
    inputs = {n: d.sha256 for n, d in REGISTRY.items()}
    write_json(
        out / "provenance.json",
        {
            "command": f"python -m cloudlib corpus --jobs {jobs} --ship",
            "corpus_version": CORPUS_VERSION,
            "files": [Path(f"{stem}_rows.csv.gz").name, Path(f"{stem}_table.csv").name],
            "structures": int(len(rows)),
            "ok": int(rows["scope"].notna().sum()),
            "unique_strings_that_fit": int(table.loc["total (deduplicated)", "new unique"]),
            "block_tokens": BLOCK_TOKENS,
            "wall_s": round(wall, 1),
            "jobs": jobs,
            "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, {platform.processor() or platform.platform()}",
            "versions": {p: md.version(p) for p in ("pymatgen", "spglib", "numpy")},
            "inputs_sha256": inputs,
            "inputs_note": "the registry at build time (the sources read a subset); 3dsc/mp_cifs/* are checked "
            "against their manifest; pymatgen's AFLOW prototypes come with the pymatgen version above",
        },
        indent=1,
    )
    return out


def load_pretraining_corpus(
    sources: list[str] | None = None,
    jobs: int = 1,
    limit: int | None = None,
    refresh: bool = False,
    progress: bool = True,
    holdout: tuple[str, ...] | list[str] = (),
    executor=None,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Deduplicated SCOPE corpus from every offline source, with provenance; cached on disk.

    Returns ``(corpus, table)``: ``corpus`` has one row per unique string (index ``scope``; columns
    ``source`` = the first source that produced it, ``sources`` = all of them joined by ``;``,
    ``count`` = how many crystals share it, ``example_id``); ``table`` is the per-source count table of
    :func:`build_corpus`. The full per-crystal table (with errors) is cached beside it; without a cache, the
    committed full corpus (:func:`shipped_corpus_dir`) is read when it is the one asked for.

    Strings over :data:`BLOCK_TOKENS` tokens are left out. ``holdout`` names sources whose every string is
    removed, whichever source also produced it (``("matbench_dielectric",)``: pre-training sees no string of
    a MatBench dielectric crystal, so no test crystal's). ``corpus.attrs`` records ``too_long`` and ``held_out``
    (strings removed) and ``holdout``. ``executor``: as in :func:`build_corpus` (when the corpus is computed).
    """
    from .io import write_csv

    stem = paths.derived_dir() / corpus_stem(sources, limit)
    rows_path, table_path = Path(f"{stem}_rows.csv.gz"), Path(f"{stem}_table.csv")
    shipped = shipped_corpus_dir() / Path(stem).name
    if not refresh and not rows_path.exists() and Path(f"{shipped}_rows.csv.gz").exists():
        rows_path, table_path = Path(f"{shipped}_rows.csv.gz"), Path(f"{shipped}_table.csv")
    if refresh or not (rows_path.exists() and table_path.exists()):
        rows, table = build_corpus(sources, jobs=jobs, limit=limit, progress=progress, executor=executor)
        write_csv(rows_path, rows)
        write_csv(table_path, table)
    rows = pd.read_csv(rows_path, index_col="id", keep_default_na=False, na_values=[""])
    table = pd.read_csv(table_path, index_col="source", keep_default_na=False)
    ok = rows.dropna(subset=["scope"])
    corpus = (
        ok.reset_index()
        .groupby("scope", sort=False)
        .agg(
            source=("source", "first"),
            sources=("source", lambda s: ";".join(dict.fromkeys(s))),
            count=("id", "size"),
            example_id=("id", "first"),
        )
    )
    unknown = set(holdout) - set(table.index)
    if unknown:
        raise KeyError(f"holdout names sources not in this corpus: {sorted(unknown)}; sources: {list(table.index)}")
    long = corpus.index.map(n_tokens) > BLOCK_TOKENS
    held = corpus["sources"].map(lambda s: bool(set(s.split(";")) & set(holdout)))
    corpus = corpus[~long & ~held].copy()
    corpus.attrs.update(too_long=int(long.sum()), held_out=int((held & ~long).sum()), holdout=list(holdout))
    return corpus, table


#: Columns a corpus file may hold its SCOPE strings in: ours, and the authors' (their 6.3 M CSV and 10 k sample).
CORPUS_COLUMNS = ("scope", "cloud")
CORPUS_SUFFIXES = (".csv", ".csv.gz", ".parquet")


def _corpus_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.name.endswith(CORPUS_SUFFIXES))


def _no_column(path: Path, found) -> DataError:
    return DataError(f"no SCOPE column: expected one of {list(CORPUS_COLUMNS)}, found {list(found)}", str(path))


def _unreadable(path: Path, exc: Exception) -> DataError:
    if isinstance(exc, ImportError):
        return DataError(f"reading Parquet needs pyarrow ({exc}); pip install pyarrow", str(path))
    return DataError(f"does not read as a corpus table ({type(exc).__name__}: {exc})", str(path))


_READ_ERRORS = (ImportError, ValueError, OSError, UnicodeDecodeError, pd.errors.ParserError)


def _read_corpus_file(path: Path) -> pd.Series:
    try:
        if path.name.endswith(".parquet"):
            df = pd.read_parquet(path)  # needs pyarrow (or fastparquet)
        else:
            df = pd.read_csv(path, dtype=str, keep_default_na=False)
    except _READ_ERRORS as exc:
        raise _unreadable(path, exc) from exc
    column = next((c for c in CORPUS_COLUMNS if c in df.columns), None)
    if column is None:
        raise _no_column(path, df.columns)
    return df[column].astype(str)


def _locate_corpus(path: str | os.PathLike) -> tuple[Path, list[Path], bool]:
    """(root, files, is a harvest folder) of a corpus path; a missing path or a folder without shards is a
    :class:`DataError` naming it."""
    from .paths import resolve

    root = resolve(path)
    if root.is_dir() and (root / "state.json").is_file():
        return root, [root / "state.json"], True
    if root.is_dir() and (root / "providers.json").is_file():  # harvest_many: one harvest folder per provider
        return root, [root / "providers.json"], True
    if root.is_dir():
        files = _corpus_files(root)
        if not files:
            raise DataError(f"no corpus shards ({', '.join(CORPUS_SUFFIXES)}) and no harvest state.json", str(root))
        return root, files, False
    if root.is_file():
        return root, [root], False
    raise DataError("no such corpus file or folder", str(path))


def _harvest_strings(root: Path) -> pd.Series:
    """The SCOPE strings of a harvest folder's successful rows."""
    from .harvest import PROVIDERS_FILE, harvest_folders, load_harvest

    folders = harvest_folders(root) if (root / PROVIDERS_FILE).is_file() else [root]
    parts = [load_harvest(f) for f in folders]
    if not parts:
        raise DataError("a multi-provider harvest folder with no provider harvested yet", str(root))
    table = pd.concat(parts, ignore_index=True)
    return table.loc[table["error"].fillna("") == "", "scope"].astype(str)


def read_corpus(path: str | os.PathLike) -> tuple[list[str], dict]:
    """The SCOPE strings of any corpus, for ``pretrain --corpus``: a CSV (``.csv`` / ``.csv.gz``) or Parquet file with
    a ``scope`` or ``cloud`` column (the authors' 6.3 M CSV, their 10 k sample), a folder of such shards (read in
    name order), or a harvest folder (:func:`cloudlib.harvest.harvest`, or :func:`~cloudlib.harvest.harvest_many`
    for several providers: the successful rows). Blank strings are
    dropped, duplicates removed (first kept), strings over :data:`BLOCK_TOKENS` counted and left out. Returns
    (strings, counts). A missing path, a folder with no shards, a file without a SCOPE column or one that does not
    parse is a :class:`DataError` naming it. :func:`iter_corpus` streams the same strings in chunks."""
    root, files, harvest = _locate_corpus(path)
    parts = [_harvest_strings(root)] if harvest else [_read_corpus_file(f) for f in files]
    rows = pd.concat(parts, ignore_index=True).str.strip()
    rows = rows[rows != ""]
    unique = list(dict.fromkeys(rows))
    fits = [s for s in unique if n_tokens(s) <= BLOCK_TOKENS]
    counts = {
        "files": len(files),
        "rows": int(len(rows)),
        "unique": len(unique),
        "too long": len(unique) - len(fits),
        "strings": len(fits),
    }
    if not fits:
        raise DataError(f"holds no usable SCOPE string ({counts})", str(path))
    return fits, counts


def iter_corpus(path: str | os.PathLike, chunk_strings: int = 50_000) -> Iterator[list[str]]:
    """Stream the SCOPE strings of any corpus :func:`read_corpus` reads, in file order, as lists of at most
    ``chunk_strings`` stripped, non-blank strings: CSV in ``chunk_strings``-row chunks (pandas), Parquet in record
    batches of its SCOPE column only (pyarrow; null cells are skipped), a folder's shards in name order, a harvest
    folder's successful rows (that table is loaded whole). No deduplication and no length filter
    (:func:`cloudlib.token_shards.build` does both). Memory holds one chunk. The path is checked at once (a missing
    path or an empty folder is a :class:`DataError`); a file without a SCOPE column or one that does not parse is
    a :class:`DataError` naming it when the stream reaches it."""
    if chunk_strings < 1:
        raise ValueError(f"chunk_strings must be positive, not {chunk_strings}")
    root, files, harvest = _locate_corpus(path)
    if harvest:
        strings = _harvest_strings(root).tolist()
        parts: Iterable = (strings[i : i + chunk_strings] for i in range(0, len(strings), chunk_strings))
        return _clean_chunks(parts)
    return _clean_chunks(part for f in files for part in _iter_corpus_file(f, chunk_strings))


def _clean_chunks(parts: Iterable[list]) -> Iterator[list[str]]:
    for part in parts:
        chunk = [t for t in (s.strip() for s in part if s is not None) if t]
        if chunk:
            yield chunk


def _iter_corpus_file(path: Path, chunk_strings: int) -> Iterator[list[str]]:
    """The raw SCOPE cells of one corpus file, ``chunk_strings`` at a time (a :class:`DataError` names the file)."""
    try:
        if path.name.endswith(".parquet"):
            import pyarrow.parquet as pq

            with pq.ParquetFile(path) as pf:
                names = pf.schema_arrow.names
                column = next((c for c in CORPUS_COLUMNS if c in names), None)
                if column is None:
                    raise _no_column(path, names)
                for batch in pf.iter_batches(batch_size=chunk_strings, columns=[column]):
                    yield [s if s is None or isinstance(s, str) else str(s) for s in batch.column(0).to_pylist()]
        else:
            names = pd.read_csv(path, dtype=str, keep_default_na=False, nrows=0).columns
            column = next((c for c in CORPUS_COLUMNS if c in names), None)
            if column is None:
                raise _no_column(path, names)
            kw = dict(dtype=str, keep_default_na=False, usecols=[column], chunksize=chunk_strings)
            with pd.read_csv(path, **kw) as reader:
                for frame in reader:
                    yield frame[column].tolist()
    except _READ_ERRORS as exc:
        raise _unreadable(path, exc) from exc
