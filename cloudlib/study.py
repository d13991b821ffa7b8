"""One study runner: every fit of every study as one typed spec, scored by one scorer, kept in one resumable store.

* :class:`FitSpec`     -- what to fit: task, model, fold, the training and test rows, the fine-tuning config, the
  seed, (for RF-Magpie) the features, (optionally) where to save a CLOUD fit as a predictor.
* :data:`FIT_FUNCTIONS` -- model name -> fit function ``(spec, progress) -> (test predictions, parameters, fit)``:
  CLOUD, CLOUD-scratch, RF-Magpie (:func:`cloudlib.baselines.rf_magpie`), Dummy
  (:func:`cloudlib.baselines.dummy_predict`).
* :class:`FitRecord`   -- what came out: the test ids and predictions, the scores of :func:`cloudlib.evaluation.
  fit_scores` (the project's one scorer; MatBench tasks are judged again by matbench's ``record``),
  n_train / n_test, seconds, the machine and the precision of the fit, or the error that stopped it.
* :func:`run_fits`     -- every study's loop (MatBench, leave-one-group-out, UnconvBench, the offline multi-task table,
  the scaling sweep's downstream fits): CLOUD fits side by side in ``jobs`` worker processes while the baselines run
  in this one; a fit that fails is a record with its error (the other fits go on); with a :class:`FitStore`, a fit
  finished before with the same settings is read back instead of made again.
* :class:`FitStore`    -- one JSON part per fit under a folder, written atomically, valid only for the settings it
  was made with (the committed multi-task parts are such a store).
"""

from __future__ import annotations

import dataclasses
import os
import platform
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from .config import FinetuneConfig
from .evaluation import fit_scores
from .store import PartStore, canonical

#: The models every study can fit, in the order tables show them.
MODELS = ("CLOUD", "CLOUD-scratch", "RF-Magpie", "Dummy")
#: The models fitted by fine-tuning (in worker processes when ``jobs > 1``).
NEURAL = ("CLOUD", "CLOUD-scratch")


def slug(model: str) -> str:
    """``"CLOUD-scratch"`` -> ``"cloud_scratch"`` (file names)."""
    return model.lower().replace("-", "_")


def fit_key(task: str, model: str, fold) -> str:
    """A fit's file name in a :class:`FitStore`: ``task__model__foldN`` (model as :func:`slug`)."""
    return f"{task}__{slug(model)}__fold{fold}"


def fit_label(task: str, model: str, fold) -> str:
    """A fit as messages name it: ``task/model/foldN``."""
    return f"{task}/{model}/fold{fold}"


@dataclass(frozen=True)
class FitSpec:
    """One fit. ``train`` / ``test``: rows indexed by id with columns ``scope`` (None where a structure has no SCOPE
    string) and ``target``. ``fold``: a fold number, or the held-out group's name. ``seed``: the fit's seed (the
    runners pass ``config.seed + fold``). ``kind``: regression or classification (decides the config's ``task``).
    ``features``: Magpie features of at least the train and test ids (RF-Magpie only). ``export``: save the CLOUD
    fit there as a predictor. CLOUD starts from ``config.encoder``, CLOUD-scratch from random weights."""

    task: str
    model: str
    fold: int | str
    train: pd.DataFrame = field(repr=False)
    test: pd.DataFrame = field(repr=False)
    config: FinetuneConfig = field(repr=False)
    seed: int = 0
    kind: str = "regression"
    features: pd.DataFrame | None = field(default=None, repr=False)
    target_name: str | None = None
    export: Path | None = None

    @property
    def key(self) -> str:
        return fit_key(self.task, self.model, self.fold)

    @property
    def label(self) -> str:
        return fit_label(self.task, self.model, self.fold)

    def light(self) -> FitSpec:
        """The spec as sent to a worker process: only the columns a neural fit reads, no features."""
        cols = [c for c in ("scope", "target") if c in self.train.columns]
        return dataclasses.replace(self, train=self.train[cols], test=self.test[cols], features=None)


@dataclass
class FitRecord:
    """The outcome of one :class:`FitSpec`. ``prediction`` is aligned with ``ids`` (the test ids); ``scores`` from
    :func:`cloudlib.evaluation.fit_scores`; ``params`` what the fit reports (best epoch, rows used ...);
    ``error`` is ``"ErrorClass: message"`` when the fit failed (then the prediction is NaN and the scores empty)."""

    task: str
    model: str
    fold: int | str
    ids: list
    prediction: np.ndarray
    scores: dict
    params: dict
    n_train: int
    n_test: int
    seconds: float
    machine: str | None = None
    precision: str | None = None
    error: str | None = None
    reused: bool = False

    @property
    def ok(self) -> bool:
        return self.error is None

    @property
    def label(self) -> str:
        return fit_label(self.task, self.model, self.fold)

    def predictions_frame(self, targets=None) -> pd.DataFrame:
        """task, model, fold, id[, target], prediction: one row per test id."""
        df = pd.DataFrame({"task": self.task, "model": self.model, "fold": self.fold, "id": self.ids})
        if targets is not None:
            df["target"] = np.asarray(targets)
        df["prediction"] = self.prediction
        return df


def fold_specs(task: str, fold: int | str, train, test, models, config: FinetuneConfig, **kw) -> list[FitSpec]:
    """One :class:`FitSpec` per model on the same fold, seeded ``config.seed + fold`` (a numbered fold) or
    ``config.seed`` (a named group); ``kw``: the other FitSpec fields (``kind``, ``features``, ``target_name``;
    ``export`` applies to the CLOUD fit only)."""
    seed = config.seed + fold if isinstance(fold, (int, np.integer)) else config.seed
    export = kw.pop("export", None)
    return [
        FitSpec(task, m, fold, train, test, config, seed=seed, export=export if m == "CLOUD" else None, **kw)
        for m in models
    ]


# --------------------------------------------------------------------------- fit functions


def _fit_cloud(spec: FitSpec, progress: bool):
    """CLOUD / CLOUD-scratch: fine-tune on the rows with a SCOPE string; a test structure without one gets the
    training mean (MatBench needs a prediction for every test id) and is counted in ``no_scope_test_rows``."""
    from .finetune import fit, predict_strings

    train, test = spec.train, spec.test
    ok = train["scope"].notna()
    cfg = spec.config.replace(task=spec.kind, pretrained=spec.model == "CLOUD", seed=spec.seed)
    res = fit(
        list(train.loc[ok, "scope"]),
        train.loc[ok, "target"].to_numpy(),
        cfg,
        progress=progress,
        target_name=spec.target_name,
    )
    has = test["scope"].notna().to_numpy()
    pred = np.full(len(test), float(train["target"].mean()))
    if has.any():
        pred[has] = predict_strings(res, list(test.loc[has, "scope"]))
    params = {"best_epoch": int(res.best_epoch), "n_train": int(ok.sum()), "no_scope_test_rows": int((~has).sum())}
    return pred, params, res


def _fit_rf_magpie(spec: FitSpec, progress: bool):
    from .baselines import rf_magpie

    if spec.features is None:
        raise ValueError(f"{spec.key}: RF-Magpie needs features (FitSpec.features)")
    f = spec.features
    y = spec.train["target"].to_numpy()
    pred = rf_magpie(f.loc[spec.train.index], y, f.loc[spec.test.index], task=spec.kind, seed=spec.seed)
    return np.asarray(pred), {}, None


def _fit_dummy(spec: FitSpec, progress: bool):
    from .baselines import dummy_predict

    return dummy_predict(None, spec.train["target"].to_numpy(), len(spec.test), task=spec.kind), {}, None


#: Model name -> ``fit(spec, progress) -> (test predictions, parameters, fit or None)``.
FIT_FUNCTIONS: dict[str, Callable] = {
    "CLOUD": _fit_cloud,
    "CLOUD-scratch": _fit_cloud,
    "RF-Magpie": _fit_rf_magpie,
    "Dummy": _fit_dummy,
}


def check_models(models) -> None:
    unknown = sorted(set(models) - set(FIT_FUNCTIONS))
    if unknown:
        raise KeyError(f"unknown models {unknown}; known: {list(FIT_FUNCTIONS)}")


def machine() -> str:
    """This machine in a few words: architecture, CPU count, bf16 units, GPU."""
    from .engine import cpu_has_bf16

    words = f"{platform.machine()}, {os.cpu_count()} CPUs"
    if cpu_has_bf16():
        words += ", bf16 units"
    try:
        import torch

        if torch.cuda.is_available():
            words += f", {torch.cuda.get_device_name(0)}"
    except Exception:  # pragma: no cover - a broken CUDA install must not stop a record
        pass
    return words


def fit_one(spec: FitSpec, progress: bool = False) -> FitRecord:
    """Make one fit and score it; an exception becomes the record's ``error`` (never raised)."""
    t0 = time.perf_counter()
    ids = list(spec.test.index)
    try:
        pred, params, fitted = FIT_FUNCTIONS[spec.model](spec, progress)
        pred = np.asarray(pred)
        if fitted is not None:
            from .engine import resolve_precision

            precision = resolve_precision(fitted.config.precision, next(fitted.model.parameters()).device)
            if spec.export is not None:
                from .predictor import save_predictor

                save_predictor(fitted, spec.export)
        else:
            precision = "fp64"
        scores = fit_scores(spec.test["target"].to_numpy(), pred, spec.kind)
        error = None
    except Exception as exc:  # a failed fit is a row, the study goes on
        pred, params, scores, precision = np.full(len(ids), np.nan), {}, {}, None
        error = f"{type(exc).__name__}: {exc}"
    return FitRecord(
        task=spec.task,
        model=spec.model,
        fold=spec.fold,
        ids=ids,
        prediction=pred,
        scores=scores,
        params=params,
        n_train=len(spec.train),
        n_test=len(ids),
        seconds=time.perf_counter() - t0,
        machine=machine(),
        precision=precision,
        error=error,
    )


# --------------------------------------------------------------------------- the store


class FitStore:
    """The study runner's :class:`~cloudlib.store.PartStore`: one part per :attr:`FitSpec.key`, ``{"settings", "row",
    "predictions"}``.

    A part counts only for the ``settings`` (any JSON-able value; the runner's config, rows, seed) it was made
    with; written atomically, so a killed run leaves whole parts only. ``row`` holds the scores, n_train /
    n_test, seconds, ``parameters`` and (from this version on) ``machine`` and ``precision``; ``predictions`` the
    test ids and predictions. The committed multi-task parts (``data/multitask/parts``) are such a store."""

    def __init__(self, folder: str | os.PathLike, settings: Any):
        # stored as a JSON string: the format of the committed parts
        self.parts = PartStore(folder, canonical(settings))

    @property
    def folder(self) -> Path:
        return self.parts.folder

    def path(self, key: str) -> Path:
        return self.parts.path(key)

    def load(self, spec: FitSpec) -> FitRecord | None:
        """The stored record of ``spec`` if it was made with these settings, else None."""
        part = self.parts.get(spec.key)
        if part is None:
            return None
        row, preds = part["row"], part["predictions"]
        scores = {k: row[k] for k in ("mae", "rmse", "max_error", "mad", "r2", "accuracy") if k in row}
        return FitRecord(
            task=row["task"],
            model=row["model"],
            fold=row["fold"],
            ids=list(preds["id"]),
            prediction=np.asarray(preds["prediction"], dtype=float),
            scores=scores,
            params=row.get("parameters") or {},
            n_train=int(row["n_train"]),
            n_test=int(row["n_test"]),
            seconds=float(row["seconds"]),
            machine=row.get("machine"),
            precision=row.get("precision"),
            reused=True,
        )

    def save(self, record: FitRecord, extra: dict | None = None) -> None:
        """Write a finished record (``extra``: more columns of its row, e.g. the task's folds label)."""
        if not record.ok:
            raise ValueError(f"{record.label}: a failed fit is not stored")
        row = {
            "task": record.task,
            "model": record.model,
            "fold": record.fold,
            **(extra or {}),
            "n_train": record.n_train,
            "n_test": record.n_test,
            **{k: record.scores[k] for k in ("mae", "rmse", "max_error") if k in record.scores},
            "seconds": round(record.seconds, 1),
            "parameters": record.params,
            "machine": record.machine,
            "precision": record.precision,
        }
        preds = {
            "task": record.task,
            "model": record.model,
            "fold": record.fold,
            "id": list(record.ids),
            "prediction": np.asarray(record.prediction, dtype=float).tolist(),
        }
        self.parts.put(fit_key(record.task, record.model, record.fold), {"row": row, "predictions": preds})


# --------------------------------------------------------------------------- the runner


def _fit_in_worker(spec: FitSpec) -> FitRecord:
    return fit_one(spec, progress=False)


def run_fits(
    specs: Sequence[FitSpec],
    jobs: int = 1,
    store: FitStore | None = None,
    progress: bool = True,
    on_done: Callable[[int, FitRecord], None] | None = None,
    store_extra: Callable[[FitSpec], dict] | None = None,
    fit_missing: bool = True,
) -> list[FitRecord | None]:
    """Every spec's :class:`FitRecord`, in order.

    ``jobs > 1``: the CLOUD / CLOUD-scratch fits run in ``jobs`` spawned processes with ``cores // jobs`` torch
    threads each (unless the config sets ``threads``: small encoders use processes far better than threads), the
    baselines here meanwhile. ``store``: a fit found there (same settings) is read back (``reused``), a new one is
    written there as soon as it is done (``store_extra(spec)``: more columns for its row); ``fit_missing=False``
    makes no new fit (its place in the list is None). ``on_done(i, record)`` is called as each fit is finished or
    read back. A fit that fails is a record with ``error`` set, not stored, and the others go on; a worker process
    that dies fails the fits it held the same way."""
    for s in specs:
        check_models([s.model])
    results: list[FitRecord | None] = [None] * len(specs)

    def done(i: int, rec: FitRecord) -> None:
        results[i] = rec
        if store is not None and rec.ok and not rec.reused:
            store.save(rec, store_extra(specs[i]) if store_extra else None)
        if on_done is not None:
            on_done(i, rec)

    todo = []
    for i, s in enumerate(specs):
        rec = store.load(s) if store is not None else None
        if rec is not None:
            done(i, rec)
        elif fit_missing:
            todo.append(i)
    neural = [i for i in todo if specs[i].model in NEURAL]
    jobs = max(1, min(int(jobs or 1), len(neural)))
    pool, futures = None, {}
    if jobs > 1:
        import multiprocessing as mp
        from concurrent.futures import ProcessPoolExecutor

        threads = max(1, (os.cpu_count() or 1) // jobs)
        pool = ProcessPoolExecutor(max_workers=jobs, mp_context=mp.get_context("spawn"))
        for i in neural:
            s = specs[i].light()
            if s.config.threads is None:
                s = dataclasses.replace(s, config=s.config.replace(threads=threads))
            futures[pool.submit(_fit_in_worker, s)] = i
    try:
        for i in todo:
            if i not in futures.values():
                done(i, fit_one(specs[i], progress=progress))
        if futures:
            from concurrent.futures import as_completed

            for fut in as_completed(futures):
                i = futures[fut]
                try:
                    rec = fut.result()
                except Exception as exc:  # the worker process died (BrokenProcessPool) or could not unpickle
                    s = specs[i]
                    rec = FitRecord(
                        s.task, s.model, s.fold, list(s.test.index), np.full(len(s.test), np.nan), {}, {},
                        len(s.train), len(s.test), 0.0, machine(), None, f"{type(exc).__name__}: {exc}",
                    )  # fmt: skip
                done(i, rec)
    finally:
        if pool is not None:
            pool.shutdown(cancel_futures=True)
    return results


def records_table(
    records: Sequence[FitRecord | None], scores=("mae", "rmse", "max_error"), with_params: bool = False
) -> pd.DataFrame:
    """One row per record (None: skipped): task, model, fold, n_train, n_test, the ``scores``, seconds (and
    ``error`` when any fit failed; ``parameters`` with ``with_params``)."""
    rows = []
    for r in records:
        if r is None:
            continue
        rows.append(
            {
                "task": r.task,
                "model": r.model,
                "fold": r.fold,
                "n_train": r.n_train,
                "n_test": r.n_test,
                **{k: r.scores.get(k, np.nan) for k in scores},
                "seconds": round(r.seconds, 1),
                "error": r.error,
                **({"parameters": r.params} if with_params else {}),
            }
        )
    cols = ["task", "model", "fold", "n_train", "n_test", *scores, "seconds", "error"]
    cols += ["parameters"] if with_params else []
    table = pd.DataFrame(rows, columns=cols)
    if table["error"].isna().all():
        table = table.drop(columns=["error"])
    return table
