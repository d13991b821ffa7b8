"""CLOUD-DEBYE: a CLOUD encoder that predicts a Debye temperature, and the baselines it is judged against.

* :class:`CloudDebye` — encoder ``[CLS]`` -> the fine-tuning MLP head -> ``h`` -> Θ(h) -> the differentiable
  Debye integral (:mod:`cloudlib.debye`) -> Cv(T) and U(T) for *any* T. Trained on Cv(300 K) alone, every
  curve it predicts is a Debye curve: 0 <= Cv <= 3NR, increasing in T, Cv ~ T^3 at low T, 3NR at high T.
* Θ parameterisation. The paper maps ``Θ = 1200·h + 1500 K``: at initialisation (h ~ 0) every material
  sits at 1500 K, far above the typical Θ (the median Θ of the training labels is ~400 K, see the
  notebook), and Θ < 0 for h < -1.25, where the Debye function is undefined. We use the **log-standardised**
  map ``Θ = exp(μ + σ·h)`` with μ, σ the mean / std of log Θ of the training labels (Θ inverted from each
  training Cv(300 K)): always positive, and h ~ N(0, 1) already spans the training distribution, the same
  role target standardisation plays in ordinary fine-tuning. ``parameterisation="paper"`` trains the
  paper's map (Θ clamped at 1 K so that the loss stays finite) for the comparison.
* :func:`fit_direct` — the baseline of the paper: the same encoder regressing Cv(300 K) directly
  (:func:`cloudlib.finetune.fit`), which knows nothing about other temperatures.
* :class:`CurveRegressor` / :func:`fit_curves` — a *direct multi-temperature* regressor: the same encoder
  with T as an extra head input, trained on whole Cv(T) curves (our CHGNet phonon data). It can fit the
  curves, but nothing makes it obey thermodynamics: :func:`consistency_audit` counts how often it does not.

The loss is L1 on Cv / (3NR) (the fraction of the Dulong–Petit limit), so materials with many atoms per
cell do not dominate; metrics are reported in J/(K·mol of cells), as the authors' data are.
"""
from __future__ import annotations

import copy
import dataclasses
import math
import time
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

from . import debye
from .debye import dulong_petit
from .errors import InvalidTargetError
from .finetune import (CloudPredictor, FinetuneConfig, build_encoder, encoder_head_optimizer, optimizer_step,
                       split_indices)
from .train import _autocast, encode, epoch_batches, lr_lambda

PARAMETERISATIONS = ("log", "paper")

PROFILES: dict[str, FinetuneConfig] = {
    # seconds: a random tiny encoder
    "smoke": FinetuneConfig(encoder="tiny", pretrained=False, epochs=3, batch_size=32, lr=1e-3, head_lr=1e-3,
                            val_fraction=0.2),
    # ~1,100 training strings with the shipped 4-layer/256 encoder on 2 CPU cores: ~1.5 min per model
    "laptop": FinetuneConfig(encoder="models/cloud-laptop", epochs=20, batch_size=32, lr=3e-4, head_lr=1e-3,
                             weight_decay=0.01, warmup_ratio=0.05, val_fraction=0.1),
    # the authors' fine-tuning recipe on their released encoder
    "paper": FinetuneConfig(encoder="ChangwenXu/CLOUD", epochs=200, batch_size=64, lr=5e-5, head_lr=None,
                            weight_decay=0.01, warmup_ratio=0.05, val_fraction=0.25, grad_clip=None),
}


def _check(name: str, values, positive: bool = False) -> np.ndarray:
    a = np.asarray(values, dtype=float)
    bad = ~np.isfinite(a) | ((a <= 0) if positive else False)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise InvalidTargetError(f"{int(bad.sum())} unusable value(s), first at row {i}: {a.flat[i]!r}", name)
    return a


# --------------------------------------------------------------------------- models


class CloudDebye(nn.Module):
    """Encoder -> head -> Θ -> Debye Cv(T) / U(T). ``forward`` returns Θ in K (float64), shape [B]."""

    def __init__(self, encoder: nn.Module, dropout: float = 0.1, log_theta_mean: float = math.log(400.0),
                 log_theta_std: float = 0.5, parameterisation: str = "log"):
        super().__init__()
        if parameterisation not in PARAMETERISATIONS:
            raise ValueError(f"parameterisation must be one of {PARAMETERISATIONS}, got {parameterisation!r}")
        self.net = CloudPredictor(encoder, dropout)
        self.parameterisation = parameterisation
        self.register_buffer("mu", torch.tensor(float(log_theta_mean), dtype=torch.float64))
        self.register_buffer("sigma", torch.tensor(float(log_theta_std), dtype=torch.float64))

    @property
    def encoder(self) -> nn.Module:
        return self.net.encoder

    @property
    def head(self) -> nn.Module:
        return self.net.head

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        h = self.net(input_ids, attention_mask).double()
        if self.parameterisation == "log":
            return torch.exp(self.mu + self.sigma * h)
        return (1200.0 * h + 1500.0).clamp_min(1.0)  # the paper's map; Θ <= 0 has no Debye curve

    def raw(self, input_ids, attention_mask) -> torch.Tensor:
        return self.net(input_ids, attention_mask).double()


class CurveRegressor(nn.Module):
    """Encoder [CLS] and features of T -> dropout -> Linear + SiLU -> Linear -> Cv(T) / 3NR, shape [B, K]."""

    def __init__(self, encoder: nn.Module, dropout: float = 0.1):
        super().__init__()
        self.encoder = encoder
        h = encoder.config.hidden_size
        self.head = nn.Sequential(nn.Dropout(dropout), nn.Linear(h + 3, h), nn.SiLU(), nn.Linear(h, 1))

    @staticmethod
    def t_features(T: torch.Tensor) -> torch.Tensor:
        x = torch.log(T.float() / 300.0)
        return torch.stack([x, x * x / 4.0, torch.exp(-T.float() / 100.0)], dim=-1)  # [K, 3]

    def forward(self, input_ids, attention_mask, T: torch.Tensor) -> torch.Tensor:
        cls = self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state[:, 0]
        f = self.t_features(T.to(cls.device))
        b, k = cls.shape[0], f.shape[0]
        z = torch.cat([cls[:, None, :].expand(b, k, -1), f[None].expand(b, k, -1).to(cls.dtype)], dim=-1)
        return self.head(z).squeeze(-1).float()


@dataclass
class Fitted:
    """A trained CloudDebye or CurveRegressor with its tokenizer and training record."""

    model: nn.Module
    tokenizer: Any
    config: FinetuneConfig
    kind: str  # "debye" or "curves"
    history: pd.DataFrame = field(default_factory=pd.DataFrame)
    best_epoch: int | None = None
    seconds: float = 0.0

    @torch.no_grad()
    def _batches(self, strings: Sequence[str], fn, batch_size: int = 256) -> list:
        data = encode(self.tokenizer, list(strings))
        device = next(self.model.parameters()).device
        self.model.eval()
        out = [None] * len(data)
        order = torch.argsort(data.lengths, stable=True)
        for idx in order.split(batch_size):
            ids, mask = data.batch(idx)
            res = fn(ids.to(device), mask.to(device)).cpu()
            for j, i in enumerate(idx.tolist()):
                out[i] = res[j]
        return out

    def theta(self, strings: Sequence[str]) -> np.ndarray:
        """Debye temperatures (K) of SCOPE strings (CLOUD-DEBYE only)."""
        if self.kind != "debye":
            raise TypeError("theta() needs a CloudDebye model")
        return np.array([float(v) for v in self._batches(strings, self.model)]) if len(strings) else np.zeros(0)

    def heat_capacity(self, strings: Sequence[str], T, n_atoms) -> np.ndarray:
        """Cv [materials, temperatures] in J/(K·mol of cells)."""
        T = np.atleast_1d(np.asarray(T, dtype=float))
        n = _check("n_atoms", np.broadcast_to(np.asarray(n_atoms, dtype=float), (len(strings),)).copy(), positive=True)
        if self.kind == "debye":
            theta = self.theta(strings)
            return debye.heat_capacity(torch.from_numpy(theta)[:, None], torch.from_numpy(T)[None, :],
                                       torch.from_numpy(n)[:, None]).numpy()
        Tt = torch.from_numpy(T)
        frac = torch.stack(self._batches(strings, lambda i, m: self.model(i, m, Tt)))
        return frac.double().numpy() * dulong_petit(n)[:, None]


# --------------------------------------------------------------------------- training


def theta_labels(cv, n_atoms, T: float = 300.0) -> np.ndarray:
    """Debye temperatures that reproduce each Cv(T) exactly (labels can reach 3NR only as Θ -> 0)."""
    cv = _check("cv", cv, positive=True)
    n = _check("n_atoms", n_atoms, positive=True)
    ceiling = dulong_petit(n) * (1 - 1e-9)
    return debye.theta_from_cv(torch.from_numpy(np.minimum(cv, ceiling)), T, torch.from_numpy(n)).numpy()


def _train(model: nn.Module, head: nn.Module, strings, cfg: FinetuneConfig, loss_fn, val_fn, desc: str,
           progress: bool, tok) -> tuple[nn.Module, pd.DataFrame, int]:
    """The fine-tuning loop shared by CLOUD-DEBYE and the curve regressor: seeded batches, AdamW with warm-up +
    cosine, ``loss_fn(model, ids, mask, rows)``, ``val_fn(model) -> MAE`` per epoch, best epoch restored."""
    from tqdm.auto import tqdm

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model.to(device)
    data = encode(tok, list(strings))
    train_idx, _ = split_indices(len(strings), cfg.val_fraction, cfg.seed)
    sub = type(data)(data.ids[torch.from_numpy(train_idx)], data.lengths[torch.from_numpy(train_idx)])
    opt = encoder_head_optimizer(model.encoder, head, cfg, device)
    per_epoch = len(epoch_batches(sub, cfg.batch_size, 0, cfg.seed, cfg.bucket_batches))
    total = max(1, cfg.epochs * per_epoch)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(int(cfg.warmup_ratio * total), total))
    best, best_epoch, best_state, rows, step = math.inf, None, None, [], 0
    bar = tqdm(total=cfg.epochs, disable=not progress, desc=desc, unit="epoch")
    for epoch in range(cfg.epochs):
        model.train()
        t0, loss_sum, n_seen = time.perf_counter(), 0.0, 0
        for idx in epoch_batches(sub, cfg.batch_size, epoch, cfg.seed, cfg.bucket_batches):
            torch.manual_seed(cfg.seed * 7_919 + step * 104_729 + 17)
            ids, mask = sub.batch(idx)
            with _autocast(device):
                loss = loss_fn(model, ids.to(device), mask.to(device), train_idx[idx.numpy()])
            optimizer_step(model, loss, opt, sched, cfg.grad_clip)
            step += 1
            loss_sum += float(loss.detach()) * len(idx)
            n_seen += len(idx)
        row = {"epoch": epoch + 1, "train_loss": loss_sum / n_seen, "seconds": round(time.perf_counter() - t0, 3)}
        model.eval()
        row["val_mae"] = float(val_fn(model))
        if row["val_mae"] < best:
            best, best_epoch, best_state = row["val_mae"], epoch + 1, copy.deepcopy(model.state_dict())
        rows.append(row)
        bar.update(1)
        bar.set_postfix(val_mae=f"{row['val_mae']:.4g}")
    bar.close()
    if best_state is not None:
        model.load_state_dict(best_state)
    model.eval()
    return model, pd.DataFrame(rows), best_epoch or cfg.epochs


def fit_debye(strings: Sequence[str], cv, n_atoms, cfg: FinetuneConfig | None = None, T: float = 300.0,
              parameterisation: str = "log", progress: bool = True) -> Fitted:
    """Train CLOUD-DEBYE end to end on Cv(``T``): L1 on Cv/3NR through the Debye integral.

    Validation rows (``cfg.val_fraction``, seeded, the same rows :func:`fit_direct` holds out) pick the
    best epoch by validation MAE of Cv. Raises :class:`InvalidTargetError` naming NaN / non-positive rows.
    """
    cfg = cfg or PROFILES["laptop"]
    strings = list(strings)
    cv = _check("cv", cv, positive=True)
    n = _check("n_atoms", n_atoms, positive=True)
    if not (len(cv) == len(n) == len(strings)):
        raise ValueError(f"{len(strings)} strings, {len(cv)} cv values and {len(n)} n_atoms values")
    t0 = time.perf_counter()
    train_idx, val_idx = split_indices(len(strings), cfg.val_fraction, cfg.seed)
    log_theta = np.log(theta_labels(cv[train_idx], n[train_idx], T))
    encoder, tok = build_encoder(cfg)
    torch.manual_seed(cfg.seed + 1)
    model = CloudDebye(encoder, cfg.dropout, float(log_theta.mean()), float(log_theta.std()) or 1.0, parameterisation)
    cv_t, n_t = torch.from_numpy(cv), torch.from_numpy(n)
    Tt = torch.tensor(T, dtype=torch.float64)

    def loss_fn(m, ids, mask, rows):
        rows = torch.from_numpy(rows)
        pred = debye.heat_capacity(m(ids, mask), Tt, n_t[rows].to(ids.device), validate=False)
        scale = 3 * debye.R * n_t[rows].to(ids.device)
        return F.l1_loss((pred / scale).float(), (cv_t[rows].to(ids.device) / scale).float())

    def val_fn(m):
        if not len(val_idx):
            return float("nan")
        fitted = Fitted(m, tok, cfg, "debye")
        pred = fitted.heat_capacity([strings[i] for i in val_idx], [T], n[val_idx])[:, 0]
        return np.mean(np.abs(pred - cv[val_idx]))

    model, history, best_epoch = _train(model, model.head, strings, cfg, loss_fn, val_fn,
                                        f"CLOUD-DEBYE ({parameterisation})", progress, tok)
    return Fitted(model, tok, cfg, "debye", history, best_epoch, time.perf_counter() - t0)


def fit_direct(strings: Sequence[str], cv, cfg: FinetuneConfig | None = None, progress: bool = True):
    """The paper's baseline: the same encoder and recipe regressing Cv(300 K) directly."""
    from .finetune import fit

    cfg = cfg or PROFILES["laptop"]
    return fit(list(strings), _check("cv", cv, positive=True), cfg, progress=progress, target_name="cv")


def fit_curves(strings: Sequence[str], temperatures, cv, n_atoms, cfg: FinetuneConfig | None = None,
               progress: bool = True) -> Fitted:
    """Train the direct multi-temperature regressor on curves ``cv`` [materials, temperatures] (NaN = missing)."""
    cfg = cfg or PROFILES["laptop"]
    strings = list(strings)
    T = _check("temperatures", temperatures, positive=True)
    cv = np.asarray(cv, dtype=float)
    if cv.shape != (len(strings), len(T)):
        raise ValueError(f"cv has shape {cv.shape}, expected ({len(strings)}, {len(T)})")
    n = _check("n_atoms", n_atoms, positive=True)
    frac = torch.from_numpy(cv / dulong_petit(n)[:, None]).float()
    t0 = time.perf_counter()
    _, val_idx = split_indices(len(strings), cfg.val_fraction, cfg.seed)
    encoder, tok = build_encoder(cfg)
    torch.manual_seed(cfg.seed + 1)
    model = CurveRegressor(encoder, cfg.dropout)
    Tt = torch.from_numpy(T)

    def loss_fn(m, ids, mask, rows):
        target = frac[torch.from_numpy(rows)].to(ids.device)
        ok = torch.isfinite(target)
        return F.l1_loss(m(ids, mask, Tt)[ok], target[ok])

    def val_fn(m):
        if not len(val_idx):
            return float("nan")
        pred = Fitted(m, tok, cfg, "curves").heat_capacity([strings[i] for i in val_idx], T, n[val_idx])
        return np.nanmean(np.abs(pred - cv[val_idx]))

    model, history, best_epoch = _train(model, model.head, strings, cfg, loss_fn, val_fn, "direct Cv(T)", progress, tok)
    return Fitted(model, tok, cfg, "curves", history, best_epoch, time.perf_counter() - t0)


# --------------------------------------------------------------------------- evaluation


def metrics(y, pred) -> dict:
    """MAE, MAD (mean absolute deviation of y), MAE/MAD (the paper's unit-free score), RMSE and R²."""
    y, pred = np.asarray(y, dtype=float), np.asarray(pred, dtype=float)
    mae = float(np.mean(np.abs(pred - y)))
    mad = float(np.mean(np.abs(y - y.mean())))
    ss = float(np.sum((y - y.mean()) ** 2))
    return {"mae": mae, "mad": mad, "mae_over_mad": mae / mad if mad > 0 else float("nan"),
            "rmse": float(np.sqrt(np.mean((pred - y) ** 2))), "r2": 1.0 - float(np.sum((pred - y) ** 2)) / ss if ss > 0 else float("nan"),
            "n": int(len(y))}


AUDIT_TEMPERATURES = tuple(float(t) for t in np.geomspace(1.0, 3000.0, 40))


def consistency_audit(cv, temperatures, n_atoms, rtol: float = 1e-6) -> pd.DataFrame:
    """Thermodynamic checks of predicted curves ``cv`` [materials, temperatures] (temperatures ascending).

    One row per material, one boolean column per *violation*:
    ``negative`` (Cv < 0), ``above_dulong_petit`` (Cv > 3NR), ``not_monotone`` (Cv falls as T rises),
    ``low_T_limit`` (Cv at the lowest T above 1 % of 3NR, though a Debye solid with Θ >= 10 K has
    Cv(1 K) < 0.2 % of 3NR), ``high_T_limit`` (Cv at the highest T not within 5 % of 3NR).
    ``rtol`` (relative to 3NR) absorbs floating-point noise.
    """
    cv = np.asarray(cv, dtype=float)
    T = np.asarray(temperatures, dtype=float)
    if np.any(np.diff(T) <= 0):
        raise ValueError("temperatures must be strictly increasing")
    limit = dulong_petit(n_atoms)[:, None] * np.ones_like(cv)
    frac = cv / limit
    return pd.DataFrame({
        "negative": (frac < -rtol).any(axis=1),
        "above_dulong_petit": (frac > 1 + rtol).any(axis=1),
        "not_monotone": (np.diff(frac, axis=1) < -rtol).any(axis=1),
        "low_T_limit": frac[:, 0] > 0.01,
        "high_T_limit": np.abs(frac[:, -1] - 1) > 0.05,
    }).assign(any=lambda d: d.any(axis=1))


def scope_label(scope: str, i: int | str = "") -> str:
    """A short human label from a SCOPE string's composition part: ``"Ta0.12 Cu0.38 S0.5"``."""
    comp = scope.split("|")[-1].split()
    pairs = [f"{el}{fr}" for el, fr in zip(comp[::2], comp[1::2])]
    return (" ".join(pairs) + (f" · {i}" if i != "" else "")).strip()


def replace_profile(profile: str, **kw) -> FinetuneConfig:
    return dataclasses.replace(PROFILES[profile], **kw)
