"""The scaling sweep: model-size specs, the schedule rule, caching / resuming and the fixed validation set."""

from __future__ import annotations

import shutil

import numpy as np
import pandas as pd
import pytest
from conftest import need

from cloudlib import model as cloud_model
from cloudlib import sweep
from cloudlib.config import PRESETS, SweepConfig
from cloudlib.errors import CloudError
from cloudlib.sweep import pretrain_config, run_name, run_sweep
from cloudlib.tokenizer import make_tokenizer


def test_size_specs_parse_and_count():
    spec = cloud_model.preset("L2xD64")
    assert (spec.n_layer, spec.n_embd, spec.n_head, spec.ffn) == (2, 64, 2, 256)
    assert cloud_model.preset("L1xD24").n_head == 1
    m = cloud_model.build_mlm("L2xD64", make_tokenizer())
    # 2 layers x (4 d^2 + 2 d ffn) weights + biases and LayerNorms
    assert (
        2 * (4 * 64 * 64 + 2 * 64 * 256)
        < cloud_model.n_params(m)
        < 2 * (4 * 64 * 64 + 2 * 64 * 256) * 1.05 + 64 * 64 + 64 * 4
    )
    with pytest.raises(KeyError, match="L2x64"):
        cloud_model.preset("L2x64")


def test_laptop_and_paper_sweeps_are_big_enough():
    for name in ("laptop", "paper"):
        cfg = PRESETS["sweep"][name]
        sizes = (
            [cloud_model.n_params(cloud_model.build_mlm(m, make_tokenizer())) for m in cfg.models]
            if name == "laptop"
            else None
        )
        assert len(cfg.models) >= 5 and len(cfg.data_sizes) >= 4 and None in cfg.data_sizes
        if sizes:
            assert sizes == sorted(sizes) and sizes[-1] / sizes[0] >= 10**1.5


def test_schedule_rule():
    cfg = SweepConfig(models=("L1xD16",), data_sizes=(100, 1000), epochs=3, min_steps=50, batch_size=10, evals=4)
    assert pretrain_config(cfg, "L1xD16", 100, 5000).max_steps == 50  # at least min_steps
    p = pretrain_config(cfg, "L1xD16", 1000, 5000)
    assert p.max_steps == 300 and p.eval_every == 75 and p.max_train_strings == 1000
    assert pretrain_config(cfg, "L1xD16", None, 5000).max_steps == 1500  # None = the whole split


@pytest.fixture(scope="module")
def strings():
    df = pd.read_csv(need("cloud/pretrain_cloud_10k.csv"))
    return list(df["cloud"].head(500))


def test_sweep_caches_resumes_and_is_deterministic(strings, tmp_path):
    cfg = SweepConfig(
        models=("L1xD16", "L1xD32"),
        data_sizes=(100, None),
        epochs=1,
        min_steps=6,
        batch_size=16,
        evals=2,
        eval_max_strings=64,
    )
    first = run_sweep(cfg, tmp_path, strings=strings, progress=False)
    assert len(first) == 4 and not first["reused"].any()
    assert first.groupby("model")["N"].first()["L1xD32"] > first.groupby("model")["N"].first()["L1xD16"]
    assert sorted(first["D"].unique()) == [100, 400]  # 20 % of 500 held out: one fixed validation set
    assert first["n_val_strings"].nunique() == 1
    again = run_sweep(cfg, tmp_path, strings=strings, progress=False)
    assert again["reused"].all() and (again["seconds"] == 0).all()
    pd.testing.assert_series_equal(first["val_loss"], again["val_loss"])
    lost = run_name("L1xD32", 100)
    (tmp_path / "runs" / f"{lost}.json").unlink()  # a lost part of a run still in its folder: read from there
    assert run_sweep(cfg, tmp_path, strings=strings, progress=False)["reused"].all()
    assert (tmp_path / "runs" / f"{lost}.json").is_file()
    shutil.rmtree(tmp_path / lost)  # a lost run (part and folder) is retrained, alone, to the same loss
    (tmp_path / "runs" / f"{lost}.json").unlink()
    third = run_sweep(cfg, tmp_path, strings=strings, progress=False)
    assert int((~third["reused"]).sum()) == 1
    assert third.loc[third["run"] == run_name("L1xD32", 100), "val_loss"].item() == pytest.approx(
        first.loc[first["run"] == run_name("L1xD32", 100), "val_loss"].item(), rel=1e-6
    )
    longer = run_sweep(cfg.replace(min_steps=9), tmp_path, strings=strings, progress=False)  # a changed schedule:
    assert int((~longer["reused"]).sum()) == 2 and (longer["steps"] >= 9).all()  # D=100 runs start over


def test_data_size_beyond_the_split_is_an_error(strings, tmp_path):
    cfg = SweepConfig(models=("L1xD16",), data_sizes=(10_000,), min_steps=2)
    with pytest.raises(ValueError, match="10000"):
        run_sweep(cfg, tmp_path, strings=strings, progress=False)


def test_shipped_sweep_is_reused_without_weights_and_downstream_from_its_key(strings, tmp_path):
    """A sweep shipped as data (config / summary / log, no weights) is reused run for run by another output
    folder; the downstream scores are reused only for the same fine-tuning config and rows, and a run that must
    be fine-tuned without weights is a named error."""
    from cloudlib.config import preset

    cfg = SweepConfig(
        models=("L1xD16", "L1xD24"),
        data_sizes=(100, None),
        epochs=1,
        min_steps=4,
        batch_size=16,
        evals=1,
        eval_max_strings=32,
    )
    runs = run_sweep(cfg, tmp_path / "work", strings=strings, progress=False)
    df = pd.DataFrame({"scope": strings[:60], "n": [1.5 + 0.01 * i for i in range(60)]})
    train, test = df.head(40), df.tail(20)
    ft = preset("finetune", "smoke", epochs=1, encoder="tiny")
    picks = sweep.corner_runs(runs, 3)
    down, _ = sweep.downstream(picks, tmp_path / "work", ft, train, test)
    assert not down["reused"].any() and down["downstream_mae"].notna().all()
    shipped = sweep.ship(runs, tmp_path / "work", tmp_path / "data", down=down, provenance={"x": 1})
    assert not list(shipped.rglob("*.safetensors")) and (shipped / "runs.csv").is_file()
    assert sorted(p.name for p in (shipped / "downstream").iterdir()) == sorted(f"{r}.json" for r in picks["run"])
    # the work folder's own stores serve a rerun there: nothing is trained or fitted again
    rerun = run_sweep(cfg, tmp_path / "work", strings=strings, progress=False)
    down1, _ = sweep.downstream(picks, tmp_path / "work", ft, train, test)
    assert rerun["reused"].all() and down1["reused"].all()
    np.testing.assert_array_equal(down1["downstream_mae"], down["downstream_mae"])

    again = run_sweep(cfg, tmp_path / "fresh", strings=strings, progress=False, cache=shipped)
    assert again["reused"].all()
    pd.testing.assert_series_equal(again["val_loss"], runs["val_loss"])
    down2, _ = sweep.downstream(picks, tmp_path / "fresh", ft, train, test, cache=shipped)
    assert down2["reused"].all()
    np.testing.assert_array_equal(down2["downstream_mae"], down["downstream_mae"])  # JSON parts: exact
    with pytest.raises(CloudError, match="no encoder weights"):  # other settings: must fit, and cannot
        sweep.downstream(picks, tmp_path / "fresh", ft.replace(epochs=2), train, test, cache=shipped)
    with pytest.raises(CloudError, match="no encoder weights"):  # other rows
        sweep.downstream(picks, tmp_path / "fresh", ft, train.head(30), test, cache=shipped)


def test_corner_runs_cover_the_corners_then_both_axes():
    ns, ds = [10, 20, 40, 80], [100, 200, 400]
    runs = pd.DataFrame([{"run": f"{n}_{d}", "N": n, "D": d, "val_loss": 1.0} for n in ns for d in ds])
    picks = sweep.corner_runs(runs, 100)
    assert len(picks) == len(runs) and picks["run"].is_unique
    first = list(zip(picks["N"], picks["D"]))
    assert first[:3] == [(80, 400), (10, 400), (80, 100)]
    axes = {(n, 400) for n in ns} | {(80, d) for d in ds}
    k = len({(80, 400), (10, 400), (80, 100), (40, 200), (10, 100), (40, 400), (80, 200)}) + len(
        axes - {(80, 400), (10, 400), (80, 100), (40, 400), (80, 200)}
    )
    assert axes <= set(first[:k])  # corners and centre, then the rest of both axes, before the rest of the grid
    assert len(sweep.corner_runs(runs, 5)) == 5


def test_committed_laptop_sweep_serves_the_main_job_without_training(tmp_path, monkeypatch):
    """The laptop main job reads notebook 04's whole grid and its downstream fine-tunes from data/sweep/laptop:
    a preset or params change that no longer matches the committed runs would silently cost ~40 minutes of
    training inside the 45-minute job, so every run and every downstream score must come from the cache."""
    import yaml
    from conftest import need_call

    from cloudlib import config, paths
    from cloudlib.corpus import load_pretraining_corpus
    from cloudlib.matbench_data import load_paper_dielectric_scope

    cache = paths.repo_root() / "data" / "sweep" / "laptop"
    params = yaml.safe_load((paths.repo_root() / "params" / "laptop.yaml").read_text())["04_scaling"]
    assert params["sweep_cache"] == "data/sweep/laptop"
    cfg = config.preset("sweep", params["preset"])
    corpus, _ = need_call(load_pretraining_corpus, limit=cfg.corpus_limit, progress=False)

    def no_training(*a, **k):
        raise AssertionError("the committed sweep lacks a run of the laptop preset")

    monkeypatch.setattr(sweep, "_train_one", no_training)
    runs = run_sweep(cfg, tmp_path / "sweep", strings=list(corpus.index), jobs=1, progress=False, cache=cache)
    assert len(runs) == len(cfg.models) * len(cfg.data_sizes) and runs["reused"].all()
    spans = np.log10(runs[["N", "D"]].max() / runs[["N", "D"]].min())
    assert (spans >= 2.0).all(), spans  # issue 11: N and D each span two decades

    split = need_call(load_paper_dielectric_scope)
    train, test = split[split["split"] == "train_and_val"], split[split["split"] == "test"]
    ft = config.preset("finetune", params["finetune_preset"], **(params.get("downstream_overrides") or {}))
    monkeypatch.setattr("cloudlib.finetune.fit", no_training)
    picks = sweep.corner_runs(runs, int(params["downstream_points"]))
    down, rho = sweep.downstream(picks, tmp_path / "sweep", ft, train, test, cache=cache)
    assert len(down) == params["downstream_points"] and down["reused"].all() and np.isfinite(rho)
