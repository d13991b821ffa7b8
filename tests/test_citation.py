"""The companion is citable and licensed: LICENSE (MIT, as pyproject says) and a CITATION.cff that cffconvert
validates and that points to the paper."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
CFF = ROOT / ".venv-cff" / "bin" / "cffconvert"


def test_license_is_mit_as_pyproject_says():
    import tomllib

    text = (ROOT / "LICENSE").read_text()
    assert text.startswith("MIT License") and "WITHOUT WARRANTY OF ANY KIND" in text
    assert tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["license"] == {"text": "MIT"}
    assert "keep their own licences" in text


def test_citation_cff_validates_and_points_to_the_paper():
    if not CFF.exists():
        if os.environ.get("CI"):
            pytest.fail("CI is set but .venv-cff/bin/cffconvert is missing (scripts/bootstrap.sh installs it)")
        pytest.skip("cffconvert not installed (bash scripts/bootstrap.sh)")
    run = subprocess.run([str(CFF), "--validate", "-i", str(ROOT / "CITATION.cff")], capture_output=True, text=True)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "valid" in run.stdout
    meta = yaml.safe_load((ROOT / "CITATION.cff").read_text())
    assert meta["license"] == "MIT"
    paper = meta["preferred-citation"]
    assert "CLOUD" in paper["title"] and [a["family-names"] for a in paper["authors"]] == ["Xu", "Zhu", "Viswanathan"]
    assert "2506.17345" in paper["notes"]
    # the version agrees with the package's
    import tomllib

    assert str(meta["version"]) == tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    # the README's data-licence table is kept
    assert "## Data and licences" in (ROOT / "README.md").read_text()
