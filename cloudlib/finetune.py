"""Fine-tuning the CLOUD encoder for one property: the property objective for the training engine.

The authors' recipe (CLOUD ``model/cloud.py`` and ``train.py``): the [CLS] hidden state of the BERT encoder
-> dropout -> ``Linear(H, H)`` + SiLU -> ``Linear(H, 1)`` (:class:`cloudlib.model.CloudPredictor`); L1 loss on
targets standardised with the *training* mean and standard deviation; AdamW with linear warm-up and cosine
decay; the weights of the best validation epoch are kept. One deliberate difference: their validation rows
were drawn from the training fold *and left in it* (``CloudDatasetWrapper.get_data_loaders`` trains on the
whole ``train_and_val`` frame), so early stopping saw rows it had trained on. Here the validation rows are
carved out of the training data (:func:`cloudlib.splits.seeded_split`) and never trained on.

* :func:`fit` ``(strings, targets, cfg) -> FitResult``: deterministic (data order, dropout and head
  initialisation are functions of ``cfg.seed``), per-epoch history, early stopping on validation MAE
  (regression) or ROC-AUC (classification), best-validation weights restored, optional checkpoints with exact
  resume (the loop is :func:`cloudlib.engine.train`'s).
* :func:`predict_strings`: predictions in target units (probabilities for classification).

Saving a fit, loading it and predicting for structures live in :mod:`cloudlib.predictor`.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from . import engine
from .config import FinetuneConfig
from .errors import InvalidTargetError, ModelError, ScopeStringError
from .evaluation import mae
from .model import CloudPredictor, build_encoder
from .scope import expand_variants, group_mean
from .splits import seeded_split

#: The dropout stream of fine-tuning steps (:func:`cloudlib.engine.step_seed`), kept from the first release so
#: that fits reproduce the numbers published with it.
SEED_STREAM = 17


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
    seconds: float = 0.0

    def predict(self, strings: Sequence[str], batch_size: int = 256) -> np.ndarray:
        return predict_strings(self, strings, batch_size)


def check_targets(targets, task: str = "regression") -> np.ndarray:
    """Targets as float64, or :class:`InvalidTargetError` naming the NaN / infinite (or, for classification,
    non-0/1) rows."""
    y = np.asarray(targets, dtype=np.float64).reshape(-1)
    bad = np.flatnonzero(~np.isfinite(y))
    if len(bad):
        more = " ..." if len(bad) > 20 else ""
        raise InvalidTargetError(
            f"{len(bad)} target(s) NaN or infinite at row(s) {bad[:20].tolist()}{more}", input=f"row {int(bad[0])}"
        )
    if task == "classification":
        bad = np.flatnonzero((y != 0) & (y != 1))
        if len(bad):
            more = " ..." if len(bad) > 20 else ""
            raise InvalidTargetError(
                f"{len(bad)} classification target(s) not 0/1 at row(s) {bad[:20].tolist()}{more}",
                input=f"row {int(bad[0])}",
            )
    return y


def train_val_indices(n: int, cfg) -> tuple[np.ndarray, np.ndarray]:
    """Sorted (training, validation) positions of ``n`` rows for a fine-tuning config (``val_fraction``,
    ``seed``); every head (property, CLOUD-DEBYE, Cv(T)) holds out the same rows for the same config."""
    train_idx, val_idx = seeded_split(n, cfg.val_fraction, cfg.seed)
    return np.sort(train_idx), np.sort(val_idx)


def _auc(y: np.ndarray, p: np.ndarray) -> float:
    if len(np.unique(y)) < 2:
        return float("nan")
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(y, p))


def raw_outputs(
    model: torch.nn.Module, data: engine.Encoded, batch_size: int, device, precision: str = "auto"
) -> np.ndarray:
    """Model outputs for every row of ``data`` in row order, as float64 (eval mode restored after)."""
    was = model.training
    model.eval()
    out = engine.batched_outputs(model, data, batch_size, device, precision).float()
    model.train(was)
    return out.numpy().astype(np.float64)


class PropertyObjective(engine.Objective):
    """L1 on standardised targets (regression) or BCE on logits (classification); validation MAE / ROC-AUC."""

    name = "fine-tune"
    seed_stream = SEED_STREAM

    def __init__(
        self,
        train: engine.Encoded,
        y_train: torch.Tensor,
        val: engine.Encoded,
        y_val: np.ndarray,
        task: str,
        mean: float,
        std: float,
        eval_batch_size: int,
        device,
        precision: str = "auto",
        val_groups: np.ndarray | None = None,
    ):
        self.train, self.y_train, self.val, self.y_val = train, y_train, val, y_val
        self.val_groups = val_groups  # several encoded strings per validation row: their outputs are averaged
        self.task, self.mean, self.std, self.batch, self.device = task, mean, std, eval_batch_size, device
        self.precision = precision
        self.lengths = train.lengths
        self.monitor = "val_mae" if task == "regression" else "val_auc"
        self.maximize = task == "classification"

    def loss(self, model, idx, g):
        ids, mask = self.train.batch(idx)
        out = model(ids.to(self.device), mask.to(self.device))
        target = self.y_train[idx].to(self.device)
        if self.task == "regression":
            loss = F.l1_loss(out, target)
        else:
            loss = F.binary_cross_entropy_with_logits(out, target)
        return loss, {"rows": len(idx), "tokens": int(mask.sum())}

    def evaluate(self, model):
        if not len(self.val):
            return {}
        raw = raw_outputs(model, self.val, self.batch, self.device, self.precision)
        if self.val_groups is not None:
            raw = group_mean(raw, self.val_groups)
        y = self.y_val
        if self.task == "regression":
            return {
                "val_loss": mae((y - self.mean) / self.std, raw),
                "val_mae": mae(y, raw * self.std + self.mean),
            }
        bce = float(F.binary_cross_entropy_with_logits(torch.from_numpy(raw), torch.from_numpy(y)))
        return {"val_loss": bce, "val_auc": _auc(y, raw)}

    def score(self, metrics):
        if self.task == "classification" and np.isnan(metrics["val_auc"]):
            return metrics["val_loss"]  # one class among the validation rows: follow the loss
        return super().score(metrics)

    def digest(self):
        return engine.tensor_digest(self.train.ids, self.y_train, torch.from_numpy(np.asarray(self.y_val)))


def head_modules(model, cfg: FinetuneConfig) -> list:
    """(module, learning rate) pairs: the head at ``cfg.head_lr``; the encoder at ``cfg.lr``, or with
    ``cfg.layer_decay`` layer by layer (the top layer at ``lr``, each one below it ``layer_decay`` times
    slower, the embeddings slowest)."""
    head = (model.head, cfg.head_lr if cfg.head_lr is not None else cfg.lr)
    if cfg.layer_decay is None:
        return [(model.encoder, cfg.lr), head]
    encoder = model.encoder
    layers = list(encoder.encoder.layer)
    n = len(layers)
    pairs = [(layer, cfg.lr * cfg.layer_decay ** (n - 1 - i)) for i, layer in enumerate(layers)]
    pairs.append((encoder.embeddings, cfg.lr * cfg.layer_decay**n))
    covered = {id(p) for m, _ in pairs for p in m.parameters()}
    rest = [name for name, p in encoder.named_parameters() if id(p) not in covered]
    if rest:
        raise ModelError(f"layer_decay: encoder parameters outside its layers and embeddings: {rest[:3]}", "encoder")
    return pairs + [head]


def train_head(
    model,
    objective: engine.Objective,
    cfg: FinetuneConfig,
    checkpoint_dir,
    resume: bool,
    progress: bool,
    d: engine.Dist,
) -> engine.TrainResult:
    """Run the engine for a head on the encoder (every fine-tuning model goes through here): the encoder at
    ``cfg.lr`` and the head at ``cfg.head_lr``, the best evaluation's weights restored."""
    return engine.train(
        model,
        objective,
        cfg,
        modules=head_modules(model, cfg),
        out_dir=checkpoint_dir,
        resume=resume,
        progress=progress,
        d=d,
    )


def epochs_of(result: engine.TrainResult) -> int:
    """The epoch whose weights a fit holds (the last one when there was no validation)."""
    if result.best_epoch is not None:
        return int(round(result.best_epoch))
    return int(round(result.history["epoch"].iloc[-1])) if len(result.history) else 0


def fit(
    strings: Sequence[str],
    targets,
    cfg: FinetuneConfig | None = None,
    progress: bool = True,
    target_name: str | None = None,
    checkpoint_dir: str | os.PathLike | None = None,
    resume: bool = False,
) -> FitResult:
    """Fine-tune an encoder on (SCOPE string, target) pairs; returns the best-validation predictor.

    Validation rows (``cfg.val_fraction``, seeded) are carved out of ``strings`` and never trained on;
    regression targets are standardised with the mean / std of the training rows only. Early stopping
    (``cfg.patience``) and the restored weights follow validation MAE (regression) or ROC-AUC (classification;
    BCE when the validation rows hold one class). With ``checkpoint_dir`` the run is checkpointed there and
    ``resume=True`` continues it. Raises :class:`InvalidTargetError` naming the rows of NaN / infinite (or, for
    classification, non-0/1) targets and :class:`~cloudlib.errors.BlockSizeError` for a string longer than the
    encoder's block size.
    """
    cfg = cfg or FinetuneConfig()
    strings = list(strings)
    if target_name is None and isinstance(targets, pd.Series) and targets.name is not None:
        target_name = str(targets.name)
    y = check_targets(targets, cfg.task)
    if len(y) != len(strings):
        raise ValueError(f"{len(strings)} strings but {len(y)} targets")
    if len(strings) < 2:
        raise ValueError("need at least 2 training rows")
    t0 = time.perf_counter()
    d = engine.setup_distributed()
    with engine.torch_threads(cfg.threads, d):
        encoder, tok = build_encoder(cfg.encoder, cfg.pretrained, cfg.seed, cfg.encoder_dropout)
        data = engine.encode(tok, strings)  # BlockSizeError names the first string that is too long
        train_idx, val_idx = train_val_indices(len(strings), cfg)
        if cfg.task == "regression":
            mean, std = float(y[train_idx].mean()), float(y[train_idx].std())
            std = std if std > 0 else 1.0
        else:
            mean, std = 0.0, 1.0
        y_scaled = torch.tensor((y - mean) / std, dtype=torch.float32)
        train_data, y_train = data.rows(train_idx), y_scaled[torch.from_numpy(train_idx)]
        val_data, val_groups = data.rows(val_idx), None
        if cfg.augment > 1:  # equivalent orders of each training string, with its target
            aug, groups = expand_variants([strings[i] for i in train_idx], cfg.augment, cfg.seed)
            train_data, y_train = engine.encode(tok, aug), y_train[torch.from_numpy(groups)]
        if cfg.tta > 1 and len(val_idx):
            aug, val_groups = expand_variants([strings[i] for i in val_idx], cfg.tta, cfg.seed)
            val_data = engine.encode(tok, aug)
        torch.manual_seed(cfg.seed + 1)  # head initialisation
        model = CloudPredictor(encoder, cfg.dropout)
        objective = PropertyObjective(
            train_data,
            y_train,
            val_data,
            y[val_idx],
            cfg.task,
            mean,
            std,
            cfg.eval_batch_size,
            d.device,
            cfg.precision,
            val_groups,
        )
        objective.name = f"fine-tune {cfg.task}"
        result = train_head(model, objective, cfg, checkpoint_dir, resume, progress, d)
    return FitResult(
        model=model,
        tokenizer=tok,
        task=cfg.task,
        mean=mean,
        std=std,
        config=cfg,
        history=result.history,
        best_epoch=epochs_of(result),
        target=target_name,
        train_index=train_idx,
        val_index=val_idx,
        seconds=time.perf_counter() - t0,
    )


def scope_string_errors(tokenizer, strings: Sequence[str]) -> list[str | None]:
    """Per string: None for a SCOPE string the model can read, else ``"ScopeStringError: why"`` (not three ``|``
    sections, an unknown generator string, odd composition pairs, a non-numeric fraction, or words that the
    tokenizer can only map to ``[UNK]``)."""
    from .scope import parse_scope

    unk = tokenizer.unk_token
    backend = getattr(tokenizer, "backend_tokenizer", None)

    def _tokens(text: str) -> list[str]:  # the words' tokens, whatever the string's length (checked elsewhere)
        if backend is not None:
            return backend.encode(text, add_special_tokens=False).tokens
        return tokenizer.tokenize(text)

    out: list[str | None] = []
    for s in strings:
        if not isinstance(s, str):
            out.append(f"ScopeStringError: not a string ({type(s).__name__})")
            continue
        try:
            parse_scope(s)
        except ValueError as exc:
            out.append(f"ScopeStringError: {exc}")
            continue
        if unk in _tokens(s):
            bad = [w for w in dict.fromkeys(s.split()) if unk in _tokens(w)]
            out.append(f"ScopeStringError: not in the model's vocabulary (would be [UNK]): {' '.join(bad)[:120]}")
            continue
        out.append(None)
    return out


def predict_strings(result: FitResult, strings: Sequence[str], batch_size: int = 256, check: bool = True) -> np.ndarray:
    """Predictions in target units (probabilities for classification) for SCOPE strings.

    Raises :class:`~cloudlib.errors.ScopeStringError` when a string is not a SCOPE string the model can read
    (:func:`scope_string_errors`; ``check=False`` skips the check, for strings made by :mod:`cloudlib.scope`)
    and :class:`~cloudlib.errors.BlockSizeError` for a string that is too long. For per-row errors instead of
    an exception use :func:`cloudlib.predictor.predict_scope`.
    """
    if not isinstance(result, FitResult):
        raise TypeError(
            f"expected a FitResult (cloudlib.predictor.load_predictor reads a folder), got {type(result).__name__}"
        )
    strings = list(strings)
    if not strings:
        return np.zeros(0)
    if check:
        errors = scope_string_errors(result.tokenizer, strings)
        bad = [i for i, e in enumerate(errors) if e is not None]
        if bad:
            i = bad[0]
            raise ScopeStringError(
                f"{len(bad)} of {len(strings)} strings are not SCOPE strings this model can read; string {i}: "
                f"{errors[i].split(': ', 1)[1]}",
                repr(strings[i])[:80],
            )
    model = result.model
    device = next(model.parameters()).device
    tta = getattr(result.config, "tta", 1)
    groups = None
    if tta > 1:  # the mean over equivalent orders of each string (test-time augmentation)
        strings, groups = expand_variants(strings, tta, result.config.seed)
    raw = raw_outputs(model, engine.encode(result.tokenizer, strings), batch_size, device, result.config.precision)
    if groups is not None:
        raw = group_mean(raw, groups)
    if result.task == "classification":
        return 1.0 / (1.0 + np.exp(-raw))
    return raw * result.std + result.mean
