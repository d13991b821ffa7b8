"""Hoffmann et al. (2022, "Chinchilla") approach-3 scaling-law fit, with bootstrap uncertainty.

The CLOUD paper states that the MLM pre-training loss follows

    L(N, D) = E + A / N**alpha + B / D**beta,     alpha ~ 0.45, beta ~ 0.55,

with N the number of non-embedding parameters and D the pre-training data size. This module fits
that form the way Hoffmann et al. do in their "approach 3":

* Parameterise ``A = exp(a)``, ``B = exp(b)``, ``E = exp(e)`` so that

      log L_pred = LSE(a - alpha log N,  b - beta log D,  e)

  (LSE = log-sum-exp), which keeps A, B, E positive and is numerically stable.
* Minimise  sum_i Huber_delta(log L_pred,i - log L_obs,i)  (delta = 1e-3 by default, i.e. robust to
  outlying runs; ``huber=False`` gives half the sum of squares) with L-BFGS-B and an analytic
  gradient.
* The problem is non-convex, so it is started from a grid of initialisations. The default grid is
  Chinchilla's: alpha, beta in {0, 0.5, ..., 2}, e in {-1, -0.5, ..., 1}, a, b in {0, 5, ..., 25}
  (4500 points). The objective is evaluated on the whole grid at once (cheap, vectorised) and
  L-BFGS-B is run from the ``n_starts`` best grid points; ``inits="full"`` runs it from all 4500
  (slow: ~30 s for 20 points on a busy 2-core machine), or pass your own ``(k, 5)`` array of starts in the order
  ``PARAM_ORDER = (e, a, b, alpha, beta)``. The best local optimum wins.
* Unlike Chinchilla, the optimiser is kept inside a generous box by default (:data:`BOUNDS`:
  exponents in [0, 5], log-terms within +-30 at the centre of the data); well-posed fits never
  touch it, degenerate ones stop on it instead of drifting to absurd values, and
  ``HoffmannFit.at_bounds`` names the parameters that did. ``bounded=False`` removes it.

Uncertainty comes from a nonparametric bootstrap (:func:`bootstrap`: resample the (N, D, L) points
with replacement, refit) and percentile intervals (:func:`confidence_intervals`).
:func:`compute_optimal` gives the compute-optimal allocation under ``C = 6 N D`` in closed form, and
:func:`fit_report` packs everything into a JSON-ready dict for notebooks.

Identifiability caveat
----------------------
The exponents are only **weakly identified** when N and D each span fewer than about two decades
(factor 100): over a short range, a change of alpha can be compensated almost exactly by changes of
A and E (likewise beta with B), so the objective has a long, flat valley. The point estimate can then
look precise while the bootstrap intervals for alpha, beta (and, much more so, for A and B) are wide;
report the intervals, not just the point estimates. :func:`fit_report` records the log10 span of N
and D and flags ``exponents_weakly_identified`` when either is below 2 decades.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from scipy.optimize import minimize
from scipy.special import logsumexp

from .errors import CloudError

try:  # a scikit-learn dependency, so normally present
    from threadpoolctl import threadpool_limits as _threadpool_limits
except ImportError:  # pragma: no cover
    _threadpool_limits = None

__all__ = [
    "PARAM_ORDER",
    "PARAM_NAMES",
    "BOUNDS",
    "MAXITER",
    "ScalingInputError",
    "HoffmannFit",
    "chinchilla_grid",
    "fit_hoffmann",
    "bootstrap",
    "confidence_intervals",
    "compute_optimal",
    "fit_report",
    "analyse",
    "compute_budgets",
]

#: Order of the raw optimisation vector (and of user-supplied ``inits`` columns).
PARAM_ORDER = ("e", "a", "b", "alpha", "beta")
#: Reported parameters (natural scale).
PARAM_NAMES = ("E", "A", "B", "alpha", "beta")
#: Below this many decades of N or D the exponents are flagged as weakly identified.
WEAK_SPAN_DECADES = 2.0
#: Default number of best grid points that L-BFGS-B is started from.
DEFAULT_N_STARTS = 24
#: Default number of grid starts, besides the full-data optimum, per bootstrap refit.
DEFAULT_BOOT_STARTS = 2
#: Box used when ``bounded=True`` (the default), on ``(e, a_c, b_c, alpha, beta)`` where
#: ``a_c = a - alpha * mean(log N)`` and ``b_c = b - beta * mean(log D)`` are the logs of the two
#: power-law terms at the geometric-mean N and D. Real fits sit far inside it; it only stops
#: degenerate data (flat, noisy, non-monotone, very short spans) from running off to
#: exponents of 60 and A ~ 1e245, which is also slow. Exponents are kept >= 0 (a loss that grows
#: with N or D has no power-law reading); a parameter ending on the box is listed in
#: ``HoffmannFit.at_bounds``.
BOUNDS = ((-30.0, 30.0), (-30.0, 30.0), (-30.0, 30.0), (0.0, 5.0), (0.0, 5.0))
#: L-BFGS-B iterations per start. Well-posed fits converge in < ~200; degenerate ones crawl along a
#: flat valley for thousands, so they are cut off here (``HoffmannFit.converged`` is then False).
MAXITER = 600


class ScalingInputError(CloudError, ValueError):
    """Unusable scaling-law input. ``input`` names the argument (``"N"``, ``"D"``, ``"L"``, ...);
    ``row`` is the offending row index where there is one."""

    def __init__(self, message: str, input: object = None, row: int | None = None):  # noqa: A002
        self.row = row
        super().__init__(message, input)


# --------------------------------------------------------------------------- validation


def _as_column(x: Any, name: str) -> np.ndarray:
    try:
        arr = np.asarray(x, dtype=float)
    except (TypeError, ValueError) as exc:
        raise ScalingInputError(f"not convertible to float numbers ({exc})", name) from None
    if arr.ndim == 0:
        raise ScalingInputError("expected a 1-d sequence, got a scalar", name)
    if arr.ndim != 1:
        raise ScalingInputError(f"expected a 1-d sequence, got shape {arr.shape}", name)
    return arr


def _validate(N: Any, D: Any, L: Any, min_points: int = 5) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    cols = {"N": _as_column(N, "N"), "D": _as_column(D, "D"), "L": _as_column(L, "L")}
    n = len(cols["N"])
    for name in ("D", "L"):
        if len(cols[name]) != n:
            raise ScalingInputError(f"has {len(cols[name])} rows but N has {n}", name)
    if n < min_points:
        raise ScalingInputError(f"need at least {min_points} points, got {n}", "N")
    for name, arr in cols.items():
        bad = ~np.isfinite(arr)
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise ScalingInputError(f"row {i} is not finite (got {arr[i]!r})", name, row=i)
        bad = arr <= 0
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise ScalingInputError(f"row {i} is not positive (got {arr[i]!r})", name, row=i)
    return cols["N"], cols["D"], cols["L"]


# --------------------------------------------------------------------------- objective


def _loss_terms(r: np.ndarray, delta: float, huber: bool) -> tuple[np.ndarray, np.ndarray]:
    """Per-point loss and its derivative with respect to the residual ``r``."""
    if not huber:
        return 0.5 * r * r, r
    ar = np.abs(r)
    quad = ar <= delta
    loss = np.where(quad, 0.5 * r * r, delta * (ar - 0.5 * delta))
    dloss = np.where(quad, r, delta * np.sign(r))
    return loss, dloss


def _objective_and_grad(
    theta: np.ndarray, logN: np.ndarray, logD: np.ndarray, logL: np.ndarray, delta: float, huber: bool
) -> tuple[float, np.ndarray]:
    # Hand-written 3-term log-sum-exp: this is the inner loop of every L-BFGS-B run, and
    # scipy.special.logsumexp's generality costs several times more on 20-element arrays.
    e, a, b, alpha, beta = theta
    u1 = a - alpha * logN
    u2 = b - beta * logD
    m = np.maximum(np.maximum(u1, u2), e)
    x1 = np.exp(u1 - m)
    x2 = np.exp(u2 - m)
    x3 = np.exp(e - m)
    tot = x1 + x2 + x3
    r = m + np.log(tot) - logL
    if huber:
        ar = np.abs(r)
        quad = ar <= delta
        loss = np.where(quad, 0.5 * r * r, delta * (ar - 0.5 * delta)).sum()
        psi = np.where(quad, r, delta * np.sign(r))
    else:
        loss = 0.5 * np.dot(r, r)
        psi = r
    psi = psi / tot  # d lse / d u_k = x_k / tot (softmax weights)
    g1 = psi * x1
    g2 = psi * x2
    grad = np.array([np.dot(psi, x3), g1.sum(), g2.sum(), -np.dot(g1, logN), -np.dot(g2, logD)])
    return float(loss), grad


def _objective_batch(
    thetas: np.ndarray, logN: np.ndarray, logD: np.ndarray, logL: np.ndarray, delta: float, huber: bool
) -> np.ndarray:
    """Objective for many parameter vectors ``thetas`` (k, 5) at once."""
    e, a, b, alpha, beta = (thetas[:, j : j + 1] for j in range(5))
    u = np.stack([a - alpha * logN, b - beta * logD, np.broadcast_to(e, (len(thetas), len(logN)))])
    lse = logsumexp(u, axis=0)
    loss, _ = _loss_terms(lse - logL, delta, huber)
    return loss.sum(axis=1)


def chinchilla_grid() -> np.ndarray:
    """Hoffmann et al.'s initialisation grid, shape (4500, 5), columns :data:`PARAM_ORDER`."""
    es = np.arange(-1.0, 1.0 + 1e-9, 0.5)
    abs_ = np.arange(0.0, 25.0 + 1e-9, 5.0)
    exps = np.arange(0.0, 2.0 + 1e-9, 0.5)
    g = np.meshgrid(es, abs_, abs_, exps, exps, indexing="ij")
    return np.stack([x.ravel() for x in g], axis=1)


_GRID = chinchilla_grid()


def _screen(logN, logD, logL, delta, huber, k: int) -> np.ndarray:
    """The ``k`` grid points with the lowest objective."""
    vals = _objective_batch(_GRID, logN, logD, logL, delta, huber)
    k = min(k, len(_GRID))
    idx = np.argpartition(vals, k - 1)[:k] if k < len(_GRID) else np.arange(len(_GRID))
    return _GRID[idx[np.argsort(vals[idx])]]


def _refine(
    starts: np.ndarray, logN, logD, logL, delta, huber, bounded: bool = True
) -> tuple[np.ndarray, float, bool, tuple[str, ...]]:
    """Run L-BFGS-B from each start; return (best theta, best objective, converged, at_bounds)."""
    # The objective is O(n * delta * |r|): far below 1, so L-BFGS-B's ftol (relative to
    # max(|f|, 1)) would stop it early. Optimise a rescaled objective instead.
    scale = 1.0 / (len(logN) * (delta if huber else delta * delta))
    # Centre log N and log D: with raw logs (~10) a and alpha (b and beta) are almost collinear and
    # L-BFGS-B needs ~2x the iterations. u1 = a - alpha logN = (a - alpha cN) - alpha (logN - cN).
    cN, cD = float(logN.mean()), float(logD.mean())
    zN, zD = logN - cN, logD - cD
    shift = np.array([0.0, cN, cD, 0.0, 0.0])  # theta_c = theta - shift * [., alpha, beta, ., .]
    best: tuple[np.ndarray, float, bool] | None = None
    lo, hi = np.array(BOUNDS).T

    def fun(theta_c):
        f, g = _objective_and_grad(theta_c, zN, zD, logL, delta, huber)
        return f * scale, g * scale

    for x0 in np.asarray(starts, dtype=float):
        x0c = x0 - shift * np.array([0.0, x0[3], x0[4], 0.0, 0.0])
        if bounded:
            x0c = np.clip(x0c, lo, hi)
        res = minimize(
            fun,
            x0c,
            jac=True,
            method="L-BFGS-B",
            bounds=BOUNDS if bounded else None,
            options={"maxiter": MAXITER, "ftol": 1e-13, "gtol": 1e-9},
        )
        if not np.all(np.isfinite(res.x)) or not np.isfinite(res.fun):
            continue
        if best is None or res.fun < best[1]:
            # status 1 = iteration limit. Status 2 (line-search stall) happens at the optimum when
            # the Huber kinks meet these tight tolerances, so it counts as converged.
            best = (np.asarray(res.x, dtype=float), float(res.fun), res.status != 1)
    if best is None:
        raise RuntimeError("every L-BFGS-B start diverged")
    xc, f, ok = best
    theta = xc + shift * np.array([0.0, xc[3], xc[4], 0.0, 0.0])
    at = ()
    if bounded:
        hit = (np.abs(xc - lo) < 1e-8) | (np.abs(xc - hi) < 1e-8)
        at = tuple(name for name, h in zip(PARAM_NAMES, hit) if h)
    return theta, f / scale, ok, at


def _single_threaded_blas():
    """Context limiting BLAS to one thread.

    scipy's L-BFGS-B makes BLAS calls on 5-element vectors; with a multi-threaded OpenBLAS on a busy
    machine each one can wait milliseconds for worker threads (measured: a 0.13 s fit took 12 s on a
    loaded 2-core box). One thread is always faster for problems this small.
    """
    if _threadpool_limits is None:  # pragma: no cover
        return contextlib.nullcontext()
    return _threadpool_limits(limits=1, user_api="blas")


# --------------------------------------------------------------------------- result


@dataclass
class HoffmannFit:
    """A fitted ``L(N, D) = E + A / N**alpha + B / D**beta``."""

    E: float
    A: float
    B: float
    alpha: float
    beta: float
    objective: float
    n_points: int
    residuals: np.ndarray = field(repr=False)  # log L_obs - log L_pred
    delta: float = 1e-3
    huber: bool = True
    converged: bool = True  # False when the winning L-BFGS-B run stopped at MAXITER
    log10_span_N: float = float("nan")
    log10_span_D: float = float("nan")
    raw_theta: np.ndarray | None = field(default=None, repr=False, compare=False)
    at_bounds: tuple[str, ...] = ()  # parameters that ended on the BOUNDS box (degenerate data)

    def predict(self, N: Any, D: Any) -> np.ndarray | float:
        """Predicted loss; ``N`` and ``D`` broadcast against each other."""
        N_ = np.asarray(N, dtype=float)
        D_ = np.asarray(D, dtype=float)
        out = self.E + self.A / N_**self.alpha + self.B / D_**self.beta
        return float(out) if np.ndim(out) == 0 else out

    @property
    def theta(self) -> np.ndarray:
        """Raw optimisation vector in :data:`PARAM_ORDER`."""
        if self.raw_theta is not None:
            return np.asarray(self.raw_theta, dtype=float).copy()
        return np.array([math.log(self.E), math.log(self.A), math.log(self.B), self.alpha, self.beta])

    @property
    def residual_std(self) -> float:
        """Standard deviation (ddof=0) of the log-space residuals."""
        return float(np.std(self.residuals))

    @property
    def weakly_identified(self) -> bool:
        """True when N or D spans fewer than :data:`WEAK_SPAN_DECADES` decades."""
        return bool(min(self.log10_span_N, self.log10_span_D) < WEAK_SPAN_DECADES)

    def params(self) -> dict[str, float]:
        return {p: float(getattr(self, p)) for p in PARAM_NAMES}

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (residuals as a list)."""
        return {
            **self.params(),
            "objective": float(self.objective),
            "n_points": int(self.n_points),
            "residual_std": self.residual_std,
            "residuals": [float(r) for r in self.residuals],
            "delta": float(self.delta),
            "huber": bool(self.huber),
            "converged": bool(self.converged),
            "log10_span_N": float(self.log10_span_N),
            "log10_span_D": float(self.log10_span_D),
            "at_bounds": list(self.at_bounds),
        }


# --------------------------------------------------------------------------- fitting


def _check_delta(delta: float) -> float:
    try:
        d = float(delta)
    except (TypeError, ValueError):
        raise ScalingInputError(f"must be a positive number, got {delta!r}", "delta") from None
    if not (np.isfinite(d) and d > 0):
        raise ScalingInputError(f"must be a positive number, got {delta!r}", "delta")
    return d


def _starts(inits: Any, n_starts: int | None, logN, logD, logL, delta, huber) -> np.ndarray:
    if inits is None:
        k = DEFAULT_N_STARTS if n_starts is None else int(n_starts)
        if k < 1:
            raise ScalingInputError(f"must be >= 1, got {n_starts!r}", "n_starts")
        return _screen(logN, logD, logL, delta, huber, k)
    if isinstance(inits, str):
        if inits != "full":
            raise ScalingInputError(f"expected None, 'full' or a (k, 5) array, got {inits!r}", "inits")
        return _GRID.copy()
    arr = np.asarray(inits, dtype=float)
    if arr.ndim == 1:
        arr = arr[None, :]
    if arr.ndim != 2 or arr.shape[1] != 5 or len(arr) == 0:
        raise ScalingInputError(f"expected shape (k, 5) in order {PARAM_ORDER}, got {arr.shape}", "inits")
    bad = ~np.isfinite(arr).all(axis=1)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise ScalingInputError(f"row {i} is not finite", "inits", row=i)
    return arr


def _exp(x: float) -> float:
    """exp that saturates to inf instead of raising OverflowError (degenerate fits)."""
    return math.exp(x) if x < 709.0 else float("inf")


def _make_fit(theta, obj, ok, at, N, D, logN, logD, logL, delta, huber) -> HoffmannFit:
    e, a, b, alpha, beta = (float(v) for v in theta)
    u = np.stack([a - alpha * logN, b - beta * logD, np.full_like(logN, e)])
    resid = logL - logsumexp(u, axis=0)
    return HoffmannFit(
        E=_exp(e),
        A=_exp(a),
        B=_exp(b),
        alpha=alpha,
        beta=beta,
        objective=float(obj),
        n_points=len(logN),
        residuals=resid,
        delta=delta,
        huber=huber,
        converged=ok,
        at_bounds=tuple(at),
        log10_span_N=float(np.log10(N.max() / N.min())),
        log10_span_D=float(np.log10(D.max() / D.min())),
        raw_theta=np.array([e, a, b, alpha, beta]),
    )


def fit_hoffmann(
    N: Sequence[float],
    D: Sequence[float],
    L: Sequence[float],
    delta: float = 1e-3,
    inits: Any = None,
    huber: bool = True,
    n_starts: int | None = None,
    bounded: bool = True,
) -> HoffmannFit:
    """Fit ``L = E + A/N**alpha + B/D**beta`` by Chinchilla approach 3 (see the module docstring).

    ``inits``: ``None`` (screen Chinchilla's 4500-point grid and start L-BFGS-B from the
    ``n_starts`` best, default :data:`DEFAULT_N_STARTS`), ``"full"`` (start from every grid point)
    or a ``(k, 5)`` array of starts in :data:`PARAM_ORDER` ``(e, a, b, alpha, beta)``.
    ``bounded``: keep the optimiser inside :data:`BOUNDS` (exponents in [0, 5]); ``False`` is
    Chinchilla's unconstrained fit. Raises :class:`ScalingInputError` (a ``ValueError``) naming the argument and row.
    """
    N_, D_, L_ = _validate(N, D, L)
    d = _check_delta(delta)
    logN, logD, logL = np.log(N_), np.log(D_), np.log(L_)
    starts = _starts(inits, n_starts, logN, logD, logL, d, bool(huber))
    with _single_threaded_blas():
        theta, obj, ok, at = _refine(starts, logN, logD, logL, d, bool(huber), bool(bounded))
    return _make_fit(theta, obj, ok, at, N_, D_, logN, logD, logL, d, bool(huber))


def bootstrap(
    N: Sequence[float],
    D: Sequence[float],
    L: Sequence[float],
    n_boot: int = 200,
    seed: int = 0,
    boot_starts: int = DEFAULT_BOOT_STARTS,
    **fit_kw: Any,
) -> pd.DataFrame:
    """Nonparametric bootstrap: refit on ``n_boot`` resamples of the points (with replacement).

    Each refit starts from the full-data optimum plus the ``boot_starts`` best points of the
    initialisation grid (screened once, on the full data). ``fit_kw`` (``delta``, ``huber``,
    ``inits``, ``n_starts``, ``bounded``) go to the full-data fit; ``delta``, ``huber`` and
    ``bounded`` also to the refits. Returns one row per resample with columns
    ``E, A, B, alpha, beta, objective, converged, n_unique, at_bounds`` (comma-joined names); ``df.attrs["estimate"]`` holds the
    full-data point estimate and ``df.attrs["fit"]`` its :meth:`HoffmannFit.to_dict`.
    """
    unknown = set(fit_kw) - {"delta", "huber", "inits", "n_starts", "bounded"}
    if unknown:
        raise TypeError(f"bootstrap() got unexpected keyword(s) {sorted(unknown)}")
    if int(n_boot) < 1:
        raise ScalingInputError(f"must be >= 1, got {n_boot!r}", "n_boot")
    if int(boot_starts) < 0:
        raise ScalingInputError(f"must be >= 0, got {boot_starts!r}", "boot_starts")
    N_, D_, L_ = _validate(N, D, L)
    full = fit_hoffmann(N_, D_, L_, **fit_kw)
    delta, huber, bounded = full.delta, full.huber, bool(fit_kw.get("bounded", True))
    logN, logD, logL = np.log(N_), np.log(D_), np.log(L_)
    # Starts shared by every refit: the full-data optimum plus the best full-data grid points
    # (re-screening the 4500-point grid per resample would cost more than the refits).
    starts = full.theta[None, :]
    if boot_starts > 0:
        starts = np.vstack([starts, _screen(logN, logD, logL, delta, huber, int(boot_starts))])
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(N_), size=(int(n_boot), len(N_)))
    rows = []
    with _single_threaded_blas():
        for ii in idx:
            theta, obj, ok, at = _refine(starts, logN[ii], logD[ii], logL[ii], delta, huber, bounded)
            e, a, b, alpha, beta = theta
            rows.append(
                {
                    "E": _exp(e),
                    "A": _exp(a),
                    "B": _exp(b),
                    "alpha": alpha,
                    "beta": beta,
                    "objective": obj,
                    "converged": ok,
                    "n_unique": len(np.unique(ii)),
                    "at_bounds": ",".join(at),
                }
            )
    df = pd.DataFrame(rows)
    df.attrs["estimate"] = full.params()
    df.attrs["fit"] = full.to_dict()
    return df


def confidence_intervals(boot_df: pd.DataFrame, level: float = 0.95, fit: HoffmannFit | None = None) -> pd.DataFrame:
    """Percentile bootstrap intervals, one row per parameter.

    Columns ``param, estimate, lo, hi, std, level``. ``estimate`` is ``fit``'s value if given, else
    the full-data estimate stored by :func:`bootstrap` in ``boot_df.attrs``, else the bootstrap
    median.
    """
    try:
        lv = float(level)
    except (TypeError, ValueError):
        raise ScalingInputError(f"must be in (0, 1), got {level!r}", "level") from None
    if not 0 < lv < 1:
        raise ScalingInputError(f"must be in (0, 1), got {level!r}", "level")
    if not isinstance(boot_df, pd.DataFrame) or len(boot_df) == 0:
        raise ScalingInputError("expected a non-empty DataFrame from bootstrap()", "boot_df")
    missing = [p for p in PARAM_NAMES if p not in boot_df.columns]
    if missing:
        raise ScalingInputError(f"missing column(s) {missing}", "boot_df")
    est = fit.params() if fit is not None else boot_df.attrs.get("estimate")
    q = (1 - lv) / 2
    rows = []
    for p in PARAM_NAMES:
        v = boot_df[p].to_numpy(dtype=float)
        v = v[np.isfinite(v)]
        rows.append(
            {
                "param": p,
                "estimate": float(est[p]) if est else float(np.median(v)),
                "lo": float(np.quantile(v, q)),
                "hi": float(np.quantile(v, 1 - q)),
                "std": float(np.std(v, ddof=1)) if len(v) > 1 else float("nan"),
                "level": lv,
            }
        )
    return pd.DataFrame(rows)


# --------------------------------------------------------------------------- compute-optimal


def compute_optimal(fit: HoffmannFit, C: Any, flops_per_token_param: float = 6.0) -> pd.DataFrame:
    """Compute-optimal N and D for budgets ``C`` (vectorised), with ``C = k N D``, k = 6 by default.

    Minimising ``A N^-alpha + B D^-beta`` subject to ``N D = C / k`` gives

        N_opt = G (C/k)^(beta/(alpha+beta)),  D_opt = G^-1 (C/k)^(alpha/(alpha+beta)),
        G = (alpha A / (beta B))^(1/(alpha+beta)),

    so ``k N_opt D_opt == C``. Returns a DataFrame with columns ``C, N_opt, D_opt, L_opt``.
    """
    C_ = np.atleast_1d(np.asarray(C, dtype=float)).ravel()
    bad = ~(np.isfinite(C_) & (C_ > 0))
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise ScalingInputError(f"row {i} is not a positive finite number (got {C_[i]!r})", "C", row=i)
    k = float(flops_per_token_param)
    if not (np.isfinite(k) and k > 0):
        raise ScalingInputError(f"must be positive, got {flops_per_token_param!r}", "flops_per_token_param")
    if not (fit.alpha > 0 and fit.beta > 0 and fit.A > 0 and fit.B > 0):
        raise ScalingInputError(
            f"needs alpha, beta, A, B > 0 (got alpha={fit.alpha:.4g}, beta={fit.beta:.4g}, "
            f"A={fit.A:.4g}, B={fit.B:.4g}); no finite compute-optimal allocation",
            "fit",
        )
    s = fit.alpha + fit.beta
    G = (fit.alpha * fit.A / (fit.beta * fit.B)) ** (1.0 / s)
    M = C_ / k
    N_opt = G * M ** (fit.beta / s)
    D_opt = M / N_opt  # == G^-1 M^(alpha/s), exactly consistent with the constraint
    return pd.DataFrame({"C": C_, "N_opt": N_opt, "D_opt": D_opt, "L_opt": fit.predict(N_opt, D_opt)})


# --------------------------------------------------------------------------- report


def fit_report(fit: HoffmannFit, ci_df: pd.DataFrame | None = None) -> dict[str, Any]:
    """JSON-ready summary: point estimates, CIs (if ``ci_df``), residual std, n_points, spans."""
    params: dict[str, dict[str, float | None]] = {
        p: {"estimate": v, "lo": None, "hi": None} for p, v in fit.params().items()
    }
    level = None
    if ci_df is not None:
        for _, row in ci_df.iterrows():
            if row["param"] in params:
                params[row["param"]]["lo"] = float(row["lo"])
                params[row["param"]]["hi"] = float(row["hi"])
        if "level" in ci_df.columns and len(ci_df):
            level = float(ci_df["level"].iloc[0])
    weak = fit.weakly_identified
    return {
        "model": "L = E + A/N^alpha + B/D^beta",
        "method": "Hoffmann et al. 2022 approach 3: Huber loss on log L, L-BFGS-B, grid of inits",
        "params": params,
        "ci_level": level,
        "residual_std": fit.residual_std,
        "n_points": int(fit.n_points),
        "objective": float(fit.objective),
        "delta": float(fit.delta),
        "huber": bool(fit.huber),
        "converged": bool(fit.converged),
        "at_bounds": list(fit.at_bounds),
        "log10_span": {"N": float(fit.log10_span_N), "D": float(fit.log10_span_D)},
        "exponents_weakly_identified": weak,
        "note": ("N or D spans fewer than 2 decades: alpha/beta are weakly identified; trust the CIs" if weak else ""),
    }


# --------------------------------------------------------------------------- the study of notebook 04


def analyse(
    N: Sequence[float], D: Sequence[float], L: Sequence[float], n_boot: int = 200, seed: int = 0
) -> tuple[HoffmannFit, pd.DataFrame, dict[str, Any]]:
    """Fit, bootstrap and report in one call: ``(fit, intervals, report)``; the report is :func:`fit_report`
    plus ``n_boot`` and ``fit_seconds`` (fit + bootstrap wall time)."""
    import time

    t0 = time.perf_counter()
    fit = fit_hoffmann(N, D, L)
    boot = bootstrap(N, D, L, n_boot=n_boot, seed=seed)
    ci = confidence_intervals(boot, fit=fit)
    report = fit_report(fit, ci)
    report.update({"n_boot": int(n_boot), "fit_seconds": round(time.perf_counter() - t0, 1)})
    return fit, ci, report


def compute_budgets(
    N: Sequence[float],
    D: Sequence[float],
    decades_above: float = 6.0,
    points: int = 9,
    flops_per_token_param: float = 6.0,
) -> np.ndarray:
    """Compute budgets for a compute-optimal plot: from the cheapest run of the data (``k N D``) to
    ``decades_above`` decades beyond the most expensive one, log-spaced."""
    c = flops_per_token_param * np.asarray(N, dtype=float) * np.asarray(D, dtype=float)
    return np.geomspace(c.min(), c.max() * 10.0**decades_above, points)
