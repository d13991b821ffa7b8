"""Issue 24: the thread layout of ``--jobs 2`` fits: one fine-tuning process with 2 threads, two concurrent processes
with 1 thread each (what ``--jobs 2`` does on 2 cores: ``study`` gives each job cpu_count // jobs threads), and two
with 2 threads each (oversubscribed).

    python -m benchmarks.thread_layout [--json FILE]

Each process runs ``python -m benchmarks finetune``'s measurement of the engine (bf16, 4 x 128, batch 32, 40 timed
steps x 3 repeats); the total is the sum of the processes' engine steps/s.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

LAYOUTS = [(2, 1), (1, 2), (2, 2), (2, 1), (1, 2)]  # (threads, processes)


def _child(threads: int) -> None:
    import torch

    torch.set_num_threads(threads)
    from benchmarks.bench import bench_finetune

    r = bench_finetune(model="mini", batch_size=32, steps=40, repeats=3, warmup=5, precisions=("bf16",), levers=False)
    print(json.dumps({"steps_per_s": r["steps_per_s"]["cloudlib bf16"]}))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--json")
    ap.add_argument("--child", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        _child(args.child)
        return 0
    from cloudlib.io import write_json
    from cloudlib.study import machine

    rows = []
    for threads, n in LAYOUTS:
        env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
        cmd = [sys.executable, "-m", "benchmarks.thread_layout", "--child", str(threads)]
        t0 = time.perf_counter()
        procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, env=env) for _ in range(n)]
        per = [json.loads(p.communicate()[0].strip().splitlines()[-1])["steps_per_s"] for p in procs]
        rows.append({"threads": threads, "processes": n, "steps_per_s": per, "total_steps_per_s": round(sum(per), 2),
                     "wall_s": round(time.perf_counter() - t0, 1)})  # fmt: skip
        print(json.dumps(rows[-1]), flush=True)
    out = {"command": "python -m benchmarks.thread_layout", "layouts": rows, "machine": machine()}
    if args.json:
        write_json(args.json, out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
