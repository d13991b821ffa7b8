"""What SCOPE strings show about a dataset (notebook 01): exactness against reference strings, token lengths,
space-group coverage, and the collisions that set a floor on any SCOPE-only model's error.

* :func:`compare_strings` -- ours vs reference strings, row by row;
* :func:`token_lengths` / :func:`length_stats` -- tokens per string (with [CLS]/[SEP]) and their summary;
* :func:`spacegroups` / :func:`top_spacegroups_by_source` -- which symmetries a set of strings covers;
* :func:`collisions` -- structures that share one string, their target spread and the MAE floor.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from .scope import parse_scope


def compare_strings(ours: pd.DataFrame, reference: pd.Series) -> dict:
    """Row-by-row comparison of ``ours`` (a :func:`~cloudlib.scope.scope_table` frame: columns scope, error)
    with ``reference`` strings on the same index: rows, identical, mismatches, errors, and the ids of the
    first mismatches (``mismatch_ids``, at most 20)."""
    ref = reference.reindex(ours.index)
    same = ours["scope"] == ref
    return {
        "rows": int(len(ours)),
        "identical": int(same.sum()),
        "mismatches": int((~same).sum()),
        "errors": int(ours["error"].notna().sum()),
        "mismatch_ids": [str(i) for i in ours.index[~same][:20]],
    }


def token_lengths(tokenizer, strings) -> np.ndarray:
    """Tokens per string including [CLS] and [SEP], with no block-size limit (so over-long strings count too)."""
    return np.array([len(tokenizer(s, truncation=True, max_length=100_000)["input_ids"]) for s in strings])


def length_stats(lengths, block_size: int = 64) -> dict:
    """Mean, median and max of token counts, and how many exceed ``block_size``."""
    lengths = np.asarray(lengths)
    return {
        "mean": round(float(lengths.mean()), 1),
        "median": int(np.median(lengths)),
        "max": int(lengths.max()),
        f"over_{block_size}": int((lengths > block_size).sum()),
    }


def spacegroups(strings) -> pd.Series:
    """Space-group number of each SCOPE string (the 230 generator strings are distinct)."""
    index = strings.index if isinstance(strings, pd.Series) else None
    return pd.Series([parse_scope(s)["spacegroup"] for s in strings], index=index)


def top_spacegroups_by_source(corpus: pd.DataFrame, k: int = 6) -> pd.DataFrame:
    """The ``k`` most common space groups of a deduplicated corpus (index = strings, column ``source``): unique
    strings per source and group, with a ``total`` column."""
    groups = spacegroups(list(corpus.index)).to_numpy()
    table = corpus.assign(spacegroup=groups).pivot_table(
        index="spacegroup", columns="source", values="count", aggfunc="size", fill_value=0
    )
    table = table.loc[table.sum(axis=1).nlargest(k).index]
    return table.assign(total=table.sum(axis=1))


def collisions(table: pd.DataFrame, target: str) -> tuple[pd.DataFrame, pd.DataFrame, dict]:
    """Structures whose SCOPE strings coincide, and what that costs a model that reads only SCOPE.

    ``table`` has one row per structure with columns ``scope`` and ``target``. Within a group of structures
    sharing a string any SCOPE-only model must predict one value; under L1 the best is the group median, so the
    mean |target - group median| is a floor on such a model's MAE. Returns ``(members, groups, stats)``: the
    colliding rows (with ``group_size``), one row per group (size, min, max, std, range of the target) and a
    summary (counts, largest group, median range, the MAE floor over all rows and over colliding rows, the MAD
    of the target for scale).
    """
    by = table.groupby("scope")[target]
    size = by.transform("size")
    members = table[size > 1].assign(group_size=size[size > 1])
    groups = (
        members.groupby("scope")[target].agg(["size", "min", "max", "std"]).assign(range=lambda d: d["max"] - d["min"])
    )
    floor = (table[target] - by.transform("median")).abs()
    stats = {
        "structures": int(len(table)),
        "distinct_strings": int(table["scope"].nunique()),
        "structures_in_collisions": int(len(members)),
        "collision_groups": int(len(groups)),
        "largest_group": int(groups["size"].max()) if len(groups) else 1,
        f"median_range_{target}_in_groups": round(float(groups["range"].median()), 3) if len(groups) else 0.0,
        "mae_floor_all": round(float(floor.mean()), 4),
        "mae_floor_collided": round(float(floor[size > 1].mean()), 4) if len(members) else 0.0,
        f"mad_{target}": round(float((table[target] - table[target].mean()).abs().mean()), 4),
    }
    return members, groups, stats


def rattled_variants(structure, n: int = 20, amplitude: float = 0.002) -> pd.Series:
    """How often each Wyckoff section comes out when ``structure`` is rattled by ``amplitude`` Å (far below
    SCOPE's symprec of 0.01 Å), ``n`` times with seeds 0..n-1: spglib's origin choice, not the crystal, decides
    between equivalent Wyckoff letter assignments. Returns counts by Wyckoff section; raises if a rattled copy
    changes space group."""
    from .scope import structure_to_scope

    strings, groups = [], {parse_scope(structure_to_scope(structure))["spacegroup"]}
    for seed in range(n):
        np.random.seed(seed)  # pymatgen's perturb draws from numpy's global generator
        rattled = structure.copy()
        rattled.perturb(amplitude)
        s = structure_to_scope(rattled)
        strings.append(s.split(" | ")[1])
        groups.add(parse_scope(s)["spacegroup"])
    if len(groups) != 1:
        raise ValueError(f"rattling by {amplitude} A changed the space group: {sorted(groups)}")
    return pd.Series(strings).value_counts()
