"""Issue 15, item 4: check the CUDA path in a few minutes (prepared for a GPU machine; runs on CPU with --allow-cpu).

    python scripts/gpu_check.py [--model base] [--batch-size 256] [--steps 30] [--out gpu_check.json]
    python scripts/gpu_check.py --allow-cpu --model tiny --batch-size 16 --steps 2 --preset smoke   # what CI runs

Three checks, one JSON (``--out``):

1. **Loss parity on a fixed batch**: one BERT (``--model``, seeded weights), one batch of the authors' strings with
   fixed MLM masks, eval mode: the loss on the CPU in fp32 against the loss on the device in fp32 and under bf16
   autocast (relative differences; bf16 is expected within ~2e-2, fp32 within ~1e-4).
2. **Speed and MFU**: ``benchmarks.bench.bench_pretrain`` on the device (the authors' setup and the engine, tokens/s,
   ms/step, MFU against the bf16 matmul peak measured in the same run).
3. **The engine end to end**: ``pretrain`` with ``--preset`` (default ``paper``: BERT-base, bf16 autocast, fused
   AdamW on CUDA) for ``--steps`` steps on the offline corpus, a checkpoint written, the run's tokens/s from its log.

Exit 0 when the parity holds and every step ran; 1 otherwise (the JSON says which).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path


def loss_parity(model: str, batch_size: int, device, seed: int = 0) -> dict:
    import pandas as pd
    import torch
    from transformers import BertForMaskedLM

    from cloudlib import engine
    from cloudlib import model as cm
    from cloudlib.pretrain import MaskedLMLoss, mask_tokens
    from cloudlib.registry import fetch
    from cloudlib.tokenizer import make_tokenizer

    tok = make_tokenizer()
    strings = pd.read_csv(fetch("cloud/pretrain_cloud_10k.csv"))["cloud"].tolist()[:batch_size]
    ids, mask = engine.encode(tok, strings).batch(torch.arange(len(strings)))
    inputs, labels = mask_tokens(ids, mask, tok, 0.15, torch.Generator().manual_seed(seed))
    torch.manual_seed(seed)
    net = MaskedLMLoss(BertForMaskedLM(cm.bert_config(cm.preset(model), tok))).eval()
    out = {}
    with torch.no_grad():
        out["reference_cpu_fp32"] = float(net(inputs, mask, labels)[0])
        net = net.to(device)
        args = [t.to(device) for t in (inputs, mask, labels)]
        for prec in ("fp32", "bf16"):
            with engine.autocast(device, prec):
                out[f"{device.type}_{prec}"] = float(net(*args)[0])
    ref = out["reference_cpu_fp32"]
    rel = {k: abs(v - ref) / abs(ref) for k, v in out.items() if k != "reference_cpu_fp32"}
    tol = {f"{device.type}_fp32": 1e-4, f"{device.type}_bf16": 2e-2}
    return {"losses": out, "relative_difference": rel, "tolerance": tol, "ok": all(rel[k] <= tol[k] for k in rel)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="base")
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--preset", default="paper", help="pretrain preset of the end-to-end check")
    ap.add_argument("--out", default="gpu_check.json")
    ap.add_argument("--allow-cpu", action="store_true", help="run on the CPU when there is no CUDA device")
    args = ap.parse_args(argv)

    import torch

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # benchmarks/
    from benchmarks.bench import bench_pretrain
    from cloudlib.io import write_json
    from cloudlib.pretrain import pretrain_preset
    from cloudlib.study import machine

    if not torch.cuda.is_available() and not args.allow_cpu:
        print("no CUDA device: nothing to check (pass --allow-cpu to run the same checks on the CPU)", file=sys.stderr)
        return 1
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    report = {
        "command": "python scripts/gpu_check.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "device_type": device.type,
        "torch": torch.__version__,
        "machine": machine(),
    }
    t0 = time.perf_counter()
    report["parity"] = loss_parity(args.model, min(args.batch_size, 256), device)
    report["parity_s"] = round(time.perf_counter() - t0, 1)

    t0 = time.perf_counter()
    bench = bench_pretrain(
        model=args.model, batch_size=args.batch_size, steps=args.steps, repeats=2, warmup=2, levers=False
    )
    keep = ("real_tokens_per_s", "ms_per_step", "ratios", "peak_tflops", "mfu (vs bf16 peak)", "fixed_batch_loss")
    report["speed"] = {k: bench[k] for k in keep if k in bench}
    report["speed_s"] = round(time.perf_counter() - t0, 1)

    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        over = {"max_steps": args.steps, "eval_every": args.steps, "ckpt_every": args.steps, "eval_max_strings": 1024}
        summary = pretrain_preset(args.preset, tmp, overrides=over, progress=False)
        log = [json.loads(x) for x in (Path(tmp) / "log.jsonl").read_text().splitlines() if x.strip()]
        report["engine"] = {
            "preset": args.preset,
            "steps": summary["steps"],
            "checkpoint_written": (Path(tmp) / "checkpoint.pt").exists(),
            "final": summary["final"],
            "tokens_per_s": log[-1].get("tokens_per_s") if log else None,
        }
    report["engine_s"] = round(time.perf_counter() - t0, 1)
    report["ok"] = bool(
        report["parity"]["ok"] and report["engine"]["steps"] == args.steps and report["engine"]["checkpoint_written"]
    )
    write_json(args.out, report)
    print(json.dumps(report, indent=1, default=str))
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
