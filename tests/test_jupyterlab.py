"""JupyterLab for real: start it on loopback with the project's kernel, open notebook 01 in headless Chromium, run
every cell through the UI (the Run menu's "Run All Cells"), and check that every code cell ran, none has an error
output, and the kernel is the project's (``cloud-companion``, registered in ``.venv`` by ``scripts/bootstrap.sh``).

The notebook is a copy in a temporary folder (JupyterLab's autosave must not write outputs into the repository);
it runs with its own defaults (the smoke parameters). Skipped without Chromium, failing under ``CI`` (conftest)."""

from __future__ import annotations

import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from cloudlib.runner import KERNEL

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOK = "01_scope.ipynb"

STATE_JS = """
const w = window.jupyterapp && window.jupyterapp.shell.currentWidget;
if (!w || !w.content || !w.content.model || !w.sessionContext || !w.sessionContext.session
    || !w.sessionContext.session.kernel) return null;
const cells = w.content.model.cells;
let code = 0, ran = 0; const errors = [];
for (let i = 0; i < cells.length; i++) {
  const c = cells.get(i);
  if (c.type !== 'code') continue;
  code++;
  if (c.executionCount !== null) ran++;
  for (let j = 0; j < c.outputs.length; j++) {
    const o = c.outputs.get(j);
    if (o.type === 'error') errors.push({cell: i, ename: o.toJSON().ename, evalue: o.toJSON().evalue});
  }
}
const k = w.sessionContext.session.kernel;
return {code: code, ran: ran, errors: errors, status: k.status, kernel: k.name,
        busy: w.content.widgets.some(x => x.model.type === 'code' && x.promptNode
                                           && x.promptNode.textContent.includes('*'))};
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    from jupyter_client.kernelspec import KernelSpecManager

    if KERNEL not in KernelSpecManager().find_kernel_specs():
        pytest.fail(f"the project's kernel {KERNEL!r} is not registered (scripts/bootstrap.sh registers it)")
    root = tmp_path_factory.mktemp("lab")
    work, settings = root / "notebooks", root / "settings"
    work.mkdir()
    shutil.copy2(ROOT / "notebooks" / NOTEBOOK, work / NOTEBOOK)
    # no news / update pop-ups over the menus, no autosave
    for plugin, value in (
        (
            "@jupyterlab/apputils-extension/notification.jupyterlab-settings",
            {"fetchNews": "false", "checkForUpdates": False},
        ),
        ("@jupyterlab/docmanager-extension/plugin.jupyterlab-settings", {"autosave": False}),
    ):
        f = settings / plugin
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_text(json.dumps(value))
    port, token = _free_port(), secrets.token_hex(16)
    env = {
        **os.environ,
        "JUPYTERLAB_SETTINGS_DIR": str(settings),
        "JUPYTERLAB_WORKSPACES_DIR": str(root / "workspaces"),
        "JUPYTER_RUNTIME_DIR": str(root / "runtime"),
    }
    log = open(root / "lab.log", "w")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "jupyterlab",
            "--no-browser",
            "--ServerApp.ip=127.0.0.1",
            f"--ServerApp.port={port}",
            "--ServerApp.port_retries=0",
            f"--IdentityProvider.token={token}",
            f"--ServerApp.root_dir={work}",
            "--LabApp.expose_app_in_browser=True",
            *(["--allow-root"] if os.geteuid() == 0 else []),  # CI runs as root
        ],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                with urllib.request.urlopen(f"{base}/api/status?token={token}", timeout=5) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"JupyterLab did not start: {(root / 'lab.log').read_text()[-2000:]}")
            time.sleep(0.5)
        yield {"base": base, "token": token, "work": work, "log": root / "lab.log"}
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


def _wait(browser, predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    state = None
    while time.monotonic() < deadline:
        state = browser.execute_script(STATE_JS)
        if state is not None and predicate(state):
            return state
        time.sleep(1.0)
    pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}; last state {state}")


def _click(browser, xpath: str, timeout: float = 30):
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    WebDriverWait(browser, timeout).until(ec.element_to_be_clickable(("xpath", xpath))).click()


def test_notebook_01_runs_all_cells_in_jupyterlab(lab, browser, tmp_path):
    browser.set_window_size(1400, 1000)
    browser.get(f"{lab['base']}/lab/tree/{NOTEBOOK}?token={lab['token']}")
    first = _wait(browser, lambda s: s["status"] == "idle", 120, "the notebook to open with an idle kernel")
    assert first["kernel"] == KERNEL, f"the notebook opened with kernel {first['kernel']!r}, not the project's"
    assert first["ran"] == 0 and first["code"] > 3
    _click(browser, "//div[contains(@class,'lm-MenuBar-itemLabel') and normalize-space()='Run']")
    _click(browser, "//div[contains(@class,'lm-Menu-itemLabel') and normalize-space()='Run All Cells']")
    done = _wait(
        browser,
        lambda s: (s["ran"] == s["code"] or s["errors"]) and s["status"] == "idle" and not s["busy"],
        600,
        "every cell to run (or one to fail)",
    )
    shots = Path(os.environ.get("CLOUD_TEST_ARTIFACTS", tmp_path))
    shots.mkdir(parents=True, exist_ok=True)
    assert browser.save_screenshot(str(shots / "jupyterlab_01_scope.png"))
    assert done["errors"] == [], done["errors"]
    assert done["ran"] == done["code"]
