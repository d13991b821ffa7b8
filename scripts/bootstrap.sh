#!/usr/bin/env bash
# Create or reuse ./.venv with everything the project needs. Sourced by run_all.sh and test.sh.
#   CLOUD_TORCH_SPEC  what to pip-install for torch first (default: torch==2.13.0, a CPU wheel on
#                     the project's machines). GPU: CLOUD_TORCH_SPEC="torch --index-url
#                     https://download.pytorch.org/whl/cu128" (any CUDA build >= 2.1 works).
#   PYTHON            interpreter for the venv (default python3, >= 3.10)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PY=${PYTHON:-python3}
VENV=.venv
if [ ! -x "$VENV/bin/python" ]; then
  echo "[bootstrap] creating $VENV with $($PY --version)"
  "$PY" -m venv "$VENV"
fi
stamp="$VENV/.cloud-installed"
want=$(cat pyproject.toml scripts/bootstrap.sh | sha256sum | cut -c1-16)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  pip() { "$VENV/bin/python" -m pip --disable-pip-version-check -q "$@" 2>&1 | grep -v "is ignored: it is neither a file nor a directory" || true; }
  echo "[bootstrap] installing torch (${CLOUD_TORCH_SPEC:-torch==2.13.0})"
  # shellcheck disable=SC2086
  pip install ${CLOUD_TORCH_SPEC:-torch==2.13.0}
  echo "[bootstrap] installing cloud-companion[dev] (editable)"
  pip install -e ".[dev]"
  echo "[bootstrap] installing matbench 0.6 without its (obsolete) pins"
  pip install --no-deps matbench==0.6
  "$VENV/bin/python" -c "import cloudlib, torch, transformers, pymatgen, spglib, papermill, nbval, matbench" \
    || { echo "[bootstrap] install incomplete" >&2; exit 1; }
  echo "$want" > "$stamp"
fi
# cffconvert (validates CITATION.cff in the tests) pins jsonschema<4, which JupyterLab cannot use: its own venv
if [ ! -x .venv-cff/bin/cffconvert ]; then
  echo "[bootstrap] installing cffconvert into .venv-cff"
  "$PY" -m venv .venv-cff
  .venv-cff/bin/python -m pip --disable-pip-version-check -q install "cffconvert==2.0.0" 2>&1 \
    | grep -v "is ignored: it is neither a file nor a directory" || true
fi
# The project's Jupyter kernel, registered inside .venv (the notebooks ask for it by name, so JupyterLab, nbval and
# papermill never pick another environment's "python3")
if [ ! -f "$VENV/share/jupyter/kernels/cloud-companion/kernel.json" ]; then
  "$VENV/bin/python" -m ipykernel install --sys-prefix --name cloud-companion --display-name "cloud-companion (.venv)" >/dev/null
fi
