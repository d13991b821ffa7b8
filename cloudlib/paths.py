"""Where things live: repository root, data cache, per-profile output folders, model paths."""

from __future__ import annotations

import os
from pathlib import Path

#: Run profiles of the main job (`params/<profile>.yaml`); see :mod:`cloudlib.config` for presets.
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


def resolve(path: str | os.PathLike) -> Path:
    """A path as given when it exists (or is absolute), else the same path under the repository root when that
    exists (so ``models/cloud-laptop`` works from the notebooks' folder too), else the path as given."""
    p = Path(path)
    if p.exists() or p.is_absolute():
        return p
    alt = repo_root() / p
    return alt if alt.exists() else p


def display(path: str | os.PathLike) -> str:
    """``path`` relative to the repository root when it lies inside it (what results files record), else as is."""
    p = Path(path)
    try:
        return str(p.resolve().relative_to(repo_root()))
    except ValueError:
        return str(path)
