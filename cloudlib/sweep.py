"""The scaling sweep: MLM pre-training runs over model sizes N x data sizes D, cached and resumable.

Every run pre-trains a fresh encoder with :func:`cloudlib.pretrain.pretrain` on the first ``D`` strings of
one fixed, seeded training split of the corpus and is scored on **one fixed validation set** (the same
held-out strings with the same masks for every run). ``D`` counts unique SCOPE strings; ``N`` counts
non-embedding parameters (:func:`cloudlib.model.n_params`).

Schedule: ``epochs`` passes over the run's ``D`` strings (``min_steps`` only guards tiny smoke runs), so
the tokens a run sees grow with ``D`` as in Chinchilla, where D is the number of training tokens. We count
unique strings and repeat them a few times: Muennighoff et al. (NeurIPS 2023) found that up to ~4 epochs of
repeated data are worth almost as much as fresh data, so ``D`` unique strings x 3 epochs behaves like ~3 D
fresh ones. The reported loss is the best validation loss over ``evals`` evaluations.

Runs train in ``out_dir/<model>_D<size>/`` (a half-finished one resumes from its checkpoint there); a finished
run is kept as one part of the sweep's :class:`~cloudlib.store.PartStore` ``out_dir/runs/`` (its config, summary
and log, stamped with its pre-training config), and each downstream fine-tune as one part of ``out_dir/downstream/``
(stamped with :func:`downstream_key`), so re-running a sweep only trains what is missing. A shipped sweep
(:func:`ship`, e.g. the committed ``data/sweep/laptop``) is such a folder without the weights.
``jobs`` runs go in parallel as separate processes with ``cores // jobs`` torch threads each (small models
use processes far better than threads).
"""

from __future__ import annotations

import json
import math
import os
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

import numpy as np
import pandas as pd

from .config import FinetuneConfig, PretrainConfig, SweepConfig
from .store import PartStore


def run_name(model: str, size: int | None) -> str:
    return f"{model}_D{'all' if size is None else size}"


def pretrain_config(
    cfg: SweepConfig, model: str, size: int | None, n_train: int, threads: int | None = None
) -> PretrainConfig:
    """The :class:`~cloudlib.config.PretrainConfig` of one run (steps from the schedule rule above)."""
    d = n_train if size is None else min(size, n_train)
    steps = max(cfg.min_steps, int(math.ceil(cfg.epochs * d / cfg.batch_size)))
    every = max(1, int(math.ceil(steps / cfg.evals)))
    return PretrainConfig(
        model=model,
        max_steps=steps,
        batch_size=cfg.batch_size,
        lr=cfg.lr,
        warmup_ratio=cfg.warmup_ratio,
        val_fraction=cfg.val_fraction,
        eval_every=every,
        eval_max_strings=cfg.eval_max_strings,
        ckpt_every=every,
        seed=cfg.seed,
        corpus_limit=cfg.corpus_limit,
        max_train_strings=size,
        threads=threads,
    )


def _run_settings(pcfg: PretrainConfig) -> dict:
    """What a run's result depends on: its pre-training config, threads aside."""
    return {k: v for k, v in pcfg.to_dict().items() if k != "threads"}


def run_store(folder: str | os.PathLike, pcfg: PretrainConfig) -> PartStore:
    """The store of finished runs of ``folder`` (a sweep's ``out_dir`` or a shipped sweep), for runs of ``pcfg``."""
    return PartStore(Path(folder) / "runs", _run_settings(pcfg))


def downstream_store(folder: str | os.PathLike, key: dict) -> PartStore:
    """The store of downstream fine-tunes of ``folder``, for fine-tunes with :func:`downstream_key` ``key``."""
    return PartStore(Path(folder) / "downstream", key)


def _same_config(run_dir: Path, pcfg) -> bool:
    """Whether ``run_dir`` holds (part of) a run of exactly this configuration."""
    try:
        config = json.loads((run_dir / "config.json").read_text())
    except (OSError, ValueError):
        return False
    return all(config.get(k) == v for k, v in _run_settings(pcfg).items())


def _finished(run_dir: Path, pcfg) -> bool:
    return _same_config(run_dir, pcfg) and (run_dir / "summary.json").exists() and (run_dir / "log.jsonl").exists()


def _run_part(run_dir: Path) -> dict:
    """The part of a finished run: the config, summary and evaluation log the engine wrote in ``run_dir``."""
    return {
        "config": json.loads((run_dir / "config.json").read_text()),
        "summary": json.loads((run_dir / "summary.json").read_text()),
        "log": pd.read_json(run_dir / "log.jsonl", lines=True).to_dict(orient="records"),
    }


def _row(part: dict, model: str, size: int | None, seconds: float, reused: bool) -> dict:
    from . import model as cloud_model

    config = part["config"]
    log = pd.DataFrame(part["log"])
    best = log.loc[log["val_loss"].idxmin()]
    spec = cloud_model.preset(model)
    steps = int(log["step"].iloc[-1])
    return {
        "run": run_name(model, size),
        "model": model,
        "n_layer": spec.n_layer,
        "n_embd": spec.n_embd,
        "N": int(config["non_embedding_params"]),
        "D": int(config["n_train"]),
        "steps": steps,
        "epochs_seen": round(steps * config["batch_size"] / config["n_train"], 2),
        "val_loss": float(best["val_loss"]),
        "val_acc": float(best["val_acc"]),
        "best_step": int(best["step"]),
        "val_loss_final": float(log["val_loss"].iloc[-1]),
        "n_val_strings": int(config.get("eval_max_strings") or config["n_val"]),
        "seconds": round(seconds, 1),
        "reused": reused,
    }


_STRINGS: list[str] | None = None


def _init_worker(strings: list[str]) -> None:
    global _STRINGS
    _STRINGS = strings


def _train_one(cfg: SweepConfig, model: str, size: int | None, n_train: int, run_dir: str, threads: int) -> dict:
    from .pretrain import pretrain

    pcfg = pretrain_config(cfg, model, size, n_train, threads)
    t0 = time.perf_counter()
    # resume a half-finished run of this configuration; a run of another one (the sweep changed) starts over
    pretrain(_STRINGS, pcfg, run_dir, resume=_same_config(Path(run_dir), pcfg), progress=False)
    part = _run_part(Path(run_dir))
    run_store(Path(run_dir).parent, pcfg).put(Path(run_dir).name, part)
    return _row(part, model, size, time.perf_counter() - t0, reused=False)


def _n_train(strings: list[str], cfg: SweepConfig) -> int:
    from .pretrain import split_strings

    return len(split_strings(strings, cfg.val_fraction, cfg.seed)[0])


def run_sweep(
    cfg: SweepConfig,
    out_dir: str | os.PathLike,
    strings: list[str] | None = None,
    jobs: int = 1,
    progress: bool = True,
    cache: str | os.PathLike | None = None,
) -> pd.DataFrame:
    """Train every missing (model, data size) run of ``cfg`` and return one row per run.

    ``strings`` defaults to the offline pre-training corpus (:func:`cloudlib.corpus.load_pretraining_corpus`).
    ``cache``: another sweep folder (e.g. the committed ``data/sweep/laptop``, see :func:`ship`); a finished run of
    the same configuration found in its store is copied into ``out_dir``'s store (without weights) and reused
    instead of trained.
    Columns: run, model, n_layer, n_embd, N, D, steps, epochs_seen, val_loss (best), val_acc, best_step,
    val_loss_final, n_val_strings, seconds (training time of this call; 0 for reused runs), reused.
    """
    from tqdm.auto import tqdm

    if strings is None:
        from .corpus import load_pretraining_corpus

        corpus, _ = load_pretraining_corpus(limit=cfg.corpus_limit, progress=False)
        strings = list(corpus.index)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    n_train = _n_train(strings, cfg)
    for size in cfg.data_sizes:
        if size is not None and size > n_train:
            raise ValueError(f"data size {size} is larger than the training split ({n_train} strings)")
    jobs = max(1, int(jobs or os.cpu_count() or 1))
    threads = max(1, (os.cpu_count() or 1) // jobs)
    rows, todo = [], []
    for model in cfg.models:
        for size in cfg.data_sizes:
            name, pcfg = run_name(model, size), pretrain_config(cfg, model, size, n_train)
            store = run_store(out, pcfg)
            part = store.get(name)
            if part is None and _finished(out / name, pcfg):  # trained by a version that kept no store
                part = _run_part(out / name)
                store.put(name, part)
            if part is None and cache is not None and (part := run_store(cache, pcfg).get(name)) is not None:
                store.put(name, part)
            if part is not None:
                rows.append(_row(part, model, size, 0.0, reused=True))
            else:
                todo.append((model, size, str(out / name)))
    # the most expensive first, so parallel workers finish together
    from . import model as cloud_model

    def cost(item):
        model, size, _ = item
        spec = cloud_model.preset(model)
        steps = pretrain_config(cfg, model, size, n_train).max_steps
        return steps * (12 * spec.n_layer * spec.n_embd**2 + 1)

    todo.sort(key=cost, reverse=True)
    bar = tqdm(total=len(todo), disable=not progress or not todo, desc="scaling sweep", unit="run")
    if jobs == 1 or len(todo) <= 1:
        _init_worker(strings)
        for model, size, run_dir in todo:
            rows.append(_train_one(cfg, model, size, n_train, run_dir, threads))
            bar.update(1)
    else:
        import multiprocessing as mp

        with ProcessPoolExecutor(
            max_workers=jobs, mp_context=mp.get_context("spawn"), initializer=_init_worker, initargs=(strings,)
        ) as pool:
            futures = [pool.submit(_train_one, cfg, m, s, n_train, d, threads) for m, s, d in todo]
            for fut in as_completed(futures):
                rows.append(fut.result())
                bar.update(1)
    bar.close()
    table = pd.DataFrame(rows)
    order = {m: i for i, m in enumerate(cfg.models)}
    table = table.assign(_o=table["model"].map(order)).sort_values(["_o", "D"]).drop(columns="_o")
    return table.reset_index(drop=True)


# --------------------------------------------------------------------------- downstream


def corner_runs(runs: pd.DataFrame, k: int) -> pd.DataFrame:
    """The ``k`` runs of the grid that test "does a lower MLM loss give a better property model?" first: the
    corners and the centre, in the order (largest N, all data), (smallest N, all data), (largest N, least
    data), (middle N, middle D), (smallest N, least data), (middle N, all data), (largest N, middle D); then the
    rest of the two axes through (largest N, all data) (every N at the most data, every D at the largest N,
    alternating from the far ends); then the rest of the grid."""
    ns, ds = np.sort(runs["N"].unique()), np.sort(runs["D"].unique())
    n_lo, n_mid, n_hi = ns[0], ns[len(ns) // 2], ns[-1]
    d_lo, d_mid, d_hi = ds[0], ds[len(ds) // 2], ds[-1]
    corners = [(n_hi, d_hi), (n_lo, d_hi), (n_hi, d_lo), (n_mid, d_mid), (n_lo, d_lo), (n_mid, d_hi), (n_hi, d_mid)]
    axis_n = [(n, d_hi) for n in ns[::-1]]
    axis_d = [(n_hi, d) for d in ds[::-1]]
    axes = [p for pair in zip(axis_n[::-1], axis_d[::-1]) for p in pair]
    axes += axis_n[len(axis_d) :] + axis_d[len(axis_n) :]
    rest = [(n, d) for n in ns for d in ds]
    picks, seen = [], set()
    for n, d in corners + axes + rest:
        sel = runs[(runs["N"] == n) & (runs["D"] == d)]
        if len(sel) and sel.index[0] not in seen:
            seen.add(sel.index[0])
            picks.append(sel.head(1))
        if len(picks) >= k:
            break
    return pd.concat(picks) if picks else runs.head(0)


def downstream_key(config: FinetuneConfig, train: pd.DataFrame, test: pd.DataFrame, target: str) -> dict:
    """What a downstream score depends on besides the encoder: the fine-tuning config (threads aside) and the
    rows (sha256 of the training and test strings and targets)."""
    import hashlib

    def digest(df: pd.DataFrame) -> str:
        h = hashlib.sha256()
        for s, y in zip(df["scope"], df[target]):
            h.update(f"{s}\t{float(y)!r}\n".encode())
        return h.hexdigest()

    cfg = {k: v for k, v in config.replace(encoder="").to_dict().items() if k != "threads"}
    return {"config": cfg, "target": target, "train_sha256": digest(train), "test_sha256": digest(test)}


def downstream(
    picks: pd.DataFrame,
    sweep_dir: str | os.PathLike,
    config: FinetuneConfig,
    train: pd.DataFrame,
    test: pd.DataFrame,
    target: str = "n",
    cache: str | os.PathLike | None = None,
) -> tuple[pd.DataFrame, float]:
    """Fine-tune each picked run's encoder (``config`` with its ``encoder`` set to the run's model) on ``train``
    (columns scope, ``target``) and score it on ``test``. Returns one row per run (run, N, D, val_loss,
    downstream_mae, seconds, reused) and the Spearman correlation of MLM loss and MAE (NaN with fewer than 3 runs).

    Each fine-tune is kept in ``sweep_dir``'s downstream store (:func:`downstream_store`); one found there, or in
    the store of the sweep folder ``cache`` (:func:`ship`), with the same fine-tuning config and rows
    (:func:`downstream_key`) and the same MLM loss is reused, not re-fitted.
    Raises :class:`~cloudlib.errors.CloudError` when a run must be fitted but its weights are not there (a run
    copied from a cache has none)."""
    from .errors import CloudError
    from .study import FitSpec, run_fits

    key = downstream_key(config, train, test, target)
    mine = downstream_store(sweep_dir, key)
    theirs = downstream_store(cache, key) if cache is not None else None
    rows = []
    for _, r in picks.iterrows():
        hit = None
        for store in (mine, theirs):
            part = store.get(r["run"]) if store is not None else None
            if part is not None and abs(float(part["row"]["val_loss"]) - float(r["val_loss"])) < 1e-9:
                hit = part["row"]
                if store is theirs:
                    mine.put(r["run"], part)
                break
        if hit is not None:
            rows.append(
                {**{k: hit[k] for k in ("run", "N", "D", "val_loss", "downstream_mae", "seconds")}, "reused": True}
            )
            continue
        encoder = Path(sweep_dir) / r["run"] / "model"
        if not (encoder / "config.json").is_file():
            raise CloudError(
                f"run {r['run']}: no encoder weights in {encoder} to fine-tune (runs taken from a cache carry "
                "none); re-run the sweep without the cache, or with the fine-tuning settings the cache was made with",
                str(encoder),
            )
        spec = FitSpec(
            task="downstream",
            model="CLOUD",
            fold=r["run"],
            train=train[["scope", target]].rename(columns={target: "target"}),
            test=test[["scope", target]].rename(columns={target: "target"}),
            config=config.replace(encoder=str(encoder)),
            seed=config.seed,
            target_name=target,
        )
        (rec,) = run_fits([spec], progress=False)
        if not rec.ok:
            raise CloudError(f"run {r['run']}: the downstream fit failed: {rec.error}", str(encoder))
        row = {
            "run": r["run"],
            "N": int(r["N"]),
            "D": int(r["D"]),
            "val_loss": float(r["val_loss"]),
            "downstream_mae": float(rec.scores["mae"]),
            "seconds": round(rec.seconds, 1),
        }
        mine.put(r["run"], {"row": row})
        rows.append({**row, "reused": False})
    table = pd.DataFrame(rows, columns=["run", "N", "D", "val_loss", "downstream_mae", "seconds", "reused"])
    rho = (
        float(table[["val_loss", "downstream_mae"]].corr(method="spearman").iloc[0, 1])
        if len(table) > 2
        else float("nan")
    )
    return table, rho


def ship(
    runs: pd.DataFrame,
    sweep_dir: str | os.PathLike,
    dest: str | os.PathLike,
    down: pd.DataFrame | None = None,
    provenance: dict | None = None,
) -> Path:
    """Write a sweep as data: the stored parts of ``runs`` (config, summary, log; no weights) under ``dest/runs/``,
    those of the downstream fine-tunes in ``down`` under ``dest/downstream/``, ``runs.csv`` (the table, for
    reading) and ``provenance.json``; :func:`run_sweep` and :func:`downstream` reuse them through their ``cache``
    argument."""
    from .io import write_bytes, write_csv, write_json

    dest = Path(dest)
    for sub, names in (("runs", runs["run"]), ("downstream", [] if down is None else down["run"])):
        for name in names:
            src = PartStore(Path(sweep_dir) / sub, None).path(name)
            write_bytes(dest / sub / src.name, src.read_bytes())
    write_csv(dest / "runs.csv", runs, index=False)
    if provenance is not None:
        write_json(dest / "provenance.json", provenance)
    return dest
