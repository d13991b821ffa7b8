"""The engine's fast CPU dropout (issue 24): right drop rate, unbiased, a function of the global seed, and the
attention path equal to SDPA wherever nothing is dropped."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from transformers import BertConfig, BertModel

from cloudlib import engine


@pytest.mark.parametrize("p", [0.1, 0.5])
def test_every_lane_drops_at_the_rate_p(p):
    torch.manual_seed(0)
    keep, scale = engine.keep_mask((400_000, 4), p)  # 4 int16 lanes of each 64-bit draw: each lane on its own
    drop = 1.0 - keep.float().mean(0)
    assert torch.allclose(drop, torch.full((4,), p), atol=4e-3), drop  # 5 sigma at p = 0.5 is 3.9e-3
    assert scale == pytest.approx(1 / (1 - round(p * 65536) / 65536))
    assert abs(round(p * 65536) / 65536 - p) <= 7.7e-6


def test_fast_dropout_is_unbiased_and_seeded():
    x = torch.randn(300, 1000)
    torch.manual_seed(1)
    a = engine.fast_dropout(x, 0.1)
    torch.manual_seed(1)
    b = engine.fast_dropout(x, 0.1)
    torch.manual_seed(2)
    c = engine.fast_dropout(x, 0.1)
    assert torch.equal(a, b) and not torch.equal(a, c)
    dropped = a == 0
    assert 0.095 < dropped.float().mean() < 0.105
    assert torch.allclose(a[~dropped], x[~dropped] * (65536 / (65536 - 6554)))
    ones = engine.fast_dropout(torch.ones(2_000_000), 0.1)
    assert float(ones.mean()) == pytest.approx(1.0, abs=2e-3)
    assert engine.fast_dropout(x, 0.0) is x
    with pytest.raises(ValueError, match="1"):
        engine.keep_mask((3,), 1.0)


def test_fast_dropout_module_is_identity_in_eval():
    m = engine.FastDropout(0.3)
    x = torch.randn(50, 7)
    assert torch.equal(m.eval()(x), x)
    assert (m.train()(x) == 0).any()


def _tiny_bert(dropout=0.1):
    config = BertConfig(
        vocab_size=40,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=16,
        hidden_dropout_prob=dropout,
        attention_probs_dropout_prob=dropout,
    )
    config._attn_implementation = "sdpa"
    torch.manual_seed(0)
    return BertModel(config, add_pooling_layer=False)


def _batch():
    g = torch.Generator().manual_seed(3)
    ids = torch.randint(5, 40, (6, 12), generator=g)
    mask = torch.ones(6, 12, dtype=torch.long)
    mask[0, 7:] = 0
    mask[3, 4:] = 0
    return ids, mask


def test_use_dropout_swaps_and_restores_and_changes_nothing_in_eval():
    bert = _tiny_bert()
    ids, mask = _batch()
    before = bert.eval()(input_ids=ids, attention_mask=mask).last_hidden_state
    state = {k: v.clone() for k, v in bert.state_dict().items()}
    engine.use_dropout(bert, "fast")
    kinds = {type(m) for m in bert.modules()}
    assert engine.FastDropout in kinds and nn.Dropout not in kinds
    assert bert.config._attn_implementation == "cloud_sdpa"
    assert torch.equal(bert.eval()(input_ids=ids, attention_mask=mask).last_hidden_state, before)
    assert all(torch.equal(v, state[k]) for k, v in bert.state_dict().items())
    engine.use_dropout(bert, "torch")
    assert engine.FastDropout not in {type(m) for m in bert.modules()}
    assert bert.config._attn_implementation == "sdpa"


def test_attention_math_path_equals_sdpa_when_its_masks_keep_everything(monkeypatch):
    """In training the fast attention computes softmax(QK^T + mask) V itself: with dropout masks that keep
    everything it must agree with SDPA (same weights, padded rows included)."""
    ids, mask = _batch()
    ref = _tiny_bert().train()
    engine.use_dropout(ref, "torch")
    for m in ref.modules():
        if isinstance(m, nn.Dropout):
            m.p = 0.0
    expected = ref(input_ids=ids, attention_mask=mask).last_hidden_state
    fast = _tiny_bert().train()
    engine.use_dropout(fast, "fast")
    monkeypatch.setattr(engine, "fast_dropout", lambda x, p: x)
    got = fast(input_ids=ids, attention_mask=mask).last_hidden_state
    real = mask.bool()
    assert torch.allclose(got[real], expected[real], atol=1e-5)


def test_training_without_dropout_takes_the_math_path_and_equals_sdpa(monkeypatch):
    """Dropout 0 in training: the fast attention still computes softmax(QK^T + mask) V itself (SDPA is never
    called) and agrees with SDPA; in evaluation it is SDPA."""
    from transformers.integrations import sdpa_attention

    ids, mask = _batch()
    ref = _tiny_bert().train()
    for m in ref.modules():
        if isinstance(m, nn.Dropout):
            m.p = 0.0
    ref.config.attention_probs_dropout_prob = 0.0
    expected = ref(input_ids=ids, attention_mask=mask).last_hidden_state
    fast = _tiny_bert().train()
    for m in fast.modules():
        if isinstance(m, nn.Dropout):
            m.p = 0.0
    fast.config.attention_probs_dropout_prob = 0.0
    engine.use_dropout(fast, "fast")
    calls = []
    real_sdpa = sdpa_attention.sdpa_attention_forward
    monkeypatch.setattr(sdpa_attention, "sdpa_attention_forward", lambda *a, **k: calls.append(1) or real_sdpa(*a, **k))
    got = fast(input_ids=ids, attention_mask=mask).last_hidden_state
    assert calls == []
    real = mask.bool()
    assert torch.allclose(got[real], expected[real], atol=1e-5)
    fast.eval()(input_ids=ids, attention_mask=mask)
    assert len(calls) == fast.config.num_hidden_layers


def test_training_with_fast_dropout_is_seeded_and_learns():
    ids, mask = _batch()
    outs = []
    for seed in (5, 5, 6):
        bert = engine.use_dropout(_tiny_bert().train(), "fast")
        torch.manual_seed(seed)
        outs.append(bert(input_ids=ids, attention_mask=mask).last_hidden_state)
    assert torch.equal(outs[0], outs[1]) and not torch.equal(outs[0], outs[2])
    outs[0].sum().backward()  # gradients flow through the masks
