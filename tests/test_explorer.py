"""The offline CLOUD-DEBYE explorer: page content (pure Python) and behaviour in headless Chromium.

The browser tests drive the Debian ``chromium`` through its matching ``chromedriver`` with selenium.
Without them they are skipped with the reason, except under CI (``$CI`` set), where they fail: CI
installs both (``.ci/run``), so a skip there would hide a broken page.
"""

from __future__ import annotations

import json
import os
import re
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from cloudlib import debye
from cloudlib.explorer import explorer_html, write_explorer

ROOT = Path(__file__).resolve().parent.parent
R = debye.R
NASTY = 'Evil</script><b id="injected">x</b> & "q" \u2028 mp-666'


def debye_cv(theta: float, n_atoms: float, T: float) -> float:
    """Reference Debye Cv in J/(K·mol of cells), by adaptive quadrature (independent of the page's JS)."""
    return float(debye.reference_heat_capacity(theta, T, n_atoms))


def table() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "name": ["NaCl mp-22862", "Si mp-149", "MgO mp-1265", "C mp-66", NASTY],
            "scope": ["1 6 a O D D | 4a 4b | Na 0.5 Cl 0.5", "Si scope", "MgO scope", "C scope", "<scope>"],
            "theta": [321.0, 645.0, 946.0, 2230.0, 150.0],
            "n_atoms": [2, 2, 2, 2, 3],
            "cv300_true": [48.9, 40.1, np.nan, 12.0, 70.0],
            "cv300_pred": [48.1, 39.5, 33.0, 11.4, 69.0],
        }
    )


REFS = {
    "NaCl mp-22862": {"T": [50, 100, 200, 300, 600], "cv": [22.0, 38.0, 46.5, 48.4, 49.5], "label": "CHGNet phonons"}
}


def embedded(text: str) -> dict:
    m = re.search(r'<script type="application/json" id="explorer-data">(.*?)</script>', text, re.S)
    assert m, "no embedded data"
    return json.loads(m.group(1))


# ---------------------------------------------------------------- pure Python


def test_page_is_self_contained_and_embeds_the_data(tmp_path):
    path = write_explorer(table(), tmp_path / "sub" / "explorer.html", title="A <test> & title", reference_curves=REFS)
    assert path == tmp_path / "sub" / "explorer.html" and path.is_file()
    text = path.read_text()
    assert not re.search(r"""(?:src|href|action)\s*=\s*["']?\s*(?:https?:)?//""", text, re.I)
    assert not re.search(r"""url\(\s*["']?\s*(?:https?:)?//|@import|<link\b|<iframe\b""", text, re.I)
    assert "fetch(" not in text and "XMLHttpRequest" not in text
    assert text.count("</script>") == 2 and 'id="injected"' not in text  # the nasty name stays data
    assert "<title>A &lt;test&gt; &amp; title</title>" in text
    data = embedded(text)
    assert [m["name"] for m in data["materials"]] == table()["name"].tolist()
    assert [m["theta"] for m in data["materials"]] == table()["theta"].tolist()
    assert data["materials"][2]["cv300_true"] is None  # NaN -> null, valid JSON
    assert data["references"]["NaCl mp-22862"]["points"][0] == [50.0, 22.0]
    assert data["temperatures"] == {"min": 1.0, "initial": 300.0, "max": 1500.0}


def test_bad_rows_and_arguments():
    t = table()
    t.loc[1, "theta"] = np.nan
    t.loc[2, "theta"] = -5.0
    with pytest.warns(UserWarning, match="skipped 2 row"):
        data = embedded(explorer_html(t))
    assert len(data["materials"]) == 3 and data["dropped"] == 2
    with pytest.warns(UserWarning, match="matches no material"):
        explorer_html(table(), reference_curves={"nope": {"T": [1], "cv": [1]}})
    with pytest.raises(ValueError, match="n_atoms"):
        explorer_html(table().drop(columns="n_atoms"))
    with pytest.raises(ValueError, match="temperatures"):
        explorer_html(table(), temperatures=(300, 10, 1500))
    with pytest.raises(ValueError, match="differ in length"):
        explorer_html(table(), reference_curves={"Si mp-149": {"T": [1, 2], "cv": [1]}})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        explorer_html(table()[["name", "scope", "theta", "n_atoms"]])  # optional columns optional


# ---------------------------------------------------------------- headless Chromium


@pytest.fixture(scope="module")
def page(browser, tmp_path_factory):
    path = write_explorer(table(), tmp_path_factory.mktemp("explorer") / "explorer.html", reference_curves=REFS)
    browser.get(path.as_uri())
    return browser


def errors(drv) -> list[dict]:
    return [e for e in drv.get_log("browser") if e["level"] in ("SEVERE", "ERROR")]


def readout(drv) -> tuple[str, float, float]:
    el = drv.find_element("id", "readout")
    return el.text, float(el.get_attribute("data-cv")), float(el.get_attribute("data-t"))


def set_slider(drv, T: int):
    drv.execute_script(
        "const s = document.getElementById('temp-slider'); s.value = arguments[0];"
        "s.dispatchEvent(new Event('input', {bubbles: true}));",
        str(T),
    )


def test_loads_without_errors_and_reads_out(page):
    assert errors(page) == []
    assert page.title == "CLOUD-DEBYE explorer"
    text, cv, T = readout(page)
    assert T == 300 and text.startswith("Cv(300 K) = ") and "J/(K·mol)" in text
    assert "Θ = 321 K" in text and "3NR = 49.89" in text and "NaCl mp-22862" in text
    assert cv == pytest.approx(debye_cv(321, 2, 300), rel=1e-4)
    assert f"{debye_cv(321, 2, 300):.2f}" in text
    svg = page.find_element("id", "plot")
    labels = [t.text for t in svg.find_elements("css selector", "text.axis-label")]
    assert labels == ["Temperature T (K)", "Cv (J/(K·mol))"]
    assert len(svg.find_elements("css selector", "circle.ref.pt")) == 5  # the reference points


def test_js_debye_matches_quadrature(page):
    cases = [(theta, n, T) for theta in (50.0, 321.0, 2230.0) for n in (1, 7) for T in (1.0, 10.0, 77.0, 300.0, 1499.0)]
    got = page.execute_script("return arguments[0].map(c => cloudExplorer.debyeCv(c[0], c[1], c[2]));", cases)
    want = [debye_cv(*c) for c in cases]
    np.testing.assert_allclose(got, want, rtol=1e-10)
    # high-temperature limit: Dulong-Petit
    assert page.execute_script("return cloudExplorer.debyeCv(10, 2, 1e5)") == pytest.approx(6 * R, rel=1e-6)


def test_slider_changes_the_readout(page):
    from selenium.webdriver.common.keys import Keys

    page.execute_script("cloudExplorer.choose(0); cloudExplorer.setTemperature(300)")
    before = readout(page)
    set_slider(page, 77)
    text, cv, T = readout(page)
    assert text != before[0] and T == 77 and text.startswith("Cv(77 K) = ")
    assert cv == pytest.approx(debye_cv(321, 2, 77), rel=1e-4)
    assert page.find_element("id", "temp-value").text == "77 K"
    page.find_element("id", "temp-slider").send_keys(Keys.ARROW_RIGHT)
    assert readout(page)[2] == 78
    set_slider(page, 300)
    assert errors(page) == []


def test_choosing_and_searching_materials(page):
    from selenium.webdriver.support.ui import Select

    page.execute_script("cloudExplorer.choose(0); cloudExplorer.setTemperature(300)")
    before = readout(page)
    Select(page.find_element("id", "material")).select_by_visible_text("MgO mp-1265")
    text, cv, _ = readout(page)
    assert text != before[0] and "MgO mp-1265" in text and "Θ = 946 K" in text
    assert cv == pytest.approx(debye_cv(946, 2, 300), rel=1e-4)
    assert not page.find_elements("css selector", "rect.label-pt")  # MgO has no label Cv

    search = page.find_element("id", "search")
    search.clear()
    search.send_keys("mp-1")  # Si mp-149, MgO mp-1265
    names = [o.text for o in page.find_elements("css selector", "#material option")]
    assert names == ["Si mp-149", "MgO mp-1265"]
    assert "2 of 5 match" in page.find_element("id", "match-count").text
    search.send_keys("49")  # unique now: chosen while typing
    assert "Si mp-149" in readout(page)[0]

    search.clear()
    search.send_keys("evil")  # names are data: shown verbatim, never parsed as HTML
    assert [o.text for o in page.find_elements("css selector", "#material option")] == [
        " ".join(NASTY.replace("\u2028", " ").split())
    ]
    assert NASTY.split("\u2028")[0].strip() in readout(page)[0]
    assert not page.find_elements("id", "injected")
    search.clear()
    search.send_keys("nacl")
    assert "NaCl mp-22862" in readout(page)[0]
    assert errors(page) == []


def test_screenshot(page, tmp_path):
    """Saved under $CLOUD_TEST_ARTIFACTS when set (CI keeps it), else in pytest's temporary folder; never in
    the repository."""
    page.execute_script("cloudExplorer.setTemperature(250)")
    folder = Path(os.environ.get("CLOUD_TEST_ARTIFACTS", tmp_path))
    folder.mkdir(parents=True, exist_ok=True)
    shot = folder / "explorer.png"
    assert page.save_screenshot(str(shot))
    assert shot.stat().st_size > 10_000
    assert errors(page) == []


# ---------------------------------------------------------------- the explorer of the user's own crystals


@pytest.fixture(scope="module")
def own_crystals(tmp_path_factory):
    """A folder of good and bad CIFs, a tiny 2-member CLOUD-DEBYE ensemble, and the page the CLI builds."""
    from conftest import need
    from pymatgen.core import Lattice, Structure

    from cloudlib import cli
    from cloudlib import cloud_debye as cd
    from cloudlib.config import preset

    root = tmp_path_factory.mktemp("own")
    cifs = root / "cifs"
    cifs.mkdir()
    nacl = Structure.from_spacegroup("Fm-3m", Lattice.cubic(5.64), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    nacl.to(filename=str(cifs / "nacl.cif"))
    Structure(Lattice.cubic(3.35), ["Po"], [[0, 0, 0]]).to(filename=str(cifs / "po.cif"))
    Structure.from_spacegroup("Fm-3m", Lattice.cubic(4.21), ["Mg", "O"], [[0, 0, 0], [0.5, 0.5, 0.5]]).to(
        filename=str(cifs / "mgo.cif")
    )
    (cifs / "broken.cif").write_text("data_broken\n_cell_length_a 5\n")
    Structure(Lattice.cubic(4), [{"Fe": 0.5, "Co": 0.5}], [[0, 0, 0]]).to(filename=str(cifs / "alloy.cif"))
    train = pd.read_csv(need("cloud/cloud_cv_train_and_val.csv")).head(120)
    ens = cd.fit_ensemble(
        train["cloud"], train["cv"], train["n_atoms"], preset("debye", "smoke", epochs=1), k=2, progress=False
    )
    model = cd.save_ensemble(ens, root / "model")
    refs = root / "refs.csv"
    pd.DataFrame({"material": ["nacl.cif"] * 3, "T": [50, 100, 300], "Cv": [30.0, 42.0, 49.0]}).to_csv(
        refs, index=False
    )
    page = root / "page.html"
    code = cli.main(["explorer", str(cifs), "-o", str(page), "--model", str(model), "--references", str(refs), "-q"])
    return {"cifs": cifs, "model": model, "page": page, "code": code}


def test_explorer_command_lists_good_inputs_and_reports_bad_ones(own_crystals):
    assert own_crystals["code"] == 2  # two inputs failed; the page is still written
    data = embedded(own_crystals["page"].read_text())
    assert sorted(m["name"] for m in data["materials"]) == ["mgo.cif", "nacl.cif", "po.cif"]
    assert sorted(f["name"] for f in data["failures"]) == ["alloy.cif", "broken.cif"]
    assert all(m["theta_lo"] <= m["theta"] <= m["theta_hi"] for m in data["materials"])
    assert list(data["references"]) == ["nacl.cif"]


def test_explorer_command_refuses_bad_references(own_crystals, tmp_path, capsys):
    from cloudlib import cli

    bad = tmp_path / "refs.csv"
    bad.write_text("name,T,Cv\nx,1,2\n")
    code = cli.main(["explorer", str(own_crystals["cifs"]), "-o", str(tmp_path / "p.html"), "--model",
                     str(own_crystals["model"]), "--references", str(bad), "-q"])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 1 and "needs columns material, T, Cv" in err and "Traceback" not in err


def test_own_crystals_page_in_the_browser_matches_predict(own_crystals, browser, tmp_path):
    from cloudlib.predictor import predict

    temps = [5.0, 50.0, 300.0, 1000.0]
    df = predict(own_crystals["cifs"], model=own_crystals["model"], temperatures=temps).set_index("id")
    browser.get_log("browser")  # drop earlier pages' messages
    browser.get(own_crystals["page"].as_uri())
    assert errors(browser) == []
    options = [o.text for o in browser.find_elements("css selector", "#material option")]
    assert sorted(options) == ["mgo.cif", "nacl.cif", "po.cif"]
    box = browser.find_element("id", "failures")
    assert box.is_displayed() and "alloy.cif" in box.text and "broken.cif" in box.text
    assert "Disordered" in box.text and browser.find_element("id", "failure-count").text == "2"
    mats = browser.execute_script("return cloudExplorer.materials")
    for i, m in enumerate(mats):
        row = df.loc[m["name"]]
        assert m["theta"] == pytest.approx(row["theta_K"], rel=1e-12)
        for T in temps:
            got = browser.execute_script(
                "const m = cloudExplorer.materials[arguments[0]]; const T = arguments[1];"
                "return [cloudExplorer.debyeCv(m.theta, m.n, T), cloudExplorer.debyeCv(m.theta_hi, m.n, T),"
                " cloudExplorer.debyeCv(m.theta_lo, m.n, T)];",
                i,
                T,
            )
            want = [row[f"cv_{T:g}K"], row[f"cv_lo_{T:g}K"], row[f"cv_hi_{T:g}K"]]
            np.testing.assert_allclose(got, want, rtol=1e-8)
    # the readout shows the band; a screenshot for the record
    browser.execute_script("cloudExplorer.choose(0); cloudExplorer.setTemperature(300)")
    el = browser.find_element("id", "readout")
    lo, hi = float(el.get_attribute("data-cv-lo")), float(el.get_attribute("data-cv-hi"))
    assert lo <= float(el.get_attribute("data-cv")) <= hi and "band" in el.text
    assert len(browser.find_elements("css selector", "path.band")) == 1
    shots = Path(os.environ.get("CLOUD_TEST_ARTIFACTS", tmp_path))
    shots.mkdir(parents=True, exist_ok=True)
    assert browser.save_screenshot(str(shots / "explorer_own_crystals.png"))
    assert errors(browser) == []
