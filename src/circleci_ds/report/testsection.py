"""The tests part of the report: its table specs, drawn by both renderers, and its charts.

Test names and failure messages are hostile text: `display.safe_text` replaces control characters
(terminal escapes) and bidi controls with U+FFFD everywhere they are shown (the table specs do it
for every cell); in the terminal they go into `Text` objects, in the page they are HTML-escaped, in
charts entity-escaped. The terminal shows the first SHOWN rows of each table, the page all of them.
"""

from __future__ import annotations

from typing import Any

from rich.console import Console

from circleci_ds.metrics.tests import TestCountPoint, TestsReport, Window, compute_tests
from circleci_ds.report import formatting as fmt
from circleci_ds.report.charts import PALETTE, Chart, base_layout, hbar, plot_text
from circleci_ds.report.html import chart_cards, spec_table
from circleci_ds.report.spec import Column, TableSpec, project_column
from circleci_ds.report.terminal import print_specs
from circleci_ds.store import Store
from circleci_ds.text import safe_text

SHOWN = 10
MESSAGE_SHOWN = 160
COUNT_JOBS = 6  # job names drawn in the test-count chart


def build_tests(
    store: Store, *, project: str | None, since: float | None, until: float | None, branch: str | None
) -> TestsReport:
    """The test metrics over a window (the report gives its own Window to compute_tests)."""
    return compute_tests(store, Window(since, until, branch, project))


def _test_name(classname: str, name: str) -> str:
    return f"{classname}.{name}" if classname else name


# -- tables: specs (circleci_ds.report.spec) drawn by both renderers ---------------------------------


_IDENTITY = (
    project_column(lambda t: t.project_slug),
    Column("Job", lambda t: t.job),
    Column("Test", lambda t: _test_name(t.classname, t.name), code=True),
)
_RUNS = Column("Runs", lambda t: fmt.count(t.runs), numeric=True)

FLAKY: TableSpec[TestsReport] = TableSpec(
    "tests-flaky",
    "Flaky tests",
    "Passed and failed on the same commit (any branch).",
    (
        *_IDENTITY,
        Column("Commits", lambda f: fmt.count(f.flaky_commits), numeric=True),
        Column("Times flaked", lambda f: fmt.count(f.times_flaked), numeric=True),
        Column("Last flaked", lambda f: fmt.text(f.last_flaked), numeric=True),
        Column("Latest failure", lambda f: f.web_url, link="job"),
        Column("Message", lambda f: fmt.text(f.message), code=True, limit=MESSAGE_SHOWN),
    ),
    lambda t: t.flaky,
    "None found.",
    SHOWN,
)

MOST_FAILED: TableSpec[TestsReport] = TableSpec(
    "tests-failed",
    "Most failed tests",
    "Runs are passed and failed results.",
    (
        *_IDENTITY,
        _RUNS,
        Column("Failures", lambda t: fmt.count(t.failures), numeric=True),
        Column("Failure rate", lambda t: fmt.percent(t.failure_rate), numeric=True),
    ),
    lambda t: t.most_failed,
    "None found.",
    SHOWN,
)

SLOWEST_TESTS: TableSpec[TestsReport] = TableSpec(
    "tests-slowest",
    "Slowest tests",
    "By p95 run time.",
    (
        *_IDENTITY,
        _RUNS,
        Column("p50", lambda t: fmt.seconds(t.run_time_p50), numeric=True),
        Column("p95", lambda t: fmt.seconds(t.run_time_p95), numeric=True),
    ),
    lambda t: t.slowest,
    "No test results in this window.",
    SHOWN,
)

TIME_LOST: TableSpec[TestsReport] = TableSpec(
    "tests-time-lost",
    "Time lost to flaky tests",
    "Duration of jobs that failed only on tests that passed later on the same commit.",
    (
        project_column(lambda x: x.project_slug),
        Column("Jobs", lambda x: fmt.count(x.jobs), numeric=True),
        Column("Time", lambda x: fmt.seconds(x.seconds), numeric=True),
    ),
    lambda t: t.time_lost,
    terminal_rows=SHOWN,
)

TABLES = (FLAKY, MOST_FAILED, SLOWEST_TESTS, TIME_LOST)


def print_test_tables(tests: TestsReport, console: Console) -> None:
    print_specs(console, TABLES, tests)
    if tests.jobs_not_read:
        console.print(not_read_note(tests.jobs_not_read))


def not_read_note(jobs: int) -> str:
    return (
        f"Test results of {fmt.count(jobs)} job(s) not read: their job name stored none lately "
        "(`circleci-ds collect --tests all` reads them)."
    )


def html_section(tests: TestsReport, specs: list[dict[str, Any]]) -> str:
    """The page's Tests section; chart specs are appended to `specs`."""
    cards = chart_cards(section_charts(tests), "tests", specs)
    tables = "".join(spec_table(spec, tests) for spec in TABLES)
    return f'<section class="project" id="tests"><h2>Tests</h2>{cards}{tables}</section>'


# -- charts -------------------------------------------------------------------------------------------


def _label(job: str, classname: str, name: str) -> str:
    return plot_text(safe_text(f"{job} · {_test_name(classname, name)}"[:80]))


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
    data = [hbar(name, labels, values, PALETTE[i % len(PALETTE)]) for i, (name, values) in enumerate(series)]
    layout = base_layout(x_title, "", barmode="group", height=max(240, 80 + 34 * len(labels) * len(series)))
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
            "name": plot_text(safe_text(f"{slug} · {job}"[:60])),
            "x": [p.day for p in by_job[slug, job]],
            "y": [p.tests_max for p in by_job[slug, job]],
        }
        for slug, job in biggest
    ]
    layout = base_layout("Day", "Tests per job")
    return Chart(
        "counts",
        "Tests per job over time",
        "Most tests in one run of the job, per day.",
        {"data": data, "layout": layout},
    )
