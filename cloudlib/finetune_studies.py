"""The fine-tuning studies of notebook 03: MatBench with the official protocol, leave-one-group-out (OOD),
UnconvBench and the offline multi-task table, each a list of :class:`cloudlib.study.FitSpec` for
:func:`cloudlib.study.run_fits`, and their analyses.

MatBench with the official protocol: every fold, ``task.record(...)``, MatbenchBenchmark's own file format.

:func:`run_matbench` fine-tunes CLOUD on each official training fold (validation carved out of the training
fold only), predicts the fold's test set and records it in a ``matbench.MatbenchBenchmark``, which scores it
with matbench's own code. The same folds are run, in the same call, for the baselines:

* ``CLOUD``          -- the fine-tuning config's pre-trained encoder + MLP head;
* ``CLOUD-scratch``  -- the same config with ``pretrained=False``: same architecture, random initialisation;
* ``RF-Magpie``      -- a random forest on Magpie composition features (:mod:`cloudlib.baselines`);
* ``Dummy``          -- the training mean (or majority class).

Results (``out_dir``, default ``results[/smoke]``, files named after ``name``): ``matbench_<name>.json`` (CLOUD;
written by ``MatbenchBenchmark.to_file`` and readable by ``MatbenchBenchmark.from_file``; matbench 0.6 writes
uncompressed JSON whatever the suffix, so the file is not named ``.json.gz``; its metadata holds the resolved
fine-tuning config), one such file per baseline (``matbench_<name>_<model>.json``), a per-fold table
``matbench_<name>_folds.csv`` and every test prediction in ``matbench_<name>_predictions.csv.gz``. A task whose
data cannot be reached offline is skipped and reported, never replaced by something else under its name.

:func:`run_ood` is the leave-one-group-out variant (e.g. one crystal system held out at a time);
:func:`summarise`, :func:`pretraining_gain` and :func:`compare_with_reference` are the analyses notebook 03 shows.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import pandas as pd

from . import paths
from .config import FinetuneConfig
from .errors import DataUnavailableError
from .io import atomic_path, write_csv
from .matbench_data import load_matbench, matbench_metadata, matbench_split
from .study import MODELS, FitSpec, FitStore, check_models, fold_specs, records_table, run_fits, slug


def task_table(task: str, jobs: int = 1) -> pd.DataFrame:
    """MatBench ids -> SCOPE string, target and structure for a task (SCOPE cached under data/derived)."""
    from .scope import scope_table

    meta = matbench_metadata(task)
    df = load_matbench(task)
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
    from .features import magpie_features

    features = magpie_features(list(table["structure"]), cache_key=task, jobs=jobs)
    features.index = table.index
    return features


def _benchmark(task: str, table: pd.DataFrame, target: str):
    """A MatbenchBenchmark for one task whose data is our verified copy (matbench would download it)."""
    from matbench.bench import MatbenchBenchmark

    mb = MatbenchBenchmark(autoload=False, subset=[task])
    getattr(mb, task).df = pd.DataFrame({"structure": table["structure"], target: table["target"]})
    return mb


def _task_specs(task: str, table: pd.DataFrame, splits, models, config, jobs: int, export=None) -> list:
    """Every model on every ``(fold, train_ids, test_ids)`` of ``splits`` of a MatBench task: its kind and
    target from its metadata, Magpie features when RF-Magpie is asked for; ``export`` maps ``(task, fold)`` to the
    folder where that fold's CLOUD fit is saved."""
    meta = matbench_metadata(task)
    kind = "classification" if meta["task_type"] == "classification" else "regression"
    features = _magpie(task, table, models, jobs)
    specs = []
    for fold, train_ids, test_ids in splits:
        exp = (export or {}).get((task, fold))
        specs += fold_specs(
            task,
            fold,
            table.loc[train_ids],
            table.loc[test_ids],
            models,
            config,
            kind=kind,
            features=features,
            target_name=meta["target"],
            export=paths.resolve(exp).absolute() if exp is not None else None,
        )
    return specs


def run_matbench(
    tasks=("matbench_dielectric",),
    config: FinetuneConfig | None = None,
    models=MODELS,
    folds=range(5),
    jobs: int = 1,
    out_dir: str | Path | None = None,
    name: str = "laptop",
    progress: bool = True,
    export: dict | None = None,
) -> pd.DataFrame:
    """Run the protocol; returns the per-fold table (task, model, fold, mae, rmse, max_error, seconds).

    ``config``: the fine-tuning config of the CLOUD models (default: the ``laptop`` preset). ``export``: maps
    ``(task, fold)`` to a folder where that fold's CLOUD fit is saved as a predictor (no second fit).
    """
    from .config import preset

    config = config or preset("finetune", "laptop")
    check_models(models)
    out = Path(out_dir) if out_dir else paths.output_dirs(name)[1]  # name: a profile unless out_dir is given
    out.mkdir(parents=True, exist_ok=True)
    rows, preds, skipped, failed = [], [], {}, []
    for task in tasks:
        meta = matbench_metadata(task)
        try:
            table = task_table(task, jobs=jobs)
        except DataUnavailableError as exc:
            skipped[task] = str(exc)
            continue
        benches = {m: _benchmark(task, table, meta["target"]) for m in models}
        splits = ((fold, *matbench_split(task, fold)) for fold in folds)
        specs = _task_specs(task, table, splits, models, config, jobs, export)
        for spec, rec in zip(specs, run_fits(specs, jobs=jobs, progress=progress)):
            if not rec.ok:  # not recorded: matbench reads complete runs only, so the model's file says so
                failed.append(f"{rec.label}: {rec.error}")
                rows.append({"task": task, "model": spec.model, "fold": spec.fold, "error": rec.error})
                continue
            task_obj = getattr(benches[spec.model], task)
            task_obj.record(spec.fold, rec.prediction.tolist(), params=rec.params or None)
            scores = task_obj.results[f"fold_{spec.fold}"]["scores"]  # matbench's scores: the judge
            rows.append(
                {
                    "task": task,
                    "model": spec.model,
                    "fold": spec.fold,
                    **{k: float(v) for k, v in scores.items()},
                    "seconds": round(rec.seconds, 1),
                }
            )
            preds.append(rec.predictions_frame(spec.test["target"].to_numpy()))
        for model, mb in benches.items():
            file = f"matbench_{name}.json" if model == "CLOUD" else f"matbench_{name}_{slug(model)}.json"
            cloud = "CLOUD" in model
            mb.add_metadata(
                {
                    "algorithm": model,
                    "name": name,
                    "config": config.replace(pretrained=model == "CLOUD").to_dict() if cloud else {},
                }
            )
            with atomic_path(out / file) as tmp:
                mb.to_file(str(tmp))
    table = pd.DataFrame(rows)
    write_csv(out / f"matbench_{name}_folds.csv", table, index=False)
    if preds:
        write_csv(out / f"matbench_{name}_predictions.csv.gz", pd.concat(preds), index=False)
    table.attrs["skipped"] = skipped
    table.attrs["failed"] = failed
    return table


def run_ood(
    groups: pd.Series,
    task: str = "matbench_dielectric",
    config: FinetuneConfig | None = None,
    models=("CLOUD", "RF-Magpie", "Dummy"),
    min_test: int = 50,
    jobs: int = 1,
    progress: bool = True,
) -> pd.DataFrame:
    """Leave-one-group-out on ``task``: each group with at least ``min_test`` members is the test set once, the
    models are trained on all other rows. Returns held_out, model, n_test, mae, seconds."""
    from .config import preset
    from .splits import leave_cluster_out_splits

    config = config or preset("finetune", "laptop")
    check_models(models)
    table = task_table(task, jobs=jobs)
    splits = leave_cluster_out_splits(groups.reindex(table.index), min_size=min_test)
    specs = _task_specs(task, table, splits, models, config, jobs)
    records = run_fits(specs, jobs=jobs, progress=progress)
    out = records_table(records, scores=("mae",)).rename(columns={"fold": "held_out"})
    return out[["held_out", "model", "n_test", "mae", "seconds", *(["error"] if "error" in out else [])]]


def summarise(folds: pd.DataFrame, metric: str = "mae") -> pd.DataFrame:
    """Mean ± std over folds per task and model (std with ddof=0, as matbench reports it)."""
    g = folds.groupby(["task", "model"])[metric]
    return pd.DataFrame(
        {
            f"{metric}_mean": g.mean(),
            f"{metric}_std": g.std(ddof=0),
            "folds": g.size(),
            "seconds": folds.groupby(["task", "model"])["seconds"].sum(),
        }
    )


def pretraining_gain(folds: pd.DataFrame, task: str = "matbench_dielectric", metric: str = "mae") -> dict:
    """What pre-training buys on ``task``: per fold MAE(CLOUD-scratch) - MAE(CLOUD), its mean and std, and the
    relative gain ``1 - mean MAE(CLOUD) / mean MAE(CLOUD-scratch)`` (the paper's percentage). Empty when either
    model is missing."""
    wide = folds[folds["task"] == task].pivot(index="fold", columns="model", values=metric)
    if not {"CLOUD", "CLOUD-scratch"} <= set(wide.columns):
        return {}
    gain = wide["CLOUD-scratch"] - wide["CLOUD"]
    return {
        "per_fold": gain.round(6).to_dict(),
        "mean": float(gain.mean()),
        "std": float(gain.std(ddof=0)),
        "relative": float(1 - wide["CLOUD"].mean() / wide["CLOUD-scratch"].mean()),
        "folds_improved": int((gain > 0).sum()),
        "folds": int(len(gain)),
    }


#: what each of this project's models reads from a crystal (the dielectric comparison marks them apart)
MODEL_INPUTS = {
    "CLOUD": "coordinate-free",
    "CLOUD-scratch": "coordinate-free",
    "RF-Magpie": "coordinate-free",
    "Dummy": "baseline",
}


def compare_with_reference(
    summary: pd.DataFrame, reference: pd.DataFrame, task: str = "matbench_dielectric", metric: str = "mae"
) -> pd.DataFrame:
    """This project's models (``summarise`` output) beside reference numbers (columns model, ``metric``,
    ``inputs``, source), sorted by the metric: columns model, mae, err (fold std; 0 for references), kind (ours
    or reference) and inputs (coordinate-free: composition and/or symmetry only; coordinates: atomic
    positions; baseline)."""
    ours = summary.loc[task].reset_index()
    refs = reference.assign(inputs=reference["inputs"] if "inputs" in reference else "unknown")
    return (
        pd.concat(
            [
                pd.DataFrame(
                    {
                        "model": "this project: " + ours["model"],
                        metric: ours[f"{metric}_mean"],
                        "err": ours[f"{metric}_std"],
                        "kind": "ours",
                        "inputs": ours["model"].map(MODEL_INPUTS).fillna("unknown"),
                    }
                ),
                pd.DataFrame(
                    {
                        "model": refs["model"],
                        metric: refs[metric],
                        "err": 0.0,
                        "kind": "reference",
                        "inputs": refs["inputs"],
                    }
                ),
            ]
        )
        .sort_values(metric)
        .reset_index(drop=True)
    )


def corpus_test_strings_effect(recipe_dir) -> dict:
    """What the test crystals' unlabelled strings in the pre-training corpus are worth, from the committed
    recipe probes (``data/recipe/pre-keep.json`` and ``pre-drop.json``: two 4 x 128 encoders, 1,000 steps, with
    and without matbench_dielectric's strings, then the same fold-0 fine-tuning): validation and fold-0 test
    MAE of each, and the relative validation gain of keeping them. Empty when the probes are missing."""
    import json
    from pathlib import Path

    try:
        keep, drop = (
            json.loads((Path(recipe_dir) / f"{n}.json").read_text())["scores_by_tta"]["1"]
            for n in ("pre-keep", "pre-drop")
        )
    except (OSError, KeyError, ValueError):
        return {}
    return {
        "val_mae_with": keep["val_mae"],
        "val_mae_without": drop["val_mae"],
        "test_mae_with": keep["test_mae"],
        "test_mae_without": drop["test_mae"],
        "val_gain": drop["val_mae"] / keep["val_mae"] - 1,
    }


def reread_scores(path, task: str, metric: str = "mae") -> dict[int, float]:
    """Per-fold scores of ``task`` as matbench itself reads them back from a results file
    (``MatbenchBenchmark.from_file``; matbench reads complete 5-fold runs only)."""
    from matbench.bench import MatbenchBenchmark

    t = getattr(MatbenchBenchmark.from_file(str(path)), task)
    return {int(k.split("_")[1]): float(v["scores"][metric]) for k, v in t.results.items()}


def run_unconvbench(
    tasks, config: FinetuneConfig | None = None, models=MODELS, folds=range(5), jobs: int = 1, progress: bool = True
) -> pd.DataFrame:
    """UnconvBench tasks (:mod:`cloudlib.unconvbench`: 2D materials, MOFs, superconductors, defected crystals)
    with the same models and fine-tuning config as MatBench, on UnconvBench's own 5 folds.

    Returns task, model, fold, n_train, n_test, mae, seconds (CLOUD fits side by side with ``jobs > 1``). A task whose data cannot be had (figshare is not
    reachable offline) is skipped and named in ``attrs["skipped"]`` with the places tried; RF-Magpie needs
    structures and is skipped (``attrs["skipped_models"]``) for a task that comes as SCOPE strings only.
    """
    from . import unconvbench
    from .config import preset

    config = config or preset("finetune", "laptop")
    check_models(models)
    specs, skipped, skipped_models = [], {}, {}
    for name in tasks:
        t = unconvbench.task(name)
        for fold in folds:
            try:
                train, test = unconvbench.load_unconvbench(t.name, fold, with_scope=True)
            except DataUnavailableError as exc:
                skipped[t.name] = str(exc)
                break
            train, test = (df.rename(columns={t.target: "target"}) for df in (train, test))
            use = [m for m in models if m != "RF-Magpie" or "structure" in train.columns]
            if len(use) < len(models):
                skipped_models[t.name] = "RF-Magpie: no structures (SCOPE strings only)"
            both = pd.concat([train, test])
            features = _magpie(f"unconvbench_{t.name}", both, use, jobs) if "RF-Magpie" in use else None
            specs += fold_specs(t.name, fold, train, test, use, config, features=features, target_name=t.target)
    table = records_table(run_fits(specs, jobs=jobs, progress=progress), scores=("mae",))
    table.attrs.update(skipped=skipped, skipped_models=skipped_models)
    return table


# --------------------------------------------------------------------------- the offline multi-task table


def offline_task_table(task: str, jobs: int = 1, limit: int | None = None) -> pd.DataFrame:
    """An offline task (:data:`cloudlib.offline_data.OFFLINE_TASKS`) as ids -> scope, formula, target,
    structure; SCOPE and formulas cached under data/derived (``limit``: the first N rows, for smoke runs)."""
    from .offline_data import load_offline_task
    from .scope import as_structure, scope_table

    df = load_offline_task(task)
    if limit is not None:
        df = df.iloc[:limit]
    cache = paths.derived_dir() / f"offline_{task}_{'full' if limit is None else f'limit{limit}'}.csv.gz"
    if cache.exists():
        cached = pd.read_csv(cache, index_col="id", keep_default_na=False, na_values=[""])
        cached.index = cached.index.astype(str)
    if not cache.exists() or list(cached.index) != [str(i) for i in df.index]:
        cached = scope_table(df["structure"].to_dict(), jobs=jobs, progress=False)
        formulas = []
        for i, s in df["structure"].items():
            try:
                formulas.append(as_structure(s, i).composition.formula)
            except Exception:  # the SCOPE column already names the error
                formulas.append(None)
        cached["formula"] = formulas
        cached.index = cached.index.astype(str)
        write_csv(cache, cached)
    out = cached[["scope", "error", "formula"]].copy()
    out.index = df.index
    out["target"] = df["target"].astype(float).to_numpy()
    out["structure"] = df["structure"].to_numpy()
    return out


def offline_settings(config: FinetuneConfig, limit: int | None = None, seed: int = 0) -> dict:
    """What a multi-task part depends on, the settings :func:`run_offline` makes and finds its parts with: the
    resolved config, the row limit, the seed, and the encoder by content (a re-made encoder at the same path must
    not reuse the parts of the old one: :func:`cloudlib.model.encoder_fingerprint`)."""
    from .model import encoder_fingerprint

    fingerprint = encoder_fingerprint(config.encoder, config.pretrained)
    return {"config": config.to_dict(), "limit": limit, "seed": seed, "encoder": fingerprint}


def run_offline(
    tasks=None,
    config: FinetuneConfig | None = None,
    models=MODELS,
    jobs: int = 1,
    out_dir: str | Path = "data/multitask",
    name: str = "laptop",
    progress: bool = True,
    limit: int | None = None,
    seed: int = 0,
    fit_missing: bool = True,
    command: str | None = None,
) -> pd.DataFrame:
    """The multi-task table (the paper's Figure 2, offline): every task of ``OFFLINE_TASKS`` (or ``tasks``) x
    ``models``, each on its folds (official, official-partial or seeded 5-fold; each task keeps its label).

    Resumable: every (task, model, fold) is written to ``out_dir/parts/`` when done and skipped on a rerun
    with the same settings (the config, rows, seed and the encoder's :func:`~cloudlib.model.encoder_fingerprint`;
    the laptop parts are committed, so the table can be made over several sittings).
    ``fit_missing=False`` trains nothing and writes the table from the finished parts alone; the fits still missing
    are listed in the record's ``metadata.missing`` (``metadata.complete`` is False) and in the returned
    table's ``attrs["missing"]``. Writes ``offline_<name>_folds.csv`` (task, model, fold, folds label, n_train,
    n_test, mae, rmse, max_error, seconds), ``offline_<name>_predictions.csv.gz`` and ``offline_<name>.json`` in
    matbench's record layout (``tasks -> task -> model -> fold_i -> {scores, parameters}``) with each task's
    label and the resolved config, and ``offline_<name>_provenance.json``: ``command`` (the command line that made
    the call, for the record), the config, the encoder's sha256, this call's wall time and the fits' summed
    seconds (resumed parts keep the seconds of the call that made them), whether the table is complete (and the
    fits it still lacks), the task labels and the machine. ``limit`` takes the first N rows of each seeded task (smoke runs; official
    folds need every row). Returns the per-fold table.
    """
    from .config import preset
    from .io import write_json
    from .offline_data import OFFLINE_TASKS

    t0 = time.perf_counter()
    config = config or preset("finetune", "laptop")
    tasks = list(OFFLINE_TASKS) if tasks is None else list(tasks)
    unknown = set(tasks) - set(OFFLINE_TASKS)
    if unknown:
        raise KeyError(f"unknown offline tasks {sorted(unknown)}; known: {sorted(OFFLINE_TASKS)}")
    check_models(models)
    out = paths.resolve(out_dir)
    store = FitStore(out / "parts" / name, offline_settings(config, limit, seed))
    specs = []
    for task in tasks:
        spec = OFFLINE_TASKS[task]
        lim = None if spec.folds.startswith("official") else limit  # official folds need every test id
        table = offline_task_table(task, jobs=jobs, limit=lim)
        features = None
        for fold, (train_ids, test_ids) in offline_task_folds(task, table.index, seed).items():
            train, test = table.loc[train_ids], table.loc[test_ids]
            for model in models:
                f = FitSpec(task, model, fold, train, test, config, seed=config.seed + fold)
                if model == "RF-Magpie" and store.load(f) is None and fit_missing:
                    if features is None:  # computed only when an RF fit is to be made
                        from .features import magpie_features

                        features = magpie_features(table["formula"], cache_key=f"offline_{task}_{lim}", jobs=1)
                    f = dataclasses.replace(f, features=features)
                specs.append(f)
    records = run_fits(
        specs,
        jobs=jobs,
        store=store,
        progress=progress,
        store_extra=lambda f: {"folds": OFFLINE_TASKS[f.task].folds},
        fit_missing=fit_missing,
    )
    missing = [f.label for f, r in zip(specs, records) if r is None or not r.ok]
    good = [r for r in records if r is not None and r.ok]
    failed = [f"{r.label}: {r.error}" for r in records if r is not None and not r.ok]
    table = records_table(good, with_params=True)
    table.insert(3, "folds", [OFFLINE_TASKS[t].folds for t in table["task"]])
    rank = {"task": {t: i for i, t in enumerate(tasks)}, "model": {m: i for i, m in enumerate(models)}}
    sort_key = lambda col: col.map(rank[col.name]) if col.name in rank else col  # noqa: E731
    table = table.sort_values(["task", "model", "fold"], key=sort_key, kind="stable").reset_index(drop=True)
    preds = [r.predictions_frame() for r in good]
    rows = table.to_dict(orient="records")
    record: dict = {
        "metadata": {
            "name": name,
            "config": config.to_dict(),
            "seed": seed,
            "limit": limit,
            "complete": not missing,
            "missing": missing,
            "labels": {
                t: {"folds": OFFLINE_TASKS[t].folds, "unit": OFFLINE_TASKS[t].unit, "note": OFFLINE_TASKS[t].note}
                for t in tasks
            },
        },
        "tasks": {},
    }
    for r in rows:
        scores = {k: r[k] for k in ("mae", "rmse", "max_error")}
        record["tasks"].setdefault(r["task"], {}).setdefault(r["model"], {})[f"fold_{r['fold']}"] = {
            "scores": scores,
            "parameters": {
                **(r.get("parameters") or {}),
                "n_train": r["n_train"],
                "n_test": r["n_test"],
                "seconds": r["seconds"],
            },
        }
    write_json(out / f"offline_{name}.json", record, indent=1)
    if len(table):
        write_csv(out / f"offline_{name}_folds.csv", table.drop(columns=["parameters"]), index=False)
        write_csv(out / f"offline_{name}_predictions.csv.gz", pd.concat(preds), index=False)
    table = table.drop(columns=["parameters"])
    table.attrs["missing"] = missing
    table.attrs["failed"] = failed
    _offline_provenance(out / f"offline_{name}_provenance.json", command, config, table, jobs, time.perf_counter() - t0)
    return table


def _offline_provenance(path: Path, command, config: FinetuneConfig, folds: pd.DataFrame, jobs, wall: float) -> None:
    import os
    import platform
    import sys

    import torch

    from .io import write_json
    from .offline_data import OFFLINE_TASKS
    from .registry import sha256_file
    from .study import machine

    weights = paths.resolve(config.encoder) / "model.safetensors"
    write_json(
        path,
        {
            "command": command or " ".join(["python", *sys.argv]),
            "config": config.to_dict(),
            "encoder_sha256": sha256_file(weights) if weights.is_file() else None,
            "wall_seconds_this_call": round(wall, 1),
            "fit_seconds_total": round(float(folds["seconds"].sum()), 1) if len(folds) else 0.0,
            "fit_seconds_by_model": folds.groupby("model")["seconds"].sum().round(1).to_dict() if len(folds) else {},
            "complete": not folds.attrs.get("missing"),
            "missing_fits": folds.attrs.get("missing", []),
            "jobs": jobs,
            "tasks": {
                t: {"folds": OFFLINE_TASKS[t].folds, "note": OFFLINE_TASKS[t].note}
                for t in (folds["task"].unique() if len(folds) else [])
            },
            "machine": {
                "platform": platform.platform(),
                "cpus": os.cpu_count(),
                "torch": torch.__version__,
                "words": machine(),
            },
            "date": time.strftime("%Y-%m-%d %H:%M"),
        },
        indent=1,
    )


def offline_task_folds(name: str, ids: pd.Index, seed: int = 0) -> dict[int, tuple[list, list]]:
    """``{fold: (train_ids, test_ids)}`` of an offline task: MatBench's official folds (only the ids present, for a
    partial task) or :func:`cloudlib.splits.seeded_kfold` of ``ids`` (5 folds, ``seed``)."""
    from .errors import DataError
    from .offline_data import OFFLINE_TASKS
    from .splits import seeded_kfold

    task = OFFLINE_TASKS[name]
    if task.folds.startswith("official"):
        present = set(ids)
        out = {}
        for f in task.fold_numbers:
            train, test = matbench_split(name, f)
            if not set(test) <= present:
                raise DataError(f"fold {f}: {len(set(test) - present)} test ids are missing", name)
            out[f] = ([i for i in train if i in present], list(test))
        return out
    folds = seeded_kfold(ids, 5, seed)
    return {f: folds[f] for f in task.fold_numbers}
