"""Shared fixtures. Real data comes through cloudlib.registry.fetch (cache -> canonical URL -> mirror).

Without any reachable source a data test is skipped with the reason, except under CI (``$CI`` set),
where it fails: CI always has the mirror, so a skip there would hide a broken data path.
"""

from __future__ import annotations

import os
import shutil

import pandas as pd
import pytest

from cloudlib import matbench_data, registry
from cloudlib.errors import DataUnavailableError

registry.absolute_mirror()  # nbval's kernels run in notebooks/: a relative mirror path must not change meaning

NACL = "1 6 a O D D a D O D b O O O c O O O d O O O e O O O 0 | 4a 4b | Na 0.5 Cl 0.5"


def need(name: str):
    """Path of registry file ``name``; skip (or fail under CI) when it cannot be had."""
    try:
        return registry.fetch(name)
    except DataUnavailableError as exc:
        if os.environ.get("CI"):
            pytest.fail(f"CI is set but {name} is unavailable: {exc}")
        pytest.skip(f"{name} unavailable (set CLOUD_DATA_MIRROR or go online): {exc}")


def need_call(fn, *args, **kw):
    """Call a loader; skip (or fail under CI) if its data cannot be had."""
    try:
        return fn(*args, **kw)
    except DataUnavailableError as exc:
        if os.environ.get("CI"):
            pytest.fail(f"CI is set but data is unavailable: {exc}")
        pytest.skip(f"data unavailable: {exc}")


@pytest.fixture(scope="session")
def dielectric_structures() -> pd.DataFrame:
    """The full matbench_dielectric (4,764 structures, index = MatBench id)."""
    return need_call(matbench_data.load_matbench, "matbench_dielectric")


@pytest.fixture(scope="session")
def paper_scope() -> pd.DataFrame:
    """The authors' fold-0 SCOPE strings with MatBench ids."""
    return need_call(matbench_data.load_paper_dielectric_scope)


# ---------------------------------------------------------------- headless Chromium (explorer, book, JupyterLab)


def unavailable(reason: str):
    if os.environ.get("CI"):
        pytest.fail(f"CI is set but the browser test cannot run: {reason}")
    pytest.skip(reason)


@pytest.fixture(scope="module")
def browser():
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        unavailable("selenium is not installed (pip install -e '.[test]')")
    chromium = next(filter(None, map(shutil.which, ("chromium", "chromium-browser", "google-chrome"))), None)
    driver_exe = shutil.which("chromedriver")
    if not chromium or not driver_exe:
        unavailable("chromium and chromedriver are not installed (apt-get install chromium chromium-driver)")
    opts = webdriver.ChromeOptions()
    opts.binary_location = chromium
    for arg in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--window-size=1240,900",
        "--force-device-scale-factor=1",
        "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
    ):  # any network request but to loopback (JupyterLab) would fail loudly
        opts.add_argument(arg)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    # An explicit driver path: selenium-manager (which would go online) is not consulted.
    drv = webdriver.Chrome(options=opts, service=Service(executable_path=driver_exe))
    drv.set_page_load_timeout(60)
    try:
        yield drv
    finally:
        drv.quit()
