"""The scaling sweep: MLM pre-training runs over model sizes N x data sizes D, cached and resumable.

Every run pre-trains a fresh encoder with :func:`cloudlib.train.pretrain` on the first ``D`` strings of
one fixed, seeded training split of the corpus and is scored on **one fixed validation set** (the same
held-out strings with the same masks for every run). ``D`` counts unique SCOPE strings; ``N`` counts
non-embedding parameters (:func:`cloudlib.model.n_params`).

Schedule: ``epochs`` passes over the run's ``D`` strings (``min_steps`` only guards tiny smoke runs), so
the tokens a run sees grow with ``D`` as in Chinchilla, where D is the number of training tokens. We count
unique strings and repeat them a few times: Muennighoff et al. (NeurIPS 2023) found that up to ~4 epochs of
repeated data are worth almost as much as fresh data, so ``D`` unique strings x 3 epochs behaves like ~3 D
fresh ones. The reported loss is the best validation loss over ``evals`` evaluations.

Runs live in ``out_dir/<model>_D<size>/``; a run whose ``summary.json`` matches its configuration is
reused, a half-finished one resumes from its checkpoint, so re-running a sweep only trains what is missing.
``jobs`` runs go in parallel as separate processes with ``cores // jobs`` torch threads each (small models
use processes far better than threads).
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path

import pandas as pd


@dataclass(frozen=True)
class SweepConfig:
    """A grid of pre-training runs. ``data_sizes`` entries are unique training strings (None = all)."""

    models: tuple[str, ...]  # presets or "L{layers}xD{width}" specs (cloudlib.model.preset)
    data_sizes: tuple[int | None, ...]
    epochs: float = 3.0
    min_steps: int = 300
    batch_size: int = 64
    lr: float = 2e-3
    warmup_ratio: float = 0.05
    evals: int = 6  # validation evaluations per run (the best one is the run's loss)
    eval_max_strings: int | None = 2048  # the fixed validation set (None = the whole validation split)
    val_fraction: float = 0.2
    seed: int = 0
    corpus_limit: int | None = None  # crystals per corpus source (smoke)

    def replace(self, **kw) -> "SweepConfig":
        return dataclasses.replace(self, **kw)


SWEEPS: dict[str, SweepConfig] = {
    # seconds: 5 x 4 very small runs on a slice of the corpus (checks the machinery, not the science)
    "smoke": SweepConfig(models=("L1xD16", "L1xD24", "L1xD32", "L2xD32", "L2xD48"), data_sizes=(150, 300, 600, None),
                         epochs=1.0, min_steps=12, batch_size=32, evals=2, eval_max_strings=256, corpus_limit=150),
    # the README's main job: 5 sizes (8 k - 350 k non-embedding parameters, 1.6 decades) x 5 data sizes
    # (1.6 k strings to the whole 25 k training split, 1.2 decades), 3 epochs each; ~5 min on 2 cores
    "laptop": SweepConfig(models=("L1xD24", "L1xD40", "L2xD48", "L2xD80", "L3xD96"),
                          data_sizes=(1600, 3200, 6400, 12800, None), epochs=3.0, min_steps=50),
    # a GPU machine: up to the paper's BERT-base (85 M), 3 decades of N, longer schedules
    "paper": SweepConfig(models=("L2xD128", "mini", "small", "L6xD384", "medium", "base"),
                         data_sizes=(2000, 4000, 8000, 16000, None), epochs=20.0, min_steps=2000, batch_size=256,
                         lr=5e-4, evals=10, eval_max_strings=None),
}


def run_name(model: str, size: int | None) -> str:
    return f"{model}_D{'all' if size is None else size}"


def pretrain_config(cfg: SweepConfig, model: str, size: int | None, n_train: int, threads: int | None = None):
    """The :class:`~cloudlib.train.PretrainConfig` of one run (steps from the schedule rule above)."""
    from .train import PretrainConfig

    d = n_train if size is None else min(size, n_train)
    steps = max(cfg.min_steps, int(math.ceil(cfg.epochs * d / cfg.batch_size)))
    every = max(1, int(math.ceil(steps / cfg.evals)))
    return PretrainConfig(model=model, max_steps=steps, batch_size=cfg.batch_size, lr=cfg.lr,
                          warmup_ratio=cfg.warmup_ratio, val_fraction=cfg.val_fraction, eval_every=every,
                          eval_max_strings=cfg.eval_max_strings, ckpt_every=every, seed=cfg.seed,
                          corpus_limit=cfg.corpus_limit, max_train_strings=size, threads=threads)


def _same_config(run_dir: Path, pcfg) -> bool:
    """Whether ``run_dir`` holds (part of) a run of exactly this configuration."""
    try:
        config = json.loads((run_dir / "config.json").read_text())
    except (OSError, ValueError):
        return False
    return all(config.get(k) == v for k, v in dataclasses.asdict(pcfg).items() if k != "threads")


def _finished(run_dir: Path, pcfg) -> bool:
    return _same_config(run_dir, pcfg) and (run_dir / "summary.json").exists() and (run_dir / "log.jsonl").exists()


def _row(run_dir: Path, model: str, size: int | None, seconds: float, reused: bool) -> dict:
    from . import model as cloud_model

    config = json.loads((run_dir / "config.json").read_text())
    log = pd.read_json(run_dir / "log.jsonl", lines=True)
    best = log.loc[log["val_loss"].idxmin()]
    spec = cloud_model.preset(model)
    steps = int(log["step"].iloc[-1])
    return {
        "run": run_name(model, size), "model": model, "n_layer": spec.n_layer, "n_embd": spec.n_embd,
        "N": int(config["non_embedding_params"]), "D": int(config["n_train"]), "steps": steps,
        "epochs_seen": round(steps * config["batch_size"] / config["n_train"], 2),
        "val_loss": float(best["val_loss"]), "val_acc": float(best["val_acc"]), "best_step": int(best["step"]),
        "val_loss_final": float(log["val_loss"].iloc[-1]), "n_val_strings": int(config.get("eval_max_strings") or config["n_val"]),
        "seconds": round(seconds, 1), "reused": reused,
    }


_STRINGS: list[str] | None = None


def _init_worker(strings: list[str]) -> None:
    global _STRINGS
    _STRINGS = strings


def _train_one(cfg: SweepConfig, model: str, size: int | None, n_train: int, run_dir: str, threads: int) -> dict:
    from .train import pretrain

    pcfg = pretrain_config(cfg, model, size, n_train, threads)
    t0 = time.perf_counter()
    # resume a half-finished run of this configuration; a run of another one (the sweep changed) starts over
    pretrain(_STRINGS, pcfg, run_dir, resume=_same_config(Path(run_dir), pcfg), progress=False)
    return _row(Path(run_dir), model, size, time.perf_counter() - t0, reused=False)


def _n_train(strings: list[str], cfg: SweepConfig) -> int:
    from .train import split_strings

    return len(split_strings(sorted(set(strings)), cfg.val_fraction, cfg.seed)[0])


def run_sweep(cfg: SweepConfig, out_dir: str | os.PathLike, strings: list[str] | None = None, jobs: int = 1,
              progress: bool = True) -> pd.DataFrame:
    """Train every missing (model, data size) run of ``cfg`` and return one row per run.

    ``strings`` defaults to the offline pre-training corpus (:func:`cloudlib.data.load_pretraining_corpus`).
    Columns: run, model, n_layer, n_embd, N, D, steps, epochs_seen, val_loss (best), val_acc, best_step,
    val_loss_final, n_val_strings, seconds (training time of this call; 0 for reused runs), reused.
    """
    from tqdm.auto import tqdm

    if strings is None:
        from .data import load_pretraining_corpus

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
            run_dir = out / run_name(model, size)
            if _finished(run_dir, pretrain_config(cfg, model, size, n_train)):
                rows.append(_row(run_dir, model, size, 0.0, reused=True))
            else:
                todo.append((model, size, str(run_dir)))
    # the most expensive first, so parallel workers finish together
    from . import model as cloud_model

    def cost(item):
        model, size, _ = item
        spec = cloud_model.preset(model)
        steps = pretrain_config(cfg, model, size, n_train).max_steps
        return steps * (12 * spec.n_layer * spec.n_embd ** 2 + 1)

    todo.sort(key=cost, reverse=True)
    bar = tqdm(total=len(todo), disable=not progress or not todo, desc="scaling sweep", unit="run")
    if jobs == 1 or len(todo) <= 1:
        _init_worker(strings)
        for model, size, run_dir in todo:
            rows.append(_train_one(cfg, model, size, n_train, run_dir, threads))
            bar.update(1)
    else:
        import multiprocessing as mp

        with ProcessPoolExecutor(max_workers=jobs, mp_context=mp.get_context("spawn"), initializer=_init_worker,
                                 initargs=(strings,)) as pool:
            futures = [pool.submit(_train_one, cfg, m, s, n_train, d, threads) for m, s, d in todo]
            for fut in as_completed(futures):
                rows.append(fut.result())
                bar.update(1)
    bar.close()
    table = pd.DataFrame(rows)
    order = {m: i for i, m in enumerate(cfg.models)}
    table = table.assign(_o=table["model"].map(order)).sort_values(["_o", "D"]).drop(columns="_o")
    return table.reset_index(drop=True)
