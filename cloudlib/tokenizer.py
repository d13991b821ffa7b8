"""Tokenizers for SCOPE strings.

A SCOPE string is whitespace-separated tokens in three sections split by ``|``::

    <generator characters> | <Wyckoff symbols> | <element fraction element fraction ...>

This module offers two tokenizers, both ``transformers`` fast tokenizers of class :class:`ScopeTokenizer`:

* :func:`make_tokenizer`: a closed vocabulary built from tables (:func:`build_vocab`), one id per
  whitespace token, nothing learned;
* :func:`from_bert_vocab`: a tokenizer that reproduces, id for id, the CLOUD authors' ``BertTokenizer``
  (a WordPiece ``vocab.txt`` plus the 101 fraction strings as added tokens).

A :class:`ScopeTokenizer` raises :class:`~cloudlib.errors.BlockSizeError` rather than returning a sequence
longer than its block size (``model_max_length``), unless the caller asks for ``truncation=True``.
"""

from __future__ import annotations

import functools
import itertools
import json
import os
from collections.abc import Iterable, Sequence
from pathlib import Path

from tokenizers import AddedToken, Tokenizer, decoders, normalizers, pre_tokenizers, processors
from tokenizers.models import WordLevel, WordPiece
from transformers import PreTrainedTokenizerFast
from transformers.tokenization_utils_base import PaddingStrategy, TruncationStrategy

from .errors import BlockSizeError
from .scope import generator_strings, wyckoff_multiplicities

PAD, CLS, SEP, UNK, MASK = "[PAD]", "[CLS]", "[SEP]", "[UNK]", "[MASK]"
SPECIAL_TOKENS = (PAD, CLS, SEP, UNK, MASK)
SEPARATOR = "|"
#: Every fraction the SCOPE composition section can hold, each one token: "0.0", "0.01", ..., "1.0".
FRACTIONS = tuple(str(round(i / 100, 2)) for i in range(101))
TOKEN_CLASSES = ("special", "separator", "generator", "wyckoff", "element", "fraction")
#: Class of each SCOPE section, by position: 0 = generator, 1 = Wyckoff, 2 = composition.
SECTION_CLASSES = ("generator", "wyckoff", "element")

_SPECIAL_KWARGS = {"pad_token": PAD, "cls_token": CLS, "sep_token": SEP, "unk_token": UNK, "mask_token": MASK}
_MODEL_INPUT_NAMES = ["input_ids", "attention_mask"]
_PREVIEW_CHARS = 60


@functools.cache
def vocab_blocks() -> dict[str, str]:
    """token -> class of its vocabulary block, in vocabulary order; a token already placed keeps its first block."""
    from pymatgen.core import Element

    generator_chars = sorted({char for enc in generator_strings().values() for char in enc})
    wyckoff = sorted(
        {(mult, letter) for letters in wyckoff_multiplicities().values() for letter, mult in letters.items()}
    )
    blocks = [
        ("special", SPECIAL_TOKENS),
        ("separator", [SEPARATOR]),
        ("generator", generator_chars),
        ("wyckoff", [f"{mult}{letter}" for mult, letter in wyckoff]),
        ("element", [Element.from_Z(z).symbol for z in range(1, 119)]),
        ("fraction", FRACTIONS),
    ]
    seen: dict[str, str] = {}
    for cls, tokens in blocks:
        for token in tokens:
            seen.setdefault(token, cls)
    return seen


def build_vocab() -> list[str]:
    """The closed SCOPE vocabulary, in id order (position = id).

    ``[PAD] [CLS] [SEP] [UNK] [MASK]``, ``|``, the generator characters (sorted), the Wyckoff symbols of all
    230 space groups sorted by (multiplicity, letter), the elements Z = 1..118, the fractions "0.0".."1.0".
    Each token appears once: the element symbols B, C, F, O and Y are also generator characters and keep
    their generator id.
    """
    return list(vocab_blocks())


def token_classes(scope: str, add_special_tokens: bool = True) -> list[str]:
    """Class of every token of a SCOPE string by position, aligned with :func:`make_tokenizer`'s ``input_ids``.

    Composition-section tokens are "fraction" when they are one of :data:`FRACTIONS`, else "element".
    """
    classes = ["special"] if add_special_tokens else []
    section = 0
    fractions = set(FRACTIONS)
    for token in scope.split():
        if token == SEPARATOR:
            classes.append("separator")
            section += 1
        elif token in SPECIAL_TOKENS:
            classes.append("special")
        elif section >= 2:
            classes.append("fraction" if token in fractions else "element")
        else:
            classes.append(SECTION_CLASSES[section])
    return classes + ["special"] if add_special_tokens else classes


def unknown_tokens(strings: Iterable[str]) -> list[str]:
    """Sorted whitespace tokens of ``strings`` that are not in the closed vocabulary (they would become [UNK])."""
    vocab = set(build_vocab())
    return sorted({token for text in strings for token in text.split()} - vocab)


def _describe(item, is_split_into_words: bool) -> str:
    """The first characters of one batch item: a string, a list of words, or a pair of either."""
    if is_split_into_words:
        parts = [item] if not item or isinstance(item[0], str) else list(item)
        parts = [" ".join(part) for part in parts]
    else:
        parts = [item] if isinstance(item, str) else list(item)
    text = f" {SEP} ".join(parts)
    return text if len(text) <= _PREVIEW_CHARS else text[:_PREVIEW_CHARS] + "..."


class ScopeTokenizer(PreTrainedTokenizerFast):
    """A fast tokenizer that refuses to return sequences longer than its block size.

    The block size is ``model_max_length``. Encoding a string whose ids (special tokens included) are longer
    raises :class:`~cloudlib.errors.BlockSizeError` naming the string, unless ``truncation`` is requested,
    in which case it is cut as usual. Everything else is ``PreTrainedTokenizerFast``. It saves as a plain
    ``PreTrainedTokenizerFast`` so ``AutoTokenizer`` loads it without cloudlib (without the length check);
    :func:`load_tokenizer` loads it back as a ``ScopeTokenizer``.
    """

    @property
    def block_size(self) -> int:
        return self.model_max_length

    def _encode_plus(
        self,
        text,
        text_pair=None,
        add_special_tokens: bool = True,
        padding_strategy: PaddingStrategy = PaddingStrategy.DO_NOT_PAD,
        truncation_strategy: TruncationStrategy = TruncationStrategy.DO_NOT_TRUNCATE,
        max_length: int | None = None,
        stride: int = 0,
        is_split_into_words: bool = False,
        **kwargs,
    ):
        """Encode as ``PreTrainedTokenizerFast`` does, then enforce the block size when not truncating."""
        encoded = super()._encode_plus(
            text,
            text_pair,
            add_special_tokens=add_special_tokens,
            padding_strategy=padding_strategy,
            truncation_strategy=truncation_strategy,
            max_length=max_length,
            stride=stride,
            is_split_into_words=is_split_into_words,
            **kwargs,
        )
        if truncation_strategy == TruncationStrategy.DO_NOT_TRUNCATE:
            self._check_lengths(text, text_pair, encoded, is_split_into_words)
        return encoded

    def _check_lengths(self, text, text_pair, encoded, is_split_into_words: bool) -> None:
        """Raise :class:`BlockSizeError` for the first encoding longer than the block size, naming its input."""
        lengths = [sum(encoding.attention_mask) for encoding in encoded.encodings]
        too_long = [i for i, n in enumerate(lengths) if n > self.block_size]
        if not too_long:
            return
        if is_split_into_words:
            batched = bool(text) and isinstance(text[0], (list, tuple))
        else:
            batched = isinstance(text, (list, tuple))
        items = list(text) if batched else [text]
        pairs = list(text_pair) if batched and text_pair is not None else [text_pair] * len(items)
        i = too_long[0]
        item = items[i] if pairs[i] is None else (items[i], pairs[i])
        preview = _describe(item, is_split_into_words)
        others = f" ({len(too_long) - 1} more in this batch)" if len(too_long) > 1 else ""
        raise BlockSizeError(
            f"encodes to {lengths[i]} tokens (special tokens included), more than block_size={self.block_size}"
            f"{others}; pass truncation=True to cut it",
            input=f"item {i} {preview!r}",
        )

    def encode_batch(self, strings: Sequence[str], truncation: bool = False) -> dict:
        """Padded ``input_ids`` / ``attention_mask`` int64 tensors for a batch of SCOPE strings, fast.

        The same ids as ``self(strings, padding=True)`` (the tests check it against ``__call__`` and the
        authors' BertTokenizer): SCOPE tokens never interact across whitespace, so each distinct word is
        tokenized once by the Rust backend and memoised, and a batch is a few dict look-ups per token.
        Raises :class:`BlockSizeError` for a string longer than the block size unless ``truncation``.
        """
        import numpy as np
        import torch

        cache = self.__dict__.setdefault("_word_ids", {})
        backend = self.backend_tokenizer
        cls, sep, block = self.cls_token_id, self.sep_token_id, self.block_size
        rows: list[list[int]] = []
        for i, text in enumerate(strings):
            ids = [cls]
            for word in text.split():
                piece = cache.get(word)
                if piece is None:
                    piece = cache[word] = backend.encode(word, add_special_tokens=False).ids
                ids += piece
            ids.append(sep)
            if len(ids) > block:
                if not truncation:
                    raise BlockSizeError(
                        f"encodes to {len(ids)} tokens (special tokens included), more than "
                        f"block_size={block}; pass truncation=True to cut it",
                        input=f"item {i} {_describe(text, False)!r}",
                    )
                ids = ids[: block - 1] + [sep]
            rows.append(ids)
        lengths = np.fromiter(map(len, rows), dtype=np.int64, count=len(rows))
        width = int(lengths.max()) if len(rows) else 0
        mask = np.arange(width) < lengths[:, None]
        input_ids = np.full((len(rows), width), self.pad_token_id, dtype=np.int64)
        input_ids[mask] = np.fromiter(itertools.chain.from_iterable(rows), dtype=np.int64, count=int(lengths.sum()))
        return {"input_ids": torch.from_numpy(input_ids), "attention_mask": torch.from_numpy(mask.astype(np.int64))}

    def _eventual_warn_about_too_long_sequence(self, ids, max_length, verbose):
        """Silenced: sequences that are too long raise :class:`BlockSizeError` instead."""

    def save_pretrained(self, save_directory, *args, **kwargs):
        """Save as transformers does, recording the class as ``PreTrainedTokenizerFast`` for portability."""
        files = super().save_pretrained(save_directory, *args, **kwargs)
        config_path = next(Path(f) for f in files if str(f).endswith("tokenizer_config.json"))
        config = json.loads(config_path.read_text(encoding="utf-8"))
        config["tokenizer_class"] = "PreTrainedTokenizerFast"
        text = json.dumps(config, indent=2, sort_keys=True, ensure_ascii=False) + "\n"
        config_path.write_text(text, encoding="utf-8")
        return files


def make_tokenizer(block_size: int = 64) -> ScopeTokenizer:
    """The closed-vocabulary SCOPE tokenizer: one id per whitespace token, ``[CLS] ... [SEP]`` around each string.

    Out-of-vocabulary tokens become ``[UNK]`` (use :func:`unknown_tokens` to find them first). Outputs are
    ``input_ids`` and ``attention_mask`` (no ``token_type_ids``). Pairs encode as ``[CLS] A [SEP] B [SEP]``.
    """
    vocab = build_vocab()
    ids = {token: i for i, token in enumerate(vocab)}
    backend = Tokenizer(WordLevel(ids, unk_token=UNK))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    backend.add_special_tokens([AddedToken(token, special=True) for token in SPECIAL_TOKENS])
    backend.post_processor = _cls_sep_template(ids[CLS], ids[SEP])
    return ScopeTokenizer(
        tokenizer_object=backend,
        model_max_length=block_size,
        model_input_names=_MODEL_INPUT_NAMES,
        **_SPECIAL_KWARGS,
    )


def load_tokenizer(path: str | os.PathLike) -> ScopeTokenizer:
    """Load a tokenizer saved with ``save_pretrained`` as a strict :class:`ScopeTokenizer`."""
    return ScopeTokenizer.from_pretrained(str(path))


def _cls_sep_template(cls_id: int, sep_id: int) -> processors.TemplateProcessing:
    """BERT's post-processor: ``[CLS] A [SEP]``, pairs ``[CLS] A [SEP] B [SEP]``."""
    return processors.TemplateProcessing(
        single=f"{CLS} $A {SEP}",
        pair=f"{CLS} $A {SEP} $B:1 {SEP}:1",
        special_tokens=[(CLS, cls_id), (SEP, sep_id)],
    )


def _read_added_tokens(folder: Path) -> dict[int, dict]:
    """id -> {"content", "special"} for the added tokens of a BertTokenizer folder (either file format)."""
    added: dict[int, dict] = {}
    added_json = folder / "added_tokens.json"
    if added_json.exists():
        for content, index in json.loads(added_json.read_text(encoding="utf-8")).items():
            added[int(index)] = {"content": content, "special": False}
    config_json = folder / "tokenizer_config.json"
    if config_json.exists():
        decoder = json.loads(config_json.read_text(encoding="utf-8")).get("added_tokens_decoder", {})
        for index, token in decoder.items():
            added[int(index)] = {"content": token["content"], "special": bool(token.get("special", False))}
    return dict(sorted(added.items()))


def from_bert_vocab(path: str | os.PathLike, block_size: int = 64) -> ScopeTokenizer:
    """Fast tokenizer with the ids of the authors' ``BertTokenizer.from_pretrained(path, do_lower_case=False)``.

    ``path`` is a folder with a WordPiece ``vocab.txt`` and, optionally, the added tokens the authors stored
    in ``added_tokens.json`` / ``tokenizer_config.json`` (the fractions "0.0".."1.0", ids after the vocab).
    It reproduces transformers 4's pure-Python ``BertTokenizer``: added tokens matched whole in the raw
    text, BERT cleaning and punctuation splitting without lower-casing or accent stripping, greedy
    longest-match WordPiece with ``##`` continuations, ``[UNK]`` for unsplittable words, ``[CLS] ... [SEP]``
    with the vocabulary's ids. Raises ``ValueError`` if the folder lacks a special token or its added-token
    ids cannot be reproduced.
    """
    folder = Path(path)
    lines = (folder / "vocab.txt").read_text(encoding="utf-8").split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    vocab: dict[str, int] = {}
    for index, token in enumerate(lines):
        vocab.setdefault(token, index)  # the Python tokenizer keeps the last id; duplicates are rejected below
    if len(vocab) != len(lines):
        raise ValueError(f"{folder / 'vocab.txt'}: duplicate tokens")
    missing = [token for token in SPECIAL_TOKENS if token not in vocab]
    if missing:
        raise ValueError(f"{folder / 'vocab.txt'}: missing special tokens {missing}")

    backend = Tokenizer(WordPiece(vocab, unk_token=UNK, continuing_subword_prefix="##", max_input_chars_per_word=100))
    backend.normalizer = normalizers.Sequence(
        [
            normalizers.BertNormalizer(
                clean_text=True, handle_chinese_chars=True, strip_accents=False, lowercase=False
            ),
            normalizers.NFC(),
        ]
    )
    backend.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    backend.decoder = decoders.WordPiece(prefix="##")
    backend.add_special_tokens([AddedToken(token, special=True, normalized=False) for token in SPECIAL_TOKENS])
    for index, token in _read_added_tokens(folder).items():
        if token["content"] in vocab:
            continue
        added = AddedToken(token["content"], special=token["special"], normalized=not token["special"])
        (backend.add_special_tokens if token["special"] else backend.add_tokens)([added])
        if backend.token_to_id(token["content"]) != index:
            raise ValueError(f"{folder}: added token {token['content']!r} has id {index}, not the next free id")
    backend.post_processor = _cls_sep_template(vocab[CLS], vocab[SEP])
    return ScopeTokenizer(
        tokenizer_object=backend,
        model_max_length=block_size,
        model_input_names=_MODEL_INPUT_NAMES,
        **_SPECIAL_KWARGS,
    )
