"""A real headless Chromium for the tests that check what a browser shows.

Debian's ``chromium`` and ``chromium-driver`` (installed by ``.ci/run``) driven by
Selenium. :func:`chromium_or_skip` returns a started driver, or skips the test
with the reason (no browser, no driver, no Selenium) where none can be had.
"""

from __future__ import annotations

import shutil
import tempfile

import pytest

__all__ = ["chromium_or_skip", "CHROMIUM_FLAGS"]

# Flags of a headless Chromium that does not reach out to the network: this
# machine's closed network refuses the background connections otherwise, and
# as root Chromium needs --no-sandbox.
CHROMIUM_FLAGS = (
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--autoplay-policy=no-user-gesture-required",
    "--window-size=1280,900",
)


def _find(*names: str) -> str | None:
    for name in names:
        path = shutil.which(name)
        if path:
            return path
    return None


def chromium_or_skip(tmp_path_factory=None):
    """A started Selenium Chrome driver on the system's Chromium, or ``pytest.skip``.

    The caller quits the driver (``driver.quit()``), typically in a fixture's teardown.
    """
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        pytest.skip("needs selenium (pip install selenium; it is in requirements-test.txt)")
    browser = _find("chromium", "chromium-browser", "google-chrome")
    driver_path = _find("chromedriver")
    if browser is None or driver_path is None:
        pytest.skip(
            "needs a system Chromium and its driver (apt-get install chromium chromium-driver; "
            ".ci/run installs them where it runs as root)"
        )
    options = webdriver.ChromeOptions()
    options.binary_location = browser
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    profile = tempfile.mkdtemp(prefix="fsp-chromium-")
    options.add_argument(f"--user-data-dir={profile}")
    try:
        driver = webdriver.Chrome(service=Service(executable_path=driver_path), options=options)
    except Exception as exc:  # installed but broken: a failure, not a skip
        pytest.fail(f"the system Chromium did not start under chromedriver: {str(exc).splitlines()[0]}")
    driver.set_page_load_timeout(60)
    driver.set_script_timeout(60)
    return driver
