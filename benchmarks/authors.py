"""The CLOUD authors' own pipeline (github.com/ChangwenXu98/CLOUD @ 043de9e), re-created as the baselines the
benchmarks and tests compare cloudlib with. Nothing here is used by cloudlib itself.

* :func:`generate_seq` -- their ``structure_to_str.generate_seq``: SCOPE through pymatgen's
  ``SpacegroupAnalyzer``, ``np.round`` fractions, their generator and Wyckoff tables;
* :func:`write_authors_style_vocab` -- a tokenizer folder made the way theirs was (WordPiece ``vocab.txt`` +
  the 101 fractions added with the Python ``BertTokenizer``);
* :func:`pretrain_batch` -- their MLM batches: every string tokenized on its own, padded to 64
  (``PretrainDataset.__getitem__``), masked by ``DataCollatorForLanguageModeling``.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

import numpy as np

#: The authors' special-token order in their WordPiece vocab.txt (ids 0..4).
AUTHORS_SPECIAL_TOKENS = ("[CLS]", "[PAD]", "[SEP]", "[UNK]", "[MASK]")


def generate_seq(gen_str: dict, wyckoff_multiplicity_dict: dict):
    """The authors' structure_to_str.generate_seq, verbatim in behaviour (dict access included)."""
    import warnings

    from pymatgen.symmetry.analyzer import SpacegroupAnalyzer

    def seq(struct):
        with warnings.catch_warnings():  # spglib >= 2.5 warns on dict access, as it did for the authors
            warnings.simplefilter("ignore", DeprecationWarning)
            analyzer = SpacegroupAnalyzer(struct)
            symm_dataset = analyzer.get_symmetry_dataset()
            wyckoff_positions = symm_dataset["wyckoffs"]
        spg_num = str(analyzer.get_space_group_number())
        out = " ".join(gen_str[spg_num])
        wyckoff_ls = []
        for w in wyckoff_positions:
            symbol = wyckoff_multiplicity_dict[spg_num][w] + w
            if symbol not in wyckoff_ls:
                wyckoff_ls.append(symbol)
        out = out + " | " + " ".join(wyckoff_ls)
        comp_ls = []
        for element, ratio in struct.composition.fractional_composition.get_el_amt_dict().items():
            comp_ls += [element, str(np.round(ratio, 2))]
        return out + " | " + " ".join(comp_ls)

    return seq


def write_authors_style_vocab(strings: Iterable[str], directory: str | os.PathLike, vocab_size: int = 300) -> Path:
    """Write a tokenizer folder the way the CLOUD authors made theirs.

    Trains ``tokenizers.BertWordPieceTokenizer(lowercase=False)`` on ``strings`` (special tokens
    ``[CLS] [PAD] [SEP] [UNK] [MASK]`` at ids 0..4), saves ``vocab.txt``, then adds the 101 fractions with
    transformers 4's Python ``BertTokenizer`` (``BertTokenizerLegacy`` in transformers 5) and saves again, which
    writes ``added_tokens.json`` and ``tokenizer_config.json``. Returns the folder.
    """
    from tokenizers import BertWordPieceTokenizer
    from transformers.models.bert.tokenization_bert_legacy import BertTokenizerLegacy

    from cloudlib.tokenizer import FRACTIONS

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    trainer = BertWordPieceTokenizer(lowercase=False)
    trainer.train_from_iterator(
        list(strings), vocab_size=vocab_size, special_tokens=list(AUTHORS_SPECIAL_TOKENS), show_progress=False
    )
    trainer.save_model(str(directory))
    authors = BertTokenizerLegacy.from_pretrained(str(directory), do_lower_case=False)
    authors.add_tokens(list(FRACTIONS))
    authors.save_pretrained(str(directory))
    return directory


def pretrain_batch(tokenizer, collator, strings: list[str], index, block: int = 64) -> dict:
    """The authors' MLM batch for rows ``index``: ``PretrainDataset.__getitem__`` per string (verbatim
    arguments), then the collator (``DataCollatorForLanguageModeling(mlm_probability=0.15)``)."""
    examples = []
    for i in index.tolist():
        enc = tokenizer(
            strings[i],
            add_special_tokens=True,
            max_length=block,
            return_token_type_ids=False,
            padding="max_length",
            truncation=True,
            return_attention_mask=True,
            return_tensors="pt",
        )
        examples.append({"input_ids": enc["input_ids"].flatten(), "attention_mask": enc["attention_mask"].flatten()})
    return collator(examples)
