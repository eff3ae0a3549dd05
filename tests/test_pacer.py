"""The pacer on a fake clock: Retry-After, the --max-rps cap, and pacing under a server's token bucket.

`drive` runs client workers against the simulator's TokenBucket in simulated time, so every test
is deterministic and takes no real time.
"""

from __future__ import annotations

import heapq
import math
from dataclasses import dataclass, field

import pytest

from circleci_ds.api import Pacer
from circleci_ds.simulator.ratelimit import TokenBucket


class FakeClock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


ANSWER, ASK = 0, 1


@dataclass
class Outcome:
    sent: list[float] = field(default_factory=list)  # when each request went out
    pauses: list[tuple[float, float]] = field(default_factory=list)  # (429 received, Retry-After)
    rejected: int = 0

    def count(self, start: float, end: float) -> int:
        return sum(1 for t in self.sent if start <= t < end)

    def events(self) -> int:
        """Pauses: 429s that came after the previous pause had ended."""
        count, paused_until = 0, -math.inf
        for received, retry_after in self.pauses:
            if received >= paused_until:
                count += 1
            paused_until = max(paused_until, received + retry_after)
        return count

    def busiest_second(self) -> int:
        """The most requests sent within any one second."""
        most, first = 0, 0
        for last, t in enumerate(self.sent):
            while t - self.sent[first] >= 1.0:
                first += 1
            most = max(most, last - first + 1)
        return most


def drive(
    pacer: Pacer,
    clock: FakeClock,
    bucket: TokenBucket | None,
    seconds: float,
    *,
    workers: int = 16,
    latency: float = 0.025,
    think: float = 0.0,
) -> Outcome:
    """`workers` loops of ask the pacer, send, get the answer `latency` later, wait `think`; the
    server takes a token from `bucket` per request and answers 429 with Retry-After like the
    simulator (whole seconds, at least one)."""
    out = Outcome()
    end = clock.now + seconds
    # (time, answers before asks at the same time, worker, kind, Retry-After)
    queue = [(clock.now, ASK, worker, "ask", 0.0) for worker in range(workers)]
    heapq.heapify(queue)
    while queue:
        when, _, worker, kind, retry_after = heapq.heappop(queue)
        if when >= end:
            break
        clock.now = when
        if kind == "ask":
            wait = pacer.delay()
            if wait > 0:
                heapq.heappush(queue, (when + wait, ASK, worker, "ask", 0.0))
                continue
            out.sent.append(when)
            refill = bucket.take() if bucket is not None else 0.0
            answer = ("429", float(max(1, math.ceil(refill)))) if refill > 0 else ("200", 0.0)
            heapq.heappush(queue, (when + latency, ANSWER, worker, *answer))
        elif kind == "200":
            pacer.success()
            heapq.heappush(queue, (when + think, ASK, worker, "ask", 0.0))
        else:
            out.rejected += 1
            out.pauses.append((when, retry_after))
            pacer.rate_limited(retry_after)
            heapq.heappush(queue, (when, ASK, worker, "ask", 0.0))
    clock.now = end
    return out


def test_unpaced_without_429s_or_cap() -> None:
    pacer = Pacer(clock=FakeClock())
    assert all(pacer.delay() == 0.0 for _ in range(1000))
    assert pacer.rate is None


def test_retry_after_holds_every_request_and_a_longer_one_extends_the_pause() -> None:
    clock = FakeClock()
    pacer = Pacer(clock=clock)
    pacer.rate_limited(2.0)
    assert [pacer.delay() for _ in range(3)] == [2.0, 2.0, 2.0]
    clock.now += 1.0
    pacer.rate_limited(3.0)  # an answer to a request that was in flight: same event, longer wait
    clock.now += 2.999
    assert pacer.delay() > 0
    clock.now += 0.001
    assert pacer.delay() == 0.0


def test_no_request_goes_during_any_retry_after() -> None:
    clock = FakeClock()
    out = drive(Pacer(clock=clock), clock, TokenBucket(100, 10, clock), 60)
    assert out.pauses
    for received, retry_after in out.pauses:
        assert out.count(received, received + retry_after) == 0


def test_max_rps_is_a_hard_cap() -> None:
    clock = FakeClock()
    pacer = Pacer(max_rps=50, clock=clock)
    out = drive(pacer, clock, None, 20)
    assert out.busiest_second() <= 51  # 51 when a second starts and ends on a slot
    assert out.count(clock.now - 10, clock.now) >= 490
    clock.now += 30  # idle time earns no burst
    assert pacer.delay() == 0.0
    assert pacer.delay() == pytest.approx(0.02)


def test_max_rps_holds_while_adapting_to_429s() -> None:
    clock = FakeClock()
    pacer = Pacer(max_rps=60, clock=clock)
    out = drive(pacer, clock, TokenBucket(50, 10, clock), 60)
    assert out.rejected > 0
    assert out.busiest_second() <= 61
    assert pacer.rate is not None and pacer.rate <= 60


@pytest.mark.parametrize("limit", [50, 100, 200])
def test_pace_settles_just_under_the_limit_with_few_pauses(limit: float) -> None:
    clock = FakeClock()
    out = drive(Pacer(clock=clock), clock, TokenBucket(limit, 10, clock), 90)
    assert out.events() <= 10
    assert out.rejected < 0.02 * len(out.sent)
    last_minute = out.count(clock.now - 60, clock.now) / 60
    assert 0.93 * limit <= last_minute <= limit * 1.01


def test_pace_follows_a_limit_that_drops_and_rises() -> None:
    clock = FakeClock()
    pacer = Pacer(clock=clock)
    bucket = TokenBucket(100, 10, clock)
    drive(pacer, clock, bucket, 30)
    bucket.rate = 50
    drop = drive(pacer, clock, bucket, 30)
    assert 0.9 * 50 <= drop.count(clock.now - 15, clock.now) / 15 <= 51
    bucket.rate = 150
    rise = drive(pacer, clock, bucket, 120)
    assert rise.count(clock.now - 15, clock.now) / 15 >= 0.9 * 150


def test_pace_grows_only_while_it_holds_requests_back() -> None:
    clock = FakeClock()
    pacer = Pacer(clock=clock)
    drive(pacer, clock, TokenBucket(100, 10, clock), 10)
    pace = pacer.rate
    # One worker, one request a second: far under the pace, which must not creep up meanwhile.
    drive(pacer, clock, TokenBucket(100, 10, clock), 120, workers=1, think=1.0)
    assert pacer.rate == pace


def test_a_429_while_requests_do_not_press_on_the_pace_measures_nothing() -> None:
    clock = FakeClock()
    pacer = Pacer(max_rps=100, clock=clock)
    for _ in range(20):  # 20 requests a second, a fifth of the pace
        assert pacer.delay() == 0.0
        pacer.success()
        clock.now += 0.05
    pacer.rate_limited(1.0)  # the server's limit is shared, or counted per window: no ceiling
    assert pacer.ceiling is None
    assert pacer.rate == 50
