"""SCOPE: a coordinate-free string for a crystal (Xu, Zhu, Viswanathan, CLOUD).

``<generator string, one token per character> | <Wyckoff symbols> | <element fraction ...>``

NaCl (Fm-3m, Na on 4a, Cl on 4b)::

    1 6 a O D D a D O D b O O O c O O O d O O O e O O O 0 | 4a 4b | Na 0.5 Cl 0.5

* generator string: Shmueli's encoding of the space group's generators, as tabulated by pymatgen
  (``space_group_encoding``) except for three groups where the paper's table differs (see
  :data:`PAPER_GENERATOR_OVERRIDES`);
* Wyckoff section (``variant="reduced"``, the paper's): the distinct multiplicity+letter symbols, in
  the order their first site appears in the structure;
* composition: elements in pymatgen's composition order (first appearance among the sites) with the
  atomic fraction rounded to 2 decimals.

``variant="full"`` keeps one ``<Wyckoff symbol> <element>`` pair per site of the given cell instead of
the distinct symbols; it is longer and depends on the cell you pass (primitive vs conventional).

Symmetry comes from spglib (``symprec=0.01``, ``angle_tolerance=5``: pymatgen's SpacegroupAnalyzer
defaults, which the paper used). Sites are numbered by distinct species exactly as SpacegroupAnalyzer
does, so oxidation-state-decorated species (Fe2+ vs Fe3+) count as different atom types.
"""

from __future__ import annotations

import functools
import gzip
import itertools
import json
import math
import multiprocessing as mp
import os
import pickle
import signal
import time
from collections import deque
from collections.abc import Iterable, Mapping
from importlib.resources import files
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

# spglib prints its internal, non-fatal retries ("ssm_get_exact_positions failed") to stderr; keep notebooks
# readable unless the user asked for them.
os.environ.setdefault("SPGLIB_WARNING", "OFF")
import spglib  # noqa: E402
from pymatgen.core import DummySpecies, Element, Species, Structure

from .config import MAX_ATOMS, STRUCTURE_TIMEOUT  # the limits' defaults, documented there
from .errors import (
    DataError,
    DisorderedStructureError,
    OverlappingAtomsError,
    StructureError,
    StructureParseError,
    StructureTimeoutError,
    StructureTooLargeError,
    SymmetryError,
    UnknownSpeciesError,
    WorkerDiedError,
)

VARIANTS = ("reduced", "full")

#: The paper's generator table (CLOUD ``data/generator.json``) equals pymatgen's
#: ``space_group_encoding`` for 227 of the 230 space groups. For these three it lists another
#: (equally valid) generator set; we follow the paper so that strings match its released data.
PAPER_GENERATOR_OVERRIDES = {
    39: "03aODDbOOOcODO0",  # pymatgen: 03aODDbOOOjODO0
    131: "13bDDOgDOOcODD0",  # pymatgen: 13bOOOgOODcOOO0
    222: "14bDDOcDODdOOOeOOD1YYY",  # pymatgen: 05bOOOcOOOdOOOeOOOhDDD1YYY
}

#: Two atoms closer than this (Angstrom) make a structure invalid (spglib does not always notice).
MIN_DISTANCE = 0.5


@functools.cache
def generator_strings() -> dict[int, str]:
    """Space-group number -> generator string (pymatgen's table with the paper's overrides)."""
    table = json.loads((files("pymatgen") / "symmetry" / "symm_data.json").read_text())
    gens: dict[int, str] = {}
    for entry in table["space_group_encoding"].values():
        gens.setdefault(int(entry["int_number"]), entry["enc"])
    gens.update(PAPER_GENERATOR_OVERRIDES)
    assert sorted(gens) == list(range(1, 231)), "pymatgen space_group_encoding is incomplete"
    return gens


@functools.cache
def wyckoff_multiplicities() -> dict[int, dict[str, int]]:
    """Space-group number -> Wyckoff letter -> multiplicity (the table pymatgen ships)."""
    # Located through the top-level package: importing pymatgen.analysis.prototypes costs seconds.
    raw = files("pymatgen") / "analysis" / "prototypes" / "wyckoff-position-multiplicities.json.gz"
    table = json.loads(gzip.decompress(raw.read_bytes()))
    return {int(k): {letter: int(m) for letter, m in v.items()} for k, v in table.items() if v}


@functools.cache
def _generator_tokens() -> dict[int, str]:
    return {n: " ".join(g) for n, g in generator_strings().items()}


@functools.cache
def _wyckoff_symbols() -> dict[int, dict[str, str]]:
    return {n: {letter: f"{m}{letter}" for letter, m in t.items()} for n, t in wyckoff_multiplicities().items()}


def format_fraction(x: float) -> str:
    """Fraction token as in the paper's data: ``str(np.round(x, 2))``.

    ``np.round`` scales by 100 and rounds half to even, which is what ``round(x * 100) / 100`` does
    bit for bit. Python's ``round(x, 2)`` rounds the exact binary value instead and disagrees on
    820 of the fractions c/N with N <= 2000 (e.g. 1/40 -> "0.03" instead of the paper's "0.02").
    """
    return str(round(x * 100) / 100)


# --------------------------------------------------------------------------- cells
# A "cell" is the light, picklable payload a worker needs: (name, lattice, frac, numbers, symbols)
# where numbers[i] is the 1-based distinct-species index of site i and symbols[k] the element of
# species k+1.


def _species_symbol(sp: Any, site_index: int, name: object) -> str:
    if isinstance(sp, DummySpecies) or not isinstance(sp, (Element, Species)):
        raise UnknownSpeciesError(f"site {site_index} holds {sp!s}, which is not a chemical element", name)
    el = sp if isinstance(sp, Element) else sp.element
    if el.Z < 1 or el.Z > 118:
        raise UnknownSpeciesError(f"site {site_index} holds {sp!s}, which is not a chemical element", name)
    return el.symbol


def _check_size(n: int, max_atoms: int | None, name) -> None:
    if max_atoms is not None and n > max_atoms:
        raise StructureTooLargeError(f"{n} atoms in the cell > max_atoms={max_atoms}", name)


class _Unordered(Exception):
    """Site ``site`` has partial or mixed occupancy (structure_cell turns it into DisorderedStructureError)."""

    def __init__(self, site: int):
        self.site = site


def _site_parts(sites: list) -> tuple[list, list]:
    """(species, fractional coordinates) of each site of an ordered structure; raises _Unordered(i) for the first
    site i with partial or mixed occupancy (an amount that is not 1 within 1e-8, NaN included).

    This loop is most of SCOPE's cost beyond spglib's (``python -m benchmarks scope``), so it reads pymatgen's site
    and Composition attributes directly (a third of the time of the public properties, which wrap them); a
    pymatgen without them takes the public route, with the same results (tested)."""
    species, coords = [], []
    try:
        for i, site in enumerate(sites):
            occ = site._species._data
            if len(occ) != 1:
                raise _Unordered(i)
            ((sp, amount),) = occ.items()
            if amount != 1.0 and not abs(amount - 1.0) <= 1e-8:
                raise _Unordered(i)
            species.append(sp)
            coords.append(site._frac_coords)
    except AttributeError:
        return _site_parts_public(sites)
    return species, coords


def _site_parts_public(sites: list) -> tuple[list, list]:
    """:func:`_site_parts` through pymatgen's public properties."""
    species, coords = [], []
    for i, site in enumerate(sites):
        occ = dict(site.species.items())
        if len(occ) != 1 or not abs(next(iter(occ.values())) - 1.0) <= 1e-8:
            raise _Unordered(i)
        species.append(next(iter(occ)))
        coords.append(site.frac_coords)
    return species, coords


def structure_cell(structure: Structure, name: object = None, max_atoms: int | None = MAX_ATOMS) -> tuple:
    """Validate a structure and reduce it to the payload spglib needs (raises StructureError).

    More than ``max_atoms`` sites (None: no limit) raise StructureTooLargeError before any per-site work."""
    if not isinstance(structure, Structure):
        raise StructureError(f"expected a pymatgen Structure, got {type(structure).__name__}", name)
    sites = structure.sites
    if len(sites) == 0:
        raise StructureError("structure has no sites", name)
    _check_size(len(sites), max_atoms, name)
    try:
        species, coords = _site_parts(sites)
    except _Unordered as bad:
        comp = sites[bad.site].species
        raise DisorderedStructureError(
            f"site {bad.site} has partial or mixed occupancy ({comp.formula}); SCOPE needs an ordered crystal", name
        ) from None
    # Species told apart by identity first (an Element is a singleton), by equality once per distinct object.
    ids = list(map(id, species))
    unique: dict[Any, int] = {}
    symbols: list[str] = []
    by_id: dict[int, int] = {}
    for oid, sp in dict(zip(ids, species)).items():  # distinct objects, by first appearance
        k = unique.get(sp)
        if k is None:
            symbols.append(_species_symbol(sp, ids.index(oid), name))
            k = unique[sp] = len(unique) + 1
        by_id[oid] = k
    numbers = list(map(by_id.__getitem__, ids))
    lattice = structure.lattice.matrix
    frac = np.array(coords, dtype=float)
    rows = lattice.tolist()
    if not (all(map(math.isfinite, rows[0] + rows[1] + rows[2])) and np.isfinite(frac).all()):
        raise StructureError("lattice or coordinates contain NaN/inf", name)
    (a0, a1, a2), (b0, b1, b2), (c0, c1, c2) = rows
    volume = a0 * (b1 * c2 - b2 * c1) - a1 * (b0 * c2 - b2 * c0) + a2 * (b0 * c1 - b1 * c0)
    if abs(volume) < 1e-6:
        raise StructureError("lattice vectors are degenerate (zero cell volume)", name)
    return (name, lattice, frac, np.array(numbers, dtype=np.intc), symbols)


# --------------------------------------------------------------------------- overlapping atoms
# The distance of sites i and j is that of the image that rounding their fractional difference picks:
# |(f_i - f_j - rint(f_i - f_j)) @ lattice|, an atom's own images are not counted. This is the true
# minimum-image distance whenever it is below half the cell's smallest interplanar spacing, i.e. for every
# ordinary cell and min_distance; only very thin or skewed cells can differ. Small cells compute it for all
# pairs; larger ones for the pairs a periodic k-d tree finds within min_distance (a superset of the pairs
# this distance puts below it: it is never shorter than the true minimum-image distance), which is
# O(n log n) in time and O(n) in memory. Same pairs, same arithmetic, same pair reported.

#: Cells with at most this many sites take the all-pairs path (faster than building a tree).
_DENSE_MAX = 200
#: Pairs per block of the all-pairs path: bounds its memory (~100 bytes a pair) whatever the cell size, and
#: keeps each product below the size where OpenBLAS goes multi-threaded (30x slower on a busy 2-core machine).
_DENSE_BLOCK = 1 << 15
#: The tree path falls back to all pairs when the periodic images it needs exceed this many times the sites
#: (a cell thinner than min_distance), or when it would hold more than this many neighbour entries.
_MAX_IMAGE_FACTOR = 8.0
_MAX_NEIGHBOUR_ENTRIES = 1 << 23


#: Cells with at most this many sites first take the quick pass (:func:`_clear_of_overlap`).
_QUICK_MAX = 64


@functools.lru_cache(maxsize=_QUICK_MAX)
def _upper_pairs(n: int) -> tuple[np.ndarray, np.ndarray]:
    return np.triu_indices(n, 1)


def _clear_of_overlap(lattice: np.ndarray, frac: np.ndarray, min_distance: float) -> bool:
    """True when no two sites are closer than ``min_distance``; False when that needs the exact check: a pair
    near or below the limit, or more than :data:`_QUICK_MAX` sites.

    The pairs i < j in a handful of array operations (about half the time of :func:`_closest_pair_dense`). A
    cell is cleared only with a margin above the difference that rounding can make between this pass and the
    exact one (the same differences, a matrix product summed in another order: at most ~1e-15 of the lattice's
    largest entry, plus the relative rounding of the squares), so it decides nothing the exact check would decide
    otherwise."""
    n = len(frac)
    if n < 2:
        return True
    if n > _QUICK_MAX:
        return False
    i, j = _upper_pairs(n)
    d = frac.take(i, 0)
    d -= frac.take(j, 0)
    d -= np.rint(d)
    cart = d @ lattice
    smallest = float(np.einsum("ij,ij->i", cart, cart).min())
    slack = 1e-12 * max(map(abs, itertools.chain.from_iterable(lattice.tolist())))
    return smallest > (min_distance * (1 + 1e-9) + slack) ** 2


def _pair_dist2(lattice: np.ndarray, frac: np.ndarray, i: np.ndarray, j: np.ndarray) -> np.ndarray:
    d = frac[i] - frac[j]
    d -= np.rint(d)
    cart = d @ lattice
    return np.einsum("ij,ij->i", cart, cart)


def _closest_pair_dense(lattice: np.ndarray, frac: np.ndarray) -> tuple[float, int, int]:
    """(squared distance, i, j) with i < j of the closest pair over all pairs; ties go to the smallest (i, j).

    Row blocks of the n x n distance matrix, so memory stays bounded for any n (time is O(n^2))."""
    n = len(frac)
    rows = max(1, _DENSE_BLOCK // n)
    best = (math.inf, -1, -1)
    for start in range(0, n, rows):
        stop = min(n, start + rows)
        d = frac[start:stop, None, :] - frac[None, :, :]
        d -= np.rint(d)
        cart = d.reshape(-1, 3) @ lattice
        dist2 = np.einsum("ij,ij->i", cart, cart)
        dist2[np.arange(stop - start) * (n + 1) + start] = np.inf  # self-distances
        k = int(dist2.argmin())
        if dist2[k] < best[0]:  # strict: the first minimum in row-major order wins, as one argmin would pick
            i, j = divmod(k, n)
            i += start
            best = (float(dist2[k]), min(i, j), max(i, j))
    return best


def _neighbour_candidates(lattice: np.ndarray, frac: np.ndarray, radius: float):
    """Pairs (i, j), i < j, of distinct sites with some periodic image closer than ``radius``
    (a few duplicates possible), or None when the cell calls for the all-pairs path."""
    from pymatgen.core import Lattice
    from scipy.spatial import cKDTree

    n = len(frac)
    reduced = Lattice(lattice).get_lll_reduced_lattice().matrix  # same lattice points, fewest images needed
    inv = np.linalg.inv(reduced)
    cart = (frac - np.floor(frac)) @ lattice
    f = cart @ inv
    f -= np.floor(f)
    # An image within `radius` of a point of the home cell lies within e_k = radius / spacing_k of it along
    # each reduced axis (the spacing of the lattice planes is 1 / |column k of inv|).
    e = radius * np.linalg.norm(inv, axis=0) + 1e-9
    if np.prod(1 + 2 * e) > _MAX_IMAGE_FACTOR:
        return None
    points, owner = [f @ reduced], [np.arange(n)]
    reach = np.ceil(e).astype(int)
    for shift in itertools.product(*(range(-r, r + 1) for r in reach)):
        if shift == (0, 0, 0):
            continue
        g = f + shift
        keep = np.nonzero(((g > -e) & (g < 1 + e)).all(axis=1))[0]
        if len(keep):
            points.append(g[keep] @ reduced)
            owner.append(keep)
    points, owner = np.concatenate(points), np.concatenate(owner)
    tree = cKDTree(points)
    m = len(points)
    todo, k = np.arange(n), min(16, m)
    rows, cols = [], []
    while len(todo):
        if len(todo) * k > _MAX_NEIGHBOUR_ENTRIES:
            return None
        _, nb = tree.query(points[todo], k=k, distance_upper_bound=radius)
        full = nb[:, -1] < m if k < m else np.zeros(len(todo), bool)  # k neighbours found: maybe more
        part = ~full
        hit = nb[part] < m
        rows.append(np.broadcast_to(todo[part, None], nb[part].shape)[hit])
        cols.append(owner[nb[part][hit]])
        todo, k = todo[full], min(4 * k, m)
    i, j = np.concatenate(rows), np.concatenate(cols)
    distinct = i != j
    i, j = i[distinct], j[distinct]
    return np.minimum(i, j), np.maximum(i, j)


def _closest_pair(
    lattice: np.ndarray, frac: np.ndarray, min_distance: float, dense_max: int | None = None
) -> tuple[float, int, int] | None:
    """(squared distance, i, j), i < j, of the closest pair of distinct sites if it is closer than
    ``min_distance`` (the pair :func:`_closest_pair_dense` reports), else None."""
    n = len(frac)
    if n < 2:
        return None
    # The quick pass decides only "no pair is closer"; a pair at the limit is decided (and reported) by the exact paths.
    if dense_max is None and _clear_of_overlap(lattice, frac, min_distance):
        return None
    if n <= (_DENSE_MAX if dense_max is None else dense_max):
        best = _closest_pair_dense(lattice, frac)
    else:
        # margin: the tree sees wrapped, re-based coordinates (a few ulps off); it only has to find a superset
        margin = 1e-6 * (1 + min_distance) + 1e-12 * float(np.abs(lattice).sum())
        pairs = _neighbour_candidates(lattice, frac, min_distance + margin)
        if pairs is None:
            best = _closest_pair_dense(lattice, frac)
        else:
            i, j = pairs
            if not len(i):
                return None
            dist2 = _pair_dist2(lattice, frac, i, j)
            k = np.lexsort((j, i, dist2))[0]
            best = (float(dist2[k]), int(i[k]), int(j[k]))
    return best if best[0] < min_distance**2 else None


def check_overlap(name, lattice: np.ndarray, frac: np.ndarray, min_distance: float) -> None:
    """Raise OverlappingAtomsError if two sites are closer than min_distance (see the comment above)."""
    best = _closest_pair(lattice, frac, min_distance)
    if best is not None:
        dist2, i, j = best
        raise OverlappingAtomsError(f"sites {i} and {j} are {np.sqrt(dist2):.3f} A apart (< {min_distance} A)", name)


def cell_to_scope(
    cell: tuple,
    variant: str = "reduced",
    symprec: float = 0.01,
    angle_tolerance: float = 5.0,
    min_distance: float = MIN_DISTANCE,
    max_atoms: int | None = MAX_ATOMS,
) -> str:
    """SCOPE string of a validated cell (see :func:`structure_cell`)."""
    _check_cell(cell, min_distance, max_atoms)
    return _assemble(cell, _search(cell, symprec, angle_tolerance), variant)


def _check_cell(cell: tuple, min_distance: float, max_atoms: int | None) -> None:
    """The size and overlapping-atoms checks of a validated cell (raise StructureError)."""
    name, lattice, frac, numbers, _ = cell
    _check_size(len(numbers), max_atoms, name)
    check_overlap(name, lattice, frac, min_distance)


def _search(cell: tuple, symprec: float, angle_tolerance: float):
    """spglib's dataset of a checked cell (raises SymmetryError)."""
    name, lattice, frac, numbers, _ = cell
    try:
        ds = spglib.get_symmetry_dataset((lattice, frac, numbers), symprec=symprec, angle_tolerance=angle_tolerance)
    except Exception as exc:  # spglib >= 2.5 raises SpglibCppError on cells it cannot search (e.g. 1e12 Å axes)
        raise SymmetryError(f"spglib failed ({type(exc).__name__}: {exc})", name) from exc
    if ds is None:
        raise SymmetryError(f"spglib could not determine the space group (symprec={symprec})", name)
    return ds


def _assemble(cell: tuple, ds, variant: str) -> str:
    """The SCOPE string of a cell from its spglib dataset."""
    _, _, _, numbers, symbols = cell
    spg = int(ds.number)
    wsym = _wyckoff_symbols()[spg]
    if variant == "reduced":
        wyckoff = " ".join(dict.fromkeys(map(wsym.__getitem__, ds.wyckoffs)))
    elif variant == "full":
        wyckoff = " ".join(f"{wsym[w]} {symbols[k - 1]}" for w, k in zip(ds.wyckoffs, numbers))
    else:
        raise ValueError(f"variant must be one of {VARIANTS}, got {variant!r}")
    # Composition in pymatgen's order: species by first appearance, summed per element (Python numbers: the same
    # IEEE values as numpy's scalars, at a fraction of their cost).
    counts = np.bincount(numbers).tolist()[1:]
    total = float(len(numbers))
    fractions: dict[str, float] = {}
    for sym, c in zip(symbols, counts):
        fractions[sym] = fractions.get(sym, 0.0) + c / total
    comp = " ".join(f"{el} {format_fraction(x)}" for el, x in fractions.items())
    return f"{_generator_tokens()[spg]} | {wyckoff} | {comp}"


def structure_to_scope(
    structure: Structure,
    variant: str = "reduced",
    symprec: float = 0.01,
    angle_tolerance: float = 5.0,
    max_atoms: int | None = MAX_ATOMS,
) -> str:
    """SCOPE string of a pymatgen Structure.

    Raises a :class:`~cloudlib.errors.StructureError` subclass naming the problem for disordered
    sites, dummy species, overlapping atoms, degenerate lattices, more than ``max_atoms`` sites
    (StructureTooLargeError; None: no limit) and spglib failures.
    """
    if variant not in VARIANTS:
        raise ValueError(f"variant must be one of {VARIANTS}, got {variant!r}")
    return cell_to_scope(
        structure_cell(structure, max_atoms=max_atoms), variant, symprec, angle_tolerance, max_atoms=max_atoms
    )


# --------------------------------------------------------------------------- reading files

_SYMOP_KEYS = (
    "_symmetry_equiv_pos_as_xyz",
    "_symmetry_equiv_pos_as_xyz_",
    "_space_group_symop_operation_xyz",
    "_space_group_symop_operation_xyz_",
)
_SG_NUMBER_KEYS = (
    "_space_group_IT_number",
    "_space_group_IT_number_",
    "_symmetry_Int_Tables_number",
    "_symmetry_Int_Tables_number_",
)


@functools.cache
def _group_orders() -> tuple[dict[str, int], dict[int, int]]:
    """Space-group symbol (spaces and underscores removed) and number -> operations of its conventional cell."""
    orders = {n: max(t.values()) for n, t in wyckoff_multiplicities().items()}
    table = json.loads((files("pymatgen") / "symmetry" / "symm_data.json").read_text())
    by_symbol = {
        "".join(key.replace("_", "").split()): orders.get(int(v["int_number"]), 192)
        for key, v in table["space_group_encoding"].items()
    }
    return by_symbol, orders


def _symmetry_operations(block: Mapping[str, Any]) -> int:
    """Upper bound on the symmetry operations pymatgen's CIF parser applies to one data block."""
    from pymatgen.core.operations import SymmOp

    magnetic = block.get("_space_group_symop_magn_operation.xyz")
    if magnetic:
        centering = block.get("_space_group_symop_magn_centering.xyz") or [""]
        return (len(magnetic) if isinstance(magnetic, list) else 1) * (
            len(centering) if isinstance(centering, list) else 1
        )
    for key in _SYMOP_KEYS:  # the first list that parses, as pymatgen takes it
        ops = block.get(key)
        if ops:
            ops = ops if isinstance(ops, list) else [ops]
            if len(ops) > 192:  # more than any space group's conventional cell: the length bounds it, unparsed
                return len(ops)
            try:
                for op in ops:
                    SymmOp.from_xyz_str(op)
            except Exception:  # pymatgen skips a list that does not parse (ValueError) and tries the next
                continue
            return len(ops)
    by_symbol, by_number = _group_orders()
    named = False
    for key, value in block.items():  # a symbol or number instead of the operations: the group's order
        low = key.lower()
        if isinstance(value, str) and ("space_group_name" in low or key in _SG_NUMBER_KEYS):
            named = True
            if key in _SG_NUMBER_KEYS:
                try:
                    return by_number[int(float(value))]
                except (ValueError, KeyError, OverflowError):
                    continue
            order = by_symbol.get("".join(value.replace("_", "").split()))
            if order:
                return order
    return 192 if named else 1  # an unknown symbol: at most 192 (Fm-3m etc.); none at all: P1, as pymatgen


def cif_atom_bound(text: str) -> tuple[int, int, int]:
    """(upper bound on the atoms, atom-site rows, symmetry operations) of CIF text, without building a structure.

    Tokenizes the text with pymatgen's own CIF tokenizer (``CifFile.from_str``, linear: ~0.3 s for 64,000 atom
    rows) and sums, over the data blocks, the ``_atom_site_`` loop rows times the symmetry operations that
    pymatgen's parser would apply to them. The true count after symmetry expansion and merging of special
    positions can only be smaller. Text the tokenizer rejects counts as (0, 0, 0): the parser will say why.
    """
    import warnings

    from pymatgen.io.cif import CifFile

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            blocks = CifFile.from_str(text).data.values()
    except Exception:  # the real parser reports it
        return 0, 0, 0
    total = rows_all = ops_max = 0
    for block in blocks:
        data = block.data
        rows = max(
            (
                len(v) if isinstance(v, list) else 1
                for k, v in data.items()
                if k.startswith("_atom_site_") and not k.startswith("_atom_site_aniso")
            ),
            default=0,
        )
        if rows:
            ops = _symmetry_operations(data)
            total += rows * ops
            rows_all += rows
            ops_max = max(ops_max, ops)
    return total, rows_all, ops_max


def _check_cif_size(text: str, name: object, max_atoms: int | None) -> None:
    if max_atoms is None:
        return
    bound, rows, ops = cif_atom_bound(text)
    if bound > max_atoms:
        raise StructureTooLargeError(
            f"CIF describes up to {bound} atoms ({rows} atom-site rows x {ops} symmetry operations) > "
            f"max_atoms={max_atoms}; not parsed",
            name,
        )


def _is_cif_name(path: Path) -> bool:
    from fnmatch import fnmatch

    low = path.name.lower()
    return fnmatch(low, "*.cif*") or fnmatch(low, "*.mcif*")


def read_structure(path: str | os.PathLike, max_atoms: int | None = MAX_ATOMS) -> Structure:
    """Read one structure (CIF, POSCAR, pymatgen JSON, ... anything ``Structure.from_file`` reads).

    Raises StructureParseError naming the file for a missing or empty file or one that does not parse, and
    StructureTooLargeError for a CIF that describes more than ``max_atoms`` atoms (counted before parsing;
    None: no limit).
    """
    import warnings

    path = Path(path)
    if not path.is_file():
        raise StructureParseError("no such file", str(path))
    raw = path.read_bytes()
    if not raw.strip():
        raise StructureParseError("file is empty", str(path))
    cif = _is_cif_name(path)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            if cif:  # read here (as pymatgen would: compressed or not) to count the atoms before parsing
                from monty.io import zopen

                with zopen(path, mode="rt", errors="replace", encoding="utf-8") as fh:
                    text = fh.read()
                _check_cif_size(text, str(path), max_atoms)
            structure = Structure.from_str(text, fmt="cif") if cif else Structure.from_file(path)
        except StructureTooLargeError:
            raise
        except Exception as exc:  # pymatgen raises ValueError, KeyError, IndexError ... for bad files
            hint = "; ".join(dict.fromkeys(str(w.message) for w in caught))[:300]
            msg = f"does not parse as a structure ({type(exc).__name__}: {exc})"
            raise StructureParseError(msg + (f" [{hint}]" if hint else ""), str(path)) from exc
    return structure


class CifText(str):
    """CIF file contents (rather than a path), parsed lazily, in the worker that needs it."""


class DictText(str):
    """A pymatgen structure dict as JSON or Python-repr text (as matminer's CSVs store it)."""


class PoscarText(str):
    """VASP POSCAR file contents (as JARVIS stores structures), parsed lazily, in the worker that needs it."""


def _parse_text(obj: str, name: object, max_atoms: int | None = MAX_ATOMS) -> Structure:
    import ast
    import warnings

    if isinstance(obj, CifText):
        _check_cif_size(obj, name, max_atoms)
    try:
        if isinstance(obj, (CifText, PoscarText)):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                return Structure.from_str(obj, fmt="cif" if isinstance(obj, CifText) else "poscar")
        try:
            d = json.loads(obj)
        except ValueError:
            d = ast.literal_eval(obj)
        return Structure.from_dict(d)
    except Exception as exc:
        kind = {CifText: "CIF", PoscarText: "POSCAR"}.get(type(obj), "structure dict")
        raise StructureParseError(f"{kind} does not parse ({type(exc).__name__}: {exc})", name) from exc


def as_structure(obj: Any, name: object = None, max_atoms: int | None = MAX_ATOMS) -> Structure:
    """Structure from a Structure, a pymatgen dict, CifText/DictText or a file path.

    ``max_atoms`` guards CIF text and files before pymatgen parses them (see :func:`read_structure`)."""
    if isinstance(obj, Structure):
        return obj
    if isinstance(obj, (CifText, DictText, PoscarText)):
        return _parse_text(obj, name, max_atoms)
    if isinstance(obj, BaseException):
        raise obj
    if isinstance(obj, Mapping):
        try:
            return Structure.from_dict(obj)
        except Exception as exc:
            raise StructureParseError(f"not a pymatgen structure dict ({type(exc).__name__}: {exc})", name) from exc
    if isinstance(obj, (str, os.PathLike)):
        return read_structure(obj, max_atoms)
    raise StructureError(f"cannot make a structure from {type(obj).__name__}", name)


# --------------------------------------------------------------------------- batches


def _error_text(exc: BaseException) -> str:
    text = str(exc)
    return f"{type(exc).__name__}: {text}"


def _encode_item(
    name, item, variant: str, symprec: float, angle_tolerance: float, max_atoms: int | None = MAX_ATOMS
) -> tuple[str | None, str | None]:
    """(scope, None) or (None, "ErrorClass: message") for one input item; never raises."""
    try:
        cell = item if isinstance(item, tuple) else structure_cell(as_structure(item, name, max_atoms), name, max_atoms)
        return cell_to_scope(cell, variant, symprec, angle_tolerance, max_atoms=max_atoms), None
    except Exception as exc:  # StructureError, or anything unexpected: keep going, say what it was
        return None, _error_text(exc)


#: Items a block of :func:`_encode_items` takes through each stage.
_STAGE_BLOCK = 32


def _encode_items(
    pairs: list, variant: str, symprec: float, angle_tolerance: float, max_atoms: int | None, done=None
) -> list:
    """``_encode_item`` for each ``(id, item)`` pair (same rows, never raises), stage by stage over blocks of
    :data:`_STAGE_BLOCK` (``done(k)`` after each block of k, e.g. a progress bar's ``update``):
    every item is validated, then every valid cell checked and searched by spglib, then every string assembled.
    Item by item, each spglib search evicts the Python work's code and data from the core's caches and that work
    costs about twice what it costs alone; stage by stage it stays warm (``python -m benchmarks.scope_versions``,
    data/corpus_scale/README.md). The worker pool stays item by item: it marks which item a worker is on."""
    if len(pairs) > _STAGE_BLOCK:
        blocks = (pairs[start : start + _STAGE_BLOCK] for start in range(0, len(pairs), _STAGE_BLOCK))
        return [
            row for block in blocks for row in _encode_items(block, variant, symprec, angle_tolerance, max_atoms, done)
        ]
    out: list = [None] * len(pairs)

    def stage(work: list, fn) -> list:
        """``(i, value, fn(value))`` for each ``(i, value)`` whose ``fn`` succeeds; a failure is row i's error."""
        passed = []
        for i, value in work:
            try:
                passed.append((i, value, fn(value)))
            except Exception as exc:  # StructureError, or anything unexpected: keep going, say what it was
                out[i] = (None, _error_text(exc))
        return passed

    def validate(pair: tuple) -> tuple:
        name, item = pair
        return item if isinstance(item, tuple) else structure_cell(as_structure(item, name, max_atoms), name, max_atoms)

    cells = [(i, cell) for i, _, cell in stage(list(enumerate(pairs)), validate)]
    checked = [(i, cell) for i, cell, _ in stage(cells, lambda cell: _check_cell(cell, MIN_DISTANCE, max_atoms))]
    found = [(i, (cell, ds)) for i, cell, ds in stage(checked, lambda cell: _search(cell, symprec, angle_tolerance))]
    for i, _, scope in stage(found, lambda found: _assemble(*found, variant)):
        out[i] = (scope, None)
    if done is not None:
        done(len(pairs))
    return out


def _encode_payload(payload: bytes, settings: tuple) -> tuple[str | None, str | None]:
    """``_encode_item`` of a pickled ``(id, item)`` payload, unpickled here (one that does not unpickle is its own
    error row)."""
    try:
        name, item = pickle.loads(payload)
    except Exception as exc:
        return None, _error_text(exc)
    return _encode_item(name, item, *settings)


def _shippable(name, obj, max_atoms: int | None = MAX_ATOMS):
    """For spawn-based pools: a light picklable payload (validated cell, text, path or the error)."""
    if isinstance(obj, (str, os.PathLike)):
        return str(obj) if not isinstance(obj, (CifText, DictText, PoscarText)) else obj
    try:
        return structure_cell(as_structure(obj, name, max_atoms), name, max_atoms)
    except Exception as exc:  # shipped as the item: the worker raises it, the row reports it
        return exc


#: Worker start method of :func:`scope_table`'s pools: None picks fork where the platform has it (workers
#: inherit the items, nothing is pickled), else spawn (items go to the workers as light payloads).
_START_METHOD: str | None = None


def _pool_worker(conn, items, settings: tuple, close: list, progress, slot: int) -> None:
    """Worker loop: receive chunks (seq, [(index, payload)]), send each chunk's results as one list.

    Before each item the worker writes the start time (``time.monotonic``), its position in the chunk and
    the chunk's seq, in that order, to ``progress[3 * slot : 3 * slot + 3]``, shared memory the parent reads
    when the worker dies or runs late: no message per item. ``payload`` None (fork): the item is ``items[index]``,
    inherited from the parent; otherwise the pickled (id, item), unpickled here one at a time so that a
    payload that kills its worker is blamed alone."""
    for c in close:  # fork: the parent's ends of this pipe and of the other workers' pipes
        c.close()
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle: it stops the workers
    try:
        conn.send(None)  # ready
        while (message := conn.recv()) is not None:
            seq, task = message
            results = []
            for pos, (i, payload) in enumerate(task):
                # Start time first, seq last: a record read between these writes shows at worst a start
                # time later than the truth (never an old one, which would trip the time limit) with the
                # previous item; once the item runs (and may kill the worker) all three are its own.
                progress[3 * slot + 2] = time.monotonic()
                progress[3 * slot + 1] = pos
                progress[3 * slot] = seq
                if payload is None:
                    results.append(_encode_item(*items[i], *settings))
                    continue
                results.append(_encode_payload(payload, settings))
            progress[3 * slot + 1] = len(task)  # all done: a death from here on blames no item
            conn.send(results)
    except (EOFError, OSError):  # the parent went away
        pass


class _Slot:
    """One worker process as the parent sees it: its place in the shared progress array, its chunks in flight."""

    __slots__ = ("index", "proc", "conn", "ready", "inflight", "since")

    def __init__(self, index: int, proc, conn):
        self.index, self.proc, self.conn = index, proc, conn
        self.ready, self.inflight, self.since = False, deque(), time.monotonic()


def _death_cause(proc) -> str:
    proc.join(5)
    code = proc.exitcode
    if code is None:
        proc.kill()
        proc.join()
        return "it closed its pipe"
    if code < 0:
        try:
            return f"signal {-code}, {signal.Signals(-code).name}"
        except ValueError:
            return f"signal {-code}"
    return f"exit code {code}"


#: Seconds a new worker process may take to start (spawn imports numpy, pymatgen and spglib).
_STARTUP_TIMEOUT = 300.0
#: Chunks sent ahead to each worker, so that it never waits for the parent between chunks.
_INFLIGHT = 2


def _run_pool(items: list, settings: tuple, jobs: int, chunksize: int, timeout: float, bar) -> list:
    """Results of ``_encode_item`` for every item, computed by ``jobs`` worker processes that may die.

    Workers take chunks and answer with each chunk's results; the item each one is on is in shared
    memory. A worker that dies (signal, crash) or spends more than ``timeout`` seconds on one item (then it
    is killed) turns that item into an error row and is replaced; the other items it held go back to the
    queue (their results died with the worker)."""
    from multiprocessing.connection import wait

    n = len(items)
    method = _START_METHOD or ("fork" if "fork" in mp.get_all_start_methods() else "spawn")
    ctx = mp.get_context(method)
    forked = method == "fork"
    results: list = [None] * n
    queue = deque(list(range(a, min(n, a + chunksize))) for a in range(0, n, chunksize))
    progress = ctx.RawArray("d", 3 * jobs)  # per worker: chunk seq, position in it, start of the item
    slots: list[_Slot] = []
    seqs = itertools.count(1)

    def start(index: int) -> _Slot:
        parent_end, child_end = ctx.Pipe()
        close = [parent_end, *(s.conn for s in slots)] if forked else []
        progress[3 * index : 3 * index + 3] = [0.0, 0.0, 0.0]
        proc = ctx.Process(
            target=_pool_worker,
            args=(child_end, items if forked else None, settings, close, progress, index),
            daemon=True,
            name=f"scope-worker-{index}",
        )
        proc.start()
        child_end.close()
        return _Slot(index, proc, parent_end)

    def payload(i: int):
        if forked:
            return None
        k, v = items[i]
        return pickle.dumps((k, _shippable(k, v, settings[-1])), protocol=pickle.HIGHEST_PROTOCOL)

    def feed(slot: _Slot) -> None:
        while queue and len(slot.inflight) < _INFLIGHT:
            seq, chunk = next(seqs), queue.popleft()
            if not slot.inflight:
                slot.since = time.monotonic()
            slot.inflight.append((seq, chunk))
            try:
                slot.conn.send((seq, [(i, payload(i)) for i in chunk]))
            except OSError:  # it died: the chunk stays in flight and is handled with its death
                return

    def drain(slot: _Slot) -> bool:
        """Take what the worker sent; False once its pipe is closed (it died)."""
        try:
            while slot.conn.poll():
                msg = slot.conn.recv()
                if msg is None:
                    slot.ready = True
                    continue
                _, chunk = slot.inflight.popleft()
                for i, result in zip(chunk, msg):
                    results[i] = result
                bar.update(len(msg))
                slot.since = time.monotonic()
        except (EOFError, OSError):
            return False
        feed(slot)
        return True

    def current(slot: _Slot) -> tuple[int | None, float]:
        """(item the worker is on or None, when it started it); while it starts up, (None, its start)."""
        seq, pos, t0 = progress[3 * slot.index : 3 * slot.index + 3]
        if not slot.ready or not slot.inflight:
            return None, slot.since
        head_seq, chunk = slot.inflight[0]
        if int(seq) != head_seq or int(pos) >= len(chunk):  # between chunks
            return None, max(t0, slot.since)
        return chunk[int(pos)], t0

    def deadline(slot: _Slot) -> float:
        return current(slot)[1] + (timeout if slot.ready else _STARTUP_TIMEOUT)

    def replace(slot: _Slot, error: type[StructureError], message: str) -> None:
        """Stop slot's worker (dead, or to be killed), fail the item it was on, requeue the others it held."""
        if not slot.ready:
            raise RuntimeError(f"a SCOPE worker process ({method}) could not start: {message}")
        culprit, _ = current(slot)
        if slot.proc.is_alive():
            slot.proc.kill()
            slot.proc.join()
        if culprit is not None:
            results[culprit] = (None, _error_text(error(message, items[culprit][0])))
            bar.update(1)
        rest = [i for _, chunk in slot.inflight for i in chunk if i != culprit]
        if rest:
            queue.appendleft(rest)
        slot.inflight.clear()
        slot.conn.close()
        fresh = start(slot.index)
        slot.proc, slot.conn, slot.ready, slot.since = fresh.proc, fresh.conn, False, fresh.since
        feed(slot)

    try:
        for k in range(min(jobs, len(queue))):
            slots.append(start(k))
            feed(slots[-1])
        while busy := [s for s in slots if s.inflight]:
            first = min(deadline(s) for s in busy)
            wait_s = max(0.0, first - time.monotonic()) if math.isfinite(first) else None
            ready = set(wait([s.conn for s in busy] + [s.proc.sentinel for s in busy], wait_s))
            for s in busy:
                if s.conn in ready or s.proc.sentinel in ready:
                    if not drain(s) or s.proc.sentinel in ready:
                        drain(s)
                        cause = _death_cause(s.proc)
                        replace(s, WorkerDiedError, f"worker process died ({cause}) while encoding this structure")
            for s in busy:
                if not s.inflight or time.monotonic() <= deadline(s) or not drain(s):
                    continue  # on time, done, or dead (the next wait sees its sentinel)
                if s.inflight and time.monotonic() > deadline(s):
                    msg = f"took longer than the time limit of {timeout:g} s per structure (worker process stopped)"
                    replace(s, StructureTimeoutError, msg if s.ready else f"no answer in {_STARTUP_TIMEOUT:g} s")
    except BaseException:
        for s in slots:
            s.proc.kill()
        raise
    finally:
        for s in slots:
            try:
                s.conn.send(None)
            except OSError:
                pass
        for s in slots:
            s.proc.join(2)
            if s.proc.is_alive():
                s.proc.kill()
                s.proc.join()
            s.conn.close()
    return results


def scope_table(
    structures: Mapping[Any, Any] | Iterable[Any],
    variant: str = "reduced",
    jobs: int = 1,
    symprec: float = 0.01,
    angle_tolerance: float = 5.0,
    progress: bool = True,
    chunksize: int = 32,
    timeout: float | None = None,
    max_atoms: int | None = MAX_ATOMS,
    executor: Any = None,
) -> pd.DataFrame:
    """SCOPE for many structures; one row per input, never dropped.

    ``structures`` is a mapping id -> item (the index of the result) or a sequence of items (index
    0..n-1); an item is a Structure, a pymatgen structure dict, :class:`CifText` / :class:`DictText`
    (parsed in the workers) or a path to a structure file.
    Returns columns ``scope`` (None on failure) and ``error`` (None on success, else
    ``"ErrorClass: message"``).

    ``jobs > 1`` uses that many worker processes (``jobs < 1`` or None: one per CPU) for batches of at least
    ``2 * chunksize`` items; smaller batches and ``jobs=1`` run in this process. Workers take ``chunksize``
    items at a time and mark in shared memory which one they are on, so a worker that dies (the OOM
    killer, a crash in a C library) costs exactly the row it was on (``WorkerDiedError``): it is replaced,
    the other items it held are recomputed, every other row is computed as usual.

    ``timeout`` is the time limit per structure in seconds, parsing included (``StructureTimeoutError`` row;
    the worker is stopped and replaced). None: :data:`STRUCTURE_TIMEOUT` when the batch runs in worker
    processes and no limit when it runs in this process. A number is always enforced: with ``jobs=1`` or a
    small batch the items then run in worker processes too (``math.inf``: no limit).

    ``max_atoms`` (None: no limit) refuses larger structures with ``StructureTooLargeError``, CIF text and
    files before they are parsed (:func:`cif_atom_bound`).

    ``executor`` runs the batch on a cluster instead: a ``distributed.Client`` (dask), or a
    ``concurrent.futures.Executor`` whose ``submit`` returns futures with ``result()`` / ``exception()``
    (``client.get_executor()``, a ThreadPoolExecutor). The items go out ``chunksize`` at a time as light
    pickled payloads (validated cells or text, made here, as for spawned workers), one task per chunk; rows come
    back in input order. A chunk whose task fails (a worker that died: dask raises ``KilledWorker`` once the
    task has killed ``distributed.scheduler.allowed-failures + 1`` workers; any other error of the
    infrastructure) is sent again item by item, and an item whose own task fails is tried once more alone (so
    that a structure that shared a dying worker is not blamed): only an item that fails alone too becomes a
    ``WorkerDiedError`` row, every other row is computed. A cancelled task (the client closed) raises. With an
    executor ``jobs`` does not apply (the cluster decides the parallelism) and ``timeout`` must stay None: the
    per-structure time limit is enforced by the local pool only (a task running past it could not be stopped on a
    dask worker, whose tasks run in threads). A ``ProcessPoolExecutor`` is not suitable when a structure may
    kill its process: the whole pool breaks and the next ``submit`` raises.
    """
    from tqdm.auto import tqdm

    if variant not in VARIANTS:
        raise ValueError(f"variant must be one of {VARIANTS}, got {variant!r}")
    if timeout is not None and not timeout > 0:
        raise ValueError(f"timeout must be a positive number of seconds (or None), got {timeout!r}")
    items = list(structures.items()) if isinstance(structures, Mapping) else list(enumerate(structures))
    ids = [k for k, _ in items]
    if jobs is None or jobs < 1:
        jobs = os.cpu_count() or 1
    settings = (variant, symprec, angle_tolerance, max_atoms)
    if executor is not None:
        if timeout is not None:
            raise ValueError("timeout is enforced by the local worker pool only; leave it None with an executor")
        if not callable(getattr(executor, "submit", None)):
            raise TypeError(f"executor must be a distributed.Client or a concurrent.futures.Executor, got {executor!r}")
        if not chunksize >= 1:
            raise ValueError(f"chunksize must be >= 1, got {chunksize!r}")
    pooled = (jobs > 1 and len(items) >= 2 * chunksize) or (timeout is not None and len(items) > 0)
    with tqdm(total=len(items), disable=not progress, desc=f"SCOPE ({variant})", unit="struct") as bar:
        if executor is not None:
            results = _run_executor(items, settings, executor, int(chunksize), bar)
        elif not pooled:
            results = _encode_items(items, *settings, done=bar.update)
        else:
            workers = max(1, min(jobs, len(items)))
            chunk = max(1, min(chunksize, -(-len(items) // (2 * workers))))
            limit = STRUCTURE_TIMEOUT if timeout is None else float(timeout)
            results = _run_pool(items, settings, workers, chunk, limit, bar)
    df = pd.DataFrame(results, columns=["scope", "error"], index=pd.Index(ids, name="id"))
    return df


# --------------------------------------------------------------------------- clusters (dask.distributed, executors)


def _encode_payloads(payloads: list, settings: tuple) -> list:
    """One task of :func:`scope_table` on an executor: ``_encode_item`` for each pickled ``(id, item)`` payload,
    unpickled here one at a time (a payload that does not unpickle is its own error row). Never raises for an
    item, so an exception of the task is the infrastructure's (a worker that died, a lost connection)."""
    out: list = [None] * len(payloads)
    where, pairs = [], []
    for k, payload in enumerate(payloads):
        try:
            pairs.append(pickle.loads(payload))
            where.append(k)
        except Exception as exc:
            out[k] = (None, _error_text(exc))
    for k, row in zip(where, _encode_items(pairs, *settings)):  # stage by stage, as in this process
        out[k] = row
    return out


def _dask_client(executor):
    """``executor`` if it is a ``distributed.Client``, else None (never imports distributed for other executors)."""
    import sys

    if "distributed" not in sys.modules:
        return None
    from distributed import Client

    return executor if isinstance(executor, Client) else None


def _task_failure(exc: BaseException, label: str) -> str:
    """The message of the WorkerDiedError row of an item whose task failed alone."""
    name = type(exc).__name__
    if name == "KilledWorker":
        tries = getattr(exc, "allowed_failures", None)
        detail = f"{name}, {tries + 1} worker(s) died running it" if isinstance(tries, int) else name
        return f"worker process died ({label}: {detail}) while encoding this structure"
    text = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else ""
    return f"task failed ({label}: {name}{': ' + text if text else ''}) while encoding this structure"


def _run_executor(items: list, settings: tuple, executor, chunksize: int, bar) -> list:
    """Results of ``_encode_item`` for every item, computed by tasks of ``executor`` (see :func:`scope_table`).

    Stage "chunk": one task per ``chunksize`` items. A failed chunk's items are sent again one task each (stage
    "item"), concurrently. An item whose own task failed too may only have shared a worker that another item
    killed (dask blames every task in progress on a worker that dies): it is tried once more alone, after all
    the rest and one at a time (stage "alone"); a failure then is its own WorkerDiedError row."""
    import asyncio
    import concurrent.futures as cf
    import uuid

    n = len(items)
    results: list = [None] * n
    client = _dask_client(executor)
    label = "dask" if type(executor).__module__.split(".")[0] == "distributed" else type(executor).__name__
    run = uuid.uuid4().hex[:12]
    pending: dict = {}  # future -> (stage, item indices, their payloads)

    def pack(i: int) -> bytes:
        k, v = items[i]
        return pickle.dumps((k, _shippable(k, v, settings[-1])), protocol=pickle.HIGHEST_PROTOCOL)

    def submit(stage: str, indices: list, payloads: list):
        if client is not None:  # named tasks (dashboard, logs); retries stay off: every failure comes back here
            key = f"scope-{stage}-{run}-{indices[0]}"
            fut = client.submit(_encode_payloads, payloads, settings, key=key, pure=False, retries=0)
        else:
            fut = executor.submit(_encode_payloads, payloads, settings)
        pending[fut] = (stage, indices, payloads)
        return fut

    def outcome(fut, count: int) -> tuple[list | None, BaseException | None]:
        """(the task's results, None) or (None, the exception it failed with); a cancelled task raises."""
        try:
            out = fut.result()
        except (cf.CancelledError, asyncio.CancelledError) as exc:
            raise RuntimeError(f"a SCOPE task was cancelled by the executor ({label}): was it shut down?") from exc
        except Exception as exc:
            return None, exc
        if not isinstance(out, list) or len(out) != count:
            return None, RuntimeError(f"the task returned {type(out).__name__}, not {count} results")
        return out, None

    def wait_some() -> list:
        futures = list(pending)
        if type(futures[0]).__module__.split(".")[0] == "distributed":
            from distributed import wait

            return list(wait(futures, return_when="FIRST_COMPLETED").done)
        return list(cf.wait(futures, return_when=cf.FIRST_COMPLETED).done)

    alone: list = []
    try:
        for a in range(0, n, chunksize):
            indices = list(range(a, min(n, a + chunksize)))
            submit("chunk", indices, [pack(i) for i in indices])
        while pending:
            for fut in wait_some():
                stage, indices, payloads = pending.pop(fut)
                out, exc = outcome(fut, len(indices))
                if exc is None:
                    for i, result in zip(indices, out):
                        results[i] = result
                    bar.update(len(indices))
                elif len(indices) > 1:
                    for i, payload in zip(indices, payloads):
                        submit("item", [i], [payload])
                else:
                    alone.append((indices[0], payloads[0]))
        for i, payload in sorted(alone):
            fut = submit("alone", [i], [payload])
            out, exc = outcome(fut, 1)
            pending.pop(fut)
            if exc is None:
                results[i] = out[0]
            else:
                results[i] = (None, _error_text(WorkerDiedError(_task_failure(exc, label), items[i][0])))
            bar.update(1)
    finally:
        for fut in pending:  # on an error or Ctrl-C: do not leave work running on the cluster
            fut.cancel()
    return results


# --------------------------------------------------------------------------- resumable shards on disk

#: The columns of a shard file of :func:`scope_shards` (all strings; scope / error null where absent).
SHARD_COLUMNS = ("id", "scope", "error")
_SHARD_KEYS = ("variant", "symprec", "angle_tolerance", "max_atoms")


def _shard_schema():
    import pyarrow as pa

    return pa.schema([(c, pa.string()) for c in SHARD_COLUMNS])


def _write_shard(path: Path, df: pd.DataFrame) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from .io import atomic_path

    table = pa.table(
        {"id": [str(k) for k in df.index], "scope": df["scope"].tolist(), "error": df["error"].tolist()},
        schema=_shard_schema(),
    )
    with atomic_path(path) as tmp:  # temporary file in the same folder, then os.replace
        pq.write_table(table, tmp)


def _read_shard(path: Path, ids: list, shard_size: int, folder: Path) -> pd.DataFrame | None:
    """The shard at ``path`` as scope_table's frame for ``ids`` if it holds exactly those rows; None if it is a
    short last shard whose ids begin ``ids`` (the input grew: recompute it); else DataError."""
    import pyarrow.parquet as pq

    try:
        cols = pq.read_table(path, columns=list(SHARD_COLUMNS)).to_pydict()
    except Exception as exc:
        raise DataError(
            f"{path.name} is not a readable SCOPE shard ({type(exc).__name__}: {exc})", str(folder)
        ) from exc
    stored, want = cols["id"], [str(k) for k in ids]
    if stored == want:
        return pd.DataFrame({"scope": cols["scope"], "error": cols["error"]}, index=pd.Index(ids, name="id"))
    if len(stored) < min(shard_size, len(want)) and want[: len(stored)] == stored:
        return None
    first = next((j for j, (a, b) in enumerate(zip(stored, want)) if a != b), min(len(stored), len(want)))
    raise DataError(
        f"{path.name} holds {len(stored)} rows, the input has {len(want)} for it, first difference at row {first} "
        f"(id {stored[first] if first < len(stored) else None!r} vs {want[first] if first < len(want) else None!r}):"
        " the input changed since the folder was written; use another folder",
        str(folder),
    )


def scope_shards(
    structures: Mapping[Any, Any] | Iterable[Any],
    folder: str | os.PathLike,
    shard_size: int = 10_000,
    executor: Any = None,
    jobs: int = 1,
    **scope_table_kwargs,
) -> pd.DataFrame:
    """:func:`scope_table` shard by shard into ``folder``, resumable; returns the whole table (one row per input).

    Consecutive slices of ``shard_size`` inputs (a mapping id -> item, or any iterable of items: ids 0..n-1,
    read lazily, one shard at a time) are computed with ``scope_table(slice, executor=executor, jobs=jobs,
    **scope_table_kwargs)`` and written to ``scope-00000.parquet``, ``scope-00001.parquet`` ... (columns ``id``
    as a string, ``scope``, ``error``; written to a temporary file in the folder, then renamed, so a shard file is
    complete or absent). ``manifest.json`` records the settings that decide the strings (variant, symprec,
    angle_tolerance, max_atoms, shard_size), the shard files with their rows and failures, and whether the run
    completed; it is rewritten after each shard.

    A rerun with the same settings skips every shard already written whose ids equal the input's (checked, row
    by row; a mapping's values of a skipped shard are not even looked up) and computes the missing ones: an
    interrupted run resumes where it stopped. A short last shard that the input now extends is recomputed.
    Other settings, a shard that holds other ids, or shard files without a manifest raise
    :class:`~cloudlib.errors.DataError` naming the folder.
    """
    from .io import write_json

    if not isinstance(shard_size, int) or isinstance(shard_size, bool) or shard_size < 1:
        raise ValueError(f"shard_size must be a positive integer, got {shard_size!r}")
    for key in ("structures", "executor", "jobs"):
        if key in scope_table_kwargs:
            raise TypeError(f"scope_shards() got multiple values for {key!r}")
    import inspect

    params = inspect.signature(scope_table).parameters
    unknown = set(scope_table_kwargs) - set(params)
    if unknown:
        raise TypeError(f"scope_shards() got unexpected keyword arguments {sorted(unknown)}")
    kw = {k: p.default for k, p in params.items() if k in _SHARD_KEYS} | scope_table_kwargs
    if kw["variant"] not in VARIANTS:
        raise ValueError(f"variant must be one of {VARIANTS}, got {kw['variant']!r}")
    settings = {
        "variant": str(kw["variant"]),
        "symprec": float(kw["symprec"]),
        "angle_tolerance": float(kw["angle_tolerance"]),
        "max_atoms": None if kw["max_atoms"] is None else int(kw["max_atoms"]),
        "shard_size": shard_size,
    }
    folder = Path(folder)
    manifest_path = folder / "manifest.json"
    records: dict[str, dict] = {}
    if manifest_path.is_file():
        try:
            old = json.loads(manifest_path.read_text())
            old_settings, records = old["settings"], {r["file"]: r for r in old["shards"]}
        except (ValueError, KeyError, TypeError, UnicodeDecodeError) as exc:
            raise DataError(
                f"manifest.json is not a scope_shards manifest ({type(exc).__name__})", str(folder)
            ) from exc
        if old_settings != settings:
            diff = {k: (old_settings.get(k), v) for k, v in settings.items() if old_settings.get(k) != v}
            raise DataError(
                f"written with other settings (was, now: {diff}); use another folder or the same settings", str(folder)
            )
    elif folder.is_dir() and any(folder.glob("scope-*.parquet")):
        raise DataError("holds SCOPE shard files but no manifest.json: not a scope_shards folder", str(folder))

    def save(complete: bool) -> None:
        shards = [records[f] for f in sorted(records)]
        write_json(
            manifest_path,
            {
                "format": 1,
                "kind": "cloudlib.scope.scope_shards",
                "settings": settings,
                "complete": complete,
                "rows": sum(r["rows"] for r in shards),
                "failures": sum(r["failures"] for r in shards),
                "shards": shards,
            },
        )

    folder.mkdir(parents=True, exist_ok=True)
    save(False)
    if isinstance(structures, Mapping):
        pairs = ((k, None) for k in structures)  # values looked up only for the shards computed

        def value(k, v):
            return structures[k]
    else:
        pairs = enumerate(structures)

        def value(k, v):
            return v

    frames, files = [], []
    for s in itertools.count():
        batch = list(itertools.islice(pairs, shard_size))
        if not batch:
            break
        ids = [k for k, _ in batch]
        path = folder / f"scope-{s:05d}.parquet"
        df = _read_shard(path, ids, shard_size, folder) if path.exists() else None
        if df is None:
            df = scope_table({k: value(k, v) for k, v in batch}, executor=executor, jobs=jobs, **scope_table_kwargs)
            _write_shard(path, df)
        files.append(path.name)
        records[path.name] = {
            "file": path.name,
            "rows": len(df),
            "failures": int(df["error"].notna().sum()),
            "first_id": str(ids[0]),
            "last_id": str(ids[-1]),
        }
        save(False)
        frames.append(df)
        if len(batch) < shard_size:
            break
    records = {f: records[f] for f in files}  # this input's shards (any beyond its end are not part of it)
    save(True)
    if not frames:
        return scope_table({}, progress=False)
    return pd.concat(frames) if len(frames) > 1 else frames[0]


# --------------------------------------------------------------------------- reading SCOPE back


@functools.cache
def _spacegroup_by_generator() -> dict[str, int]:
    table = {tokens: n for n, tokens in _generator_tokens().items()}
    assert len(table) == 230, "generator strings must identify the space group"
    return table


def parse_scope(scope: str) -> dict:
    """Split a SCOPE string into ``spacegroup`` (int), ``wyckoffs`` (list) and ``composition`` (dict).

    The 230 generator strings are distinct, so the space group is recovered exactly. Raises ValueError
    naming the string if it is not of the 3-section form or its generator part is unknown.
    """
    parts = [p.strip() for p in scope.split("|")]
    if len(parts) != 3:
        raise ValueError(f"not a SCOPE string (expected 3 sections separated by '|'): {scope[:80]!r}")
    gen, wyck, comp = parts
    spg = _spacegroup_by_generator().get(gen)
    if spg is None:
        raise ValueError(f"unknown generator string {gen!r} in {scope[:80]!r}")
    toks = comp.split()
    if len(toks) % 2:
        raise ValueError(f"composition section needs element/fraction pairs: {comp!r}")
    return {
        "spacegroup": spg,
        "wyckoffs": wyck.split(),
        "composition": {e: float(x) for e, x in zip(toks[::2], toks[1::2])},
    }


# --------------------------------------------------------------------------- equivalent strings


def scope_variants(scope: str, k: int, seed: int = 0) -> list[str]:
    """``scope`` followed by up to ``k - 1`` distinct equivalent SCOPE strings (data augmentation).

    A reduced SCOPE string lists its Wyckoff symbols and its elements in the order the sites of one
    particular cell first show them: reorder the sites and the same crystal gets another, equally valid
    string. The variants reorder the Wyckoff section and the (element, fraction) pairs at random
    (``random.Random`` seeded by ``seed`` and the string, so a string's variants never depend on what else is
    in the batch). The generator section is fixed by the space group. Fewer than ``k`` strings come back when
    the crystal has fewer distinct orders (NaCl: 4; a one-site crystal: 1). Raises ValueError for a string
    that is not of the 3-section form.
    """
    import hashlib
    import itertools
    import math
    import random

    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    parts = [p.strip() for p in scope.split("|")]
    if len(parts) != 3:
        raise ValueError(f"not a SCOPE string (expected 3 sections separated by '|'): {scope[:80]!r}")
    gen, wyck, comp = parts
    wy, toks = wyck.split(), comp.split()
    if len(toks) % 2:
        raise ValueError(f"composition section needs element/fraction pairs: {comp!r}")
    pairs = [f"{e} {x}" for e, x in zip(toks[::2], toks[1::2])]
    out = [scope]
    possible = math.factorial(len(wy)) * math.factorial(len(pairs))  # an upper bound (symbols can repeat)
    if k == 1 or possible == 1:
        return out
    seen = {scope}
    rng = random.Random(int.from_bytes(hashlib.sha256(f"{seed}|{scope}".encode()).digest()[:8], "little"))
    if possible <= 4 * k:  # few orders: enumerate them all, then draw
        every = [
            f"{gen} | {' '.join(w)} | {' '.join(c)}"
            for w in itertools.permutations(wy)
            for c in itertools.permutations(pairs)
        ]
        cand = [s for s in dict.fromkeys(every) if s not in seen]
        rng.shuffle(cand)
        return out + cand[: k - 1]
    for _ in range(20 * k):
        w, c = wy[:], pairs[:]
        rng.shuffle(w)
        rng.shuffle(c)
        s = f"{gen} | {' '.join(w)} | {' '.join(c)}"
        if s not in seen:
            seen.add(s)
            out.append(s)
            if len(out) == k:
                break
    return out


def expand_variants(strings: Iterable[str], k: int, seed: int = 0) -> tuple[list[str], np.ndarray]:
    """Every string's :func:`scope_variants` (``k`` at most), flattened, and for each output string the position
    of the input string it came from (for repeating targets and averaging predictions)."""
    out: list[str] = []
    groups: list[int] = []
    for i, s in enumerate(strings):
        v = scope_variants(s, k, seed) if k > 1 else [s]
        out.extend(v)
        groups.extend([i] * len(v))
    return out, np.asarray(groups, dtype=np.int64)


def group_mean(values: np.ndarray, groups: np.ndarray) -> np.ndarray:
    """The mean of ``values`` (first axis) over each group 0..G-1 of :func:`expand_variants`."""
    values = np.asarray(values, dtype=np.float64)
    counts = np.bincount(groups)
    sums = np.zeros((len(counts),) + values.shape[1:])
    np.add.at(sums, groups, values)
    return sums / counts.reshape((-1,) + (1,) * (values.ndim - 1))
