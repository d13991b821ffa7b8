"""The CLOUD encoder: transformers' BERT over SCOPE tokens, with size presets.

One config dataclass (:class:`CloudConfig`) names the size; :func:`build_mlm` makes a
``BertForMaskedLM`` with SDPA attention for pre-training and :func:`save` writes it with its tokenizer
(safetensors), so ``AutoModelForMaskedLM.from_pretrained(path)`` and ``AutoTokenizer.from_pretrained(path)``
load it with no cloudlib import. :func:`load_authors_checkpoint` reads the authors' released layout
(HF ``ChangwenXu/CLOUD``, ``subfolder="ckpt"``).
"""
from __future__ import annotations

import dataclasses
import os
import re
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import BertConfig, BertForMaskedLM


@dataclass(frozen=True)
class CloudConfig:
    """Size of a CLOUD encoder. ``base`` is the paper's (BERT-base over 64 positions)."""

    n_layer: int = 12
    n_head: int = 12
    n_embd: int = 768
    ffn: int = 3072
    block_size: int = 64
    dropout: float = 0.1

    def __post_init__(self):
        if self.n_embd % self.n_head:
            raise ValueError(f"n_embd={self.n_embd} is not a multiple of n_head={self.n_head}")

    def replace(self, **kw) -> "CloudConfig":
        return dataclasses.replace(self, **kw)


PRESETS: dict[str, CloudConfig] = {
    "tiny": CloudConfig(n_layer=2, n_head=2, n_embd=64, ffn=256),
    "mini": CloudConfig(n_layer=4, n_head=4, n_embd=128, ffn=512),
    "small": CloudConfig(n_layer=4, n_head=4, n_embd=256, ffn=1024),
    "medium": CloudConfig(n_layer=8, n_head=8, n_embd=512, ffn=2048),
    "base": CloudConfig(),  # the paper: 12 layers, 12 heads, hidden 768, FFN 3072, 64 positions
}


_SPEC = re.compile(r"^L(\d+)xD(\d+)$")


def preset(name: str | CloudConfig) -> CloudConfig:
    """A size by preset name or by spec ``"L{layers}xD{width}"`` (heads of width 32, at least 1;
    FFN 4 x width), the form the scaling sweep uses, e.g. ``"L2xD64"``."""
    if isinstance(name, CloudConfig):
        return name
    if name in PRESETS:
        return PRESETS[name]
    m = _SPEC.match(str(name))
    if m:
        n_layer, n_embd = int(m[1]), int(m[2])
        if n_layer < 1 or n_embd < 8:
            raise KeyError(f"model spec {name!r}: need at least 1 layer and width 8")
        return CloudConfig(n_layer=n_layer, n_head=max(1, n_embd // 32), n_embd=n_embd, ffn=4 * n_embd)
    raise KeyError(f"unknown model size {name!r}; presets: {sorted(PRESETS)} or a spec like 'L2xD64'")


def bert_config(cfg: CloudConfig, tokenizer) -> BertConfig:
    """transformers' BertConfig for a CLOUD size and a SCOPE tokenizer (type vocabulary 1, SDPA)."""
    config = BertConfig(
        vocab_size=len(tokenizer),
        hidden_size=cfg.n_embd,
        num_hidden_layers=cfg.n_layer,
        num_attention_heads=cfg.n_head,
        intermediate_size=cfg.ffn,
        max_position_embeddings=cfg.block_size,
        type_vocab_size=1,
        hidden_dropout_prob=cfg.dropout,
        attention_probs_dropout_prob=cfg.dropout,
        pad_token_id=tokenizer.pad_token_id,
    )
    config._attn_implementation = "sdpa"
    return config


def build_mlm(cfg: CloudConfig | str, tokenizer, seed: int | None = None) -> BertForMaskedLM:
    """A randomly initialised BertForMaskedLM (SDPA attention) for ``tokenizer``'s vocabulary."""
    if seed is not None:
        torch.manual_seed(seed)
    return BertForMaskedLM(bert_config(preset(cfg), tokenizer))


def n_params(model: torch.nn.Module, non_embedding: bool = True) -> int:
    """Parameter count; with ``non_embedding`` the token/position/type embeddings are left out
    (the N of scaling laws; the MLM decoder is tied to the token embedding)."""
    total = sum(p.numel() for p in model.parameters())
    if non_embedding:
        emb = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
        bert = getattr(model, "bert", model)
        pos = bert.embeddings.position_embeddings.weight.numel() + bert.embeddings.token_type_embeddings.weight.numel()
        total -= (emb.weight.numel() if emb is not None else 0) + pos
    return total


def flops_per_token(cfg: CloudConfig, n_non_embedding: int, seq_len: float) -> float:
    """Training FLOPs per token (forward + backward): 6N for the weights plus the attention scores
    and values, 6 * 2 * n_layer * seq_len * n_embd (PaLM appendix B / nanoGPT's estimate)."""
    return 6.0 * n_non_embedding + 12.0 * cfg.n_layer * seq_len * cfg.n_embd


def config_of(model) -> CloudConfig:
    """The CloudConfig of a BERT model (for logging and FLOP estimates)."""
    c = model.config
    return CloudConfig(
        n_layer=c.num_hidden_layers, n_head=c.num_attention_heads, n_embd=c.hidden_size,
        ffn=c.intermediate_size, block_size=c.max_position_embeddings, dropout=c.hidden_dropout_prob,
    )


def save(model, tokenizer, path: str | os.PathLike) -> Path:
    """save_pretrained (safetensors) of model and tokenizer into one folder, loadable by Auto* classes."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    model = getattr(model, "module", model)  # unwrap DDP
    model.save_pretrained(path, safe_serialization=True)
    tokenizer.save_pretrained(path)
    return path


def load_mlm(path: str | os.PathLike, subfolder: str = ""):
    """(BertForMaskedLM, tokenizer) from a folder written by :func:`save` or in the authors' layout."""
    from transformers import AutoModelForMaskedLM

    from .tokenizer import from_bert_vocab, load_tokenizer

    folder = Path(path) / subfolder
    model = AutoModelForMaskedLM.from_pretrained(folder, attn_implementation="sdpa")
    if (folder / "tokenizer.json").exists():
        tok = load_tokenizer(folder)
    elif (folder / "vocab.txt").exists():
        tok = from_bert_vocab(folder, block_size=model.config.max_position_embeddings)
    else:
        raise FileNotFoundError(f"{folder}: neither tokenizer.json nor vocab.txt")
    return model, tok


def load_authors_checkpoint(repo_or_path: str = "ChangwenXu/CLOUD", subfolder: str = "ckpt"):
    """The authors' released encoder: ``BertForMaskedLM`` with a 30,522-row embedding (BertConfig's
    default vocabulary size, of which only the ~560 SCOPE ids are used), their WordPiece vocabulary and
    ``pad_token_id`` 0 in the model config (their tokenizer pads with id 1; attention masks make that
    harmless). ``repo_or_path`` is a local folder or a Hugging Face repo id (needs internet).
    """
    local = Path(repo_or_path)
    if not local.exists():
        from huggingface_hub import snapshot_download

        local = Path(snapshot_download(repo_or_path, allow_patterns=[f"{subfolder}/*"]))
    return load_mlm(local, subfolder)
