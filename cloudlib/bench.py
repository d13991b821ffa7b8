"""Benchmarks that compare against a baseline in the same run and print ratios.

    python -m cloudlib.bench scope [--n 1000] [--repeats 3]      # SCOPE + tokenizer
    python -m cloudlib.bench tokenizer [--n 10000]

``scope`` times, on the same structures in one process (first N of matbench_dielectric):

* **authors** — the CLOUD repository's ``generate_seq``: pymatgen ``SpacegroupAnalyzer`` per structure,
  dict access to the spglib dataset, ``np.round`` on the fractional composition, the authors' own
  generator and Wyckoff tables (registry files ``cloud/generator.json``, ``cloud/wyckoff-...json``);
* **spglib floor** — ``spglib.get_symmetry_dataset`` alone on (lattice, frac, Z) cells extracted from the
  structures *before* the clock starts: the symmetry search every SCOPE implementation has to pay for;
* **cloudlib jobs=1 / jobs=2** — ``scope_table`` from the Structure objects, validation included.

Each method runs ``repeats`` times, interleaved; the best time counts. Outputs must be identical.
``tokenizer`` times padded int64 id tensors from raw strings with the authors' vocabulary format.
"""
from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time

import numpy as np


def _best(fn, repeats: int) -> tuple[float, object]:
    best, out = float("inf"), None
    for _ in range(repeats):
        t = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t)
    return best, out


def _authors_generate_seq(gen_str: dict, wyckoff_multiplicity_dict: dict):
    """The authors' structure_to_str.generate_seq, verbatim in behaviour (dict access included)."""
    import warnings

    from pymatgen.symmetry.analyzer import SpacegroupAnalyzer

    def generate_seq(struct):
        with warnings.catch_warnings():  # spglib >= 2.5 warns on dict access, as it did for the authors
            warnings.simplefilter("ignore", DeprecationWarning)
            analyzer = SpacegroupAnalyzer(struct)
            symm_dataset = analyzer.get_symmetry_dataset()
            wyckoff_positions = symm_dataset["wyckoffs"]
        spg_num = str(analyzer.get_space_group_number())
        seq = " ".join(gen_str[spg_num])
        wyckoff_ls = []
        for w in wyckoff_positions:
            symbol = wyckoff_multiplicity_dict[spg_num][w] + w
            if symbol not in wyckoff_ls:
                wyckoff_ls.append(symbol)
        seq = seq + " | " + " ".join(wyckoff_ls)
        comp_ls = []
        for element, ratio in struct.composition.fractional_composition.get_el_amt_dict().items():
            comp_ls += [element, str(np.round(ratio, 2))]
        return seq + " | " + " ".join(comp_ls)

    return generate_seq


def bench_scope(n: int = 1000, repeats: int = 3) -> dict:
    import spglib
    from pymatgen.symmetry import analyzer as sga

    from .data import fetch, load_matbench
    from .scope import scope_table

    structures = load_matbench("matbench_dielectric")["structure"].iloc[:n]
    items = structures.to_dict()
    gen = json.loads(fetch("cloud/generator.json").read_text())
    wyck = json.loads(fetch("cloud/wyckoff-position-multiplicities.json").read_text())
    authors = _authors_generate_seq(gen, wyck)
    cells = [(s.lattice.matrix, s.frac_coords, np.array([site.specie.Z for site in s], dtype=np.intc)) for s in structures]

    def run_authors():
        sga._get_symmetry_dataset.cache_clear()  # pymatgen memoises spglib calls; start cold each time
        return [authors(s) for s in structures]

    def run_floor():
        return [spglib.get_symmetry_dataset(c, symprec=0.01, angle_tolerance=5.0) for c in cells]

    timings = {"authors": [], "spglib floor": [], "cloudlib jobs=1": [], "cloudlib jobs=2": []}
    outputs = {}
    runs = {
        "authors": run_authors,
        "spglib floor": run_floor,
        "cloudlib jobs=1": lambda: scope_table(items, jobs=1, progress=False)["scope"].tolist(),
        "cloudlib jobs=2": lambda: scope_table(items, jobs=2, progress=False)["scope"].tolist(),
    }
    for _ in range(repeats):  # interleave so drift in machine load hits every method alike
        for name, fn in runs.items():
            t, out = _best(fn, 1)
            timings[name].append(t)
            outputs[name] = out
    rate = {k: n / min(v) for k, v in timings.items()}
    identical = outputs["cloudlib jobs=1"] == outputs["authors"] == outputs["cloudlib jobs=2"]
    result = {
        "structures": n,
        "repeats": repeats,
        "rates_per_s": {k: round(v, 1) for k, v in rate.items()},
        "ratios": {
            "jobs=1 / authors": round(rate["cloudlib jobs=1"] / rate["authors"], 3),
            "jobs=1 / spglib floor": round(rate["cloudlib jobs=1"] / rate["spglib floor"], 3),
            "authors / spglib floor": round(rate["authors"] / rate["spglib floor"], 3),
            "jobs=2 / jobs=1": round(rate["cloudlib jobs=2"] / rate["cloudlib jobs=1"], 3),
        },
        "identical_output": bool(identical),
        "mean_atoms": round(float(np.mean([len(s) for s in structures])), 1),
    }
    return result


def bench_tokenizer(n: int = 10000, repeats: int = 3) -> dict:
    import pandas as pd
    import transformers
    from transformers.models.bert.tokenization_bert_legacy import BertTokenizerLegacy

    from .data import fetch
    from .tokenizer import from_bert_vocab, make_tokenizer, write_authors_style_vocab

    strings = pd.read_csv(fetch("cloud/pretrain_cloud_10k.csv"))["cloud"].tolist()
    strings = (strings * (n // len(strings) + 1))[:n]
    with tempfile.TemporaryDirectory() as d:
        write_authors_style_vocab(strings[:3000], d, vocab_size=300)
        legacy = BertTokenizerLegacy.from_pretrained(d, do_lower_case=False)
        v5 = transformers.BertTokenizer.from_pretrained(d, do_lower_case=False)
        ours_authors = from_bert_vocab(d)
    ours_closed = make_tokenizer()
    runs = {
        "BertTokenizer (python, authors' transformers 4)": lambda: legacy(strings, padding=True, return_tensors="pt"),
        "BertTokenizer (transformers 5, Rust)": lambda: v5(strings, padding=True, return_tensors="pt"),
        "cloudlib encode_batch, authors' vocab": lambda: ours_authors.encode_batch(strings),
        "cloudlib encode_batch, closed vocab": lambda: ours_closed.encode_batch(strings),
    }
    timings = {k: [] for k in runs}
    outs = {}
    for _ in range(repeats):
        for name, fn in runs.items():
            t, outs[name] = _best(fn, 1)
            timings[name].append(t)
    rate = {k: n / min(v) for k, v in timings.items()}
    base = "BertTokenizer (python, authors' transformers 4)"
    ref = outs[base]
    same = all(
        outs[k]["input_ids"].equal(ref["input_ids"]) and outs[k]["attention_mask"].equal(ref["attention_mask"])
        for k in ("BertTokenizer (transformers 5, Rust)", "cloudlib encode_batch, authors' vocab")
    )
    return {
        "strings": n,
        "rates_per_s": {k: round(v) for k, v in rate.items()},
        "ratio_vs_python_BertTokenizer": {k: round(v / rate[base], 1) for k, v in rate.items()},
        "ratio_vs_rust_BertTokenizer": {
            k: round(v / rate["BertTokenizer (transformers 5, Rust)"], 1) for k, v in rate.items()
        },
        "identical_ids_authors_vocab": bool(same),
    }


def _print(title: str, result: dict) -> None:
    print(f"\n== {title}")
    for key, value in result.items():
        if isinstance(value, dict):
            print(f"  {key}:")
            for k, v in value.items():
                print(f"    {k:<48} {v}")
        else:
            print(f"  {key:<50} {value}")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m cloudlib.bench", description=__doc__.splitlines()[0])
    p.add_argument("what", choices=["scope", "tokenizer"])
    p.add_argument("--n", type=int, default=None, help="structures (scope, default 1000) or strings (tokenizer, 10000)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--json", help="also write the results here")
    args = p.parse_args(argv)
    import os

    import torch

    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch threads {torch.get_num_threads()}")
    results = {}
    if args.what == "scope":
        results["scope"] = bench_scope(args.n or 1000, args.repeats)
        _print("SCOPE (structures/s, same structures, one run)", results["scope"])
    results["tokenizer"] = bench_tokenizer(args.n if args.what == "tokenizer" and args.n else 10000, args.repeats)
    _print("Tokenizer (strings/s to padded id tensors)", results["tokenizer"])
    if args.json:
        from .io import write_json

        write_json(args.json, results)
    ok = results.get("scope", {}).get("identical_output", True) and results["tokenizer"]["identical_ids_authors_vocab"]
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
