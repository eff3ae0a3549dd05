"""The tests part of the report: JSON fields, terminal text made inert, and the page in Chromium."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console

from browser_helpers import COUNT_POINTS, needs_browser, opened_page
from circleci_ds.collect.tests import save_items
from circleci_ds.derive.facts import open_store
from circleci_ds.ids import uuid
from circleci_ds.report import run_report
from circleci_ds.store import Store
from test_testmetrics import T, hand_job, item, opened, write_hand_worked

PLANTED_CLASS = '<img src=x onerror="window.__pwned=1">'
PLANTED_MESSAGE = "</script><script>window.__pwned=1</script>\x1b[31mred\x1b]0;title\x07"
SHOWN_MESSAGE = "</script><script>window.__pwned=1</script>\ufffd[31mred\ufffd]0;title\ufffd"


def planted_store(path: Path) -> Store:
    store = open_store(f"sqlite:///{path}")
    write_hand_worked(store)
    hostile = {**item("D", "failure"), "classname": PLANTED_CLASS, "message": PLANTED_MESSAGE}
    save_items(store, hand_job(9, "main", "c9", 950, 990, 40, "failed"), [hostile], seq=0, final=True)
    passed = {**hostile, "result": "success", "message": None}  # flaky: its message shows in the tables
    save_items(store, hand_job(10, "main", "c9", 995, 999, 4, "success"), [passed], seq=0, final=True)
    return store


WINDOW = (T - 86400, T + 30 * 86400)  # the hand-worked jobs' days; the report has one window for all


def report_text(store: Store, fmt: str, html: Path | None = None) -> str:
    out = io.StringIO()
    since, until = WINDOW
    run_report(store, project=None, since=since, until=until, branch=None, fmt=fmt, html_path=html,
               console=Console(file=out, width=400))
    return out.getvalue()


def test_json_carries_the_issue_fields(tmp_path: Path) -> None:
    with opened(f"sqlite:///{tmp_path / 's.db'}") as store:
        write_hand_worked(store)
        tests = json.loads(report_text(store, "json"))["tests"]
    assert set(tests) >= {"flaky", "most_failed", "slowest"}
    common = {"project_slug", "job", "classname", "name", "file"}
    assert set(tests["flaky"][0]) >= common | {"commits", "times_flaked", "last_flaked"}
    assert set(tests["most_failed"][0]) >= common | {"runs", "failures", "failure_rate"}
    assert set(tests["slowest"][0]) >= common | {"runs", "run_time_p50", "run_time_p95"}
    assert tests["slowest"][0]["run_time_p95"] == pytest.approx(4.8)


def test_terminal_shows_escapes_as_replacement_characters(tmp_path: Path) -> None:
    store = planted_store(tmp_path / "s.db")
    try:
        text = report_text(store, "table")
    finally:
        store.close()
    assert "\x1b" not in text and "\x07" not in text
    assert SHOWN_MESSAGE[:60] in text and PLANTED_CLASS in text
    assert "Flaky tests" in text and "Time lost to flaky tests" in text


def _open(page_path: Path) -> dict[str, Any]:
    with opened_page(page_path, "#tests .chart") as seen:
        page = seen.page
        return {
            "problems": seen.problems,
            "charts": [c for c in page.evaluate(COUNT_POINTS) if c["id"].startswith("chart-tests-")],
            "pwned": page.evaluate("() => typeof window.__pwned"),
            "message": page.get_by_text(SHOWN_MESSAGE, exact=True).first.is_visible(),
            "class": page.get_by_text(f"{PLANTED_CLASS}.D", exact=True).first.is_visible(),
            "script": page.get_by_text("A broke </script>", exact=True).first.is_visible(),
        }


@needs_browser
def test_tests_section_renders_safely_in_chromium(tmp_path: Path) -> None:
    store = planted_store(tmp_path / "s.db")
    page_path = tmp_path / "report.html"
    try:
        report_text(store, "table", page_path)
    finally:
        store.close()
    seen = _open(page_path)
    assert seen["problems"] == []
    assert [c["id"] for c in seen["charts"]] == [
        "chart-tests-flaky", "chart-tests-failed", "chart-tests-slowest", "chart-tests-counts"
    ]
    assert all(c["points"] > 0 for c in seen["charts"]), seen["charts"]
    assert seen["pwned"] == "undefined"
    assert seen["message"] and seen["class"] and seen["script"]


def test_enriched_export_has_one_document_per_result(tmp_path: Path) -> None:
    db = tmp_path / "s.db"
    planted_store(db).close()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    run = subprocess.run(
        [sys.executable, "-m", "circleci_ds", "export", "--db", f"sqlite:///{db}", "--kind", "enriched",
         "--format", "es-bulk"],
        capture_output=True, text=True, env=env, timeout=120, check=True,
    )
    lines = [json.loads(line) for line in run.stdout.splitlines()]
    actions, docs = lines[::2], lines[1::2]
    tests = [d for d in docs if d.get("is_circleci_test") == 1]
    assert len(tests) == 6 * 3 + 2  # jobs 1-6 with three results, 9 and 10 with one; 7 is half-read
    assert len({d["uuid"] for d in tests}) == len(tests)
    assert all(a["index"]["_id"] == d["uuid"] and a["index"]["_index"] == "sds-acme-circleci"
               for a, d in zip(actions, docs, strict=True))
    planted = next(d for d in tests if d["classname"] == PLANTED_CLASS and d["result"] == "failure")
    assert planted["message"] == PLANTED_MESSAGE and planted["passed"] is False
    assert planted["job_web_url"] == "https://ci/9" and planted["commit_sha"] == "c9"
    assert planted["uuid"] == uuid("https://circleci.com/gh/acme/x", "job-9", "test", PLANTED_CLASS, "D")
