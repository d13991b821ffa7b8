"""Train notebook 04's laptop scaling sweep once and commit it as data (``data/sweep/laptop``).

The laptop main job reads the grid's runs and the downstream fine-tunes from there instead of training them
(they take longer than the main job's budget allows); notebook 04 re-fits the scaling law, bootstraps it and
draws every figure from them. This command makes them, resumably (re-running it trains only what is missing):

    python scripts/ship_sweep.py [--preset laptop] [--jobs 2] [--work runs/sweep-laptop] [--dest data/sweep/laptop]

The downstream fine-tuning settings are read from ``params/<profile>.yaml`` (section ``04_scaling``) so the
notebook's key matches. Writes the parts of the sweep's stores (each run's config / summary / log under ``runs/``, no
weights; each downstream fine-tune under ``downstream/``, stamped with its key), ``runs.csv`` and ``provenance.json``
(sweep config, corpus sha256, wall times, machine).
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time

import yaml

from cloudlib import config, paths, sweep
from cloudlib.corpus import load_pretraining_corpus
from cloudlib.matbench_data import load_paper_dielectric_scope


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--preset", default="laptop")
    ap.add_argument("--profile", default="laptop", help="params/<profile>.yaml gives the downstream settings")
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--work", default="runs/sweep-laptop", help="where the runs (with weights) are trained")
    ap.add_argument("--dest", default="data/sweep/laptop")
    args = ap.parse_args(argv)

    params = yaml.safe_load((paths.repo_root() / "params" / f"{args.profile}.yaml").read_text())["04_scaling"]
    cfg = config.preset("sweep", args.preset)
    corpus, _ = load_pretraining_corpus(limit=cfg.corpus_limit, progress=False)
    strings = list(corpus.index)
    t0 = time.perf_counter()
    runs = sweep.run_sweep(cfg, args.work, strings=strings, jobs=args.jobs)
    sweep_wall = time.perf_counter() - t0
    print(runs.pivot(index="model", columns="D", values="val_loss").loc[list(cfg.models)].round(4).to_string())

    split = load_paper_dielectric_scope()
    train, test = split[split["split"] == "train_and_val"], split[split["split"] == "test"]
    rows = params.get("downstream_rows")
    if rows is not None:
        train, test = train.head(rows), test.head(rows)
    ft = config.preset("finetune", params["finetune_preset"], **(params.get("downstream_overrides") or {}))
    picks = sweep.corner_runs(runs, int(params["downstream_points"]))
    t1 = time.perf_counter()
    down, rho = sweep.downstream(picks, args.work, ft, train, test)
    down_wall = time.perf_counter() - t1
    down_key = sweep.downstream_key(ft, train, test, "n")
    print(down.to_string(index=False))
    print(f"Spearman(MLM loss, MAE) = {rho:.3f}")

    import hashlib

    corpus_sha = hashlib.sha256("\n".join(strings).encode()).hexdigest()
    provenance = {
        "command": "python scripts/ship_sweep.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "sweep_config": cfg.to_dict(),
        "corpus_strings": len(strings),
        "corpus_strings_sha256": corpus_sha,
        "downstream_key": down_key,
        "downstream_points": int(params["downstream_points"]),
        "spearman_loss_vs_mae": rho,
        "sweep_wall_seconds": round(sweep_wall, 1),
        "sweep_train_seconds_total": round(float(runs["seconds"].sum()), 1),
        "downstream_wall_seconds": round(down_wall, 1),
        "jobs": args.jobs,
        "machine": {"platform": platform.platform(), "processor": platform.processor(), "cpus": os.cpu_count()},
        "date": time.strftime("%Y-%m-%d"),
    }
    dest = sweep.ship(runs, args.work, args.dest, down=down, provenance=provenance)
    print(f"sweep {sweep_wall:.0f} s, downstream {down_wall:.0f} s -> {dest}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
