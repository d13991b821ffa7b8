"""Counts behind issue 23's before / after table, for a checkout of this repository.

    python scripts/code_counts.py [REPO]      # default: this checkout

Prints the ten longest functions of ``cloudlib`` (lines, from the AST), the inline mean-absolute-error sites
outside ``cloudlib.evaluation`` (a regular expression for the spellings of ``mean(abs(a - b))``), the lines of the
study module (``matbench_run`` before the renames, ``finetune_studies`` after) and of ``cloudlib`` in all.
Duplicated code is counted with the work area's ``duplicates --repo REPO --min-lines N`` tool, not here.
"""

from __future__ import annotations

import ast
import re
import sys
from pathlib import Path

MAE = re.compile(r"abs\([^)]*-[^)]*\)\)?\.mean\(|mean_absolute_error\(|np\.(nan)?mean\(np\.abs\(|\.abs\(\)\.mean\(")


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    root = Path(args[0] if args else Path(__file__).resolve().parent.parent)
    funcs, mae = [], []
    for f in sorted((root / "cloudlib").glob("*.py")):
        src = f.read_text()
        for node in ast.walk(ast.parse(src)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                funcs.append((node.end_lineno - node.lineno + 1, f"{f.stem}.{node.name}"))
        if f.stem != "evaluation":
            mae += [
                f"{f.name}:{i}: {line.strip()[:90]}" for i, line in enumerate(src.splitlines(), 1) if MAE.search(line)
            ]
    funcs.sort(reverse=True)
    print("10 longest functions:", "; ".join(f"{n} {name}" for n, name in funcs[:10]))
    print("inline MAE sites outside evaluation.py:", len(mae))
    for site in mae:
        print("   ", site)
    for name in ("matbench_run", "finetune_studies"):
        path = root / "cloudlib" / f"{name}.py"
        if path.exists():
            print(f"lines of {name}.py:", len(path.read_text().splitlines()))
    print("cloudlib lines:", sum(len(p.read_text().splitlines()) for p in (root / "cloudlib").glob("*.py")))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
