"""A real browser for the admin page's tests: Playwright driving Debian's chromium.

    async with open_browser() as browser:
        page = await new_page(browser)                 # 1280x900 desktop
        phone = await new_page(browser, mobile=True)   # 390x844, touch, 2x pixels
        await page.goto(f"{base_url}/admin/review")
        save_screenshot(page, "review-desk")           # -> docs/screenshots/review-desk.png

Playwright never downloads a browser here (`playwright install` is not run, in CI either):
it launches the system's `/usr/bin/chromium`, which `.ci/run` installs with apt. A missing
chromium fails the test with the command that installs it; it is never a skip, or the
page's tests would quietly stop running.

The flags: root needs `--no-sandbox`; the `--disable-*` ones keep chromium from calling
Google (updates, sync, field trials, QUIC), which a test machine refuses, noisily.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from playwright.async_api import Browser, Page

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = (
    "--no-sandbox",
    "--headless",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
)
SCREENSHOTS = Path(__file__).resolve().parents[1] / "docs" / "screenshots"  # docs/screenshots in the repo
DESKTOP = (1280, 900)
MOBILE = {"viewport": {"width": 390, "height": 844}, "is_mobile": True, "has_touch": True, "device_scale_factor": 2}
INSTALL_HINT = ("install Debian's chromium (and a font so screenshots have text): "
                "apt-get install -y --no-install-recommends chromium fonts-dejavu-core  (.ci/run does this)")


def require_chromium() -> Path:
    """The browser binary, or a test failure saying how to install it (never a skip)."""
    if not (CHROMIUM.is_file() and os.access(CHROMIUM, os.X_OK)):
        pytest.fail(f"{CHROMIUM} is missing: {INSTALL_HINT}", pytrace=False)
    return CHROMIUM


@asynccontextmanager
async def open_browser(*, timeout_ms: float = 30_000) -> AsyncIterator[Browser]:
    """A headless chromium (Playwright's async API), closed on exit."""
    executable = require_chromium()
    try:
        from playwright.async_api import Error as PlaywrightError
        from playwright.async_api import async_playwright
    except ImportError:
        pytest.fail("the playwright package is missing: pip install -e '.[test]'", pytrace=False)
    async with async_playwright() as pw:
        try:
            browser = await pw.chromium.launch(executable_path=str(executable), args=list(CHROMIUM_ARGS),
                                               headless=True, timeout=timeout_ms)
        except PlaywrightError as exc:  # a broken install: say so with the fix, not only Playwright's trace
            pytest.fail(f"chromium at {executable} did not start: {exc}\n{INSTALL_HINT}", pytrace=False)
        try:
            yield browser
        finally:
            await browser.close()


async def new_page(browser: Browser, *, width: int = DESKTOP[0], height: int = DESKTOP[1],
                   mobile: bool = False) -> Page:
    """A page in a fresh context (its own cookies and storage): a desktop window of `width` x
    `height`, or with `mobile` a phone (390x844 CSS pixels, touch, device scale factor 2).

    The context closes with the browser (`open_browser`), or earlier with `page.context.close()`.
    """
    options = dict(MOBILE) if mobile else {"viewport": {"width": width, "height": height}}
    context = await browser.new_context(**options)
    return await context.new_page()


async def save_screenshot(page: Page, name: str) -> Path:
    """A full-page PNG of `page` at docs/screenshots/NAME.png (the directory is created)."""
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    path = SCREENSHOTS / f"{name.removesuffix('.png')}.png"
    await page.screenshot(path=str(path), full_page=True)
    return path
