"""The HTML report in a real browser: charts draw, planted markup stays text, nothing runs or loads."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

from rich.console import Console

from browser_helpers import COUNT_POINTS, needs_browser, opened_page
from circleci_ds.report import run_report
from test_report import PLANTED_BRANCH, PLANTED_JOB, PLANTED_LOGIN, PLANTED_SUBJECT, make_store

ORGANISATION_ROWS = """
() => Array.from(document.querySelectorAll("#organisation tbody tr")).map(
  (tr) => Array.from(tr.querySelectorAll("td")).slice(0, 5).map((td) => td.textContent))
"""


def _open(page_path: Path) -> dict[str, Any]:
    with opened_page(page_path) as seen:
        page = seen.page
        return {
            "problems": seen.problems,
            "requests": seen.requests,
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


@needs_browser
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
    # flaky jobs, MTTR; lib: four of those; cost (estimated): credits per week, costliest jobs,
    # concurrency over time
    assert len(charts) == 14, charts
    assert charts[0]["id"] == "chart-org-health"
    cost_charts = ["chart-cost-weekly", "chart-cost-jobs", "chart-cost-concurrency"]
    assert [c["id"] for c in charts[-3:]] == cost_charts
    assert all(chart["points"] > 0 for chart in charts), charts
    assert seen["pwned"] == "undefined"
    planted = (PLANTED_SUBJECT, PLANTED_JOB, PLANTED_LOGIN, PLANTED_BRANCH)
    assert seen["visible"] == dict.fromkeys(planted, True)
    # the organisation view: both projects side by side, least healthy first
    assert [row[0] for row in seen["organisation"]] == ["gh/acme/api", "gh/other/lib"]
    assert [row[4] for row in seen["organisation"]] == ["50.0%", "100.0%"]
    assert seen["window"].startswith("Window: workflow runs created from 2026-10-06T00:00:00Z to 2026-11-05")
