"""MatBench with the official protocol: every fold, ``task.record(...)``, MatbenchBenchmark's own file format.

``run_matbench(tasks, profile)`` fine-tunes CLOUD on each official training fold (validation carved out of
the training fold only), predicts the fold's test set and records it in a ``matbench.MatbenchBenchmark``,
which scores it with matbench's own code. The same folds are run, in the same call, for the baselines:

* ``CLOUD``               — the pre-trained encoder (``models/cloud-laptop`` in the laptop profile) + MLP head;
* ``CLOUD-scratch``       — the same architecture from random initialisation (the pre-training ablation);
* ``RF-Magpie``           — a random forest on Magpie composition features (matminer);
* ``Dummy``               — the training mean (or majority class).

Results: ``results/matbench_<profile>.json`` (CLOUD; written by ``MatbenchBenchmark.to_file`` and readable by
``MatbenchBenchmark.from_file``; matbench 0.6 writes uncompressed JSON whatever the suffix, so the file is not
named ``.json.gz``), one such file per baseline (``matbench_<profile>_<model>.json``), a per-fold table
``matbench_<profile>_folds.csv`` and every test prediction in ``matbench_<profile>_predictions.csv.gz``. A task whose data cannot be reached offline is skipped and reported, never
replaced by something else under its name.
"""
from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import numpy as np
import pandas as pd

from . import data, paths
from .errors import DataUnavailableError
from .io import atomic_path, write_csv

MODELS = ("CLOUD", "CLOUD-scratch", "RF-Magpie", "Dummy")
ENCODERS = {"smoke": "models/cloud-laptop", "laptop": "models/cloud-laptop", "paper": "models/cloud-paper"}


def task_table(task: str, jobs: int = 1) -> pd.DataFrame:
    """MatBench ids -> SCOPE string and target for a task (SCOPE cached under data/derived)."""
    from .scope import scope_table

    meta = data.matbench_metadata(task)
    df = data.load_matbench(task)
    cache = paths.derived_dir() / f"scope_{task}.csv.gz"
    if cache.exists():
        scope = pd.read_csv(cache, index_col="id", keep_default_na=False, na_values=[""])
    else:
        scope = scope_table(df["structure"].to_dict(), jobs=jobs, progress=False)
        write_csv(cache, scope)
    out = scope.join(df[[meta["target"]]].rename(columns={meta["target"]: "target"}))
    out["structure"] = df["structure"]
    return out


def _magpie(task: str, table: pd.DataFrame, models, jobs: int) -> pd.DataFrame | None:
    """Magpie features aligned with ``table`` (cached per task), or None when no model needs them."""
    if "RF-Magpie" not in models:
        return None
    from .baselines import magpie_features

    features = magpie_features(list(table["structure"]), cache_key=task, jobs=jobs)
    features.index = table.index
    return features


def _slug(model: str) -> str:
    return model.lower().replace("-", "_")


def _benchmark(task: str, table: pd.DataFrame, target: str):
    """A MatbenchBenchmark for one task whose data is our verified copy (matbench would download it)."""
    from matbench.bench import MatbenchBenchmark

    mb = MatbenchBenchmark(autoload=False, subset=[task])
    getattr(mb, task).df = pd.DataFrame({"structure": table["structure"], target: table["target"]})
    return mb


def run_matbench(
    tasks=("matbench_dielectric",),
    profile: str = "laptop",
    models=MODELS,
    folds=range(5),
    jobs: int = 1,
    out_dir: str | Path | None = None,
    progress: bool = True,
    on_fit=None,
) -> pd.DataFrame:
    """Run the protocol; returns the per-fold table (task, model, fold, mae, rmse, max_error, seconds).

    ``on_fit(task, model, fold, fit_result)`` is called after every CLOUD fit (e.g. to save the fold-0
    model as the shipped predictor without fitting it a second time)."""
    out = Path(out_dir) if out_dir else paths.output_dirs(profile)[1]
    out.mkdir(parents=True, exist_ok=True)
    encoder = str(paths.repo_root() / ENCODERS[profile])
    rows, preds, skipped = [], [], {}
    for task in tasks:
        meta = data.matbench_metadata(task)
        try:
            table = task_table(task, jobs=jobs)
        except DataUnavailableError as exc:
            skipped[task] = str(exc)
            continue
        kind = "classification" if meta["task_type"] == "classification" else "regression"
        benches = {m: _benchmark(task, table, meta["target"]) for m in models}
        features = _magpie(task, table, models, jobs)
        for fold in folds:
            train_ids, test_ids = data.matbench_split(task, fold)
            train, test = table.loc[train_ids], table.loc[test_ids]
            for model in models:
                t0 = time.perf_counter()
                pred, params, fitted = fit_predict(model, train, test, features, kind, profile, encoder, seed=fold,
                                                   progress=progress, return_fit=True)
                if on_fit is not None and fitted is not None:
                    on_fit(task, model, fold, fitted)
                seconds = time.perf_counter() - t0
                task_obj = getattr(benches[model], task)
                task_obj.record(fold, np.asarray(pred).tolist(), params=params or None)
                scores = task_obj.results[f"fold_{fold}"]["scores"]
                rows.append({"task": task, "model": model, "fold": fold, **{k: float(v) for k, v in scores.items()},
                             "seconds": round(seconds, 1)})
                preds.append(pd.DataFrame({"task": task, "model": model, "fold": fold, "id": test.index,
                                           "target": test["target"].to_numpy(), "prediction": np.asarray(pred)}))
        for model, mb in benches.items():
            name = f"matbench_{profile}.json" if model == "CLOUD" else f"matbench_{profile}_{_slug(model)}.json"
            mb.add_metadata({"algorithm": model, "profile": profile, "encoder": ENCODERS[profile] if "CLOUD" in model else ""})
            with atomic_path(out / name) as tmp:
                mb.to_file(str(tmp))
    table = pd.DataFrame(rows)
    write_csv(out / f"matbench_{profile}_folds.csv", table, index=False)
    if preds:
        write_csv(out / f"matbench_{profile}_predictions.csv.gz", pd.concat(preds), index=False)
    table.attrs["skipped"] = skipped
    return table


def fit_predict(model: str, train: pd.DataFrame, test: pd.DataFrame, features: pd.DataFrame | None, kind: str,
                profile: str, encoder: str, seed: int = 0, progress: bool = True, return_fit: bool = False):
    """Train ``model`` on ``train`` rows (columns scope, target) and predict ``test``; returns (pred, params),
    plus the CLOUD :class:`~cloudlib.finetune.FitResult` (None for baselines) with ``return_fit``."""
    pred, params, fitted = _fit_predict(model, train, test, features, kind, profile, encoder, seed, progress)
    return (pred, params, fitted) if return_fit else (pred, params)


def _fit_predict(model, train, test, features, kind, profile, encoder, seed, progress):
    from .baselines import rf_magpie
    from .finetune import PROFILES as FT_PROFILES
    from .finetune import fit, predict_strings

    if model in ("CLOUD", "CLOUD-scratch"):
        ok = train["scope"].notna()
        cfg = dataclasses.replace(FT_PROFILES[profile], encoder=encoder, task=kind, pretrained=model == "CLOUD",
                                  seed=seed)
        res = fit(list(train.loc[ok, "scope"]), train.loc[ok, "target"].to_numpy(), cfg, progress=progress)
        # MatBench needs a prediction for every test id: a structure without SCOPE gets the training mean
        has = test["scope"].notna().to_numpy()
        pred = np.full(len(test), float(train["target"].mean()))
        if has.any():
            pred[has] = predict_strings(res, list(test.loc[has, "scope"]))
        return pred, {"best_epoch": int(res.best_epoch), "n_train": int(ok.sum()), "no_scope_test_rows": int((~has).sum())}, res
    if model == "RF-Magpie":
        pred = rf_magpie(features.loc[train.index], train["target"].to_numpy(), features.loc[test.index],
                         task=kind, seed=seed)
        return np.asarray(pred), {}, None
    if model == "Dummy":
        if kind == "regression":
            return np.full(len(test), train["target"].mean()), {}, None
        return np.full(len(test), bool(train["target"].mean() >= 0.5)), {}, None
    raise KeyError(f"unknown model {model!r}; known: {MODELS}")


def run_ood(groups: pd.Series, task: str = "matbench_dielectric", profile: str = "laptop",
            models=("CLOUD", "RF-Magpie", "Dummy"), min_test: int = 50, jobs: int = 1,
            progress: bool = True) -> pd.DataFrame:
    """Leave-one-group-out: each group with at least ``min_test`` members is the test set once."""
    table = task_table(task, jobs=jobs)
    groups = groups.reindex(table.index)
    features = _magpie(task, table, models, jobs)
    encoder = str(paths.repo_root() / ENCODERS[profile])
    rows = []
    for name, members in groups.groupby(groups).groups.items():
        if len(members) < min_test:
            continue
        test, train = table.loc[members], table.drop(index=members)
        for model in models:
            t0 = time.perf_counter()
            pred, _ = fit_predict(model, train, test, features, "regression", profile, encoder, progress=progress)
            err = np.abs(np.asarray(pred, dtype=float) - test["target"].to_numpy())
            rows.append({"held_out": name, "model": model, "n_test": len(test), "mae": float(np.nanmean(err)),
                         "seconds": round(time.perf_counter() - t0, 1)})
    return pd.DataFrame(rows)


def summarise(folds: pd.DataFrame, metric: str = "mae") -> pd.DataFrame:
    """Mean ± std over folds per task and model."""
    g = folds.groupby(["task", "model"])[metric]
    return pd.DataFrame({f"{metric}_mean": g.mean(), f"{metric}_std": g.std(ddof=0), "folds": g.size(),
                         "seconds": folds.groupby(["task", "model"])["seconds"].sum()})
