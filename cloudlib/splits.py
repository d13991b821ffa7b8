"""How rows are split: the one seeded train/validation split, and out-of-distribution groupings.

* :func:`seeded_split` -- every random split of the project (pre-training validation strings, the validation
  rows fine-tuning carves out of its training data, held-out test crystals): one rule, one RNG.
* :func:`seeded_kfold` -- a seeded k-fold partition (the offline multi-task table's folds).
* :func:`leave_cluster_out_splits` -- leave one group out (a crystal system, an anion family), with
  :func:`chemical_family` as one such grouping.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np
import pandas as pd


def seeded_split(n: int, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Positions ``(kept, held_out)`` of ``n`` rows: a seeded random permutation (torch's ``randperm``), of
    which the first ``round(fraction * n)`` are held out (at least one when ``fraction > 0`` and ``n > 1``).

    Both arrays are in the permutation's order, so ``kept[:k]`` is a random subset of size k; sort them when
    row order matters. Disjoint, together covering 0..n-1, and a pure function of (n, fraction, seed).
    """
    import torch

    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"fraction must be in [0, 1), got {fraction}")
    g = torch.Generator().manual_seed(int(seed))
    perm = torch.randperm(int(n), generator=g).numpy()
    n_out = int(round(fraction * n))
    if fraction > 0 and n_out == 0 and n > 1:
        n_out = 1
    return perm[n_out:], perm[:n_out]


def seeded_kfold(ids: Sequence, k: int = 5, seed: int = 0) -> list[tuple[list, list]]:
    """``[(train_ids, test_ids), ...]`` for ``k`` folds of ``ids``: a seeded random partition into ``k`` test sets of
    near-equal size (numpy's ``default_rng(seed).permutation``, cut by ``array_split``; the rule that made the
    committed multi-task table, so it stays numpy's and not :func:`seeded_split`'s torch permutation). Test ids
    keep the order of ``ids``, training ids too; the test sets are disjoint and cover ``ids``."""
    if k < 2:
        raise ValueError(f"k must be >= 2, got {k}")
    n = len(ids)
    if n < k:
        raise ValueError(f"{n} ids cannot make {k} folds")
    chunks = np.array_split(np.random.default_rng(seed).permutation(n), k)
    out = []
    for chunk in chunks:
        test = np.zeros(n, dtype=bool)
        test[chunk] = True
        out.append(([ids[i] for i in range(n) if not test[i]], [ids[i] for i in range(n) if test[i]]))
    return out


def leave_cluster_out_splits(groups: pd.Series, min_size: int = 1) -> list[tuple[str, list, list]]:
    """Leave-one-cluster-out splits: ``[(group, train_ids, test_ids), ...]``, groups sorted by name.

    ``groups`` maps id -> group label. Every group with at least ``min_size`` members is the test set once,
    with all other ids as training set. Ids in smaller groups, or with a missing (NaN) label, are never
    tested but always trained on, so every split covers all ids. Ids keep the order of ``groups``.
    """
    if not isinstance(groups, pd.Series):
        raise TypeError("groups must be a pandas Series id -> group")
    if groups.index.has_duplicates:
        raise ValueError("groups has duplicate ids")
    if min_size < 1:
        raise ValueError("min_size must be >= 1")
    counts = groups.dropna().value_counts()
    names = sorted(g for g, n in counts.items() if n >= min_size)
    ids = groups.index
    out = []
    for g in names:
        mask = (groups == g).to_numpy()
        out.append((str(g), list(ids[~mask]), list(ids[mask])))
    return out


#: Anion families by the most electronegative element (Pauling), see :func:`chemical_family`.
ANION_FAMILIES = {
    "F": "fluoride",
    "O": "oxide",
    "S": "chalcogenide",
    "Se": "chalcogenide",
    "Te": "chalcogenide",
    "Cl": "halide",
    "Br": "halide",
    "I": "halide",
    "N": "pnictide",
    "P": "pnictide",
    "As": "pnictide",
    "Sb": "pnictide",
    "Bi": "pnictide",
}


def chemical_family(item) -> str:
    """Anion family of a compound: the family of its most electronegative element (Pauling scale).

    ``fluoride`` (F), ``oxide`` (O), ``chalcogenide`` (S, Se, Te), ``halide`` (Cl, Br, I), ``pnictide``
    (N, P, As, Sb, Bi), else ``other`` (hydrides, carbides, borides, intermetallics, single elements). So an
    oxyfluoride counts as a fluoride and a hydroxide as an oxide. ``item``: formula, Composition or Structure.
    Use it as a grouping for :func:`leave_cluster_out_splits`.
    """
    from .features import as_composition

    comp = as_composition(item)
    els = [e for e in comp.elements if getattr(e, "symbol", None)]
    if len(els) < 2:
        return "other"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pymatgen warns for elements without a Pauling value
        scored = [(float(e.X), e.symbol) for e in els if not np.isnan(float(e.X))]
    if not scored:
        return "other"
    _, symbol = max(scored)
    return ANION_FAMILIES.get(symbol, "other")
