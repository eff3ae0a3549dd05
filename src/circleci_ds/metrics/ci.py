"""CI metrics computed where the data is: SQL over the facts tables (workflow_runs, job_runs).

The definitions are those of `circleci_ds.metrics.definitions` (one text per metric, shown in --help, JSON
and HTML). Here they become queries: aggregates and window functions that SQLite and PostgreSQL
both run, and ordered streams for the sequence metrics (MTTR, time to green). Memory does not grow
with the history; work grows with the window. Rows cross from the store as typed values.
"""

from __future__ import annotations

import json
import math
import re
import time
from collections import defaultdict
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field, replace
from itertools import groupby, pairwise
from typing import Any

from sqlalchemy import Connection, and_, case, func, literal, or_, select
from sqlalchemy.sql import ColumnElement, Select

from circleci_ds.derive.facts import JOB_FAILED, WORKFLOW_FAILED, JobFact, critical_path, default_branches
from circleci_ds.metrics import definitions
from circleci_ds.metrics.sqlstats import count_if, floor_int, moments, percentile, percentiles, stream, sum_if
from circleci_ds.metrics.window import ALL_BRANCHES, Window
from circleci_ds.store import Store
from circleci_ds.store import schema as s
from circleci_ds.store.facts_store import project_infos
from circleci_ds.times import DAY, WEEK, day_start, iso, week_start

COMPLETED = ("success", "failed", "error", "canceled")
# Upper bounds (seconds) of the queue-time histogram's bins; the last bin is open.
QUEUE_BINS = (1, 5, 10, 30, 60, 120, 300, 600, 1800)
RECENT_FAILURES = 10
NO_BRANCH = "(no branch)"

W = s.workflow_runs
J = s.job_runs


# -- results -------------------------------------------------------------------------------------


@dataclass
class DurationStats:
    """Seconds; None when there is no value to summarise."""

    count: int = 0
    min: float | None = None
    mean: float | None = None
    median: float | None = None
    p95: float | None = None
    max: float | None = None
    stddev: float | None = None


@dataclass
class WorkflowMetrics:
    project: str
    project_slug: str
    workflow: str
    branch: str | None  # None: all branches
    window_start: str | None
    window_end: str | None
    days: float
    runs: int
    successful_runs: int
    failed_runs: int
    canceled_runs: int
    success_rate: float | None
    throughput: float
    duration: DurationStats
    active_duration_median: float | None
    recoveries: int
    mttr_mean: float | None
    mttr_median: float | None
    reruns: int
    rerun_rate: float | None
    first_pass_success_rate: float | None
    time_lost_failed: float | None
    time_lost_reruns: float | None
    approval_wait_total: float | None
    approval_wait_median: float | None
    queue_time_total: float | None  # None: no job with a known queue time
    queue_time_median: float | None


@dataclass
class JobMetrics:
    project_slug: str
    workflow: str
    job: str
    runs: int
    successful_runs: int
    failed_runs: int
    failure_rate: float | None
    duration_p50: float | None
    duration_p95: float | None
    queue_time_p50: float | None
    queue_time_p95: float | None


@dataclass
class FlakyJob:
    project_slug: str
    workflow: str
    job: str
    flaky_commits: int  # commits on which the job both failed and succeeded
    times_flaked: int  # failed runs on those commits
    last_flaked: str | None  # created_at of the latest such workflow run
    commits: list[str] = field(default_factory=list)  # a few of those commits, latest first


@dataclass
class TrendPoint:
    project_slug: str
    workflow: str
    period: str  # first day of the day/week bucket, YYYY-MM-DD
    runs: int
    success_rate: float | None
    duration_median: float | None
    active_duration_median: float | None


@dataclass
class FailedRun:
    project_slug: str
    workflow: str
    status: str
    branch: str | None
    commit: str | None
    subject: str | None
    author: str | None
    pipeline_number: int | None
    created_at: str | None


@dataclass
class ProjectMetrics:
    project: str
    project_slug: str
    default_branch: str | None
    branch: str | None  # the branch measured; None: all branches
    pipelines: int
    runs: int
    failed_runs: int
    canceled_runs: int
    runs_without_branch: int
    success_rate: float | None
    first_pass_success_rate: float | None
    throughput: float
    duration_median: float | None
    mttr_mean: float | None
    mttr_median: float | None
    time_to_green_mean: float | None
    time_to_green_median: float | None
    time_lost_failed: float | None
    time_lost_reruns: float | None
    reruns: int
    job_runs: int
    queue_time_median: float | None
    flaky_jobs: int
    queue_histogram: dict[str, int]


@dataclass
class Delivery:
    project_slug: str
    deploy_workflows: list[str]
    deploy_runs: int
    deployments: int
    failed_deploys: int
    deployment_frequency: float  # per day
    change_failure_rate: float | None
    restores: int
    time_to_restore_mean: float | None
    lead_time_median: float | None


@dataclass
class PathStep:
    job: str
    duration: float | None
    started_at: str | None
    stopped_at: str | None


@dataclass
class CriticalPath:
    project_slug: str
    workflow: str
    workflow_id: str
    duration: float | None
    jobs: list[PathStep]


@dataclass
class RerunCause:
    project_slug: str
    workflow: str
    kind: str  # auto | from_failed | whole
    reruns: int
    top_failed_jobs: list[str]  # jobs that had failed in the runs being repeated, most often first


@dataclass
class MetricsReport:
    generated_at: str
    since: str | None
    until: str | None
    window: str  # the window line shown atop every output
    branch: str | None  # as asked; None: each project's default branch
    bucket: str
    deploy_pattern: str
    definitions: dict[str, str]
    warnings: list[str]
    projects: list[ProjectMetrics]  # the organisation view: sorted by health
    workflows: list[WorkflowMetrics]
    jobs: list[JobMetrics]
    flaky_jobs: list[FlakyJob]
    trends: list[TrendPoint]
    recent_failures: list[FailedRun]
    delivery: list[Delivery]
    critical_paths: list[CriticalPath]
    rerun_causes: list[RerunCause]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent, ensure_ascii=False)


# -- the window and the scope ------------------------------------------------------------------


@dataclass(frozen=True)
class Scope:
    """What the report measures: one window (both bounds set), its endpoints and their default branches."""

    window: Window
    endpoints: dict[str, str]  # slug -> native project
    defaults: dict[str, str | None]  # slug -> default branch
    bucket: str
    deploy: re.Pattern[str]

    @property
    def since(self) -> float:
        return self.window.since if self.window.since is not None else -math.inf

    @property
    def until(self) -> float:
        return self.window.until if self.window.until is not None else math.inf

    @property
    def branch(self) -> str | None:
        return self.window.branch

    @property
    def days(self) -> float:
        return max(self.until - self.since, 1.0) / DAY

    def measured_branch(self, endpoint: str) -> str | None:
        return self.window.measured_branch(self.defaults.get(endpoint))

    def where(
        self, table: Any, created: ColumnElement[Any], *, any_branch: bool = False
    ) -> ColumnElement[bool]:
        """Rows of these endpoints, created in the window, on the measured branch."""
        conditions = [table.c.endpoint.in_(list(self.endpoints)), created >= self.since, created < self.until]
        if not any_branch:
            branch = self._branch_condition(table)
            if branch is not None:
                conditions.append(branch)
        return and_(*conditions)

    def _branch_condition(self, table: Any) -> ColumnElement[bool] | None:
        if self.branch == ALL_BRANCHES:
            return None
        if self.branch is not None:
            return table.c.branch == self.branch
        # is_default_branch is kept in step with the project's default branch by the store
        unknown = [e for e in self.endpoints if self.defaults.get(e) is None]
        on_default = table.c.is_default_branch.is_(True)
        return or_(on_default, table.c.endpoint.in_(unknown)) if unknown else on_default


def endpoints_of(conn: Connection, project: str | None) -> dict[str, str]:
    """Slug -> native project of the stored endpoints of one native project, or of all."""
    rows = conn.execute(select(s.endpoints.c.slug, s.endpoints.c.native))
    return {slug: native for slug, native in rows if project is None or native == project}


def resolve_window(conn: Connection, endpoints: Iterable[str], window: Window, now: float) -> Window:
    """The window with both bounds set, by the defaults of the window definition."""
    since, until = _bounds(conn, endpoints, window, now)
    return replace(window, since=since, until=until)


def _bounds(conn: Connection, endpoints: Iterable[str], window: Window, now: float) -> tuple[float, float]:
    until = window.until
    if until is None:
        newest = conn.execute(
            select(func.max(W.c.created)).where(W.c.endpoint.in_(list(endpoints)), W.c.created <= now + DAY)
        ).scalar()
        until = day_start(newest if newest is not None else now) + DAY
    since = window.since if window.since is not None else until - definitions.WINDOW_DAYS * DAY
    return since, until


def report_window(store: Store, window: Window, now: float | None = None) -> Window:
    """The window a report over the store measures (see resolve_window)."""
    with store.snapshot() as conn:
        return resolve_window(conn, endpoints_of(conn, window.project), window, _now(now))


def choose_bucket(bucket: str, since: float, until: float) -> str:
    """ "day" or "week"; "auto" gives weeks past 45 days, when daily points get too noisy to read."""
    if bucket in ("day", "week"):
        return bucket
    return "week" if until - since > 45 * DAY else "day"


def window_line(window: Window) -> str:
    """The line atop every output; ISO text of the bounds, as everywhere in outputs."""
    return (
        f"Window: workflow runs created from {iso(window.since)} to {iso(window.until)} (until excluded), "
        f"on {window.describe_branch()}."
    )


def _now(now: float | None) -> float:
    return time.time() if now is None else now


# -- the report ------------------------------------------------------------------------------------


def compute_report(
    store: Store,
    *,
    project: str | None = None,
    since: float | None = None,
    until: float | None = None,
    branch: str | None = None,
    bucket: str = "auto",
    deploy_pattern: str | None = None,
    now: float | None = None,
) -> MetricsReport:
    """Every metric over one window (of one native project, or all); see circleci_ds.metrics.definitions."""
    window = Window(since, until, branch, project)
    return metrics_over(store, window, bucket=bucket, deploy_pattern=deploy_pattern, now=now)


def metrics_over(
    store: Store,
    window: Window,
    *,
    bucket: str = "auto",
    deploy_pattern: str | None = None,
    now: float | None = None,
) -> MetricsReport:
    """Every metric over the window; its open bounds take the defaults (see resolve_window)."""
    now = _now(now)
    pattern = deploy_pattern or definitions.DEFAULT_DEPLOY_PATTERN
    with store.snapshot() as conn:
        endpoints = endpoints_of(conn, window.project)
        since, until = _bounds(conn, endpoints, window, now)
        scope = Scope(
            window=replace(window, since=since, until=until),
            endpoints=endpoints,
            defaults=default_branches(project_infos(conn)),
            bucket=choose_bucket(bucket, since, until),
            deploy=re.compile(pattern, re.IGNORECASE),
        )
        return _report(conn, scope, pattern, now)


def _report(conn: Connection, scope: Scope, pattern: str, now: float) -> MetricsReport:
    flaky = flaky_jobs(conn, scope)
    groups = job_groups(conn, scope)
    workflows = workflow_metrics(conn, scope, groups)
    return MetricsReport(
        generated_at=iso(now, ms=False) or "",
        since=iso(scope.since),
        until=iso(scope.until),
        window=window_line(scope.window),
        branch=scope.branch,
        bucket=scope.bucket,
        deploy_pattern=pattern,
        definitions=definitions.as_dict(),
        warnings=warnings(conn, scope),
        projects=project_metrics(conn, scope, flaky, groups),
        workflows=workflows,
        jobs=job_metrics(conn, scope, groups),
        flaky_jobs=flaky,
        trends=trends(conn, scope),
        recent_failures=recent_failures(conn, scope),
        delivery=delivery(conn, scope),
        critical_paths=critical_paths(conn, scope),
        rerun_causes=rerun_causes(conn, scope),
    )


def warnings(conn: Connection, scope: Scope) -> list[str]:
    """What the reader must know: unreadable timestamps, runs outside default-branch metrics."""
    found = []
    p = s.pipeline_runs.c
    bad = conn.execute(
        select(func.coalesce(func.sum(p.bad_times), 0)).where(p.endpoint.in_(list(scope.endpoints)))
    ).scalar_one()
    if bad:
        found.append(f"{bad} stored timestamp(s) could not be read; they are null in derived data")
    if scope.branch is None:
        unbranched = conn.execute(
            select(func.count()).where(scope.where(W, W.c.created, any_branch=True), W.c.branch.is_(None))
        ).scalar_one()
        if unbranched:
            found.append(
                f"{unbranched} run(s) in the window have no branch and are outside default-branch "
                "metrics (--branch '*' includes them)"
            )
    return found


# -- workflow and project aggregates ---------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class JobTotals:
    """One job's aggregates (project, workflow, job) over its executed runs in a scope, however they were
    computed (SQL here; columnar engines in bench/engines.py): `job_row` applies the report's formulas."""

    endpoint: str
    workflow: str
    job: str
    runs: int
    ok: int
    failed: int
    queue_total: float | None
    duration_p50: float | None
    duration_p95: float | None
    queue_p50: float | None
    queue_p95: float | None


@dataclass(frozen=True, slots=True)
class WorkflowTotals:
    """One workflow's aggregates (project, workflow name) over its runs in a scope, however they were
    computed: `workflow_row` applies the report's formulas."""

    endpoint: str
    name: str
    runs: int
    ok: int
    failed: int
    canceled: int
    reruns: int
    executions: int
    rerun_executions: int
    first_ok: int
    first_runs: int
    lost_failed: float | None
    lost_reruns: float | None
    wait_total: float | None
    timed: int
    d_min: float | None
    d_mean: float | None
    d_max: float | None
    d_stddev: float | None
    d_p50: float | None
    d_p95: float | None
    active_p50: float | None
    wait_p50: float | None
    queue_p50: float | None
    recoveries: int
    mttr_mean: float | None
    mttr_median: float | None


def job_row(t: JobTotals) -> JobMetrics:
    """The report's row of one job."""
    return JobMetrics(
        project_slug=t.endpoint,
        workflow=t.workflow,
        job=t.job,
        runs=t.runs,
        successful_runs=t.ok,
        failed_runs=t.failed,
        failure_rate=_ratio(t.failed, t.ok + t.failed),
        duration_p50=t.duration_p50,
        duration_p95=t.duration_p95,
        queue_time_p50=t.queue_p50,
        queue_time_p95=t.queue_p95,
    )


def workflow_row(scope: Scope, t: WorkflowTotals, queue_total: float | None) -> WorkflowMetrics:
    """The report's row of one workflow; `queue_total` is the sum of its jobs' queue times."""
    return WorkflowMetrics(
        project=scope.endpoints.get(t.endpoint, ""),
        project_slug=t.endpoint,
        workflow=t.name,
        branch=scope.measured_branch(t.endpoint),
        window_start=iso(scope.since),
        window_end=iso(scope.until),
        days=round(scope.days, 4),
        runs=t.runs,
        successful_runs=t.ok,
        failed_runs=t.failed,
        canceled_runs=t.canceled,
        success_rate=_ratio(t.ok, t.runs - t.canceled),
        throughput=t.runs / scope.days,
        duration=DurationStats(t.timed, t.d_min, t.d_mean, t.d_p50, t.d_p95, t.d_max, t.d_stddev),
        active_duration_median=t.active_p50,
        recoveries=t.recoveries,
        mttr_mean=t.mttr_mean,
        mttr_median=t.mttr_median,
        reruns=t.reruns,
        rerun_rate=_ratio(t.rerun_executions, t.executions),
        first_pass_success_rate=_ratio(t.first_ok, t.first_runs),
        time_lost_failed=t.lost_failed,
        time_lost_reruns=t.lost_reruns,
        approval_wait_total=t.wait_total,
        approval_wait_median=t.wait_p50,
        queue_time_total=queue_total,
        queue_time_median=t.queue_p50,
    )


def queue_totals(jobs: Iterable[JobGroup | JobTotals]) -> dict[tuple[str, str], float]:
    """The queue time of each workflow (project, workflow name): the sum over its jobs."""
    return _summed(((j.endpoint, j.workflow), j.queue_total) for j in jobs)


def _run_columns() -> list[Any]:
    """Aggregates over workflow runs, the same for a workflow and for a whole project."""
    status, duration = W.c.status, W.c.duration
    failed = status.in_(WORKFLOW_FAILED)
    timed = and_(status.in_(COMPLETED), duration.is_not(None))
    execution = W.c.pipeline_id.concat(literal(":")).concat(W.c.name)
    return [
        func.count().label("runs"),
        count_if(status == "success").label("ok"),
        count_if(failed).label("failed"),
        count_if(status == "canceled").label("canceled"),
        count_if(W.c.branch.is_(None)).label("no_branch"),
        func.count(func.distinct(W.c.pipeline_id)).label("pipelines"),
        count_if(W.c.rerun_index > 0).label("reruns"),
        func.count(func.distinct(execution)).label("executions"),
        func.count(func.distinct(case((W.c.rerun_index > 0, execution)))).label("rerun_executions"),
        count_if(and_(W.c.rerun_index == 0, status == "success")).label("first_ok"),
        count_if(and_(W.c.rerun_index == 0, status != "canceled")).label("first_runs"),
        sum_if(failed, duration).label("lost_failed"),
        sum_if(W.c.rerun_index > 0, duration).label("lost_reruns"),
        func.sum(W.c.approval_wait).label("wait_total"),
        count_if(timed).label("timed"),
        sum_if(timed, duration).label("d_sum"),
        sum_if(timed, duration * duration).label("d_squares"),
        func.min(case((timed, duration))).label("d_min"),
        func.max(case((timed, duration))).label("d_max"),
    ]


def _ratio(part: int, whole: int) -> float | None:
    return part / whole if whole else None


def _timed_runs(scope: Scope, *groups: Any) -> Select[Any]:
    """Completed runs with a duration, for the duration percentiles."""
    return select(*groups, W.c.duration, W.c.active_duration).where(
        scope.where(W, W.c.created), W.c.status.in_(COMPLETED), W.c.duration.is_not(None)
    )


def workflow_metrics(conn: Connection, scope: Scope, groups: list[JobGroup]) -> list[WorkflowMetrics]:
    """One entry per project and workflow name, sorted by project then workflow."""
    keys = (W.c.endpoint, W.c.name)
    rows = conn.execute(select(*keys, *_run_columns()).where(scope.where(W, W.c.created)).group_by(*keys))
    timed = _timed_runs(scope, *keys)
    durations = percentiles(conn, timed, ("endpoint", "name"), "duration", (0.5, 0.95))
    active = percentiles(conn, timed, ("endpoint", "name"), "active_duration", (0.5,))
    waits = percentiles(
        conn, select(*keys, W.c.approval_wait).where(scope.where(W, W.c.created)), ("endpoint", "name"),
        "approval_wait", (0.5,),
    )  # fmt: skip
    queue_rows = select(J.c.endpoint, J.c.workflow_name.label("name"), J.c.queue_time).where(
        scope.where(J, J.c.workflow_created), J.c.executed.is_(True)
    )
    queue = percentiles(conn, queue_rows, ("endpoint", "name"), "queue_time", (0.5,))
    summed = queue_totals(groups)
    recoveries = _grouped(mttr_recoveries(conn, scope))
    out = []
    for r in rows:
        key = (r.endpoint, r.name)
        d = durations.get(key, {})
        mean, stddev = moments(r.timed, r.d_sum, r.d_squares)
        recovered = recoveries.get(key, [])
        totals = WorkflowTotals(
            r.endpoint, r.name, r.runs, r.ok, r.failed, r.canceled, r.reruns, r.executions,
            r.rerun_executions, r.first_ok, r.first_runs, r.lost_failed, r.lost_reruns, r.wait_total,
            r.timed, r.d_min, mean, r.d_max, stddev, d.get(0.5), d.get(0.95),
            active.get(key, {}).get(0.5), waits.get(key, {}).get(0.5), queue.get(key, {}).get(0.5),
            len(recovered), _mean(recovered), percentile(sorted(recovered), 0.5),
        )  # fmt: skip
        out.append(workflow_row(scope, totals, summed.get(key)))
    return sorted(out, key=lambda w: (w.project_slug, w.workflow))


def _queued_jobs(scope: Scope) -> Select[Any]:
    return select(J.c.endpoint, J.c.workflow_name.label("name"), J.c.queue_time).where(
        _ran(scope), J.c.queue_time.is_not(None)
    )


def _summed(items: Iterable[tuple[Any, float | None]]) -> dict[Any, float]:
    """Sums per key of the known values; keys without any are absent."""
    out: dict[Any, float] = {}
    for key, value in items:
        if value is not None:
            out[key] = round(out.get(key, 0.0) + value, 3)
    return out


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


def _grouped(items: Iterable[tuple[Any, float]]) -> dict[Any, list[float]]:
    out: dict[Any, list[float]] = defaultdict(list)
    for key, value in items:
        out[key].append(value)
    return out


# -- sequences: MTTR and time to green ---------------------------------------------------------------


def recoveries(ordered: Iterable[tuple[str, float]]) -> Iterator[float]:
    """Recovery times of (status, stopped) in finish order: from the end of the first failed run after
    a success (or at the start) to the end of the next successful run. Other statuses change nothing."""
    red_since: float | None = None
    for status, stopped in ordered:
        if status in WORKFLOW_FAILED and red_since is None:
            red_since = stopped
        elif status == "success" and red_since is not None:
            yield stopped - red_since
            red_since = None


def _finished(scope: Scope, *keys: Any) -> Select[Any]:
    """Finished successful or failed runs, ordered by the first two keys, then by when they finished."""
    order = keys[:2] if len(keys) > 2 and keys[2] is W.c.name else keys
    return (
        select(*keys, W.c.status, W.c.stopped)
        .where(
            scope.where(W, W.c.created),
            W.c.status.in_(("success", *WORKFLOW_FAILED)),
            W.c.stopped.is_not(None),
        )
        .order_by(*order, W.c.stopped, W.c.id)
    )


def _sequence_recoveries(
    conn: Connection, query: Select[Any], width: int
) -> Iterator[tuple[tuple[Any, ...], float]]:
    rows = stream(conn, query)
    for key, group in groupby(rows, key=lambda r: tuple(r[:width])):
        for seconds in recoveries((r.status, r.stopped) for r in group):
            yield key, seconds


def mttr_recoveries(conn: Connection, scope: Scope) -> Iterator[tuple[tuple[str, str], float]]:
    """((endpoint, workflow), recovery seconds), per workflow and branch, pooled over branches."""
    query = _finished(scope, W.c.endpoint, W.c.name, W.c.branch)
    for key, seconds in _sequence_recoveries(conn, query, 3):
        yield (key[0], key[1]), seconds


def greens(ordered: Iterable[tuple[str, str, float]]) -> Iterator[float]:
    """Times to green of (workflow, status, stopped) of one branch in finish order: from the end of
    the first failed run while all was green to the end of the success that leaves no workflow red."""
    red: set[str] = set()
    red_since: float | None = None
    for workflow, status, stopped in ordered:
        if status in WORKFLOW_FAILED:
            red_since = stopped if not red else red_since
            red.add(workflow)
        elif status == "success" and workflow in red:
            red.discard(workflow)
            if not red and red_since is not None:
                yield stopped - red_since


def time_to_green(conn: Connection, scope: Scope) -> dict[str, list[float]]:
    """Endpoint -> times to green of its branches (all workflows of a branch in one sequence)."""
    query = _finished(scope, W.c.endpoint, W.c.branch, W.c.name)
    out: dict[str, list[float]] = defaultdict(list)
    for (endpoint, _), group in groupby(stream(conn, query), key=lambda r: (r.endpoint, r.branch)):
        out[endpoint] += greens((r.name, r.status, r.stopped) for r in group)
    return out


# -- projects: the organisation view -----------------------------------------------------------------


def project_metrics(
    conn: Connection, scope: Scope, flaky: list[FlakyJob], groups: list[JobGroup]
) -> list[ProjectMetrics]:
    """Totals per CircleCI project (endpoint), sorted by health (see definitions)."""
    rows = conn.execute(
        select(W.c.endpoint, *_run_columns()).where(scope.where(W, W.c.created)).group_by(W.c.endpoint)
    )
    medians = percentiles(conn, _timed_runs(scope, W.c.endpoint), ("endpoint",), "duration", (0.5,))
    queue = percentiles(conn, _queued_jobs(scope), ("endpoint",), "queue_time", (0.5,))
    histograms: dict[str, dict[str, int]] = {}
    job_runs: dict[str, int] = defaultdict(int)
    for g in groups:
        job_runs[g.endpoint] += g.runs
        counts = histograms.setdefault(g.endpoint, empty_histogram())
        for label, count in zip(_bin_labels(), g.bins, strict=True):
            counts[label] += count
    mttr = _grouped((key[0], seconds) for key, seconds in mttr_recoveries(conn, scope))
    green = time_to_green(conn, scope)
    flaky_count: dict[str, int] = defaultdict(int)
    for item in flaky:
        flaky_count[item.project_slug] += 1
    out = []
    for r in rows:
        recovered, greens = sorted(mttr.get(r.endpoint, [])), sorted(green.get(r.endpoint, []))
        out.append(
            ProjectMetrics(
                project=scope.endpoints.get(r.endpoint, ""),
                project_slug=r.endpoint,
                default_branch=scope.defaults.get(r.endpoint),
                branch=scope.measured_branch(r.endpoint),
                pipelines=r.pipelines,
                runs=r.runs,
                failed_runs=r.failed,
                canceled_runs=r.canceled,
                runs_without_branch=r.no_branch,
                success_rate=_ratio(r.ok, r.runs - r.canceled),
                first_pass_success_rate=_ratio(r.first_ok, r.first_runs),
                throughput=r.runs / scope.days,
                duration_median=medians.get((r.endpoint,), {}).get(0.5),
                mttr_mean=_mean(recovered),
                mttr_median=percentile(recovered, 0.5),
                time_to_green_mean=_mean(greens),
                time_to_green_median=percentile(greens, 0.5),
                time_lost_failed=r.lost_failed,
                time_lost_reruns=r.lost_reruns,
                reruns=r.reruns,
                job_runs=job_runs.get(r.endpoint, 0),
                queue_time_median=queue.get((r.endpoint,), {}).get(0.5),
                flaky_jobs=flaky_count[r.endpoint],
                queue_histogram=histograms.get(r.endpoint, empty_histogram()),
            )
        )
    return sorted(out, key=health_key)


def health_key(p: ProjectMetrics) -> tuple[Any, ...]:
    """Lowest success rate first, projects without a completed run last; then the longest MTTR."""
    return (p.success_rate is None, p.success_rate or 0.0, -(p.mttr_mean or 0.0), p.project_slug)


def _bin_labels() -> list[str]:
    def short(seconds: int) -> str:
        return f"{seconds // 60}m" if seconds >= 60 and seconds % 60 == 0 else f"{seconds}s"

    labels = [f"<{short(QUEUE_BINS[0])}"]
    labels += [f"{short(a)}-{short(b)}" for a, b in pairwise(QUEUE_BINS)]
    return [*labels, f">={short(QUEUE_BINS[-1])}"]


def empty_histogram() -> dict[str, int]:
    return dict.fromkeys(_bin_labels(), 0)


# -- jobs --------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class JobGroup:
    """Executed runs of one job (project, workflow name, job name) in the window."""

    endpoint: str
    workflow: str
    job: str
    runs: int
    ok: int
    failed: int
    queue_total: float | None
    bins: tuple[int, ...]  # queue times per QUEUE_BINS bin


def _ran(scope: Scope) -> ColumnElement[bool]:
    return and_(scope.where(J, J.c.workflow_created), J.c.executed.is_(True))


def job_groups(conn: Connection, scope: Scope) -> list[JobGroup]:
    """One pass over the window's job runs: counts, queue totals and queue histogram bins per job."""
    queue = J.c.queue_time
    index = case(*[(queue < bound, i) for i, bound in enumerate(QUEUE_BINS)], else_=len(QUEUE_BINS))
    bins = [count_if(and_(queue.is_not(None), index == i)) for i in range(len(QUEUE_BINS) + 1)]
    keys = (J.c.endpoint, J.c.workflow_name, J.c.name)
    query = (
        select(
            *keys,
            func.count(),
            count_if(J.c.status == "success"),
            count_if(J.c.status.in_(JOB_FAILED)),
            func.sum(queue),
            *bins,
        )
        .where(_ran(scope))
        .group_by(*keys)
    )
    return [JobGroup(r[0], r[1], r[2], r[3], r[4], r[5], r[6], tuple(r[7:])) for r in conn.execute(query)]


def job_metrics(conn: Connection, scope: Scope, groups: list[JobGroup]) -> list[JobMetrics]:
    """One entry per project, workflow name and job name; job runs are executions only."""
    keys = (J.c.endpoint, J.c.workflow_name, J.c.name)
    names = ("endpoint", "workflow_name", "name")
    ran = _ran(scope)
    durations = percentiles(
        conn, select(*keys, J.c.duration).where(ran, J.c.status == "success"), names, "duration", (0.5, 0.95)
    )
    queue = percentiles(conn, select(*keys, J.c.queue_time).where(ran), names, "queue_time", (0.5, 0.95))
    out = []
    for g in groups:
        key = (g.endpoint, g.workflow, g.job)
        d, q = durations.get(key, {}), queue.get(key, {})
        totals = JobTotals(
            g.endpoint, g.workflow, g.job, g.runs, g.ok, g.failed, g.queue_total,
            d.get(0.5), d.get(0.95), q.get(0.5), q.get(0.95),
        )  # fmt: skip
        out.append(job_row(totals))
    return sorted(out, key=lambda j: (j.project_slug, j.workflow, j.job))


def flaky_commits(scope: Scope) -> Select[Any]:
    """(endpoint, workflow_name, name, commit, failures, latest) of each job and commit on which the job
    both failed and succeeded in the window (any branch): the flaky job definition."""
    failed = J.c.status.in_(JOB_FAILED)
    keys = (J.c.endpoint, J.c.workflow_name, J.c.name, J.c.commit)
    return (
        select(*keys, count_if(failed).label("failures"), func.max(J.c.workflow_created).label("latest"))
        .where(
            scope.where(J, J.c.workflow_created, any_branch=True),
            J.c.commit.is_not(None),
            J.c.executed.is_(True),
        )
        .group_by(*keys)
        .having(and_(count_if(failed) > 0, count_if(J.c.status == "success") > 0))
    )


def flaky_failures(scope: Scope) -> Select[Any]:
    """(workflow_id, name) of the failed runs of flaky jobs on their flaky commits."""
    flaky = flaky_commits(scope).subquery()
    return (
        select(J.c.workflow_id, J.c.name)
        .join(
            flaky,
            and_(
                J.c.endpoint == flaky.c.endpoint,
                J.c.workflow_name == flaky.c.workflow_name,
                J.c.name == flaky.c.name,
                J.c.commit == flaky.c.commit,
            ),
        )
        .where(scope.where(J, J.c.workflow_created, any_branch=True), J.c.status.in_(JOB_FAILED))
    )


def flaky_jobs(conn: Connection, scope: Scope) -> list[FlakyJob]:
    """Jobs that failed and succeeded on the same commit in the window (any branch), most flaky first."""
    rows = conn.execute(flaky_commits(scope))
    flaked: dict[tuple[str, str, str], list[tuple[float, str, int]]] = defaultdict(list)
    for r in rows:
        flaked[(r.endpoint, r.workflow_name, r.name)].append((r.latest or 0.0, r.commit, r.failures))
    found = []
    for (slug, workflow, job), commits in flaked.items():
        commits.sort(reverse=True)
        found.append(
            FlakyJob(
                project_slug=slug,
                workflow=workflow,
                job=job,
                flaky_commits=len(commits),
                times_flaked=sum(f for _, _, f in commits),
                last_flaked=iso(commits[0][0] or None, ms=False),
                commits=[c for _, c, _ in commits[:5]],
            )
        )
    return sorted(found, key=lambda f: (-f.flaky_commits, -f.times_flaked, f.project_slug, f.workflow, f.job))


# -- trends and failures ---------------------------------------------------------------------------


def trends(conn: Connection, scope: Scope) -> list[TrendPoint]:
    """Runs, success rate and median durations per workflow and day (or week)."""
    origin = day_start(scope.since) if scope.bucket == "day" else week_start(scope.since)
    width = DAY if scope.bucket == "day" else WEEK
    period = floor_int((W.c.created - origin) / width, conn.dialect.name).label("period")
    where = scope.where(W, W.c.created)
    keys = (W.c.endpoint, W.c.name, period)
    rows = conn.execute(
        select(
            *keys,
            func.count().label("runs"),
            count_if(W.c.status == "success").label("ok"),
            count_if(W.c.status == "canceled").label("canceled"),
        )
        .where(where)
        .group_by(W.c.endpoint, W.c.name, "period")
    )
    timed = select(*keys, W.c.duration, W.c.active_duration).where(
        where, W.c.status.in_(COMPLETED), W.c.duration.is_not(None)
    )
    names = ("endpoint", "name", "period")
    wall = percentiles(conn, timed, names, "duration", (0.5,))
    active = percentiles(conn, timed, names, "active_duration", (0.5,))
    points = []
    for r in rows:
        key = (r.endpoint, r.name, r.period)
        points.append(
            TrendPoint(
                project_slug=r.endpoint,
                workflow=r.name,
                period=(iso(origin + r.period * width) or "")[:10],
                runs=r.runs,
                success_rate=_ratio(r.ok, r.runs - r.canceled),
                duration_median=wall.get(key, {}).get(0.5),
                active_duration_median=active.get(key, {}).get(0.5),
            )
        )
    return sorted(points, key=lambda p: (p.project_slug, p.workflow, p.period))


def recent_failures(conn: Connection, scope: Scope) -> list[FailedRun]:
    """The latest failed or errored workflow runs of each project, newest first."""
    P = s.pipeline_runs
    ranked = (
        select(
            W.c.endpoint,
            W.c.name,
            W.c.status,
            W.c.branch,
            W.c.commit,
            W.c.pipeline_number,
            W.c.created,
            P.c.subject,
            P.c.author,
            func.row_number()
            .over(partition_by=W.c.endpoint, order_by=(W.c.created.desc(), W.c.id))
            .label("rank"),
        )
        .join(P, P.c.id == W.c.pipeline_id, isouter=True)
        .where(scope.where(W, W.c.created), W.c.status.in_(WORKFLOW_FAILED))
        .subquery()
    )
    rows = conn.execute(
        select(ranked)
        .where(ranked.c.rank <= RECENT_FAILURES)
        .order_by(ranked.c.endpoint, ranked.c.created.desc())
    )
    return [
        FailedRun(
            project_slug=r.endpoint,
            workflow=r.name,
            status=r.status,
            branch=r.branch,
            commit=r.commit,
            subject=r.subject,
            author=r.author,
            pipeline_number=r.pipeline_number,
            created_at=iso(r.created, ms=False),
        )
        for r in rows
    ]


# -- delivery (DORA-style) ---------------------------------------------------------------------------


def deploy_workflows(conn: Connection, scope: Scope) -> dict[str, list[str]]:
    """Endpoint -> names of workflows that deploy: the name, or one of their job names, matches."""
    found: dict[str, set[str]] = defaultdict(set)
    names = select(W.c.endpoint, W.c.name).where(scope.where(W, W.c.created)).distinct()
    for endpoint, name in conn.execute(names):
        if scope.deploy.search(name):
            found[endpoint].add(name)
    jobs = (
        select(J.c.endpoint, J.c.workflow_name, J.c.name)
        .where(scope.where(J, J.c.workflow_created))
        .distinct()
    )
    for endpoint, workflow, job in conn.execute(jobs):
        if scope.deploy.search(job):
            found[endpoint].add(workflow)
    return {e: sorted(n) for e, n in found.items()}


def delivery(conn: Connection, scope: Scope) -> list[Delivery]:
    """Deployment frequency, change failure rate, time to restore and lead time per project."""
    out = []
    for endpoint, names in sorted(deploy_workflows(conn, scope).items()):
        query = (
            select(W.c.name, W.c.branch, W.c.status, W.c.stopped, W.c.triggered)
            .where(scope.where(W, W.c.created), W.c.endpoint == endpoint, W.c.name.in_(names))
            .order_by(W.c.name, W.c.branch, W.c.stopped, W.c.id)
        )
        runs = ok = failed = 0
        leads: list[float] = []
        restores: list[float] = []
        for _, group in groupby(stream(conn, query), key=lambda r: (r.name, r.branch)):
            finished = []
            for r in group:
                runs += 1
                ok += r.status == "success"
                failed += r.status in WORKFLOW_FAILED
                if r.stopped is not None and r.status in ("success", *WORKFLOW_FAILED):
                    finished.append((r.status, r.stopped))
                if r.status == "success" and r.stopped is not None and r.triggered is not None:
                    leads.append(max(0.0, r.stopped - r.triggered))
            restores += recoveries(finished)
        out.append(
            Delivery(
                project_slug=endpoint,
                deploy_workflows=names,
                deploy_runs=runs,
                deployments=ok,
                failed_deploys=failed,
                deployment_frequency=ok / scope.days,
                change_failure_rate=_ratio(failed, ok + failed),
                restores=len(restores),
                time_to_restore_mean=_mean(restores),
                lead_time_median=percentile(sorted(leads), 0.5),
            )
        )
    return out


# -- critical paths and rerun causes -------------------------------------------------------------------


def critical_paths(conn: Connection, scope: Scope) -> list[CriticalPath]:
    """The critical path of the latest successful run of each workflow."""
    latest = (
        select(
            W.c.id,
            W.c.endpoint,
            W.c.name,
            W.c.duration,
            func.row_number()
            .over(partition_by=(W.c.endpoint, W.c.name), order_by=(W.c.created.desc(), W.c.id))
            .label("rank"),
        )
        .where(scope.where(W, W.c.created), W.c.status == "success")
        .subquery()
    )
    runs = conn.execute(select(latest).where(latest.c.rank == 1)).all()
    jobs: dict[str, list[JobFact]] = defaultdict(list)
    ids = [r.id for r in runs]
    for start in range(0, len(ids), 500):
        for row in conn.execute(select(J).where(J.c.workflow_id.in_(ids[start : start + 500]))):
            jobs[row.workflow_id].append(JobFact(**row._asdict()))
    out = []
    for r in sorted(runs, key=lambda r: (r.endpoint, r.name)):
        path = critical_path(jobs[r.id])
        steps = [PathStep(j.name, j.duration, iso(j.started), iso(j.stopped)) for j in path]
        out.append(CriticalPath(r.endpoint, r.name, r.id, r.duration, steps))
    return out


def rerun_causes(conn: Connection, scope: Scope, top: int = 3) -> list[RerunCause]:
    """Reruns per workflow and kind, with the jobs that had failed in the runs they repeat."""
    reruns = W.alias("rerun")
    failed_jobs = (
        select(
            reruns.c.endpoint,
            reruns.c.name,
            reruns.c.rerun_kind,
            J.c.name.label("job"),
            func.count().label("n"),
        )
        .join(J, J.c.workflow_id == reruns.c.rerun_of)
        .where(scope.where(reruns, reruns.c.created), reruns.c.rerun_index > 0, J.c.status.in_(JOB_FAILED))
        .group_by(reruns.c.endpoint, reruns.c.name, reruns.c.rerun_kind, J.c.name)
    )
    culprits: dict[tuple[str, str, str], list[tuple[int, str]]] = defaultdict(list)
    for r in conn.execute(failed_jobs):
        culprits[(r.endpoint, r.name, r.rerun_kind)].append((-r.n, r.job))
    counts = conn.execute(
        select(W.c.endpoint, W.c.name, W.c.rerun_kind, func.count())
        .where(scope.where(W, W.c.created), W.c.rerun_index > 0)
        .group_by(W.c.endpoint, W.c.name, W.c.rerun_kind)
    )
    out = [
        RerunCause(e, n, kind or "whole", count, [job for _, job in sorted(culprits[(e, n, kind)])[:top]])
        for e, n, kind, count in counts
    ]
    return sorted(out, key=lambda c: (c.project_slug, c.workflow, -c.reruns, c.kind))
