"""The offline pre-training corpus: every real crystal reachable without the internet, as deduplicated SCOPE.

* :func:`corpus_sources` -- name -> loader of each source (the authors' 10 k sample of their OPTIMADE corpus,
  matbench_dielectric, three matminer 0.3.9 datasets, pymatgen's AFLOW prototypes, CDVAE's perov_5, two matcalc
  benchmark sets);
* :func:`build_corpus` / :func:`load_pretraining_corpus` -- SCOPE for every crystal, failures kept, deduplicated
  with provenance and a per-source count table, cached under ``data/derived``.
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pandas as pd

from . import paths
from .errors import DataError
from .matbench_data import load_matbench
from .registry import fetch


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
    }


STRING_SOURCES = {"cloud_10k"}
#: Part of the corpus cache's file name: bump it whenever a loader or SCOPE itself changes output.
CORPUS_VERSION = 2


def build_corpus(
    sources: list[str] | None = None,
    jobs: int = 1,
    limit: int | None = None,
    progress: bool = True,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Compute the pre-training corpus: (rows, per-source table). Not cached; see load_pretraining_corpus.

    ``rows`` has one row per input crystal (index ``id``; columns ``source``, ``scope``, ``error``),
    failures kept. The table has, per source: structures, ok (valid SCOPE), unique strings, and
    ``new unique`` (strings not already contributed by an earlier source in the order given).
    ``limit`` takes the first N items of each source (smoke runs).
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
                {"source": name, "structures": 0, "ok": 0, "unique": 0, "new unique": 0, "note": f"unavailable: {exc}"}
            )
            continue
        if limit is not None:
            items = dict(list(items.items())[:limit])
        if name in STRING_SOURCES:
            df = pd.DataFrame({"scope": list(items.values()), "error": None}, index=pd.Index(list(items), name="id"))
        else:
            df = scope_table(items, jobs=jobs, progress=progress)
        df.insert(0, "source", name)
        frames.append(df)
        ok = df["scope"].dropna()
        uniq = set(ok)
        table.append(
            {
                "source": name,
                "structures": len(df),
                "ok": len(ok),
                "unique": len(uniq),
                "new unique": len(uniq - seen),
                "note": "",
            }
        )
        seen |= uniq
    rows = pd.concat(frames) if frames else pd.DataFrame(columns=["source", "scope", "error"])
    tab = pd.DataFrame(table).set_index("source")
    tab.loc["total (deduplicated)"] = [int(tab["structures"].sum()), int(tab["ok"].sum()), len(seen), len(seen), ""]
    return rows, tab


def load_pretraining_corpus(
    sources: list[str] | None = None,
    jobs: int = 1,
    limit: int | None = None,
    refresh: bool = False,
    progress: bool = True,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Deduplicated SCOPE corpus from every offline source, with provenance; cached on disk.

    Returns ``(corpus, table)``: ``corpus`` has one row per unique string (index ``scope``; columns
    ``source`` = the first source that produced it, ``sources`` = all of them joined by ``;``,
    ``count`` = how many crystals share it, ``example_id``); ``table`` is the per-source count table of
    :func:`build_corpus`. The full per-crystal table (with errors) is cached beside it.
    """
    from .io import write_csv

    key = "all" if sources is None else "-".join(sources)
    size = "full" if limit is None else f"limit{limit}"
    stem = paths.derived_dir() / f"corpus-v{CORPUS_VERSION}_{key}_{size}"
    rows_path, table_path = Path(f"{stem}_rows.csv.gz"), Path(f"{stem}_table.csv")
    if refresh or not (rows_path.exists() and table_path.exists()):
        rows, table = build_corpus(sources, jobs=jobs, limit=limit, progress=progress)
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
    return corpus, table
