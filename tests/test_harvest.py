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
import gzip
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
from cloudlib.errors import DataError, DataUnavailableError, HarvestError
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
    first_part_mtime = (out / "page-000000.json.gz").stat().st_mtime_ns

    resumed = harvest(base, out, page_limit=3, progress=False)
    pd.testing.assert_frame_equal(resumed, full)
    assert resumed["id"].is_unique
    assert (out / "page-000000.json.gz").stat().st_mtime_ns == first_part_mtime  # not fetched again

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
    assert (out / "page-000001.json.gz").exists()  # the orphan page

    resumed = harvest(base, out, page_limit=4, progress=False)
    pd.testing.assert_frame_equal(resumed, full)


def test_folder_of_the_csv_format_moves_into_the_store_once(curated, tmp_path):
    """A harvest folder written before pages were store parts (state format 1, ``part-NNNNNN.csv.gz``)
    loads the same table, is converted once, and a resume continues from it."""
    base, _ = curated
    full = harvest(base, tmp_path / "full", page_limit=3, progress=False)
    out = tmp_path / "old"
    harvest(base, out, page_limit=3, max_structures=6, progress=False)  # 2 pages, not complete
    state = json.loads((out / "state.json").read_text())
    for i in range(state["pages"]):  # rewrite it as format 1 wrote it
        page = json.loads(gzip.decompress((out / f"page-{i:06d}.json.gz").read_bytes()))
        pd.DataFrame(page["rows"]).to_csv(out / f"part-{i:06d}.csv.gz", index=False)
        (out / f"page-{i:06d}.json.gz").unlink()
    (out / "state.json").write_text(json.dumps({**state, "format": 1}))

    part = load_harvest(out)
    pd.testing.assert_frame_equal(part, full.iloc[:6])
    assert not list(out.glob("part-*")) and len(list(out.glob("page-*.json.gz"))) == 2
    assert json.loads((out / "state.json").read_text())["format"] == hv.STATE_FORMAT
    pd.testing.assert_frame_equal(harvest(base, out, page_limit=3, progress=False), full)


def test_damaged_page_is_a_typed_error(curated, tmp_path):
    base, _ = curated
    out = tmp_path / "h"
    harvest(base, out, page_limit=3, progress=False)
    (out / "page-000001.json.gz").write_bytes(b"not gzip")
    with pytest.raises(DataError, match="page-000001.json.gz is missing, damaged"):
        load_harvest(out)


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


def _page(ids, next_url=None, data_returned: int | None = -1) -> bytes:
    """An OPTIMADE page of (malformed but id-carrying) entries; ``data_returned`` -1 means ``len(ids)``."""
    data = [{"id": i, "type": "structures", "attributes": {"structure_features": []}} for i in ids]
    meta = {} if data_returned is None else {"data_returned": len(ids) if data_returned == -1 else data_returned}
    return json.dumps({"data": data, "meta": meta, "links": {"next": next_url}}).encode()


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
        "/loop/v1/structures": (
            200,
            "application/json",
            _page(["a"], "/loop/v1/structures?page_offset=1", data_returned=5),  # more to come, says the server
        ),
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


# --------------------------------------------------------------------------- hostile servers (issue 12)


def _bounded(fn, limit: float = 20.0):
    """Run ``fn()`` in a daemon thread; (value, exception, seconds). Fails if it is still running after ``limit``
    s, so a harvest that hangs fails the test instead of hanging the suite."""
    box: dict = {}

    def target():
        try:
            box["value"] = fn()
        except BaseException as exc:  # noqa: BLE001 - handed to the test
            box["error"] = exc

    thread = threading.Thread(target=target, daemon=True)
    t0 = time.monotonic()
    thread.start()
    thread.join(limit)
    elapsed = time.monotonic() - t0
    assert not thread.is_alive(), f"still running after {limit} s"
    return box.get("value"), box.get("error"), elapsed


def _hostile_handler(stop: threading.Event):
    class Handler(http.server.BaseHTTPRequestHandler):
        """Servers a harvester meets in the wild: trickling, silent, endless, garbage, half-broken."""

        protocol_version = "HTTP/1.1"
        partial_ok = False  # the second page of /partial fails until a test flips this

        def _send(self, status, body, ctype="application/json"):
            self.send_response(status)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def _trickle(self, data: bytes):
            """One byte every 0.2 s, forever (``data`` first, then spaces), until the client goes away."""
            i = 0
            while not stop.is_set():
                self.wfile.write(data[i : i + 1] if i < len(data) else b" ")
                self.wfile.flush()
                i += 1
                stop.wait(0.2)

        def do_GET(self):  # noqa: N802 - http.server's name
            path, _, query = self.path.partition("?")
            page = int(dict(q.split("=", 1) for q in query.split("&") if "=" in q).get("page", 0))
            try:
                if path == "/trickle-body/v1/structures":  # headers at once, then the body byte by byte
                    self.send_response(200)
                    self.send_header("Content-Type", "application/json")
                    self.end_headers()
                    self._trickle(_page(["t1"]))
                elif path == "/trickle-head/v1/structures":  # even the status line comes byte by byte
                    self.wfile.write(b"HTTP/1.1 200 OK\r\n")
                    self._trickle(b"X-Slow: " + b"a" * 10_000)
                elif path == "/silent/v1/structures":  # reads the request, never answers
                    stop.wait()
                elif path in ("/endless/v1/structures", "/endless-nometa/v1/structures"):
                    total = 6 if path.startswith("/endless/") else None
                    ids = [f"e{page}a", f"e{page}b"]
                    self._send(200, _page(ids, f"{path}?page={page + 1}", data_returned=total))
                elif path == "/garbage/v1/structures":
                    self._send(200, b'{"data": [1, 2,\n garbage \x00\xff')
                elif path == "/err500/v1/structures":
                    self._send(500, b"<html>\n<body>\nInternal\nServer Error\n</body>\n</html>\n", "text/html")
                elif path == "/partial/v1/structures":
                    if page == 0:
                        self._send(200, _page(["p0a", "p0b"], f"{path}?page=1", data_returned=4))
                    elif type(self).partial_ok:
                        self._send(200, _page(["p1a", "p1b"], None, data_returned=4))
                    else:
                        stop.wait()
                else:
                    self._send(404, b"not found", "text/plain")
            except (BrokenPipeError, ConnectionResetError):
                pass

        def log_message(self, *args):
            pass

    return Handler


@pytest.fixture
def hostile():
    """(base URL, handler class) of a loopback server with the routes of :func:`_hostile_handler`."""
    stop = threading.Event()
    handler = _hostile_handler(stop)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", handler
    finally:
        stop.set()
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


@pytest.mark.parametrize("route", ["/trickle-body", "/trickle-head"])
def test_trickling_server_hits_the_whole_request_deadline(hostile, tmp_path, route):
    base, _ = hostile
    _, err, elapsed = _bounded(lambda: harvest(base + route, tmp_path / "t", timeout=1, retries=0, progress=False))
    assert isinstance(err, hv.HarvestTimeoutError), repr(err)
    assert isinstance(err, HarvestError) and isinstance(err, DataUnavailableError)
    assert 0.9 < elapsed < 4, elapsed
    msg = str(err)
    assert base + route in msg and "within 1 s" in msg and "\n" not in msg


def test_silent_server_fails_within_the_retry_budget(hostile, tmp_path):
    base, _ = hostile
    # defaults for retries and backoff: the 2 s backoff does not fit into the 2 x 1 s budget, so one attempt
    _, err, elapsed = _bounded(lambda: harvest(base + "/silent", tmp_path / "s", timeout=1, progress=False))
    assert isinstance(err, hv.HarvestTimeoutError), repr(err)
    assert 0.9 < elapsed < 2.7, elapsed
    # with a short backoff the retries are made, all inside timeout x retries
    _, err, elapsed = _bounded(
        lambda: harvest(base + "/silent", tmp_path / "s2", timeout=1, retries=2, backoff=0.1, progress=False)
    )
    assert isinstance(err, hv.HarvestTimeoutError), repr(err)
    assert 1.9 < elapsed < 2.7, elapsed
    assert "2 attempts" in str(err)
    assert not (tmp_path / "s" / "state.json").exists()  # nothing harvested, nothing written


def test_endless_next_links_stop_at_data_returned(hostile, tmp_path):
    base, _ = hostile
    df, err, elapsed = _bounded(lambda: harvest(base + "/endless", tmp_path / "e", timeout=2, progress=False))
    assert err is None, repr(err)
    assert df["id"].tolist() == ["e0a", "e0b", "e1a", "e1b", "e2a", "e2b"] and elapsed < 10
    state = json.loads((tmp_path / "e" / "state.json").read_text())
    assert state["complete"] and state["pages"] == 3 and state["next_url"] is None


def test_max_pages_caps_endless_next_links_and_resumes(hostile, tmp_path):
    base, _ = hostile
    out = tmp_path / "m"
    df, err, _ = _bounded(lambda: harvest(base + "/endless-nometa", out, max_pages=4, timeout=2, progress=False))
    assert err is None, repr(err)
    assert len(df) == 8 and df["id"].iloc[-1] == "e3b"
    state = json.loads((out / "state.json").read_text())
    assert state["pages"] == 4 and not state["complete"] and state["next_url"].endswith("page=4")
    df, err, _ = _bounded(lambda: harvest(base + "/endless-nometa", out, max_pages=5, timeout=2, progress=False))
    assert err is None and len(df) == 10 and df["id"].iloc[-1] == "e4b"  # a larger cap continues
    with pytest.raises(ValueError, match="max_pages"):
        harvest(base + "/endless-nometa", out, max_pages=-1, progress=False)


def test_error_keeps_harvested_pages_and_resume_continues(hostile, tmp_path):
    base, handler = hostile
    out = tmp_path / "p"
    _, err, elapsed = _bounded(lambda: harvest(base + "/partial", out, timeout=1, retries=0, progress=False))
    assert isinstance(err, hv.HarvestTimeoutError) and elapsed < 5, repr(err)
    assert "page=1" in str(err)  # names the page that failed
    assert load_harvest(out)["id"].tolist() == ["p0a", "p0b"]  # the first page stays on disk
    handler.partial_ok = True
    df, err, _ = _bounded(lambda: harvest(base + "/partial", out, timeout=1, retries=0, progress=False))
    assert err is None and df["id"].tolist() == ["p0a", "p0b", "p1a", "p1b"]


@pytest.mark.parametrize(
    "route, cls, words",
    [
        ("/garbage", OptimadeResponseError, "response is not JSON"),
        ("/err500", hv.HarvestUnavailableError, "kept failing (1 attempt in"),
    ],
)
def test_garbage_and_http_errors_are_typed_one_line(hostile, tmp_path, route, cls, words):
    base, _ = hostile
    with pytest.raises(cls) as info:
        harvest(base + route, tmp_path / "g", timeout=2, retries=0, progress=False)
    assert isinstance(info.value, HarvestError)
    msg = str(info.value)
    assert base + route in msg and words in msg and "\n" not in msg


@pytest.mark.parametrize(
    "route, args, words",
    [
        ("/trickle-body", ["--timeout", "1", "--retries", "0"], "within 1 s"),
        ("/silent", ["--timeout", "1"], "within 1 s"),
        ("/garbage", ["--timeout", "2"], "not JSON"),
        ("/err500", ["--timeout", "2", "--retries", "0"], "HTTP 500"),
        ("/missing", ["--timeout", "2"], "HTTP 404"),
    ],
)
def test_cli_hostile_server_exits_1_with_one_line(hostile, tmp_path, capsys, route, args, words):
    from cloudlib.cli import main

    base, _ = hostile
    rc, err, elapsed = _bounded(lambda: main(["harvest", base + route, str(tmp_path / "o"), "-q", *args]))
    assert err is None, repr(err)
    assert rc == 1 and elapsed < 5
    text = capsys.readouterr().err
    lines = text.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), text
    assert base + route in lines[0] and words in lines[0] and "Traceback" not in text


def test_cli_max_pages_and_unreachable(hostile, tmp_path, capsys):
    from cloudlib.cli import main

    base, _ = hostile
    rc, err, _ = _bounded(
        lambda: main(["harvest", base + "/endless-nometa", str(tmp_path / "o"), "-q", "--max-pages", "3"])
    )
    assert err is None and rc == 2  # 6 entries harvested, all malformed: "rows failed"
    assert "6 entries harvested" in capsys.readouterr().err
    url = f"http://127.0.0.1:{_free_port()}"
    assert main(["harvest", url, str(tmp_path / "u"), "-q", "--timeout", "2"]) == 1
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and url in lines[0] and "cannot connect" in lines[0]
    assert main(["harvest", "ftp://x/y", str(tmp_path / "f"), "-q"]) == 1
    assert main(["harvest", url, str(tmp_path / "f"), "-q", "--timeout", "0"]) == 1
    assert "timeout" in capsys.readouterr().err


def test_a_harvest_folder_is_a_pretraining_corpus(curated, tmp_path):
    """``pretrain --corpus HARVEST_FOLDER`` reads the harvest's successful SCOPE strings (cloudlib.corpus.read_corpus)."""
    from cloudlib.corpus import read_corpus

    base, _ = curated
    table = harvest(base, tmp_path / "h", page_limit=7, progress=False)
    ok = table.loc[table["error"].fillna("") == "", "scope"]
    assert len(ok) and (table["error"].fillna("") != "").any()  # the curated server has good and bad entries
    strings, counts = read_corpus(tmp_path / "h")
    assert strings == list(dict.fromkeys(ok)) and counts["rows"] == len(ok) and counts["too long"] == 0


# --------------------------------------------------------------------------- several providers


def test_several_providers_at_once(bundled, curated, tmp_path, monkeypatch):
    """harvest_many: two loopback reference servers and one that is down, at most ``concurrency`` at a time; each
    provider's folder is what a harvest of it alone gives; the one down is reported, not fatal; a rerun resumes;
    read_corpus reads the whole folder; the command line takes several URLs."""
    from cloudlib.cli import main
    from cloudlib.corpus import read_corpus

    base, _ = curated
    down = f"http://127.0.0.1:{_free_port()}"
    real, active, peak, lock = hv.harvest, [0], [0], threading.Lock()

    def counted(*args, **kwargs):
        with lock:
            active[0] += 1
            peak[0] = max(peak[0], active[0])
        try:
            time.sleep(0.3)  # long enough for the others to start if the bound let them
            return real(*args, **kwargs)
        finally:
            with lock:
                active[0] -= 1

    monkeypatch.setattr(hv, "harvest", counted)
    out = tmp_path / "many"
    table = hv.harvest_many([bundled, base, down], out, concurrency=2, page_limit=3, timeout=5)
    assert peak[0] == 2
    assert table["url"].tolist() == [bundled, base, down]
    assert table["folder"].tolist() == [hv.provider_folder(u) for u in (bundled, base, down)]
    ok = table.set_index("url")
    assert ok.loc[bundled, "complete"] and ok.loc[base, "complete"] and ok.loc[bundled, "error"] == ""
    assert not ok.loc[down, "complete"] and ok.loc[down, "error"].startswith("HarvestUnavailableError")
    assert json.loads((out / hv.PROVIDERS_FILE).read_text())["providers"] == table.to_dict(orient="records")
    monkeypatch.setattr(hv, "harvest", real)
    for url in (bundled, base):
        alone = harvest(url, tmp_path / f"alone-{hv.provider_folder(url)}", page_limit=3, progress=False)
        pd.testing.assert_frame_equal(load_harvest(out / hv.provider_folder(url)), alone)
        assert ok.loc[url, "rows"] == len(alone) and ok.loc[url, "failed"] == int((alone["error"] != "").sum())

    # a rerun: the finished providers make no request and keep their files; the one still down is retried
    stamps = {u: (out / hv.provider_folder(u) / "state.json").stat().st_mtime_ns for u in (bundled, base)}
    again = hv.harvest_many([bundled, base, down], out, concurrency=2, page_limit=3, timeout=5)
    assert again.drop(columns="seconds").equals(table.drop(columns="seconds"))
    assert stamps == {u: (out / hv.provider_folder(u) / "state.json").stat().st_mtime_ns for u in (bundled, base)}

    strings, counts = read_corpus(out)
    both = pd.concat([load_harvest(out / hv.provider_folder(u)) for u in (bundled, base)])
    assert strings[:3] == list(dict.fromkeys(both.loc[both["error"] == "", "scope"]))[:3]
    assert counts["unique"] == both.loc[both["error"] == "", "scope"].nunique()

    with pytest.raises(ValueError, match="same provider"):
        hv.harvest_many([bundled, bundled + "/"], tmp_path / "twice")
    with pytest.raises(InvalidFilterError):
        hv.harvest_many([bundled, base], tmp_path / "bad", filter="elements HAS")
    code = main(["harvest", bundled, base, str(tmp_path / "cli"), "--concurrency", "2", "-q"])
    assert code in (0, 2) and (tmp_path / "cli" / hv.PROVIDERS_FILE).is_file()
    assert code == (2 if ok.loc[base, "failed"] or ok.loc[bundled, "failed"] else 0)


# --------------------------------------------------------------------------- SCOPE of the pages on a cluster


def test_pages_encoded_on_a_dask_cluster_equal_the_inline_harvest(curated, bundled, tmp_path):
    """harvest(executor=client) on a real dask LocalCluster (loopback, 2 worker processes): the same table, good and
    failed rows alike (the same error texts), as the harvest that encodes in its own thread; harvest_many and the
    command line's --dask pass the cluster on."""
    distributed = pytest.importorskip("distributed")
    from cloudlib.cli import main

    base, _ = curated
    inline = harvest(base, tmp_path / "inline", page_limit=5, progress=False)
    assert (inline["error"] != "").any() and (inline["error"] == "").any()
    cluster = distributed.LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None, host="127.0.0.1"
    )
    try:
        with distributed.Client(cluster) as client:
            on_dask = harvest(base, tmp_path / "dask", page_limit=5, progress=False, executor=client)
            pd.testing.assert_frame_equal(on_dask, inline)
            many = hv.harvest_many([bundled, base], tmp_path / "many", page_limit=5, executor=client)
            assert many["complete"].all() and (many["error"] == "").all()
            pd.testing.assert_frame_equal(load_harvest(tmp_path / "many" / hv.provider_folder(base)), inline)
            assert main(["harvest", base, str(tmp_path / "cli"), "-q", "--dask", cluster.scheduler_address]) == 2
            pd.testing.assert_frame_equal(
                load_harvest(tmp_path / "cli"), harvest(base, tmp_path / "cli2", progress=False)
            )
    finally:
        cluster.close()
    port = _free_port()
    assert main(["harvest", base, str(tmp_path / "x"), "-q", "--dask", f"tcp://127.0.0.1:{port}"]) == 1
