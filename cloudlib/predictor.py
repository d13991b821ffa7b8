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

from .config import FinetuneConfig, check_fields
from .errors import BlockSizeError, ModelError
from .finetune import FitResult, predict_strings
from .io import atomic_dir
from .model import CloudPredictor, quiet_loading

DEFAULT_MODEL = "models/cloud-dielectric-laptop"
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
    return folder


def load_predictor(folder: str | os.PathLike, device: str | torch.device | None = None) -> FitResult:
    """A :class:`~cloudlib.finetune.FitResult` from a folder written by :func:`save_predictor` (history included
    when saved). Raises :class:`~cloudlib.errors.ModelError` for a missing folder or one of another kind."""
    from safetensors.torch import load_file
    from transformers import BertModel

    from .paths import resolve
    from .tokenizer import load_tokenizer

    folder = resolve(folder)
    if not folder.is_dir():
        raise ModelError("no such model folder", str(folder))
    meta_path = folder / "predictor.json"
    if not meta_path.is_file():
        raise ModelError("not a predictor folder (no predictor.json; write one with save_predictor)", str(folder))
    meta = json.loads(meta_path.read_text())
    with quiet_loading():
        encoder = BertModel.from_pretrained(folder, add_pooling_layer=False, attn_implementation="sdpa")
    tok = load_tokenizer(folder)
    model = CloudPredictor(encoder, meta.get("dropout", 0.1))
    model.head.load_state_dict(load_file(str(folder / "head.safetensors")))
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
) -> pd.DataFrame:
    """Predictions for crystals: one row per input, columns ``id``, ``scope``, ``prediction``, ``error``.

    ``inputs``: a Structure, a list or mapping of Structures / structure dicts / file paths, a CIF path, a folder
    of CIFs or a JSON of structures (:func:`cloudlib.inputs.as_items`). A row that fails (no SCOPE string, too
    long for the block size, ...) keeps its ``"ErrorClass: message"`` in ``error`` and a NaN prediction; no row
    is dropped. ``model`` is a predictor folder or a :class:`~cloudlib.finetune.FitResult`.
    """
    from .inputs import as_items
    from .scope import scope_table

    res = as_result(model)
    table = scope_table(as_items(inputs), jobs=jobs, progress=progress)
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
        try:
            res.tokenizer.encode_batch([scope])
        except BlockSizeError as exc:
            df.at[i, "error"] = f"{type(exc).__name__}: {exc}"
            continue
        ok.append(i)
    if ok:
        df.loc[ok, "prediction"] = predict_strings(res, df.loc[ok, "scope"].tolist(), batch_size)
    df["error"] = df["error"].where(df["error"].notna(), None)
    return df
