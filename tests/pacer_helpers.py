"""Drive a Pacer against the simulator's limiters in simulated time (no real time passes).

`drive` runs `workers` client loops (ask the pacer, send, get the answer `latency` later) against a
`Limiter` that answers like the simulator: 429 with Retry-After in whole seconds rounded up (as a number,
an HTTP date against the response's Date, or absent) and, if asked, quota headers.
"""

from __future__ import annotations

import asyncio
import heapq
import math
import random
import selectors
from collections.abc import Coroutine
from dataclasses import dataclass, field
from email.utils import formatdate
from typing import Any, TypeVar

from circleci_ds.client.pacing import Pacer, Ticket
from circleci_ds.dev.simulator.ratelimit import Limiter
from circleci_ds.dev.simulator.server import quota_headers

T = TypeVar("T")

EPOCH = 1_800_000_000.0  # the fake server's wall clock is EPOCH + the fake monotonic clock


class FakeClock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class _Instant(selectors.DefaultSelector):
    """A selector whose waits take no real time: waiting `timeout` s moves the fake clock on instead."""

    def __init__(self, clock: FakeClock) -> None:
        super().__init__()
        self.clock = clock

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        if timeout is None:
            raise RuntimeError("every task waits and nothing is scheduled: they would wait for ever")
        self.clock.now += max(0.0, timeout)
        return super().select(0)


class SimulatedLoop(asyncio.SelectorEventLoop):
    """An event loop on the fake clock: `asyncio.sleep` and timeouts pass in simulated time, at once."""

    def __init__(self, clock: FakeClock) -> None:
        super().__init__(_Instant(clock))
        self.clock = clock

    def time(self) -> float:
        return self.clock.now


def run_simulated(clock: FakeClock, main: Coroutine[Any, Any, T]) -> T:
    """Run `main` to its end on a SimulatedLoop of `clock`, then close the loop."""
    loop = SimulatedLoop(clock)
    try:
        return loop.run_until_complete(main)
    finally:
        loop.close()


@dataclass
class Outcome:
    sent: list[float] = field(default_factory=list)  # when each request went out
    pauses: list[tuple[float, float]] = field(default_factory=list)  # (429 received, Retry-After)
    retries: list[tuple[float, float]] = field(default_factory=list)  # (429 received, sent again)
    rejected: int = 0
    succeeded: int = 0
    finished: float | None = None  # when the `requests`-th success came

    def count(self, start: float, end: float) -> int:
        return sum(1 for t in self.sent if start <= t < end)

    def stops(self) -> int:
        """How many times every request was paused (429s answered during a pause count once)."""
        count, until = 0, -math.inf
        for received, pause in self.pauses:
            if pause > 0:
                count += received >= until
                until = max(until, received + pause)
        return count

    def busiest(self, window: float = 1.0) -> int:
        """The most requests sent within any `window` seconds."""
        most, first = 0, 0
        for last, t in enumerate(self.sent):
            while t - self.sent[first] >= window:
                first += 1
            most = max(most, last - first + 1)
        return most


def answer(limiter: Limiter | None, now: float, retry_after: str, headers: str) -> tuple[int, dict[str, str]]:
    """Status and headers the simulator would send for a request arriving at `now`."""
    epoch = EPOCH + now
    out = {"Date": formatdate(math.floor(epoch), usegmt=True)}
    if limiter is None:
        return 200, out
    decision = limiter.take()
    out |= quota_headers(headers, decision, int(epoch * 1000))
    if decision.admitted:
        return 200, out
    seconds = max(1, math.ceil(decision.wait))
    if retry_after == "seconds":
        out["Retry-After"] = str(seconds)
    elif retry_after == "date":
        out["Retry-After"] = formatdate(math.floor(epoch) + seconds, usegmt=True)
    return 429, out


ANSWER, ASK, ARRIVE = 0, 1, 2


def drive(
    pacer: Pacer,
    clock: FakeClock,
    limiter: Limiter | None,
    seconds: float = math.inf,
    *,
    requests: int | None = None,
    workers: int = 16,
    latency: float = 0.025,
    think: float = 0.0,
    retry_after: str = "seconds",
    headers: str = "none",
    late: float = 0.0,
    jitter: float = 0.0,
    stall: tuple[float, float] = (0.0, math.inf),
) -> Outcome:
    """Run until `seconds` pass or `requests` requests succeeded (a 429'd request is asked again).
    Each wake-up after a wait is up to `late` seconds late, as on a busy machine, and each request
    reaches the server up to `jitter` seconds after it is sent (both seeded). `stall` = (length, every):
    the server stops reading for `length` seconds once every `every`, then takes the waiting requests
    at once (a busy server process; its limiter sees them arrive together)."""
    out = Outcome()
    rng = random.Random(7)
    end = clock.now + seconds
    refused_at: list[float | None] = [None] * workers
    queue: list[tuple[float, int, int, Ticket | None, int, dict[str, str]]] = [
        (clock.now, ASK, worker, None, 0, {}) for worker in range(workers)
    ]
    heapq.heapify(queue)
    while queue:
        when, kind, worker, ticket, status, sent_headers = heapq.heappop(queue)
        if when >= end:
            break
        clock.now = when
        if kind == ASK:
            got = pacer.try_acquire()
            if got is None:
                wait = max(pacer.delay(), 1e-4)
                heapq.heappush(queue, (when + wait + rng.uniform(0.0, late), ASK, worker, None, 0, {}))
                continue
            out.sent.append(when)
            if (refused := refused_at[worker]) is not None:
                out.retries.append((refused, when))
                refused_at[worker] = None
            arrival = stalled(when + rng.uniform(0.0, jitter), *stall)
            heapq.heappush(queue, (arrival, ARRIVE, worker, got, 0, {}))
            continue
        assert ticket is not None
        if kind == ARRIVE:
            status, reply = answer(limiter, when, retry_after, headers)
            heapq.heappush(queue, (when + latency, ANSWER, worker, ticket, status, reply))
            continue
        pacer.observe(ticket, status, sent_headers)
        if status == 429:
            out.rejected += 1
            out.pauses.append((when, pacer.pause_remaining))
            refused_at[worker] = when
            heapq.heappush(queue, (when, ASK, worker, None, 0, {}))
            continue
        out.succeeded += 1
        if requests is not None and out.succeeded >= requests:
            out.finished = when
            break
        heapq.heappush(queue, (when + think, ASK, worker, None, 0, {}))
    clock.now = min(end, clock.now) if out.finished is None and math.isfinite(end) else clock.now
    return out


def stalled(arrival: float, length: float, every: float) -> float:
    """When the server reads a request reaching it at `arrival`, stalling `length` s every `every` s."""
    into = arrival % every if math.isfinite(every) else math.inf
    return arrival + (length - into) if into < length else arrival
