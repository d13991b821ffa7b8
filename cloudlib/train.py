"""Masked-language-model pre-training of the CLOUD encoder.

``pretrain(strings, cfg, out_dir)`` trains a BertForMaskedLM on SCOPE strings the way the paper does
(15 % of the non-special tokens selected; of those 80 % -> [MASK], 10 % -> a random token, 10 % kept;
AdamW with linear warm-up and cosine decay; 80/20 train/validation split), with what makes it fast and
safe on any machine:

* dynamic padding with length bucketing (mean SCOPE is ~28 of 64 positions), the MLM head evaluated on
  masked positions only, bf16 autocast and fused AdamW on CUDA;
* **determinism by construction**: data order, masks and dropout are pure functions of
  (seed, epoch, step, rank), so an interrupted run resumed from its checkpoint (model, optimizer,
  scheduler, position in the epoch) reproduces the uninterrupted run;
* checkpoints written atomically every ``ckpt_every`` steps; a JSON-lines log of train/validation loss,
  masked-token accuracy, learning rate and real (non-pad) tokens per second;
* multi-GPU / multi-node through ``torchrun`` (DDP; gloo on CPU, NCCL on GPU): each rank takes every
  world-th batch, rank 0 evaluates, logs and saves.

Command line: ``python -m cloudlib pretrain --profile {smoke,laptop,paper} --out DIR [--resume]``.
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from . import model as cloud_model
from .io import atomic_path, write_json

IGNORE = -100


@dataclass
class PretrainConfig:
    """Everything that defines a pre-training run (saved with every checkpoint)."""

    model: str = "tiny"  # a preset of cloudlib.model.PRESETS
    epochs: float = 1.0  # may be fractional; max_steps wins when set
    max_steps: int | None = None
    batch_size: int = 64  # per rank
    lr: float = 1e-3
    weight_decay: float = 0.0
    warmup_ratio: float = 0.05
    grad_clip: float = 1.0
    mlm_probability: float = 0.15
    val_fraction: float = 0.2
    eval_every: int = 100  # steps; also at the end
    eval_max_strings: int | None = 4096  # validation strings per evaluation (None = all)
    ckpt_every: int = 100
    seed: int = 0
    bucket_batches: int = 50  # length-sort within windows of this many batches (0 = no bucketing)
    dropout: float = 0.1
    corpus_limit: int | None = None  # crystals per corpus source (smoke runs)
    max_train_strings: int | None = None  # subsample the training split (data-scaling sweeps)
    threads: int | None = None  # torch CPU threads per rank (default: cores / local ranks)

    def replace(self, **kw) -> "PretrainConfig":
        return dataclasses.replace(self, **kw)


PROFILES: dict[str, PretrainConfig] = {
    # seconds: a tiny model on a slice of the corpus
    "smoke": PretrainConfig(model="tiny", max_steps=60, batch_size=32, lr=2e-3, eval_every=30, ckpt_every=20,
                            corpus_limit=150, eval_max_strings=512),
    # the README's main job on 2 CPU cores: ~10 minutes
    "laptop": PretrainConfig(model="small", epochs=4, batch_size=128, lr=1e-3, eval_every=100, ckpt_every=100,
                             eval_max_strings=4096),
    # the paper (config_pretrain.yaml): BERT-base, batch 1024, lr 1e-4, cosine, 5 % warm-up, 50 epochs
    "paper": PretrainConfig(model="base", epochs=50, batch_size=1024, lr=1e-4, weight_decay=0.0, warmup_ratio=0.05,
                            eval_every=2000, ckpt_every=2000, eval_max_strings=None),
}


# --------------------------------------------------------------------------- distributed


@dataclass
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def main(self) -> bool:
        return self.rank == 0


def setup_distributed() -> Dist:
    """Initialise torch.distributed when launched by torchrun (WORLD_SIZE > 1), else single process."""
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


def _barrier(d: Dist) -> None:
    if d.world > 1:
        import torch.distributed as dist

        dist.barrier()


# --------------------------------------------------------------------------- data


@dataclass
class Encoded:
    """Token ids of many strings, right-padded to a common width, with their lengths."""

    ids: torch.Tensor  # [N, W] int64
    lengths: torch.Tensor  # [N]

    def __len__(self) -> int:
        return len(self.lengths)

    def batch(self, index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(input_ids, attention_mask) for rows ``index``, trimmed to the longest (dynamic padding)."""
        width = int(self.lengths[index].max())
        ids = self.ids[index, :width]
        mask = torch.arange(width) < self.lengths[index, None]
        return ids, mask.long()


def encode(tokenizer, strings: list[str]) -> Encoded:
    enc = tokenizer.encode_batch(strings)  # raises BlockSizeError naming any string over the block size
    return Encoded(enc["input_ids"], enc["attention_mask"].sum(1))


def split_strings(strings: list[str], val_fraction: float, seed: int) -> tuple[list[str], list[str]]:
    """Seeded random train/validation split (the paper: 80/20)."""
    g = torch.Generator().manual_seed(seed)
    perm = torch.randperm(len(strings), generator=g).tolist()
    n_val = int(round(val_fraction * len(strings)))
    return [strings[i] for i in perm[n_val:]], [strings[i] for i in perm[:n_val]]


def epoch_batches(data: Encoded, batch_size: int, epoch: int, seed: int, bucket_batches: int) -> list[torch.Tensor]:
    """The batches of one epoch: a seeded shuffle, length-sorted within windows, batches shuffled."""
    g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    perm = torch.randperm(len(data), generator=g)
    if bucket_batches > 0:
        window = batch_size * bucket_batches
        chunks = [c[torch.argsort(data.lengths[c], stable=True)] for c in perm.split(window)]
        perm = torch.cat(chunks)
    batches = list(perm.split(batch_size))
    order = torch.randperm(len(batches), generator=g).tolist()
    return [batches[i] for i in order]


def mask_tokens(ids: torch.Tensor, attention: torch.Tensor, tokenizer, p: float, g: torch.Generator):
    """BERT masking: select each real, non-special token with probability p; of those 80 % -> [MASK],
    10 % -> a random non-special token, 10 % unchanged. Returns (inputs, labels); labels are -100 elsewhere."""
    special = torch.zeros_like(ids, dtype=torch.bool)
    for sid in (tokenizer.cls_token_id, tokenizer.sep_token_id, tokenizer.pad_token_id):
        special |= ids == sid
    candidates = attention.bool() & ~special
    selected = (torch.rand(ids.shape, generator=g) < p) & candidates
    if not selected.any():  # never an empty loss: mask one random candidate
        flat = candidates.flatten().nonzero().flatten()
        selected.view(-1)[flat[torch.randint(len(flat), (1,), generator=g)]] = True
    labels = torch.where(selected, ids, torch.full_like(ids, IGNORE))
    r = torch.rand(ids.shape, generator=g)
    inputs = ids.clone()
    inputs[selected & (r < 0.8)] = tokenizer.mask_token_id
    n_special = len(tokenizer.all_special_ids)
    random_ids = torch.randint(n_special, len(tokenizer), ids.shape, generator=g)
    swap = selected & (r >= 0.8) & (r < 0.9)
    inputs[swap] = random_ids[swap]
    return inputs, labels


# --------------------------------------------------------------------------- the step


class MaskedLMLoss(nn.Module):
    """Wraps a BertForMaskedLM; forward returns the MLM loss with the head run on masked positions only
    (what DDP wraps, so gradient synchronisation sees a normal forward)."""

    def __init__(self, mlm):
        super().__init__()
        self.mlm = mlm

    def forward(self, input_ids, attention_mask, labels):
        hidden = self.mlm.bert(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        where = labels != IGNORE
        logits = self.mlm.cls(hidden[where])
        target = labels[where]
        loss = F.cross_entropy(logits.float(), target)
        correct = (logits.argmax(-1) == target).sum()
        return loss, correct, target.numel()


def lr_lambda(warmup: int, total: int):
    """Linear warm-up then cosine decay to zero (transformers' get_cosine_schedule_with_warmup)."""

    def f(step: int) -> float:
        if step < warmup:
            return (step + 1) / max(1, warmup)
        progress = (step - warmup) / max(1, total - warmup)
        return max(0.0, 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress))))

    return f


def make_optimizer(model: nn.Module, cfg: PretrainConfig, device: torch.device) -> torch.optim.Optimizer:
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            (no_decay if p.ndim < 2 or "LayerNorm" in name else decay).append(p)
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    kw = {"fused": True} if device.type == "cuda" else {}
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(0.9, 0.999), eps=1e-8, **kw)


def _autocast(device: torch.device):
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


@torch.no_grad()
def evaluate(model: nn.Module, data: Encoded, tokenizer, cfg: PretrainConfig, device, max_strings=None) -> dict:
    """Validation loss and masked-token accuracy with fixed masks (same every evaluation)."""
    loss_model = model if isinstance(model, MaskedLMLoss) else MaskedLMLoss(model)
    was_training = loss_model.training
    loss_model.eval()
    n = len(data) if max_strings is None else min(max_strings, len(data))
    order = torch.argsort(data.lengths[:n], stable=True)
    g = torch.Generator().manual_seed(cfg.seed + 99991)
    total_loss, total_correct, total_n = 0.0, 0, 0
    for idx in order.split(cfg.batch_size * 2):
        ids, mask = data.batch(idx)
        inputs, labels = mask_tokens(ids, mask, tokenizer, cfg.mlm_probability, g)
        with _autocast(device):
            loss, correct, count = loss_model(inputs.to(device), mask.to(device), labels.to(device))
        total_loss += float(loss) * count
        total_correct += int(correct)
        total_n += count
    loss_model.train(was_training)
    return {"val_loss": total_loss / total_n, "val_acc": total_correct / total_n, "val_tokens": total_n}


# --------------------------------------------------------------------------- the loop


def _same_run(saved: dict, current: dict) -> bool:
    """Whether a checkpoint's configuration is this run's (the thread count does not define a run)."""
    ignore = {"threads"}
    return {k: v for k, v in saved.items() if k not in ignore} == {k: v for k, v in current.items() if k not in ignore}


def _save_checkpoint(path: Path, state: dict) -> None:
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def pretrain(
    strings: list[str],
    cfg: PretrainConfig,
    out_dir: str | os.PathLike,
    resume: bool = False,
    tokenizer=None,
    progress: bool = True,
) -> dict:
    """Pre-train a CLOUD encoder on SCOPE ``strings``; returns the final summary (also in out_dir).

    ``out_dir`` receives ``checkpoint.pt`` (for ``resume``), ``log.jsonl``, ``config.json``,
    ``summary.json`` and the final model + tokenizer in ``model/`` (``save_pretrained`` format).
    """
    from tqdm.auto import tqdm

    from .tokenizer import make_tokenizer

    d = setup_distributed()
    threads = cfg.threads or max(1, (os.cpu_count() or 1) // int(os.environ.get("LOCAL_WORLD_SIZE", d.world)))
    torch.set_num_threads(threads)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tok = tokenizer or make_tokenizer()

    train_s, val_s = split_strings(sorted(set(strings)), cfg.val_fraction, cfg.seed)
    if cfg.max_train_strings is not None:
        train_s = train_s[: cfg.max_train_strings]
    train, val = encode(tok, train_s), encode(tok, val_s)

    mlm = cloud_model.build_mlm(cloud_model.preset(cfg.model).replace(dropout=cfg.dropout), tok, seed=cfg.seed)
    net = MaskedLMLoss(mlm).to(d.device)
    model = net
    if d.world > 1:
        from torch.nn.parallel import DistributedDataParallel as DDP

        model = DDP(net, device_ids=[d.local_rank] if d.device.type == "cuda" else None)
    opt = make_optimizer(net, cfg, d.device)

    per_epoch = len(epoch_batches(train, cfg.batch_size, 0, cfg.seed, cfg.bucket_batches)) // d.world
    if per_epoch == 0:
        raise ValueError(f"{len(train)} training strings make no batch of {cfg.batch_size} on {d.world} ranks")
    total = cfg.max_steps or max(1, int(math.ceil(cfg.epochs * per_epoch)))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(int(cfg.warmup_ratio * total), total))

    step, log, meter = 0, [], (0.0, 0, 0, 0)  # meter: train loss sum, correct, masked, steps since last eval
    ckpt = out / "checkpoint.pt"
    if resume and ckpt.exists():
        state = torch.load(ckpt, map_location=d.device, weights_only=False)
        if not _same_run(state["config"], dataclasses.asdict(cfg)):
            raise ValueError(f"{ckpt} was written with another configuration; use a new --out or no --resume")
        net.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        step, log, meter = state["step"], state["log"], tuple(state["meter"])
    elif d.main:
        for stale in ("log.jsonl", "summary.json"):
            (out / stale).unlink(missing_ok=True)
    if d.main:
        write_json(out / "config.json", {**dataclasses.asdict(cfg), "world_size": d.world,
                                         "n_train": len(train), "n_val": len(val), "total_steps": total,
                                         "non_embedding_params": cloud_model.n_params(mlm)})

    n_tokens, t_train = 0, 0.0
    loss_sum, n_correct, n_masked, n_steps = meter
    bar = tqdm(total=total, initial=step, disable=not (progress and d.main), desc=f"pretrain {cfg.model}", unit="step")
    model.train()
    while step < total:
        epoch, pos = divmod(step, per_epoch)
        batches = epoch_batches(train, cfg.batch_size, epoch, cfg.seed, cfg.bucket_batches)[d.rank::d.world][:per_epoch]
        for idx in batches[pos:]:
            if step >= total:
                break
            t0 = time.perf_counter()
            torch.manual_seed(cfg.seed * 7_919 + step * 104_729 + d.rank)  # dropout: a function of the step
            g = torch.Generator().manual_seed(cfg.seed * 15_485_863 + step * 32_452_843 + d.rank)
            ids, mask = train.batch(idx)
            inputs, labels = mask_tokens(ids, mask, tok, cfg.mlm_probability, g)
            with _autocast(d.device):
                loss, correct, count = model(inputs.to(d.device), mask.to(d.device), labels.to(d.device))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            grad_norm = torch.nn.utils.clip_grad_norm_(net.parameters(), cfg.grad_clip)
            opt.step()
            sched.step()
            step += 1
            if d.device.type == "cuda":
                torch.cuda.synchronize()
            t_train += time.perf_counter() - t0
            n_tokens += int(mask.sum())
            loss_sum, n_correct, n_masked, n_steps = loss_sum + float(loss.detach()), n_correct + int(correct), n_masked + count, n_steps + 1
            bar.update(1)
            row = None
            if step % cfg.eval_every == 0 or step == total:
                row = {"step": step, "epoch": round(step / per_epoch, 3), "lr": sched.get_last_lr()[0],
                       "train_loss": loss_sum / n_steps, "train_acc": n_correct / n_masked, "grad_norm": float(grad_norm),
                       "tokens_per_s": round(n_tokens * d.world / max(t_train, 1e-9), 1)}
                if d.main:
                    row.update(evaluate(net, val, tok, cfg, d.device, cfg.eval_max_strings))
                    bar.set_postfix(loss=f"{row['val_loss']:.3f}", acc=f"{row['val_acc']:.3f}")
                log.append(row)
                n_tokens, t_train, loss_sum, n_correct, n_masked, n_steps = 0, 0.0, 0.0, 0, 0, 0
            if d.main and (step % cfg.ckpt_every == 0 or step == total):
                _save_checkpoint(ckpt, {"model": net.state_dict(), "optimizer": opt.state_dict(),
                                        "scheduler": sched.state_dict(), "step": step, "log": log,
                                        "meter": (loss_sum, n_correct, n_masked, n_steps),
                                        "config": dataclasses.asdict(cfg)})
                with atomic_path(out / "log.jsonl") as tmp:
                    tmp.write_text("".join(json.dumps(r) + "\n" for r in log))
            if row is not None or step % cfg.ckpt_every == 0:
                _barrier(d)
    bar.close()
    summary = {"steps": step, "final": log[-1] if log else None, "world_size": d.world}
    if d.main:
        cloud_model.save(mlm, tok, out / "model")
        write_json(out / "summary.json", summary)
    _barrier(d)
    return summary


def pretrain_profile(profile: str, out_dir, resume: bool = False, overrides: dict | None = None,
                     progress: bool = True, jobs: int = 1) -> dict:
    """Pre-train on the offline corpus (:func:`cloudlib.data.load_pretraining_corpus`) with a profile."""
    from .data import load_pretraining_corpus

    if profile not in PROFILES:
        raise KeyError(f"unknown profile {profile!r}; profiles: {sorted(PROFILES)}")
    cfg = PROFILES[profile].replace(**(overrides or {}))
    corpus, _ = load_pretraining_corpus(limit=cfg.corpus_limit, jobs=jobs, progress=False)
    return pretrain(list(corpus.index), cfg, out_dir, resume=resume, progress=progress)
