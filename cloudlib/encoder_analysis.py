"""What a pre-trained CLOUD encoder has learned (notebook 02): masked-token accuracy and [CLS] attention by token
class, with bootstrap intervals.

Token classes are positional (:func:`cloudlib.tokenizer.token_classes`): generator characters, the ``|``
separators, Wyckoff symbols, elements and fractions (``O`` is a generator character in the first section
and oxygen in the last).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch

from .engine import encode
from .pretrain import IGNORE, mask_tokens
from .tokenizer import token_classes

CLASSES = ("generator", "separator", "wyckoff", "element", "fraction")


def _class_matrix(strings: list[str], width: int) -> np.ndarray:
    """[N, width] array of class names per position ('' beyond the string), aligned with input_ids."""
    out = np.full((len(strings), width), "", dtype=object)
    for i, s in enumerate(strings):
        cls = token_classes(s)
        out[i, : len(cls)] = cls
    return out


@torch.no_grad()
def masked_accuracy_by_class(
    model, tokenizer, strings: list[str], seed: int = 0, p: float = 0.15, batch_size: int = 256
) -> pd.DataFrame:
    """Accuracy of the MLM at masked positions, per token class (fixed seeded masks).

    Returns columns ``masked`` (count), ``accuracy``, and ``chance`` (accuracy of always predicting the
    class's most frequent token, the baseline a model ignoring context would reach).
    """
    model.eval()
    enc = encode(tokenizer, strings)
    g = torch.Generator().manual_seed(seed)
    rows = []
    for start in range(0, len(strings), batch_size):
        idx = torch.arange(start, min(start + batch_size, len(strings)))
        ids, mask = enc.batch(idx)
        inputs, labels = mask_tokens(ids, mask, tokenizer, p, g)
        logits = model(input_ids=inputs, attention_mask=mask).logits
        where = labels != IGNORE
        classes = _class_matrix([strings[i] for i in idx.tolist()], ids.shape[1])
        rows.append(
            pd.DataFrame(
                {
                    "class": classes[where.numpy()],
                    "target": labels[where].numpy(),
                    "correct": (logits[where].argmax(-1) == labels[where]).numpy(),
                }
            )
        )
    df = pd.concat(rows)
    table = df.groupby("class").agg(masked=("correct", "size"), accuracy=("correct", "mean"))
    table["chance"] = df.groupby("class")["target"].agg(lambda t: t.value_counts(normalize=True).iloc[0])
    table.loc["all"] = [len(df), df["correct"].mean(), np.nan]
    return table.reindex([c for c in (*CLASSES, "all") if c in table.index])


@torch.no_grad()
def cls_attention_by_class(model, tokenizer, strings: list[str], batch_size: int = 128) -> pd.DataFrame:
    """Attention mass from [CLS] to each token class, averaged over layers, heads and strings.

    ``mass`` is the mean share of [CLS]'s attention that lands on the class; ``share`` is the class's mean
    share of the string's tokens, what uniform attention would give; ``ratio`` = mass / share. Special
    tokens ([CLS], [SEP]) are a class of their own. Per-string values are returned in ``.attrs['per_string']``
    for confidence intervals.
    """
    bert = getattr(model, "bert", model)
    previous = bert.config._attn_implementation
    bert.set_attn_implementation("eager")  # SDPA does not return attention weights
    try:
        bert.eval()
        enc = encode(tokenizer, strings)
        per = []
        for start in range(0, len(strings), batch_size):
            idx = torch.arange(start, min(start + batch_size, len(strings)))
            ids, mask = enc.batch(idx)
            att = bert(input_ids=ids, attention_mask=mask, output_attentions=True).attentions
            cls_row = torch.stack([a[:, :, 0, :] for a in att]).mean(dim=(0, 2))  # [B, T]: layers, heads averaged
            classes = _class_matrix([strings[i] for i in idx.tolist()], ids.shape[1])
            classes[classes == ""] = "pad"
            classes[(ids == tokenizer.cls_token_id).numpy() | (ids == tokenizer.sep_token_id).numpy()] = "special"
            for b in range(len(idx)):
                n = int(mask[b].sum())
                c = classes[b, :n]
                w = cls_row[b, :n].numpy()
                for k in np.unique(c):
                    per.append(
                        {
                            "string": start + b,
                            "class": k,
                            "mass": float(w[c == k].sum()),
                            "share": float((c == k).mean()),
                        }
                    )
    finally:
        bert.set_attn_implementation(previous)
    per = pd.DataFrame(per)
    table = per.groupby("class")[["mass", "share"]].mean()
    table["ratio"] = table["mass"] / table["share"]
    table.attrs["per_string"] = per
    return table.reindex([c for c in ("special", *CLASSES) if c in table.index])


def bootstrap_ratio_ci(per_string: pd.DataFrame, n_boot: int = 1000, seed: int = 0) -> pd.DataFrame:
    """95 % bootstrap intervals (over strings) of mass/share per class."""
    rng = np.random.default_rng(seed)
    wide_m = per_string.pivot(index="string", columns="class", values="mass").fillna(0.0)
    wide_s = per_string.pivot(index="string", columns="class", values="share").fillna(0.0)
    n = len(wide_m)
    boots = []
    for _ in range(n_boot):
        i = rng.integers(0, n, n)
        boots.append(wide_m.iloc[i].mean() / wide_s.iloc[i].mean())
    boots = pd.DataFrame(boots)
    return pd.DataFrame({"low": boots.quantile(0.025), "high": boots.quantile(0.975)})
