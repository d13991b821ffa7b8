"""Tests for cloudlib.tokenizer on real SCOPE strings from the data mirror (``$CLOUD_DATA_MIRROR``)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import transformers
from conftest import NACL, need, need_call
from transformers.models.bert.tokenization_bert_legacy import BertTokenizerLegacy

from benchmarks.authors import write_authors_style_vocab
from cloudlib import registry
from cloudlib.errors import BlockSizeError
from cloudlib.scope import PAPER_GENERATOR_OVERRIDES, generator_strings, wyckoff_multiplicities
from cloudlib.tokenizer import (
    FRACTIONS,
    SPECIAL_TOKENS,
    TOKEN_CLASSES,
    ScopeTokenizer,
    build_vocab,
    from_bert_vocab,
    load_tokenizer,
    make_tokenizer,
    token_classes,
    unknown_tokens,
    vocab_blocks,
)

REPO = Path(__file__).resolve().parent.parent


def _mirror_file(name: str) -> Path:
    """A CLOUD data file through the verified registry (skips without data, fails under CI)."""
    return need(f"cloud/{name}")


@pytest.fixture(scope="module")
def dielectric() -> list[str]:
    return pd.read_csv(_mirror_file("finetune_dielectric_train_and_val.csv"))["scope"].tolist()


@pytest.fixture(scope="module")
def pretrain() -> list[str]:
    return pd.read_csv(_mirror_file("pretrain_cloud_10k.csv"))["cloud"].tolist()


@pytest.fixture(scope="module")
def tok() -> ScopeTokenizer:
    return make_tokenizer()


@pytest.fixture(scope="module")
def authors_dir(tmp_path_factory, pretrain) -> Path:
    """An authors'-format folder (WordPiece vocab.txt + fraction added tokens) trained on real strings."""
    return write_authors_style_vocab(pretrain[:3000], tmp_path_factory.mktemp("authors"), vocab_size=300)


# --- vocabulary ---------------------------------------------------------------------------------


def test_vocab_layout():
    vocab = build_vocab()
    assert vocab[:6] == [*SPECIAL_TOKENS, "|"]
    assert vocab[:5] == ["[PAD]", "[CLS]", "[SEP]", "[UNK]", "[MASK]"]
    assert len(vocab) == len(set(vocab))
    assert vocab == build_vocab()  # deterministic
    classes = list(vocab_blocks().values())
    assert list(vocab_blocks()) == vocab
    assert [TOKEN_CLASSES.index(c) for c in classes] == sorted(TOKEN_CLASSES.index(c) for c in classes)
    assert vocab[-101:] == list(FRACTIONS)
    assert FRACTIONS[:3] == ("0.0", "0.01", "0.02") and FRACTIONS[50] == "0.5" and FRACTIONS[-1] == "1.0"

    generators = [t for t, c in zip(vocab, classes) if c == "generator"]
    assert generators == sorted({ch for enc in generator_strings().values() for ch in enc})
    assert {"0", "1", "7", "O", "D", "a", "n"} <= set(generators)
    wyckoff = [t for t, c in zip(vocab, classes) if c == "wyckoff"]
    assert wyckoff[:2] == ["1a", "1b"] and "192l" in wyckoff and "8A" in wyckoff
    key = [(int(t[:-1]), t[-1]) for t in wyckoff]
    assert key == sorted(key)
    elements = [t for t, c in zip(vocab, classes) if c == "element"]
    assert elements[:3] == ["H", "He", "Li"] and elements[-1] == "Og"
    assert len(elements) == 118 - 5  # B, C, F, O and Y keep their generator ids


def test_generator_and_wyckoff_tables():
    generators = generator_strings()
    assert sorted(generators) == list(range(1, 231))
    assert generators[225] == NACL.split("|")[0].replace(" ", "")
    for number, enc in PAPER_GENERATOR_OVERRIDES.items():
        assert generators[number] == enc
    wyckoff = wyckoff_multiplicities()
    assert sorted(wyckoff) == list(range(1, 231))
    assert wyckoff[1] == {"a": 1} and wyckoff[225]["a"] == 4


def test_tables_match_mirror_copies():
    """The authors' own generator and Wyckoff tables, shipped with the data, agree with ours."""
    mirror = _mirror_file("generator.json").parent
    authors_generators = json.loads((mirror / "generator.json").read_text())
    assert {int(k): v for k, v in authors_generators.items()} == generator_strings()
    authors_wyckoff = json.loads((mirror / "wyckoff-position-multiplicities.json").read_text())
    assert {
        int(k): {letter: int(m) for letter, m in v.items()} for k, v in authors_wyckoff.items() if v
    } == wyckoff_multiplicities()


def test_fractions_are_single_tokens(tok):
    ids = tok(" ".join(FRACTIONS), add_special_tokens=False, truncation=True, max_length=200)["input_ids"]
    assert tok.convert_ids_to_tokens(ids) == list(FRACTIONS)
    assert tok.tokenize("0 0.0 1 1.0") == ["0", "0.0", "1", "1.0"]
    assert [vocab_blocks()[t] for t in ("0", "1", "0.0", "0.5", "1.0")] == ["generator"] * 2 + ["fraction"] * 3


def test_every_mirror_token_in_vocab(tok, dielectric, pretrain):
    strings = dielectric + pretrain
    assert unknown_tokens(strings) == []
    ids = tok(strings)["input_ids"]
    assert all(tok.unk_token_id not in row for row in ids)
    assert all(len(row) == len(s.split()) + 2 for row, s in zip(ids, strings))
    assert unknown_tokens([NACL + " Qq 0.123"]) == ["0.123", "Qq"]


def test_token_class_by_position(tok, pretrain):
    assert vocab_blocks()["O"] == "generator"  # its id lives in the generator block ...
    assert token_classes("1 O 0 | 4a | O 0.5")[1:-1] == [  # ... but by position it is oxygen in the last section
        "generator",
        "generator",
        "generator",
        "separator",
        "wyckoff",
        "separator",
        "element",
        "fraction",
    ]
    classes = token_classes(NACL)
    assert classes[:2] == ["special", "generator"] and classes[-5:] == ["element", "fraction"] * 2 + ["special"]
    assert classes.count("separator") == 2 and classes.count("wyckoff") == 2
    for s in pretrain[:300]:
        assert len(token_classes(s)) == len(tok(s)["input_ids"])
        assert token_classes(s, add_special_tokens=False) == token_classes(s)[1:-1]


# --- encoding -----------------------------------------------------------------------------------


def test_nacl_encoding(tok):
    enc = tok(NACL)
    assert set(enc) == {"input_ids", "attention_mask"}
    tokens = tok.convert_ids_to_tokens(enc["input_ids"])
    assert tokens == ["[CLS]", *NACL.split(), "[SEP]"]
    assert enc["input_ids"][0] == 1 and enc["input_ids"][-1] == 2
    vocab = build_vocab()
    assert enc["input_ids"][1:-1] == [vocab.index(t) for t in NACL.split()]
    assert tok.decode(enc["input_ids"], skip_special_tokens=True) == NACL


def test_batch_padding_and_masks(tok, dielectric):
    batch = dielectric[:64]
    lengths = [len(s.split()) + 2 for s in batch]
    enc = tok(batch, padding=True, return_tensors="pt")
    assert tuple(enc["input_ids"].shape) == (64, max(lengths))
    assert enc["attention_mask"].sum(dim=1).tolist() == lengths
    assert (enc["input_ids"][enc["attention_mask"] == 0] == tok.pad_token_id).all()
    assert tok.pad_token_id == 0
    assert (enc["input_ids"][enc["attention_mask"] == 1] != tok.pad_token_id).all()
    unpadded = tok(batch)["input_ids"]
    for row, ids in zip(enc["input_ids"].tolist(), unpadded):
        assert row[: len(ids)] == ids
    full = tok(batch[:3], padding="max_length")
    assert all(len(row) == 64 for row in full["input_ids"])


def _full_variant(scope: str, n_sites: int) -> str:
    """A realistic long string: one Wyckoff symbol and one element per site (the "full" SCOPE variant)."""
    generators, wyckoff, composition = (part.split() for part in scope.split("|"))
    symbols = [wyckoff[i % len(wyckoff)] for i in range(n_sites)]
    elements = composition[0::2]
    sites = [f"{elements[i % len(elements)]} {FRACTIONS[round(100 / n_sites)]}" for i in range(n_sites)]
    return " ".join([*generators, "|", *symbols, "|", *sites])


def test_block_size_error(tok):
    long = _full_variant(NACL, 12)
    n_tokens = len(long.split()) + 2
    assert n_tokens > 64
    with pytest.raises(BlockSizeError) as info:
        tok([NACL, long, NACL])
    message = str(info.value)
    assert "item 1" in message and long[:40] in message and f"{n_tokens} tokens" in message
    assert "block_size=64" in message and "truncation=True" in message
    assert isinstance(info.value, ValueError) and info.value.input.startswith("item 1")
    too_long_calls = (
        lambda: tok(long),
        lambda: tok.encode(long),
        lambda: tok([long], padding="max_length"),
        lambda: tok(NACL, NACL),  # a pair: [CLS] A [SEP] B [SEP]
        lambda: tok([long.split()], is_split_into_words=True),
    )
    for call in too_long_calls:
        with pytest.raises(BlockSizeError):
            call()

    cut = tok([NACL, long], truncation=True, padding=True)
    assert [len(row) for row in cut["input_ids"]] == [64, 64]
    assert cut["input_ids"][1][-1] == tok.sep_token_id and cut["input_ids"][1][0] == tok.cls_token_id
    assert sum(cut["attention_mask"][0]) == len(NACL.split()) + 2

    exactly = " ".join(long.split()[:62])
    assert len(tok(exactly)["input_ids"]) == 64
    assert len(make_tokenizer(block_size=128)(long)["input_ids"]) == n_tokens


# --- saving and loading -------------------------------------------------------------------------


def test_round_trip_without_cloudlib(tok, pretrain, tmp_path):
    strings = pretrain[:300]
    tok.save_pretrained(tmp_path)
    assert json.loads((tmp_path / "tokenizer_config.json").read_text())["tokenizer_class"] == "PreTrainedTokenizerFast"
    code = (
        "import json, sys\n"
        "from transformers import AutoTokenizer\n"
        "tok = AutoTokenizer.from_pretrained(sys.argv[1])\n"
        "assert not any(m.startswith('cloudlib') for m in sys.modules), 'cloudlib was imported'\n"
        "enc = tok(json.load(sys.stdin), padding=True)\n"
        "json.dump({'ids': enc['input_ids'], 'keys': sorted(enc), 'max': tok.model_max_length}, sys.stdout)\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    done = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path)],
        input=json.dumps(strings),
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=env,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    out = json.loads(done.stdout)
    assert out["ids"] == tok(strings, padding=True)["input_ids"]
    assert out["keys"] == ["attention_mask", "input_ids"] and out["max"] == 64

    again = load_tokenizer(tmp_path)
    assert isinstance(again, ScopeTokenizer) and again.block_size == 64
    assert again(strings)["input_ids"] == tok(strings)["input_ids"]
    with pytest.raises(BlockSizeError):
        again(_full_variant(NACL, 12))


# --- the authors' WordPiece vocabulary ----------------------------------------------------------

EDGE_CASES = [
    "0 1 | 1a | Og 0.5 Qq 0.50",  # unknown word, fraction followed by a digit
    "0 1 | 1a | H 1.0 [MASK] 0.5",  # special token inside the text
    "\u03a9 \u00e9 0.123 10.5 0.5.5 1.00",  # unknown characters, fractions inside longer numbers
    "  0 1 |1a|H 1.0  ",  # irregular spacing
    "x" * 120,  # longer than WordPiece's 100-character limit
    "0 1 | 1a | Na0.5Cl0.5",  # added tokens glued to words
    "",
]


def test_from_bert_vocab_matches_authors_tokenizer(authors_dir, dielectric, pretrain):
    assert {"vocab.txt", "added_tokens.json", "tokenizer_config.json"} <= {p.name for p in authors_dir.iterdir()}
    vocab_lines = (authors_dir / "vocab.txt").read_text().split("\n")
    assert vocab_lines[:5] == ["[CLS]", "[PAD]", "[SEP]", "[UNK]", "[MASK]"]

    legacy = BertTokenizerLegacy.from_pretrained(str(authors_dir), do_lower_case=False)
    v5 = transformers.BertTokenizer.from_pretrained(str(authors_dir), do_lower_case=False)
    ours = from_bert_vocab(authors_dir, block_size=512)
    assert legacy.convert_tokens_to_ids(["0.0", "1.0"]) == [len(vocab_lines) - 1, len(vocab_lines) + 99]

    strings = dielectric + pretrain[3000:4000] + EDGE_CASES
    expected = legacy(strings)["input_ids"]
    assert len(strings) >= 2000
    assert ours(strings)["input_ids"] == expected
    assert v5(strings)["input_ids"] == expected

    pieces = [legacy.convert_ids_to_tokens(row) for row in expected]
    assert sum(any(t.startswith("##") for t in row) for row in pieces) >= 10  # some words are split
    assert any("[UNK]" in row for row in pieces)
    assert all(row[0] == "[CLS]" and row[-1] == "[SEP]" for row in pieces)
    assert ours.pad_token_id == legacy.pad_token_id == 1


def test_the_authors_released_tokenizer_gives_bert_tokenizers_ids_on_every_scope_string(pretrain):
    """The real released files (github.com/ChangwenXu98/CLOUD, tokenizer_cloud_optimade/, through the registry):
    the project's loader gives the authors' ``BertTokenizer`` ids on every SCOPE string the project has (the
    10 k pre-training sample, dielectric fold 0 train and test, the Cv train and test splits, the edge cases)."""
    folder = need_call(registry.authors_tokenizer_dir)
    legacy = BertTokenizerLegacy.from_pretrained(str(folder), do_lower_case=False)
    v5 = transformers.BertTokenizer.from_pretrained(str(folder), do_lower_case=False)
    ours = from_bert_vocab(folder, block_size=512)
    assert len(legacy) == len(ours) == 564 and legacy.pad_token_id == ours.pad_token_id == 1
    assert legacy.convert_tokens_to_ids(["0.0", "0.5", "1.0"]) == [463, 513, 563]
    strings = list(pretrain)
    for name, column in [
        ("finetune_dielectric_train_and_val.csv", "scope"),
        ("finetune_dielectric_test.csv", "scope"),
        ("cloud_cv_train_and_val.csv", "cloud"),
        ("cloud_cv_test.csv", "cloud"),
    ]:
        strings += pd.read_csv(_mirror_file(name))[column].tolist()
    assert len(strings) == 10_000 + 3_811 + 953 + 1_213 + 299
    strings += EDGE_CASES
    expected = legacy(strings)["input_ids"]
    assert ours(strings)["input_ids"] == expected
    assert v5(strings)["input_ids"] == expected
    # the real vocabulary covers real strings: no [UNK] in any of them, words split into ## pieces in some
    unk = legacy.unk_token_id
    assert not any(unk in row for row in expected[: -len(EDGE_CASES)])
    assert max(len(row) for row in expected) <= 512


def test_from_bert_vocab_is_strict_and_saves(authors_dir, dielectric, tmp_path):
    ours = from_bert_vocab(authors_dir)
    long = _full_variant(NACL, 12)
    with pytest.raises(BlockSizeError):
        ours(long)
    assert len(ours(long, truncation=True)["input_ids"]) == 64
    ours.save_pretrained(tmp_path)
    for loaded in (load_tokenizer(tmp_path), transformers.AutoTokenizer.from_pretrained(tmp_path)):
        assert loaded(dielectric[:200])["input_ids"] == ours(dielectric[:200])["input_ids"]


def test_from_bert_vocab_rejects_incomplete_folder(tmp_path):
    (tmp_path / "vocab.txt").write_text("[CLS]\n[SEP]\na\n")
    with pytest.raises(ValueError, match="missing special tokens"):
        from_bert_vocab(tmp_path)


def test_encode_batch_equals_call(tok, dielectric, pretrain):
    """The memoised tensor fast path gives exactly what __call__ gives, ids and masks."""
    strings = dielectric + pretrain
    fast = tok.encode_batch(strings)
    ref = tok(strings, padding=True, return_tensors="pt")
    assert fast["input_ids"].dtype == ref["input_ids"].dtype
    assert fast["input_ids"].equal(ref["input_ids"]) and fast["attention_mask"].equal(ref["attention_mask"])


def test_encode_batch_matches_authors_tokenizer(authors_dir, pretrain):
    """With the authors' WordPiece vocabulary (## splits, [UNK]) the fast path equals their BertTokenizer."""
    fast = from_bert_vocab(authors_dir).encode_batch(pretrain)
    legacy = BertTokenizerLegacy.from_pretrained(str(authors_dir), do_lower_case=False)
    ref = legacy(pretrain, padding=True, return_tensors="pt")
    assert fast["input_ids"].equal(ref["input_ids"])
    assert fast["attention_mask"].equal(ref["attention_mask"])


def test_encode_batch_block_size(tok):
    long = _full_variant(NACL, 40)
    with pytest.raises(BlockSizeError, match=r"item 1 .*block_size=64"):
        tok.encode_batch([NACL, long])
    cut = tok.encode_batch([NACL, long], truncation=True)
    ref = tok([NACL, long], truncation=True, padding=True, return_tensors="pt")
    assert cut["input_ids"].shape[1] == 64 and cut["input_ids"].equal(ref["input_ids"])
