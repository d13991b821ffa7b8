"""Every setting of every step, in one place: one config dataclass per step and its named presets.

Vocabulary (used the same way everywhere in the project):

* a **preset** is a named configuration of one step, ``PRESETS[step][name]``; :func:`preset` returns it with
  overrides applied (an unknown field is an error, never ignored);
* a **profile** (``smoke`` / ``laptop`` / ``paper``) is a run of the main job: ``params/<profile>.yaml`` names,
  per notebook, the preset to use plus run-size parameters, and the profile decides where outputs go.

The steps and their dataclasses:

=========  =====================  ==================================================================
step       dataclass              what it configures
=========  =====================  ==================================================================
pretrain   :class:`PretrainConfig`  MLM pre-training of the encoder (:mod:`cloudlib.pretrain`)
finetune   :class:`FinetuneConfig`  a property head on the encoder (:mod:`cloudlib.finetune`, MatBench)
debye      :class:`FinetuneConfig`  CLOUD-DEBYE and its direct-regression baseline (:mod:`cloudlib.cloud_debye`)
curves     :class:`FinetuneConfig`  the direct multi-temperature Cv(T) regressor
sweep      :class:`SweepConfig`     the (N, D) pre-training grid of the scaling study (:mod:`cloudlib.sweep`)
=========  =====================  ==================================================================

:class:`TrainConfig` holds the fields the training engine (:mod:`cloudlib.engine`) reads; the pre-training and
fine-tuning configs extend it. Results files record ``config.to_dict()`` of what actually ran.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from .errors import ConfigError

#: Default largest number of atoms in the cell given to spglib (and the most a CIF may describe before it is
#: parsed). MatBench crystals have at most a few hundred atoms; the largest structures of the offline corpus
#: are CoRE MOF 2019 cells of up to 10,560 atoms (LAFRAN01, RIVDEH, RIVDIL: P1 CIFs of 10,560 atom-site rows).
#: Above this, pymatgen's CIF parser and spglib take many minutes per structure.
MAX_ATOMS = 20_000

#: Default per-structure time limit (seconds) when a batch runs in worker processes (:func:`cloudlib.scope.scope_table`).
STRUCTURE_TIMEOUT = 600.0

TASKS = ("regression", "classification")
PRECISIONS = ("auto", "bf16", "fp32")


def check_precision(precision: str) -> str:
    """``precision`` if it is one of :data:`PRECISIONS`, else :class:`ConfigError` naming it."""
    if precision not in PRECISIONS:
        raise ConfigError(f"precision must be one of {PRECISIONS}, got {precision!r}", "precision")
    return precision


class _Config:
    """Shared behaviour of the config dataclasses."""

    #: Fields added after results and caches were committed, with the value that means "as before": ``to_dict``
    #: leaves a field out while it has that value, so a config that does not use it has the same record (and the
    #: same cache keys) as before the field existed, and :func:`from_dict` fills it in for records without it.
    _ADDED: dict[str, Any] = {}  # noqa: RUF012 (a class attribute, not a field: no annotation in subclasses)

    def replace(self, **kw):
        """A copy with fields changed; an unknown field raises :class:`ConfigError` naming the known ones."""
        check_fields(type(self), kw)
        return dataclasses.replace(self, **kw)

    def to_dict(self) -> dict[str, Any]:
        """The fields as JSON holds them (tuples as lists), so a saved config compares equal to the live one."""
        return {
            k: list(v) if isinstance(v, tuple) else v
            for k, v in dataclasses.asdict(self).items()
            if not (k in self._ADDED and v == self._ADDED[k])
        }


def check_fields(cls, values: dict) -> None:
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ConfigError(f"unknown field(s) {unknown}; {cls.__name__} has {sorted(known)}", cls.__name__)


@dataclass
class TrainConfig(_Config):
    """What the training engine reads. Steps count optimizer updates; evaluations happen every ``eval_every``
    steps (``None``: at the end of every epoch) and at the last step."""

    epochs: float = 1.0  # may be fractional; max_steps wins when set
    max_steps: int | None = None
    batch_size: int = 64  # per rank
    lr: float = 1e-3
    weight_decay: float = 0.0
    warmup_ratio: float = 0.05  # linear warm-up over this share of the steps, then cosine to zero
    grad_clip: float | None = 1.0  # max gradient norm (None: no clipping)
    seed: int = 0  # data order, masks, dropout, initialisation and validation rows all derive from it
    bucket_batches: int = 50  # length-sort within windows of this many batches (0 = no bucketing)
    val_fraction: float = 0.2  # validation rows carved out of the training data (seeded); 0 = none
    eval_every: int | None = None  # steps between evaluations (None: once per epoch)
    ckpt_every: int | None = None  # steps between checkpoints when a checkpoint folder is given (None: each eval)
    patience: int | None = None  # evaluations without improvement before stopping (None: never stop early)
    threads: int | None = None  # torch CPU threads per process (None: all cores / local ranks)
    precision: str = "auto"  # "auto": bf16 autocast on CUDA and bf16-capable CPUs, else fp32 (engine.resolve_precision)

    def __post_init__(self):
        check_precision(self.precision)
        if not 0.0 <= self.val_fraction < 1.0:
            raise ConfigError(f"val_fraction must be in [0, 1), got {self.val_fraction}", "val_fraction")
        if self.batch_size < 1:
            raise ConfigError(f"batch_size must be >= 1, got {self.batch_size}", "batch_size")


@dataclass
class PretrainConfig(TrainConfig):
    """Masked-language-model pre-training (saved with every checkpoint and in ``config.json``)."""

    model: str = "tiny"  # a size preset of cloudlib.model.PRESETS or a spec "L{layers}xD{width}"
    eval_every: int | None = 100
    ckpt_every: int | None = 100
    mlm_probability: float = 0.15
    eval_max_strings: int | None = 4096  # validation strings per evaluation (None = all)
    dropout: float = 0.1
    corpus_limit: int | None = None  # crystals per corpus source (smoke runs)
    max_train_strings: int | None = None  # the first N strings of the seeded training split (data-scaling sweeps)
    augment: int = 1  # copies of each training string: itself + (augment - 1) equivalent orders (scope_variants)
    holdout: tuple[str, ...] = ()  # corpus sources whose every string is left out (e.g. matbench_dielectric)

    def __post_init__(self):
        super().__post_init__()
        if self.augment < 1:
            raise ConfigError(f"augment must be >= 1, got {self.augment}", "augment")


@dataclass
class FinetuneConfig(TrainConfig):
    """A head on the encoder's [CLS] state (property prediction, CLOUD-DEBYE, the Cv(T) regressor)."""

    encoder: str = "models/cloud-laptop"  # a model folder, a size preset (random init) or "ChangwenXu/CLOUD"
    pretrained: bool = True  # False: same architecture as ``encoder``, random initialisation (the ablation)
    task: str = "regression"  # or "classification" (targets 0/1, BCE loss, probabilities out)
    epochs: float = 6
    batch_size: int = 32
    lr: float = 1e-4  # encoder
    head_lr: float | None = 1e-3  # the MLP head (None: same as lr)
    layer_decay: float | None = None  # layer-wise lr decay (the authors' utils/LLRD.py): of L encoder layers,
    # layer i trains at lr * layer_decay**(L-1-i) and the embeddings at lr * layer_decay**L; None: lr for all
    weight_decay: float = 0.01
    dropout: float = 0.1  # before the head (the encoder keeps its own config's dropout)
    val_fraction: float = 0.1
    bucket_batches: int = 20
    eval_batch_size: int = 256
    augment: int = 1  # copies of each training row: its string + (augment - 1) equivalent orders (scope_variants)
    tta: int = 1  # validation and predictions: the mean over the string and (tta - 1) equivalent orders
    encoder_dropout: float | None = None  # every dropout layer of the encoder at this p in training (attention's
    # included); None: what the encoder's own config says (0.1 for models/cloud-laptop)

    _ADDED = {"encoder_dropout": None}

    def __post_init__(self):
        super().__post_init__()
        if self.encoder_dropout is not None and not 0.0 <= self.encoder_dropout < 1.0:
            raise ConfigError(
                f"encoder_dropout must be in [0, 1) or None, got {self.encoder_dropout}", "encoder_dropout"
            )
        for name in ("augment", "tta"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}", name)
        if self.task not in TASKS:
            raise ConfigError(f"task must be one of {TASKS}, got {self.task!r}", "task")
        if self.layer_decay is not None and not 0.0 < self.layer_decay <= 1.0:
            raise ConfigError(f"layer_decay must be in (0, 1] or None, got {self.layer_decay}", "layer_decay")


@dataclass(frozen=True)
class SweepConfig(_Config):
    """A grid of pre-training runs (model sizes x data sizes). ``data_sizes`` count unique training strings
    (None = the whole training split)."""

    models: tuple[str, ...]  # presets or "L{layers}xD{width}" specs (cloudlib.model.preset)
    data_sizes: tuple[int | None, ...]
    epochs: float = 3.0
    min_steps: int = 300
    batch_size: int = 64
    lr: float = 2e-3
    warmup_ratio: float = 0.05
    evals: int = 6  # validation evaluations per run (the best one is the run's loss)
    eval_max_strings: int | None = 2048  # the fixed validation set (None = the whole validation split)
    val_fraction: float = 0.2
    seed: int = 0
    corpus_limit: int | None = None  # crystals per corpus source (smoke)


# --------------------------------------------------------------------------- the presets

_PRETRAIN = {
    # seconds: a tiny model on a slice of the corpus
    "smoke": PretrainConfig(
        model="tiny",
        max_steps=60,
        batch_size=32,
        lr=2e-3,
        eval_every=30,
        ckpt_every=20,
        corpus_limit=150,
        eval_max_strings=512,
    ),
    # the README's main job on 2 CPU cores: a few minutes (800 steps: ~1.7 epochs of the ~60 k-string corpus; the
    # shipped encoder is the "long" preset's); no dropout: the long recipe without it reached a lower validation
    # loss (0.432 vs 0.446, data/encoder_candidates/long-do0) at a faster step (issue 24)
    "laptop": PretrainConfig(
        model="small",
        epochs=4,
        max_steps=800,
        batch_size=128,
        lr=1e-3,
        eval_every=100,
        ckpt_every=100,
        eval_max_strings=4096,
        dropout=0.0,
    ),
    # the shipped encoder (models/cloud-laptop): trained once, for longer, on 1 CPU thread (bit-reproducible on
    # the machine kind that made it); size from notebook 04's compute-optimal N(C) for that budget (see
    # models/cloud-laptop/training_summary.json); 5 % validation strings; resumable (--resume)
    "long": PretrainConfig(
        model="L4xD128",
        epochs=42,
        batch_size=128,
        lr=1e-3,
        val_fraction=0.05,
        eval_every=500,
        ckpt_every=250,
        eval_max_strings=None,
        precision="bf16",
        threads=1,
    ),
    # the paper (config_pretrain.yaml): BERT-base, batch 1024, lr 1e-4, cosine, 5 % warm-up, 50 epochs
    "paper": PretrainConfig(
        model="base",
        epochs=50,
        batch_size=1024,
        lr=1e-4,
        weight_decay=0.0,
        warmup_ratio=0.05,
        eval_every=2000,
        ckpt_every=2000,
        eval_max_strings=None,
    ),
}

_FINETUNE = {
    # seconds to a few minutes: the shipped encoder, 2 epochs (MatBench smoke runs need a pre-trained encoder)
    "smoke": FinetuneConfig(
        encoder="models/cloud-laptop", epochs=2, batch_size=32, lr=1e-3, head_lr=1e-3, val_fraction=0.2
    ),
    # the paper's recipe adapted to a CPU, every choice made on fold-0 validation rows (data/recipe/README.md):
    # up to 20 epochs with early stopping on the 10 % validation rows (patience 6), layer-wise lr decay 0.8, each
    # training string plus one equivalent order (augment=2); test-time averaging did not help the shipped
    # encoder on validation (tta=1); no dropout in the encoder (4 % lower validation MAE over two seeds, and a
    # faster step: issue 24). ~3,400 training strings, shipped 4 x 128 encoder: ~2-3 min per fit on 1 thread
    "laptop": FinetuneConfig(
        encoder="models/cloud-laptop",
        epochs=20,
        batch_size=64,
        lr=2e-4,
        head_lr=1e-3,
        weight_decay=0.01,
        warmup_ratio=0.05,
        val_fraction=0.1,
        patience=6,
        layer_decay=0.8,
        augment=2,
        tta=1,
        encoder_dropout=0.0,
    ),
    # the authors' config.yaml: 200 epochs, AdamW lr 5e-5 (one lr for all), weight decay 0.01, 10 warm-up
    # epochs (5 %), cosine to ~0, batch 512, dropout 0.1, no gradient clipping, valid_size 0.25. The encoder is
    # the one notebook 02 pre-trains in the paper profile; encoder="ChangwenXu/CLOUD" takes the released weights.
    "paper": FinetuneConfig(
        encoder="results/cloud-paper",  # what notebook 02 exports in the paper profile (ship it: cloudlib ship)
        epochs=200,
        batch_size=512,
        lr=5e-5,
        head_lr=None,
        weight_decay=0.01,
        warmup_ratio=0.05,
        dropout=0.1,
        val_fraction=0.25,
        patience=None,
        grad_clip=None,
    ),
}

# CLOUD-DEBYE and its direct-regression baseline: the fine-tuning recipe of each profile, adapted
_DEBYE = {
    # seconds: a random tiny encoder
    "smoke": _FINETUNE["smoke"].replace(encoder="tiny", pretrained=False, epochs=3),
    # ~1,100 training strings with the shipped encoder on 2 CPU cores: ~1 min per model. Its own recipe, chosen on
    # validation rows only (data/debye_recipe: 40 epochs at batch 16 lowered the validation MAE of Cv(300 K) from
    # 3.56 to 3.09 J/(K mol), mean of 2 seeds; the dielectric recipe's LLRD was worse here, and the Cv heads take
    # no string augmentation)
    "laptop": FinetuneConfig(
        encoder="models/cloud-laptop",
        epochs=40,
        batch_size=16,
        lr=3e-4,
        head_lr=1e-3,
        weight_decay=0.01,
        warmup_ratio=0.05,
        val_fraction=0.1,
        patience=None,
    ),
    # the authors' fine-tuning recipe on the paper-profile encoder
    "paper": _FINETUNE["paper"].replace(batch_size=64),
}

# the direct multi-temperature regressor: CLOUD-DEBYE's recipe with its own number of epochs
_CURVES = {name: cfg.replace(epochs=epochs) for (name, cfg), epochs in zip(_DEBYE.items(), (3, 40, 200))}

_SWEEP = {
    # seconds: 5 x 4 very small runs on a slice of the corpus (checks the machinery, not the science)
    "smoke": SweepConfig(
        models=("L1xD16", "L1xD24", "L1xD32", "L2xD32", "L2xD48"),
        data_sizes=(150, 300, 600, None),
        epochs=1.0,
        min_steps=12,
        batch_size=32,
        evals=2,
        eval_max_strings=256,
        corpus_limit=150,
    ),
    # the README's main job reads this grid from data/sweep/laptop (trained once: scripts/ship_sweep.py, ~25 min
    # on 2 cores): 6 sizes (3.7 k - 810 k non-embedding parameters, 2.3 decades, up to the shipped encoder's
    # 4 x 128) x 6 data sizes (450 strings to the whole 45.7 k-string training split, 2.0 decades), 3 epochs each
    "laptop": SweepConfig(
        models=("L1xD16", "L1xD32", "L2xD48", "L2xD80", "L3xD96", "L4xD128"),
        data_sizes=(450, 1100, 2800, 7000, 18000, None),
        epochs=3.0,
        min_steps=20,
    ),
    # a GPU machine: up to the paper's BERT-base (85 M), 3 decades of N, longer schedules
    "paper": SweepConfig(
        models=("L2xD128", "mini", "small", "L6xD384", "medium", "base"),
        data_sizes=(2000, 4000, 8000, 16000, None),
        epochs=20.0,
        min_steps=2000,
        batch_size=256,
        lr=5e-4,
        evals=10,
        eval_max_strings=None,
    ),
}

PRESETS: dict[str, dict[str, Any]] = {
    "pretrain": _PRETRAIN,
    "finetune": _FINETUNE,
    "debye": _DEBYE,
    "curves": _CURVES,
    "sweep": _SWEEP,
}


def preset(step: str, name: str, **overrides):
    """The ``name`` preset of ``step`` with ``overrides`` applied (a fresh copy; presets are never mutated).

    Raises :class:`ConfigError` for an unknown step, preset or field.
    """
    if step not in PRESETS:
        raise ConfigError(f"unknown step {step!r}; steps: {sorted(PRESETS)}", step)
    if name not in PRESETS[step]:
        raise ConfigError(f"unknown {step} preset {name!r}; presets: {sorted(PRESETS[step])}", name)
    return PRESETS[step][name].replace(**overrides)


def from_dict(cls, values: dict):
    """A config of class ``cls`` from a saved ``to_dict()`` (fields it no longer has are an error)."""
    check_fields(cls, values)
    if cls is SweepConfig:
        values = {**values, "models": tuple(values["models"]), "data_sizes": tuple(values["data_sizes"])}
    if cls is PretrainConfig and "holdout" in values:
        values = {**values, "holdout": tuple(values["holdout"])}
    return cls(**values)


def changed_fields(saved: dict, now) -> dict[str, tuple[Any, Any]]:
    """``{field: (saved value, current value)}`` for every field where a saved ``to_dict()`` record differs from the
    config ``now`` (fields added later count at the value that means "as before"): what a committed result was made
    with that the current preset no longer says."""
    before = from_dict(type(now), saved)
    return {
        f.name: (getattr(before, f.name), getattr(now, f.name))
        for f in dataclasses.fields(now)
        if getattr(before, f.name) != getattr(now, f.name)
    }
