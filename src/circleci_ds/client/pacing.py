"""Client-side pacing against a server's rate limit of unknown shape (token bucket, fixed windows).

Rules (each a method below; the clock is injectable, so every rule runs in simulated time in tests):
1. **A 429 that shows the limit spent pauses every request**, for its `Retry-After` (seconds, or an HTTP
   date measured against the response's own `Date`); without one, for 1 s, doubling (up to 60 s) while
   the first request after a pause is refused again. A 429 answering a request sent before the pause
   began is the same event: it only lengthens the pause if its own `Retry-After` asks for more.
1a. **A lone 429 only slows the pace**: once the pace is learned, a 429 with a `Retry-After` of at most
   `LONG` s (or none) that comes after `RUN` successes since the last 429 (or `AGAIN` since a lone one:
   a bucket refusing one request in a few) and `SUSTAIN` s since the last pause is arrival jitter or a
   pace a little past a bucket's rate, not a spent limit: the others go on, and the pace drops to
   `SOFT_CUT` x itself unless `QUIET` successes came since the last 429 (one refusal in that many fits
   the budget) or it came with the answer before it (within half the pace's interval: a server that
   stalled a moment read them at once, whatever the pace, and a bucket of one refuses all but one of
   such a bunch) after `BUNCHED` successes since the last 429 (more often is the pace's doing all the
   same, as behind a proxy that passes answers on in bunches). 429s of requests sent before a lone one
   was answered are the same refusal (a server that stalled a moment sees a bunch of requests at once
   and answers them together), unless `BUNCH` of them answered apart show the pace past a limit (a
   window refusing the end of each second): then the pace drops as above even after `QUIET` successes;
   or `STREAK` of them in a row, with no success of a request sent after the lone one between, show a
   spent limit after all. Any other 429 is a spent limit (rule 1). Either way **the refused request
   itself waits out its `Retry-After`** (1 s without one) before it is sent again
   (`WaitBudget.not_before`, see `hold`).
1b. **A 503 with a `Retry-After`** (the server down for that long, RFC 9110) pauses every request for it,
   as rule 1 does (at least 0.25 s, doubling up to 60 s with each such 503 since the last 2xx), and one
   goes first after it (rule 2); the pace and the estimate stay as they were. A 503 without one is the
   client's to retry with backoff.
2. **One request goes first after a pause**; the others wait for its answer, so a pause that ended too
   soon costs one 429, not one per request in flight.
3. **Slow start**: the pace starts at `START` requests/s and grows x1.5 every `STEP` while it holds
   requests back, until the first 429 or spent quota; it only ever grows while it holds requests back.
4. **An estimate at each pause**: the successes of the requests sent since the previous pause ended,
   over the time from then to the end of the new pause ("measured"). That is the server's rate for a
   fixed window (pauses end at window starts) and for a token bucket whose burst covers the pause, and
   less otherwise. After a long pause (`LONG` s or more) it is trusted and held. After a short one the
   estimate is the highest of: measured; the highest pace held `SUSTAIN` s without a 429 since the last
   pause (at most `HELD_CAP` x measured, as a burst can carry a pace the rate cannot), or `JITTER_CUT` x
   a refused pace that had been held (or was under the estimate, after `RUN` successes: arrival
   jitter); and `DECREASE` x the refused pace (see `_cut` for the first 429). The pace is `MARGIN` x
   the estimate; it climbs back towards the refused pace by halves every `CLIMB_STEP` s, at most
   x`CLIMB_MAX` a step (so an overshoot past a small bucket's rate is small and costs one pause), until
   a lone 429 that cuts the pace says where refusals begin; a pace refused only by the run's first
   429 is climbed back to faster (every `FIRST_STEP` s, at most x`FIRST_MAX`) and past (x`START_GROWTH`),
   as a stall or slow start's overshoot may have caused it. No step comes sooner than `SUSTAIN` s after
   a pause, so a 429 a step brings is lone.
   `HOLD` s after the last pause it probes above (x`PUSH` every `SUSTAIN` s) to follow a limit that
   rose. No two requests go much closer than the pace's interval (`CATCH_UP`): a bucket of one refuses
   any pair closer than its own.
4a. **The flood**: when the requests in flight at a pause are answered, during it, two in three or
   more 429 (`FLOOD` or more, those answered together counting once) with some admitted between the
   refused, the pace was far past a drained bucket's rate, which admits about pace x the share
   admitted: the estimate drops to that (or to the measured rate if higher) and is held. (A window
   refuses all until it ends and then admits all: no rate in that; nor in a stalled server's bunch.)
5. **Quota headers** (`RateLimit-*`, `X-RateLimit-*` or `X-Rate-Limit-*`, reset as seconds or as an epoch,
   or the IETF draft's structured `RateLimit` field; `parse_quota`): the remaining
   quota, less the requests sent after the request that reported it, is spent down; at zero every
   request waits, a pause without the 429. A window waits for its reset, estimated like a pause. A
   bucket (told by its refill, `QuotaTracker`, or, for a quota spent first with a reset under `LONG`
   s, by the next request going alone two slots on: admitted, a bucket; refused, a window) has its refill
   over the flight of the requests sent since counted back in; at zero it waits a slot or two, and
   once its refill rate is measured the pace is `REFILL_MARGIN` x that rate, held. A window's quota
   jumping back (half its limit or more between two readings, faster than a bucket refills) also shows
   a window, whatever the request sent to tell said. A short window (`Reset` never past `SHORT` s; one
   per second says 1 whatever is left of it) is paced at `REFILL_MARGIN` x its limit over that length:
   spent at that pace it was spent at its end and nothing is waited; spent faster, it waits for the
   reset. Quotas reported by requests sent before the last pause ended, or before a short window was
   spent, are stale and ignored.
6. `max_rps` is a hard cap: at most max_rps * W + 1 requests in any W seconds.
7. **Bounded waits**: no request waits out pauses for longer than `max_wait` seconds in all, nor does the
   run (pauses overlapping many requests count once); a request that would is refused with
   `WaitTooLong` at once instead of sleeping. A pause of `LONG_PAUSE` s or more is logged as a warning.

Read-only for displays: `paused_until` / `pause_remaining`, `requests_per_second`, `rate`, `estimate`.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from email.utils import parsedate_to_datetime
from typing import Any

import http_sf

log = logging.getLogger("circleci_ds.client.http")


class WaitTooLong(Exception):
    """Waiting out the server's pauses would exceed `max_wait` (per request or per run); `status` is
    that of the answer that began the pause in force (429, or 503)."""

    def __init__(self, message: str, status: int = 429) -> None:
        super().__init__(message)
        self.status = status


RATE_LIMITED, UNAVAILABLE = "rate limited", "server unavailable (HTTP 503)"  # why every request waits


@dataclass(frozen=True, slots=True)
class Ticket:
    """One admitted request: its place in the order of sending, and whether it goes first after a pause."""

    seq: int
    sent: float
    probe: bool = False
    budget: WaitBudget | None = None  # the request's, which a lone 429 makes wait (rule 1a)


@dataclass(frozen=True, slots=True)
class Quota:
    """What quota headers said: `remaining` requests until `reset` seconds from the response."""

    limit: int | None
    remaining: int
    reset: float


@dataclass(slots=True)
class WaitBudget:
    """Seconds of pauses one request may still wait out, and when (pacer clock) it may go again
    after a 429 of its own."""

    left: float
    not_before: float = -math.inf


def together(now: float, before: float, pace: float) -> bool:
    """Whether an answer at `now` came with one at `before`: within half the pace's interval (a server
    that stalled a moment answers what it then read at once; requests sent at the pace are answered as
    far apart)."""
    return now - before < 0.5 / pace


@dataclass(slots=True)
class Bunches:
    """429s counted once per bunch: one answered `together` with the last counted is the same bunch,
    whatever the pace."""

    last: float  # when the last one counted was answered
    count: int = 1

    def note(self, now: float, pace: float) -> None:
        if not together(now, self.last, pace):
            self.count, self.last = self.count + 1, now


@dataclass(slots=True)
class Flood:
    """The answers, during a pause, to the requests in flight when it began (rule 4a)."""

    at: float  # when the pause began
    pace: float  # the pace refused
    measured: float  # the rate measured at the pause
    ok: int = 0
    refused: Bunches = field(init=False)  # the 429 that began it and those since, a bunch counted once
    first_ok: float = math.inf  # the seq of the first request admitted
    last_refused: float = -math.inf  # the seq of the last request refused

    def __post_init__(self) -> None:
        self.refused = Bunches(self.at)

    def answer(self, ticket: Ticket, admitted: bool, now: float) -> None:
        """Count `ticket`'s answer if its request was in flight when the pause began."""
        if ticket.sent >= self.at:
            return
        if admitted:
            self.ok += 1
            self.first_ok = min(self.first_ok, ticket.seq)
            return
        self.last_refused = max(self.last_refused, ticket.seq)
        self.refused.note(now, self.pace)

    def admitted_rate(self, least: int) -> float | None:
        """The pace times the share admitted, when `least` or more and two in three or more were
        refused, and admitted ones came between them: the rate a drained bucket admits, whatever it
        refilled in the pause. (A window refuses all until it ends, then admits all: no rate in that. A
        bucket of one admits every other request at up to twice its rate: a half says little.)"""
        refused, mixed = self.refused.count, self.first_ok < self.last_refused
        far_past = refused >= least and refused >= 2 * self.ok
        return self.pace * self.ok / (self.ok + refused) if far_past and mixed else None


@dataclass(slots=True)
class LoneRefusal:
    """The last lone 429 (rule 1a), and the refusals since of requests in flight when it came."""

    at: float = -math.inf  # when it was answered
    seq: int = 0  # the seq of its request
    cut: bool = False  # whether the pace was cut for it
    streak: int = 0  # 429s since of requests sent after it, with no 2xx of one between
    bunches: Bunches = field(default_factory=lambda: Bunches(-math.inf, 0))  # it and those since


@dataclass(slots=True)
class QuotaTracker:
    """What quota headers said (rule 5): what is left, until when, and whether the quota refills (a
    bucket, at a rate measured from the readings) or waits for its reset (a window)."""

    REFILL = 3  # tokens seen added to a quota, past those in flight, that show a bucket
    SPAN = 2.0  # seconds of readings a refill rate is measured over (at least half)
    SHORT = 2.0  # a window this long at most is paced at its rate (a longer one's Reset is exact enough)

    seq: int = -1  # the request whose reading is held
    left: float | None = None  # what is left at `at`, less the requests sent since; None: unknown
    at: float = -math.inf
    reset: float = -math.inf
    refills: bool = False  # a bucket
    window: bool = False  # a window
    test: int | None = None  # the request sent to tell which, while it is out
    refill: float | None = None  # a bucket's refill rate, as last measured
    limit: int | None = None  # the quota's limit, as last read
    span: float = 0.0  # the longest reset read: a window's length, its `Reset` rounded up
    since: float = -math.inf  # readings of requests sent before are of a window spent since
    # (when read, remaining + seq, requests sent after it, when it was sent), while not full
    draining: deque[tuple[float, int, int, float]] = field(default_factory=deque)

    def read(
        self, ticket: Ticket, quota: Quota, now: float, *, after: int, pace: float, admitted: bool
    ) -> None:
        """`ticket`'s answer said `quota`; `after` requests were sent since it, each to take one."""
        if ticket.seq <= self.seq:
            return  # older than what was read already
        self.seq = ticket.seq
        left: float = quota.remaining - after
        if admitted and not self.window:  # a window's reset is no refill
            self._note_refill(quota, ticket, now, after, pace)
        if self.refills:  # a bucket refills while they are on their way
            left = min(left + self.refilling(pace) * (now - ticket.sent), quota.limit or math.inf)
        self.left, self.at, self.reset = left, now, now + quota.reset
        self.limit, self.span = quota.limit, max(self.span, quota.reset)

    def window_rate(self) -> float | None:
        """A short window's rate, its limit over its length; None if not a window known as such."""
        if not self.window or not self.limit or not 0.5 <= self.span <= self.SHORT:
            return None
        return self.limit / self.span

    def _note_refill(self, quota: Quota, ticket: Ticket, now: float, after: int, pace: float) -> None:
        """Each admitted request takes one from the quota and adds one to the seq, so remaining + seq
        stays put in a window until it resets, and rises with a bucket's refill, whatever its `Reset`
        says (a bucket of 10 at 60/s reports a whole second). Read while the bucket is not full (the
        limit less 2 left or fewer: it was not full when this request came), that rise is the refill
        rate. Requests reaching the server out of order move it by up to those in flight, about the
        `after` sent since this one: a rise past that shows a bucket. A rise of half the limit (and
        `REFILL`) or more from one reading to the next, and more than twice the pace over the time
        between their requests, is a window's reset, not a refill (the pace is kept under a bucket's
        rate): the readings start over."""
        limit = quota.limit
        if limit is None:
            return
        value = quota.remaining + ticket.seq
        if self.draining:
            _, before, _, sent = self.draining[-1]
            if value - after - before >= max(self.REFILL, limit / 2, 2 * pace * (ticket.sent - sent)):
                if self.refill is None:  # a window, whatever a test request said
                    self.window, self.refills = True, False
                self.draining.clear()
        if quota.remaining > limit - 2:  # full, or may have been: what overflowed is lost
            self.draining.clear()
            return
        self.draining.append((now, value, after, ticket.sent))
        while now - self.draining[0][0] > self.SPAN:
            self.draining.popleft()
        (start, low, low_after, _), (end, high, high_after, _) = self.draining[0], self.draining[-1]
        if end - start >= self.SPAN / 2 and high - high_after - (low + low_after) >= self.REFILL:
            self.refill, self.refills = (high - low) / (end - start), True

    def refilling(self, pace: float) -> float:
        """A bucket's refill rate as measured, or else the pace (until a spent quota says otherwise)."""
        return self.refill if self.refill is not None else pace

    def left_now(self, now: float, pace: float) -> float | None:
        """What is left now, None if unknown (nothing read, or its reset passed)."""
        if self.left is None or now >= self.reset:
            self.left = None
            return None
        return self.left + (self.refilling(pace) * (now - self.at) if self.refills else 0.0)

    def sent(self) -> None:
        """A request went: it takes one from what is left."""
        if self.left is not None:
            self.left -= 1

    def spent(self, *, test: int) -> None:
        """Spent, and not known as a window: what is left is read again, and unless it is known as a
        bucket, request `test` goes alone to tell which."""
        self.left = None
        if not self.refills:
            self.test = test

    def window_spent(self, now: float) -> None:
        """A short window spent: the answers still to come from it say so again; read from the next."""
        self.left, self.since = None, now

    def tested(self, ticket: Ticket, status: int | None) -> None:
        """The request sent when the quota was spent, before a short reset: refused, a window (one 429
        in the run); admitted, a bucket (or a window that reset sooner than its whole-second `Reset`
        said, which then refuses the ends of its windows, rule 1a, unless its quota jumped back, see
        `_note_refill`). No answer (None): still unknown."""
        if ticket.seq == self.test:
            self.test = None
            if status is not None and not self.window:
                self.refills, self.window = status != 429, status == 429


# -- pure parsing ------------------------------------------------------------------------------------


def parse_http_date(value: str | None) -> float | None:
    """Epoch seconds of an HTTP date, or None if absent or unreadable."""
    if not value:
        return None
    try:
        return parsedate_to_datetime(value).timestamp()
    except (TypeError, ValueError, IndexError, OverflowError):
        return None


def parse_retry_after(value: str | None, server_date: str | None) -> float | None:
    """Seconds to wait from a Retry-After header (delta-seconds or HTTP date), at least 0; None when
    absent or unreadable. A date is measured against the response's own `Date` (so local clock skew
    does not matter), else against local time. No upper cap here: `max_wait` bounds what is waited."""
    if not value:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        target = parse_http_date(value)
        if target is None:
            return None
        base = parse_http_date(server_date)
        seconds = target - (base if base is not None else time.time())
    if not math.isfinite(seconds):
        return None
    return max(seconds, 0.0)


def parse_quota(headers: Mapping[str, str], server_date: str | None) -> Quota | None:
    """The quota a response reports, in any of the forms servers use; None if absent or malformed:
    - `RateLimit-Remaining` / `-Reset` (seconds), else `X-RateLimit-*` or `X-Rate-Limit-*` (seconds, or an
      epoch when larger than a year's seconds, measured against `Date`), with an optional `-Limit`;
    - else the IETF draft's structured `RateLimit` field (`_structured_quota`)."""
    for prefix in ("RateLimit-", "X-RateLimit-", "X-Rate-Limit-"):
        remaining = _count(headers.get(prefix + "Remaining"))
        reset = _seconds(headers.get(prefix + "Reset"))
        if remaining is None or reset is None:
            continue
        if reset > 365 * 86400:  # an epoch
            base = parse_http_date(server_date)
            reset = max(0.0, reset - (base if base is not None else time.time()))
        return Quota(_count(headers.get(prefix + "Limit")), remaining, reset)
    return _structured_quota(headers)


def _structured_quota(headers: Mapping[str, str]) -> Quota | None:
    """The IETF draft's `RateLimit` field, a Structured Field (RFC 9651) in either of its shapes:
    - since draft 08, a list of policies' service limits, `"name";r=REMAINING;t=SECONDS`, each policy's
      quota in `RateLimit-Policy` (`"name";q=QUOTA;w=WINDOW`): the policy with the least remaining is
      the one that binds; one without `t` says nothing of when it refills and is left to the 429s;
    - in draft 07, a dictionary `limit=L, remaining=R, reset=SECONDS`.
    `t` and `reset` may be fractional (the draft says integers; other forms' resets often are not)."""
    field = _field(headers, "RateLimit")
    if field is None:
        return None
    old = _sf_parse(field, "dictionary")
    if old is not None and (quota := _quota(old.get("limit"), old.get("remaining"), old.get("reset"))):
        return quota
    policies = dict(_sf_items(_field(headers, "RateLimit-Policy")))
    quotas = [
        _quota(policies.get(name, {}).get("q"), params.get("r"), params.get("t"))
        for name, params in _sf_items(field)
    ]
    known = [quota for quota in quotas if quota is not None]
    return min(known, key=lambda quota: (quota.remaining, -quota.reset), default=None)


def _quota(limit: Any, remaining: Any, reset: Any) -> Quota | None:
    """A quota from Structured Field values: integers at least 0 (a member is `(value, parameters)`; a
    boolean is no integer), the reset an integer or a decimal; None without remaining or reset."""
    limit, remaining, reset = (v[0] if isinstance(v, tuple) else v for v in (limit, remaining, reset))
    if type(remaining) is not int or remaining < 0 or type(reset) not in (int, Decimal) or reset < 0:
        return None
    return Quota(limit if type(limit) is int and limit >= 0 else None, remaining, float(reset))


def _field(headers: Mapping[str, str], name: str) -> str | None:
    """A field's value, its lines joined as RFC 9110 joins a list's (a multidict's lines, or the one)."""
    getall = getattr(headers, "getall", None)
    lines = getall(name, []) if getall is not None else [v] if (v := headers.get(name)) is not None else []
    value = ", ".join(lines)
    return value if lines and len(value) <= 4096 else None


def _sf_parse(value: str, kind: str) -> Any:
    try:
        return http_sf.parse(value.encode("ascii"), tltype=kind)
    except (ValueError, UnicodeEncodeError):
        return None


def _sf_items(value: str | None) -> list[tuple[str, dict[str, Any]]]:
    """A Structured Field list's items as (name, parameters); names are strings or tokens."""
    parsed = _sf_parse(value, "list") if value is not None else None
    items = []
    for member in parsed or []:
        name, params = member if isinstance(member, tuple) else (None, {})
        if isinstance(name, (str, http_sf.Token)) and isinstance(params, dict):
            items.append((str(name), params))
    return items


def _count(value: str | None) -> int | None:
    if value is None or not value.strip().isdigit() or len(value.strip()) > 12:
        return None
    return int(value.strip())


def _seconds(value: str | None) -> float | None:
    try:
        seconds = float(value) if value is not None and len(value) < 32 else None
    except ValueError:
        return None
    return seconds if seconds is not None and math.isfinite(seconds) and seconds >= 0 else None


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


# -- the pacer ---------------------------------------------------------------------------------------


class Pacer:
    """Spaces requests to a pace learned from the server's 429s and quota headers; see the module rules."""

    START, START_GROWTH = 20.0, 1.5  # requests/s before anything is known; growth per STEP till then
    STEP = 0.25  # seconds between changes of pace
    SUSTAIN = 2.0  # seconds at a pace without a 429 that show the server takes it
    CLIMB_STEP = 2.0  # seconds between steps back up towards a refused pace
    CLIMB_MAX = 1.1  # growth per climbing step at most
    FIRST_STEP, FIRST_MAX = 1.0, 1.2  # the same, back towards the pace the run's first 429 refused
    HELD_CAP = 2.0  # a held pace counts for at most this many times the measured rate
    LONG = 2.0  # a pause this long is a window's end: the stretch between pauses measures the rate
    MARGIN = 0.94  # the pace kept under the estimate
    REFILL_MARGIN = 0.98  # ... under a bucket's refill rate read from its quota (spent, it waits a slot)
    CATCH_UP = 0.03  # a late request keeps its slot if at most this share of an interval late
    JITTER_CUT = 0.9  # the pace after a 429 at a pace held SUSTAIN seconds
    FIRST_CUT, DECREASE = 0.5, 0.7  # at least this share of a refused pace is kept (first 429, later)
    RUN = 20  # successes since the last 429 that make the next one lone (rule 1a)
    SOFT_CUT = 0.95  # the pace after a lone 429
    QUIET = 100  # successes since the last 429 that leave the pace as it is at a lone 429
    BUNCHED = 50  # ... at a lone 429 answered with the answer before it (a stall's bunch)
    AGAIN = 2  # successes since a lone 429 that make the next 429 lone too
    FLOOD = 4  # refusals of requests in flight at a pause that can show how far the pace was past the rate
    BUNCH = 3  # refusals in flight at a lone 429, answered apart, that show the pace past a limit
    STREAK = 5  # refusals in a row, in flight at a lone 429, that show a spent limit after all
    HOLD = 60.0  # seconds a pace under a refused one is held before probing above it
    PUSH = 1.05  # growth per SUSTAIN seconds when probing above
    LONG_PAUSE = 30.0  # pauses this long are announced
    POLL = 0.005  # how often waiting requests look again while the first one after a pause is out

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
        now = clock()
        self.rate: float = min(self.START, max_rps) if max_rps is not None else self.START
        self.estimate: float | None = None  # the server's rate, as last estimated
        self._refused: float | None = None  # the pace last refused with a 429
        self._sustained = 0.0  # the highest pace held SUSTAIN seconds without a 429
        self._pace_since = now  # when the pace last changed
        self._next = 0.0  # the next free slot
        self._paused_until = -math.inf
        self._cycle_start = now  # when the last pause ended (or the first request)
        self._started = False
        self._waited_at = -math.inf  # when the pace last held a request back
        self._last_change = now
        self._failed_probes = 0
        self._probe_out: int | None = None  # seq of the request out first after a pause
        self._need_probe = False
        self._seq = 0
        self._successes = 0  # answered 2xx, of requests sent since the last pause ended
        self._sent: deque[float] = deque()  # send times over the last RECENT seconds
        self._quota = QuotaTracker()
        self._last_cycle = (0, now)  # successes and start of the cycle the last pause ended
        self._last_event = now
        self._retry_after_absent = False
        self._paused_total = 0.0
        self._ok = 0  # 2xx answers in all
        self._ok_at_429 = 0  # _ok when the last 429 came
        self._flood: Flood | None = None  # the answers to requests in flight at the last pause
        self._doubt_first = False  # the climb is back towards the pace refused by the run's first 429
        self._last_lone = LoneRefusal()
        self._answered = -math.inf  # when the last answer came
        self.rate_limited = 0  # 429s seen
        self._cause = RATE_LIMITED  # of the pause in force
        self._outages = 0  # 503s with a Retry-After since the last 2xx

    # -- read-only views -------------------------------------------------------------------------
    @property
    def paused_until(self) -> float | None:
        """The pacer clock's time (monotonic) when the pause in force ends; None without one."""
        return self._paused_until if self._paused_until > self._clock() else None

    @property
    def pause_remaining(self) -> float:
        """Seconds left of the pause in force, 0.0 without one."""
        return max(0.0, self._paused_until - self._clock())

    @property
    def requests_per_second(self) -> float:
        """Requests sent per second over the last 5 seconds."""
        self._trim_sent(self._clock())
        return len(self._sent) / 5.0

    @property
    def paused_total(self) -> float:
        """Seconds of pauses so far in this run (overlapping pauses count once)."""
        return self._paused_total

    # -- admission -------------------------------------------------------------------------------
    async def wait(self, budget: WaitBudget | None = None) -> Ticket:
        """Return when this request may go, with its ticket. Raises WaitTooLong rather than wait out a
        pause beyond `budget` (this request's) or beyond the run's `max_wait`."""
        await self.hold(budget)
        while True:
            ticket = self.try_acquire(budget)
            if ticket is not None:
                return ticket
            pause = self.pause_remaining
            if pause > 0:
                self._check_budget(pause, budget)
            delay = self.delay()
            await asyncio.sleep(delay)
            if pause > 0 and budget is not None:
                budget.left -= min(delay, pause)

    async def hold(self, budget: WaitBudget | None) -> None:
        """Wait out this request's own `Retry-After` after a lone 429 (rule 1a), within its budget."""
        if budget is None:
            return
        wait = budget.not_before - self._clock()
        if wait > 0:
            self._check_budget(wait, budget, RATE_LIMITED)  # its own 429's wait, whatever pause went before
            await asyncio.sleep(wait)
            budget.left -= wait

    def _check_budget(self, pause: float, budget: WaitBudget | None, cause: str | None = None) -> None:
        cause = cause or self._cause  # of the wait: the pause in force, unless said
        status = 503 if cause == UNAVAILABLE else 429
        if budget is not None and pause > budget.left:
            raise WaitTooLong(
                f"{cause}: the server asks to wait {describe_seconds(pause)} more, beyond --max-wait "
                f"{describe_seconds(self.max_wait)} for one request",
                status,
            )
        if self._paused_total > self.max_wait:
            raise WaitTooLong(
                f"{cause}: the server's pauses in this run would add up to "
                f"{describe_seconds(self._paused_total)}, beyond --max-wait "
                f"{describe_seconds(self.max_wait)}",
                status,
            )

    def delay(self) -> float:
        """Seconds to wait before asking again; 0.0 if a request may go now (try_acquire takes it)."""
        now = self._clock()
        self._spend_quota_check(now)
        if self._paused_until > now:
            return self._paused_until - now
        if self._probe_out is not None:
            return self.POLL
        return max(0.0, self._next - now)

    def try_acquire(self, budget: WaitBudget | None = None) -> Ticket | None:
        """A ticket if a request may go now (it takes the slot), else None. A request refused by a lone
        429 waits for its `budget.not_before` (see `hold`) and takes no slot before."""
        if budget is not None and budget.not_before > self._clock():
            return None
        if self.delay() > 0:
            now = self._clock()
            if self._paused_until <= now and self._probe_out is None:
                self._waited_at = now
                self._grow(now)
            return None
        now = self._clock()
        self._grow(now)
        if not self._started:
            self._started, self._cycle_start = True, now
        interval = 1.0 / self.rate
        # A slightly late wake-up keeps its place in the schedule; no two requests go much closer than
        # the interval (a bucket of one refuses any pair closer than its own). Idle time earns no burst.
        slot = max(self._next, now - self.CATCH_UP * interval)
        self._next = slot + interval
        self._seq += 1
        probe = self._need_probe
        if probe:
            self._need_probe, self._probe_out = False, self._seq
            self._settle_flood(now)
        self._quota.sent()
        self._sent.append(now)
        self._trim_sent(now)
        return Ticket(self._seq, now, probe, budget)

    # -- answers ---------------------------------------------------------------------------------
    def observe(self, ticket: Ticket, status: int, headers: Mapping[str, str]) -> None:
        """The answer to `ticket`: its status and headers (Retry-After, Date, quota headers)."""
        now = self._clock()
        date = headers.get("Date")
        quota = parse_quota(headers, date)
        if quota is not None:
            self._note_quota(ticket, quota, now, admitted=status != 429)
        self._quota.tested(ticket, status)
        bunched, self._answered = together(now, self._answered, self.rate), now
        if status == 429:
            self._rate_limited(ticket, parse_retry_after(headers.get("Retry-After"), date), now, bunched)
            return
        if status == 503 and (wait := parse_retry_after(headers.get("Retry-After"), date)) is not None:
            self._unavailable(ticket, wait, now)
            return
        if ticket.seq == self._probe_out:
            self._probe_out = None
            if self._failed_probes:
                self._reestimate(now)
            self._failed_probes = 0
        if 200 <= status < 300:
            self._ok += 1
            self._outages = 0
            if self._flood is not None:
                self._flood.answer(ticket, True, now)
            if ticket.seq > self._last_lone.seq:
                self._last_lone.streak = 0
            if ticket.sent >= self._cycle_start:
                self._successes += 1

    def abandon(self, ticket: Ticket) -> None:
        """`ticket`'s request got no answer (timeout, connection error): let the others go."""
        if ticket.seq == self._probe_out:
            self._probe_out = None
        self._quota.tested(ticket, None)

    def _rate_limited(self, ticket: Ticket, retry_after: float | None, now: float, bunched: bool) -> None:
        self.rate_limited += 1
        if ticket.seq == self._probe_out:
            self._probe_out = None
            self._failed_probes += 1
        self._retry_after_absent = retry_after is None
        if retry_after is None:
            pause = min(60.0, 2.0 ** max(0, self._failed_probes - 1)) if self._failed_probes else 1.0
        else:
            pause = max(retry_after, 0.05 * 2.0**self._failed_probes)
        if ticket.probe or ticket.sent < self._cycle_start or self._paused_until > now:
            # The first request after a pause, one sent before that pause ended, or one answered
            # during this pause: the same event, which says nothing new about the rate but the flood.
            if self._flood is not None:
                self._flood.answer(ticket, False, now)
            asked = retry_after is not None or ticket.probe  # else the pause in force is our own guess
            if now + pause > self._paused_until and (asked or self._paused_until <= now):
                self._pause(now, now + pause)
            return
        if self._lone(ticket, pause, now):
            self._refuse_one(ticket, pause, now, bunched)
            return
        self._ok_at_429 = self._ok
        self._event(now, pause, refused=True)

    def _unavailable(self, ticket: Ticket, wait: float, now: float) -> None:
        """Rule 1b: a 503 with a `Retry-After` pauses every request for it (for at least a pause that
        doubles from 0.25 s to 60 s with each one since the last 2xx, so that a server that says 0 is not
        asked again at once, for ever), and they go one first after it; the pace and the estimate stay as
        they are (an outage says nothing of the rate)."""
        if ticket.seq == self._probe_out:
            self._probe_out = None
        self._outages += 1
        pause = max(wait, min(60.0, 0.25 * 2.0 ** (self._outages - 1)))
        if now + pause > self._paused_until:
            self._pause(now, now + pause, UNAVAILABLE)

    def _lone(self, ticket: Ticket, pause: float, now: float) -> bool:
        """Rule 1a: a 429 of a request in flight at the last lone one (counted in the streak, which ends
        it), or after `RUN` successes and `SUSTAIN` s since the last pause (before that, the bucket's
        refill in the pause carried the pace)."""
        if self.estimate is None or pause > self.LONG:
            return False
        last = self._last_lone
        if ticket.sent < last.at:  # in flight at the last lone 429: the same refusal, unless
            last.streak += ticket.seq > last.seq
            return last.streak < self.STREAK  # no request sent since has gone through: a spent limit
        run = self._ok - self._ok_at_429
        again = last.at > self._cycle_start and run >= self.AGAIN  # the pace still past the rate
        return (run >= self.RUN or again) and now - self._cycle_start >= self.SUSTAIN

    def _refuse_one(self, ticket: Ticket, pause: float, now: float, bunched: bool) -> None:
        """Only the refused request waits; a new refusal slows the pace (rule 1a), unless `bunched` with
        the answer before it (a stall's bunch, not the pace's doing)."""
        if ticket.budget is not None:
            ticket.budget.not_before = max(ticket.budget.not_before, now + pause)
        last = self._last_lone
        if ticket.sent >= last.at:
            # A new one; after QUIET successes, one refusal in that many fits the budget: no cut.
            run = self._ok - self._ok_at_429
            cut = run < (self.BUNCHED if bunched else self.QUIET)
            self._last_lone, self._ok_at_429 = LoneRefusal(now, ticket.seq, cut, 1, Bunches(now)), self._ok
            if not cut:
                return
        else:  # in flight at the last lone 429: the same refusal, answered with it if a stall's bunch
            last.bunches.note(now, self.rate)
            if last.bunches.count < self.BUNCH or last.cut:
                return
            last.cut = True  # refusals in a row, as they were sent: the pace is past a limit
        log.debug("HTTP 429, alone: pace %.1f/s -> %.1f/s", self.rate, self.SOFT_CUT * self.rate)
        self._set(self.SOFT_CUT * self.rate, now)
        self._last_event, self._refused = now, None  # the climb back ends where refusals begin
        self._doubt_first = False

    def _note_quota(self, ticket: Ticket, quota: Quota, now: float, *, admitted: bool) -> None:
        if ticket.sent >= max(self._cycle_start, self._quota.since):  # else of a pause or window gone: stale
            after = self._seq - ticket.seq
            self._quota.read(ticket, quota, now, after=after, pace=self.rate, admitted=admitted)

    def _spend_quota_check(self, now: float) -> None:
        left = self._quota.left_now(now, self.rate)
        if left is not None and left <= 0 and self._paused_until <= now:
            self._quota_spent(now, self._quota.reset - now)

    def _quota_spent(self, now: float, wait: float) -> None:
        """A window is spent until its reset: a pause, estimated like one. A bucket refills: its refill
        rate, once measured, is the server's rate; else wait a slot or two. Either way the quota is
        read again. Not known which: a short reset is tested (the next request goes alone, two slots on),
        a long one waited out unless a refill shows first."""
        quota = self._quota
        if (rate := quota.window_rate()) is not None:
            self._window_spent(now, wait, rate)
            return
        if quota.window or (not quota.refills and wait >= self.LONG):
            self._event(now, wait, refused=False)
            return
        short = min(wait, 2.0 / self.rate)
        quota.spent(test=self._seq + 1)
        if not quota.refills:
            self._pause(now, now + short)
        elif quota.refill is None:
            self._next = max(self._next, now + short)
        else:
            self._event(now, min(wait, 2.0 / quota.refill), refused=False, refill=quota.refill)

    def _window_spent(self, now: float, wait: float, rate: float) -> None:
        """A short window's rate is its limit over its length, and the pace is set just under it. Spent
        at that pace, it was spent at its end: nothing is waited, not its whole-second `Reset` (a 429 if
        it was not quite over is lone, rule 1a). Spent faster, it is waited out."""
        early = self.rate > rate
        self.estimate, self._refused, self._last_event = rate, None, now
        self._set(self.REFILL_MARGIN * rate, now)
        self._quota.window_spent(now)
        if early:
            self._pause(now, now + wait)

    # -- the estimate ----------------------------------------------------------------------------
    def _event(self, now: float, pause: float, *, refused: bool, refill: float | None = None) -> None:
        """A new pause: estimate the server's rate (rule 4, or a bucket's `refill` rate, rule 5) and set
        the pace under it."""
        pace, previous = self.rate, self.estimate
        end = now + pause
        cycle = end - self._cycle_start
        measured = self._successes / cycle if cycle >= 0.2 and self._successes >= 3 else None
        pressing = now - self._waited_at <= self.STEP
        trusted = measured is not None and pause >= self.LONG
        if refill is not None:
            measured, trusted = refill, True
        held = self._held_floor(pace, previous, measured)
        if trusted and measured is not None:
            target = measured
        else:
            target = max(measured or 0.0, held, self._cut(previous, measured) * pace)
        if pressing:
            target = min(target, pace)
        self.estimate = target
        self._doubt_first = previous is None
        # A trusted estimate is held; otherwise the pace climbs back towards the refused one by halves.
        self._refused = None if trusted else pace if pressing else self._refused
        self._sustained = 0.0
        self._set((self.MARGIN if refill is None else self.REFILL_MARGIN) * target, now)
        self._last_cycle, self._last_event = (self._successes, self._cycle_start), now
        self._flood = Flood(now, pace, measured or 0.0) if refused else None
        self._cycle_start = end
        self._successes = 0
        self._pause(now, end)
        log.debug(
            "%s: pausing %.2fs at pace %.1f/s%s; server rate about %.1f/s (measured %s, held %.1f), "
            "pace %.1f/s",
            "HTTP 429" if refused else "quota spent", pause, pace, "" if pressing else " (not pressing)",
            target, "-" if measured is None else f"{measured:.1f}", held, self.rate,
        )  # fmt: skip

    def _cut(self, previous: float | None, measured: float | None) -> float:
        """The least share of a refused pace kept: `DECREASE`; at the run's first 429 `FIRST_CUT`, as slow
        start may have overshot, or `JITTER_CUT` when it came at once at the starting pace (nothing
        measured: a pair too close, most likely)."""
        if previous is not None:
            return self.DECREASE
        return self.FIRST_CUT if measured is not None else self.JITTER_CUT

    def _settle_flood(self, now: float) -> None:
        """Rule 4a: most requests in flight at the pause refused shows a pace far past the rate."""
        flood, self._flood = self._flood, None
        admitted = flood.admitted_rate(self.FLOOD) if flood is not None else None
        if flood is None or admitted is None or self.estimate is None:
            return
        estimate = max(flood.measured, admitted)
        if estimate < self.estimate:
            log.debug("%d of %d in flight refused: server rate about %.1f/s", flood.refused.count,
                      flood.refused.count + flood.ok, estimate)  # fmt: skip
            self.estimate, self._refused = estimate, None
            self._set(self.MARGIN * estimate, now)

    def _held_floor(self, pace: float, previous: float | None, measured: float | None) -> float:
        """The pace the server is known to take: the highest held SUSTAIN seconds without a 429."""
        # Refused at a pace held SUSTAIN seconds, or under the last estimate: arrival jitter, or a
        # limit that came down a little.
        held = self._sustained if self._sustained < pace else self.JITTER_CUT * pace
        if previous is not None and pace <= previous and self._successes >= self.RUN:
            held = max(held, self.JITTER_CUT * pace)  # (refused within a few requests: no jitter)
        if measured is not None:
            held = min(held, self.HELD_CAP * measured)  # a burst let a pace through that the rate cannot
        return held

    def _reestimate(self, now: float) -> None:
        """The first request after refused ones went through: without a Retry-After this is when the
        server took requests again, so the cycle that ended at the last 429 measures its rate now."""
        successes, start = self._last_cycle
        cycle = now - start
        if self._retry_after_absent and successes >= 3 and now - self._last_event >= self.LONG:
            self.estimate = successes / cycle
            self._refused, self._last_event = None, now
            self._set(self.MARGIN * self.estimate, now)

    def _pause(self, now: float, until: float, cause: str = RATE_LIMITED) -> None:
        self._paused_total += until - max(now, self._paused_until)
        self._cause = cause
        if until - now >= self.LONG_PAUSE and until - self._paused_until >= self.LONG_PAUSE:
            why = " (the server's Retry-After or quota reset)" if cause == RATE_LIMITED else ""
            log.warning("%s: every request paused for %s%s", cause, describe_seconds(until - now), why)
        self._paused_until = self._next = self._last_change = until
        self._pace_since = max(self._pace_since, until)  # a pace is held only while requests go
        self._cycle_start = max(self._cycle_start, until)
        self._need_probe = True

    def _grow(self, now: float) -> None:
        """Raise a pace that holds requests back (rule 3; towards the refused pace after a 429)."""
        if now - self._last_change < self.STEP or now - self._waited_at > self.STEP:
            return
        held = now - self._pace_since
        if held >= self.SUSTAIN:
            self._sustained = max(self._sustained, self.rate)
        refused = self._refused
        if self.estimate is None:
            self._set(self.rate * self.START_GROWTH, now)
        elif refused is not None and self.rate < 0.99 * self.MARGIN * refused:
            first = self._doubt_first  # back towards the first 429's pace: faster
            step, most = (self.FIRST_STEP, self.FIRST_MAX) if first else (self.CLIMB_STEP, self.CLIMB_MAX)
            # Not before SUSTAIN s after the pause: a 429 the step brings is then lone (rule 1a), not a
            # spent limit that cuts the estimate again.
            if held >= step and now - self._cycle_start >= self.SUSTAIN:
                self._set(min((self.rate + self.MARGIN * refused) / 2, most * self.rate), now)
        elif refused is not None:
            # Reached just under the refused pace: hold it, unless only the run's first 429 refused it
            # (a stall or slow start's overshoot): then climb on, until a 429 says where the limit is.
            self._refused = refused * self.START_GROWTH if self._doubt_first else None
            self._doubt_first = False
        elif now - self._last_event >= self.HOLD and held >= self.SUSTAIN:
            self._set(self.rate * self.PUSH, now)
        self._last_change = now

    def _set(self, rate: float, now: float) -> None:
        rate = max(0.5, rate)
        self.rate = min(rate, self.max_rps) if self.max_rps is not None else rate
        self._pace_since = now

    def _trim_sent(self, now: float) -> None:
        while self._sent and self._sent[0] < now - 5.0:
            self._sent.popleft()
