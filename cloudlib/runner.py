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


def run(profile: str = "laptop", only: list[str] | None = None, kernel: str = "python3", log: bool = True) -> dict:
    """Execute every numbered notebook in order; executed copies go to ``results[/smoke]/executed``.

    Profile parameters are checked against each notebook's parameters cell (a typo fails fast).
    Returns and writes ``run_<profile>.json`` with per-notebook wall time.
    """
    import papermill as pm

    root = paths.repo_root()
    overrides = profile_parameters(profile, root)
    nbs = notebooks(root)
    known = {nb.stem for nb in nbs}
    if set(overrides) - known:
        raise ValueError(f"params/{profile}.yaml names unknown notebooks {sorted(set(overrides) - known)}")
    if only:
        nbs = [nb for nb in nbs if any(nb.stem.startswith(o) for o in only)]
    _, results = paths.output_dirs(profile)
    executed = results / "executed"
    executed.mkdir(parents=True, exist_ok=True)
    report = {"profile": profile, "notebooks": {}}
    planned = {}
    for nb in nbs:  # check every notebook's parameters before running any: a typo fails fast
        params = {"profile": profile, **(overrides.get(nb.stem) or {})}
        unknown = set(params) - set(notebook_parameters(nb))
        if unknown:
            raise ValueError(f"{nb.name}: parameters {sorted(unknown)} are not in its parameters cell")
        planned[nb] = params
    t_all = time.perf_counter()
    for nb, params in planned.items():
        print(f"[cloudlib run {profile}] {nb.name} {params}", flush=True)
        t = time.perf_counter()
        pm.execute_notebook(
            str(nb),
            str(executed / nb.name),
            parameters=params,
            cwd=str(nb.parent),
            kernel_name=kernel,
            progress_bar=False,
            log_output=log,
        )
        report["notebooks"][nb.stem] = {"seconds": round(time.perf_counter() - t, 1), "parameters": params}
        print(f"[cloudlib run {profile}] {nb.name} done in {time.perf_counter() - t:.0f} s", flush=True)
    report["seconds"] = round(time.perf_counter() - t_all, 1)
    write_json(results / f"run_{profile}.json", report)
    return report
