"""End-to-end tests of cloudlib.harvest against the OPTIMADE reference server on loopback.

Two reference servers (``uvicorn optimade.server.main:app`` from ``optimade[server]``, mongomock
backend) are started in subprocesses on free 127.0.0.1 ports:

* ``bundled``: the package's own test data (``optimade/server/data/test_structures.json``, 17
  entries). That file stores ids as ``task_id`` and formulas as ``pretty_formula``; the server only
  maps them to ``id``/``chemical_formula_reduced`` through the same ``aliases`` the optimade
  repository's ``optimade_config.json`` sets, so the test config sets them too. Its geometries are
  synthetic: in every multi-site entry all atoms sit on one point, so those fail SCOPE with
  OverlappingAtomsError and only the two one-atom entries convert;
* ``curated``: an OPTIMADE JSONL file (``insert_from_jsonl``) with 12 real crystals built with
  pymatgen plus 3 deliberately bad entries (disorder, unknown species "X", overlapping atoms), so
  that "most rows give SCOPE" and the error paths can be checked on realistic data.

No network beyond loopback; every wait is bounded.
"""

from __future__ import annotations

import contextlib
import http.server
import json
import os
import re
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pandas as pd
import pytest
import requests

from cloudlib import harvest as hv
from cloudlib.errors import DataError, DataUnavailableError
from cloudlib.harvest import (
    COLUMNS,
    InvalidFilterError,
    OptimadeResponseError,
    harvest,
    load_harvest,
    structures_url,
)

SCOPE_RE = re.compile(r"^\S+( \S+)* \| \S+( \S+)* \| [A-Z][a-z]? \d+(\.\d+)?( [A-Z][a-z]? \d+(\.\d+)?)*$")
START_TIMEOUT = 60.0

BUNDLED_CONFIG = {
    "database_backend": "mongomock",
    "insert_test_data": True,
    "page_limit": 20,
    "page_limit_max": 500,
    "aliases": {
        "structures": {
            "id": "task_id",
            "immutable_id": "_id",
            "chemical_formula_descriptive": "pretty_formula",
            "chemical_formula_reduced": "pretty_formula",
            "chemical_formula_anonymous": "formula_anonymous",
        }
    },
}


# --------------------------------------------------------------------------- curated data


def _good_structures():
    from pymatgen.core import Lattice, Structure

    def sg(spg, lattice, species, coords):
        lat = Lattice.cubic(lattice) if isinstance(lattice, float) else lattice
        return Structure.from_spacegroup(spg, lat, species, coords)

    return {
        "cur-NaCl": sg("Fm-3m", 5.64, ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]]),
        "cur-Si": sg("Fd-3m", 5.43, ["Si"], [[0, 0, 0]]),
        "cur-CsCl": sg("Pm-3m", 4.12, ["Cs", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]]),
        "cur-Fe": sg("Im-3m", 2.87, ["Fe"], [[0, 0, 0]]),
        "cur-Cu": sg("Fm-3m", 3.61, ["Cu"], [[0, 0, 0]]),
        "cur-SrTiO3": sg("Pm-3m", 3.905, ["Sr", "Ti", "O"], [[0, 0, 0], [0.5, 0.5, 0.5], [0.5, 0.5, 0]]),
        "cur-GaAs": sg("F-43m", 5.65, ["Ga", "As"], [[0, 0, 0], [0.25, 0.25, 0.25]]),
        "cur-ZnO": sg("P6_3mc", Lattice.hexagonal(3.25, 5.21), ["Zn", "O"], [[1 / 3, 2 / 3, 0], [1 / 3, 2 / 3, 0.382]]),
        "cur-TiO2": sg("P4_2/mnm", Lattice.tetragonal(4.59, 2.96), ["Ti", "O"], [[0, 0, 0], [0.305, 0.305, 0]]),
        "cur-MgO": sg("Fm-3m", 4.21, ["Mg", "O"], [[0, 0, 0], [0.5, 0.5, 0.5]]),
        "cur-SiO2": sg("P3_221", Lattice.hexagonal(4.91, 5.40), ["Si", "O"], [[0.47, 0, 2 / 3], [0.41, 0.27, 0.12]]),
        "cur-Al2O3": sg("R-3c", Lattice.hexagonal(4.76, 12.99), ["Al", "O"], [[0, 0, 0.352], [0.306, 0, 0.25]]),
    }


#: id -> error class expected for the deliberately bad curated entries
BAD_EXPECTED = {
    "cur-bad-disorder": "DisorderedStructureError",
    "cur-bad-unknown": "UnknownSpeciesError",
    "cur-bad-overlap": "OverlappingAtomsError",
}


def _attributes(structure) -> dict:
    from optimade.adapters.structures.pymatgen import from_pymatgen

    attrs = from_pymatgen(structure).model_dump(mode="json", exclude_none=True)
    attrs["last_modified"] = "2024-01-01T00:00:00Z"
    return attrs


def _write_curated_jsonl(path: Path) -> dict:
    from pymatgen.core import Lattice, Structure

    good = _good_structures()
    entries = {k: _attributes(s) for k, s in good.items()}

    disorder = _attributes(good["cur-NaCl"])
    disorder["species"] = [
        {"name": "Na", "chemical_symbols": ["Na", "K"], "concentration": [0.5, 0.5]},
        {"name": "Cl", "chemical_symbols": ["Cl"], "concentration": [1.0]},
    ]
    disorder["structure_features"] = ["disorder"]
    disorder["chemical_formula_reduced"] = "ClKNa"
    entries["cur-bad-disorder"] = disorder

    unknown = _attributes(good["cur-CsCl"])
    unknown["species"] = [
        {"name": "Cs", "chemical_symbols": ["X"], "concentration": [1.0]},
        {"name": "Cl", "chemical_symbols": ["Cl"], "concentration": [1.0]},
    ]
    entries["cur-bad-unknown"] = unknown

    entries["cur-bad-overlap"] = _attributes(Structure(Lattice.cubic(5.43), ["Si", "Si"], [[0, 0, 0], [0.01, 0, 0]]))

    with open(path, "w") as fh:
        fh.write(json.dumps({"x-optimade": {"meta": {"api_version": "1.2.0"}}}) + "\n")
        for key, attrs in entries.items():
            fh.write(json.dumps({"id": key, "type": "structures", "attributes": attrs}) + "\n")
    return good


# --------------------------------------------------------------------------- servers


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def _optimade_server(workdir: Path, config: dict):
    """Run the reference server with ``config`` on a free loopback port; yield its base URL."""
    workdir.mkdir(parents=True, exist_ok=True)
    config = {**config, "log_dir": str(workdir / "logs")}
    config_file = workdir / "optimade_config.json"
    config_file.write_text(json.dumps(config))
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith("OPTIMADE_")}
    env["OPTIMADE_CONFIG_FILE"] = str(config_file)
    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    log = open(workdir / "server.log", "wb")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "uvicorn",
            "optimade.server.main:app",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--log-level",
            "warning",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=env,
        cwd=workdir,
    )
    try:
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            if proc.poll() is not None:
                pytest.fail(
                    f"OPTIMADE server exited ({proc.returncode}):\n{(workdir / 'server.log').read_text()[-3000:]}"
                )
            try:
                if requests.get(f"{base}/v1/info", timeout=2).status_code == 200:
                    break
            except requests.RequestException:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"OPTIMADE server did not answer within {START_TIMEOUT} s")
            time.sleep(0.2)
        yield base
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
        log.close()


@pytest.fixture(scope="module", autouse=True)
def _no_proxy():
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("NO_PROXY", "127.0.0.1,localhost")
        mp.setenv("no_proxy", "127.0.0.1,localhost")
        yield


@pytest.fixture(scope="module")
def bundled(tmp_path_factory):
    with _optimade_server(tmp_path_factory.mktemp("bundled_server"), BUNDLED_CONFIG) as base:
        yield base


@pytest.fixture(scope="module")
def curated(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("curated_server")
    good = _write_curated_jsonl(workdir / "curated.jsonl")
    config = {
        "database_backend": "mongomock",
        "insert_test_data": False,
        "insert_from_jsonl": str(workdir / "curated.jsonl"),
        "page_limit": 20,
        "page_limit_max": 500,
    }
    with _optimade_server(workdir, config) as base:
        yield base, good


def _server_ids(base: str, filter: str | None = None) -> tuple[int, list[str]]:
    """(meta.data_returned, all ids) straight from the server, for comparison."""
    params = {"response_fields": "id", "page_limit": 500}
    if filter:
        params["filter"] = filter
    doc = requests.get(f"{base}/v1/structures", params=params, timeout=10).json()
    assert doc["links"].get("next") is None
    return doc["meta"]["data_returned"], [e["id"] for e in doc["data"]]


def _check_rows(df: pd.DataFrame) -> None:
    assert list(df.columns) == COLUMNS
    assert df["id"].is_unique
    ok = df["error"] == ""
    assert (df.loc[ok, "scope"].map(lambda s: bool(SCOPE_RE.match(s)))).all(), df.loc[ok, "scope"].tolist()
    assert (df.loc[~ok, "scope"] == "").all()
    assert df.loc[~ok, "error"].str.match(r"^[A-Za-z]+Error: \S").all(), df.loc[~ok, "error"].tolist()


# --------------------------------------------------------------------------- tests


def test_structures_url():
    assert structures_url("http://h:1") == "http://h:1/v1/structures"
    assert structures_url("https://h/optimade/") == "https://h/optimade/v1/structures"
    assert structures_url("https://h/optimade/v1") == "https://h/optimade/v1/structures"
    assert structures_url("https://h/optimade/v1.2/structures/") == "https://h/optimade/v1.2/structures"
    with pytest.raises(ValueError):
        structures_url("ftp://h/x")


def test_bundled_test_data(bundled, tmp_path):
    n, ids = _server_ids(bundled)
    df = harvest(bundled, tmp_path / "h", page_limit=5, progress=False)
    _check_rows(df)
    assert len(df) == n == 17
    assert df["id"].tolist() == ids  # server order, nothing dropped
    assert set(df["provider"]) == {"exmpl"}
    state = json.loads((tmp_path / "h" / "state.json").read_text())
    assert state["complete"] and state["pages"] == 4 and state["data_returned"] == 17
    assert state["n_scope"] + state["n_failed"] == 17
    # the bundled geometries are synthetic: all atoms of a multi-site entry coincide
    ok = df[df["error"] == ""]
    assert set(ok["id"]) == {"mpf_1", "mpf_200"}
    assert ok.set_index("id").loc["mpf_200", "scope"].endswith("| Ag 1.0")
    assert df.loc[df["error"] != "", "error"].str.startswith("OverlappingAtomsError").all()
    assert df.set_index("id").loc["mpf_3803", "chemical_formula_reduced"] == "Ba2Ce2FeHNaO27Si8Ti2"


@pytest.mark.parametrize("flt", ['elements HAS "Si"', "nelements=2"])
def test_filter_is_honoured(bundled, tmp_path, flt):
    n, ids = _server_ids(bundled, flt)
    assert 0 < n < 17
    df = harvest(bundled, tmp_path / "f", filter=flt, page_limit=1, progress=False)
    assert sorted(df["id"]) == sorted(ids) and len(df) == n
    if "Si" in flt:
        assert df["chemical_formula_reduced"].str.contains("Si").all()


def test_curated_most_rows_give_scope(curated, tmp_path):
    from cloudlib.scope import structure_to_scope

    base, good = curated
    n, ids = _server_ids(base)
    df = harvest(base, tmp_path / "c", page_limit=4, progress=False)
    _check_rows(df)
    assert len(df) == n == len(good) + len(BAD_EXPECTED)
    by_id = df.set_index("id")
    assert (by_id.loc[list(good), "error"] == "").all(), by_id.loc[list(good), "error"].to_dict()
    assert (df["error"] == "").mean() > 0.75
    for key, structure in good.items():  # OPTIMADE round trip does not change the SCOPE string
        assert by_id.loc[key, "scope"] == structure_to_scope(structure), key
    assert by_id.loc["cur-NaCl", "scope"].split(" | ")[1:] == ["4a 4b", "Na 0.5 Cl 0.5"]
    for key, cls in BAD_EXPECTED.items():
        assert by_id.loc[key, "error"].startswith(cls + ":"), (key, by_id.loc[key, "error"])


def test_interrupt_and_resume_equals_uninterrupted(curated, tmp_path):
    base, _ = curated
    full = harvest(base, tmp_path / "full", page_limit=3, progress=False)

    out = tmp_path / "resumed"
    part = harvest(base, out, page_limit=3, max_structures=6, progress=False)  # stops after 2 pages
    state = json.loads((out / "state.json").read_text())
    assert len(part) == 6 and state["pages"] == 2 and not state["complete"] and state["next_url"]
    first_part_mtime = (out / "part-000000.csv.gz").stat().st_mtime_ns

    resumed = harvest(base, out, page_limit=3, progress=False)
    pd.testing.assert_frame_equal(resumed, full)
    assert resumed["id"].is_unique
    assert (out / "part-000000.csv.gz").stat().st_mtime_ns == first_part_mtime  # not fetched again

    # a finished harvest is a no-op: no request (the server could be gone), same table, files untouched
    state_mtime = (out / "state.json").stat().st_mtime_ns
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(requests.Session, "get", lambda *a, **k: pytest.fail("a finished harvest made a request"))
        again = harvest(base, out, progress=False)
    pd.testing.assert_frame_equal(again, full)
    assert (out / "state.json").stat().st_mtime_ns == state_mtime
    pd.testing.assert_frame_equal(load_harvest(out), full)


def test_crash_between_part_and_state_does_not_duplicate(curated, tmp_path, monkeypatch):
    base, _ = curated
    full = harvest(base, tmp_path / "full", page_limit=4, progress=False)

    real_write_json = hv.write_json
    calls = {"n": 0}

    def flaky_write_json(path, obj, **kw):
        calls["n"] += 1
        if calls["n"] == 2:  # page 2's part is on disk, its state update never happens
            raise KeyboardInterrupt
        return real_write_json(path, obj, **kw)

    out = tmp_path / "crashed"
    monkeypatch.setattr(hv, "write_json", flaky_write_json)
    with pytest.raises(KeyboardInterrupt):
        harvest(base, out, page_limit=4, progress=False)
    monkeypatch.setattr(hv, "write_json", real_write_json)
    assert json.loads((out / "state.json").read_text())["pages"] == 1
    assert (out / "part-000001.csv.gz").exists()  # the orphan part

    resumed = harvest(base, out, page_limit=4, progress=False)
    pd.testing.assert_frame_equal(resumed, full)


def test_other_harvest_in_same_folder_is_refused(bundled, tmp_path):
    harvest(bundled, tmp_path / "h", filter="nelements=2", page_limit=50, progress=False)
    with pytest.raises(DataError, match="another harvest"):
        harvest(bundled, tmp_path / "h", filter="nelements=3", progress=False)


def test_unreachable_server_raises_quickly(tmp_path):
    url = f"http://127.0.0.1:{_free_port()}"  # nothing listens there
    t0 = time.monotonic()
    with pytest.raises(DataUnavailableError) as info:
        harvest(url, tmp_path / "u", timeout=5, progress=False)
    assert time.monotonic() - t0 < 5
    assert url in str(info.value)
    assert not (tmp_path / "u" / "state.json").exists()


def test_invalid_filter_is_rejected_before_any_request(tmp_path):
    url = f"http://127.0.0.1:{_free_port()}"  # a request would raise DataUnavailableError instead
    with pytest.raises(InvalidFilterError):
        harvest(url, tmp_path / "x", filter="elements HAS HAS", progress=False)


def _page(ids, next_url=None) -> bytes:
    data = [{"id": i, "type": "structures", "attributes": {"structure_features": []}} for i in ids]
    return json.dumps({"data": data, "meta": {"data_returned": len(ids)}, "links": {"next": next_url}}).encode()


class _FakeHandler(http.server.BaseHTTPRequestHandler):
    """Answers that are not OPTIMADE, a loop in links.next, and transient 503s."""

    routes = {
        "/html/v1/structures": (200, "text/html", b"<html><body>hello</body></html>"),
        "/json/v1/structures": (200, "application/json", b'{"hello": "world"}'),
        "/noid/v1/structures": (
            200,
            "application/json",
            b'{"data": [{"type": "structures", "attributes": {}}], "meta": {}}',
        ),
        "/loop/v1/structures": (200, "application/json", _page(["a"], "/loop/v1/structures?page_offset=1")),
        "/down/v1/structures": (
            503,
            "application/json",
            b'{"errors": [{"title": "Service Unavailable", "detail": "busy"}]}',
        ),
    }
    flaky_calls = 0

    def do_GET(self):  # noqa: N802 - http.server's name
        path = self.path.split("?")[0]
        if path == "/flaky/v1/structures":
            type(self).flaky_calls += 1
            if type(self).flaky_calls <= 2:
                path = "/down/v1/structures"
            else:
                self.routes[path] = (200, "application/json", _page(["f1", "f2"]))
        status, ctype, body = self.routes.get(path, (404, "text/plain", b"not found"))
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def fake_server():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _FakeHandler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


@pytest.mark.parametrize(
    "path, match",
    [
        ("/html", "not JSON"),
        ("/json", "not an OPTIMADE entry listing"),
        ("/noid", "has no 'id'"),
        ("/missing", "HTTP 404"),
    ],
)
def test_non_optimade_response(fake_server, tmp_path, path, match):
    with pytest.raises(OptimadeResponseError, match=match):
        harvest(fake_server + path, tmp_path / "n", progress=False, retries=0)


def test_pagination_loop_is_detected(fake_server, tmp_path):
    with pytest.raises(OptimadeResponseError, match="points back"):
        harvest(fake_server + "/loop", tmp_path / "l", progress=False)
    assert json.loads((tmp_path / "l" / "state.json").read_text())["pages"] == 1  # first page kept once


def test_transient_errors_are_retried(fake_server, tmp_path):
    df = harvest(fake_server + "/flaky", tmp_path / "r", progress=False, retries=3, backoff=0.01)
    assert df["id"].tolist() == ["f1", "f2"]
    assert df["error"].str.startswith("StructureParseError: ").all()  # malformed entries kept, with a reason
    with pytest.raises(DataUnavailableError, match="503"):
        harvest(fake_server + "/down", tmp_path / "d", progress=False, retries=2, backoff=0.01)


def test_filter_matching_nothing_gives_empty_table(bundled, tmp_path):
    df = harvest(bundled, tmp_path / "e", filter='elements HAS "Xe"', progress=False)
    assert df.empty and list(df.columns) == COLUMNS
    assert json.loads((tmp_path / "e" / "state.json").read_text())["complete"]
