"""Harmonic phonon heat capacity Cv(T) from CHGNet forces and phonopy finite displacements.

:func:`phonon_cv` takes one ordered crystal and returns :class:`PhononCv`: Cv(T) in J/(K mol of
cells), the cell being the crystal's primitive cell with ``n_atoms`` atoms, the same units as the
CLOUD-DEBYE data (``cv`` per mol of the cell, ``n_atoms`` atoms per cell; the high-temperature limit
is 3 ``n_atoms`` R).

Recipe (all settings are arguments and are recorded in the result):

1. primitive cell (spglib, ``symprec``);
2. relaxation of positions and cell with CHGNet (``chgnet.model.StructOptimizer``: FIRE on a
   ``FrechetCellFilter``, a step cap), with ASE's ``FixSymmetry`` constraint so the space group is
   kept exactly and phonopy needs as few displacements as possible;
3. a supercell whose perpendicular widths are all >= ``supercell_min_length`` (the smaller of a
   diagonal multiple of the primitive cell and one of the conventional cell), at most
   ``max_supercell_atoms`` atoms (the length is lowered in 1 A steps until it fits);
4. phonopy displacements of ``displacement`` A (default 0.03 A, not the usual DFT 0.01 A: CHGNet's
   energy surface is not smooth on the 0.01 A scale -- for rock-salt NaCl at its CHGNet lattice
   constant the restoring force on a displaced Na is a third of the harmonic value at 0.005 A and two
   thirds at 0.01 A, which gives an imaginary mode of -0.8 THz; 0.03 A is in the harmonic regime; on 30
   high-symmetry test crystals it turned 2 spurious instabilities (A15 Nb3Pt at -2.1 THz, TmCu5) into
   stable spectra, none the other way, and changed Cv(300 K) of the stable ones by < 2 %. The price:
   a double well shallower than the 0.03 A probe is not seen (simple-cubic Si at a = 2.53 A is
   unstable at 0.01 A, stable at 0.03 A); wells that shallow hold ~1e-4 eV, below k_B T at a few K,
   and thermal amplitudes (~0.05-0.1 A at 300 K) average over them, so for Cv(T) this is the
   sensible probe); forces from CHGNet (``model.predict_structure``, one
   structure per batch, which is fastest on a CPU), minus the residual forces of the undisplaced
   supercell; force constants symmetrized (translational invariance);
5. frequencies and thermal properties on a Gamma-centred mesh from phonopy's length rule
   (``mesh_length`` A, i.e. about ``mesh_length / a`` points along a reciprocal axis of length 1/a).

Dynamical stability: the crystal is called *stable* when the lowest frequency on the mesh is above
``-imaginary_tol_thz`` (default 0.3 THz, about 1.2 meV or 10 cm^-1) **and** at most
``max_imag_fraction`` (default 2 %) of all modes on the mesh are below -0.01 THz. The tolerance is
needed because acoustic branches next to Gamma, and flat low branches of soft crystals, come out
slightly negative from CHGNet forces and finite supercells even for stable crystals (in a test of
600 crystals 75 of 307 otherwise stable ones had a minimum between -0.3 and -0.01 THz, imaginary
share <= 0.8 %); genuine soft modes are mostly well below -0.5 THz. The second condition catches a
whole branch that is shallowly imaginary (hcp-like Hg: minimum -0.2 THz but 32 % of the modes
imaginary, so Cv saturates at 2/3 of 3R). ``min_freq_thz`` and ``imag_fraction`` are recorded so a
stricter rule can be applied afterwards; ``max_imag_fraction=None`` drops the second condition (the rule the
committed ``data/chgnet_cv`` table was computed with: :func:`usable_curves` instead drops rows whose Cv(1000 K)
stays below :data:`MIN_SATURATION` = 80 % of 3NR, which is what a shallowly imaginary branch does to a curve).

Reading the committed table: :func:`load_table` (curves, temperatures, provenance) and :func:`usable_curves`.

Failures raise :class:`PhononError` subclasses naming the material (``.input``).
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from .debye import R, dulong_petit  # noqa: F401 - part of this module's API (3 n R, the classical limit)
from .errors import CloudError

#: Frequencies below minus this (THz) count as imaginary in ``imag_fraction``.
IMAG_FLOOR_THZ = 0.01
#: Default temperatures (K) of the committed table.
TEMPERATURES = (5, 10, 20, 30, 50, 75, 100, 150, 200, 250, 300, 400, 500, 600, 800, 1000)
#: A usable curve reaches this share of 3NR by 1000 K (a whole shallowly imaginary branch keeps it lower).
MIN_SATURATION = 0.8


class PhononError(CloudError):
    """A phonon calculation that could not be done for a material."""


class RelaxationError(PhononError):
    """The CHGNet relaxation diverged (non-finite energy, collapsed or exploded cell, atoms on top of each other)."""


class SupercellError(PhononError):
    """No acceptable supercell (e.g. the primitive cell alone exceeds the atom cap)."""


@dataclass(frozen=True)
class PhononSettings:
    """Everything that determines a :func:`phonon_cv` result (recorded in each result and in provenance). The
    defaults are the library's; the committed ``data/chgnet_cv`` table used ``max_supercell_atoms=160`` and
    ``max_imag_fraction=None`` (:data:`cloudlib.phonon_table.TABLE_PHONONS`)."""

    relax: bool = True
    fmax: float = 0.01  # eV/A
    relax_steps: int = 300
    symprec: float = 1e-3  # symmetry tolerance for the primitive cell and FixSymmetry (A)
    supercell_min_length: float = 10.0  # A, minimum perpendicular width of the supercell
    max_supercell_atoms: int = 200
    displacement: float = 0.03  # A (see the module docstring)
    mesh_length: float = 60.0  # A (phonopy length rule)
    imaginary_tol_thz: float = 0.3
    max_imag_fraction: float | None = 0.02  # None: the minimum frequency alone decides stability
    batch_size: int = 1  # batching is slower on CPU (large allocations)

    def record(self) -> dict:
        """The settings as the committed table's provenance names them (its ``settings_hash`` depends on these
        keys: ``batch_size`` is left out, it does not change a result; the stability rule only when it has a
        ``max_imag_fraction``)."""
        out = {
            "relax": self.relax,
            "fmax_ev_per_A": self.fmax,
            "relax_steps": self.relax_steps,
            "relax_optimizer": "FIRE on FrechetCellFilter with FixSymmetry (chgnet StructOptimizer)",
            "symprec": self.symprec,
            "supercell_min_length_A": self.supercell_min_length,
            "max_supercell_atoms": self.max_supercell_atoms,
            "displacement_A": self.displacement,
            "mesh_length_A": self.mesh_length,
            "imaginary_tol_thz": self.imaginary_tol_thz,
        }
        if self.max_imag_fraction is not None:
            out.update(
                {
                    "max_imag_fraction": self.max_imag_fraction,
                    "imag_floor_thz": IMAG_FLOOR_THZ,
                    "stability_rule": "min_freq_thz >= -imaginary_tol_thz and imag_fraction <= max_imag_fraction",
                }
            )
        return out


@dataclass
class PhononCv:
    """Result of :func:`phonon_cv`. ``cv[i]`` (J/(K mol of cells)) belongs to ``temperatures[i]``."""

    name: str | None
    formula: str  # reduced formula
    n_atoms: int  # atoms in the cell Cv refers to (the primitive cell)
    spacegroup: int
    temperatures: np.ndarray
    cv: np.ndarray
    min_freq_thz: float
    min_freq_q: list  # fractional q (reciprocal primitive basis) where the lowest frequency sits
    imag_fraction: float  # share of the modes on the mesh below -0.01 THz
    stable: bool
    energy_ev_per_atom: float  # CHGNet energy of the relaxed cell
    volume_change: float  # relaxed / input volume - 1
    relax_steps: int
    relax_converged: bool
    max_force_ev_a: float  # largest residual force after relaxation
    n_displacements: int
    supercell_matrix: list
    supercell_atoms: int
    supercell_length: float  # the minimum width actually used (A)
    mesh: list
    wall_s: float
    settings: dict = field(default_factory=dict)
    structure: Any = None  # the relaxed primitive cell (pymatgen Structure)

    def cv_at(self, temperature: float) -> float:
        """Cv at a temperature of the grid (J/(K mol of cells))."""
        i = np.flatnonzero(np.isclose(self.temperatures, temperature))
        if not len(i):
            raise KeyError(f"{temperature} K is not one of {list(self.temperatures)}")
        return float(self.cv[i[0]])

    def as_row(self) -> dict:
        """Flat JSON-able dict: scalar fields plus ``cv_<T>K`` columns (no structure)."""
        row = {k: v for k, v in asdict(self).items() if k not in ("temperatures", "cv", "structure", "settings")}
        for t, c in zip(self.temperatures, self.cv):
            row[cv_column(t)] = float(c)
        return row


def cv_column(t: float) -> str:
    """The table column of Cv at temperature ``t``: ``cv_300K``, ``cv_2.5K``."""
    return f"cv_{int(t)}K" if float(t).is_integer() else f"cv_{t:g}K"


def cv_columns(table) -> tuple[list[str], np.ndarray]:
    """The ``cv_<T>K`` columns of a table and their temperatures (K), in column order."""
    cols = [c for c in table.columns if c.startswith("cv_") and c.endswith("K")]
    return cols, np.array([float(c[3:-1]) for c in cols])


def load_table(folder=None):
    """The committed CHGNet heat-capacity table: ``(table, provenance)`` from ``data/chgnet_cv`` (or ``folder``)."""
    import json
    from pathlib import Path

    import pandas as pd

    from .paths import data_dir

    folder = Path(folder) if folder is not None else data_dir() / "chgnet_cv"
    return pd.read_csv(folder / "chgnet_cv.csv"), json.loads((folder / "provenance.json").read_text())


def usable_curves(table, min_saturation: float = MIN_SATURATION):
    """The rows fit for training and testing: dynamically stable, with a SCOPE string, and with Cv(1000 K) at
    least ``min_saturation`` x 3NR (see the module docstring). Index reset."""
    saturates = table["cv_1000K"] >= min_saturation * dulong_petit(table["n_atoms"])
    return table[table["stable"].astype(bool) & saturates & table["scope"].notna()].reset_index(drop=True)


# --------------------------------------------------------------------------- model

_MODEL = None


def load_model():
    """The pretrained CHGNet shipped with the chgnet wheel (loaded once; no network needed)."""
    global _MODEL
    if _MODEL is None:
        from chgnet.model import CHGNet

        _MODEL = CHGNet.load(use_device="cpu", verbose=False)
    return _MODEL


# --------------------------------------------------------------------------- pieces


def primitive_cell(structure, symprec: float = 1e-3, name=None):
    """The standard primitive cell of an ordered structure (pymatgen), with its space-group number."""
    from pymatgen.symmetry.analyzer import SpacegroupAnalyzer

    from .errors import DisorderedStructureError, SymmetryError

    if not structure.is_ordered:
        raise DisorderedStructureError("partial occupancies: phonons need an ordered crystal", name)
    try:
        sga = SpacegroupAnalyzer(structure, symprec=symprec)
        prim = sga.get_primitive_standard_structure()
        spg = sga.get_space_group_number()
    except Exception as exc:  # spglib returns None -> pymatgen raises assorted errors
        raise SymmetryError(f"spglib failed ({type(exc).__name__}: {exc})", name) from exc
    for key in list(prim.site_properties):
        prim.remove_site_property(key)
    return prim, int(spg)


def _widths(lattice_rows: np.ndarray) -> np.ndarray:
    """Perpendicular widths (distances between opposite faces) of a cell given by row vectors."""
    vol = abs(np.linalg.det(lattice_rows))
    a, b, c = lattice_rows
    return vol / np.array(
        [np.linalg.norm(np.cross(b, c)), np.linalg.norm(np.cross(c, a)), np.linalg.norm(np.cross(a, b))]
    )


def _conventional_matrix(lattice, frac, numbers, symprec: float) -> np.ndarray | None:
    """Integer M with conventional cell (columns) = primitive cell (columns) @ M, or None."""
    import spglib

    ds = spglib.get_symmetry_dataset((lattice, frac, numbers), symprec=symprec)
    if ds is None:
        return None
    m = np.linalg.inv(np.asarray(ds.transformation_matrix, dtype=float))
    mi = np.rint(m)
    if not np.allclose(m, mi, atol=1e-6) or abs(np.linalg.det(mi)) < 0.5:
        return None
    return mi.astype(int)


def choose_supercell(lattice, frac, numbers, min_length: float = 10.0, max_atoms: int = 200, symprec: float = 1e-3):
    """Supercell matrix (phonopy convention: supercell columns = cell columns @ S) for a primitive cell.

    Candidates: diagonal multiples of the primitive cell and of the conventional cell; the one with
    fewest atoms whose perpendicular widths are all >= ``min_length`` wins (ties: conventional). If it
    has more than ``max_atoms`` atoms the length is lowered in 1 A steps. Returns
    ``(S, n_atoms_supercell, length_used)``.
    """
    lattice = np.asarray(lattice, dtype=float)
    nat = len(numbers)
    bases = [np.eye(3, dtype=int)]
    conv = _conventional_matrix(lattice, frac, numbers, symprec)
    if conv is not None and not np.array_equal(np.abs(conv), np.eye(3, dtype=int)):
        bases.append(conv)
    length = float(min_length)
    while True:
        best = None
        for base in bases:
            cell_rows = (lattice.T @ base).T
            mult = np.maximum(1, np.ceil(length / _widths(cell_rows) - 1e-6)).astype(int)
            s = base @ np.diag(mult)
            n = int(round(abs(np.linalg.det(s)))) * nat
            if best is None or n <= best[1]:
                best = (s, n)
        if best[1] <= max_atoms or length <= 1.0:
            break
        length -= 1.0
    if best[1] > max_atoms:
        raise SupercellError(f"smallest supercell has {best[1]} atoms > max_supercell_atoms={max_atoms}")
    return best[0], best[1], length


_OPTIMIZERS: dict = {}


def relax_structure(structure, model, fmax: float, steps: int, symprec: float, name=None):
    """CHGNet relaxation (positions + cell, FIRE, FixSymmetry). Returns (structure, info dict)."""
    import contextlib
    import io
    import warnings

    from ase.constraints import FixSymmetry
    from chgnet.model import StructOptimizer
    from pymatgen.io.ase import AseAtomsAdaptor

    atoms = AseAtomsAdaptor.get_atoms(structure)
    v0 = atoms.get_volume()
    atoms.set_constraint(FixSymmetry(atoms, symprec=symprec))
    opt = _OPTIMIZERS.get(id(model))
    if opt is None:
        with contextlib.redirect_stdout(io.StringIO()):  # "CHGNet will run on cpu"
            opt = _OPTIMIZERS[id(model)] = StructOptimizer(model=model, optimizer_class="FIRE")
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            out = opt.relax(atoms, fmax=fmax, steps=steps, relax_cell=True, verbose=False, assign_magmoms=False)
    except Exception as exc:
        raise RelaxationError(f"CHGNet relaxation failed ({type(exc).__name__}: {exc})", name) from exc
    relaxed = out["final_structure"]
    traj = out["trajectory"]
    energies = np.asarray(traj.energies, dtype=float)
    forces = np.asarray(traj.forces[-1], dtype=float) if len(traj.forces) else np.zeros((1, 3))
    energy = float(energies[-1]) / len(relaxed) if len(energies) else math.nan
    vchange = relaxed.volume / v0 - 1.0
    _check_relaxed(relaxed, energy, vchange, name)
    fmax_now = float(np.linalg.norm(forces, axis=1).max())
    for key in list(relaxed.site_properties):
        relaxed.remove_site_property(key)
    n_steps = max(0, len(energies) - 2)  # the observer logs the start and the end once each
    info = {
        "energy_ev_per_atom": energy,
        "volume_change": float(vchange),
        "relax_steps": n_steps,
        "relax_converged": bool(fmax_now <= fmax * 1.0001),  # atom forces; the cell stress may lag
        "max_force_ev_a": fmax_now,
    }
    return relaxed, info


def _check_relaxed(structure, energy: float, vchange: float, name) -> None:
    if not math.isfinite(energy):
        raise RelaxationError("non-finite CHGNet energy after relaxation", name)
    if not (-0.5 < vchange < 1.0):
        raise RelaxationError(f"volume changed by {100 * vchange:+.0f}% during relaxation", name)
    if len(structure) > 1:
        d = structure.distance_matrix + np.eye(len(structure)) * 1e9
        if d.min() < 0.6:
            raise RelaxationError(f"atoms {d.min():.2f} A apart after relaxation", name)
    else:  # one atom: its nearest image
        if min(structure.lattice.abc) < 0.6:
            raise RelaxationError("lattice collapsed during relaxation", name)


def chgnet_forces(structures: Sequence, model, batch_size: int = 1) -> list[np.ndarray]:
    """CHGNet forces (eV/A) for a list of pymatgen structures, predicted in batches."""
    preds = model.predict_structure(list(structures), task="ef", batch_size=batch_size)
    if isinstance(preds, dict):
        preds = [preds]
    return [np.asarray(p["f"], dtype=float) for p in preds]


def _to_phonopy_atoms(structure):
    from phonopy.structure.atoms import PhonopyAtoms

    return PhonopyAtoms(
        symbols=[site.specie.symbol for site in structure],
        cell=structure.lattice.matrix,
        scaled_positions=structure.frac_coords,
    )


def _to_structure(patoms):
    from pymatgen.core import Lattice, Structure

    return Structure(Lattice(patoms.cell), patoms.symbols, patoms.scaled_positions)


def displacement_plan(
    structure,
    symprec: float = 1e-3,
    supercell_min_length: float = 10.0,
    max_supercell_atoms: int = 200,
    displacement: float = 0.03,
    name=None,
) -> dict:
    """Cost of a phonon run without any CHGNet call: primitive size, supercell, number of displacements.

    ``force_atoms`` = (displacements + 1) x supercell atoms is proportional to the CHGNet time.
    """
    from phonopy import Phonopy

    prim, spg = primitive_cell(structure, symprec, name)
    numbers = [site.specie.Z for site in prim]
    s, n_sc, length = choose_supercell(
        prim.lattice.matrix, prim.frac_coords, numbers, supercell_min_length, max_supercell_atoms, symprec
    )
    ph = Phonopy(_to_phonopy_atoms(prim), supercell_matrix=s, primitive_matrix="P", symprec=1e-4, log_level=0)
    ph.generate_displacements(distance=displacement)
    n_disp = len(ph.supercells_with_displacements)
    return {
        "n_atoms": len(prim),
        "spacegroup": spg,
        "supercell_atoms": n_sc,
        "supercell_length": length,
        "n_displacements": n_disp,
        "force_atoms": (n_disp + 1) * n_sc,
    }


# --------------------------------------------------------------------------- the calculation


def phonon_cv(
    structure,
    temperatures: Sequence[float] = TEMPERATURES,
    model=None,
    settings: PhononSettings | None = None,
    name: str | None = None,
    **overrides,
) -> PhononCv:
    """Harmonic Cv(T) of one crystal (J/(K mol of primitive cells)) with CHGNet + phonopy.

    ``structure``: a pymatgen Structure (or anything :func:`cloudlib.scope.as_structure` takes).
    ``model``: a loaded CHGNet (default: :func:`load_model`). ``settings``: a :class:`PhononSettings` (default:
    the library's); ``overrides``: fields of it to change for this call, e.g. ``relax=False`` uses the geometry
    as given (useful for tests of instability). See the module docstring for the recipe and the
    stability rule. Raises :class:`PhononError` subclasses (and the structure errors of
    :mod:`cloudlib.errors`) naming ``name``.
    """
    import dataclasses

    from phonopy import Phonopy

    from .scope import as_structure

    t0 = time.perf_counter()
    settings = dataclasses.replace(settings or PhononSettings(), **overrides)  # an unknown name: TypeError
    temps = np.asarray(temperatures, dtype=float)
    if temps.ndim != 1 or not len(temps) or (temps < 0).any():
        raise ValueError(f"temperatures must be a non-empty list of K >= 0, got {temperatures!r}")
    model = load_model() if model is None else model
    structure = as_structure(structure, name)
    prim, spg = primitive_cell(structure, settings.symprec, name)

    if settings.relax:
        prim, info = relax_structure(prim, model, settings.fmax, settings.relax_steps, settings.symprec, name)
    else:
        pred = model.predict_structure(prim, task="ef")
        f_max = float(np.linalg.norm(np.asarray(pred["f"]), axis=1).max())
        info = {
            "energy_ev_per_atom": float(pred["e"]),  # CHGNet predicts energy per atom
            "volume_change": 0.0,
            "relax_steps": 0,
            "relax_converged": f_max <= settings.fmax,
            "max_force_ev_a": f_max,
        }

    lattice = prim.lattice.matrix
    numbers = [site.specie.Z for site in prim]
    s, n_sc, length = choose_supercell(
        lattice,
        prim.frac_coords,
        numbers,
        settings.supercell_min_length,
        settings.max_supercell_atoms,
        settings.symprec,
    )

    try:
        ph = Phonopy(_to_phonopy_atoms(prim), supercell_matrix=s, primitive_matrix="P", symprec=1e-4, log_level=0)
        ph.generate_displacements(distance=settings.displacement)
        supercells = [_to_structure(sc) for sc in ph.supercells_with_displacements]
        perfect = _to_structure(ph.supercell)
        forces = chgnet_forces([perfect, *supercells], model, settings.batch_size)
        residual = forces[0]
        ph.forces = np.array([f - residual for f in forces[1:]])
        ph.produce_force_constants()
        ph.symmetrize_force_constants()
        ph.run_mesh(float(settings.mesh_length), is_gamma_center=True, with_eigenvectors=False)
        mesh = ph.mesh
        freqs = np.asarray(mesh.frequencies)
        qpoints = np.asarray(mesh.qpoints)
        weights = np.asarray(mesh.weights, dtype=float)
        mesh_numbers = [int(x) for x in mesh.mesh_numbers]
        ph.run_thermal_properties(temperatures=temps, exclude_gamma_acoustic=True)
        cv = np.asarray(ph.get_thermal_properties_dict()["heat_capacity"], dtype=float)
    except PhononError:
        raise
    except Exception as exc:  # phonopy/CHGNet errors: name the material
        raise PhononError(f"phonopy/CHGNet step failed ({type(exc).__name__}: {exc})", name) from exc
    if not np.isfinite(freqs).all() or not np.isfinite(cv).all():
        raise PhononError("non-finite frequencies or heat capacity", name)
    min_freq = float(freqs.min())
    # share of all modes (q-point weights included) below -IMAG_FLOOR_THZ
    imag_fraction = float((weights[:, None] * (freqs < -IMAG_FLOOR_THZ)).sum() / (weights.sum() * freqs.shape[1]))
    q_min = [round(float(x), 4) for x in qpoints[int(np.argmin(freqs.min(axis=1)))]]
    return PhononCv(
        name=name,
        formula=prim.composition.reduced_formula,
        n_atoms=len(prim),
        spacegroup=spg,
        temperatures=temps,
        cv=cv,
        min_freq_thz=min_freq,
        min_freq_q=q_min,
        imag_fraction=imag_fraction,
        stable=bool(
            min_freq >= -settings.imaginary_tol_thz
            and (settings.max_imag_fraction is None or imag_fraction <= settings.max_imag_fraction)
        ),
        energy_ev_per_atom=info["energy_ev_per_atom"],
        volume_change=info["volume_change"],
        relax_steps=info["relax_steps"],
        relax_converged=info["relax_converged"],
        max_force_ev_a=info["max_force_ev_a"],
        n_displacements=len(supercells),
        supercell_matrix=np.asarray(s).tolist(),
        supercell_atoms=n_sc,
        supercell_length=length,
        mesh=mesh_numbers,
        wall_s=time.perf_counter() - t0,
        settings=asdict(settings),
        structure=prim,
    )
