"""Every metric on a hand-made history whose answers are worked out by hand below (SQLite and PostgreSQL).

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

Worked out (default branch, default window: newest run 11-03 08:00 -> until 11-04, since 10-05, 30 days):
  runs 7 (W1 W2 W2b W3 W4 W5 W6); successful 3, failed 2, cancelled 1; success rate 3 / (7 - 1) = 0.5
  completed durations (s): W4 60, W3 120, W2 300, W1 600, W2b 600, W5 900
     -> min 60, mean 430, median 450, p95 600 + 300 * 0.75 = 825, max 900, stddev sqrt(88100)
  finish order: W1 ok 10:10 | W2 failed 12:05 (red) | W2b ok 12:40: 2100
                | W3 error 09:02 (red) | W5 ok 11:15: 7980
     -> MTTR mean = median = 5040; time to green the same (one workflow on main)
  first runs W1 ok, W2 failed, W3 error, W4 cancelled, W5 ok, W6 on hold -> first pass 2 / 5 = 0.4
  time lost: failed W2 300 + W3 120 = 420; reruns W2b 600. Rerun rate 1 of 6 executions.
  executed build jobs J1 J2 J2b J3 J4 J5 J6 (not the blocked deploy) -> 7 job runs, queue 5 10 15 20 30 40 60
     -> total 180, median 20; test: 4 ok, 2 failed -> failure rate 2/6; ok durations 285 300 590 860
  deploy pattern "deploy" matches job J6d "deploy" of workflow build: 7 deploy runs, 3 deployments,
     change failure rate 2/5, lead times W1 600, W2b 2400, W5 900 -> median 900
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest

from builders import job_item, stored_tree, workflow_item
from circleci_ds.derive.facts import open_store
from circleci_ds.metrics.ci import ALL_BRANCHES, MetricsReport, greens, recoveries
from circleci_ds.metrics.sqlstats import percentile
from circleci_ds.report import build_report
from circleci_ds.store import Store, StoredTree

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
    times = {"started_at": t(started), "stopped_at": t(stopped)}
    return job_item(jid, name, status, kind=kind, **times, details=details)


def wf(
    wid: str, status: str, created: str, stopped: str | None, jobs: list[dict[str, Any]], name: str = "build"
) -> dict[str, Any]:
    return workflow_item(wid, name, status, t(created), t(stopped), jobs)


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
    return stored_tree(data, SLUG)


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


def make_store(url: str, infos: dict[str, Any] | None = INFOS) -> Store:
    store = open_store(url)
    store.ensure_endpoint(SLUG, "acme", "https://circleci.com/gh/acme/api")
    for slug, info in (infos or {}).items():
        store.save_project_info(slug, info)
    for tree in history():
        store.save_tree(SLUG, tree.data, fetched_at=1.0, is_final=True)
    return store


@pytest.fixture
def store(db_url: str) -> Iterator[Store]:
    opened = make_store(db_url)
    yield opened
    opened.close()


def at(day: int, hour: int = 0) -> float:
    return datetime(2026, 11, day, hour, tzinfo=UTC).timestamp()


def report(store: Store, **kwargs: Any) -> MetricsReport:
    return build_report(store, now=NOW.timestamp(), **kwargs)


def one(items: list[Any], **match: Any) -> Any:
    found = [i for i in items if all(getattr(i, k) == v for k, v in match.items())]
    assert len(found) == 1, found
    return found[0]


# -- workflow metrics on the default branch ----------------------------------------------------------


def test_one_default_window_for_the_whole_report(store: Store) -> None:
    r = report(store)
    assert (r.since, r.until) == ("2026-10-05T00:00:00Z", "2026-11-04T00:00:00Z")
    assert r.window.startswith(
        "Window: workflow runs created from 2026-10-05T00:00:00Z to 2026-11-04T00:00:00Z"
    )
    w = one(r.workflows, workflow="build")
    assert (w.window_start, w.window_end, w.days) == (r.since, r.until, 30)


def test_insights_runs_and_success_rate(store: Store) -> None:
    w = one(report(store).workflows, workflow="build")
    assert w.branch == "main"
    assert w.runs == 7
    assert (w.successful_runs, w.failed_runs, w.canceled_runs) == (3, 2, 1)
    assert w.success_rate == pytest.approx(3 / 6)  # the on-hold run counts, the cancelled one does not
    assert w.throughput == pytest.approx(7 / 30)


def test_duration_statistics_of_completed_runs(store: Store) -> None:
    d = one(report(store).workflows, workflow="build").duration
    assert d.count == 6
    assert (d.min, d.mean, d.median, d.max) == (60, pytest.approx(430), pytest.approx(450), 900)
    assert d.p95 == pytest.approx(825)
    assert d.stddev == pytest.approx(math.sqrt(88100))


def test_mttr_on_finish_order(store: Store) -> None:
    w = one(report(store).workflows, workflow="build")
    assert w.recoveries == 2
    assert w.mttr_mean == pytest.approx(5040) and w.mttr_median == pytest.approx(5040)


def test_first_pass_time_lost_and_reruns(store: Store) -> None:
    w = one(report(store).workflows, workflow="build")
    assert w.first_pass_success_rate == pytest.approx(0.4)
    assert (w.time_lost_failed, w.time_lost_reruns) == (420, 600)
    assert w.reruns == 1 and w.rerun_rate == pytest.approx(1 / 6)
    assert w.queue_time_total == 180 and w.queue_time_median == 20


def test_project_overview(store: Store) -> None:
    r = report(store)
    p = one(r.projects, project_slug=SLUG)
    assert p.project == "acme" and p.default_branch == "main" and p.branch == "main"
    assert p.pipelines == 6 and p.runs == 7
    assert p.success_rate == pytest.approx(0.5)
    assert p.duration_median == pytest.approx(450)
    assert p.mttr_mean == pytest.approx(5040) and p.time_to_green_median == pytest.approx(5040)
    assert p.job_runs == 7  # executions only: the blocked deploy never ran, the approval is a wait
    assert p.queue_time_median == 20
    assert p.flaky_jobs == 1
    assert {k: v for k, v in p.queue_histogram.items() if v} == {
        "5s-10s": 1,
        "10s-30s": 3,
        "30s-1m": 2,
        "1m-2m": 1,
    }
    # P8 has no branch at all: outside default-branch metrics, and said so
    assert any("1 run(s) in the window have no branch" in w for w in r.warnings)


# -- job metrics and flaky jobs --------------------------------------------------------------------------


def test_job_metrics_count_executions_only(store: Store) -> None:
    r = report(store)
    test = one(r.jobs, workflow="build", job="test")
    assert test.runs == 7
    assert (test.successful_runs, test.failed_runs) == (4, 2)  # infrastructure_fail counts as failed
    assert test.failure_rate == pytest.approx(2 / 6)  # the cancelled run is left out
    assert test.duration_p50 == pytest.approx(445)
    assert test.duration_p95 == pytest.approx(590 + 270 * 0.85)
    assert test.queue_time_p50 == 20
    assert test.queue_time_p95 == pytest.approx(40 + 20 * 0.7)
    assert [j.job for j in r.jobs] == ["test"]  # the blocked deploy never ran; approvals are waits


def test_flaky_job_on_rerun_of_same_commit(store: Store) -> None:
    flaky = report(store).flaky_jobs
    assert len(flaky) == 1
    f = flaky[0]
    assert (f.project_slug, f.workflow, f.job) == (SLUG, "build", "test")
    assert (f.flaky_commits, f.times_flaked, f.commits) == (1, 1, ["c2"])
    assert f.last_flaked == "2026-11-01T12:30:00Z"


# -- branches and windows ------------------------------------------------------------------------------


def test_all_branches(store: Store) -> None:
    r = report(store, branch=ALL_BRANCHES)
    w = one(r.workflows, workflow="build")
    assert w.branch is None
    assert w.runs == 9  # P8 has no branch: only "all branches" counts it
    assert w.success_rate == pytest.approx(4 / 8)
    assert w.recoveries == 2  # feature/x never recovered; runs are never paired across branches
    p = one(r.projects, project_slug=SLUG)
    assert p.branch is None and p.runs_without_branch == 1
    assert not r.warnings


def test_named_branch(store: Store) -> None:
    w = one(report(store, branch="feature/x").workflows, workflow="build")
    assert (w.runs, w.success_rate, w.mttr_mean, w.mttr_median) == (1, 0.0, None, None)
    assert w.duration.count == 1 and w.duration.median == 180 and w.duration.stddev == 0
    assert (w.queue_time_total, w.queue_time_median) == (30, 30)


def test_time_window(store: Store) -> None:
    r = report(store, since=at(2), until=at(3))
    w = one(r.workflows, workflow="build")
    assert w.runs == 3  # W3 W4 W5
    assert w.success_rate == pytest.approx(0.5)
    assert w.days == 1 and w.throughput == 3
    assert w.mttr_mean == 7980
    assert (r.since, r.until) == ("2026-11-02T00:00:00Z", "2026-11-03T00:00:00Z")
    assert r.flaky_jobs == []  # the flaky rerun was on 11-01


def test_unknown_default_branch_means_all_branches(db_url: str) -> None:
    store = make_store(db_url, infos=None)
    p = one(report(store).projects, project_slug=SLUG)
    assert p.default_branch is None and p.branch is None and p.runs == 9
    store.close()


# -- trends, failures, delivery, paths, serialisation ---------------------------------------------------


def test_daily_trends(store: Store) -> None:
    r = report(store)
    assert r.bucket == "day"
    points = [(p.period, p.runs, p.success_rate, p.duration_median) for p in r.trends]
    assert points == [
        ("2026-11-01", 3, pytest.approx(2 / 3), 600),
        ("2026-11-02", 3, 0.5, 120),
        ("2026-11-03", 1, 0.0, None),
    ]


def test_weekly_trends(store: Store) -> None:
    r = report(store, bucket="week")
    # 2026-11-01 is a Sunday: its week starts on Monday 10-26; 11-02 and 11-03 fall in the next
    assert [(p.period, p.runs) for p in r.trends] == [("2026-10-26", 3), ("2026-11-02", 4)]


def test_recent_failures_newest_first(store: Store) -> None:
    failures = report(store).recent_failures
    assert [(f.workflow, f.status, f.commit, f.pipeline_number) for f in failures] == [
        ("build", "error", "c3", 3),
        ("build", "failed", "c2", 2),
    ]
    assert failures[1].subject == "Break things" and failures[1].author == "alice"


def test_delivery_from_the_deploy_pattern(store: Store) -> None:
    (d,) = report(store).delivery
    assert d.deploy_workflows == ["build"]  # its job "deploy" matches
    assert (d.deploy_runs, d.deployments, d.failed_deploys) == (7, 3, 2)
    assert d.change_failure_rate == pytest.approx(2 / 5)
    assert d.deployment_frequency == pytest.approx(3 / 30)
    assert d.lead_time_median == 900 and d.time_to_restore_mean == pytest.approx(5040)
    assert report(store, deploy_pattern="^release$").delivery == []


def test_critical_path_and_rerun_causes(store: Store) -> None:
    r = report(store)
    (path,) = r.critical_paths
    assert (path.workflow, path.workflow_id, [s.job for s in path.jobs]) == ("build", "W5", ["test"])
    (cause,) = r.rerun_causes
    assert (cause.workflow, cause.kind, cause.reruns, cause.top_failed_jobs) == (
        "build",
        "whole",
        1,
        ["test"],
    )


def test_report_serialises_to_json_with_definitions(store: Store) -> None:
    data = json.loads(report(store).to_json())
    assert data["generated_at"] == "2026-11-10T00:00:00Z"
    assert data["workflows"][0]["duration"]["median"] == pytest.approx(450)
    assert data["projects"][0]["queue_histogram"]["10s-30s"] == 3
    for key in ("projects", "workflows", "jobs", "flaky_jobs", "trends", "recent_failures", "delivery"):
        assert key in data
    assert data["definitions"]["success_rate"] == "Insights: successful runs / (all runs - cancelled runs)."


def test_empty_store(tmp_path: Any) -> None:
    empty = open_store(f"sqlite:///{tmp_path / 'empty.db'}")
    r = report(empty)
    assert (r.projects, r.workflows, r.jobs, r.flaky_jobs, r.trends) == ([], [], [], [], [])


# -- the building blocks on their own -------------------------------------------------------------------


def test_recoveries_by_hand() -> None:
    finished = [
        ("success", 10),
        ("failed", 110),  # red from 110
        ("failed", 210),  # still red
        ("success", 400),  # green at 400: 290
        ("error", 505),  # red from 505
        ("canceled", 601),
        ("success", 725),  # green at 725: 220
        ("failed", 810),  # red, never recovered
    ]
    assert list(recoveries(finished)) == [290, 220]


def test_percentile_by_hand() -> None:
    assert percentile([], 0.5) is None
    assert percentile([7], 0.95) == 7
    assert percentile([1, 2, 3, 4], 0.5) == 2.5
    assert percentile(list(range(1, 101)), 0.95) == pytest.approx(95.05)


def test_a_late_failure_never_gives_a_negative_mttr(db_url: str) -> None:
    """D1 fails two days after its creation (an approval waited), after D2 had already succeeded.

      D1 created 11-01 10:00, failed  at 11-03 10:00
      D2 created 11-01 12:00, success at 11-01 12:10
      D3 created 11-02 09:00, success at 11-03 12:00
    In created order D2 would "recover" D1 at -165,000 s; in finish order D2, D1 (red), D3: 7,200 s.
    """
    runs = [
        ("D1", "failed", "11-01 10:00:00", "11-03 10:00:00"),
        ("D2", "success", "11-01 12:00:00", "11-01 12:10:00"),
        ("D3", "success", "11-02 09:00:00", "11-03 12:00:00"),
    ]
    store = open_store(db_url)
    store.ensure_endpoint(SLUG, "acme", "https://circleci.com/gh/acme/api")
    for number, (wid, status, created, stopped) in enumerate(runs, start=1):
        workflows = [wf(wid, status, created, stopped, [], "ship")]
        tree = pipe(f"P{wid}", number, created, "main", f"c{number}", workflows)
        store.save_tree(SLUG, tree.data, fetched_at=1.0, is_final=True)
    w = one(report(store).workflows, workflow="ship")
    assert (w.recoveries, w.mttr_mean) == (1, 7200)
    store.close()


def test_time_to_green_waits_for_every_red_workflow() -> None:
    finished = [
        ("A", "success", 50),
        ("A", "failed", 100),  # red from 100
        ("B", "failed", 150),  # still red
        ("A", "success", 200),  # B is still red
        ("C", "success", 250),  # C was never red: changes nothing
        ("B", "success", 300),  # all green at 300: 200
        ("C", "error", 400),  # red from 400, never cleared
    ]
    assert list(greens(finished)) == [200]
