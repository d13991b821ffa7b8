"""cloudlib.token_shards: a corpus tokenized once into sharded arrays, and cloudlib.corpus.iter_corpus, on the
authors' 10 k SCOPE sample."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import need, need_call

from cloudlib import engine, registry, token_shards
from cloudlib.config import TrainConfig
from cloudlib.corpus import BLOCK_TOKENS, iter_corpus, n_tokens, read_corpus
from cloudlib.errors import BlockSizeError, DataError
from cloudlib.tokenizer import build_vocab, from_bert_vocab, make_tokenizer

SHARD = 1_500
LONG = " ".join(["Na 0.5"] * BLOCK_TOKENS)  # 124 words: more than the block size


@pytest.fixture(scope="module")
def tok():
    return make_tokenizer()


@pytest.fixture(scope="module")
def inputs() -> list[str]:
    """~5,000 strings: 4,800 of the sample, 200 repeats of earlier ones (some with surrounding spaces), a blank and
    an over-long string, in a seeded order that keeps the first 4,800 first."""
    sample = pd.read_csv(need("cloud/pretrain_cloud_10k.csv"))["cloud"].tolist()
    rng = np.random.default_rng(0)
    repeats = [sample[i] for i in rng.choice(4_800, 200, replace=False)]
    repeats[:20] = [f"  {s}\t" for s in repeats[:20]]
    tail = repeats + ["   ", LONG]
    return sample[:4_800] + [tail[i] for i in rng.permutation(len(tail))]


def kept(strings: list[str]) -> list[str]:
    """What the shards should hold once opened: stripped, non-blank, fitting, first occurrences."""
    return list(dict.fromkeys(t for t in (s.strip() for s in strings) if t and n_tokens(t) <= BLOCK_TOKENS))


def chunked(strings: list[str], size: int):
    return (strings[i : i + size] for i in range(0, len(strings), size))


@pytest.fixture(scope="module")
def built(tmp_path_factory, inputs, tok):
    folder = tmp_path_factory.mktemp("shards")
    manifest = token_shards.build(chunked(inputs, 700), tok, folder, shard_strings=SHARD, source="test")
    return folder, manifest


def test_batches_equal_engine_encode(built, inputs, tok):
    """Every batch of random rows equals engine.encode's of the deduplicated kept strings, ids over 255 included;
    the manifest counts what was read, dropped and written."""
    folder, manifest = built
    strings = kept(inputs)
    enc = engine.encode(tok, strings)
    data = token_shards.open_shards(folder, tok, verify=True)
    assert len(data) == len(strings) and torch.equal(data.lengths, enc.lengths)
    assert data.lengths.dtype == torch.int16  # 2 bytes a string; the engine's batches are the same as with int64
    for epoch in (0, 3):
        mine = engine.epoch_batches(data.lengths, 64, epoch, 7, 20)
        theirs = engine.epoch_batches(enc.lengths, 64, epoch, 7, 20)
        assert all(torch.equal(a, b) for a, b in zip(mine, theirs)) and len(mine) == len(theirs)
    g = np.random.default_rng(1)
    for size in (1, 2, 64, 257, len(strings)):
        idx = torch.as_tensor(g.choice(len(strings), size, replace=False))
        got, want = data.batch(idx), enc.batch(idx)
        for a, b in zip(got, want):
            assert a.dtype == b.dtype == torch.int64 and torch.equal(a, b)
    first, second = g.choice(len(strings), 900, replace=False), g.choice(900, 300, replace=False)
    idx = torch.arange(0, 300, 7)
    assert all(
        torch.equal(a, b)
        for a, b in zip(data.rows(first).rows(second).batch(idx), enc.rows(first).rows(second).batch(idx))
    )
    ids, lengths = data.materialize()
    assert torch.equal(ids, enc.ids) and torch.equal(lengths, enc.lengths)

    written = [t for t in (s.strip() for s in inputs) if t and n_tokens(t) <= BLOCK_TOKENS]  # duplicates included
    assert manifest["complete"] and manifest["source"] == "test" and manifest["shard_strings"] == SHARD
    assert manifest["totals"]["inputs"] == len(inputs) and manifest["totals"]["strings"] == len(written)
    assert manifest["dropped"] == {"blank": 1, "too_long": 1}
    assert [s["strings"] for s in manifest["shards"]] == [SHARD] * 3 + [len(written) - 3 * SHARD]
    assert manifest["totals"]["tokens"] == sum(n_tokens(s) + 2 for s in written)  # one id a word, [CLS], [SEP]
    assert sum(s["inputs"] for s in manifest["shards"]) == len(inputs)


def test_vocabulary_ids_over_255_are_stored_in_uint16(built, tok):
    """Element and fraction ids of the closed vocabulary exceed 255; the authors' 30,522 ids fit uint16 too."""
    folder, manifest = built
    data = token_shards.open_shards(folder)
    tokens = data._store.tokens
    assert all(t.dtype == np.uint16 for t in tokens) and max(int(t.max()) for t in tokens) == len(tok) - 1 > 255
    assert manifest["dtypes"] == {"tokens": "<u2", "lengths": "|u1", "starts": "<u4", "hashes": "<u8"}
    assert token_shards.id_dtype(30_522) == np.uint16 and token_shards.id_dtype(1 << 16) == np.uint16
    assert token_shards.id_dtype((1 << 16) + 1) == np.int32


def test_the_authors_tokenizer_fraction_ids_and_word_pieces(tmp_path, inputs):
    """The authors' released WordPiece tokenizer: fraction ids 463-563 are stored right, and a string whose words
    fit the block size but whose word pieces do not is found and dropped (block size 40 here)."""
    tok = from_bert_vocab(need_call(registry.authors_tokenizer_dir), block_size=40)
    strings = inputs[:1_000] + [s + " Na0.5Cl0.5" for s in inputs[:300]]  # one word, four ids: Na 0.5 Cl 0.5

    def fits(s):
        try:
            tok.encode_batch([s])
        except BlockSizeError:
            return False
        return True

    ok = [s for s in strings if fits(s)]
    assert any(not fits(s) and n_tokens(s) + 2 <= 40 for s in strings)  # too long only once split into pieces
    manifest = token_shards.build(chunked(strings, 250), tok, tmp_path, shard_strings=400)
    assert manifest["dropped"] == {"blank": 0, "too_long": len(strings) - len(ok)}
    data = token_shards.open_shards(tmp_path, tok)
    want = engine.encode(tok, list(dict.fromkeys(ok)))
    idx = torch.arange(len(want))
    assert len(data) == len(want) and all(torch.equal(a, b) for a, b in zip(data.batch(idx), want.batch(idx)))
    tokens = np.concatenate(data._store.tokens)
    assert tokens.dtype == np.uint16 and 463 <= tokens.max() <= 563 and (tokens >= 463).sum() > 1_000
    assert data.manifest["tokenizer"]["pad_id"] == 1 and data.manifest["tokenizer"]["vocab_size"] == 564


def test_every_per_string_array_is_memory_mapped(built):
    """Opening reads no per-string array into memory: ids, lengths, starts, hashes and the deduplicated index
    (written at build time) are memory maps; first.npy equals the first occurrences of the shards' hashes."""
    folder, manifest = built
    data = token_shards.open_shards(folder)
    arrays = data._store.arrays
    assert len(arrays) == 4 and all(isinstance(a[k], np.memmap) for a in arrays for k in token_shards.KINDS)
    assert isinstance(data._index, np.memmap) and data._index.dtype == np.dtype("<u4")
    hashes = np.concatenate([a["hashes"] for a in arrays])
    _, first = np.unique(hashes, return_index=True)
    assert data.index.tolist() == sorted(first.tolist()) and manifest["first"]["strings"] == len(first)
    starts = np.concatenate([[0], np.cumsum(arrays[0]["lengths"], dtype=np.int64)[:-1]])
    assert np.array_equal(arrays[0]["starts"], starts)


def _mapped_kb(folder) -> dict[str, int]:
    """Resident kB of this process's mappings of files in ``folder`` (Linux /proc/self/smaps)."""
    out, name = {}, None
    with open("/proc/self/smaps") as f:
        for line in f:
            head = line.split()
            if "-" in head[0] and len(head) >= 5 and ":" in head[3]:  # a mapping's first line
                name = head[5] if len(head) > 5 and head[5].startswith(str(folder)) else None
            elif name and head[0] == "Rss:":
                out[Path(name).name] = out.get(Path(name).name, 0) + int(head[1])
    return out


@pytest.mark.skipif(not Path("/proc/self/smaps").exists(), reason="needs Linux /proc/self/smaps")
def test_batches_and_passes_leave_no_pages_mapped(built):
    """The pages a split, the lengths and a batch read are released (MADV_DONTNEED) once read: the process's RSS
    does not grow towards the corpus's size on disk as training reads it; the maps still read correctly after."""
    folder = built[0]
    data = token_shards.open_shards(folder)
    train, val = data.split(0.1, 0)
    lengths = train.lengths
    first = [train.batch(np.arange(i, len(train), 97)[:128]) for i in range(20)]
    assert sum(_mapped_kb(folder).values()) == 0, _mapped_kb(folder)
    again = [train.batch(np.arange(i, len(train), 97)[:128]) for i in range(20)]
    assert all(torch.equal(a[0], b[0]) for a, b in zip(first, again)) and torch.equal(lengths, train.lengths)


def test_epoch_order_is_the_one_of_the_list_version():
    """epoch_batches sorts its length windows in place: the batches are those of the earlier version that
    concatenated sorted copies (published runs keep their data order), and steps_per_epoch counts them."""
    lengths = torch.randint(3, 60, (10_007,), generator=torch.Generator().manual_seed(1))

    def listed(lengths, batch_size, epoch, seed, bucket_batches):
        g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
        perm = torch.randperm(len(lengths), generator=g)
        if bucket_batches > 0:
            window = batch_size * bucket_batches
            perm = torch.cat([c[torch.argsort(lengths[c], stable=True)] for c in perm.split(window)])
        batches = list(perm.split(batch_size))
        return [batches[i] for i in torch.randperm(len(batches), generator=g).tolist()]

    for bs, bucket in [(64, 20), (128, 50), (100, 0), (7, 3)]:
        mine, theirs = engine.epoch_batches(lengths, bs, 2, 5, bucket), listed(lengths, bs, 2, 5, bucket)
        assert len(mine) == len(theirs) and all(torch.equal(a, b) for a, b in zip(mine, theirs))
        cfg = TrainConfig(batch_size=bs, bucket_batches=bucket)
        assert engine.steps_per_epoch(len(lengths), lengths, cfg) == len(theirs)
        assert engine.steps_per_epoch(len(lengths), lengths, cfg, world=3) == len(theirs) // 3


def test_duplicates_keep_their_first_occurrence(tmp_path, inputs, tok):
    """Rows come in the order of their strings' first occurrences, across shards; blanks and spaces do not count."""
    a, b, c, d = inputs[:4]
    stream = [[a, b, f" {a} "], ["", c, b], [a, d, c]]
    token_shards.build(stream, tok, tmp_path, shard_strings=2)
    data = token_shards.open_shards(tmp_path, tok)
    assert data.index.tolist() == [0, 1, 3, 6]  # positions among the 8 written strings (the blank is not written)
    assert data.hashes.tolist() == token_shards.string_hashes([a, b, c, d]).tolist()
    want = engine.encode(tok, [a, b, c, d])
    assert all(torch.equal(x, y) for x, y in zip(data.batch([3, 0, 2]), want.batch(torch.tensor([3, 0, 2]))))


def test_an_interrupted_build_resumes_without_rewriting_finished_shards(tmp_path, inputs, tok, built):
    """A stream that fails after two shards leaves them and a manifest marked unfinished; building again over the
    whole input (chunked otherwise) keeps them untouched and ends with the one-shot build's files and manifest."""
    folder = tmp_path / "resumed"

    def failing():
        for i, chunk in enumerate(chunked(inputs, 500)):
            if i == 7:  # 3,500 strings read: two shards of 1,500 written, the third being filled
                raise RuntimeError("connection lost")
            yield chunk

    with pytest.raises(RuntimeError, match="connection lost"):
        token_shards.build(failing(), tok, folder, shard_strings=SHARD, source="test")
    partial = token_shards._read_manifest(folder)
    assert not partial["complete"] and len(partial["shards"]) == 2
    with pytest.raises(DataError, match="unfinished build"):
        token_shards.open_shards(folder)
    first = {f.name: (f.stat().st_ino, f.stat().st_mtime_ns) for f in folder.glob("*-0000[01].npy")}
    assert len(first) == 8

    with pytest.raises(DataError, match="another shard size"):
        token_shards.build(chunked(inputs, 500), tok, folder, shard_strings=SHARD + 1)
    with pytest.raises(DataError, match="input differs"):
        token_shards.build(chunked(inputs[1:], 500), tok, folder, shard_strings=SHARD)
    with pytest.raises(DataError, match="input ends after 2,000"):
        token_shards.build(chunked(inputs[:2_000], 500), tok, folder, shard_strings=SHARD)

    manifest = token_shards.build(chunked(inputs, 333), tok, folder, shard_strings=SHARD, source="test")
    one_shot, expected = built
    assert manifest == expected == token_shards._read_manifest(folder)
    names = sorted(f.name for f in folder.iterdir())
    assert names == sorted(f.name for f in one_shot.iterdir())
    assert all((folder / n).read_bytes() == (one_shot / n).read_bytes() for n in names)
    assert {n: ((folder / n).stat().st_ino, (folder / n).stat().st_mtime_ns) for n in first} == first
    # a finished build run again over the same input rewrites nothing
    before = {f.name: (f.stat().st_ino, f.stat().st_mtime_ns) for f in folder.glob("*.npy")}
    assert token_shards.build(chunked(inputs, 999), tok, folder, shard_strings=SHARD, source="test") == expected
    assert {f.name: (f.stat().st_ino, f.stat().st_mtime_ns) for f in folder.glob("*.npy")} == before


def test_damaged_folders_and_other_tokenizers_are_named(tmp_path, built, tok):
    """A missing or truncated file is a DataError naming it; a corrupted one with verify=True; another vocabulary
    (two ids swapped) is refused when opening and when building into the folder."""
    src = built[0]

    def copy(name):
        dest = tmp_path / name
        shutil.copytree(src, dest)
        return dest

    missing = copy("missing")
    (missing / "tokens-00001.npy").unlink()
    with pytest.raises(DataError, match="tokens-00001.npy.*missing"):
        token_shards.open_shards(missing)
    truncated = copy("truncated")
    path = truncated / "tokens-00002.npy"
    path.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(DataError, match="tokens-00002.npy.*truncated"):
        token_shards.open_shards(truncated)
    corrupt = copy("corrupt")
    path = corrupt / "hashes-00000.npy"
    raw = bytearray(path.read_bytes())
    raw[-1] ^= 0xFF
    path.write_bytes(bytes(raw))
    token_shards.open_shards(corrupt)  # sizes only by default
    with pytest.raises(DataError, match="hashes-00000.npy.*sha256"):
        token_shards.open_shards(corrupt, verify=True)
    gone = copy("gone")
    (gone / "first.npy").unlink()
    with pytest.raises(DataError, match="first.npy.*missing"):
        token_shards.open_shards(gone)
    lying = copy("lying")  # a first.npy of the right size whose positions run past the folder's strings
    first = np.load(lying / "first.npy")
    np.save(lying / "first.npy", first + np.uint32(len(first)))
    with pytest.raises(DataError, match="first.npy.*first occurrences"):
        token_shards.open_shards(lying)
    shifted = copy("shifted")  # starts that do not end the shard where its ids end
    starts = np.load(shifted / "starts-00001.npy")
    np.save(shifted / "starts-00001.npy", starts + np.uint32(1))
    with pytest.raises(DataError, match="starts-00001.npy.*does not end"):
        token_shards.open_shards(shifted)
    with pytest.raises(DataError, match="no manifest.json"):
        token_shards.open_shards(tmp_path)
    with pytest.raises(DataError, match="no such token-shard folder"):
        token_shards.open_shards(tmp_path / "nowhere")

    vocab = build_vocab()
    i, j = vocab.index("Na"), vocab.index("Cl")
    vocab[i], vocab[j] = vocab[j], vocab[i]
    (tmp_path / "bert").mkdir()
    (tmp_path / "bert" / "vocab.txt").write_text("\n".join(vocab) + "\n")
    other = from_bert_vocab(tmp_path / "bert")
    assert token_shards.tokenizer_fingerprint(other) != token_shards.tokenizer_fingerprint(tok)
    assert token_shards.tokenizer_fingerprint(make_tokenizer()) == token_shards.tokenizer_fingerprint(tok)
    with pytest.raises(DataError, match="another tokenizer"):
        token_shards.open_shards(src, other)
    with pytest.raises(DataError, match="another tokenizer"):
        token_shards.build([["Na 0.5"]], other, copy("other"), shard_strings=SHARD)


def test_a_folder_of_the_first_format_is_named_and_rebuilt(tmp_path, inputs, tok, built):
    """A version 1 folder (no starts, no first.npy) is refused by open_shards with the way out; build over the same
    input rebuilds it into the one-shot build's files."""
    folder = tmp_path / "v1"
    shutil.copytree(built[0], folder)
    manifest = token_shards._read_manifest(folder)
    manifest["version"] = 1
    for shard in manifest["shards"]:
        (folder / shard["files"].pop("starts")["name"]).unlink()
    (folder / manifest.pop("first")["name"]).unlink()
    (folder / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(DataError, match="version 1; this cloudlib reads 2.*rebuilds"):
        token_shards.open_shards(folder)
    assert token_shards.build(chunked(inputs, 700), tok, folder, shard_strings=SHARD, source="test") == built[1]
    assert sorted(f.name for f in folder.iterdir()) == sorted(f.name for f in built[0].iterdir())
    assert token_shards.open_shards(folder).digest() == token_shards.open_shards(built[0]).digest()


def test_split_is_by_hash(tmp_path, built, inputs, tok):
    """Disjoint, complete, close to the fraction asked, seeded, and the same strings whatever the chunking."""
    data = token_shards.open_shards(built[0], tok)
    train, val = data.split(0.2, seed=3)
    t, v = set(train.index.tolist()), set(val.index.tolist())
    assert not t & v and t | v == set(data.index.tolist())
    assert abs(len(val) / len(data) - 0.2) < 0.03
    assert train.index.tolist() == sorted(t) and len(train.lengths) == len(train)
    assert set(data.split(0.2, seed=4)[1].index.tolist()) != v
    assert len(data.split(0.0)[1]) == 0 and len(data.split(1.0)[0]) == 0
    again = token_shards.build(chunked(inputs, 123), tok, tmp_path / "again", shard_strings=SHARD)
    assert again == built[1] | {"source": ""}
    other = token_shards.open_shards(tmp_path / "again").split(0.2, seed=3)[1]
    assert other.index.tolist() == val.index.tolist() and other.digest() == val.digest()
    resharded = token_shards.build(chunked(inputs, 611), tok, tmp_path / "resharded", shard_strings=1_000)
    val2 = token_shards.open_shards(tmp_path / "resharded").split(0.2, seed=3)[1]
    assert val2.hashes.tolist() == val.hashes.tolist() and len(resharded["shards"]) == 5
    assert val2.digest() != val.digest() != train.digest()  # other files, other rows
    assert all(torch.equal(a, b) for a, b in zip(val2.materialize(), val.materialize()))


def test_iter_corpus_streams_what_read_corpus_reads(tmp_path, inputs, tok):
    """A folder of CSV, CSV.gz and Parquet shards streams, in chunks, the stripped non-blank strings read_corpus
    deduplicates and filters; shards built from the stream hold read_corpus's strings; bad inputs are named."""
    shards = tmp_path / "shards"
    shards.mkdir()
    part0 = inputs[:30] + ["", LONG, "  " + inputs[3] + " "]
    pd.DataFrame({"scope": part0, "id": range(len(part0))}).to_csv(shards / "part-000.csv", index=False)
    pd.DataFrame({"cloud": inputs[25:60]}).to_csv(shards / "part-001.csv.gz", index=False)
    pd.DataFrame({"scope": inputs[55:70]}).to_parquet(shards / "part-002.parquet")
    (shards / "notes.txt").write_text("not a shard")
    chunks = list(iter_corpus(shards, chunk_strings=7))
    flat = [s for c in chunks for s in c]
    assert all(0 < len(c) <= 7 for c in chunks)
    assert flat == inputs[:30] + [LONG, inputs[3]] + inputs[25:60] + inputs[55:70]
    strings, _ = read_corpus(shards)
    assert strings == list(dict.fromkeys(s for s in flat if n_tokens(s) <= BLOCK_TOKENS))
    assert [s for c in iter_corpus(shards / "part-001.csv.gz") for s in c] == inputs[25:60]
    pd.DataFrame({"cloud": [inputs[0], None, " ", inputs[1]]}).to_parquet(tmp_path / "nulls.parquet")
    assert list(iter_corpus(tmp_path / "nulls.parquet")) == [inputs[:2]]  # null cells are no strings

    manifest = token_shards.build(iter_corpus(shards, chunk_strings=10), tok, tmp_path / "tokens", shard_strings=20)
    assert manifest["dropped"] == {"blank": 0, "too_long": 1} and manifest["totals"]["inputs"] == len(flat)
    data = token_shards.open_shards(tmp_path / "tokens", tok)
    want = engine.encode(tok, strings)
    idx = torch.arange(len(strings))
    assert len(data) == len(strings) and all(torch.equal(a, b) for a, b in zip(data.batch(idx), want.batch(idx)))

    with pytest.raises(DataError, match="no such corpus"):
        iter_corpus(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no corpus shards"):
        iter_corpus(tmp_path / "empty")
    pd.DataFrame({"formula": ["NaCl"]}).to_csv(tmp_path / "wrong.csv", index=False)
    pd.DataFrame({"formula": ["NaCl"]}).to_parquet(tmp_path / "wrong.parquet")
    for name in ("wrong.csv", "wrong.parquet"):
        with pytest.raises(DataError, match=f"{name}: no SCOPE column.*formula"):
            list(iter_corpus(tmp_path / name))
    (tmp_path / "bad.parquet").write_text("not parquet")
    with pytest.raises(DataError, match="bad.parquet: does not read"):
        list(iter_corpus(tmp_path / "bad.parquet"))
