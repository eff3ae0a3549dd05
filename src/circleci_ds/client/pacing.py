"""Client-side pacing against a server's rate limit of unknown shape: five rules (docs/rate-limits.md).

1. **Pause**: a 429, or a 503 with a `Retry-After`, pauses every request for its `Retry-After` (a 429
   without one: `NO_RETRY_AFTER` s). Each pause begun since the last 2xx lasts at least `FLOOR` s,
   doubling up to `MAX_FLOOR` s, so a server that keeps saying 0 is not asked again at once for ever.
   A refusal of a request sent before the last pause ended belongs to that pause: it lengthens the
   pause only if it asks for more.
2. **One first**: after a pause one request goes; the others wait for its answer, so a pause that
   ended too soon costs one refusal, not one per request in flight.
3. **Pace** (AIMD): requests go at most `rate` a second, evenly spaced on the pace's own timeline (a
   request admitted at most `LATE` s after its slot, a timer's resolution, keeps it; after idle time a
   new timeline starts, without a burst). While the pace holds requests
   back it grows: x`FAST` a second until the first 429 (slow start); then x`RECOVER` a second up to the
   ceiling, `DECREASE` x the last refused pace, and x`CLIMB` a second past it. The first 429 of a bunch
   (of a request sent after the last pause ended) cuts the pace: to half at the end of slow start (the
   pace of a second before), else to `DECREASE` x itself, or, when it came within `QUICK` x the pause
   after it ended, to `DECREASE` x the rate admitted over that pause and since (ceiling too): a bucket's
   refill rate, whatever its burst let through. The rest of a bunch, and a refused first request after a
   pause, cut nothing.
4. **Quota**: the latest quota headers read (`quota.parse_quota`), less the requests sent since, are
   what is left. With its reset `QUOTA_RESET` s or more away, the pace is at most what is left over the
   time to the reset, and with nothing left every request waits for the reset (a pause and a cut, as
   a 429's). A nearer reset, said in whole seconds, tells too little: it is left to rules 1 and 3.
5. **Bounds**: `max_rps` caps the pace; a request that would wait out more than `max_wait` s of pauses
   in all (or the run, counting overlapping pauses once) fails at once with `WaitTooLong`.

Waiting requests ask in turn, in arrival order: only the one whose turn it is sleeps until the next
slot, so each admitted request costs one wake-up however many wait. The clock is injectable: every
rule runs in simulated time in the tests.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace

from circleci_ds.client.quota import parse_quota, parse_retry_after

log = logging.getLogger("circleci_ds.client.http")

RATE_LIMITED, UNAVAILABLE = "rate limited", "server unavailable (HTTP 503)"  # why every request waits


class WaitTooLong(Exception):
    """Waiting out the server's pauses would exceed `max_wait` (per request or per run); `status` is
    that of the answer that began the pause in force (429, or 503)."""

    def __init__(self, message: str, status: int = 429) -> None:
        super().__init__(message)
        self.status = status


@dataclass(slots=True)
class WaitBudget:
    """Seconds of pauses one request (across its retries) may still wait out."""

    left: float


@dataclass(frozen=True, slots=True)
class Ticket:
    """One admitted request: its place in the order of sending, when it went, whether it went first
    after a pause."""

    seq: int
    sent: float
    first: bool = False


@dataclass(frozen=True, slots=True)
class Pause:
    """The pause in force, or the last one: when it ends, the status that began it, and how many
    pauses began since the last 2xx."""

    until: float
    status: int = 429
    strikes: int = 0


@dataclass(frozen=True, slots=True)
class Reading:
    """The latest quota read: from request `seq`'s answer, `remaining` until `reset_at` (pacer clock)."""

    seq: int
    remaining: int
    reset_at: float


class Pacer:
    """Spaces requests under the server's rate limit; see the module's rules."""

    START = 20.0  # requests/s before anything is known: low enough for an API, slow start finds more
    FAST = 2.0  # x per second of slow start: 20 to 160/s in 3 s; a window refuses within a second
    DECREASE = 0.85  # the share of a refused pace kept: under a limit it passed by up to 15%
    RECOVER = 1.15  # x per second back up to DECREASE x the refused pace: a cut undone in seconds
    CLIMB = 1.01  # x per second past it, to find a limit that rose: a 15% cut back in 16 s
    QUICK = 0.5  # a 429 within this share of the pause after it: the pause refilled less than spent
    MEASURED = 5  # successes that make an admitted rate worth more than the pace
    MIN_RATE = 0.5  # requests/s at least: slower limits are met by the pauses of rule 1
    NO_RETRY_AFTER = 1.0  # seconds a 429 without a usable Retry-After pauses (before doubling)
    FLOOR, MAX_FLOOR = 0.25, 60.0  # least pause, doubling per pause since the last 2xx up to this
    QUOTA_RESET = 2.0  # a reset this far (whole seconds) is exact enough to spread what is left over
    LONG_PAUSE = 30.0  # pauses this long are announced
    LATE = 0.001  # seconds a wake-up may be late and keep its slot (an event loop's timers: 1 ms)
    POLL = 0.005  # how often the request whose turn it is looks again while the first after a pause is out

    def __init__(
        self,
        max_rps: float | None = None,
        *,
        max_wait: float = 900.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.max_rps = max_rps
        self.max_wait = max_wait
        self._clock = clock
        self.rate = self._capped(self.START)  # the pace, requests/s
        self._next = -math.inf  # the next free slot
        self._pause = Pause(-math.inf)  # requests sent before its end belong to it (rule 1)
        self._first: int | None = None  # rule 2: 0 while wanted, then its seq until answered
        self._seq = 0  # requests sent so far
        self._quota: Reading | None = None
        self._paused_total = 0.0  # seconds of pauses in the run, overlapping ones once
        self._ceiling = math.inf  # rule 3: the pace climbs fast up to it, slowly past it
        self._successes = 0  # 2xx answers to requests sent since the last pause ended
        self._turn = asyncio.Lock()  # waiting requests ask in turn (wait)

    # -- read-only views -------------------------------------------------------------------------
    @property
    def paused_until(self) -> float | None:
        """The pacer clock's time (monotonic) when the pause in force ends; None without one."""
        return self._pause.until if self._pause.until > self._clock() else None

    @property
    def pause_remaining(self) -> float:
        """Seconds left of the pause in force, 0.0 without one."""
        return max(0.0, self._pause.until - self._clock())

    @property
    def paused_total(self) -> float:
        """Seconds of pauses so far in this run (overlapping pauses count once)."""
        return self._paused_total

    async def wait(self, budget: WaitBudget | None = None) -> Ticket:
        """When this request may go, its ticket; WaitTooLong rather than wait beyond its `budget` (rule 5).

        Waiting requests take turns in arrival order (an asyncio.Lock is FIFO): only the one whose turn
        it is sleeps until the next slot, so each admitted request costs one wake-up, not one per
        request waiting. A pause is waited out outside the queue, each request against its own budget;
        a request cancelled while waiting leaves the queue to the next."""
        while True:
            async with self._turn:
                ticket = await self._next_slot()
            if ticket is not None:
                return ticket
            pause = self.pause_remaining
            self._check_budget(pause, budget)
            await asyncio.sleep(pause)
            if budget is not None:
                budget.left -= pause

    async def _next_slot(self) -> Ticket | None:
        """The ticket of the request whose turn it is, once its slot comes; None when a pause holds
        every request (then each waits it out on its own budget)."""
        while (ticket := self.try_acquire()) is None:
            if self.pause_remaining > 0:
                return None
            await asyncio.sleep(self.delay())
        return ticket

    def _check_budget(self, pause: float, budget: WaitBudget | None) -> None:
        limit = describe_seconds(self.max_wait)
        if budget is not None and pause > budget.left:
            asks = describe_seconds(pause)
            why = f"the server asks to wait {asks} more, beyond --max-wait {limit} for one request"
        elif self._paused_total > self.max_wait:
            total = describe_seconds(self._paused_total)
            why = f"the server's pauses in this run would add up to {total}, beyond --max-wait {limit}"
        else:
            return
        cause = UNAVAILABLE if self._pause.status == 503 else RATE_LIMITED
        raise WaitTooLong(f"{cause}: {why}", self._pause.status)

    def delay(self) -> float:
        """Seconds to wait before asking again; 0.0 if a request may go now (try_acquire takes it)."""
        now = self._clock()
        self._spend_quota(now)
        if self._pause.until > now:
            return self._pause.until - now
        if self._first:  # the first request after a pause is out (rule 2)
            return self.POLL
        return max(0.0, self._next - now)

    def try_acquire(self) -> Ticket | None:
        """A ticket if a request may go now (it takes the slot), else None."""
        if self.delay() > 0:
            return None
        now = self._clock()
        pace = min(self.rate, self._quota_pace(now))
        if now - self._next < 1.0 / pace and pace == self.rate:  # the pace held this one back: climb
            self.rate = self._capped(self.rate * self._growth() ** (1.0 / self.rate))
        # Evenly spaced; idle time earns no burst, but a wake-up late by up to LATE (timer resolution)
        # keeps its slot, so late timers do not slow the pace.
        self._next = (self._next if now - self._next <= self.LATE else now) + 1.0 / pace
        if self._seq == 0:
            self._pause = Pause(now)  # the first stretch between pauses starts here
        self._seq += 1
        first = self._first == 0
        if first:
            self._first = self._seq
        return Ticket(self._seq, now, first)

    def _growth(self) -> float:  # rule 3: the pace's growth per second while it holds requests back
        if self.rate >= self._ceiling:
            return self.CLIMB
        return self.RECOVER if self._paused_total else self.FAST

    def abandon(self, ticket: Ticket) -> None:
        """`ticket`'s request got no answer (timeout, connection error): let the others go."""
        if ticket.seq == self._first:
            self._first = None

    def observe(self, ticket: Ticket, status: int, headers: Mapping[str, str]) -> None:
        """The answer to `ticket`: its status and headers (Retry-After, Date, quota headers)."""
        now = self._clock()
        date = headers.get("Date")
        quota = parse_quota(headers, date)
        if quota is not None and (self._quota is None or ticket.seq > self._quota.seq):  # else older
            self._quota = Reading(ticket.seq, quota.remaining, now + quota.reset)  # rule 4
        if ticket.seq == self._first:
            self._first = None
        wait = parse_retry_after(headers.get("Retry-After"), date)
        if status == 429:
            self._refused(ticket, self.NO_RETRY_AFTER if wait is None else wait, now)
        elif status == 503 and wait is not None:  # down for that long (RFC 9110): not a rate
            self._begin_pause(ticket, wait, now, 503)
        elif 200 <= status < 300:
            if self._pause.strikes:  # most answers: nothing to reset, no new Pause to build
                self._pause = replace(self._pause, strikes=0)
            self._successes += ticket.sent >= self._pause.until

    def _refused(self, ticket: Ticket, wait: float, now: float) -> None:
        """Rule 3's cut for the first 429 of a bunch (not the first request after a pause, which says
        the pause ended too soon), then rule 1's pause."""
        if ticket.sent >= self._pause.until and not ticket.first:
            self._cut(now + wait, "HTTP 429")
        self._begin_pause(ticket, wait, now, 429)

    def _begin_pause(self, ticket: Ticket, wait: float, now: float, status: int) -> None:
        """Rule 1: a new pause of `wait` s at least, doubling from FLOOR; a refusal of a request sent
        before the last pause ended lengthens it only if it asks for more."""
        if ticket.sent < self._pause.until:
            self._pause_until(now + wait, status, self._pause.strikes)
            return
        strikes = self._pause.strikes + 1
        floor = min(self.MAX_FLOOR, self.FLOOR * 2.0 ** (strikes - 1))
        self._pause_until(now + max(wait, floor), status, strikes)

    def _pause_until(self, until: float, status: int, strikes: int) -> None:
        now = self._clock()
        if until <= self._pause.until:
            return
        self._paused_total += until - max(now, self._pause.until)
        if until - now >= self.LONG_PAUSE:
            cause = UNAVAILABLE if status == 503 else RATE_LIMITED
            why = " (the server's Retry-After or quota reset)" if status == 429 else ""
            log.warning("%s: every request paused for %s%s", cause, describe_seconds(until - now), why)
        self._pause = Pause(until, status, strikes)
        self._first = 0
        self._successes = 0

    def _cut(self, end: float, why: str) -> None:
        """Rule 3 at the first 429 of a bunch (or a spent quota); the new pause ends at `end`."""
        pause = end - self._clock()
        span = end - self._pause.until  # since the last pause ended, this pause included
        self._ceiling = self.DECREASE * self.rate
        if self._paused_total == 0:  # slow start doubled the pace each second: halve it
            rate = self.rate / self.FAST
        elif span - pause < self.QUICK * pause and self._successes >= self.MEASURED:
            # Refused soon after a pause: it refilled less than the pace spends, so what the server
            # admitted over it and since is its rate (a bucket's refill, whatever its burst let by).
            rate = self._ceiling = min(self._ceiling, self.DECREASE * self._successes / span)
        else:
            rate = self._ceiling
        log.debug("%s at %.1f/s: pace %.1f/s, fast up to %.1f/s", why, self.rate, rate, self._ceiling)
        self.rate = self._capped(rate)

    def _capped(self, rate: float) -> float:
        return min(max(self.MIN_RATE, rate), self.max_rps or math.inf)

    def _left(self, now: float) -> tuple[int, float] | None:
        """What is left of a quota whose reset is far enough off to go by, and the seconds to it."""
        quota = self._quota
        if quota is None or quota.reset_at - now < self.QUOTA_RESET:
            return None
        return quota.remaining - (self._seq - quota.seq), quota.reset_at - now

    def _quota_pace(self, now: float) -> float:  # what is left over the time to the reset
        left = self._left(now)
        return math.inf if left is None else max(self.MIN_RATE, left[0] / left[1])

    def _spend_quota(self, now: float) -> None:
        left = self._left(now)
        if left is not None and left[0] <= 0 and self._pause.until < now + left[1]:
            self._cut(now + left[1], "quota spent")
            self._pause_until(now + left[1], 429, self._pause.strikes)


def describe_seconds(seconds: float) -> str:
    """`45s`, `2m30s`, `3h05m`, `11d13h`: how long a pause is, for people."""
    s = math.ceil(seconds)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 86400}d{s % 86400 // 3600:02d}h"
