"""The book (cloudlib.book) and the cleaning of executed notebooks (cloudlib.runner.clean_notebook): pages, maths,
claims read from results files, and the built site in headless Chromium (no console errors, every image decodes,
every internal link resolves, the explorer works offline inside its iframe)."""

from __future__ import annotations

import base64
import io
import json
import os
import re
from pathlib import Path
from urllib.parse import unquote, urlparse

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import nbformat  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402

from cloudlib import book, runner  # noqa: E402
from cloudlib.errors import InputError  # noqa: E402
from cloudlib.explorer import write_explorer  # noqa: E402

WIDGET = "application/vnd.jupyter.widget-view+json"


def _png() -> str:
    fig, ax = plt.subplots(figsize=(3, 2))
    ax.plot([0, 1, 2], [0, 1, 4])
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode()


def executed_notebook(title: str) -> nbformat.NotebookNode:
    nb = nbformat.v4.new_notebook()
    nb.metadata["widgets"] = {"application/vnd.jupyter.widget-state+json": {"state": {"x": 1}}}
    code = nbformat.v4.new_code_cell("fig")
    code.outputs = [
        nbformat.v4.new_output("stream", name="stderr", text="  0%|   | 0/9\r 50%|#  | 4/9\r100%|###| 9/9\ndone\n"),
        nbformat.v4.new_output("display_data", data={WIDGET: {"model_id": "abc"}, "text/plain": "HBox()"}),
        nbformat.v4.new_output("display_data", data={"image/png": _png(), "text/plain": "<Figure>"}),
        nbformat.v4.new_output("stream", name="stdout", text="\r\r"),
    ]
    nb.cells = [
        nbformat.v4.new_markdown_cell(
            f"# {title}\n\nThe heat capacity $C_V = \\partial U/\\partial T$ and\n\n"
            "$$C_V(T) = 9NR\\,(T/\\Theta)^3 \\int_0^{\\Theta/T} \\frac{x^4 e^x}{(e^x-1)^2}\\,dx$$\n\n"
            "costs `$HOME` nothing."
        ),
        nbformat.v4.new_code_cell('profile = "smoke"', metadata={"tags": ["parameters"]}),
        code,
    ]
    return nb


# ---------------------------------------------------------------- clean executed notebooks


def test_clean_notebook_drops_widgets_and_progress_walls_and_says_how_it_ran():
    nb = json.loads(nbformat.writes(executed_notebook("01 · SCOPE")))
    clean = runner.clean_notebook(nb, "smoke", 12.3)
    assert "widgets" not in clean["metadata"]
    outs = clean["cells"][-1]["outputs"]
    assert not any(WIDGET in o.get("data", {}) for o in outs)
    streams = [o for o in outs if o["output_type"] == "stream"]
    assert [s["text"] for s in streams] == ["100%|###| 9/9\ndone\n"]  # the last frame, the empty one dropped
    assert any("image/png" in o.get("data", {}) for o in outs)
    info = clean["cells"][0]
    assert info["metadata"]["tags"] == ["run-info"] and "**smoke**" in info["source"] and "12 s" in info["source"]
    again = runner.clean_notebook(json.loads(json.dumps(clean)), "smoke", 12.3)
    assert sum("run-info" in c["metadata"].get("tags", []) for c in again["cells"]) == 1
    assert again["cells"][1:] == clean["cells"][1:]
    nbformat.validate(nbformat.from_dict(again))


# ---------------------------------------------------------------- maths and claims


def test_maths_becomes_mathml_outside_code_only():
    out = book.markdown_math_to_mathml("a $x^2$ b `$HOME` c\n\n$$\\int_0^1 f$$\n\nd costs $5 only")
    assert out.count("<math") == 2 and 'display="block"' in out and 'display="inline"' in out
    assert "`$HOME`" in out and "costs $5 only" in out
    assert "<code>" in book.markdown_math_to_mathml("$\\frac{$")  # unconvertible: kept as TeX, never lost


def test_claims_are_read_from_results_not_typed(tmp_path):
    empty = book.claims_table(tmp_path)
    assert len(empty) == len(book.CLAIMS) and (empty["measured"] == "not measured in this run").all()
    assert empty.loc[1, "paper"] == "0.304"  # from data/reference/matbench_dielectric_mae.csv
    summary = {
        "scores": [
            {"task": "matbench_dielectric", "model": "CLOUD", "mae_mean": 0.1234, "mae_std": 0.01, "folds": 5},
            {"task": "matbench_dielectric", "model": "RF-Magpie", "mae_mean": 0.4321, "mae_std": 0.02, "folds": 5},
        ],
        "pretraining_gain": {"relative": 0.25, "folds_improved": 4, "folds": 5},
    }
    (tmp_path / "03_finetune_summary.json").write_text(json.dumps(summary))
    (tmp_path / "01_scope_summary.json").write_text(json.dumps({"exactness": {"identical": 7}}))
    t = book.claims_table(tmp_path).set_index("notebook")
    assert t.loc["03_finetune", "measured"].iloc[0] == "CLOUD 0.123 ± 0.010 over 5 folds (RF-Magpie 0.432)"
    assert t.loc["03_finetune", "measured"].iloc[1] == "25.0% (4 of 5 folds better)"
    assert t.loc["01_scope", "measured"].startswith("not in 01_scope_summary.json (KeyError")


# ---------------------------------------------------------------- the built book


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    root = tmp_path_factory.mktemp("run")
    results, figures = root / "results", root / "figures"
    (results / "executed").mkdir(parents=True)
    figures.mkdir()
    state = {}
    for stem, title in (("01_scope", "01 · SCOPE <strings>"), ("02_pretrain", "02 · pre-training")):
        raw = json.loads(nbformat.writes(executed_notebook(title)))
        nbformat.write(
            nbformat.from_dict(runner.clean_notebook(raw, "smoke", 3.0)), results / "executed" / f"{stem}.ipynb"
        )
        state[stem] = {"status": "ok", "seconds": 3.0}
    (results / "run_smoke.json").write_text(json.dumps({"notebooks": state}))
    pd.DataFrame({"model": ["CLOUD", "<b>x</b>"], "mae": [0.3, 0.4]}).to_csv(results / "03_scores.csv", index=False)
    pd.DataFrame({"a": range(600)}).to_csv(results / "big.csv.gz", index=False)
    explorer_table = pd.DataFrame(
        {
            "name": ["NaCl", "Si"],
            "scope": ["s1", "s2"],
            "theta": [321.0, 645.0],
            "n_atoms": [2, 2],
            "cv300_true": [48.9, 40.1],
            "cv300_pred": [48.1, 39.5],
        }
    )
    write_explorer(explorer_table, figures / "cloud_debye_explorer.html")
    out = book.build("smoke", out=root / "book", results=results, figures=figures)
    return out


def test_book_has_a_page_per_notebook_and_table_and_loads_nothing_from_the_network(built):
    names = sorted(str(p.relative_to(built)) for p in built.rglob("*.html"))
    assert names == [
        "01_scope.html",
        "02_pretrain.html",
        "cloud_debye_explorer.html",
        "explorer.html",
        "index.html",
        "tables.html",
        "tables/03_scores.html",
        "tables/big.html",
    ]
    for page in built.rglob("*.html"):
        text = page.read_text()
        assert not re.search(r"""(src|href)=["']?(https?:)?//""", text), page.name  # nothing fetched
    nb = (built / "01_scope.html").read_text()
    assert "<math" in nb and "data:image/png;base64," in nb and "$$" not in nb
    assert "run-info" in nb or "profile <strong>smoke</strong>" in nb
    assert "&lt;strings&gt;" in (built / "index.html").read_text()  # titles are escaped
    assert "&lt;b&gt;x&lt;/b&gt;" in (built / "tables" / "03_scores.html").read_text()
    assert "600 rows, the first 500 shown" in (built / "tables" / "big.html").read_text()


def test_build_without_executed_notebooks_is_a_named_error(tmp_path):
    with pytest.raises(InputError, match="no executed notebooks"):
        book.build("smoke", out=tmp_path / "b", results=tmp_path, figures=tmp_path)


def test_book_in_the_browser(built, browser, tmp_path):
    """Every page: no console errors, every image decodes, every internal link points at a file of the book;
    the explorer works inside its iframe. Screenshots under $CLOUD_TEST_ARTIFACTS (else pytest's tmp)."""
    shots = Path(os.environ.get("CLOUD_TEST_ARTIFACTS", tmp_path))
    shots.mkdir(parents=True, exist_ok=True)
    browser.get_log("browser")
    for page in sorted(built.rglob("*.html")):
        browser.get(page.as_uri())
        logs = [e for e in browser.get_log("browser") if e["level"] in ("SEVERE", "ERROR")]
        assert logs == [], (page.name, logs)
        widths = browser.execute_script("return Array.from(document.images).map(i => i.complete ? i.naturalWidth : -1)")
        assert all(w > 0 for w in widths), (page.name, widths)
        for href in browser.execute_script("return Array.from(document.links).map(a => a.href)"):
            url = urlparse(href)
            assert url.scheme == "file", (page.name, href)
            assert Path(unquote(url.path)).is_file(), (page.name, href)
    browser.get((built / "index.html").as_uri())
    assert browser.save_screenshot(str(shots / "book_index.png"))
    browser.get((built / "01_scope.html").as_uri())
    assert browser.execute_script("return document.querySelectorAll('math').length") >= 2
    assert browser.save_screenshot(str(shots / "book_notebook.png"))
    browser.get((built / "explorer.html").as_uri())
    browser.switch_to.frame(browser.find_element("css selector", "iframe.explorer"))
    try:
        browser.execute_script("cloudExplorer.setTemperature(250)")
        assert "NaCl" in browser.find_element("tag name", "body").text
    finally:
        browser.switch_to.default_content()
    assert [e for e in browser.get_log("browser") if e["level"] in ("SEVERE", "ERROR")] == []
    assert browser.save_screenshot(str(shots / "book_explorer.png"))


# ---------------------------------------------------------------- the runner's --resume and summary


@pytest.fixture()
def fake_papermill(monkeypatch, tmp_path):
    """runner.run with papermill replaced by a copy (the notebook 'runs' instantly) and the profile's output
    folders in tmp: what --resume skips and what the summary says, without executing anything."""
    import papermill

    from cloudlib import paths

    calls = []

    def execute(src, dst, parameters, **kw):
        calls.append(Path(src).stem)
        nb = nbformat.read(src, as_version=4)
        if parameters.get("n_analysis") == -1:
            raise RuntimeError("boom")
        nbformat.write(nb, dst)

    monkeypatch.setattr(papermill, "execute_notebook", execute)
    monkeypatch.setattr(paths, "output_dirs", lambda profile="smoke": (tmp_path / "fig", tmp_path / "res"))
    (tmp_path / "res").mkdir()
    return calls


def test_resume_skips_what_succeeded_with_the_same_inputs(fake_papermill, tmp_path, capsys, monkeypatch):
    calls = fake_papermill
    first = runner.run("smoke")
    every = [nb.stem for nb in runner.notebooks()]
    assert calls == every and all(v["status"] == "ok" for v in first["notebooks"].values())
    out = capsys.readouterr().out
    assert "notebook" in out and "status" in out and "total (this run)" in out
    executed = nbformat.read(tmp_path / "res" / "executed" / "01_scope.ipynb", as_version=4)
    assert "run-info" in executed.cells[0].metadata.tags  # cleaned for reading
    calls.clear()
    runner.run("smoke", resume=True)
    assert calls == []
    assert capsys.readouterr().out.count("skipped") >= len(every)
    # a changed parameter re-runs that notebook and every one after it (their inputs are its outputs)
    real = runner.profile_parameters

    def changed(profile, root=None):
        return {**real(profile, root), "04_scaling": {"n_boot": 7}}

    monkeypatch.setattr(runner, "profile_parameters", changed)
    runner.run("smoke", resume=True)
    assert calls == ["04_scaling", "05_debye"]
    # without --resume everything runs
    calls.clear()
    runner.run("smoke")
    assert calls == every


def test_a_failing_notebook_stops_the_run_and_is_recorded(fake_papermill, monkeypatch, capsys):
    calls = fake_papermill
    real = runner.profile_parameters
    monkeypatch.setattr(
        runner, "profile_parameters", lambda p, root=None: {**real(p, root), "02_pretrain": {"n_analysis": -1}}
    )
    with pytest.raises(RuntimeError, match="boom"):
        runner.run("smoke")
    assert calls == ["01_scope", "02_pretrain"]
    assert "failed" in capsys.readouterr().out


def test_claims_read_the_scaling_fit_and_the_audit_as_the_notebooks_write_them(tmp_path):
    ci = {"estimate": 0.41, "lo": 0.31, "hi": 0.56}
    (tmp_path / "04_scaling_fit.json").write_text(
        json.dumps({"params": {"alpha": ci, "beta": {**ci, "estimate": 0.39}}, "ci_level": 0.95, "n_points": 36})
    )
    audit = {"CLOUD-DEBYE": {"materials": 360, "negative": 0, "any": 0}, "direct": {"materials": 360, "any": 359}}
    (tmp_path / "05_debye_summary.json").write_text(json.dumps({"consistency_violations": audit, "metrics": []}))
    t = book.claims_table(tmp_path).set_index("notebook")
    assert t.loc["04_scaling", "measured"] == "α = 0.41 [0.31, 0.56], β = 0.39 [0.31, 0.56] (95% bootstrap; 36 runs)"
    assert (
        t.loc["05_debye", "measured"].iloc[-1]
        == "CLOUD-DEBYE: 0 of 360 materials violate; direct: 359 of 360 materials violate"
    )
