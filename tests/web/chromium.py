"""Debian's Chromium driven by Playwright for the browser tests: launched with the flags it needs
here, offline but for loopback, screenshots under var/screenshots/."""

from __future__ import annotations

import shutil
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from tests.conftest import ROOT

CHROMIUM = "/usr/bin/chromium"
ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
LOOPBACK = ("http://127.0.0.1:", "ws://127.0.0.1:", "http://localhost:", "ws://localhost:")


def chromium_available() -> bool:
    return Path(CHROMIUM).exists()


@asynccontextmanager
async def chromium() -> AsyncIterator[Any]:
    from playwright.async_api import async_playwright

    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
        try:
            yield browser
        finally:
            await browser.close()


async def local_only(route: Any) -> None:
    """Requests to loopback go on; anything else (a web font, a CDN) is aborted."""
    if route.request.url.startswith(LOOPBACK):
        await route.continue_()
    else:
        await route.abort()


async def loopback_context(browser: Any, **options: Any) -> Any:
    """A fresh browser profile that reaches only loopback (pages that @import web fonts);
    ``options`` are Playwright's (``accept_downloads``, ``locale``)."""
    context = await browser.new_context(**options)
    await context.route("**/*", local_only)
    return context


def screenshot_folder(group: str, name: str) -> Callable[[str], Path]:
    """var/screenshots/GROUP/NAME/ emptied; ``path(step)`` names one step's PNG."""
    folder = ROOT / "var" / "screenshots" / group / name
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    print(f"\nscreenshots: {folder}")

    def path(step: str) -> Path:
        return folder / f"{step}.png"

    return path
