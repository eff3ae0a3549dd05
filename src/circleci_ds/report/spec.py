"""One spec per table, used by both renderers (terminal and HTML): title, note, columns, rows.

Rules:
- A spec's rows come from one source object (the metrics report, the tests report, the people
  report); the sections keep their own specs (testsection.py, people_section.py), this module the
  metrics tables and the shape of every cell.
- A cell's text is decided here, once, for both renderers (`Column.text`): a dash for a missing
  value, cut at the column's `limit`, control characters replaced (`display.safe_text`). Each
  renderer then makes it safe its own way: rich `Text`, never markup; HTML escaping.
- A link column is shown only in the page, and only an `https://` URL becomes a link.
- The project column is dropped inside a project's own HTML section.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from circleci_ds.metrics.ci import CriticalPath, JobMetrics, MetricsReport
from circleci_ds.report import formatting as fmt
from circleci_ds.text import safe_text

SLOWEST = 10
S = TypeVar("S")  # the object a table's rows come from


@dataclass(frozen=True)
class Column:
    header: str
    cell: Callable[[Any], str | None]  # the shown value (None: a dash), or for a link column the URL
    numeric: bool = False
    code: bool = False  # monospace in HTML (commits)
    is_project: bool = False
    limit: int | None = None  # longer text is cut, ending in "…"
    link: str | None = None  # the page only: the cell is a URL, shown as a link with this text

    def text(self, item: Any) -> str:
        """The cell as shown: a dash when missing, cut at `limit`, control characters replaced."""
        value = self.cell(item)
        text = fmt.DASH if value is None else value
        if self.limit is not None and len(text) > self.limit:
            text = text[: self.limit - 1] + "…"
        return safe_text(text)

    def url(self, item: Any) -> str | None:
        """A link column's URL, when it is an https one; anything else is not linked."""
        value = self.cell(item)
        return value if value is not None and value.startswith("https://") else None


@dataclass(frozen=True)
class TableSpec(Generic[S]):
    key: str  # unique within the page (the card's data-table)
    title: str
    note: str
    columns: tuple[Column, ...]
    rows: Callable[[S], list[Any]]
    empty: str = "None."
    terminal_rows: int | None = None  # the terminal shows at most this many rows; the page all

    def cells(self, item: Any, *, with_project: bool = True) -> list[str]:
        return [c.text(item) for c in self.visible(with_project)]

    def visible(self, with_project: bool) -> tuple[Column, ...]:
        return tuple(c for c in self.columns if with_project or not c.is_project)

    def text_columns(self) -> tuple[Column, ...]:
        """The columns a terminal shows: all but links."""
        return tuple(c for c in self.columns if c.link is None)


def project_column(get: Callable[[Any], str]) -> Column:
    return Column("Project", get, is_project=True)


def slowest_jobs(jobs: list[JobMetrics], limit: int = SLOWEST) -> list[JobMetrics]:
    """Jobs by p95 duration of their successful runs, slowest first."""
    timed = [j for j in jobs if j.duration_p95 is not None]
    return sorted(timed, key=lambda j: (-(j.duration_p95 or 0.0), j.project_slug, j.workflow, j.job))[:limit]


def _slowest_per_project(report: MetricsReport) -> list[JobMetrics]:
    slugs = [p.project_slug for p in report.projects]
    return [j for slug in slugs for j in slowest_jobs([j for j in report.jobs if j.project_slug == slug])]


def _path(path: CriticalPath) -> str:
    return " → ".join(f"{step.job} ({fmt.seconds(step.duration)})" for step in path.jobs) or fmt.DASH


ORGANISATION: TableSpec[MetricsReport] = TableSpec(
    "organisation",
    "Projects (sorted by health)",
    "Every project side by side; lowest success rate first.",
    (
        project_column(lambda p: p.project_slug),
        Column("Branch", lambda p: fmt.branch(p.branch)),
        Column("Pipelines", lambda p: fmt.count(p.pipelines), numeric=True),
        Column("Runs", lambda p: fmt.count(p.runs), numeric=True),
        Column("Success", lambda p: fmt.percent(p.success_rate), numeric=True),
        Column("First pass", lambda p: fmt.percent(p.first_pass_success_rate), numeric=True),
        Column("Throughput", lambda p: fmt.rate(p.throughput), numeric=True),
        Column("Duration p50", lambda p: fmt.seconds(p.duration_median), numeric=True),
        Column("MTTR", lambda p: fmt.seconds(p.mttr_mean), numeric=True),
        Column("Time to green", lambda p: fmt.seconds(p.time_to_green_median), numeric=True),
        Column("Time lost (failed)", lambda p: fmt.seconds(p.time_lost_failed), numeric=True),
        Column("Queue p50", lambda p: fmt.seconds(p.queue_time_median), numeric=True),
        Column("Flaky jobs", lambda p: fmt.count(p.flaky_jobs), numeric=True),
        Column("No branch", lambda p: fmt.count(p.runs_without_branch), numeric=True),
    ),
    lambda r: r.projects,
)

WORKFLOWS: TableSpec[MetricsReport] = TableSpec(
    "workflows",
    "Workflows",
    "Durations over completed runs, wall clock; approval waits apart.",
    (
        project_column(lambda w: w.project_slug),
        Column("Workflow", lambda w: w.workflow),
        Column("Runs", lambda w: fmt.count(w.runs), numeric=True),
        Column("Success", lambda w: fmt.percent(w.success_rate), numeric=True),
        Column("First pass", lambda w: fmt.percent(w.first_pass_success_rate), numeric=True),
        Column("Throughput", lambda w: fmt.rate(w.throughput), numeric=True),
        Column("p50", lambda w: fmt.seconds(w.duration.median), numeric=True),
        Column("p95", lambda w: fmt.seconds(w.duration.p95), numeric=True),
        Column("Max", lambda w: fmt.seconds(w.duration.max), numeric=True),
        Column("MTTR", lambda w: fmt.seconds(w.mttr_mean), numeric=True),
        Column("MTTR p50", lambda w: fmt.seconds(w.mttr_median), numeric=True),
        Column("Rerun rate", lambda w: fmt.percent(w.rerun_rate), numeric=True),
        Column("Approval wait p50", lambda w: fmt.seconds(w.approval_wait_median), numeric=True),
        Column("Queue total", lambda w: fmt.seconds(w.queue_time_total), numeric=True),
        Column("Queue p50", lambda w: fmt.seconds(w.queue_time_median), numeric=True),
    ),
    lambda r: r.workflows,
)

SLOWEST_JOBS: TableSpec[MetricsReport] = TableSpec(
    "slowest",
    "Slowest jobs",
    "By p95 duration of successful runs; job runs are executions only.",
    (
        project_column(lambda j: j.project_slug),
        Column("Workflow", lambda j: j.workflow),
        Column("Job", lambda j: j.job),
        Column("Runs", lambda j: fmt.count(j.runs), numeric=True),
        Column("p50", lambda j: fmt.seconds(j.duration_p50), numeric=True),
        Column("p95", lambda j: fmt.seconds(j.duration_p95), numeric=True),
        Column("Failure rate", lambda j: fmt.percent(j.failure_rate), numeric=True),
        Column("Queue p95", lambda j: fmt.seconds(j.queue_time_p95), numeric=True),
    ),
    _slowest_per_project,
)

FLAKY_JOBS: TableSpec[MetricsReport] = TableSpec(
    "flaky",
    "Flaky jobs",
    "Failed and passed on the same commit (any branch).",
    (
        project_column(lambda f: f.project_slug),
        Column("Workflow", lambda f: f.workflow),
        Column("Job", lambda f: f.job),
        Column("Commits", lambda f: fmt.count(f.flaky_commits), numeric=True),
        Column("Times flaked", lambda f: fmt.count(f.times_flaked), numeric=True),
        Column("Last flaked", lambda f: fmt.text(f.last_flaked), numeric=True),
        Column("Latest commits", lambda f: " ".join(fmt.short_sha(c) for c in f.commits), code=True),
    ),
    lambda r: r.flaky_jobs,
)

DELIVERY: TableSpec[MetricsReport] = TableSpec(
    "delivery",
    "Delivery",
    "Deploy runs recognised by the deploy pattern.",
    (
        project_column(lambda d: d.project_slug),
        Column("Deploy workflows", lambda d: ", ".join(d.deploy_workflows)),
        Column("Deploy runs", lambda d: fmt.count(d.deploy_runs), numeric=True),
        Column("Deployments", lambda d: fmt.count(d.deployments), numeric=True),
        Column("Frequency", lambda d: fmt.rate(d.deployment_frequency), numeric=True),
        Column("Change failure rate", lambda d: fmt.percent(d.change_failure_rate), numeric=True),
        Column("Time to restore", lambda d: fmt.seconds(d.time_to_restore_mean), numeric=True),
        Column("Lead time p50", lambda d: fmt.seconds(d.lead_time_median), numeric=True),
    ),
    lambda r: r.delivery,
)

CRITICAL_PATHS: TableSpec[MetricsReport] = TableSpec(
    "critical",
    "Critical paths",
    "The job chain that set the duration of each workflow's latest successful run.",
    (
        project_column(lambda c: c.project_slug),
        Column("Workflow", lambda c: c.workflow),
        Column("Duration", lambda c: fmt.seconds(c.duration), numeric=True),
        Column("Path", _path),
    ),
    lambda r: r.critical_paths,
)

RERUNS: TableSpec[MetricsReport] = TableSpec(
    "reruns",
    "Rerun causes",
    "Reruns by kind, with the jobs that had failed in the runs they repeat.",
    (
        project_column(lambda c: c.project_slug),
        Column("Workflow", lambda c: c.workflow),
        Column("Kind", lambda c: c.kind),
        Column("Reruns", lambda c: fmt.count(c.reruns), numeric=True),
        Column("Failed jobs before", lambda c: ", ".join(c.top_failed_jobs) or fmt.DASH),
    ),
    lambda r: r.rerun_causes,
)

RECENT_FAILURES: TableSpec[MetricsReport] = TableSpec(
    "failures",
    "Recent failures",
    "Latest failed or errored workflow runs.",
    (
        project_column(lambda f: f.project_slug),
        Column("When", lambda f: fmt.text(f.created_at)),
        Column("Pipeline", lambda f: fmt.count(f.pipeline_number)),
        Column("Workflow", lambda f: f.workflow),
        Column("Status", lambda f: f.status),
        Column("Branch", lambda f: fmt.text(f.branch)),
        Column("Commit", lambda f: fmt.short_sha(f.commit), code=True),
        Column("Subject", lambda f: fmt.text(f.subject)),
        Column("Author", lambda f: fmt.text(f.author)),
    ),
    lambda r: r.recent_failures,
)

# Terminal order; the HTML page shows ORGANISATION first, then the rest inside each project.
TABLES = (
    ORGANISATION,
    WORKFLOWS,
    SLOWEST_JOBS,
    FLAKY_JOBS,
    DELIVERY,
    CRITICAL_PATHS,
    RERUNS,
    RECENT_FAILURES,
)
PROJECT_TABLES = TABLES[1:]


def rows_of(spec: TableSpec[S], source: S, project: str | None = None) -> list[Any]:
    """The spec's rows from `source`; with `project`, only that project's (rows with a project_slug)."""
    rows = spec.rows(source)
    return rows if project is None else [r for r in rows if r.project_slug == project]
