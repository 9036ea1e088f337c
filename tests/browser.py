"""Open a local HTML file in the OS's headless Chromium and record what the page did.

Playwright drives the Debian package ``chromium`` (``apt-get install chromium``) instead
of a browser it downloads, so the tests need no network. Without the browser the tests
skip, except in CI (``CI`` set), where a skipped browser test would hide a broken report.

The sync API is used: tests that open a page are plain (not async) functions, so no event
loop is running when playwright starts its own.
"""

from __future__ import annotations

import os
import shutil
import struct
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

import pytest

if TYPE_CHECKING:
    from playwright.sync_api import ConsoleMessage, Dialog, Page, Request, WebSocket

# URLs a page makes from data it already has: not the network.
_LOCAL_SCHEMES = ("data:", "blob:", "about:")


def chromium_executable() -> str:
    """The OS's Chromium; skips the test without it (fails it in CI)."""
    path = shutil.which("chromium") or "/usr/bin/chromium"
    try:
        import playwright.sync_api  # noqa: F401 - only to know it is there
    except ImportError:
        _missing("the playwright package is not installed (it is in the 'dev' extra)")
    if not os.access(path, os.X_OK):
        _missing("no chromium executable: install it with `apt-get install chromium`")
    return path


def _missing(reason: str) -> NoReturn:
    if os.environ.get("CI"):
        pytest.fail(f"CI is set, so the browser tests must run: {reason}", pytrace=False)
    pytest.skip(reason)


@dataclass
class PageRun:
    """What a page did while it loaded; `page` stays usable inside `open_page`."""

    page: Page
    url: str
    console_errors: list[str] = field(default_factory=list)
    page_errors: list[str] = field(default_factory=list)
    """Uncaught exceptions in the page's scripts."""
    requests: list[str] = field(default_factory=list)
    """Every URL fetched other than the file itself and data:/blob: URLs."""
    dialogs: list[str] = field(default_factory=list)
    """``alert``/``confirm``/``prompt`` the page opened (each dismissed), as type: message."""
    screenshot: Path | None = None

    def evaluate(self, expression: str, arg: Any = None) -> Any:
        return self.page.evaluate(expression, arg)

    def text(self, selector: str) -> str:
        """The rendered text of the first element `selector` matches."""
        return self.page.locator(selector).first.inner_text()

    def count(self, selector: str) -> int:
        return self.page.locator(selector).count()


@contextmanager
def open_page(
    html_file: Path,
    *,
    wait_for: str | None = None,
    screenshot: Path | None = None,
    width: int = 1280,
    height: int = 900,
    javascript: bool = True,
) -> Iterator[PageRun]:
    """Load `html_file`, wait until JS expression `wait_for` is truthy, screenshot it.

    The context is offline: a request the page should not make fails instead of reaching
    the network, and is still recorded in `PageRun.requests`.
    """
    executable = chromium_executable()
    from playwright.sync_api import sync_playwright

    url = html_file.resolve().as_uri()
    with sync_playwright() as pw:
        browser = pw.chromium.launch(
            executable_path=executable, headless=True, args=["--no-sandbox"]
        )
        try:
            context = browser.new_context(
                viewport={"width": width, "height": height},
                offline=True,
                java_script_enabled=javascript,
            )
            page = context.new_page()
            run = PageRun(page=page, url=url)

            def on_console(message: ConsoleMessage) -> None:
                if message.type == "error":
                    run.console_errors.append(message.text)

            def on_request(request: Request) -> None:
                if request.url != url and not request.url.startswith(_LOCAL_SCHEMES):
                    run.requests.append(request.url)

            def on_websocket(socket: WebSocket) -> None:
                run.requests.append(socket.url)

            def on_dialog(dialog: Dialog) -> None:
                run.dialogs.append(f"{dialog.type}: {dialog.message}")
                # A dialog left open blocks the page's scripts until the test times out.
                dialog.dismiss()

            page.on("console", on_console)
            page.on("pageerror", lambda error: run.page_errors.append(str(error)))
            page.on("dialog", on_dialog)
            page.on("websocket", on_websocket)
            # On the context: a worker's requests are the page's too.
            context.on("request", on_request)

            page.goto(url, wait_until="load")
            if wait_for is not None:
                page.wait_for_function(wait_for, timeout=30_000)
            if screenshot is not None:
                page.screenshot(path=str(screenshot), full_page=True)
                run.screenshot = screenshot
            yield run
        finally:
            browser.close()


def png_size(path: Path) -> tuple[int, int]:
    """Width and height of a PNG, from its IHDR chunk."""
    head = path.read_bytes()[:24]
    assert head[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    width, height = struct.unpack(">II", head[16:24])
    return width, height
