"""Harvest crystal structures from an OPTIMADE provider and turn them into SCOPE strings.

The CLOUD corpus (6.3 M crystals) was collected by paging through the ``/structures`` endpoint of
OPTIMADE providers. :func:`harvest` does that for one provider (one base URL) and one filter:

* it asks only for the fields needed to rebuild a structure (:data:`RESPONSE_FIELDS`), follows
  ``links.next`` page by page, converts each entry with the ``optimade`` package's own pymatgen
  adapter (:func:`entry_to_structure`) and then to SCOPE with :func:`cloudlib.scope.structure_to_scope`;
* every page is written atomically to ``out_dir`` as ``page-NNNNNN.json.gz``, one part of the harvest's
  :class:`~cloudlib.store.PartStore` (its URL and rows, columns :data:`COLUMNS`, stamped with the endpoint,
  filter and variant), and only afterwards ``state.json`` is replaced with the next URL and the counts.
  A rerun with the same ``out_dir`` continues from the saved next URL, so an interrupted harvest
  loses at most the page it was working on and never duplicates rows (a part left by a crash
  between the two writes is simply rewritten). A finished harvest re-run makes no request and
  returns the same table;
* entries that cannot become SCOPE (disorder or assemblies in ``structure_features``, vacancies or
  non-element species, overlapping atoms, spglib failures, malformed entries) are kept as rows whose
  ``scope`` is empty and whose ``error`` reads ``"ErrorClass: message"``; nothing is dropped.

Why not ``optimade.client.OptimadeClient``? It can target an arbitrary base URL (loopback too) and
can start from a given URL (``get_one(..., override_url=...)``), but as of optimade 1.5.0 it keeps
all pages of a provider in memory (``QueryResults``), ``get_one`` turns every exception into a
string in ``results.errors`` (no typed errors for an unreachable or non-OPTIMADE server), a
per-page callback cannot stop the loop or make its own failure fatal, and its retry counter is
reset on every iteration. Persisting page + next URL atomically is therefore done here with plain
``requests`` against the OPTIMADE JSON:API; the package is still used for filter validation
(``optimade.filterparser.LarkParser``) and for the entry -> pymatgen conversion.

Hostile or broken servers cannot hold a harvest forever:

* every HTTP request has a whole-request deadline of ``timeout`` seconds (connect, headers and body
  together): a watchdog thread shuts the socket down when it passes, so a server that trickles a
  byte at a time is cut off like a silent one (a plain socket timeout restarts on every byte);
* one page gets at most ``retries + 1`` attempts and ``timeout * max(1, retries)`` seconds in all,
  backoff sleeps included (a retry whose backoff would not fit is not made): at the defaults
  (60 s, 2 retries) a silent server fails after about two minutes, not four;
* the listing ends when as many entries as the first page's ``meta.data_returned`` have arrived,
  whatever ``links.next`` says; a ``links.next`` already followed is an error; ``max_pages``
  caps the pages kept on disk (for servers that report no ``data_returned``).

Errors (all :class:`~cloudlib.errors.HarvestError`, one line, naming the URL; the pages harvested
before stay on disk and a rerun resumes): :class:`HarvestUnavailableError` (also a
:class:`~cloudlib.errors.DataUnavailableError`) when the server cannot be reached or keeps failing,
:class:`HarvestTimeoutError` when no attempt completed within its deadline;
:class:`OptimadeResponseError` when it answers with something that is not an OPTIMADE response (HTML,
invalid JSON, JSON without ``data``/``meta``, an entry without ``id``, HTTP 4xx, a ``links.next``
loop). :class:`InvalidFilterError` (a ``DataError``) for a filter the OPTIMADE grammar rejects
(checked before any request).
"""

from __future__ import annotations

import json
import re
import socket
import threading
import time
import warnings
from datetime import datetime, timezone
from pathlib import Path
from typing import Any
from urllib.parse import urlencode, urljoin, urlsplit

import pandas as pd

from .errors import (
    DataError,
    DataUnavailableError,
    DisorderedStructureError,
    HarvestError,
    StructureError,
    StructureParseError,
    UnknownSpeciesError,
)
from .io import write_json
from .scope import VARIANTS, scope_table, structure_to_scope
from .store import PartStore

__all__ = [
    "COLUMNS",
    "RESPONSE_FIELDS",
    "HarvestTimeoutError",
    "HarvestUnavailableError",
    "InvalidFilterError",
    "OptimadeResponseError",
    "entry_to_structure",
    "harvest",
    "harvest_many",
    "load_harvest",
    "provider_folder",
    "structures_url",
]

#: Columns of every part file and of the table :func:`harvest` returns.
COLUMNS = ["id", "provider", "chemical_formula_reduced", "scope", "error"]

#: The ``response_fields`` requested: what the optimade pymatgen adapter needs, the fields used to
#: reject disorder up front, and the formula kept as a label.
RESPONSE_FIELDS = (
    "lattice_vectors",
    "cartesian_site_positions",
    "species",
    "species_at_sites",
    "structure_features",
    "chemical_formula_reduced",
    "nsites",
    "dimension_types",
    "nperiodic_dimensions",
)

DEFAULT_PAGE_LIMIT = 100
DEFAULT_TIMEOUT = 60.0
DEFAULT_RETRIES = 2
STATE_FILE = "state.json"
STATE_FORMAT = 2  # 1: pages were part-NNNNNN.csv.gz files (moved into the store when such a folder is opened)

_VERSION_SEGMENT = re.compile(r"^v\d+(\.\d+){0,2}$")
_RETRY_STATUS = {429, 500, 502, 503, 504}


class OptimadeResponseError(HarvestError):
    """The server answered, but not with a usable OPTIMADE response."""


class HarvestUnavailableError(HarvestError, DataUnavailableError):
    """The OPTIMADE server cannot be reached, or kept failing (HTTP 429/5xx, dropped connections)."""


class HarvestTimeoutError(HarvestUnavailableError):
    """No attempt at a page completed within its whole-request deadline (a silent or trickling server)."""


class InvalidFilterError(DataError, ValueError):
    """A filter string that the OPTIMADE filter grammar rejects."""


# --------------------------------------------------------------------------- URLs


def structures_url(base_url: str) -> str:
    """``{base}/v1/structures`` for a provider base URL.

    A base URL that already ends in a version segment (``/v1``, ``/v1.2``) is used as is, and a
    trailing ``/structures`` is accepted too, so ``https://x.org/optimade``,
    ``https://x.org/optimade/v1`` and ``https://x.org/optimade/v1/structures`` all work.
    """
    url = str(base_url).strip()
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError(f"base_url must be an http(s) URL, got {base_url!r}")
    if parts.query or parts.fragment:
        raise ValueError(f"base_url must not carry a query or fragment, got {base_url!r}; use filter=")
    url = url.rstrip("/")
    if url.endswith("/structures"):
        url = url[: -len("/structures")]
    if not _VERSION_SEGMENT.match(url.rsplit("/", 1)[-1]):
        url += "/v1"
    return url + "/structures"


def _first_page_url(endpoint: str, filter: str | None, page_limit: int) -> str:
    params: dict[str, Any] = {}
    if filter:
        params["filter"] = filter
    params["response_fields"] = ",".join(RESPONSE_FIELDS)
    params["page_limit"] = int(page_limit)
    return f"{endpoint}?{urlencode(params)}"


def _check_filter(filter: str | None) -> None:
    if not filter:
        return
    from optimade.exceptions import BadRequest
    from optimade.filterparser import LarkParser

    try:
        LarkParser().parse(filter)
    except BadRequest as exc:
        raise InvalidFilterError(f"not a valid OPTIMADE filter: {exc.detail}", filter) from None


# --------------------------------------------------------------------------- HTTP


def _connect_failed(exc: Exception) -> bool:
    """True when no connection could be opened at all (refused, DNS failure, connect timeout)."""
    import requests
    import urllib3

    if isinstance(exc, requests.exceptions.ConnectTimeout):
        return True
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, urllib3.exceptions.NewConnectionError):
            return True
        reason = getattr(exc, "reason", None)
        nxt = reason if isinstance(reason, BaseException) else None
        if nxt is None and exc.args and isinstance(exc.args[0], BaseException):
            nxt = exc.args[0]
        exc = nxt or exc.__cause__ or exc.__context__
    return False


def _one_line(text: str, limit: int = 300) -> str:
    return " ".join(str(text).split())[:limit]


def _error_detail(body: bytes) -> str:
    try:
        errors = json.loads(body).get("errors") or []
        text = "; ".join(f"{e.get('title', '')}: {e.get('detail', '')}".strip(": ") for e in errors)
    except Exception:
        text = ""
    return _one_line(text or body[:2000].decode("utf-8", "replace"))


class _DeadlineExceeded(Exception):
    """Internal: a request did not complete before its deadline."""


def _shutdown(sock) -> None:
    """Shut a socket down, which wakes a thread blocked reading it."""
    raw = sock if isinstance(sock, socket.socket) else getattr(sock, "socket", None)  # TLS-in-TLS transport
    if isinstance(raw, socket.socket):
        try:  # the plain socket method, also for an SSLSocket (its own shutdown() drops the SSL object)
            socket.socket.shutdown(raw, socket.SHUT_RDWR)
        except OSError:
            pass


class _DeadlineClient:
    """A ``requests`` session whose GETs are cut off at a whole-request deadline.

    ``requests``' own ``timeout`` only bounds each socket operation, so a server sending a byte every few
    seconds never times out. Here the connection pools record the sockets of the connections they hand out
    and open (a response without Content-Length takes its socket away from the connection), and a watchdog
    thread shuts them down once the deadline has passed (again every 50 ms until the request gives up, in
    case a connection is opened late); the body is read in chunks and the deadline checked between them
    too, which also covers proxies whose connections are not recorded (SOCKS).
    """

    def __init__(self):
        self._lock = threading.Lock()
        self._conns: list = []  # connections handed out during the current request
        self._socks: list = []  # and the sockets they held or opened
        self._fired = False
        self.session = self._new_session()

    def _track(self, conn=None, sock=None) -> None:
        with self._lock:
            if conn is not None:
                self._conns.append(conn)
            if sock is not None:
                self._socks.append(sock)
            fired = self._fired
        if fired and sock is not None:
            _shutdown(sock)

    def _new_session(self):
        import requests
        import urllib3
        from requests.adapters import HTTPAdapter
        from urllib3.connection import HTTPConnection, HTTPSConnection

        client = self

        class Conn(HTTPConnection):
            def connect(self):
                super().connect()
                client._track(sock=self.sock)

        class SConn(HTTPSConnection):
            def connect(self):
                super().connect()
                client._track(sock=self.sock)

        class Pool(urllib3.HTTPConnectionPool):
            ConnectionCls = Conn

            def _get_conn(self, timeout=None):
                conn = super()._get_conn(timeout)
                client._track(conn, getattr(conn, "sock", None))  # a reused connection is connected already
                return conn

        class SPool(urllib3.HTTPSConnectionPool):
            ConnectionCls = SConn

            def _get_conn(self, timeout=None):
                conn = super()._get_conn(timeout)
                client._track(conn, getattr(conn, "sock", None))
                return conn

        def patch(manager):
            if manager.pool_classes_by_scheme.get("http") is urllib3.HTTPConnectionPool:  # not SOCKS
                manager.pool_classes_by_scheme = {"http": Pool, "https": SPool}
            return manager

        class Adapter(HTTPAdapter):
            def init_poolmanager(self, *args, **kwargs):
                super().init_poolmanager(*args, **kwargs)
                patch(self.poolmanager)

            def proxy_manager_for(self, proxy, **kwargs):
                return patch(super().proxy_manager_for(proxy, **kwargs))

        session = requests.Session()
        session.mount("http://", Adapter())
        session.mount("https://", Adapter())
        return session

    def _watch(self, deadline: float, done: threading.Event) -> None:
        wait = deadline - time.monotonic()
        while not done.wait(max(wait, 0.0)):
            with self._lock:
                self._fired = True
                socks = self._socks + [c.sock for c in self._conns if getattr(c, "sock", None) is not None]
            for sock in socks:
                _shutdown(sock)
            wait = 0.05

    def get(self, url: str, deadline: float, headers: dict) -> tuple[int, Any, bytes]:
        """(status, headers, body) of ``GET url``; raises :class:`_DeadlineExceeded` at ``deadline``
        (``time.monotonic()``) and ``requests`` exceptions as they come."""
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise _DeadlineExceeded
        with self._lock:
            self._conns, self._socks, self._fired = [], [], False
        done = threading.Event()
        watchdog = threading.Thread(target=self._watch, args=(deadline, done), daemon=True, name="harvest-watchdog")
        watchdog.start()
        try:
            try:
                with self.session.get(url, timeout=(remaining, remaining), stream=True, headers=headers) as response:
                    chunks = []
                    for chunk in response.iter_content(1 << 16):
                        chunks.append(chunk)
                        if time.monotonic() > deadline:
                            raise _DeadlineExceeded
                    status, resp_headers = response.status_code, response.headers
            except Exception:
                if self._fired:  # whatever broke, it broke because the watchdog shut the socket down
                    raise _DeadlineExceeded from None
                raise
            if self._fired:  # the body may have "ended" only because its socket was shut down
                raise _DeadlineExceeded
            return status, resp_headers, b"".join(chunks)
        finally:
            done.set()
            watchdog.join()
            with self._lock:
                fired, self._conns, self._socks = self._fired, [], []
            if fired:  # drop connections the watchdog broke
                self.session.close()
                self.session = self._new_session()

    def close(self) -> None:
        self.session.close()


def _get_page(client: _DeadlineClient, url: str, timeout: float, retries: int, backoff: float) -> dict:
    """GET one OPTIMADE page and return its JSON document (validated shape).

    Each attempt must complete within ``timeout`` s (whole request). HTTP 429/5xx, missed deadlines,
    read failures and dropped connections are retried up to ``retries`` times with exponential backoff
    (``backoff``, ``2 * backoff``, ...; at least ``Retry-After`` when the server sends one, at most 30 s),
    all within ``timeout * max(1, retries)`` seconds for the page: an attempt is cut at that budget and a
    retry whose backoff does not fit is not made. A server that cannot be connected to at all fails at
    once: the harvest state is on disk, so rerunning resumes.
    """
    import requests

    start = time.monotonic()
    give_up = start + timeout * max(1, retries)
    headers = {"Accept": "application/vnd.api+json, application/json"}
    last, timed_out, attempts, wait = "", False, 0, 0.0
    for attempt in range(retries + 1):
        if attempt:
            wait = max(wait, min(backoff * 2 ** (attempt - 1), 30.0))
            if time.monotonic() + wait >= give_up:
                break
            time.sleep(wait)
        wait = 0.0
        attempts += 1
        try:
            status, resp_headers, body = client.get(url, min(time.monotonic() + timeout, give_up), headers)
        except _DeadlineExceeded:
            last, timed_out = f"no complete response within {timeout:g} s", True
            continue
        except requests.exceptions.RequestException as exc:
            if _connect_failed(exc):
                raise HarvestUnavailableError(
                    f"cannot connect to the OPTIMADE server ({type(exc).__name__})", url
                ) from exc
            last, timed_out = _one_line(f"{type(exc).__name__}: {exc}"), False
            continue
        if status in _RETRY_STATUS:
            last, timed_out = f"HTTP {status}: {_error_detail(body)}", False
            retry_after = resp_headers.get("Retry-After", "")
            if retry_after.isdigit():
                wait = min(float(retry_after), 30.0)
            continue
        if status != 200:
            raise OptimadeResponseError(f"HTTP {status} instead of an OPTIMADE page: {_error_detail(body)}", url)
        try:
            doc = json.loads(body)
        except ValueError:
            ctype = resp_headers.get("Content-Type", "?")
            raise OptimadeResponseError(f"response is not JSON (Content-Type {ctype}): {body[:120]!r}", url) from None
        if not isinstance(doc, dict) or not isinstance(doc.get("data"), list) or not isinstance(doc.get("meta"), dict):
            keys = sorted(doc) if isinstance(doc, dict) else type(doc).__name__
            raise OptimadeResponseError(
                f"not an OPTIMADE entry listing (needs 'data' list and 'meta'; got {keys})", url
            )
        return doc
    tries = f"{attempts} attempt{'s' if attempts != 1 else ''} in {time.monotonic() - start:.1f} s"
    if timed_out:
        raise HarvestTimeoutError(f"OPTIMADE server sent no complete response within {timeout:g} s ({tries})", url)
    raise HarvestUnavailableError(f"OPTIMADE server kept failing ({tries}; last: {last})", url)


def _next_url(doc: dict, url: str) -> str | None:
    links = doc.get("links") or {}
    if not isinstance(links, dict):
        raise OptimadeResponseError(f"'links' is {type(links).__name__}, expected an object", url)
    nxt = links.get("next")
    if isinstance(nxt, dict):
        nxt = nxt.get("href")
    if nxt is not None and not isinstance(nxt, str):
        raise OptimadeResponseError(f"links.next is {type(nxt).__name__}, expected a URL", url)
    return urljoin(url, nxt) if nxt else None  # absolute per JSON:API; tolerate relative links


# --------------------------------------------------------------------------- entries


def entry_to_structure(entry: dict):
    """pymatgen ``Structure`` of one OPTIMADE structure entry (a JSON:API resource dict).

    Uses ``optimade.adapters.Structure(entry).as_pymatgen``. Raises a
    :class:`~cloudlib.errors.StructureError` subclass for disorder/assemblies, vacancies,
    non-element species, missing geometry, entries the OPTIMADE model rejects and non-periodic
    entries (which the adapter turns into a ``Molecule``).
    """
    from optimade.adapters import Structure as OptimadeStructure
    from pymatgen.core import Element, Structure

    name = entry.get("id")
    attrs = entry.get("attributes")
    if not isinstance(attrs, dict):
        raise StructureParseError("entry has no attributes", name)
    features = attrs.get("structure_features") or []
    flagged = [f for f in ("disorder", "assemblies") if f in features]
    if flagged:
        raise DisorderedStructureError(
            f"structure_features lists {', '.join(flagged)}; SCOPE needs an ordered crystal", name
        )
    if attrs.get("assemblies"):
        raise DisorderedStructureError("entry has assemblies; SCOPE needs an ordered crystal", name)
    missing = [f for f in ("lattice_vectors", "cartesian_site_positions", "species_at_sites") if attrs.get(f) is None]
    if missing:
        raise StructureParseError(f"entry lacks {', '.join(missing)}", name)
    for sp in attrs.get("species") or []:
        symbols = list(sp.get("chemical_symbols") or [])
        conc = list(sp.get("concentration") or [])
        if len(symbols) != 1 or "vacancy" in symbols or any(abs(float(c) - 1.0) > 1e-6 for c in conc):
            raise DisorderedStructureError(
                f"species {sp.get('name')!r} is {symbols} with concentration {conc}; SCOPE needs an ordered crystal",
                name,
            )
        if not Element.is_valid_symbol(symbols[0]):
            raise UnknownSpeciesError(
                f"species {sp.get('name')!r} is {symbols[0]!r}, which is not a chemical element", name
            )

    # The OPTIMADE model requires last_modified (nullable); we do not ask for it.
    resource = {
        "id": str(name),
        "type": entry.get("type") or "structures",
        "attributes": {"last_modified": None, **attrs},
    }
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            structure = OptimadeStructure(resource).as_pymatgen
    except Exception as exc:  # pydantic ValidationError, KeyError/IndexError on inconsistent sites
        text = " ".join(str(exc).split())[:400]
        raise StructureParseError(
            f"entry does not convert to a structure ({type(exc).__name__}: {text})", name
        ) from exc
    if not isinstance(structure, Structure):
        raise StructureError(
            f"entry is not a periodic crystal (dimension_types={attrs.get('dimension_types')}, "
            f"adapter returned {type(structure).__name__})",
            name,
        )
    return structure


def _error_text(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {' '.join(str(exc).split())}"


def _entry_row(entry: dict, provider: str, variant: str, scope: bool = True) -> dict:
    attrs = entry.get("attributes") if isinstance(entry.get("attributes"), dict) else {}
    row = {
        "id": str(entry["id"]),
        "provider": provider,
        "chemical_formula_reduced": attrs.get("chemical_formula_reduced") or "",
        "scope": "",
        "error": "",
    }
    if not scope:
        return row
    try:
        row["scope"] = structure_to_scope(entry_to_structure(entry), variant=variant)
    except Exception as exc:  # StructureError subclasses mostly; keep going on anything, but say what
        row["error"] = _error_text(exc)
    return row


def _page_rows(doc: dict, url: str, provider: str, variant: str, executor=None) -> pd.DataFrame:
    for i, entry in enumerate(doc["data"]):
        if not isinstance(entry, dict) or entry.get("id") in (None, ""):
            raise OptimadeResponseError(f"data[{i}] has no 'id' (every OPTIMADE entry must have one)", url)
    if executor is None:
        rows = [_entry_row(entry, provider, variant) for entry in doc["data"]]
        return pd.DataFrame(rows, columns=COLUMNS)
    # on a cluster: entries become structures here (light work), SCOPE is computed by the executor's tasks
    rows, structures = [], {}
    for i, entry in enumerate(doc["data"]):
        row = _entry_row(entry, provider, variant, scope=False)
        try:
            structures[i] = entry_to_structure(entry)
        except Exception as exc:
            row["error"] = _error_text(exc)
        rows.append(row)
    if structures:
        table = scope_table(structures, variant=variant, executor=executor, progress=False)
        for i, (text, error) in zip(table.index, zip(table["scope"], table["error"])):
            if error is None:
                rows[i]["scope"] = text
            else:  # scope's "ErrorClass: KEY: message" as structure_to_scope without a name gives it, spaced
                name, _, message = str(error).partition(": ")
                message = message.removeprefix(f"{i}: ")
                rows[i]["error"] = f"{name}: {' '.join(message.split())}"
    return pd.DataFrame(rows, columns=COLUMNS)


# --------------------------------------------------------------------------- state & parts


def _page_key(index: int) -> str:
    return f"page-{index:06d}"


def _pages(out_dir: Path, state: dict) -> PartStore:
    """The store of a harvest's pages (valid for its endpoint, filter and variant)."""
    settings = {"endpoint": state["endpoint"], "filter": state.get("filter") or "", "variant": state["variant"]}
    return PartStore(out_dir, settings, compress=True)


def _frame(rows: dict) -> pd.DataFrame:
    return pd.DataFrame(rows, dtype=str).reindex(columns=COLUMNS, fill_value="").fillna("")


def _migrate_csv_parts(out_dir: Path, state: dict) -> dict:
    """Move the pages of a harvest folder of state format 1 (``part-NNNNNN.csv.gz``) into the store, once."""
    pages = _pages(out_dir, state)
    for i in range(int(state["pages"])):
        path = out_dir / f"part-{i:06d}.csv.gz"
        if path.is_file():
            df = pd.read_csv(path, dtype=str, keep_default_na=False, na_filter=False).reindex(
                columns=COLUMNS, fill_value=""
            )
            pages.put(_page_key(i), {"url": None, "rows": df.to_dict(orient="list")})
    for path in out_dir.glob("part-*.csv.gz"):
        path.unlink()
    state = {**state, "format": STATE_FORMAT}
    write_json(out_dir / STATE_FILE, state)
    return state


def load_harvest(out_dir: str | Path) -> pd.DataFrame:
    """The table harvested so far in ``out_dir`` (complete pages only, duplicates by id removed).

    Columns :data:`COLUMNS`, all strings; ``scope`` is ``""`` where ``error`` says why it failed.
    """
    out_dir = Path(out_dir)
    if not (out_dir / STATE_FILE).is_file():
        raise DataError("no harvest state here (state.json missing)", str(out_dir))
    return _load_parts(out_dir, _read_state(out_dir))


def _read_state(out_dir: Path) -> dict:
    """A harvest folder's ``state.json``, its pages moved into the store first when it is of state format 1."""
    try:
        state = json.loads((out_dir / STATE_FILE).read_text())
    except ValueError as exc:
        raise DataError(f"state.json is unreadable ({exc}); delete the folder to start over", str(out_dir)) from exc
    if state.get("format", 1) < STATE_FORMAT:
        state = _migrate_csv_parts(out_dir, state)
    return state


def _load_parts(out_dir: Path, state: dict) -> pd.DataFrame:
    pages, frames = _pages(out_dir, state), []
    for i in range(int(state["pages"])):
        page = pages.get(_page_key(i))
        if page is None:
            raise DataError(
                f"harvest page {pages.path(_page_key(i)).name} is missing, damaged or of another harvest although "
                f"state.json counts {state['pages']} pages",
                str(out_dir),
            )
        frames.append(_frame(page["rows"]))
    if not frames:
        return pd.DataFrame({c: pd.Series(dtype=str) for c in COLUMNS})
    df = pd.concat(frames, ignore_index=True)
    return df.drop_duplicates("id", keep="first").reset_index(drop=True)


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _new_state(endpoint: str, filter: str | None, variant: str, page_limit: int) -> dict:
    return {
        "format": STATE_FORMAT,
        "endpoint": endpoint,
        "filter": filter or "",
        "variant": variant,
        "page_limit": int(page_limit),
        "response_fields": list(RESPONSE_FIELDS),
        "provider": None,
        "next_url": _first_page_url(endpoint, filter, page_limit),
        "pages": 0,
        "rows": 0,
        "n_scope": 0,
        "n_failed": 0,
        "data_returned": None,
        "complete": False,
        "started": _now(),
        "updated": _now(),
    }


def _load_state(out_dir: Path, endpoint: str, filter: str | None, variant: str, page_limit: int) -> dict:
    if not (out_dir / STATE_FILE).is_file():
        return _new_state(endpoint, filter, variant, page_limit)
    state = _read_state(out_dir)
    theirs = (state.get("endpoint"), state.get("filter") or "", state.get("variant"))
    ours = (endpoint, filter or "", variant)
    if theirs != ours:
        raise DataError(
            f"folder holds another harvest (endpoint, filter, variant) = {theirs}, not {ours}; use another out_dir",
            str(out_dir),
        )
    return state


def _provider_name(doc: dict, endpoint: str) -> str:
    provider = (doc.get("meta") or {}).get("provider")
    if isinstance(provider, dict) and provider.get("prefix"):
        return str(provider["prefix"])
    return urlsplit(endpoint).netloc


# --------------------------------------------------------------------------- main entry point


def harvest(
    base_url: str,
    out_dir: str | Path,
    filter: str | None = None,  # noqa: A002 - the OPTIMADE parameter name
    page_limit: int = DEFAULT_PAGE_LIMIT,
    max_structures: int | None = None,
    variant: str = "reduced",
    timeout: float = DEFAULT_TIMEOUT,
    progress: bool = True,
    retries: int = DEFAULT_RETRIES,
    backoff: float = 2.0,
    max_pages: int | None = None,
    executor=None,
) -> pd.DataFrame:
    """Harvest ``{base_url}/v1/structures`` (optionally filtered) into SCOPE strings, resumably.

    Parameters:
        base_url: provider base URL (``https://host/path``; ``/v1`` or ``/v1/structures`` may be included).
        out_dir: folder for ``page-NNNNNN.json.gz`` files and ``state.json``; rerunning with the same
            folder resumes (same ``base_url``, ``filter`` and ``variant`` required).
        filter: OPTIMADE filter, e.g. ``'elements HAS "Si"'`` or ``"nelements=2"``; validated locally
            with the OPTIMADE grammar before any request.
        page_limit: entries requested per page (the server may cap it). On resume the saved next URL,
            and so the page size it carries, wins.
        max_structures: stop at the first page boundary where at least this many rows are on disk
            (whole pages are kept, so up to ``page_limit - 1`` more may be returned). A later call
            with a larger value, or ``None``, continues where this one stopped.
        variant: SCOPE variant passed to :func:`cloudlib.scope.structure_to_scope`.
        timeout: seconds one HTTP request may take in all (connect, headers and body together, however
            the bytes trickle in); a request still running then is aborted.
        progress: show a tqdm bar (total = ``meta.data_returned`` when the server reports it).
        retries, backoff: retries of HTTP 429/5xx, missed deadlines and read failures per page, with
            exponential backoff starting at ``backoff`` seconds, all within ``timeout * max(1, retries)``
            seconds per page (backoff included; a retry that does not fit is not made). Connection
            refused/DNS failure is not retried.
        max_pages: stop once this many pages are on disk in ``out_dir`` (like ``max_structures``, a later
            call with a larger value or ``None`` continues). The listing also ends by itself when as many
            entries as ``meta.data_returned`` (first page) have arrived, whatever ``links.next`` says.
        executor: compute each page's SCOPE strings on a cluster: a ``distributed.Client`` (dask) or a
            ``concurrent.futures.Executor`` (see :func:`cloudlib.scope.scope_table`); the entries are read into
            structures here, the strings and errors are those computed here without one. None: in this thread.

    Returns:
        DataFrame with columns :data:`COLUMNS` (all strings, RangeIndex; ids are not unique across
        providers, so they are a column), one row per entry the server returned, in server order,
        duplicates by id removed. Failed entries have ``scope == ""`` and ``error`` set.

    Raises:
        HarvestUnavailableError: the server cannot be reached or keeps failing (a
            ``DataUnavailableError``; names the URL).
        HarvestTimeoutError: no attempt at a page completed within ``timeout`` s (a silent or trickling server).
        OptimadeResponseError: the server's answer is not an OPTIMADE response, or ``links.next`` loops.
        InvalidFilterError: ``filter`` is not valid OPTIMADE filter syntax.
        DataError: ``out_dir`` holds a different harvest or a damaged state.

        Pages harvested before any of these stay on disk; calling again resumes.
    """
    if variant not in VARIANTS:
        raise ValueError(f"variant must be one of {VARIANTS}, got {variant!r}")
    if int(page_limit) < 1:
        raise ValueError(f"page_limit must be >= 1, got {page_limit}")
    if max_structures is not None and max_structures < 0:
        raise ValueError(f"max_structures must be >= 0 or None, got {max_structures}")
    if max_pages is not None and max_pages < 0:
        raise ValueError(f"max_pages must be >= 0 or None, got {max_pages}")
    if not timeout > 0:
        raise ValueError(f"timeout must be > 0 seconds, got {timeout}")
    if retries < 0:
        raise ValueError(f"retries must be >= 0, got {retries}")
    endpoint = structures_url(base_url)
    _check_filter(filter)
    out_dir = Path(out_dir)
    state = _load_state(out_dir, endpoint, filter, variant, page_limit)

    def budget_left() -> bool:
        return (max_structures is None or state["rows"] < max_structures) and (
            max_pages is None or state["pages"] < max_pages
        )

    if state["complete"] or not state["next_url"] or not budget_left():
        return _load_parts(out_dir, state)

    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(
            total=state["data_returned"],
            initial=state["rows"],
            unit="struct",
            desc=f"harvest {urlsplit(endpoint).netloc}",
        )
    visited: set[str] = set()
    client = _DeadlineClient()
    try:
        while state["next_url"] and budget_left():
            url = state["next_url"]
            visited.add(url)
            doc = _get_page(client, url, timeout, retries, backoff)
            meta = doc["meta"]
            if state["provider"] is None:
                state["provider"] = _provider_name(doc, endpoint)
            if state["data_returned"] is None and isinstance(meta.get("data_returned"), int):
                state["data_returned"] = meta["data_returned"]
                if bar is not None:
                    bar.total = state["data_returned"]
                    bar.refresh()
            nxt = _next_url(doc, url)
            announced = state["data_returned"]
            if announced is not None and state["rows"] + len(doc["data"]) >= announced:
                nxt = None  # every entry the server announced is here: done, whatever links.next says
            elif nxt in visited:  # checked before writing, so a loop never duplicates a page
                raise OptimadeResponseError(f"links.next points back to a page already fetched ({nxt})", url)
            if not doc["data"]:
                nxt = None  # an empty page ends the listing, whatever links.next says
            if doc["data"]:
                rows = _page_rows(doc, url, state["provider"], variant, executor)
                _pages(out_dir, state).put(_page_key(state["pages"]), {"url": url, "rows": rows.to_dict(orient="list")})
                n_ok = int((rows["error"] == "").sum())
                state["pages"] += 1
                state["rows"] += len(rows)
                state["n_scope"] += n_ok
                state["n_failed"] += len(rows) - n_ok
                if bar is not None:
                    bar.update(len(rows))
            state["next_url"] = nxt
            state["complete"] = nxt is None
            state["updated"] = _now()
            write_json(out_dir / STATE_FILE, state)
    finally:
        client.close()
        if bar is not None:
            bar.close()

    table = _load_parts(out_dir, state)
    expected = state["data_returned"]
    if state["complete"] and expected is not None and len(table) != expected:
        warnings.warn(
            f"{endpoint}: harvested {len(table)} unique entries but the server reported data_returned={expected}",
            stacklevel=2,
        )
    return table


# --------------------------------------------------------------------------- several providers

PROVIDERS_FILE = "providers.json"
#: Providers harvested at once by :func:`harvest_many` unless told otherwise (each one's pages stay sequential).
DEFAULT_CONCURRENCY = 4


def provider_folder(base_url: str) -> str:
    """The sub-folder name of a provider in a :func:`harvest_many` folder: host, port and path, filesystem-safe."""
    parts = urlsplit(structures_url(base_url))
    path = parts.path.removesuffix("/structures").strip("/")
    return re.sub(r"[^A-Za-z0-9.-]+", "_", f"{parts.netloc}_{path}".strip("_")) or "provider"


def harvest_many(
    base_urls,
    out_dir: str | Path,
    concurrency: int = DEFAULT_CONCURRENCY,
    progress: bool = False,
    **kwargs,
) -> pd.DataFrame:
    """Harvest several OPTIMADE providers at once, each into its own resumable :func:`harvest` folder.

    ``base_urls``: provider base URLs (a list, or a mapping folder name -> URL). At most ``concurrency`` providers
    are fetched at a time (threads: the work is waiting on servers), and each provider's pages are requested one
    after another, so no server sees more than one request at a time from this harvest. A provider that fails
    (unreachable, timing out, not OPTIMADE) is reported in its row and does not stop the others; its pages so far
    stay on disk, and calling again resumes every provider where it stopped (finished ones make no request).
    ``kwargs`` go to :func:`harvest` (filter, page_limit, max_structures, max_pages, timeout, retries, executor,
    ...); with an ``executor`` every provider's pages are encoded on that one cluster.

    Writes ``out_dir/providers.json`` (atomically, after every provider) and returns one row per provider:
    ``folder, url, rows, scope, failed, complete, error, seconds``. :func:`cloudlib.corpus.read_corpus` and
    ``pretrain --corpus`` read such a folder (every provider's successful rows).
    """
    from concurrent.futures import ThreadPoolExecutor, as_completed

    if isinstance(base_urls, str):
        raise TypeError("base_urls is a list of URLs (or a mapping folder -> URL), not one string")
    if hasattr(base_urls, "items"):
        named = dict(base_urls)
    else:
        urls = list(base_urls)
        named = {provider_folder(u): u for u in urls}
        if len(named) != len(urls):
            raise ValueError(f"the same provider twice (folders {[provider_folder(u) for u in urls]})")
    if not named:
        raise ValueError("no provider given")
    if int(concurrency) < 1:
        raise ValueError(f"concurrency must be >= 1, got {concurrency}")
    for name in named:
        if not name or Path(name).name != name or name.startswith("."):
            raise ValueError(f"not a folder name: {name!r}")
    _check_filter(kwargs.get("filter"))  # one bad filter fails all providers alike: say so before any request
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    lock = threading.Lock()
    rows: dict[str, dict] = {}

    def one(name: str, url: str) -> dict:
        t0 = time.monotonic()
        row = {"folder": name, "url": url, "rows": 0, "scope": 0, "failed": 0, "complete": False, "error": ""}
        try:
            harvest(url, out_dir / name, progress=progress, **kwargs)
        except Exception as exc:  # reported per provider; the others go on
            row["error"] = _error_text(exc)
        state_path = out_dir / name / STATE_FILE
        if state_path.is_file():
            state = json.loads(state_path.read_text())
            row.update(rows=state["rows"], scope=state["n_scope"], failed=state["n_failed"], complete=state["complete"])
        row["seconds"] = round(time.monotonic() - t0, 2)
        return row

    def record(row: dict) -> None:
        with lock:
            rows[row["folder"]] = row
            ordered = [rows[n] for n in named if n in rows]
            write_json(out_dir / PROVIDERS_FILE, {"providers": ordered, "updated": _now()})

    with ThreadPoolExecutor(max_workers=min(int(concurrency), len(named)), thread_name_prefix="harvest") as pool:
        futures = [pool.submit(one, name, url) for name, url in named.items()]
        for fut in as_completed(futures):
            record(fut.result())
    return pd.DataFrame([rows[n] for n in named])


def harvest_folders(out_dir: str | Path) -> list[Path]:
    """The provider folders of a :func:`harvest_many` folder, in the order they were given (those with a state)."""
    out_dir = Path(out_dir)
    doc = json.loads((out_dir / PROVIDERS_FILE).read_text())
    return [out_dir / p["folder"] for p in doc["providers"] if (out_dir / p["folder"] / STATE_FILE).is_file()]
