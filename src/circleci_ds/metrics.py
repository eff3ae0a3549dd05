"""CI metrics over enriched documents: per project, per workflow and per job.

Definitions (CircleCI Insights' where the names are shared, see the Insights metrics glossary):

- runs: every workflow run created in the window, whatever its status, on-hold and running
  included (Insights "Runs" / `total_runs`). Reruns are runs of their own.
- success rate: successful / (successful + failed + error) runs, as a fraction 0..1. Insights
  computes `successful / (all runs - cancelled runs)` over completed runs; runs still running or
  on hold, not run or unauthorized are not completed and so are left out too. None with no
  completed run.
- throughput: runs per day (Insights: "sum of builds / # of days"). The days are those of the
  window: `until - since`, and where a bound is not given, from the UTC midnight before the
  first run or to the UTC midnight after the last run.
- duration: workflow duration is stopped_at - created_at in seconds (as Insights'); statistics
  (min, mean, median, p95, max, standard deviation) are over successful runs only, since failed
  and cancelled runs stop early. Percentiles interpolate linearly between closest ranks (median
  = p50); the standard deviation is the population one.
- MTTR (Insights: "total recovery time / # of failures", time spent in a failed state before a
  successful execution): runs of one workflow on one branch, in created_at order, go red at the
  first failed/error run after a green one and back to green at the next successful run; each
  recovery lasts from the failing run's stopped_at to the successful run's stopped_at.
  Cancelled and unfinished runs change nothing. Mean and median over recoveries; None without.
- rerun rate: the share of (pipeline, workflow name) executions that were rerun at least once
  (a rerun is a new workflow of the same name in the same pipeline).
- queue time: per build job, started_at - queued_at (job details); total and median per workflow.
- jobs: build jobs only (approval jobs are waits, not work). Failure rate is failed (failed,
  infrastructure_fail, timedout, terminated-unknown) / (successful + failed) runs; duration
  p50/p95 over successful runs, queue time p50/p95 over runs with a queue time.
- flaky job: a job name within a workflow name that both failed and succeeded on the same commit
  (vcs revision), typically across a rerun. Like Insights' flaky tests this ignores the branch
  filter (but not the time window); pipelines without a revision cannot be flaky.

The window holds the workflow runs created in [since, until) on the branch: by default each
project's default branch, all branches when that is unknown or `branch` is ALL_BRANCHES. Jobs
follow their workflow run.
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from itertools import pairwise
from typing import Any

from circleci_ds.enrich import enrich_trees
from circleci_ds.store import StoredTree

ALL_BRANCHES = "*"
WORKFLOW_FAILED = frozenset({"failed", "error"})
JOB_FAILED = frozenset({"failed", "infrastructure_fail", "timedout", "terminated-unknown"})
# Upper bounds (seconds) of the queue-time histogram's bins; the last bin is open.
QUEUE_BINS = (1, 5, 10, 30, 60, 120, 300, 600, 1800)
DAY = 86400.0
UNIX_EPOCH = datetime(1970, 1, 1)


# -- result types ----------------------------------------------------------------------------


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
    recoveries: int
    mttr_mean: float | None
    mttr_median: float | None
    reruns: int
    rerun_rate: float | None
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
    success_rate: float | None
    throughput: float
    duration_median: float | None
    mttr_mean: float | None
    job_runs: int
    queue_time_median: float | None
    flaky_jobs: int
    queue_histogram: dict[str, int]


@dataclass
class MetricsReport:
    generated_at: str
    since: str | None
    until: str | None
    branch: str | None  # as asked; None: each project's default branch
    bucket: str
    projects: list[ProjectMetrics]
    workflows: list[WorkflowMetrics]
    jobs: list[JobMetrics]
    flaky_jobs: list[FlakyJob]
    trends: list[TrendPoint]
    recent_failures: list[FailedRun]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent, ensure_ascii=False)


# -- rows taken from the documents -----------------------------------------------------------


@dataclass(slots=True)
class WorkflowRun:
    project: str
    project_slug: str
    workflow: str
    workflow_id: str
    pipeline_id: str
    branch: str | None
    default_branch: str | None
    commit: str | None
    subject: str | None
    author: str | None
    pipeline_number: int | None
    status: str
    created: float | None  # epoch seconds
    stopped: float | None
    duration: float | None
    rerun_index: int


@dataclass(slots=True)
class JobRun:
    project_slug: str
    workflow: str
    workflow_id: str
    job: str
    status: str
    commit: str | None
    created: float | None  # the workflow run's created_at: jobs follow their run into the window
    duration: float | None
    queue_time: float | None


@dataclass
class Runs:
    workflows: list[WorkflowRun] = field(default_factory=list)
    jobs: list[JobRun] = field(default_factory=list)


def epoch(value: Any) -> float | None:
    """Epoch seconds of an ISO timestamp from an enriched document."""
    if not isinstance(value, str) or not value:
        return None
    try:
        moment = datetime.fromisoformat(value[:-1] if value[-1] == "Z" else value)
    except ValueError:
        return None
    if moment.tzinfo is None:  # documents are in UTC
        return (moment - UNIX_EPOCH).total_seconds()
    return moment.timestamp()


def collect_runs(docs: Iterable[dict[str, Any]]) -> Runs:
    """Workflow and build-job rows from enriched documents (pipeline documents are skipped)."""
    runs = Runs()
    for doc in docs:
        kind = doc.get("type")
        if kind == "workflow":
            runs.workflows.append(_workflow_run(doc))
        elif kind == "job" and doc.get("job_type") != "approval":
            runs.jobs.append(_job_run(doc))
    return runs


def _workflow_run(doc: dict[str, Any]) -> WorkflowRun:
    return WorkflowRun(
        project=doc.get("project") or "",
        project_slug=doc.get("project_slug") or "",
        workflow=str(doc.get("workflow_name")),
        workflow_id=str(doc.get("workflow_id")),
        pipeline_id=str(doc.get("pipeline_id")),
        branch=doc.get("branch"),
        default_branch=doc.get("default_branch"),
        commit=doc.get("commit_sha"),
        subject=doc.get("commit_subject"),
        author=doc.get("author_login"),
        pipeline_number=doc.get("pipeline_number"),
        status=str(doc.get("status")),
        created=epoch(doc.get("created_at")),
        stopped=epoch(doc.get("stopped_at")),
        duration=doc.get("duration_seconds"),
        rerun_index=doc.get("rerun_index") or 0,
    )


def _job_run(doc: dict[str, Any]) -> JobRun:
    return JobRun(
        project_slug=doc.get("project_slug") or "",
        workflow=str(doc.get("workflow_name")),
        workflow_id=str(doc.get("workflow_id")),
        job=str(doc.get("job_name")),
        status=str(doc.get("status")),
        commit=doc.get("commit_sha"),
        created=epoch(doc.get("workflow_created_at")),
        duration=doc.get("duration_seconds"),
        queue_time=doc.get("queue_time_seconds"),
    )


# -- statistics ---------------------------------------------------------------------------------


def percentile(ordered: Sequence[float], q: float) -> float | None:
    """The q-quantile (0..1) of sorted values, interpolating linearly between closest ranks."""
    if not ordered:
        return None
    position = (len(ordered) - 1) * q
    low = math.floor(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def median(values: Iterable[float]) -> float | None:
    return percentile(sorted(values), 0.5)


def mean(values: Sequence[float]) -> float | None:
    return sum(values) / len(values) if values else None


def duration_stats(values: Iterable[float]) -> DurationStats:
    ordered = sorted(values)
    if not ordered:
        return DurationStats()
    average = sum(ordered) / len(ordered)
    variance = sum((v - average) ** 2 for v in ordered) / len(ordered)
    return DurationStats(
        count=len(ordered),
        min=ordered[0],
        mean=average,
        median=percentile(ordered, 0.5),
        p95=percentile(ordered, 0.95),
        max=ordered[-1],
        stddev=math.sqrt(variance),
    )


def successful_durations(runs: Iterable[WorkflowRun]) -> list[float]:
    return [r.duration for r in runs if r.status == "success" and r.duration is not None]


def success_rate(statuses: Iterable[str]) -> float | None:
    """successful / (successful + failed + error); None when none completed."""
    success = failed = 0
    for status in statuses:
        if status == "success":
            success += 1
        elif status in WORKFLOW_FAILED:
            failed += 1
    completed = success + failed
    return success / completed if completed else None


def recovery_times(runs: Iterable[WorkflowRun]) -> list[float]:
    """Seconds from going red to back green, for one workflow's runs on one branch."""
    ordered = sorted(runs, key=lambda r: (r.created is None, r.created or 0.0))
    recoveries: list[float] = []
    red_since: float | None = None
    is_red = False
    for run in ordered:
        if run.status in WORKFLOW_FAILED and not is_red:
            is_red, red_since = True, run.stopped or run.created
        elif run.status == "success" and is_red:
            if red_since is not None and run.stopped is not None:
                recoveries.append(run.stopped - red_since)
            is_red, red_since = False, None
    return recoveries


def window_days(
    created: Sequence[float], since: float | None, until: float | None
) -> tuple[float, float, float]:
    """(start, end, days) of the window; open bounds close on the UTC midnights around the runs."""
    start = since if since is not None else _midnight(min(created)) if created else 0.0
    end = until if until is not None else _midnight(max(created)) + DAY if created else start + DAY
    return start, end, max(end - start, 1.0) / DAY


def _midnight(moment: float) -> float:
    return moment - moment % DAY


def rerun_rate(runs: Iterable[WorkflowRun]) -> tuple[int, float | None]:
    """(reruns, share of pipeline x workflow executions rerun at least once)."""
    executions: dict[tuple[str, str], int] = defaultdict(int)
    reruns = 0
    for run in runs:
        executions[(run.pipeline_id, run.workflow)] += 1
        reruns += run.rerun_index > 0
    if not executions:
        return 0, None
    rerun_once = sum(1 for count in executions.values() if count > 1)
    return reruns, rerun_once / len(executions)


def queue_histogram(values: Iterable[float]) -> dict[str, int]:
    """Counts of queue times per bin, labelled `<1s`, `1-5s`, ... `>=30m`."""
    labels = _bin_labels()
    counts = dict.fromkeys(labels, 0)
    for value in values:
        index = next((i for i, bound in enumerate(QUEUE_BINS) if value < bound), len(QUEUE_BINS))
        counts[labels[index]] += 1
    return counts


def _bin_labels() -> list[str]:
    def short(seconds: int) -> str:
        return f"{seconds // 60}m" if seconds >= 60 and seconds % 60 == 0 else f"{seconds}s"

    labels = [f"<{short(QUEUE_BINS[0])}"]
    labels += [f"{short(a)}-{short(b)}" for a, b in pairwise(QUEUE_BINS)]
    return [*labels, f">={short(QUEUE_BINS[-1])}"]


# -- selection ------------------------------------------------------------------------------------


def in_time(created: float | None, since: float | None, until: float | None) -> bool:
    if created is None:
        return since is None and until is None
    return (since is None or created >= since) and (until is None or created < until)


def measured_branch(run: WorkflowRun, branch: str | None) -> str | None:
    """The branch measured for the run's project: asked, else default, else None (all)."""
    if branch == ALL_BRANCHES:
        return None
    return branch if branch is not None else run.default_branch


def on_branch(run: WorkflowRun, branch: str | None) -> bool:
    wanted = measured_branch(run, branch)
    return wanted is None or run.branch == wanted


# -- the computation -------------------------------------------------------------------------


def compute_metrics(
    docs: Iterable[dict[str, Any]],
    *,
    since: datetime | None = None,
    until: datetime | None = None,
    branch: str | None = None,
    bucket: str = "auto",
    now: datetime | None = None,
) -> MetricsReport:
    """All metrics over enriched documents; see the module docstring for the definitions.

    `branch`: None for each project's default branch, ALL_BRANCHES for every branch.
    `bucket`: trend granularity, "day", "week" or "auto" (weeks past 90 days of data).
    """
    runs = collect_runs(docs)
    return metrics_from_runs(runs, since=since, until=until, branch=branch, bucket=bucket, now=now)


def metrics_from_trees(
    trees: Iterable[StoredTree],
    project_infos: dict[str, dict[str, Any]],
    *,
    since: datetime | None = None,
    until: datetime | None = None,
    branch: str | None = None,
    bucket: str = "auto",
) -> MetricsReport:
    """compute_metrics over the enriched documents of stored trees."""
    docs = enrich_trees(trees, project_infos)
    return compute_metrics(docs, since=since, until=until, branch=branch, bucket=bucket)


def metrics_from_runs(
    runs: Runs,
    *,
    since: datetime | None = None,
    until: datetime | None = None,
    branch: str | None = None,
    bucket: str = "auto",
    now: datetime | None = None,
) -> MetricsReport:
    """compute_metrics over rows already collected from documents."""
    start, end = _epoch_of(since), _epoch_of(until)
    timely = [r for r in runs.workflows if in_time(r.created, start, end)]
    selected = [r for r in timely if on_branch(r, branch)]
    selected_ids = {r.workflow_id for r in selected}
    timely_jobs = [j for j in runs.jobs if in_time(j.created, start, end)]
    jobs = [j for j in timely_jobs if j.workflow_id in selected_ids]
    flaky = flaky_jobs(timely_jobs)
    workflows = workflow_metrics(selected, jobs, start, end, branch)
    chosen = _choose_bucket(selected, bucket)
    return MetricsReport(
        generated_at=_iso((now or datetime.now(UTC)).timestamp()) or "",
        since=_iso(start),
        until=_iso(end),
        branch=branch,
        bucket=chosen,
        projects=project_metrics(selected, jobs, flaky, start, end, branch),
        workflows=workflows,
        jobs=job_metrics(jobs),
        flaky_jobs=flaky,
        trends=trends(selected, chosen),
        recent_failures=recent_failures(selected),
    )


def workflow_metrics(
    runs: list[WorkflowRun], jobs: list[JobRun], since: float | None, until: float | None, branch: str | None
) -> list[WorkflowMetrics]:
    """One entry per project and workflow name, sorted by project then workflow."""
    queue_by_workflow = _queue_times(jobs)
    grouped: dict[tuple[str, str], list[WorkflowRun]] = defaultdict(list)
    for run in runs:
        grouped[(run.project_slug, run.workflow)].append(run)
    return [
        _one_workflow(group, queue_by_workflow.get(key, []), since, until, branch)
        for key, group in sorted(grouped.items())
    ]


def _queue_times(jobs: Iterable[JobRun]) -> dict[tuple[str, str], list[float]]:
    out: dict[tuple[str, str], list[float]] = defaultdict(list)
    for job in jobs:
        if job.queue_time is not None:
            out[(job.project_slug, job.workflow)].append(job.queue_time)
    return out


def _one_workflow(
    runs: list[WorkflowRun], queue: list[float], since: float | None, until: float | None, branch: str | None
) -> WorkflowMetrics:
    first = runs[0]
    created = [r.created for r in runs if r.created is not None]
    start, end, days = window_days(created, since, until)
    statuses = [r.status for r in runs]
    recoveries = pooled_recoveries(runs)
    reruns, rate = rerun_rate(runs)
    return WorkflowMetrics(
        project=first.project,
        project_slug=first.project_slug,
        workflow=first.workflow,
        branch=measured_branch(first, branch),
        window_start=_iso(start),
        window_end=_iso(end),
        days=round(days, 4),
        runs=len(runs),
        successful_runs=statuses.count("success"),
        failed_runs=sum(s in WORKFLOW_FAILED for s in statuses),
        canceled_runs=statuses.count("canceled"),
        success_rate=success_rate(statuses),
        throughput=len(runs) / days,
        duration=duration_stats(successful_durations(runs)),
        recoveries=len(recoveries),
        mttr_mean=mean(recoveries),
        mttr_median=median(recoveries),
        reruns=reruns,
        rerun_rate=rate,
        queue_time_total=round(sum(queue), 3) if queue else None,
        queue_time_median=median(queue),
    )


def pooled_recoveries(runs: Iterable[WorkflowRun]) -> list[float]:
    """Recoveries of each branch's sequence of runs, pooled (a red branch is healed on itself)."""
    by_branch: dict[str | None, list[WorkflowRun]] = defaultdict(list)
    for run in runs:
        by_branch[run.branch].append(run)
    return [t for group in by_branch.values() for t in recovery_times(group)]


def job_metrics(jobs: list[JobRun]) -> list[JobMetrics]:
    """One entry per project, workflow name and job name."""
    grouped: dict[tuple[str, str, str], list[JobRun]] = defaultdict(list)
    for job in jobs:
        grouped[(job.project_slug, job.workflow, job.job)].append(job)
    return [_one_job(key, group) for key, group in sorted(grouped.items())]


def _one_job(key: tuple[str, str, str], jobs: list[JobRun]) -> JobMetrics:
    success = sum(j.status == "success" for j in jobs)
    failed = sum(j.status in JOB_FAILED for j in jobs)
    durations = sorted(j.duration for j in jobs if j.status == "success" and j.duration is not None)
    queue = sorted(j.queue_time for j in jobs if j.queue_time is not None)
    return JobMetrics(
        project_slug=key[0],
        workflow=key[1],
        job=key[2],
        runs=len(jobs),
        successful_runs=success,
        failed_runs=failed,
        failure_rate=failed / (success + failed) if success + failed else None,
        duration_p50=percentile(durations, 0.5),
        duration_p95=percentile(durations, 0.95),
        queue_time_p50=percentile(queue, 0.5),
        queue_time_p95=percentile(queue, 0.95),
    )


def flaky_jobs(jobs: Iterable[JobRun]) -> list[FlakyJob]:
    """Jobs that failed and succeeded on the same commit, most flaky first."""
    # (project, workflow, job, commit) -> [failed runs, successful runs, latest workflow created_at]
    tallies: dict[tuple[str, str, str, str], list[float]] = {}
    for job in jobs:
        failed = job.status in JOB_FAILED
        if not job.commit or not (failed or job.status == "success"):
            continue
        key = (job.project_slug, job.workflow, job.job, job.commit)
        tally = tallies.get(key)
        if tally is None:
            tally = tallies[key] = [0, 0, 0.0]
        tally[0 if failed else 1] += 1
        if job.created is not None and job.created > tally[2]:
            tally[2] = job.created
    flaked: dict[tuple[str, str, str], list[tuple[float, str, int]]] = defaultdict(list)
    for (slug, workflow, name, commit), (failures, successes, latest) in tallies.items():
        if failures and successes:
            flaked[(slug, workflow, name)].append((latest, commit, int(failures)))
    found = [_flaky(key, commits) for key, commits in flaked.items()]
    return sorted(found, key=lambda f: (-f.flaky_commits, -f.times_flaked, f.project_slug, f.workflow, f.job))


def _flaky(key: tuple[str, str, str], commits: list[tuple[float, str, int]]) -> FlakyJob:
    """`commits`: (latest created_at, commit, failed runs) of each commit the job flaked on."""
    commits.sort(reverse=True)
    return FlakyJob(
        project_slug=key[0],
        workflow=key[1],
        job=key[2],
        flaky_commits=len(commits),
        times_flaked=sum(f for _, _, f in commits),
        last_flaked=_iso(commits[0][0] or None),
        commits=[c for _, c, _ in commits[:5]],
    )


def project_metrics(
    runs: list[WorkflowRun],
    jobs: list[JobRun],
    flaky: list[FlakyJob],
    since: float | None,
    until: float | None,
    branch: str | None,
) -> list[ProjectMetrics]:
    """Totals per CircleCI project (endpoint), over all its workflows."""
    by_project: dict[str, list[WorkflowRun]] = defaultdict(list)
    for run in runs:
        by_project[run.project_slug].append(run)
    jobs_by_project: dict[str, list[JobRun]] = defaultdict(list)
    for job in jobs:
        jobs_by_project[job.project_slug].append(job)
    flaky_count: dict[str, int] = defaultdict(int)
    for item in flaky:
        flaky_count[item.project_slug] += 1
    return [
        _one_project(group, jobs_by_project[slug], flaky_count[slug], since, until, branch)
        for slug, group in sorted(by_project.items())
    ]


def _one_project(
    runs: list[WorkflowRun],
    jobs: list[JobRun],
    flaky: int,
    since: float | None,
    until: float | None,
    branch: str | None,
) -> ProjectMetrics:
    first = runs[0]
    created = [r.created for r in runs if r.created is not None]
    _, _, days = window_days(created, since, until)
    recoveries = [t for group in _by_workflow(runs).values() for t in pooled_recoveries(group)]
    queue = [j.queue_time for j in jobs if j.queue_time is not None]
    return ProjectMetrics(
        project=first.project,
        project_slug=first.project_slug,
        default_branch=first.default_branch,
        branch=measured_branch(first, branch),
        pipelines=len({r.pipeline_id for r in runs}),
        runs=len(runs),
        success_rate=success_rate(r.status for r in runs),
        throughput=len(runs) / days,
        duration_median=median(successful_durations(runs)),
        mttr_mean=mean(recoveries),
        job_runs=len(jobs),
        queue_time_median=median(queue),
        flaky_jobs=flaky,
        queue_histogram=queue_histogram(queue),
    )


def _by_workflow(runs: Iterable[WorkflowRun]) -> dict[str, list[WorkflowRun]]:
    out: dict[str, list[WorkflowRun]] = defaultdict(list)
    for run in runs:
        out[run.workflow].append(run)
    return out


def trends(runs: Iterable[WorkflowRun], bucket: str) -> list[TrendPoint]:
    """Runs, success rate and median successful duration per workflow and day (or week)."""
    grouped: dict[tuple[str, str, str], list[WorkflowRun]] = defaultdict(list)
    for run in runs:
        if run.created is not None:
            grouped[(run.project_slug, run.workflow, bucket_start(run.created, bucket))].append(run)
    return [
        TrendPoint(
            project_slug=slug,
            workflow=workflow,
            period=period,
            runs=len(group),
            success_rate=success_rate(r.status for r in group),
            duration_median=median(successful_durations(group)),
        )
        for (slug, workflow, period), group in sorted(grouped.items())
    ]


def recent_failures(runs: Iterable[WorkflowRun], per_project: int = 10) -> list[FailedRun]:
    """The latest failed or errored workflow runs of each project, newest first."""
    failed = sorted(
        (r for r in runs if r.status in WORKFLOW_FAILED and r.created is not None),
        key=lambda r: r.created or 0.0,
        reverse=True,
    )
    shown: dict[str, int] = defaultdict(int)
    out: list[FailedRun] = []
    for run in failed:
        if shown[run.project_slug] < per_project:
            shown[run.project_slug] += 1
            out.append(
                FailedRun(
                    project_slug=run.project_slug,
                    workflow=run.workflow,
                    status=run.status,
                    branch=run.branch,
                    commit=run.commit,
                    subject=run.subject,
                    author=run.author,
                    pipeline_number=run.pipeline_number,
                    created_at=_iso(run.created),
                )
            )
    return out


def bucket_start(moment: float, bucket: str) -> str:
    """YYYY-MM-DD of the UTC day, or of the Monday starting the ISO week."""
    day = datetime.fromtimestamp(moment, UTC).date()
    if bucket == "week":
        day -= timedelta(days=day.weekday())
    return day.isoformat()


def _choose_bucket(runs: list[WorkflowRun], bucket: str) -> str:
    if bucket in ("day", "week"):
        return bucket
    created = [r.created for r in runs if r.created is not None]
    return "week" if created and max(created) - min(created) > 90 * DAY else "day"


def _epoch_of(moment: datetime | None) -> float | None:
    if moment is None:
        return None
    return (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).timestamp()


def _iso(moment: float | None) -> str | None:
    if moment is None:
        return None
    return datetime.fromtimestamp(moment, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
