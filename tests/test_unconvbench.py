"""UnconvBench loaders, end to end on synthetic files laid out exactly as upstream publishes them.

The real files (figshare article 26657428) cannot be reached from the test machines, so every test
here serves small synthetic copies from a temporary mirror (``$CLOUD_DATA_MIRROR``) or a faked
figshare API, and checks the unavailable path.
"""

from __future__ import annotations

import hashlib
import json
import time
import urllib.error
import warnings

import numpy as np
import pandas as pd
import pytest
from pymatgen.core import Lattice, Structure

from cloudlib import registry
from cloudlib import unconvbench as ub
from cloudlib.errors import ChecksumError, DataUnavailableError


@pytest.fixture
def env(tmp_path, monkeypatch):
    """An empty mirror and cache, no network."""
    mirror, cache = tmp_path / "mirror", tmp_path / "cache"
    mirror.mkdir()
    monkeypatch.setenv("CLOUD_DATA_MIRROR", str(mirror))
    monkeypatch.setenv("CLOUD_CACHE", str(cache))
    monkeypatch.setenv("CLOUD_OFFLINE", "1")
    return mirror, cache


def _ub_json(n: int, label: str = "ef") -> tuple[bytes, np.ndarray]:
    """An UnconvBench data file: ``{"index", "columns": ["structure", label], "data": [[dict, y]]}``."""
    rows, ys = [], []
    for i in range(n):
        a = 4.0 + 0.002 * i
        s = Structure(Lattice.cubic(a), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])
        ys.append(round(0.5 + 0.01 * i, 6))
        rows.append([s.as_dict(), ys[-1]])
    raw = {"index": list(range(n)), "columns": ["structure", label], "data": rows}
    return json.dumps(raw).encode(), np.array(ys)


@pytest.fixture(scope="module")
def defected_json():
    return _ub_json(ub.TASKS["defected"].n)


def _put(root, name, blob: bytes):
    path = root / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(blob)
    return path


def test_tasks_names_and_aliases():
    assert sorted(ub.TASKS) == sorted(["2d_e_exf", "2d_e_tot", "2d_gap", "qmof", "supercon", "defected"])
    assert ub.task("unconvbench_defected") is ub.TASKS["defected"]
    assert ub.task("exfoliation").ub_name == "unconvbench_exfoliation"
    assert ub.tasks_table().loc["supercon", "n"] == 1058
    with pytest.raises(KeyError, match="unknown UnconvBench task"):
        ub.task("matbench_dielectric")
    # nothing unverifiable leaks into the sha256-pinned project registry
    assert not any(name.startswith(("unconvbench/", "cloud/unconv/")) for name in registry.REGISTRY)


@pytest.mark.parametrize("name, width", [("defected", 3), ("supercon", 4)])
def test_reproduced_splits_partition_every_id(name, width):
    t = ub.TASKS[name]
    splits = ub.reproduce_splits(name)
    assert sorted(splits) == [0, 1, 2, 3, 4]
    tested = []
    for train, test in splits.values():
        assert not set(train) & set(test) and len(train) + len(test) == t.n
        tested += test
    assert sorted(tested) == ub._ids(t, range(t.n))
    assert ub._ids(t, [0])[0] == f"{t.ub_name}-{'1'.rjust(width, '0')}"
    assert ub.reproduce_splits(name) == splits  # deterministic


def test_unconvbench_layout_end_to_end(env, defected_json):
    mirror, _ = env
    blob, ys = defected_json
    _put(mirror, "unconvbench/ub_unconvbench_defected.json", blob)
    with pytest.warns(ub.UnverifiedDataWarning, match="unverified"):
        train, test = ub.load_unconvbench("defected", 2)  # auto: no CLOUD CSVs, falls back
    assert list(train.columns) == ["structure", "ef"] and list(test.columns) == ["structure", "ef"]
    assert (len(train), len(test)) == (424, 106)
    exp_train, exp_test = ub.reproduce_splits("defected")[2]
    assert list(train.index) == exp_train and list(test.index) == exp_test
    assert test.attrs["split_source"].startswith("reproduced")
    row = int(test.index[0].rsplit("-", 1)[1]) - 1  # ids are 1-based row numbers
    assert test["ef"].iloc[0] == ys[row]
    assert test["structure"].iloc[0].lattice.a == pytest.approx(4.0 + 0.002 * row)

    # a published split file is preferred over the reproduction
    custom = {
        "splits": {
            "unconvbench_defected": {
                f"fold_{i}": {
                    "train": ub._ids(ub.TASKS["defected"], range(10, 530)),
                    "test": ub._ids(ub.TASKS["defected"], range(10)),
                }
                for i in range(5)
            }
        }
    }
    _put(mirror, ub.SPLITS_FILE, json.dumps(custom).encode())
    with pytest.warns(ub.UnverifiedDataWarning):
        train, test = ub.load_unconvbench("defected", 0, source="unconvbench")
    assert len(test) == 10 and test.index[0] == "unconvbench_defected-001"
    assert test.attrs["split_source"] == ub.SPLITS_FILE


def test_with_scope_adds_scope_strings(env):
    mirror, _ = env
    blob, _ = _ub_json(ub.TASKS["defected"].n)
    _put(mirror, "unconvbench/ub_unconvbench_defected.json", blob)
    with pytest.warns(ub.UnverifiedDataWarning):
        train, test = ub.load_unconvbench("defected", 0, source="unconvbench", with_scope=True)
    assert test["scope"].notna().all() and test["scope_error"].isna().all()
    assert test["scope"].str.endswith("Na 0.5 Cl 0.5").all()


def test_cloud_csv_layout(env):
    mirror, _ = env
    for split, n in (("train_and_val", 8), ("test", 3)):
        df = pd.DataFrame({"gen_str": [f"scope {split} {i}" for i in range(n)], "ef": np.arange(n) * 0.1})
        _put(mirror, f"cloud/unconv/unconvbench_defected/1/{split}.csv", df.to_csv(index=False).encode())
    with pytest.warns(ub.UnverifiedDataWarning):
        train, test = ub.load_unconvbench("defected", 1)
    assert list(train.columns) == ["scope", "ef"] and len(train) == 8 and len(test) == 3
    assert test["scope"].iloc[2] == "scope test 2" and test["ef"].iloc[2] == pytest.approx(0.2)
    assert test.attrs["original_columns"] == ["gen_str", "ef"]
    with pytest.raises(DataUnavailableError, match="did not publish"):
        ub.load_unconvbench("defected", 0, source="cloud")


def test_unavailable_raises_quickly_with_the_url(env, monkeypatch):
    t0 = time.perf_counter()
    with pytest.raises(DataUnavailableError) as info:
        ub.load_unconvbench("qmof", 0)
    assert ub.FIGSHARE_LANDING in str(info.value) and "CLOUD_OFFLINE" in str(info.value)

    # online but unreachable: the figshare API URL is named too
    monkeypatch.delenv("CLOUD_OFFLINE")

    def no_network(url):
        raise urllib.error.URLError("Name or service not known")

    monkeypatch.setattr(registry, "download", no_network)
    with pytest.raises(DataUnavailableError) as info:
        ub.load_unconvbench("2d_gap", 3, source="unconvbench")
    assert ub.FIGSHARE_FILES_API in str(info.value) and "ub_unconvbench_2d_gap.json" in str(info.value)
    assert time.perf_counter() - t0 < 5


def test_wrong_content_is_rejected(env):
    mirror, _ = env
    blob, _ = _ub_json(20)  # 20 rows where UnconvBench has 530
    _put(mirror, "unconvbench/ub_unconvbench_defected.json", blob)
    with pytest.raises(DataUnavailableError, match="expected 530 rows"):
        ub.load_unconvbench("defected", 0, source="unconvbench")
    _put(mirror, "unconvbench/ub_unconvbench_defected.json", b"<html>figshare landing page</html>")
    with pytest.raises(DataUnavailableError, match="not JSON"):
        ub.load_unconvbench("defected", 0, source="unconvbench")


def test_figshare_download_md5_and_cache(env, monkeypatch, defected_json):
    _, cache = env
    monkeypatch.delenv("CLOUD_OFFLINE")
    blob, _ = defected_json
    md5 = {"value": hashlib.md5(blob).hexdigest()}
    calls = []

    def fake_download(url):
        calls.append(url)
        if url == ub.FIGSHARE_FILES_API:
            return json.dumps(
                [
                    {"name": "README.txt", "download_url": "https://example.invalid/1", "computed_md5": "x"},
                    {
                        "name": "ub_unconvbench_defected.json",
                        "download_url": "https://example.invalid/2",
                        "computed_md5": md5["value"],
                    },
                ]
            ).encode()
        assert url == "https://example.invalid/2"
        return blob

    monkeypatch.setattr(registry, "download", fake_download)
    with pytest.warns(ub.UnverifiedDataWarning):
        path = ub.fetch("unconvbench/ub_unconvbench_defected.json")
    assert path == cache / "unconvbench/ub_unconvbench_defected.json" and path.read_bytes() == blob
    calls.clear()
    with pytest.warns(ub.UnverifiedDataWarning):
        assert ub.fetch("unconvbench/ub_unconvbench_defected.json") == path
    assert calls == []  # served from the cache

    path.unlink()
    md5["value"] = "0" * 32
    with pytest.raises(ChecksumError, match="md5"):
        ub.fetch("unconvbench/ub_unconvbench_defected.json")
    assert not path.exists()


def test_pinned_sha256_is_enforced(env, monkeypatch):
    mirror, _ = env
    blob, _ = _ub_json(20)
    name = "unconvbench/ub_unconvbench_defected.json"
    pinned = ub.UnconvFile(name, (), hashlib.sha256(b"other bytes").hexdigest(), "json", "defected")
    monkeypatch.setitem(ub.FILES, name, pinned)
    _put(mirror, name, blob)
    with pytest.raises(ChecksumError, match="sha256 mismatch"):
        ub.fetch(name)
    monkeypatch.setitem(ub.FILES, name, ub.UnconvFile(name, (), hashlib.sha256(blob).hexdigest(), "json", "defected"))
    with warnings.catch_warnings():
        warnings.simplefilter("error", ub.UnverifiedDataWarning)
        assert ub.fetch(name) == (mirror / name).resolve()  # verified by hash: no warning


def test_run_unconvbench_with_local_data_and_skips_what_is_missing(env):
    """The runner fine-tunes and scores an UnconvBench task it can read (here: a local copy), and skips,
    naming the figshare record, one it cannot."""
    from cloudlib.config import preset
    from cloudlib.finetune_studies import run_unconvbench

    mirror, _ = env
    blob, ys = _ub_json(ub.TASKS["defected"].n)
    _put(mirror, "unconvbench/ub_unconvbench_defected.json", blob)
    cfg = preset("finetune", "smoke", epochs=1, pretrained=False)
    with pytest.warns(ub.UnverifiedDataWarning):
        table = run_unconvbench(
            ["defected", "2d_gap"], cfg, models=("CLOUD-scratch", "Dummy"), folds=[0], progress=False
        )
    assert set(table["task"]) == {"defected"} and list(table["model"]) == ["CLOUD-scratch", "Dummy"]
    assert (table["n_train"] == 424).all() and (table["n_test"] == 106).all()
    train_ids, test_ids = ub.reproduce_splits("defected")[0]
    rows = {i: ys[int(i.rsplit("-", 1)[1]) - 1] for i in train_ids + test_ids}
    y_train, y_test = np.array([rows[i] for i in train_ids]), np.array([rows[i] for i in test_ids])
    dummy = table.set_index("model").loc["Dummy", "mae"]
    assert dummy == pytest.approx(np.mean(np.abs(y_test - y_train.mean())), rel=1e-12)
    assert "2d_gap" in table.attrs["skipped"] and ub.FIGSHARE_LANDING in table.attrs["skipped"]["2d_gap"]
