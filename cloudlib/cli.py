"""Command line: ``python -m cloudlib {scope,predict,corpus,data,config,run,pretrain,matbench,harvest} ...``.

This module only parses arguments, calls the library and turns its results and errors into output and exit
codes; it holds no logic of its own and nothing in the library imports it.

Exit codes: 0 success; 2 some rows failed (every row is still written, with its error); 1 usage error or an
input that cannot be used (a :class:`~cloudlib.errors.CloudError`, printed as one line).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

from .errors import CloudError

EXIT_OK, EXIT_USAGE, EXIT_ROWS_FAILED = 0, 1, 2


class UsageError(Exception):
    """A command line that cannot be carried out as given."""


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # argparse exits 2 by default; 2 means "rows failed" here
        self.print_usage(sys.stderr)
        print(f"{self.prog}: error: {message}", file=sys.stderr)
        raise SystemExit(EXIT_USAGE)


def _report_rows(df, output, id_col=None, verb="ok") -> int:
    failed = df[df["error"].notna()]
    print(f"{len(df)} structures -> {output}: {len(df) - len(failed)} {verb}, {len(failed)} failed", file=sys.stderr)
    ids = failed[id_col] if id_col else failed.index
    for i, err in zip(list(ids)[:20], failed["error"].head(20)):
        print(f"  {i}: {err}", file=sys.stderr)
    return EXIT_ROWS_FAILED if len(failed) else EXIT_OK


def _cmd_scope(args) -> int:
    from .inputs import read_inputs
    from .io import write_csv
    from .scope import scope_table

    df = scope_table(read_inputs(args.input), variant=args.variant, jobs=args.jobs, progress=not args.quiet)
    write_csv(args.output, df)
    return _report_rows(df, args.output)


def _cmd_predict(args) -> int:
    from .io import write_csv
    from .predictor import load_predictor, predict

    model = load_predictor(args.model)
    df = predict(args.input, model=model, jobs=args.jobs, progress=not args.quiet)
    write_csv(args.output, df, index=False)
    return _report_rows(df, args.output, id_col="id", verb="predicted")


def _cmd_corpus(args) -> int:
    from .corpus import load_pretraining_corpus, ship_corpus

    if args.ship:
        if args.limit is not None:
            raise UsageError("--ship builds the full corpus; drop --limit")
        print(f"shipped corpus -> {ship_corpus(jobs=args.jobs)}", file=sys.stderr)
    corpus, table = load_pretraining_corpus(jobs=args.jobs, limit=args.limit, refresh=args.refresh)
    print(table.to_string())
    if args.output:
        from .io import write_csv

        write_csv(args.output, corpus)
        print(f"{len(corpus)} unique strings -> {args.output}", file=sys.stderr)
    return EXIT_OK


def _cmd_data(args) -> int:
    from .registry import REGISTRY, fetch, registry_table

    if args.action == "list":
        print(registry_table()[["source", "licence"]].to_string())
        return EXIT_OK
    names = list(REGISTRY) if args.names == ["all"] else args.names
    bad = 0
    for n in names:
        try:
            print(f"{n}: {fetch(n)}")
        except (CloudError, KeyError) as exc:
            bad += 1
            print(f"{n}: FAILED {type(exc).__name__}: {exc}", file=sys.stderr)
    return EXIT_ROWS_FAILED if bad else EXIT_OK


def _cmd_config(args) -> int:
    from .config import PRESETS, preset

    steps = [args.step] if args.step else list(PRESETS)
    out = {}
    for step in steps:
        names = [args.preset] if args.preset else list(PRESETS.get(step, {}))
        out[step] = {name: preset(step, name).to_dict() for name in names}
    print(json.dumps(out, indent=2))
    return EXIT_OK


def _cmd_run(args) -> int:
    from .runner import run

    report = run(args.profile, only=args.only)
    print(json.dumps(report, indent=2))
    return EXIT_OK


def _cmd_harvest(args) -> int:
    from .harvest import harvest

    df = harvest(
        args.base_url,
        args.out_dir,
        filter=args.filter,
        max_structures=args.max_structures,
        variant=args.variant,
        progress=not args.quiet,
    )
    failed = int(df["error"].fillna("").astype(str).str.len().gt(0).sum())
    print(f"{len(df)} entries harvested into {args.out_dir}; {failed} failed", file=sys.stderr)
    return EXIT_ROWS_FAILED if failed else EXIT_OK


def _overrides(pairs: list[str] | None) -> dict:
    """``key=value`` pairs -> dict, values parsed as YAML scalars (``3``, ``1e-3``, ``null``, ``tiny``); the
    keys are checked against the config by :func:`cloudlib.config.preset`."""
    import yaml

    out = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise UsageError(f"--set {pair!r}: expected key=value")
        out[key] = yaml.safe_load(value)
    return out


def _cmd_pretrain(args) -> int:
    from .pretrain import pretrain_preset

    summary = pretrain_preset(
        args.preset,
        args.out,
        resume=args.resume,
        overrides=_overrides(args.set),
        progress=not args.quiet,
        jobs=args.jobs,
    )
    if int(os.environ.get("RANK", "0")) == 0:
        print(json.dumps(summary, indent=2))
    return EXIT_OK


def _offline_provenance(args, config, folds, out_dir, wall: float) -> None:
    """``offline_<preset>_provenance.json`` beside the multi-task table: the command, the resolved config, the
    encoder's sha256, this call's wall time and the fits' summed seconds (resumed parts keep the seconds of the
    call that made them), whether the table is complete (and the fits it still lacks), the task labels and the
    machine."""
    import platform

    import torch

    from . import paths
    from .io import write_json
    from .offline_data import OFFLINE_TASKS
    from .registry import sha256_file

    weights = paths.resolve(config.encoder) / "model.safetensors"
    write_json(
        paths.resolve(out_dir) / f"offline_{args.preset}_provenance.json",
        {
            "command": "python -m cloudlib " + " ".join(sys.argv[1:]),
            "config": config.to_dict(),
            "encoder_sha256": sha256_file(weights) if weights.is_file() else None,
            "wall_seconds_this_call": round(wall, 1),
            "fit_seconds_total": round(float(folds["seconds"].sum()), 1) if len(folds) else 0.0,
            "fit_seconds_by_model": folds.groupby("model")["seconds"].sum().round(1).to_dict() if len(folds) else {},
            "complete": not folds.attrs.get("missing"),
            "missing_fits": folds.attrs.get("missing", []),
            "jobs": args.jobs,
            "tasks": {
                t: {"folds": OFFLINE_TASKS[t].folds, "note": OFFLINE_TASKS[t].note}
                for t in (folds["task"].unique() if len(folds) else [])
            },
            "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "torch": torch.__version__},
            "date": time.strftime("%Y-%m-%d %H:%M"),
        },
        indent=1,
    )


def _cmd_matbench(args) -> int:
    from .config import preset
    from .matbench_run import MODELS, run_matbench, summarise
    from .paths import output_dirs

    unknown = set(args.models) - set(MODELS)
    if unknown:
        raise UsageError(f"unknown models {sorted(unknown)}; choose from {list(MODELS)}")
    config = preset("finetune", args.preset, **_overrides(args.set))
    if args.tasks == ["offline"] or args.tasks[0].startswith("offline:"):
        from .matbench_run import run_offline

        tasks = None if args.tasks == ["offline"] else [t.removeprefix("offline:") for t in args.tasks]
        out_dir = args.out or "data/multitask"
        t0 = time.perf_counter()
        folds = run_offline(
            tasks,
            config,
            models=args.models,
            jobs=args.jobs,
            out_dir=out_dir,
            name=args.preset,
            fit_missing=not args.collect,
        )
        _offline_provenance(args, config, folds, out_dir, time.perf_counter() - t0)
        if len(folds):
            print(summarise(folds.assign(task=folds["task"] + " (" + folds["folds"] + ")")).round(4).to_string())
        missing = folds.attrs.get("missing", [])
        if missing:
            print(
                f"partial table: {len(missing)} fits not made yet (run without --collect to make them)", file=sys.stderr
            )
        return EXIT_OK
    out = args.out or output_dirs(args.preset)[1]
    folds = run_matbench(
        args.tasks,
        config,
        models=args.models,
        folds=args.folds,
        jobs=args.jobs,
        out_dir=out,
        name=args.preset,
        progress=not args.quiet,
    )
    if len(folds):
        print(summarise(folds).round(4).to_string())
    for task, why in folds.attrs.get("skipped", {}).items():
        print(f"skipped {task}: {why}", file=sys.stderr)
    return EXIT_ROWS_FAILED if folds.attrs.get("skipped") else EXIT_OK


def build_parser() -> argparse.ArgumentParser:
    from .config import PRESETS
    from .paths import PROFILES

    parser = _Parser(prog="python -m cloudlib", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    structures = "a CIF/structure file, a folder of CIFs, or a .json/.json.gz of structures"

    p = sub.add_parser("scope", help="SCOPE strings for structure files -> CSV (id, scope, error)")
    p.add_argument("input", help=structures)
    p.add_argument("-o", "--output", required=True, help="output CSV")
    p.add_argument("--variant", choices=["reduced", "full"], default="reduced")
    p.add_argument("--jobs", type=int, default=1, help="worker processes (0 = all cores)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_scope)

    p = sub.add_parser("predict", help="predict a property for structure files with a fine-tuned model -> CSV")
    p.add_argument("input", help=structures)
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
    p.add_argument("--ship", action="store_true", help="rebuild the full corpus into data/corpus (committed data)")
    p.set_defaults(func=_cmd_corpus)

    p = sub.add_parser("data", help="list or fetch registry files")
    p.add_argument("action", choices=["list", "fetch"])
    p.add_argument("names", nargs="*", default=["all"], help="registry names, or 'all'")
    p.set_defaults(func=_cmd_data)

    p = sub.add_parser("config", help="print the presets of every step (or of one step / one preset) as JSON")
    p.add_argument("step", nargs="?", choices=sorted(PRESETS))
    p.add_argument("preset", nargs="?")
    p.set_defaults(func=_cmd_config)

    p = sub.add_parser("run", help="execute the numbered notebooks with papermill")
    p.add_argument("--profile", choices=list(PROFILES), default="laptop")
    p.add_argument("--only", nargs="*", help="notebook number prefixes, e.g. 01 02")
    p.set_defaults(func=_cmd_run)

    p = sub.add_parser("pretrain", help="MLM pre-training on the offline corpus (torchrun for several processes)")
    p.add_argument("--preset", choices=sorted(PRESETS["pretrain"]), default="smoke")
    p.add_argument("--out", required=True, help="output folder (checkpoint, log, final model)")
    p.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.pt")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a PretrainConfig field")
    p.add_argument("--jobs", type=int, default=1, help="processes for building the corpus cache")
    p.add_argument("-q", "--quiet", action="store_true")
    p.set_defaults(func=_cmd_pretrain)

    p = sub.add_parser("matbench", help="MatBench v0.1 protocol: all folds, task.record, matbench's file format")
    p.add_argument(
        "--tasks",
        nargs="+",
        default=["matbench_dielectric"],
        help="MatBench tasks; 'offline' = the offline multi-task table (or offline:TASK ...), to data/multitask",
    )
    p.add_argument("--preset", choices=sorted(PRESETS["finetune"]), default="laptop", help="fine-tuning preset")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a FinetuneConfig field")
    p.add_argument("--models", nargs="+", default=["CLOUD", "CLOUD-scratch", "RF-Magpie", "Dummy"])
    p.add_argument("--folds", nargs="+", type=int, default=[0, 1, 2, 3, 4])
    p.add_argument("--jobs", type=int, default=1)
    p.add_argument("--out", default=None, help="results folder (default: results/, or results/smoke for smoke)")
    p.add_argument(
        "--collect",
        action="store_true",
        help="offline table only: train nothing; write the table from the finished fits (parts), listing the missing",
    )
    p.add_argument("-q", "--quiet", action="store_true")
    p.set_defaults(func=_cmd_matbench)

    p = sub.add_parser("harvest", help="harvest an OPTIMADE provider into SCOPE strings (resumable)")
    p.add_argument("base_url")
    p.add_argument("out_dir")
    p.add_argument("--filter", default=None, help="OPTIMADE filter, e.g. 'elements HAS \"Si\"'")
    p.add_argument("--max-structures", type=int, default=None)
    p.add_argument("--variant", choices=["reduced", "full"], default="reduced")
    p.add_argument("-q", "--quiet", action="store_true")
    p.set_defaults(func=_cmd_harvest)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (UsageError, CloudError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
