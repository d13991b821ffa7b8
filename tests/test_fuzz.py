"""Property-based fuzzing (hypothesis) of the SCOPE parser and tokenizer and of the structure readers: random
text, random bytes in structure files, random mutations of a real CIF and random structures. The property
everywhere: no crash other than a typed :class:`~cloudlib.errors.CloudError` (for a whole unreadable input), one
row per input item, each row either a SCOPE string or an error naming a cloudlib error class.

``pytest tests/test_fuzz.py --hypothesis-show-statistics`` prints the case counts and times."""

from __future__ import annotations

import gzip
import math
import string

import pytest
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st
from pymatgen.core import Lattice, Structure

import cloudlib.errors as errors_mod
from cloudlib.errors import CloudError, InputError
from cloudlib.finetune import scope_string_errors
from cloudlib.inputs import read_inputs
from cloudlib.scope import CifText, parse_scope, scope_table, structure_to_scope
from cloudlib.tokenizer import make_tokenizer

TYPED = {name for name, obj in vars(errors_mod).items() if isinstance(obj, type) and issubclass(obj, CloudError)}


def fuzz(n: int) -> settings:
    """``n`` random cases, no deadline, no example database (nothing written into the repository). Random in
    every run (a CI run found spglib's SpglibCppError this way); each case found is then pinned with
    ``@example`` so it is tested on every run."""
    return settings(
        max_examples=n,
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    )


NACL_CIF = Structure.from_spacegroup("Fm-3m", Lattice.cubic(5.64), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]]).to(
    fmt="cif", symprec=0.1
)
TOKENIZER = make_tokenizer(block_size=64)
VOCAB = [t for t in TOKENIZER.get_vocab() if not t.startswith("[")]


def assert_rows(table, n: int) -> None:
    assert len(table) == n
    for scope, err in zip(table["scope"], table["error"]):
        assert (scope is None) != (err is None), (scope, err)
        if err is not None:
            assert err.split(":", 1)[0] in TYPED, err
        else:
            parse_scope(scope)


# --------------------------------------------------------------------------- strings


scope_like = st.lists(st.sampled_from([*VOCAB, "|", "|", "0.5", "x", "", "1.0e5", "nan", "[UNK]"]), max_size=40).map(
    " ".join
)


@fuzz(400)
@given(st.one_of(st.text(max_size=200), scope_like))
def test_parser_and_string_check_only_raise_typed_errors(text):
    try:
        parsed = parse_scope(text)
    except ValueError:
        parsed = None
    (err,) = scope_string_errors(TOKENIZER, [text])
    assert err is None or err.startswith("ScopeStringError: ")
    if err is None:
        assert parsed is not None
        assert TOKENIZER.unk_token not in TOKENIZER.tokenize(text)
        try:
            TOKENIZER.encode_batch([text])
        except errors_mod.BlockSizeError:
            pass


# --------------------------------------------------------------------------- files of random bytes


SUFFIXES = ["x.cif", "x.json", "x.vasp", "POSCAR", "x.json.gz", "x.cif.gz", "x.xsf", "x.yaml"]


@fuzz(150)
@given(st.sampled_from(SUFFIXES), st.binary(max_size=600), st.booleans())
def test_random_bytes_in_structure_files(tmp_path_factory, name, payload, gz):
    folder = tmp_path_factory.mktemp("bytes")
    if name.endswith(".gz") and gz:
        payload = gzip.compress(payload)
    (folder / name).write_bytes(payload)
    (folder / "ok.cif").write_text(NACL_CIF)
    for target in (folder, folder / name):
        try:
            items = read_inputs(target)
        except InputError:  # a whole input that cannot be read: typed, one line
            assert target != folder  # a folder with one good file always reads
            continue
        table = scope_table(items, progress=False)
        assert_rows(table, len(items))
        if target == folder:
            assert table.loc["ok.cif", "scope"] is not None


# --------------------------------------------------------------------------- mutated CIFs


def _mutate(text: str, data) -> str:
    lines = text.splitlines()
    for _ in range(data.draw(st.integers(1, 4))):
        if not lines:
            break
        i = data.draw(st.integers(0, len(lines) - 1))
        op = data.draw(st.sampled_from(["drop", "dup", "number", "chars", "truncate", "swap"]))
        if op == "drop":
            del lines[i]
        elif op == "dup":
            lines.insert(i, lines[i])
        elif op == "number":
            new = data.draw(
                st.sampled_from(["0", "-1", "1e308", "nan", "inf", "?", ".", "1e-9", "123456789", "0.5(3)"])
            )
            parts = lines[i].split()
            if parts:
                parts[data.draw(st.integers(0, len(parts) - 1))] = new
            lines[i] = " ".join(parts)
        elif op == "chars":
            junk = data.draw(st.text(alphabet=string.printable, max_size=12))
            at = data.draw(st.integers(0, len(lines[i])))
            lines[i] = lines[i][:at] + junk + lines[i][at:]
        elif op == "truncate":
            lines = lines[:i]
        else:
            j = data.draw(st.integers(0, len(lines) - 1))
            lines[i], lines[j] = lines[j], lines[i]
    return "\n".join(lines) + "\n"


@fuzz(150)
@given(st.data())
def test_mutated_cifs_give_a_row_each(data):
    texts = [_mutate(NACL_CIF, data) for _ in range(3)]
    table = scope_table({i: CifText(t) for i, t in enumerate(texts)}, progress=False)
    assert_rows(table, 3)


# --------------------------------------------------------------------------- random structures


finite = st.floats(-5, 5, allow_nan=False)
weird = st.one_of(finite, st.sampled_from([math.nan, math.inf, 0.0, 1e-12, 1e12]))


@fuzz(300)
@given(
    st.lists(st.lists(weird, min_size=3, max_size=3), min_size=3, max_size=3),
    st.lists(
        st.tuples(
            st.sampled_from(["Na", "Cl", "Fe", "O", "H", "Og", "X0+", "D"]), st.lists(weird, min_size=3, max_size=3)
        ),
        min_size=1,
        max_size=8,
    ),
)
@example(matrix=[[0.0, 0.0, 1e12], [0.0, 1.0, 0.0], [1.0, 0.0, 0.0]], sites=[("Na", [0.0, 0.0, 0.0])])  # CI found it
def test_random_structures_raise_only_typed_errors(matrix, sites):
    try:
        structure = Structure(Lattice(matrix), [s for s, _ in sites], [c for _, c in sites])
    except Exception:  # pymatgen's own constructor refusing the input is not ours to judge
        assume(False)
        return
    try:
        scope = structure_to_scope(structure)
    except CloudError as exc:
        assert type(exc).__name__ in TYPED
        return
    parse_scope(scope)
    assert scope_string_errors(TOKENIZER, [scope]) == [None]
    table = scope_table({"a": structure, "b": structure.as_dict()}, progress=False)
    assert_rows(table, 2)
    assert table["scope"].tolist() == [scope, scope]


@pytest.mark.parametrize("bad", [b"\x00" * 100, b"data_\n", b"data_x\nloop_\n_atom_site_label\n", "é".encode() * 50])
def test_known_nasty_files(tmp_path, bad):
    (tmp_path / "a.cif").write_bytes(bad)
    table = scope_table(read_inputs(tmp_path / "a.cif"), progress=False)
    assert_rows(table, 1)
    assert table["error"].iloc[0] is not None
