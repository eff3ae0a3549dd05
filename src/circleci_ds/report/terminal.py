"""Rich tables for the terminal.

Names from the API go through `display.plain` into `Text` objects, never into markup strings, so a
job called `[red]x` prints as written and control characters in it are replaced.
"""

from __future__ import annotations

from rich import box
from rich.console import Console
from rich.table import Table

from circleci_ds.display import plain
from circleci_ds.metrics import ALL_BRANCHES, JobMetrics, MetricsReport
from circleci_ds.report import formatting as fmt

SLOWEST = 10


def print_tables(report: MetricsReport, console: Console) -> None:
    """Overview, workflow metrics, slowest jobs and flaky jobs."""
    console.print(plain(window_line(report), style="dim"))
    if not report.projects:
        console.print("No workflow runs in this window.")
        return
    for table in (overview_table(report), workflow_table(report), slowest_table(report), flaky_table(report)):
        print_table(console, table)


def print_table(console: Console, table: Table) -> None:
    """A terminal wraps cells to fit; a file or pipe gets the table at its natural width."""
    if console.is_terminal:
        console.print(table)
        return
    saved = console.width
    console.width = natural_width(console, table)  # print() never goes past the console's width
    try:
        console.print(table)
    finally:
        console.width = saved


def natural_width(console: Console, table: Table) -> int:
    """The width the table takes when nothing has to wrap."""
    unbounded = console.options.update_width(10_000)
    return max(console.width, console.measure(table, options=unbounded).maximum)


def window_line(report: MetricsReport) -> str:
    since = report.since or "the first run"
    until = report.until or "the last run"
    if report.branch is None:
        branch = "each project's default branch"
    else:
        branch = fmt.branch(None if report.branch == ALL_BRANCHES else report.branch)
    return f"From {since} to {until}, on {branch}."


def _table(title: str, *columns: str, numeric_from: int = 1) -> Table:
    table = Table(
        title=title,
        title_justify="left",
        title_style="bold",
        header_style="bold cyan",
        box=box.SIMPLE_HEAD,
        pad_edge=False,
    )
    for index, name in enumerate(columns):
        table.add_column(name, justify="right" if index >= numeric_from else "left", overflow="fold")
    return table


def overview_table(report: MetricsReport) -> Table:
    table = _table(
        "Projects",
        "Project",
        "Branch",
        "Pipelines",
        "Runs",
        "Success",
        "Runs/day",
        "p50",
        "MTTR",
        "Queue p50",
        "Flaky jobs",
        numeric_from=2,
    )
    for p in report.projects:
        table.add_row(
            plain(p.project_slug),
            plain(fmt.branch(p.branch)),
            fmt.count(p.pipelines),
            fmt.count(p.runs),
            fmt.percent(p.success_rate),
            fmt.number(p.throughput),
            fmt.seconds(p.duration_median),
            fmt.seconds(p.mttr_mean),
            fmt.seconds(p.queue_time_median),
            fmt.count(p.flaky_jobs),
        )
    return table


def workflow_table(report: MetricsReport) -> Table:
    table = _table(
        "Workflows (durations of successful runs)",
        "Project",
        "Workflow",
        "Runs",
        "Success",
        "Runs/day",
        "p50",
        "p95",
        "Max",
        "MTTR",
        "MTTR p50",
        "Reruns",
        "Queue",
        "Queue p50",
        numeric_from=2,
    )
    for w in report.workflows:
        table.add_row(
            plain(w.project_slug),
            plain(w.workflow),
            fmt.count(w.runs),
            fmt.percent(w.success_rate),
            fmt.number(w.throughput),
            fmt.seconds(w.duration.median),
            fmt.seconds(w.duration.p95),
            fmt.seconds(w.duration.max),
            fmt.seconds(w.mttr_mean),
            fmt.seconds(w.mttr_median),
            fmt.percent(w.rerun_rate),
            fmt.seconds(w.queue_time_total),
            fmt.seconds(w.queue_time_median),
        )
    return table


def slowest_jobs(jobs: list[JobMetrics], limit: int = SLOWEST) -> list[JobMetrics]:
    """Jobs by p95 duration of their successful runs, slowest first."""
    timed = [j for j in jobs if j.duration_p95 is not None]
    return sorted(timed, key=lambda j: (-(j.duration_p95 or 0.0), j.project_slug, j.workflow, j.job))[:limit]


def slowest_table(report: MetricsReport) -> Table:
    table = _table(
        "Slowest jobs (p95 of successful runs)",
        "Project",
        "Workflow",
        "Job",
        "Runs",
        "p50",
        "p95",
        "Failures",
        "Queue p95",
        numeric_from=3,
    )
    for j in slowest_jobs(report.jobs):
        table.add_row(
            plain(j.project_slug),
            plain(j.workflow),
            plain(j.job),
            fmt.count(j.runs),
            fmt.seconds(j.duration_p50),
            fmt.seconds(j.duration_p95),
            fmt.percent(j.failure_rate),
            fmt.seconds(j.queue_time_p95),
        )
    return table


def flaky_table(report: MetricsReport) -> Table:
    table = _table(
        "Flaky jobs (failed and passed on the same commit)",
        "Project",
        "Workflow",
        "Job",
        "Commits",
        "Times flaked",
        "Last flaked",
        numeric_from=3,
    )
    for f in report.flaky_jobs:
        table.add_row(
            plain(f.project_slug),
            plain(f.workflow),
            plain(f.job),
            fmt.count(f.flaky_commits),
            fmt.count(f.times_flaked),
            plain(fmt.text(f.last_flaked)),
        )
    if not report.flaky_jobs:
        table.caption = "None found."
    return table
