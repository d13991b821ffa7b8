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

import json
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from . import debye, engine
from .config import FinetuneConfig
from .debye import dulong_petit
from .errors import ConfigError, InvalidTargetError
from .evaluation import mae, regression_metrics
from .finetune import SEED_STREAM, epochs_of, train_head, train_val_indices
from .model import CloudDebye, CurveRegressor, build_encoder, encoder_fingerprint
from .scope import expand_variants, group_mean


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
        """``fn(input_ids, attention_mask)`` (default: the model) for every string, in order, in eval mode; with
        ``config.tta > 1`` the mean over the string and its equivalent orders (test-time augmentation)."""
        device = next(self.model.parameters()).device
        self.model.eval()
        strings, groups = list(strings), None
        tta = getattr(self.config, "tta", 1)
        if tta > 1 and strings:
            strings, groups = expand_variants(strings, tta, self.config.seed)
        out = engine.batched_outputs(
            fn or self.model, engine.encode(self.tokenizer, strings), batch_size, device, self.config.precision
        )
        if groups is None:
            return out
        dtype = out.dtype
        return torch.from_numpy(group_mean(out.double().numpy(), groups)).to(dtype)

    def _need_debye(self) -> None:
        if self.kind != "debye":
            raise TypeError("needs a CloudDebye model (fit_debye)")

    def theta(self, strings: Sequence[str]) -> np.ndarray:
        """Debye temperatures (K) of SCOPE strings (CLOUD-DEBYE only)."""
        self._need_debye()
        if not len(strings):
            return np.zeros(0)
        if getattr(self.config, "tta", 1) > 1:  # Θ of the mean head output over orders (log map: geometric mean)
            return self.model.theta_of(torch.from_numpy(self.raw(strings))).numpy()
        return self.outputs(strings).double().numpy()

    def spectrum(self, strings: Sequence[str]) -> dict[str, np.ndarray]:
        """Debye + Einstein models (:func:`fit_physics` with ``head="einstein"``): ``{"theta": Θ_D [M],
        "theta_e": [M, m], "weights": [M, m + 1]}`` (K; shares of the 3N modes, Debye first)."""
        if self.kind != "einstein":
            raise TypeError("needs a Debye + Einstein model (fit_physics(head='einstein'))")
        m = self.model.n_einstein
        if not len(strings):
            return {"theta": np.zeros(0), "theta_e": np.zeros((0, m)), "weights": np.zeros((0, m + 1))}
        params = self.outputs(strings).double()
        thd, the, w = self.model.unpack(params)
        return {"theta": thd.numpy(), "theta_e": the.numpy(), "weights": w.numpy()}

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
        if self.kind == "einstein":
            return self.thermodynamics(strings, T, n)["cv"]
        Tt = torch.from_numpy(T)
        frac = self.outputs(strings, lambda i, m: self.model(i, m, Tt))
        return frac.double().numpy() * dulong_petit(n)[:, None]

    def thermodynamics(self, strings: Sequence[str], T, n_atoms) -> dict[str, np.ndarray]:
        """``{"theta": [M], "cv", "u", "s", "f": [M, K]}`` (CLOUD-DEBYE only): Θ and the Debye Cv, U, S and F
        (U and F with the zero-point term) in J/(K·mol) and J/mol of cells of ``n_atoms`` atoms, float64."""
        if self.kind not in ("debye", "einstein"):
            raise TypeError("needs a physics model (fit_debye or fit_physics)")
        T = check_values("temperatures", np.atleast_1d(np.asarray(T, dtype=float)), positive=True)
        n = check_values(
            "n_atoms", np.broadcast_to(np.asarray(n_atoms, dtype=float), (len(strings),)).copy(), positive=True
        )
        if self.kind == "einstein":
            params = self.spectrum(strings)
            out = debye.mixture_thermodynamics(
                torch.from_numpy(params["theta"])[:, None],
                torch.from_numpy(params["theta_e"])[:, None, :],
                torch.from_numpy(params["weights"])[:, None, :],
                torch.from_numpy(T)[None, :],
                torch.from_numpy(n)[:, None],
            )
            return {**params, **{k: v.numpy() for k, v in out.items()}}
        theta = self.theta(strings)
        out = debye.thermodynamics(
            torch.from_numpy(theta)[:, None], torch.from_numpy(T)[None, :], torch.from_numpy(n)[:, None]
        )
        return {"theta": theta, **{k: v.numpy() for k, v in out.items()}}


def parse_temperatures(spec) -> np.ndarray:
    """Temperatures in K from ``"START:STOP:STEP"`` (STOP included when the steps reach it), ``"300"``,
    ``"100,300,500"`` or a sequence of numbers. Raises :class:`~cloudlib.errors.ConfigError` naming the input
    for an empty, non-numeric, zero, negative, NaN or infinite temperature, or a range with a step <= 0."""

    name = f"temperatures {spec!r}"
    try:
        if isinstance(spec, str):
            text = spec.strip()
            if ":" in text:
                parts = [float(p) for p in text.split(":")]
                if len(parts) != 3:
                    raise ConfigError("a range is START:STOP:STEP", name)
                start, stop, step = parts
                if not (np.isfinite(step) and step > 0):
                    raise ConfigError(f"the step must be > 0, got {step!r}", name)
                if not (np.isfinite(start) and np.isfinite(stop)) or stop < start:
                    raise ConfigError("need finite START <= STOP", name)
                n = int(np.floor((stop - start) / step + 1e-9)) + 1
                if n > 100_000:
                    raise ConfigError(f"{n:,} temperatures; at most 100,000", name)
                T = start + step * np.arange(n)
            else:
                T = np.array([float(p) for p in text.replace(",", " ").split()], dtype=float)
        else:
            T = np.atleast_1d(np.asarray(spec, dtype=float)).ravel()
    except ValueError as exc:
        if isinstance(exc, ConfigError):
            raise
        raise ConfigError(f"not numbers ({exc})", name) from exc
    if T.size == 0:
        raise ConfigError("no temperatures given", name)
    bad = ~np.isfinite(T) | (T <= 0)
    if bad.any():
        raise ConfigError(f"temperatures must be finite and > 0 K, got {float(T[bad][0])!r}", name)
    return T


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

    def __init__(self, data: tuple[engine.Encoded, np.ndarray], val_mae, device):
        """``data``: the encoded training strings and the original row of each (:func:`_training_data`)."""
        (self.train, self.rows), self.val_mae, self.device = data, val_mae, device
        self.lengths = self.train.lengths

    def evaluate(self, model):
        value = self.val_mae(model)
        return {} if value is None else {"val_mae": float(value)}


class DebyeObjective(_HeadObjective):
    """L1 on Cv(T)/3NR through the Debye integral of the predicted Θ."""

    name = "CLOUD-DEBYE"

    def __init__(self, data, cv, n_atoms, T, val_mae, device):
        super().__init__(data, val_mae, device)
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

    def __init__(self, data, frac, T, val_mae, device):
        super().__init__(data, val_mae, device)
        self.frac, self.T = frac, torch.from_numpy(T)

    def loss(self, model, idx, g):
        ids, mask = self.train.batch(idx)
        target = self.frac[torch.from_numpy(self.rows[idx.numpy()])].to(self.device)
        ok = torch.isfinite(target)
        loss = F.l1_loss(model(ids.to(self.device), mask.to(self.device), self.T)[ok], target[ok])
        return loss, {"rows": len(idx), "tokens": int(mask.sum())}

    def digest(self):
        return engine.tensor_digest(self.train.ids, torch.nan_to_num(self.frac, nan=-1.0))


class PhysicsObjective(_HeadObjective):
    """L1 on Cv(T)/3NR through a physics head (Debye or Debye + Einstein) over the known points of each training
    row (NaN = not measured: the authors' rows know 300 K only, a phonon curve knows its whole grid); each row's
    points are averaged first, so every crystal weighs the same whatever its number of temperatures."""

    def __init__(self, data, frac, T, val_mae, device, head: str):
        super().__init__(data, val_mae, device)
        self.frac, self.T, self.head = frac, torch.from_numpy(T), head

    def fraction(self, model, ids, mask) -> torch.Tensor:
        params = model(ids.to(self.device), mask.to(self.device))
        T = self.T.to(self.device)
        if self.head == "debye":
            return debye.heat_capacity(params[:, None], T[None], 1.0, validate=False) / (3 * debye.R)
        thd, the, w = model.unpack(params)
        out = debye.mixture_thermodynamics(thd[:, None], the[:, None, :], w[:, None, :], T[None], validate=False)
        return out["cv"] / (3 * debye.R)

    def loss(self, model, idx, g):
        ids, mask = self.train.batch(idx)
        target = self.frac[torch.from_numpy(self.rows[idx.numpy()])].to(self.device)
        ok = torch.isfinite(target)
        err = torch.where(ok, (self.fraction(model, ids, mask) - torch.nan_to_num(target)).abs(), 0.0)
        loss = (err.sum(-1) / ok.sum(-1).clamp_min(1)).mean()
        return loss.float(), {"rows": len(idx), "tokens": int(mask.sum())}

    def digest(self):
        return engine.tensor_digest(self.train.ids, torch.nan_to_num(self.frac, nan=-1.0))


def _prepare(strings: list[str], cfg: FinetuneConfig):
    """What every head starts from: the clock, the held-out rows and the encoder."""
    t0 = time.perf_counter()
    train_idx, val_idx = train_val_indices(len(strings), cfg)
    encoder, tok = build_encoder(cfg.encoder, cfg.pretrained, cfg.seed, cfg.encoder_dropout)
    return t0, train_idx, val_idx, encoder, tok


def _training_data(tok, strings: list[str], train_idx: np.ndarray, cfg: FinetuneConfig):
    """(encoded training strings, the original row of each): with ``cfg.augment > 1`` each training string and
    up to ``augment - 1`` equivalent orders (:func:`cloudlib.scope.scope_variants`), each with its row's target."""
    if cfg.augment <= 1:
        return engine.encode(tok, strings).rows(train_idx), train_idx
    aug, groups = expand_variants([strings[i] for i in train_idx], cfg.augment, cfg.seed)
    return engine.encode(tok, aug), train_idx[groups]


def _validation(kind: str, tok, cfg, strings, val_idx, T, cv, n):
    """The validation score of a Cv head: MAE of Cv (J/(K·mol)) over the known points of the held-out rows."""
    val_strings = [strings[i] for i in val_idx]
    cv_val = np.asarray(cv, float)[val_idx]
    cv_val = cv_val[:, None] if cv_val.ndim == 1 else cv_val  # [rows, temperatures]; no rows with val_fraction 0

    def val_mae(m):
        if not len(val_idx):
            return None
        return mae(cv_val, Fitted(m, tok, cfg, kind).heat_capacity(val_strings, T, n[val_idx]), skip_nan=True)

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
        _training_data(tok, strings, train_idx, cfg), cv, n, T, val_mae, engine.setup_distributed().device
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
        _training_data(tok, strings, train_idx, cfg), frac, T, val_mae, engine.setup_distributed().device
    )
    return _train(model, objective, cfg, progress, t0, tok, "curves", checkpoint_dir, resume)


PHYSICS_HEADS = ("debye", "einstein")


def fit_physics(
    strings: Sequence[str],
    temperatures,
    cv,
    n_atoms,
    cfg: FinetuneConfig,
    head: str = "einstein",
    n_einstein: int = 2,
    progress: bool = True,
    checkpoint_dir: str | os.PathLike | None = None,
    resume: bool = False,
) -> Fitted:
    """A physics head trained on whatever Cv is known: ``cv`` [materials, temperatures] with NaN where a material
    has no value (e.g. the authors' Cv(300 K) rows beside whole phonon curves). ``head="debye"``: CLOUD-DEBYE
    (one Θ, log-standardised); ``"einstein"``: :class:`cloudlib.model.CloudDebyeEinstein`, a Debye term plus
    ``n_einstein`` Einstein terms with learned shares, every curve thermodynamically consistent by construction.
    μ, σ of the Θ map come from the Θ that reproduces each training row's Cv at the temperature nearest 300 K it
    has. Validation rows as in :func:`fit_debye` (MAE of Cv over their known points)."""
    from .model import CloudDebyeEinstein

    if head not in PHYSICS_HEADS:
        raise ValueError(f"head must be one of {PHYSICS_HEADS}, got {head!r}")
    strings = list(strings)
    T = check_values("temperatures", temperatures, positive=True)
    cv = np.asarray(cv, dtype=float).reshape(len(strings), len(T))
    n = check_values("n_atoms", n_atoms, positive=True)
    known = np.isfinite(cv)
    if not known.any(axis=1).all():
        i = int(np.flatnonzero(~known.any(axis=1))[0])
        raise InvalidTargetError(f"row {i} has no finite Cv at any temperature", "cv")
    neg = known & ~(np.nan_to_num(cv, nan=0.0) >= 0)
    if neg.any():  # Cv = 0 is a real value (a stiff crystal at 5 K); below 0 or infinite is not
        i, j = (int(v[0]) for v in np.nonzero(neg))
        raise InvalidTargetError(f"Cv must be finite and >= 0, got {cv[i, j]!r} at row {i}, T = {T[j]:g} K", "cv")
    t0, train_idx, val_idx, encoder, tok = _prepare(strings, cfg)
    # Θ labels at each row's temperature nearest 300 K
    order = np.argsort(np.abs(np.log(T / 300.0)))
    usable = known & (np.nan_to_num(cv, nan=0.0) > 0)
    if not usable.any(axis=1).all():
        i = int(np.flatnonzero(~usable.any(axis=1))[0])
        raise InvalidTargetError(f"row {i} has no Cv > 0 at any temperature", "cv")
    col = np.array([next(j for j in order if usable[i, j]) for i in range(len(strings))])
    rows = np.arange(len(strings))
    ceiling = dulong_petit(n) * (1 - 1e-9)
    log_theta = np.log(
        debye.theta_from_cv(
            torch.from_numpy(np.minimum(cv[rows, col], ceiling)[train_idx]),
            torch.from_numpy(T[col][train_idx]),
            torch.from_numpy(n[train_idx]),
        ).numpy()
    )
    torch.manual_seed(cfg.seed + 1)  # head initialisation
    mu, sigma = float(log_theta.mean()), float(log_theta.std()) or 1.0
    if head == "debye":
        model = CloudDebye(encoder, cfg.dropout, mu, sigma, "log")
    else:
        model = CloudDebyeEinstein(encoder, cfg.dropout, mu, sigma, n_einstein)
    kind = "debye" if head == "debye" else "einstein"
    val_mae = _validation(kind, tok, cfg, strings, val_idx, T, cv, n)
    frac = torch.from_numpy(cv / dulong_petit(n)[:, None])
    objective = PhysicsObjective(
        _training_data(tok, strings, train_idx, cfg), frac, T, val_mae, engine.setup_distributed().device, head
    )
    objective.name = "CLOUD-DEBYE (curves)" if head == "debye" else f"CLOUD-DEBYE+{n_einstein}E"
    return _train(model, objective, cfg, progress, t0, tok, kind, checkpoint_dir, resume)


# --------------------------------------------------------------------------- on disk

DEBYE_FORMAT = 1
#: the files without which a CLOUD-DEBYE folder cannot load
DEBYE_FILES = ("debye.json", "config.json", "model.safetensors", "head.safetensors", "tokenizer.json")


def save_debye(fitted: Fitted, folder: str | os.PathLike, card: dict | None = None) -> Path:
    """Write a trained CLOUD-DEBYE (:func:`fit_debye`) as one folder, replaced atomically: the encoder and
    tokenizer (``save_pretrained``), ``head.safetensors`` (the MLP head and the Θ map's μ, σ), ``debye.json``
    (parameterisation, μ, σ, dropout, config, best epoch, units, ``card``), ``history.csv`` and
    ``manifest.json`` (size and sha256 of every file). :func:`load_debye` reads it back."""
    from safetensors.torch import save_file

    from .io import atomic_dir, write_manifest
    from .model import quiet_loading
    from .paths import display, resolve

    fitted._need_debye()
    model = fitted.model
    folder = Path(folder)
    with atomic_dir(folder) as tmp:
        with quiet_loading():
            model.encoder.save_pretrained(tmp, safe_serialization=True)
        fitted.tokenizer.save_pretrained(tmp)
        head = {k: v.detach().cpu().contiguous() for k, v in model.head.state_dict().items()}
        save_file(head, str(tmp / "head.safetensors"))
        config = fitted.config.to_dict()
        if resolve(config["encoder"]).exists():
            config["encoder"] = display(resolve(config["encoder"]))
        meta = {
            "format": DEBYE_FORMAT,
            "kind": "cloud-debye",
            "parameterisation": model.parameterisation,
            "log_theta_mean": float(model.mu),
            "log_theta_std": float(model.sigma),
            "dropout": model.head[0].p,
            "best_epoch": fitted.best_epoch,
            "seconds": round(float(fitted.seconds), 1),
            "config": config,
            "units": {
                "theta": "K",
                "cv": "J/(K mol of primitive cells)",
                "s": "J/(K mol of primitive cells)",
                "u": "J/mol of primitive cells, zero-point included",
                "f": "J/mol of primitive cells, zero-point included",
            },
            "card": card or {},
        }
        (tmp / "debye.json").write_text(json.dumps(meta, indent=2) + "\n")
        if fitted.history is not None and len(fitted.history):
            fitted.history.to_csv(tmp / "history.csv", index=False)
        write_manifest(tmp)
    return folder


def is_debye_folder(folder: str | os.PathLike) -> bool:
    from .paths import resolve

    return (resolve(folder) / "debye.json").is_file()


def load_debye(folder: str | os.PathLike, device: str | torch.device | None = None) -> Fitted | Ensemble:
    """A CLOUD-DEBYE :class:`Fitted` from a folder written by :func:`save_debye` (an :class:`Ensemble` from one
    written by :func:`save_ensemble`); files checked against the manifest. Raises :class:`~cloudlib.errors.ModelError` naming the folder and what is wrong."""
    from safetensors.torch import load_file
    from transformers import BertModel

    from .config import check_fields
    from .errors import ModelError
    from .io import verify_manifest
    from .model import quiet_loading
    from .paths import resolve
    from .tokenizer import load_tokenizer

    folder = resolve(folder)
    if not folder.exists():
        raise ModelError("no such model folder", str(folder))
    stub = folder / "debye.json"
    if (folder / "ensemble.json").is_file() or (
        stub.is_file() and stub.stat().st_size < 200 and b"cloud-debye-ensemble" in stub.read_bytes()
    ):
        return load_ensemble(folder, device)
    if folder.is_dir() and not (folder / "debye.json").is_file():
        raise ModelError("not a CLOUD-DEBYE folder (no debye.json; write one with save_debye)", str(folder))
    verify_manifest(folder, DEBYE_FILES, kind="CLOUD-DEBYE")
    try:
        meta = json.loads((folder / "debye.json").read_text())
        mu, sigma, param = float(meta["log_theta_mean"]), float(meta["log_theta_std"]), meta["parameterisation"]
    except (ValueError, KeyError, TypeError, UnicodeDecodeError) as exc:
        raise ModelError(f"debye.json is not a valid description ({type(exc).__name__}: {exc})", str(folder)) from exc
    try:
        with quiet_loading():
            encoder = BertModel.from_pretrained(folder, add_pooling_layer=False, attn_implementation="sdpa")
        tok = load_tokenizer(folder)
        model = CloudDebye(encoder, meta.get("dropout", 0.1), mu, sigma, param)
        model.head.load_state_dict(load_file(str(folder / "head.safetensors")))
    except Exception as exc:
        msg = " ".join(str(exc).split())[:300]
        raise ModelError(f"cannot load the CLOUD-DEBYE model ({type(exc).__name__}: {msg})", str(folder)) from exc
    model.to(device or "cpu").eval()
    values = meta.get("config", {})
    check_fields(FinetuneConfig, values)
    hist = folder / "history.csv"
    return Fitted(
        model=model,
        tokenizer=tok,
        config=FinetuneConfig(**values),
        kind="debye",
        history=pd.read_csv(hist) if hist.exists() else pd.DataFrame(),
        best_epoch=meta.get("best_epoch"),
        seconds=float(meta.get("seconds", 0.0)),
    )


# --------------------------------------------------------------------------- ensembles and their bands

CALIBRATION_SEED = 9_973  #: offsets the seed of the calibration rows from every member's validation rows
ENSEMBLE_FORMAT = 1


def _z(level: float) -> float:
    from scipy.stats import norm

    return float(norm.ppf(0.5 + level / 2))


@dataclass
class Ensemble:
    """k CLOUD-DEBYE fits (different seeds, so different validation rows, head initialisations and batch
    orders) used together: Θ is the geometric mean of the members' Θ, so every prediction is still one Debye
    curve (thermodynamically consistent), and the band is ``log Θ ± z · scale · sd`` over members, ``scale``
    calibrated on rows no member trained or early-stopped on so that a fraction ``level`` of them is covered.
    Cv is decreasing in Θ, so the Cv band at any T is [Cv(Θ_hi), Cv(Θ_lo)]."""

    members: list
    scale: float = 1.0
    level: float = 0.9
    calibration: dict = field(default_factory=dict)
    card: dict = field(default_factory=dict)
    kind: str = "debye"
    #: :func:`~cloudlib.model.encoder_fingerprint` of the encoder the members were trained from (None: unknown)
    encoder: dict | None = None

    @property
    def tokenizer(self):
        return self.members[0].tokenizer

    @property
    def config(self) -> FinetuneConfig:
        return self.members[0].config

    def _need_debye(self) -> None:
        return None

    def log_thetas(self, strings: Sequence[str]) -> np.ndarray:
        """log Θ of every member, [k, materials]."""
        return np.stack([np.log(m.theta(list(strings))) for m in self.members])

    def theta_band(self, strings: Sequence[str], scale: float | None = None, level: float | None = None):
        """(Θ, Θ_lo, Θ_hi) in K per string: the geometric mean and the band of nominal ``level``."""
        lt = self.log_thetas(strings)
        mean = lt.mean(0)
        sd = lt.std(0, ddof=1) if len(self.members) > 1 else np.zeros_like(mean)
        half = _z(self.level if level is None else level) * (self.scale if scale is None else scale) * sd
        return np.exp(mean), np.exp(np.maximum(mean - half, -300.0)), np.exp(np.minimum(mean + half, 300.0))

    def theta(self, strings: Sequence[str]) -> np.ndarray:
        return self.theta_band(strings)[0]

    def heat_capacity(self, strings: Sequence[str], T, n_atoms) -> np.ndarray:
        return self.thermodynamics(strings, T, n_atoms)["cv"]

    def thermodynamics(self, strings: Sequence[str], T, n_atoms) -> dict[str, np.ndarray]:
        """As :meth:`Fitted.thermodynamics` for the ensemble's Θ, plus ``theta_lo``, ``theta_hi`` [M] and
        ``cv_lo``, ``cv_hi`` [M, K] (the band of nominal ``level``)."""
        T = check_values("temperatures", np.atleast_1d(np.asarray(T, dtype=float)), positive=True)
        n = check_values(
            "n_atoms", np.broadcast_to(np.asarray(n_atoms, dtype=float), (len(strings),)).copy(), positive=True
        )
        theta, lo, hi = self.theta_band(strings)
        Tt, nt = torch.from_numpy(T)[None, :], torch.from_numpy(n)[:, None]
        out = {k: v.numpy() for k, v in debye.thermodynamics(torch.from_numpy(theta)[:, None], Tt, nt).items()}
        out["cv_lo"] = debye.heat_capacity(torch.from_numpy(hi)[:, None], Tt, nt).numpy()
        out["cv_hi"] = debye.heat_capacity(torch.from_numpy(lo)[:, None], Tt, nt).numpy()
        return {"theta": theta, "theta_lo": lo, "theta_hi": hi, **out}

    def coverage(self, strings: Sequence[str], cv, n_atoms, T: float = 300.0, scale: float | None = None) -> float:
        """Fraction of materials whose true Cv(T) lies in the band (``scale``: another spread multiplier)."""
        _, lo, hi = self.theta_band(list(strings), scale=scale)
        n = torch.from_numpy(np.asarray(n_atoms, dtype=float))
        cv_lo = debye.heat_capacity(torch.from_numpy(hi), T, n).numpy()
        cv_hi = debye.heat_capacity(torch.from_numpy(lo), T, n).numpy()
        cv = np.asarray(cv, dtype=float)
        return float(np.mean((cv >= cv_lo) & (cv <= cv_hi)))


def calibration_rows(n: int, cfg: FinetuneConfig, fraction: float) -> tuple[np.ndarray, np.ndarray]:
    """Sorted (kept, calibration) positions: the calibration rows are carved before any member's validation
    rows, with their own seed stream, so no member trains or early-stops on them."""
    from .splits import seeded_split

    keep, calib = seeded_split(n, fraction, cfg.seed + CALIBRATION_SEED)
    return np.sort(keep), np.sort(calib)


def calibrate_scale(log_thetas: np.ndarray, labels: np.ndarray, level: float = 0.9) -> float:
    """The multiplier of the members' spread at which a fraction ``level`` of the rows' label log Θ lies within
    ``mean ± z · scale · sd`` (the ``level`` quantile of |label − mean| / (z · sd)); 1 when the spread is 0."""
    mean, sd = log_thetas.mean(0), log_thetas.std(0, ddof=1)
    ok = sd > 0
    if not ok.any():
        return 1.0
    ratio = np.abs(np.log(labels[ok]) - mean[ok]) / (_z(level) * sd[ok])
    return float(np.quantile(ratio, level, method="higher"))


def members_curve(log_thetas: np.ndarray, cv, n_atoms, T: float = 300.0) -> list[float]:
    """MAE/MAD of Cv(``T``) against ``cv`` for the ensembles of the first 1, 2, ..., k members (geometric-mean Θ
    of each prefix; ``log_thetas`` [k, rows] as :meth:`Ensemble.log_thetas`): on rows no member saw, the
    validation evidence for how many members are worth their cost."""
    n = torch.from_numpy(np.asarray(n_atoms, dtype=float))
    out = []
    for j in range(1, len(log_thetas) + 1):
        theta = torch.from_numpy(np.exp(log_thetas[:j].mean(0)))
        out.append(regression_metrics(cv, debye.heat_capacity(theta, T, n).numpy())["mae_over_mad"])
    return out


def fit_ensemble(
    strings: Sequence[str],
    cv,
    n_atoms,
    cfg: FinetuneConfig,
    k: int = 5,
    level: float = 0.9,
    calibration_fraction: float = 0.1,
    T: float = 300.0,
    progress: bool = True,
) -> Ensemble:
    """k CLOUD-DEBYE fits (seeds ``cfg.seed + i``) on the rows left after carving ``calibration_fraction`` of
    them for calibrating the band (:func:`calibration_rows`); each member then holds out its own validation
    rows for early stopping. ``calibration`` records the calibration rows' coverage before and after, and their
    MAE/MAD of Cv(T) for the first 1, ..., k members (:func:`members_curve`)."""
    strings = list(strings)
    cv = check_values("cv", cv, positive=True)
    n = check_values("n_atoms", n_atoms, positive=True)
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    keep, calib = calibration_rows(len(strings), cfg, calibration_fraction)
    members = []
    for i in range(k):
        members.append(
            fit_debye([strings[j] for j in keep], cv[keep], n[keep], cfg.replace(seed=cfg.seed + i), T, "log", progress)
        )
    ens = Ensemble(members, 1.0, level, encoder=encoder_fingerprint(cfg.encoder, cfg.pretrained))
    cal_strings = [strings[j] for j in calib]
    info = {"rows": int(len(calib)), "members": k, "level": level}
    if len(calib):
        lt = ens.log_thetas(cal_strings)
        info["mae_over_mad_by_members"] = members_curve(lt, cv[calib], n[calib], T)
        if k > 1:
            labels = theta_labels(cv[calib], n[calib], T)
            info["coverage_uncalibrated"] = ens.coverage(cal_strings, cv[calib], n[calib], T, scale=1.0)
            ens.scale = calibrate_scale(lt, labels, level)
            info["coverage_calibrated"] = ens.coverage(cal_strings, cv[calib], n[calib], T)
    info["scale"] = ens.scale
    ens.calibration = info
    return ens


def save_ensemble(ens: Ensemble, folder: str | os.PathLike, card: dict | None = None) -> Path:
    """One folder: ``ensemble.json`` (members, level, calibrated scale and its evidence, card), ``member-i/``
    (each a :func:`save_debye` folder with its own manifest) and ``manifest.json``; replaced atomically."""
    from .io import atomic_dir, write_manifest

    folder = Path(folder)
    with atomic_dir(folder) as tmp:
        names = []
        for i, m in enumerate(ens.members):
            save_debye(m, tmp / f"member-{i}")
            names.append(f"member-{i}")
        meta = {
            "format": ENSEMBLE_FORMAT,
            "kind": "cloud-debye-ensemble",
            "members": names,
            "level": ens.level,
            "scale": ens.scale,
            "calibration": ens.calibration,
            "card": card or ens.card,
            "encoder": ens.encoder,
        }
        (tmp / "ensemble.json").write_text(json.dumps(meta, indent=2) + "\n")
        (tmp / "debye.json").write_text(json.dumps({"kind": "cloud-debye-ensemble", "see": "ensemble.json"}) + "\n")
        write_manifest(tmp)
    return folder


def load_ensemble(folder: str | os.PathLike, device: str | torch.device | None = None) -> Ensemble:
    """An :class:`Ensemble` from :func:`save_ensemble`'s folder, every file checked against the manifests."""
    from .errors import ModelError
    from .io import verify_manifest
    from .paths import resolve

    folder = resolve(folder)
    verify_manifest(folder, ("ensemble.json",), kind="CLOUD-DEBYE ensemble")
    try:
        meta = json.loads((folder / "ensemble.json").read_text())
        names, scale, level = list(meta["members"]), float(meta["scale"]), float(meta["level"])
    except (ValueError, KeyError, TypeError, UnicodeDecodeError) as exc:
        raise ModelError(
            f"ensemble.json is not a valid description ({type(exc).__name__}: {exc})", str(folder)
        ) from exc
    if not names:
        raise ModelError("ensemble.json lists no members", str(folder))
    members = [load_debye(folder / name, device) for name in names]
    return Ensemble(
        members, scale, level, meta.get("calibration", {}), meta.get("card", {}), encoder=meta.get("encoder")
    )
