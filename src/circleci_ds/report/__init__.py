"""Reports over the store: terminal tables, JSON, and a self-contained HTML page."""

from __future__ import annotations

import json
from collections.abc import Iterable
from datetime import datetime
from pathlib import Path
from typing import Any

from rich.console import Console

from circleci_ds.display import plain
from circleci_ds.enrich import enrich_trees
from circleci_ds.identities import Identities
from circleci_ds.metrics import MetricsReport, compute_metrics
from circleci_ds.people import People
from circleci_ds.people_report import PeopleTally
from circleci_ds.report.html import render_html, write_html
from circleci_ds.report.people_section import people_html, print_people
from circleci_ds.report.terminal import print_tables
from circleci_ds.report.testsection import build_tests, html_section, print_test_tables
from circleci_ds.store import Store, StoredTree

__all__ = ["build_report", "print_tables", "render_html", "run_report", "write_html"]

FORMATS = ("table", "json")


def build_report(
    store: Store,
    *,
    project: str | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    branch: str | None = None,
    trees: Iterable[StoredTree] | None = None,
) -> MetricsReport:
    """Enrich the stored trees (of one native project, or all; or `trees`) and compute the metrics."""
    docs = enrich_trees(store.iter_trees(project) if trees is None else trees, store.project_infos())
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
    identities: Identities | None = None,
) -> None:
    """Print tables (fmt "table") or JSON (fmt "json") and, with html_path, write the HTML page.

    `branch`: None measures each project's default branch; "*" measures all branches.
    """
    if fmt not in FORMATS:
        raise ValueError(f"unknown report format {fmt!r} (expected one of {', '.join(FORMATS)})")
    # People: a section of its own, tallied from the same pass over the trees as the metrics.
    people = PeopleTally(People.load(store, identities), store.project_infos(), since=since, until=until,
                         branch=branch)  # fmt: skip
    trees = people.watch(store.iter_trees(project))
    report = build_report(store, project=project, since=since, until=until, branch=branch, trees=trees)
    who = people.report()
    tests = build_tests(store, project=project, since=since, until=until, branch=branch)
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
