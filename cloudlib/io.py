"""Atomic writes: files and whole folders appear complete or not at all."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from pathlib import Path


def umask() -> int:
    """The process's file-creation mask (reading it means setting it, so it is set back at once)."""
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # EPERM: it exists, owned by someone else
        return True
    return True


def remove_stale_parts(path: str | os.PathLike) -> list[Path]:
    """Remove the temporary ``.NAME.PID.*.part`` files/folders a killed writer of ``path`` left behind (their
    process is gone); returns what was removed. Parts of live writers are left alone."""
    path = Path(path)
    removed = []
    try:
        candidates = list(path.parent.glob(f".{glob_escape(path.name)}.*.part"))
    except OSError:
        return removed
    for q in candidates:
        pid = q.name[len(path.name) + 2 :].split(".", 1)[0]
        if not pid.isdigit() or _alive(int(pid)):
            continue
        try:
            shutil.rmtree(q) if q.is_dir() and not q.is_symlink() else q.unlink()
            removed.append(q)
        except FileNotFoundError:  # another writer removed it first
            pass
        except OSError:
            pass
    return removed


def glob_escape(name: str) -> str:
    import glob

    return glob.escape(name)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike):
    """Yield a temporary path next to ``path`` (``.NAME.PID.XXXX.part``); rename it over ``path`` only if the
    block succeeds. Parts left by writers that were killed (SIGKILL, power loss) are removed on the next write."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_parts(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.{os.getpid()}.", suffix=".part")
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, 0o666 & ~umask())  # mkstemp creates 0600; give the file the usual permissions
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_bytes(path, data: bytes) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def write_text(path, text: str) -> Path:
    return write_bytes(path, text.encode())


def write_json(path, obj, **kw) -> Path:
    kw.setdefault("indent", 2)
    return write_text(path, json.dumps(obj, **kw) + "\n")


def write_csv(path, df, **kw) -> Path:
    """Atomically write a DataFrame as CSV (gzip when the name ends in .gz). Text that UTF-8 cannot encode (the
    surrogate escapes of an undecodable file name) is written as ``\\udcNN`` rather than failing the write."""
    path = Path(path)
    kw.setdefault("errors", "backslashreplace")
    with atomic_path(path) as tmp:
        df.to_csv(tmp, compression="gzip" if path.suffix == ".gz" else None, **kw)
    return path


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike):
    """Yield an empty temporary folder next to ``path``; when the block succeeds it replaces ``path`` (an existing
    folder is moved aside first and removed after), with the usual permissions. On failure ``path`` is untouched."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_parts(path)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.{os.getpid()}.", suffix=".part"))
    try:
        yield tmp
        mask = umask()  # mkdtemp/mkstemp create 0700/0600: give everything the usual permissions
        os.chmod(tmp, 0o777 & ~mask)
        for f in tmp.rglob("*"):
            os.chmod(f, (0o777 if f.is_dir() else 0o666) & ~mask)
        old = None
        if path.exists():
            old = path.parent / f".{path.name}.old-{os.getpid()}"
            os.replace(path, old)
        os.replace(tmp, path)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


# --------------------------------------------------------------------------- model folders

MANIFEST = "manifest.json"


def _sha256(path: Path) -> str:
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def write_manifest(folder: str | os.PathLike) -> Path:
    """Record every file of ``folder`` (size and sha256) in ``folder/manifest.json``, so a later load can tell a
    complete folder from a truncated or tampered one (:func:`verify_manifest`)."""
    folder = Path(folder)
    files = {
        f.name: {"bytes": f.stat().st_size, "sha256": _sha256(f)}
        for f in sorted(folder.iterdir())
        if f.is_file() and f.name != MANIFEST and not f.name.startswith(".")
    }
    return write_json(folder / MANIFEST, {"format": 1, "files": files}, indent=1)


def verify_manifest(folder: str | os.PathLike, required: tuple[str, ...] = (), kind: str = "model") -> None:
    """Raise :class:`~cloudlib.errors.ModelError` naming the folder and the file when a file recorded in
    ``manifest.json`` is missing, has another size or another sha256, when the manifest is not valid JSON, or
    (with or without a manifest) when a ``required`` file is missing or empty."""
    from .errors import ModelError

    folder = Path(folder)
    if not folder.exists():
        raise ModelError(f"no such {kind} folder", str(folder))
    if not folder.is_dir():
        raise ModelError(f"not a folder (a {kind} is a folder of files)", str(folder))
    recorded: dict = {}
    if (folder / MANIFEST).is_file():
        try:
            recorded = json.loads((folder / MANIFEST).read_text())["files"]
            assert isinstance(recorded, dict)
        except (ValueError, KeyError, TypeError, AssertionError, UnicodeDecodeError) as exc:
            raise ModelError(f"{MANIFEST} is not a valid manifest ({type(exc).__name__})", str(folder)) from exc
    for name in required:
        f = folder / name
        if not f.is_file():
            raise ModelError(f"incomplete {kind} folder: {name} is missing", str(folder))
        if f.stat().st_size == 0:
            raise ModelError(f"incomplete {kind} folder: {name} is empty", str(folder))
    for name, rec in recorded.items():
        f = folder / name
        if not f.is_file():
            raise ModelError(f"incomplete {kind} folder: {name} is missing (it was saved with the folder)", str(folder))
        size = f.stat().st_size
        if size != rec.get("bytes"):
            raise ModelError(
                f"{name} has {size:,} bytes, {rec.get('bytes'):,} when saved: truncated or replaced", str(folder)
            )
        if rec.get("sha256") and _sha256(f) != rec["sha256"]:
            raise ModelError(f"{name} does not match the sha256 recorded when it was saved: corrupted", str(folder))


def ship_folder(src: str | os.PathLike, dest: str | os.PathLike) -> Path:
    """Copy a model folder made by a run (e.g. ``results/cloud-dielectric-laptop``) to where it ships (e.g.
    ``models/cloud-dielectric-laptop``): the source is checked against its manifest first (a truncated or altered
    file is named and nothing is copied), the destination is replaced atomically and keeps the source's card and
    manifests. The main job never writes into ``models/``; this is the one way a run's model gets there."""
    from .errors import ModelError

    src, dest = Path(src), Path(dest)
    verify_manifest(src, kind="model")
    if not (src / MANIFEST).is_file():
        raise ModelError(f"no {MANIFEST}: not a folder saved by cloudlib", str(src))
    if src.resolve() == dest.resolve():
        raise ModelError("source and destination are the same folder", str(src))
    with atomic_dir(dest) as tmp:
        shutil.copytree(src, tmp, dirs_exist_ok=True)
    return dest
