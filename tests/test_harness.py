"""The harness: pyproject vs environment.yml, notebook hygiene, profile parameter files."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import tomllib
import yaml

from cloudlib import paths, runner

ROOT = Path(__file__).resolve().parent.parent


def test_environment_yml_agrees_with_pyproject():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    wanted = set(project["dependencies"]) | set(project["optional-dependencies"]["test"])
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict) and "pip" in d)
    assert set(pip) - {"-e ."} == wanted
    python = next(d for d in env["dependencies"] if isinstance(d, str) and d.startswith("python="))
    assert python == "python=3.11"


@pytest.mark.parametrize("nb", runner.notebooks(ROOT), ids=lambda p: p.name)
def test_notebook_hygiene(nb):
    cells = json.loads(nb.read_text())["cells"]
    params = runner.notebook_parameters(nb)  # exactly one literal-only parameters cell
    assert params["profile"] == "smoke"
    code = [c for c in cells if c["cell_type"] == "code"]
    assert all(not c.get("outputs") and c.get("execution_count") is None for c in code), "strip outputs"
    assert cells[0]["cell_type"] == "markdown"
    # papermill must parse every parameter too (a comment holding '=' or '(' can defeat its parser,
    # and it then warns "Passed unknown parameter" and documents the notebook wrongly)
    import papermill as pm

    assert list(pm.inspect_notebook(str(nb))) == list(params)
    assert "import cloudlib" in "".join("".join(c["source"]) for c in code) or "from cloudlib" in "".join(
        "".join(c["source"]) for c in code
    )


@pytest.mark.parametrize("profile", paths.PROFILES)
def test_profiles_name_real_parameters(profile):
    overrides = runner.profile_parameters(profile, ROOT)
    nbs = {nb.stem: nb for nb in runner.notebooks(ROOT)}
    assert set(overrides) <= set(nbs)
    for stem, values in overrides.items():
        assert set(values or {}) <= set(runner.notebook_parameters(nbs[stem])), (profile, stem)
    if profile != "smoke":
        assert set(overrides) == set(nbs), f"{profile} must configure every notebook"


def test_parameters_cell_rejects_code(tmp_path):
    nb = {"cells": [{"cell_type": "code", "metadata": {"tags": ["parameters"]}, "source": "x = len([1])\n"}]}
    path = tmp_path / "01_x.ipynb"
    path.write_text(json.dumps(nb))
    with pytest.raises(ValueError):
        runner.notebook_parameters(path)


def test_ci_runs_the_readme_commands():
    readme = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci" / "run").read_text()
    assert "bash scripts/run_all.sh" in readme and "bash scripts/test.sh" in readme
    assert "bash scripts/test.sh" in ci


def _tiny_project(root: Path, extra_params: str = "") -> None:
    """A project folder with one numbered notebook (a parameters cell and a cell that writes its values)."""
    (root / "notebooks").mkdir(parents=True)
    (root / "params").mkdir()
    cells = [
        {"cell_type": "markdown", "id": "a", "metadata": {}, "source": ["# 01 tiny"]},
        {
            "cell_type": "code",
            "id": "b",
            "metadata": {"tags": ["parameters"]},
            "execution_count": None,
            "outputs": [],
            "source": ['profile = "smoke"\n', "n = 1\n"],
        },
        {
            "cell_type": "code",
            "id": "c",
            "metadata": {},
            "execution_count": None,
            "outputs": [],
            "source": [
                "import json, pathlib\n",
                "pathlib.Path('out.json').write_text(json.dumps({'profile': profile, 'n': n}))",
            ],
        },
    ]
    nb = {
        "cells": cells,
        "metadata": {"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}},
        "nbformat": 4,
        "nbformat_minor": 5,
    }
    (root / "notebooks" / "01_tiny.ipynb").write_text(json.dumps(nb))
    (root / "params" / "laptop.yaml").write_text("01_tiny:\n  n: 7\n" + extra_params)


def test_runner_executes_with_profile_parameters(tmp_path, monkeypatch):
    _tiny_project(tmp_path)
    monkeypatch.setenv("CLOUD_HOME", str(tmp_path))
    report = runner.run("laptop", log=False)
    assert json.loads((tmp_path / "notebooks" / "out.json").read_text()) == {"profile": "laptop", "n": 7}
    assert (tmp_path / "results" / "executed" / "01_tiny.ipynb").is_file()
    written = json.loads((tmp_path / "results" / "run_laptop.json").read_text())
    assert (
        written["notebooks"]["01_tiny"]["parameters"]
        == {"profile": "laptop", "n": 7}
        == report["notebooks"]["01_tiny"]["parameters"]
    )
    assert written["seconds"] >= written["notebooks"]["01_tiny"]["seconds"] > 0


def test_runner_gives_an_encoder_to_the_notebooks_that_take_one(tmp_path, monkeypatch, capsys):
    """``run --encoder X``: every notebook with an ``encoder`` parameter gets X (03 and 05 of the real project);
    a bad encoder name is refused before any notebook runs."""
    from cloudlib.cli import main

    _tiny_project(tmp_path)
    nb_path = tmp_path / "notebooks" / "01_tiny.ipynb"
    nb = json.loads(nb_path.read_text())
    nb["cells"][1]["source"].append('encoder = ""\n')
    nb["cells"][2]["source"][1] = (
        "pathlib.Path('out.json').write_text(json.dumps({'profile': profile, 'n': n, 'encoder': encoder}))"
    )
    nb_path.write_text(json.dumps(nb))
    monkeypatch.setenv("CLOUD_HOME", str(tmp_path))
    runner.run("laptop", log=False, encoder="ChangwenXu/CLOUD")
    assert json.loads((tmp_path / "notebooks" / "out.json").read_text())["encoder"] == "ChangwenXu/CLOUD"
    runner.run("laptop", log=False)
    assert json.loads((tmp_path / "notebooks" / "out.json").read_text())["encoder"] == ""
    assert main(["run", "--profile", "laptop", "--no-book", "--encoder", "no/such/folder/x"]) == 1
    assert "no/such/folder/x" in capsys.readouterr().err
    real = [runner.notebook_parameters(p) for p in sorted((ROOT / "notebooks").glob("0[35]_*.ipynb"))]
    assert all("encoder" in params for params in real) and len(real) == 2


def test_runner_refuses_unknown_parameters_and_notebooks(tmp_path, monkeypatch):
    _tiny_project(tmp_path, extra_params="02_missing:\n  x: 1\n")
    monkeypatch.setenv("CLOUD_HOME", str(tmp_path))
    with pytest.raises(ValueError, match="02_missing"):
        runner.run("laptop", log=False)
    (tmp_path / "params" / "laptop.yaml").write_text("01_tiny:\n  m: 7\n")
    with pytest.raises(ValueError, match=r"\['m'\]"):
        runner.run("laptop", log=False)
    assert not (tmp_path / "notebooks" / "out.json").exists()  # refused before anything ran


def test_the_main_job_writes_no_tracked_file():
    """Every export of every profile goes under results/ (shipping into models/ is `python -m cloudlib ship`),
    and no notebook builds a path under models/ to write to."""
    from cloudlib import runner
    from cloudlib.paths import PROFILES

    for profile in PROFILES:
        for nb, params in runner.profile_parameters(profile).items():
            target = (params or {}).get("export_model")
            assert not target or str(target).startswith("results/"), (profile, nb, target)
    for nb in runner.notebooks():
        code = "\n".join("".join(c["source"]) for c in json.loads(nb.read_text())["cells"] if c["cell_type"] == "code")
        writes = re.compile(r"\b(export_\w*|save\w*|write\w*|ship\w*|copy\w*)\(")
        for line in code.splitlines():  # reading models/ (the shipped encoder) is fine; writing there is not
            assert not ("models" in line and writes.search(line)), (nb.name, line)
        defaults = runner.notebook_parameters(nb)
        assert not defaults.get("export_model"), nb.name  # smoke (nbval, Run All) exports nothing


def test_ship_copies_a_checked_folder_and_refuses_a_damaged_one(tmp_path, capsys):
    from cloudlib.cli import main
    from cloudlib.io import write_manifest

    src = tmp_path / "results" / "m"
    src.mkdir(parents=True)
    (src / "weights.bin").write_bytes(b"w" * 100)
    (src / "card.json").write_text('{"mae": 0.3}')
    write_manifest(src)
    dest = tmp_path / "models" / "m"
    assert main(["ship", str(src), str(dest)]) == 0
    assert sorted(p.name for p in dest.iterdir()) == ["card.json", "manifest.json", "weights.bin"]
    assert (dest / "weights.bin").read_bytes() == b"w" * 100
    (src / "weights.bin").write_bytes(b"w" * 99)  # truncated after it was saved
    assert main(["ship", str(src), str(dest)]) == 1
    assert "weights.bin" in capsys.readouterr().err
    assert (dest / "weights.bin").read_bytes() == b"w" * 100  # the shipped copy is untouched
    assert main(["ship", str(tmp_path / "nothing"), str(dest)]) == 1
