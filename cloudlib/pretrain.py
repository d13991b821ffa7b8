"""Masked-language-model pre-training of the CLOUD encoder: the MLM objective for the training engine.

``pretrain(strings, cfg, out_dir)`` trains a BertForMaskedLM on SCOPE strings the way the paper does (15 % of
the non-special tokens selected; of those 80 % -> [MASK], 10 % -> a random token, 10 % kept; AdamW with linear
warm-up and cosine decay; an 80/20 train/validation split). The loop, checkpoints, exact resume and DDP are
:func:`cloudlib.engine.train`'s; this module owns only what is particular to MLM:

* :func:`mask_tokens` (BERT masking with a step-seeded generator),
* :class:`MaskedLMLoss` (the MLM head evaluated on masked positions only),
* :class:`MLMObjective` (loss on a batch, validation loss and masked-token accuracy with fixed masks).

``out_dir`` receives ``checkpoint.pt`` (for ``resume``), ``log.jsonl``, ``config.json`` (the resolved config
and data sizes), ``summary.json`` and the final model + tokenizer in ``model/`` (``save_pretrained`` format).

Command line: ``python -m cloudlib pretrain --preset {smoke,laptop,paper} --out DIR [--resume] [--set k=v]``;
``torchrun --nproc_per_node=N -m cloudlib pretrain ...`` for several processes.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from . import engine
from . import model as cloud_model
from .config import PretrainConfig
from .errors import ConfigError, DataError
from .io import write_json
from .scope import expand_variants
from .splits import seeded_split

IGNORE = -100


def split_strings(strings: list[str], val_fraction: float, seed: int) -> tuple[list[str], list[str]]:
    """The pre-training split of a corpus: (train, validation) strings of the sorted unique ``strings``, in
    the seeded permutation's order (so the first D training strings are a random subset of size D)."""
    unique = sorted(set(strings))
    train_idx, val_idx = seeded_split(len(unique), val_fraction, seed)
    return [unique[i] for i in train_idx], [unique[i] for i in val_idx]


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


class MaskedLMLoss(nn.Module):
    """Wraps a BertForMaskedLM; forward returns (loss, correct, masked) with the head run on masked positions
    only (what DDP wraps, so gradient synchronisation sees a normal forward)."""

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


@torch.no_grad()
def evaluate(
    loss_model: MaskedLMLoss,
    data: engine.Encoded,
    tokenizer,
    p: float,
    seed: int,
    batch_size: int,
    device,
    max_strings: int | None = None,
    precision: str = "auto",
) -> dict:
    """Validation loss and masked-token accuracy with fixed masks (the same at every evaluation)."""
    was_training = loss_model.training
    loss_model.eval()
    n = len(data) if max_strings is None else min(max_strings, len(data))
    order = torch.argsort(data.lengths[:n], stable=True)
    g = torch.Generator().manual_seed(seed + 99991)
    total_loss, total_correct, total_n = 0.0, 0, 0
    for idx in order.split(batch_size):
        ids, mask = data.batch(idx)
        inputs, labels = mask_tokens(ids, mask, tokenizer, p, g)
        with engine.autocast(device, precision):
            loss, correct, count = loss_model(inputs.to(device), mask.to(device), labels.to(device))
        total_loss += float(loss) * count
        total_correct += int(correct)
        total_n += count
    loss_model.train(was_training)
    return {"val_loss": total_loss / total_n, "val_acc": total_correct / total_n, "val_tokens": total_n}


class MLMObjective(engine.Objective):
    """MLM on encoded training strings; validation on (the first ``eval_max_strings`` of) the validation split."""

    name = "pretrain"
    monitor = "val_loss"
    seed_stream = 0

    def __init__(self, train: engine.Encoded, val: engine.Encoded, tokenizer, cfg: PretrainConfig, device):
        self.train, self.val, self.tok, self.cfg, self.device = train, val, tokenizer, cfg, device
        self.lengths = train.lengths

    def fetch(self, idx):
        """The batch's ids and mask (read from memory or the token shards): what the engine may read ahead."""
        return self.train.batch(idx)

    def loss(self, model, idx, g, data=None):
        ids, mask = self.fetch(idx) if data is None else data
        inputs, labels = mask_tokens(ids, mask, self.tok, self.cfg.mlm_probability, g)
        loss, correct, count = model(inputs.to(self.device), mask.to(self.device), labels.to(self.device))
        return loss, {"rows": len(idx), "tokens": int(mask.sum()), "correct": int(correct), "count": int(count)}

    def train_metrics(self, totals):
        return {"train_acc": totals["correct"] / max(totals["count"], 1)} if "count" in totals else {}

    def evaluate(self, model):
        if not len(self.val):
            return {}
        return evaluate(
            model,
            self.val,
            self.tok,
            self.cfg.mlm_probability,
            self.cfg.seed,
            self.cfg.batch_size * 2,
            self.device,
            self.cfg.eval_max_strings,
            self.cfg.precision,
        )

    def digest(self):
        if hasattr(self.train, "digest"):  # streamed token shards: their files and the rows taken
            return hashlib.sha256(f"{self.train.digest()} {engine.tensor_digest(self.val.ids)}".encode()).hexdigest()[
                :16
            ]
        return engine.tensor_digest(self.train.ids, self.val.ids)


def pretrain(
    strings: list[str],
    cfg: PretrainConfig,
    out_dir: str | os.PathLike,
    resume: bool = False,
    tokenizer=None,
    progress: bool = True,
    prefetch: int | None = None,
) -> dict:
    """Pre-train a CLOUD encoder on SCOPE ``strings``; returns the final summary (also in ``out_dir``).
    ``prefetch``: batches read ahead by a background thread (:func:`cloudlib.engine.train`; None: on CUDA only)."""
    from .tokenizer import make_tokenizer

    d = engine.setup_distributed()
    with engine.torch_threads(cfg.threads, d):
        tok = tokenizer or make_tokenizer()
        train_s, val_s = split_strings(strings, cfg.val_fraction, cfg.seed)
        if cfg.max_train_strings is not None:
            train_s = train_s[: cfg.max_train_strings]
        if cfg.augment > 1:  # equivalent orders of each training string; none that is a validation string
            held = set(val_s)
            train_s = [s for s in expand_variants(train_s, cfg.augment, cfg.seed)[0] if s not in held]
        train, val = engine.encode(tok, train_s), engine.encode(tok, val_s)
        return _pretrain(train, val, tok, cfg, Path(out_dir), resume, progress, d, prefetch=prefetch)


def pretrain_shards(
    shards,
    cfg: PretrainConfig,
    out_dir: str | os.PathLike,
    resume: bool = False,
    tokenizer=None,
    progress: bool = True,
    prefetch: int | None = None,
) -> dict:
    """Pre-train on a tokenized corpus streamed from disk (:class:`cloudlib.token_shards.TokenShards`): batches
    are read from the memory-mapped shards as the engine asks for them (each DDP rank its own), so memory does
    not grow with the corpus. Validation rows are chosen by string hash (:meth:`TokenShards.split`; another
    split than :func:`split_strings`, which needs every string in memory); ``max_train_strings`` takes a seeded
    random subset of the training rows; ``augment`` needs the strings and is refused."""
    from .tokenizer import make_tokenizer

    if cfg.augment > 1:
        raise ConfigError("augment needs the strings: a streamed corpus is pre-trained as built (use 1)", "augment")
    d = engine.setup_distributed()
    with engine.torch_threads(cfg.threads, d):
        tok = tokenizer or make_tokenizer()
        train, val = shards.split(cfg.val_fraction, cfg.seed)
        if cfg.max_train_strings is not None and cfg.max_train_strings < len(train):
            g = torch.Generator().manual_seed(cfg.seed)
            train = train.rows(np.sort(torch.randperm(len(train), generator=g)[: cfg.max_train_strings].numpy()))
        n_val = len(val) if cfg.eval_max_strings is None else min(cfg.eval_max_strings, len(val))
        val = engine.Encoded(*val.rows(np.arange(n_val)).materialize())  # the rows evaluate() reads, in memory
        return _pretrain(
            train,
            val,
            tok,
            cfg,
            Path(out_dir),
            resume,
            progress,
            d,
            {"corpus": str(shards.folder), "corpus_strings": len(shards)},
            prefetch=prefetch,
        )


def _pretrain(
    train, val, tok, cfg: PretrainConfig, out: Path, resume: bool, progress: bool, d, extra=None, prefetch=None
) -> dict:
    """The pre-training run of :func:`pretrain` and :func:`pretrain_shards` on encoded rows."""
    out.mkdir(parents=True, exist_ok=True)
    mlm = cloud_model.build_mlm(cloud_model.preset(cfg.model).replace(dropout=cfg.dropout), tok, seed=cfg.seed)
    net = MaskedLMLoss(mlm)
    objective = MLMObjective(train, val, tok, cfg, d.device)
    per_epoch = engine.steps_per_epoch(len(train), train.lengths, cfg, d.world)
    if d.main:
        if not resume:
            (out / "summary.json").unlink(missing_ok=True)
        write_json(
            out / "config.json",
            {
                **cfg.to_dict(),
                "world_size": d.world,
                "n_train": len(train),
                "n_val": len(val),
                "total_steps": engine.total_steps(cfg, per_epoch),
                "non_embedding_params": cloud_model.n_params(mlm),
                **(extra or {}),
                # the data's cost: the rows opened, split and ordered, before any activation is allocated
                "peak_rss_mb_before_training": engine.peak_rss_mb(),
            },
        )
    result = engine.train(
        net, objective, cfg, out_dir=out, resume=resume, restore_best=False, progress=progress, d=d, prefetch=prefetch
    )
    log = result.history.to_dict(orient="records")
    summary = {
        "steps": result.steps,
        "final": log[-1] if log else None,
        "world_size": d.world,
        "seconds": round(result.seconds, 1),
        "peak_rss_mb": engine.peak_rss_mb(),
    }
    if d.main:
        cloud_model.save(mlm, tok, out / "model")
        write_json(out / "summary.json", summary)
    engine.barrier(d)
    return summary


def pretrain_preset(
    name: str,
    out_dir,
    resume: bool = False,
    overrides: dict | None = None,
    progress: bool = True,
    jobs: int = 1,
    corpus: str | os.PathLike | None = None,
    prefetch: int | None = None,
) -> dict:
    """Pre-train with a preset on the offline corpus (:func:`cloudlib.corpus.load_pretraining_corpus`, in memory) or,
    with ``corpus``, on any corpus file or folder (the authors' CSV, CSV / Parquet shards, a harvest folder, a
    token-shard folder), streamed from token shards (:func:`corpus_shards`, :func:`pretrain_shards`)."""
    from .config import preset
    from .corpus import load_pretraining_corpus

    cfg = preset("pretrain", name, **(overrides or {}))
    if corpus is not None:
        shards = corpus_shards(corpus, out_dir, reuse=resume)
        return pretrain_shards(shards, cfg, out_dir, resume=resume, progress=progress, prefetch=prefetch)
    table, _ = load_pretraining_corpus(limit=cfg.corpus_limit, jobs=jobs, progress=False, holdout=cfg.holdout)
    return pretrain(list(table.index), cfg, out_dir, resume=resume, progress=progress, prefetch=prefetch)


def corpus_shards(corpus: str | os.PathLike, out_dir: str | os.PathLike, tokenizer=None, reuse: bool = False):
    """The token shards of a corpus for streaming: ``corpus`` itself when it is a shard folder
    (:func:`cloudlib.token_shards.build` made it), else the corpus (:func:`cloudlib.corpus.iter_corpus`: a CSV or
    Parquet file, a folder of shards, a harvest folder) tokenized once into ``OUT_DIR/token_shards`` by rank 0
    (resumable: finished shards are kept), the other ranks waiting. ``reuse`` (a resumed run): a complete build
    there is used as it is, without reading the corpus again (the checkpoint's data digest still has to match)."""
    from . import token_shards
    from .paths import resolve
    from .tokenizer import make_tokenizer

    tok = tokenizer or make_tokenizer()
    root = resolve(corpus)
    if (root / token_shards.MANIFEST).is_file():
        return token_shards.open_shards(root, tok)
    folder = Path(out_dir) / "token_shards"
    if reuse and (folder / token_shards.MANIFEST).is_file():
        try:
            return token_shards.open_shards(folder, tok)
        except DataError:  # unfinished or damaged: build (resumably) below
            pass
    d = engine.setup_distributed()
    if d.main:  # in a child process: what tokenizing and deduplicating hold is not kept by the training process
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
            pool.submit(_build_shards, root, tok, folder).result()
    engine.barrier(d)
    return token_shards.open_shards(folder, tok)


def _build_shards(root: Path, tok, folder: Path) -> None:
    """:func:`corpus_shards`' build, run in a child process."""
    from . import token_shards
    from .corpus import iter_corpus

    token_shards.build(iter_corpus(root), tok, folder, source=str(root))
