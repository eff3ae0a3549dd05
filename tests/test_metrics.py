"""Every metric on a hand-made history whose answers are worked out by hand below.

History of gh/acme/api (default branch main), workflow "build", job "test":

  P1 main c1  W1  11-01 10:00-10:10  success   test ok     queue 30  dur 300
  P2 main c2  W2  11-01 12:00-12:05  failed    test failed queue 60  dur 240
              W2b 11-01 12:30-12:40  success   test ok     queue 10  dur 590   (rerun: flaky on c2)
  P3 main c3  W3  11-02 09:00-09:02  error     test infra  queue 20  dur 100
  P4 main c4  W4  11-02 10:00-10:01  canceled  test cancel queue 5   dur 55
  P5 main c5  W5  11-02 11:00-11:15  success   test ok     queue 40  dur 860
  P6 main c6  W6  11-03 08:00-       on_hold   test ok     queue 15  dur 285, deploy blocked, hold on_hold
  P7 feature/x c7 W7 11-02 13:00-13:03 failed  test failed queue 30  dur 150
  P8 no vcs   W8  11-02 14:00-14:04  success   test ok (no details)
"""

from __future__ import annotations

import json
import math
from datetime import UTC, datetime
from typing import Any

import pytest

from circleci_ds.enrich import enrich_trees
from circleci_ds.metrics import (
    ALL_BRANCHES,
    JobRun,
    MetricsReport,
    WorkflowRun,
    compute_metrics,
    duration_stats,
    flaky_jobs,
    metrics_from_trees,
    percentile,
    queue_histogram,
    recovery_times,
    rerun_rate,
    success_rate,
    window_days,
)
from circleci_ds.store import StoredTree

SLUG = "gh/acme/api"
INFOS = {SLUG: {"vcs_info": {"default_branch": "main"}}}
NOW = datetime(2026, 11, 10, tzinfo=UTC)


def t(stamp: str | None) -> str | None:
    """'11-01 10:00:30' -> '2026-11-01T10:00:30Z'."""
    return None if stamp is None else "2026-" + stamp.replace(" ", "T") + "Z"


def job(
    jid: str,
    status: str,
    queued: str | None,
    started: str | None,
    stopped: str | None,
    ms: int | None = None,
    name: str = "test",
    kind: str = "build",
) -> dict[str, Any]:
    details = None
    if queued is not None:
        details = {
            "queued_at": t(queued),
            "duration": ms,
            "executor": {"type": "docker", "resource_class": "small"},
        }
    return {
        "id": jid,
        "name": name,
        "type": kind,
        "status": status,
        "dependencies": [],
        "started_at": t(started),
        "stopped_at": t(stopped),
        "details": details,
    }


def wf(
    wid: str, status: str, created: str, stopped: str | None, jobs: list[dict[str, Any]], name: str = "build"
) -> dict[str, Any]:
    return {
        "id": wid,
        "name": name,
        "status": status,
        "created_at": t(created),
        "stopped_at": t(stopped),
        "jobs": jobs,
    }


def pipe(
    pid: str,
    number: int,
    created: str,
    branch: str | None,
    commit: str | None,
    workflows: list[dict[str, Any]],
    subject: str = "change",
) -> StoredTree:
    data: dict[str, Any] = {
        "id": pid,
        "number": number,
        "state": "created",
        "created_at": t(created),
        "errors": [],
        "trigger": {"type": "webhook", "actor": {"login": "alice"}},
        "workflows": workflows,
    }
    if branch is not None:
        data["vcs"] = {"branch": branch, "revision": commit, "commit": {"subject": subject}}
    return StoredTree(SLUG, "acme", "https://circleci.com/gh/acme/api", 0.0, data)


def history() -> list[StoredTree]:
    return [
        pipe(
            "P1",
            1,
            "11-01 10:00:00",
            "main",
            "c1",
            [
                wf(
                    "W1",
                    "success",
                    "11-01 10:00:00",
                    "11-01 10:10:00",
                    [job("J1", "success", "11-01 10:00:00", "11-01 10:00:30", "11-01 10:05:30", 300_000)],
                )
            ],
        ),
        pipe(
            "P2",
            2,
            "11-01 12:00:00",
            "main",
            "c2",
            [
                wf(
                    "W2b",
                    "success",
                    "11-01 12:30:00",
                    "11-01 12:40:00",
                    [job("J2b", "success", "11-01 12:30:00", "11-01 12:30:10", "11-01 12:40:00", 590_000)],
                ),
                wf(
                    "W2",
                    "failed",
                    "11-01 12:00:00",
                    "11-01 12:05:00",
                    [job("J2", "failed", "11-01 12:00:00", "11-01 12:01:00", "11-01 12:05:00", 240_000)],
                ),
            ],
            subject="Break things",
        ),
        pipe(
            "P3",
            3,
            "11-02 09:00:00",
            "main",
            "c3",
            [
                wf(
                    "W3",
                    "error",
                    "11-02 09:00:00",
                    "11-02 09:02:00",
                    [
                        job(
                            "J3",
                            "infrastructure_fail",
                            "11-02 09:00:00",
                            "11-02 09:00:20",
                            "11-02 09:02:00",
                            100_000,
                        )
                    ],
                )
            ],
        ),
        pipe(
            "P4",
            4,
            "11-02 10:00:00",
            "main",
            "c4",
            [
                wf(
                    "W4",
                    "canceled",
                    "11-02 10:00:00",
                    "11-02 10:01:00",
                    [job("J4", "canceled", "11-02 10:00:00", "11-02 10:00:05", "11-02 10:01:00", 55_000)],
                )
            ],
        ),
        pipe(
            "P5",
            5,
            "11-02 11:00:00",
            "main",
            "c5",
            [
                wf(
                    "W5",
                    "success",
                    "11-02 11:00:00",
                    "11-02 11:15:00",
                    [job("J5", "success", "11-02 11:00:00", "11-02 11:00:40", "11-02 11:15:00", 860_000)],
                )
            ],
        ),
        pipe(
            "P6",
            6,
            "11-03 08:00:00",
            "main",
            "c6",
            [
                wf(
                    "W6",
                    "on_hold",
                    "11-03 08:00:00",
                    None,
                    [
                        job("J6", "success", "11-03 08:00:00", "11-03 08:00:15", "11-03 08:05:00", 285_000),
                        job("J6d", "blocked", None, None, None, name="deploy"),
                        job("J6h", "on_hold", None, "11-03 08:05:00", None, name="hold", kind="approval"),
                    ],
                )
            ],
        ),
        pipe(
            "P7",
            7,
            "11-02 13:00:00",
            "feature/x",
            "c7",
            [
                wf(
                    "W7",
                    "failed",
                    "11-02 13:00:00",
                    "11-02 13:03:00",
                    [job("J7", "failed", "11-02 13:00:00", "11-02 13:00:30", "11-02 13:03:00", 150_000)],
                )
            ],
        ),
        pipe(
            "P8",
            8,
            "11-02 14:00:00",
            None,
            None,
            [
                wf(
                    "W8",
                    "success",
                    "11-02 14:00:00",
                    "11-02 14:04:00",
                    [job("J8", "success", None, "11-02 14:00:00", "11-02 14:04:00")],
                )
            ],
        ),
    ]


def report(**kwargs: Any) -> MetricsReport:
    docs = enrich_trees(history(), INFOS)
    return compute_metrics(docs, now=NOW, **kwargs)


def one(items: list[Any], **match: Any) -> Any:
    found = [i for i in items if all(getattr(i, k) == v for k, v in match.items())]
    assert len(found) == 1, found
    return found[0]


# -- workflow metrics on the default branch ----------------------------------------------------------


def test_default_branch_workflow_metrics() -> None:
    w = one(report().workflows, workflow="build")
    assert w.branch == "main"
    assert w.runs == 7  # W1 W2 W2b W3 W4 W5 W6
    assert (w.successful_runs, w.failed_runs, w.canceled_runs) == (3, 2, 1)
    assert w.success_rate == pytest.approx(3 / 5)  # cancelled and on-hold runs left out
    # window: midnight 11-01 to midnight after 11-03 = 3 days
    assert w.window_start == "2026-11-01T00:00:00Z" and w.window_end == "2026-11-04T00:00:00Z"
    assert w.days == 3
    assert w.throughput == pytest.approx(7 / 3)


def test_duration_statistics_of_successful_runs() -> None:
    d = one(report().workflows, workflow="build").duration
    # successful runs: W1 600 s, W2b 600 s, W5 900 s
    assert d.count == 3
    assert (d.min, d.mean, d.median, d.max) == (600, 700, 600, 900)
    assert d.p95 == pytest.approx(600 + (900 - 600) * 0.9)  # rank 0.95 * 2 = 1.9
    assert d.stddev == pytest.approx(math.sqrt((100**2 + 100**2 + 200**2) / 3))


def test_mttr_from_failure_to_next_success() -> None:
    w = one(report().workflows, workflow="build")
    # W2 failed (stopped 12:05) -> W2b success (stopped 12:40): 35 min
    # W3 error (stopped 09:02) -> W4 cancelled (ignored) -> W5 success (stopped 11:15): 2 h 13 min
    assert w.recoveries == 2
    assert w.mttr_mean == pytest.approx((2100 + 7980) / 2)
    assert w.mttr_median == pytest.approx((2100 + 7980) / 2)


def test_rerun_rate_and_queue_time() -> None:
    w = one(report().workflows, workflow="build")
    assert w.reruns == 1
    assert w.rerun_rate == pytest.approx(1 / 6)  # P2's build was rerun; six pipeline x workflow executions
    # queue times of build jobs: 30 60 10 20 5 40 15 (the blocked deploy never queued)
    assert w.queue_time_total == 180
    assert w.queue_time_median == 20


def test_project_overview() -> None:
    p = one(report().projects, project_slug=SLUG)
    assert p.project == "acme" and p.default_branch == "main" and p.branch == "main"
    assert p.pipelines == 6 and p.runs == 7
    assert p.success_rate == pytest.approx(0.6)
    assert p.throughput == pytest.approx(7 / 3)
    assert p.duration_median == 600
    assert p.mttr_mean == pytest.approx(5040)
    assert p.job_runs == 8  # seven "test" runs and the blocked deploy; the approval is not a build job
    assert p.queue_time_median == 20
    assert p.flaky_jobs == 1
    assert {k: v for k, v in p.queue_histogram.items() if v} == {
        "5s-10s": 1,
        "10s-30s": 3,
        "30s-1m": 2,
        "1m-2m": 1,
    }


# -- job metrics and flaky jobs --------------------------------------------------------------------------


def test_job_metrics() -> None:
    r = report()
    test = one(r.jobs, workflow="build", job="test")
    assert test.runs == 7
    assert (test.successful_runs, test.failed_runs) == (4, 2)  # infrastructure_fail counts as failed
    assert test.failure_rate == pytest.approx(2 / 6)  # the cancelled run is left out
    # successful durations 300 590 860 285 -> sorted 285 300 590 860
    assert test.duration_p50 == pytest.approx(445)
    assert test.duration_p95 == pytest.approx(590 + 270 * 0.85)
    # queue 5 10 15 20 30 40 60
    assert test.queue_time_p50 == 20
    assert test.queue_time_p95 == pytest.approx(40 + 20 * 0.7)
    deploy = one(r.jobs, job="deploy")
    assert deploy.runs == 1 and deploy.failure_rate is None and deploy.duration_p50 is None
    assert not [j for j in r.jobs if j.job == "hold"]  # approvals are waits, not jobs


def test_flaky_job_on_rerun_of_same_commit() -> None:
    flaky = report().flaky_jobs
    assert len(flaky) == 1
    f = flaky[0]
    assert (f.project_slug, f.workflow, f.job) == (SLUG, "build", "test")
    assert (f.flaky_commits, f.times_flaked, f.commits) == (1, 1, ["c2"])
    assert f.last_flaked == "2026-11-01T12:30:00Z"


def test_flaky_ignores_branch_and_needs_a_commit() -> None:
    runs = [
        JobRun(SLUG, "build", "w1", "test", "failed", "c9", 100.0, None, None),
        JobRun(SLUG, "build", "w2", "test", "success", "c9", 200.0, None, None),
        JobRun(SLUG, "build", "w3", "test", "timedout", "c9", 300.0, None, None),
        JobRun(SLUG, "build", "w4", "test", "failed", None, 400.0, None, None),
        JobRun(SLUG, "build", "w5", "test", "success", None, 500.0, None, None),
        JobRun(SLUG, "build", "w6", "lint", "canceled", "c9", 600.0, None, None),
        JobRun(SLUG, "build", "w7", "lint", "success", "c9", 700.0, None, None),
        JobRun(SLUG, "other", "w8", "test", "success", "c9", 800.0, None, None),
    ]
    flaky = flaky_jobs(runs)
    assert [(f.workflow, f.job, f.flaky_commits, f.times_flaked) for f in flaky] == [("build", "test", 1, 2)]


# -- branches and windows ------------------------------------------------------------------------------


def test_all_branches() -> None:
    r = report(branch=ALL_BRANCHES)
    w = one(r.workflows, workflow="build")
    assert w.branch is None
    assert w.runs == 9  # P8 has no vcs and so no branch: only "all branches" counts it
    assert w.success_rate == pytest.approx(4 / 7)
    assert w.recoveries == 2  # feature/x never recovered; runs are never paired across branches
    assert one(r.projects, project_slug=SLUG).branch is None


def test_named_branch() -> None:
    w = one(report(branch="feature/x").workflows, workflow="build")
    assert (w.runs, w.success_rate, w.mttr_mean, w.mttr_median) == (1, 0.0, None, None)
    assert w.duration.count == 0 and w.duration.median is None and w.duration.stddev is None
    assert (w.queue_time_total, w.queue_time_median) == (30, 30)


def test_no_queue_time_known_is_null_not_zero() -> None:
    trees = [t for t in history() if t.data["id"] == "P8"]  # its job has no details
    w = one(compute_metrics(enrich_trees(trees, INFOS), branch=ALL_BRANCHES).workflows, workflow="build")
    assert (w.runs, w.queue_time_total, w.queue_time_median) == (1, None, None)
    assert w.duration.count == 1 and w.duration.stddev == 0


def test_time_window() -> None:
    r = report(since=datetime(2026, 11, 2, tzinfo=UTC), until=datetime(2026, 11, 3, tzinfo=UTC))
    w = one(r.workflows, workflow="build")
    assert w.runs == 3  # W3 W4 W5
    assert w.success_rate == pytest.approx(0.5)
    assert w.days == 1 and w.throughput == 3
    assert w.mttr_mean == 7980
    assert (r.since, r.until) == ("2026-11-02T00:00:00Z", "2026-11-03T00:00:00Z")
    assert r.flaky_jobs == []  # the flaky rerun was on 11-01


def test_unknown_default_branch_means_all_branches() -> None:
    p = one(compute_metrics(enrich_trees(history(), {})).projects, project_slug=SLUG)
    assert p.default_branch is None and p.branch is None and p.runs == 9


def test_naive_datetimes_are_utc() -> None:
    r = report(since=datetime(2026, 11, 2), until=datetime(2026, 11, 3))
    assert one(r.workflows, workflow="build").runs == 3


# -- trends, failures, serialisation ----------------------------------------------------------------------


def test_daily_trends() -> None:
    r = report()
    assert r.bucket == "day"
    points = [(p.period, p.runs, p.success_rate, p.duration_median) for p in r.trends]
    assert points == [
        ("2026-11-01", 3, pytest.approx(2 / 3), 600),
        ("2026-11-02", 3, 0.5, 900),
        ("2026-11-03", 1, None, None),
    ]


def test_weekly_trends() -> None:
    r = report(bucket="week")
    # 2026-11-01 is a Sunday: its week starts on Monday 10-26; 11-02 and 11-03 fall in the next
    assert [(p.period, p.runs) for p in r.trends] == [("2026-10-26", 3), ("2026-11-02", 4)]


def test_recent_failures_newest_first() -> None:
    failures = report().recent_failures
    assert [(f.workflow, f.status, f.commit, f.pipeline_number) for f in failures] == [
        ("build", "error", "c3", 3),
        ("build", "failed", "c2", 2),
    ]
    assert failures[1].subject == "Break things" and failures[1].author == "alice"


def test_report_serialises_to_json() -> None:
    r = report()
    data = json.loads(r.to_json())
    assert data["generated_at"] == "2026-11-10T00:00:00Z"
    assert data["workflows"][0]["duration"]["median"] == 600
    assert data["projects"][0]["queue_histogram"]["10s-30s"] == 3


def test_metrics_from_trees_matches_documents() -> None:
    direct = metrics_from_trees(history(), INFOS)
    assert [w.runs for w in direct.workflows] == [w.runs for w in report().workflows]


def test_empty_history() -> None:
    r = compute_metrics([])
    assert (r.projects, r.workflows, r.jobs, r.flaky_jobs, r.trends) == ([], [], [], [], [])


# -- the building blocks on their own -------------------------------------------------------------------


def run(
    status: str,
    created: float | None,
    stopped: float | None,
    branch: str = "main",
    pipeline: str = "p",
    rerun: int = 0,
) -> WorkflowRun:
    return WorkflowRun(
        project="acme",
        project_slug=SLUG,
        workflow="build",
        workflow_id=f"w{created}",
        pipeline_id=pipeline,
        branch=branch,
        default_branch="main",
        commit=None,
        subject=None,
        author=None,
        pipeline_number=None,
        status=status,
        created=created,
        stopped=stopped,
        duration=None,
        rerun_index=rerun,
    )


def test_recovery_times_by_hand() -> None:
    runs = [
        run("success", 0, 10),
        run("failed", 100, 110),  # red from 110
        run("failed", 200, 210),  # still red
        run("running", 250, None),
        run("success", 300, 400),  # green at 400: 290
        run("error", 500, 505),  # red from 505
        run("canceled", 600, 601),
        run("success", 700, 725),  # green at 725: 220
        run("failed", 800, 810),  # red, never recovered
    ]
    assert recovery_times(list(reversed(runs))) == [290, 220]  # order of input does not matter


def test_success_rate_by_hand() -> None:
    statuses = ["success", "success", "failed", "error", "canceled", "on_hold", "running", "not_run"]
    assert success_rate(statuses) == 0.5
    assert success_rate(["canceled", "running"]) is None


def test_percentiles_by_hand() -> None:
    assert percentile([], 0.5) is None
    assert percentile([7], 0.95) == 7
    assert percentile([1, 2, 3, 4], 0.5) == 2.5
    assert percentile(list(range(1, 101)), 0.95) == pytest.approx(95.05)
    stats = duration_stats([4, 2, 8, 6])
    assert (stats.min, stats.mean, stats.median, stats.max) == (2, 5, 5, 8)
    assert stats.stddev == pytest.approx(math.sqrt(5))


def test_rerun_rate_by_hand() -> None:
    runs = [
        run("failed", 1, 2, pipeline="a"),
        run("success", 3, 4, pipeline="a", rerun=1),
        run("success", 5, 6, pipeline="a", rerun=2),
        run("success", 7, 8, pipeline="b"),
    ]
    assert rerun_rate(runs) == (2, 0.5)
    assert rerun_rate([]) == (0, None)


def test_window_days_by_hand() -> None:
    day = 86400.0
    assert window_days([day + 10, 3 * day + 5], None, None) == (day, 4 * day, 3.0)
    assert window_days([day + 10], 0.0, 2 * day) == (0.0, 2 * day, 2.0)
    assert window_days([day + 10], day, None) == (day, 2 * day, 1.0)


def test_queue_histogram_bins() -> None:
    counts = queue_histogram([0.5, 1, 4.9, 5, 29, 30, 59, 60, 299, 300, 1799, 1800, 99999])
    assert counts == {
        "<1s": 1,
        "1s-5s": 2,
        "5s-10s": 1,
        "10s-30s": 1,
        "30s-1m": 2,
        "1m-2m": 1,
        "2m-5m": 1,
        "5m-10m": 1,
        "10m-30m": 1,
        ">=30m": 2,
    }
