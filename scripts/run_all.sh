#!/usr/bin/env bash
# Main job: every numbered notebook, in order, headless (papermill), in a profile (default laptop).
#   bash scripts/run_all.sh [smoke|laptop|paper] [notebook prefixes...]
set -euo pipefail
source "$(dirname "$0")/env.sh"  # a relative CLOUD_DATA_MIRROR made absolute before the cd
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
profile=${1:-laptop}; shift || true
if [ $# -gt 0 ]; then exec .venv/bin/python -m cloudlib run --profile "$profile" --only "$@"; fi
exec .venv/bin/python -m cloudlib run --profile "$profile"
