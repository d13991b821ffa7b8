"""Ship a finished pre-training run as models/cloud-laptop: weights, tokenizer, its training log and a card with
the config, the corpus's hash, the wall time, the machine and the command that reproduces it.

    python -m cloudlib pretrain --preset long --out runs/cloud-long [--resume]   # the run (resumable)
    python scripts/ship_encoder.py runs/cloud-long [--dest models/cloud-laptop] [--sizing sizing.json]

The corpus hash is the sha256 of the run's corpus strings (sorted, one per line), the same strings that
``cloudlib.corpus.load_pretraining_corpus`` gives for the config's ``holdout``; the card also names the
committed corpus files (``data/corpus``) and their sha256.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import platform
import sys
from pathlib import Path

import pandas as pd
import torch

from cloudlib import model as cloud_model
from cloudlib import paths
from cloudlib.config import PretrainConfig, from_dict, preset
from cloudlib.corpus import load_pretraining_corpus, shipped_corpus_dir
from cloudlib.io import write_csv
from cloudlib.registry import sha256_file


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def corpus_digest(strings) -> str:
    return hashlib.sha256("\n".join(sorted(strings)).encode()).hexdigest()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("run", help="a finished pretrain output folder (config.json, log.jsonl, summary.json, model/)")
    ap.add_argument("--dest", default="models/cloud-laptop")
    ap.add_argument("--preset", default="long")
    ap.add_argument("--sizing", help="JSON printed by scripts/size_encoder.py (how N was chosen)")
    args = ap.parse_args()
    run = Path(args.run)
    run_config = json.loads((run / "config.json").read_text())
    summary = json.loads((run / "summary.json").read_text())
    cfg = from_dict(PretrainConfig, {k: v for k, v in run_config.items() if k in PretrainConfig.__dataclass_fields__})
    log = pd.read_json(run / "log.jsonl", lines=True)
    corpus, table = load_pretraining_corpus(limit=cfg.corpus_limit, progress=False, holdout=cfg.holdout)
    final = log.dropna(subset=["val_loss"]).iloc[-1]
    base = preset("pretrain", args.preset).to_dict()
    sets = "".join(f" --set {k}={v}" for k, v in cfg.to_dict().items() if v != base.get(k) and k != "holdout")
    card = {
        "preset": args.preset,
        "config": cfg.to_dict(),
        "n_train": run_config["n_train"],
        "n_val": run_config["n_val"],
        "non_embedding_params": run_config["non_embedding_params"],
        "steps": int(summary["steps"]),
        "final_val_loss": round(float(final["val_loss"]), 4),
        "final_val_acc": round(float(final["val_acc"]), 4),
        "train_seconds": round(float(log["seconds"].sum()), 1) if "seconds" in log else summary["seconds"],
        "corpus": {
            "unique_strings": len(corpus),
            "sha256_sorted_strings": corpus_digest(corpus.index),
            "holdout": list(cfg.holdout),
            "limit_per_source": cfg.corpus_limit,
            "files_sha256": {p.name: sha256_file(p) for p in sorted(shipped_corpus_dir().glob("corpus-*"))},
            "sources_new_unique": table["new unique"].to_dict(),
        },
        "machine": {
            "cpu": _cpu_model(),
            "torch": torch.__version__,
            "threads": cfg.threads,
            "python": platform.python_version(),
        },
        "reproduce": f"python -m cloudlib pretrain --preset {args.preset}{sets} --out runs/{run.name} [--resume]; "
        f"python scripts/ship_encoder.py runs/{run.name} --preset {args.preset} --dest {args.dest}",
        "log": "log.csv (one row per evaluation)",
    }
    if args.sizing:
        card["sizing"] = json.loads(Path(args.sizing).read_text())
    dest = cloud_model.export_encoder(run / "model", paths.resolve(args.dest), card)
    write_csv(dest / "log.csv", log, index=False)
    print(json.dumps({k: v for k, v in card.items() if k != "config"}, indent=1))
    print(f"-> {dest}", file=sys.stderr)


if __name__ == "__main__":
    main()
