"""Command line: ``python -m cloudlib {scope,predict,explorer,corpus,data,config,run,pretrain,matbench,harvest} ...``.

This module only parses arguments, calls the library and turns its results and errors into output and exit
codes; it holds no logic of its own and nothing in the library imports it.

Exit codes: 0 success; 2 some rows failed (every row is still written, with its error); 1 usage error or an
input that cannot be used (a :class:`~cloudlib.errors.CloudError`, printed as one line).
"""

from __future__ import annotations

import argparse
import contextlib
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


def _report_rows(df, output, id_col=None, verb="ok", skipped: str = "") -> int:
    from .inputs import printable

    failed = df[df["error"].notna()]
    noun = "structure" if len(df) == 1 else "structures"
    print(f"{len(df)} {noun} -> {output}: {len(df) - len(failed)} {verb}, {len(failed)} failed", file=sys.stderr)
    if skipped:
        print(f"  ({skipped})", file=sys.stderr)
    ids = failed[id_col] if id_col else failed.index
    for i, err in zip(list(ids)[:20], failed["error"].head(20)):
        print(f"  {printable(i)}: {printable(err)}", file=sys.stderr)
    if len(failed) > 20:
        print(f"  ... and {len(failed) - 20} more (see the error column of {output})", file=sys.stderr)
    return EXIT_ROWS_FAILED if len(failed) else EXIT_OK


def _check_output(output) -> None:
    """Refuse an output path that cannot be written *before* any work is done."""
    from pathlib import Path

    p = Path(output)
    if p.is_dir():
        raise UsageError(f"-o {output}: is a folder; give a file name, e.g. {p / 'out.csv'}")
    parent = p.parent if str(p.parent) else Path(".")
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
        raise UsageError(f"-o {output}: cannot create files in {parent}")


class OutputError(CloudError):
    """The results could not be written where asked; the message says where they went instead."""


def _write_rows(df, output, **kw) -> None:
    """Write the result table; if that fails (disk full, permissions), never lose the computed rows: write them
    to a recovery file in the temp folder (or, failing that too, to stdout) and raise :class:`OutputError` naming
    where they are."""
    import tempfile
    from pathlib import Path

    from .io import write_csv

    try:
        write_csv(output, df, **kw)
        return
    except OSError as exc:
        why = f"{type(exc).__name__}: {exc.strerror or exc}"
    name = Path(output).name or "results.csv"
    recovery = Path(tempfile.gettempdir()) / f"cloudlib-unsaved-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}-{name}"
    try:
        write_csv(recovery, df, **kw)
        where = str(recovery)
    except OSError:
        df.to_csv(sys.stdout, **{"errors": "backslashreplace", **kw})
        where = "stdout (above)"
    raise OutputError(f"could not write the results ({why}); all {len(df)} rows were saved to {where}", output)


def _check_timeout(timeout: float) -> None:
    if not timeout > 0:  # also NaN
        raise UsageError(f"--timeout must be > 0 seconds, got {timeout:g}")


def _limits(args) -> dict:
    """``--timeout`` / ``--max-atoms`` as :func:`~cloudlib.scope.scope_table` keywords (checked: a usage error)."""
    if args.timeout is not None:
        _check_timeout(args.timeout)
    if args.max_atoms < 0:
        raise UsageError(f"--max-atoms must be >= 0 (0 = no limit), got {args.max_atoms}")
    return {"timeout": args.timeout, "max_atoms": args.max_atoms or None}


@contextlib.contextmanager
def _dask_client(address: str | None):
    """A ``distributed.Client`` connected to ``--dask ADDRESS`` (None: no cluster), closed afterwards."""
    if not address:
        yield None
        return
    try:
        from distributed import Client
    except ImportError as exc:
        raise UsageError(f"--dask needs dask.distributed ({exc}); pip install distributed") from None
    try:
        client = Client(address, timeout="20s")
    except (OSError, TimeoutError) as exc:
        raise UsageError(f"--dask {address}: no dask scheduler answered ({type(exc).__name__}: {exc})") from None
    try:
        yield client
    finally:
        client.close()


def _cmd_scope(args) -> int:
    from .inputs import read_inputs
    from .scope import scope_table

    _check_output(args.output)
    limits = _limits(args)
    if args.dask and limits["timeout"] is not None:
        raise UsageError("--timeout is enforced by the local worker pool only; drop it with --dask")
    items = read_inputs(args.input)
    with _dask_client(args.dask) as client:
        df = scope_table(
            items, variant=args.variant, jobs=args.jobs, progress=not args.quiet, executor=client, **limits
        )
    _write_rows(df, args.output)
    return _report_rows(df, args.output, skipped=items.skipped_text())


def _cmd_predict(args) -> int:
    from .cloud_debye import is_debye_folder
    from .inputs import read_inputs
    from .predictor import load_predictor, predict

    _check_output(args.output)
    debye = is_debye_folder(args.model)
    if not debye and (args.temperatures is not None or args.n_atoms is not None):
        raise UsageError(
            f"--model {args.model} is not a CLOUD-DEBYE model; --temperatures / --n-atoms apply to CLOUD-DEBYE "
            "models (e.g. models/cloud-debye-laptop)"
        )
    if debye:
        from .cloud_debye import load_debye, parse_temperatures

        temperatures = parse_temperatures("300" if args.temperatures is None else args.temperatures)
        model = load_debye(args.model)
    else:
        temperatures, model = None, load_predictor(args.model)
    items = read_inputs(args.input)
    df = predict(
        items,
        model=model,
        jobs=args.jobs,
        progress=not args.quiet,
        temperatures=temperatures,
        n_atoms=args.n_atoms,
        layout=args.layout,
        **_limits(args),
    )
    _write_rows(df, args.output, index=False)
    per_input = df.drop_duplicates("id") if args.layout == "long" else df
    return _report_rows(per_input, args.output, id_col="id", verb="predicted", skipped=items.skipped_text())


def _cmd_explorer(args) -> int:
    from .inputs import read_inputs
    from .predictor import explore

    _check_output(args.output)
    items = read_inputs(args.input)
    page, df = explore(
        items,
        args.output,
        model=args.model,
        references=args.references,
        jobs=args.jobs,
        progress=not args.quiet,
        **_limits(args),
    )
    return _report_rows(df, page, id_col="id", verb="on the page", skipped=items.skipped_text())


def _cmd_corpus(args) -> int:
    from .corpus import load_pretraining_corpus, ship_corpus

    if args.ship:
        if args.limit is not None:
            raise UsageError("--ship builds the full corpus; drop --limit")
        print(f"shipped corpus -> {ship_corpus(jobs=args.jobs)}", file=sys.stderr)
    with _dask_client(args.dask) as client:
        corpus, table = load_pretraining_corpus(jobs=args.jobs, limit=args.limit, refresh=args.refresh, executor=client)
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
    unknown = [n for n in names if n not in REGISTRY]
    if unknown:  # a usage error (exit 1), not a failed fetch (exit 2)
        raise UsageError(f"unknown dataset {', '.join(map(repr, unknown))}; 'python -m cloudlib data list' lists them")
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

    if not args.book_only:
        if args.encoder:
            from .model import encoder_kind

            encoder_kind(args.encoder)  # a bad name or a missing folder fails before any notebook runs
        run(args.profile, only=args.only, resume=args.resume, encoder=args.encoder)
    if args.book_only or not args.no_book:
        _build_book(args.profile)
    return EXIT_OK


def _build_book(profile: str) -> None:
    from . import paths
    from .book import build

    t = time.perf_counter()
    out = build(profile)
    pages = sorted(out.rglob("*.html"))
    size = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
    print(
        f"[cloudlib book {profile}] {len(pages)} pages, {size / 1e6:.1f} MB, built in {time.perf_counter() - t:.1f} s: "
        f"open {paths.display(out / 'index.html')}",
        flush=True,
    )


def _cmd_ship(args) -> int:
    from .io import ship_folder

    dest = ship_folder(args.source, args.dest)
    print(f"shipped {args.source} -> {dest}")
    return EXIT_OK


def _cmd_book(args) -> int:
    _build_book(args.profile)
    return EXIT_OK


def _cmd_harvest(args) -> int:
    from .harvest import harvest, harvest_many, structures_url

    for url in args.base_url:
        try:
            structures_url(url)
        except ValueError as exc:
            raise UsageError(str(exc)) from None
    _check_timeout(args.timeout)
    if min(args.retries, args.max_pages or 0, args.max_structures or 0) < 0 or args.concurrency < 1:
        raise UsageError("--retries, --max-pages and --max-structures must be >= 0, --concurrency >= 1")
    kwargs = dict(
        filter=args.filter,
        max_structures=args.max_structures,
        max_pages=args.max_pages,
        variant=args.variant,
        timeout=args.timeout,
        retries=args.retries,
    )
    with _dask_client(args.dask) as client:
        kwargs["executor"] = client
        if len(args.base_url) > 1:  # several providers at once, one sub-folder each
            try:
                table = harvest_many(args.base_url, args.out_dir, concurrency=args.concurrency, **kwargs)
            except ValueError as exc:
                raise UsageError(str(exc)) from None
            for r in table.itertuples():
                state = "complete" if r.complete else "incomplete"
                tail = f"; {r.error}" if r.error else ""
                print(f"{r.url}: {r.rows} entries, {r.failed} failed, {state}{tail}", file=sys.stderr)
            return EXIT_ROWS_FAILED if (table["error"] != "").any() or table["failed"].sum() else EXIT_OK
        df = harvest(args.base_url[0], args.out_dir, progress=not args.quiet, **kwargs)
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
        corpus=args.corpus,
        prefetch=args.prefetch,
    )
    if int(os.environ.get("RANK", "0")) == 0:
        print(json.dumps(summary, indent=2))
    return EXIT_OK


def _cmd_matbench(args) -> int:
    from .config import preset
    from .finetune_studies import MODELS, run_matbench, summarise
    from .paths import output_dirs

    unknown = set(args.models) - set(MODELS)
    if unknown:
        raise UsageError(f"unknown models {sorted(unknown)}; choose from {list(MODELS)}")
    overrides = _overrides(args.set)
    if args.encoder:
        from .model import encoder_kind

        encoder_kind(args.encoder)  # a typed error naming it now, not after the data is loaded
        overrides["encoder"] = args.encoder
    config = preset("finetune", args.preset, **overrides)
    if args.tasks == ["offline"] or args.tasks[0].startswith("offline:"):
        from .finetune_studies import run_offline

        tasks = None if args.tasks == ["offline"] else [t.removeprefix("offline:") for t in args.tasks]
        out_dir = args.out or "data/multitask"
        folds = run_offline(
            tasks,
            config,
            models=args.models,
            jobs=args.jobs,
            out_dir=out_dir,
            name=args.preset,
            fit_missing=not args.collect,
            command="python -m cloudlib " + " ".join(sys.argv[1:]),
        )
        if len(folds):
            print(summarise(folds.assign(task=folds["task"] + " (" + folds["folds"] + ")")).round(4).to_string())
        missing = folds.attrs.get("missing", [])
        for line in folds.attrs.get("failed", []):
            print(f"failed {line}", file=sys.stderr)
        if missing:
            print(
                f"partial table: {len(missing)} fits not made yet (run without --collect to make them)", file=sys.stderr
            )
        return EXIT_ROWS_FAILED if folds.attrs.get("failed") else EXIT_OK
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
    for line in folds.attrs.get("failed", []):
        print(f"failed {line}", file=sys.stderr)
    return EXIT_ROWS_FAILED if folds.attrs.get("skipped") or folds.attrs.get("failed") else EXIT_OK


def build_parser() -> argparse.ArgumentParser:
    from .config import MAX_ATOMS, PRESETS, STRUCTURE_TIMEOUT
    from .paths import PROFILES

    parser = _Parser(prog="python -m cloudlib", description=__doc__.splitlines()[0])
    parser.add_argument("--debug", action="store_true", help="show the full traceback of an error")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    structures = (
        "a structure file (CIF, POSCAR, ... anything pymatgen reads), a folder of them, or a .json/.json.gz of "
        "structures"
    )

    def limits(p) -> None:
        p.add_argument(
            "--max-atoms",
            type=int,
            default=MAX_ATOMS,
            help=f"refuse structures with more atoms in the cell (CIFs before parsing); 0 = no limit (default {MAX_ATOMS})",
        )
        p.add_argument(
            "--timeout",
            type=float,
            default=None,
            help=f"seconds per structure, parsing included (default: {STRUCTURE_TIMEOUT:g} s in worker processes, "
            "none with --jobs 1)",
        )

    p = sub.add_parser("scope", help="SCOPE strings for structure files -> CSV (id, scope, error)")
    p.add_argument("input", help=structures)
    p.add_argument("-o", "--output", required=True, help="output CSV")
    p.add_argument("--variant", choices=["reduced", "full"], default="reduced")
    p.add_argument("--jobs", type=int, default=1, help="worker processes (0 = all cores)")
    p.add_argument("--dask", metavar="ADDRESS", help="run on a dask.distributed scheduler, e.g. tcp://host:8786")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    limits(p)
    p.set_defaults(func=_cmd_scope)

    p = sub.add_parser(
        "predict", help="predict a property (or CLOUD-DEBYE Θ, Cv, U, S, F) for structure files with a model -> CSV"
    )
    p.add_argument("input", help=structures)
    p.add_argument("--model", default="models/cloud-dielectric-laptop", help="predictor folder (save_predictor)")
    p.add_argument("-o", "--output", required=True, help="output CSV (id, scope, prediction, error)")
    p.add_argument("--jobs", type=int, default=1, help="worker processes for SCOPE (0 = all cores)")
    p.add_argument(
        "--temperatures",
        default=None,
        help="CLOUD-DEBYE models: START:STOP:STEP or a list '100,300' in K (default 300); Cv, U, S, F at each",
    )
    p.add_argument("--n-atoms", type=int, default=None, help="CLOUD-DEBYE: atoms per cell (default: primitive cell)")
    p.add_argument("--layout", choices=["wide", "long"], default="wide", help="CLOUD-DEBYE output layout")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    limits(p)
    p.set_defaults(func=_cmd_predict)

    p = sub.add_parser(
        "explorer", help="the offline CLOUD-DEBYE explorer page (Cv(T), band, failures) for your own crystals"
    )
    p.add_argument("input", help=structures)
    p.add_argument("-o", "--output", required=True, help="output HTML page")
    p.add_argument("--model", default="models/cloud-debye-laptop", help="CLOUD-DEBYE folder (single or ensemble)")
    p.add_argument("--references", default=None, help="CSV of reference curves: material, T, Cv [, label]")
    p.add_argument("--jobs", type=int, default=1, help="worker processes for SCOPE (0 = all cores)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    limits(p)
    p.set_defaults(func=_cmd_explorer)

    p = sub.add_parser("corpus", help="build the offline pre-training corpus and print its source table")
    p.add_argument("-o", "--output", help="write the deduplicated corpus (CSV)")
    p.add_argument("--jobs", type=int, default=1)
    p.add_argument("--limit", type=int, default=None, help="first N items per source")
    p.add_argument("--refresh", action="store_true", help="recompute even if cached")
    p.add_argument("--dask", metavar="ADDRESS", help="compute SCOPE on a dask.distributed scheduler (tcp://host:8786)")
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
    p.add_argument("--resume", action="store_true", help="skip notebooks whose last run succeeded with the same inputs")
    p.add_argument("--no-book", action="store_true", help="do not build the HTML book at the end")
    p.add_argument("--book-only", action="store_true", help="only build the book from the executed notebooks")
    p.add_argument(
        "--encoder",
        default=None,
        help="fine-tune (03, 05) from this encoder instead of the preset's: a model folder or a Hugging Face id, "
        "e.g. ChangwenXu/CLOUD (the authors' released weights; then 02's own pre-training can be left out with --only)",
    )
    p.set_defaults(func=_cmd_run)

    p = sub.add_parser("ship", help="copy a run's model folder (checked against its manifest) to where it ships")
    p.add_argument("source", help="e.g. results/cloud-dielectric-laptop")
    p.add_argument("dest", help="e.g. models/cloud-dielectric-laptop")
    p.set_defaults(func=_cmd_ship)

    p = sub.add_parser("book", help="build the offline HTML book from a profile's executed notebooks")
    p.add_argument("--profile", choices=list(PROFILES), default="laptop")
    p.set_defaults(func=_cmd_book)

    p = sub.add_parser("pretrain", help="MLM pre-training on the offline corpus (torchrun for several processes)")
    p.add_argument("--preset", choices=sorted(PRESETS["pretrain"]), default="smoke")
    p.add_argument("--out", required=True, help="output folder (checkpoint, log, final model)")
    p.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.pt")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a PretrainConfig field")
    p.add_argument("--jobs", type=int, default=1, help="processes for building the corpus cache")
    p.add_argument(
        "--prefetch",
        type=int,
        default=None,
        metavar="N",
        help="batches a background thread reads ahead (default: 2 on a GPU, 0 on the CPU); results are the same",
    )
    p.add_argument(
        "--corpus",
        default=None,
        help="pre-train on this corpus instead of the offline one: a CSV (.csv, .csv.gz) or Parquet file with a "
        "'scope' or 'cloud' column (e.g. the authors' 6.3 M CSV), a folder of such shards, a harvest folder (each "
        "tokenized once into OUT/token_shards, then streamed), or a token-shard folder",
    )
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
    p.add_argument(
        "--encoder",
        help="the pre-trained encoder CLOUD fine-tunes: a model folder (also the authors' layout, with ckpt/) or a "
        "Hugging Face id such as ChangwenXu/CLOUD (the released weights; needs internet); default: the preset's",
    )
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

    p = sub.add_parser("harvest", help="harvest OPTIMADE providers into SCOPE strings (resumable)")
    p.add_argument("base_url", nargs="+", help="one provider, or several (each into OUT_DIR/<host_port_path>)")
    p.add_argument("out_dir")
    p.add_argument("--concurrency", type=int, default=4, help="providers fetched at once (default 4)")
    p.add_argument("--filter", default=None, help="OPTIMADE filter, e.g. 'elements HAS \"Si\"'")
    p.add_argument("--max-structures", type=int, default=None)
    p.add_argument("--max-pages", type=int, default=None, help="stop once this many pages are on disk")
    p.add_argument(
        "--timeout",
        type=float,
        default=60.0,
        metavar="SECONDS",
        help="whole-request deadline per HTTP request (default 60); a page gets at most SECONDS x max(1, retries)",
    )
    p.add_argument("--retries", type=int, default=2, help="retries per page of 429/5xx/timeouts (default 2)")
    p.add_argument("--variant", choices=["reduced", "full"], default="reduced")
    p.add_argument("--dask", metavar="ADDRESS", help="compute SCOPE on a dask.distributed scheduler (tcp://host:8786)")
    p.add_argument("-q", "--quiet", action="store_true")
    p.set_defaults(func=_cmd_harvest)
    return parser


def main(argv: list[str] | None = None) -> int:
    from .registry import absolute_mirror

    args = build_parser().parse_args(argv)
    absolute_mirror()  # a relative CLOUD_DATA_MIRROR means: from where this command was started
    try:
        return args.func(args)
    except (UsageError, CloudError) as exc:
        if args.debug:
            raise
        print(f"error: {_one_line(exc)}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # anything unplanned: one line, exit 1; the traceback with --debug
        if args.debug:
            raise
        print(f"error: {type(exc).__name__}: {_one_line(exc)} (run with --debug for the traceback)", file=sys.stderr)
        return EXIT_USAGE


def _one_line(exc: BaseException) -> str:
    from .inputs import printable

    return " ".join(printable(exc).split())
