"""Real headless Chromium (Debian's ``chromium`` and ``chromedriver``) driven by Selenium:
for the report's browser tests and ``make report-screenshots``.

The browser's network is not mocked: the page is opened from ``file://`` and every
request the browser makes is read back from its performance log (Chrome DevTools'
``Network.requestWillBeSent``), so a page that fetched a font, a script or an image
would show one.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

CHROMIUM = ("chromium", "chromium-browser")
DRIVER = "chromedriver"


def find_tools() -> tuple[str, str] | None:
    browser = next((p for name in CHROMIUM if (p := shutil.which(name))), None)
    driver = shutil.which(DRIVER)
    return (browser, driver) if browser and driver else None


def require_tools() -> tuple[str, str]:
    """The browser and its driver; skip without them, fail where TAXI_JOB_REQUIRE_TOOLS=1."""
    tools = find_tools()
    if tools is None:
        message = "chromium and chromedriver are needed (.ci/setup-tools installs them)"
        if os.environ.get("TAXI_JOB_REQUIRE_TOOLS") == "1":
            pytest.fail(message)
        pytest.skip(message)
    return tools


@contextlib.contextmanager
def chromium(width: int, height: int = 900, tools: tuple[str, str] | None = None) -> Iterator[Any]:
    """A headless Chromium whose viewport is ``width`` CSS pixels wide."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    browser, driver = tools or require_tools()
    options = webdriver.ChromeOptions()
    options.binary_location = browser
    for arg in (
        "--headless=new",
        "--no-sandbox",  # root in CI; the page is ours
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--hide-scrollbars",
        "--force-device-scale-factor=1",
        f"--window-size={width},{height}",
        # No background traffic of the browser's own (updates, safe browsing, ...).
        "--disable-background-networking",
        "--no-first-run",
    ):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL", "performance": "ALL"})
    web = webdriver.Chrome(options=options, service=Service(executable_path=driver))
    try:
        # The viewport, not the window, must be `width` wide (the window has a frame).
        web.execute_cdp_cmd(
            "Emulation.setDeviceMetricsOverride",
            {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": width < 600},
        )
        yield web
    finally:
        web.quit()


def requests_made(web: Any) -> list[str]:
    """The URLs of every request the page made since the last call."""
    urls = []
    for entry in web.get_log("performance"):
        message = json.loads(entry["message"])["message"]
        if message.get("method") == "Network.requestWillBeSent":
            urls.append(message["params"]["request"]["url"])
    return urls


def check_page(page: Path, width: int, charts: int) -> dict[str, str]:
    """Open ``page`` at ``width`` px and check what a reader would notice: nothing fetched
    but the page (and images inline in it), no console error, ``charts`` charts each
    visible with a size, no horizontal scrolling. Return the status section's values by
    ``data-key``."""
    with chromium(width) as web:
        requests_made(web)  # the browser's own start-up, before the page
        web.get(page.resolve().as_uri())
        requests = requests_made(web)
        assert requests[0] == page.resolve().as_uri()
        assert [u for u in requests[1:] if not u.startswith("data:")] == []
        errors = [e for e in web.get_log("browser") if e["level"] in ("SEVERE", "ERROR")]
        assert errors == []
        sizes = web.execute_script(
            "return [...document.querySelectorAll('svg.chart')].map(e => {"
            "  const r = e.getBoundingClientRect();"
            "  const s = getComputedStyle(e);"
            "  return [e.getAttribute('aria-label'), r.width, r.height, s.visibility, s.display];"
            "})"
        )
        assert len(sizes) == charts, sizes
        for label, w, h, visibility, display in sizes:
            assert w > 100 and h > 50 and visibility == "visible" and display != "none", label
        scroll, client = web.execute_script(
            "return [document.documentElement.scrollWidth, document.documentElement.clientWidth]"
        )
        assert scroll <= client, f"horizontal scrolling at {width}px: {scroll} > {client}"
        return {
            dd.get_attribute("data-key"): dd.text
            for dd in web.find_elements("css selector", "#status dd")
        }


def screenshot(page: Path, out: Path, width: int, boxes: Sequence[str] = ()) -> list[Any]:
    """A full-page PNG of ``page`` at ``width`` CSS pixels; returns the page boxes
    ``(top, bottom)`` of the elements matching the CSS selectors ``boxes``."""
    with chromium(width) as web:
        web.get(page.resolve().as_uri())
        height = web.execute_script("return document.documentElement.scrollHeight")
        web.execute_cdp_cmd(
            "Emulation.setDeviceMetricsOverride",
            {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": width < 600},
        )
        out.parent.mkdir(parents=True, exist_ok=True)
        web.save_screenshot(str(out))
        return [
            web.execute_script(
                "const r = document.querySelector(arguments[0]).getBoundingClientRect();"
                "return [r.top + window.scrollY, r.bottom + window.scrollY]",
                selector,
            )
            for selector in boxes
        ]
