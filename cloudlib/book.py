"""The companion as a book: a static, offline HTML site made from the executed notebooks of a profile.

``build(profile)`` reads what the main job left in ``results[/<profile>]/`` and writes
``results[/<profile>]/book/``:

* ``index.html`` — the landing page: the paper's claims beside this project's measured numbers (the measured
  numbers are read from the results JSON files, the paper's from ``data/reference`` via
  :mod:`cloudlib.reference`; nothing is typed here), then the notebooks with their status and wall time, the
  results tables and the CLOUD-DEBYE explorer;
* ``NN_name.html`` — one page per executed notebook (nbconvert's ``lab`` template: figures embedded in place);
* ``tables/<name>.html`` — one page per results CSV;
* ``explorer.html`` — the CLOUD-DEBYE explorer in an iframe (its file copied beside it).

Why nbconvert rather than Jupyter Book: nbconvert is already a dependency of JupyterLab, needs no build
configuration, and works offline; Jupyter Book 2 (MyST) downloads its site theme on the first build. The pages load
nothing from the network: nbconvert's require.js and MathJax ``<script>`` tags (CDN URLs) are dropped and the
notebooks' ``$…$`` / ``$$…$$`` maths is converted to MathML at build time (``latex2mathml``), which browsers
render natively. Every page is one self-contained file, images included (base64).
"""

from __future__ import annotations

import html
import json
import re
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from . import paths, reference
from .errors import InputError
from .io import atomic_dir

# ----------------------------------------------------------------------------------------------- the claims


@dataclass(frozen=True)
class Claim:
    """One claim of the paper: what it says, the paper's number (from ``data/reference``, or a phrase where the
    paper gives none), and how to read this project's number from a results file (``measure(json) -> str``)."""

    claim: str
    paper: Callable[[], str]
    source: str  # results file the measured number is read from
    measure: Callable[[dict], str]
    notebook: str


def _ref(name: str, key: str, column: str = "value", by: str = "name", fmt: str = "{:.3g}") -> Callable[[], str]:
    return lambda: fmt.format(reference.value(name, key, column=column, by=by))


def _score(summary: dict, model: str, task: str = "matbench_dielectric") -> dict:
    for row in summary.get("scores", []):
        if row.get("model") == model and row.get("task") == task:
            return row
    raise KeyError(model)


def _dielectric(j: dict) -> str:
    cloud, rf = _score(j, "CLOUD"), _score(j, "RF-Magpie")
    return (
        f"CLOUD {cloud['mae_mean']:.3f} ± {cloud['mae_std']:.3f} over {cloud['folds']} folds "
        f"(RF-Magpie {rf['mae_mean']:.3f})"
    )


def _gain(j: dict) -> str:
    g = j["pretraining_gain"]
    return f"{g['relative']:.1%} ({g['folds_improved']} of {g['folds']} folds better)"


def _exponents(j: dict) -> str:
    p = j["params"]
    a, b = p["alpha"], p["beta"]
    return (
        f"α = {a['estimate']:.2f} [{a['lo']:.2f}, {a['hi']:.2f}], β = {b['estimate']:.2f} [{b['lo']:.2f}, "
        f"{b['hi']:.2f}] ({j.get('ci_level', 0.95):.0%} bootstrap; {j.get('n_points', '?')} runs)"
    )


def _metric(j: dict, prefix: str) -> str:
    for row in j["metrics"]:
        if str(row["model"]).startswith(prefix):
            return f"{row['mae_over_mad']:.3f} ({row['model']})"
    raise KeyError(prefix)


def _audit(j: dict) -> str:
    return "; ".join(
        f"{m}: {int(d['any'])} of {int(d['materials'])} materials violate"
        for m, d in j["consistency_violations"].items()
    )


CLAIMS = (
    Claim(
        "SCOPE strings are computed from structures alone (the authors' matbench_dielectric strings reproduced)",
        lambda: "the authors' released strings",
        "01_scope_summary.json",
        lambda j: f"{j['exactness']['identical']:,} of {j['exactness']['rows']:,} identical",
        "01_scope",
    ),
    Claim(
        "CLOUD on matbench_dielectric (MAE of n)",
        _ref("matbench_dielectric_mae", "CLOUD (paper)", column="mae", by="model"),
        "03_finetune_summary.json",
        _dielectric,
        "03_finetune",
    ),
    Claim(
        "Pre-training helps: CLOUD vs the same network trained from scratch",
        lambda: f"{reference.value('pretraining_gain', 'matbench_dielectric'):.1%} lower MAE",
        "03_finetune_summary.json",
        _gain,
        "03_finetune",
    ),
    Claim(
        "Pre-training loss follows L = E + A/N^α + B/D^β",
        lambda: (
            f"α = {reference.value('scaling_exponents', 'alpha'):.2f}, "
            f"β = {reference.value('scaling_exponents', 'beta'):.2f}"
        ),
        "04_scaling_fit.json",
        _exponents,
        "04_scaling",
    ),
    Claim(
        "CLOUD-DEBYE: Cv(300 K) on the authors' test split, MAE/MAD",
        _ref("cloud_debye_scores", "CLOUD-DEBYE", column="mae_over_mad", fmt="{:.3f}"),
        "05_debye_summary.json",
        lambda j: _metric(j, "CLOUD-DEBYE (log"),
        "05_debye",
    ),
    Claim(
        "Direct regression of Cv(300 K), MAE/MAD",
        _ref("cloud_debye_scores", "direct regression", column="mae_over_mad", fmt="{:.3f}"),
        "05_debye_summary.json",
        lambda j: _metric(j, "direct"),
        "05_debye",
    ),
    Claim(
        "CLOUD-DEBYE is thermodynamically consistent at every temperature (1–3000 K audit)",
        lambda: "by construction",
        "05_debye_summary.json",
        _audit,
        "05_debye",
    ),
)


def claims_table(results: str | Path) -> pd.DataFrame:
    """The landing page's table: claim, paper, measured (read from ``results``), source. A claim whose results
    file is missing or lacks the number says so ("not measured in this run") instead of failing."""
    results = Path(results)
    rows = []
    for c in CLAIMS:
        try:
            paper = c.paper()
        except Exception as exc:  # noqa: BLE001 - shown on the page, the book still builds
            paper = f"(reference missing: {type(exc).__name__})"
        f = results / c.source
        if not f.is_file():
            measured = "not measured in this run"
        else:
            try:
                measured = c.measure(json.loads(f.read_text()))
            except (KeyError, TypeError, ValueError, IndexError) as exc:
                measured = f"not in {c.source} ({type(exc).__name__}: {exc})"
        rows.append(
            {"claim": c.claim, "paper": paper, "measured": measured, "source": c.source, "notebook": c.notebook}
        )
    return pd.DataFrame(rows)


# ----------------------------------------------------------------------------------------------- maths


_CODE = re.compile(r"(```.*?```|`[^`\n]*`)", re.S)
_DISPLAY = re.compile(r"\$\$(.+?)\$\$", re.S)
_INLINE = re.compile(r"(?<![\\$])\$(?!\$)([^$\n]+?)(?<![\\\s])\$(?!\$)")


def markdown_math_to_mathml(text: str) -> str:
    """Replace ``$$…$$`` and ``$…$`` outside code spans by MathML (rendered by browsers without JavaScript).
    A formula latex2mathml cannot convert is kept as its TeX in ``<code>``."""
    from latex2mathml.converter import convert

    def conv(tex: str, display: str) -> str:
        try:
            out = convert(tex.strip(), display=display)
        except Exception:  # noqa: BLE001 - keep the TeX readable rather than fail the book
            return f"<code>{html.escape(tex)}</code>"
        return f"\n\n{out}\n\n" if display == "block" else out

    parts = _CODE.split(text)
    for i in range(0, len(parts), 2):  # even parts are outside code
        p = _DISPLAY.sub(lambda m: conv(m.group(1), "block"), parts[i])
        parts[i] = _INLINE.sub(lambda m: conv(m.group(1), "inline"), p)
    return "".join(parts)


# ----------------------------------------------------------------------------------------------- pages

_NAV_STYLE = """nav.book { position: sticky; top: 0; background: #f4f6f8; border-bottom: 1px solid #d0d7de; padding: .5rem 1rem;
  font: 14px system-ui, sans-serif; z-index: 10; display: flex; gap: 1.2rem; flex-wrap: wrap; }
nav.book a { color: #0550ae; text-decoration: none; } nav.book a:hover { text-decoration: underline; }
"""  # the navigation bar's rules: on the book's own pages and on the notebook pages
_STYLE = (
    """
body.book { font-family: system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; max-width: 70rem;
  margin: 0 auto; padding: 1rem 2rem; color: #1b1b1b; line-height: 1.5; }
"""
    + _NAV_STYLE
    + """table.book { border-collapse: collapse; margin: .8rem 0; font-size: 14px; }
table.book th, table.book td { border: 1px solid #d0d7de; padding: .3rem .6rem; vertical-align: top; text-align: left; }
table.book th { background: #f4f6f8; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
.muted { color: #57606a; font-size: 13px; } iframe.explorer { width: 100%; height: 80vh; border: 1px solid #d0d7de; }
"""
)


def _nav(pages: list[tuple[str, str]], current: str = "") -> str:
    links = [
        f'<a href="{href}"{" aria-current=page" if href == current else ""}>{html.escape(title)}</a>'
        for href, title in pages
    ]
    return '<nav class="book">' + "".join(links) + "</nav>"


def _page(title: str, body: str, nav: str) -> str:
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{html.escape(title)}</title><style>{_STYLE}</style></head>"
        f'<body class="book">{nav}\n{body}\n</body></html>\n'
    )


def _exporter():
    """nbconvert's lab HTML exporter without network scripts, with the book's navigation bar on top."""
    import jinja2
    from nbconvert import HTMLExporter

    template = (
        "{%- extends 'lab/index.html.j2' -%}\n"
        "{%- block html_head_js_requirejs -%}{%- endblock html_head_js_requirejs -%}\n"
        "{%- block html_head_js_mathjax -%}{%- endblock html_head_js_mathjax -%}\n"
        "{%- block html_head_js_mermaidjs -%}{%- endblock html_head_js_mermaidjs -%}\n"
        "{%- block extra_css -%}<style>{{ resources.book_style }}</style>{%- endblock extra_css -%}\n"
        "{%- block body_header -%}{{ super() }}{{ resources.book_nav }}{%- endblock body_header -%}\n"
    )
    return HTMLExporter(
        template_name="lab",
        template_file="cloud_book.html.j2",
        extra_loaders=[jinja2.DictLoader({"cloud_book.html.j2": template})],
        exclude_input_prompt=True,
        exclude_output_prompt=True,
    )


def _notebook_page(path: Path, nav: str) -> str:
    import nbformat

    nb = nbformat.read(path, as_version=4)
    for cell in nb.cells:
        if cell.cell_type == "markdown":
            cell.source = markdown_math_to_mathml(cell.source)
    body, _ = _exporter().from_notebook_node(nb, resources={"book_nav": nav, "book_style": _NAV_STYLE})
    return body


def _table_page(csv: Path, nav: str, results: Path) -> str:
    df = pd.read_csv(csv, compression="infer")
    shown = df.head(500)
    note = f"{len(df):,} rows" + (", the first 500 shown" if len(df) > 500 else "")
    body = (
        f"<h1>{html.escape(csv.name)}</h1><p class=muted>{note}; the file: "
        f"<code>{html.escape(paths.display(csv))}</code></p>"
        + shown.to_html(classes="book", index=False, float_format=lambda x: f"{x:.6g}", border=0, na_rep="")
    )
    return _page(csv.name, body, nav)


def _title(nb: Path) -> str:
    try:
        cells = json.loads(nb.read_text())["cells"]
        for c in cells:
            src = "".join(c["source"]) if c["cell_type"] == "markdown" else ""
            m = re.search(r"^#\s+(.+)$", src, re.M)
            if m and "run-info" not in c.get("metadata", {}).get("tags", []):
                return m.group(1).strip()
    except (OSError, ValueError, KeyError):
        pass
    return nb.stem


def build(
    profile: str = "laptop",
    out: str | Path | None = None,
    results: str | Path | None = None,
    figures: str | Path | None = None,
) -> Path:
    """Build the book of ``profile`` from ``results[/<profile>]/executed/*.ipynb`` (see the module docstring)
    into ``out`` (default ``results[/<profile>]/book``); ``results`` / ``figures`` override the profile's folders.
    Returns the folder, written atomically (a failed build leaves the previous book). Raises
    :class:`~cloudlib.errors.InputError` when there are no executed notebooks."""
    t0 = time.perf_counter()
    if results is None or figures is None:
        fig_default, res_default = paths.output_dirs(profile)
        figures, results = Path(figures or fig_default), Path(results or res_default)
    figures, results = Path(figures), Path(results)
    executed = sorted((results / "executed").glob("[0-9][0-9]_*.ipynb"))
    if not executed:
        raise InputError(
            f"no executed notebooks in {paths.display(results / 'executed')}: run the main job first "
            f"(python -m cloudlib run --profile {profile})",
            profile,
        )
    out = Path(out) if out else results / "book"
    tables = sorted(p for p in results.glob("*.csv*") if p.suffix in (".csv", ".gz"))
    explorer = figures / "cloud_debye_explorer.html"
    state = {}
    if (results / f"run_{profile}.json").is_file():
        state = json.loads((results / f"run_{profile}.json").read_text()).get("notebooks", {})

    pages = [("index.html", "Home")] + [(f"{nb.stem}.html", nb.stem) for nb in executed]
    if explorer.is_file():
        pages.append(("explorer.html", "Cv(T) explorer"))
    pages.append(("tables.html", "Results tables"))

    with atomic_dir(out) as tmp:
        (tmp / "tables").mkdir()
        for nb in executed:
            (tmp / f"{nb.stem}.html").write_text(_notebook_page(nb, _nav(pages, f"{nb.stem}.html")))
        table_nav = _nav([("../" + h, t) for h, t in pages])
        for csv in tables:
            name = csv.name.removesuffix(".gz").removesuffix(".csv")
            (tmp / "tables" / f"{name}.html").write_text(_table_page(csv, table_nav, results))
        if explorer.is_file():
            shutil.copy2(explorer, tmp / explorer.name)
            body = (
                "<h1>CLOUD-DEBYE explorer</h1><p class=muted>Search a material, move the temperature slider; "
                f'the page also opens on its own: <a href="{explorer.name}">{explorer.name}</a></p>'
                f'<iframe class="explorer" src="{explorer.name}" title="CLOUD-DEBYE explorer"></iframe>'
            )
            (tmp / "explorer.html").write_text(_page("CLOUD-DEBYE explorer", body, _nav(pages, "explorer.html")))
        rows = "".join(
            f'<tr><td><a href="tables/{c.name.removesuffix(".gz").removesuffix(".csv")}.html">{html.escape(c.name)}'
            f"</a></td><td class=num>{c.stat().st_size:,}</td></tr>"
            for c in tables
        )
        (tmp / "tables.html").write_text(
            _page(
                "Results tables",
                f"<h1>Results tables ({len(tables)})</h1><table class=book><tr><th>file</th><th>bytes</th></tr>"
                f"{rows}</table>",
                _nav(pages, "tables.html"),
            )
        )
        (tmp / "index.html").write_text(_index(profile, results, executed, state, tables, explorer, pages, t0))
    return out


def _index(profile, results, executed, state, tables, explorer, pages, t0) -> str:
    claims = claims_table(results)
    have = {nb.stem for nb in executed}

    def where(r) -> str:  # a link only to a page the book has
        name = f'<a href="{r.notebook}.html">{r.notebook}</a>' if r.notebook in have else r.notebook
        return f"{name}<br><span class=muted>{html.escape(r.source)}</span>"

    crow = "".join(
        f"<tr><td>{html.escape(r.claim)}</td><td>{html.escape(r.paper)}</td><td><b>{html.escape(r.measured)}</b>"
        f"</td><td>{where(r)}</td></tr>"
        for r in claims.itertuples()
    )
    nrow = "".join(
        f'<tr><td><a href="{nb.stem}.html">{html.escape(_title(nb))}</a></td>'
        f"<td>{html.escape(str(state.get(nb.stem, {}).get('status', '?')))}</td>"
        f"<td class=num>{state.get(nb.stem, {}).get('seconds', float('nan')):,.0f}</td></tr>"
        for nb in executed
    )
    total = sum(float(state.get(nb.stem, {}).get("seconds", 0.0)) for nb in executed)
    explorer_li = (
        '<li><a href="explorer.html">The CLOUD-DEBYE explorer</a>: Cv(T) of every test material, offline</li>'
        if explorer.is_file()
        else ""
    )
    body = f"""
<h1>cloud-companion: the executed notebooks</h1>
<p>A reproducible companion to <i>CLOUD: A Scalable and Physics-Informed Foundation Model for Crystal
Representation Learning</i> (Xu, Zhu, Viswanathan; arXiv:2506.17345; Nat. Commun. 2026). This book was built from
the <b>{html.escape(profile)}</b> profile's executed notebooks on {time.strftime("%Y-%m-%d %H:%M")}
(<code>python -m cloudlib book --profile {html.escape(profile)}</code>).</p>
<h2>The paper's claims and what this run measured</h2>
<p class=muted>Measured numbers are read from this run's results files; the paper's from
<code>data/reference/</code>. The smoke profile runs tiny models on a few hundred rows: its numbers check the
plumbing, not the science.</p>
<table class=book><tr><th>claim</th><th>paper</th><th>this run</th><th>where</th></tr>{crow}</table>
<h2>Notebooks</h2>
<table class=book><tr><th>notebook</th><th>status</th><th>seconds</th></tr>{nrow}
<tr><td>total</td><td></td><td class=num>{total:,.0f}</td></tr></table>
<h2>More</h2><ul>{explorer_li}
<li><a href="tables.html">Results tables</a> ({len(tables)} CSV files, one page each)</li></ul>
"""
    return _page("cloud-companion", body, _nav(pages, "index.html"))
