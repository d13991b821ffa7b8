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
