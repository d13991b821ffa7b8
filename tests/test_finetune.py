"""Fine-tuning: splits and scaling, determinism, a real (weak) learning check, save/load, predict, CLI."""

from __future__ import annotations

import itertools
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import NACL, need_call
from pymatgen.core import Element, Lattice, Structure
from scipy.stats import spearmanr

from cloudlib import matbench_data
from cloudlib.cli import main
from cloudlib.config import FinetuneConfig, preset
from cloudlib.errors import BlockSizeError, InvalidTargetError, ModelError
from cloudlib.finetune import fit, predict_strings
from cloudlib.model import CloudPredictor
from cloudlib.predictor import load_predictor, predict, save_predictor

ROOT = Path(__file__).resolve().parent.parent
TINY = FinetuneConfig(
    encoder="tiny", pretrained=False, epochs=2, batch_size=32, lr=1e-3, head_lr=2e-3, val_fraction=0.2, seed=0
)
TOO_LONG = " ".join([NACL] + ["Na 0.5"] * 30)


@pytest.fixture(scope="module")
def paper() -> pd.DataFrame:
    return need_call(matbench_data.load_paper_dielectric_scope)


@pytest.fixture(scope="module")
def small(paper) -> pd.DataFrame:
    return paper[paper["split"] == "train_and_val"].iloc[:300]


@pytest.fixture(scope="module")
def tiny(small):
    return fit(small["scope"], small["n"], TINY, progress=False)


@pytest.fixture(scope="module")
def saved(tiny, tmp_path_factory) -> Path:
    return save_predictor(tiny, tmp_path_factory.mktemp("predictor") / "tiny-dielectric")


# --------------------------------------------------------------------------- fitting


def test_history_split_and_train_only_scaling(tiny, small):
    h = tiny.history
    assert list(h["epoch"]) == [1, 2] and h["step"].is_monotonic_increasing
    assert {"train_loss", "val_loss", "val_mae", "lr", "seconds"} <= set(h.columns)
    assert np.isfinite(h[["train_loss", "val_loss", "val_mae"]].to_numpy()).all()
    assert h["lr"].iloc[-1] < 1e-6  # cosine to zero
    assert tiny.best_epoch in (1, 2) and tiny.target == "n" and isinstance(tiny.model, CloudPredictor)
    tr, va = tiny.train_index, tiny.val_index
    assert len(va) == 60 and len(tr) == 240 and not set(tr) & set(va) and sorted([*tr, *va]) == list(range(300))
    y = small["n"].to_numpy()
    assert tiny.mean == pytest.approx(y[tr].mean()) and tiny.std == pytest.approx(y[tr].std())
    # validation targets play no part in training: scale them and training is unchanged
    y2 = y.copy()
    y2[va] *= 100
    other = fit(small["scope"], y2, TINY, progress=False)
    assert (other.mean, other.std) == (tiny.mean, tiny.std)
    assert other.history["train_loss"].tolist() == h["train_loss"].tolist()
    assert other.history["val_mae"].iloc[0] > 10 * h["val_mae"].iloc[0]


def test_fit_is_deterministic(tiny, small):
    again = fit(small["scope"], small["n"], TINY, progress=False)
    strings = small["scope"].iloc[:100]
    assert np.array_equal(predict_strings(tiny, strings), predict_strings(again, strings))
    assert again.history["train_loss"].tolist() == tiny.history["train_loss"].tolist()
    reseeded = fit(small["scope"], small["n"], TINY.replace(seed=1), progress=False)
    assert not np.array_equal(predict_strings(tiny, strings), predict_strings(reseeded, strings))
    assert not np.array_equal(reseeded.val_index, tiny.val_index)


def test_encoder_dropout_zero_trains_the_encoder_without_dropout(tiny, small):
    """``encoder_dropout=0`` (the fast path of issue 24): every dropout layer of the encoder is off in training, the
    head keeps its own dropout, and the fit differs from one with the encoder's dropout (same seed, same rows)."""
    from cloudlib import engine

    off = fit(small["scope"], small["n"], TINY.replace(encoder_dropout=0.0), progress=False)
    drops = [m.p for m in off.model.encoder.modules() if isinstance(m, (torch.nn.Dropout, engine.FastDropout))]
    assert drops and all(p == 0.0 for p in drops)
    head = [m.p for m in off.model.head.modules() if isinstance(m, (torch.nn.Dropout, engine.FastDropout))]
    assert head == [TINY.dropout]
    assert [m.p for m in tiny.model.encoder.modules() if isinstance(m, (torch.nn.Dropout, engine.FastDropout))] == [
        0.1
    ] * len(drops)
    assert off.history["train_loss"].tolist() != tiny.history["train_loss"].tolist()
    assert np.array_equal(off.val_index, tiny.val_index) and off.config.encoder_dropout == 0.0


def test_short_pretrained_fit_learns(paper):
    """The shipped encoder, 2 epochs on 1,700 strings: positive rank correlation on 300 test rows."""
    train = paper[paper["split"] == "train_and_val"].iloc[:1700]
    test = paper[paper["split"] == "test"].iloc[:300]
    cfg = preset("finetune", "laptop", epochs=2, batch_size=32, lr=2e-4, head_lr=1e-3)
    res = fit(train["scope"], train["n"], cfg, progress=False)
    pred = predict_strings(res, test["scope"])
    assert pred.shape == (300,) and np.isfinite(pred).all()
    assert 1.0 < np.median(pred) < 4.0  # target units (refractive index), not standardised ones
    rho = spearmanr(pred, test["n"]).statistic
    assert rho > 0.3, rho
    assert res.history["train_loss"].iloc[-1] < res.history["train_loss"].iloc[0]


def test_early_stopping_restores_the_best_epoch(small):
    frozen = fit(small["scope"], small["n"], TINY.replace(epochs=6, patience=2, lr=0.0, head_lr=0.0), progress=False)
    assert len(frozen.history) == 3 and frozen.best_epoch == 1  # no improvement after epoch 1: stop after 1 + 2
    assert frozen.history["val_mae"].nunique() == 1


def test_bad_targets_and_strings_are_named(small):
    strings, y = small["scope"].iloc[:40].tolist(), small["n"].iloc[:40].to_numpy().copy()
    y[7] = np.nan
    with pytest.raises(InvalidTargetError, match=r"row\(s\) \[7\]") as info:
        fit(strings, y, TINY, progress=False)
    assert info.value.input == "row 7"
    y[7], y[12] = 2.0, np.inf
    with pytest.raises(InvalidTargetError, match=r"\[12\]"):
        fit(strings, y, TINY, progress=False)
    labels = (small["n"].iloc[:40].to_numpy() > 2).astype(float)
    labels[3] = 0.5
    with pytest.raises(InvalidTargetError, match=r"not 0/1 at row\(s\) \[3\]"):
        fit(strings, labels, TINY.replace(task="classification"), progress=False)
    with pytest.raises(BlockSizeError, match="block_size=64"):
        fit(strings[:10] + [TOO_LONG], y[:11] * 0 + 1, TINY, progress=False)
    with pytest.raises(ModelError, match="no pre-trained weights"):
        fit(strings, small["n"].iloc[:40], TINY.replace(pretrained=True), progress=False)


def test_classification_on_a_real_binary_target(small):
    y = (small["n"] > small["n"].median()).astype(int)
    res = fit(small["scope"], y, TINY.replace(task="classification", epochs=3), progress=False)
    assert {"val_loss", "val_auc"} <= set(res.history.columns)
    assert (res.mean, res.std) == (0.0, 1.0)
    p = predict_strings(res, small["scope"])
    assert ((p > 0) & (p < 1)).all() and p.std() > 0


def test_save_load_round_trip(tiny, saved, small):
    names = {p.name for p in saved.iterdir()}
    assert {
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "head.safetensors",
        "predictor.json",
        "history.csv",
    } <= names
    meta = json.loads((saved / "predictor.json").read_text())
    assert meta["task"] == "regression" and meta["target"] == "n" and meta["mean"] == tiny.mean
    assert meta["config"]["encoder"] == "tiny"
    back = load_predictor(saved)
    strings = small["scope"].iloc[:64]
    assert np.array_equal(predict_strings(tiny, strings), predict_strings(back, strings))
    assert np.array_equal(predict_strings(tiny, strings), predict_strings(load_predictor(str(saved)), strings))
    assert back.history["train_loss"].tolist() == pytest.approx(tiny.history["train_loss"].tolist())
    save_predictor(back, saved)  # overwrite in place; no temporary folders left behind
    assert sorted(p.name for p in saved.parent.iterdir()) == [saved.name]
    with pytest.raises(BlockSizeError):
        predict_strings(back, [NACL, TOO_LONG])


# --------------------------------------------------------------------------- structures and the CLI


def _nacl() -> Structure:
    return Structure.from_spacegroup("Fm-3m", Lattice.cubic(5.64), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])


def _too_long() -> Structure:
    """30 elements on a P1 grid: SCOPE is fine but 68 tokens, more than the block size."""
    els = [Element.from_Z(z).symbol for z in range(3, 35) if z not in (10, 18)]
    grid = [(i / 4 + 0.05, j / 4 + 0.07, k / 2 + 0.03) for i, j, k in itertools.product(range(4), range(4), range(2))]
    return Structure(Lattice.from_parameters(12, 13, 9, 80, 85, 95), els, grid[:30])


@pytest.fixture(scope="module")
def cif_folders(tmp_path_factory) -> tuple[Path, Path]:
    good = tmp_path_factory.mktemp("good")
    _nacl().to(filename=str(good / "nacl.cif"))
    Structure.from_spacegroup("Fd-3m", Lattice.cubic(5.43), ["Si"], [[0, 0, 0]]).to(filename=str(good / "si.cif"))
    mixed = tmp_path_factory.mktemp("mixed")
    for f in good.iterdir():
        (mixed / f.name).write_bytes(f.read_bytes())
    (mixed / "empty.cif").write_text("")
    (mixed / "broken.cif").write_text("data_broken\n_cell_length_a 5\nthis is not a CIF loop\n")
    Structure(Lattice.cubic(4), [{"Fe": 0.5, "Co": 0.5}], [[0, 0, 0]]).to(filename=str(mixed / "alloy.cif"))
    _too_long().to(filename=str(mixed / "long.cif"))
    return good, mixed


def test_predict_keeps_every_row_and_names_errors(saved, cif_folders, tiny):
    good, mixed = cif_folders
    df = predict(mixed, model=saved)
    assert list(df.columns) == ["id", "scope", "prediction", "error"]
    df = df.set_index("id")
    assert sorted(df.index) == ["alloy.cif", "broken.cif", "empty.cif", "long.cif", "nacl.cif", "si.cif"]
    ok = df.loc[["nacl.cif", "si.cif"]]
    assert ok["error"].isna().all() and np.isfinite(ok["prediction"]).all()
    assert df.loc["nacl.cif", "scope"] == NACL
    assert df.loc["nacl.cif", "prediction"] == pytest.approx(predict_strings(tiny, [NACL])[0], rel=1e-6)
    bad = df.drop(index=["nacl.cif", "si.cif"])
    assert bad["prediction"].isna().all()
    assert df.loc["empty.cif", "error"].startswith("StructureParseError:") and "empty" in df.loc["empty.cif", "error"]
    assert df.loc["broken.cif", "error"].startswith("StructureParseError:")
    assert df.loc["alloy.cif", "error"].startswith("DisorderedStructureError:")
    assert df.loc["long.cif", "error"].startswith("BlockSizeError:") and isinstance(df.loc["long.cif", "scope"], str)
    # other input kinds: a Structure, a list of Structures, a mapping, a list of paths, a FitResult as model
    assert len(predict(_nacl(), model=tiny)) == 1
    two = predict([_nacl(), _too_long()], model=tiny)
    assert two["id"].tolist() == [0, 1] and two["error"].isna().tolist() == [True, False]
    assert predict({"x": _nacl()}, model=tiny)["id"].tolist() == ["x"]
    paths = sorted(str(p) for p in good.iterdir())
    assert predict(paths, model=tiny)["id"].tolist() == paths


def test_cli_exit_codes(saved, cif_folders, tmp_path, capsys):
    good, mixed = cif_folders
    out = tmp_path / "good.csv"
    assert main(["predict", str(good), "--model", str(saved), "-o", str(out), "-q"]) == 0
    df = pd.read_csv(out)
    assert df["id"].tolist() == ["nacl.cif", "si.cif"] and df["prediction"].notna().all()
    assert main(["predict", str(good), "--model", str(tmp_path / "nope"), "-o", str(out), "-q"]) == 1
    assert main(["predict", str(tmp_path / "missing"), "--model", str(saved), "-o", str(out), "-q"]) == 1
    with pytest.raises(SystemExit) as info:
        main(["predict", str(good)])  # no -o
    assert info.value.code == 1
    capsys.readouterr()
    # the real command line, on a folder with bad files: every row written, exit 2
    out = tmp_path / "mixed.csv"
    r = subprocess.run(
        [sys.executable, "-m", "cloudlib", "predict", str(mixed), "--model", str(saved), "-o", str(out), "-q"],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert r.returncode == 2, r.stderr
    df = pd.read_csv(out)
    assert len(df) == 6 and df["prediction"].notna().sum() == 2 and df["error"].notna().sum() == 4
    assert "2 predicted, 4 failed" in r.stderr and "long.cif: BlockSizeError" in r.stderr


def test_shipped_dielectric_predictor_works_out_of_the_box():
    """models/cloud-dielectric-laptop is what cloudlib.predict uses by default."""
    from pymatgen.core import Lattice, Structure

    import cloudlib

    nacl = Structure.from_spacegroup("Fm-3m", Lattice.cubic(5.64), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    broken = Structure(Lattice.cubic(4), [{"Fe": 0.5, "Ni": 0.5}], [[0, 0, 0]])
    df = cloudlib.predict({"NaCl": nacl, "alloy": broken})
    assert list(df["id"]) == ["NaCl", "alloy"]
    assert 1.3 < df.loc[0, "prediction"] < 2.0 and pd.isna(df.loc[0, "error"])  # DFT n of NaCl is ~1.6
    assert np.isnan(df.loc[1, "prediction"]) and df.loc[1, "error"].startswith("DisorderedStructureError")


# --------------------------------------------------------------------------- equivalent orders


def test_augmented_fit_and_test_time_averaging(small, tmp_path):
    from cloudlib.scope import expand_variants

    cfg = TINY.replace(epochs=1, augment=3, tta=4)
    aug = fit(small["scope"], small["n"], cfg, progress=False)
    plain = fit(small["scope"], small["n"], TINY.replace(epochs=1), progress=False)
    # the same rows are carved out for validation; the augmented fit takes more steps over more strings
    assert np.array_equal(aug.val_index, plain.val_index) and np.array_equal(aug.train_index, plain.train_index)
    n_train = len(expand_variants(small["scope"].iloc[aug.train_index], 3, cfg.seed)[0])
    assert 240 < n_train <= 720
    assert aug.history["step"].iloc[-1] == -(-n_train // cfg.batch_size)
    # predictions are the mean over each string's variants
    strings = list(small["scope"].iloc[:20])
    flat, groups = expand_variants(strings, 4, cfg.seed)
    single = aug.__class__(**{**aug.__dict__, "config": aug.config.replace(tta=1)})
    per_variant = predict_strings(single, flat)
    manual = np.array([per_variant[groups == i].mean() for i in range(len(strings))])
    assert np.allclose(predict_strings(aug, strings), manual, rtol=0, atol=1e-12)
    assert not np.allclose(predict_strings(aug, strings), predict_strings(single, strings))
    # validation MAE was scored the same way (tta over the validation rows)
    va = small.iloc[aug.val_index]
    assert aug.history["val_mae"].iloc[-1] == pytest.approx(
        np.mean(np.abs(predict_strings(aug, va["scope"]) - va["n"]))
    )
    # the setting travels with a saved predictor
    back = load_predictor(save_predictor(aug, tmp_path / "aug"))
    assert back.config.tta == 4 and np.array_equal(predict_strings(back, strings), predict_strings(aug, strings))
    with pytest.raises(Exception, match="tta"):
        TINY.replace(tta=0)


def test_a_checkpoint_in_the_released_layout_with_the_real_tokenizer_fine_tunes_and_predicts(
    small, cif_folders, tmp_path
):
    """Exactly the layout of the authors' release (HF ``ChangwenXu/CLOUD``, ``ckpt/``): ``BertForMaskedLM``
    with BertConfig's 30,522-row embedding and pad id 0, next to their real 564-id tokenizer files (through the
    registry). A tiny such checkpoint fine-tunes from its folder, saves, and predicts CIFs end to end on a CPU."""
    import shutil

    import torch
    from transformers import BertConfig, BertForMaskedLM

    from cloudlib import registry

    ckpt = tmp_path / "hub" / "ckpt"
    ckpt.mkdir(parents=True)
    for f in registry.AUTHORS_TOKENIZER_FILES:
        shutil.copyfile(need_call(registry.fetch, f"{registry.AUTHORS_TOKENIZER}/{f}"), ckpt / f)
    config = BertConfig(
        hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64, max_position_embeddings=64
    )
    assert config.vocab_size == 30522 and config.pad_token_id == 0
    torch.manual_seed(0)
    BertForMaskedLM(config).save_pretrained(ckpt)
    cfg = TINY.replace(encoder=str(tmp_path / "hub"), pretrained=True, epochs=1)
    fitted = fit(small["scope"], small["n"], cfg, progress=False)
    assert len(fitted.tokenizer) == 564 and fitted.model.encoder.config.vocab_size == 30522
    assert fitted.tokenizer([NACL])["input_ids"][0][0] == 0  # the authors' [CLS] is id 0
    folder = save_predictor(fitted, tmp_path / "released-dielectric")
    _, mixed = cif_folders
    df = predict(mixed, model=folder).set_index("id")
    ok = df.loc[["nacl.cif", "si.cif"]]
    assert ok["error"].isna().all() and np.isfinite(ok["prediction"]).all()
    assert df.loc["nacl.cif", "prediction"] == pytest.approx(predict_strings(fitted, [NACL])[0], rel=1e-6)
    assert df.loc["empty.cif", "error"].startswith("StructureParseError:")


def test_encoder_kind_names_what_an_encoder_is_before_any_training(tmp_path, capsys):
    from cloudlib.model import encoder_kind

    assert encoder_kind("tiny") == "preset" and encoder_kind("L2xD64") == "preset"
    assert encoder_kind("models/cloud-laptop") == "folder"
    assert encoder_kind("ChangwenXu/CLOUD") == "hub"  # not fetched here: fetched when fine-tuning starts
    (tmp_path / "empty").mkdir()
    for bad in (str(tmp_path / "empty"), str(tmp_path / "missing"), "a/b/c", "nonsense"):
        with pytest.raises(ModelError) as info:
            encoder_kind(bad)
        assert bad.rsplit("/", 1)[-1] in str(info.value)
    # the command line refuses it at once, naming it (exit 1), before loading any data
    assert main(["matbench", "--preset", "smoke", "--encoder", str(tmp_path / "missing"), "--folds", "0"]) == 1
    assert "missing" in capsys.readouterr().err
