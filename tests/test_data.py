"""Data layer: verified fetching (loopback HTTP server, mirror fallback, corruption), MatBench, corpus."""

from __future__ import annotations

import functools
import hashlib
import http.server
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from conftest import need

from cloudlib import matbench_data, registry
from cloudlib.corpus import BLOCK_TOKENS, corpus_sources, load_pretraining_corpus, n_tokens
from cloudlib.errors import ChecksumError, DataUnavailableError
from cloudlib.registry import REGISTRY, Dataset, fetch, fetch_manifest

PAYLOAD = b"scope,n\n1 6 a | 4a 4b | Na 0.5 Cl 0.5,1.5\n"
SHA = hashlib.sha256(PAYLOAD).hexdigest()


@pytest.fixture()
def server(tmp_path):
    """A loopback HTTP server serving tmp_path/www; yields its base URL."""
    www = tmp_path / "www"
    www.mkdir()
    (www / "good.csv").write_bytes(PAYLOAD)
    (www / "corrupt.csv").write_bytes(PAYLOAD[:-3] + b"9.9")
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(www))
    handler.log_message = lambda *a, **k: None
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture()
def sandbox(tmp_path, monkeypatch):
    """Private cache and mirror; no $CLOUD_OFFLINE."""
    monkeypatch.setenv("CLOUD_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("CLOUD_OFFLINE", raising=False)
    monkeypatch.setenv("CLOUD_DOWNLOAD_TIMEOUT", "5")
    mirror = tmp_path / "mirror"
    (mirror / "test").mkdir(parents=True)
    monkeypatch.setenv("CLOUD_DATA_MIRROR", str(mirror))
    return tmp_path


def _register(monkeypatch, url, name="test/file.csv", sha=SHA):
    monkeypatch.setitem(REGISTRY, name, Dataset(name, sha, url))
    return name


def test_download_is_verified_and_cached(server, sandbox, monkeypatch):
    name = _register(monkeypatch, f"{server}/good.csv")
    path = fetch(name)
    assert path == sandbox / "cache" / name and path.read_bytes() == PAYLOAD
    # second call served from cache: point the URL somewhere dead and it still works
    _register(monkeypatch, f"{server}/missing.csv")
    assert fetch(name).read_bytes() == PAYLOAD
    # a corrupted cache entry is detected and fetched again
    path.write_bytes(b"bit rot")
    _register(monkeypatch, f"{server}/good.csv")
    assert fetch(name).read_bytes() == PAYLOAD


def test_corrupted_download_names_file_and_both_hashes(server, sandbox, monkeypatch):
    name = _register(monkeypatch, f"{server}/corrupt.csv")
    bad_sha = hashlib.sha256((sandbox / "www" / "corrupt.csv").read_bytes()).hexdigest()
    with pytest.raises(ChecksumError) as info:
        fetch(name)
    msg = str(info.value)
    assert name in msg and SHA in msg and bad_sha in msg
    assert not (sandbox / "cache" / name).exists()  # nothing half-written stays behind


def test_unreachable_url_falls_back_to_mirror(server, sandbox, monkeypatch):
    name = _register(monkeypatch, f"{server}/missing.csv")  # 404
    (sandbox / "mirror" / name).write_bytes(PAYLOAD)
    path = fetch(name)
    assert path == sandbox / "mirror" / name  # read in place, never copied
    assert not (sandbox / "cache" / name).exists()


def test_corrupted_mirror_file_raises(sandbox, monkeypatch):
    name = _register(monkeypatch, "http://127.0.0.1:9/nothing-listens-here.csv")
    (sandbox / "mirror" / name).write_bytes(b"tampered")
    with pytest.raises(ChecksumError, match=f"expected {SHA}"):
        fetch(name)


def test_nothing_reachable(sandbox, monkeypatch):
    name = _register(monkeypatch, "http://127.0.0.1:9/nothing-listens-here.csv")
    with pytest.raises(DataUnavailableError, match=r"test/file.csv: no source could provide it.*mirror"):
        fetch(name)
    monkeypatch.setenv("CLOUD_OFFLINE", "1")
    with pytest.raises(DataUnavailableError, match="CLOUD_OFFLINE"):
        fetch(name)
    with pytest.raises(KeyError, match="unknown dataset"):
        fetch("no/such/file.csv")


def test_manifest_folder_verified_and_offline_fallback(server, sandbox, monkeypatch):
    """A manifest folder: each file checked against its line; a dead host is tried once, then the mirror."""
    import urllib.request

    from cloudlib import registry

    other = b"second file\n"
    manifest = f"{SHA}  good.csv\n{hashlib.sha256(other).hexdigest()}  other.csv\n".encode()
    (sandbox / "mirror" / "test" / "m.SHA256SUMS").write_bytes(manifest)
    monkeypatch.setitem(
        REGISTRY,
        "test/m.SHA256SUMS",
        Dataset("test/m.SHA256SUMS", hashlib.sha256(manifest).hexdigest(), None, "x", "no upstream URL"),
    )
    (sandbox / "mirror" / "folder").mkdir()
    (sandbox / "mirror" / "folder" / "other.csv").write_bytes(other)
    (sandbox / "www" / "other.csv").write_bytes(b"tampered\n")
    with pytest.raises(ChecksumError, match="folder/other.csv"):  # bad bytes from the host and no good copy
        (sandbox / "mirror" / "folder" / "other.csv").write_bytes(b"tampered\n")
        fetch_manifest("test/m.SHA256SUMS", "folder", server)
    (sandbox / "mirror" / "folder" / "other.csv").write_bytes(other)
    (sandbox / "www" / "other.csv").unlink()  # 404 from the host: the mirror's good copy is used
    got = fetch_manifest("test/m.SHA256SUMS", "folder", server)
    assert got["good.csv"].read_bytes() == PAYLOAD and got["other.csv"].read_bytes() == other
    # a host that cannot be reached is tried once; every other file then comes from the mirror
    for f in ("good.csv", "other.csv"):
        (sandbox / "cache" / "folder" / f).unlink(missing_ok=True)
    (sandbox / "mirror" / "folder" / "good.csv").write_bytes(PAYLOAD)
    calls = []

    def dead(url, *a, **k):
        calls.append(url)
        raise registry.urllib.error.URLError("no route to host")

    monkeypatch.setattr(urllib.request, "urlopen", dead)
    got = fetch_manifest("test/m.SHA256SUMS", "folder", "http://127.0.0.1:9")
    assert len(calls) == 1 and got["good.csv"].read_bytes() == PAYLOAD


def test_registry_entries_are_complete():
    for name, ds in REGISTRY.items():
        assert len(ds.sha256) == 64 and ds.licence and ds.description, name
        assert not (ds.url and ds.archive), name
        if ds.archive:
            assert ds.member and ds.archive_url.endswith(ds.archive) and len(ds.archive_sha256) == 64
        elif ds.url is None:
            assert "no upstream URL" in ds.description, name  # mirror only, and it says so
        else:
            assert ds.url.rsplit("/", 1)[1].split(".")[0] in name or "perov_5" in name, name


def test_every_registry_file_is_reachable_and_verified():
    for name in REGISTRY:
        assert need(name).stat().st_size > 0


def test_matbench_dielectric_and_official_split(dielectric_structures):
    df = dielectric_structures
    assert df.shape == (4764, 2) and list(df.columns) == ["structure", "n"]
    assert df.index[0] == "mb-dielectric-0001" and df.index[-1] == "mb-dielectric-4764"
    assert (df["n"] >= 1).all()
    mad = (df["n"] - df["n"].mean()).abs().mean()  # MatBench's own metadata pins the data down
    assert mad == pytest.approx(matbench_data.matbench_metadata("matbench_dielectric")["mad"], rel=1e-9)
    folds = [matbench_data.matbench_split("matbench_dielectric", f) for f in range(5)]
    tests = [set(t) for _, t in folds]
    assert sum(map(len, tests)) == 4764 and set().union(*tests) == set(df.index)  # folds partition the data
    for train, test in folds:
        assert not set(train) & set(test) and len(train) + len(test) == 4764
    assert len(folds[0][0]) == 3811 and len(folds[0][1]) == 953
    assert matbench_data.matbench_metadata("matbench_dielectric")["target"] == "n"
    with pytest.raises(KeyError, match="fold_5"):
        matbench_data.matbench_split("matbench_dielectric", 5)


def test_other_matbench_tasks_fail_clearly_offline(monkeypatch):
    monkeypatch.setattr(
        matbench_data, "_matbench_from_matminer", lambda task: (_ for _ in ()).throw(OSError("no network"))
    )
    with pytest.raises(DataUnavailableError, match="matbench_log_gvrh.*no network"):
        matbench_data.load_matbench("matbench_log_gvrh")


def test_corpus_sources_and_provenance(tmp_path, monkeypatch):
    monkeypatch.setenv("CLOUD_HOME", str(tmp_path))  # derived files go to a scratch tree
    corpus, table = load_pretraining_corpus(limit=25, progress=False)
    sources = set(corpus_sources())
    assert set(table.index) == sources | {"total (deduplicated)"}
    body = table.drop(index="total (deduplicated)")
    if (body["note"] != "").any() and __import__("os").environ.get("CI"):
        pytest.fail(f"a corpus source was unavailable under CI: {body['note'].to_dict()}")
    assert (body["structures"] == 25).all() and (body["ok"] >= 20).all()
    assert table.loc["total (deduplicated)", "new unique"] == len(corpus) == corpus["count"].ge(1).sum()
    assert table.loc["total (deduplicated)", "unique"] == len(corpus) + table.loc["total (deduplicated)", "too long"]
    assert body["new unique"].sum() == len(corpus)
    assert corpus.index.map(n_tokens).max() <= BLOCK_TOKENS
    assert set(corpus["source"]) <= sources
    assert all(" | " in s and len(s.split(" | ")) == 3 for s in corpus.index)
    # second call reads the cache
    again, _ = load_pretraining_corpus(limit=25, progress=False)
    assert again.equals(corpus)
    # the holdout switch removes every string a source produced, whoever else produced it too
    held, _ = load_pretraining_corpus(limit=25, progress=False, holdout=("matbench_dielectric",))
    dielectric = corpus[corpus["sources"].str.split(";").map(lambda s: "matbench_dielectric" in s)]
    assert len(dielectric) > 0 and held.attrs["held_out"] == len(dielectric)
    assert set(held.index) == set(corpus.index) - set(dielectric.index)
    with pytest.raises(KeyError, match="no_such_source"):
        load_pretraining_corpus(limit=25, progress=False, holdout=("no_such_source",))


def test_every_corpus_source_keeps_every_crystal():
    """Loader ids must be unique: a repeated key would silently drop crystals (AFLOW labels repeat)."""
    documented = {
        "cloud_10k": 10000,
        "matbench_dielectric": 4764,
        "matminer_flla_2015": 3938,
        "matminer_elastic_tensor": 1181,
        "matminer_dielectric_constant": 1056,
        "pymatgen_aflow_prototypes": 288,
        "cdvae_perov_5": 3787 + 3785,
        "matcalc_mp_elasticity": 3953,
        "matcalc_wbm": 972,
        "matminer_piezoelectric_tensor": 941,
        "jarvis_castelli_perovskites": 18928,
        "jarvis_carbon_24": 10153,
        "jarvis_supercon": 1056,
        "matbench_jdft2d_partial": 508,
        "3dsc_mp": 4704,
        "core_mof_2019": 12020,
    }
    loaders = corpus_sources()
    assert set(loaders) == set(documented)
    for name, loader in loaders.items():
        from conftest import need_call

        assert len(need_call(loader)) == documented[name], name


def test_splits_agree_with_matbench_itself():
    """matbench 0.6 (installed --no-deps) initialises with current matminer and holds the same folds."""
    from matbench.bench import MatbenchBenchmark

    mb = MatbenchBenchmark(autoload=False, subset=["matbench_dielectric"])
    task = mb.matbench_dielectric
    for fold in range(5):
        train, test = matbench_data.matbench_split("matbench_dielectric", fold)
        key = task.folds_keys[fold]
        assert list(task.validation[key].train) == train and list(task.validation[key].test) == test


def test_shipped_corpus_is_what_its_sources_give():
    """The committed corpus (data/corpus) against its provenance and a fresh SCOPE of a random sample of rows."""
    import json

    import numpy as np
    import pandas as pd

    from cloudlib.corpus import corpus_stem, shipped_corpus_dir
    from cloudlib.scope import scope_table

    folder = shipped_corpus_dir()
    prov = json.loads((folder / "provenance.json").read_text())
    rows = pd.read_csv(folder / f"{corpus_stem()}_rows.csv.gz", index_col="id", keep_default_na=False, na_values=[""])
    table = pd.read_csv(folder / f"{corpus_stem()}_table.csv", index_col="source", keep_default_na=False)
    assert prov["files"] == [f"{corpus_stem()}_rows.csv.gz", f"{corpus_stem()}_table.csv"]
    assert len(rows) == prov["structures"] and int(rows["scope"].notna().sum()) == prov["ok"]
    assert set(rows["source"]) == set(corpus_sources()) == set(table.index) - {"total (deduplicated)"}
    counts = rows.groupby("source").size()
    assert counts.to_dict() == table["structures"].drop(index="total (deduplicated)").to_dict()
    corpus, _ = load_pretraining_corpus(progress=False)  # read from data/corpus when no cache is there
    assert len(corpus) == prov["unique_strings_that_fit"] == table.loc["total (deduplicated)", "new unique"]
    rng = np.random.default_rng(0)
    loaders = corpus_sources()
    for source in ("matbench_jdft2d_partial", "jarvis_supercon", "matminer_piezoelectric_tensor", "3dsc_mp"):
        from conftest import need_call

        items = need_call(loaders[source])
        ids = list(rows.index[rows["source"] == source])
        pick = [ids[i] for i in rng.choice(len(ids), 15, replace=False)]
        fresh = scope_table({i: items[i] for i in pick}, progress=False)
        assert fresh["scope"].fillna("").tolist() == rows.loc[pick, "scope"].fillna("").tolist(), source


# --------------------------------------------------------------------------- concurrency and the CLI

_CHILD = r"""
import hashlib, sys, time
from pathlib import Path
from cloudlib.registry import REGISTRY, Dataset, fetch
name, sha, url, go = sys.argv[1], sys.argv[2], sys.argv[3] or None, Path(sys.argv[4])
REGISTRY[name] = Dataset(name, sha, url)
print("ready", flush=True)
while not go.exists():
    time.sleep(0.005)
path = fetch(name)
got = hashlib.sha256(path.read_bytes()).hexdigest()  # the path handed back must hold the right bytes now
print(f"{path}\t{got}", flush=True)
"""


@pytest.mark.parametrize("source", ["mirror", "server"])
def test_concurrent_fetch_of_corrupted_cache_entry(server, sandbox, source):
    """Several processes find the same corrupted cache entry at once: each must get the right bytes.

    The payload is large so that every process is still reading/hashing the bad entry when the first one
    removes it (before the fix, the others died with FileNotFoundError on their own unlink)."""
    import os
    import subprocess
    import sys

    payload = PAYLOAD * 400_000  # ~17 MB: reading and hashing it takes long enough to overlap
    sha = hashlib.sha256(payload).hexdigest()
    name = "test/big.csv"
    (sandbox / "mirror" / name).write_bytes(payload)
    (sandbox / "www" / "big.csv").write_bytes(payload)
    cached = sandbox / "cache" / name
    cached.parent.mkdir(parents=True)
    cached.write_bytes(payload[:-1] + b"X")  # bit rot in the cache
    url = f"{server}/big.csv" if source == "server" else ""
    go = sandbox / "go"
    env = {**os.environ, "CLOUD_CACHE": str(sandbox / "cache"), "CLOUD_DATA_MIRROR": str(sandbox / "mirror")}
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _CHILD, name, sha, url, str(go)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        for _ in range(6)
    ]
    try:
        for p in procs:  # wait until every child has imported cloudlib, then release them together
            assert p.stdout.readline().strip() == "ready"
        go.touch()
        results = [p.communicate(timeout=120) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    for p, (out, err) in zip(procs, results):
        assert p.returncode == 0, err[-2000:]
        path, got = out.strip().split("\t")
        assert got == sha and hashlib.sha256(Path(path).read_bytes()).hexdigest() == sha
    if source == "server":
        assert hashlib.sha256(cached.read_bytes()).hexdigest() == sha  # the cache holds the good copy again
    else:
        assert not cached.exists()  # the mirror is read in place, the bad entry is gone


def test_cli_unknown_dataset_is_a_usage_error(sandbox, capsys):
    from cloudlib.cli import main

    assert main(["data", "fetch", "no/such/file.csv"]) == 1
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "no/such/file.csv" in lines[0] and "unknown dataset" in lines[0], err
    assert "Traceback" not in err


def test_relative_mirror_means_from_where_the_command_started(tmp_path, monkeypatch):
    """The README's `export CLOUD_DATA_MIRROR=../shared/data` must keep its meaning in the notebooks (which run
    in notebooks/) and in every child: the shell entry points and the Python ones make it absolute once."""
    real = os.environ.get("CLOUD_DATA_MIRROR")
    if not real or not Path(real, "cloud", "cloud_cv_test.csv").is_file():
        if os.environ.get("CI"):
            pytest.fail("CI is set but the data mirror is not")
        pytest.skip("needs the data mirror")
    root = Path(__file__).resolve().parent.parent
    start = tmp_path / "somewhere"
    start.mkdir()
    rel = os.path.relpath(real, start)
    # the shell side: scripts/env.sh, sourced before run_all.sh / test.sh / lab.sh change directory
    out = subprocess.run(
        ["bash", "-c", f'source {root / "scripts" / "env.sh"}; cd /; echo "$CLOUD_DATA_MIRROR"'],
        cwd=start,
        env={**os.environ, "CLOUD_DATA_MIRROR": rel},
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    assert Path(out).resolve() == Path(real).resolve()
    # the Python side: the CLI, started here, with a cold cache, fetches from the mirror
    run = subprocess.run(
        [sys.executable, "-m", "cloudlib", "data", "fetch", "cloud/cloud_cv_test.csv"],
        cwd=start,
        env={**os.environ, "CLOUD_DATA_MIRROR": rel, "CLOUD_CACHE": str(tmp_path / "cache")},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr
    monkeypatch.chdir(start)
    monkeypatch.setenv("CLOUD_DATA_MIRROR", rel)
    assert registry.absolute_mirror() == str(Path(real).resolve()) == os.environ["CLOUD_DATA_MIRROR"]
