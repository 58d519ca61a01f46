"""Headless Chromium from the Debian packages (``chromium``, ``chromium-driver``) driven by
Selenium, for the ``ssrseg view`` page tests. Selenium is given the driver's path so it never
tries to download one; the flags keep the browser off the network.

Without a browser the tests are skipped, saying why; ``SSRSEG_REQUIRE_BROWSER=1`` (set by
``.ci/run``) turns that skip into a failure so CI cannot pass without running them."""

from __future__ import annotations

import io
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",  # containers (CI) often have a tiny /dev/shm
    "--force-device-scale-factor=1",  # one screenshot pixel per CSS pixel
    "--window-size=1280,1600",
)
INSTALL = "apt-get install chromium chromium-driver; pip install selenium"


def find_browser() -> tuple[str, str] | str:
    """(chromium, chromedriver) paths, or why the browser tests cannot run."""
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    missing = [n for n, p in (("chromium", chromium), ("chromedriver", driver)) if p is None]
    try:
        import selenium  # noqa: F401
    except ImportError:
        missing.append("the selenium package")
    if missing or chromium is None or driver is None:
        return f"no headless browser here ({', '.join(missing)} missing; {INSTALL})"
    return chromium, driver


def require_browser() -> tuple[str, str]:
    found = find_browser()
    if isinstance(found, str):
        if os.environ.get("SSRSEG_REQUIRE_BROWSER") == "1":
            pytest.fail(f"SSRSEG_REQUIRE_BROWSER=1 but {found}")
        pytest.skip(found)
    return found


def start_browser(chromium: str, driver: str) -> Any:
    """A headless Chromium session with its own throw-away profile."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={tempfile.mkdtemp(prefix='ssrseg-chromium-')}")
    return webdriver.Chrome(service=Service(driver), options=options)


def element_pixels(element: Any) -> np.ndarray:
    """An element's screenshot as ``H x W x 3`` uint8."""
    with Image.open(io.BytesIO(element.screenshot_as_png)) as img:
        return np.asarray(img.convert("RGB"))


def save_artifact(driver: Any, name: str) -> Path:
    """Full-page screenshot under ``test-artifacts/view/`` (git-ignored; CI keeps it)."""
    folder = Path(__file__).resolve().parents[2] / "test-artifacts" / "view"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.png"
    driver.save_screenshot(str(path))
    return path
