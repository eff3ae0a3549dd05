"""The tests part of the report: terminal tables, JSON and an HTML section with charts.

Test names and failure messages are hostile text: in the terminal they go into `Text` objects after
`fmt.visible` has turned escape sequences and bidi controls into visible `\\x1b`-style escapes; in
the page they are HTML-escaped (and shown the same visible way); in charts they are entity-escaped.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

from rich.console import Console
from rich.table import Table
from rich.text import Text

from circleci_ds.metrics import MetricsReport
from circleci_ds.report import formatting as fmt
from circleci_ds.report.charts import PALETTE, Chart, _hbar, _layout, plot_text
from circleci_ds.report.html import _chart_card, _table, e
from circleci_ds.report.terminal import _table as terminal_table
from circleci_ds.report.terminal import print_table
from circleci_ds.store import Store
from circleci_ds.testmetrics import TestCountPoint, TestsReport, Window, compute_tests

SHOWN = 10
MESSAGE_SHOWN = 160
COUNT_JOBS = 6  # job names drawn in the test-count chart


def build_tests(
    store: Store,
    *,
    project: str | None,
    since: datetime | None,
    until: datetime | None,
    branch: str | None,
) -> TestsReport:
    """The test metrics over the report's window."""
    window = Window(
        since=since.timestamp() if since else None,
        until=until.timestamp() if until else None,
        branch=branch,
        project=project,
    )
    return compute_tests(store, window)


def report_json(report: MetricsReport, tests: TestsReport) -> str:
    """The report's JSON with `tests` added."""
    return json.dumps({**report.to_dict(), "tests": tests.to_dict()}, indent=2, ensure_ascii=False)


def _test_name(classname: str, name: str) -> str:
    return f"{classname}.{name}" if classname else name


# -- terminal -----------------------------------------------------------------------------------------


def print_test_tables(tests: TestsReport, console: Console) -> None:
    for table in (flaky_table(tests), failed_table(tests), slowest_table(tests), time_lost_table(tests)):
        print_table(console, table)


def _cell(value: str | None, limit: int | None = None) -> Text:
    return Text(fmt.visible(value, limit))


def flaky_table(tests: TestsReport) -> Table:
    table = terminal_table(
        "Flaky tests (passed and failed on the same commit)",
        "Project",
        "Job",
        "Test",
        "Commits",
        "Times flaked",
        "Last flaked",
        "Latest failure",
        numeric_from=3,
    )
    for f in tests.flaky[:SHOWN]:
        table.add_row(
            _cell(f.project_slug),
            _cell(f.job),
            _cell(_test_name(f.classname, f.name)),
            fmt.count(f.flaky_commits),
            fmt.count(f.times_flaked),
            fmt.text(f.last_flaked),
            _cell(f.message, MESSAGE_SHOWN),
        )
    if not tests.flaky:
        table.caption = "None found."
    return table


def failed_table(tests: TestsReport) -> Table:
    table = terminal_table(
        "Most failed tests", "Project", "Job", "Test", "Runs", "Failures", "Failure rate", numeric_from=3
    )
    for t in tests.most_failed[:SHOWN]:
        table.add_row(
            _cell(t.project_slug),
            _cell(t.job),
            _cell(_test_name(t.classname, t.name)),
            fmt.count(t.runs),
            fmt.count(t.failures),
            fmt.percent(t.failure_rate),
        )
    if not tests.most_failed:
        table.caption = "None found."
    return table


def slowest_table(tests: TestsReport) -> Table:
    table = terminal_table(
        "Slowest tests (run time)", "Project", "Job", "Test", "Runs", "p50", "p95", numeric_from=3
    )
    for t in tests.slowest[:SHOWN]:
        table.add_row(
            _cell(t.project_slug),
            _cell(t.job),
            _cell(_test_name(t.classname, t.name)),
            fmt.count(t.runs),
            fmt.seconds(t.run_time_p50),
            fmt.seconds(t.run_time_p95),
        )
    if not tests.slowest:
        table.caption = "No test results in this window."
    return table


def time_lost_table(tests: TestsReport) -> Table:
    table = terminal_table(
        "Time lost to flaky tests",
        "Project",
        "Jobs",
        "Time",
        numeric_from=1,
    )
    for x in tests.time_lost:
        table.add_row(_cell(x.project_slug), fmt.count(x.jobs), fmt.seconds(x.seconds))
    if not tests.time_lost:
        table.caption = "None."
    return table


# -- HTML ---------------------------------------------------------------------------------------------


def html_section(tests: TestsReport, specs: list[dict[str, Any]]) -> str:
    """The page's Tests section; chart specs are appended to `specs`."""
    cards = []
    for chart in section_charts(tests):
        chart_id = f"chart-tests-{chart.key}"
        specs.append({"id": chart_id, **chart.figure})
        cards.append(_chart_card(chart, chart_id))
    return (
        '<section class="project" id="tests"><h2>Tests</h2>'
        f'<div class="grid">{"".join(cards)}</div>'
        f"{_flaky_html(tests)}{_failed_html(tests)}{_slowest_html(tests)}{_time_lost_html(tests)}</section>"
    )


def _html_text(value: str | None, limit: int | None = None) -> str:
    return e(fmt.visible(value, limit))


def _flaky_html(tests: TestsReport) -> str:
    rows = [
        [
            _html_text(f.project_slug),
            _html_text(f.job),
            f"<code>{_html_text(_test_name(f.classname, f.name))}</code>",
            e(fmt.count(f.flaky_commits)),
            e(fmt.count(f.times_flaked)),
            e(fmt.text(f.last_flaked)),
            f'<a href="{e(f.web_url)}">job</a>'
            if f.web_url and f.web_url.startswith("https://")
            else e(fmt.DASH),
            f'<code class="message">{_html_text(f.message, MESSAGE_SHOWN)}</code>',
        ]
        for f in tests.flaky
    ]
    headers = [
        "Project",
        "Job",
        "Test",
        "Commits",
        "Times flaked",
        "Last flaked",
        "Latest failure",
        "Message",
    ]
    return _table("Flaky tests", "Passed and failed on the same commit (any branch).", headers, rows, 3)


def _failed_html(tests: TestsReport) -> str:
    rows = [
        [
            _html_text(t.project_slug),
            _html_text(t.job),
            f"<code>{_html_text(_test_name(t.classname, t.name))}</code>",
            e(fmt.count(t.runs)),
            e(fmt.count(t.failures)),
            e(fmt.percent(t.failure_rate)),
        ]
        for t in tests.most_failed
    ]
    headers = ["Project", "Job", "Test", "Runs", "Failures", "Failure rate"]
    return _table("Most failed tests", "Runs are passed and failed results.", headers, rows, 3)


def _slowest_html(tests: TestsReport) -> str:
    rows = [
        [
            _html_text(t.project_slug),
            _html_text(t.job),
            f"<code>{_html_text(_test_name(t.classname, t.name))}</code>",
            e(fmt.count(t.runs)),
            e(fmt.seconds(t.run_time_p50)),
            e(fmt.seconds(t.run_time_p95)),
        ]
        for t in tests.slowest
    ]
    return _table(
        "Slowest tests", "By p95 run time.", ["Project", "Job", "Test", "Runs", "p50", "p95"], rows, 3
    )


def _time_lost_html(tests: TestsReport) -> str:
    rows = [
        [_html_text(x.project_slug), e(fmt.count(x.jobs)), e(fmt.seconds(x.seconds))] for x in tests.time_lost
    ]
    note = "Duration of jobs that failed only on tests that passed later on the same commit."
    return _table("Time lost to flaky tests", note, ["Project", "Jobs", "Time"], rows, 1)


# -- charts -------------------------------------------------------------------------------------------


def _label(job: str, classname: str, name: str) -> str:
    return plot_text(fmt.visible(f"{job} · {_test_name(classname, name)}", 80))


def section_charts(tests: TestsReport) -> list[Chart]:
    candidates = [
        _flaky_chart(tests),
        _failed_chart(tests),
        _slowest_chart(tests),
        _counts_chart(tests.counts),
    ]
    return [c for c in candidates if c is not None]


def _bars(
    key: str, title: str, note: str, x_title: str, labels: list[str], series: list[tuple[str, list[float]]]
) -> Chart:
    data = [_hbar(name, labels, values, PALETTE[i % len(PALETTE)]) for i, (name, values) in enumerate(series)]
    layout = _layout(x_title, "", barmode="group", height=max(240, 80 + 34 * len(labels) * len(series)))
    layout["showlegend"] = len(series) > 1
    return Chart(key, title, note, {"data": data, "layout": layout})


def _flaky_chart(tests: TestsReport) -> Chart | None:
    top = list(reversed(tests.flaky[:SHOWN]))
    if not top:
        return None
    labels = [_label(f.job, f.classname, f.name) for f in top]
    series = [("times flaked", [float(f.times_flaked) for f in top])]
    return _bars(
        "flaky",
        "Flakiest tests",
        "Failed results on commits where the test also passed.",
        "Times flaked",
        labels,
        series,
    )


def _failed_chart(tests: TestsReport) -> Chart | None:
    top = list(reversed(tests.most_failed[:SHOWN]))
    if not top:
        return None
    labels = [_label(t.job, t.classname, t.name) for t in top]
    return _bars(
        "failed",
        "Most failed tests",
        "Failed results in the window.",
        "Failures",
        labels,
        [("failures", [float(t.failures) for t in top])],
    )


def _slowest_chart(tests: TestsReport) -> Chart | None:
    top = list(reversed(tests.slowest[:SHOWN]))
    if not top:
        return None
    labels = [_label(t.job, t.classname, t.name) for t in top]
    series = [("p50", [t.run_time_p50 for t in top]), ("p95", [t.run_time_p95 for t in top])]
    return _bars("slowest", "Slowest tests", "Run time in seconds, p50 and p95.", "Seconds", labels, series)


def _counts_chart(points: list[TestCountPoint]) -> Chart | None:
    by_job: dict[tuple[str, str], list[TestCountPoint]] = {}
    for p in points:
        by_job.setdefault((p.project_slug, p.job), []).append(p)
    if not by_job:
        return None
    biggest = sorted(by_job, key=lambda k: (-max(p.tests_max for p in by_job[k]), k))[:COUNT_JOBS]
    data = [
        {
            "type": "scatter",
            "mode": "lines+markers",
            "name": plot_text(fmt.visible(f"{slug} · {job}", 60)),
            "x": [p.day for p in by_job[slug, job]],
            "y": [p.tests_max for p in by_job[slug, job]],
        }
        for slug, job in biggest
    ]
    layout = _layout("Day", "Tests per job")
    return Chart(
        "counts",
        "Tests per job over time",
        "Most tests in one run of the job, per day.",
        {"data": data, "layout": layout},
    )
