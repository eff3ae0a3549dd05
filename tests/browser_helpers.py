"""Opening a report page in a real browser, for the report tests.

Uses Debian's chromium through Playwright's Python package; Playwright never downloads a browser.
Tests that open a page are marked `browser` (`needs_browser`): they skip where chromium is missing, and
fail under CI (see `requirements`).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import pytest

from requirements import CHROMIUM

T = TypeVar("T", bound=Callable[..., object])
ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]

COUNT_POINTS = """
() => Array.from(document.querySelectorAll(".chart")).map((chart) => ({
  id: chart.id,
  points: chart.querySelectorAll(".plot-container .point").length,
}))
"""


def needs_browser(test: T) -> T:
    """Marks a test `browser`: conftest checks chromium is there before it runs."""
    return pytest.mark.browser(test)


@dataclass
class Opened:
    page: Any  # playwright.sync_api.Page, imported on use
    problems: list[str] = field(default_factory=list)  # console errors, page errors, dialogs
    requests: list[str] = field(default_factory=list)  # every URL the page asked for


@contextmanager
def opened_page(page_path: Path, charts: str = ".chart") -> Iterator[Opened]:
    """`page_path` in chromium, once every element matching `charts` holds a drawn plot."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            seen = Opened(page)
            page.on("console", lambda m: seen.problems.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda exc: seen.problems.append(str(exc)))
            page.on("dialog", lambda d: _refuse(d, seen.problems))
            page.on("request", lambda r: seen.requests.append(r.url))
            page.goto(page_path.as_uri())
            page.wait_for_function(
                f"() => {{ const c = document.querySelectorAll({json.dumps(charts)});"
                " return c.length > 0 && Array.from(c).every((e) => e.querySelector('.main-svg')); }",
                timeout=30_000,
            )
            yield seen
        finally:
            browser.close()


def _refuse(dialog: Any, problems: list[str]) -> None:
    """A page that opens a dialog ran script: recorded, and dismissed so the page goes on."""
    problems.append(f"dialog {dialog.message}")
    dialog.dismiss()
