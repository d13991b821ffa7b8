"""Size a pre-training run by notebook 04's compute-optimal N(C): measure this machine's training speed, turn a
wall-clock budget into the fit's compute units, and print N_opt and the nearest "L{layers}xD{width}" spec.

The scaling fit (notebook 04) uses C = 6 N D with N the non-embedding parameters and D the unique training
strings, each seen 3 times (the sweep's 3 epochs). A run that does F training FLOP/s (6 N per token, measured
here on the candidate model) for S seconds over strings of T tokens on average therefore has
C = F S / (3 T) in those units, whatever its N. The law's parameters are passed in (the laptop sweep's fit).

    python scripts/size_encoder.py --minutes 70 --threads 1 --alpha 0.365 --beta 0.448 --A 32.6 --B 76.1
"""

from __future__ import annotations

import argparse
import json
import math
import time

import numpy as np
import torch

from cloudlib import engine
from cloudlib import model as cloud_model
from cloudlib.config import preset
from cloudlib.corpus import load_pretraining_corpus
from cloudlib.pretrain import MaskedLMLoss, MLMObjective, split_strings
from cloudlib.scaling import HoffmannFit, compute_optimal
from cloudlib.tokenizer import make_tokenizer


def tokens_per_second(spec: str, strings: list[str], threads: int, steps: int = 40, batch: int = 128) -> float:
    """Training tokens/s of the engine's own MLM step (:class:`cloudlib.engine.Stepper`, bf16 autocast) on
    real corpus batches of ``batch`` strings in the engine's length-bucketed order (as training takes them:
    unbucketed batches would pad to ~2x the real tokens); the first 5 steps are not timed."""
    tok = make_tokenizer()
    cfg = preset("pretrain", "long", model=spec, threads=threads, max_steps=steps, batch_size=batch)
    d = engine.Dist(device=torch.device("cpu"))
    with engine.torch_threads(threads, d):
        data = engine.encode(tok, strings)
        order = [b for b in engine.epoch_batches(data.lengths, batch, 0, cfg.seed, cfg.bucket_batches)]
        net = MaskedLMLoss(cloud_model.build_mlm(cloud_model.preset(spec), tok, seed=0)).train()
        objective = MLMObjective(data, data.rows([]), tok, cfg, d.device)
        opt = engine.make_optimizer(engine.param_groups([(net, cfg.lr)], cfg.weight_decay), d.device)
        step = engine.Stepper(net, net, objective, opt, engine.make_scheduler(opt, cfg, steps), cfg, d)
        n = 0
        for i in range(steps):
            if i == 5:
                t0, n = time.perf_counter(), 0
            _, stats = step(i, order[i])
            n += stats["tokens"]
        return n / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--minutes", type=float, required=True)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--probe", default="L4xD160", help="the model whose speed is measured")
    for k in ("alpha", "beta", "A", "B"):
        ap.add_argument(f"--{k}", type=float, required=True)
    args = ap.parse_args()
    corpus, _ = load_pretraining_corpus(progress=False)
    train, _ = split_strings(list(corpus.index), 0.05, 0)
    T = float(np.mean([len(s.split()) + 2 for s in train]))  # + [CLS] and [SEP]
    tps = tokens_per_second(args.probe, train, args.threads)
    n = cloud_model.n_params(cloud_model.build_mlm(cloud_model.preset(args.probe), make_tokenizer(), seed=0))
    flops = 6.0 * n * tps
    C = flops * args.minutes * 60 / (3.0 * T)
    fit = HoffmannFit(
        E=0.0, A=args.A, B=args.B, alpha=args.alpha, beta=args.beta, objective=0.0, n_points=0, residuals=np.zeros(0)
    )
    opt = compute_optimal(fit, [C]).iloc[0]
    cands = {f"L4xD{w}": 4 * 12 * w * w for w in range(64, 513, 32)}  # 4 layers, FFN 4x: 12 w^2 per layer
    best = min(cands, key=lambda k: abs(math.log(cands[k] / opt["N_opt"])))
    print(
        json.dumps(
            {
                "probe": args.probe,
                "probe_non_embedding_params": n,
                "threads": args.threads,
                "probe_tokens_per_s": round(tps),
                "train_flops_per_s": f"{flops:.3g}",
                "minutes": args.minutes,
                "mean_tokens_per_string": round(T, 2),
                "C_fit_units": f"{C:.3g}",
                "N_opt": round(float(opt["N_opt"])),
                "D_opt_strings_x3": round(float(opt["D_opt"])),
                "unique_training_strings": len(train),
                "nearest_4_layer_spec": best,
                "its_non_embedding_params_approx": cands[best],
                "fit": {k: getattr(args, k) for k in ("alpha", "beta", "A", "B")},
            },
            indent=1,
        )
    )


if __name__ == "__main__":
    main()
