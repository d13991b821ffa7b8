"""SCOPE on a dask.distributed cluster (a real LocalCluster on loopback) and resumable SCOPE shards on disk."""

from __future__ import annotations

import functools
import json
import os
from concurrent.futures import ThreadPoolExecutor

import pandas as pd
import pytest
from pymatgen.core import Lattice, Structure

import cloudlib.scope as scope
from cloudlib.errors import DataError
from cloudlib.scope import CifText, scope_shards, scope_table

distributed = pytest.importorskip("distributed")


class _ExitCif(CifText):
    """CIF text whose unpickling ends the process at once (``os._exit``): a structure that kills the dask worker
    computing it, as the OOM killer or a crash in a C library would. The pickle names only the stdlib's
    ``os._exit``, so the workers need not import this test module; monkeypatches would not reach them."""

    def __reduce__(self):
        return (os._exit, (3,))


@pytest.fixture(scope="module")
def client():
    import dask

    # allowed-failures 0: a task that was running on a worker that died fails at once (KilledWorker), which keeps the
    # killer test short and makes innocent tasks sharing the dying worker fail too (scope_table must clear them).
    # lost-worker-timeout: LocalCluster closes a nanny for good when its worker is absent this long after a death;
    # with deaths in quick succession the check can land while the nanny restarts it (seen with 0/2 workers left).
    config = {"distributed.scheduler.allowed-failures": 0, "distributed.deploy.lost-worker-timeout": "1h"}
    with dask.config.set(config):
        cluster = distributed.LocalCluster(
            n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None, host="127.0.0.1"
        )
        c = distributed.Client(cluster)
        try:
            yield c
        finally:
            c.close()
            cluster.close()


@pytest.fixture(scope="module")
def seventy(dielectric_structures):
    items = dielectric_structures["structure"].head(70).to_dict()
    return items, scope_table(items, jobs=1, progress=False)


def nacl() -> Structure:
    return Structure.from_spacegroup("Fm-3m", Lattice.cubic(5.64), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])


def test_client_gives_exactly_the_serial_table(client, seventy):
    items, serial = seventy
    df = scope_table(items, executor=client, progress=False)
    pd.testing.assert_frame_equal(df, serial)
    assert serial["error"].isna().all()
    few = dict(list(items.items())[:12])
    for executor in (client.get_executor(), ThreadPoolExecutor(2)):  # concurrent.futures executors too
        df = scope_table(few, executor=executor, progress=False, chunksize=5)
        pd.testing.assert_frame_equal(df, serial.loc[list(few)])
    mixed = [nacl(), CifText("not a cif"), 42, nacl().as_dict()]  # bad items are rows, as without an executor
    pd.testing.assert_frame_equal(
        scope_table(mixed, executor=client, progress=False), scope_table(mixed, progress=False)
    )
    with pytest.raises(ValueError, match="local worker pool only"):
        scope_table(few, executor=client, timeout=10, progress=False)
    with pytest.raises(TypeError, match="executor"):
        scope_table(few, executor="tcp://127.0.0.1:8786", progress=False)


def test_structures_that_kill_their_dask_worker_fail_alone(client, seventy):
    """Two killers in one chunk: each fails with a WorkerDiedError naming it; every other row is computed."""
    items, serial = seventy
    at = {33: "killer-a", 35: "killer-b"}
    killers = list(at.values())
    mixed = {}
    for i, (k, v) in enumerate(items.items()):
        if i in at:
            mixed[at[i]] = _ExitCif("data_x\n")
        mixed[k] = v
    df = scope_table(mixed, executor=client, progress=False, chunksize=8)
    assert list(df.index) == list(mixed)
    assert set(df.index[df["error"].notna()]) == set(killers)
    for k in killers:
        assert df.loc[k, "scope"] is None
        assert df.loc[k, "error"] == (
            f"WorkerDiedError: {k}: worker process died (dask: KilledWorker, 1 worker(s) died running it) "
            "while encoding this structure"
        )
    pd.testing.assert_frame_equal(df.drop(index=killers), serial)
    client.wait_for_workers(2, timeout=120)  # the nannies replaced the dead workers


def _mtimes(folder) -> dict:
    return {p.name: p.stat().st_mtime_ns for p in sorted(folder.glob("scope-*.parquet"))}


def test_scope_shards_resume_and_settings(client, seventy, tmp_path, monkeypatch):
    items, serial = seventy
    keys = list(items)
    bad = CifText("not a cif")
    data = {**{k: items[k] for k in keys[:40]}, "garbage": bad, **{k: items[k] for k in keys[40:]}}  # 71 rows
    expected = pd.concat([serial.loc[keys[:40]], scope_table({"garbage": bad}, progress=False), serial.loc[keys[40:]]])
    assert expected.loc["garbage", "error"].startswith("StructureParseError: garbage: CIF does not parse")

    calls = []
    real = scope.scope_table

    @functools.wraps(real)
    def counting(structures, **kw):
        calls.append(len(structures))
        return real(structures, **kw)

    monkeypatch.setattr(scope, "scope_table", counting)

    folder = tmp_path / "shards"
    df = scope_shards(data, folder, shard_size=25, executor=client, progress=False)
    pd.testing.assert_frame_equal(df, expected)
    assert calls == [25, 25, 21]
    files = ["scope-00000.parquet", "scope-00001.parquet", "scope-00002.parquet"]
    assert sorted(p.name for p in folder.iterdir()) == ["manifest.json", *files]
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["complete"] and manifest["rows"] == 71 and manifest["failures"] == 1
    assert [(s["file"], s["rows"], s["failures"]) for s in manifest["shards"]] == [
        (files[0], 25, 0),
        (files[1], 25, 1),
        (files[2], 21, 0),
    ]
    assert manifest["settings"] == {
        "variant": "reduced",
        "symprec": 0.01,
        "angle_tolerance": 5.0,
        "max_atoms": scope.MAX_ATOMS,
        "shard_size": 25,
    }
    shard = pd.read_parquet(folder / files[1])
    assert list(shard.columns) == ["id", "scope", "error"] and shard["id"].tolist() == [
        str(k) for k in list(data)[25:50]
    ]

    # a rerun with the same settings computes nothing and rewrites no shard
    before, calls[:] = _mtimes(folder), []
    pd.testing.assert_frame_equal(scope_shards(data, folder, shard_size=25, executor=client, progress=False), expected)
    assert calls == [] and _mtimes(folder) == before

    # other settings, another input, shards without a manifest: DataError naming the folder
    for kw in ({"variant": "full"}, {"symprec": 0.1}, {"max_atoms": None}):
        with pytest.raises(DataError, match=f"{folder}: written with other settings"):
            scope_shards(data, folder, shard_size=25, progress=False, **kw)
    with pytest.raises(DataError, match="written with other settings"):
        scope_shards(data, folder, shard_size=20, progress=False)
    with pytest.raises(DataError, match=f"{folder}: scope-00000.parquet holds 25 rows.*the input changed"):
        scope_shards(dict(reversed(data.items())), folder, shard_size=25, progress=False)
    orphan = tmp_path / "orphan"
    orphan.mkdir()
    (orphan / files[0]).write_bytes((folder / files[0]).read_bytes())
    with pytest.raises(DataError, match="no manifest.json"):
        scope_shards(data, orphan, shard_size=25, progress=False)
    assert calls == []

    # an input that fails after 30 items: shard 0 is written; the rerun writes only shards 1 and 2
    values = list(data.values())
    expected_seq = real(values, progress=False)  # ids 0..70 (they are in the error texts too)

    def broken():
        for i, v in enumerate(values):
            if i == 30:
                raise OSError("input lost")
            yield v

    resumed = tmp_path / "resumed"
    with pytest.raises(OSError, match="input lost"):
        scope_shards(broken(), resumed, shard_size=25, progress=False)
    assert list(_mtimes(resumed)) == files[:1]
    assert not json.loads((resumed / "manifest.json").read_text())["complete"]
    first, calls[:] = _mtimes(resumed), []
    pd.testing.assert_frame_equal(scope_shards(values, resumed, shard_size=25, progress=False), expected_seq)
    assert calls == [25, 21]
    assert _mtimes(resumed)[files[0]] == first[files[0]] and list(_mtimes(resumed)) == files

    # a short last shard that the input now extends is recomputed, the full shards before it are kept
    grown = tmp_path / "grown"
    scope_shards(values[:60], grown, shard_size=25, progress=False)
    before, calls[:] = _mtimes(grown), []
    pd.testing.assert_frame_equal(scope_shards(values, grown, shard_size=25, progress=False), expected_seq)
    assert calls == [21]
    after = _mtimes(grown)
    assert [after[f] == before[f] for f in files] == [True, True, False]
    assert json.loads((grown / "manifest.json").read_text())["rows"] == 71


def test_command_line_scope_on_a_dask_scheduler(client, seventy, tmp_path, capsys):
    """``python -m cloudlib scope FOLDER --dask ADDRESS``: the same CSV as ``--jobs 1``; --timeout with it refused."""
    from cloudlib.cli import main

    items, _ = seventy
    folder = tmp_path / "cifs"
    folder.mkdir()
    for name, structure in list(items.items())[:12]:
        structure.to(filename=str(folder / f"{name}.cif"))
    (folder / "broken.cif").write_text("data_x\n_cell_length_a 1\n")
    local, remote = tmp_path / "local.csv", tmp_path / "dask.csv"
    assert main(["scope", str(folder), "-o", str(local), "-q"]) == 2  # the broken file is a failed row
    assert main(["scope", str(folder), "-o", str(remote), "-q", "--dask", client.scheduler.address]) == 2
    pd.testing.assert_frame_equal(pd.read_csv(remote), pd.read_csv(local))
    capsys.readouterr()
    assert main(["scope", str(folder), "-o", str(remote), "--dask", client.scheduler.address, "--timeout", "5"]) == 1
    assert "--timeout" in capsys.readouterr().err
