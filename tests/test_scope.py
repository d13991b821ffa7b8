"""SCOPE: exactness against the paper's strings, invariances, bad inputs, batches and the CLI."""

from __future__ import annotations

import contextlib
import json
import multiprocessing as mp
import os
import signal
import subprocess
import sys
import time

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
    StructureTooLargeError,
    UnknownSpeciesError,
)
from cloudlib.scope import (
    PAPER_GENERATOR_OVERRIDES,
    CifText,
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


# --------------------------------------------------------------------------- hostile inputs (issue 12)
# Each test reproduces a defect of the code before the fix: a dead worker hung scope_table forever and a
# hanging one had no limit; the overlap check was O(n^2) in time and memory (8,000 atoms: 16 s and 3.6 GB,
# 64,000: a 91.6 GiB allocation); nothing bounded a structure's size (a 64,000-atom CIF sat in pymatgen's
# CIF parser for minutes).


@contextlib.contextmanager
def _deadline(seconds: int):
    """Fail (instead of hanging the suite) if the block takes longer than ``seconds``."""

    def expired(*_):
        raise TimeoutError(f"still running after {seconds} s")

    old = signal.signal(signal.SIGALRM, expired)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


def _sabotage(monkeypatch, victim, action):
    """Make ``_encode_item`` run ``action`` for the item ``victim`` (forked workers inherit the patch)."""
    import cloudlib.scope as scope

    real = scope._encode_item

    def encode(name, item, *args):
        if name == victim:
            action()
        return real(name, item, *args)

    monkeypatch.setattr(scope, "_encode_item", encode)


def _kill_self():
    os.kill(os.getpid(), signal.SIGKILL)


needs_fork = pytest.mark.skipif("fork" not in mp.get_all_start_methods(), reason="sabotage reaches workers by fork")


@pytest.fixture(scope="module")
def seventy(dielectric_structures):
    items = dielectric_structures["structure"].head(70).to_dict()
    return items, scope_table(items, progress=False)


@needs_fork
def test_a_killed_worker_costs_one_row(monkeypatch, seventy):
    """SIGKILL (the OOM killer's signal) in a worker: before, the parent waited forever for its results."""
    items, serial = seventy
    victim = list(items)[33]
    _sabotage(monkeypatch, victim, _kill_self)
    t0 = time.monotonic()
    with _deadline(60):
        df = scope_table(items, jobs=2, progress=False, chunksize=8)
    assert time.monotonic() - t0 < 60
    assert list(df.index) == list(items)
    assert df.loc[victim, "scope"] is None
    assert df.loc[victim, "error"] == (
        f"WorkerDiedError: {victim}: worker process died (signal 9, SIGKILL) while encoding this structure"
    )
    others = df.drop(index=victim)
    pd.testing.assert_frame_equal(others, serial.drop(index=victim))
    assert others["error"].isna().all()


@needs_fork
def test_every_killer_fails_alone(monkeypatch, seventy):
    """Several killers, two in one chunk and one last: only they fail, every other row is computed."""
    import cloudlib.scope as scope

    items, serial = seventy
    victims = {list(items)[i] for i in (0, 9, 10, 69)}
    real = scope._encode_item
    monkeypatch.setattr(scope, "_encode_item", lambda name, *a: _kill_self() if name in victims else real(name, *a))
    with _deadline(60):
        df = scope_table(items, jobs=2, progress=False, chunksize=8)
    assert set(df.index[df["error"].notna()]) == victims
    assert df.loc[list(victims), "error"].str.startswith("WorkerDiedError:").all()
    pd.testing.assert_frame_equal(df.drop(index=list(victims)), serial.drop(index=list(victims)))


@needs_fork
def test_a_slow_worker_between_its_progress_writes_is_not_blamed(monkeypatch, seventy):
    """The parent may read a worker's progress record between two of its writes (seq, position, start time).

    Widen that window: in the workers, every clock read sleeps 0.3 s. Before the fix a fresh worker that had
    written the chunk's seq but not yet the item's start time showed start 0.0, so the parent saw a time limit
    long passed and killed it, blaming the chunk's first item (seen once in CI as a spurious error row)."""
    import types

    import cloudlib.scope as scope

    items, serial = seventy
    parent = os.getpid()

    def monotonic():
        if os.getpid() != parent:
            time.sleep(0.3)
        return time.monotonic()

    monkeypatch.setattr(scope, "time", types.SimpleNamespace(monotonic=monotonic))
    few = dict(list(items.items())[:16])
    with _deadline(60):
        df = scope_table(few, jobs=2, progress=False, chunksize=4, timeout=30)
    assert df["error"].isna().all(), df["error"].dropna().to_dict()
    pd.testing.assert_frame_equal(df, serial.loc[list(few)])


@needs_fork
def test_a_hanging_structure_times_out(monkeypatch, seventy):
    items, serial = seventy
    victim = list(items)[50]
    _sabotage(monkeypatch, victim, lambda: time.sleep(3600))
    t0 = time.monotonic()
    with _deadline(60):
        df = scope_table(items, jobs=2, progress=False, chunksize=8, timeout=2)
    assert time.monotonic() - t0 < 30
    assert df.loc[victim, "error"] == (
        f"StructureTimeoutError: {victim}: took longer than the time limit of 2 s per structure "
        "(worker process stopped)"
    )
    pd.testing.assert_frame_equal(df.drop(index=victim), serial.drop(index=victim))


@needs_fork
def test_timeout_with_one_job_runs_in_a_worker(monkeypatch):
    """jobs=1 with a time limit: the items run in one worker process, so the limit holds there too."""
    _sabotage(monkeypatch, "stuck", lambda: time.sleep(3600))
    with _deadline(60):
        df = scope_table({"a": nacl(), "stuck": nacl(), "b": nacl()}, jobs=1, progress=False, timeout=1)
    assert df["scope"].tolist() == [NACL, None, NACL]
    assert df.loc["stuck", "error"].startswith("StructureTimeoutError: stuck: took longer than")
    with pytest.raises(ValueError, match="timeout"):
        scope_table([nacl()], timeout=0)


class _KillerCif(CifText):
    """CIF text that kills the process unpickling it (how a payload reaches spawned workers)."""

    def __reduce__(self):
        return (_kill_self, ())


def test_spawned_workers_survive_a_killer_too(monkeypatch):
    """The spawn start method (platforms without fork): items travel pickled; the killer fails alone."""
    import cloudlib.scope as scope

    monkeypatch.setattr(scope, "_START_METHOD", "spawn")
    items = {i: nacl() for i in range(6)}
    items[3] = _KillerCif("data_x\n")
    items["cif"] = CifText(nacl().to(fmt="cif"))
    with _deadline(240):
        df = scope_table(items, jobs=2, progress=False, chunksize=2)
    assert list(df.index) == list(items)
    assert df.loc[3, "error"].startswith("WorkerDiedError: 3: worker process died (signal 9")
    assert (df.drop(index=3)["scope"] == NACL).all()


def _random_cells(rng, count):
    """Cells of every awkward kind: random and jittered-grid sites, skewed bases of ordinary lattices
    (where the rounded image is not the nearest one), thin cells, cells smaller than min_distance."""
    for t in range(count):
        kind = t % 4
        if kind == 0:  # uniform random sites
            n = int(rng.integers(2, 300))
            basis = rng.normal(size=(3, 3)) * 0.4 + np.eye(3)
            if rng.random() < 0.2:
                basis[0] *= rng.uniform(0.02, 0.3)  # thin
            lattice = basis * (n * rng.uniform(2, 40) / abs(np.linalg.det(basis))) ** (1 / 3)
            frac = rng.uniform(-1, 2, size=(n, 3))
        elif kind == 1:  # jittered grid: some overlap, most do not
            m = rng.integers(2, 8, size=3)
            grid = np.indices(m).reshape(3, -1).T
            frac = (grid + rng.normal(scale=rng.uniform(0.01, 0.25), size=grid.shape)) / m
            lattice = (rng.normal(size=(3, 3)) * 0.3 + np.eye(3)) * rng.uniform(0.8, 3.0) * m[:, None]
        elif kind == 2:  # tiny cells: lattice vectors around or below min_distance
            n = int(rng.integers(2, 12))
            lattice = rng.normal(size=(3, 3)) * rng.uniform(0.2, 1.5) + np.eye(3) * 0.3
            frac = rng.uniform(0, 1, size=(n, 3))
        else:  # the same cart positions in a skewed basis U @ L of a jittered grid
            m = rng.integers(2, 6, size=3)
            grid = np.indices(m).reshape(3, -1).T
            frac = (grid + rng.normal(scale=0.1, size=grid.shape)) / m
            lattice = np.diag(rng.uniform(1.0, 2.5, size=3)) * m[:, None]
            skew = np.array([[1, *rng.integers(-4, 5, size=2)], [0, 1, rng.integers(-4, 5)], [0, 0, 1]])
            frac, lattice = frac @ np.linalg.inv(skew), skew @ lattice
        if abs(np.linalg.det(lattice)) > 1e-3:
            yield lattice, frac, float(rng.choice([0.3, 0.5, 0.5, 1.0]))


def test_overlap_check_is_the_all_pairs_check():
    """The neighbour-list check raises exactly when the O(n^2) one did, naming the same pair and distance."""
    from benchmarks.overlap import all_pairs_closest
    from cloudlib.scope import _closest_pair, check_overlap

    rng = np.random.default_rng(12)
    raised = 0
    for lattice, frac, r in _random_cells(rng, 800):
        ref = all_pairs_closest(lattice, frac, r)
        assert _closest_pair(lattice, frac, r, dense_max=0) == ref  # the tree path, whatever the size
        assert _closest_pair(lattice, frac, r) == ref  # the path the size picks
        if ref is None:
            check_overlap("x", lattice, frac, r)
        else:
            raised += 1
            d2, i, j = ref
            with pytest.raises(OverlappingAtomsError, match=rf"^x: sites {i} and {j} are {np.sqrt(d2):.3f} A apart"):
                check_overlap("x", lattice, frac, r)
    assert 200 < raised < 600  # both outcomes well represented


def _grid(side: int, spacing: float = 2.2, seed: int = 0):
    rng = np.random.default_rng(seed)
    grid = np.indices((side,) * 3).reshape(3, -1).T
    frac = (grid + rng.uniform(-0.05, 0.05, size=grid.shape)) / side
    return np.eye(3) * spacing * side, frac


def test_overlap_check_scales_to_64000_atoms():
    """64,000 atoms: the all-pairs check asked for 91.6 GiB; the neighbour list takes well under a second."""
    from cloudlib.scope import check_overlap

    lattice, frac = _grid(40)
    frac[12345] = frac[54321] + [0.3 / lattice[0, 0], 0, 0]  # 0.3 A apart
    t0 = time.perf_counter()
    with pytest.raises(OverlappingAtomsError, match=r"sites 12345 and 54321 are 0.300 A apart"):
        check_overlap("big", lattice, frac, 0.5)
    frac[12345] += [1.0 / lattice[0, 0], 0, 0]  # now 1.3 A: fine
    check_overlap("big", lattice, frac, 0.5)
    assert time.perf_counter() - t0 < 30


def test_atom_limit():
    big = nacl() * (3, 3, 3)  # 216 atoms
    with pytest.raises(StructureTooLargeError, match=r"216 atoms in the cell > max_atoms=100"):
        structure_to_scope(big, max_atoms=100)
    assert structure_to_scope(big, max_atoms=None) == structure_to_scope(big) == NACL
    df = scope_table({"big": big, "small": nacl(), "cif": CifText(big.to(fmt="cif"))}, progress=False, max_atoms=100)
    assert df.loc["big", "error"] == "StructureTooLargeError: big: 216 atoms in the cell > max_atoms=100"
    assert df.loc["cif", "error"].startswith("StructureTooLargeError: cif: CIF describes up to 216 atoms")
    assert df.loc["small", "scope"] == NACL


def _p1_cif(side: int) -> str:
    lattice, frac = _grid(side)
    a = lattice[0, 0]
    head = [
        "data_huge",
        *(f"_cell_length_{x} {a}" for x in "abc"),
        *(f"_cell_angle_{x} 90" for x in ("alpha", "beta", "gamma")),
        "_symmetry_space_group_name_H-M 'P 1'",
        "loop_",
        "_symmetry_equiv_pos_as_xyz",
        "  'x, y, z'",
        "loop_",
        *(f"_atom_site_{k}" for k in ("type_symbol", "label", "fract_x", "fract_y", "fract_z", "occupancy")),
    ]
    rows = [f"  Cu Cu{i} {x:.6f} {y:.6f} {z:.6f} 1" for i, (x, y, z) in enumerate(frac)]
    return "\n".join(head + rows) + "\n"


def test_huge_cif_is_refused_before_parsing(tmp_path):
    """A 64,000-atom P1 CIF sat in pymatgen's CIF parser for minutes; now it is refused in about a second."""
    from cloudlib.scope import as_structure

    text = _p1_cif(40)
    path = tmp_path / "huge.cif"
    path.write_text(text)
    t0 = time.perf_counter()
    message = r"CIF describes up to 64000 atoms \(64000 atom-site rows x 1 symmetry operations\) > max_atoms=20000"
    with pytest.raises(StructureTooLargeError, match=message):
        as_structure(CifText(text), "huge")
    with pytest.raises(StructureTooLargeError, match="huge.cif: " + message):
        read_structure(path)
    df = scope_table({"huge": CifText(text), "file": str(path), "ok": nacl()}, progress=False)
    assert df["error"].str.startswith("StructureTooLargeError:", na=False).tolist() == [True, True, False]
    assert time.perf_counter() - t0 < 15


def test_cif_atom_bound_counts_symmetry():
    """rows x operations: listed operations, else the group's order from its symbol or number."""
    from cloudlib.scope import cif_atom_bound

    assert cif_atom_bound(nacl().to(fmt="cif")) == (8, 8, 1)  # pymatgen writes P1 cells
    symmetrized = nacl().to(fmt="cif", symprec=0.01)  # 2 rows and the 192 operations of Fm-3m
    assert cif_atom_bound(symmetrized) == (384, 2, 192)
    assert len(read_structure_text(symmetrized)) == 8  # the parser's count is below the bound
    by_symbol = "data_x\n_cell_length_a 4\n_cell_length_b 4\n_cell_length_c 4\n_cell_angle_alpha 90\n"
    by_symbol += "_cell_angle_beta 90\n_cell_angle_gamma 90\n_symmetry_space_group_name_H-M 'F m -3 m'\n"
    by_symbol += "loop_\n_atom_site_label\n_atom_site_fract_x\n_atom_site_fract_y\n_atom_site_fract_z\nNa 0 0 0\n"
    assert cif_atom_bound(by_symbol) == (192, 1, 192)
    assert cif_atom_bound(
        by_symbol.replace("_symmetry_space_group_name_H-M 'F m -3 m'", "_symmetry_Int_Tables_number 221")
    ) == (48, 1, 48)
    assert cif_atom_bound("not a cif at all") == (0, 0, 0)


def read_structure_text(text: str) -> Structure:
    from cloudlib.scope import as_structure

    return as_structure(CifText(text))


def test_overlap_benchmark_runs():
    """benchmarks/overlap.py (python -m benchmarks overlap) on a small cell: both methods, same answer."""
    from benchmarks.overlap import all_pairs_check, all_pairs_closest, bench_overlap, grid_cell

    lattice, frac = grid_cell(216)
    assert all_pairs_check(lattice, frac, 0.5) is None is all_pairs_closest(lattice, frac, 0.5)
    row = bench_overlap(sizes=(216, 343), old_max=216, repeats=1)
    assert row["216 atoms"]["same answer"] is True
    assert set(row["216 atoms"]) == {
        "neighbour list",
        "all pairs",
        "ratios (all pairs / neighbour list)",
        "same answer",
    }
    assert row["343 atoms"]["all pairs"]["not run"].startswith("first array 24 n^2 B = 0.003 GiB")
    assert all(v["neighbour list"]["seconds"] > 0 for v in row.values())


# --------------------------------------------------------------------------- the fast path (issue 15): same rows


def test_staged_blocks_give_the_rows_of_one_item_at_a_time(tmp_path, dielectric_structures, monkeypatch):
    """``_encode_items`` (validation, checks, spglib, strings: stage by stage over a block) gives, row for row, what
    ``_encode_item`` gives for each item alone, with every kind of failure mixed in, across block boundaries."""
    import cloudlib.scope as scope

    good = list(dielectric_structures["structure"].head(70))
    squeezed = nacl()
    squeezed.append("Na", [0.01, 0, 0])  # overlapping atoms
    bad_cif = tmp_path / "bad.cif"
    bad_cif.write_text("garbage")
    bad = [
        Structure(Lattice.cubic(4), [{"Fe": 0.5}], [[0, 0, 0]]),
        squeezed,
        Structure(Lattice.cubic(4), [DummySpecies("X")], [[0, 0, 0]]),
        str(bad_cif),
        {"not": "a structure"},
        42,
        scope.structure_cell(nacl(), "cell"),  # an already validated cell (the executors' payloads)
        Structure(Lattice([[1e12, 0, 0], [0, 1e12, 0], [0, 0, 1e12]]), ["Na"], [[0, 0, 0]]),
    ]
    items = [(f"i{k}", x) for k, x in enumerate(good[:5] + bad + good[5:] + bad[::-1])]
    settings = ("reduced", 0.01, 5.0, scope.MAX_ATOMS)
    alone = [scope._encode_item(name, item, *settings) for name, item in items]
    kinds = {err.split(":")[0] for _, err in alone if err is not None}
    assert {"DisorderedStructureError", "OverlappingAtomsError", "UnknownSpeciesError", "StructureParseError"} <= kinds
    assert sum(err is not None for _, err in alone) >= 2 * 6  # the six that are not crystals (the 1e12 A cell may be)
    monkeypatch.setattr(scope, "_STAGE_BLOCK", 16)
    table = scope_table(dict(items), jobs=1, progress=False)
    assert list(zip(table["scope"], table["error"])) == alone
    assert scope._encode_items(items, *settings) == alone
    full = scope._encode_items(items, "full", 0.01, 5.0, scope.MAX_ATOMS)
    assert full == [scope._encode_item(name, item, "full", 0.01, 5.0) for name, item in items]


def test_site_parts_fast_and_public_routes_agree(dielectric_structures):
    """The validation reads pymatgen's site attributes directly; the public properties give the same cells."""
    import cloudlib.scope as scope

    structures = list(dielectric_structures["structure"].head(100))
    for s in structures:
        fast, public = scope._site_parts(s.sites), scope._site_parts_public(s.sites)
        assert fast[0] == public[0] and np.array_equal(fast[1], public[1])
    mixed = Structure(Lattice.cubic(4), ["Na", {"Na": 0.5, "K": 0.5}], [[0, 0, 0], [0.5, 0.5, 0.5]])
    for route in (scope._site_parts, scope._site_parts_public):
        with pytest.raises(scope._Unordered) as info:
            route(mixed.sites)
        assert info.value.site == 1

    class PublicOnly:  # a pymatgen whose sites keep their data elsewhere: the public route, same result
        def __init__(self, site):
            self.species, self.frac_coords = site.species, site.frac_coords

    s = structures[0]
    fast = scope._site_parts(s.sites)
    other = scope._site_parts([PublicOnly(site) for site in s.sites])
    assert fast[0] == other[0] and np.array_equal(fast[1], other[1])


def test_quick_overlap_pass_decides_nothing_at_the_limit():
    """Two atoms at, or within rounding of, min_distance are left to the exact check, which decides as the all-pairs
    reference does; atoms clearly apart are cleared, also in a 10^7 A cell."""
    from benchmarks.overlap import all_pairs_closest
    from cloudlib.scope import _clear_of_overlap, check_overlap

    for scale in (1.0, 1e6):
        lattice = np.eye(3) * 10.0 * scale
        for gap, clear in ((0.5, False), (0.5 * (1 + 1e-12), False), (0.5 * (1 - 1e-12), False), (0.6, True)):
            frac = np.array([[0.1, 0.2, 0.3], [0.1 + gap / (10.0 * scale), 0.2, 0.3]])
            assert _clear_of_overlap(lattice, frac, 0.5) is clear
            ref = all_pairs_closest(lattice, frac, 0.5)
            if ref is None:
                check_overlap("x", lattice, frac, 0.5)
            else:
                with pytest.raises(OverlappingAtomsError):
                    check_overlap("x", lattice, frac, 0.5)
    assert (
        _clear_of_overlap(np.eye(3) * 3, np.random.default_rng(0).uniform(size=(65, 3)), 0.5) is False
    )  # > _QUICK_MAX
