"""Run the numbered notebooks headlessly with papermill under a profile (smoke / laptop / paper).

A profile's ``params/<profile>.yaml`` names, per notebook, the preset of its step and its run sizes; every name
is checked against the notebook's ``parameters`` cell before anything runs."""

from __future__ import annotations

import ast
import json
import time
from pathlib import Path

import yaml

from . import paths
from .io import write_json


def notebooks(root: Path | None = None) -> list[Path]:
    """The numbered notebooks, in order (``notebooks/NN_*.ipynb``)."""
    root = root or paths.repo_root()
    return sorted((root / "notebooks").glob("[0-9][0-9]_*.ipynb"))


def notebook_parameters(nb: Path) -> dict:
    """Names and literal defaults of the notebook's ``parameters`` cell.

    Raises ValueError unless there is exactly one such cell and it holds literal assignments only.
    """
    cells = [c for c in json.loads(nb.read_text())["cells"] if "parameters" in c.get("metadata", {}).get("tags", [])]
    if len(cells) != 1:
        raise ValueError(f"{nb.name}: expected one cell tagged 'parameters', found {len(cells)}")
    src = "".join(cells[0]["source"])
    out = {}
    for node in ast.parse(src).body:
        if not (isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name)):
            raise ValueError(f"{nb.name}: parameters cell may only hold `name = literal` lines")
        out[node.targets[0].id] = ast.literal_eval(node.value)  # raises for non-literals
    return out


def profile_parameters(profile: str, root: Path | None = None) -> dict[str, dict]:
    """``params/<profile>.yaml``: notebook stem -> parameter overrides."""
    if profile not in paths.PROFILES:
        raise ValueError(f"profile must be one of {paths.PROFILES}, got {profile!r}")
    root = root or paths.repo_root()
    return yaml.safe_load((root / "params" / f"{profile}.yaml").read_text()) or {}


WIDGET_MIME = "application/vnd.jupyter.widget-view+json"


def _last_frame(text: str) -> str:
    """A stream as a terminal shows it: each line's text after its last carriage return."""
    return "\n".join(line.rsplit("\r", 1)[-1] for line in text.split("\n"))


def clean_notebook(nb: dict, profile: str, seconds: float, status: str = "ok") -> dict:
    """An executed notebook made for reading: widget state and widget outputs (progress bars) removed, streams
    reduced to what a terminal would show (no walls of ``\r`` progress lines), and a first markdown cell (tag
    ``run-info``) with the profile, status, wall time and date. Idempotent."""
    nb["metadata"].pop("widgets", None)
    for cell in nb["cells"]:
        if cell["cell_type"] != "code":
            continue
        outs = []
        for out in cell.get("outputs", []):
            if out.get("output_type") in ("display_data", "execute_result") and WIDGET_MIME in out.get("data", {}):
                continue
            if out.get("output_type") == "stream":
                text = out["text"] if isinstance(out["text"], str) else "".join(out["text"])
                text = _last_frame(text)
                if not text.strip():
                    continue
                out["text"] = text
            outs.append(out)
        cell["outputs"] = outs
    nb["cells"] = [c for c in nb["cells"] if "run-info" not in c.get("metadata", {}).get("tags", [])]
    info = {
        "cell_type": "markdown",
        "metadata": {"tags": ["run-info"]},
        "source": f"*Executed by `python -m cloudlib run --profile {profile}` on {time.strftime('%Y-%m-%d %H:%M')}: "
        f"profile **{profile}**, status **{status}**, wall time **{seconds:,.0f} s**.*",
    }
    if nb.get("nbformat", 4) >= 4 and nb.get("nbformat_minor", 0) >= 5:
        info["id"] = "run-info"
    nb["cells"].insert(0, info)
    return nb


def _sha(*parts) -> str:
    import hashlib

    h = hashlib.sha256()
    for p in parts:
        h.update(p if isinstance(p, bytes) else str(p).encode())
        h.update(b"\0")
    return h.hexdigest()


def input_key(nb: Path, params: dict, upstream: str = "") -> str:
    """What a notebook's outputs depend on: its cells' sources, its parameters, the library's sources, the
    shipped models (their manifests: size and sha256 of every file), the committed data's provenance files and
    the keys of the notebooks before it (their outputs are its inputs)."""
    root = paths.repo_root()
    cells = [("".join(c["source"]), c["cell_type"]) for c in json.loads(nb.read_text())["cells"]]
    lib = sorted((root / "cloudlib").glob("*.py"))
    shipped = sorted((root / "models").glob("*/manifest.json")) + sorted(
        f for pattern in ("*/*provenance*.json", "*/*/*provenance*.json") for f in (root / "data").glob(pattern)
    )
    return _sha(
        json.dumps(cells),
        json.dumps(params, sort_keys=True),
        *(f.read_bytes() for f in lib),
        *(f.relative_to(root).as_posix().encode() + f.read_bytes() for f in shipped),
        upstream,
    )


def _summary_table(rows: list[dict]) -> str:
    lines = [f"{'notebook':<22} {'status':<9} {'seconds':>9}"]
    for r in rows:
        lines.append(f"{r['notebook']:<22} {r['status']:<9} {r['seconds']:>9.1f}")
    total = sum(r["seconds"] for r in rows if r["status"] != "skipped")
    lines.append(f"{'total (this run)':<22} {'':<9} {total:>9.1f}")
    return "\n".join(lines)


KERNEL = "cloud-companion"


def project_kernel() -> str:
    """The project's kernel (``cloud-companion``, registered in ``.venv`` by ``scripts/bootstrap.sh`` and named in
    every notebook's metadata) when it is registered, else ``python3`` (this interpreter's own kernel)."""
    from jupyter_client.kernelspec import KernelSpecManager

    return KERNEL if KERNEL in KernelSpecManager().find_kernel_specs() else "python3"


def run(
    profile: str = "laptop",
    only: list[str] | None = None,
    kernel: str | None = None,
    log: bool = True,
    resume: bool = False,
    encoder: str | None = None,
) -> dict:
    """Execute every numbered notebook in order; executed copies go to ``results[/smoke]/executed``, cleaned for
    reading (:func:`clean_notebook`). Progress bars are off in the kernels (``TQDM_DISABLE=1``). The kernel is
    ``kernel`` or, by default, :func:`project_kernel`.

    Profile parameters are checked against each notebook's parameters cell (a typo fails fast). With
    ``resume``, a notebook whose last run succeeded with the same :func:`input_key` is skipped. ``encoder`` (a
    model folder or a Hugging Face id such as ``ChangwenXu/CLOUD``) is given to every notebook with an ``encoder``
    parameter (the fine-tuning steps, 03 and 05) instead of their preset's encoder. A failing
    notebook stops the run (the ones after it read its outputs). Prints a summary table (notebook, status,
    seconds) and writes ``run_<profile>.json`` (per notebook: seconds, status, parameters, key).
    """
    import os

    import papermill as pm

    from .registry import absolute_mirror

    absolute_mirror()  # the kernels run in notebooks/: a relative mirror path would point elsewhere there
    root = paths.repo_root()
    overrides = profile_parameters(profile, root)
    nbs = notebooks(root)
    known = {nb.stem for nb in nbs}
    if set(overrides) - known:
        raise ValueError(f"params/{profile}.yaml names unknown notebooks {sorted(set(overrides) - known)}")
    _, results = paths.output_dirs(profile)
    executed = results / "executed"
    executed.mkdir(parents=True, exist_ok=True)
    state_file = results / f"run_{profile}.json"
    previous = {}
    if state_file.exists():
        try:
            previous = json.loads(state_file.read_text()).get("notebooks", {})
        except ValueError:
            previous = {}
    planned, upstream = {}, ""
    for nb in nbs:  # check every notebook's parameters before running any: a typo fails fast
        params = {"profile": profile, **(overrides.get(nb.stem) or {})}
        declared = notebook_parameters(nb)
        if encoder and "encoder" in declared:  # every step that fine-tunes starts from it
            params["encoder"] = encoder
        unknown = set(params) - set(declared)
        if unknown:
            raise ValueError(f"{nb.name}: parameters {sorted(unknown)} are not in its parameters cell")
        upstream = input_key(nb, params, upstream)
        planned[nb] = (params, upstream)
    if only:
        planned = {nb: v for nb, v in planned.items() if any(nb.stem.startswith(o) for o in only)}
    report = {"profile": profile, "notebooks": dict(previous)}
    rows = []
    os.environ.setdefault("TQDM_DISABLE", "1")  # the kernels inherit it: no progress bars in executed copies
    t_all = time.perf_counter()
    failure = None
    for nb, (params, key) in planned.items():
        before = previous.get(nb.stem, {})
        if resume and before.get("status") == "ok" and before.get("key") == key and (executed / nb.name).exists():
            print(f"[cloudlib run {profile}] {nb.name} unchanged since its last successful run: skipped", flush=True)
            rows.append({"notebook": nb.stem, "status": "skipped", "seconds": before.get("seconds", 0.0)})
            continue
        print(f"[cloudlib run {profile}] {nb.name} {params}", flush=True)
        t = time.perf_counter()
        status = "ok"
        try:
            pm.execute_notebook(
                str(nb),
                str(executed / nb.name),
                parameters=params,
                cwd=str(nb.parent),
                kernel_name=kernel or project_kernel(),
                progress_bar=False,
                log_output=log,
            )
        except Exception as exc:  # noqa: BLE001 - recorded, summarised, then re-raised
            status, failure = "failed", exc
        seconds = round(time.perf_counter() - t, 1)
        out = executed / nb.name
        if out.exists():
            cleaned = clean_notebook(json.loads(out.read_text()), profile, seconds, status)
            write_json(out, cleaned, indent=1)
        report["notebooks"][nb.stem] = {"seconds": seconds, "status": status, "parameters": params, "key": key}
        rows.append({"notebook": nb.stem, "status": status, "seconds": seconds})
        print(f"[cloudlib run {profile}] {nb.name} {status} in {seconds:.0f} s", flush=True)
        if failure is not None:
            break
    report["seconds"] = round(time.perf_counter() - t_all, 1)
    report["summary"] = rows
    write_json(state_file, report)
    print(_summary_table(rows), flush=True)
    if failure is not None:
        raise failure
    return report
