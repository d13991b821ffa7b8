"""CLOUD-DEBYE recipe probes on the authors' training split, chosen on validation rows only.

Each probe is :func:`cloudlib.cloud_debye.fit_debye` on the authors' 1,213 training rows with the laptop
``debye`` preset plus overrides; the fit carves its 10 % validation rows (seeded) out of them and keeps the best
epoch by validation MAE of Cv(300 K). Only ``val_mae`` is printed and written: the test split is not read.

    python scripts/debye_probe.py NAME [--set key=value ...] [--out data/debye_recipe]
    python scripts/debye_probe.py NAME --members K [--save FOLDER]
    python scripts/debye_probe.py NAME ... --encoder-dropout 0     # the encoder's dropout layers at p = 0

Writes ``OUT/NAME.json``: overrides, resolved config, per-epoch validation MAE, best epoch and seconds. With
``--members K`` it fits the ensemble of K (:func:`cloudlib.cloud_debye.fit_ensemble`, as notebook 05 does) and
writes the MAE/MAD of Cv(300 K) on its 10 % calibration rows (no member trained or early-stopped on them) for
the first 1, ..., K members, and the band's calibration; ``--save`` keeps the ensemble (notebook 05 loads it through
``ensemble_from`` when it was trained with the notebook's settings).
"""

from __future__ import annotations

import argparse
import json
import sys
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
    ap.add_argument("--members", type=int, default=0, help="fit an ensemble of this many members instead")
    ap.add_argument("--save", default="", help="with --members: save the ensemble to this folder")
    ap.add_argument(
        "--encoder-dropout",
        type=float,
        default=None,
        help="the same as --set encoder_dropout=P: every dropout layer of the encoder at P (the head keeps cfg.dropout)",
    )
    args = ap.parse_args(argv)
    overrides = {k: yaml.safe_load(v) for k, _, v in (p.partition("=") for p in args.set)}
    if args.encoder_dropout is not None:
        overrides["encoder_dropout"] = args.encoder_dropout
    cfg = preset("debye", "laptop", **overrides)
    cpu = torch.device("cpu")
    train = pd.read_csv(fetch("cloud/cloud_cv_train_and_val.csv"))
    command = "python scripts/debye_probe.py " + " ".join(argv if argv is not None else sys.argv[1:])
    t0 = time.perf_counter()
    out = {"name": args.name, "command": command, "overrides": overrides, "config": cfg.to_dict()}
    if args.members:
        ens = cloud_debye.fit_ensemble(
            train["cloud"], train["cv"], train["n_atoms"], cfg, k=args.members, progress=False
        )
        out["members"] = args.members
        out["calibration"] = ens.calibration
        out["member_val_mae"] = [float(m.history.get("val_mae", pd.Series(dtype=float)).min()) for m in ens.members]
        out["member_best_epoch"] = [m.best_epoch for m in ens.members]
        if args.save:
            cloud_debye.save_ensemble(ens, args.save, card={"made_by": command, "training_rows": len(train)})
        shown = ("name", "members", "calibration", "seconds")
    else:
        fit = cloud_debye.fit_debye(train["cloud"], train["cv"], train["n_atoms"], cfg, progress=False)
        hist = fit.history
        out["val_mae"] = float(hist["val_mae"].min())
        out["best_epoch"] = fit.best_epoch
        out["val_mae_by_eval"] = [round(float(v), 4) for v in hist["val_mae"].dropna()]
        shown = ("name", "overrides", "val_mae", "best_epoch", "seconds")
    out["seconds"] = round(time.perf_counter() - t0, 1)
    out["engine"] = {"cpu_dropout": engine.CPU_DROPOUT, "precision": engine.resolve_precision(cfg.precision, cpu)}
    out["machine"] = machine()
    write_json(Path(args.out) / f"{args.name}.json", out)
    print(json.dumps({k: out[k] for k in shown}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
