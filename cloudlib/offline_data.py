"""Crystal data sets reachable offline beyond matbench_dielectric: structures (and targets where they exist).

Every file comes through :func:`cloudlib.registry.fetch` (sha256-checked; canonical URL, else the mirror).

* :func:`jarvis_structures` -- a JARVIS-Leaderboard AtomGen file (Castelli perovskites, carbon_24, JARVIS
  superconductors) as ``{split: {id: PoscarText}}``; :func:`jarvis_targets` -- a SinglePropertyPrediction file's
  targets as ``{split: {id: float}}``;
* :func:`load_jdft2d_partial` -- the 508 matbench_jdft2d entries of the ecif file (all but official fold 0's
  128 test ids), indexed by MatBench id, with ``structure`` (CifText) and ``exfoliation_en`` (meV/atom);
* :func:`dsc3_mp_cifs` -- the 4,704 Materials Project CIFs of 3DSC as ``{mp-id: CifText}``;
* :func:`matminer_structures` -- a matminer 0.3.9 dataset's structures (CIF or Python-repr dict columns);
* :func:`core_mof_cifs` -- the CoRE MOF 2019 (all solvent removed) CIFs from the pinned ``core-mof`` wheel;
* :data:`OFFLINE_TASKS`, :func:`load_offline_task` -- the property tasks the
  multi-task table runs offline, each labelled official / partial / seeded (never passed off as MatBench).
"""

from __future__ import annotations

import io
import json
import tarfile
import zipfile
from dataclasses import dataclass

import pandas as pd

from .errors import DataError
from .matbench_data import load_matbench
from .registry import DSC3_CIF_URL, fetch, fetch_manifest
from .scope import CifText, DictText, PoscarText


def _json_member(name: str) -> dict:
    """The one JSON member of a registry zip file."""
    path = fetch(name)
    try:
        with zipfile.ZipFile(path) as z:
            members = [m for m in z.namelist() if m.endswith(".json")]
            if len(members) != 1:
                raise DataError(f"expected one JSON member, found {members}", name)
            return json.loads(z.read(members[0]))
    except (zipfile.BadZipFile, ValueError) as exc:
        raise DataError(f"not a zip of one JSON file ({type(exc).__name__}: {exc})", name) from exc


def _poscar(text: str) -> PoscarText:
    # JARVIS-Leaderboard stores POSCARs with literal "\n" escapes
    return PoscarText(text.replace("\\n", "\n"))


def jarvis_structures(name: str) -> dict[str, dict[str, PoscarText]]:
    """``{split: {id: PoscarText}}`` of a JARVIS-Leaderboard AtomGen zip (registry name)."""
    data = _json_member(name)
    return {split: {str(k): _poscar(v) for k, v in rows.items()} for split, rows in data.items()}


def jarvis_targets(name: str) -> dict[str, dict[str, float]]:
    """``{split: {id: target}}`` of a JARVIS-Leaderboard SinglePropertyPrediction zip (registry name)."""
    data = _json_member(name)
    return {split: {str(k): float(v) for k, v in rows.items()} for split, rows in data.items()}


def read_ecif(text: str, source: str = "ecif") -> pd.DataFrame:
    """Parse an ecif file (records of ``<FIELD> (i)`` blocks, ``$$$$`` between records) into a DataFrame
    with one column per field, in file order. Raises :class:`DataError` naming the record that is malformed."""
    records = []
    for i, block in enumerate(text.split("$$$$")):
        if not block.strip():
            continue
        rec, field, lines = {}, None, []
        for line in block.strip("\n").split("\n"):
            if line.startswith("<") and ">" in line and line.rstrip().endswith(")"):
                if field is not None:
                    rec[field] = "\n".join(lines).strip("\n")
                field, lines = line[1 : line.index(">")], []
            elif field is None:
                if line.strip():
                    raise DataError(f"record {i}: text before the first <FIELD> line", source)
            else:
                lines.append(line)
        if field is not None:
            rec[field] = "\n".join(lines).strip("\n")
        records.append(rec)
    return pd.DataFrame(records)


def load_jdft2d_partial() -> pd.DataFrame:
    """The ecif copy of matbench_jdft2d: 508 of 636 entries (official fold 0's 128 test ids are absent),
    indexed by MatBench id; columns ``structure`` (CifText) and ``exfoliation_en`` (meV/atom)."""
    name = "ecif/mb-jdft2d.ecif"
    df = read_ecif(fetch(name).read_text(), name)
    missing = {"ID", "CIF", "exfoliation_en"} - set(df.columns)
    if missing:
        raise DataError(f"ecif file lacks fields {sorted(missing)}", name)
    out = pd.DataFrame(
        {
            "structure": [CifText(c + "\n") for c in df["CIF"]],
            "exfoliation_en": pd.to_numeric(df["exfoliation_en"], errors="raise").to_numpy(),
        },
        index=pd.Index(df["ID"].str.strip(), name="id"),
    )
    if out.index.duplicated().any():
        raise DataError(f"duplicate ids {list(out.index[out.index.duplicated()][:5])}", name)
    return out


def dsc3_mp_cifs() -> dict[str, CifText]:
    """The 4,704 Materials Project CIFs that 3DSC ships (file name = mp-id), each sha256-checked."""
    files = fetch_manifest("3dsc/mp_cifs.SHA256SUMS", "3dsc/mp_cifs", DSC3_CIF_URL)
    return {name.removesuffix(".cif"): CifText(path.read_text()) for name, path in sorted(files.items())}


def matminer_structures(file: str) -> dict[str, str]:
    """``{material_id: CifText | DictText}`` of a matminer 0.3.9 dataset (``structure`` column: CIF text or a
    Python-repr pymatgen dict, whichever the file holds)."""
    name = f"pypi/matminer-0.3.9/{file}.csv"
    df = pd.read_csv(fetch(name), skiprows=1, low_memory=False)
    if "structure" not in df.columns or "material_id" not in df.columns:
        raise DataError("no structure / material_id column", name)
    out = {}
    for m, s in zip(df["material_id"], df["structure"]):
        text = str(s)
        out[str(m)] = DictText(text) if text.lstrip().startswith("{") else CifText(text)
    return out


def core_mof_cifs(limit: int | None = None) -> dict[str, CifText]:
    """CoRE MOF 2019 all-solvent-removed CIFs (``{refcode: CifText}``) from the pinned ``core-mof`` wheel's
    tar.xz archive (member names ``<refcode>.cif``). ``limit`` reads only the first N members."""
    name = "pypi/core_mof-2019.1/2019-ASR.tar.xz"
    out: dict[str, CifText] = {}
    with tarfile.open(fileobj=io.BytesIO(fetch(name).read_bytes()), mode="r:xz") as t:
        for member in t:
            if not (member.isfile() and member.name.endswith(".cif")):
                continue
            f = t.extractfile(member)
            out[member.name.rsplit("/", 1)[-1].removesuffix(".cif")] = CifText(f.read().decode("utf-8", "replace"))
            if limit is not None and len(out) >= limit:
                break
    return out


# --------------------------------------------------------------------------- property tasks reachable offline


@dataclass(frozen=True)
class OfflineTask:
    """A property-prediction task from offline data. ``folds``: ``official`` (MatBench v0.1 folds),
    ``official, partial`` (official test folds, training rows that are present) or ``seeded 5-fold``."""

    name: str
    target: str
    unit: str
    folds: str
    note: str
    fold_numbers: tuple[int, ...] = (0, 1, 2, 3, 4)


OFFLINE_TASKS: dict[str, OfflineTask] = {
    t.name: t
    for t in [
        OfflineTask("matbench_dielectric", "n", "unitless", "official", "MatBench v0.1, all 4,764 rows"),
        OfflineTask(
            "matbench_jdft2d",
            "exfoliation_en",
            "meV/atom",
            "official, partial",
            "partial: the ecif copy lacks fold 0's 128 test ids, so folds 1-4 only, each trained on 381 of its "
            "509 training rows",
            (1, 2, 3, 4),
        ),
        OfflineTask(
            "castelli_formation_energy",
            "heat_ref",
            "eV/cell",
            "seeded 5-fold",
            "not MatBench: the 7,572 Castelli perovskites with heat_ref (CDVAE perov_5 val + test)",
        ),
        OfflineTask(
            "log10_kvrh",
            "log10_kvrh",
            "log10(GPa)",
            "seeded 5-fold",
            "not MatBench: matcalc mp-binary (3,953) + matminer elastic_tensor (1,181), one row per mp-id",
        ),
        OfflineTask(
            "log10_gvrh",
            "log10_gvrh",
            "log10(GPa)",
            "seeded 5-fold",
            "not MatBench: matcalc mp-binary (3,953) + matminer elastic_tensor (1,181), one row per mp-id",
        ),
        OfflineTask(
            "flla_formation_energy",
            "formation_energy_per_atom",
            "eV/atom",
            "seeded 5-fold",
            "not MatBench: matminer flla_2015 (3,938 Materials Project crystals)",
        ),
        OfflineTask(
            "jarvis_supercon_tc",
            "tc",
            "K",
            "seeded 5-fold",
            "not MatBench: the 616 JARVIS superconductors with Tc (UnconvBench's supercon source)",
        ),
    ]
}


def _moduli() -> pd.DataFrame:
    import gzip
    import math

    rows = json.loads(gzip.decompress(fetch("matcalc/mp-binary-pbe-elasticity-2025.1.json.gz").read_bytes()))
    out = {
        r["mp_id"]: (DictText(json.dumps(r["structure"])), r["bulk_modulus_vrh"], r["shear_modulus_vrh"]) for r in rows
    }
    df = pd.read_csv(fetch("pypi/matminer-0.3.9/elastic_tensor.csv"), skiprows=1, low_memory=False)
    for m, s, k, g in zip(df["material_id"], df["structure"], df["K_VRH"], df["G_VRH"]):
        out.setdefault(str(m), (CifText(s), k, g))  # matcalc's newer values win for mp-ids in both
    table = pd.DataFrame.from_dict(out, orient="index", columns=["structure", "k", "g"])
    table.index.name = "id"
    ok = (table["k"] > 0) & (table["g"] > 0)
    table = table[ok].copy()
    table["log10_kvrh"] = [math.log10(v) for v in table["k"]]
    table["log10_gvrh"] = [math.log10(v) for v in table["g"]]
    return table


def load_offline_task(name: str) -> pd.DataFrame:
    """A task of :data:`OFFLINE_TASKS` as a DataFrame indexed by id, columns ``structure`` (an item
    :func:`cloudlib.scope.as_structure` reads) and ``target``."""
    if name not in OFFLINE_TASKS:
        raise KeyError(f"unknown offline task {name!r}; known: {sorted(OFFLINE_TASKS)}")
    if name == "matbench_dielectric":
        df = load_matbench(name).rename(columns={"n": "target"})
    elif name == "matbench_jdft2d":
        df = load_jdft2d_partial().rename(columns={"exfoliation_en": "target"})
    elif name == "castelli_formation_energy":
        parts = [pd.read_csv(fetch(f"cdvae/perov_5_{s}.csv")) for s in ("val", "test")]
        raw = pd.concat(parts)
        df = pd.DataFrame(
            {"structure": [CifText(c) for c in raw["cif"]], "target": raw["heat_ref"].to_numpy()},
            index=pd.Index([f"castelli:{m}" for m in raw["material_id"]], name="id"),
        )
    elif name in ("log10_kvrh", "log10_gvrh"):
        m = _moduli()
        df = pd.DataFrame({"structure": m["structure"], "target": m[name]})
    elif name == "flla_formation_energy":
        raw = pd.read_csv(fetch("pypi/matminer-0.3.9/flla_2015.csv"), skiprows=1, low_memory=False)
        df = pd.DataFrame(
            {
                "structure": [DictText(s) for s in raw["structure"]],
                "target": raw["formation_energy_per_atom"].to_numpy(),
            },
            index=pd.Index(raw["material_id"].astype(str), name="id"),
        )
    else:  # jarvis_supercon_tc
        structures = jarvis_structures("jarvis_leaderboard/atomgen_dft_3d_Tc_supercon.json.zip")
        every = {k: v for rows in structures.values() for k, v in rows.items()}
        tc = {
            k: v
            for rows in jarvis_targets("jarvis_leaderboard/spp_dft_3d_Tc_supercon.json.zip").values()
            for k, v in rows.items()
        }
        missing = set(tc) - set(every)
        if missing:
            raise DataError(f"{len(missing)} Tc ids have no structure, e.g. {sorted(missing)[:3]}", name)
        ids = sorted(tc)
        df = pd.DataFrame(
            {"structure": [every[i] for i in ids], "target": [tc[i] for i in ids]}, index=pd.Index(ids, name="id")
        )
    df = df[["structure", "target"]]
    if df.index.duplicated().any():
        raise DataError(f"duplicate ids, e.g. {list(df.index[df.index.duplicated()][:3])}", name)
    bad = ~pd.to_numeric(df["target"], errors="coerce").notna()
    if bad.any():
        raise DataError(f"{int(bad.sum())} rows without a numeric target, e.g. {list(df.index[bad][:3])}", name)
    return df
