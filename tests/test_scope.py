"""SCOPE: exactness against the paper's strings, invariances, bad inputs, batches and the CLI."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
from conftest import NACL
from pymatgen.core import DummySpecies, Lattice, Structure

from cloudlib.errors import (
    DisorderedStructureError,
    OverlappingAtomsError,
    StructureError,
    StructureParseError,
    UnknownSpeciesError,
)
from cloudlib.scope import (
    PAPER_GENERATOR_OVERRIDES,
    format_fraction,
    generator_strings,
    parse_scope,
    read_structure,
    scope_table,
    structure_to_scope,
)
from cloudlib.tokenizer import make_tokenizer


def nacl() -> Structure:
    return Structure.from_spacegroup("Fm-3m", Lattice.cubic(5.64), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])


# --------------------------------------------------------------------------- the paper's strings


def test_identical_to_paper_for_all_dielectric_fold0(dielectric_structures, paper_scope):
    """All 3,811 + 953 fold-0 strings of matbench_dielectric equal the authors' released strings."""
    assert paper_scope["split"].value_counts().to_dict() == {"train_and_val": 3811, "test": 953}
    ours = scope_table(dielectric_structures.loc[paper_scope.index, "structure"].to_dict(), jobs=2, progress=False)
    assert ours["error"].isna().all()
    diff = ours["scope"] != paper_scope["scope"]
    assert not diff.any(), pd.DataFrame({"ours": ours.scope[diff], "paper": paper_scope.scope[diff]}).head()


def test_nacl_and_cell_choice():
    s = nacl()
    assert structure_to_scope(s) == NACL
    assert structure_to_scope(s * (1, 2, 3)) == NACL
    prim = s.get_primitive_structure()  # pymatgen lists Cl first: same tokens, site order kept
    assert structure_to_scope(prim) == "1 6 a O D D a D O D b O O O c O O O d O O O e O O O 0 | 4b 4a | Cl 0.5 Na 0.5"


def test_full_variant_one_pair_per_site():
    full = structure_to_scope(nacl(), variant="full")
    gen, wyck, comp = full.split(" | ")
    assert wyck.split() == ["4a", "Na"] * 4 + ["4b", "Cl"] * 4
    assert comp == "Na 0.5 Cl 0.5"
    with pytest.raises(ValueError, match="variant"):
        structure_to_scope(nacl(), variant="short")


def test_generator_overrides_follow_the_paper():
    gens = generator_strings()
    assert len(gens) == 230 and len(set(gens.values())) == 230
    for number, enc in PAPER_GENERATOR_OVERRIDES.items():
        assert gens[number] == enc


def test_fraction_rounding_is_numpys():
    """The paper rounded with np.round; Python's round(x, 2) disagrees on e.g. 1/40."""
    for n in range(1, 400):
        for c in range(n + 1):
            assert format_fraction(c / n) == str(np.round(c / n, 2)), (c, n)
    assert format_fraction(1 / 40) == "0.02" != str(round(1 / 40, 2))


def test_oxidation_states_are_distinct_species_like_pymatgen():
    from pymatgen.symmetry.analyzer import SpacegroupAnalyzer

    s = Structure(Lattice.cubic(4.0), ["Fe", "Fe"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    s.add_oxidation_state_by_site([2, 3])
    scope = structure_to_scope(s)
    assert parse_scope(scope)["spacegroup"] == SpacegroupAnalyzer(s).get_space_group_number() == 221
    assert scope.endswith("| Fe 1.0")


def test_parse_scope_round_trip():
    p = parse_scope(NACL)
    assert p == {"spacegroup": 225, "wyckoffs": ["4a", "4b"], "composition": {"Na": 0.5, "Cl": 0.5}}
    with pytest.raises(ValueError, match="3 sections"):
        parse_scope("1 6 a | 4a")


# --------------------------------------------------------------------------- bad inputs


def test_one_atom_cell_is_fine():
    po = Structure(Lattice.cubic(3.35), ["Po"], [[0, 0, 0]])
    assert structure_to_scope(po).endswith("| 1a | Po 1.0")
    fcc_prim = Structure(Lattice.from_parameters(2.55, 2.55, 2.55, 60, 60, 60), ["Cu"], [[0, 0, 0]])
    assert parse_scope(structure_to_scope(fcc_prim))["spacegroup"] == 225


def test_partial_occupancy():
    s = Structure(Lattice.cubic(4), [{"Fe": 0.5, "Ni": 0.5}, "O"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    with pytest.raises(DisorderedStructureError, match=r"site 0 has partial or mixed occupancy \(Fe0.5 Ni0.5\)"):
        structure_to_scope(s)
    vac = Structure(Lattice.cubic(4), [{"Fe": 0.9}, "O"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    with pytest.raises(DisorderedStructureError, match="site 0"):
        structure_to_scope(vac)


def test_dummy_species():
    s = Structure(Lattice.cubic(4), [DummySpecies("X"), "O"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    with pytest.raises(UnknownSpeciesError, match="site 0 holds X0\\+, which is not a chemical element"):
        structure_to_scope(s)


def test_overlapping_atoms_even_of_different_species():
    """spglib alone returns a 'space group' for Na and Cl on one point; we refuse."""
    s = Structure(Lattice.cubic(4), ["Na", "Cl", "Cl"], [[0, 0, 0], [0, 0, 0.01], [0.5, 0.5, 0.5]])
    with pytest.raises(OverlappingAtomsError, match=r"sites 0 and 1 are 0.040 A apart"):
        structure_to_scope(s)
    across_boundary = Structure(Lattice.cubic(4), ["Na", "Cl"], [[0.001, 0, 0], [0.999, 0, 0]])
    with pytest.raises(OverlappingAtomsError):
        structure_to_scope(across_boundary)


def test_not_a_structure():
    with pytest.raises(StructureError, match="expected a pymatgen Structure"):
        structure_to_scope("NaCl")


def test_unparsable_and_empty_files(tmp_path):
    bad = tmp_path / "bad.cif"
    bad.write_text("data_x\n_cell_length_a 4.0\nthis is not a CIF loop\n")
    with pytest.raises(StructureParseError, match="bad.cif: does not parse"):
        read_structure(bad)
    empty = tmp_path / "empty.cif"
    empty.write_text("  \n")
    with pytest.raises(StructureParseError, match="empty.cif: file is empty"):
        read_structure(empty)
    with pytest.raises(StructureParseError, match="no such file"):
        read_structure(tmp_path / "missing.cif")


def test_full_variant_over_block_size_is_refused_by_the_tokenizer(dielectric_structures):
    from cloudlib.errors import BlockSizeError

    big = max(dielectric_structures["structure"].head(300), key=len)
    full = structure_to_scope(big, variant="full")
    tok = make_tokenizer()
    with pytest.raises(BlockSizeError, match="block_size=64"):
        tok(full)
    assert len(tok(full, truncation=True)["input_ids"]) == 64


# --------------------------------------------------------------------------- batches


def test_scope_table_keeps_every_row_and_reports_errors(tmp_path, dielectric_structures):
    good = dielectric_structures["structure"].head(80).to_dict()
    bad_cif = tmp_path / "bad.cif"
    bad_cif.write_text("garbage")
    items = {
        **good,
        "disordered": Structure(Lattice.cubic(4), [{"Fe": 0.5}], [[0, 0, 0]]),
        "file": str(bad_cif),
        "dict": nacl().as_dict(),
        "nonsense": 42,
    }
    for jobs in (1, 2):
        df = scope_table(items, jobs=jobs, progress=False, chunksize=8)
        assert list(df.index) == list(items)
        assert df.loc["dict", "scope"] == NACL
        assert df.loc["disordered", "error"].startswith("DisorderedStructureError: disordered: site 0")
        assert df.loc["file", "error"].startswith("StructureParseError:")
        assert df.loc["nonsense", "error"].startswith("StructureError:")
        assert df.loc[list(good), "error"].isna().all()
        if jobs == 1:
            first = df
    pd.testing.assert_frame_equal(first, df)


def test_scope_table_sequence_input():
    df = scope_table([nacl(), nacl()], progress=False)
    assert list(df.index) == [0, 1] and (df["scope"] == NACL).all()


# --------------------------------------------------------------------------- CLI


def _cli(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "cloudlib", *args], capture_output=True, text=True, cwd=cwd)


def test_cli_folder_with_good_and_bad_cifs(tmp_path):
    folder = tmp_path / "cifs"
    folder.mkdir()
    nacl().to(filename=str(folder / "nacl.cif"))
    (folder / "broken.cif").write_text("data_broken\n_cell_length_a 5\n")
    (folder / "empty.cif").write_text("")
    Structure(Lattice.cubic(4), [{"Fe": 0.5, "Co": 0.5}], [[0, 0, 0]]).to(filename=str(folder / "alloy.cif"))
    out = tmp_path / "out.csv"
    r = _cli("scope", str(folder), "-o", str(out), "--quiet")
    assert r.returncode == 2, r.stderr
    df = pd.read_csv(out, index_col="id")
    assert sorted(df.index) == ["alloy.cif", "broken.cif", "empty.cif", "nacl.cif"]
    assert df.loc["nacl.cif", "scope"] == NACL
    assert (
        df.loc["empty.cif", "error"].startswith("StructureParseError:")
        and "file is empty" in df.loc["empty.cif", "error"]
    )
    assert df.loc["alloy.cif", "error"].startswith("DisorderedStructureError:")
    assert "1 ok, 3 failed" in r.stderr


def test_cli_json_inputs_and_exit_codes(tmp_path):
    s = nacl()
    as_dict = tmp_path / "by_id.json"
    as_dict.write_text(
        json.dumps({"nacl": s.as_dict(), "po": Structure(Lattice.cubic(3.35), ["Po"], [[0, 0, 0]]).as_dict()})
    )
    frame = tmp_path / "frame.json.gz"
    pd.DataFrame({"structure": [s.as_dict()], "n": [1.5]}, index=["mb-x-0001"]).to_json(frame)
    for path, ids in [(as_dict, ["nacl", "po"]), (frame, ["mb-x-0001"])]:
        out = tmp_path / f"{path.name}.csv"
        r = _cli("scope", str(path), "-o", str(out), "--quiet", "--variant", "full")
        assert r.returncode == 0, r.stderr
        assert list(pd.read_csv(out, index_col="id").index) == ids
    assert _cli("scope", str(tmp_path / "nothing_here"), "-o", str(tmp_path / "x.csv")).returncode == 1
    assert _cli("scope", str(as_dict)).returncode == 1  # missing -o
    (tmp_path / "weird.json").write_text("[1, 2, 3]")
    r = _cli("scope", str(tmp_path / "weird.json"), "-o", str(tmp_path / "y.csv"))
    assert r.returncode == 1 and "expected a dict" in r.stderr


def test_scope_variants_are_the_same_crystal(paper_scope):
    from cloudlib.scope import expand_variants, group_mean, scope_variants

    v = scope_variants(NACL, 10)
    assert v[0] == NACL and len(v) == len(set(v)) == 4  # 2 Wyckoff orders x 2 element orders
    assert scope_variants(NACL, 10) == v and scope_variants(NACL, 10, seed=1)[0] == NACL
    assert scope_variants(NACL, 1) == [NACL] and scope_variants("1 0 | 1a | Cu 1.0", 5) == ["1 0 | 1a | Cu 1.0"]
    for s in list(paper_scope["scope"])[:300]:
        ref = parse_scope(s)
        variants = scope_variants(s, 4, seed=3)
        assert variants[0] == s and len(set(variants)) == len(variants) <= 4
        for w in variants[1:]:
            p = parse_scope(w)  # a valid string: same group, same Wyckoff multiset, same composition
            assert p["spacegroup"] == ref["spacegroup"] and p["composition"] == ref["composition"]
            assert sorted(p["wyckoffs"]) == sorted(ref["wyckoffs"]) and w.split(" | ")[0] == s.split(" | ")[0]
    flat, groups = expand_variants([NACL, "1 0 | 1a | Cu 1.0"], 3)
    assert flat[0] == NACL and list(groups) == [0, 0, 0, 1] and flat[3] == "1 0 | 1a | Cu 1.0"
    assert np.allclose(group_mean(np.array([1.0, 2.0, 3.0, 7.0]), groups), [2.0, 7.0])
    with pytest.raises(ValueError, match="3 sections"):
        scope_variants("Na 0.5 Cl 0.5", 2)
    with pytest.raises(ValueError, match="k must be"):
        scope_variants(NACL, 0)
