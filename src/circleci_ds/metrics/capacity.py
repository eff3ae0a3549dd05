"""Capacity: how many job runs ran at once, computed in SQL in the store (SQLite and PostgreSQL).

Definitions (texts in circleci_ds.metrics.definitions):
- A job run occupies [started_at, stopped_at) of an executed build job (one run per job whatever its
  parallelism); jobs follow their workflow run into the window, on every branch. Runs without both
  times, or that stop before they start, are left out.
- Concurrency at a moment = the runs occupying it; per resource class and for the organisation (all
  classes). It comes from an event sweep: +1 at each start, -1 at each stop, a running sum by window
  function in start-then-stop order (a stop and a start at the same moment do not overlap), with a
  0-event at every UTC hour so each hour knows the level it starts at. Only hourly aggregates leave
  the database, so memory grows with the window's hours, never with the runs.
- Peak: the highest concurrency. Daily peak: the highest of a UTC day; p95 of daily peaks over every
  day of the window (idle days count, with 0), interpolated between ranks.
- Minutes at cap: time during which concurrency was at or above the plan's concurrency cap
  (--concurrency-cap, or the fixture's `concurrency-cap` config entry); per class, the time that class
  alone was at or above it.
- Queue time while at the cap: the queue times (started - queued) of the jobs queued while the
  organisation's concurrency was at or above the cap, against those queued below it; p50 and p95.
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from typing import Any

from sqlalchemy import Connection, Double, and_, case, cast, func, literal, null, select, true, union_all
from sqlalchemy.sql import ColumnElement, Select

from circleci_ds.metrics.sqlstats import floor_int, percentile, percentiles
from circleci_ds.store import Store
from circleci_ds.store import schema as s
from circleci_ds.times import DAY, day_start, iso

HOUR = 3600.0
ORGANISATION = "*"
J = s.job_runs


@dataclass
class Concurrency:
    resource_class: str | None  # "*": the organisation; None: runs of an unknown class
    peak: int
    p95_daily_peak: float | None
    minutes_at_cap: float | None  # null without a cap


@dataclass
class QueueSplit:
    jobs: int
    p50: float | None
    p95: float | None


@dataclass
class HourPoint:
    hour: str  # ISO start of the UTC hour
    peak: int


@dataclass
class CapacityReport:
    concurrency_cap: int | None
    scope: str
    organisation: Concurrency
    by_resource_class: list[Concurrency]
    queue_at_cap: QueueSplit | None  # null without a cap
    queue_below_cap: QueueSplit | None
    queue_all: QueueSplit
    timeline: list[HourPoint] = field(default_factory=list)  # the organisation's hourly peaks

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class CapacityScope:
    since: float
    until: float
    endpoints: list[str]
    cap: int | None


def compute_capacity(
    store: Store, *, project: str | None, since: float, until: float, cap: int | None
) -> CapacityReport:
    with store.snapshot() as conn:
        endpoints = [
            slug
            for slug, native in conn.execute(select(s.endpoints.c.slug, s.endpoints.c.native))
            if project is None or native == project
        ]
        return capacity_report(conn, CapacityScope(since, until, endpoints, cap))


def _runs(scope: CapacityScope) -> ColumnElement[bool]:
    c = J.c
    return and_(
        c.endpoint.in_(scope.endpoints),
        c.workflow_created >= scope.since,
        c.workflow_created < scope.until,
        c.executed.is_(True),
        c.started.is_not(None),
        c.stopped.is_not(None),
        c.stopped > c.started,
    )


def _levels(scope: CapacityScope, origin: float, hours: int) -> Any:
    """Every event with the concurrency after it (`level`) and the next event's time, per key
    (part 0: the organisation, part 1: one resource class)."""
    c = J.c
    cls = func.coalesce(c.resource_class, "")
    org = literal(ORGANISATION)
    none = cast(null(), Double)
    where = _runs(scope)
    starts = [
        select(literal(p).label("part"), k.label("k"), c.started.label("t"), literal(1).label("d"),
               none.label("q")).where(where)
        for p, k in ((0, org), (1, cls))
    ]  # fmt: skip
    stops = [
        select(literal(p), k, c.stopped, literal(-1), none).where(where) for p, k in ((0, org), (1, cls))
    ]
    queued = select(literal(0), org, c.queued, literal(0), c.queue_time).where(
        where, c.queued.is_not(None), c.queue_time.is_not(None)
    )
    step = select(literal(0).label("h")).cte("hours", recursive=True)
    step = step.union_all(select(step.c.h + 1).where(step.c.h < hours - 1))
    keys = union_all(
        select(literal(0).label("part"), org.label("k")),
        select(literal(1), cls).where(where).distinct(),
    ).subquery("keys")
    marks = select(keys.c.part, keys.c.k, origin + step.c.h * HOUR, literal(0), none).select_from(
        keys.join(step, true())
    )
    events = union_all(*starts, *stops, queued, marks).subquery("events")
    part = (events.c.part, events.c.k)
    order = (events.c.t, events.c.d)
    return select(
        events.c.part,
        events.c.k,
        events.c.t,
        events.c.q,
        func.sum(events.c.d).over(partition_by=part, order_by=order, rows=(None, 0)).label("level"),
        func.lead(events.c.t).over(partition_by=part, order_by=order).label("next_t"),
    ).subquery("levels")


def capacity_report(conn: Connection, scope: CapacityScope) -> CapacityReport:
    origin = day_start(scope.since)
    last_stop = conn.execute(select(func.max(J.c.stopped)).where(_runs(scope))).scalar()
    end = max(scope.until, last_stop or scope.until)
    hours = max(1, math.ceil((end - origin) / HOUR))
    levels = _levels(scope, origin, hours)
    hourly = _hourly(conn, levels, origin, scope.cap)
    days = max(1, math.ceil((scope.until - origin) / DAY))
    stats = {key: _concurrency(key[1], points, days, scope.cap) for key, points in hourly.items()}
    org = stats.pop((0, ORGANISATION), Concurrency(ORGANISATION, 0, 0.0 if days else None, _zero(scope.cap)))
    classes = sorted(stats.values(), key=lambda x: (-x.peak, x.resource_class or ""))
    queue = _queues(conn, levels, scope.cap)
    timeline = [
        HourPoint(iso(origin + h * HOUR, ms=False) or "", peak)
        for h, (peak, _) in sorted(hourly.get((0, ORGANISATION), {}).items())
    ]
    cap_text = f"cap {scope.cap}" if scope.cap is not None else "no concurrency cap given"
    return CapacityReport(
        concurrency_cap=scope.cap,
        scope=f"Capacity: executed build jobs of workflow runs created from {iso(scope.since)} to "
        f"{iso(scope.until)} (until excluded), every branch; {cap_text}.",
        organisation=org,
        by_resource_class=classes,
        queue_at_cap=queue.get(1) if scope.cap is not None else None,
        queue_below_cap=queue.get(0) if scope.cap is not None else None,
        queue_all=queue["all"],
        timeline=timeline,
    )


def _zero(cap: int | None) -> float | None:
    return None if cap is None else 0.0


def _hourly(
    conn: Connection, levels: Any, origin: float, cap: int | None
) -> dict[tuple[int, str], dict[int, tuple[int, float]]]:
    """(part, key) -> hour index -> (peak, seconds at or above the cap), from the last event of each
    moment (the level that holds until the next event)."""
    hour = floor_int((levels.c.t - origin) / HOUR, conn.dialect.name).label("hour")
    held = levels.c.next_t - levels.c.t
    at_cap = case((levels.c.level >= cap, held), else_=0.0) if cap is not None else literal(0.0)
    query = (
        select(levels.c.part, levels.c.k, hour, func.max(levels.c.level), func.sum(at_cap))
        .where(levels.c.t >= origin, _last_of_moment(levels))
        .group_by(levels.c.part, levels.c.k, "hour")
    )
    out: dict[tuple[int, str], dict[int, tuple[int, float]]] = defaultdict(dict)
    for part, key, h, peak, seconds in conn.execute(query):
        out[(int(part), key)][int(h)] = (int(peak), float(seconds or 0.0))
    return out


def _last_of_moment(levels: Any) -> ColumnElement[bool]:
    return (levels.c.next_t.is_(None)) | (levels.c.next_t > levels.c.t)


def _concurrency(key: str, points: dict[int, tuple[int, float]], days: int, cap: int | None) -> Concurrency:
    daily: dict[int, int] = dict.fromkeys(range(days), 0)
    for h, (peak, _) in points.items():
        if h // 24 < days:
            daily[h // 24] = max(daily[h // 24], peak)
    seconds = sum(at for _, at in points.values())
    return Concurrency(
        resource_class=key if key != "" else None,
        peak=max((p for p, _ in points.values()), default=0),
        p95_daily_peak=percentile(sorted(float(v) for v in daily.values()), 0.95),
        minutes_at_cap=None if cap is None else seconds / 60.0,
    )


def _queues(conn: Connection, levels: Any, cap: int | None) -> dict[Any, QueueSplit]:
    """Queue-time p50/p95 of the jobs queued at (1) and below (0) the cap, and of all ("all")."""
    c = levels.c
    queued = and_(c.part == 0, c.q.is_not(None))
    side = case((c.level >= cap, 1), else_=0) if cap is not None else literal(0)
    source: Select[Any] = select(side.label("side"), c.q.label("q")).where(queued)
    everything: Select[Any] = select(literal(0).label("side"), c.q.label("q")).where(queued)
    counts = {
        int(k): n for k, n in conn.execute(select(source.subquery().c.side, func.count()).group_by("side"))
    }
    split = percentiles(conn, source, ("side",), "q", (0.5, 0.95))
    total = percentiles(conn, everything, ("side",), "q", (0.5, 0.95)).get((0,), {})
    out: dict[Any, QueueSplit] = {
        k: QueueSplit(counts.get(k, 0), split.get((k,), {}).get(0.5), split.get((k,), {}).get(0.95))
        for k in (0, 1)
    }
    out["all"] = QueueSplit(sum(counts.values()), total.get(0.5), total.get(0.95))
    return out
