"""The training engine: one loop for every model. Kill-and-resume equals uninterrupted for fine-tuning,
CLOUD-DEBYE and the Cv(T) regressor (pre-training: tests/test_pretrain.py); early stopping, the best state,
refused resumes, parameter groups and the schedule."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import need_call
from torch import nn

from cloudlib import engine
from cloudlib.config import FinetuneConfig, TrainConfig
from cloudlib.errors import ConfigError
from cloudlib.finetune import fit
from cloudlib.matbench_data import load_paper_dielectric_scope

ROOT = Path(__file__).resolve().parent.parent
WORKER = Path(__file__).with_name("resume_worker.py")


def _worker(kind, ckpt, out, *extra):
    return subprocess.run(
        [sys.executable, str(WORKER), kind, str(ckpt), str(out), *extra],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=600,
    )


@pytest.mark.parametrize("kind", ["finetune", "finetune-do0", "debye", "curves"])
def test_killed_then_resumed_equals_uninterrupted(kind, tmp_path):
    """The process dies abruptly at step 23 (mid-epoch 3; checkpoints every 5 steps, the last at 20); resumed,
    it ends with the same weights, predictions, best epoch and history as a run that was never stopped."""
    ref = _worker(kind, tmp_path / "ref", tmp_path / "ref.json")
    assert ref.returncode == 0, ref.stderr[-3000:]
    died = _worker(kind, tmp_path / "cut", tmp_path / "cut.json", "--die-at", "23")
    assert died.returncode == 17, died.stderr[-3000:]
    assert not (tmp_path / "cut.json").exists()
    saved = torch.load(tmp_path / "cut" / engine.CHECKPOINT, weights_only=False)
    assert saved["state"]["step"] == 20
    again = _worker(kind, tmp_path / "cut", tmp_path / "cut.json")
    assert again.returncode == 0, again.stderr[-3000:]
    a, b = json.loads((tmp_path / "ref.json").read_text()), json.loads((tmp_path / "cut.json").read_text())
    assert a["prediction"] == b["prediction"]  # bit for bit
    assert a["best_epoch"] == b["best_epoch"] and a["history"] == b["history"]
    assert len(a["history"]["step"]) == 4  # one evaluation per epoch


class _Line(engine.Objective):
    """y = 2x on 64 rows; validation loss on 16 more (a model and an objective that are easy to reason about)."""

    name = "line"

    def __init__(self, frozen: bool = False):
        g = torch.Generator().manual_seed(0)
        self.x, self.xv = torch.randn(64, 1, generator=g), torch.randn(16, 1, generator=g)
        self.lengths = torch.ones(64, dtype=torch.long)
        self.frozen = frozen

    def loss(self, model, idx, g):
        return nn.functional.mse_loss(model(self.x[idx]), 2 * self.x[idx]), {"rows": len(idx), "tokens": len(idx)}

    def evaluate(self, model):
        with torch.no_grad():
            return {"val_loss": float(nn.functional.mse_loss(model(self.xv), 2 * self.xv))}


def test_the_loop_learns_keeps_the_best_and_stops_early():
    torch.manual_seed(0)
    model = nn.Linear(1, 1)
    cfg = TrainConfig(epochs=30, batch_size=16, lr=0.1, warmup_ratio=0.0, grad_clip=None, bucket_batches=0)
    res = engine.train(model, _Line(), cfg, progress=False)
    assert res.steps == 30 * 4 and len(res.history) == 30 and not res.stopped_early
    assert res.history["val_loss"].iloc[-1] < 1e-3 < res.history["val_loss"].iloc[0]
    assert res.best_step == int(res.history.loc[res.history["val_loss"].idxmin(), "step"])
    assert abs(float(model.weight.detach()) - 2) < 0.05
    # a learning rate of zero never improves: stop after 1 + patience evaluations, keep the first
    torch.manual_seed(0)
    frozen = engine.train(nn.Linear(1, 1), _Line(), cfg.replace(lr=0.0, patience=3), progress=False)
    assert frozen.stopped_early and len(frozen.history) == 4 and frozen.best_epoch == 1.0


def test_restore_best_puts_back_the_best_weights():
    """With a learning rate so large that Adam overshoots, the last evaluation is not the best: the model ends
    with the best evaluation's weights when restore_best, with the final ones when not."""
    cfg = TrainConfig(epochs=6, batch_size=16, lr=4.0, warmup_ratio=0.0, grad_clip=None, bucket_batches=0)
    results = {}
    for restore in (True, False):
        torch.manual_seed(0)
        model = nn.Linear(1, 1)
        res = engine.train(model, _Line(), cfg, restore_best=restore, progress=False)
        results[restore] = (res, _Line().evaluate(model)["val_loss"])
    res, val = results[True]
    assert res.history["val_loss"].idxmin() != len(res.history) - 1  # the test can tell the two apart
    assert val == pytest.approx(res.history["val_loss"].min())
    res, val = results[False]
    assert res.best_step is None and val == pytest.approx(res.history["val_loss"].iloc[-1])


def test_resume_refuses_another_config_or_other_data(tmp_path):
    paper = need_call(load_paper_dielectric_scope).iloc[:120]
    cfg = FinetuneConfig(encoder="tiny", pretrained=False, epochs=1, batch_size=32, val_fraction=0.2, threads=1)
    fit(paper["scope"], paper["n"], cfg, progress=False, checkpoint_dir=tmp_path)
    again = fit(
        paper["scope"], paper["n"], cfg.replace(threads=2), progress=False, checkpoint_dir=tmp_path, resume=True
    )  # the thread count does not define a run
    assert len(again.history) == 1
    with pytest.raises(ConfigError, match="another configuration or other data"):
        fit(paper["scope"], paper["n"], cfg.replace(lr=0.5), progress=False, checkpoint_dir=tmp_path, resume=True)
    with pytest.raises(ConfigError, match="another configuration or other data"):
        fit(paper["scope"], paper["n"] * 2, cfg, progress=False, checkpoint_dir=tmp_path, resume=True)


def test_parameter_groups_and_schedule():
    model = nn.Sequential(nn.Linear(3, 4), nn.LayerNorm(4), nn.Linear(4, 1))
    groups = engine.param_groups([(model[:2], 1e-4), (model[2:], 1e-3)], weight_decay=0.01)
    assert [len(g["params"]) for g in groups] == [1, 3, 1, 1]  # weights | biases and norm; weight | bias
    assert [g["weight_decay"] for g in groups] == [0.01, 0.0, 0.01, 0.0]
    assert [g["lr"] for g in groups] == [1e-4, 1e-4, 1e-3, 1e-3]
    f = engine.lr_lambda(10, 100)
    assert f(0) == pytest.approx(0.1) and f(9) == pytest.approx(1.0)
    assert f(55) == pytest.approx(0.5, abs=1e-9) and f(100) == pytest.approx(0.0, abs=1e-12)
    assert engine.total_steps(TrainConfig(epochs=2.5), 8) == 20 and engine.total_steps(TrainConfig(max_steps=7), 8) == 7


def test_seeds_are_functions_of_the_step():
    assert engine.step_seed(0, 5) != engine.step_seed(0, 6) != engine.step_seed(1, 6)
    assert engine.step_seed(3, 5, stream=1) == engine.step_seed(3, 5) + 1
    assert engine.mask_seed(0, 5) != engine.step_seed(0, 5)


def test_batched_outputs_keep_row_order():
    data = engine.Encoded(torch.arange(40).reshape(10, 4), torch.tensor([4, 1, 3, 2, 4, 1, 2, 3, 4, 1]))
    out = engine.batched_outputs(lambda ids, mask: ids[:, 0].double() + mask.sum(1), data, 3, torch.device("cpu"))
    np.testing.assert_array_equal(out.numpy(), data.ids[:, 0].numpy() + data.lengths.numpy())


# --------------------------------------------------------------------------- precision


def test_precision_resolves_to_bf16_only_where_the_hardware_has_it(monkeypatch):
    cpu = torch.device("cpu")
    assert engine.resolve_precision("fp32", cpu) == "fp32" and engine.resolve_precision("bf16", cpu) == "bf16"
    monkeypatch.setattr(engine, "CPU_AUTO_BF16", True)
    assert engine.resolve_precision("auto", cpu) == ("bf16" if engine.cpu_has_bf16() else "fp32")
    monkeypatch.setattr(engine, "cpu_has_bf16", lambda: False)
    assert engine.resolve_precision("auto", cpu) == "fp32"
    monkeypatch.setattr(engine, "cpu_has_bf16", lambda: True)
    monkeypatch.setattr(engine, "CPU_AUTO_BF16", False)
    assert engine.resolve_precision("auto", cpu) == "fp32"
    with pytest.raises(ConfigError, match="precision"):
        engine.resolve_precision("fp16", cpu)
    with pytest.raises(ConfigError, match="precision"):
        TrainConfig(precision="half")
    a, b = torch.randn(8, 8), torch.randn(8, 8)
    with engine.autocast(cpu, "bf16"):
        assert (a @ b).dtype == torch.bfloat16
    with engine.autocast(cpu, "fp32"):
        assert (a @ b).dtype == torch.float32


def test_bf16_on_a_cpu_without_bf16_units_warns_once(monkeypatch):
    """Explicit bf16 on a CPU without bf16 units is emulated (~50x slower matrix products): say so, once."""
    monkeypatch.setattr(engine, "cpu_has_bf16", lambda: False)
    engine._warn_emulated_bf16.cache_clear()
    with pytest.warns(RuntimeWarning, match="emulated"):
        assert engine.resolve_precision("bf16", torch.device("cpu")) == "bf16"
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        engine.resolve_precision("bf16", torch.device("cpu"))  # once per process, not at every step
        assert engine.resolve_precision("auto", torch.device("cpu")) == "fp32"
    engine._warn_emulated_bf16.cache_clear()


def test_heads_stay_float32_under_bf16_autocast():
    """The encoder's matrix products run in bf16; the head runs in fp32 on the [CLS] state, so its outputs are
    not rounded to bf16's 8 bits (the head alone under autocast would give bf16)."""
    from cloudlib.model import CloudPredictor, build_encoder

    encoder, tok = build_encoder("tiny", pretrained=False, seed=0)
    model = CloudPredictor(encoder).eval()
    data = engine.encode(tok, [load_paper_dielectric_scope()["scope"].iloc[i] for i in range(16)])
    ids, mask = data.batch(torch.arange(16))
    with torch.no_grad(), engine.autocast(torch.device("cpu"), "bf16"):
        out = model(ids, mask)
        hidden = model.encoder(input_ids=ids, attention_mask=mask).last_hidden_state[:, 0]
        assert model.head(hidden).dtype == torch.bfloat16  # what the protection prevents
    with torch.no_grad():
        expected = model.head(hidden.float()).squeeze(-1)
        plain = model(ids, mask)  # fp32 throughout
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, expected, rtol=0, atol=0)
    assert not torch.equal(out, plain)  # the encoder did run in bf16
    torch.testing.assert_close(out, plain, rtol=0.05, atol=0.05)


def test_layer_decay_groups_cover_the_encoder_once():
    from cloudlib.finetune import head_modules
    from cloudlib.model import CloudPredictor, build_encoder

    encoder, _ = build_encoder("mini", pretrained=False, seed=0)
    model = CloudPredictor(encoder)
    cfg = FinetuneConfig(lr=1e-4, head_lr=1e-3, layer_decay=0.5)
    pairs = head_modules(model, cfg)
    n = encoder.config.num_hidden_layers
    assert [lr for _, lr in pairs] == pytest.approx(
        [1e-4 * 0.5 ** (n - 1 - i) for i in range(n)] + [1e-4 * 0.5**n, 1e-3]
    )
    ids = [id(p) for m, _ in pairs for p in m.parameters()]
    assert len(ids) == len(set(ids)) == len(list(model.parameters()))
    assert len(head_modules(model, cfg.replace(layer_decay=None))) == 2
    with pytest.raises(ConfigError, match="layer_decay"):
        FinetuneConfig(layer_decay=1.5)
