"""Test-level metrics, computed in SQL in the store (SQLite and PostgreSQL, one code path).

Definitions (a test is a classname and name within a project's job name):
- Scope: the test results of jobs read completely (marker `done`) whose workflow was created in
  [since, until); on the measured branch (as for the other metrics: each project's default branch
  by default, `*` for all) for most failed and slowest; flaky tests and time lost ignore the
  branch, as flaky jobs do.
- A result passed when its `result` is success/passed/pass/ok, failed when failure/failed/fail/
  error (case-insensitive); others (skipped, ...) are not runs.
- Flaky test: it both passed and failed on the same commit in the window. `commits`: those commits
  (latest failure first); `times_flaked`: its failed results on those commits; `last_flaked`: when
  the latest of them stopped; `web_url` and `message`: that failing job's URL and the failure's
  message excerpt. Ordered by times_flaked, then last_flaked, descending.
- Most failed: runs = passed + failed results, failures, failure_rate = failures / runs; ordered by
  failures descending, then runs ascending (higher rate first).
- Slowest: p50 and p95 (linear between closest ranks, as the other metrics: metrics.sqlstats) of
  the run_time in seconds of passed and failed results; ordered by p95, then p50, descending.
- Time lost to flaky tests, per project: jobs that failed and each of whose failed tests passed on
  the same commit in a job that stopped later; their duration summed.
- Test counts over time: per project, job name and UTC day, the jobs read and the fewest and most
  tests one of them had (tests added or lost show as a change between days).
- Jobs not read: the jobs of the window (any branch) whose test results collection left unread
  on purpose, their job name having stored none lately (marker `skipped`).
Ties are broken by project, job, classname, name.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

from sqlalchemy import ColumnElement, Select, and_, case, exists, false, func, or_, select, true
from sqlalchemy.orm import aliased

from circleci_ds.derive.facts import default_branches
from circleci_ds.metrics.sqlstats import percentiles
from circleci_ds.metrics.window import ALL_BRANCHES, Window
from circleci_ds.store import Store
from circleci_ds.store import schema as s
from circleci_ds.store.testresults import Marker
from circleci_ds.times import date_text, iso

__all__ = ["ALL_BRANCHES", "TestsReport", "Window", "compute_tests"]

LIMIT = 25
COMMITS_SHOWN = 10
_BATCH = 200  # candidate tests whose percentiles are computed per query


@dataclass
class TestRef:
    """Which test: the fields every test metric's item starts with."""

    __test__ = False

    project_slug: str
    job: str
    classname: str
    name: str
    file: str


@dataclass
class FlakyTest(TestRef):
    flaky_commits: int
    commits: list[str]
    times_flaked: int
    last_flaked: str | None
    web_url: str | None
    message: str | None


@dataclass
class FailedTest(TestRef):
    runs: int
    failures: int
    failure_rate: float


@dataclass
class SlowTest(TestRef):
    runs: int
    run_time_p50: float
    run_time_p95: float


@dataclass
class FlakyTimeLost:
    project_slug: str
    jobs: int
    seconds: float


@dataclass
class TestCountPoint:
    __test__ = False

    project_slug: str
    job: str
    day: str
    jobs: int
    tests_min: int
    tests_max: int


@dataclass
class TestsReport:
    __test__ = False

    flaky: list[FlakyTest] = field(default_factory=list)
    most_failed: list[FailedTest] = field(default_factory=list)
    slowest: list[SlowTest] = field(default_factory=list)
    time_lost: list[FlakyTimeLost] = field(default_factory=list)
    counts: list[TestCountPoint] = field(default_factory=list)
    # Jobs whose test results were not read on purpose (their job name stored none lately; see
    # circleci_ds.derive.tests.reads_tests): `collect --tests all` reads them.
    jobs_not_read: int = 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# -- scope --------------------------------------------------------------------------------------------


class _Scope:
    """SQL conditions on test_jobs for a window."""

    def __init__(self, store: Store, window: Window) -> None:
        self.window = window
        self.defaults = default_branches(store.project_infos())
        self.natives = _natives(store)

    def timely(self, t: Any, state: str = Marker.DONE) -> ColumnElement[bool]:
        w = self.window
        conditions = [t.state == state]
        if w.since is not None:
            conditions.append(t.created_at >= w.since)
        if w.until is not None:
            conditions.append(t.created_at < w.until)
        if w.project is not None:
            slugs = [slug for slug, native in self.natives.items() if native == w.project]
            conditions.append(t.endpoint.in_(slugs) if slugs else false())
        return and_(*conditions)

    def measured(self, t: Any) -> ColumnElement[bool]:
        """Timely and on the measured branch."""
        branch = self.window.branch
        if branch == ALL_BRANCHES:
            return self.timely(t)
        if branch is not None:
            return and_(self.timely(t), t.branch == branch)
        known = {slug: b for slug, b in self.defaults.items() if b is not None}
        on_default = [and_(t.endpoint == slug, t.branch == b) for slug, b in known.items()]
        unknown = t.endpoint.not_in(list(known)) if known else true()
        return and_(self.timely(t), or_(unknown, *on_default))


def _natives(store: Store) -> dict[str, str]:
    e = s.endpoints.c
    with store.engine.connect() as conn:
        return {slug: native for slug, native in conn.execute(select(e.slug, e.native))}


def _refs(store: Store, case_refs: Iterable[int]) -> dict[int, TestRef]:
    c = s.test_cases.c
    wanted = list(set(case_refs))
    out: dict[int, TestRef] = {}
    with store.engine.connect() as conn:
        for start in range(0, len(wanted), 500):
            query = select(c.ref, c.endpoint, c.job_name, c.classname, c.name, c.file).where(
                c.ref.in_(wanted[start : start + 500])
            )
            for r in conn.execute(query):
                out[r.ref] = TestRef(r.endpoint, r.job_name, r.classname, r.name, r.file)
    return out


def _key(ref: TestRef) -> tuple[str, str, str, str]:
    return ref.project_slug, ref.job, ref.classname, ref.name


# -- the metrics --------------------------------------------------------------------------------------


def compute_tests(store: Store, window: Window, limit: int = LIMIT) -> TestsReport:
    scope = _Scope(store, window)
    return TestsReport(
        flaky=flaky_tests(store, scope, limit),
        most_failed=most_failed(store, scope, limit),
        slowest=slowest(store, scope, limit),
        time_lost=time_lost(store, scope),
        counts=count_points(store, scope),
        jobs_not_read=jobs_not_read(store, scope),
    )


def jobs_not_read(store: Store, scope: _Scope) -> int:
    """Jobs of the window whose test results were left unread (marker `skipped`)."""
    t = s.test_jobs.c
    query = select(func.count()).select_from(s.test_jobs).where(scope.timely(t, Marker.SKIPPED))
    with store.engine.connect() as conn:
        return int(conn.execute(query).scalar_one())


def _flaky_failures(scope: _Scope) -> Select[Any]:
    """Failed results (case, job) in the window whose test passed on the same commit in the window."""
    r, t = s.test_results.c, s.test_jobs.c
    r2, t2 = aliased(s.test_results).c, aliased(s.test_jobs)
    passed_too = exists().where(
        t2.c.endpoint == t.endpoint,
        t2.c.commit_sha == t.commit_sha,
        t2.c.job_name == t.job_name,
        scope.timely(t2.c),
        r2.job_ref == t2.c.ref,
        r2.case_ref == r.case_ref,
        r2.outcome == 1,
    )
    return (
        select(r.case_ref, t.commit_sha, t.stopped_at, t.created_at, t.web_url, r.message, t.ref)
        .join(s.test_jobs, t.ref == r.job_ref)
        .where(r.outcome == 0, t.commit_sha.is_not(None), scope.timely(t), passed_too)
    )


def flaky_tests(store: Store, scope: _Scope, limit: int = LIMIT) -> list[FlakyTest]:
    rows = _flaky_failures(scope).subquery()
    when = func.coalesce(rows.c.stopped_at, rows.c.created_at)
    totals = select(
        rows.c.case_ref,
        func.count().label("times"),
        func.count(rows.c.commit_sha.distinct()).label("commits"),
        func.max(when).label("last"),
    ).group_by(rows.c.case_ref)
    with store.engine.connect() as conn:
        found = list(conn.execute(totals).all())
    refs = _refs(store, (f.case_ref for f in found))
    found.sort(key=lambda f: (-f.times, -(f.last or 0), _key(refs[f.case_ref])))
    top = found[:limit]
    latest = _latest_failures(store, scope, [f.case_ref for f in top])
    out = []
    for f in top:
        ref = refs[f.case_ref]
        commits, web_url, message = latest.get(f.case_ref, ([], None, None))
        out.append(
            FlakyTest(
                ref.project_slug,
                ref.job,
                ref.classname,
                ref.name,
                ref.file,
                flaky_commits=f.commits,
                commits=commits[:COMMITS_SHOWN],
                times_flaked=f.times,
                last_flaked=iso(f.last),
                web_url=web_url,
                message=message,
            )
        )
    return out


def _latest_failures(
    store: Store, scope: _Scope, case_refs: list[int]
) -> dict[int, tuple[list[str], str | None, str | None]]:
    """Per test: its flaky commits latest first, and the latest flaky failure's job URL and message."""
    if not case_refs:
        return {}
    rows = _flaky_failures(scope).where(s.test_results.c.case_ref.in_(case_refs)).subquery()
    when = func.coalesce(rows.c.stopped_at, rows.c.created_at)
    query = select(rows.c.case_ref, rows.c.commit_sha, rows.c.web_url, rows.c.message).order_by(
        rows.c.case_ref, when.desc(), rows.c.ref.desc()
    )
    out: dict[int, tuple[list[str], str | None, str | None]] = {}
    with store.engine.connect() as conn:
        for r in conn.execute(query):
            if r.case_ref not in out:
                out[r.case_ref] = ([], r.web_url, r.message)
            commits = out[r.case_ref][0]
            if r.commit_sha not in commits:
                commits.append(r.commit_sha)
    return out


def most_failed(store: Store, scope: _Scope, limit: int = LIMIT) -> list[FailedTest]:
    r, t = s.test_results.c, s.test_jobs.c
    failing = (
        select(r.case_ref)
        .join(s.test_jobs, t.ref == r.job_ref)
        .where(r.outcome == 0, scope.measured(t))
        .distinct()
    )
    query = (
        select(
            r.case_ref,
            func.sum(case((r.outcome == 0, 1), else_=0)).label("failures"),
            func.count(r.outcome).label("runs"),
        )
        .join(s.test_jobs, t.ref == r.job_ref)
        .where(r.case_ref.in_(failing), scope.measured(t))
        .group_by(r.case_ref)
    )
    with store.engine.connect() as conn:
        found = list(conn.execute(query).all())
    refs = _refs(store, (f.case_ref for f in found))
    found.sort(key=lambda f: (-f.failures, f.runs, _key(refs[f.case_ref])))
    return [
        FailedTest(*_fields(refs[f.case_ref]), f.runs, int(f.failures), failure_rate=f.failures / f.runs)
        for f in found[:limit]
    ]


def _fields(ref: TestRef) -> tuple[str, str, str, str, str]:
    return ref.project_slug, ref.job, ref.classname, ref.name, ref.file


def slowest(store: Store, scope: _Scope, limit: int = LIMIT) -> list[SlowTest]:
    """Exact percentiles for the tests that can make the list: in descending order of their longest
    run (an upper bound of p95), until the next longest run cannot beat the list's last p95."""
    r = s.test_results.c
    timed = _timed_runs(scope)
    bounds = timed.with_only_columns(
        r.case_ref, func.max(r.run_time).label("top"), func.count().label("runs")
    ).group_by(r.case_ref)
    with store.engine.connect() as conn:
        candidates = sorted(conn.execute(bounds).all(), key=lambda c: -c.top)
    best: list[tuple[float, float, int, int]] = []  # (p95, p50, runs, case_ref)
    for start in range(0, len(candidates), _BATCH):
        batch = candidates[start : start + _BATCH]
        if len(best) >= limit and sorted(best, reverse=True)[limit - 1][0] > batch[0].top:
            break
        runs = {c.case_ref: c.runs for c in batch}
        source = timed.where(r.case_ref.in_(list(runs)))
        with store.engine.connect() as conn:
            found = percentiles(conn, source, ("case_ref",), "run_time", (0.5, 0.95))
        best.extend((q[0.95], q[0.5], runs[ref], ref) for (ref,), q in found.items())
    refs = _refs(store, (b[3] for b in best))
    best.sort(key=lambda b: (-b[0], -b[1], _key(refs[b[3]])))
    top = best[:limit]
    return [SlowTest(*_fields(refs[ref]), n, run_time_p50=p50, run_time_p95=p95) for p95, p50, n, ref in top]


def _timed_runs(scope: _Scope) -> Select[Any]:
    """(case_ref, run_time) of the measured passed and failed results that have a run time."""
    r, t = s.test_results.c, s.test_jobs.c
    return (
        select(r.case_ref, r.run_time)
        .join(s.test_jobs, t.ref == r.job_ref)
        .where(r.outcome.is_not(None), r.run_time.is_not(None), scope.measured(t))
    )


def _failed_only_on_flaky_tests(scope: _Scope) -> ColumnElement[bool]:
    """test_jobs that failed and each of whose failed tests passed on the same commit in a job that
    stopped later (the jobs of "time lost to flaky tests")."""
    t = s.test_jobs.c
    passes, t2 = aliased(s.test_results), aliased(s.test_jobs)
    r2 = passes.c
    f, g = aliased(s.test_results).c, aliased(s.test_results).c
    later_pass = (
        exists()
        .where(
            t2.c.endpoint == t.endpoint,
            t2.c.commit_sha == t.commit_sha,
            t2.c.job_name == t.job_name,
            t2.c.stopped_at > t.stopped_at,
            scope.timely(t2.c),
            r2.job_ref == t2.c.ref,
            r2.case_ref == f.case_ref,
            r2.outcome == 1,
        )
        .correlate_except(t2, passes)
    )  # the job and the failure come from the enclosing queries
    failed = exists().where(g.job_ref == t.ref, g.outcome == 0)
    unrecovered = exists().where(f.job_ref == t.ref, f.outcome == 0, ~later_pass)
    return and_(scope.timely(t), t.commit_sha.is_not(None), t.stopped_at.is_not(None), failed, ~unrecovered)


def time_lost(store: Store, scope: _Scope) -> list[FlakyTimeLost]:
    t = s.test_jobs.c
    query = (
        select(t.endpoint, func.count().label("jobs"), func.sum(t.duration).label("seconds"))
        .where(_failed_only_on_flaky_tests(scope))
        .group_by(t.endpoint)
        .order_by(t.endpoint)
    )
    with store.engine.connect() as conn:
        rows = conn.execute(query).all()
    return [FlakyTimeLost(row.endpoint, row.jobs, float(row.seconds or 0.0)) for row in rows]


def flaky_test_jobs(store: Store, window: Window) -> Select[Any]:
    """(workflow_id, job_name) of the jobs that failed only on flaky tests in the window (any branch)."""
    t = s.test_jobs.c
    scope = _Scope(store, Window(window.since, window.until, ALL_BRANCHES, window.project))
    return select(t.workflow_id, t.job_name).where(_failed_only_on_flaky_tests(scope))


def count_points(store: Store, scope: _Scope) -> list[TestCountPoint]:
    t = s.test_jobs.c
    query = (
        select(t.endpoint, t.job_name, t.created_at, t.tests)
        .where(scope.measured(t), t.created_at.is_not(None))
        .order_by(t.endpoint, t.job_name, t.created_at)
    )
    points: dict[tuple[str, str, str], list[int]] = defaultdict(list)
    with store.engine.connect() as conn:
        for row in conn.execute(query):
            points[row.endpoint, row.job_name or "", date_text(row.created_at)].append(row.tests)
    return [
        TestCountPoint(slug, job, d, len(counts), min(counts), max(counts))
        for (slug, job, d), counts in sorted(points.items())
    ]
