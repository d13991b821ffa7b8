"""The analyses behind notebooks 01 and 02, on real strings and the shipped encoder: exactness, token lengths,
space groups, collisions and their MAE floor; masked-token accuracy and [CLS] attention by token class."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from conftest import NACL
from pymatgen.core import Lattice, Structure

from cloudlib import encoder_analysis, scope_analysis
from cloudlib.model import load_mlm
from cloudlib.paths import repo_root
from cloudlib.tokenizer import make_tokenizer


def test_compare_strings_counts_and_names_mismatches():
    ours = pd.DataFrame({"scope": ["a", "b", None, "d"], "error": [None, None, "X: bad", None]}, index=list("pqrs"))
    ref = pd.Series({"p": "a", "q": "B", "r": "c", "s": "d", "t": "extra"})
    out = scope_analysis.compare_strings(ours, ref)
    assert out == {"rows": 4, "identical": 2, "mismatches": 2, "errors": 1, "mismatch_ids": ["q", "r"]}


def test_token_lengths_and_stats(paper_scope):
    tok = make_tokenizer()
    strings = paper_scope["scope"].iloc[:200]
    lengths = scope_analysis.token_lengths(tok, strings)
    assert (lengths == np.array([len(s.split()) + 2 for s in strings])).all()
    long = " ".join([NACL] + ["Na 0.5"] * 40)  # over the block size: counted, not refused
    assert scope_analysis.token_lengths(tok, [long])[0] == len(long.split()) + 2
    stats = scope_analysis.length_stats([10, 20, 70, 30], block_size=64)
    assert stats == {"mean": 32.5, "median": 25, "max": 70, "over_64": 1}


def test_spacegroups_and_top_groups():
    assert scope_analysis.spacegroups([NACL]).tolist() == [225]
    corpus = pd.DataFrame(
        {"source": ["x", "y", "x"], "count": 1}, index=[NACL, NACL.replace("Na", "K"), NACL.replace("Cl", "Br")]
    )
    top = scope_analysis.top_spacegroups_by_source(corpus, k=1)
    assert top.loc[225].to_dict() == {"x": 2, "y": 1, "total": 3}


def test_collisions_and_the_mae_floor():
    table = pd.DataFrame({"scope": ["s1", "s1", "s1", "s2", "s3", "s3"], "n": [1.0, 2.0, 4.0, 9.0, 5.0, 5.0]})
    members, groups, stats = scope_analysis.collisions(table, "n")
    assert sorted(members.index) == [0, 1, 2, 4, 5] and members["group_size"].tolist() == [3, 3, 3, 2, 2]
    assert groups.loc["s1", "range"] == 3.0 and groups.loc["s3", "range"] == 0.0
    # group medians 2, 9, 5: |1-2| + 0 + |4-2| + 0 + 0 + 0 = 3 over 6 rows; over the 5 colliding rows 3/5
    assert stats["mae_floor_all"] == pytest.approx(0.5) and stats["mae_floor_collided"] == pytest.approx(0.6)
    assert stats["collision_groups"] == 2 and stats["largest_group"] == 3 and stats["distinct_strings"] == 3


def test_rattled_nacl_flips_origin_not_group():
    nacl = Structure.from_spacegroup("Fm-3m", Lattice.cubic(5.64), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    counts = scope_analysis.rattled_variants(nacl, n=20, amplitude=0.002)
    assert counts.sum() == 20 and set(counts.index) <= {"4a 4b", "4b 4a"}
    with pytest.raises(ValueError, match="space group"):
        scope_analysis.rattled_variants(nacl, n=3, amplitude=0.3)


@pytest.fixture(scope="module")
def shipped():
    return load_mlm(repo_root() / "models" / "cloud-laptop")


def test_masked_accuracy_by_class(shipped, paper_scope):
    model, tok = shipped
    strings = list(paper_scope["scope"].iloc[:300])
    acc = encoder_analysis.masked_accuracy_by_class(model, tok, strings, seed=1)
    assert list(acc.index) == [*encoder_analysis.CLASSES, "all"]
    assert acc.loc["all", "masked"] == acc.drop(index="all")["masked"].sum()
    assert ((acc["accuracy"] >= 0) & (acc["accuracy"] <= 1)).all()
    assert acc.loc["all", "accuracy"] > 0.6  # the shipped encoder fills in most masked tokens
    assert acc.loc["generator", "accuracy"] > acc.loc["generator", "chance"]
    again = encoder_analysis.masked_accuracy_by_class(model, tok, strings, seed=1)
    pd.testing.assert_frame_equal(acc, again)  # fixed masks


def test_cls_attention_is_a_distribution(shipped, paper_scope):
    model, tok = shipped
    strings = list(paper_scope["scope"].iloc[:60])
    att = encoder_analysis.cls_attention_by_class(model, tok, strings)
    per = att.attrs["per_string"]
    sums = per.groupby("string")[["mass", "share"]].sum()
    np.testing.assert_allclose(sums["mass"], 1.0, atol=1e-5)  # [CLS]'s attention row sums to 1
    np.testing.assert_allclose(sums["share"], 1.0, atol=1e-9)
    np.testing.assert_allclose(att["ratio"], att["mass"] / att["share"])
    ci = encoder_analysis.bootstrap_ratio_ci(per, n_boot=200, seed=0)
    assert (ci["low"] <= ci["high"]).all()
    assert model.config._attn_implementation == "sdpa"  # restored after the eager pass
