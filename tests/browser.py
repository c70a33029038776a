"""A real browser for tests: Debian's headless Chromium driven through chromedriver by Selenium
(`make browser-tools` installs both). Nothing is downloaded at run time: the driver is named
explicitly, so Selenium Manager is never asked to fetch one."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from selenium import webdriver
from selenium.webdriver.chrome.service import Service

CHROMIUM = ("chromium", "chromium-browser")
CHROMEDRIVER = "chromedriver"


class BrowserMissing(RuntimeError):
    pass


def _which(*names: str) -> str:
    for name in names:
        found = shutil.which(name)
        if found:
            return found
    raise BrowserMissing(
        f"{' or '.join(names)} not found: `make browser-tools` installs Debian's chromium and "
        "chromium-driver"
    )


def chromium(user_data_dir: Path, width: int = 1400, height: int = 1000) -> webdriver.Chrome:
    """Headless Chromium with its console log kept (`browser_log`), pages drawn at `width` x
    `height` CSS pixels, and its profile in `user_data_dir`. --no-sandbox: Chromium's sandbox
    cannot start as root in a container; the pages it opens are the test's own."""
    options = webdriver.ChromeOptions()
    options.binary_location = _which(*CHROMIUM)
    for argument in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--no-first-run",
        "--disable-extensions",
        "--disable-background-networking",
        "--hide-scrollbars",
        f"--window-size={width},{height}",
        f"--user-data-dir={user_data_dir}",
    ):
        options.add_argument(argument)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(options=options, service=Service(_which(CHROMEDRIVER)))
    # The page's own area (a window of that size has less, for its frame): screenshots are
    # exactly width x height.
    driver.execute_cdp_cmd(
        "Emulation.setDeviceMetricsOverride",
        {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False},
    )
    return driver


def browser_log(driver: webdriver.Chrome) -> list[dict[str, Any]]:
    """The console messages since the last call (the driver hands each out once)."""
    entries: list[dict[str, Any]] = driver.get_log("browser")  # type: ignore[no-untyped-call]
    return entries


def errors_in(entries: list[dict[str, Any]]) -> list[str]:
    """The messages logged as errors (uncaught exceptions, failed loads, console.error)."""
    return [str(e.get("message", "")) for e in entries if e.get("level") == "SEVERE"]
