#!/usr/bin/env bash
# Tests: style (ruff check + ruff format --check), the layer contract (lint-imports), then the unit tests and
# every notebook through nbval (smoke parameters). Extra args go to pytest.
set -euo pipefail
source "$(dirname "$0")/env.sh"  # a relative CLOUD_DATA_MIRROR made absolute before the cd
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
echo "[test] ruff check, ruff format --check, lint-imports"
.venv/bin/ruff check .
.venv/bin/ruff format --check .
.venv/bin/lint-imports
exec .venv/bin/python -m pytest "$@"
