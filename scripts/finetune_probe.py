"""One fine-tuning probe on matbench_dielectric fold 0 (the authors' fold-0 strings), for choosing a recipe.

The fit carves its validation rows out of the fold's training rows (``val_fraction``, seeded); every choice is
made on ``val_mae``. The fold-0 test MAE is printed for the record, never for choosing. Test-time averaging over
equivalent orders (``--tta``) is scored post hoc on the same validation rows and the same fitted model.

    python scripts/finetune_probe.py NAME [--preset laptop] [--set key=value ...] [--tta 1 4] [--out DIR]
        [--engine now|before] [--encoder-dropout P]

Writes ``DIR/NAME.json`` (default ``results/probes``): config, best epoch, val / test MAE per tta, seconds.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import yaml

from cloudlib import engine, finetune, matbench_data, paths
from cloudlib.config import preset
from cloudlib.io import write_json
from cloudlib.registry import sha256_file


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("name")
    ap.add_argument("--preset", default="laptop")
    ap.add_argument("--set", nargs="*", default=[], help="FinetuneConfig overrides key=value (YAML values)")
    ap.add_argument("--tta", nargs="*", type=int, default=[1], help="test-time orders to score post hoc")
    ap.add_argument("--out", default="results/probes")
    ap.add_argument(
        "--engine",
        choices=["now", "before"],
        default="now",
        help="before: the engine before issue 24 on a CPU (torch dropout and SDPA, foreach AdamW)",
    )
    ap.add_argument(
        "--encoder-dropout",
        type=float,
        default=None,
        help="the same as --set encoder_dropout=P: every dropout layer of the encoder at P (the head keeps cfg.dropout)",
    )
    args = ap.parse_args(argv)
    if args.engine == "before":
        engine.CPU_DROPOUT, engine.CPU_FUSED_ADAMW = "torch", False
    overrides = {k: yaml.safe_load(v) for k, _, v in (p.partition("=") for p in args.set)}
    if args.encoder_dropout is not None:
        overrides["encoder_dropout"] = args.encoder_dropout
    cfg = preset("finetune", args.preset, **overrides)
    df = matbench_data.load_paper_dielectric_scope()
    train, test = df[df["split"] == "train_and_val"], df[df["split"] == "test"]
    t0 = time.perf_counter()
    result = finetune.fit(train["scope"], train["n"], cfg, progress=False)
    seconds = time.perf_counter() - t0
    val = train.iloc[result.val_index]
    scores = {}
    for k in args.tta:
        r = result.__class__(**{**result.__dict__, "config": result.config.replace(tta=k)})
        scores[k] = {
            "val_mae": float(np.mean(np.abs(r.predict(val["scope"]) - val["n"]))),
            "test_mae": float(np.mean(np.abs(r.predict(test["scope"]) - test["n"]))),
        }
    weights = paths.resolve(cfg.encoder) / "model.safetensors"
    out = {
        "name": args.name,
        "config": cfg.to_dict(),
        "encoder_sha256": sha256_file(weights) if weights.is_file() else None,
        "best_epoch": result.best_epoch,
        "history_val_mae": result.history["val_mae"].round(5).tolist(),
        "scores_by_tta": scores,
        "fit_seconds": round(seconds, 1),
        "engine": {"cpu_dropout": engine.CPU_DROPOUT, "cpu_fused_adamw": engine.CPU_FUSED_ADAMW},
        "command": " ".join(["python", *sys.argv]),
    }
    path = write_json(Path(args.out) / f"{args.name}.json", out, indent=1)
    print(json.dumps({"name": args.name, "best_epoch": result.best_epoch, "seconds": round(seconds), **scores}))
    print(f"-> {path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
