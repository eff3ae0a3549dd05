"""The HTML report in a real browser: charts draw, planted markup stays text, nothing runs or loads.

Uses Debian's chromium through Playwright's Python package; Playwright never downloads a browser.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console

from circleci_ds.report import run_report
from test_report import PLANTED_BRANCH, PLANTED_JOB, PLANTED_LOGIN, PLANTED_SUBJECT, make_store

CHROMIUM = Path("/usr/bin/chromium")
ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian's chromium at /usr/bin/chromium"),
]

COUNT_POINTS = """
() => Array.from(document.querySelectorAll(".chart")).map((chart) => ({
  id: chart.id,
  points: chart.querySelectorAll(".plot-container .point").length,
}))
"""

ORGANISATION_ROWS = """
() => Array.from(document.querySelectorAll("#organisation tbody tr")).map(
  (tr) => Array.from(tr.querySelectorAll("td")).slice(0, 5).map((td) => td.textContent))
"""


def _open(page_path: Path, screenshot: Path | None = None) -> dict[str, Any]:
    from playwright.sync_api import sync_playwright

    problems: list[str] = []
    requests: list[str] = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda exc: problems.append(str(exc)))
            page.on("request", lambda r: requests.append(r.url))
            page.goto(page_path.as_uri())
            page.wait_for_function(
                "() => { const c = document.querySelectorAll('.chart');"
                " return c.length > 0 && Array.from(c).every((e) => e.querySelector('.main-svg')); }",
                timeout=30_000,
            )
            if screenshot is not None:
                page.screenshot(path=str(screenshot), full_page=True)
            return {
                "problems": problems,
                "requests": requests,
                "charts": page.evaluate(COUNT_POINTS),
                "pwned": page.evaluate("() => typeof window.__pwned"),
                "visible": {
                    text: page.get_by_text(text, exact=True).first.is_visible()
                    for text in (PLANTED_SUBJECT, PLANTED_JOB, PLANTED_LOGIN, PLANTED_BRANCH)
                },
                "title": page.title(),
                "organisation": page.evaluate(ORGANISATION_ROWS),
                "window": page.locator("#window").inner_text(),
            }
        finally:
            browser.close()


def test_report_renders_safely_in_chromium(tmp_path: Path) -> None:
    store = make_store(tmp_path / "store.db")
    page_path = tmp_path / "report.html"
    out = io.StringIO()
    run_report(
        store,
        project=None,
        since=None,
        until=None,
        branch=None,
        fmt="table",
        html_path=page_path,
        console=Console(file=out, width=200),
    )
    seen = _open(page_path)
    assert seen["title"] == "CircleCI report"
    assert seen["problems"] == []
    assert all(url.startswith("file://") for url in seen["requests"]), seen["requests"]
    charts = seen["charts"]
    # organisation: project health; acme: success trend, duration trend, queue times, slowest jobs,
    # flaky jobs, MTTR; lib: four of those
    assert len(charts) == 11, charts
    assert charts[0]["id"] == "chart-org-health"
    assert all(chart["points"] > 0 for chart in charts), charts
    assert seen["pwned"] == "undefined"
    planted = (PLANTED_SUBJECT, PLANTED_JOB, PLANTED_LOGIN, PLANTED_BRANCH)
    assert seen["visible"] == dict.fromkeys(planted, True)
    # the organisation view: both projects side by side, least healthy first
    assert [row[0] for row in seen["organisation"]] == ["gh/acme/api", "gh/other/lib"]
    assert [row[4] for row in seen["organisation"]] == ["50.0%", "100.0%"]
    assert seen["window"].startswith("Window: workflow runs created from 2026-10-06T00:00:00Z to 2026-11-05")
