#!/usr/bin/env bash
# Tests: unit tests and every notebook through nbval (smoke parameters). Extra args go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
exec .venv/bin/python -m pytest "$@"
