"""The one resumable store (cloudlib.store.PartStore) every long study keeps its parts in."""

import gzip
import json

import pytest

from cloudlib.store import PartStore, canonical


def test_parts_count_only_for_their_settings(tmp_path):
    store = PartStore(tmp_path / "s", {"lr": 1e-3, "rows": [1, 2]})
    assert store.keys() == [] and store.get("a") is None and "a" not in store
    store.put("a", {"row": {"mae": 0.25}})
    assert store.get("a") == {"row": {"mae": 0.25}} and "a" in store
    # the same settings written in another key order (and read back from disk) are the same settings
    again = PartStore(tmp_path / "s", {"rows": (1, 2), "lr": 0.001})
    assert again.done() == ["a"] and again.get("a") == {"row": {"mae": 0.25}}
    other = PartStore(tmp_path / "s", {"lr": 2e-3, "rows": [1, 2]})
    assert other.keys() == ["a"] and other.done() == [] and other.get("a") is None
    other.put("a", {"row": {"mae": 0.5}})  # made again under the new settings: over the old part
    assert store.get("a") is None and other.get("a") == {"row": {"mae": 0.5}}
    on_disk = json.loads((tmp_path / "s" / "a.json").read_text())
    assert on_disk["settings"] == {"lr": 2e-3, "rows": [1, 2]} and canonical(on_disk["settings"]) == other._canonical


def test_compressed_parts_and_no_leftovers(tmp_path):
    store = PartStore(tmp_path, "v1", compress=True)
    store.put("page-000000", {"rows": ["x"] * 1000})
    assert [p.name for p in tmp_path.iterdir()] == ["page-000000.json.gz"]  # atomic write: no temporary left
    assert json.loads(gzip.decompress((tmp_path / "page-000000.json.gz").read_bytes()))["settings"] == "v1"
    assert store.get("page-000000")["rows"] == ["x"] * 1000
    assert PartStore(tmp_path, "v1").keys() == []  # .json parts only


def test_a_damaged_part_counts_as_missing(tmp_path):
    store = PartStore(tmp_path, "v1")
    store.put("a", {"x": 1})
    (tmp_path / "a.json").write_text('{"settings": "v1", "x"')  # cut by hand (the store never leaves this)
    (tmp_path / "b.json").write_text("[1, 2]")
    assert store.keys() == ["a", "b"] and store.done() == [] and store.get("a") is None


@pytest.mark.parametrize("key", ["", ".hidden", "a/b", "..", "a\\b"])
def test_keys_are_plain_file_names(tmp_path, key):
    with pytest.raises(ValueError, match="plain file name"):
        PartStore(tmp_path, "v1").put(key, {})


def test_the_store_owns_the_settings_entry(tmp_path):
    with pytest.raises(ValueError, match="settings"):
        PartStore(tmp_path, "v1").put("a", {"settings": "mine"})
