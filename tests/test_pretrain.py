"""Pre-training: masking, batching, schedule, kill-and-resume, torchrun DDP, portable checkpoints."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pandas as pd
import pytest
import torch
from conftest import NACL, need

from benchmarks.authors import write_authors_style_vocab
from cloudlib import config
from cloudlib import model as cm
from cloudlib.cli import main
from cloudlib.engine import Encoded, encode, epoch_batches, lr_lambda
from cloudlib.pretrain import mask_tokens, split_strings
from cloudlib.tokenizer import make_tokenizer

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def strings() -> list[str]:
    return pd.read_csv(need("cloud/pretrain_cloud_10k.csv"))["cloud"].tolist()


# --------------------------------------------------------------------------- pieces


def test_masking_follows_bert(strings):
    tok = make_tokenizer()
    enc = encode(tok, strings[:4000])
    ids, mask = enc.batch(torch.arange(4000))
    inputs, labels = mask_tokens(ids, mask, tok, 0.15, torch.Generator().manual_seed(0))
    selected = labels != -100
    special = (ids == tok.cls_token_id) | (ids == tok.sep_token_id) | (ids == tok.pad_token_id)
    assert not (selected & special).any() and not (selected & (mask == 0)).any()
    rate = selected.sum() / (mask.bool() & ~special).sum()
    assert abs(float(rate) - 0.15) < 0.005
    sel_in = inputs[selected]
    to_mask = (sel_in == tok.mask_token_id).float().mean()
    kept = (sel_in == ids[selected]).float().mean()
    assert abs(float(to_mask) - 0.8) < 0.02 and abs(float(kept) - 0.1) < 0.02  # 10 % random, 10 % kept
    assert (labels[selected] == ids[selected]).all()
    assert (inputs[~selected] == ids[~selected]).all()
    # a one-token string still gets a masked position
    tiny = Encoded(torch.tensor([[tok.cls_token_id, 7, tok.sep_token_id]]), torch.tensor([3]))
    _, lab = mask_tokens(*tiny.batch(torch.tensor([0])), tok, 0.15, torch.Generator().manual_seed(1))
    assert (lab != -100).sum() == 1


def test_batches_are_deterministic_bucketed_and_complete(strings):
    enc = encode(make_tokenizer(), strings[:2000])
    a = epoch_batches(enc.lengths, 64, epoch=3, seed=0, bucket_batches=10)
    b = epoch_batches(enc.lengths, 64, epoch=3, seed=0, bucket_batches=10)
    c = epoch_batches(enc.lengths, 64, epoch=4, seed=0, bucket_batches=10)
    assert all(x.equal(y) for x, y in zip(a, b)) and not all(x.equal(y) for x, y in zip(a, c))
    assert sorted(torch.cat(a).tolist()) == list(range(2000))
    # bucketing: padded width per batch well below the unbucketed case
    width = lambda bs: sum(int(enc.lengths[i].max()) * len(i) for i in bs)  # noqa: E731
    assert width(a) < 0.93 * width(epoch_batches(enc.lengths, 64, 3, 0, bucket_batches=0))


def test_split_and_schedule():
    s = [f"s{i}" for i in range(1000)]
    tr, va = split_strings(s, 0.2, seed=0)
    assert len(va) == 200 and len(tr) == 800 and not set(tr) & set(va)
    assert split_strings(s, 0.2, seed=0) == (tr, va)
    f = lr_lambda(10, 100)
    assert f(0) == pytest.approx(0.1) and f(9) == pytest.approx(1.0)
    assert f(55) == pytest.approx(0.5, abs=1e-9) and f(100) == pytest.approx(0.0, abs=1e-12)


def test_model_sizes_and_flops():
    tok = make_tokenizer()
    base = cm.build_mlm("base", tok)
    c = base.config
    assert (c.num_hidden_layers, c.num_attention_heads, c.hidden_size, c.intermediate_size) == (12, 12, 768, 3072)
    assert c.max_position_embeddings == 64 and c.type_vocab_size == 1 and c.pad_token_id == 0
    assert c._attn_implementation == "sdpa"
    n = cm.n_params(base)
    assert 85e6 < n < 86e6  # 12 x (4 d^2 + 2 d ffn) + layer norms + MLM transform
    assert cm.flops_per_token(cm.PRESETS["base"], n, 28) == pytest.approx(6 * n + 12 * 12 * 28 * 768)


# --------------------------------------------------------------------------- runs


def _pretrain_cmd(out, *extra, steps=60):
    sets = f"--set max_steps={steps} --set ckpt_every=10 --set eval_every=30 --set threads=1".split()
    return [sys.executable, "-m", "cloudlib", "pretrain", "--preset", "smoke", "--out", str(out), "-q", *sets, *extra]


def _ckpt_step(path: Path) -> int:
    try:
        return torch.load(path, map_location="cpu", weights_only=False)["state"]["step"]
    except Exception:  # not there yet, or being replaced
        return -1


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory, strings):
    """An uninterrupted smoke pre-training run (module-scoped: later tests reuse its model)."""
    out = tmp_path_factory.mktemp("uninterrupted")
    r = subprocess.run(_pretrain_cmd(out), capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0, r.stderr[-2000:]
    return out


def test_killed_mid_epoch_then_resumed_matches_uninterrupted(smoke_run, tmp_path):
    """SIGKILL after a checkpoint mid-epoch, resume: the final losses equal the uninterrupted run's."""
    out = tmp_path / "killed"
    proc = subprocess.Popen(_pretrain_cmd(out), cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while _ckpt_step(out / "checkpoint.pt") < 20 and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed_at = _ckpt_step(out / "checkpoint.pt")
    assert proc.returncode == -signal.SIGKILL and 20 <= killed_at < 60, (proc.returncode, killed_at)
    steps_per_epoch = json.loads((out / "config.json").read_text())["total_steps"]
    assert not (out / "summary.json").exists()

    r = subprocess.run(_pretrain_cmd(out, "--resume"), capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0, r.stderr[-2000:]
    resumed = json.loads((out / "summary.json").read_text())["final"]
    reference = json.loads((smoke_run / "summary.json").read_text())["final"]
    assert steps_per_epoch == 60 and resumed["step"] == reference["step"] == 60
    # bit-for-bit on CPU with a fixed thread count; the tolerance only absorbs float printing
    for key in ("train_loss", "val_loss", "val_acc", "grad_norm"):
        assert resumed[key] == pytest.approx(reference[key], rel=1e-6, abs=1e-7), key
    logs = [json.loads(x) for x in (out / "log.jsonl").read_text().splitlines()]
    ref_logs = [json.loads(x) for x in (smoke_run / "log.jsonl").read_text().splitlines()]
    assert [x["step"] for x in logs] == [x["step"] for x in ref_logs] == [30, 60]
    for row, ref in zip(logs, ref_logs):  # the step-30 interval straddles the kill: its mean must agree too
        for key in ("train_loss", "train_acc", "val_loss", "lr"):
            assert row[key] == pytest.approx(ref[key], rel=1e-6, abs=1e-7), (row["step"], key)


def test_resume_refuses_another_configuration(smoke_run, tmp_path):
    import shutil

    out = tmp_path / "copy"
    shutil.copytree(smoke_run, out)
    r = subprocess.run(_pretrain_cmd(out, "--resume", "--set", "lr=0.1"), capture_output=True, text=True, cwd=ROOT)
    assert r.returncode != 0 and "another configuration" in r.stderr


def _torchrun(cmd: list[str], timeout: int = 240) -> None:
    """Run a torchrun command (1 thread per rank) in its own process group: a hang kills launcher and workers."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT, env=env, start_new_session=True
    )
    try:
        _, stderr = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        _, stderr = proc.communicate()
        pytest.fail(f"torchrun did not finish in {timeout} s: {stderr[-3000:]}")
    assert proc.returncode == 0, stderr[-3000:]


def test_torchrun_two_processes_on_cpu(tmp_path, strings):
    out = tmp_path / "ddp"
    launch = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    sets = "--set max_steps=12 --set eval_every=6 --set ckpt_every=6".split()
    cmd = [*launch, "-m", "cloudlib", "pretrain", "--preset", "smoke", "--out", str(out), "-q", *sets]
    _torchrun(cmd)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["steps"] == 12
    assert json.loads((out / "config.json").read_text())["world_size"] == 2
    assert (out / "model" / "model.safetensors").exists()


def test_saved_model_loads_with_plain_transformers(smoke_run):
    """No cloudlib import: AutoModelForMaskedLM + AutoTokenizer give the same logits as cloudlib's loader."""
    folder = smoke_run / "model"
    code = f"""
import json, sys, torch
from transformers import AutoModelForMaskedLM, AutoTokenizer
assert not any(m.startswith("cloudlib") for m in sys.modules)
tok = AutoTokenizer.from_pretrained({str(folder)!r})
model = AutoModelForMaskedLM.from_pretrained({str(folder)!r}).eval()
enc = tok([{NACL!r}], return_tensors="pt")
with torch.no_grad():
    print(json.dumps(model(**enc).logits[0, 1:4, :5].tolist()))
"""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd="/", env=env)
    assert r.returncode == 0, r.stderr[-2000:]
    plain = torch.tensor(json.loads(r.stdout.strip().splitlines()[-1]))
    model, tok = cm.load_mlm(folder)
    with torch.no_grad():
        ours = model.eval()(**tok([NACL], return_tensors="pt")).logits[0, 1:4, :5]
    assert torch.allclose(plain, ours, atol=1e-5)


def test_authors_released_layout(tmp_path, strings):
    """A locally built model in the authors' layout (30,522-row embedding, WordPiece vocab, pad id 0)."""
    from transformers import BertConfig, BertForMaskedLM
    from transformers.models.bert.tokenization_bert_legacy import BertTokenizerLegacy

    ckpt = tmp_path / "hub" / "ckpt"
    write_authors_style_vocab(strings[:2000], ckpt, vocab_size=300)
    cfg = BertConfig(
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=128,
        max_position_embeddings=64,
        type_vocab_size=1,
    )  # vocab_size left at 30522, as the authors did
    torch.manual_seed(0)
    reference = BertForMaskedLM(cfg).eval()
    reference.save_pretrained(ckpt)
    model, tok = cm.load_authors_checkpoint(str(tmp_path / "hub"), subfolder="ckpt")
    assert model.config.vocab_size == 30522 and model.config.pad_token_id == 0
    legacy = BertTokenizerLegacy.from_pretrained(str(ckpt), do_lower_case=False)
    batch = strings[2000:2100]
    assert tok(batch)["input_ids"] == legacy(batch)["input_ids"]
    enc = tok(batch[:4], padding=True, return_tensors="pt")
    with torch.no_grad():
        assert torch.allclose(model.eval()(**enc).logits, reference(**enc).logits, atol=1e-5)


def test_shipped_laptop_encoder_is_trained_and_portable(tmp_path):
    """models/cloud-laptop (committed) loads without cloudlib and fills in masked tokens of real strings."""
    folder = ROOT / "models" / "cloud-laptop"
    assert (folder / "model.safetensors").is_file(), "the laptop encoder ships with the repository"
    strings = pd.read_csv(need("cloud/finetune_dielectric_test.csv"))["scope"].tolist()[:300]
    (tmp_path / "strings.json").write_text(json.dumps(strings))
    code = f"""
import json, sys, torch
from transformers import AutoModelForMaskedLM, AutoTokenizer
assert not any(m.startswith("cloudlib") for m in sys.modules)
tok = AutoTokenizer.from_pretrained({str(folder)!r})
model = AutoModelForMaskedLM.from_pretrained({str(folder)!r}).eval()
strings = json.load(open({str(tmp_path / "strings.json")!r}))
g = torch.Generator().manual_seed(0)
hits = total = 0
for s in strings:
    ids = tok(s, return_tensors="pt")["input_ids"]
    pos = torch.randint(1, ids.shape[1] - 1, (1,), generator=g)
    masked = ids.clone(); masked[0, pos] = tok.mask_token_id
    with torch.no_grad():
        pred = model(input_ids=masked).logits[0, pos].argmax(-1)
    hits += int(pred == ids[0, pos]); total += 1
print(hits / total)
"""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd="/", env=env)
    assert r.returncode == 0, r.stderr[-2000:]
    accuracy = float(r.stdout.strip().splitlines()[-1])
    assert accuracy > 0.6, accuracy  # an untrained model scores ~1/437; token-class guessing ~0.3
    card = json.loads((folder / "training_summary.json").read_text())
    assert card["preset"] == "long" and card["config"] == config.preset("pretrain", "long").to_dict()
    # the card names the corpus it was trained on: the committed one, byte for byte
    from cloudlib.corpus import load_pretraining_corpus, shipped_corpus_dir
    from cloudlib.registry import sha256_file

    corpus, _ = load_pretraining_corpus(progress=False, holdout=tuple(card["config"]["holdout"]))
    digest = hashlib.sha256("\n".join(sorted(corpus.index)).encode()).hexdigest()
    assert card["corpus"]["sha256_sorted_strings"] == digest and card["corpus"]["unique_strings"] == len(corpus)
    for name, sha in card["corpus"]["files_sha256"].items():
        assert sha256_file(shipped_corpus_dir() / name) == sha, name
    log = pd.read_csv(folder / "log.csv")
    assert log["step"].iloc[-1] == card["steps"] and round(log["val_loss"].iloc[-1], 4) == card["final_val_loss"]


def test_ship_encoder_script_writes_a_complete_card(smoke_run, tmp_path):
    dest = tmp_path / "shipped"
    r = subprocess.run(
        [sys.executable, "scripts/ship_encoder.py", str(smoke_run), "--dest", str(dest), "--preset", "smoke"],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert r.returncode == 0, r.stderr[-2000:]
    card = json.loads((dest / "training_summary.json").read_text())
    summary = json.loads((smoke_run / "summary.json").read_text())
    assert card["steps"] == summary["steps"] == 60 and card["config"]["corpus_limit"] == 150
    assert len(card["corpus"]["sha256_sorted_strings"]) == 64 and card["corpus"]["limit_per_source"] == 150
    assert {"config.json", "model.safetensors", "tokenizer.json", "log.csv"} <= {p.name for p in dest.iterdir()}
    assert len(pd.read_csv(dest / "log.csv")) == len((smoke_run / "log.jsonl").read_text().splitlines())


def test_paper_preset_runs_a_few_steps_on_cpu(tmp_path):
    """The paper preset (BERT-base, batch 1024, lr 1e-4) executes end to end; here 2 steps of batch 8.
    bf16 autocast and fused AdamW engage only on CUDA, which CI does not have."""
    sets = "--set max_steps=2 --set batch_size=8 --set corpus_limit=20 --set eval_max_strings=16".split()
    cmd = [
        sys.executable,
        "-m",
        "cloudlib",
        "pretrain",
        "--preset",
        "paper",
        "--out",
        str(tmp_path / "paper"),
        "-q",
        *sets,
    ]
    r = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    config = json.loads((tmp_path / "paper" / "config.json").read_text())
    assert config["model"] == "base" and config["lr"] == 1e-4 and 85e6 < config["non_embedding_params"] < 86e6
    assert json.loads((tmp_path / "paper" / "summary.json").read_text())["steps"] == 2


def test_any_corpus_file_or_folder_pretrains(tmp_path, strings, capsys):
    """``pretrain --corpus``: the authors' CSV (their ``cloud`` column), a folder of CSV shards (``scope``, one
    gzipped), blanks, duplicates and over-long strings dropped and counted; bad inputs named."""
    from cloudlib.corpus import BLOCK_TOKENS, read_corpus
    from cloudlib.errors import DataError

    authors = need("cloud/pretrain_cloud_10k.csv")
    got, counts = read_corpus(authors)
    assert len(got) == counts["strings"] == counts["unique"] - counts["too long"] and counts["rows"] == 10_000
    assert got[:5] == pd.read_csv(authors)["cloud"].tolist()[:5]

    shards = tmp_path / "shards"
    shards.mkdir()
    long = " ".join(["Na 0.5"] * BLOCK_TOKENS)
    pd.DataFrame({"scope": strings[:30] + ["", long]}).to_csv(shards / "part-000.csv", index=False)
    pd.DataFrame({"scope": strings[25:60]}).to_csv(shards / "part-001.csv.gz", index=False)
    pd.DataFrame({"scope": strings[55:70]}).to_parquet(shards / "part-002.parquet")
    (shards / "notes.txt").write_text("not a shard")
    got, counts = read_corpus(shards)
    assert got == list(dict.fromkeys(strings[:70])) and counts["files"] == 3 and counts["too long"] == 1
    assert counts["rows"] == 30 + 1 + 35 + 15  # the blank row is dropped before counting

    for bad, why in [
        (tmp_path / "missing", "no such corpus"),
        (tmp_path, "no corpus shards"),
    ]:
        with pytest.raises(DataError, match=why):
            read_corpus(bad)
    wrong = tmp_path / "wrong.csv"
    pd.DataFrame({"formula": ["NaCl"]}).to_csv(wrong, index=False)
    with pytest.raises(DataError, match="no SCOPE column.*formula"):
        read_corpus(wrong)
    # the command line end to end on the shards (smoke preset), and a bad corpus named with exit 1
    out = tmp_path / "run"
    overrides = ["--set", "max_steps=3", "--set", "eval_every=3"]
    assert main(["pretrain", "--preset", "smoke", "--corpus", str(shards), "--out", str(out), *overrides, "-q"]) == 0
    assert json.loads((out / "config.json").read_text())["n_train"] + json.loads((out / "config.json").read_text())[
        "n_val"
    ] == len(list(dict.fromkeys(strings[:70])))
    capsys.readouterr()
    assert main(["pretrain", "--preset", "smoke", "--corpus", str(wrong), "--out", str(out), "-q"]) == 1
    assert "wrong.csv" in capsys.readouterr().err


# --------------------------------------------------------------------------- streamed corpora


@pytest.fixture(scope="module")
def corpus_csv(tmp_path_factory, strings) -> Path:
    """The authors' 10 k sample as one CSV of SCOPE strings (with a blank row and a duplicate)."""
    path = tmp_path_factory.mktemp("corpus") / "corpus.csv"
    pd.DataFrame({"scope": strings[:3000] + ["", strings[5]]}).to_csv(path, index=False)
    return path


def test_streamed_corpus_crashed_then_resumed_matches_uninterrupted(corpus_csv, tmp_path, monkeypatch):
    """``pretrain --corpus``: tokenized once into OUT/token_shards and streamed; a run that dies after a checkpoint
    and is resumed (with a read-ahead thread) ends with the same losses as one that was not interrupted, and the
    resume rebuilds no shard; with prefetch the batches are read off the main thread, to the same losses."""
    from cloudlib import pretrain as pt
    from cloudlib import token_shards
    from cloudlib.errors import ConfigError

    overrides = {"max_steps": 8, "ckpt_every": 2, "eval_every": 4, "threads": 1, "eval_max_strings": 256}
    reference = pt.pretrain_preset("smoke", tmp_path / "a", overrides=overrides, progress=False, corpus=corpus_csv)
    config_a = json.loads((tmp_path / "a" / "config.json").read_text())
    shards = token_shards.open_shards(tmp_path / "a" / "token_shards")
    assert config_a["corpus_strings"] == len(shards) == len(set(pd.read_csv(corpus_csv)["scope"].dropna()))
    assert config_a["n_train"] + len(shards.split(0.2, 0)[1]) == len(shards)  # the smoke preset's val_fraction
    assert 0 < config_a["peak_rss_mb_before_training"] <= reference["peak_rss_mb"]

    real_loss, calls = pt.MLMObjective.loss, []

    def dies_at_step_6(self, *args):
        calls.append(1)
        if len(calls) == 6:
            raise RuntimeError("simulated crash")
        return real_loss(self, *args)

    out = tmp_path / "b"
    monkeypatch.setattr(pt.MLMObjective, "loss", dies_at_step_6)
    with pytest.raises(RuntimeError, match="simulated crash"):
        pt.pretrain_preset("smoke", out, overrides=overrides, progress=False, corpus=corpus_csv)
    monkeypatch.setattr(pt.MLMObjective, "loss", real_loss)
    assert torch.load(out / "checkpoint.pt", weights_only=False)["state"]["step"] == 4
    built = {f.name: f.stat().st_mtime_ns for f in (out / "token_shards").iterdir()}
    # resumed with a read-ahead thread the crashed run did not have (same results)
    resumed = pt.pretrain_preset(
        "smoke", out, resume=True, overrides=overrides, progress=False, corpus=corpus_csv, prefetch=2
    )
    assert {f.name: f.stat().st_mtime_ns for f in (out / "token_shards").iterdir()} == built
    assert resumed["steps"] == reference["steps"] == 8
    for key in ("train_loss", "val_loss", "val_acc", "grad_norm"):
        assert resumed["final"][key] == pytest.approx(reference["final"][key], rel=1e-6, abs=1e-7), key
    # read ahead by a background thread (prefetch): the same run to the bit, the batches read off the main thread;
    # the read-ahead does not define a run: a run checkpointed without it resumes with it
    real_fetch, threads = pt.MLMObjective.fetch, set()

    def fetch(self, idx):
        threads.add(threading.current_thread().name)
        return real_fetch(self, idx)

    monkeypatch.setattr(pt.MLMObjective, "fetch", fetch)
    ahead = pt.pretrain_preset(
        "smoke", tmp_path / "p", overrides=overrides, progress=False, corpus=corpus_csv, prefetch=2
    )
    assert threads and all(name.startswith("prefetch") for name in threads), threads
    for key in ("train_loss", "val_loss", "val_acc", "grad_norm"):
        assert ahead["final"][key] == reference["final"][key], key
    assert not [t for t in threading.enumerate() if t.name.startswith("prefetch")]  # stopped with the run
    monkeypatch.setattr(pt.MLMObjective, "fetch", real_fetch)
    # a shard folder is a corpus too; augment needs the strings
    again = pt.pretrain_preset(
        "smoke", tmp_path / "c", overrides=overrides, progress=False, corpus=tmp_path / "a" / "token_shards"
    )
    assert again["final"]["val_loss"] == pytest.approx(reference["final"]["val_loss"], rel=1e-6)
    with pytest.raises(ConfigError, match="augment"):
        pt.pretrain_preset("smoke", tmp_path / "d", overrides={"augment": 2}, progress=False, corpus=corpus_csv)


def test_torchrun_two_processes_stream_one_corpus(corpus_csv, tmp_path):
    """Under torchrun, rank 0 tokenizes the corpus once, the other rank waits, both stream their own batches."""
    out = tmp_path / "ddp"
    launch = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    sets = "--set max_steps=6 --set eval_every=6 --set ckpt_every=6 --set eval_max_strings=256".split()
    cmd = [*launch, "-m", "cloudlib", "pretrain", "--preset", "smoke", "--corpus", str(corpus_csv), "--out", str(out)]
    _torchrun([*cmd, "-q", *sets])
    summary = json.loads((out / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["steps"] == 6
    assert json.loads((out / "token_shards" / "manifest.json").read_text())["complete"]
