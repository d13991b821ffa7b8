"""Baselines, features and OOD splits: Magpie features, random forest vs dummy, leave-one-cluster-out."""

from __future__ import annotations

import time

import numpy as np
import pandas as pd
import pytest
from conftest import need_call
from pymatgen.core import Composition, Lattice, Structure

from cloudlib import baselines, features, matbench_data
from cloudlib.splits import chemical_family, leave_cluster_out_splits


@pytest.fixture(scope="module")
def dielectric_meta() -> pd.DataFrame:
    return need_call(matbench_data.dielectric_metadata)


@pytest.fixture
def derived(tmp_path, monkeypatch):
    """Keep feature caches of the tests out of the real data/derived."""
    monkeypatch.setattr(features.paths, "derived_dir", lambda: tmp_path)
    return tmp_path


def test_magpie_features_shape_cache_and_failed_rows(dielectric_meta, derived):
    formulas = dielectric_meta["formula"].iloc[:200]
    bad = pd.Series({"bad-parse": "not a formula", "bad-element": "Xx2"})
    items = pd.concat([formulas.iloc[:100], bad, formulas.iloc[100:]])

    t0 = time.perf_counter()
    with pytest.warns(RuntimeWarning, match="failed for 2 row"):
        X = features.magpie_features(items, cache_key="test_dielectric_200")
    first = time.perf_counter() - t0
    assert X.shape == (202, 132)
    assert list(X.index) == list(items.index)  # order kept, nothing dropped
    assert list(X.columns) == features.magpie_labels()
    assert set(X.attrs["failed"]) == {"bad-parse", "bad-element"}
    assert "invalid formula" in X.attrs["failed"]["bad-parse"]
    all_nan = X.isna().all(axis=1)
    assert set(X.index[all_nan]) == {"bad-parse", "bad-element"}
    assert not X.loc[~all_nan].isna().any().any()  # real dielectric compositions featurize fully
    assert X.loc["mb-dielectric-0001", "MagpieData mean Number"] == pytest.approx(17.5)  # K6S6: (19+16)/2
    assert sorted(p.name for p in derived.iterdir()) == [
        "magpie-v1_test_dielectric_200.csv.gz",
        "magpie-v1_test_dielectric_200.json",
    ]

    t0 = time.perf_counter()
    with pytest.warns(RuntimeWarning, match="failed for 2 row"):
        again = features.magpie_features(items, cache_key="test_dielectric_200")
    cached = time.perf_counter() - t0
    pd.testing.assert_frame_equal(again, X, check_exact=True)
    assert again.attrs["failed"] == X.attrs["failed"]
    assert cached < max(0.5 * first, 0.5)

    # different inputs under the same key are recomputed, not served stale
    other = features.magpie_features(formulas.iloc[:5], cache_key="test_dielectric_200")
    pd.testing.assert_frame_equal(other, X.loc[formulas.index[:5]], check_exact=True)


def test_magpie_accepts_compositions_and_structures():
    nacl = Structure(Lattice.cubic(5.64), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    X = features.magpie_features([Composition("NaCl"), nacl, "NaCl", "Na2Cl2"])
    assert list(X.index) == [0, 1, 2, 3]
    for i in (1, 2, 3):
        np.testing.assert_array_equal(X.iloc[i].to_numpy(), X.iloc[0].to_numpy())
    with pytest.raises(TypeError):
        features.magpie_features("NaCl")


def test_rf_magpie_beats_dummy_and_is_deterministic(dielectric_meta, derived):
    ids = dielectric_meta.index.to_numpy()
    rng = np.random.default_rng(0)
    pick = rng.permutation(len(ids))[:700]
    train, test = ids[pick[:500]], ids[pick[500:]]
    X = features.magpie_features(dielectric_meta["formula"].loc[np.r_[train, test]])
    y = dielectric_meta["n"]

    dummy = baselines.dummy_predict(X.loc[train], y.loc[train], X.loc[test])
    assert np.allclose(dummy, y.loc[train].mean())
    rf = baselines.rf_magpie(X.loc[train], y.loc[train], X.loc[test], seed=0, n_estimators=50)
    mae_dummy = np.abs(dummy - y.loc[test]).mean()
    mae_rf = np.abs(rf - y.loc[test]).mean()
    assert mae_rf < 0.8 * mae_dummy, (mae_rf, mae_dummy)

    rf_again = baselines.rf_magpie(X.loc[train], y.loc[train], X.loc[test], seed=0, n_estimators=50)
    np.testing.assert_array_equal(rf, rf_again)
    rf_other = baselines.rf_magpie(X.loc[train], y.loc[train], X.loc[test], seed=1, n_estimators=50)
    assert not np.array_equal(rf, rf_other)


def test_rf_imputes_nan_and_skips_failed_training_rows():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(60, 4))
    y = X[:, 0] * 3
    X[5, 2] = np.nan  # one missing feature: imputed with the training median
    X[7] = np.nan  # a failed featurization in training, with a wild target it must not teach the forest
    y[7] = 1e6
    test = X[:10].copy()
    test[1] = np.nan  # a failed featurization in test is still predicted (median profile, like row 7)
    p = baselines.rf_magpie(X, y, test, n_estimators=20)
    assert p.shape == (10,) and np.isfinite(p).all()
    assert np.abs(p).max() < 50  # row 7 (y = 1e6) was left out of the fit
    kept = baselines.rf_magpie(X, y, test, n_estimators=20, drop_failed_train=False)
    assert kept[1] > 1e4  # control: trained on, the imputed row 7 drags the median-profile prediction up


def test_classification_baselines():
    X = np.r_[np.zeros((30, 2)), np.ones((10, 2))]
    y = np.r_[np.zeros(30, int), np.ones(10, int)]
    assert (baselines.dummy_predict(X, y, 5, task="classification") == 0).all()
    assert np.allclose(baselines.dummy_predict(X, y, 5, task="classification", proba=True), 0.25)
    p = baselines.rf_magpie(X, y, np.array([[0, 0], [1, 1]]), task="classification", n_estimators=10)
    assert list(p) == [0, 1]
    with pytest.raises(ValueError):
        baselines.dummy_predict(X, y, 5, task="ranking")


def test_leave_one_crystal_system_out_on_dielectric(dielectric_meta):
    systems = need_call(matbench_data.dielectric_crystal_systems)
    assert len(systems) == 4764 and systems.index.equals(dielectric_meta.index)
    splits = leave_cluster_out_splits(systems)
    names = [s[0] for s in splits]
    assert names == sorted(["cubic", "hexagonal", "monoclinic", "orthorhombic", "tetragonal", "triclinic", "trigonal"])
    all_ids = set(systems.index)
    tested = []
    for name, train, test in splits:
        assert set(systems.loc[test]) == {name}
        assert set(test) == set(systems.index[systems == name])
        assert name not in set(systems.loc[train])
        assert not set(train) & set(test)
        assert set(train) | set(test) == all_ids and len(train) + len(test) == 4764
        tested += test
    assert sorted(tested) == sorted(all_ids)  # every id is tested exactly once


def test_leave_cluster_out_min_size_and_missing_labels():
    groups = pd.Series(["a", "a", "a", "b", "b", None, "c"], index=list("pqrstuv"))
    splits = leave_cluster_out_splits(groups, min_size=2)
    assert [s[0] for s in splits] == ["a", "b"]
    name, train, test = splits[1]
    assert test == ["s", "t"] and train == ["p", "q", "r", "u", "v"]  # small/unlabelled groups stay in train
    with pytest.raises(ValueError):
        leave_cluster_out_splits(pd.Series(["a", "b"], index=["x", "x"]))


@pytest.mark.parametrize(
    "formula, family",
    [
        ("Al2O3", "oxide"),
        ("KOH", "oxide"),
        ("LiF", "fluoride"),
        ("TiOF2", "fluoride"),
        ("ZnS", "chalcogenide"),
        ("CdTe", "chalcogenide"),
        ("MoSe2", "chalcogenide"),
        ("NaCl", "halide"),
        ("CsPbI3", "halide"),
        ("KBr", "halide"),
        ("GaN", "pnictide"),
        ("GaAs", "pnictide"),
        ("InSb", "pnictide"),
        ("SiC", "other"),
        ("MgH2", "other"),
        ("Fe", "other"),
        ("Ni3Al", "other"),
    ],
)
def test_chemical_family(formula, family):
    assert chemical_family(formula) == family


def test_chemical_family_of_structure_and_dielectric_grouping(dielectric_meta):
    nacl = Structure(Lattice.cubic(5.64), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    assert chemical_family(nacl) == "halide"
    fam = dielectric_meta["formula"].map(chemical_family)
    assert set(fam) <= {"oxide", "fluoride", "chalcogenide", "halide", "pnictide", "other"}
    assert fam.value_counts().idxmax() == "oxide"
    assert len(leave_cluster_out_splits(fam)) == 6
