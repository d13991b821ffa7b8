"""The MatBench runner: files matbench itself reads and scores identically, the exported fold-0 predictor, the
leave-one-group-out runner, and the analyses of notebook 03."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import need_call

from cloudlib import finetune_studies as fs
from cloudlib import matbench_data
from cloudlib.config import preset
from cloudlib.predictor import load_predictor

DIELECTRIC = "matbench_dielectric"


@pytest.fixture(scope="module")
def truth() -> pd.Series:
    return need_call(matbench_data.load_matbench, DIELECTRIC)["n"]


def test_results_file_rescored_by_matbench(tmp_path, truth):
    """matbench reads only complete runs, so all 5 folds are run, with the fast baselines."""
    from matbench.bench import MatbenchBenchmark
    from matbench.data_ops import score_array

    folds = fs.run_matbench(
        [DIELECTRIC],
        preset("finetune", "smoke"),
        models=("RF-Magpie", "Dummy"),
        folds=range(5),
        out_dir=tmp_path,
        name="smoke",
        progress=False,
    )
    assert len(folds) == 10 and set(folds["model"]) == {"RF-Magpie", "Dummy"}
    preds = pd.read_csv(tmp_path / "matbench_smoke_predictions.csv.gz")
    for model, slug in (("RF-Magpie", "rf_magpie"), ("Dummy", "dummy")):
        task = MatbenchBenchmark.from_file(str(tmp_path / f"matbench_smoke_{slug}.json")).matbench_dielectric
        for fold in range(5):
            stored = task.results[f"fold_{fold}"]
            ids = list(stored["data"])
            assert ids == matbench_data.matbench_split(DIELECTRIC, fold)[1]  # the official test ids, in order
            rescored = score_array(truth.loc[ids].to_numpy(), np.array([stored["data"][i] for i in ids]), "regression")
            assert rescored["mae"] == pytest.approx(stored["scores"]["mae"], rel=1e-12)
            ours = preds[(preds["model"] == model) & (preds["fold"] == fold)]
            assert np.abs(ours["prediction"] - ours["target"]).mean() == pytest.approx(
                stored["scores"]["mae"], rel=1e-9
            )
        reread = fs.reread_scores(tmp_path / f"matbench_smoke_{slug}.json", DIELECTRIC)
        assert reread == pytest.approx(folds[folds["model"] == model].set_index("fold")["mae"].to_dict(), rel=1e-12)
    s = fs.summarise(folds)
    rf, dummy = s.loc[(DIELECTRIC, "RF-Magpie"), "mae_mean"], s.loc[(DIELECTRIC, "Dummy"), "mae_mean"]
    assert dummy == pytest.approx(0.8088, abs=5e-4)  # the leaderboard's Dummy on matbench_dielectric
    assert rf < 0.7 * dummy  # a real, failable check that the baseline learns something


def test_cloud_fold_exported_as_the_predictor_it_recorded(tmp_path, truth):
    """One fold of CLOUD and CLOUD-scratch (1 epoch), fitted side by side in two worker processes (``jobs=2``, as
    the laptop job runs): the predictor exported by its worker reproduces the recorded predictions, knows its
    target, records the encoder relative to the repository, and the configs say what was pre-trained."""
    cfg = preset("finetune", "smoke", epochs=1, batch_size=64)
    folds = fs.run_matbench(
        [DIELECTRIC],
        cfg,
        models=("CLOUD", "CLOUD-scratch", "Dummy"),
        folds=[0],
        jobs=2,
        out_dir=tmp_path,
        name="smoke",
        progress=False,
        export={(DIELECTRIC, 0): tmp_path / "exported"},
    )
    assert list(folds["model"]) == ["CLOUD", "CLOUD-scratch", "Dummy"]  # the recorded order, not finishing order
    folds = folds[folds["model"] != "Dummy"]
    preds = pd.read_csv(tmp_path / "matbench_smoke_predictions.csv.gz")
    cloud = preds[preds["model"] == "CLOUD"]
    table = fs.task_table(DIELECTRIC)
    fitted = load_predictor(tmp_path / "exported")
    again = fitted.predict(list(table.loc[cloud["id"], "scope"]))
    np.testing.assert_allclose(again, cloud["prediction"], rtol=1e-6)
    meta = json.loads((tmp_path / "exported" / "predictor.json").read_text())
    assert meta["target"] == "n" and meta["config"]["encoder"] == "models/cloud-laptop"
    assert meta["config"]["epochs"] == 1 and meta["config"]["pretrained"] is True
    scratch = json.loads((tmp_path / "matbench_smoke_cloud_scratch.json").read_text())
    assert scratch["user_metadata"]["config"]["pretrained"] is False
    assert (folds.set_index("model")["mae"] < 0.8088).all()  # both beat the dummy even after 1 epoch
    gain = fs.pretraining_gain(folds)
    assert gain["folds"] == 1 and gain["mean"] == pytest.approx(
        folds.set_index("model").loc["CLOUD-scratch", "mae"] - folds.set_index("model").loc["CLOUD", "mae"]
    )


def test_leave_one_group_out(truth):
    """Each held-out group is tested on exactly its own rows and trained on all the others (the dummy's MAE
    is recomputed by hand)."""
    ids = truth.index
    groups = pd.Series(
        np.where(np.arange(len(ids)) % 3 == 0, "a", np.where(np.arange(len(ids)) % 3 == 1, "b", "c")), index=ids
    )
    groups.iloc[:40] = "tiny"  # too small to be held out: always trained on
    ood = fs.run_ood(groups, DIELECTRIC, preset("finetune", "smoke"), models=("Dummy",), min_test=100, progress=False)
    assert list(ood["held_out"]) == ["a", "b", "c"]
    for _, row in ood.iterrows():
        test = groups.index[groups == row["held_out"]]
        assert row["n_test"] == len(test)
        expected = np.mean(np.abs(truth.loc[test] - truth.drop(index=test).mean()))
        assert row["mae"] == pytest.approx(expected, rel=1e-12)


def test_pretraining_gain_and_reference_table():
    folds = pd.DataFrame(
        {
            "task": DIELECTRIC,
            "model": ["CLOUD", "CLOUD-scratch"] * 2,
            "fold": [0, 0, 1, 1],
            "mae": [0.3, 0.4, 0.5, 0.45],
            "seconds": 1.0,
        }
    )
    gain = fs.pretraining_gain(folds)
    assert gain["per_fold"] == pytest.approx({0: 0.1, 1: -0.05})
    assert gain["mean"] == pytest.approx(0.025) and gain["folds_improved"] == 1
    assert gain["relative"] == pytest.approx(1 - 0.4 / 0.425)
    assert fs.pretraining_gain(folds[folds["model"] == "CLOUD"]) == {}
    ref = pd.DataFrame({"model": ["paper"], "mae": [0.35], "source": ["x"]})
    bars = fs.compare_with_reference(fs.summarise(folds), ref)
    assert list(bars["model"]) == ["paper", "this project: CLOUD", "this project: CLOUD-scratch"]
    assert list(bars["kind"]) == ["reference", "ours", "ours"] and bars["err"].iloc[0] == 0


def test_cli(tmp_path, truth):
    bad = subprocess.run(
        [sys.executable, "-m", "cloudlib", "matbench", "--models", "Oracle"], capture_output=True, text=True
    )
    assert bad.returncode == 1 and "unknown models" in bad.stderr
    typo = subprocess.run(
        [sys.executable, "-m", "cloudlib", "matbench", "--set", "epoks=3"], capture_output=True, text=True
    )
    assert typo.returncode == 1 and "epoks" in typo.stderr and "ConfigError" not in typo.stderr  # a message
    ok = subprocess.run(
        [
            sys.executable,
            "-m",
            "cloudlib",
            "matbench",
            "--preset",
            "smoke",
            "--models",
            "Dummy",
            "-q",
            "--out",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
    )
    assert ok.returncode == 0, ok.stderr[-2000:]
    folds = pd.read_csv(tmp_path / "matbench_smoke_folds.csv")
    assert list(folds["fold"]) == [0, 1, 2, 3, 4] and set(folds["model"]) == {"Dummy"}
    mean = folds["mae"].mean()
    assert mean == pytest.approx(0.8088, abs=5e-4)
    line = next(x for x in ok.stdout.splitlines() if "Dummy" in x)
    assert f"{mean:.4f}" in line  # what the command prints is what it wrote


def test_offline_multitask_table_labels_resume_and_record(tmp_path, monkeypatch):
    """Two real offline tasks (one official-partial, one seeded) x four models, tiny settings; resumable."""
    from cloudlib.finetune_studies import offline_task_folds
    from cloudlib.offline_data import OFFLINE_TASKS

    monkeypatch.setenv("CLOUD_HOME", str(tmp_path / "home"))  # derived caches in a scratch tree
    cfg = preset("finetune", "smoke").replace(epochs=1)
    tasks = ["matbench_jdft2d", "jarvis_supercon_tc"]
    models = ("CLOUD", "RF-Magpie", "Dummy")  # CLOUD-scratch takes CLOUD's code path
    kw = dict(models=models, out_dir=tmp_path / "mt", name="t", progress=False, limit=150)
    table = need_call(fs.run_offline, tasks, cfg, **kw)
    assert set(table["task"]) == set(tasks) and set(table["model"]) == set(models)
    jd = table[table["task"] == "matbench_jdft2d"]
    assert sorted(jd["fold"].unique()) == [1, 2, 3, 4] and (jd["n_train"] == 381).all() and (jd["n_test"] == 127).all()
    assert (jd["folds"] == "official, partial").all()
    sc = table[table["task"] == "jarvis_supercon_tc"]
    assert (sc["folds"] == "seeded 5-fold").all() and (sc["n_train"] + sc["n_test"] == 150).all()
    assert len(table) == 4 * 3 + 5 * 3 and np.isfinite(table["mae"]).all()
    # the Dummy predicts the training mean: its MAE is reproducible from the data alone
    from cloudlib.offline_data import load_offline_task

    df = load_offline_task("jarvis_supercon_tc").iloc[:150]
    train, test = offline_task_folds("jarvis_supercon_tc", df.index)[0]
    mae = np.mean(np.abs(df.loc[test, "target"] - df.loc[train, "target"].mean()))
    dummy = sc[(sc["model"] == "Dummy") & (sc["fold"] == 0)]["mae"].iloc[0]
    assert dummy == pytest.approx(mae, rel=1e-12)
    record = json.loads((tmp_path / "mt" / "offline_t.json").read_text())
    assert record["metadata"]["labels"]["matbench_jdft2d"]["folds"] == OFFLINE_TASKS["matbench_jdft2d"].folds
    assert record["tasks"]["jarvis_supercon_tc"]["Dummy"]["fold_0"]["scores"]["mae"] == pytest.approx(dummy)
    preds = pd.read_csv(tmp_path / "mt" / "offline_t_predictions.csv.gz")
    assert len(preds) == int(table["n_test"].sum())
    # a rerun with the same settings trains nothing: every (task, model, fold) is read back
    from cloudlib import study

    for m in models:
        monkeypatch.setitem(study.FIT_FUNCTIONS, m, lambda *a, **k: pytest.fail("refitted a finished fold"))
    again = fs.run_offline(tasks, cfg, **kw)
    pd.testing.assert_frame_equal(again, table)
    assert again.attrs["missing"] == [] and record["metadata"]["complete"] is True
    # collect mode: with two parts gone, the table is written from what is there and names what is missing
    for part in ("matbench_jdft2d__cloud__fold3.json", "jarvis_supercon_tc__dummy__fold0.json"):
        (tmp_path / "mt" / "parts" / "t" / part).unlink()
    partial = fs.run_offline(tasks, cfg, fit_missing=False, **kw)
    assert partial.attrs["missing"] == ["matbench_jdft2d/CLOUD/fold3", "jarvis_supercon_tc/Dummy/fold0"]
    assert len(partial) == len(table) - 2
    pd.testing.assert_frame_equal(
        partial.reset_index(drop=True),
        table.drop(
            table[
                ((table["task"] == "matbench_jdft2d") & (table["model"] == "CLOUD") & (table["fold"] == 3))
                | ((table["task"] == "jarvis_supercon_tc") & (table["model"] == "Dummy") & (table["fold"] == 0))
            ].index
        ).reset_index(drop=True),
    )
    record = json.loads((tmp_path / "mt" / "offline_t.json").read_text())
    assert record["metadata"]["complete"] is False and len(record["metadata"]["missing"]) == 2
    assert "fold_0" not in record["tasks"]["jarvis_supercon_tc"]["Dummy"]


def test_committed_multitask_parts_count_only_for_the_encoder_they_were_made_from(tmp_path, monkeypatch):
    """The 136 committed parts were made from models/cloud-laptop as it is (their settings hold its fingerprint),
    each with the laptop preset of its day (before 2026-12-07 night with the encoder's own dropout, since then without;
    the re-make is resumable, so the committed folder may hold both): collected with the two recipes they all count,
    each part once; with an encoder re-made at the same path none does, and nothing is fitted in collect mode."""
    import shutil

    from cloudlib import model as cm
    from cloudlib import study

    root = Path(__file__).resolve().parent.parent
    shutil.copytree(root / "data" / "multitask", tmp_path / "mt")
    monkeypatch.setenv("CLOUD_HOME", str(tmp_path / "home"))
    for m in study.FIT_FUNCTIONS:
        monkeypatch.setitem(study.FIT_FUNCTIONS, m, lambda *a, **k: pytest.fail("fitted in collect mode"))
    recipes = {"today": preset("finetune", "laptop"), "before": preset("finetune", "laptop", encoder_dropout=None)}
    kw = dict(out_dir=tmp_path / "mt", fit_missing=False, progress=False)
    tables = {name: need_call(fs.run_offline, config=config, **kw) for name, config in recipes.items()}
    assert sum(map(len, tables.values())) == 136
    for table in tables.values():
        assert len(table.attrs["missing"]) == 136 - len(table)
    fits = [set(zip(t["task"], t["model"], t["fold"])) for t in tables.values()]
    assert not fits[0] & fits[1]
    real = cm.encoder_fingerprint
    monkeypatch.setattr(cm, "encoder_fingerprint", lambda e, p=True: {**real(e, p), "model.safetensors": "0" * 64})
    for config in recipes.values():
        stale = fs.run_offline(config=config, **kw)
        assert len(stale) == 0 and len(stale.attrs["missing"]) == 136
