"""Command line: ``python -m cloudlib {scope,corpus,data,run,harvest} ...``.

Exit codes: 0 success; 2 some rows failed (every row is still written, with its error); 1 usage error.
"""
from __future__ import annotations

import argparse
import gzip
import json
import sys
from pathlib import Path

EXIT_OK, EXIT_USAGE, EXIT_ROWS_FAILED = 0, 1, 2


class UsageError(Exception):
    pass


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # argparse exits 2 by default; 2 means "rows failed" here
        self.print_usage(sys.stderr)
        print(f"{self.prog}: error: {message}", file=sys.stderr)
        raise SystemExit(EXIT_USAGE)


def read_inputs(path: str | Path) -> dict:
    """Structures named by a CLI argument: a structure file, a folder of CIFs, or a JSON of structures.

    JSON (optionally gzipped): a dict id -> pymatgen structure dict, or a pandas-JSON frame with a
    ``structure`` column (orient ``columns``, ``index``, ``split`` or ``records``).
    Returns a dict id -> item for :func:`cloudlib.scope.scope_table`.
    """
    p = Path(path)
    if p.is_dir():
        cifs = sorted(q for q in p.iterdir() if q.is_file() and q.suffix.lower() == ".cif")
        if not cifs:
            raise UsageError(f"{p}: folder holds no .cif files")
        return {q.name: str(q) for q in cifs}
    if not p.exists():
        raise UsageError(f"{p}: no such file or folder")
    name = p.name.lower()
    if name.endswith(".json") or name.endswith(".json.gz"):
        raw = gzip.decompress(p.read_bytes()) if name.endswith(".gz") else p.read_bytes()
        try:
            obj = json.loads(raw)
        except ValueError as exc:
            raise UsageError(f"{p}: not valid JSON ({exc})") from exc
        return _structures_from_json(obj, p)
    return {p.name: str(p)}


def _structures_from_json(obj, p: Path) -> dict:
    if isinstance(obj, dict) and isinstance(obj.get("structure"), dict):  # pandas orient="columns"
        return dict(obj["structure"])
    if isinstance(obj, dict) and {"columns", "data"} <= set(obj) and "structure" in obj["columns"]:  # "split"
        col = obj["columns"].index("structure")
        index = obj.get("index", range(len(obj["data"])))
        return {str(i): row[col] for i, row in zip(index, obj["data"])}
    if isinstance(obj, list) and obj and all(isinstance(r, dict) and "structure" in r for r in obj):  # "records"
        key = next((k for k in ("id", "material_id", "mbid") if k in obj[0]), None)
        return {str(r[key]) if key else str(i): r["structure"] for i, r in enumerate(obj)}
    if isinstance(obj, dict) and obj and all(isinstance(v, dict) for v in obj.values()):
        if all("structure" in v for v in obj.values()):  # orient="index"
            return {k: v["structure"] for k, v in obj.items()}
        if all("lattice" in v and "sites" in v for v in obj.values()):  # id -> structure dict
            return dict(obj)
    raise UsageError(f"{p}: expected a dict id -> structure dict or a pandas-JSON frame with a 'structure' column")


def _cmd_scope(args) -> int:
    from .io import write_csv
    from .scope import scope_table

    items = read_inputs(args.input)
    df = scope_table(items, variant=args.variant, jobs=args.jobs, progress=not args.quiet)
    write_csv(args.output, df)
    failed = df[df["error"].notna()]
    print(f"{len(df)} structures -> {args.output}: {len(df) - len(failed)} ok, {len(failed)} failed", file=sys.stderr)
    for i, err in failed["error"].head(20).items():
        print(f"  {i}: {err}", file=sys.stderr)
    return EXIT_ROWS_FAILED if len(failed) else EXIT_OK


def _cmd_corpus(args) -> int:
    from .data import load_pretraining_corpus

    corpus, table = load_pretraining_corpus(jobs=args.jobs, limit=args.limit, refresh=args.refresh)
    print(table.to_string())
    if args.output:
        from .io import write_csv

        write_csv(args.output, corpus)
        print(f"{len(corpus)} unique strings -> {args.output}", file=sys.stderr)
    return EXIT_OK


def _cmd_data(args) -> int:
    from .data import REGISTRY, fetch, registry_table

    if args.action == "list":
        print(registry_table()[["source", "licence"]].to_string())
        return EXIT_OK
    names = list(REGISTRY) if args.names == ["all"] else args.names
    bad = 0
    for n in names:
        try:
            print(f"{n}: {fetch(n)}")
        except Exception as exc:
            bad += 1
            print(f"{n}: FAILED {type(exc).__name__}: {exc}", file=sys.stderr)
    return EXIT_ROWS_FAILED if bad else EXIT_OK


def _cmd_run(args) -> int:
    from .runner import run

    report = run(args.profile, only=args.only)
    print(json.dumps(report, indent=2))
    return EXIT_OK


def _cmd_harvest(args) -> int:
    from .harvest import harvest

    df = harvest(args.base_url, args.out_dir, filter=args.filter, max_structures=args.max_structures,
                 variant=args.variant, progress=not args.quiet)
    failed = int(df["error"].fillna("").astype(str).str.len().gt(0).sum())
    print(f"{len(df)} entries harvested into {args.out_dir}; {failed} failed", file=sys.stderr)
    return EXIT_ROWS_FAILED if failed else EXIT_OK


def _cmd_predict(args) -> int:
    from .finetune import _resolve, load_predictor, predict
    from .io import write_csv

    folder = _resolve(args.model)
    if not (folder / "predictor.json").is_file():
        raise UsageError(f"{args.model}: not a predictor folder (no predictor.json); fit one with cloudlib.finetune")
    items = read_inputs(args.input)
    df = predict(items, model=load_predictor(folder), jobs=args.jobs, progress=not args.quiet)
    write_csv(args.output, df, index=False)
    failed = df[df["error"].notna()]
    print(f"{len(df)} structures -> {args.output}: {len(df) - len(failed)} predicted, {len(failed)} failed",
          file=sys.stderr)
    for i, err in zip(failed["id"].head(20), failed["error"].head(20)):
        print(f"  {i}: {err}", file=sys.stderr)
    return EXIT_ROWS_FAILED if len(failed) else EXIT_OK


def _parse_overrides(pairs: list[str]) -> dict:
    """``key=value`` pairs -> dict, values parsed as YAML scalars (``3``, ``1e-3``, ``null``, ``tiny``)."""
    import dataclasses

    import yaml

    from .train import PretrainConfig

    fields = {f.name for f in dataclasses.fields(PretrainConfig)}
    out = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep or key not in fields:
            raise UsageError(f"--set {pair!r}: expected key=value with key one of {sorted(fields)}")
        out[key] = yaml.safe_load(value)
    return out


def _cmd_pretrain(args) -> int:
    from .train import pretrain_profile

    summary = pretrain_profile(args.profile, args.out, resume=args.resume, overrides=_parse_overrides(args.set),
                               progress=not args.quiet, jobs=args.jobs)
    if int(__import__("os").environ.get("RANK", "0")) == 0:
        print(json.dumps(summary, indent=2))
    return EXIT_OK


def _cmd_matbench(args) -> int:
    from .matbench_run import MODELS, run_matbench, summarise

    unknown = set(args.models) - set(MODELS)
    if unknown:
        raise UsageError(f"unknown models {sorted(unknown)}; choose from {list(MODELS)}")
    folds = run_matbench(args.tasks, profile=args.profile, models=args.models, folds=args.folds, jobs=args.jobs,
                         progress=not args.quiet)
    if len(folds):
        print(summarise(folds).round(4).to_string())
    for task, why in folds.attrs.get("skipped", {}).items():
        print(f"skipped {task}: {why}", file=sys.stderr)
    return EXIT_ROWS_FAILED if folds.attrs.get("skipped") else EXIT_OK


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="python -m cloudlib", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    p = sub.add_parser("scope", help="SCOPE strings for structure files -> CSV (id, scope, error)")
    p.add_argument("input", help="a CIF/structure file, a folder of CIFs, or a .json/.json.gz of structures")
    p.add_argument("-o", "--output", required=True, help="output CSV")
    p.add_argument("--variant", choices=["reduced", "full"], default="reduced")
    p.add_argument("--jobs", type=int, default=1, help="worker processes (0 = all cores)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_scope)

    p = sub.add_parser("predict", help="predict a property for structure files with a fine-tuned model -> CSV")
    p.add_argument("input", help="a CIF/structure file, a folder of CIFs, or a .json/.json.gz of structures")
    p.add_argument("--model", default="models/cloud-dielectric-laptop", help="predictor folder (save_predictor)")
    p.add_argument("-o", "--output", required=True, help="output CSV (id, scope, prediction, error)")
    p.add_argument("--jobs", type=int, default=1, help="worker processes for SCOPE (0 = all cores)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_predict)

    p = sub.add_parser("corpus", help="build the offline pre-training corpus and print its source table")
    p.add_argument("-o", "--output", help="write the deduplicated corpus (CSV)")
    p.add_argument("--jobs", type=int, default=1)
    p.add_argument("--limit", type=int, default=None, help="first N items per source")
    p.add_argument("--refresh", action="store_true", help="recompute even if cached")
    p.set_defaults(func=_cmd_corpus)

    p = sub.add_parser("data", help="list or fetch registry files")
    p.add_argument("action", choices=["list", "fetch"])
    p.add_argument("names", nargs="*", default=["all"], help="registry names, or 'all'")
    p.set_defaults(func=_cmd_data)

    p = sub.add_parser("run", help="execute the numbered notebooks with papermill")
    p.add_argument("--profile", choices=["smoke", "laptop", "paper"], default="laptop")
    p.add_argument("--only", nargs="*", help="notebook number prefixes, e.g. 01 02")
    p.set_defaults(func=_cmd_run)

    p = sub.add_parser("pretrain", help="MLM pre-training on the offline corpus (torchrun for several processes)")
    p.add_argument("--profile", choices=["smoke", "laptop", "paper"], default="smoke")
    p.add_argument("--out", required=True, help="output folder (checkpoint, log, final model)")
    p.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.pt")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a PretrainConfig field")
    p.add_argument("--jobs", type=int, default=1, help="processes for building the corpus cache")
    p.add_argument("-q", "--quiet", action="store_true")
    p.set_defaults(func=_cmd_pretrain)

    p = sub.add_parser("matbench", help="MatBench v0.1 protocol: all folds, task.record, matbench's file format")
    p.add_argument("--tasks", nargs="+", default=["matbench_dielectric"])
    p.add_argument("--profile", choices=["smoke", "laptop", "paper"], default="laptop")
    p.add_argument("--models", nargs="+", default=["CLOUD", "CLOUD-scratch", "RF-Magpie", "Dummy"])
    p.add_argument("--folds", nargs="+", type=int, default=[0, 1, 2, 3, 4])
    p.add_argument("--jobs", type=int, default=1)
    p.add_argument("-q", "--quiet", action="store_true")
    p.set_defaults(func=_cmd_matbench)

    p = sub.add_parser("harvest", help="harvest an OPTIMADE provider into SCOPE strings (resumable)")
    p.add_argument("base_url")
    p.add_argument("out_dir")
    p.add_argument("--filter", default=None, help='OPTIMADE filter, e.g. \'elements HAS "Si"\'')
    p.add_argument("--max-structures", type=int, default=None)
    p.add_argument("--variant", choices=["reduced", "full"], default="reduced")
    p.add_argument("-q", "--quiet", action="store_true")
    p.set_defaults(func=_cmd_harvest)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except UsageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
