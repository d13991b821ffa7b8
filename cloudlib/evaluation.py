"""Scores: regression metrics in the paper's units, and the thermodynamic-consistency audit of Cv(T) curves.

* :func:`mae` -- the mean absolute error (over all entries or along an axis, NaN-aware for curves with gaps).
* :func:`regression_metrics` -- MAE, MAD, MAE/MAD (the paper's unit-free score), RMSE, R², max error.
* :func:`fit_scores` -- the scores of one fit's test predictions (every study's scorer, :mod:`cloudlib.study`).
* :func:`consistency_audit` -- per material, which thermodynamic rules a predicted Cv(T) curve breaks.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from .debye import dulong_petit


def mae(y, pred, axis=None, skip_nan: bool = False):
    """Mean absolute error of ``pred`` against ``y`` (same shape) over ``axis`` (None: every entry, a float);
    ``skip_nan``: over the known entries only (curves with gaps)."""
    d = np.abs(np.asarray(pred, dtype=float) - np.asarray(y, dtype=float))
    out = np.nanmean(d, axis=axis) if skip_nan else d.mean(axis=axis)
    return float(out) if axis is None else out


def regression_metrics(y, pred) -> dict:
    """MAE, MAD (mean absolute deviation of y), MAE/MAD (the paper's unit-free score), RMSE, R² and the largest
    absolute error."""
    y, pred = np.asarray(y, dtype=float), np.asarray(pred, dtype=float)
    if y.shape != pred.shape:
        raise ValueError(f"y has shape {y.shape} but pred {pred.shape}")
    err = mae(y, pred)
    mad = float(np.mean(np.abs(y - y.mean())))
    ss = float(np.sum((y - y.mean()) ** 2))
    return {
        "mae": err,
        "mad": mad,
        "mae_over_mad": err / mad if mad > 0 else float("nan"),
        "rmse": float(np.sqrt(np.mean((pred - y) ** 2))),
        "r2": 1.0 - float(np.sum((pred - y) ** 2)) / ss if ss > 0 else float("nan"),
        "max_error": float(np.max(np.abs(pred - y))) if len(y) else float("nan"),
        "n": int(len(y)),
    }


def fit_scores(y, pred, kind: str = "regression") -> dict:
    """The scores of one fit on its test rows: :func:`regression_metrics` for a regression; for a classification
    (0/1 targets, predicted classes) ``accuracy`` and ``n``. The project's one scorer: every MAE a study reports
    comes from here (MatBench's own ``record`` scores MatBench tasks again, as their judge)."""
    if kind == "regression":
        return regression_metrics(y, pred)
    if kind != "classification":
        raise ValueError(f"kind must be 'regression' or 'classification', got {kind!r}")
    y, pred = np.asarray(y, dtype=float), np.asarray(pred, dtype=float)
    if y.shape != pred.shape:
        raise ValueError(f"y has shape {y.shape} but pred {pred.shape}")
    return {"accuracy": float(np.mean(y == pred)), "n": int(len(y))}


#: 40 temperatures from 1 K to 3000 K (log-spaced): the audit's grid.
AUDIT_TEMPERATURES = tuple(float(t) for t in np.geomspace(1.0, 3000.0, 40))


def consistency_audit(cv, temperatures, n_atoms, rtol: float = 1e-6) -> pd.DataFrame:
    """Thermodynamic checks of predicted curves ``cv`` [materials, temperatures] (temperatures ascending).

    One row per material, one boolean column per *violation*: ``negative`` (Cv < 0), ``above_dulong_petit``
    (Cv > 3NR), ``not_monotone`` (Cv falls as T rises), ``low_T_limit`` (Cv at the lowest T above 1 % of 3NR,
    though a Debye solid with Θ >= 10 K has Cv(1 K) < 0.2 % of 3NR), ``high_T_limit`` (Cv at the highest T not
    within 5 % of 3NR), and ``any``. ``rtol`` (relative to 3NR) absorbs floating-point noise.
    """
    cv = np.asarray(cv, dtype=float)
    T = np.asarray(temperatures, dtype=float)
    if np.any(np.diff(T) <= 0):
        raise ValueError("temperatures must be strictly increasing")
    limit = dulong_petit(n_atoms)[:, None] * np.ones_like(cv)
    frac = cv / limit
    return pd.DataFrame(
        {
            "negative": (frac < -rtol).any(axis=1),
            "above_dulong_petit": (frac > 1 + rtol).any(axis=1),
            "not_monotone": (np.diff(frac, axis=1) < -rtol).any(axis=1),
            "low_T_limit": frac[:, 0] > 0.01,
            "high_T_limit": np.abs(frac[:, -1] - 1) > 0.05,
        }
    ).assign(any=lambda d: d.any(axis=1))


def audit_counts(curves: dict[str, np.ndarray], temperatures, n_atoms) -> pd.DataFrame:
    """Violations per rule for several models' curves on the same materials: one row per model, with the
    number of ``materials`` audited first."""
    table = pd.DataFrame({name: consistency_audit(c, temperatures, n_atoms).sum() for name, c in curves.items()}).T
    table.insert(0, "materials", len(np.atleast_1d(n_atoms)))
    return table
