"""The one study runner (:mod:`cloudlib.study`): typed specs and records, one scorer, one resumable store that the
committed multi-task parts are, failures as rows, and the seeded k-fold rule that made the committed table."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import need_call

from cloudlib import finetune_studies as fs
from cloudlib import study
from cloudlib.config import preset
from cloudlib.evaluation import fit_scores, regression_metrics
from cloudlib.splits import seeded_kfold
from cloudlib.study import FitSpec, FitStore, records_table, run_fits

ROOT = Path(__file__).resolve().parents[1]
PARTS = ROOT / "data" / "multitask" / "parts" / "laptop"


def toy(n_train=40, n_test=10, seed=0):
    rng = np.random.default_rng(seed)
    idx = [f"m{i}" for i in range(n_train + n_test)]
    df = pd.DataFrame({"scope": "x", "target": rng.normal(size=len(idx))}, index=idx)
    return df.iloc[:n_train], df.iloc[n_train:]


def spec(model="Dummy", fold=0, **kw):
    train, test = toy(seed=fold)
    return FitSpec("toy", model, fold, train, test, preset("finetune", "smoke"), seed=fold, **kw)


# --------------------------------------------------------------------------- scorer


def test_fit_scores_are_the_regression_metrics_and_match_numpy():
    y, p = np.array([1.0, 2.0, 4.0]), np.array([1.5, 2.0, 1.0])
    s = fit_scores(y, p)
    assert s == regression_metrics(y, p)
    assert s["mae"] == pytest.approx((0.5 + 0 + 3) / 3) and s["max_error"] == 3.0
    assert s["rmse"] == pytest.approx(np.sqrt((0.25 + 9) / 3))
    assert fit_scores([0, 1, 1, 0], [0, 1, 0, 0], "classification") == {"accuracy": 0.75, "n": 4}
    with pytest.raises(ValueError, match="kind"):
        fit_scores(y, p, "ranking")
    with pytest.raises(ValueError, match="shape"):
        fit_scores(y, p[:2])


# --------------------------------------------------------------------------- runner


def test_dummy_record_is_the_training_mean_scored_once():
    (rec,) = run_fits([spec()], progress=False)
    s = spec()
    mean = s.train["target"].mean()
    assert rec.ok and rec.ids == list(s.test.index) and np.allclose(rec.prediction, mean)
    assert rec.scores["mae"] == pytest.approx(np.mean(np.abs(s.test["target"] - mean)), rel=1e-12)
    assert (rec.n_train, rec.n_test, rec.precision) == (40, 10, "fp64") and "CPUs" in rec.machine


def fail_dummy_fold(monkeypatch, fold, exc: Exception) -> None:
    """Make the Dummy fit of ``fold`` raise ``exc`` (every other fold fits as usual)."""
    real = study.FIT_FUNCTIONS["Dummy"]

    def flaky(s, progress):
        if s.fold == fold:
            raise exc
        return real(s, progress)

    monkeypatch.setitem(study.FIT_FUNCTIONS, "Dummy", flaky)


def test_a_failing_fit_is_a_row_and_the_others_go_on(monkeypatch):
    fail_dummy_fold(monkeypatch, 1, RuntimeError("out of memory"))
    recs = run_fits([spec(fold=f) for f in range(3)], progress=False)
    assert [r.ok for r in recs] == [True, False, True]
    assert recs[1].error == "RuntimeError: out of memory" and np.isnan(recs[1].prediction).all()
    table = records_table(recs)
    assert table["error"].tolist() == [None, "RuntimeError: out of memory", None]
    assert np.isnan(table.loc[1, "mae"]) and np.isfinite(table.loc[[0, 2], "mae"]).all()
    assert "error" not in records_table([recs[0], recs[2]]).columns  # only when something failed


def test_unknown_model_and_missing_features_are_named():
    with pytest.raises(KeyError, match="GPT"):
        run_fits([spec("GPT")], progress=False)
    (rec,) = run_fits([spec("RF-Magpie")], progress=False)
    assert not rec.ok and "needs features" in rec.error


def test_store_resumes_with_the_same_settings_only(tmp_path, monkeypatch):
    store = FitStore(tmp_path / "parts", {"config": 1})
    first = run_fits([spec(fold=f) for f in range(2)], store=store, progress=False)
    assert sorted(p.name for p in (tmp_path / "parts").iterdir()) == [
        "toy__dummy__fold0.json",
        "toy__dummy__fold1.json",
    ]
    monkeypatch.setitem(study.FIT_FUNCTIONS, "Dummy", lambda s, p: pytest.fail("refitted a stored fit"))
    again = run_fits([spec(fold=f) for f in range(2)], store=store, progress=False)
    assert all(r.reused for r in again)
    for a, b in zip(first, again):
        assert a.ids == b.ids and np.array_equal(a.prediction, b.prediction)
        assert {k: a.scores[k] for k in ("mae", "rmse", "max_error")} == b.scores
    # other settings: nothing is reused (the fit is made again), and fit_missing=False makes nothing
    other = FitStore(tmp_path / "parts", {"config": 2})
    assert run_fits([spec()], store=other, progress=False, fit_missing=False) == [None]
    with pytest.raises(pytest.fail.Exception):
        run_fits([spec()], store=other, progress=False)
    with pytest.raises(ValueError, match="not stored"):
        store.save(study.FitRecord("t", "Dummy", 0, [], np.array([]), {}, {}, 0, 0, 0.0, error="X: y"))


# --------------------------------------------------------------------------- the committed multi-task parts


def test_committed_parts_are_a_store_for_the_laptop_settings():
    """Every committed part is read by FitStore with the settings run_offline makes for the laptop recipe it was made
    with: the committed table's (encoder dropout from the encoder, before ``encoder_dropout=0`` became the laptop
    recipe), whose numbers it gives exactly, or today's (the resumable re-make of 2026-12-08, not collected yet), each
    fit once. The baselines do not depend on the recipe: their re-made parts give the table's numbers too."""
    folds = pd.read_csv(ROOT / "data" / "multitask" / "offline_laptop_folds.csv", float_precision="round_trip")
    assert len(folds) == 136
    before = FitStore(PARTS, fs.offline_settings(preset("finetune", "laptop", encoder_dropout=None)))
    today = FitStore(PARTS, fs.offline_settings(preset("finetune", "laptop")))
    empty = pd.DataFrame({"scope": [], "target": []})
    remade = 0
    for row in folds.itertuples():
        s = FitSpec(row.task, row.model, row.fold, empty, empty, preset("finetune", "laptop"))
        old, new = before.load(s), today.load(s)
        assert (old is None) != (new is None), s.key  # made with one recipe or the other
        rec = old or new
        if old is not None or row.model in ("Dummy", "RF-Magpie"):
            assert rec.scores == {"mae": row.mae, "rmse": row.rmse, "max_error": row.max_error}, s.key
        remade += new is not None
        assert (rec.n_train, rec.n_test, len(rec.ids)) == (row.n_train, row.n_test, row.n_test)
    assert remade == len(today.parts.done())
    assert len(list(PARTS.glob("*.json"))) == 136


def test_committed_seeded_folds_and_scores_are_reproduced():
    """The seeded k-fold rule (now in cloudlib.splits) gives the test ids of the committed parts, and the one scorer
    re-scores the committed predictions to the committed MAE."""
    from cloudlib.offline_data import load_offline_task

    df = need_call(load_offline_task, "jarvis_supercon_tc")
    folds = fs.offline_task_folds("jarvis_supercon_tc", df.index)
    for f in range(5):
        for model in ("cloud", "rf_magpie"):
            part = json.loads((PARTS / f"jarvis_supercon_tc__{model}__fold{f}.json").read_text())
            assert part["predictions"]["id"] == folds[f][1]
            y = df.loc[folds[f][1], "target"].to_numpy(float)
            scores = fit_scores(y, np.asarray(part["predictions"]["prediction"]))
            assert scores["mae"] == pytest.approx(part["row"]["mae"], rel=1e-12)
            assert scores["rmse"] == pytest.approx(part["row"]["rmse"], rel=1e-12)


def test_seeded_kfold_partitions():
    ids = [f"x{i}" for i in range(23)]
    folds = seeded_kfold(ids, 5, seed=3)
    tests = [t for _, t in folds]
    assert sorted(sum(tests, [])) == sorted(ids) and sorted(len(t) for t in tests) == [4, 4, 5, 5, 5]
    for train, test in folds:
        assert set(train).isdisjoint(test) and len(train) + len(test) == 23
        assert train == [i for i in ids if i in set(train)] and test == [i for i in ids if i in set(test)]
    assert seeded_kfold(ids, 5, seed=3) == folds and seeded_kfold(ids, 5, seed=4) != folds
    with pytest.raises(ValueError):
        seeded_kfold(ids[:3], 5)


def test_a_failed_matbench_fold_is_named_and_exits_2(tmp_path, monkeypatch, capsys):
    """The MatBench command: a fit that fails is a row with its error, the other folds are recorded, exit 2."""
    from cloudlib.cli import main

    fail_dummy_fold(monkeypatch, 2, MemoryError("killed"))
    args = ["matbench", "--tasks", "matbench_dielectric", "--models", "Dummy", "--preset", "smoke"]
    code = need_call(main, [*args, "--out", str(tmp_path), "-q"])
    assert code == 2
    err = capsys.readouterr().err
    assert "failed matbench_dielectric/Dummy/fold2: MemoryError: killed" in err
    folds = pd.read_csv(tmp_path / "matbench_smoke_folds.csv")
    assert folds["fold"].tolist() == [0, 1, 2, 3, 4]
    assert folds["mae"].isna().tolist() == [False, False, True, False, False]
    assert folds.loc[2, "error"] == "MemoryError: killed"
