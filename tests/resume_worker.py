"""A fit run in its own process for the kill-and-resume tests (tests/test_engine.py).

    python tests/resume_worker.py {finetune,finetune-do0,debye,curves} CHECKPOINT_DIR OUT.json [--die-at STEP]

Fits a tiny random encoder on real rows with checkpoints in CHECKPOINT_DIR (resuming whatever is there) and
writes the predictions and the history to OUT.json. ``--die-at STEP`` ends the process abruptly
(``os._exit``: no cleanup, no finally blocks, as a SIGKILL would) when the engine is about to run STEP.
"""

from __future__ import annotations

import json
import os
import sys

import numpy as np
import pandas as pd

from cloudlib import cloud_debye, engine
from cloudlib.config import FinetuneConfig
from cloudlib.finetune import fit, predict_strings
from cloudlib.matbench_data import load_paper_dielectric_scope
from cloudlib.registry import fetch

kind, ckpt, out = sys.argv[1:4]
die_at = int(sys.argv[sys.argv.index("--die-at") + 1]) if "--die-at" in sys.argv else None
if die_at is not None:
    step_once = engine.Stepper.__call__

    def dying(self, step, idx):
        if step == die_at:
            os._exit(17)
        return step_once(self, step, idx)

    engine.Stepper.__call__ = dying

cfg = FinetuneConfig(
    encoder="tiny",
    pretrained=False,
    epochs=4,
    batch_size=32,
    lr=1e-3,
    head_lr=2e-3,
    val_fraction=0.2,
    ckpt_every=5,
    threads=1,
)
if kind == "finetune-do0":  # the laptop recipe's fast path: no dropout in the encoder (attention in matrix products)
    kind, cfg = "finetune", cfg.replace(encoder_dropout=0.0)
if kind == "finetune":
    rows = load_paper_dielectric_scope().iloc[:400]
    res = fit(rows["scope"], rows["n"], cfg, progress=False, checkpoint_dir=ckpt, resume=True)
    pred, history = predict_strings(res, rows["scope"].iloc[:50]), res.history
else:
    rows = pd.read_csv(fetch("cloud/cloud_cv_train_and_val.csv")).iloc[:400]
    if kind == "debye":
        res = cloud_debye.fit_debye(
            rows["cloud"], rows["cv"], rows["n_atoms"], cfg, progress=False, checkpoint_dir=ckpt, resume=True
        )
        pred = res.theta(list(rows["cloud"].iloc[:50]))
    else:
        T = np.array([50.0, 300.0])
        res = cloud_debye.fit_curves(
            rows["cloud"],
            T,
            np.c_[rows["cv"] * 0.4, rows["cv"]],
            rows["n_atoms"],
            cfg,
            progress=False,
            checkpoint_dir=ckpt,
            resume=True,
        )
        pred = res.heat_capacity(list(rows["cloud"].iloc[:50]), T, rows["n_atoms"].iloc[:50]).ravel()
    history = res.history
with open(out, "w") as f:
    json.dump(
        {
            "prediction": np.asarray(pred).tolist(),
            "best_epoch": res.best_epoch,
            "history": history.drop(columns=["seconds", "tokens_per_s"]).to_dict(orient="list"),
        },
        f,
    )
