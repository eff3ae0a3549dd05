"""Reports over the store: terminal tables, JSON, and a self-contained HTML page."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from rich.console import Console

from circleci_ds.derive.people import People
from circleci_ds.inputs.identities import Identities
from circleci_ds.metrics.capacity import compute_capacity
from circleci_ds.metrics.ci import MetricsReport, compute_report, metrics_over, report_window
from circleci_ds.metrics.cost import CostOptions, compute_cost
from circleci_ds.metrics.people import PeopleTally
from circleci_ds.metrics.tests import compute_tests
from circleci_ds.metrics.window import Window
from circleci_ds.report.costsection import CostSection, print_cost_tables
from circleci_ds.report.costsection import html_section as cost_html
from circleci_ds.report.html import render_html, write_html
from circleci_ds.report.people_section import people_html, print_people
from circleci_ds.report.terminal import print_tables
from circleci_ds.report.testsection import html_section, print_test_tables
from circleci_ds.store import Store
from circleci_ds.text import plain

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
    cost_options: CostOptions | None = None,
    concurrency_cap: int | None = None,
) -> MetricsReport:
    """Print tables (fmt "table") or JSON (fmt "json") and, with html_path, write the HTML page.

    `branch`: None measures each project's default branch; "*" measures all branches. Cost covers
    every branch unless one is named.
    """
    if fmt not in FORMATS:
        raise ValueError(f"unknown report format {fmt!r} (expected one of {', '.join(FORMATS)})")
    window = report_window(store, Window(since, until, branch, project))  # one window for every section
    report = metrics_over(store, window, bucket=bucket, deploy_pattern=deploy_pattern)
    # People: a section of their own, from the trees that have runs in the window.
    people = PeopleTally(People.load(store, identities), store.project_infos(), window)
    for tree in store.iter_trees(project, created=_created(window)):
        people.tree(tree)
    who = people.report()
    tests = compute_tests(store, window)
    costs = build_cost_section(store, window, cost_options, concurrency_cap)
    if fmt == "json":
        payload = {
            **report.to_dict(),
            "people": who.to_dict(),
            "tests": tests.to_dict(),
            "cost": costs.cost.to_dict(),
            "capacity": costs.capacity.to_dict(),
        }
        console.out(json.dumps(payload, indent=2, ensure_ascii=False), highlight=False)
    else:
        print_tables(report, console)
        if report.projects:
            print_people(who, console)
        print_test_tables(tests, console)
        print_cost_tables(costs, console)
    if html_path is not None:
        test_specs: list[dict[str, Any]] = []
        tests_html = html_section(tests, test_specs)
        extra = people_html(who) + tests_html + cost_html(costs, test_specs)
        write_html(report, html_path, extra, test_specs)
        if fmt == "table":  # JSON output stays pure JSON
            console.print(plain(f"Wrote {html_path}"), highlight=False)
    return report


def build_cost_section(
    store: Store, window: Window, options: CostOptions | None, cap: int | None
) -> CostSection:
    """Cost and capacity over the report's window (cost on every branch unless one is named)."""
    since, until = window.since, window.until
    assert since is not None and until is not None  # report_window resolves both bounds
    project = window.project
    cost = compute_cost(
        store, project=project, since=since, until=until, branch=window.branch, options=options
    )
    capacity = compute_capacity(store, project=project, since=since, until=until, cap=cap)
    return CostSection(cost, capacity)


def _created(window: Window) -> tuple[float, float] | None:
    if window.since is None or window.until is None:
        return None
    return window.since, window.until
