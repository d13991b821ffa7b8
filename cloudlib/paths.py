"""Where things live: repository root, data cache, per-profile output folders."""
from __future__ import annotations

import os
from pathlib import Path

PROFILES = ("smoke", "laptop", "paper")


def repo_root() -> Path:
    """The project root: ``$CLOUD_HOME``, else the checkout that holds this package, else the cwd."""
    env = os.environ.get("CLOUD_HOME")
    if env:
        return Path(env).resolve()
    here = Path(__file__).resolve().parent.parent
    if (here / "pyproject.toml").exists() and (here / "cloudlib").is_dir():
        return here
    return Path.cwd()


def data_dir() -> Path:
    return repo_root() / "data"


def cache_dir() -> Path:
    """Download cache (``$CLOUD_CACHE`` or ``data/cache``)."""
    env = os.environ.get("CLOUD_CACHE")
    return Path(env).resolve() if env else data_dir() / "cache"


def derived_dir() -> Path:
    """Products computed from cached data (SCOPE tables, corpora), safe to delete."""
    return data_dir() / "derived"


def output_dirs(profile: str = "smoke") -> tuple[Path, Path]:
    """(figures, results) folders for a run profile, created on demand.

    laptop and paper write to ``figures/`` and ``results/``; smoke runs (nbval, a quick "Run All")
    write to ``figures/smoke`` and ``results/smoke`` so they never overwrite real figures.
    """
    if profile not in PROFILES:
        raise ValueError(f"profile must be one of {PROFILES}, got {profile!r}")
    root = repo_root()
    sub = ("smoke",) if profile == "smoke" else ()
    figs, res = root.joinpath("figures", *sub), root.joinpath("results", *sub)
    figs.mkdir(parents=True, exist_ok=True)
    res.mkdir(parents=True, exist_ok=True)
    return figs, res
