"""Debian's headless Chromium driven by Selenium (the relevance page's browser tests and
``scripts/screenshots.py``): the system browser and driver, never a download."""

from __future__ import annotations

import os
from typing import Any

CHROMIUM, DRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
# The machine's network is closed: no background connections, updates, sync or first-run UI.
FLAGS = ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--no-first-run")  # fmt: skip


def chromium(width: int = 1400, height: int = 1000) -> Any:
    """A Selenium Chrome driver over /usr/bin/chromium (``make sysdeps`` installs it)."""
    if not (os.access(CHROMIUM, os.X_OK) and os.access(DRIVER, os.X_OK)):
        raise FileNotFoundError(
            "Debian's chromium and chromium-driver are missing: make sysdeps installs them"
        )
    os.environ["SE_OFFLINE"] = "true"  # Selenium Manager must not try to download a driver
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (*FLAGS, f"--window-size={width},{height}"):
        options.add_argument(flag)
    return webdriver.Chrome(service=Service(DRIVER), options=options)
