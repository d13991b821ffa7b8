"""The CLOUD models: transformers' BERT encoder over SCOPE tokens, its size presets, and the heads on it.

* :class:`CloudConfig` names an encoder size (:data:`PRESETS`, or a spec ``"L{layers}xD{width}"``);
  :func:`build_mlm` makes a ``BertForMaskedLM`` with SDPA attention for pre-training and :func:`save` writes it
  with its tokenizer (safetensors, atomically), so ``AutoModelForMaskedLM.from_pretrained(path)`` and
  ``AutoTokenizer.from_pretrained(path)`` load it with no cloudlib import; :func:`load_authors_checkpoint` reads
  the authors' released layout (HF ``ChangwenXu/CLOUD``, ``subfolder="ckpt"``).
* :func:`build_encoder` gives the encoder a head sits on: pre-trained weights from a folder, or the same
  architecture randomly initialised (the pre-training ablation), or a size preset.
* The heads, all on the encoder's ``[CLS]`` state: :class:`CloudPredictor` (one property: dropout ->
  Linear(H, H) + SiLU -> Linear(H, 1), the authors' head), :class:`CloudDebye` (a Debye temperature through the
  differentiable Debye integral of :mod:`cloudlib.debye`), :class:`CurveRegressor` (Cv(T) with T as an input).
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from transformers import BertConfig, BertForMaskedLM

from .errors import ModelError
from .io import atomic_dir, verify_manifest, write_json, write_manifest


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

    def replace(self, **kw) -> CloudConfig:
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


@contextlib.contextmanager
def quiet_loading():
    """transformers' progress bars ("Loading weights", "Writing model shards") off, restored afterwards."""
    from transformers.utils import logging as hf_logging

    was = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was:
            hf_logging.enable_progress_bar()


def save(model, tokenizer, path: str | os.PathLike) -> Path:
    """save_pretrained (safetensors) of model and tokenizer into one folder, loadable by Auto* classes; the
    folder is replaced atomically."""
    path = Path(path)
    model = getattr(model, "module", model)  # unwrap DDP
    with atomic_dir(path) as tmp, quiet_loading():
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        write_manifest(tmp)
    return path


def export_encoder(source: str | os.PathLike, dest: str | os.PathLike, card: dict) -> Path:
    """Copy a saved encoder folder (:func:`save`) to ``dest`` with ``card`` as ``training_summary.json``; the
    destination is replaced atomically (a reader never sees half an encoder)."""
    source = Path(source)
    if not (source / "config.json").is_file():
        raise ModelError("not a saved model folder (no config.json)", str(source))
    with atomic_dir(dest) as tmp:
        for f in source.iterdir():
            if f.is_file() and f.name != "manifest.json":
                shutil.copy2(f, tmp / f.name)
        write_json(tmp / "training_summary.json", card)
        write_manifest(tmp)
    return Path(dest)


def load_mlm(path: str | os.PathLike, subfolder: str = ""):
    """(BertForMaskedLM, tokenizer) from a folder written by :func:`save` or in the authors' layout."""
    from transformers import AutoModelForMaskedLM

    from .tokenizer import from_bert_vocab, load_tokenizer

    folder = Path(path) / subfolder
    verify_manifest(folder, ("config.json",), kind="encoder")
    try:
        model = AutoModelForMaskedLM.from_pretrained(folder, attn_implementation="sdpa")
    except Exception as exc:  # truncated safetensors, garbage config.json ...
        raise ModelError(
            f"cannot load the encoder ({type(exc).__name__}: {' '.join(str(exc).split())[:300]})", str(folder)
        ) from exc
    if (folder / "tokenizer.json").exists():
        tok = load_tokenizer(folder)
    elif (folder / "vocab.txt").exists():
        tok = from_bert_vocab(folder, block_size=model.config.max_position_embeddings)
    else:
        raise ModelError("neither tokenizer.json nor vocab.txt", str(folder))
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


def encoder_kind(encoder: str) -> str:
    """What ``encoder`` names, checked before anything is trained: "preset" (a size preset), "folder" (a model
    folder, or the authors' layout with a ``ckpt`` subfolder) or "hub" (a Hugging Face repo id, ``owner/name``,
    fetched when used). Anything else is a :class:`ModelError` naming it."""
    from .paths import resolve

    if encoder in PRESETS or _SPEC.match(str(encoder)):
        return "preset"
    folder = resolve(encoder)
    if folder.is_dir():
        if not ((folder / "config.json").is_file() or (folder / "ckpt" / "config.json").is_file()):
            raise ModelError("not a model folder (no config.json, nor ckpt/config.json)", str(folder))
        return "folder"
    text = str(encoder)
    if text.count("/") == 1 and not folder.exists() and not text.startswith((".", "/", "~")) and all(text.split("/")):
        return "hub"
    raise ModelError(
        f"not a model folder, not a Hugging Face id (owner/name) and not a size preset ({sorted(PRESETS)})", text
    )


#: The files that make a model folder's encoder what it is (its config, with the dropout it trains with, and weights).
_IDENTITY_FILES = ("config.json", "model.safetensors", "pytorch_model.bin")


def encoder_fingerprint(encoder: str, pretrained: bool = True) -> dict[str, str] | None:
    """What a fit on ``encoder`` starts from, by content: ``{file: sha256}`` of a model folder's ``config.json`` and
    weights (``ckpt/`` in the authors' layout), so that saved fits and ensembles can tell a re-made encoder from
    the one they were trained from even when its path is the same. None when nothing is read from a folder (a size
    preset, a Hugging Face id, or ``pretrained=False``)."""
    from .paths import resolve
    from .registry import sha256_file

    if not pretrained or encoder_kind(encoder) != "folder":
        return None
    folder = resolve(encoder)
    if not (folder / "config.json").is_file():
        folder = folder / "ckpt"
    return {name: sha256_file(folder / name) for name in _IDENTITY_FILES if (folder / name).is_file()}


def build_encoder(encoder: str, pretrained: bool = True, seed: int = 0, dropout: float | None = None):
    """(BertModel without pooler, tokenizer) for fine-tuning.

    ``dropout`` (None: the encoder's own config) sets every dropout layer of the encoder to that p, attention's
    included (BERT passes its dropout layer's p to the attention function).

    ``encoder`` is a model folder (:func:`save` or the authors' layout, also as a ``ckpt`` subfolder), a Hugging
    Face repo id in the authors' layout (needs internet) or a size preset. With ``pretrained=False`` the folder's
    architecture is initialised at random (seeded by ``seed``): the pre-training ablation.
    """
    from transformers import BertModel

    from .paths import resolve

    kind = encoder_kind(encoder)
    if kind == "preset":
        if pretrained:
            raise ModelError(
                "is a size preset, which has no pre-trained weights; pass a model folder or pretrained=False", encoder
            )
        from .tokenizer import make_tokenizer

        size = preset(encoder)
        tok = make_tokenizer(block_size=size.block_size)
        config = bert_config(size, tok)
    else:
        folder = resolve(encoder)
        if kind == "folder":
            sub = "ckpt" if (folder / "ckpt" / "config.json").exists() and not (folder / "config.json").exists() else ""
            with quiet_loading():
                mlm, tok = load_mlm(folder, sub)
        else:
            mlm, tok = load_authors_checkpoint(str(encoder))  # a Hugging Face repo id
        if pretrained:
            bert = mlm.bert
            bert.config._attn_implementation = "sdpa"
            return set_dropout(bert, dropout), tok
        config = mlm.config
        del mlm
    config._attn_implementation = "sdpa"
    torch.manual_seed(seed)
    return set_dropout(BertModel(config, add_pooling_layer=False), dropout), tok


def set_dropout(module: nn.Module, p: float | None) -> nn.Module:
    """``module`` with every dropout layer at ``p`` (None: unchanged), in place. BERT's attention reads its
    probability from its dropout layer, so this covers attention too; the saved config is not changed."""
    if p is not None:
        for m in module.modules():
            if isinstance(m, nn.Dropout):
                m.p = float(p)
    return module


# --------------------------------------------------------------------------- heads


def fp32(head: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``head(x)`` in float32 with autocast off: under bf16 autocast the encoder runs in bf16, but a head's
    output (a standardised property, a Debye temperature) keeps float32 resolution."""
    with torch.autocast(x.device.type, enabled=False):
        return head(x.float())


class CloudPredictor(nn.Module):
    """BERT encoder ([CLS] state) -> dropout -> Linear(H, H) -> SiLU -> Linear(H, 1).

    ``forward`` returns ``[B]`` raw outputs: standardised target units for regression, logits for
    classification.
    """

    def __init__(self, encoder: nn.Module, dropout: float = 0.1):
        super().__init__()
        self.encoder = encoder
        h = encoder.config.hidden_size
        self.head = nn.Sequential(nn.Dropout(dropout), nn.Linear(h, h), nn.SiLU(), nn.Linear(h, 1))

    @property
    def block_size(self) -> int:
        return int(self.encoder.config.max_position_embeddings)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state[:, 0]
        return fp32(self.head, hidden).squeeze(-1)


THETA_MAPS = ("log", "paper")


def paper_theta(h: torch.Tensor) -> torch.Tensor:
    """The paper's map from the head's output to a Debye temperature, Θ = 1200 h + 1500 K (unclamped)."""
    return 1200.0 * h + 1500.0


class CloudDebye(nn.Module):
    """Encoder -> head -> h -> Θ(h) (K). ``forward`` returns Θ (float64), shape [B]; :mod:`cloudlib.debye`
    turns Θ into Cv(T), U(T) for any T.

    ``parameterisation="log"``: Θ = exp(μ + σ h) with μ, σ the mean / std of log Θ of the training labels
    (positive, and h ~ N(0, 1) already spans the training distribution). ``"paper"``: the paper's
    :func:`paper_theta`, clamped at 1 K because Θ <= 0 has no Debye curve.
    """

    def __init__(
        self,
        encoder: nn.Module,
        dropout: float = 0.1,
        log_theta_mean: float = math.log(400.0),
        log_theta_std: float = 0.5,
        parameterisation: str = "log",
    ):
        super().__init__()
        if parameterisation not in THETA_MAPS:
            raise ValueError(f"parameterisation must be one of {THETA_MAPS}, got {parameterisation!r}")
        self.net = CloudPredictor(encoder, dropout)
        self.parameterisation = parameterisation
        self.register_buffer("mu", torch.tensor(float(log_theta_mean), dtype=torch.float64))
        self.register_buffer("sigma", torch.tensor(float(log_theta_std), dtype=torch.float64))

    @property
    def encoder(self) -> nn.Module:
        return self.net.encoder

    @property
    def head(self) -> nn.Module:
        return self.net.head

    def raw(self, input_ids, attention_mask) -> torch.Tensor:
        """The head's output h (float64)."""
        return self.net(input_ids, attention_mask).double()

    def theta_of(self, h: torch.Tensor) -> torch.Tensor:
        """Θ (K) of head outputs h: the parameterisation's map."""
        if self.parameterisation == "log":
            return torch.exp(self.mu + self.sigma * h)
        return paper_theta(h).clamp_min(1.0)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.theta_of(self.raw(input_ids, attention_mask))


class CurveRegressor(nn.Module):
    """Encoder [CLS] and features of T -> dropout -> Linear + SiLU -> Linear -> Cv(T) / 3NR, shape [B, K]."""

    def __init__(self, encoder: nn.Module, dropout: float = 0.1):
        super().__init__()
        self.encoder = encoder
        h = encoder.config.hidden_size
        self.head = nn.Sequential(nn.Dropout(dropout), nn.Linear(h + 3, h), nn.SiLU(), nn.Linear(h, 1))

    @staticmethod
    def t_features(T: torch.Tensor) -> torch.Tensor:
        x = torch.log(T.float() / 300.0)
        return torch.stack([x, x * x / 4.0, torch.exp(-T.float() / 100.0)], dim=-1)  # [K, 3]

    def forward(self, input_ids, attention_mask, T: torch.Tensor) -> torch.Tensor:
        cls = self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state[:, 0]
        f = self.t_features(T.to(cls.device))
        b, k = cls.shape[0], f.shape[0]
        z = torch.cat([cls[:, None, :].expand(b, k, -1).float(), f[None].expand(b, k, -1).float()], dim=-1)
        return fp32(self.head, z).squeeze(-1)


class CloudDebyeEinstein(nn.Module):
    """Encoder -> head -> a Debye + ``n_einstein`` Einstein phonon spectrum per crystal (:func:`cloudlib.debye.
    mixture_thermodynamics`): Θ_D, Θ_E,i and the shares w of the 3N modes. ``forward`` returns the packed
    parameters [B, 2 + 2m] (float64): Θ_D, Θ_E,1..m, w_0..w_m; :meth:`unpack` splits them.

    Θ_D = exp(μ + σ h_0) as in :class:`CloudDebye`; Θ_E,i = exp(μ + c_i + σ h_i) with fixed offsets c_i spread
    over [log 1.2, log 3] (optical modes sit above the Debye temperature, and distinct offsets break the symmetry
    between the Einstein terms); w = softmax(g + b) with b giving the Debye term half the modes at h = 0.
    """

    def __init__(
        self,
        encoder: nn.Module,
        dropout: float = 0.1,
        log_theta_mean: float = math.log(400.0),
        log_theta_std: float = 0.5,
        n_einstein: int = 2,
    ):
        super().__init__()
        if n_einstein < 1:
            raise ValueError(f"n_einstein must be >= 1, got {n_einstein}")
        self.encoder = encoder
        h = encoder.config.hidden_size
        self.n_einstein = int(n_einstein)
        self.head = nn.Sequential(nn.Dropout(dropout), nn.Linear(h, h), nn.SiLU(), nn.Linear(h, 2 + 2 * n_einstein))
        self.register_buffer("mu", torch.tensor(float(log_theta_mean), dtype=torch.float64))
        self.register_buffer("sigma", torch.tensor(float(log_theta_std), dtype=torch.float64))
        offsets = torch.linspace(math.log(1.2), math.log(3.0), n_einstein, dtype=torch.float64)
        self.register_buffer("offsets", offsets)
        bias = torch.full((n_einstein + 1,), math.log(0.5 / n_einstein), dtype=torch.float64)
        bias[0] = math.log(0.5)
        self.register_buffer("weight_bias", bias)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        cls = self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state[:, 0]
        z = fp32(self.head, cls).double()
        m = self.n_einstein
        theta_d = torch.exp(self.mu + self.sigma * z[:, :1])
        theta_e = torch.exp(self.mu + self.offsets + self.sigma * z[:, 1 : 1 + m])
        w = torch.softmax(z[:, 1 + m :] + self.weight_bias, dim=-1)
        return torch.cat([theta_d, theta_e, w], dim=-1)

    def unpack(self, params: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(Θ_D [B], Θ_E [B, m], w [B, m + 1]) from :meth:`forward`'s output."""
        m = self.n_einstein
        return params[:, 0], params[:, 1 : 1 + m], params[:, 1 + m :]
