"""Statistics computed in the database, with SQL that SQLite and PostgreSQL both run (SQLAlchemy Core).

Reusable by any facts table: give a selectable with group columns and a value column.

Rules:
- Percentiles interpolate linearly between the closest ranks (p50 = median): the q-quantile of
  n sorted values v[0..n-1] is v[i] + (v[i+1] - v[i]) * f where i + f = (n - 1) * q. Quantiles are
  whole percents, so i and f are exact (integer arithmetic in hundredths: p95 of 5 values is
  v[3] + (v[4] - v[3]) * 0.8). Computed with row_number() and count() windows; only the two ranks
  around each quantile leave the database. This module is the one home of that rule: every metric
  (CI, tests) takes its percentiles from here.
- Mean and population standard deviation come from count, sum and sum of squares.
- Sequences (MTTR, time to green) stream ordered rows (`stream`), so memory does not grow with them.
- Integer division of a non-negative value (`floor_int`) is portable: CAST truncates on SQLite,
  rounds on PostgreSQL, hence floor() there.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from typing import Any

from sqlalchemy import Connection, Integer, and_, case, cast, func, or_, select
from sqlalchemy.sql import ColumnElement, Select

Group = tuple[Any, ...]


def floor_int(value: ColumnElement[Any], dialect: str) -> ColumnElement[Any]:
    """floor(value) as an integer, for value >= 0."""
    if dialect == "sqlite":
        return cast(value, Integer)
    return cast(func.floor(value), Integer)


def count_if(condition: ColumnElement[bool]) -> ColumnElement[Any]:
    """Rows where the condition holds (0, not null, when none)."""
    return func.coalesce(func.sum(case((condition, 1), else_=0)), 0)


def sum_if(condition: ColumnElement[bool], value: ColumnElement[Any]) -> ColumnElement[Any]:
    """Sum of value where the condition holds; null when no such row has a value."""
    return func.sum(case((condition, value), else_=None))


def percentiles(
    conn: Connection, source: Select[Any], groups: Sequence[str], value: str, qs: Sequence[float]
) -> dict[Group, dict[float, float]]:
    """Group -> {q: q-quantile of value}; groups without a value are absent.

    `source` is a SELECT that names the group columns and the value column.
    """
    sub = source.subquery()
    keys = [sub.c[g] for g in groups]
    val = sub.c[value]
    ranked = (
        select(
            *keys,
            val.label("v"),
            (func.row_number().over(partition_by=keys, order_by=val) - 1).label("rn"),
            # the whole partition, in the same order as rn, so both windows share one sort
            func.count().over(partition_by=keys, order_by=val, rows=(None, None)).label("n"),
        )
        .where(val.is_not(None))
        .subquery()
    )
    # The lower rank of each quantile as the database computes it, returned so both sides agree.
    lows = [((ranked.c.n - 1) * hundredths(q) // 100).label(f"low{i}") for i, q in enumerate(qs)]
    wanted = or_(*[or_(ranked.c.rn == low, ranked.c.rn == low + 1) for low in lows])
    rows = conn.execute(
        select(*[ranked.c[g] for g in groups], ranked.c.v, ranked.c.rn, ranked.c.n, *lows).where(wanted)
    )
    picked: dict[Group, dict[int, float]] = {}
    shape: dict[Group, tuple[int, list[int]]] = {}
    width = len(groups)
    for r in rows:
        group = tuple(r[:width])
        picked.setdefault(group, {})[r.rn] = r.v
        shape[group] = (r.n, list(r[width + 3 :]))
    return {
        g: {q: _interpolate(ranks, shape[g][0], q, int(shape[g][1][i])) for i, q in enumerate(qs)}
        for g, ranks in picked.items()
    }


def hundredths(q: float) -> int:
    """The quantile q as whole hundredths (0.95 -> 95); quantiles are taken at whole percents."""
    percent = round(q * 100)
    if not 0 <= percent <= 100 or abs(q * 100 - percent) > 1e-9:
        raise ValueError(f"a quantile is a whole percent between 0 and 1, not {q!r}")
    return percent


def rank(n: int, q: float) -> tuple[int, float]:
    """The 0-based lower rank of the q-quantile of n values, and the fraction towards the next rank."""
    position = (n - 1) * hundredths(q)
    return position // 100, (position % 100) / 100


def _interpolate(ranks: dict[int, float], n: int, q: float, low: int) -> float:
    _, fraction = rank(n, q)
    high = min(low + 1, n - 1)
    return ranks[low] + (ranks[high] - ranks[low]) * fraction


def percentile(ordered: Sequence[float], q: float) -> float | None:
    """The same quantile over values already sorted in memory (few values: recoveries, tests)."""
    if not ordered:
        return None
    low, fraction = rank(len(ordered), q)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * fraction


def moments(count: int, total: float | None, squares: float | None) -> tuple[float | None, float | None]:
    """(mean, population standard deviation) from count, sum and sum of squares."""
    if not count or total is None or squares is None:
        return None, None
    mean = total / count
    return mean, math.sqrt(max(squares / count - mean * mean, 0.0))


def stream(conn: Connection, query: Select[Any], batch: int = 2000) -> Iterator[Any]:
    """Rows of an ordered query, fetched in batches (a server-side cursor on PostgreSQL)."""
    result = conn.execution_options(yield_per=batch).execute(query)
    yield from result


def all_of(*conditions: ColumnElement[bool] | None) -> ColumnElement[bool]:
    """AND of the conditions that are given."""
    return and_(*[c for c in conditions if c is not None])
