"""Hostile inputs at the entry points (issue 12): every defect a hostile user found, reproduced, and the
behaviour now — a one-line typed error naming the input, exit 1 for usage / unreadable inputs, exit 2 when some
rows failed, and no computed row lost."""

from __future__ import annotations

import gzip
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import NACL
from pymatgen.core import Lattice, Structure

from cloudlib import cli
from cloudlib.errors import ModelError, ScopeStringError

ROOT = Path(__file__).resolve().parents[1]
MODEL = ROOT / "models" / "cloud-dielectric-laptop"


def nacl() -> Structure:
    return Structure.from_spacegroup("Fm-3m", Lattice.cubic(5.64), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])


def po() -> Structure:
    return Structure(Lattice.cubic(3.35), ["Po"], [[0, 0, 0]])


PO = "1 4 b O O O c O O O d O O O e O O O 0 | 1a | Po 1.0"


def run_cli(capsys, *args) -> tuple[int, str]:
    code = cli.main([str(a) for a in args])
    err = capsys.readouterr().err
    return code, err


def assert_one_line_error(err: str, *words: str) -> None:
    assert "Traceback" not in err, err
    lines = [ln for ln in err.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1, err
    for w in words:
        assert w in lines[0], (w, err)


# --------------------------------------------------------------------------- 1. non-UTF-8 file names


@pytest.mark.skipif(sys.platform == "darwin", reason="macOS file systems refuse non-UTF-8 names")
def test_non_utf8_file_name_does_not_lose_the_batch(tmp_path, capsys):
    folder = tmp_path / "cifs"
    folder.mkdir()
    nacl().to(filename=str(folder / "nacl.cif"))
    bad = os.path.join(os.fsencode(folder), b"caf\xe9-\xff.cif")
    with open(bad, "w") as f:
        f.write(po().to(fmt="cif"))
    out = tmp_path / "out.csv"
    code, err = run_cli(capsys, "scope", folder, "-o", out, "-q")
    assert code == 0, err
    df = pd.read_csv(out, index_col="id")
    assert df.loc["nacl.cif", "scope"] == NACL
    assert df.loc["caf\\xe9-\\xff.cif", "scope"] == PO  # a printable id, and the structure was read
    code, err = run_cli(capsys, "predict", folder, "-o", tmp_path / "pred.csv", "-q")
    assert code == 0, err
    assert len(pd.read_csv(tmp_path / "pred.csv")) == 2


# --------------------------------------------------------------------------- 5. rows lost without a word


def test_every_cif_data_block_is_a_row(tmp_path, capsys):
    two = tmp_path / "two.cif"
    two.write_text(nacl().to(fmt="cif").replace("data_NaCl", "data_first") + "\n" + po().to(fmt="cif"))
    out = tmp_path / "out.csv"
    code, err = run_cli(capsys, "scope", two, "-o", out, "-q")
    assert code == 0, err
    df = pd.read_csv(out, index_col="id")
    assert list(df.index) == ["two.cif#first", "two.cif#Po"]
    assert list(df["scope"]) == [NACL, PO]


def test_folder_reads_every_structure_format_and_counts_what_it_skips(tmp_path, capsys):
    from pymatgen.io.vasp import Poscar

    folder = tmp_path / "mixed"
    folder.mkdir()
    nacl().to(filename=str(folder / "a.cif"))
    (folder / "POSCAR").write_text(Poscar(po()).get_str())
    (folder / "b.vasp").write_text(Poscar(nacl()).get_str())
    (folder / "c.json").write_text(json.dumps(po().as_dict()))
    (folder / "d.cif.gz").write_bytes(gzip.compress(po().to(fmt="cif").encode()))
    (folder / "notes.txt").write_text("not a crystal")
    (folder / "plot.png").write_bytes(b"\x89PNG")
    (folder / ".hidden.cif").write_text("x")
    (folder / "sub").mkdir()
    out = tmp_path / "out.csv"
    code, err = run_cli(capsys, "scope", folder, "-o", out, "-q")
    assert code == 0, err
    df = pd.read_csv(out, index_col="id")
    assert df["scope"].to_dict() == {"POSCAR": PO, "a.cif": NACL, "b.vasp": NACL, "c.json": PO, "d.cif.gz": PO}
    assert "4 files skipped" in err and "1 hidden" in err and "(.txt)" in err and "subfolders" in err


def test_records_keep_their_ids_and_a_malformed_entry_is_one_error_row(tmp_path, capsys):
    records = [
        {"mp_id": "mp-22862", "structure": nacl().as_dict()},
        {"mp_id": "mp-20483", "structure": po().as_dict()},
        {"mp_id": "mp-bad", "formula": "NaCl"},  # no structure
        {"mp_id": "mp-worse", "structure": {"lattice": "nonsense", "sites": 3}},
    ]
    path = tmp_path / "records.json"
    path.write_text(json.dumps(records))
    out = tmp_path / "out.csv"
    code, err = run_cli(capsys, "scope", path, "-o", out, "-q")
    assert code == 2, err
    df = pd.read_csv(out, index_col="id")
    assert list(df.index) == ["mp-22862", "mp-20483", "mp-bad", "mp-worse"]
    assert list(df["scope"][:2]) == [NACL, PO]
    assert (
        df.loc["mp-bad", "error"].startswith("StructureParseError:") and "no 'structure'" in df.loc["mp-bad", "error"]
    )
    assert df.loc["mp-worse", "error"].startswith("StructureParseError:")
    assert "2 ok, 2 failed" in err


# --------------------------------------------------------------------------- 2/6. size and time limits, from the CLI


def _folder_of_three(tmp_path) -> Path:
    folder = tmp_path / "three"
    folder.mkdir()
    nacl().to(filename=str(folder / "a.cif"))  # 2 atoms in the primitive cell, 8 in the CIF's conventional cell
    big = nacl().copy()
    big.make_supercell([3, 3, 3])  # 216 atoms
    big.to(filename=str(folder / "big.cif"))
    po().to(filename=str(folder / "c.cif"))
    return folder


def test_cli_max_atoms_fails_the_big_row_alone(tmp_path, capsys):
    folder = _folder_of_three(tmp_path)
    out = tmp_path / "out.csv"
    code, err = run_cli(capsys, "scope", folder, "-o", out, "-q", "--max-atoms", 100)
    assert code == 2, err
    df = pd.read_csv(out, index_col="id")
    assert df.loc["a.cif", "scope"] == NACL and df.loc["c.cif", "scope"] == PO
    assert df.loc["big.cif", "error"].startswith("StructureTooLargeError:")
    assert "max_atoms=100" in df.loc["big.cif", "error"]
    code, err = run_cli(capsys, "predict", folder, "-o", tmp_path / "pred.csv", "-q", "--max-atoms", 100)
    assert code == 2, err
    pred = pd.read_csv(tmp_path / "pred.csv", index_col="id")
    assert pred["prediction"].notna().tolist() == [True, False, True]
    # 0 lifts the limit: every row computed
    code, err = run_cli(capsys, "scope", folder, "-o", out, "-q", "--max-atoms", 0)
    assert code == 0, err
    assert pd.read_csv(out, index_col="id")["error"].isna().all()


@pytest.mark.parametrize("args", [("--timeout", 0), ("--timeout", "nan"), ("--max-atoms", -1)])
def test_cli_bad_limits_are_usage_errors(tmp_path, capsys, args):
    folder = _folder_of_three(tmp_path)
    code, err = run_cli(capsys, "scope", folder, "-o", tmp_path / "out.csv", "-q", *args)
    assert code == 1
    assert_one_line_error(err, args[0])
    assert not (tmp_path / "out.csv").exists()


@pytest.mark.skipif("fork" not in __import__("multiprocessing").get_all_start_methods(), reason="needs fork")
def test_cli_timeout_fails_the_hanging_row_alone(tmp_path, capsys, monkeypatch):
    import cloudlib.scope as scope

    real = scope._encode_item

    def encode(name, item, *args):
        if name == "big.cif":
            time.sleep(3600)
        return real(name, item, *args)

    monkeypatch.setattr(scope, "_encode_item", encode)
    folder = _folder_of_three(tmp_path)
    out = tmp_path / "out.csv"
    t0 = time.monotonic()
    code, err = run_cli(capsys, "scope", folder, "-o", out, "-q", "--timeout", 2)
    assert time.monotonic() - t0 < 60
    assert code == 2, err
    df = pd.read_csv(out, index_col="id")
    assert df.loc["a.cif", "scope"] == NACL and df.loc["c.cif", "scope"] == PO
    assert df.loc["big.cif", "error"].startswith(
        "StructureTimeoutError: big.cif: took longer than the time limit of 2 s"
    )


# --------------------------------------------------------------------------- 7. tracebacks instead of messages


@pytest.mark.parametrize("payload", [gzip.compress(b'{"a": 1}')[:-9], b"plain text, not gzip"])
def test_truncated_or_not_gzip_json_is_a_message(tmp_path, capsys, payload):
    path = tmp_path / "structures.json.gz"
    path.write_bytes(payload)
    code, err = run_cli(capsys, "scope", path, "-o", tmp_path / "o.csv")
    assert code == 1
    assert_one_line_error(err, "structures.json.gz", "not a valid .gz file")
    assert not (tmp_path / "o.csv").exists()


def _broken_model(tmp_path, how: str) -> Path:
    folder = tmp_path / f"model-{how}"
    shutil.copytree(MODEL, folder)
    if how == "missing":
        (folder / "head.safetensors").unlink()
    elif how == "truncated":
        data = (folder / "model.safetensors").read_bytes()
        (folder / "model.safetensors").write_bytes(data[: len(data) // 2])
    elif how == "garbage-json":
        (folder / "predictor.json").write_text("{ this is not json")
        (folder / "manifest.json").unlink()  # without the manifest the JSON itself is checked
    elif how == "garbage-config":
        (folder / "config.json").write_text("][")
        (folder / "manifest.json").unlink()  # no manifest: the loader itself must fail cleanly
    elif how == "flipped":
        data = bytearray((folder / "model.safetensors").read_bytes())
        data[-5] ^= 0xFF
        (folder / "model.safetensors").write_bytes(bytes(data))
    return folder


@pytest.mark.parametrize(
    "how,words",
    [
        ("missing", ["head.safetensors is missing"]),
        ("truncated", ["model.safetensors has", "truncated"]),
        ("garbage-json", ["predictor.json is not a valid"]),
        ("garbage-config", ["cannot load the predictor"]),
        ("flipped", ["model.safetensors does not match the sha256"]),
    ],
)
def test_broken_model_folder_is_a_message(tmp_path, capsys, how, words):
    folder = _broken_model(tmp_path, how)
    nacl().to(filename=str(tmp_path / "nacl.cif"))
    code, err = run_cli(capsys, "predict", tmp_path / "nacl.cif", "--model", folder, "-o", tmp_path / "o.csv")
    assert code == 1
    assert_one_line_error(err, folder.name, *words)
    from cloudlib.predictor import load_predictor

    with pytest.raises(ModelError):
        load_predictor(folder)


def test_missing_model_folder_is_named_as_missing(tmp_path, capsys):
    nacl().to(filename=str(tmp_path / "nacl.cif"))
    code, err = run_cli(
        capsys, "predict", tmp_path / "nacl.cif", "--model", tmp_path / "nope", "-o", tmp_path / "o.csv"
    )
    assert code == 1
    assert_one_line_error(err, "nope", "no such model folder")


def test_shipped_models_carry_a_manifest_that_matches():
    from cloudlib.io import verify_manifest

    for name in ("cloud-laptop", "cloud-dielectric-laptop"):
        folder = ROOT / "models" / name
        files = json.loads((folder / "manifest.json").read_text())["files"]
        assert "model.safetensors" in files and "config.json" in files
        verify_manifest(folder)  # raises on any difference


def test_output_that_is_a_folder_fails_before_any_work(tmp_path, capsys, monkeypatch):
    import cloudlib.scope

    nacl().to(filename=str(tmp_path / "nacl.cif"))
    monkeypatch.setattr(cloudlib.scope, "scope_table", lambda *a, **k: pytest.fail("computed before checking -o"))
    code, err = run_cli(capsys, "scope", tmp_path / "nacl.cif", "-o", tmp_path)
    assert code == 1
    assert_one_line_error(err, "is a folder")


def test_failed_write_keeps_every_computed_row(tmp_path, capsys, monkeypatch):
    """Disk full on the output: the rows go to a recovery file whose path the message gives; exit 1."""
    import errno

    import cloudlib.io

    folder = tmp_path / "cifs"
    folder.mkdir()
    for i in range(5):
        nacl().to(filename=str(folder / f"s{i}.cif"))
    out = tmp_path / "out.csv"
    real = cloudlib.io.write_csv

    def full_disk(path, df, **kw):
        if Path(path) == out:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(path, df, **kw)

    monkeypatch.setattr(cloudlib.io, "write_csv", full_disk)
    monkeypatch.setenv("TMPDIR", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", None)
    code, err = run_cli(capsys, "scope", folder, "-o", out, "-q")
    assert code == 1
    assert_one_line_error(err, "No space left on device", "all 5 rows were saved to")
    saved = list((tmp_path / "tmp").glob("cloudlib-unsaved-*-out.csv"))
    assert len(saved) == 1 and str(saved[0]) in err
    df = pd.read_csv(saved[0], index_col="id")
    assert len(df) == 5 and (df["scope"] == NACL).all()


def test_unexpected_errors_are_one_line_and_debug_shows_the_traceback(tmp_path, capsys, monkeypatch):
    import cloudlib.scope

    def boom(*a, **k):
        raise RuntimeError("something nobody planned for\nsecond line")

    monkeypatch.setattr(cloudlib.scope, "scope_table", boom)
    nacl().to(filename=str(tmp_path / "nacl.cif"))
    code, err = run_cli(capsys, "scope", tmp_path / "nacl.cif", "-o", tmp_path / "o.csv")
    assert code == 1
    assert_one_line_error(err, "RuntimeError: something nobody planned for second line", "--debug")
    with pytest.raises(RuntimeError):
        cli.main(["--debug", "scope", str(tmp_path / "nacl.cif"), "-o", str(tmp_path / "o.csv")])


# --------------------------------------------------------------------------- 8. garbage strings


def test_garbage_strings_are_errors_never_silent_numbers():
    from cloudlib.finetune import predict_strings
    from cloudlib.predictor import load_predictor, predict_scope

    res = load_predictor(MODEL)
    garbage = ["total garbage here", "", "na cl", NACL.replace("Na", "Xx"), NACL.replace("| 4a 4b |", "4a 4b |")]
    for s in garbage:
        with pytest.raises(ScopeStringError):
            predict_strings(res, [NACL, s])
    df = predict_scope([NACL, *garbage, PO], res)
    assert len(df) == len(garbage) + 2
    assert df["error"].isna().tolist() == [True] + [False] * len(garbage) + [True]
    assert df["prediction"].isna().tolist() == [False] + [True] * len(garbage) + [False]
    assert "would be [UNK]): Xx" in df.loc[4, "error"]
    assert np.isclose(df.loc[0, "prediction"], predict_strings(res, [NACL])[0])


# --------------------------------------------------------------------------- 9. small ones


def test_killed_writer_leaves_no_part_file_behind(tmp_path):
    target = tmp_path / "result.json"
    code = textwrap.dedent(
        f"""
        import time
        from cloudlib.io import atomic_path
        with atomic_path({str(target)!r}) as tmp:
            print("ready", flush=True)
            time.sleep(60)
        """
    )
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, cwd=ROOT)
    assert proc.stdout.readline().strip() == "ready"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    leftovers = list(tmp_path.glob(".result.json.*.part"))
    assert len(leftovers) == 1 and leftovers[0].stat().st_size == 0  # the defect: a 0-byte hidden part
    from cloudlib.io import write_json

    write_json(target, {"ok": True})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["result.json"]


def test_a_live_writers_part_is_left_alone(tmp_path):
    from cloudlib.io import atomic_path, write_json

    target = tmp_path / "r.json"
    with atomic_path(target) as tmp:
        tmp.write_text("{}")
        write_json(target, {"other": 1})  # a second writer of the same file meanwhile
        assert tmp.exists()
    assert json.loads(target.read_text()) == {}
    assert not list(tmp_path.glob("*.part"))


def test_cli_wall_time_of_a_failing_command_is_short(tmp_path, capsys):
    t0 = time.perf_counter()
    code, err = run_cli(capsys, "scope", tmp_path / "missing.cif", "-o", tmp_path / "o.csv")
    assert code == 1 and time.perf_counter() - t0 < 5
    assert_one_line_error(err, "missing.cif", "no such file or folder")
