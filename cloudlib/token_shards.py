"""A pre-training corpus tokenized once into sharded on-disk arrays, read through memory maps.

* :func:`build` -- tokenize a stream of SCOPE string chunks (e.g. :func:`cloudlib.corpus.iter_corpus`) into
  ``tokens-NNNNN.npy`` (every id of the shard's strings, concatenated), ``lengths-NNNNN.npy`` (ids per string,
  [CLS] and [SEP] included), ``starts-NNNNN.npy`` (each string's first id in the tokens file) and
  ``hashes-NNNNN.npy`` (:func:`string_hashes`), ``shard_strings`` strings a shard, and a ``manifest.json``
  rewritten after every shard: an interrupted build resumes where it stopped. Blank strings and strings longer
  than the tokenizer's block size are counted and left out. Memory holds one shard. Once the stream ends,
  ``first.npy`` lists the position of each distinct string's first occurrence (the deduplicated corpus).
* :func:`open_shards` -- check a built folder against its manifest and return a :class:`TokenShards`: every file
  memory-mapped (the process holds no per-string array until a split or an epoch asks for one), each string kept
  once (its first occurrence), batches gathered on demand exactly as :meth:`cloudlib.engine.Encoded.batch` gives
  them, a validation split by string hash.
"""

from __future__ import annotations

import hashlib
import json
import mmap
import os
import re
from collections.abc import Iterable, Iterator
from io import BytesIO
from pathlib import Path

import numpy as np
import torch

from .errors import BlockSizeError, DataError
from .io import write_bytes, write_json
from .paths import resolve
from .registry import sha256_file

FORMAT = "cloudlib-token-shards"
#: 2: ``starts`` files and ``first.npy`` written at build time (version 1 folders are rebuilt by :func:`build`)
VERSION = 2
MANIFEST = "manifest.json"
#: Strings a shard holds unless :func:`build` is told otherwise (~20 MB of uint16 ids for SCOPE).
SHARD_STRINGS = 250_000
#: Strings tokenized at once: the working memory of :func:`build` besides the shard being filled.
ENCODE_STRINGS = 20_000
KINDS = ("tokens", "lengths", "starts", "hashes")
FIRST = "first.npy"
_SHARD_FILE = re.compile(r"(tokens|lengths|starts|hashes)-(\d{5,})\.npy")
_MASK64 = (1 << 64) - 1
_BLOCK = 1 << 20  # rows handled at once by the per-row passes (split, lengths, digest)


def tokenizer_fingerprint(tokenizer) -> str:
    """sha256 of a tokenizer's vocabulary in id order (``len(tokenizer)`` ids): equal iff the ids mean the same."""
    tokens = tokenizer.convert_ids_to_tokens(list(range(len(tokenizer))))
    return hashlib.sha256(json.dumps(tokens, ensure_ascii=False).encode()).hexdigest()


def string_hashes(strings: Iterable[str]) -> np.ndarray:
    """A stable 64-bit hash of each string: blake2b (8-byte digest) of its UTF-8, read little-endian; uint64."""
    digests = b"".join(hashlib.blake2b(s.encode("utf-8", "surrogatepass"), digest_size=8).digest() for s in strings)
    return np.frombuffer(digests, dtype="<u8").astype(np.uint64)


def id_dtype(vocab_size: int) -> np.dtype:
    """The dtype token ids are stored in: uint16 up to 65,536 ids (the authors' 30,522 too), else int32."""
    return np.dtype(np.uint16 if vocab_size <= 1 << 16 else np.int32)


def _length_dtype(block_size: int) -> np.dtype:
    return np.dtype(np.uint8 if block_size <= 0xFF else np.uint16 if block_size <= 0xFFFF else np.int32)


def _shard_name(kind: str, index: int) -> str:
    return f"{kind}-{index:05d}.npy"


def _npy_bytes(array: np.ndarray) -> bytes:
    buf = BytesIO()
    np.save(buf, array, allow_pickle=False)
    return buf.getvalue()


def _read_manifest(folder: Path, any_version: bool = False) -> dict:
    """A shard folder's manifest; a :class:`DataError` naming the folder when it is missing or not one (or, unless
    ``any_version``, of another format version)."""
    if not folder.is_dir():
        raise DataError("no such token-shard folder", str(folder))
    path = folder / MANIFEST
    if not path.is_file():
        raise DataError(f"no {MANIFEST}: not a token-shard folder (token_shards.build makes one)", str(folder))
    try:
        manifest = json.loads(path.read_text())
        ok = manifest.get("format") == FORMAT and isinstance(manifest.get("shards"), list)
    except (ValueError, AttributeError, UnicodeDecodeError) as exc:
        raise DataError(f"{MANIFEST} is not valid JSON ({exc})", str(path)) from exc
    if not ok:
        raise DataError(f"{MANIFEST} is not a token-shard manifest (format {FORMAT!r})", str(path))
    if manifest.get("version") != VERSION and not any_version:
        raise DataError(
            f"token-shard format version {manifest.get('version')}; this cloudlib reads {VERSION} "
            "(token_shards.build over the same input rebuilds it)",
            str(path),
        )
    return manifest


def _check_file(folder: Path, record: dict, verify: bool = False) -> Path:
    """The path of a shard file; a :class:`DataError` naming it when missing, of another size or (``verify``)
    another sha256 than its manifest records."""
    path = folder / record["name"]
    if not path.is_file():
        raise DataError("missing: the manifest lists it; rebuild the shards", str(path))
    size = path.stat().st_size
    if size != record["bytes"]:
        raise DataError(f"{size:,} bytes, {record['bytes']:,} when written: truncated or replaced", str(path))
    if verify and sha256_file(path) != record["sha256"]:
        raise DataError("does not match the sha256 recorded when written: corrupted", str(path))
    return path


def _intact(folder: Path, record: dict) -> bool:
    """Whether the file of ``record`` is there with its recorded size and sha256 (:func:`_check_file`)."""
    try:
        _check_file(folder, record, verify=True)
    except DataError:
        return False
    return True


# --------------------------------------------------------------------------- building


def _encode(tokenizer, strings: list[str], dtype: np.dtype) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(fits, lengths, ids): which ``strings`` fit the block size, the fitting ones' lengths (int64) and their ids
    concatenated (``dtype``). A word is at least one token, so strings with more words than fit are not encoded."""
    block = int(tokenizer.model_max_length)
    words = np.fromiter((len(s.split()) for s in strings), dtype=np.int64, count=len(strings))
    fits = words + 2 <= block
    cand = np.flatnonzero(fits)
    if not len(cand):
        return fits, np.zeros(0, np.int64), np.zeros(0, dtype)
    texts = [strings[i] for i in cand]
    try:
        enc = tokenizer.encode_batch(texts)
    except BlockSizeError:  # a word of several tokens (WordPiece): find the strings that are too long
        enc = tokenizer.encode_batch(texts, truncation=True)
        at_limit = np.flatnonzero(enc["attention_mask"].sum(1).numpy() >= block)
        over = np.zeros(len(texts), bool)
        for i in at_limit:
            try:
                tokenizer.encode_batch([texts[i]])
            except BlockSizeError:
                over[i] = True
        fits[cand[over]] = False
        enc = {k: v[torch.from_numpy(~over)] for k, v in enc.items()}
    mask = enc["attention_mask"].numpy().astype(bool)
    ids = enc["input_ids"].numpy()[mask]  # row by row: the strings' ids concatenated
    if len(ids) and (ids.min() < 0 or ids.max() > np.iinfo(dtype).max):
        raise DataError(f"token ids {ids.min()}..{ids.max()} do not fit {dtype}", "tokenizer")
    return fits, mask.sum(1).astype(np.int64), ids.astype(dtype)


class _Builder:
    """The state of one :func:`build`: finished shards, the shard being filled, the input read so far."""

    def __init__(self, folder: Path, header: dict, shard_strings: int, kept: list[dict], old: dict[str, dict]):
        self.folder, self.header, self.shard_strings = folder, header, shard_strings
        self.id_dtype = np.dtype(header["dtypes"]["tokens"])
        self.len_dtype = np.dtype(header["dtypes"]["lengths"])
        self.shards = list(kept)
        self.old = old  # file name -> record of the previous build: an identical file is not rewritten
        self.boundaries = list(np.cumsum([s["inputs"] for s in kept], dtype=np.int64).tolist())
        self.skip = self.boundaries[-1] if kept else 0
        self.seen = 0  # input strings read (including those skipped)
        self.input_hash = hashlib.sha256()
        self._reset()

    def _reset(self) -> None:
        self.parts: dict[str, list[np.ndarray]] = {k: [] for k in KINDS}
        self.n, self.n_tokens, self.inputs, self.blank, self.too_long = 0, 0, 0, 0, 0

    def _hash_inputs(self, raw: list[str]) -> None:
        if raw:
            self.input_hash.update(("\0".join(raw) + "\0").encode("utf-8", "surrogatepass"))
        self.seen += len(raw)

    def _skip(self, raw: list[str]) -> list[str]:
        """Read past the input the kept shards cover, checking it is the input they were built from."""
        while raw and self.seen < self.skip:
            i = next(i for i, b in enumerate(self.boundaries) if b > self.seen)
            take = min(len(raw), self.boundaries[i] - self.seen)
            self._hash_inputs(raw[:take])
            raw = raw[take:]
            if self.seen == self.boundaries[i] and self.input_hash.hexdigest() != self.shards[i]["inputs_sha256"]:
                raise DataError(
                    f"the input differs from the one shard {i} was built from; build into a new folder",
                    str(self.folder),
                )
        return raw

    def feed(self, raw: list[str], tokenizer) -> None:
        """Add a batch of input strings (at most :data:`ENCODE_STRINGS`)."""
        raw = self._skip(raw)
        if not raw:
            return
        stripped = [s.strip() for s in raw]
        blank = np.fromiter((not s for s in stripped), dtype=bool, count=len(raw))
        cand = np.flatnonzero(~blank)
        fits, lengths, ids = _encode(tokenizer, [stripped[i] for i in cand], self.id_dtype)
        long = np.zeros(len(raw), bool)
        long[cand[~fits]] = True
        keep = cand[fits]
        hashes = string_hashes(stripped[i] for i in keep)
        offsets = np.concatenate([[0], np.cumsum(lengths)])
        pos, k = 0, 0
        while pos < len(raw):
            need = self.shard_strings - self.n
            take = min(need, len(keep) - k)
            end = int(keep[k + take - 1]) + 1 if take == need else len(raw)  # a full shard ends at its last string
            self._hash_inputs(raw[pos:end])
            self.inputs += end - pos
            self.blank += int(blank[pos:end].sum())
            self.too_long += int(long[pos:end].sum())
            self.parts["tokens"].append(ids[offsets[k] : offsets[k + take]])
            self.parts["lengths"].append(lengths[k : k + take].astype(self.len_dtype))
            self.parts["starts"].append(offsets[k : k + take] - offsets[k] + self.n_tokens)
            self.parts["hashes"].append(hashes[k : k + take])
            self.n += take
            self.n_tokens += int(offsets[k + take] - offsets[k])
            pos, k = end, k + take
            if self.n == self.shard_strings:
                self.flush()

    def flush(self) -> None:
        """Write the shard being filled (if it holds a string) and the manifest."""
        if not self.n:
            return
        index = len(self.shards)
        files = {}
        for kind in KINDS:
            array = np.concatenate(self.parts[kind]).astype(self.header["dtypes"][kind], copy=False)
            files[kind] = self._put(_shard_name(kind, index), array)
        tokens = self.n_tokens
        self.shards.append(
            {
                "strings": self.n,
                "tokens": tokens,
                "inputs": self.inputs,
                "dropped": {"blank": self.blank, "too_long": self.too_long},
                "inputs_sha256": self.input_hash.hexdigest(),
                "files": files,
            }
        )
        self._reset()
        self.write(complete=False)

    def _put(self, name: str, array: np.ndarray) -> dict:
        """Write ``array`` as ``name`` (atomically) unless the previous build left an identical file; its record."""
        data = _npy_bytes(array)
        rec = {"name": name, "bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
        if self.old.get(name) != rec or not _intact(self.folder, rec):
            write_bytes(self.folder / name, data)
        return rec

    def finish(self) -> dict:
        """Write ``first.npy`` (positions of each distinct string's first occurrence, by hash) and the complete
        manifest. Reads the shards' hashes back: 8 bytes a string, plus a sort."""
        hashes = [np.load(self.folder / s["files"]["hashes"]["name"], mmap_mode="r") for s in self.shards]
        first = _first_occurrences(np.concatenate(hashes) if hashes else np.zeros(0, np.uint64))
        dtype = "<u4" if len(first) and first[-1] < 1 << 32 else "<i8"  # 4 bytes a position below 2**32 strings
        self.first = {**self._put(FIRST, first.astype(dtype)), "strings": len(first), "dtype": dtype}
        return self.write(complete=True)

    def manifest(self, complete: bool) -> dict:
        strings = sum(s["strings"] for s in self.shards)
        dropped = {k: sum(s["dropped"][k] for s in self.shards) + getattr(self, k) for k in ("blank", "too_long")}
        inputs = sum(s["inputs"] for s in self.shards) + self.inputs
        return {
            **self.header,
            "complete": complete,
            "totals": {"inputs": inputs, "strings": strings, "tokens": sum(s["tokens"] for s in self.shards)},
            "dropped": dropped,
            "shards": self.shards,
            **({"first": self.first} if complete else {}),
        }

    def write(self, complete: bool) -> dict:
        manifest = self.manifest(complete)
        write_json(self.folder / MANIFEST, manifest, indent=1)
        return manifest


def _batches(chunks: Iterable[list[str]], size: int) -> Iterator[list[str]]:
    for chunk in chunks:
        if isinstance(chunk, str):
            raise TypeError("build takes an iterable of chunks (lists of strings), not of strings")
        chunk = list(chunk)
        for i in range(0, len(chunk), size):
            yield chunk[i : i + size]


def build(
    chunks: Iterable[list[str]],
    tokenizer,
    folder: str | os.PathLike,
    shard_strings: int = SHARD_STRINGS,
    source: str = "",
) -> dict:
    """Tokenize a stream of SCOPE string chunks once into shards in ``folder``; returns the manifest.

    Strings are stripped; blank ones and those longer than ``tokenizer.model_max_length`` ids are counted and left
    out (duplicates are kept: :func:`open_shards` drops them). Every ``shard_strings`` kept strings make a shard
    of four ``.npy`` files (ids concatenated, in :func:`id_dtype`; lengths; each string's first id in the ids
    file; :func:`string_hashes`), written atomically, then ``manifest.json`` is rewritten (format, tokenizer
    fingerprint and block size, per shard its files with size and sha256, strings, tokens, input strings read,
    dropped counts and the sha256 of the input so far; totals; ``source``; ``complete`` once the stream is
    exhausted, with ``first.npy``: the sorted positions of each distinct string's first occurrence).

    Resumable: when ``folder`` holds a manifest of the same tokenizer, block size and ``shard_strings``, its full
    shards are kept (their files not rewritten) and the input strings they cover are read past, checked against
    their recorded sha256; another tokenizer, block size or shard size, or another input, is a :class:`DataError`.
    Memory holds one shard and :data:`ENCODE_STRINGS` strings being tokenized, however long the stream.
    """
    if shard_strings < 1:
        raise ValueError(f"shard_strings must be positive, not {shard_strings}")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    block = int(tokenizer.model_max_length)
    header = {
        "format": FORMAT,
        "version": VERSION,
        "tokenizer": {
            "fingerprint": tokenizer_fingerprint(tokenizer),
            "vocab_size": len(tokenizer),
            "pad_id": int(tokenizer.pad_token_id),
        },
        "block_size": block,
        "shard_strings": shard_strings,
        "dtypes": {
            "tokens": id_dtype(len(tokenizer)).str,
            "lengths": _length_dtype(block).str,
            "starts": "<u4" if shard_strings * block < 1 << 32 else "<i8",
            "hashes": "<u8",
        },
        "hash": "blake2b, digest_size=8, of the stripped string's UTF-8, little-endian",
        "source": source,
    }
    kept, old = [], {}
    previous = _read_manifest(folder, any_version=True) if (folder / MANIFEST).exists() else None
    if previous is not None and previous.get("version") == VERSION:  # another version's shards are rebuilt
        for key, what in [("tokenizer", "tokenizer"), ("block_size", "block size"), ("shard_strings", "shard size")]:
            if previous.get(key) != header[key]:
                was = "" if key == "tokenizer" else f" ({previous.get(key)}, not {header[key]})"
                raise DataError(
                    f"holds shards built with another {what}{was}; build into a new folder or delete this one",
                    str(folder),
                )
        old = {rec["name"]: rec for shard in previous["shards"] for rec in shard["files"].values()}
        if "first" in previous:
            old[FIRST] = {k: previous["first"][k] for k in ("name", "bytes", "sha256")}
        for shard in previous["shards"]:
            if shard["strings"] != shard_strings:
                break  # the last, partial shard is rebuilt (the input may have grown)
            try:
                for rec in shard["files"].values():
                    _check_file(folder, rec)
            except DataError:
                break  # a damaged shard is rebuilt, with every one after it
            kept.append(shard)
    builder = _Builder(folder, header, shard_strings, kept, old)
    for raw in _batches(chunks, ENCODE_STRINGS):
        builder.feed(raw, tokenizer)
    if builder.seen < builder.skip:
        raise DataError(
            f"the input ends after {builder.seen:,} strings but the finished shards cover {builder.skip:,}: not the "
            "input they were built from; build into a new folder",
            str(folder),
        )
    builder.flush()
    n = len(builder.shards)
    for f in folder.iterdir():  # shards of an earlier, longer build
        m = _SHARD_FILE.fullmatch(f.name)
        if m and int(m.group(2)) >= n:
            f.unlink()
    return builder.finish()


# --------------------------------------------------------------------------- reading


class _Store:
    """What every view of one shard folder shares: the manifest and each shard's memory-mapped arrays."""

    def __init__(self, folder: Path, manifest: dict, arrays: list[dict[str, np.ndarray]]):
        self.folder, self.manifest, self.arrays = folder, manifest, arrays
        self.pad_id = int(manifest["tokenizer"]["pad_id"])
        self.shard_rows = np.concatenate([[0], np.cumsum([len(a["lengths"]) for a in arrays], dtype=np.int64)])
        self.file_digests = [shard["files"][k]["sha256"] for shard in manifest["shards"] for k in KINDS]

    @property
    def tokens(self) -> list[np.ndarray]:
        return [a["tokens"] for a in self.arrays]

    def locate(self, pos: np.ndarray) -> list[tuple[int, np.ndarray | slice, np.ndarray]]:
        """Global positions ``pos`` (any order) by shard: ``(shard, where in pos, positions in the shard)``."""
        pos = np.asarray(pos)
        if len(self.arrays) == 1:
            return [(0, slice(None), pos)] if len(pos) else []
        shard = np.searchsorted(self.shard_rows, pos, side="right") - 1
        groups = []
        for s in range(int(shard.min()), int(shard.max()) + 1) if len(pos) else ():
            sel = np.flatnonzero(shard == s)
            if len(sel):
                groups.append((s, sel, pos[sel] - self.shard_rows[s]))
        return groups

    def gather(self, kind: str, pos: np.ndarray, groups=None) -> np.ndarray:
        """``kind``'s values at global positions ``pos`` (any order), read from the shards' memory maps
        (``groups``: ``locate(pos)`` when the caller has it)."""
        out = np.empty(len(pos), self.arrays[0][kind].dtype if self.arrays else np.int64)
        for s, sel, local in self.locate(pos) if groups is None else groups:
            out[sel] = self.arrays[s][kind][local]
        return out


def open_shards(folder: str | os.PathLike, tokenizer=None, verify: bool = False) -> TokenShards:
    """The strings of a folder :func:`build` made, each kept once (its first occurrence), in order.

    The manifest is checked (a complete build; with ``tokenizer``, the same vocabulary and a block size at least
    the one built with) and every file it lists must exist with its recorded size (``verify``: and its sha256,
    which reads every byte); a missing, truncated or inconsistent file is a :class:`DataError` naming it. Every
    file is memory-mapped: opening reads no per-string array into memory.
    """
    folder = resolve(folder)
    manifest = _read_manifest(folder)
    if not manifest.get("complete"):
        raise DataError(
            f"an unfinished build ({len(manifest['shards'])} shards written): run token_shards.build again to finish it",
            str(folder),
        )
    if tokenizer is not None:
        if tokenizer_fingerprint(tokenizer) != manifest["tokenizer"]["fingerprint"]:
            raise DataError("built with another tokenizer (vocabulary fingerprints differ)", str(folder))
        if int(tokenizer.model_max_length) < manifest["block_size"]:
            raise DataError(
                f"holds strings of up to {manifest['block_size']} ids, more than the tokenizer's block size "
                f"{tokenizer.model_max_length}",
                str(folder),
            )
    dtypes = manifest["dtypes"]
    arrays = []
    for shard in manifest["shards"]:
        paths = {k: _check_file(folder, shard["files"][k], verify) for k in KINDS}
        got = {k: _map(paths[k]) for k in KINDS}
        shapes = {k: (shard["strings"],) for k in KINDS} | {"tokens": (shard["tokens"],)}
        for kind, array in got.items():
            if array.shape != shapes[kind] or array.dtype != np.dtype(dtypes[kind]):
                raise DataError(
                    f"holds {array.dtype} {array.shape}, the manifest says {dtypes[kind]} {shapes[kind]}",
                    str(paths[kind]),
                )
        n = shard["strings"]
        if n and int(got["starts"][-1]) + int(got["lengths"][-1]) != shard["tokens"]:
            raise DataError(f"its last string does not end the shard's {shard['tokens']:,} ids", str(paths["starts"]))
        arrays.append(got)
    first_rec = manifest.get("first")
    if first_rec is None:
        raise DataError(
            "the manifest lists no first.npy: an unfinished build; run token_shards.build again", str(folder)
        )
    first_path = _check_file(folder, first_rec, verify)
    first = _map(first_path)
    total = int(sum(s["strings"] for s in manifest["shards"]))
    if (
        first.shape != (first_rec["strings"],)
        or first.dtype != np.dtype(first_rec["dtype"])
        or (len(first) and (int(first[-1]) >= total or int(first[0]) != 0))
    ):
        raise DataError(f"does not hold the first occurrences of the folder's {total:,} strings", str(first_path))
    if not len(first):
        raise DataError("holds no string", str(folder))
    return TokenShards(_Store(folder, manifest, arrays), first)


def _map(path: Path) -> np.ndarray:
    """A read-only memory map of an ``.npy`` file; a :class:`DataError` naming it when it does not load as one.

    Advised random access where the platform can: a batch reads scattered strings (no read-ahead)."""
    try:
        array = np.load(path, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError) as exc:
        raise DataError(f"does not load as a shard array ({exc})", str(path)) from exc
    _advise(array, "MADV_RANDOM")
    return array


def _advise(array: np.ndarray, advice: str) -> None:
    """``madvise`` the whole memory map behind ``array`` (a no-op where the platform or array has none)."""
    raw = getattr(array, "_mmap", None)  # numpy's mmap.mmap behind an np.memmap
    if raw is not None and hasattr(mmap, advice):
        raw.madvise(getattr(mmap, advice))


def _release(arrays: Iterable[np.ndarray]) -> None:
    """Unmap the pages of these memory maps from the process (MADV_DONTNEED): they stay in the page cache and
    are read again on the next touch. Without it every page a batch or a pass touched (the kernel maps ~64 kB
    around each) would stay counted in the process's RSS, which would grow towards the corpus's size on disk."""
    for array in arrays:
        _advise(array, "MADV_DONTNEED")


def _first_occurrences(hashes: np.ndarray) -> np.ndarray:
    """Sorted positions (int64) of the first occurrence of each value: ``np.unique(..., return_index=True)``'s
    index, sorted, with one corpus-sized temporary fewer."""
    order = np.argsort(hashes, kind="stable")
    ordered = hashes[order]
    new = np.empty(len(hashes), bool)
    new[:1] = True
    np.not_equal(ordered[1:], ordered[:-1], out=new[1:])
    del ordered
    first = order[new]
    del order
    first.sort()
    return first


def _splitmix64(x: np.ndarray) -> np.ndarray:
    """SplitMix64's finaliser on a uint64 array (wrapping arithmetic)."""
    x = x + np.uint64(0x9E3779B97F4A7C15)
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


class TokenShards:
    """Rows of a shard folder (:func:`open_shards`): what :class:`cloudlib.engine.Encoded` offers the engine
    (``len``, ``lengths``, ``rows``, ``batch``) with the ids read from memory maps batch by batch."""

    def __init__(self, store: _Store, index: np.ndarray):
        self._store = store
        self._index = index
        self._lengths: torch.Tensor | None = None

    def __len__(self) -> int:
        return len(self._index)

    def __repr__(self) -> str:
        return f"TokenShards({len(self):,} strings of {self._store.folder})"

    @property
    def manifest(self) -> dict:
        return self._store.manifest

    @property
    def folder(self) -> Path:
        """The shard folder."""
        return self._store.folder

    @property
    def index(self) -> np.ndarray:
        """Positions of the rows among all the folder's strings (int64, a copy)."""
        return self._index.astype(np.int64)

    @property
    def hashes(self) -> np.ndarray:
        """:func:`string_hashes` of the rows (uint64)."""
        return self._store.gather("hashes", self._index)

    @property
    def lengths(self) -> torch.Tensor:
        """Ids per row, [CLS] and [SEP] included (int16: 2 bytes a string; block sizes are far below 32,768)."""
        if self._lengths is None:
            out = np.empty(len(self), np.int16)
            for a in range(0, len(self), _BLOCK):
                out[a : a + _BLOCK] = self._store.gather("lengths", self._index[a : a + _BLOCK])
                _release(x["lengths"] for x in self._store.arrays)
            _release([self._index])
            self._lengths = torch.from_numpy(out)
        return self._lengths

    def rows(self, index) -> TokenShards:
        """The rows ``index`` (positions or a boolean mask; array, list or tensor) as a new view."""
        return TokenShards(self._store, np.asarray(self._index)[np.asarray(index)])

    def batch(self, index) -> tuple[torch.Tensor, torch.Tensor]:
        """(input_ids, attention_mask), int64 ``[len(index), width]``, for rows ``index``: right-padded with the pad
        id to the longest of them, as ``engine.encode(tokenizer, strings).batch(index)`` gives."""
        st = self._store
        pos = np.asarray(self._index)[np.asarray(index)].astype(np.int64)
        groups = st.locate(pos)
        lengths = st.gather("lengths", pos, groups).astype(np.int64)
        starts = st.gather("starts", pos, groups).astype(np.int64)
        width = int(lengths.max()) if len(pos) else 0
        mask = np.arange(width) < lengths[:, None]
        ids = np.full((len(pos), width), st.pad_id, dtype=np.int64)
        for s, sel, _ in groups:
            m = mask[sel]
            gather = (starts[sel][:, None] + np.arange(width))[m]
            part = ids[sel]
            part[m] = st.arrays[s]["tokens"][gather]
            ids[sel] = part
        _release(st.arrays[s][k] for s, _, _ in groups for k in ("tokens", "lengths", "starts"))
        return torch.from_numpy(ids), torch.from_numpy(mask.astype(np.int64))

    def split(self, val_fraction: float, seed: int = 0) -> tuple[TokenShards, TokenShards]:
        """(train, validation) views: a row is a validation row iff SplitMix64(hash XOR a constant of ``seed``)
        / 2**64 < ``val_fraction``, so the split of a string depends on it and the seed only (not on order,
        sharding or the other strings)."""
        if not 0 <= val_fraction <= 1:
            raise ValueError(f"val_fraction must be in [0, 1], not {val_fraction}")
        key = _splitmix64(np.array([seed & _MASK64], dtype=np.uint64))
        val = np.ones(len(self), bool)
        if val_fraction < 1:
            cut = np.uint64(int(val_fraction * 2**64))
            for a in range(0, len(self), _BLOCK):  # in blocks: no corpus-sized temporaries
                val[a : a + _BLOCK] = _splitmix64(self._store.gather("hashes", self._index[a : a + _BLOCK]) ^ key) < cut
                _release(x["hashes"] for x in self._store.arrays)
        train, val = self.rows(~val), self.rows(val)
        _release([self._index])
        return train, val

    def materialize(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(ids ``[N, longest]`` int64, right-padded; lengths int64) of every row, in memory: for small sets."""
        ids, _ = self.batch(np.arange(len(self)))
        return ids, self.lengths.clone()

    def digest(self) -> str:
        """A short sha256 identifying these rows: the folder's files (their recorded sha256) and the row index."""
        h = hashlib.sha256()
        for digest in self._store.file_digests:
            h.update(digest.encode())
        for a in range(0, len(self), _BLOCK):  # the positions as int64, block by block
            h.update(np.ascontiguousarray(self._index[a : a + _BLOCK], dtype="<i8"))
        return h.hexdigest()[:16]
