"""Reports over the store: terminal tables, JSON, and a self-contained HTML page."""

from __future__ import annotations

from pathlib import Path

from rich.console import Console

from circleci_ds.metrics import MetricsReport, compute_report
from circleci_ds.report.html import render_html, write_html
from circleci_ds.report.terminal import print_tables
from circleci_ds.store import Store

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
) -> MetricsReport:
    """Print tables (fmt "table") or JSON (fmt "json") and, with html_path, write the HTML page.

    `branch`: None measures each project's default branch; "*" measures all branches.
    """
    if fmt not in FORMATS:
        raise ValueError(f"unknown report format {fmt!r} (expected one of {', '.join(FORMATS)})")
    report = build_report(
        store,
        project=project,
        since=since,
        until=until,
        branch=branch,
        bucket=bucket,
        deploy_pattern=deploy_pattern,
    )
    if fmt == "json":
        console.out(report.to_json(), highlight=False)
    else:
        print_tables(report, console)
    if html_path is not None:
        write_html(report, html_path)
        if fmt == "table":  # JSON output stays pure JSON
            console.print(f"Wrote {html_path}", highlight=False, markup=False)
    return report
