"""Reports over the store: terminal tables, JSON, and a self-contained HTML page."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from rich.console import Console

from circleci_ds.derive.people import People
from circleci_ds.inputs.identities import Identities
from circleci_ds.metrics.ci import MetricsReport, compute_report
from circleci_ds.metrics.people import PeopleTally
from circleci_ds.report.html import render_html, write_html
from circleci_ds.report.people_section import people_html, print_people
from circleci_ds.report.terminal import print_tables
from circleci_ds.report.testsection import build_tests, html_section, print_test_tables
from circleci_ds.store import Store
from circleci_ds.text import plain
from circleci_ds.times import parse_ts

__all__ = ["build_report", "print_tables", "render_html", "run_report", "write_html"]

FORMATS = ("table", "json")


build_report = compute_report  # the metrics of one window over the store's facts


def run_report(
    store: Store,
    *,
    project: str | None,
    since: float | None,
    until: float | None,
    branch: str | None,
    fmt: str,
    html_path: Path | None,
    console: Console,
    bucket: str = "auto",
    deploy_pattern: str | None = None,
    identities: Identities | None = None,
) -> MetricsReport:
    """Print tables (fmt "table") or JSON (fmt "json") and, with html_path, write the HTML page.

    `branch`: None measures each project's default branch; "*" measures all branches.
    """
    if fmt not in FORMATS:
        raise ValueError(f"unknown report format {fmt!r} (expected one of {', '.join(FORMATS)})")
    report = compute_report(
        store,
        project=project,
        since=since,
        until=until,
        branch=branch,
        bucket=bucket,
        deploy_pattern=deploy_pattern,
    )
    # People: a section of their own, over the same window, from the trees that have runs in it.
    start, end = _moment(report.since), _moment(report.until)
    people = PeopleTally(
        People.load(store, identities), store.project_infos(), since=start, until=end, branch=branch
    )
    for tree in store.iter_trees(
        project, created=(start.timestamp(), end.timestamp()) if start and end else None
    ):
        people.tree(tree)
    who = people.report()
    tests = build_tests(store, project=project, since=start, until=end, branch=branch)  # the same window
    if fmt == "json":
        payload = {**report.to_dict(), "people": who.to_dict(), "tests": tests.to_dict()}
        console.out(json.dumps(payload, indent=2, ensure_ascii=False), highlight=False)
    else:
        print_tables(report, console)
        if report.projects:
            print_people(who, console)
        print_test_tables(tests, console)
    if html_path is not None:
        test_specs: list[dict[str, Any]] = []
        tests_html = html_section(tests, test_specs)
        write_html(report, html_path, people_html(who) + tests_html, test_specs)
        if fmt == "table":  # JSON output stays pure JSON
            console.print(plain(f"Wrote {html_path}"), highlight=False)
    return report


def _moment(text: str | None) -> datetime | None:
    epoch = parse_ts(text)
    return None if epoch is None else datetime.fromtimestamp(epoch, UTC)
