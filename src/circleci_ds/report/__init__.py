"""Reports over the store: terminal tables, JSON, and a self-contained HTML page."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

from rich.console import Console

from circleci_ds.enrich import enrich_trees
from circleci_ds.metrics import MetricsReport, compute_metrics
from circleci_ds.report.html import render_html, write_html
from circleci_ds.report.terminal import print_tables
from circleci_ds.report.testsection import build_tests, print_test_tables, report_json
from circleci_ds.store import Store

__all__ = ["build_report", "print_tables", "render_html", "run_report", "write_html"]

FORMATS = ("table", "json")


def build_report(
    store: Store,
    *,
    project: str | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    branch: str | None = None,
) -> MetricsReport:
    """Enrich the stored trees (of one native project, or all) and compute the metrics."""
    docs = enrich_trees(store.iter_trees(project), store.project_infos())
    return compute_metrics(docs, since=since, until=until, branch=branch)


def run_report(
    store: Store,
    *,
    project: str | None,
    since: datetime | None,
    until: datetime | None,
    branch: str | None,
    fmt: str,
    html_path: Path | None,
    console: Console,
) -> None:
    """Print tables (fmt "table") or JSON (fmt "json") and, with html_path, write the HTML page.

    `branch`: None measures each project's default branch; "*" measures all branches.
    """
    if fmt not in FORMATS:
        raise ValueError(f"unknown report format {fmt!r} (expected one of {', '.join(FORMATS)})")
    report = build_report(store, project=project, since=since, until=until, branch=branch)
    tests = build_tests(store, project=project, since=since, until=until, branch=branch)
    if fmt == "json":
        console.out(report_json(report, tests), highlight=False)
    else:
        print_tables(report, console)
        print_test_tables(tests, console)
    if html_path is not None:
        write_html(report, html_path, tests)
        if fmt == "table":  # JSON output stays pure JSON
            console.print(f"Wrote {html_path}", highlight=False, markup=False)
