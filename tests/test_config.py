"""One source of settings: every preset is a config of its step, overrides are checked, nothing is replaced
behind the user's back, and the notebooks and profiles name real presets."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import pytest

from cloudlib import config, runner
from cloudlib.config import FinetuneConfig, PretrainConfig, SweepConfig
from cloudlib.errors import ConfigError

ROOT = Path(__file__).resolve().parent.parent
STEP_CLASS = {
    "pretrain": PretrainConfig,
    "finetune": FinetuneConfig,
    "debye": FinetuneConfig,
    "curves": FinetuneConfig,
    "sweep": SweepConfig,
}


def test_every_step_has_the_three_presets_of_its_class():
    assert set(config.PRESETS) == set(STEP_CLASS)
    for step, presets in config.PRESETS.items():
        extra = {"long"} if step == "pretrain" else set()  # the shipped encoder's recipe
        assert set(presets) == {"smoke", "laptop", "paper"} | extra, step
        assert all(type(p) is STEP_CLASS[step] for p in presets.values()), step


def test_preset_returns_a_copy_with_checked_overrides():
    cfg = config.preset("finetune", "laptop", epochs=8, patience=None)
    assert (cfg.epochs, cfg.patience) == (8, None)
    assert config.PRESETS["finetune"]["laptop"].epochs == 20  # the preset itself is untouched
    assert config.PRESETS["finetune"]["laptop"].patience == 6
    with pytest.raises(ConfigError, match="epoks"):
        config.preset("finetune", "laptop", epoks=20)
    with pytest.raises(ConfigError, match="presets"):
        config.preset("finetune", "huge")
    with pytest.raises(ConfigError, match="steps"):
        config.preset("finetuning", "laptop")
    with pytest.raises(ConfigError, match="task"):
        config.preset("finetune", "laptop", task="ranking")
    with pytest.raises(ConfigError, match="val_fraction"):
        FinetuneConfig(val_fraction=1.0)


def test_round_trip_and_the_curves_presets():
    for step, presets in config.PRESETS.items():
        for p in presets.values():
            assert config.from_dict(STEP_CLASS[step], json.loads(json.dumps(p.to_dict()))) == p
    for name in ("smoke", "laptop", "paper"):  # the Cv(T) regressor: CLOUD-DEBYE's recipe, its own epochs
        debye, curves = config.PRESETS["debye"][name], config.PRESETS["curves"][name]
        assert dataclasses.replace(curves, epochs=debye.epochs) == debye and curves.epochs >= debye.epochs


def test_a_field_added_later_is_recorded_only_when_used():
    """FinetuneConfig.encoder_dropout came after results and caches were committed: left at None it is not in
    to_dict (so every committed record, part and cache key still matches), used it is; records without it load
    with None; bad values are named."""
    base = config.preset("finetune", "laptop")
    assert base.encoder_dropout == 0.0 and base.to_dict()["encoder_dropout"] == 0.0  # the laptop recipe uses it
    assert "encoder_dropout" not in config.preset("debye", "laptop").to_dict()
    used, base = base, base.replace(encoder_dropout=None)
    assert "encoder_dropout" not in base.to_dict()
    assert used.to_dict()["encoder_dropout"] == 0.0 and used.to_dict() != base.to_dict()
    assert config.from_dict(FinetuneConfig, base.to_dict()) == base
    assert config.from_dict(FinetuneConfig, json.loads(json.dumps(used.to_dict()))) == used
    for bad in (1.0, -0.1):
        with pytest.raises(ConfigError, match="encoder_dropout"):
            base.replace(encoder_dropout=bad)
    # the committed multi-task parts and the shipped ensemble recorded their configs before the field existed: the
    # parts hold the laptop recipe as it was (encoder dropout from the encoder), the ensemble the debye preset as is
    part = json.loads(next((ROOT / "data" / "multitask" / "parts" / "laptop").glob("*.json")).read_text())
    made = json.loads(part["settings"])["config"]
    assert made == base.replace(encoder_dropout=None).to_dict()
    assert config.changed_fields(made, used) == {"encoder_dropout": (None, 0.0)}
    member = json.loads((ROOT / "models" / "cloud-debye-laptop" / "member-0" / "debye.json").read_text())["config"]
    assert member == config.preset("debye", "laptop").to_dict()
    assert config.changed_fields(member, config.preset("debye", "laptop")) == {}


def test_one_encoder_per_profile_everywhere():
    """The fine-tuning steps of a profile start from one encoder: the paper profile's from what its pre-training
    exports (params/paper.yaml), the laptop profile's from the shipped encoder, which notebook 02 never
    overwrites; no other module holds a second opinion."""
    exported = runner.profile_parameters("paper", ROOT)["02_pretrain"]["export_model"]
    assert config.PRESETS["finetune"]["paper"].encoder == config.PRESETS["debye"]["paper"].encoder == exported
    assert not runner.profile_parameters("laptop", ROOT)["02_pretrain"].get("export_model")
    assert config.PRESETS["finetune"]["laptop"].encoder == config.PRESETS["debye"]["laptop"].encoder
    assert config.PRESETS["finetune"]["laptop"].encoder == "models/cloud-laptop"
    assert (ROOT / "models" / "cloud-laptop" / "training_summary.json").is_file()
    for path in (ROOT / "cloudlib").glob("*.py"):
        src = path.read_text()
        for word in ("ENCODERS", "SWEEPS", "PROFILES"):
            defined = f"\n{word} =" in src or f"\n{word}: " in src
            assert not defined or (path.name, word) == ("paths.py", "PROFILES"), (path.name, word)


def test_notebooks_pick_presets_that_exist():
    for profile in ("smoke", "laptop", "paper"):
        overrides = runner.profile_parameters(profile, ROOT)
        for nb in runner.notebooks(ROOT):
            params = {**runner.notebook_parameters(nb), **(overrides.get(nb.stem) or {})}
            for key, step in (("preset", None), ("finetune_preset", "finetune")):
                if key in params:
                    step = step or {"02": "pretrain", "03": "finetune", "04": "sweep", "05": "debye"}[nb.stem[:2]]
                    assert params[key] in config.PRESETS[step], (profile, nb.name, key)


def test_cli_prints_presets():
    r = subprocess.run(
        [sys.executable, "-m", "cloudlib", "config", "finetune", "laptop"], capture_output=True, text=True, cwd=ROOT
    )
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout) == {"finetune": {"laptop": config.PRESETS["finetune"]["laptop"].to_dict()}}
