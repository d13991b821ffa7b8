"""Benchmarks that compare against a baseline in the same run and print ratios.

    python -m benchmarks scope [--n 1000] [--repeats 3]      # SCOPE + tokenizer
    python -m benchmarks tokenizer [--n 10000]
    python -m benchmarks pretrain [--model mini] [--batch-size 128] [--steps 20] [--repeats 3] [--no-levers]
    python -m benchmarks finetune [--model mini] [--batch-size 32] [--steps 20] [--repeats 3] [--no-levers]
    python -m benchmarks overlap [--sizes 8000 64000]            # overlapping-atoms check: memory, time

(from the repository root; the benchmarks are not part of the installed package).

``scope`` times, on the same structures in one process (first N of matbench_dielectric):

* **authors** — the CLOUD repository's ``generate_seq`` (:func:`benchmarks.authors.generate_seq`): pymatgen
  ``SpacegroupAnalyzer`` per structure, dict access to the spglib dataset, ``np.round`` on the fractional
  composition, the authors' own generator and Wyckoff tables (registry files ``cloud/generator.json``,
  ``cloud/wyckoff-...json``);
* **spglib floor** — ``spglib.get_symmetry_dataset`` alone on (lattice, frac, Z) cells extracted from the
  structures *before* the clock starts: the symmetry search every SCOPE implementation has to pay for;
* **cloudlib jobs=1 / jobs=2** — ``scope_table`` from the Structure objects, validation included;
* **jobs=1 vs spglib floor, chunk by chunk** — the two alternate on chunks of 100 structures and each chunk's best
  repeat counts (``scope_table``'s own fixed cost per call, ~0.3 ms, is paid per chunk): on a shared VM whole
  passes differ from one repeat to the next by more than the gap being measured.

Each method runs ``repeats`` times, interleaved; the best time counts. Outputs must be identical.
``tokenizer`` times padded int64 id tensors from raw strings with the authors' vocabulary format.

``pretrain`` times MLM training steps at one model size and batch size on the same real SCOPE strings
(``cloud/pretrain_cloud_10k.csv``), both models built from the same BertConfig, seed and weights, both in
train mode (same dropout), both stepped by AdamW with the same parameter groups and learning-rate schedule and
gradient clipping at 1.0:

* **authors** — the CLOUD repository's pipeline (:func:`benchmarks.authors.pretrain_batch`): every string
  tokenized on its own, padded to 64, masked by ``DataCollatorForLanguageModeling``, loss from
  ``BertForMaskedLM(input_ids, attention_mask, labels)`` (full-vocabulary head on all 64 positions), a plain
  backward / clip / step loop;
* **cloudlib fp32** / **cloudlib bf16** — the training engine's own step (:class:`cloudlib.engine.Stepper` on
  :class:`cloudlib.pretrain.MLMObjective`): ids encoded once, length-bucketed batches trimmed to their longest
  row, step-seeded masks, the MLM head on masked positions only; in fp32 and under bf16 autocast (bf16
  runs where it is native: CUDA, CPUs with AVX512-BF16 / AMX).

On a CPU, three more cloudlib setups in the last precision measure the levers of issue 24 one at a time:
**before** (the engine before it: torch's ``bernoulli_`` dropout and SDPA attention, foreach AdamW), **+fast
dropout** (:data:`cloudlib.engine.CPU_DROPOUT` = "fast": masks from 16 random bits per element, attention
probabilities dropped in :func:`cloudlib.engine.cloud_attention`) and **+fused AdamW**; "cloudlib bf16" is the
engine with its defaults as they are now, and the ratios ``... / before`` compare each with the engine before.

``finetune`` (:func:`bench_finetune`) times the engine's fine-tuning step (``[CLS]`` -> MLP head, L1) the same
way, against the authors' shapes (every batch padded to 64 positions, fp32, torch dropout) instead of their code.

All setups take the same batches of strings (grouping does not change the authors' cost: every row is 64).
A step's clock covers batch preparation and forward + backward + clip + AdamW + schedule (in the main process,
as with ``dataloader_num_workers=0``); the authors' batch preparation is also reported alone. Throughput counts
**real (non-pad) tokens only**. MFU = real tokens/s x ``flops_per_token(cfg, N, mean real length)`` / a peak
measured in the same run (``torch.mm`` on square matrices, same thread count), against the bf16 peak (the
hardware's best) and, for the fp32 setups, also against the fp32 peak. The authors' setup runs in fp32 on CPU
(their code has no CPU autocast) and under bf16 autocast on CUDA.
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time

import numpy as np


def _best(fn, repeats: int) -> tuple[float, object]:
    """Best wall time of ``repeats`` calls, with the cyclic garbage collector paused while timing (as
    ``timeit`` does): a full collection over a heap of thousands of pymatgen structures otherwise lands
    at random in whichever method happens to allocate the most."""
    import gc

    best, out = float("inf"), None
    for _ in range(repeats):
        gc.collect()
        gc.disable()
        try:
            t = time.perf_counter()
            out = fn()
            best = min(best, time.perf_counter() - t)
        finally:
            gc.enable()
    return best, out


def _spin(n: int) -> int:
    s = 0
    for i in range(n):
        s += i * i
    return s


def process_scaling_ceiling(n: int = 3_000_000, jobs: int = 2, repeats: int = 3) -> float:
    """Speed-up of ``jobs`` processes over one on pure-Python work with no I/O or shared data: the most
    any multi-process code can get on this machine (on 2 vCPUs of a VM it is often well below 2)."""
    import multiprocessing as mp

    one, _ = _best(lambda: [_spin(n) for _ in range(jobs)], repeats)
    with mp.get_context("fork").Pool(jobs) as pool:
        many, _ = _best(lambda: pool.map(_spin, [n] * jobs), repeats)
    return one / many


def chunk_times(methods: dict, n: int, chunk: int, repeats: int) -> tuple[dict, dict]:
    """Methods ``fn(a, b)`` over the items ``a:b``, in turns on the same chunks of ``chunk`` items, ``repeats`` times,
    the cyclic garbage collector paused while timing: (name -> seconds as an array [repeat, chunk], name -> each
    chunk's output of the first repeat). Summing each chunk's best takes out the noise of a shared machine: whole
    passes of a VM with busy neighbours differ by several per cent from one repeat to the next."""
    import gc

    spans = [(a, min(a + chunk, n)) for a in range(0, n, chunk)]
    times = {name: np.full((repeats, len(spans)), np.inf) for name in methods}
    first: dict = {name: [] for name in methods}
    for r in range(repeats):
        for s, (a, b) in enumerate(spans):
            for name, fn in methods.items():
                gc.collect()
                gc.disable()
                try:
                    t = time.perf_counter()
                    out = fn(a, b)
                    times[name][r, s] = time.perf_counter() - t
                finally:
                    gc.enable()
                if r == 0:
                    first[name].append(out)
    return times, first


def _chunked_floor_ratio(items: dict, cells: list, run_chunk, floor, repeats: int, chunk: int = 100) -> dict:
    """jobs=1 against the spglib floor chunk by chunk (:func:`chunk_times`), each chunk's best repeat counts."""
    keys = list(items)
    methods = {
        "cloudlib jobs=1": lambda a, b: run_chunk({k: items[k] for k in keys[a:b]}),
        "spglib floor": lambda a, b: floor(cells[a:b]),
    }
    times, _ = chunk_times(methods, len(keys), chunk, repeats)
    us = {k: 1e6 * v.min(axis=0).sum() / len(keys) for k, v in times.items()}
    return {
        "chunk": chunk,
        "microseconds a structure (sum of each chunk's best)": {k: round(v, 1) for k, v in us.items()},
        "jobs=1 / spglib floor": round(us["spglib floor"] / us["cloudlib jobs=1"], 3),
    }


def bench_scope(n: int = 1000, repeats: int = 3) -> dict:
    import spglib
    from pymatgen.symmetry import analyzer as sga

    from benchmarks.authors import generate_seq
    from cloudlib.matbench_data import load_matbench
    from cloudlib.registry import fetch
    from cloudlib.scope import MIN_DISTANCE, cell_to_scope, check_overlap, scope_table, structure_cell

    structures = load_matbench("matbench_dielectric")["structure"].iloc[:n]
    items = structures.to_dict()
    gen = json.loads(fetch("cloud/generator.json").read_text())
    wyck = json.loads(fetch("cloud/wyckoff-position-multiplicities.json").read_text())
    authors = generate_seq(gen, wyck)
    cells = [
        (s.lattice.matrix, s.frac_coords, np.array([site.specie.Z for site in s], dtype=np.intc)) for s in structures
    ]

    def run_authors():
        sga._get_symmetry_dataset.cache_clear()  # pymatgen memoises spglib calls; start cold each time
        return [authors(s) for s in structures]

    def run_floor():
        return [spglib.get_symmetry_dataset(c, symprec=0.01, angle_tolerance=5.0) for c in cells]

    light = [structure_cell(s, k) for k, s in items.items()]  # the validated cells of the jobs=1 path
    # where jobs=1 spends the time the floor does not: each part alone, over the same structures
    parts = {
        "validation (structure_cell)": lambda: [structure_cell(s, k) for k, s in items.items()],
        "overlap check (check_overlap)": lambda: [check_overlap(c[0], c[1], c[2], MIN_DISTANCE) for c in light],
        "cell_to_scope (overlap + spglib + string)": lambda: [cell_to_scope(c) for c in light],
    }
    timings = {"authors": [], "spglib floor": [], "cloudlib jobs=1": [], "cloudlib jobs=2": []}
    timings.update({k: [] for k in parts})
    outputs = {}
    runs = {
        "authors": run_authors,
        "spglib floor": run_floor,
        "cloudlib jobs=1": lambda: scope_table(items, jobs=1, progress=False)["scope"].tolist(),
        "cloudlib jobs=2": lambda: scope_table(items, jobs=2, progress=False)["scope"].tolist(),
        **parts,
    }
    for _ in range(repeats):  # interleave so drift in machine load hits every method alike
        for name, fn in runs.items():
            t, out = _best(fn, 1)
            timings[name].append(t)
            outputs[name] = out
    us = {k: 1e6 * min(v) / n for k, v in timings.items()}  # microseconds a structure, best of the repeats
    breakdown = {
        "spglib floor": us["spglib floor"],
        "validation (structure_cell)": us["validation (structure_cell)"],
        "overlap check (check_overlap)": us["overlap check (check_overlap)"],
        "string assembly (cell_to_scope - overlap - floor)": us["cell_to_scope (overlap + spglib + string)"]
        - us["overlap check (check_overlap)"]
        - us["spglib floor"],
        "the rest (scope_table - cell_to_scope - validation)": us["cloudlib jobs=1"]
        - us["cell_to_scope (overlap + spglib + string)"]
        - us["validation (structure_cell)"],
        "cloudlib jobs=1": us["cloudlib jobs=1"],
    }
    timings = {k: v for k, v in timings.items() if k not in parts}
    rate = {k: n / min(v) for k, v in timings.items()}
    chunked = _chunked_floor_ratio(
        items,
        cells,
        run_chunk=lambda chunk: scope_table(chunk, jobs=1, progress=False),
        floor=lambda chunk: [spglib.get_symmetry_dataset(c, symprec=0.01, angle_tolerance=5.0) for c in chunk],
        repeats=repeats,
    )
    identical = outputs["cloudlib jobs=1"] == outputs["authors"] == outputs["cloudlib jobs=2"]
    result = {
        "structures": n,
        "repeats": repeats,
        "rates_per_s": {k: round(v, 1) for k, v in rate.items()},
        "ratios": {
            "jobs=1 / authors": round(rate["cloudlib jobs=1"] / rate["authors"], 3),
            "jobs=1 / spglib floor": round(rate["cloudlib jobs=1"] / rate["spglib floor"], 3),
            "authors / spglib floor": round(rate["authors"] / rate["spglib floor"], 3),
            "jobs=2 / jobs=1": round(rate["cloudlib jobs=2"] / rate["cloudlib jobs=1"], 3),
            "machine ceiling, 2 processes (pure Python control)": round(process_scaling_ceiling(), 3),
        },
        "jobs=1 vs spglib floor, chunk by chunk": chunked,
        "jobs=1 microseconds a structure (best of the repeats)": {k: round(v, 1) for k, v in breakdown.items()},
        "identical_output": bool(identical),
        "mean_atoms": round(float(np.mean([len(s) for s in structures])), 1),
    }
    return result


def bench_tokenizer(n: int = 10000, repeats: int = 3) -> dict:
    import pandas as pd
    import transformers
    from transformers.models.bert.tokenization_bert_legacy import BertTokenizerLegacy

    from benchmarks.authors import write_authors_style_vocab
    from cloudlib.registry import fetch
    from cloudlib.tokenizer import from_bert_vocab, make_tokenizer

    strings = pd.read_csv(fetch("cloud/pretrain_cloud_10k.csv"))["cloud"].tolist()
    strings = (strings * (n // len(strings) + 1))[:n]
    with tempfile.TemporaryDirectory() as d:
        write_authors_style_vocab(strings[:3000], d, vocab_size=300)
        legacy = BertTokenizerLegacy.from_pretrained(d, do_lower_case=False)
        v5 = transformers.BertTokenizer.from_pretrained(d, do_lower_case=False)
        ours_authors = from_bert_vocab(d)
    ours_closed = make_tokenizer()
    runs = {
        "BertTokenizer (python, authors' transformers 4)": lambda: legacy(strings, padding=True, return_tensors="pt"),
        "BertTokenizer (transformers 5, Rust)": lambda: v5(strings, padding=True, return_tensors="pt"),
        "cloudlib encode_batch, authors' vocab": lambda: ours_authors.encode_batch(strings),
        "cloudlib encode_batch, closed vocab": lambda: ours_closed.encode_batch(strings),
    }
    timings = {k: [] for k in runs}
    outs = {}
    for _ in range(repeats):
        for name, fn in runs.items():
            t, outs[name] = _best(fn, 1)
            timings[name].append(t)
    rate = {k: n / min(v) for k, v in timings.items()}
    base = "BertTokenizer (python, authors' transformers 4)"
    ref = outs[base]
    same = all(
        outs[k]["input_ids"].equal(ref["input_ids"]) and outs[k]["attention_mask"].equal(ref["attention_mask"])
        for k in ("BertTokenizer (transformers 5, Rust)", "cloudlib encode_batch, authors' vocab")
    )
    return {
        "strings": n,
        "rates_per_s": {k: round(v) for k, v in rate.items()},
        "ratio_vs_python_BertTokenizer": {k: round(v / rate[base], 1) for k, v in rate.items()},
        "ratio_vs_rust_BertTokenizer": {
            k: round(v / rate["BertTokenizer (transformers 5, Rust)"], 1) for k, v in rate.items()
        },
        "identical_ids_authors_vocab": bool(same),
    }


def _sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _matmul_flops(dtype, sizes, reps: int, device) -> dict[int, float]:
    """Best FLOP/s of ``torch.mm`` on square ``n x n`` matrices of ``dtype``, per size (one warm-up each)."""
    import torch

    out = {}
    for n in sizes:
        a = torch.randn(n, n, device=device).to(dtype)
        b = torch.randn(n, n, device=device).to(dtype)
        c = torch.mm(a, b)  # warm-up: allocation, kernel selection
        best = float("inf")
        for _ in range(reps):
            _sync(device)
            t = time.perf_counter()
            torch.mm(a, b, out=c)
            _sync(device)
            best = min(best, time.perf_counter() - t)
        out[n] = 2.0 * n**3 / best
        del a, b, c
    return out


def _same_batches(lengths, batch_size: int, n: int, seed: int, bucket_batches: int) -> list:
    """``n`` full batches in the engine's length-bucketed order (as many epochs as it takes)."""
    from cloudlib.engine import epoch_batches

    batches, epoch = [], 0
    while len(batches) < n:
        full = [b for b in epoch_batches(lengths, batch_size, epoch, seed, bucket_batches) if len(b) == batch_size]
        if not full:
            raise ValueError(f"{len(lengths)} strings make no batch of {batch_size}")
        batches += full
        epoch += 1
    return batches[:n]


def _interleaved(setups: dict, batches: list, warmup: int, repeats: int, peak_sizes, peak_reps: int, device):
    """Run every setup's step function over the same batches, ``repeats`` times interleaved (so drift in machine
    load hits every setup alike), and the fp32 / bf16 matmul peaks after each repeat. A step function takes
    (step number, batch index) and returns (preparation seconds, real tokens, padded tokens, loss). Returns
    (seconds of the timed steps per repeat, per-setup stats of the last repeat, fp32 peak, bf16 peak)."""
    import torch

    total = {k: [] for k in setups}
    stats: dict[str, dict] = {}
    peak: dict[int, float] = {}
    peak_bf16: dict[int, float] = {}
    step_no = {k: 0 for k in setups}
    for _ in range(repeats):
        for name, step_fn in setups.items():
            for index in batches[:warmup]:
                step_fn(step_no[name], index)
                step_no[name] += 1
            t_start, prep, real, padded, losses = time.perf_counter(), 0.0, 0, 0, []
            for index in batches[warmup:]:
                p, r, pad, loss = step_fn(step_no[name], index)
                step_no[name] += 1
                prep, real, padded = prep + p, real + r, padded + pad
                losses.append(loss)
            total[name].append(time.perf_counter() - t_start)
            stats[name] = {"real": real, "padded": padded, "loss": sum(losses) / len(losses), "prep_s": prep}
        for n, f in _matmul_flops(torch.float32, peak_sizes, peak_reps, device).items():
            peak[n] = max(peak.get(n, 0.0), f)
        for n, f in _matmul_flops(torch.bfloat16, peak_sizes, peak_reps, device).items():
            peak_bf16[n] = max(peak_bf16.get(n, 0.0), f)
    return total, stats, peak, peak_bf16


def _levers(precisions, device, levers: bool) -> dict[str, tuple[str, str, bool, bool]]:
    """Setup name -> (precision, dropout implementation, fused AdamW, encoder dropout 0): the engine as it is in each
    precision, and, on a CPU with ``levers``, in the last precision the engine before issue 24 (torch dropout,
    foreach AdamW), each lever alone, and the engine with no dropout in the encoder (the fast path: a modelling
    choice, judged on validation rows, see data/recipe/README.md)."""
    from cloudlib import engine

    engine_dropout, engine_fused = engine.dropout_impl(device), device.type == "cuda" or engine.CPU_FUSED_ADAMW
    variants = {f"cloudlib {p}": (p, engine_dropout, engine_fused, False) for p in precisions}
    if levers and device.type == "cpu":
        last = precisions[-1]
        variants[f"cloudlib {last} before"] = (last, "torch", False, False)
        variants[f"cloudlib {last} +fast dropout"] = (last, "fast", False, False)
        variants[f"cloudlib {last} +fused AdamW"] = (last, "torch", True, False)
        variants[f"cloudlib {last} dropout 0"] = (last, engine_dropout, engine_fused, True)
    return variants


def _setup_table(variants: dict) -> dict:
    """Each setup of :func:`_levers` as the result files record it."""
    keys = ("precision", "dropout", "fused_adamw", "dropout_0")
    return {name: dict(zip(keys, v)) for name, v in variants.items()}


def _profiled(setups: dict, precisions) -> list[str]:
    """The setups whose step is profiled: the engine before issue 24, as it is, and without dropout."""
    last = precisions[-1]
    return [n for n in (f"cloudlib {last} before", f"cloudlib {last}", f"cloudlib {last} dropout 0") if n in setups]


def _lever_ratios(rate: dict, precisions) -> dict:
    last, out = precisions[-1], {}
    before = f"cloudlib {last} before"
    if before in rate:
        for name in rate:
            if name.startswith(f"cloudlib {last}") and name != before:
                out[f"{name} / before"] = round(rate[name] / rate[before], 3)
    return out


def _profile(setups: dict, names, batches: list, steps: int, top: int = 10) -> dict:
    """The top operations by self CPU time of ``steps`` steps of each named setup (torch.profiler), each with its
    share of the profiled time and its calls per step: where a step's time goes."""
    from torch.profiler import ProfilerActivity, profile

    out = {}
    for name in names:
        step_fn = setups[name]
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for i, index in enumerate(batches[:steps]):
                step_fn(10_000 + i, index)
        events = [e for e in prof.key_averages() if e.self_cpu_time_total > 0]
        total = sum(e.self_cpu_time_total for e in events)
        events.sort(key=lambda e: e.self_cpu_time_total, reverse=True)
        out[name] = {
            e.key: f"{100 * e.self_cpu_time_total / total:.1f} % ({e.count / steps:g} calls/step)" for e in events[:top]
        }
    return out


def _training_setup(steps: int, repeats: int, warmup: int, precisions, peak_sizes, strings):
    """What the training benchmarks share: checked step counts, the device (CUDA when there is one), the cloudlib
    precisions (fp32, plus bf16 where the hardware has it), the peak matmul sizes and the strings (the authors'
    10k by default). Returns (device, precisions, peak sizes, strings, device description)."""
    import pandas as pd
    import torch

    from cloudlib import engine
    from cloudlib.registry import fetch

    if steps < 1 or repeats < 1 or warmup < 0:
        raise ValueError("need steps >= 1, repeats >= 1, warmup >= 0")
    cuda = torch.cuda.is_available()
    device = torch.device("cuda" if cuda else "cpu")
    bf16_native = torch.cuda.is_bf16_supported() if cuda else engine.cpu_has_bf16()
    precisions = tuple(precisions or (("fp32", "bf16") if bf16_native else ("fp32",)))
    peak_sizes = tuple(peak_sizes or ((4096, 8192) if cuda else (2048, 4096)))
    if strings is None:
        strings = pd.read_csv(fetch("cloud/pretrain_cloud_10k.csv"))["cloud"].tolist()
    described = f"cuda ({torch.cuda.get_device_name(device)})" if cuda else f"cpu, {torch.get_num_threads()} threads"
    return device, precisions, peak_sizes, [str(s) for s in strings], described


def bench_pretrain(
    model: str = "mini",
    batch_size: int = 128,
    steps: int = 20,
    repeats: int = 3,
    warmup: int = 3,
    strings: list[str] | None = None,
    authors_attn: str = "sdpa",
    peak_sizes: tuple[int, ...] | None = None,
    peak_reps: int = 2,
    seed: int = 0,
    precisions: tuple[str, ...] | None = None,
    levers: bool = True,
    profile: int = 0,
) -> dict:
    """Training tokens/s (real tokens), ratio and MFU of the authors' MLM pipeline and cloudlib's, one run.

    See the module docstring for what each setup does. ``strings`` defaults to the 10k real SCOPE strings of
    ``cloud/pretrain_cloud_10k.csv``; ``authors_attn`` is the authors' model's attention ("sdpa", the
    transformers 5 default and cloudlib's, or "eager"); ``peak_sizes`` are the matmul sizes of the peak
    (default 2048 and 4096 on CPU, 4096 and 8192 on CUDA). Each repeat runs ``warmup`` untimed then ``steps``
    timed steps of each setup and the peak matmuls, interleaved; the best repeat counts. ``precisions`` are the
    cloudlib setups (default: fp32, plus bf16 where the hardware has bf16 units); on a CPU ``levers`` adds, in the
    last precision, the engine before issue 24 (torch dropout, foreach AdamW) and each of its levers alone.
    """
    import math

    import torch
    from transformers import BertForMaskedLM, DataCollatorForLanguageModeling

    from benchmarks.authors import pretrain_batch
    from cloudlib import engine
    from cloudlib import model as cloud_model
    from cloudlib.config import PretrainConfig
    from cloudlib.pretrain import MaskedLMLoss, MLMObjective
    from cloudlib.tokenizer import make_tokenizer

    if authors_attn not in ("sdpa", "eager"):
        raise ValueError(f"authors_attn={authors_attn!r}: expected 'sdpa' or 'eager'")
    device, precisions, peak_sizes, strings, described = _training_setup(
        steps, repeats, warmup, precisions, peak_sizes, strings
    )
    cuda = device.type == "cuda"
    authors_precision = "bf16" if cuda else "fp32"

    tok = make_tokenizer()
    cfg = PretrainConfig(model=model, batch_size=batch_size, seed=seed, max_steps=repeats * (warmup + steps))
    size = cloud_model.preset(model).replace(dropout=cfg.dropout)

    t0 = time.perf_counter()
    data = engine.encode(tok, strings)  # cloudlib encodes the corpus once, before training: not in the step clock
    encode_s = time.perf_counter() - t0
    batches = _same_batches(data.lengths, batch_size, warmup + steps, seed, cfg.bucket_batches)

    def build(attn: str) -> BertForMaskedLM:
        config = cloud_model.bert_config(size, tok)
        config._attn_implementation = attn
        torch.manual_seed(seed)
        return BertForMaskedLM(config).to(device).train()

    authors_mlm = build(authors_attn)
    d = engine.Dist(device=device)

    def optimizer(module, fused=None):
        opt = engine.make_optimizer(engine.param_groups([(module, cfg.lr)], cfg.weight_decay), device, fused)
        return opt, engine.make_scheduler(opt, cfg, cfg.max_steps)

    variants = _levers(precisions, device, levers)
    cloud_steps, same_init = {}, True
    for name, (prec, dropout, fused, dropout0) in variants.items():
        cloud_mlm = cloud_model.set_dropout(build("sdpa"), 0.0 if dropout0 else None)
        same_init &= all(a.equal(b) for a, b in zip(authors_mlm.state_dict().values(), cloud_mlm.state_dict().values()))
        pcfg = cfg.replace(precision=prec)
        net = engine.use_dropout(MaskedLMLoss(cloud_mlm).train(), dropout)
        objective = MLMObjective(data, data.rows([]), tok, pcfg, device)
        opt_c, sched_c = optimizer(net, fused)
        cloud_steps[name] = engine.Stepper(net, net, objective, opt_c, sched_c, pcfg, d)
    n_non_emb = cloud_model.n_params(cloud_mlm)
    opt_a, sched_a = optimizer(authors_mlm)
    collator = DataCollatorForLanguageModeling(
        tokenizer=tok, mlm=True, mlm_probability=cfg.mlm_probability, return_tensors="pt"
    )

    # sanity: both losses are the same objective (same weights, same masked batch, no dropout)
    with torch.no_grad():
        authors_mlm.eval()
        torch.manual_seed(seed)
        probe = {k: v.to(device) for k, v in pretrain_batch(tok, collator, strings, batches[0]).items()}
        width = int(probe["attention_mask"].sum(1).max())
        with engine.autocast(device, authors_precision):
            hf_loss = float(authors_mlm(**probe).loss)
            ours, _, _ = MaskedLMLoss(authors_mlm)(
                *(probe[k][:, :width] for k in ("input_ids", "attention_mask", "labels"))
            )
        loss_diff = abs(hf_loss - float(ours))
        args = [probe[k][:, :width] for k in ("input_ids", "attention_mask", "labels")]
        parity = {}  # the same weights and masked batch (no dropout) in each cloudlib precision
        for prec in precisions:
            with engine.autocast(device, prec):
                parity[prec] = float(MaskedLMLoss(authors_mlm)(*args)[0])
        authors_mlm.train()

    def authors_step(step: int, index):
        torch.manual_seed(engine.step_seed(seed, step))  # dropout and the collator's masks
        t0 = time.perf_counter()
        batch = {k: v.to(device) for k, v in pretrain_batch(tok, collator, strings, index).items()}
        prep = time.perf_counter() - t0
        with engine.autocast(device, authors_precision):
            loss = authors_mlm(**batch).loss
        opt_a.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(authors_mlm.parameters(), cfg.grad_clip)
        opt_a.step()
        sched_a.step()
        engine.synchronize(device)
        return prep, int(batch["attention_mask"].sum()), batch["input_ids"].numel(), float(loss.detach())

    def cloudlib_step(name: str):
        def step_fn(step: int, index):
            loss, stats = cloud_steps[name](step, index)
            engine.synchronize(device)
            return 0.0, stats["tokens"], int(data.lengths[index].max()) * len(index), float(loss.detach())

        return step_fn

    setups = {"authors": authors_step, **{name: cloudlib_step(name) for name in variants}}
    total, stats, peak, peak_bf16 = _interleaved(setups, batches, warmup, repeats, peak_sizes, peak_reps, device)
    profiles = _profile(setups, _profiled(setups, precisions), batches, profile) if profile else {}

    first = f"cloudlib {precisions[0]}"
    real = stats[first]["real"]
    mean_len = real / (steps * batch_size)
    flops_real = cloud_model.flops_per_token(size, n_non_emb, mean_len)
    # what the authors' setup executes per (padded) position: 64-token attention + the full-vocabulary decoder
    flops_padded = cloud_model.flops_per_token(size, n_non_emb, size.block_size) + 6.0 * size.n_embd * len(tok)
    peak_fp32, peak_bf = max(peak.values()), max(peak_bf16.values())
    rate = {k: real / min(v) for k, v in total.items()}
    ratios = {f"{k} / authors": round(rate[k] / rate["authors"], 3) for k in rate if k != "authors"}
    if "cloudlib bf16" in rate and "cloudlib fp32" in rate:
        ratios["cloudlib bf16 / cloudlib fp32"] = round(rate["cloudlib bf16"] / rate["cloudlib fp32"], 3)
    ratios.update(_lever_ratios(rate, precisions))
    mfu = {f"{k} (vs bf16 peak)": round(v * flops_real / peak_bf, 4) for k, v in rate.items()}
    setup_precision = {"authors": authors_precision, **{k: v[0] for k, v in variants.items()}}
    mfu.update(
        {
            f"{k} (vs fp32 peak)": round(v * flops_real / peak_fp32, 4)
            for k, v in rate.items()
            if setup_precision[k] == "fp32"
        }
    )
    mfu["authors HFU on padded positions (vs bf16 peak)"] = round(
        rate["authors"] / real * stats["authors"]["padded"] * flops_padded / peak_bf, 4
    )
    result = {
        "model": model,
        "device": described,
        "precision": {
            "authors": authors_precision,
            "cloudlib": list(precisions),
            "setups": _setup_table(variants),
            "auto resolves to": engine.resolve_precision("auto", device),
        },
        "batch_size": batch_size,
        "timed_steps": steps,
        "warmup_steps": warmup,
        "repeats": repeats,
        "attention": f"authors {authors_attn}, cloudlib sdpa",
        "non_embedding_params": n_non_emb,
        "vocab_size": len(tok),
        "strings": len(strings),
        "encode_once_s (cloudlib, not in step clock)": round(encode_s, 3),
        "mean_real_seq_len": round(mean_len, 2),
        "tokens_per_batch": {
            "real (all)": real / steps,
            "authors padded": stats["authors"]["padded"] / steps,
            "cloudlib padded (dynamic)": stats[first]["padded"] / steps,
        },
        "real_tokens_per_s": {k: round(v, 1) for k, v in rate.items()},
        "ms_per_step": {
            **{f"{k} total": round(1e3 * min(v) / steps, 2) for k, v in total.items()},
            "authors batch preparation": round(1e3 * stats["authors"]["prep_s"] / steps, 2),
        },
        "ratios": ratios,
        "flops_per_real_token": round(flops_real),
        "flops_per_padded_position_authors": round(flops_padded),
        "peak_tflops": {
            **{f"fp32 mm {n}": round(f / 1e12, 4) for n, f in peak.items()},
            **{f"bf16 mm {n}": round(f / 1e12, 4) for n, f in peak_bf16.items()},
        },
        "mfu": mfu,
        "mfu_peak": f"torch.mm, best of sizes {list(peak_sizes)}",
        "train_loss_last_repeat": {k: round(v["loss"], 4) for k, v in stats.items()},
        "same_real_tokens": len({v["real"] for v in stats.values()}) == 1,
        "same_initial_weights": bool(same_init),
        "loss_agreement_abs": loss_diff,
        "fixed_batch_loss_by_precision": {k: round(v, 5) for k, v in parity.items()},
        **({"profile (top operations by self CPU time)": profiles} if profiles else {}),
    }
    tolerance = (2e-2 if cuda else 1e-3) * max(1.0, abs(hf_loss))  # bf16 autocast: shapes change the rounding
    result["ok"] = bool(
        result["same_real_tokens"]
        and same_init
        and loss_diff < tolerance
        and all(math.isfinite(v["loss"]) for v in stats.values())
    )
    return result


def bench_finetune(
    model: str = "mini",
    batch_size: int = 32,
    steps: int = 20,
    repeats: int = 3,
    warmup: int = 3,
    strings: list[str] | None = None,
    peak_sizes: tuple[int, ...] | None = None,
    peak_reps: int = 2,
    seed: int = 0,
    precisions: tuple[str, ...] | None = None,
    levers: bool = True,
    profile: int = 0,
) -> dict:
    """Fine-tuning steps/s of the engine's own step (:class:`cloudlib.engine.Stepper` on
    :class:`cloudlib.finetune.PropertyObjective`: the ``[CLS]`` -> MLP head of :class:`cloudlib.model.CloudPredictor`,
    L1 loss, encoder and head learning rates as in :func:`cloudlib.finetune.fit`) on a ``model``-size encoder (same
    random weights in every setup; speed does not depend on pre-training), the same batches of the authors' real
    strings, one run. Targets: each string's token count, standardised (speed does not depend on them either).

    Setups: **authors' shapes** (every batch padded to the 64 positions of the authors' tokenizer, fp32, torch
    dropout: what their fine-tuning pays for, run through our step), and cloudlib as in :func:`bench_pretrain`
    (each precision; on a CPU the engine before issue 24 and each lever alone). ``fixed_batch_loss`` is each
    setup's loss on the first batch in eval mode (no dropout) from the same weights.
    """
    import math

    import torch

    from cloudlib import engine
    from cloudlib import model as cloud_model
    from cloudlib.config import FinetuneConfig
    from cloudlib.finetune import PropertyObjective, head_modules

    device, precisions, peak_sizes, strings, described = _training_setup(
        steps, repeats, warmup, precisions, peak_sizes, strings
    )
    size = cloud_model.preset(model)
    cfg = FinetuneConfig(
        encoder=model, pretrained=False, batch_size=batch_size, seed=seed, max_steps=repeats * (warmup + steps)
    )
    _, tok = cloud_model.build_encoder(model, False, seed)
    data = engine.encode(tok, strings)
    y = data.lengths.double()
    y = ((y - y.mean()) / y.std()).float()
    batches = _same_batches(data.lengths, batch_size, warmup + steps, seed, cfg.bucket_batches)
    d = engine.Dist(device=device)

    class Padded(PropertyObjective):
        """The authors' shapes: every batch padded to the tokenizer's 64 positions."""

        def loss(self, model, idx, g):
            ids, mask = self.train.batch(idx)
            pad = size.block_size - ids.shape[1]
            ids = torch.nn.functional.pad(ids, (0, pad), value=tok.pad_token_id)
            mask = torch.nn.functional.pad(mask, (0, pad), value=0)
            out = model(ids.to(self.device), mask.to(self.device))
            loss = torch.nn.functional.l1_loss(out, self.y_train[idx].to(self.device))
            return loss, {"rows": len(idx), "tokens": int(mask.sum()), "padded": int(ids.numel())}

    variants = {"authors' shapes": ("fp32", "torch", False, False), **_levers(precisions, device, levers)}
    steppers, parity, nets = {}, {}, {}
    for name, (prec, dropout, fused, dropout0) in variants.items():
        # dropout 0: the encoder's (FinetuneConfig.encoder_dropout = 0); the head keeps its own
        encoder, _ = cloud_model.build_encoder(model, False, seed, 0.0 if dropout0 else None)
        torch.manual_seed(seed + 1)
        net = engine.use_dropout(cloud_model.CloudPredictor(encoder, cfg.dropout).to(device).train(), dropout)
        pcfg = cfg.replace(precision=prec)
        kind = Padded if name == "authors' shapes" else PropertyObjective
        objective = kind(data, y, data.rows([]), np.zeros(0), "regression", 0.0, 1.0, 256, device, prec)
        groups = engine.param_groups(head_modules(net, pcfg), pcfg.weight_decay)
        opt = engine.make_optimizer(groups, device, fused)
        sched = engine.make_scheduler(opt, pcfg, pcfg.max_steps)
        steppers[name], nets[name] = engine.Stepper(net, net, objective, opt, sched, pcfg, d), net
        with torch.no_grad():
            net.eval()
            with engine.autocast(device, prec):
                parity[name] = float(objective.loss(net, batches[0], None)[0])
            net.train()

    def step_fn(name):
        def run(step, index):
            loss, st = steppers[name](step, index)
            engine.synchronize(device)
            return (
                0.0,
                st["tokens"],
                st.get("padded", int(data.lengths[index].max()) * len(index)),
                float(loss.detach()),
            )

        return run

    setups = {name: step_fn(name) for name in variants}
    total, stats, peak, peak_bf16 = _interleaved(setups, batches, warmup, repeats, peak_sizes, peak_reps, device)
    profiles = _profile(setups, _profiled(setups, precisions), batches, profile) if profile else {}
    real = stats["authors' shapes"]["real"]
    n_non_emb = cloud_model.n_params(nets["authors' shapes"].encoder)
    flops = cloud_model.flops_per_token(size, n_non_emb, real / (steps * batch_size))
    peak_bf = max(peak_bf16.values())
    rate = {k: real / min(v) for k, v in total.items()}
    ratios = {f"{k} / authors' shapes": round(v / rate["authors' shapes"], 3) for k, v in rate.items()}
    ratios.update(_lever_ratios(rate, precisions))
    result = {
        "model": model,
        "device": described,
        "batch_size": batch_size,
        "timed_steps": steps,
        "warmup_steps": warmup,
        "repeats": repeats,
        "non_embedding_params": n_non_emb,
        "setups": _setup_table(variants),
        "mean_real_seq_len": round(real / (steps * batch_size), 2),
        "real_tokens_per_s": {k: round(v, 1) for k, v in rate.items()},
        "steps_per_s": {k: round(steps / min(v), 3) for k, v in total.items()},
        "ms_per_step": {k: round(1e3 * min(v) / steps, 2) for k, v in total.items()},
        "ratios": ratios,
        "peak_tflops": {
            **{f"fp32 mm {n}": round(f / 1e12, 4) for n, f in peak.items()},
            **{f"bf16 mm {n}": round(f / 1e12, 4) for n, f in peak_bf16.items()},
        },
        "mfu (vs bf16 peak)": {k: round(v * flops / peak_bf, 4) for k, v in rate.items()},
        "fixed_batch_loss": {k: round(v, 5) for k, v in parity.items()},
        "train_loss_last_repeat": {k: round(v["loss"], 4) for k, v in stats.items()},
        **({"profile (top operations by self CPU time)": profiles} if profiles else {}),
    }
    same = [v for k, v in parity.items() if variants[k][0] == "fp32"]
    result["ok"] = bool(
        len({v["real"] for v in stats.values()}) == 1
        and all(math.isfinite(v["loss"]) for v in stats.values())
        and max(same) - min(same) < 1e-4 * max(1.0, abs(same[0]))  # padding and dropout impl change nothing in eval
    )
    return result


def _print(title: str, result: dict) -> None:
    print(f"\n== {title}")
    for key, value in result.items():
        if isinstance(value, dict):
            print(f"  {key}:")
            for k, v in value.items():
                if isinstance(v, dict):  # e.g. a profile table per setup
                    print(f"    {k}:")
                    for k2, v2 in v.items():
                        print(f"      {k2:<46} {v2}")
                else:
                    print(f"    {k:<48} {v}")
        else:
            print(f"  {key:<50} {value}")


def main(argv=None) -> int:
    import sys

    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["overlap"]:  # its own options: see benchmarks/overlap.py
        from benchmarks.overlap import main as overlap_main

        return overlap_main(argv[1:])
    p = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.splitlines()[0])
    p.add_argument("what", choices=["scope", "tokenizer", "pretrain", "finetune", "overlap"])
    p.add_argument("--n", type=int, default=None, help="structures (scope, default 1000) or strings (tokenizer, 10000)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--json", help="also write the results here")
    p.add_argument("--model", default="mini", help="pretrain: model size preset (tiny/mini/small/medium/base)")
    p.add_argument("--batch-size", type=int, default=None, help="pretrain / finetune: sequences per step (128 / 32)")
    p.add_argument("--steps", type=int, default=20, help="pretrain: timed steps per repeat")
    p.add_argument("--warmup", type=int, default=3, help="pretrain: untimed steps before each repeat")
    p.add_argument("--authors-attn", choices=["sdpa", "eager"], default="sdpa", help="pretrain: authors' attention")
    p.add_argument(
        "--precisions",
        nargs="+",
        choices=["fp32", "bf16"],
        default=None,
        help="pretrain: cloudlib setups (default fp32, plus bf16 where the hardware has it)",
    )
    p.add_argument(
        "--profile",
        type=int,
        default=0,
        help="pretrain / finetune: also profile this many steps of the engine before and as it is (top operations)",
    )
    p.add_argument(
        "--no-levers",
        action="store_true",
        help="pretrain: only the engine as it is (no 'before' setup, no lever measured alone)",
    )
    p.add_argument(
        "--peak-sizes",
        type=int,
        nargs="+",
        default=None,
        help="pretrain: square matmul sizes of the measured peak (default 2048 4096; CUDA 4096 8192)",
    )
    args = p.parse_args(argv)
    import os

    import torch

    print(
        f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch threads {torch.get_num_threads()}"
    )
    results = {}
    if args.what in ("pretrain", "finetune"):
        common = dict(peak_sizes=args.peak_sizes, levers=not args.no_levers, profile=args.profile)
        common["precisions"] = tuple(args.precisions) if args.precisions else None
        if args.what == "pretrain":
            batch = args.batch_size or 128
            r = bench_pretrain(
                args.model, batch, args.steps, args.repeats, args.warmup, authors_attn=args.authors_attn, **common
            )
            title = f"MLM pre-training, {args.model}, batch {batch} (real tokens/s, same strings, one run)"
        else:
            batch = args.batch_size or 32
            r = bench_finetune(args.model, batch, args.steps, args.repeats, args.warmup, **common)
            title = f"Fine-tuning, {args.model}, batch {batch} (real tokens/s, same strings, one run)"
        results[args.what] = r
        _print(title, r)
        if args.json:
            from cloudlib.io import write_json

            write_json(args.json, results)
        return 0 if r["ok"] else 1
    if args.what == "scope":
        results["scope"] = bench_scope(args.n or 1000, args.repeats)
        _print("SCOPE (structures/s, same structures, one run)", results["scope"])
    results["tokenizer"] = bench_tokenizer(args.n if args.what == "tokenizer" and args.n else 10000, args.repeats)
    _print("Tokenizer (strings/s to padded id tensors)", results["tokenizer"])
    if args.json:
        from cloudlib.io import write_json

        write_json(args.json, results)
    ok = results.get("scope", {}).get("identical_output", True) and results["tokenizer"]["identical_ids_authors_vocab"]
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
