"""CLOUD-DEBYE recipe probes on the authors' training split, chosen on validation rows only.

Each probe is :func:`cloudlib.cloud_debye.fit_debye` on the authors' 1,213 training rows with the laptop
``debye`` preset plus overrides; the fit carves its 10 % validation rows (seeded) out of them and keeps the best
epoch by validation MAE of Cv(300 K). Only ``val_mae`` is printed and written: the test split is not read.

    python scripts/debye_probe.py NAME [--set key=value ...] [--out data/debye_recipe]

Writes ``OUT/NAME.json``: overrides, resolved config, per-epoch validation MAE, best epoch and seconds.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import pandas as pd
import torch
import yaml

from cloudlib import cloud_debye, engine
from cloudlib.config import preset
from cloudlib.io import write_json
from cloudlib.registry import fetch
from cloudlib.study import machine


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("name")
    ap.add_argument("--set", nargs="*", default=[], help="FinetuneConfig overrides key=value (YAML values)")
    ap.add_argument("--out", default="data/debye_recipe")
    args = ap.parse_args(argv)
    overrides = {k: yaml.safe_load(v) for k, _, v in (p.partition("=") for p in args.set)}
    cfg = preset("debye", "laptop", **overrides)
    cpu = torch.device("cpu")
    train = pd.read_csv(fetch("cloud/cloud_cv_train_and_val.csv"))
    t0 = time.perf_counter()
    fit = cloud_debye.fit_debye(train["cloud"], train["cv"], train["n_atoms"], cfg, progress=False)
    hist = fit.history
    out = {
        "name": args.name,
        "command": "python scripts/debye_probe.py "
        + " ".join([args.name, *(["--set", *args.set] if args.set else [])]),
        "overrides": overrides,
        "config": cfg.to_dict(),
        "val_mae": float(hist["val_mae"].min()),
        "best_epoch": fit.best_epoch,
        "val_mae_by_eval": [round(float(v), 4) for v in hist["val_mae"].dropna()],
        "seconds": round(time.perf_counter() - t0, 1),
        "engine": {"cpu_dropout": engine.CPU_DROPOUT, "precision": engine.resolve_precision(cfg.precision, cpu)},
        "machine": machine(),
    }
    write_json(Path(args.out) / f"{args.name}.json", out)
    print(json.dumps({k: out[k] for k in ("name", "overrides", "val_mae", "best_epoch", "seconds")}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
