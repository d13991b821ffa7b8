"""An offline, single-file HTML explorer for CLOUD-DEBYE predictions.

:func:`write_explorer` turns a table of predicted Debye temperatures into ONE self-contained HTML page
(inline CSS, vanilla JavaScript, the data embedded as JSON; no CDN, no fonts, no fetches), so it opens
from ``file://`` on a laptop without a network and can be attached to a report or e-mail.

The page lets you type to filter the materials, pick one, and drag a temperature slider; it plots the
Debye heat capacity computed in the browser,

    Cv(T) = 9 N R (T/Θ)^3 ∫_0^{Θ/T} x^4 e^x / (e^x - 1)^2 dx      [J/(K·mol of cells)],

with N atoms per cell and R = 8.314462618 J/(K·mol), together with the Dulong–Petit limit 3NR, a
marker at the slider temperature, the label Cv(300 K) when the table has one, and optional reference
points (e.g. CHGNet phonon heat capacities).

Numerics (JavaScript, mirrored in the tests): the integral is truncated at x = 60 (the tail beyond is
< 1e-19 of the total) and integrated with composite 8-point Gauss–Legendre on panels of width <= 1 in
x. Against ``scipy.integrate.quad`` the relative error is below 2e-15 for Θ/T from 1e-4 to 1e4, i.e.
at double precision; the curve is sampled at 400 temperatures.
"""

from __future__ import annotations

import html
import json
import math
import warnings
from collections.abc import Mapping
from pathlib import Path

from .io import write_text

REQUIRED = ("name", "scope", "theta", "n_atoms")
OPTIONAL = ("cv300_true", "cv300_pred", "theta_lo", "theta_hi")


def _number(value) -> float | None:
    """A finite float, or None for NaN/None/inf (JSON has no NaN)."""
    if value is None:
        return None
    try:
        v = float(value)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


def _records(table) -> tuple[list[dict], int]:
    missing = [c for c in REQUIRED if c not in table.columns]
    if missing:
        raise ValueError(f"explorer table lacks column(s) {missing}; needs {list(REQUIRED)}")
    cols = list(REQUIRED) + [c for c in OPTIONAL if c in table.columns]
    rows, dropped = [], 0
    for r in table[cols].to_dict("records"):
        theta, n = _number(r["theta"]), _number(r["n_atoms"])
        if theta is None or theta <= 0 or n is None or n <= 0:
            dropped += 1
            continue
        rows.append(
            {
                "name": str(r["name"]),
                "scope": r["scope"] if isinstance(r["scope"], str) else "",
                "theta": theta,
                "n": n,
                **{c: _number(r[c]) if c in r else None for c in OPTIONAL},
            }
        )
    if dropped:
        warnings.warn(f"explorer: skipped {dropped} row(s) without a positive finite theta and n_atoms", stacklevel=3)
    if not rows:
        raise ValueError("explorer table has no row with a positive finite theta and n_atoms")
    return rows, dropped


def _references(reference_curves: Mapping | None, names: set[str]) -> dict:
    out = {}
    for name, curve in (reference_curves or {}).items():
        name = str(name)
        T = [_number(t) for t in curve["T"]]
        cv = [_number(c) for c in curve["cv"]]
        if len(T) != len(cv):
            raise ValueError(f"reference curve {name!r}: T and cv differ in length ({len(T)} vs {len(cv)})")
        if name not in names:
            warnings.warn(f"explorer: reference curve for {name!r} matches no material; ignored", stacklevel=3)
            continue
        pts = [[t, c] for t, c in zip(T, cv) if t is not None and c is not None and t > 0]
        out[name] = {"label": str(curve.get("label", "reference")), "points": pts}
    return out


def _failures(failures) -> list[dict]:
    """[{"name", "error"}] from a mapping name -> error or a sequence of (name, error) pairs."""
    items = failures.items() if isinstance(failures, Mapping) else (failures or [])
    return [{"name": str(k), "error": str(v)} for k, v in items]


def _embed_json(obj) -> str:
    """JSON safe to put inside <script>: no '<', '>', '&' can close the element or open a comment."""
    text = json.dumps(obj, allow_nan=False, ensure_ascii=True, separators=(",", ":"))
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def explorer_html(
    table,
    title: str = "CLOUD-DEBYE explorer",
    reference_curves: Mapping | None = None,
    temperatures: tuple[float, float, float] = (1, 300, 1500),
    failures=None,
    band_label: str = "",
) -> str:
    """The explorer page as a string (see :func:`write_explorer`)."""
    t_min, t_init, t_max = (float(t) for t in temperatures)
    if not 0 < t_min <= t_init <= t_max:
        raise ValueError(f"temperatures must be (min, initial, max) with 0 < min <= initial <= max, got {temperatures}")
    rows, dropped = _records(table)
    payload = {
        "materials": rows,
        "references": _references(reference_curves, {r["name"] for r in rows}),
        "temperatures": {"min": t_min, "initial": t_init, "max": t_max},
        "dropped": dropped,
        "failures": _failures(failures),
        "band_label": band_label or "ensemble band",
    }
    return (
        _TEMPLATE.replace("%%TITLE%%", html.escape(title))
        .replace("%%CSS%%", _CSS)
        .replace("%%JS%%", _JS)
        .replace("%%DATA%%", _embed_json(payload))
    )


def write_explorer(
    table,
    path: str | Path,
    title: str = "CLOUD-DEBYE explorer",
    reference_curves: Mapping | None = None,
    temperatures: tuple[float, float, float] = (1, 300, 1500),
    failures=None,
    band_label: str = "",
) -> Path:
    """Write the interactive CLOUD-DEBYE explorer to ``path`` (atomically) and return the path.

    table: DataFrame with ``name`` (label, e.g. formula + id), ``scope`` (SCOPE string), ``theta``
        (predicted Debye temperature, K), ``n_atoms`` (atoms per cell) and optionally ``cv300_true``
        (label Cv at 300 K) and ``cv300_pred``, both in J/(K·mol of cells), and ``theta_lo`` / ``theta_hi``
        (an uncertainty band of Θ: the page shades Cv between Cv(Θ_hi) and Cv(Θ_lo), labelled ``band_label``).
        Rows without a positive finite theta/n_atoms are skipped with a warning.
    reference_curves: optional {name: {"T": [...], "cv": [...], "label": "CHGNet phonons"}} drawn as
        points over the Debye curve of the material called ``name``.
    temperatures: (min, initial, max) of the temperature slider, K.
    failures: inputs that could not be predicted, {name: error} or [(name, error)], listed on the page.
    """
    return write_text(path, explorer_html(table, title, reference_curves, temperatures, failures, band_label))


_TEMPLATE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>%%TITLE%%</title>
<style>%%CSS%%</style>
</head>
<body>
<header>
  <h1>%%TITLE%%</h1>
  <p class="sub">Debye-model heat capacity from predicted Debye temperatures &middot;
    <span id="count"></span></p>
</header>
<main>
  <section class="controls">
    <label for="search">Find a material</label>
    <input id="search" type="search" placeholder="Type part of a formula or id&hellip;" autocomplete="off"
           spellcheck="false">
    <select id="material" size="9" aria-label="Matching materials"></select>
    <p id="match-count" class="muted"></p>
    <label for="temp-slider">Temperature <output id="temp-value" for="temp-slider"></output></label>
    <input id="temp-slider" type="range" step="1">
    <dl id="details"></dl>
  </section>
  <section class="figure">
    <p id="readout" aria-live="polite"></p>
    <svg id="plot" viewBox="0 0 720 440" role="img" aria-label="Heat capacity against temperature"></svg>
    <p class="muted hint">Click or drag on the plot to set the temperature; arrow keys move the slider.</p>
  </section>
</main>
<section id="failures" hidden>
  <h2>Inputs that could not be predicted (<span id="failure-count"></span>)</h2>
  <ul id="failure-list"></ul>
</section>
<footer class="muted">
  Cv(T) = 9NR (T/&Theta;)&sup3; &int;<sub>0</sub><sup>&Theta;/T</sup> x&#8308;e<sup>x</sup>/(e<sup>x</sup>&minus;1)&sup2; dx
  per mole of cells (N atoms per cell, R = 8.314462618 J/(K&middot;mol)); the integral is truncated at
  x = 60 and evaluated by composite 8-point Gauss&ndash;Legendre (relative error &lt; 1e-14).
  Dashed line: Dulong&ndash;Petit limit 3NR. Generated by cloudlib.explorer; works offline.
</footer>
<script type="application/json" id="explorer-data">%%DATA%%</script>
<script>%%JS%%</script>
</body>
</html>
"""

_CSS = """
:root { --fg:#1f2933; --muted:#616e7c; --line:#d9e2ec; --accent:#2563eb; --mark:#dc2626;
        --ref:#059669; --label:#d97706; --bg:#f7f9fb; }
* { box-sizing: border-box; }
body { margin: 0; font: 15px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, Helvetica, Arial, sans-serif;
       color: var(--fg); background: var(--bg); }
header, main, footer { max-width: 1180px; margin: 0 auto; padding: 0 20px; }
header { padding-top: 18px; }
h1 { font-size: 1.45rem; margin: 0 0 2px; font-weight: 650; }
.sub { margin: 0 0 14px; color: var(--muted); }
main { display: grid; grid-template-columns: minmax(260px, 330px) 1fr; gap: 20px; align-items: start; }
@media (max-width: 820px) { main { grid-template-columns: 1fr; } }
section { background: #fff; border: 1px solid var(--line); border-radius: 10px; padding: 14px 16px; }
label { display: block; font-weight: 600; margin: 8px 0 4px; }
input[type=search], select { width: 100%; font: inherit; border: 1px solid #bcccdc; border-radius: 6px;
       padding: 6px 8px; background: #fff; color: inherit; }
select { padding: 2px; margin-top: 6px; }
select option { padding: 2px 4px; }
input[type=range] { width: 100%; accent-color: var(--accent); }
output { font-weight: 400; color: var(--accent); margin-left: 4px; }
.muted { color: var(--muted); font-size: 0.86rem; }
#match-count { margin: 4px 0 6px; }
dl { display: grid; grid-template-columns: auto 1fr; gap: 3px 10px; margin: 12px 0 0; font-size: 0.92rem; }
dt { color: var(--muted); }
dd { margin: 0; font-variant-numeric: tabular-nums; }
dd.scope { font: 0.8rem/1.3 ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; word-break: break-all; }
#readout { margin: 0 0 8px; font-size: 1.05rem; font-variant-numeric: tabular-nums; }
#readout b { color: var(--mark); }
svg { width: 100%; height: auto; display: block; touch-action: none; cursor: crosshair; user-select: none; }
svg text { font: 12px system-ui, -apple-system, "Segoe UI", Roboto, Helvetica, Arial, sans-serif;
           fill: var(--fg); }
svg .axis-label { font-size: 13px; font-weight: 600; }
svg .grid { stroke: #eef2f6; }
svg .axis { stroke: #9aa5b1; }
svg .curve { fill: none; stroke: var(--accent); stroke-width: 2.4; }
svg .dp { stroke: #7b8794; stroke-width: 1.5; stroke-dasharray: 6 5; }
svg .marker-line { stroke: var(--mark); stroke-width: 1; stroke-dasharray: 3 3; }
svg .marker { fill: var(--mark); stroke: #fff; stroke-width: 1.5; }
svg .ref { fill: #fff; stroke: var(--ref); stroke-width: 2; }
svg .label-pt { fill: var(--label); stroke: #fff; stroke-width: 1.5; }
.hint { margin: 6px 0 0; }
footer { margin-top: 16px; padding-bottom: 24px; }
#failures { max-width: 1140px; margin: 16px auto 0; }
#failures h2 { font-size: 1.05rem; margin: 0 0 6px; color: var(--mark); }
#failures li { font-size: 0.88rem; margin: 2px 0; }
#failures code { font: 0.84rem ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; }
svg .band { fill: var(--accent); fill-opacity: 0.16; stroke: none; }
"""

_JS = r"""
"use strict";
(function () {
  const DATA = JSON.parse(document.getElementById("explorer-data").textContent);
  const M = DATA.materials, REFS = DATA.references, TR = DATA.temperatures;
  const R = 8.314462618;           // J/(K mol)
  const X_MAX = 60;                // integrand tail beyond x = 60 is < 1e-19 of the integral
  // 8-point Gauss-Legendre nodes and weights on [-1, 1]
  const GX = [-0.9602898564975363, -0.7966664774136267, -0.5255324099163290, -0.1834346424956498,
               0.1834346424956498,  0.5255324099163290,  0.7966664774136267,  0.9602898564975363];
  const GW = [0.1012285362903763, 0.2223810344533745, 0.3137066458778873, 0.3626837833783620,
              0.3626837833783620, 0.3137066458778873, 0.2223810344533745, 0.1012285362903763];

  function integrand(x) {          // x^4 e^x/(e^x-1)^2 written without overflow
    if (x <= 0) return 0;
    const e = Math.expm1(-x);
    return x * x * x * x * Math.exp(-x) / (e * e);
  }
  function debyeIntegral(u) {      // int_0^min(u, 60) of the integrand; panels of width <= 1
    u = Math.min(u, X_MAX);
    if (!(u > 0)) return 0;
    const n = Math.max(1, Math.ceil(u)), h = u / n;
    let s = 0;
    for (let k = 0; k < n; k++) {
      const c = (k + 0.5) * h;
      for (let i = 0; i < 8; i++) s += GW[i] * integrand(c + 0.5 * h * GX[i]);
    }
    return 0.5 * h * s;
  }
  function debyeCv(theta, nAtoms, T) {   // J/(K mol of cells)
    if (!(T > 0)) return 0;
    const r = T / theta;
    return 9 * nAtoms * R * r * r * r * debyeIntegral(theta / T);
  }

  const $ = (id) => document.getElementById(id);
  const search = $("search"), select = $("material"), slider = $("temp-slider"), svg = $("plot");
  const readout = $("readout"), details = $("details");
  const SVGNS = "http://www.w3.org/2000/svg";
  const W = 720, H = 440, PAD = {l: 66, r: 18, t: 16, b: 54};
  const lower = M.map((m) => m.name.toLowerCase());
  const MAX_OPTIONS = 1000;
  let current = 0;

  slider.min = TR.min; slider.max = TR.max; slider.value = TR.initial;
  $("count").textContent = M.length + (M.length === 1 ? " material" : " materials") +
    (DATA.dropped ? " (" + DATA.dropped + " without a valid \u0398 left out)" : "");

  const fmt = (v, d) => (v === null || v === undefined || !isFinite(v)) ? "\u2013" : v.toFixed(d);
  function el(tag, attrs, text) {
    const e = document.createElementNS(SVGNS, tag);
    for (const k in attrs) e.setAttribute(k, attrs[k]);
    if (text !== undefined) e.textContent = text;
    svg.appendChild(e);
    return e;
  }
  function niceStep(range, count) {
    const raw = range / count, p = Math.pow(10, Math.floor(Math.log10(raw))), f = raw / p;
    return (f < 1.5 ? 1 : f < 3 ? 2 : f < 7 ? 5 : 10) * p;
  }

  function filter() {
    const terms = search.value.toLowerCase().split(/\s+/).filter(Boolean);
    const hits = [];
    for (let i = 0; i < M.length; i++) if (terms.every((t) => lower[i].includes(t))) hits.push(i);
    select.replaceChildren();
    for (const i of hits.slice(0, MAX_OPTIONS)) {
      const o = document.createElement("option");
      o.value = String(i); o.textContent = M[i].name; o.selected = (i === current);
      select.appendChild(o);
    }
    $("match-count").textContent = hits.length === M.length ? M.length + " materials" :
      hits.length + " of " + M.length + " match" + (hits.length > MAX_OPTIONS ? " (first " + MAX_OPTIONS + " listed)" : "");
    const exact = hits.find((i) => lower[i] === search.value.trim().toLowerCase());
    if (exact !== undefined) choose(exact);
    else if (hits.length && !hits.includes(current)) choose(hits[0]);
  }

  function choose(i) {
    current = i;
    if (select.value !== String(i)) select.value = String(i);
    const m = M[i];
    details.replaceChildren();
    const rows = [["\u0398 (predicted)", fmt(m.theta, 1) + " K"], ["atoms per cell N", fmt(m.n, 0)],
                  ["3NR", fmt(3 * m.n * R, 2) + " J/(K\u00b7mol)"],
                  ["Cv(300 K), Debye", fmt(debyeCv(m.theta, m.n, 300), 2) + " J/(K\u00b7mol)"]];
    if (m.theta_lo !== null && m.theta_hi !== null)
      rows.push(["\u0398, " + DATA.band_label, fmt(m.theta_lo, 1) + " \u2013 " + fmt(m.theta_hi, 1) + " K"]);
    if (m.cv300_pred !== null) rows.push(["Cv(300 K), predicted", fmt(m.cv300_pred, 2) + " J/(K\u00b7mol)"]);
    if (m.cv300_true !== null) rows.push(["Cv(300 K), label", fmt(m.cv300_true, 2) + " J/(K\u00b7mol)"]);
    if (REFS[m.name]) rows.push([REFS[m.name].label, REFS[m.name].points.length + " points"]);
    rows.push(["SCOPE", m.scope || "\u2013"]);
    for (const [k, v] of rows) {
      const dt = document.createElement("dt"), dd = document.createElement("dd");
      dt.textContent = k; dd.textContent = v;
      if (k === "SCOPE") dd.className = "scope";
      details.append(dt, dd);
    }
    draw();
  }

  function draw() {
    const m = M[current], T = Number(slider.value), dp = 3 * m.n * R;
    const cv = debyeCv(m.theta, m.n, T);
    const ref = REFS[m.name];
    $("temp-value").textContent = T + " K";
    readout.replaceChildren();
    const b = document.createElement("b");
    b.textContent = "Cv(" + T + " K) = " + fmt(cv, 2) + " J/(K\u00b7mol)";
    readout.append(b, " \u00b7 \u0398 = " + fmt(m.theta, 0) + " K \u00b7 3NR = " + fmt(dp, 2) +
                   " \u00b7 " + m.name);
    readout.dataset.cv = String(cv); readout.dataset.t = String(T); readout.dataset.index = String(current);
    const hasBand = m.theta_lo !== null && m.theta_hi !== null;
    if (hasBand) {
      const lo = debyeCv(m.theta_hi, m.n, T), hi = debyeCv(m.theta_lo, m.n, T);
      readout.append(" \u00b7 " + DATA.band_label + " " + fmt(lo, 2) + "\u2013" + fmt(hi, 2));
      readout.dataset.cvLo = String(lo); readout.dataset.cvHi = String(hi);
    } else { delete readout.dataset.cvLo; delete readout.dataset.cvHi; }

    let yTop = dp;
    if (ref) for (const p of ref.points) if (p[0] <= TR.max) yTop = Math.max(yTop, p[1]);
    if (m.cv300_true !== null) yTop = Math.max(yTop, m.cv300_true);
    yTop *= 1.1;
    const xs = (t) => PAD.l + (t / TR.max) * (W - PAD.l - PAD.r);
    const ys = (c) => H - PAD.b - (c / yTop) * (H - PAD.t - PAD.b);

    svg.replaceChildren();
    const xStep = niceStep(TR.max, 7), yStep = niceStep(yTop, 6);
    for (let t = 0; t <= TR.max + 1e-9; t += xStep) {
      el("line", {x1: xs(t), x2: xs(t), y1: PAD.t, y2: H - PAD.b, class: "grid"});
      el("text", {x: xs(t), y: H - PAD.b + 17, "text-anchor": "middle"}, String(+t.toFixed(6)));
    }
    for (let c = 0; c <= yTop + 1e-9; c += yStep) {
      el("line", {x1: PAD.l, x2: W - PAD.r, y1: ys(c), y2: ys(c), class: "grid"});
      el("text", {x: PAD.l - 7, y: ys(c) + 4, "text-anchor": "end"}, String(+c.toFixed(6)));
    }
    el("line", {x1: PAD.l, x2: W - PAD.r, y1: H - PAD.b, y2: H - PAD.b, class: "axis"});
    el("line", {x1: PAD.l, x2: PAD.l, y1: PAD.t, y2: H - PAD.b, class: "axis"});
    el("text", {x: (PAD.l + W - PAD.r) / 2, y: H - 12, "text-anchor": "middle", class: "axis-label"},
       "Temperature T (K)");
    el("text", {x: 16, y: (PAD.t + H - PAD.b) / 2, "text-anchor": "middle", class: "axis-label",
                transform: "rotate(-90 16 " + (PAD.t + H - PAD.b) / 2 + ")"}, "Cv (J/(K\u00b7mol))");

    el("line", {x1: PAD.l, x2: W - PAD.r, y1: ys(dp), y2: ys(dp), class: "dp"});
    el("text", {x: W - PAD.r - 4, y: ys(dp) - 6, "text-anchor": "end"}, "Dulong\u2013Petit 3NR = " + fmt(dp, 2));

    const n = 400;
    if (hasBand) {
      let up = "", down = "";
      for (let k = 0; k <= n; k++) {
        const t = (k / n) * TR.max;
        up += (k ? "L" : "M") + xs(t).toFixed(2) + "," + ys(debyeCv(m.theta_lo, m.n, t)).toFixed(2);
      }
      for (let k = n; k >= 0; k--) {
        const t = (k / n) * TR.max;
        down += "L" + xs(t).toFixed(2) + "," + ys(debyeCv(m.theta_hi, m.n, t)).toFixed(2);
      }
      el("path", {d: up + down + "Z", class: "band"});
    }
    let d = "";
    for (let k = 0; k <= n; k++) {
      const t = (k / n) * TR.max;
      d += (k ? "L" : "M") + xs(t).toFixed(2) + "," + ys(debyeCv(m.theta, m.n, t)).toFixed(2);
    }
    el("path", {d: d, class: "curve"});

    const legend = [["curve", "Debye model, \u0398 = " + fmt(m.theta, 0) + " K"]];
    if (hasBand) legend.push(["band", DATA.band_label]);
    if (m.cv300_true !== null && 300 <= TR.max) {
      el("rect", {x: xs(300) - 5, y: ys(m.cv300_true) - 5, width: 10, height: 10, class: "label-pt"});
      legend.push(["label", "label Cv(300 K)"]);
    }
    if (ref) {
      for (const p of ref.points) if (p[0] <= TR.max) el("circle", {cx: xs(p[0]), cy: ys(p[1]), r: 4, class: "ref pt"});
      legend.push(["ref", ref.label]);
    }
    el("line", {x1: xs(T), x2: xs(T), y1: PAD.t, y2: H - PAD.b, class: "marker-line"});
    el("circle", {cx: xs(T), cy: ys(cv), r: 5.5, class: "marker"});

    let ly = H - PAD.b - 14 - 20 * (legend.length - 1);
    const lx = W - PAD.r - 230;
    for (const [kind, text] of legend) {
      if (kind === "curve") el("line", {x1: lx, x2: lx + 22, y1: ly, y2: ly, class: "curve"});
      if (kind === "ref") el("circle", {cx: lx + 11, cy: ly, r: 4, class: "ref"});
      if (kind === "band") el("rect", {x: lx, y: ly - 6, width: 22, height: 12, class: "band"});
      if (kind === "label") el("rect", {x: lx + 6, y: ly - 5, width: 10, height: 10, class: "label-pt"});
      el("text", {x: lx + 30, y: ly + 4}, text);
      ly += 20;
    }
  }

  function setTemperature(T) {
    slider.value = String(Math.round(Math.min(TR.max, Math.max(TR.min, T))));
    draw();
  }
  function pointer(ev) {
    const pt = svg.createSVGPoint();
    pt.x = ev.clientX; pt.y = ev.clientY;
    const p = pt.matrixTransform(svg.getScreenCTM().inverse());
    setTemperature(((p.x - PAD.l) / (W - PAD.l - PAD.r)) * TR.max);
  }

  search.addEventListener("input", filter);
  search.addEventListener("keydown", (ev) => {
    if (ev.key === "Enter" && select.options.length) choose(Number(select.options[0].value));
  });
  select.addEventListener("change", () => { if (select.value !== "") choose(Number(select.value)); });
  slider.addEventListener("input", draw);
  svg.addEventListener("pointerdown", (ev) => { svg.setPointerCapture(ev.pointerId); pointer(ev); });
  svg.addEventListener("pointermove", (ev) => { if (ev.buttons & 1) pointer(ev); });

  const FAIL = DATA.failures || [];
  if (FAIL.length) {
    $("failures").hidden = false;
    $("failure-count").textContent = String(FAIL.length);
    for (const f of FAIL) {
      const li = document.createElement("li"), c = document.createElement("code");
      c.textContent = f.name;
      li.append(c, " \u2014 " + f.error);
      $("failure-list").appendChild(li);
    }
  }

  window.cloudExplorer = {debyeCv, debyeIntegral, materials: M, failures: FAIL, choose, setTemperature,
                          current: () => current};
  filter();
  choose(current);
})();
"""
