"""Capacity on a hand-made history worked out by hand (SQLite and PostgreSQL), and the event sweep
against an independent computation on random intervals.

Jobs of gh/acme/api (each in its own pipeline), window 11-01 .. 11-03, cap 2:

  A large  11-01 10:00-10:30  queued 09:59:50 (10 s)   org level when queued 0
  B large        10:10-10:20  queued 10:09:00 (60 s)   1
  C medium       10:15-10:45  queued 10:13:00 (120 s)  2 (A, B): at the cap
  D medium       10:30-10:40  queued 10:29:55 (5 s)    2 (A, C): at the cap
  E medium       23:30-11-02 00:30  queued 23:29:30 (30 s)  0

Organisation: 1 from 10:00, 2 from 10:10, 3 from 10:15, 2 from 10:20, 2 at 10:30 (A stops as D starts),
1 from 10:40, 0 from 10:45 -> peak 3; at or above 2 from 10:10 to 10:40 = 30 minutes; daily peaks
11-01 3, 11-02 1 (E runs past midnight) -> p95 1 + 2 x 0.95 = 2.9.
large: peak 2, 10 minutes at 2, daily [2, 0] -> 1.9. medium: peak 2 (10:30-10:40: 10 minutes), daily
[2, 1] -> 1.95.
Queue at the cap C 120, D 5 -> p50 62.5, p95 114.25; below A 10, B 60, E 30 -> p50 30, p95 57;
all five -> p50 30, p95 60 + 60 x 0.8 = 108.
"""

from __future__ import annotations

import math
import tempfile
from collections.abc import Iterator
from contextlib import closing
from datetime import UTC, datetime
from itertools import pairwise
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import delete, insert

from circleci_ds.derive.facts import open_store
from circleci_ds.metrics.capacity import CapacityReport, compute_capacity
from circleci_ds.metrics.sqlstats import percentile
from circleci_ds.store import Store
from circleci_ds.store import schema as s

SLUG = "gh/acme/api"
SINCE = datetime(2026, 11, 1, tzinfo=UTC).timestamp()
UNTIL = datetime(2026, 11, 3, tzinfo=UTC).timestamp()


def t(stamp: str) -> str:
    return "2026-" + stamp.replace(" ", "T") + "Z"


JOBS = [
    ("A", "large", "11-01 09:59:50", "11-01 10:00:00", "11-01 10:30:00"),
    ("B", "large", "11-01 10:09:00", "11-01 10:10:00", "11-01 10:20:00"),
    ("C", "medium", "11-01 10:13:00", "11-01 10:15:00", "11-01 10:45:00"),
    ("D", "medium", "11-01 10:29:55", "11-01 10:30:00", "11-01 10:40:00"),
    ("E", "medium", "11-01 23:29:30", "11-01 23:30:00", "11-02 00:30:00"),
]


def tree(number: int, jid: str, cls: str, queued: str, started: str, stopped: str) -> dict[str, Any]:
    job = {
        "id": jid, "name": f"job-{jid}", "type": "build", "status": "success", "dependencies": [],
        "started_at": t(started), "stopped_at": t(stopped),
        "details": {"queued_at": t(queued), "parallelism": 4, "executor": {"resource_class": cls}},
    }  # fmt: skip
    workflow = {"id": f"W{jid}", "name": "build", "status": "success", "created_at": t(queued),
                "stopped_at": t(stopped), "jobs": [job]}  # fmt: skip
    return {"id": f"P{jid}", "number": number, "state": "created", "created_at": t(queued), "errors": [],
            "vcs": {"branch": "main", "revision": "c"}, "workflows": [workflow]}  # fmt: skip


@pytest.fixture
def store(db_url: str) -> Iterator[Store]:
    with closing(open_store(db_url)) as opened:
        opened.ensure_endpoint(SLUG, "acme", "https://circleci.com/gh/acme/api")
        for number, job in enumerate(JOBS, 1):
            opened.save_tree(SLUG, tree(number, *job), fetched_at=1.0, is_final=True)
        yield opened


def capacity(store: Store, cap: int | None, **kwargs: Any) -> CapacityReport:
    args: dict[str, Any] = {"project": None, "since": SINCE, "until": UNTIL, "cap": cap, **kwargs}
    return compute_capacity(store, **args)


def test_hand_worked_capacity(store: Store) -> None:
    report = capacity(store, 2)
    org = report.organisation
    assert (org.resource_class, org.peak, org.p95_daily_peak, org.minutes_at_cap) == (
        "*", 3, pytest.approx(2.9), 30.0,
    )  # fmt: skip
    classes = [
        (c.resource_class, c.peak, c.p95_daily_peak, c.minutes_at_cap) for c in report.by_resource_class
    ]
    assert classes == [("large", 2, pytest.approx(1.9), 10.0), ("medium", 2, pytest.approx(1.95), 10.0)]
    assert report.queue_at_cap is not None and report.queue_below_cap is not None
    at, below, every = report.queue_at_cap, report.queue_below_cap, report.queue_all
    assert (at.jobs, at.p50, at.p95) == (2, 62.5, pytest.approx(114.25))
    assert (below.jobs, below.p50, below.p95) == (3, 30.0, pytest.approx(57.0))
    assert (every.jobs, every.p50, every.p95) == (5, 30.0, pytest.approx(108.0))
    peaks = {p.hour: p.peak for p in report.timeline}
    assert len(peaks) == 48 and sum(peaks.values()) == 5
    assert (peaks["2026-11-01T10:00:00Z"], peaks["2026-11-01T23:00:00Z"], peaks["2026-11-02T00:00:00Z"]) == (
        3, 1, 1,
    )  # fmt: skip


def test_without_a_cap(store: Store) -> None:
    report = capacity(store, None)
    assert (report.organisation.peak, report.organisation.minutes_at_cap) == (3, None)
    assert report.queue_at_cap is None and report.queue_below_cap is None
    assert report.queue_all.jobs == 5
    assert "no concurrency cap" in report.scope


def test_an_empty_window(store: Store) -> None:
    report = capacity(store, 2, since=UNTIL, until=UNTIL + 86400)
    assert (report.organisation.peak, report.organisation.p95_daily_peak, report.by_resource_class) == (
        0,
        0.0,
        [],
    )


# -- the sweep against an independent computation -------------------------------------------------

DAY = 86400
Interval = tuple[int, int, str]  # start, stop (seconds after SINCE), class


def truth(intervals: list[Interval], cap: int, days: int) -> dict[str, tuple[int, float, float]]:
    """Class ("*": all) -> (peak, p95 of daily peaks, minutes at or above the cap), by elementary
    segments between every start, stop and midnight."""
    out = {}
    for key in ["*", *sorted({c for _, _, c in intervals})]:
        mine = [(a, b) for a, b, c in intervals if key in ("*", c)]
        cuts = sorted({x for a, b in mine for x in (a, b)} | {d * DAY for d in range(days + 1)})
        daily = [0] * days
        peak, seconds = 0, 0.0
        for lo, hi in pairwise(cuts):
            level = sum(1 for a, b in mine if a <= lo < b)
            peak = max(peak, level)
            if lo // DAY < days:
                daily[lo // DAY] = max(daily[lo // DAY], level)
            if level >= cap:
                seconds += hi - lo
        out[key] = (peak, percentile(sorted(map(float, daily)), 0.95) or 0.0, seconds / 60)
    return out


intervals = st.lists(
    st.tuples(
        st.integers(0, 3 * DAY - 1), st.integers(1, 6 * 3600), st.sampled_from(["large", "medium"])
    ).map(lambda x: (x[0], x[0] + x[1], x[2])),
    max_size=40,
)


def write_runs(store: Store, runs: list[Interval]) -> None:
    rows = [
        {"workflow_id": f"w{i}", "id": f"j{i}", "pipeline_id": f"p{i}", "endpoint": SLUG,
         "workflow_name": "w", "name": "j", "status": "success", "executed": True, "dependencies": "[]",
         "workflow_created": SINCE + a, "started": SINCE + a, "stopped": SINCE + b, "resource_class": c}
        for i, (a, b, c) in enumerate(runs)
    ]  # fmt: skip
    with store.engine.begin() as conn:
        conn.execute(delete(s.job_runs))
        if rows:
            conn.execute(insert(s.job_runs), rows)


@pytest.fixture(scope="module")
def sweep_store() -> Iterator[Store]:
    with (
        tempfile.TemporaryDirectory() as directory,
        closing(open_store(f"sqlite:///{Path(directory) / 's.db'}")) as opened,
    ):
        opened.ensure_endpoint(SLUG, "acme", "https://circleci.com/gh/acme/api")
        yield opened


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(runs=intervals, cap=st.integers(1, 4))
def test_the_sweep_equals_counting_segments(sweep_store: Store, runs: list[Interval], cap: int) -> None:
    write_runs(sweep_store, runs)
    report = compute_capacity(sweep_store, project=None, since=SINCE, until=SINCE + 3 * DAY, cap=cap)
    found = {
        c.resource_class or "": (c.peak, c.p95_daily_peak, c.minutes_at_cap) for c in report.by_resource_class
    }
    org = report.organisation
    found["*"] = (org.peak, org.p95_daily_peak, org.minutes_at_cap)
    expected = truth(runs, cap, 3)
    assert set(found) == set(expected)
    for key, (peak, p95, minutes) in expected.items():
        got = found[key]
        assert got[0] == peak, key
        assert math.isclose(got[1] or 0.0, p95, abs_tol=1e-9), key
        assert math.isclose(got[2] or 0.0, minutes, abs_tol=1e-6), key


def test_the_sweep_on_the_other_backend_too(store: Store) -> None:
    """The same random comparison, a few fixed draws, on each backend (the hand-made store's backend)."""
    import random

    rng = random.Random(7)
    for _ in range(5):
        runs = [(a, a + rng.randint(1, 6 * 3600), rng.choice(["large", "medium"]))
                for a in (rng.randint(0, 3 * DAY - 1) for _ in range(30))]  # fmt: skip
        write_runs(store, runs)
        report = compute_capacity(store, project=None, since=SINCE, until=SINCE + 3 * DAY, cap=3)
        expected = truth(runs, 3, 3)
        org = report.organisation
        assert (org.peak, org.minutes_at_cap) == (expected["*"][0], pytest.approx(expected["*"][2]))
        assert org.p95_daily_peak == pytest.approx(expected["*"][1])
