"""CLOUD-DEBYE: the Θ maps, training on real Cv(300 K), metrics and the thermodynamic-consistency audit."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import need

from cloudlib import cloud_debye as cd
from cloudlib import debye
from cloudlib.config import preset
from cloudlib.errors import InvalidTargetError
from cloudlib.evaluation import AUDIT_TEMPERATURES, consistency_audit, regression_metrics
from cloudlib.model import CloudDebye, build_encoder


@pytest.fixture(scope="module")
def cv_data():
    train = pd.read_csv(need("cloud/cloud_cv_train_and_val.csv"))
    test = pd.read_csv(need("cloud/cloud_cv_test.csv"))
    return train.head(160), test.head(60)


def test_theta_maps():
    cfg = preset("debye", "smoke")
    enc, _ = build_encoder(cfg.encoder, cfg.pretrained, cfg.seed)
    m = CloudDebye(enc, log_theta_mean=math.log(400), log_theta_std=0.5)
    ids = torch.randint(5, 20, (4, 10))
    mask = torch.ones_like(ids)
    m.eval()
    h = m.raw(ids, mask)
    assert torch.allclose(m(ids, mask), torch.exp(math.log(400) + 0.5 * h))
    p = CloudDebye(enc, parameterisation="paper")
    p.eval()
    assert torch.allclose(p(ids, mask), (1200 * p.raw(ids, mask) + 1500).clamp_min(1.0))
    with pytest.raises(ValueError, match="parameterisation"):
        CloudDebye(enc, parameterisation="linear")


def test_theta_labels_reproduce_the_targets(cv_data):
    train, _ = cv_data
    theta = cd.theta_labels(train["cv"], train["n_atoms"])
    back = debye.heat_capacity(
        torch.from_numpy(theta), 300.0, torch.from_numpy(train["n_atoms"].to_numpy(float))
    ).numpy()
    np.testing.assert_allclose(back, train["cv"], rtol=1e-6)
    with pytest.raises(InvalidTargetError, match="cv"):
        cd.theta_labels([100.0, float("nan")], [5, 5])


def test_fit_debye_gives_consistent_curves_and_beats_a_blind_regressor(cv_data):
    train, test = cv_data
    cfg = preset("debye", "smoke", epochs=2)
    fitted = cd.fit_debye(train["cloud"], train["cv"], train["n_atoms"], cfg, progress=False)
    assert len(fitted.history) == 2 and fitted.best_epoch in (1, 2)
    theta = fitted.theta(list(test["cloud"]))
    assert np.all(theta > 0) and np.all(np.isfinite(theta))
    grid = np.array(AUDIT_TEMPERATURES)
    curves = fitted.heat_capacity(list(test["cloud"]), grid, test["n_atoms"])
    assert curves.shape == (len(test), len(grid))
    assert not consistency_audit(curves, grid, test["n_atoms"])["any"].any()
    # the Debye layer knows N: far better than predicting the training mean
    at300 = fitted.heat_capacity(list(test["cloud"]), [300.0], test["n_atoms"])[:, 0]
    assert (
        regression_metrics(test["cv"], at300)["mae"]
        < regression_metrics(test["cv"], np.full(len(test), train["cv"].mean()))["mae"]
    )
    with pytest.raises(InvalidTargetError, match="cv"):
        cd.fit_debye(train["cloud"][:3], [1.0, float("nan"), 2.0], [2, 2, 2], cfg, progress=False)


def test_training_rows_with_augmentation_keep_each_strings_row(cv_data):
    """``augment=k``: each training string and its equivalent orders, each labelled with its own row."""
    from cloudlib.scope import scope_variants

    train, _ = cv_data
    strings = list(train["cloud"][:20])
    cfg = preset("debye", "smoke", augment=3)
    tok = build_encoder(cfg.encoder, cfg.pretrained, cfg.seed)[1]
    idx = np.array([3, 7, 11])
    data, rows = cd._training_data(tok, strings, idx, cfg)
    expected = [(s, i) for i in idx for s in scope_variants(strings[i], 3, cfg.seed)]
    assert len(data.ids) == len(expected) > len(idx)
    assert rows.tolist() == [i for _, i in expected]
    plain, plain_rows = cd._training_data(tok, strings, idx, cfg.replace(augment=1))
    assert plain_rows.tolist() == idx.tolist() and len(plain.ids) == 3


def test_debye_fit_with_augmentation_and_tta(cv_data):
    """augment trains on more strings; tta's Θ is the geometric mean of the Θ of each equivalent order (one Debye
    curve per crystal still), computed here independently with the same model at tta=1; save/load keeps it."""
    import dataclasses

    from cloudlib.scope import scope_variants

    train, test = cv_data
    cfg = preset("debye", "smoke", epochs=1, augment=2, tta=3, precision="fp32")  # fp32: batches may differ
    fitted = cd.fit_debye(train["cloud"], train["cv"], train["n_atoms"], cfg, progress=False)
    plain = cd.fit_debye(train["cloud"], train["cv"], train["n_atoms"], cfg.replace(augment=1), progress=False)
    assert fitted.history["step"].iloc[-1] > plain.history["step"].iloc[-1]  # more training strings per epoch
    strings = list(test["cloud"][:6])
    one = dataclasses.replace(fitted, config=cfg.replace(tta=1))
    expected = [np.exp(np.log(one.theta(scope_variants(s, 3, cfg.seed))).mean()) for s in strings]
    assert any(len(scope_variants(s, 3, cfg.seed)) > 1 for s in strings)
    theta = fitted.theta(strings)
    np.testing.assert_allclose(theta, expected, rtol=1e-6)
    cv = fitted.heat_capacity(strings, [300.0], test["n_atoms"][:6])[:, 0]
    np.testing.assert_allclose(
        cv, debye.heat_capacity(torch.from_numpy(theta), 300.0, torch.tensor(test["n_atoms"][:6].to_numpy(float)))
    )
    assert fitted.theta([]).shape == (0,)


def test_curve_regressor_trains_and_predicts_shapes(cv_data):
    train, test = cv_data
    T = np.array([50.0, 300.0, 800.0])
    cv = np.c_[train["cv"] * 0.3, train["cv"], train["cv"] * 1.02]
    cv[0, 0] = np.nan  # a missing point is skipped, not trained on
    fitted = cd.fit_curves(train["cloud"], T, cv, train["n_atoms"], preset("curves", "smoke", epochs=1), progress=False)
    out = fitted.heat_capacity(list(test["cloud"][:5]), np.array([10.0, 100.0, 1000.0, 2000.0]), test["n_atoms"][:5])
    assert out.shape == (5, 4) and np.all(np.isfinite(out))
    with pytest.raises(TypeError):
        fitted.theta(["x"])


def test_cv_heads_train_without_validation_rows(cv_data):
    """``val_fraction=0`` (every training row trains; the last epoch is kept): no validation score is logged."""
    train, _ = cv_data
    rows = train.iloc[:64]
    cfg = preset("debye", "smoke", epochs=2, val_fraction=0.0)
    fitted = cd.fit_debye(rows["cloud"], rows["cv"], rows["n_atoms"], cfg, progress=False)
    assert "val_mae" not in fitted.history and fitted.best_epoch == 2
    assert np.isfinite(fitted.theta(list(rows["cloud"][:3]))).all()
    T = np.array([100.0, 300.0])
    curves = cd.fit_curves(
        rows["cloud"], T, np.c_[rows["cv"] * 0.5, rows["cv"]], rows["n_atoms"], cfg.replace(epochs=1), progress=False
    )
    assert "val_mae" not in curves.history


def test_audit_flags_each_kind_of_violation():
    T = np.array([1.0, 10.0, 100.0, 1000.0, 3000.0])
    n = np.array([1.0] * 6)
    L = 3 * debye.R
    good = debye.heat_capacity(300.0, torch.from_numpy(T)).numpy()
    rows = np.stack([good, good, good, good, good, good])
    rows[1, 2] = -1.0  # negative (and not monotone)
    rows[2, 3] = 1.2 * L  # above Dulong-Petit (and not monotone after it)
    rows[3, 1], rows[3, 2] = 0.5 * L, 0.4 * L  # falls with T
    rows[4, 0] = 0.05 * L  # too warm at 1 K
    rows[5, 4] = 0.8 * L  # not at 3NR when hot
    audit = consistency_audit(rows, T, n)
    assert not audit.loc[0, "any"]
    assert audit.loc[1, "negative"] and audit.loc[2, "above_dulong_petit"] and audit.loc[3, "not_monotone"]
    assert audit.loc[4, "low_T_limit"] and audit.loc[5, "high_T_limit"]
    assert audit["any"].sum() == 5
    with pytest.raises(ValueError, match="increasing"):
        consistency_audit(rows, T[::-1], n)


def test_metrics():
    y = np.array([1.0, 2.0, 3.0, 4.0])
    assert regression_metrics(y, y)["mae"] == 0 and regression_metrics(y, y)["r2"] == 1
    m = regression_metrics(y, np.full(4, 2.5))
    assert m["mad"] == pytest.approx(1.0) and m["mae_over_mad"] == pytest.approx(1.0) and m["r2"] == pytest.approx(0.0)


# --------------------------------------------------------------------------- a saved model, predict for any crystal


@pytest.fixture(scope="module")
def saved_debye(tmp_path_factory, cv_data):
    train, _ = cv_data
    cfg = preset("debye", "smoke", epochs=1)
    fitted = cd.fit_debye(train["cloud"], train["cv"], train["n_atoms"], cfg, progress=False)
    folder = tmp_path_factory.mktemp("debye") / "cloud-debye-test"
    cd.save_debye(fitted, folder, card={"note": "test"})
    return fitted, folder


def _cifs(folder):
    from pymatgen.core import Lattice, Structure

    folder.mkdir(exist_ok=True)
    nacl = Structure.from_spacegroup("Fm-3m", Lattice.cubic(5.64), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    nacl.to(filename=str(folder / "nacl.cif"))  # conventional cell, 8 atoms; primitive 2
    Structure(Lattice.cubic(3.35), ["Po"], [[0, 0, 0]]).to(filename=str(folder / "po.cif"))
    (folder / "broken.cif").write_text("data_broken\n_cell_length_a 5\n")
    Structure(Lattice.cubic(4), [{"Fe": 0.5, "Co": 0.5}], [[0, 0, 0]]).to(filename=str(folder / "alloy.cif"))
    return folder


def test_saved_debye_round_trip_and_thermodynamics(saved_debye, cv_data):
    import time

    fitted, folder = saved_debye
    t0 = time.perf_counter()
    loaded = cd.load_debye(folder)
    assert time.perf_counter() - t0 < 5
    strings = list(cv_data[1]["cloud"][:20])
    np.testing.assert_array_equal(loaded.theta(strings), fitted.theta(strings))
    T = np.array([10.0, 300.0, 1000.0])
    out = loaded.thermodynamics(strings, T, 4)
    assert out["cv"].shape == (20, 3)
    np.testing.assert_allclose(out["cv"], fitted.heat_capacity(strings, T, 4), rtol=1e-12)
    np.testing.assert_allclose(out["f"], out["u"] - T * out["s"], rtol=1e-10, atol=1e-8)
    assert (out["cv"] <= debye.dulong_petit(4) + 1e-9).all()


def test_predict_with_the_debye_model_on_good_and_bad_cifs(saved_debye, tmp_path):
    from cloudlib import cli
    from cloudlib.predictor import predict

    fitted, folder = saved_debye
    cifs = _cifs(tmp_path / "cifs")
    df = predict(cifs, model=folder, temperatures="100:300:100")
    assert list(df["id"]) == ["alloy.cif", "broken.cif", "nacl.cif", "po.cif"]
    ok = df.set_index("id").loc[["nacl.cif", "po.cif"]]
    assert ok["error"].isna().all() and list(ok["n_atoms"]) == [2, 1]
    assert {"cv_100K", "u_300K", "s_200K", "f_300K"} <= set(df.columns)
    theta = fitted.theta(list(ok["scope"]))
    np.testing.assert_allclose(ok["theta_K"], theta, rtol=1e-12)
    np.testing.assert_allclose(ok["cv_300K"], debye.heat_capacity(theta, 300.0, [2, 1]).numpy(), rtol=1e-12)
    bad = df.set_index("id").loc[["alloy.cif", "broken.cif"]]
    assert bad["theta_K"].isna().all() and bad["error"].str.startswith(("Disordered", "StructureParse")).all()
    long = predict(cifs, model=folder, temperatures=[50, 500], layout="long")
    assert len(long) == 2 * 2 + 2 and set(long.columns) >= {"T_K", "cv", "u", "s", "f", "theta_K"}
    # n_atoms override: a multiple of the primitive cell is fine, anything else is an error row
    over = predict(cifs, model=folder, n_atoms=2).set_index("id")
    assert over.loc["nacl.cif", "n_atoms"] == 2 and over.loc["po.cif", "n_atoms"] == 2
    over = predict(cifs, model=folder, n_atoms=3).set_index("id")
    assert "disagrees with the cell" in over.loc["nacl.cif", "error"] and over.loc["po.cif", "n_atoms"] == 3
    # the command line: exit 2 because two rows failed, every row written
    out = tmp_path / "out.csv"
    code = cli.main(
        ["predict", str(cifs), "--model", str(folder), "--temperatures", "10:1000:10", "-o", str(out), "-q"]
    )
    assert code == 2
    wide = pd.read_csv(out)
    assert len(wide) == 4 and "cv_1000K" in wide.columns and "cv_10K" in wide.columns


@pytest.mark.parametrize("spec", ["", "0", "-5", "nan", "1:10:0", "10:5:1", "abc"])
def test_bad_temperatures_are_typed_errors(saved_debye, tmp_path, capsys, spec):
    from cloudlib import cli

    _, folder = saved_debye
    cifs = _cifs(tmp_path / "cifs")
    code = cli.main(["predict", str(cifs), "--model", str(folder), "--temperatures", spec, "-o", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert code == 1 and "Traceback" not in err and f"temperatures {spec!r}" in err


def test_dielectric_model_refuses_temperatures(tmp_path, capsys):
    from cloudlib import cli

    cifs = _cifs(tmp_path / "cifs")
    code = cli.main(["predict", str(cifs), "--temperatures", "300", "-o", str(tmp_path / "o.csv")])
    err = capsys.readouterr().err
    assert code == 1 and "not a CLOUD-DEBYE model" in err


def test_corrupted_debye_folder_is_named(saved_debye, tmp_path):
    import shutil

    from cloudlib.errors import ModelError

    _, folder = saved_debye
    broken = tmp_path / "broken"
    shutil.copytree(folder, broken)
    data = (broken / "head.safetensors").read_bytes()
    (broken / "head.safetensors").write_bytes(data[:-10])
    with pytest.raises(ModelError, match="head.safetensors has"):
        cd.load_debye(broken)
    (broken / "debye.json").unlink()
    with pytest.raises(ModelError, match="no debye.json"):
        cd.load_debye(broken)


# --------------------------------------------------------------------------- ensembles, bands, Debye + Einstein


@pytest.fixture(scope="module")
def ensemble(tmp_path_factory, cv_data):
    train, _ = cv_data
    cfg = preset("debye", "smoke", epochs=1)
    ens = cd.fit_ensemble(train["cloud"], train["cv"], train["n_atoms"], cfg, k=3, progress=False)
    folder = tmp_path_factory.mktemp("ens") / "cloud-debye-ensemble"
    cd.save_ensemble(ens, folder, card={"note": "test"})
    assert ens.encoder is None  # a random tiny encoder: nothing read from a folder
    return ens, folder


def test_calibration_rows_are_disjoint_from_every_members_training_rows(cv_data):
    from cloudlib.finetune import train_val_indices

    train, _ = cv_data
    cfg = preset("debye", "smoke")
    keep, calib = cd.calibration_rows(len(train), cfg, 0.1)
    assert len(calib) == 16 and not set(keep) & set(calib) and len(keep) + len(calib) == len(train)
    # members see positions within `keep` only; the calibration rows are never among them
    for i in range(3):
        tr, va = train_val_indices(len(keep), cfg.replace(seed=cfg.seed + i))
        assert set(keep[tr]) | set(keep[va]) == set(keep)


def test_calibrate_scale_hits_the_level_on_its_own_rows():
    rng = np.random.default_rng(0)
    lt = rng.normal(0, 0.1, (5, 400)) + np.log(400)
    labels = np.exp(lt.mean(0) + rng.normal(0, 0.3, 400))  # errors 3x wider than the spread suggests
    scale = cd.calibrate_scale(lt, labels, 0.9)
    assert scale > 1.5
    mean, sd = lt.mean(0), lt.std(0, ddof=1)
    inside = np.abs(np.log(labels) - mean) <= cd._z(0.9) * scale * sd
    assert inside.mean() == pytest.approx(0.9, abs=0.01)


def test_members_curve_scores_each_prefix_of_members(ensemble, cv_data):
    from cloudlib.evaluation import regression_metrics

    ens, _ = ensemble
    train, _ = cv_data
    keep, calib = cd.calibration_rows(len(train), ens.config, 0.1)
    rows = train.iloc[calib]
    curve = ens.calibration["mae_over_mad_by_members"]
    assert len(curve) == 3
    strings = list(rows["cloud"])
    for j in (1, 3):
        sub = cd.Ensemble(ens.members[:j])
        cv = debye.heat_capacity(torch.from_numpy(sub.theta(strings)), 300.0, torch.tensor(rows["n_atoms"].values))
        want = regression_metrics(rows["cv"].values, cv.numpy())["mae_over_mad"]
        assert curve[j - 1] == pytest.approx(want, rel=1e-12)
    # a synthetic case: members scattered around the truth, so more members are closer to it
    rng = np.random.default_rng(1)
    n = np.full(200, 2.0)
    truth = rng.uniform(200, 800, 200)
    cv_true = debye.heat_capacity(torch.from_numpy(truth), 300.0, torch.from_numpy(n)).numpy()
    lt = np.log(truth) + rng.normal(0, 0.2, (8, 200))
    synth = cd.members_curve(lt, cv_true, n)
    assert synth[-1] < synth[0] / 2


def test_ensemble_band_round_trip_and_predict(ensemble, cv_data, tmp_path):
    from cloudlib.predictor import predict

    ens, folder = ensemble
    assert len(ens.members) == 3 and ens.scale > 0 and ens.calibration["rows"] == 16
    assert 0 <= ens.calibration["coverage_calibrated"] <= 1
    strings = list(cv_data[1]["cloud"][:15])
    theta, lo, hi = ens.theta_band(strings)
    assert (lo <= theta).all() and (theta <= hi).all()
    np.testing.assert_allclose(np.log(theta), ens.log_thetas(strings).mean(0), rtol=1e-12)
    loaded = cd.load_debye(folder)
    assert isinstance(loaded, cd.Ensemble) and loaded.scale == ens.scale
    np.testing.assert_array_equal(loaded.theta_band(strings)[2], hi)
    out = loaded.thermodynamics(strings, [50.0, 300.0], 3)
    assert (out["cv_lo"] <= out["cv"] + 1e-12).all() and (out["cv"] <= out["cv_hi"] + 1e-12).all()
    df = predict(_cifs(tmp_path / "cifs"), model=folder, temperatures=[300]).set_index("id")
    assert {"theta_lo_K", "theta_hi_K", "cv_lo_300K", "cv_hi_300K"} <= set(df.columns)
    nacl = df.loc["nacl.cif"]
    assert nacl["cv_lo_300K"] <= nacl["cv_300K"] <= nacl["cv_hi_300K"]
    # a damaged member is named
    (folder / "member-1" / "head.safetensors").write_bytes(b"x")
    from cloudlib.errors import ModelError

    with pytest.raises(ModelError, match="member-1"):
        cd.load_debye(folder)


def test_ensemble_coverage_counts_inside_rows(ensemble, cv_data):
    ens, _ = ensemble
    test = cv_data[1]
    strings, n = list(test["cloud"]), test["n_atoms"].to_numpy(float)
    wide = ens.coverage(strings, test["cv"], n, scale=1e6)
    none = ens.coverage(strings, test["cv"], n, scale=0.0)
    assert wide == 1.0 and none <= 0.05


def test_mixture_thermodynamics_identities():
    table = debye.mixture_identity_table(n_einstein=2)
    assert (table["max_rel_error"] < 1e-10).all(), table
    with pytest.raises(debye.DebyeInputError, match="weights"):
        debye.mixture_thermodynamics(300.0, [[400.0]], [[0.7, 0.7]], 100.0)
    with pytest.raises(debye.DebyeInputError, match="theta_e"):
        debye.mixture_thermodynamics(300.0, [[-4.0]], [[0.5, 0.5]], 100.0)
    # Einstein Cv is exact: x² eˣ/(eˣ-1)² at x = 2
    x = 2.0
    assert float(debye.einstein_heat_capacity(200.0, 100.0)) == pytest.approx(
        3 * debye.R * x * x * math.exp(x) / math.expm1(x) ** 2, rel=1e-14
    )
    # deep quantum regime: finite values and gradients
    T = torch.tensor([0.1, 1.0], dtype=torch.float64, requires_grad=True)
    out = debye.mixture_thermodynamics(
        torch.tensor(800.0), torch.tensor([[1500.0, 3000.0]]), torch.tensor([[0.2, 0.4, 0.4]]), T
    )
    (g,) = torch.autograd.grad(out["u"].sum(), T)
    assert torch.isfinite(g).all() and torch.isfinite(out["s"]).all()


def test_fit_physics_on_mixed_rows(cv_data):
    from cloudlib import phonons
    from cloudlib.debye_studies import combined_training_set, mae_by_band, split_curves

    train, _ = cv_data
    usable = phonons.usable_curves(phonons.load_table()[0])
    ptrain, ptest = split_curves(usable.head(60), 0)
    strings, T, cv, n = combined_training_set(train.head(60), ptrain)
    assert np.isnan(cv[:60]).sum() == 60 * (len(T) - 1) and np.isfinite(cv[60:]).all()
    cfg = preset("debye", "smoke", epochs=1)
    fit = cd.fit_physics(strings, T, cv, n, cfg, head="einstein", n_einstein=2, progress=False)
    spec = fit.spectrum(list(ptest["scope"]))
    assert spec["theta_e"].shape == (len(ptest), 2)
    np.testing.assert_allclose(spec["weights"].sum(1), 1.0, rtol=1e-12)
    out = fit.thermodynamics(list(ptest["scope"]), T, ptest["n_atoms"])
    assert (np.diff(out["cv"], axis=1) >= -1e-9).all()  # increasing in T
    np.testing.assert_allclose(out["f"], out["u"] - T * out["s"], rtol=1e-9, atol=1e-6)
    single = cd.fit_physics(strings, T, cv, n, cfg, head="debye", progress=False)
    cols, _ = phonons.cv_columns(ptest)
    table = mae_by_band(
        {"D": single.heat_capacity(list(ptest["scope"]), T, ptest["n_atoms"]), "DE": out["cv"]},
        ptest[cols].to_numpy(float),
        T,
    )
    assert list(table.index) == ["≤ 50 K", "50–150 K", "150–400 K", "> 400 K", "all T"]
    assert np.isfinite(table.to_numpy()).all()
    with pytest.raises(InvalidTargetError, match="row 0"):
        cd.fit_physics(["a"], [300.0], [[np.nan]], [1], cfg)


def test_shipped_debye_model_reproduces_its_card_on_the_authors_test_split():
    """models/cloud-debye-laptop (notebook 05's laptop ensemble, copied as saved): it loads with its manifest
    checked, its test-split scores are the ones its card records (bf16 on CPUs with bf16 units, fp32 elsewhere:
    a small tolerance), its band covers about the calibrated share of test rows, and every prediction is one
    Debye curve (Cv from the library's Debye integral at the predicted Θ)."""
    import json
    from pathlib import Path

    folder = Path(__file__).resolve().parent.parent / "models" / "cloud-debye-laptop"
    card = json.loads((folder / "ensemble.json").read_text())["card"]
    ens = cd.load_debye(folder)
    assert isinstance(ens, cd.Ensemble) and len(ens.members) == 5
    test = pd.read_csv(need("cloud/cloud_cv_test.csv"))
    strings, n_atoms = list(test["cloud"]), test["n_atoms"].to_numpy(float)
    cv = ens.heat_capacity(strings, [300.0], n_atoms)[:, 0]
    m = regression_metrics(test["cv"].to_numpy(float), cv)
    assert m["mae"] == pytest.approx(card["authors_test_split_cv300"]["mae"], rel=0.02)
    assert m["mae"] / m["mad"] < 0.08  # the paper: 0.057; a blind regressor here: 0.21
    coverage = ens.coverage(strings, test["cv"].to_numpy(float), n_atoms)
    assert coverage == pytest.approx(card["coverage"]["test_coverage_calibrated"], abs=0.03)
    theta = ens.theta(strings)
    np.testing.assert_allclose(cv, debye.heat_capacity(theta, 300.0, n_atoms).numpy().reshape(-1), rtol=1e-10)


def test_shipped_ensemble_serves_the_laptop_main_job_without_training():
    """Notebook 05's laptop profile loads models/cloud-debye-laptop instead of training 5 fits; a change of the
    preset, the seed, the rows or k makes it train again (and says why)."""
    from pathlib import Path

    import yaml

    from cloudlib import debye_studies as ds

    root = Path(__file__).resolve().parent.parent
    params = yaml.safe_load((root / "params" / "laptop.yaml").read_text())["05_debye"]
    folder = root / params["ensemble_from"]
    cfg = preset("debye", params["preset"], seed=0)
    train = pd.read_csv(need("cloud/cloud_cv_train_and_val.csv"))
    assert ds.reusable_ensemble(folder, train, cfg, params["ensemble_k"], 0.9) == ""
    assert "another config" in ds.reusable_ensemble(folder, train, cfg.replace(lr=1e-4), 5, 0.9)
    assert "another config" in ds.reusable_ensemble(folder, train, cfg.replace(seed=1), 5, 0.9)
    assert "rows" in ds.reusable_ensemble(folder, train.head(100), cfg, 5, 0.9)
    assert "members" in ds.reusable_ensemble(folder, train, cfg, 3, 0.9)
    assert "no readable" in ds.reusable_ensemble(root / "models" / "cloud-laptop", train, cfg, 5, 0.9)


def test_a_saved_ensemble_counts_only_for_the_encoder_it_was_trained_from(tmp_path, monkeypatch):
    """The shipped ensemble records its encoder by content; an encoder re-made at the same path (other weights or
    config) makes notebook 05 train again, and an ensemble.json that does not say what it was trained from is not
    reused."""
    import json
    import shutil
    from pathlib import Path

    from cloudlib import debye_studies as ds
    from cloudlib import model as cm
    from cloudlib.io import write_manifest

    root = Path(__file__).resolve().parent.parent
    folder = root / "models" / "cloud-debye-laptop"
    cfg = preset("debye", "laptop", seed=0)
    train = pd.read_csv(need("cloud/cloud_cv_train_and_val.csv"))
    assert json.loads((folder / "ensemble.json").read_text())["encoder"] == cm.encoder_fingerprint(cfg.encoder)
    assert ds.reusable_ensemble(folder, train, cfg, 5, 0.9) == ""
    assert cd.load_ensemble(folder).encoder == cm.encoder_fingerprint(cfg.encoder)  # kept through load (and re-save)
    real = cm.encoder_fingerprint
    other = lambda enc, pretrained=True: {**real(enc, pretrained), "model.safetensors": "0" * 64}  # noqa: E731
    monkeypatch.setattr(cm, "encoder_fingerprint", other)
    assert "another encoder" in ds.reusable_ensemble(folder, train, cfg, 5, 0.9)
    monkeypatch.setattr(cm, "encoder_fingerprint", real)
    copy = tmp_path / "ens"
    shutil.copytree(folder, copy)
    meta = json.loads((copy / "ensemble.json").read_text())
    del meta["encoder"]
    (copy / "ensemble.json").write_text(json.dumps(meta))
    write_manifest(copy)
    assert "does not record the encoder" in ds.reusable_ensemble(copy, train, cfg, 5, 0.9)


def test_encoder_fingerprint_is_the_content_of_config_and_weights(tmp_path):
    import shutil
    from pathlib import Path

    from cloudlib import model as cm

    shipped = Path(__file__).resolve().parent.parent / "models" / "cloud-laptop"
    fp = cm.encoder_fingerprint(str(shipped))
    assert set(fp) == {"config.json", "model.safetensors"} and all(len(v) == 64 for v in fp.values())
    copy = tmp_path / "enc"
    shutil.copytree(shipped, copy)
    assert cm.encoder_fingerprint(str(copy)) == fp  # by content, not by path
    config = (copy / "config.json").read_text()
    (copy / "config.json").write_text(config.replace('"hidden_dropout_prob": 0.1', '"hidden_dropout_prob": 0.0'))
    assert cm.encoder_fingerprint(str(copy))["config.json"] != fp["config.json"]
    data = bytearray((copy / "model.safetensors").read_bytes())
    data[-1] ^= 1
    (copy / "model.safetensors").write_bytes(bytes(data))
    assert cm.encoder_fingerprint(str(copy))["model.safetensors"] != fp["model.safetensors"]
    assert cm.encoder_fingerprint("mini") is None and cm.encoder_fingerprint(str(shipped), pretrained=False) is None
