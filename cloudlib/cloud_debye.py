"""CLOUD-DEBYE and the two heads it is judged against: their objectives for the training engine and their fits.

* :func:`fit_debye` -- :class:`cloudlib.model.CloudDebye`: encoder ``[CLS]`` -> the fine-tuning MLP head -> h ->
  Θ(h) -> the differentiable Debye integral (:mod:`cloudlib.debye`) -> Cv(T) and U(T) for *any* T. Trained on
  Cv(300 K) alone, every curve it predicts is a Debye curve: 0 <= Cv <= 3NR, increasing in T, Cv ~ T^3 at low
  T, 3NR at high T.
* :func:`fit_direct` -- the baseline of the paper: the same encoder regressing Cv(300 K) directly
  (:func:`cloudlib.finetune.fit`), which knows nothing about other temperatures.
* :func:`fit_curves` -- :class:`cloudlib.model.CurveRegressor`, a *direct multi-temperature* regressor: the same
  encoder with T as an extra head input, trained on whole Cv(T) curves (our CHGNet phonon data). It can fit
  the curves, but nothing makes it obey thermodynamics (:func:`cloudlib.evaluation.consistency_audit`).

Θ parameterisation. The paper maps ``Θ = 1200·h + 1500 K``: at initialisation (h ~ 0) every material sits at
1500 K, far above the typical Θ (the median Θ of the training labels is ~460 K), and Θ < 0 for h < -1.25,
where the Debye function is undefined. We use the **log-standardised** map ``Θ = exp(μ + σ·h)`` with μ, σ the
mean / std of log Θ of the training labels (Θ inverted from each training Cv(300 K)): always positive, and
h ~ N(0, 1) already spans the training distribution, the role target standardisation plays in ordinary
fine-tuning. ``parameterisation="paper"`` trains the paper's map (Θ clamped at 1 K) for the comparison.

The loss is L1 on Cv / (3NR) (the fraction of the Dulong–Petit limit), so materials with many atoms per cell do
not dominate; metrics are reported in J/(K·mol of cells), as the authors' data are. All three heads hold out
the same validation rows for the same config (:func:`cloudlib.finetune.train_val_indices`).
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

from . import debye, engine
from .config import FinetuneConfig
from .debye import dulong_petit
from .errors import InvalidTargetError
from .finetune import SEED_STREAM, epochs_of, train_head, train_val_indices
from .model import CloudDebye, CurveRegressor, build_encoder


def check_values(name: str, values, positive: bool = False) -> np.ndarray:
    """``values`` as a float array, or :class:`InvalidTargetError` naming ``name`` and the first bad row."""
    a = np.asarray(values, dtype=float)
    bad = ~np.isfinite(a) | ((a <= 0) if positive else False)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise InvalidTargetError(f"{int(bad.sum())} unusable value(s), first at row {i}: {a.flat[i]!r}", name)
    return a


@dataclass
class Fitted:
    """A trained CloudDebye or CurveRegressor with its tokenizer and training record."""

    model: torch.nn.Module
    tokenizer: Any
    config: FinetuneConfig
    kind: str  # "debye" or "curves"
    history: pd.DataFrame = field(default_factory=pd.DataFrame)
    best_epoch: int | None = None
    seconds: float = 0.0

    def outputs(self, strings: Sequence[str], fn=None, batch_size: int = 256) -> torch.Tensor:
        """``fn(input_ids, attention_mask)`` (default: the model) for every string, in order, in eval mode."""
        device = next(self.model.parameters()).device
        self.model.eval()
        return engine.batched_outputs(
            fn or self.model, engine.encode(self.tokenizer, list(strings)), batch_size, device, self.config.precision
        )

    def _need_debye(self) -> None:
        if self.kind != "debye":
            raise TypeError("needs a CloudDebye model (fit_debye)")

    def theta(self, strings: Sequence[str]) -> np.ndarray:
        """Debye temperatures (K) of SCOPE strings (CLOUD-DEBYE only)."""
        self._need_debye()
        return self.outputs(strings).double().numpy() if len(strings) else np.zeros(0)

    def raw(self, strings: Sequence[str]) -> np.ndarray:
        """The head's output h before the Θ map (CLOUD-DEBYE only)."""
        self._need_debye()
        return self.outputs(strings, self.model.raw).double().numpy() if len(strings) else np.zeros(0)

    def heat_capacity(self, strings: Sequence[str], T, n_atoms) -> np.ndarray:
        """Cv [materials, temperatures] in J/(K·mol of cells)."""
        T = np.atleast_1d(np.asarray(T, dtype=float))
        n = check_values(
            "n_atoms", np.broadcast_to(np.asarray(n_atoms, dtype=float), (len(strings),)).copy(), positive=True
        )
        if self.kind == "debye":
            theta = self.theta(strings)
            return debye.heat_capacity(
                torch.from_numpy(theta)[:, None], torch.from_numpy(T)[None, :], torch.from_numpy(n)[:, None]
            ).numpy()
        Tt = torch.from_numpy(T)
        frac = self.outputs(strings, lambda i, m: self.model(i, m, Tt))
        return frac.double().numpy() * dulong_petit(n)[:, None]


def theta_labels(cv, n_atoms, T: float = 300.0) -> np.ndarray:
    """Debye temperatures that reproduce each Cv(T) exactly (labels can reach 3NR only as Θ -> 0)."""
    cv = check_values("cv", cv, positive=True)
    n = check_values("n_atoms", n_atoms, positive=True)
    ceiling = dulong_petit(n) * (1 - 1e-9)
    return debye.theta_from_cv(torch.from_numpy(np.minimum(cv, ceiling)), T, torch.from_numpy(n)).numpy()


class _HeadObjective(engine.Objective):
    """Shared by the two Cv heads: training rows by original position, validation MAE of Cv (J/(K·mol))."""

    monitor = "val_mae"
    seed_stream = SEED_STREAM

    def __init__(self, data: engine.Encoded, train_idx: np.ndarray, val_mae, device):
        self.train, self.rows, self.val_mae, self.device = data.rows(train_idx), train_idx, val_mae, device
        self.lengths = self.train.lengths

    def evaluate(self, model):
        value = self.val_mae(model)
        return {} if value is None else {"val_mae": float(value)}


class DebyeObjective(_HeadObjective):
    """L1 on Cv(T)/3NR through the Debye integral of the predicted Θ."""

    name = "CLOUD-DEBYE"

    def __init__(self, data, train_idx, cv, n_atoms, T, val_mae, device):
        super().__init__(data, train_idx, val_mae, device)
        self.cv, self.n, self.T = torch.from_numpy(cv), torch.from_numpy(n_atoms), torch.tensor(T, dtype=torch.float64)

    def loss(self, model, idx, g):
        ids, mask = self.train.batch(idx)
        rows = torch.from_numpy(self.rows[idx.numpy()])
        n = self.n[rows].to(self.device)
        pred = debye.heat_capacity(model(ids.to(self.device), mask.to(self.device)), self.T, n, validate=False)
        scale = 3 * debye.R * n
        loss = F.l1_loss((pred / scale).float(), (self.cv[rows].to(self.device) / scale).float())
        return loss, {"rows": len(idx), "tokens": int(mask.sum())}

    def digest(self):
        return engine.tensor_digest(self.train.ids, self.cv, self.n)


class CurveObjective(_HeadObjective):
    """L1 on Cv(T)/3NR over the known points of each training curve."""

    name = "direct Cv(T)"

    def __init__(self, data, train_idx, frac, T, val_mae, device):
        super().__init__(data, train_idx, val_mae, device)
        self.frac, self.T = frac, torch.from_numpy(T)

    def loss(self, model, idx, g):
        ids, mask = self.train.batch(idx)
        target = self.frac[torch.from_numpy(self.rows[idx.numpy()])].to(self.device)
        ok = torch.isfinite(target)
        loss = F.l1_loss(model(ids.to(self.device), mask.to(self.device), self.T)[ok], target[ok])
        return loss, {"rows": len(idx), "tokens": int(mask.sum())}

    def digest(self):
        return engine.tensor_digest(self.train.ids, torch.nan_to_num(self.frac, nan=-1.0))


def _prepare(strings: list[str], cfg: FinetuneConfig):
    """What every head starts from: the clock, the held-out rows and the encoder."""
    t0 = time.perf_counter()
    train_idx, val_idx = train_val_indices(len(strings), cfg)
    encoder, tok = build_encoder(cfg.encoder, cfg.pretrained, cfg.seed)
    return t0, train_idx, val_idx, encoder, tok


def _validation(kind: str, tok, cfg, strings, val_idx, T, cv, n):
    """The validation score of a Cv head: MAE of Cv (J/(K·mol)) over the known points of the held-out rows."""
    val_strings, cv_val = [strings[i] for i in val_idx], np.asarray(cv, float)[val_idx].reshape(len(val_idx), -1)

    def val_mae(m):
        if not len(val_idx):
            return None
        return np.nanmean(np.abs(Fitted(m, tok, cfg, kind).heat_capacity(val_strings, T, n[val_idx]) - cv_val))

    return val_mae


def _train(model, objective, cfg, progress: bool, t0: float, tok, kind: str, checkpoint_dir, resume: bool) -> Fitted:
    d = engine.setup_distributed()
    with engine.torch_threads(cfg.threads, d):
        result = train_head(model, objective, cfg, checkpoint_dir, resume, progress, d)
    best = epochs_of(result) if result.best_epoch is not None else int(round(cfg.epochs))
    return Fitted(model, tok, cfg, kind, result.history, best, time.perf_counter() - t0)


def fit_debye(
    strings: Sequence[str],
    cv,
    n_atoms,
    cfg: FinetuneConfig,
    T: float = 300.0,
    parameterisation: str = "log",
    progress: bool = True,
    checkpoint_dir: str | os.PathLike | None = None,
    resume: bool = False,
) -> Fitted:
    """Train CLOUD-DEBYE end to end on Cv(``T``): L1 on Cv/3NR through the Debye integral.

    Validation rows (``cfg.val_fraction``, seeded, the same rows :func:`fit_direct` holds out) pick the best
    epoch by validation MAE of Cv. With ``checkpoint_dir`` the run is checkpointed there and ``resume=True``
    continues it. Raises :class:`InvalidTargetError` naming NaN / non-positive rows.
    """
    strings = list(strings)
    cv = check_values("cv", cv, positive=True)
    n = check_values("n_atoms", n_atoms, positive=True)
    if not (len(cv) == len(n) == len(strings)):
        raise ValueError(f"{len(strings)} strings, {len(cv)} cv values and {len(n)} n_atoms values")
    t0, train_idx, val_idx, encoder, tok = _prepare(strings, cfg)
    log_theta = np.log(theta_labels(cv[train_idx], n[train_idx], T))
    torch.manual_seed(cfg.seed + 1)  # head initialisation
    model = CloudDebye(encoder, cfg.dropout, float(log_theta.mean()), float(log_theta.std()) or 1.0, parameterisation)
    val_mae = _validation("debye", tok, cfg, strings, val_idx, [T], cv, n)
    objective = DebyeObjective(
        engine.encode(tok, strings), train_idx, cv, n, T, val_mae, engine.setup_distributed().device
    )
    objective.name = f"CLOUD-DEBYE ({parameterisation})"
    return _train(model, objective, cfg, progress, t0, tok, "debye", checkpoint_dir, resume)


def fit_direct(strings: Sequence[str], cv, cfg: FinetuneConfig, progress: bool = True):
    """The paper's baseline: the same encoder and recipe regressing Cv(300 K) directly."""
    from .finetune import fit

    return fit(list(strings), check_values("cv", cv, positive=True), cfg, progress=progress, target_name="cv")


def fit_curves(
    strings: Sequence[str],
    temperatures,
    cv,
    n_atoms,
    cfg: FinetuneConfig,
    progress: bool = True,
    checkpoint_dir: str | os.PathLike | None = None,
    resume: bool = False,
) -> Fitted:
    """Train the direct multi-temperature regressor on curves ``cv`` [materials, temperatures] (NaN = missing)."""
    strings = list(strings)
    T = check_values("temperatures", temperatures, positive=True)
    cv = np.asarray(cv, dtype=float)
    if cv.shape != (len(strings), len(T)):
        raise ValueError(f"cv has shape {cv.shape}, expected ({len(strings)}, {len(T)})")
    n = check_values("n_atoms", n_atoms, positive=True)
    frac = torch.from_numpy(cv / dulong_petit(n)[:, None]).float()
    t0, train_idx, val_idx, encoder, tok = _prepare(strings, cfg)
    torch.manual_seed(cfg.seed + 1)  # head initialisation
    model = CurveRegressor(encoder, cfg.dropout)
    val_mae = _validation("curves", tok, cfg, strings, val_idx, T, cv, n)
    objective = CurveObjective(
        engine.encode(tok, strings), train_idx, frac, T, val_mae, engine.setup_distributed().device
    )
    return _train(model, objective, cfg, progress, t0, tok, "curves", checkpoint_dir, resume)
