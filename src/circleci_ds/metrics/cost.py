"""What CI costs, in credits, computed in SQL in the store (SQLite and PostgreSQL, one code path).

Definitions (texts in circleci_ds.metrics.definitions):
- Source: the organisation's usage export (`usage_runs`, one row per job run) when it has rows in the
  window, else an **estimate** from the job facts: credits per minute of the job's resource class
  (circleci_ds.derive.credit_rates) x duration in minutes x parallelism. Estimated figures say so.
- Credits of a run = TOTAL_CREDITS - USER_CREDITS (user credits are seat charges, shown apart).
- Window: usage rows by when the job started (else queued, else its run day); job facts follow their
  workflow run, as in the other metrics. Every branch unless a branch is asked for.
- Lost credits: runs that failed (failed, infrastructure_fail, timedout, terminated-unknown); runs in
  reruns (workflow runs with a rerun index above 0); failed runs of flaky jobs on their flaky commits
  (circleci_ds.metrics.ci); jobs that failed only on flaky tests (circleci_ds.metrics.tests). A usage row
  meets the job facts on its workflow id and job name, so the last three need the project collected.
- Cost per successful default-branch pipeline: credits on a project's default branch / its
  default-branch pipelines in the window whose every workflow's last run succeeded.
- Right-sizing (usage export only; utilisation is sampled there): per project, workflow, job and
  resource class with at least `min_runs` runs whose utilisation was sampled: oversized when the p95
  of the maximum CPU and of the maximum RAM are both at most `oversized_pct`, with the next smaller
  class of its family suggested and the credits it would have saved (the group's credits x (1 - the
  smaller class's rate / its rate), run times assumed unchanged); starved when the median of the
  maximum CPU is at least `starved_pct`. Oversized groups whose class has no smaller one are not listed.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from sqlalchemy import (
    Connection,
    Double,
    Integer,
    Text,
    and_,
    case,
    cast,
    func,
    inspect,
    literal,
    null,
    select,
    tuple_,
)
from sqlalchemy.sql import ColumnElement, Select, Subquery

from circleci_ds.derive.credit_rates import CreditRates, shipped_rates
from circleci_ds.derive.facts import JOB_FAILED, default_branches
from circleci_ds.metrics import ci, tests
from circleci_ds.metrics.sqlstats import count_if, floor_int, percentiles, sum_if
from circleci_ds.metrics.window import ALL_BRANCHES, Window
from circleci_ds.store import Store
from circleci_ds.store import schema as s
from circleci_ds.store.facts_store import project_infos
from circleci_ds.times import WEEK, iso, week_start

USAGE = "usage-export"
ESTIMATE = "estimate"
U = s.usage_runs
J = s.job_runs
W = s.workflow_runs


@dataclass(frozen=True)
class Thresholds:
    """Right-sizing: report options --rightsize-min-runs, --oversized-pct, --starved-pct."""

    min_runs: int = 5
    oversized_pct: float = 40.0
    starved_pct: float = 95.0


@dataclass(frozen=True)
class CostOptions:
    rates: CreditRates = field(default_factory=shipped_rates)
    thresholds: Thresholds = Thresholds()


@dataclass
class ProjectCost:
    project_slug: str | None  # null: a project of the usage data outside the fixture
    project: str | None  # the usage data's project name (the slug's last part for estimates)
    in_fixture: bool
    runs: int
    credits: float
    user_credits: float | None
    default_branch_credits: float | None
    successful_default_pipelines: int
    cost_per_successful_default_pipeline: float | None


@dataclass
class WorkflowCost:
    project_slug: str | None
    project: str | None
    workflow: str | None
    runs: int
    credits: float


@dataclass
class JobCost:
    project_slug: str | None
    project: str | None
    workflow: str | None
    job: str | None
    runs: int
    credits: float


@dataclass
class BranchCost:
    project_slug: str | None
    project: str | None
    branch: str | None
    runs: int
    credits: float


@dataclass
class ResourceClassCost:
    resource_class: str | None
    runs: int
    credits: float


@dataclass
class WeekCost:
    week: str  # the Monday starting it, YYYY-MM-DD
    project_slug: str | None
    project: str | None
    credits: float


@dataclass
class LostCredits:
    failed: float
    reruns: float
    flaky_jobs: float
    flaky_tests: float


@dataclass
class Rightsizing:
    project_slug: str | None
    project: str | None
    workflow: str | None
    job: str | None
    resource_class: str | None
    suggested_class: str | None  # null when starved
    verdict: str  # oversized | starved
    runs: int  # runs whose utilisation was sampled
    credits: float  # every run of the group in the window
    saved_credits: float | None  # null when starved or a rate is unknown
    max_cpu_p95: float
    max_ram_p95: float
    max_cpu_median: float


@dataclass
class CostReport:
    source: str  # usage-export | estimate
    estimated: bool
    branch: str  # "*" (every branch) or the branch asked for
    scope: str  # the line shown above every cost table
    credits: float
    user_credits: float | None  # null for estimates
    runs: int
    unpriced_runs: int  # estimate: runs of a resource class without a known rate, or without a duration
    default_branch_share: float | None
    cost_per_successful_default_pipeline: float | None
    rates: dict[str, str] | None  # estimate: the table's date and source
    thresholds: dict[str, float]
    by_project: list[ProjectCost]
    by_workflow: list[WorkflowCost]
    by_job: list[JobCost]
    by_branch: list[BranchCost]
    by_resource_class: list[ResourceClassCost]
    by_week: list[WeekCost]
    lost: LostCredits
    rightsizing: list[Rightsizing]
    notes: list[str]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# -- the runs that cost: one shape for both sources ------------------------------------------------


@dataclass(frozen=True)
class CostScope:
    since: float
    until: float
    branch: str | None  # None: every branch
    endpoints: dict[str, str]  # slug -> native, the projects in scope
    defaults: dict[str, str | None]
    whole_org: bool  # no --project: usage rows of projects outside the fixture count too

    def ci_scope(self) -> ci.Scope:
        window = Window(self.since, self.until, ALL_BRANCHES)
        return ci.Scope(window, self.endpoints, self.defaults, "week", re.compile(""))


def has_usage_table(conn: Connection) -> bool:
    return bool(inspect(conn).has_table(U.name))


def usage_source(conn: Connection, scope: CostScope) -> bool:
    """Whether usage rows exist for the window (and the projects asked for), on any branch: a branch
    without rows costs nothing, it is not estimated."""
    if not has_usage_table(conn):
        return False
    anywhere = replace(scope, branch=None)
    found = conn.execute(select(U.c.job_run_id).where(_usage_where(anywhere)).limit(1)).first()
    return found is not None


def _usage_at() -> ColumnElement[Any]:
    return func.coalesce(U.c.started_at, U.c.queued_at, U.c.run_day)


def _usage_where(scope: CostScope) -> ColumnElement[bool]:
    at = _usage_at()
    conditions = [at >= scope.since, at < scope.until]
    if not scope.whole_org:
        conditions.append(U.c.project_slug.in_(list(scope.endpoints)))
    if scope.branch is not None:
        conditions.append(U.c.branch == scope.branch)
    return and_(*conditions)


def _is_default(slug: ColumnElement[Any], branch: ColumnElement[Any], scope: CostScope) -> ColumnElement[Any]:
    """1 on the project's default branch, 0 off it, null when the default branch is unknown."""
    known = {e: b for e, b in scope.defaults.items() if b}
    if not known:
        return cast(null(), Integer)
    on = [(and_(slug == e, branch == b), 1) for e, b in known.items()]
    return case(*on, (slug.in_(list(known)), 0), else_=null())


def usage_rows(scope: CostScope) -> Subquery:
    c = U.c
    return (
        select(
            c.project_slug.label("project_slug"),
            c.project_name.label("project"),
            c.workflow_id.label("workflow_id"),
            c.workflow_name.label("workflow"),
            c.job_name.label("job"),
            c.branch.label("branch"),
            c.resource_class.label("resource_class"),
            c.status.label("status"),
            _usage_at().label("at"),
            (func.coalesce(c.total_credits, 0.0) - func.coalesce(c.user_credits, 0.0)).label("credits"),
            c.user_credits.label("user_credits"),
            _is_default(c.project_slug, c.branch, scope).label("is_default"),
        )
        .where(_usage_where(scope))
        .subquery("cost_runs")
    )


def rate_of(resource_class: ColumnElement[Any], rates: CreditRates) -> ColumnElement[Any]:
    """Credits per minute of the class, null when the table has none."""
    return case(*[(resource_class == name, literal(r)) for name, r in rates.per_minute.items()], else_=null())


def estimated_rows(scope: CostScope, rates: CreditRates) -> Subquery:
    c = J.c
    conditions = [
        c.endpoint.in_(list(scope.endpoints)),
        c.workflow_created >= scope.since,
        c.workflow_created < scope.until,
        c.executed.is_(True),
    ]
    if scope.branch is not None:
        conditions.append(c.branch == scope.branch)
    credits = rate_of(c.resource_class, rates) * c.duration / 60.0 * func.coalesce(c.parallelism, 1)
    default = case((c.is_default_branch.is_(True), 1), (c.is_default_branch.is_(False), 0), else_=null())
    return (
        select(
            c.endpoint.label("project_slug"),
            cast(null(), Text).label("project"),
            c.workflow_id.label("workflow_id"),
            c.workflow_name.label("workflow"),
            c.name.label("job"),
            c.branch.label("branch"),
            c.resource_class.label("resource_class"),
            c.status.label("status"),
            c.workflow_created.label("at"),
            credits.label("credits"),
            cast(null(), Double).label("user_credits"),
            default.label("is_default"),
        )
        .where(*conditions)
        .subquery("cost_runs")
    )


# -- the report ------------------------------------------------------------------------------------


def compute_cost(
    store: Store,
    *,
    project: str | None,
    since: float,
    until: float,
    branch: str | None,
    options: CostOptions | None = None,
) -> CostReport:
    """Cost over [since, until): `branch` None or "*" covers every branch."""
    options = options or CostOptions()
    # built before the snapshot: it reads the store's project infos on a connection of its own
    flaky_tests = tests.flaky_test_jobs(store, Window(since, until, ALL_BRANCHES, project))
    with store.snapshot() as conn:
        endpoints = {
            slug: native
            for slug, native in conn.execute(select(s.endpoints.c.slug, s.endpoints.c.native))
            if project is None or native == project
        }
        scope = CostScope(
            since=since,
            until=until,
            branch=None if branch in (None, ALL_BRANCHES) else branch,
            endpoints=endpoints,
            defaults=default_branches(project_infos(conn)),
            whole_org=project is None,
        )
        return cost_report(conn, scope, options, flaky_tests)


def cost_report(
    conn: Connection, scope: CostScope, options: CostOptions, flaky_tests: Select[Any]
) -> CostReport:
    usage = usage_source(conn, scope)
    rows = usage_rows(scope) if usage else estimated_rows(scope, options.rates)
    totals = conn.execute(
        select(
            func.count().label("runs"),
            func.coalesce(func.sum(rows.c.credits), 0.0).label("credits"),
            func.sum(rows.c.user_credits).label("user_credits"),
            count_if(rows.c.credits.is_(None)).label("unpriced"),
            func.coalesce(sum_if(rows.c.is_default == 1, rows.c.credits), 0.0).label("on_default"),
            func.coalesce(sum_if(rows.c.is_default.is_not(None), rows.c.credits), 0.0).label("known"),
        )
    ).one()
    projects = by_project(conn, rows, scope)
    successful = sum(p.successful_default_pipelines for p in projects if p.in_fixture)
    spent = sum(p.default_branch_credits or 0.0 for p in projects if p.in_fixture)
    branch_text = "every branch" if scope.branch is None else f"branch {scope.branch}"
    source_text = "the organisation's usage export" if usage else "an ESTIMATE from job details"
    notes = []
    if not usage:
        notes.append(
            "No usage export rows for this window: credits are estimated (resource class x duration x "
            f"parallelism, rates of {options.rates.date} from {options.rates.source})."
        )
        if totals.unpriced:
            notes.append(f"{totals.unpriced} job run(s) have no known rate or duration and are not priced.")
    return CostReport(
        source=USAGE if usage else ESTIMATE,
        estimated=not usage,
        branch=ALL_BRANCHES if scope.branch is None else scope.branch,
        scope=f"Cost: credits from {source_text}, job runs from {iso(scope.since)} to {iso(scope.until)} "
        f"(until excluded), on {branch_text}.",
        credits=float(totals.credits),
        user_credits=float(totals.user_credits) if totals.user_credits is not None else None,
        runs=int(totals.runs),
        unpriced_runs=int(totals.unpriced),
        default_branch_share=float(totals.on_default) / totals.known if totals.known else None,
        cost_per_successful_default_pipeline=spent / successful if successful else None,
        rates=None if usage else {"date": options.rates.date, "source": options.rates.source},
        thresholds=asdict(options.thresholds),
        by_project=projects,
        by_workflow=[WorkflowCost(*r) for r in _grouped(conn, rows, rows.c.workflow)],
        by_job=[JobCost(*r) for r in _grouped(conn, rows, rows.c.workflow, rows.c.job)],
        by_branch=[BranchCost(*r) for r in _grouped(conn, rows, rows.c.branch)],
        by_resource_class=by_resource_class(conn, rows),
        by_week=by_week(conn, rows, scope),
        lost=lost(conn, rows, scope, flaky_tests),
        rightsizing=rightsizing(conn, scope, options) if usage else [],
        notes=notes,
    )


def _credits(rows: Subquery) -> ColumnElement[Any]:
    return func.coalesce(func.sum(rows.c.credits), 0.0)


def _grouped(conn: Connection, rows: Subquery, *keys: Any) -> list[tuple[Any, ...]]:
    """(project_slug, project, *keys, runs, credits) per group, costliest first."""
    groups = (rows.c.project_slug, rows.c.project, *keys)
    query = select(*groups, func.count(), _credits(rows)).group_by(*groups)
    found = [(*r[:-1], float(r[-1])) for r in conn.execute(query)]
    return sorted(found, key=lambda r: (-r[-1], *(str(v) for v in r[:-2])))


def by_project(conn: Connection, rows: Subquery, scope: CostScope) -> list[ProjectCost]:
    c = rows.c
    query = select(
        c.project_slug,
        c.project,
        func.count().label("runs"),
        _credits(rows).label("credits"),
        func.sum(c.user_credits).label("user_credits"),
        sum_if(c.is_default == 1, c.credits).label("on_default"),
    ).group_by(c.project_slug, c.project)
    successful = successful_default_pipelines(conn, scope)
    out = []
    for r in conn.execute(query):
        in_fixture = r.project_slug is not None and r.project_slug in scope.endpoints
        ok = successful.get(r.project_slug, 0) if in_fixture else 0
        on_default = float(r.on_default) if r.on_default is not None else None
        out.append(
            ProjectCost(
                project_slug=r.project_slug,
                project=r.project or (r.project_slug.rsplit("/", 1)[-1] if r.project_slug else None),
                in_fixture=in_fixture,
                runs=r.runs,
                credits=float(r.credits),
                user_credits=float(r.user_credits) if r.user_credits is not None else None,
                default_branch_credits=on_default,
                successful_default_pipelines=ok,
                cost_per_successful_default_pipeline=(on_default or 0.0) / ok if ok else None,
            )
        )
    return sorted(out, key=lambda p: (-p.credits, p.project_slug or "", p.project or ""))


def successful_default_pipelines(conn: Connection, scope: CostScope) -> dict[str, int]:
    """Endpoint -> default-branch pipelines in the window whose every workflow's last run succeeded."""
    last = (
        select(
            W.c.endpoint,
            W.c.pipeline_id,
            W.c.status,
            func.row_number()
            .over(partition_by=(W.c.pipeline_id, W.c.name), order_by=W.c.rerun_index.desc())
            .label("rank"),
        )
        .where(
            W.c.endpoint.in_(list(scope.endpoints)),
            W.c.created >= scope.since,
            W.c.created < scope.until,
            W.c.is_default_branch.is_(True),
        )
        .subquery()
    )
    green = (
        select(last.c.endpoint, last.c.pipeline_id)
        .where(last.c.rank == 1)
        .group_by(last.c.endpoint, last.c.pipeline_id)
        .having(count_if(last.c.status != "success") == 0)
        .subquery()
    )
    query = select(green.c.endpoint, func.count()).group_by(green.c.endpoint)
    return {endpoint: n for endpoint, n in conn.execute(query)}


def by_resource_class(conn: Connection, rows: Subquery) -> list[ResourceClassCost]:
    c = rows.c
    query = select(c.resource_class, func.count(), _credits(rows)).group_by(c.resource_class)
    found = [ResourceClassCost(r[0], r[1], float(r[2])) for r in conn.execute(query)]
    return sorted(found, key=lambda r: (-r.credits, r.resource_class or ""))


def by_week(conn: Connection, rows: Subquery, scope: CostScope) -> list[WeekCost]:
    """Credits per project and week (weeks start on Monday, UTC)."""
    origin = week_start(scope.since)
    week = floor_int((rows.c.at - origin) / WEEK, conn.dialect.name).label("week")
    keys = (rows.c.project_slug, rows.c.project)
    query = select(*keys, week, _credits(rows)).group_by(*keys, "week")
    found = [
        WeekCost((iso(origin + r.week * WEEK) or "")[:10], r.project_slug, r.project, float(r[3]))
        for r in conn.execute(query)
    ]
    return sorted(found, key=lambda w: (w.week, -w.credits, w.project_slug or "", w.project or ""))


def lost(conn: Connection, rows: Subquery, scope: CostScope, flaky_tests: Select[Any]) -> LostCredits:
    c = rows.c
    reruns = select(W.c.id).where(W.c.rerun_index > 0)
    pair = tuple_(c.workflow_id, c.job)
    flaky_jobs = ci.flaky_failures(scope.ci_scope())
    r = conn.execute(
        select(
            sum_if(c.status.in_(JOB_FAILED), c.credits),
            sum_if(c.workflow_id.in_(reruns), c.credits),
            sum_if(pair.in_(flaky_jobs), c.credits),
            sum_if(pair.in_(flaky_tests), c.credits),
        )
    ).one()
    return LostCredits(*(float(v or 0.0) for v in r))


# -- right-sizing ------------------------------------------------------------------------------------


def verdict(cpu_p95: float, ram_p95: float, cpu_median: float, thresholds: Thresholds) -> str | None:
    """oversized, starved or None (see the module rules)."""
    if cpu_median >= thresholds.starved_pct:
        return "starved"
    if cpu_p95 <= thresholds.oversized_pct and ram_p95 <= thresholds.oversized_pct:
        return "oversized"
    return None


def saving(credits: float, current: float | None, smaller: float | None) -> float | None:
    """Credits a smaller class would have saved over the same run times."""
    if current is None or smaller is None or current <= 0:
        return None
    return credits * (1.0 - smaller / current)


_KEYS = ("project_slug", "project", "workflow", "job", "resource_class")


def rightsizing(conn: Connection, scope: CostScope, options: CostOptions) -> list[Rightsizing]:
    c, t = U.c, options.thresholds
    keys = [
        c.project_slug.label("project_slug"),
        c.project_name.label("project"),
        c.workflow_name.label("workflow"),
        c.job_name.label("job"),
        c.resource_class.label("resource_class"),
    ]
    sampled = and_(c.max_cpu_pct.is_not(None), c.max_ram_pct.is_not(None))
    credits = func.coalesce(c.total_credits, 0.0) - func.coalesce(c.user_credits, 0.0)
    groups = (
        select(*keys, count_if(sampled).label("n"), func.sum(credits).label("credits"))
        .where(_usage_where(scope))
        .group_by(*keys)
        .having(count_if(sampled) >= t.min_runs)
    )
    counted = {tuple(r[:5]): (r.n, float(r.credits or 0.0)) for r in conn.execute(groups)}
    if not counted:
        return []
    # every group's percentiles in one sort each (a join to the counted groups costs more than it saves)
    samples = select(*keys, c.max_cpu_pct, c.max_ram_pct).where(_usage_where(scope), sampled)
    cpu = percentiles(conn, samples, _KEYS, "max_cpu_pct", (0.5, 0.95))
    ram = percentiles(conn, samples, _KEYS, "max_ram_pct", (0.95,))
    out = []
    for key, (n, spent) in counted.items():
        found = verdict(cpu[key][0.95], ram[key][0.95], cpu[key][0.5], t)
        if found is None:
            continue
        cls = key[4]
        smaller = options.rates.next_smaller(cls) if found == "oversized" else None
        if found == "oversized" and smaller is None:
            continue
        saved = saving(spent, options.rates.rate(cls), options.rates.rate(smaller)) if smaller else None
        out.append(
            Rightsizing(
                project_slug=key[0],
                project=key[1],
                workflow=key[2],
                job=key[3],
                resource_class=cls,
                suggested_class=smaller,
                verdict=found,
                runs=n,
                credits=spent,
                saved_credits=saved,
                max_cpu_p95=cpu[key][0.95],
                max_ram_p95=ram[key][0.95],
                max_cpu_median=cpu[key][0.5],
            )
        )
    return sorted(out, key=lambda r: (r.verdict, -(r.saved_credits or 0.0), -r.credits, *_row_key(r)))


def _row_key(r: Rightsizing) -> tuple[str, ...]:
    return tuple(str(v) for v in (r.project_slug, r.project, r.workflow, r.job, r.resource_class))
