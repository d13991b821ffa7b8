"""Fine-tuning the CLOUD encoder for property prediction, saving the result, predicting for crystals.

The authors' recipe (CLOUD ``model/cloud.py`` and ``train.py``): the [CLS] hidden state of the BERT
encoder -> dropout -> ``Linear(H, H)`` + SiLU -> ``Linear(H, 1)``; L1 loss on targets standardised with
the *training* mean and standard deviation; AdamW with linear warm-up and cosine decay; the weights of
the best validation epoch are kept. One deliberate difference: their validation rows were drawn from the
training fold *and left in it* (``CloudDatasetWrapper.get_data_loaders`` trains on the whole
``train_and_val`` frame), so early stopping saw rows it had trained on. Here the validation rows are
carved out of the training data (seeded) and never trained on.

* :func:`fit` ``(strings, targets, cfg) -> FitResult``: deterministic (data order, dropout and head
  initialisation are functions of ``cfg.seed``), dynamic padding with length bucketing
  (:mod:`cloudlib.train`'s helpers), per-epoch history, early stopping on validation MAE (regression) or
  ROC-AUC (classification), best-validation weights restored.
* :func:`predict_strings`: predictions in target units (probabilities for classification).
* :func:`save_predictor` / :func:`load_predictor`: one folder (encoder + tokenizer via ``save_pretrained``,
  ``head.safetensors``, ``predictor.json``, ``history.csv``), written atomically.
* :func:`predict`: structures, CIF files or a folder of CIFs -> one row per input with ``id``, ``scope``,
  ``prediction`` and ``error`` (failed rows keep their error and a NaN prediction; no row is dropped).

Command line: ``python -m cloudlib predict INPUT [--model DIR] -o OUT.csv [--jobs N]``.
"""
from __future__ import annotations

import contextlib
import copy
import dataclasses
import json
import math
import os
import shutil
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

from .errors import BlockSizeError, InvalidTargetError
from .io import umask
from .train import _autocast, encode, epoch_batches, lr_lambda, make_optimizer

TASKS = ("regression", "classification")
DEFAULT_MODEL = "models/cloud-dielectric-laptop"
PREDICTOR_FORMAT = 1


@dataclass
class FinetuneConfig:
    """Everything that defines a fine-tuning run (saved in ``predictor.json``)."""

    encoder: str = "models/cloud-laptop"  # a model folder (load_mlm), a preset name (random init) or "ChangwenXu/CLOUD"
    pretrained: bool = True  # False: same architecture as ``encoder``, random initialisation (ablation)
    task: str = "regression"  # or "classification" (targets 0/1, BCE loss, probabilities out)
    epochs: int = 6
    batch_size: int = 32
    lr: float = 1e-4  # encoder
    head_lr: float | None = 1e-3  # the MLP head (None: same as lr)
    weight_decay: float = 0.01
    warmup_ratio: float = 0.05
    dropout: float = 0.1  # before the head (the encoder keeps its own config's dropout)
    val_fraction: float = 0.1  # carved out of the training data, seeded; 0 = no validation
    patience: int | None = None  # epochs without validation improvement before stopping (None = never)
    seed: int = 0
    threads: int | None = None  # torch CPU threads (None: leave torch's setting)
    grad_clip: float | None = 1.0
    bucket_batches: int = 20  # length-sort within windows of this many batches (0 = none)
    eval_batch_size: int = 256

    def __post_init__(self):
        if self.task not in TASKS:
            raise ValueError(f"task must be one of {TASKS}, got {self.task!r}")
        if not 0.0 <= self.val_fraction < 1.0:
            raise ValueError(f"val_fraction must be in [0, 1), got {self.val_fraction}")

    def replace(self, **kw) -> "FinetuneConfig":
        return dataclasses.replace(self, **kw)


PROFILES: dict[str, FinetuneConfig] = {
    # seconds: a randomly initialised tiny encoder
    "smoke": FinetuneConfig(encoder="tiny", pretrained=False, epochs=2, batch_size=32, lr=1e-3, head_lr=1e-3,
                            val_fraction=0.2),
    # ~3,400 training strings with the shipped 4-layer/256 encoder on 2 CPU cores: ~60-90 s per fit
    "laptop": FinetuneConfig(encoder="models/cloud-laptop", epochs=6, batch_size=64, lr=2e-4, head_lr=1e-3,
                             weight_decay=0.01, warmup_ratio=0.05, val_fraction=0.1, patience=None),
    # the authors' config.yaml: 200 epochs, AdamW lr 5e-5 (one lr for all), weight decay 0.01, 10 warm-up
    # epochs (5 %), cosine to ~0, batch 512, dropout 0.1, no gradient clipping, valid_size 0.25,
    # BERT-base pre-trained encoder (their release: HF ChangwenXu/CLOUD, subfolder ckpt)
    "paper": FinetuneConfig(encoder="ChangwenXu/CLOUD", epochs=200, batch_size=512, lr=5e-5, head_lr=None,
                            weight_decay=0.01, warmup_ratio=0.05, dropout=0.1, val_fraction=0.25, patience=None,
                            grad_clip=None),
}


# --------------------------------------------------------------------------- the model


class CloudPredictor(nn.Module):
    """BERT encoder ([CLS] state) -> dropout -> Linear(H, H) -> SiLU -> Linear(H, 1).

    ``forward`` returns ``[B]`` raw outputs: standardised target units for regression, logits for
    classification.
    """

    def __init__(self, encoder: nn.Module, dropout: float = 0.1):
        super().__init__()
        self.encoder = encoder
        h = encoder.config.hidden_size
        self.head = nn.Sequential(nn.Dropout(dropout), nn.Linear(h, h), nn.SiLU(), nn.Linear(h, 1))

    @property
    def block_size(self) -> int:
        return int(self.encoder.config.max_position_embeddings)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state[:, 0]
        return self.head(hidden).squeeze(-1).float()


@contextlib.contextmanager
def _quiet_loading():
    """transformers' progress bars ("Loading weights", "Writing model shards") off, restored afterwards."""
    from transformers.utils import logging as hf_logging

    was = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was:
            hf_logging.enable_progress_bar()


def _resolve(path: str | os.PathLike) -> Path:
    """A model folder relative to the cwd, else to the repository root."""
    from .paths import repo_root

    p = Path(path)
    if p.exists() or p.is_absolute():
        return p
    alt = repo_root() / p
    return alt if alt.exists() else p


def build_encoder(cfg: FinetuneConfig):
    """(BertModel without pooler, tokenizer) for ``cfg.encoder`` / ``cfg.pretrained``; seeded by ``cfg.seed``."""
    from transformers import BertModel

    from . import model as cloud_model

    name = cfg.encoder
    if name in cloud_model.PRESETS:
        if cfg.pretrained:
            raise ValueError(f"encoder {name!r} is a size preset, which has no pre-trained weights; "
                             "pass a model folder or pretrained=False")
        from .tokenizer import make_tokenizer

        size = cloud_model.PRESETS[name]
        tok = make_tokenizer(block_size=size.block_size)
        config = cloud_model.bert_config(size, tok)
    else:
        folder = _resolve(name)
        if folder.is_dir():
            sub = "ckpt" if (folder / "ckpt" / "config.json").exists() and not (folder / "config.json").exists() else ""
            with _quiet_loading():
                mlm, tok = cloud_model.load_mlm(folder, sub)
        elif "/" in name and not folder.exists():  # a Hugging Face repo id in the authors' layout
            mlm, tok = cloud_model.load_authors_checkpoint(name)
        else:
            raise FileNotFoundError(f"{name}: not a model folder and not a preset ({sorted(cloud_model.PRESETS)})")
        if cfg.pretrained:
            encoder = mlm.bert
            encoder.config._attn_implementation = "sdpa"
            return encoder, tok
        config = mlm.config
        del mlm
    config._attn_implementation = "sdpa"
    torch.manual_seed(cfg.seed)
    return BertModel(config, add_pooling_layer=False), tok


# --------------------------------------------------------------------------- results


@dataclass
class FitResult:
    """A fitted predictor: model, tokenizer, target scaler and what happened during the fit."""

    model: CloudPredictor
    tokenizer: Any
    task: str
    mean: float  # target = output * std + mean (regression); 0 / 1 for classification
    std: float
    config: FinetuneConfig
    history: pd.DataFrame = field(default_factory=pd.DataFrame)
    best_epoch: int | None = None
    target: str | None = None  # the target's name, for the record
    train_index: np.ndarray | None = None  # positions in fit()'s input
    val_index: np.ndarray | None = None

    def predict(self, strings: Sequence[str], batch_size: int = 256) -> np.ndarray:
        return predict_strings(self, strings, batch_size)


def _check_targets(targets, task: str) -> np.ndarray:
    y = np.asarray(targets, dtype=np.float64).reshape(-1)
    bad = np.flatnonzero(~np.isfinite(y))
    if len(bad):
        raise InvalidTargetError(f"{len(bad)} target(s) NaN or infinite at row(s) {bad[:20].tolist()}"
                                 + (" ..." if len(bad) > 20 else ""), input=f"row {int(bad[0])}")
    if task == "classification":
        bad = np.flatnonzero((y != 0) & (y != 1))
        if len(bad):
            raise InvalidTargetError(f"{len(bad)} classification target(s) not 0/1 at row(s) {bad[:20].tolist()}"
                                     + (" ..." if len(bad) > 20 else ""), input=f"row {int(bad[0])}")
    return y


def split_indices(n: int, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Seeded (train, validation) positions of ``n`` rows; sorted, disjoint, covering 0..n-1."""
    g = torch.Generator().manual_seed(seed)
    perm = torch.randperm(n, generator=g).numpy()
    n_val = int(round(val_fraction * n))
    if val_fraction > 0 and n_val == 0 and n > 1:
        n_val = 1
    return np.sort(perm[n_val:]), np.sort(perm[:n_val])


def _auc(y: np.ndarray, p: np.ndarray) -> float:
    if len(np.unique(y)) < 2:
        return float("nan")
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(y, p))


@torch.no_grad()
def _raw_outputs(model: CloudPredictor, data, batch_size: int, device) -> np.ndarray:
    """Model outputs for every row of an Encoded, in row order (batches sorted by length)."""
    was = model.training
    model.eval()
    out = torch.empty(len(data))
    order = torch.argsort(data.lengths, stable=True)
    for idx in order.split(batch_size):
        ids, mask = data.batch(idx)
        with _autocast(device):
            out[idx] = model(ids.to(device), mask.to(device)).float().cpu()
    model.train(was)
    return out.numpy().astype(np.float64)


def _val_metrics(task: str, raw: np.ndarray, y: np.ndarray, mean: float, std: float) -> dict:
    if task == "regression":
        pred = raw * std + mean
        return {"val_loss": float(np.mean(np.abs(raw - (y - mean) / std))), "val_mae": float(np.mean(np.abs(pred - y)))}
    bce = float(F.binary_cross_entropy_with_logits(torch.from_numpy(raw), torch.from_numpy(y)))
    return {"val_loss": bce, "val_auc": _auc(y, raw)}


def encoder_head_optimizer(encoder: nn.Module, head: nn.Module, cfg: FinetuneConfig, device) -> torch.optim.Optimizer:
    """AdamW: the encoder at ``cfg.lr`` (no decay on biases / norms), the head at ``cfg.head_lr``."""
    opt = make_optimizer(encoder, cfg, device)
    head_lr = cfg.head_lr if cfg.head_lr is not None else cfg.lr
    opt.add_param_group({"params": [p for p in head.parameters() if p.ndim >= 2], "weight_decay": cfg.weight_decay,
                         "lr": head_lr})
    opt.add_param_group({"params": [p for p in head.parameters() if p.ndim < 2], "weight_decay": 0.0, "lr": head_lr})
    return opt


def optimizer_step(model: nn.Module, loss: torch.Tensor, opt, sched, grad_clip: float | None) -> None:
    """Backward, optional gradient clipping, optimiser and scheduler step."""
    opt.zero_grad(set_to_none=True)
    loss.backward()
    if grad_clip:
        torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    opt.step()
    sched.step()


def fit(strings: Sequence[str], targets, cfg: FinetuneConfig | None = None, progress: bool = True,
        target_name: str | None = None) -> FitResult:
    """Fine-tune an encoder on (SCOPE string, target) pairs; returns the best-validation predictor.

    Validation rows (``cfg.val_fraction``, seeded) are carved out of ``strings`` and never trained on;
    regression targets are standardised with the mean / std of the training rows only. Early stopping
    (``cfg.patience``) and the restored weights follow validation MAE (regression) or ROC-AUC
    (classification; BCE when the validation rows hold one class). Raises :class:`InvalidTargetError`
    naming the rows of NaN / infinite (or, for classification, non-0/1) targets and
    :class:`~cloudlib.errors.BlockSizeError` for a string longer than the encoder's block size.
    """
    from tqdm.auto import tqdm

    cfg = cfg or FinetuneConfig()
    strings = list(strings)
    if target_name is None and isinstance(targets, pd.Series):
        target_name = None if targets.name is None else str(targets.name)
    y = _check_targets(targets, cfg.task)
    if len(y) != len(strings):
        raise ValueError(f"{len(strings)} strings but {len(y)} targets")
    if len(strings) < 2:
        raise ValueError("need at least 2 training rows")

    old_threads = torch.get_num_threads()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    try:
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        encoder, tok = build_encoder(cfg)
        data = encode(tok, strings)  # BlockSizeError names the first string that is too long
        train_idx, val_idx = split_indices(len(strings), cfg.val_fraction, cfg.seed)
        y_train = y[train_idx]
        if cfg.task == "regression":
            mean, std = float(y_train.mean()), float(y_train.std())
            std = std if std > 0 else 1.0
        else:
            mean, std = 0.0, 1.0
        y_scaled = torch.tensor((y - mean) / std, dtype=torch.float32)

        torch.manual_seed(cfg.seed + 1)  # head initialisation
        model = CloudPredictor(encoder, cfg.dropout).to(device)
        opt = encoder_head_optimizer(model.encoder, model.head, cfg, device)

        train_pos = torch.from_numpy(train_idx)
        sub = type(data)(data.ids[train_pos], data.lengths[train_pos])
        val = type(data)(data.ids[torch.from_numpy(val_idx)], data.lengths[torch.from_numpy(val_idx)]) if len(val_idx) else None
        y_sub = y_scaled[train_pos]
        per_epoch = len(epoch_batches(sub, cfg.batch_size, 0, cfg.seed, cfg.bucket_batches))
        total = max(1, cfg.epochs * per_epoch)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(int(cfg.warmup_ratio * total), total))

        monitor = "val_mae" if cfg.task == "regression" else "val_auc"
        best, best_epoch, best_state, since_best = None, None, None, 0
        rows, step = [], 0
        bar = tqdm(total=cfg.epochs, disable=not progress, desc=f"fine-tune {cfg.task}", unit="epoch")
        model.train()
        for epoch in range(cfg.epochs):
            t0, loss_sum, n_seen, n_tokens = time.perf_counter(), 0.0, 0, 0
            for idx in epoch_batches(sub, cfg.batch_size, epoch, cfg.seed, cfg.bucket_batches):
                torch.manual_seed(cfg.seed * 7_919 + step * 104_729 + 17)  # dropout: a function of the step
                ids, mask = sub.batch(idx)
                target = y_sub[idx].to(device)
                with _autocast(device):
                    out = model(ids.to(device), mask.to(device))
                if cfg.task == "regression":
                    loss = F.l1_loss(out, target)
                else:
                    loss = F.binary_cross_entropy_with_logits(out, target)
                optimizer_step(model, loss, opt, sched, cfg.grad_clip)
                step += 1
                loss_sum += float(loss.detach()) * len(idx)
                n_seen += len(idx)
                n_tokens += int(mask.sum())
            seconds = time.perf_counter() - t0
            row = {"epoch": epoch + 1, "step": step, "lr": sched.get_last_lr()[0], "train_loss": loss_sum / n_seen,
                   "seconds": round(seconds, 3), "tokens_per_s": round(n_tokens / max(seconds, 1e-9), 1)}
            if val is not None:
                raw = _raw_outputs(model, val, cfg.eval_batch_size, device)
                row.update(_val_metrics(cfg.task, raw, y[val_idx], mean, std))
                score = row[monitor]
                if math.isnan(score):  # one class in validation: fall back to the loss
                    monitor, score = "val_loss", row["val_loss"]
                better = -score if monitor == "val_auc" else score
                if best is None or better < best:
                    best, best_epoch, since_best = better, epoch + 1, 0
                    best_state = copy.deepcopy(model.state_dict())
                else:
                    since_best += 1
            rows.append(row)
            bar.update(1)
            bar.set_postfix({k: f"{row[k]:.4g}" for k in ("train_loss", monitor) if k in row})
            if cfg.patience is not None and val is not None and since_best >= cfg.patience:
                break
        bar.close()
        if best_state is not None:
            model.load_state_dict(best_state)
        else:
            best_epoch = len(rows)
        model.eval()
        return FitResult(model=model, tokenizer=tok, task=cfg.task, mean=mean, std=std, config=cfg,
                         history=pd.DataFrame(rows), best_epoch=best_epoch, target=target_name,
                         train_index=train_idx, val_index=val_idx)
    finally:
        torch.set_num_threads(old_threads)


# --------------------------------------------------------------------------- prediction


def _as_result(obj) -> FitResult:
    if isinstance(obj, FitResult):
        return obj
    if isinstance(obj, (str, os.PathLike)):
        return load_predictor(obj)
    raise TypeError(f"expected a FitResult or a predictor folder, got {type(obj).__name__}")


def predict_strings(result_or_model, strings: Sequence[str], batch_size: int = 256) -> np.ndarray:
    """Predictions in target units (probabilities for classification) for SCOPE strings.

    ``result_or_model`` is a :class:`FitResult` (from :func:`fit` or :func:`load_predictor`) or a
    predictor folder. Raises :class:`~cloudlib.errors.BlockSizeError` for a string that is too long.
    """
    res = _as_result(result_or_model)
    strings = list(strings)
    if not strings:
        return np.zeros(0)
    model = res.model
    device = next(model.parameters()).device
    raw = _raw_outputs(model, encode(res.tokenizer, strings), batch_size, device)
    if res.task == "classification":
        return 1.0 / (1.0 + np.exp(-raw))
    return raw * res.std + res.mean


# --------------------------------------------------------------------------- save / load


def save_predictor(result: FitResult, folder: str | os.PathLike) -> Path:
    """Write a predictor folder (replaced atomically): encoder ``config.json`` + ``model.safetensors`` and
    tokenizer (``save_pretrained``), ``head.safetensors``, ``predictor.json`` (task, target, mean, std,
    config, best epoch) and ``history.csv``."""
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{folder.name}.", suffix=".part"))
    try:
        with _quiet_loading():
            result.model.encoder.save_pretrained(tmp, safe_serialization=True)
        result.tokenizer.save_pretrained(tmp)
        head = {k: v.detach().cpu().contiguous() for k, v in result.model.head.state_dict().items()}
        save_file(head, str(tmp / "head.safetensors"))
        meta = {"format": PREDICTOR_FORMAT, "task": result.task, "target": result.target,
                "mean": result.mean, "std": result.std, "best_epoch": result.best_epoch,
                "dropout": result.model.head[0].p, "config": dataclasses.asdict(result.config)}
        (tmp / "predictor.json").write_text(json.dumps(meta, indent=2) + "\n")
        if result.history is not None and len(result.history):
            result.history.to_csv(tmp / "history.csv", index=False)
        mask = umask()  # temporary files are created 0600: give everything the usual permissions
        os.chmod(tmp, 0o777 & ~mask)
        for f in tmp.iterdir():
            os.chmod(f, 0o666 & ~mask)
        old = None
        if folder.exists():
            old = folder.parent / f".{folder.name}.old-{os.getpid()}"
            os.replace(folder, old)
        os.replace(tmp, folder)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return folder


def load_predictor(folder: str | os.PathLike, device: str | torch.device | None = None) -> FitResult:
    """A :class:`FitResult` from a folder written by :func:`save_predictor` (history included when saved)."""
    from safetensors.torch import load_file
    from transformers import BertModel

    from .tokenizer import load_tokenizer

    folder = _resolve(folder)
    meta_path = folder / "predictor.json"
    if not meta_path.exists():
        raise FileNotFoundError(f"{folder}: no predictor.json (not a folder written by save_predictor)")
    meta = json.loads(meta_path.read_text())
    with _quiet_loading():
        encoder = BertModel.from_pretrained(folder, add_pooling_layer=False, attn_implementation="sdpa")
    tok = load_tokenizer(folder)
    model = CloudPredictor(encoder, meta.get("dropout", 0.1))
    model.head.load_state_dict(load_file(str(folder / "head.safetensors")))
    model.to(device or "cpu").eval()
    known = {f.name for f in dataclasses.fields(FinetuneConfig)}
    cfg = FinetuneConfig(**{k: v for k, v in meta.get("config", {}).items() if k in known})
    hist = folder / "history.csv"
    return FitResult(model=model, tokenizer=tok, task=meta["task"], mean=float(meta["mean"]), std=float(meta["std"]),
                     config=cfg, history=pd.read_csv(hist) if hist.exists() else pd.DataFrame(),
                     best_epoch=meta.get("best_epoch"), target=meta.get("target"))


# --------------------------------------------------------------------------- structures -> predictions


def _input_items(inputs) -> dict:
    """id -> item (Structure, structure dict or path) for :func:`cloudlib.scope.scope_table`."""
    from pymatgen.core import Structure

    if isinstance(inputs, Structure):
        return {0: inputs}
    if isinstance(inputs, (str, os.PathLike)):
        from .__main__ import read_inputs

        return read_inputs(inputs)
    if isinstance(inputs, pd.Series):
        return dict(inputs.items())
    if isinstance(inputs, Mapping):
        return dict(inputs)
    items = list(inputs)
    if items and all(isinstance(x, (str, os.PathLike)) for x in items):
        keys = [str(x) for x in items]
        if len(set(keys)) == len(keys):
            return dict(zip(keys, items))
    return dict(enumerate(items))


def predict(inputs, model: str | os.PathLike | FitResult = DEFAULT_MODEL, jobs: int = 1, progress: bool = False,
            batch_size: int = 256) -> pd.DataFrame:
    """Predictions for crystals: one row per input, columns ``id``, ``scope``, ``prediction``, ``error``.

    ``inputs``: a Structure, a list or mapping of Structures / structure dicts / file paths, a CIF path,
    a folder of CIFs or a JSON of structures (as ``python -m cloudlib scope`` reads). A row that fails
    (no SCOPE string, too long for the block size, ...) keeps its ``"ErrorClass: message"`` in ``error``
    and a NaN prediction; no row is dropped. ``model`` is a predictor folder or a :class:`FitResult`.
    """
    from .scope import scope_table

    res = _as_result(model)
    items = _input_items(inputs)
    table = scope_table(items, jobs=jobs, progress=progress)
    df = pd.DataFrame({"id": list(table.index), "scope": table["scope"].to_numpy(dtype=object),
                       "prediction": np.nan, "error": table["error"].to_numpy(dtype=object)})
    ok = []
    for i, (scope, err) in enumerate(zip(df["scope"], df["error"])):
        if err is not None and not (isinstance(err, float) and math.isnan(err)):
            continue
        try:
            res.tokenizer.encode_batch([scope])
        except BlockSizeError as exc:
            df.at[i, "error"] = f"{type(exc).__name__}: {exc}"
            continue
        ok.append(i)
    if ok:
        df.loc[ok, "prediction"] = predict_strings(res, df.loc[ok, "scope"].tolist(), batch_size)
    df["error"] = df["error"].where(df["error"].notna(), None)
    return df
