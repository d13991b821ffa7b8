"""Fitted property predictors on disk, and predictions for crystals.

* :func:`save_predictor` / :func:`load_predictor`: one folder (encoder + tokenizer via ``save_pretrained``,
  ``head.safetensors``, ``predictor.json``, ``history.csv``), written atomically;
* :func:`predict`: structures, CIF files, a folder or a JSON of structures -> one row per input with ``id``,
  ``scope``, ``prediction`` and ``error`` (failed rows keep their error and a NaN prediction; no row is dropped).

``cloudlib.predict`` is :func:`predict`. Command line: ``python -m cloudlib predict INPUT [--model DIR] -o OUT.csv``.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from .config import MAX_ATOMS, FinetuneConfig, check_fields
from .errors import BlockSizeError, ModelError
from .finetune import FitResult, predict_strings, scope_string_errors
from .io import atomic_dir, verify_manifest, write_manifest
from .model import CloudPredictor, quiet_loading

DEFAULT_MODEL = "models/cloud-dielectric-laptop"
#: the files without which a predictor folder cannot load
REQUIRED_FILES = ("predictor.json", "config.json", "model.safetensors", "head.safetensors", "tokenizer.json")
PREDICTOR_FORMAT = 1


def save_predictor(result: FitResult, folder: str | os.PathLike) -> Path:
    """Write a predictor folder (replaced atomically): encoder ``config.json`` + ``model.safetensors`` and
    tokenizer (``save_pretrained``), ``head.safetensors``, ``predictor.json`` (task, target, mean, std, config,
    best epoch) and ``history.csv``."""
    from safetensors.torch import save_file

    from .paths import display, resolve

    folder = Path(folder)
    with atomic_dir(folder) as tmp:
        with quiet_loading():
            result.model.encoder.save_pretrained(tmp, safe_serialization=True)
        result.tokenizer.save_pretrained(tmp)
        head = {k: v.detach().cpu().contiguous() for k, v in result.model.head.state_dict().items()}
        save_file(head, str(tmp / "head.safetensors"))
        config = result.config.to_dict()
        if resolve(config["encoder"]).exists():  # record a folder relative to the repository, not this machine
            config["encoder"] = display(resolve(config["encoder"]))
        meta = {
            "format": PREDICTOR_FORMAT,
            "task": result.task,
            "target": result.target,
            "mean": result.mean,
            "std": result.std,
            "best_epoch": result.best_epoch,
            "dropout": result.model.head[0].p,
            "config": config,
        }
        (tmp / "predictor.json").write_text(json.dumps(meta, indent=2) + "\n")
        if result.history is not None and len(result.history):
            result.history.to_csv(tmp / "history.csv", index=False)
        write_manifest(tmp)
    return folder


def load_predictor(folder: str | os.PathLike, device: str | torch.device | None = None) -> FitResult:
    """A :class:`~cloudlib.finetune.FitResult` from a folder written by :func:`save_predictor` (history included
    when saved). Raises :class:`~cloudlib.errors.ModelError` for a missing folder or one of another kind."""
    from safetensors.torch import load_file
    from transformers import BertModel

    from .paths import resolve
    from .tokenizer import load_tokenizer

    folder = resolve(folder)
    if not folder.exists():
        raise ModelError("no such model folder", str(folder))
    if folder.is_dir() and not (folder / "predictor.json").is_file():
        raise ModelError("not a predictor folder (no predictor.json; write one with save_predictor)", str(folder))
    verify_manifest(folder, REQUIRED_FILES, kind="predictor")
    try:
        meta = json.loads((folder / "predictor.json").read_text())
        float(meta["mean"]), float(meta["std"]), meta["task"]
    except (ValueError, KeyError, TypeError, UnicodeDecodeError) as exc:
        raise ModelError(
            f"predictor.json is not a valid predictor description ({type(exc).__name__}: {exc})", str(folder)
        ) from exc
    try:
        with quiet_loading():
            encoder = BertModel.from_pretrained(folder, add_pooling_layer=False, attn_implementation="sdpa")
        tok = load_tokenizer(folder)
        model = CloudPredictor(encoder, meta.get("dropout", 0.1))
        model.head.load_state_dict(load_file(str(folder / "head.safetensors")))
    except Exception as exc:  # a truncated safetensors, garbage config.json / tokenizer.json ...
        raise ModelError(
            f"cannot load the predictor ({type(exc).__name__}: {' '.join(str(exc).split())[:300]})", str(folder)
        ) from exc
    model.to(device or "cpu").eval()
    values = meta.get("config", {})
    check_fields(FinetuneConfig, values)
    hist = folder / "history.csv"
    return FitResult(
        model=model,
        tokenizer=tok,
        task=meta["task"],
        mean=float(meta["mean"]),
        std=float(meta["std"]),
        config=FinetuneConfig(**values),
        history=pd.read_csv(hist) if hist.exists() else pd.DataFrame(),
        best_epoch=meta.get("best_epoch"),
        target=meta.get("target"),
    )


def as_result(obj) -> FitResult:
    """A FitResult as given, or loaded from a predictor folder."""
    if isinstance(obj, FitResult):
        return obj
    if isinstance(obj, (str, os.PathLike)):
        return load_predictor(obj)
    raise TypeError(f"expected a FitResult or a predictor folder, got {type(obj).__name__}")


def _missing(err) -> bool:
    return err is None or (isinstance(err, float) and math.isnan(err))


def predict(
    inputs,
    model: str | os.PathLike | FitResult = DEFAULT_MODEL,
    jobs: int = 1,
    progress: bool = False,
    batch_size: int = 256,
    temperatures=None,
    n_atoms: int | None = None,
    layout: str = "wide",
    timeout: float | None = None,
    max_atoms: int | None = MAX_ATOMS,
) -> pd.DataFrame:
    """Predictions for crystals: one row per input, columns ``id``, ``scope``, ``prediction``, ``error``.

    ``inputs``: a Structure, a list or mapping of Structures / structure dicts / file paths, a CIF path, a folder
    of CIFs or a JSON of structures (:func:`cloudlib.inputs.as_items`). A row that fails (no SCOPE string, too
    long for the block size, ...) keeps its ``"ErrorClass: message"`` in ``error`` and a NaN prediction; no row
    is dropped. ``model`` is a predictor folder or a :class:`~cloudlib.finetune.FitResult`. ``timeout`` (seconds per
    structure) and ``max_atoms`` are the limits of :func:`~cloudlib.scope.scope_table`.
    """
    from .cloud_debye import Ensemble, Fitted, is_debye_folder
    from .inputs import as_items
    from .scope import scope_table

    if isinstance(model, (Fitted, Ensemble)) or (isinstance(model, (str, os.PathLike)) and is_debye_folder(model)):
        return predict_debye(
            inputs,
            model,
            (300.0,) if temperatures is None else temperatures,
            n_atoms,
            jobs,
            progress,
            batch_size,
            layout,
            timeout=timeout,
            max_atoms=max_atoms,
        )
    if temperatures is not None or n_atoms is not None:
        from .errors import ConfigError

        raise ConfigError(
            "is a property predictor with no temperature dependence; temperatures and n_atoms apply to CLOUD-DEBYE "
            "models (e.g. models/cloud-debye-laptop)",
            str(model) if not isinstance(model, FitResult) else "model",
        )
    res = as_result(model)
    table = scope_table(as_items(inputs), jobs=jobs, progress=progress, timeout=timeout, max_atoms=max_atoms)
    df = pd.DataFrame(
        {
            "id": list(table.index),
            "scope": table["scope"].to_numpy(dtype=object),
            "prediction": np.nan,
            "error": table["error"].to_numpy(dtype=object),
        }
    )
    ok = []
    for i, (scope, err) in enumerate(zip(df["scope"], df["error"])):
        if not _missing(err):
            continue
        bad = scope_string_errors(res.tokenizer, [scope])[0]
        if bad is not None:  # e.g. an element the model's vocabulary lacks: an error, never a silent number
            df.at[i, "error"] = bad
            continue
        try:
            res.tokenizer.encode_batch([scope])
        except BlockSizeError as exc:
            df.at[i, "error"] = f"{type(exc).__name__}: {exc}"
            continue
        ok.append(i)
    if ok:
        df.loc[ok, "prediction"] = predict_strings(res, df.loc[ok, "scope"].tolist(), batch_size, check=False)
    df["error"] = df["error"].where(df["error"].notna(), None)
    return df


def _primitive_atoms(item, name) -> int:
    """Atoms in the primitive cell (spglib, symprec 0.01, as SCOPE uses) of one input item."""
    import spglib

    from .errors import SymmetryError
    from .scope import as_structure, structure_cell

    _, lattice, frac, numbers, _ = structure_cell(as_structure(item, name), name)
    try:
        prim = spglib.standardize_cell((lattice, frac, numbers), to_primitive=True, symprec=0.01)
    except Exception as exc:  # spglib >= 2.5 raises instead of returning None for some cells
        raise SymmetryError(f"spglib failed ({type(exc).__name__}: {exc})", name) from exc
    if prim is None:
        raise SymmetryError("spglib found no primitive cell", name)
    return len(prim[2])


def predict_debye(
    inputs,
    model="models/cloud-debye-laptop",
    temperatures=(300.0,),
    n_atoms: int | None = None,
    jobs: int = 1,
    progress: bool = False,
    batch_size: int = 256,
    layout: str = "wide",
    timeout: float | None = None,
    max_atoms: int | None = MAX_ATOMS,
) -> pd.DataFrame:
    """CLOUD-DEBYE thermodynamics for crystals: per input its ``scope``, ``n_atoms`` (atoms in the primitive cell,
    the cell the model's Cv refers to), Θ (``theta_K``) and at each temperature Cv, S [J/(K·mol of cells)], U and
    F [J/mol of cells, zero-point term included], and ``error``. An ensemble model (:func:`~cloudlib.cloud_debye.
    save_ensemble`) adds its band of nominal 90 %: ``theta_lo_K``, ``theta_hi_K``, ``cv_lo_*``, ``cv_hi_*``.

    ``layout="wide"``: one row per input, columns ``cv_300K``, ``u_300K``, ``s_300K``, ``f_300K`` ...;
    ``"long"``: one row per input and temperature (columns ``T_K``, ``cv``, ``u``, ``s``, ``f``; a failed input
    keeps one row with its error). ``temperatures``: numbers or a spec for
    :func:`~cloudlib.cloud_debye.parse_temperatures` (``"10:1000:10"``). ``n_atoms`` overrides the cell size
    (a multiple of the primitive cell's atom count, else that row fails). ``timeout`` (seconds per structure) and
    ``max_atoms`` are the limits of :func:`~cloudlib.scope.scope_table`. No row is dropped."""
    from .cloud_debye import Ensemble, Fitted, load_debye, parse_temperatures
    from .errors import ConfigError, StructureError
    from .inputs import as_items
    from .scope import scope_table

    if layout not in ("wide", "long"):
        raise ConfigError(f"layout must be 'wide' or 'long', got {layout!r}", "layout")
    T = parse_temperatures(temperatures)
    if n_atoms is not None and not (float(n_atoms).is_integer() and n_atoms >= 1):
        raise ConfigError(f"must be a whole number of atoms >= 1, got {n_atoms!r}", "n_atoms")
    fitted = model if isinstance(model, (Fitted, Ensemble)) else load_debye(model)
    fitted._need_debye()
    items = as_items(inputs)
    table = scope_table(items, jobs=jobs, progress=progress, timeout=timeout, max_atoms=max_atoms)
    ids = list(table.index)
    scopes = table["scope"].to_numpy(dtype=object)
    errors = [None if _missing(e) else e for e in table["error"]]
    counts = np.full(len(ids), np.nan)
    for i, key in enumerate(ids):
        if errors[i] is not None:
            continue
        try:
            prim = _primitive_atoms(items[key], key)
        except StructureError as exc:
            errors[i] = f"{type(exc).__name__}: {exc}"
            continue
        if n_atoms is not None and int(n_atoms) % prim:
            errors[i] = (
                f"ConfigError: n_atoms={int(n_atoms)} disagrees with the cell: the primitive cell has {prim} atoms "
                "(n_atoms must be a multiple of it)"
            )
            continue
        counts[i] = int(n_atoms) if n_atoms is not None else prim
        bad = scope_string_errors(fitted.tokenizer, [scopes[i]])[0]
        if bad is None:
            try:
                fitted.tokenizer.encode_batch([scopes[i]])
            except BlockSizeError as exc:
                bad = f"{type(exc).__name__}: {exc}"
        if bad is not None:
            errors[i] = bad
    ok = [i for i, e in enumerate(errors) if e is None]
    band = isinstance(fitted, Ensemble) and len(fitted.members) > 1
    keys = ("cv", "u", "s", "f", "cv_lo", "cv_hi") if band else ("cv", "u", "s", "f")
    thetas = {k: np.full(len(ids), np.nan) for k in (("theta", "theta_lo", "theta_hi") if band else ("theta",))}
    props = {k: np.full((len(ids), len(T)), np.nan) for k in keys}
    if ok:
        out = fitted.thermodynamics([scopes[i] for i in ok], T, counts[ok])
        for k in thetas:
            thetas[k][ok] = out[k]
        for k in props:
            props[k][ok] = out[k]
    base = pd.DataFrame({"id": ids, "scope": scopes, "n_atoms": counts, **{f"{k}_K": v for k, v in thetas.items()}})
    errors_col = pd.Series(errors, dtype=object)
    if layout == "wide":
        labels = [f"{t:g}K" for t in T]
        cols = {f"{k}_{lab}": props[k][:, j] for j, lab in enumerate(labels) for k in keys}
        df = pd.concat([base, pd.DataFrame(cols)], axis=1)
        df["error"] = errors_col
        return df
    frames = []
    for i in range(len(ids)):
        if errors[i] is not None:
            frames.append(base.iloc[[i]].assign(T_K=np.nan, **{k: np.nan for k in keys}, error=errors[i]))
        else:
            rows = base.iloc[[i] * len(T)].reset_index(drop=True)
            frames.append(rows.assign(T_K=T, **{k: props[k][i] for k in props}, error=None))
    return pd.concat(frames, ignore_index=True) if frames else base.assign(T_K=[], **{k: [] for k in keys}, error=[])


def predict_scope(strings, model: str | os.PathLike | FitResult = DEFAULT_MODEL, batch_size: int = 256) -> pd.DataFrame:
    """Predictions for SCOPE strings, one row per string (columns ``scope``, ``prediction``, ``error``): a string
    that is not SCOPE, has words outside the model's vocabulary or is too long gets its error and a NaN
    prediction, never a silent number (:func:`~cloudlib.finetune.predict_strings` raises instead)."""
    res = as_result(model)
    strings = list(strings)
    errors = scope_string_errors(res.tokenizer, strings)
    for i, s in enumerate(strings):
        if errors[i] is None:
            try:
                res.tokenizer.encode_batch([s])
            except BlockSizeError as exc:
                errors[i] = f"{type(exc).__name__}: {exc}"
    df = pd.DataFrame({"scope": strings, "prediction": np.nan, "error": errors}, dtype=object)
    df["prediction"] = df["prediction"].astype(float)
    ok = [i for i, e in enumerate(errors) if e is None]
    if ok:
        df.loc[ok, "prediction"] = predict_strings(res, [strings[i] for i in ok], batch_size, check=False)
    return df


def read_reference_curves(path: str | os.PathLike) -> dict:
    """Reference heat-capacity curves from a CSV with columns ``material``, ``T`` (K) and ``Cv`` (J/(K·mol of
    cells)), optionally ``label``: {material: {"T", "cv", "label"}} for the explorer. Raises
    :class:`~cloudlib.errors.InputError` naming the file for a missing column or a non-numeric value."""
    from .errors import InputError

    try:
        df = pd.read_csv(path)
    except (OSError, ValueError, UnicodeDecodeError) as exc:
        raise InputError(f"cannot read the reference CSV ({type(exc).__name__}: {exc})", str(path)) from exc
    cols = {c.lower(): c for c in df.columns}
    missing = [c for c in ("material", "t", "cv") if c not in cols]
    if missing:
        raise InputError(f"reference CSV needs columns material, T, Cv; lacks {missing}", str(path))
    T = pd.to_numeric(df[cols["t"]], errors="coerce")
    cv = pd.to_numeric(df[cols["cv"]], errors="coerce")
    bad = T.isna() | cv.isna()
    if bad.any():
        raise InputError(
            f"{int(bad.sum())} row(s) with a non-numeric T or Cv, first at line {int(bad.idxmax()) + 2}", str(path)
        )
    out = {}
    for name, g in df.assign(_T=T, _cv=cv).groupby(cols["material"], sort=False):
        label = str(g[cols["label"]].iloc[0]) if "label" in cols else "reference"
        out[str(name)] = {"T": g["_T"].tolist(), "cv": g["_cv"].tolist(), "label": label}
    return out


def explore(
    inputs,
    path: str | os.PathLike,
    model="models/cloud-debye-laptop",
    references: str | os.PathLike | dict | None = None,
    jobs: int = 1,
    progress: bool = False,
    title: str = "CLOUD-DEBYE explorer",
    timeout: float | None = None,
    max_atoms: int | None = MAX_ATOMS,
) -> tuple[os.PathLike, pd.DataFrame]:
    """The offline explorer page for the user's own crystals: :func:`predict_debye` on ``inputs`` (CIFs, a
    folder, a structures JSON ...), the predicted Θ (and the ensemble's band) of every crystal that worked,
    the inputs that failed listed with their errors, and optional ``references`` (a CSV for
    :func:`read_reference_curves`, or the dict itself) drawn over the curves of the materials they name.
    Returns (the page's path, the prediction table)."""
    from .cloud_debye import Ensemble, load_debye
    from .explorer import write_explorer

    fitted = model if not isinstance(model, (str, os.PathLike)) else load_debye(model)
    df = predict_debye(
        inputs, fitted, temperatures=(300.0,), jobs=jobs, progress=progress, timeout=timeout, max_atoms=max_atoms
    )
    good = df[df["error"].isna()]
    table = pd.DataFrame(
        {
            "name": good["id"].astype(str),
            "scope": good["scope"],
            "theta": good["theta_K"],
            "n_atoms": good["n_atoms"],
            "cv300_pred": good["cv_300K"],
        }
    )
    if "theta_lo_K" in good:
        table["theta_lo"], table["theta_hi"] = good["theta_lo_K"], good["theta_hi_K"]
    refs = read_reference_curves(references) if isinstance(references, (str, os.PathLike)) else references
    names = set(table["name"])
    refs = {k: v for k, v in (refs or {}).items() if k in names}
    failures = [(str(i), str(e)) for i, e in zip(df["id"], df["error"]) if e is not None and e == e]
    band = ""
    if isinstance(fitted, Ensemble):
        band = f"{fitted.level:.0%} band ({len(fitted.members)}-member ensemble)"
    if not len(table):
        from .errors import InputError

        raise InputError(f"no input could be predicted ({len(failures)} failed); nothing to explore", str(inputs))
    page = write_explorer(table, path, title=title, reference_curves=refs, failures=failures, band_label=band)
    return page, df
