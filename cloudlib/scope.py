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
import json
import multiprocessing as mp
import os
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

from .errors import (
    DisorderedStructureError,
    OverlappingAtomsError,
    StructureError,
    StructureParseError,
    SymmetryError,
    UnknownSpeciesError,
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


def structure_cell(structure: Structure, name: object = None) -> tuple:
    """Validate a structure and reduce it to the payload spglib needs (raises StructureError)."""
    if not isinstance(structure, Structure):
        raise StructureError(f"expected a pymatgen Structure, got {type(structure).__name__}", name)
    if len(structure) == 0:
        raise StructureError("structure has no sites", name)
    unique: dict[Any, int] = {}
    symbols: list[str] = []
    numbers = np.empty(len(structure), dtype=np.intc)
    for i, site in enumerate(structure):
        # Composition's public accessors cost ~10 us each; read its mapping directly when present.
        occ = getattr(site.species, "_data", None) or dict(site.species.items())
        if len(occ) != 1 or abs(next(iter(occ.values())) - 1.0) > 1e-8:
            raise DisorderedStructureError(
                f"site {i} has partial or mixed occupancy ({site.species.formula}); SCOPE needs an ordered crystal",
                name,
            )
        sp = next(iter(occ))
        k = unique.get(sp)
        if k is None:
            symbols.append(_species_symbol(sp, i, name))
            k = unique[sp] = len(unique) + 1
        numbers[i] = k
    lattice = structure.lattice.matrix
    frac = structure.frac_coords
    if not (np.isfinite(lattice).all() and np.isfinite(frac).all()):
        raise StructureError("lattice or coordinates contain NaN/inf", name)
    if abs(np.linalg.det(lattice)) < 1e-6:
        raise StructureError("lattice vectors are degenerate (zero cell volume)", name)
    return (name, lattice, frac, numbers, symbols)


def _check_overlap(name, lattice: np.ndarray, frac: np.ndarray, min_distance: float) -> None:
    """Raise OverlappingAtomsError if two sites are closer than min_distance (minimum image)."""
    n = len(frac)
    if n < 2:
        return
    d = frac[:, None, :] - frac[None, :, :]
    d -= np.rint(d)
    cart = d.reshape(-1, 3) @ lattice
    dist2 = np.einsum("ij,ij->i", cart, cart)
    dist2[:: n + 1] = np.inf  # self-distances
    k = int(dist2.argmin())
    if dist2[k] < min_distance**2:
        i, j = sorted(divmod(k, n))
        raise OverlappingAtomsError(f"sites {i} and {j} are {np.sqrt(dist2[k]):.3f} A apart (< {min_distance} A)", name)


def cell_to_scope(
    cell: tuple,
    variant: str = "reduced",
    symprec: float = 0.01,
    angle_tolerance: float = 5.0,
    min_distance: float = MIN_DISTANCE,
) -> str:
    """SCOPE string of a validated cell (see :func:`structure_cell`)."""
    name, lattice, frac, numbers, symbols = cell
    _check_overlap(name, lattice, frac, min_distance)
    ds = spglib.get_symmetry_dataset((lattice, frac, numbers), symprec=symprec, angle_tolerance=angle_tolerance)
    if ds is None:
        raise SymmetryError(f"spglib could not determine the space group (symprec={symprec})", name)
    spg = int(ds.number)
    wsym = _wyckoff_symbols()[spg]
    if variant == "reduced":
        wyckoff = " ".join(dict.fromkeys(wsym[w] for w in ds.wyckoffs))
    elif variant == "full":
        wyckoff = " ".join(f"{wsym[w]} {symbols[k - 1]}" for w, k in zip(ds.wyckoffs, numbers))
    else:
        raise ValueError(f"variant must be one of {VARIANTS}, got {variant!r}")
    # Composition in pymatgen's order: species by first appearance, summed per element.
    counts = np.bincount(numbers)[1:]
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
) -> str:
    """SCOPE string of a pymatgen Structure.

    Raises a :class:`~cloudlib.errors.StructureError` subclass naming the problem for disordered
    sites, dummy species, overlapping atoms, degenerate lattices and spglib failures.
    """
    if variant not in VARIANTS:
        raise ValueError(f"variant must be one of {VARIANTS}, got {variant!r}")
    return cell_to_scope(structure_cell(structure), variant, symprec, angle_tolerance)


# --------------------------------------------------------------------------- reading files


def read_structure(path: str | os.PathLike) -> Structure:
    """Read one structure (CIF, POSCAR, pymatgen JSON, ... anything ``Structure.from_file`` reads).

    Raises StructureParseError naming the file for a missing or empty file or one that does not parse.
    """
    import warnings

    path = Path(path)
    if not path.is_file():
        raise StructureParseError("no such file", str(path))
    if path.stat().st_size == 0 or not path.read_bytes().strip():
        raise StructureParseError("file is empty", str(path))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            structure = Structure.from_file(path)
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


def _parse_text(obj: str, name: object) -> Structure:
    import ast
    import warnings

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


def as_structure(obj: Any, name: object = None) -> Structure:
    """Structure from a Structure, a pymatgen dict, CifText/DictText or a file path."""
    if isinstance(obj, Structure):
        return obj
    if isinstance(obj, (CifText, DictText, PoscarText)):
        return _parse_text(obj, name)
    if isinstance(obj, BaseException):
        raise obj
    if isinstance(obj, Mapping):
        try:
            return Structure.from_dict(obj)
        except Exception as exc:
            raise StructureParseError(f"not a pymatgen structure dict ({type(exc).__name__}: {exc})", name) from exc
    if isinstance(obj, (str, os.PathLike)):
        return read_structure(obj)
    raise StructureError(f"cannot make a structure from {type(obj).__name__}", name)


# --------------------------------------------------------------------------- batches


def _error_text(exc: BaseException) -> str:
    text = str(exc)
    return f"{type(exc).__name__}: {text}"


def _encode_item(name, item, variant: str, symprec: float, angle_tolerance: float) -> tuple[str | None, str | None]:
    """(scope, None) or (None, "ErrorClass: message") for one input item; never raises."""
    try:
        cell = item if isinstance(item, tuple) else structure_cell(as_structure(item, name), name)
        return cell_to_scope(cell, variant, symprec, angle_tolerance), None
    except Exception as exc:  # StructureError, or anything unexpected: keep going, say what it was
        return None, _error_text(exc)


# Inputs for forked workers: set just before the pool forks, so each worker reads the items from memory
# it inherited instead of having Structures pickled to it (the parent would otherwise do serial work).
_FORKED: tuple | None = None


def _work_forked(i: int):
    items, variant, symprec, angle_tolerance = _FORKED
    return _encode_item(*items[i], variant, symprec, angle_tolerance)


def _work_shipped(args):
    return _encode_item(*args)


def _shippable(name, obj):
    """For spawn-based pools: a light picklable payload (validated cell, text, path or the error)."""
    if isinstance(obj, (str, os.PathLike)):
        return str(obj) if not isinstance(obj, (CifText, DictText, PoscarText)) else obj
    try:
        return structure_cell(as_structure(obj, name), name)
    except StructureError as exc:
        return exc


def scope_table(
    structures: Mapping[Any, Any] | Iterable[Any],
    variant: str = "reduced",
    jobs: int = 1,
    symprec: float = 0.01,
    angle_tolerance: float = 5.0,
    progress: bool = True,
    chunksize: int = 32,
) -> pd.DataFrame:
    """SCOPE for many structures; one row per input, never dropped.

    ``structures`` is a mapping id -> item (the index of the result) or a sequence of items (index
    0..n-1); an item is a Structure, a pymatgen structure dict, :class:`CifText` / :class:`DictText`
    (parsed in the workers) or a path to a structure file.
    Returns columns ``scope`` (None on failure) and ``error`` (None on success, else
    ``"ErrorClass: message"``). ``jobs > 1`` uses that many worker processes.
    """
    from tqdm.auto import tqdm

    if variant not in VARIANTS:
        raise ValueError(f"variant must be one of {VARIANTS}, got {variant!r}")
    items = list(structures.items()) if isinstance(structures, Mapping) else list(enumerate(structures))
    ids = [k for k, _ in items]
    bar = dict(total=len(items), disable=not progress, desc=f"SCOPE ({variant})", unit="struct")
    if jobs is None or jobs < 1:
        jobs = os.cpu_count() or 1
    if jobs == 1 or len(items) < 2 * chunksize:
        results = [_encode_item(k, v, variant, symprec, angle_tolerance) for k, v in tqdm(items, **bar)]
    elif "fork" in mp.get_all_start_methods():
        global _FORKED
        _FORKED = (items, variant, symprec, angle_tolerance)
        try:
            with mp.get_context("fork").Pool(jobs) as pool:
                results = list(tqdm(pool.imap(_work_forked, range(len(items)), chunksize=chunksize), **bar))
        finally:
            _FORKED = None
    else:
        tasks = [(k, _shippable(k, v), variant, symprec, angle_tolerance) for k, v in items]
        with mp.get_context("spawn").Pool(jobs) as pool:
            results = list(tqdm(pool.imap(_work_shipped, tasks, chunksize=chunksize), **bar))
    df = pd.DataFrame(results, columns=["scope", "error"], index=pd.Index(ids, name="id"))
    return df


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
