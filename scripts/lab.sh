#!/usr/bin/env bash
# JupyterLab on the project's environment, with its kernel (cloud-companion) registered, opened on notebooks/.
#   bash scripts/lab.sh [jupyter lab options, e.g. --no-browser --port 8899]
set -euo pipefail
source "$(dirname "$0")/env.sh"  # a relative CLOUD_DATA_MIRROR made absolute before the cd
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
root=(); [ "$(id -u)" -ne 0 ] || root=(--allow-root)  # e.g. in a container
exec .venv/bin/jupyter lab --notebook-dir=notebooks "${root[@]}" "$@"
