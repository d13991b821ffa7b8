"""Issue 24: the engine's pre-training step against torch.compile modes, no dropout and an all-bf16 model, one run.

    python -m benchmarks.step_variants [engine compile-default compile-max-autotune-no-cudagraphs bf16-weights
        dropout0 dropout0-sdpa]
        [--steps 20] [--repeats 4] [--json FILE]

Every variant is the engine's own step (:class:`cloudlib.engine.Stepper` on :class:`cloudlib.pretrain.MLMObjective`,
bf16 autocast, fast CPU dropout, fused AdamW) on a 4 x 128 BERT from the same initial weights, batches of 128 of
the authors' 10 k strings, 2 threads; variants take turns, repeat by repeat, and the median ms/step is compared with
the first variant's. ``compile-MODE``: ``torch.compile(model, dynamic=True[, mode=MODE])`` (warm-up reported
apart, untimed). ``dropout0``: the same model with dropout 0 (hidden states and attention probabilities; the
engine's attention in matrix products); ``dropout0-sdpa``: dropout 0 with SDPA's fused attention.
``bf16-weights``: the whole model cast to bf16 (no casts left for autocast to do): an upper bound for a bf16
residual stream with fp32 master weights, not a training recipe (no master weights here).
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("variants", nargs="*", default=["engine", "compile-default", "bf16-weights"])
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--repeats", type=int, default=4)
    ap.add_argument("--warmup", type=int, default=6)
    ap.add_argument("--json")
    args = ap.parse_args(argv)

    import pandas as pd
    import torch
    from transformers import BertForMaskedLM

    from cloudlib import engine
    from cloudlib import model as cm
    from cloudlib.config import PretrainConfig
    from cloudlib.io import write_json
    from cloudlib.pretrain import MaskedLMLoss, MLMObjective
    from cloudlib.registry import fetch
    from cloudlib.study import machine
    from cloudlib.tokenizer import make_tokenizer

    torch.set_num_threads(2)
    tok = make_tokenizer()
    data = engine.encode(tok, pd.read_csv(fetch("cloud/pretrain_cloud_10k.csv"))["cloud"].tolist())
    cfg = PretrainConfig(model="mini", batch_size=128, seed=0, max_steps=100_000, precision="bf16")
    size = cm.preset("mini").replace(dropout=cfg.dropout)
    batches = engine.epoch_batches(data.lengths, 128, 0, 0, cfg.bucket_batches)
    d = engine.Dist(device=torch.device("cpu"))

    def make(kind: str) -> engine.Stepper:
        torch.manual_seed(0)
        p = 0.0 if kind.startswith("dropout0") else size.dropout
        net = engine.use_dropout(
            MaskedLMLoss(BertForMaskedLM(cm.bert_config(size.replace(dropout=p), tok))).train(), "fast"
        )
        model = net
        if kind == "dropout0-sdpa":
            engine.use_dropout(net, "torch")  # nothing to drop: attention is SDPA's fused kernel
        if kind.startswith("compile-"):
            mode = kind.split("-", 1)[1]
            model = torch.compile(net, dynamic=True, **({} if mode == "default" else {"mode": mode}))
        elif kind == "bf16-weights":
            net = model = net.to(torch.bfloat16)
        elif kind not in ("engine", "dropout0", "dropout0-sdpa"):
            raise SystemExit(f"unknown variant {kind!r}")
        opt = engine.make_optimizer(engine.param_groups([(net, cfg.lr)], 0.01), d.device, True)
        obj = MLMObjective(data, data.rows([]), tok, cfg, d.device)
        return engine.Stepper(model, net, obj, opt, engine.make_scheduler(opt, cfg, cfg.max_steps), cfg, d)

    steppers = {k: make(k) for k in args.variants}
    warm = {}
    for k, s in steppers.items():
        t0 = time.perf_counter()
        for i in range(args.warmup):
            s(i, batches[i])
        warm[k] = round(time.perf_counter() - t0, 1)
    ms = {k: [] for k in steppers}
    for _ in range(args.repeats):
        for k, s in steppers.items():
            t0 = time.perf_counter()
            for i in range(args.warmup, args.warmup + args.steps):
                s(i, batches[i])
            ms[k].append(round((time.perf_counter() - t0) / args.steps * 1000, 2))
    first = args.variants[0]
    out = {
        "command": "python -m benchmarks.step_variants " + " ".join(argv or []),
        "warmup_s": warm,
        "ms_per_step": ms,
        "median_ms_per_step": {k: float(np.median(v)) for k, v in ms.items()},
        "speed_vs_first": {k: round(float(np.median(ms[first]) / np.median(v)), 3) for k, v in ms.items()},
        "machine": machine(),
        "torch": torch.__version__,
    }
    print(json.dumps(out, indent=1))
    if args.json:
        write_json(args.json, out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
