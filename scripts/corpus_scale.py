"""Issue 15: peak memory and speed of ``pretrain --corpus`` as the corpus grows (30 k, 300 k, 3 M strings).

The corpora are built from every real SCOPE string the project has (the authors' 10 k sample of their OPTIMADE
corpus, dielectric fold 0, the Cv splits) by augmentation, **labelled so** (``synthetic`` in the output): the real
strings come first; then copies of them with each composition fraction redrawn from the tokenizer's fractions
(valid tokens, other stoichiometries: strings for measuring memory and speed, not crystals). Each size is written as
CSV shards of 100 k strings and pre-trained on in its own process for a few steps at the shipped size (4 x 128, batch
128) by the command line, so the peak RSS is that run's alone:

    python scripts/corpus_scale.py [--sizes 30000 300000 3000000] [--steps 30] [--out data/corpus_scale]

Writes ``OUT/NAME.json`` (default ``streamed``): per size the strings, CSV bytes per string, token-shard bytes per
string, peak RSS of the pre-training process (the overall peak, and the peak before its first step), its wall time,
the training seconds and real tokens/s, the machine. The token shards are built in a child process
(``pretrain.corpus_shards``), so the overall peak is the larger of the build's and the training's.
``OUT/scale.json`` is the same measurement before streaming (commit c2bc65a: strings read into memory).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

from cloudlib.corpus import BLOCK_TOKENS, n_tokens
from cloudlib.io import write_json
from cloudlib.registry import fetch
from cloudlib.study import machine
from cloudlib.tokenizer import FRACTIONS

SHARD = 100_000


def real_strings() -> list[str]:
    parts = [
        pd.read_csv(fetch("cloud/pretrain_cloud_10k.csv"))["cloud"],
        pd.read_csv(fetch("cloud/finetune_dielectric_train_and_val.csv"))["scope"],
        pd.read_csv(fetch("cloud/finetune_dielectric_test.csv"))["scope"],
        pd.read_csv(fetch("cloud/cloud_cv_train_and_val.csv"))["cloud"],
        pd.read_csv(fetch("cloud/cloud_cv_test.csv"))["cloud"],
    ]
    return [s for s in dict.fromkeys(pd.concat(parts).astype(str)) if n_tokens(s) <= BLOCK_TOKENS]


def augmented(real: list[str], n: int, seed: int = 0) -> list[str]:
    """``n`` unique strings: the real ones, then real ones with their composition fractions redrawn."""
    rng = np.random.default_rng(seed)
    out = dict.fromkeys(real[:n])
    fractions = list(FRACTIONS[1:])  # never 0.0
    while len(out) < n:
        base = real[int(rng.integers(len(real)))]
        head, _, comp = base.rpartition("|")
        words = comp.split()
        words[1::2] = [fractions[i] for i in rng.integers(len(fractions), size=len(words[1::2]))]
        out.setdefault(f"{head}| {' '.join(words)}", None)
    return list(out)


def measure(folder: Path, work: Path, steps: int) -> dict:
    run = work / "run"
    cmd = [
        sys.executable, "-m", "cloudlib", "pretrain", "--preset", "smoke", "--corpus", str(folder), "--out", str(run),
        "--set", "model=mini", "--set", "batch_size=128", "--set", f"max_steps={steps}", "--set", f"eval_every={steps}",
        "--set", "ckpt_every=100000", "--set", "eval_max_strings=512", "--set", "lr=0.001", "-q",
    ]  # fmt: skip
    probe = (
        "import resource, subprocess, sys, json; r = subprocess.run(sys.argv[1:]); "
        "print(json.dumps({'rc': r.returncode, 'maxrss_kb': resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss}))"
    )
    t0 = time.perf_counter()
    r = subprocess.run([sys.executable, "-c", probe, *cmd], capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if r.returncode:
        raise RuntimeError(r.stderr[-2000:])
    got = json.loads(r.stdout.strip().splitlines()[-1])
    if got["rc"]:
        raise RuntimeError(f"pretrain exited {got['rc']}: {r.stderr[-2000:]}")
    summary = json.loads((run / "summary.json").read_text())
    built = run / "token_shards"
    manifest = json.loads((built / "manifest.json").read_text()) if built.is_dir() else None
    config = json.loads((run / "config.json").read_text())
    log = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines() if line.strip()]
    return {
        "peak_rss_mb": round(got["maxrss_kb"] / 1024, 1),  # the largest of the build child and the trainer
        # the trainer's peak once the rows are opened, split and their lengths read, before the first step: the
        # corpus-dependent part (the steps add activations that depend on the batches' widths, not on the corpus)
        "peak_rss_mb_before_training": config.get("peak_rss_mb_before_training"),
        "wall_s": round(wall, 1),
        "train_s": summary["seconds"],
        "outside_training_s": round(wall - summary["seconds"], 1),
        "tokens_per_s": log[-1].get("tokens_per_s"),
        "n_train": config["n_train"],
        "n_val": config["n_val"],
        "steps": summary["steps"],
        **(
            {
                "token_shard_bytes_per_string": round(
                    sum(f.stat().st_size for f in built.glob("*.npy")) / manifest["totals"]["strings"], 1
                ),
                "tokens_per_string": round(manifest["totals"]["tokens"] / manifest["totals"]["strings"], 1),
                "corpus_strings": config.get("corpus_strings"),
            }
            if manifest
            else {}
        ),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[30_000, 300_000, 3_000_000])
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--out", default="data/corpus_scale")
    ap.add_argument("--name", default="streamed", help="writes OUT/NAME.json")
    args = ap.parse_args(argv)
    real = real_strings()
    rows = []
    for size in args.sizes:
        with tempfile.TemporaryDirectory() as tmp:
            work = Path(tmp)
            shards = work / "shards"
            shards.mkdir()
            strings = augmented(real, size)
            for i in range(0, size, SHARD):
                pd.DataFrame({"scope": strings[i : i + SHARD]}).to_csv(
                    shards / f"part-{i // SHARD:05d}.csv", index=False
                )
            nbytes = sum(p.stat().st_size for p in shards.iterdir())
            row = {
                "strings": size,
                "real": min(size, len(real)),
                "synthetic": max(0, size - len(real)),
                "shard_bytes_per_string": round(nbytes / size, 1),
                **measure(shards, work, args.steps),
            }
        print(json.dumps(row), flush=True)
        rows.append(row)
        out = {
            "command": "python scripts/corpus_scale.py " + " ".join(argv if argv is not None else sys.argv[1:]),
            "what": "pretrain --corpus on CSV shards (tokenized once into on-disk token shards, streamed through "
            "memory maps); 4 x 128, batch 128",
            "sizes": rows,
            "machine": machine(),
        }
        write_json(Path(args.out) / f"{args.name}.json", out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
