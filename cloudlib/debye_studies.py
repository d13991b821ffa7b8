"""The CLOUD-DEBYE studies of notebook 05, as functions: the authors' split, our CHGNet curves, the audit,
corundum against experiment, and the explorer's table.

* :func:`authors_split` and :func:`theta_label_summary` -- the authors' Cv(300 K) data and the Debye
  temperatures its labels imply;
* :func:`run_authors_split` -- CLOUD-DEBYE (each Θ map) and direct regression, same encoder, recipe and
  validation rows, scored on the authors' test split beside the paper's scores (``data/reference``);
* :func:`curves_benchmark` -- across temperature on the committed CHGNet phonon curves: CLOUD-DEBYE (300 K
  only) vs a regressor trained on whole curves vs the Debye curve through each material's true Cv(300 K);
* :func:`run_ensemble` -- k CLOUD-DEBYE fits, their geometric-mean Θ and calibrated band, scored and their
  interval coverage measured on the authors' test split;
* :func:`physics_benchmark` -- one Debye temperature vs Debye + Einstein terms, both trained on the authors'
  Cv(300 K) rows plus the CHGNet training curves, by temperature band on the held-out CHGNet curves;
* :func:`audit` -- thermodynamic-consistency violations of each model's curves on the same materials;
* :func:`corundum` -- α-Al2O3 against the NIST-JANAF heat capacity;
* :func:`explorer_table` -- materials, predicted Θ and reference curves for :func:`cloudlib.explorer.write_explorer`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from . import debye, phonons, reference
from .cloud_debye import Ensemble, Fitted, fit_curves, fit_debye, fit_direct, fit_ensemble, fit_physics, theta_labels
from .config import FinetuneConfig
from .debye import dulong_petit
from .evaluation import audit_counts, mae, regression_metrics
from .finetune import predict_strings
from .registry import fetch
from .splits import seeded_split

TEST_FRACTION = 0.2  # of the usable CHGNet curves, held out for testing


def authors_split(n_train: int | None = None, seed: int = 0) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The authors' CLOUD-DEBYE data (columns cloud, cv, n_atoms): their 1,213 training and 299 test rows; with
    ``n_train`` a seeded subsample of the training rows (smoke runs)."""
    train = pd.read_csv(fetch("cloud/cloud_cv_train_and_val.csv"))
    test = pd.read_csv(fetch("cloud/cloud_cv_test.csv"))
    if n_train is not None:
        train = train.sample(n=min(n_train, len(train)), random_state=seed).sort_index()
    return train, test


def theta_label_summary(train: pd.DataFrame) -> dict:
    """The Debye temperatures that reproduce the training labels: median, 5th / 95th percentile, count, and
    the share of rows within 5 % of 3NR at 300 K. ``.theta`` / ``.fraction`` hold the per-row values."""
    theta = theta_labels(train["cv"], train["n_atoms"])
    frac = (train["cv"] / dulong_petit(train["n_atoms"])).to_numpy()
    return {
        "median": float(np.median(theta)),
        "p5": float(np.percentile(theta, 5)),
        "p95": float(np.percentile(theta, 95)),
        "n_train": int(len(train)),
        "near_dulong_petit": float((frac > 0.95).mean()),
        "theta": theta,
        "fraction": frac,
    }


@dataclass
class AuthorsSplitRun:
    """What :func:`run_authors_split` trained and measured."""

    models: dict  # parameterisation -> Fitted CLOUD-DEBYE
    direct: object  # FitResult of the direct regression
    predictions: dict  # model name -> Cv(300 K) on the test rows
    scores: pd.DataFrame  # one row per model (and the paper's), regression metrics + seconds
    paper_map_clamped: int | None  # test materials the paper's Θ map sends below 1 K (None if not trained)


def run_authors_split(
    train: pd.DataFrame,
    test: pd.DataFrame,
    cfg: FinetuneConfig,
    parameterisations=("log", "paper"),
    progress: bool = True,
) -> AuthorsSplitRun:
    """CLOUD-DEBYE for each Θ map and the direct-regression baseline on the authors' split, one config."""
    models, preds, seconds = {}, {}, {}
    for p in parameterisations:
        t0 = time.perf_counter()
        models[p] = fit_debye(train["cloud"], train["cv"], train["n_atoms"], cfg, parameterisation=p, progress=progress)
        preds[f"CLOUD-DEBYE ({p} Θ)"] = models[p].heat_capacity(list(test["cloud"]), [300.0], test["n_atoms"])[:, 0]
        seconds[f"CLOUD-DEBYE ({p} Θ)"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    direct = fit_direct(train["cloud"], train["cv"], cfg, progress=progress)
    preds["direct regression"] = predict_strings(direct, list(test["cloud"]))
    seconds["direct regression"] = time.perf_counter() - t0
    scores = pd.DataFrame({name: regression_metrics(test["cv"], p) for name, p in preds.items()}).T
    scores["seconds"] = pd.Series(seconds).round(1)
    for _, row in reference.load("cloud_debye_scores").iterrows():
        scores.loc[f"paper: {row['name']}", "mae_over_mad"] = row["mae_over_mad"]
    clamped = None
    if "paper" in models:
        clamped = int((models["paper"].theta(list(test["cloud"])) <= 1.0).sum())
    return AuthorsSplitRun(models, direct, preds, scores, clamped)


@dataclass
class CurvesRun:
    """What :func:`curves_benchmark` trained and measured on the CHGNet curves."""

    train: pd.DataFrame
    test: pd.DataFrame
    temperatures: np.ndarray
    columns: list
    curves_model: Fitted
    predictions: dict  # model name -> Cv [test materials, temperatures]
    mae_by_t: pd.DataFrame  # temperature x model
    mae_all_t: dict


def split_curves(usable: pd.DataFrame, seed: int = 0) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(train, test) of the usable CHGNet curves: :data:`TEST_FRACTION` held out by :func:`seeded_split`, rows
    in table order."""
    _, test_idx = seeded_split(len(usable), TEST_FRACTION, seed)
    is_test = np.zeros(len(usable), bool)
    is_test[test_idx] = True
    return usable[~is_test].reset_index(drop=True), usable[is_test].reset_index(drop=True)


def debye_through(cv300, n_atoms, temperatures) -> np.ndarray:
    """For each material, the Debye curve whose Θ reproduces its own Cv(300 K): the best a single Debye
    temperature can do, [materials, temperatures]."""
    own = theta_labels(cv300, n_atoms)
    n = torch.from_numpy(np.asarray(n_atoms, dtype=float))
    return debye.heat_capacity(
        torch.from_numpy(own)[:, None], torch.from_numpy(np.asarray(temperatures, float))[None], n[:, None]
    ).numpy()


def curves_benchmark(
    debye_model: Fitted, usable: pd.DataFrame, cfg: FinetuneConfig, seed: int = 0, progress: bool = True
) -> CurvesRun:
    """Across temperature: CLOUD-DEBYE (trained at 300 K only, never on these materials) vs the direct
    multi-temperature regressor trained on the training curves (``cfg``) vs the Debye curve through the true
    Cv(300 K), all scored on the same held-out curves."""
    cols, temps = phonons.cv_columns(usable)
    ptrain, ptest = split_curves(usable, seed)
    curves = fit_curves(ptrain["scope"], temps, ptrain[cols].to_numpy(), ptrain["n_atoms"], cfg, progress=progress)
    true = ptest[cols].to_numpy()
    preds = {
        "CLOUD-DEBYE (trained at 300 K only)": debye_model.heat_capacity(list(ptest["scope"]), temps, ptest["n_atoms"]),
        "direct multi-T regressor": curves.heat_capacity(list(ptest["scope"]), temps, ptest["n_atoms"]),
        "Debye curve through the true Cv(300 K)": debye_through(ptest["cv_300K"], ptest["n_atoms"], temps),
    }
    by_t = pd.DataFrame({name: mae(true, p, axis=0) for name, p in preds.items()}, index=pd.Index(temps, name="T (K)"))
    return CurvesRun(ptrain, ptest, temps, cols, curves, preds, by_t, {k: mae(true, p) for k, p in preds.items()})


def audit(models: dict[str, Fitted], strings, n_atoms, temperatures=None) -> pd.DataFrame:
    """Violations per rule of each model's curves on the same materials (the audit grid by default)."""
    from .evaluation import AUDIT_TEMPERATURES

    grid = np.array(AUDIT_TEMPERATURES if temperatures is None else temperatures)
    n = np.asarray(n_atoms, dtype=float)
    return audit_counts({name: m.heat_capacity(list(strings), grid, n) for name, m in models.items()}, grid, n)


def corundum(debye_model: Fitted, table: pd.DataFrame, temperatures=None) -> dict | None:
    """α-Al2O3 (the first Al2O3 row of the CHGNet table) against NIST-JANAF: Θ, CLOUD-DEBYE's Cv per mol of
    Al2O3 on ``temperatures``, the CHGNet curve rescaled to Al2O3, and the MAE at the experimental points.
    None when the table has no Al2O3 row."""
    al = table[table["formula"] == "Al2O3"].head(1)
    if not len(al):
        return None
    exp = reference.load("al2o3_cv_experimental")
    T = np.geomspace(5, 1200, 150) if temperatures is None else np.asarray(temperatures, float)
    cv = debye_model.heat_capacity(list(al["scope"]), T, [5.0])[0]
    cols, temps = phonons.cv_columns(table)
    return {
        "theta": float(debye_model.theta(list(al["scope"]))[0]),
        "T": T,
        "cv": cv,
        "experiment": exp,
        "chgnet_T": temps,
        "chgnet_cv": al[cols].to_numpy(float)[0] * 5.0 / float(al["n_atoms"].iloc[0]),
        "mae_vs_experiment": mae(exp["cp_J_per_K_mol_Al2O3"], np.interp(exp["temperature_K"], T, cv)),
        "points": int(len(exp)),
    }


def scope_label(scope: str, suffix: int | str = "") -> str:
    """A short human label from a SCOPE string's composition part: ``"Ta0.12 Cu0.38 S0.5"`` (+ `` · suffix``)."""
    comp = scope.split("|")[-1].split()
    pairs = [f"{el}{fr}" for el, fr in zip(comp[::2], comp[1::2])]
    return (" ".join(pairs) + (f" · {suffix}" if suffix != "" else "")).strip()


def explorer_table(
    debye_model: Fitted, test: pd.DataFrame, test_pred, usable: pd.DataFrame
) -> tuple[pd.DataFrame, dict]:
    """The explorer's materials (the CHGNet curves with their reference points, then the authors' test rows with
    their true and predicted Cv(300 K)) and reference curves, for :func:`cloudlib.explorer.write_explorer`."""
    cols, temps = phonons.cv_columns(usable)
    ex_test = pd.DataFrame(
        {
            "name": [scope_label(s, f"test {i}") for i, s in enumerate(test["cloud"])],
            "scope": test["cloud"],
            "theta": debye_model.theta(list(test["cloud"])),
            "n_atoms": test["n_atoms"],
            "cv300_true": test["cv"],
            "cv300_pred": np.asarray(test_pred),
        }
    )
    ex_phon = pd.DataFrame(
        {
            "name": [f"{f} · {i}" for f, i in zip(usable["formula"], usable["id"])],
            "scope": usable["scope"],
            "theta": debye_model.theta(list(usable["scope"])),
            "n_atoms": usable["n_atoms"],
            "cv300_true": usable["cv_300K"],
        }
    )
    ex_phon["cv300_pred"] = debye.heat_capacity(
        torch.tensor(ex_phon["theta"].to_numpy()), 300.0, torch.tensor(ex_phon["n_atoms"].to_numpy(float))
    ).numpy()
    refs = {
        n: {"T": temps.tolist(), "cv": r[cols].to_numpy(float).tolist(), "label": "CHGNet phonons"}
        for n, (_, r) in zip(ex_phon["name"], usable.iterrows())
    }
    return pd.concat([ex_phon, ex_test], ignore_index=True), refs


@dataclass
class EnsembleRun:
    """What :func:`run_ensemble` trained and measured."""

    ensemble: Ensemble
    predictions: dict  # name -> Cv(300 K) on the test rows ("ensemble", "member 0")
    scores: pd.DataFrame  # one row per name, regression metrics
    coverage: dict  # nominal level, test coverage before / after calibration, calibration-row evidence
    seconds: float
    reused: str = ""  # the saved ensemble folder that was loaded instead of training, if any


def reusable_ensemble(folder, train: pd.DataFrame, cfg: FinetuneConfig, k: int, level: float) -> str:
    """Why the saved ensemble in ``folder`` cannot stand in for training one now ("" when it can): it must
    exist, have ``k`` members whose configs are ``cfg`` with seeds ``cfg.seed + i``, the same ``level``, a
    card that records the same number of training rows, and have been trained from this encoder by content
    (:func:`~cloudlib.model.encoder_fingerprint`: a re-made encoder at the same path does not count)."""
    import json
    from pathlib import Path

    from .model import encoder_fingerprint

    folder = Path(folder)
    try:
        meta = json.loads((folder / "ensemble.json").read_text())
        members = [json.loads((folder / m / "debye.json").read_text())["config"] for m in meta["members"]]
    except (OSError, ValueError, KeyError) as exc:
        return f"no readable saved ensemble ({type(exc).__name__})"
    if len(members) != k:
        return f"{len(members)} members, not {k}"
    if meta.get("level") != level:
        return f"level {meta.get('level')}, not {level}"
    if meta.get("card", {}).get("training_rows") != len(train):
        return f"trained on {meta.get('card', {}).get('training_rows')} rows, not {len(train)}"
    for i, saved in enumerate(members):
        if saved != cfg.replace(seed=cfg.seed + i).to_dict():
            return f"member {i} was trained with another config"
    if "encoder" not in meta:
        return "ensemble.json does not record the encoder it was trained from"
    if meta["encoder"] != encoder_fingerprint(cfg.encoder, cfg.pretrained):
        return f"it was trained from another encoder than the one now at {cfg.encoder} (config or weights differ)"
    return ""


def run_ensemble(
    train: pd.DataFrame,
    test: pd.DataFrame,
    cfg: FinetuneConfig,
    k: int = 5,
    level: float = 0.9,
    progress=True,
    reuse: str | None = None,
) -> EnsembleRun:
    """An ensemble of k CLOUD-DEBYE fits (:func:`cloudlib.cloud_debye.fit_ensemble`; its band calibrated on
    training rows no member saw) scored on the authors' test split: the ensemble and its first member alone,
    and the coverage of the nominal ``level`` interval on the test rows, uncalibrated and calibrated.

    With ``reuse`` (a saved ensemble folder, e.g. the shipped ``models/cloud-debye-laptop``) the ensemble is
    loaded instead of trained when :func:`reusable_ensemble` finds it was trained with these settings on these
    rows; the scores are computed afresh either way."""
    from .cloud_debye import load_debye
    from .paths import resolve

    t0 = time.perf_counter()
    why = reusable_ensemble(resolve(reuse), train, cfg, k, level) if reuse else "no folder to reuse"
    if reuse and not why:
        ens, reused = load_debye(resolve(reuse)), str(reuse)
    else:
        if reuse:
            print(f"not reusing {reuse}: {why}; training the ensemble")
        ens, reused = (
            fit_ensemble(train["cloud"], train["cv"], train["n_atoms"], cfg, k=k, level=level, progress=progress),
            "",
        )
    strings, n = list(test["cloud"]), test["n_atoms"].to_numpy(float)
    preds = {
        f"CLOUD-DEBYE ensemble of {k}": ens.heat_capacity(strings, [300.0], n)[:, 0],
        "CLOUD-DEBYE ensemble member 0": ens.members[0].heat_capacity(strings, [300.0], n)[:, 0],
    }
    scores = pd.DataFrame({name: regression_metrics(test["cv"], p) for name, p in preds.items()}).T
    coverage = {
        "level": level,
        "members": k,
        "scale": ens.scale,
        "test_coverage_uncalibrated": ens.coverage(strings, test["cv"], n, scale=1.0),
        "test_coverage_calibrated": ens.coverage(strings, test["cv"], n),
        "test_rows": int(len(test)),
        "calibration": ens.calibration,
    }
    return EnsembleRun(ens, preds, scores, coverage, time.perf_counter() - t0, reused)


#: temperature bands (K, lower bound exclusive except the first) of the by-band tables
BANDS = ((0.0, 50.0), (50.0, 150.0), (150.0, 400.0), (400.0, np.inf))


def band_label(lo: float, hi: float) -> str:
    return f"≤ {hi:g} K" if lo == 0 else (f"> {lo:g} K" if not np.isfinite(hi) else f"{lo:g}–{hi:g} K")


def mae_by_band(predictions: dict, true: np.ndarray, temperatures) -> pd.DataFrame:
    """MAE (J/(K·mol)) of each model's [materials, temperatures] predictions over each band of :data:`BANDS`
    and over all temperatures (rows: bands; columns: models)."""
    T = np.asarray(temperatures, float)
    rows = {}
    for lo, hi in BANDS:
        m = (T > lo) & (T <= hi) if lo > 0 else (T <= hi)
        if m.any():
            rows[band_label(lo, hi)] = {k: mae(true[:, m], p[:, m], skip_nan=True) for k, p in predictions.items()}
    rows["all T"] = {k: mae(true, p, skip_nan=True) for k, p in predictions.items()}
    return pd.DataFrame(rows).T


@dataclass
class PhysicsRun:
    """What :func:`physics_benchmark` trained and measured."""

    models: dict  # "Debye" / "Debye+Einstein" -> Fitted
    predictions: dict  # model name -> Cv [CHGNet test materials, temperatures]
    by_band: pd.DataFrame  # band x model
    validation: dict  # model name -> best validation MAE (J/(K·mol)), the number the choice rests on
    seconds: dict


def combined_training_set(authors_train: pd.DataFrame, curves_train: pd.DataFrame):
    """(strings, temperatures, cv [rows, temperatures] with NaN where unknown, n_atoms): the authors' rows know
    Cv(300 K) only, each CHGNet training crystal its whole curve."""
    cols, temps = phonons.cv_columns(curves_train)
    j300 = int(np.flatnonzero(temps == 300.0)[0])
    a = np.full((len(authors_train), len(temps)), np.nan)
    a[:, j300] = authors_train["cv"].to_numpy(float)
    strings = list(authors_train["cloud"]) + list(curves_train["scope"])
    cv = np.vstack([a, curves_train[cols].to_numpy(float)])
    n = np.r_[authors_train["n_atoms"].to_numpy(float), curves_train["n_atoms"].to_numpy(float)]
    return strings, temps, cv, n


def physics_benchmark(
    authors_train: pd.DataFrame,
    usable: pd.DataFrame,
    cfg: FinetuneConfig,
    seed: int = 0,
    n_einstein: int = 2,
    baselines: dict | None = None,
    progress: bool = True,
) -> PhysicsRun:
    """One Debye temperature vs a Debye + ``n_einstein`` Einstein spectrum (:func:`cloudlib.cloud_debye.
    fit_physics`), both trained on the authors' Cv(300 K) training rows plus the CHGNet training curves (the
    split of :func:`split_curves`), scored by temperature band on the held-out CHGNet curves; ``baselines``
    (name -> [test materials, temperatures] predictions, e.g. from :func:`curves_benchmark`) join the table."""
    cols, temps = phonons.cv_columns(usable)
    ptrain, ptest = split_curves(usable, seed)
    strings, T, cv, n = combined_training_set(authors_train, ptrain)
    models, preds, val, secs = {}, dict(baselines or {}), {}, {}
    for name, head in (("Debye", "debye"), (f"Debye+{n_einstein} Einstein", "einstein")):
        t0 = time.perf_counter()
        models[name] = fit_physics(strings, T, cv, n, cfg, head=head, n_einstein=n_einstein, progress=progress)
        secs[name] = round(time.perf_counter() - t0, 1)
        hist = models[name].history
        val[name] = float(hist["val_mae"].min()) if "val_mae" in hist and len(hist) else float("nan")
        preds[f"{name} (300 K rows + curves)"] = models[name].heat_capacity(
            list(ptest["scope"]), temps, ptest["n_atoms"]
        )
    by_band = mae_by_band(preds, ptest[cols].to_numpy(float), temps)
    return PhysicsRun(models, preds, by_band, val, secs)
