"""CHGNet + phonopy heat capacities (cloudlib.phonons) and the committed table data/chgnet_cv/."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

pytest.importorskip("chgnet")
pytest.importorskip("phonopy")

from pymatgen.core import Lattice, Structure  # noqa: E402

from cloudlib import phonons  # noqa: E402
from cloudlib.errors import CloudError, DisorderedStructureError  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
TABLE = ROOT / "data" / "chgnet_cv" / "chgnet_cv.csv"
PROVENANCE = ROOT / "data" / "chgnet_cv" / "provenance.json"
AL2O3_EXP = ROOT / "data" / "reference" / "al2o3_cv_experimental.csv"
CV_COLS = [f"cv_{t}K" for t in phonons.TEMPERATURES]


def silicon() -> Structure:
    return Structure.from_spacegroup("Fd-3m", Lattice.cubic(5.43), ["Si"], [[0, 0, 0]])


@pytest.fixture(scope="module")
def model():
    return phonons.load_model()


@pytest.fixture(scope="module")
def si(model):
    return phonons.phonon_cv(silicon(), model=model, name="Si", supercell_min_length=8.0)


# --------------------------------------------------------------------------- the calculation


def test_silicon_cv_rises_to_dulong_petit(si):
    assert si.n_atoms == 2 and si.spacegroup == 227 and si.formula == "Si"
    assert si.stable and si.min_freq_thz > -0.05 and si.imag_fraction == 0
    assert list(si.temperatures) == list(phonons.TEMPERATURES)
    assert np.all(np.diff(si.cv) > 0)
    limit = phonons.dulong_petit(2)  # 3 n R = 49.9 J/(K mol of 2-atom cells)
    assert si.cv_at(5) < 0.01  # T^3 regime
    assert 0.97 * limit < si.cv_at(1000) <= limit
    assert 0.75 * limit < si.cv_at(300) < 0.92 * limit  # Debye temperature of Si ~ 650 K
    assert si.relax_converged and abs(si.volume_change) < 0.05
    assert si.n_displacements == 1  # one symmetry-independent displacement in diamond
    row = si.as_row()
    assert row["cv_300K"] == pytest.approx(si.cv_at(300)) and "structure" not in row


def test_unstable_structure_is_flagged(model):
    # NaCl squeezed into the CsCl structure (a = 3.3 A, not relaxed): soft modes at the zone boundary
    cscl = Structure(Lattice.cubic(3.3), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    r = phonons.phonon_cv(cscl, model=model, relax=False, name="CsCl-NaCl")
    assert r.spacegroup == 221 and r.n_atoms == 2
    assert not r.stable and r.min_freq_thz < -1.0 and r.imag_fraction > 0.02
    assert r.cv_at(1000) <= phonons.dulong_petit(2) * 1.0001  # imaginary modes are left out of the sums


def test_typed_errors_name_the_material(model):
    disordered = Structure(Lattice.cubic(4.0), [{"Na": 0.5, "K": 0.5}, "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    with pytest.raises(DisorderedStructureError, match="NaKCl"):
        phonons.phonon_cv(disordered, model=model, name="NaKCl")
    s = silicon()
    with pytest.raises(phonons.RelaxationError, match="blown") as exc:
        phonons._check_relaxed(s, math.nan, 0.0, "blown")
    assert isinstance(exc.value, CloudError) and exc.value.input == "blown"
    with pytest.raises(phonons.RelaxationError, match="volume"):
        phonons._check_relaxed(s, -5.0, 1.5, "blown")
    with pytest.raises(ValueError):
        phonons.phonon_cv(s, temperatures=[], model=model)


def test_supercell_choice():
    prim = silicon().get_primitive_structure()
    s, n, length = phonons.choose_supercell(prim.lattice.matrix, prim.frac_coords, [14, 14], min_length=10.0)
    assert n == 64 and length == 10.0  # the 2x2x2 conventional cube beats 4x4x4 primitive (128)
    sc_rows = (prim.lattice.matrix.T @ np.asarray(s)).T
    assert round(abs(np.linalg.det(sc_rows)) / prim.volume) == 32
    assert phonons._widths(sc_rows).min() >= 10.0
    _, n_cap, length_cap = phonons.choose_supercell(prim.lattice.matrix, prim.frac_coords, [14, 14], 10.0, max_atoms=60)
    assert n_cap <= 60 and length_cap < 10.0


# --------------------------------------------------------------------------- the committed table


@pytest.fixture(scope="module")
def table():
    assert TABLE.exists(), "run scripts/make_chgnet_cv.py (or --finalize) to write data/chgnet_cv/"
    return pd.read_csv(TABLE)


@pytest.fixture(scope="module")
def provenance():
    return json.loads(PROVENANCE.read_text())


def test_table_columns_and_units(table, provenance):
    lead = ["id", "source", "formula", "scope", "n_atoms", "spacegroup", "stable", "min_freq_thz"]
    assert list(table.columns[: len(lead)]) == lead
    assert list(table.columns[-len(CV_COLS) :]) == CV_COLS
    assert provenance["settings"]["temperatures_K"] == list(phonons.TEMPERATURES)
    assert table["id"].is_unique and table["stable"].dtype == bool
    cv = table[CV_COLS].to_numpy()
    limit = (3 * phonons.R * table["n_atoms"].to_numpy())[:, None]
    assert np.all(cv >= 0) and np.all(table["cv_300K"] > 0)
    assert np.all(cv <= limit * 1.02)
    stable = table[table["stable"]]
    assert np.all(np.diff(stable[CV_COLS].to_numpy(), axis=1) >= -1e-3), "Cv must rise with T"
    # a stable harmonic crystal is near Dulong-Petit at 1000 K unless it is very stiff (H, C: ~0.88); a whole
    # shallowly imaginary branch (hcp Hg: 0.68) is the rare case notebook 05 drops with a 0.8 cut
    ratio = stable["cv_1000K"] / (3 * phonons.R * stable["n_atoms"])
    assert (ratio > 0.85).mean() > 0.98 and (ratio < 0.8).mean() < 0.01
    s = provenance["settings"]
    rule = table["min_freq_thz"] >= -s["imaginary_tol_thz"]
    if "max_imag_fraction" in s:  # the optional second condition (see cloudlib.phonons)
        rule &= table["imag_fraction"] <= s["max_imag_fraction"]
    assert (table["stable"] == rule).all()
    assert table["scope"].notna().mean() > 0.95


def test_table_matches_provenance(table, provenance):
    counts = provenance["counts"]
    assert counts["computed"] == len(table)
    assert counts["stable"] == int(table["stable"].sum())
    assert counts["unstable_imaginary"] == int((~table["stable"]).sum())
    assert counts["failed"] == len(provenance["failed"])
    assert not set(f["id"] for f in provenance["failed"]) & set(table["id"])
    assert counts["stable"] >= 100
    for key in ("chgnet", "phonopy", "pymatgen"):
        assert provenance["versions"][key]
    for name, src in provenance["sources"].items():
        assert len(src["sha256"]) == 64, name
    assert provenance["compute"]["sum_material_wall_s"] > 0


def test_corundum_is_in_the_table(table):
    row = table.set_index("id").loc["mb-dielectric-4256"]
    assert row["formula"] == "Al2O3" and row["spacegroup"] == 167 and row["n_atoms"] == 10 and row["stable"]
    assert 150 < row["cv_300K"] < 200  # J/(K mol of Al4O6 cells); experiment 2 x 79.0


def test_al2o3_reference():
    if not AL2O3_EXP.exists():
        pytest.skip("no experimental Al2O3 reference")
    ref = pd.read_csv(AL2O3_EXP)
    assert {"temperature_K", "cp_J_per_K_mol_Al2O3", "cp_J_per_K_mol_cell10", "source"} <= set(ref.columns)
    assert np.allclose(ref["cp_J_per_K_mol_cell10"], 2 * ref["cp_J_per_K_mol_Al2O3"])
    assert ref["temperature_K"].is_monotonic_increasing and ref["cp_J_per_K_mol_Al2O3"].is_monotonic_increasing
    assert ref["source"].str.len().min() > 20
    assert (ref["cp_J_per_K_mol_Al2O3"] < 1.05 * 15 * phonons.R).all()


# --------------------------------------------------------------------------- the table's settings and checkpoint


def _script():
    spec = importlib.util.spec_from_file_location("make_chgnet_cv", ROOT / "scripts" / "make_chgnet_cv.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_table_settings_are_the_committed_ones(provenance):
    """One PhononSettings: the library's TableSettings (and the script's defaults) record exactly the committed
    table's settings and hash, so its checkpoint and provenance stay valid."""
    from cloudlib.phonon_table import TABLE_PHONONS, TableSettings

    settings = TableSettings()
    assert settings.record() == provenance["settings"]
    assert settings.hash() == provenance["settings_hash"]
    assert _script().table_settings(_script()._args([])) == settings
    assert TABLE_PHONONS.max_supercell_atoms == 160 and TABLE_PHONONS.max_imag_fraction is None
    # the library default adds the imaginary-share rule: it is recorded, and it changes the hash
    lib = TableSettings(phonons=phonons.PhononSettings())
    assert lib.record()["max_imag_fraction"] == 0.02 and lib.hash() != settings.hash()


def test_phonon_cv_settings_and_overrides(si):
    """phonon_cv records the PhononSettings it ran with; a keyword changes one field; an unknown one is refused."""
    assert si.settings == dataclasses.asdict(dataclasses.replace(phonons.PhononSettings(), supercell_min_length=8.0))
    with pytest.raises(TypeError, match="no_such"):
        phonons.phonon_cv(silicon(), model=object(), no_such=1)


def test_finalize_from_a_cut_checkpoint(tmp_path, si):
    """A checkpoint of the earlier one-file format (its last line cut by a kill) moves into the store once; the table
    is written from the store; a part made with other settings does not count."""
    from cloudlib.phonon_table import Selection, TableSettings, finalize, stores, with_overrides

    settings = TableSettings(selection=Selection(limit=3))
    ckpt = tmp_path / "x"
    legacy = tmp_path / "checkpoint-x.jsonl"
    ok = {"id": "si", "source": "test", "scope": "x", "status": "ok", **si.as_row()}
    ok.pop("name")
    bad = {"id": "bad", "source": "test", "status": "failed", "error": "RelaxationError: bad: boom"}
    legacy.write_text(json.dumps(ok) + "\n" + json.dumps(bad) + "\n" + json.dumps(ok)[:40])
    legacy.with_suffix(".sessions.jsonl").write_text(json.dumps({"wall_s": 2.5, "new_materials": 2}) + "\n")
    prov = finalize(settings, ckpt, tmp_path / "out", log=lambda *_: None)
    out = pd.read_csv(tmp_path / "out" / "chgnet_cv.csv")
    assert list(out["id"]) == ["si"] and out["stable"].tolist() == [True]
    assert prov["counts"] == {"selected": None, "computed": 1, "stable": 1, "unstable_imaginary": 0, "failed": 1}
    assert prov["compute"]["sessions"] == [{"wall_s": 2.5, "new_materials": 2}]
    assert out["cv_300K"].iloc[0] == pytest.approx(si.cv_at(300), abs=1e-3)
    assert not legacy.exists() and (tmp_path / "checkpoint-x.jsonl.migrated").exists()
    materials, sessions = stores(settings, ckpt)
    assert materials.done() == ["bad", "si"] and sessions.done() == ["session-0000"]
    assert (ckpt / "materials" / "si.json").is_file()
    # the same folder under other phonon settings holds nothing of theirs
    other, _ = stores(with_overrides(settings, displacement=0.01), ckpt)
    assert other.keys() == ["bad", "si"] and other.done() == []
    # the checkpoint name does not depend on the limit (the candidate list is prefix-stable)
    assert settings.hash() == TableSettings(selection=Selection(limit=9)).hash() == TableSettings().hash()
