"""The training engine: the one loop every gradient-trained model of the project runs in.

A model brings an :class:`Objective` (its loss on a batch of training rows and its validation metrics) and
the engine does everything else, once:

* **data order**: a seeded shuffle per epoch, length-bucketed batches trimmed to their longest row
  (:func:`epoch_batches`, :meth:`Encoded.batch`); each DDP rank takes every world-th batch;
* **randomness as a function of the step**: before step ``s`` the engine seeds dropout with
  :func:`step_seed` and hands the objective a generator seeded with :func:`mask_seed` (MLM masks), so a run
  resumed from a checkpoint repeats the uninterrupted run exactly;
* **precision**: :func:`autocast` (``precision="auto"``: bf16 autocast on CUDA and on CPUs with native bf16
  units, AVX512-BF16 / AMX, fp32 on other CPUs; ``"bf16"`` / ``"fp32"`` force one; the heads always run in fp32);
* **optimizer and schedule**: AdamW over parameter groups (:func:`param_groups`: no weight decay on biases
  and norms, one learning rate per module), linear warm-up then cosine decay to zero (:func:`lr_lambda`),
  gradient clipping;
* **evaluation and model selection**: the objective's metrics every ``eval_every`` steps (or per epoch),
  early stopping after ``patience`` evaluations without improvement, the best evaluation's weights restored;
* **checkpoints**: written atomically every ``ckpt_every`` steps (model, optimizer, scheduler, step, log,
  running meters, best state); :func:`train` with ``resume=True`` continues from one and refuses a checkpoint
  written with another configuration or other data;
* **DDP** through ``torchrun`` (gloo on CPU, NCCL on GPU): rank 0 evaluates, logs and saves;
* **progress**: one tqdm bar per run.

The loop is :func:`train` (a :class:`Trainer`); :class:`Stepper` is its single optimisation step, which the pre-training benchmark
times as "cloudlib's step".
"""

from __future__ import annotations

import contextlib
import copy
import functools
import hashlib
import json
import math
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import nn

from .config import TrainConfig, check_precision
from .errors import ConfigError
from .io import atomic_path

CHECKPOINT = "checkpoint.pt"
LOG = "log.jsonl"

# --------------------------------------------------------------------------- distributed


@dataclass
class Dist:
    """Where this process sits in a (possibly single-process) run."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def main(self) -> bool:
        return self.rank == 0


def setup_distributed() -> Dist:
    """Initialise torch.distributed when launched by torchrun (WORLD_SIZE > 1), else a single process."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    cuda = torch.cuda.is_available()
    if world > 1:
        import torch.distributed as dist

        if not dist.is_initialized():
            dist.init_process_group("nccl" if cuda else "gloo")
        local = int(os.environ.get("LOCAL_RANK", "0"))
        device = torch.device(f"cuda:{local}" if cuda else "cpu")
        if cuda:
            torch.cuda.set_device(device)
        return Dist(dist.get_rank(), dist.get_world_size(), local, device)
    return Dist(device=torch.device("cuda" if cuda else "cpu"))


def barrier(d: Dist) -> None:
    if d.world > 1:
        import torch.distributed as dist

        dist.barrier()


def _broadcast_flag(d: Dist, flag: bool) -> bool:
    """Rank 0's value of ``flag`` on every rank."""
    if d.world == 1:
        return flag
    import torch.distributed as dist

    t = torch.tensor([int(flag)], device=d.device)
    dist.broadcast(t, 0)
    return bool(t.item())


@contextlib.contextmanager
def torch_threads(threads: int | None, d: Dist | None = None):
    """Set torch's CPU threads for a block (``None``: all cores shared by the local ranks), then restore."""
    old = torch.get_num_threads()
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", d.world if d else 1))
    n = threads or (max(1, (os.cpu_count() or 1) // local_world) if local_world > 1 else old)
    if n != old:
        torch.set_num_threads(n)
    try:
        yield n
    finally:
        if n != old:
            torch.set_num_threads(old)


@functools.cache
def cpu_has_bf16() -> bool:
    """Whether this CPU multiplies bf16 natively (x86 AVX512-BF16 or AMX-BF16; read from ``/proc/cpuinfo`` once
    per process: :func:`autocast` asks at every step). Elsewhere (other CPUs, other systems) bf16 is emulated and
    slower than fp32, so "auto" keeps fp32."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    return bool(flags & {"avx512_bf16", "amx_bf16"})
    except OSError:
        pass
    return False


# "auto" on a CPU with bf16 units (AVX512-BF16 / AMX): bf16 autocast. Measured on AMD Zen 4 (issue 11): the
# fixed-batch MLM loss agrees with fp32 to well under 1 % (`python -m benchmarks pretrain`, tested in
# tests/test_bench.py), the fold-0 fine-tuning validation MAE is as good (data/recipe/README.md), and training
# runs ~2x faster. Set to False (or pass precision="fp32") for the fp32 numbers.
CPU_AUTO_BF16 = True


@functools.cache
def _warn_emulated_bf16() -> None:
    import warnings

    warnings.warn(
        "precision='bf16' on a CPU without bf16 units (no AVX512-BF16/AMX in /proc/cpuinfo): bf16 is emulated "
        "there, and matrix products run ~50x slower than fp32; use precision='auto' or 'fp32' on this machine",
        RuntimeWarning,
        stacklevel=3,
    )


def resolve_precision(precision: str, device: torch.device) -> str:
    """``"bf16"`` or ``"fp32"`` for a config's ``precision`` on ``device``. ``"auto"``: bf16 on CUDA with bf16
    support; on a CPU, bf16 when it has bf16 units and :data:`CPU_AUTO_BF16` is set, else fp32."""
    if check_precision(precision) != "auto":
        if precision == "bf16" and device.type == "cpu" and not cpu_has_bf16():
            _warn_emulated_bf16()
        return precision
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    return "bf16" if device.type == "cpu" and CPU_AUTO_BF16 and cpu_has_bf16() else "fp32"


def autocast(device: torch.device, precision: str = "auto"):
    """The mixed-precision context of training and evaluation: bf16 autocast when :func:`resolve_precision`
    says so (matrix products in bf16, reductions and losses in fp32), else plain fp32."""
    if resolve_precision(precision, device) == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# --------------------------------------------------------------------------- dropout

# The training step's dropout on a CPU. torch's dropout draws each mask element with ``bernoulli_``, which
# took 30 % of the shipped-size pre-training step on a 2-core Zen 4 (issue 24); "fast" draws 16 random bits per
# element from 64-bit integers of the same global generator (one ``randint`` per mask) and keeps an element
# when its bits are at or above ``round(p * 65536)``: drop probability p to within 7.6e-6, kept values scaled
# so that the expectation is exactly the input, and, since the engine seeds the global generator before every
# step, still a function of the step (resume stays exact). Attention-probability dropout goes through
# :func:`cloud_attention` (BERT's attention in matrix products, masks drawn the same way). Evaluation and
# inference do not drop anything, so their numbers do not depend on this. "torch" is torch's own dropout and
# SDPA attention; on CUDA torch's fused kernels are used whatever this says.
CPU_DROPOUT = "fast"
DROPOUT_IMPLS = ("torch", "fast")
_BITS = 65536


def keep_mask(shape, p: float, device=None) -> tuple[torch.Tensor, float]:
    """A boolean keep mask of ``shape`` (True with probability ~``1 - p``) and the scale that makes the kept
    values unbiased, from 16 random bits per element of the global generator."""
    if not 0.0 <= p < 1.0:
        raise ValueError(f"dropout probability must be in [0, 1), got {p}")
    n = math.prod(shape)
    drop = round(p * _BITS)
    bits = torch.randint(-(2**63), 2**63 - 1, ((n + 3) // 4,), dtype=torch.int64, device=device)
    keep = bits.view(torch.int16)[:n].view(shape) >= drop - _BITS // 2
    return keep, _BITS / (_BITS - drop)


def fast_dropout(x: torch.Tensor, p: float) -> torch.Tensor:
    """``x`` with elements zeroed with probability ~``p`` and the rest scaled (:func:`keep_mask`)."""
    if p == 0.0:
        return x
    keep, scale = keep_mask(x.shape, p, x.device)
    return x * (keep.to(x.dtype) * scale)


class FastDropout(nn.Module):
    """``nn.Dropout`` with masks from :func:`keep_mask` (used by :func:`use_dropout` on CPU)."""

    def __init__(self, p: float = 0.5):
        super().__init__()
        self.p = float(p)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return fast_dropout(x, self.p) if self.training and self.p > 0 else x

    def extra_repr(self) -> str:
        return f"p={self.p}"


def cloud_attention(module, query, key, value, attention_mask, dropout: float = 0.0, scaling=None, **kwargs):
    """transformers' attention interface (registered as ``"cloud_sdpa"``): in evaluation SDPA (as ``"sdpa"``, to
    the bit), in training softmax(Q K^T * scaling + mask) with :func:`fast_dropout`, times V, also when nothing is
    dropped (dropout 0): on a CPU with bf16 autocast SDPA's fused kernel made the shipped-size pre-training step
    without dropout 2.2x slower than these matrix products (141 vs 65 ms, 2 threads, Zen 4, 2026-12-07;
    ``python -m benchmarks.step_variants engine dropout0 dropout0-sdpa``)."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    if not module.training:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=0.0, scaling=scaling, **kwargs)
    scaling = query.size(-1) ** -0.5 if scaling is None else scaling
    scores = torch.matmul(query, key.transpose(2, 3)) * scaling
    if attention_mask is not None:
        if attention_mask.dtype == torch.bool:
            scores = scores.masked_fill(~attention_mask, torch.finfo(scores.dtype).min)
        else:
            scores = scores + attention_mask
    # softmax in float32, then back: on a CPU 3.5x faster than torch's bf16 softmax, forward and backward, despite
    # the two casts ([128, 4, 30, 30], 2 threads, Zen 4, 2026-12-07; issue 24: measured, not assumed)
    probs = fast_dropout(torch.softmax(scores, dim=-1, dtype=torch.float32).to(value.dtype), dropout)
    return torch.matmul(probs, value).transpose(1, 2).contiguous(), None


@functools.cache
def _register_attention() -> None:
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionInterface.register("cloud_sdpa", cloud_attention)
    AttentionMaskInterface.register("cloud_sdpa", sdpa_mask)  # the masks SDPA gets (else: no padding mask)


def dropout_impl(device: torch.device) -> str:
    """The dropout implementation a training step on ``device`` uses (:data:`CPU_DROPOUT` on a CPU)."""
    if CPU_DROPOUT not in DROPOUT_IMPLS:
        raise ConfigError(f"engine.CPU_DROPOUT must be one of {DROPOUT_IMPLS}, got {CPU_DROPOUT!r}", "CPU_DROPOUT")
    return CPU_DROPOUT if device.type == "cpu" else "torch"


def use_dropout(module: nn.Module, impl: str) -> nn.Module:
    """Switch ``module``'s dropout layers (and its BERT attention's probability dropout) to ``impl``, in place:
    "fast" (:class:`FastDropout`, :func:`cloud_attention`) or "torch" (``nn.Dropout``, SDPA). Parameters,
    state dicts, saved models and everything in eval mode are the same either way."""
    if impl not in DROPOUT_IMPLS:
        raise ValueError(f"dropout implementation must be one of {DROPOUT_IMPLS}, got {impl!r}")
    if impl == "fast":
        _register_attention()
    old, new = ("sdpa", "cloud_sdpa") if impl == "fast" else ("cloud_sdpa", "sdpa")
    for child in list(module.modules()):
        for attr, sub in list(child.named_children()):
            if impl == "fast" and type(sub) is nn.Dropout:
                setattr(child, attr, FastDropout(sub.p))
            elif impl == "torch" and type(sub) is FastDropout:
                setattr(child, attr, nn.Dropout(sub.p))
        config = getattr(child, "config", None)
        if config is not None and getattr(config, "_attn_implementation", None) == old:
            config._attn_implementation = new
    return module


# --------------------------------------------------------------------------- data


@dataclass
class Encoded:
    """Token ids of many strings, right-padded to a common width, with their lengths."""

    ids: torch.Tensor  # [N, W] int64
    lengths: torch.Tensor  # [N]

    def __len__(self) -> int:
        return len(self.lengths)

    def rows(self, index) -> Encoded:
        """The rows ``index`` (positions) as a new Encoded."""
        index = torch.as_tensor(np.asarray(index), dtype=torch.long)
        return Encoded(self.ids[index], self.lengths[index])

    def batch(self, index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(input_ids, attention_mask) for rows ``index``, trimmed to the longest (dynamic padding)."""
        width = int(self.lengths[index].max())
        ids = self.ids[index, :width]
        mask = torch.arange(width) < self.lengths[index, None]
        return ids, mask.long()


def encode(tokenizer, strings) -> Encoded:
    """Encode SCOPE strings once (``tokenizer.encode_batch``: raises BlockSizeError naming a too-long one)."""
    enc = tokenizer.encode_batch(list(strings))
    return Encoded(enc["input_ids"], enc["attention_mask"].sum(1))


def epoch_batches(lengths: torch.Tensor, batch_size: int, epoch: int, seed: int, bucket_batches: int):
    """The batches (row positions) of one epoch: a seeded shuffle, length-sorted within windows of
    ``bucket_batches`` batches, the batches shuffled. ``lengths``: the rows' token counts."""
    g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    perm = torch.randperm(len(lengths), generator=g)
    if bucket_batches > 0:
        window = batch_size * bucket_batches
        for a in range(0, len(perm), window):  # in place: one row-sized array however large the corpus
            c = perm[a : a + window]
            perm[a : a + window] = c[torch.argsort(lengths[c], stable=True)]
    batches = list(perm.split(batch_size))  # views of perm
    order = torch.randperm(len(batches), generator=g).tolist()
    return [batches[i] for i in order]


def step_seed(seed: int, step: int, stream: int = 0) -> int:
    """The global torch seed set before step ``step`` (dropout); ``stream`` separates ranks and objectives."""
    return seed * 7_919 + step * 104_729 + stream


def mask_seed(seed: int, step: int, stream: int = 0) -> int:
    """The seed of the generator an objective gets at step ``step`` (e.g. for MLM masks)."""
    return seed * 15_485_863 + step * 32_452_843 + stream


def tensor_digest(*tensors: torch.Tensor) -> str:
    """A short sha256 of tensors' bytes: identifies the training data a checkpoint belongs to."""
    h = hashlib.sha256()
    for t in tensors:
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


@torch.no_grad()
def batched_outputs(fn, data: Encoded, batch_size: int, device: torch.device, precision: str = "auto") -> torch.Tensor:
    """``fn(input_ids, attention_mask)`` for every row of ``data`` in row order (length-sorted batches under
    :func:`autocast` with ``precision``), concatenated on the CPU: shape ``[N, ...]``."""
    if not len(data):
        return torch.zeros(0)
    order = torch.argsort(data.lengths, stable=True)
    parts = []
    for idx in order.split(batch_size):
        ids, mask = data.batch(idx)
        with autocast(device, precision):
            parts.append(fn(ids.to(device), mask.to(device)).cpu())
    out = torch.cat(parts)
    return out[torch.argsort(order)]


# --------------------------------------------------------------------------- optimizer and schedule


def param_groups(modules: list[tuple[nn.Module, float]], weight_decay: float) -> list[dict]:
    """AdamW groups: per (module, learning rate), the matrices with ``weight_decay`` and the biases and norms
    without (a parameter with fewer than 2 dimensions, or a LayerNorm's)."""
    groups = []
    for module, lr in modules:
        decay, no_decay = [], []
        for name, p in module.named_parameters():
            if p.requires_grad:
                (no_decay if p.ndim < 2 or "LayerNorm" in name else decay).append(p)
        groups += [
            {"params": decay, "weight_decay": weight_decay, "lr": lr},
            {"params": no_decay, "weight_decay": 0.0, "lr": lr},
        ]
    return groups


# AdamW's fused kernel on a CPU too (torch's default there is the multi-tensor "foreach" one): alone, 1.00-1.14x the
# shipped-size step on a 2-core Zen 4 over this day's runs of `python -m benchmarks pretrain` / `finetune` (issue 24;
# data/recipe/bench), never slower beyond the run-to-run noise.
CPU_FUSED_ADAMW = True


def make_optimizer(groups: list[dict], device: torch.device, fused: bool | None = None) -> torch.optim.Optimizer:
    """AdamW (betas 0.9/0.999, eps 1e-8); ``fused`` (default: always on CUDA, :data:`CPU_FUSED_ADAMW` on a CPU)
    takes the single-kernel implementation."""
    fused = (device.type == "cuda" or CPU_FUSED_ADAMW) if fused is None else fused
    kw = {"fused": True} if fused else {}
    return torch.optim.AdamW(groups, lr=groups[0]["lr"], betas=(0.9, 0.999), eps=1e-8, **kw)


def lr_lambda(warmup: int, total: int):
    """Linear warm-up then cosine decay to zero (transformers' get_cosine_schedule_with_warmup)."""

    def f(step: int) -> float:
        if step < warmup:
            return (step + 1) / max(1, warmup)
        progress = (step - warmup) / max(1, total - warmup)
        return max(0.0, 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress))))

    return f


def make_scheduler(opt: torch.optim.Optimizer, cfg: TrainConfig, total: int):
    return torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(int(cfg.warmup_ratio * total), total))


# --------------------------------------------------------------------------- objectives


class Objective:
    """What a model supplies to :func:`train`. Subclasses set ``lengths`` (token counts of the training rows)
    and implement :meth:`loss` and :meth:`evaluate`.

    * ``loss(model, idx, g)``: the loss on training rows ``idx`` (positions) and additive counters, at least
      ``rows`` and ``tokens``; ``g`` is the step's generator (:func:`mask_seed`); the engine has seeded dropout.
    * ``evaluate(model)``: validation metrics (a dict); ``score(metrics)`` turns them into a number to minimise
      (default: ``metrics[monitor]``, negated when ``maximize``).
    * ``train_metrics(totals)``: extra logged values from the counters summed since the last evaluation.
    """

    name = "train"
    monitor = "val_loss"
    maximize = False
    seed_stream = 0  # added to step_seed / mask_seed (plus the rank)
    lengths: torch.Tensor

    def loss(self, model: nn.Module, idx: torch.Tensor, g: torch.Generator) -> tuple[torch.Tensor, dict]:
        raise NotImplementedError

    def evaluate(self, model: nn.Module) -> dict:
        return {}

    def score(self, metrics: dict) -> float:
        value = float(metrics[self.monitor])
        return -value if self.maximize else value

    def train_metrics(self, totals: dict) -> dict:
        return {}

    def digest(self) -> str:
        """Identifies the training data (checkpoints of other data are refused on resume)."""
        return tensor_digest(self.lengths)


@dataclass
class TrainResult:
    """What a run did: the evaluation log, the evaluation whose weights the model holds, and why it stopped."""

    history: pd.DataFrame
    steps: int
    best_step: int | None  # the evaluation whose weights were restored (None: the final weights)
    best_epoch: float | None
    stopped_early: bool
    seconds: float


def peak_rss_mb() -> float | None:
    """This process's peak resident set size so far in MB (``getrusage``), None where the platform has none."""
    try:
        import resource
    except ImportError:  # Windows
        return None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return round(peak / (1 << 20 if sys.platform == "darwin" else 1 << 10), 1)  # bytes on macOS, kB on Linux


def steps_per_epoch(n_rows: int, lengths: torch.Tensor, cfg: TrainConfig, world: int = 1) -> int:
    per_epoch = -(-len(lengths) // cfg.batch_size) // world  # epoch_batches' batches: ceil(rows / batch size)
    if per_epoch == 0:
        raise ConfigError(f"{n_rows} training rows make no batch of {cfg.batch_size} on {world} rank(s)", "batch_size")
    return per_epoch


def total_steps(cfg: TrainConfig, per_epoch: int) -> int:
    return cfg.max_steps or max(1, int(math.ceil(cfg.epochs * per_epoch)))


class Stepper:
    """One optimisation step: seeds, the objective's loss under autocast, backward, clipping, AdamW, schedule."""

    def __init__(self, model, module, objective: Objective, opt, sched, cfg: TrainConfig, d: Dist):
        self.model, self.module, self.objective = model, module, objective
        self.opt, self.sched, self.cfg, self.d = opt, sched, cfg, d

    def __call__(self, step: int, idx: torch.Tensor, data=None) -> tuple[torch.Tensor, dict]:
        stream = self.objective.seed_stream + self.d.rank
        torch.manual_seed(step_seed(self.cfg.seed, step, stream))
        g = torch.Generator().manual_seed(mask_seed(self.cfg.seed, step, stream))
        with autocast(self.d.device, self.cfg.precision):
            if data is None:
                loss, stats = self.objective.loss(self.model, idx, g)
            else:  # read ahead by _feed
                loss, stats = self.objective.loss(self.model, idx, g, data=data)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        if self.cfg.grad_clip:
            stats["grad_norm"] = float(torch.nn.utils.clip_grad_norm_(self.module.parameters(), self.cfg.grad_clip))
        self.opt.step()
        self.sched.step()
        return loss, stats


def _comparable(config: dict) -> dict:
    return {k: v for k, v in config.items() if k != "threads"}  # the thread count does not define a run


def _feed(objective: Objective, batches: list, depth: int):
    """``(idx, data)`` for each batch: with ``depth`` > 0 and an objective that has ``fetch(idx)`` (host-side
    reading, no randomness), ``data`` is read up to ``depth`` batches ahead by one background thread while the
    steps run (the CPU side of a GPU run: what DataLoader workers do); otherwise ``data`` is None and the objective
    reads its batch in the step. Close it (``contextlib.closing``) to stop the thread when the loop ends early."""
    fetch = getattr(objective, "fetch", None)
    if not depth or fetch is None:
        for idx in batches:
            yield idx, None
        return
    from collections import deque
    from concurrent.futures import ThreadPoolExecutor

    pool = ThreadPoolExecutor(1, thread_name_prefix="prefetch")
    queue: deque = deque()
    nxt = 0
    try:
        for idx in batches:
            while nxt < len(batches) and len(queue) <= depth:
                queue.append(pool.submit(fetch, batches[nxt]))
                nxt += 1
            yield idx, queue.popleft().result()
    finally:
        for fut in queue:
            fut.cancel()
        pool.shutdown(wait=True)


def _write_log(folder: Path, log: list[dict]) -> None:
    with atomic_path(folder / LOG) as tmp:
        tmp.write_text("".join(json.dumps(r) + "\n" for r in log))


class Trainer:
    """One run of :func:`train`: setup, resume, the step loop, evaluation and checkpoints (see the module docs)."""

    def __init__(
        self,
        model,
        objective: Objective,
        cfg: TrainConfig,
        modules,
        out_dir,
        restore_best: bool,
        progress: bool,
        d: Dist,
        prefetch: int = 0,
    ):
        self.objective, self.cfg, self.d, self.restore_best, self.progress = objective, cfg, d, restore_best, progress
        self.prefetch = prefetch  # batches read ahead by _feed
        self.module = model.to(d.device)
        self.dropout = dropout_impl(d.device)
        use_dropout(self.module, self.dropout)
        self.wrapped = self.module
        if d.world > 1:
            from torch.nn.parallel import DistributedDataParallel as DDP

            self.wrapped = DDP(self.module, device_ids=[d.local_rank] if d.device.type == "cuda" else None)
        self.opt = make_optimizer(param_groups(modules or [(self.module, cfg.lr)], cfg.weight_decay), d.device)
        self.per_epoch = steps_per_epoch(len(objective.lengths), objective.lengths, cfg, d.world)
        self.total = total_steps(cfg, self.per_epoch)
        self.sched = make_scheduler(self.opt, cfg, self.total)
        self.eval_every = cfg.eval_every or self.per_epoch
        self.ckpt_every = cfg.ckpt_every or self.eval_every
        self.stepper = Stepper(self.wrapped, self.module, objective, self.opt, self.sched, cfg, d)
        self.out = Path(out_dir) if out_dir is not None else None
        self.identity = {
            "config": _comparable(cfg.to_dict()),
            "data": objective.digest(),
            "objective": objective.name,
            "dropout": self.dropout,
        }
        self.state = {
            "step": 0,
            "log": [],
            "meter": {},
            "best": None,
            "best_step": None,
            "best_state": None,
            "since": 0,
        }
        self.t_interval, self.n_tokens = 0.0, 0

    # ----------------------------------------------------------------- checkpoints

    @property
    def checkpoint_path(self) -> Path | None:
        return self.out / CHECKPOINT if self.out is not None else None

    def resume(self) -> bool:
        """Continue from the checkpoint in the output folder; False when there is none."""
        ckpt = self.checkpoint_path
        if ckpt is None or not ckpt.exists():
            return False
        saved = torch.load(ckpt, map_location=self.d.device, weights_only=False)
        theirs = {"dropout": "torch", **saved["identity"], "config": _comparable(saved["identity"]["config"])}
        if theirs != self.identity:
            raise ConfigError(
                f"{ckpt} was written with another configuration or other data; use a new output folder or no resume",
                str(ckpt),
            )
        self.module.load_state_dict(saved["model"])
        self.opt.load_state_dict(saved["optimizer"])
        self.sched.load_state_dict(saved["scheduler"])
        self.state = saved["state"]
        return True

    def start_fresh(self) -> None:
        if self.out is not None and self.d.main:
            self.out.mkdir(parents=True, exist_ok=True)
            (self.out / LOG).unlink(missing_ok=True)

    def save_checkpoint(self) -> None:
        payload = {
            "model": self.module.state_dict(),
            "optimizer": self.opt.state_dict(),
            "scheduler": self.sched.state_dict(),
            "state": self.state,
            "identity": self.identity,
        }
        with atomic_path(self.checkpoint_path) as tmp:
            torch.save(payload, tmp)
        _write_log(self.out, self.state["log"])

    # ----------------------------------------------------------------- the loop

    def record(self, loss: torch.Tensor, stats: dict, idx: torch.Tensor, seconds: float) -> None:
        """Add one step's loss and counters to the meters of the current interval."""
        self.t_interval += seconds
        self.n_tokens += int(stats.get("tokens", 0))
        meter = self.state["meter"]
        meter["loss_sum"] = meter.get("loss_sum", 0.0) + float(loss.detach()) * stats.get("rows", len(idx))
        for k, v in stats.items():
            if k != "grad_norm":
                meter[k] = meter.get(k, 0) + v

    def evaluate(self, step: int, stats: dict) -> bool:
        """Log the interval, evaluate (rank 0), track the best state; returns whether to stop early."""
        meter = self.state["meter"]
        row = {
            "step": step,
            "epoch": round(step / self.per_epoch, 3),
            "lr": self.sched.get_last_lr()[0],
            "train_loss": meter["loss_sum"] / max(meter.get("rows", 0), 1),
            **self.objective.train_metrics(meter),
            **({"grad_norm": stats["grad_norm"]} if "grad_norm" in stats else {}),
            "seconds": round(self.t_interval, 3),
            "tokens_per_s": round(self.n_tokens * self.d.world / max(self.t_interval, 1e-9), 1),
        }
        if self.d.main:
            self.module.eval()
            metrics = self.objective.evaluate(self.module)
            self.module.train()
            row.update(metrics)
            if metrics:
                self._track_best(step, self.objective.score(metrics))
                self.bar.set_postfix(
                    {self.objective.monitor: f"{metrics.get(self.objective.monitor, float('nan')):.4g}"}
                )
        self.state["log"].append(row)
        self.state["meter"], self.t_interval, self.n_tokens = {}, 0.0, 0
        patience = self.cfg.patience
        return _broadcast_flag(self.d, patience is not None and self.state["since"] >= patience)

    def _track_best(self, step: int, score: float) -> None:
        if self.state["best"] is None or score < self.state["best"]:
            self.state.update(best=score, best_step=step, since=0)
            if self.restore_best:
                self.state["best_state"] = copy.deepcopy(self.module.state_dict())
        else:
            self.state["since"] += 1

    def run(self) -> TrainResult:
        from tqdm.auto import tqdm

        t_start = time.perf_counter()
        cfg, d, step, stop = self.cfg, self.d, self.state["step"], False
        self.bar = tqdm(
            total=self.total,
            initial=step,
            disable=not (self.progress and d.main),
            desc=self.objective.name,
            unit="step",
        )
        self.wrapped.train()
        while step < self.total and not stop:
            epoch, pos = divmod(step, self.per_epoch)
            batches = epoch_batches(self.objective.lengths, cfg.batch_size, epoch, cfg.seed, cfg.bucket_batches)
            mine = batches[d.rank :: d.world][: self.per_epoch][pos:][: self.total - step]
            with contextlib.closing(_feed(self.objective, mine, self.prefetch)) as feed:
                for idx, data in feed:
                    t0 = time.perf_counter()
                    loss, stats = self.stepper(step, idx) if data is None else self.stepper(step, idx, data)
                    step += 1
                    synchronize(d.device)
                    self.record(loss, stats, idx, time.perf_counter() - t0)
                    self.bar.update(1)
                    if step % self.eval_every == 0 or step == self.total:
                        stop = self.evaluate(step, stats)
                    if self.out is not None and d.main and (step % self.ckpt_every == 0 or step == self.total or stop):
                        self.state["step"] = step
                        self.save_checkpoint()
                    if stop:
                        break
            barrier(d)
        self.bar.close()
        self.state["step"] = step
        return self.finish(step, stop, time.perf_counter() - t_start)

    def finish(self, step: int, stopped: bool, seconds: float) -> TrainResult:
        """Restore the best evaluation's weights (when asked) and report."""
        best_step = self.state["best_step"] if self.restore_best else None
        if best_step is not None and self.state["best_state"] is not None:
            self.module.load_state_dict(self.state["best_state"])
        self.module.eval()
        return TrainResult(
            history=pd.DataFrame(self.state["log"]),
            steps=step,
            best_step=best_step,
            best_epoch=round(best_step / self.per_epoch, 3) if best_step is not None else None,
            stopped_early=bool(stopped),
            seconds=seconds,
        )


def train(
    model: nn.Module,
    objective: Objective,
    cfg: TrainConfig,
    modules: list[tuple[nn.Module, float]] | None = None,
    out_dir: str | os.PathLike | None = None,
    resume: bool = False,
    restore_best: bool = True,
    progress: bool = True,
    d: Dist | None = None,
    prefetch: int | None = None,
) -> TrainResult:
    """Train ``model`` on ``objective`` with the settings of ``cfg``; returns what happened.

    ``modules``: (module, learning rate) pairs for the optimizer (default: the whole model at ``cfg.lr``).
    ``out_dir``: where ``checkpoint.pt`` and ``log.jsonl`` go (``None``: no checkpoints); with ``resume`` a
    checkpoint there is continued. ``restore_best``: leave the model with the weights of its best evaluation
    (else the final ones). Under ``torchrun`` the model is wrapped in DDP; only rank 0 evaluates.
    ``prefetch``: batches a background thread reads ahead for objectives with a ``fetch`` (what DataLoader
    workers do; the results are the same with any value); None: 2 on CUDA, where the host work would otherwise
    wait for the device, 0 on the CPU, where the thread would take a core from the step.
    """
    d = d or setup_distributed()
    if prefetch is None:
        prefetch = 2 if d.device.type == "cuda" else 0
    if prefetch < 0:
        raise ConfigError(f"prefetch must be >= 0, got {prefetch}", "prefetch")
    trainer = Trainer(model, objective, cfg, modules, out_dir, restore_best, progress, d, prefetch)
    try:
        if not (resume and trainer.resume()):
            trainer.start_fresh()
        return trainer.run()
    finally:
        use_dropout(trainer.module, "torch")  # the model leaves as it came: nn.Dropout, SDPA
