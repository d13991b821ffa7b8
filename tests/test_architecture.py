"""The layers hold (import-linter checks the import graph; this checks what it cannot): no module reaches into
another's private names, the library never imports the CLI, benchmarks and test helpers stay out of the package,
and every module says what it owns."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "cloudlib"


def _sources():
    """(label, source) of the library, the scripts, the benchmarks and the notebooks' code cells. (Unit tests may
    exercise a module's internals; no other code may.)"""
    for path in sorted([*PACKAGE.glob("*.py"), *(ROOT / "scripts").glob("*.py"), *(ROOT / "benchmarks").glob("*.py")]):
        yield str(path.relative_to(ROOT)), path.read_text()
    for nb in sorted((ROOT / "notebooks").glob("*.ipynb")):
        code = ["".join(c["source"]) for c in json.loads(nb.read_text())["cells"] if c["cell_type"] == "code"]
        yield str(nb.relative_to(ROOT)), "\n".join(code)


def private_uses(label: str, source: str) -> list[str]:
    """Names starting with one underscore taken from another cloudlib module: ``from cloudlib.x import _y``,
    ``from .x import _y`` and ``x._y`` where ``x`` is a cloudlib module or a name imported from one."""
    tree = ast.parse(source)
    own = Path(label).stem if label.startswith("cloudlib/") else None
    bound, hits = set(), []

    def is_private(name: str) -> bool:
        return name.startswith("_") and not name.startswith("__")

    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            mod = node.module or ""
            cloud = node.level > 0 or mod == "cloudlib" or mod.startswith("cloudlib.")
            if not cloud or (node.level == 1 and mod == own):
                continue
            for alias in node.names:
                if is_private(alias.name):
                    hits.append(f"{label}:{node.lineno}: from {'.' * node.level}{mod} import {alias.name}")
                bound.add(alias.asname or alias.name)
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("cloudlib"):
                    bound.add(alias.asname or alias.name.split(".")[0])
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and is_private(node.attr):
            base = node.value
            while isinstance(base, ast.Attribute):
                base = base.value
            if isinstance(base, ast.Name) and base.id in bound:
                hits.append(f"{label}:{node.lineno}: {ast.unparse(node)}")
    return hits


def test_no_module_uses_another_modules_private_names():
    hits = [h for label, src in _sources() for h in private_uses(label, src)]
    assert hits == [], "\n".join(hits)


def test_the_checker_catches_what_it_should():
    assert private_uses("cloudlib/a.py", "from .b import _x\n")
    assert private_uses("cloudlib/a.py", "from . import b\nb._x()\n")
    assert private_uses("notebooks/n.ipynb", "from cloudlib import cloud_debye as cd\ncd.Fitted._batches\n")
    assert private_uses("tests/t.py", "import cloudlib.data\ncloudlib.data._download('u')\n")
    assert not private_uses("cloudlib/a.py", "from .a import _x\nfrom . import b\nb.__doc__\n")
    assert not private_uses("tests/t.py", "import numpy as np\nnp._x\n")


def test_lint_imports_keeps_the_layers():
    r = subprocess.run([str(Path(sys.executable).with_name("lint-imports"))], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "1 kept, 0 broken" in r.stdout


@pytest.mark.parametrize("path", sorted(PACKAGE.glob("*.py")), ids=lambda p: p.name)
def test_every_module_says_what_it_owns(path):
    doc = ast.get_docstring(ast.parse(path.read_text()))
    assert doc and len(doc.split()) >= 6, f"{path.name} needs a docstring that says what it owns"


def test_benchmarks_and_test_helpers_are_not_installed():
    assert not (PACKAGE / "bench.py").exists() and (ROOT / "benchmarks" / "bench.py").exists()
    import tomllib

    include = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]["find"]["include"]
    assert include == ["cloudlib*"]
    src = "".join(p.read_text() for p in PACKAGE.glob("*.py"))
    assert "benchmarks" not in {
        n.module.split(".")[0] for n in ast.walk(ast.parse(src)) if isinstance(n, ast.ImportFrom) and n.module
    }
