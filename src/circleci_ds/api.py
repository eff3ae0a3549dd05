"""CircleCI API v2 client: HTTP only.

Auth, pagination, retries (tenacity), 429 / Retry-After with a client-wide pause and an
adaptive rate, and a bound on requests in flight. It knows nothing of the store.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import random
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from email.utils import parsedate_to_datetime
from typing import Any
from urllib.parse import quote

import aiohttp
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception_type

from circleci_ds import __version__

DEFAULT_API_URL = "https://circleci.com/api/v2"
log = logging.getLogger("circleci_ds.api")


class ApiError(Exception):
    """A request that failed for good. Messages carry the path, never headers or the token."""

    def __init__(self, message: str, *, status: int | None = None, path: str = "") -> None:
        super().__init__(message)
        self.status = status
        self.path = path


class NotFound(ApiError):
    """404: the object does not exist, or the token cannot see it."""


class Unauthorized(ApiError):
    """401: the token was rejected."""


class TransientError(ApiError):
    """5xx, timeout, connection error or unreadable body: worth retrying."""


class RateLimited(TransientError):
    """429; `retry_after` seconds were asked for."""

    def __init__(self, message: str, *, retry_after: float, path: str = "") -> None:
        super().__init__(message, status=429, path=path)
        self.retry_after = retry_after


@dataclass
class ClientStats:
    requests: int = 0
    rate_limited: int = 0
    retries: int = 0
    in_flight: int = 0
    max_in_flight: int = 0
    by_status: dict[int, int] = field(default_factory=dict)


class Pacer:
    """Spaces requests out to a pace that adapts to 429s, and pauses everyone on Retry-After.

    Unpaced (or at `max_rps`) until a 429. A 429 pauses every request for its Retry-After and
    sets the pace just under the ceiling, an estimate of the server's rate from the stretch of
    requests since the previous pause, if they were pressing on the pace:
    - after a climb, the pace held for a whole step before (it did not run the server dry);
    - after a steady stretch, the pace less the burst the server let through above its rate
      (the sooner the 429 came, the larger that share), and at most the success rate.
    Otherwise, or when the pace was far above the server's rate, the pace halves and climbs again.
    The pace climbs fast without a ceiling or below one; past a ceiling from a climb, which may be
    low, it grows slowly; a ceiling from a steady stretch is held for HOLD seconds before the pace
    probes above it, since every 429 costs every request a pause. The pace only grows while it
    holds requests back. `max_rps` is a hard cap: at most max_rps * W + 1 requests in any W seconds.
    """

    STEP = 0.25  # seconds between changes of pace
    MEASURE = 2.0  # seconds of successes since the last pause that measure the server's rate
    MIN_SPAN, MIN_COUNT = 0.3, 10  # a shorter or sparser stretch says nothing
    BACKOFF = 0.97  # the pace kept under a ceiling
    BURST = 0.05  # burst assumed let through above the server's rate, in seconds of that rate
    CLIMB, PUSH = 1.25, 1.04  # growth per step: without or below a ceiling; past an unconfirmed one
    HOLD = 60.0  # seconds a confirmed ceiling is trusted before the pace probes above it

    def __init__(self, max_rps: float | None = None, clock: Callable[[], float] = time.monotonic) -> None:
        self.max_rps = max_rps
        self.rate: float | None = max_rps  # None: unpaced
        self.ceiling: float | None = None
        self.confirmed = False
        self._clock = clock
        self._next = 0.0  # the next free slot
        self._paused_until = 0.0
        self._resumed_at = self._last_change = clock()
        self._successes: deque[float] = deque()
        self._waited_at = -math.inf  # when the pace last held a request back
        self._climbing = False  # the pace grew fast since the last pause
        self._held: float | None = None  # the pace before the last step up

    async def wait(self) -> None:
        """Return when this request may go."""
        while (delay := self.delay()) > 0:
            await asyncio.sleep(delay)

    def delay(self) -> float:
        """0.0 if a request may go now (it takes the slot), else seconds to wait before asking again.
        Slots are not booked ahead, so a new pace applies at once."""
        now = self._clock()
        if self._paused_until > now:
            return self._paused_until - now
        if self.rate is None:
            return 0.0
        self._grow(now)
        if now >= self._next:
            interval = 1.0 / self.rate
            # A late wake-up keeps its place in the schedule; idle time earns no burst.
            slot = self._next if now - self._next <= interval / 2 else now
            self._next = slot + interval
            return 0.0
        self._waited_at = now
        return self._next - now

    def success(self) -> None:
        now = self._clock()
        self._successes.append(now)
        while self._successes and self._successes[0] < now - self.MEASURE:
            self._successes.popleft()

    def rate_limited(self, retry_after: float) -> None:
        now = self._clock()
        if self._paused_until > now:
            # The same event (requests in flight when the pause began); a longer Retry-After still counts.
            self._pause_until(max(self._paused_until, now + retry_after))
            return
        ceiling = self._estimate(now)
        if ceiling is None:
            self._set(0.5 * (self.rate or self._rough_rate(now)))
        else:
            self._set(self.BACKOFF * ceiling)
        self.confirmed = ceiling is not None and not self._climbing
        self.ceiling = ceiling
        self._climbing = False
        self._held = None
        self._pause_until(now + retry_after)
        estimate = "unknown" if ceiling is None else f"{ceiling:.1f}/s"
        log.debug("HTTP 429: pausing %.2fs; pace %.1f/s, server rate %s", retry_after, self.rate, estimate)

    def _pause_until(self, when: float) -> None:
        self._paused_until = self._resumed_at = self._next = self._last_change = when

    def _estimate(self, now: float) -> float | None:
        """The server's rate judged from the stretch since the last pause; None if unknown."""
        if self.rate is None or self._waited_at < self._resumed_at:
            return None  # requests were not pressing on a pace: nothing was measured
        if self._climbing:
            return self._held
        # A steady pace that ran the server's burst dry in T seconds was about burst / T above its rate.
        excess = self.BURST / (now - self._resumed_at)
        if excess > 0.25:
            return None  # far above it: start again from half
        measured = self._measured(now)
        ceiling = self.rate * (1 - excess)
        return ceiling if measured is None else min(ceiling, measured)

    def _measured(self, now: float) -> float | None:
        """Successes per second over the last MEASURE seconds since the pause."""
        start = max(self._resumed_at, now - self.MEASURE)
        span = now - start
        count = sum(1 for t in self._successes if t >= start)
        return count / span if span >= self.MIN_SPAN and count >= self.MIN_COUNT else None

    def _rough_rate(self, now: float) -> float:
        if not self._successes:
            return 2.0
        return max(2.0, len(self._successes) / max(0.05, now - self._successes[0]))

    def _grow(self, now: float) -> None:
        if self.rate is None or now - self._last_change < self.STEP or now - self._waited_at > self.STEP:
            return  # only raise a pace that is holding requests back
        if self.confirmed and now - self._resumed_at < self.HOLD:
            return
        self._last_change = now
        self._held = self.rate
        ceiling = self.ceiling
        if ceiling is None:
            self._climbing = True
            self._set(self.rate * self.CLIMB)
        elif self.rate < self.BACKOFF * ceiling:
            self._climbing = True
            self._set(min(self.rate * self.CLIMB, self.BACKOFF * ceiling))
        else:
            self._set(self.rate * self.PUSH)

    def _set(self, rate: float) -> None:
        rate = max(1.0, rate)
        self.rate = min(rate, self.max_rps) if self.max_rps is not None else rate


def parse_retry_after(value: str | None, server_date: str | None, default: float = 1.0) -> float:
    """Seconds to wait from a Retry-After header (delta-seconds or HTTP date), within [0, 300]."""
    if not value:
        return default
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            target = parsedate_to_datetime(value).timestamp()
        except (TypeError, ValueError, IndexError):
            return default
        base = _parse_http_date(server_date)
        seconds = target - (base if base is not None else time.time())
    if math.isnan(seconds):
        return default
    return min(max(seconds, 0.0), 300.0)


def _parse_http_date(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return parsedate_to_datetime(value).timestamp()
    except (TypeError, ValueError, IndexError):
        return None


class CircleCIClient:
    """Async CircleCI v2 client. Use as `async with CircleCIClient(...) as client:`."""

    def __init__(
        self,
        base_url: str = DEFAULT_API_URL,
        token: str | None = None,
        *,
        concurrency: int = 16,
        max_rps: float | None = None,
        timeout: float = 60.0,
        max_attempts: int = 6,
        max_rate_limited: int = 40,
        backoff_initial: float = 0.5,
        backoff_max: float = 30.0,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self._token = token
        self._concurrency = asyncio.Semaphore(concurrency)
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._max_attempts = max_attempts
        self._max_rate_limited = max_rate_limited
        self._backoff_initial = backoff_initial
        self._backoff_max = backoff_max
        self._connections = concurrency
        self.pacer = Pacer(max_rps)
        self.stats = ClientStats()
        self._session: aiohttp.ClientSession | None = None
        self._clock_offset: float | None = None

    def __repr__(self) -> str:
        return f"CircleCIClient({self.base_url!r}, token={'set' if self._token else 'none'})"

    async def __aenter__(self) -> CircleCIClient:
        headers = {"Accept": "application/json", "User-Agent": f"circleci-ds/{__version__}"}
        if self._token:
            headers["Circle-Token"] = self._token
        connector = aiohttp.TCPConnector(limit=self._connections, ttl_dns_cache=300)
        self._session = aiohttp.ClientSession(headers=headers, timeout=self._timeout, connector=connector)
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def server_now(self) -> float:
        """Server time (epoch seconds) from the `Date` headers seen so far; local time before any."""
        return time.time() + (self._clock_offset or 0.0)

    # -- endpoints -------------------------------------------------------------------------
    def pipeline_pages(self, slug: str) -> AsyncIterator[list[dict[str, Any]]]:
        return self.pages(f"/project/{_path(slug)}/pipeline")

    async def pipeline(self, pipeline_id: str) -> dict[str, Any]:
        return await self.get(f"/pipeline/{_path(pipeline_id)}")

    async def workflows(self, pipeline_id: str) -> list[dict[str, Any]]:
        return await self.list_all(f"/pipeline/{_path(pipeline_id)}/workflow")

    async def jobs(self, workflow_id: str) -> list[dict[str, Any]]:
        return await self.list_all(f"/workflow/{_path(workflow_id)}/job")

    async def job_details(self, slug: str, number: int) -> dict[str, Any]:
        return await self.get(f"/project/{_path(slug)}/job/{int(number)}")

    def test_pages(self, slug: str, number: int) -> AsyncIterator[list[dict[str, Any]]]:
        """Pages of a job's test results; NotFound when it stored none."""
        return self.pages(f"/project/{_path(slug)}/{int(number)}/tests")

    async def project(self, slug: str) -> dict[str, Any]:
        return await self.get(f"/project/{_path(slug)}")

    async def user(self, user_id: str) -> dict[str, Any]:
        """GET /user/{id}; NotFound for a deleted account."""
        return await self.get(f"/user/{quote(user_id, safe='')}")

    # -- generic ---------------------------------------------------------------------------
    async def pages(
        self, path: str, params: dict[str, str] | None = None
    ) -> AsyncIterator[list[dict[str, Any]]]:
        """Yield each page's items; a null or absent `next_page_token` ends the list."""
        query = dict(params or {})
        seen_tokens: set[str] = set()
        while True:
            body = await self.get(path, query)
            items = body.get("items")
            if not isinstance(items, list):
                raise ApiError(f"unexpected list body from {path}", path=path)
            yield items
            token = body.get("next_page_token")
            if not token or token in seen_tokens:
                return
            seen_tokens.add(token)
            query["page-token"] = token

    async def list_all(self, path: str) -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = []
        async for page in self.pages(path):
            items.extend(page)
        return items

    async def get(self, path: str, params: dict[str, str] | None = None) -> dict[str, Any]:
        retrying = AsyncRetrying(
            retry=retry_if_exception_type(TransientError),
            stop=self._stop,
            wait=self._wait,
            before_sleep=self._count_retry,
            reraise=True,
        )
        async for attempt in retrying:
            with attempt:
                return await self._get_once(path, params)
        raise AssertionError("unreachable")  # pragma: no cover

    def _stop(self, state: RetryCallState) -> bool:
        exc = state.outcome.exception() if state.outcome else None
        if isinstance(exc, RateLimited):
            return state.attempt_number >= self._max_rate_limited
        return state.attempt_number >= self._max_attempts

    def _wait(self, state: RetryCallState) -> float:
        exc = state.outcome.exception() if state.outcome else None
        if isinstance(exc, RateLimited):
            return 0.0  # the pacer holds every request until Retry-After has passed
        ceiling = min(self._backoff_max, self._backoff_initial * 2 ** (state.attempt_number - 1))
        return random.uniform(ceiling / 2, ceiling)

    def _count_retry(self, state: RetryCallState) -> None:
        self.stats.retries += 1

    async def _get_once(self, path: str, params: dict[str, str] | None) -> dict[str, Any]:
        assert self._session is not None, "use the client as an async context manager"
        async with self._concurrency:
            await self.pacer.wait()
            self.stats.requests += 1
            self.stats.in_flight += 1
            self.stats.max_in_flight = max(self.stats.max_in_flight, self.stats.in_flight)
            try:
                async with self._session.get(self.base_url + path, params=params) as resp:
                    body = await resp.read()
                    return self._handle(path, resp, body)
            except (TimeoutError, aiohttp.ClientError) as exc:
                raise TransientError(f"{path}: {_describe_exception(exc)}", path=path) from None
            finally:
                self.stats.in_flight -= 1

    def _handle(self, path: str, resp: aiohttp.ClientResponse, body: bytes) -> dict[str, Any]:
        status = resp.status
        self.stats.by_status[status] = self.stats.by_status.get(status, 0) + 1
        self._note_date(resp.headers.get("Date"))
        if status == 200:
            self.pacer.success()
            try:
                data = json.loads(body)
            except ValueError:
                raise TransientError(f"{path}: response is not JSON", status=status, path=path) from None
            if not isinstance(data, dict):
                raise ApiError(f"{path}: unexpected response body", status=status, path=path)
            return data
        if status == 429:
            self.stats.rate_limited += 1
            wait = parse_retry_after(resp.headers.get("Retry-After"), resp.headers.get("Date"))
            self.pacer.rate_limited(wait)
            raise RateLimited(f"{path}: rate limited", retry_after=wait, path=path)
        message = _message(body)
        if status == 401:
            raise Unauthorized(f"token rejected (HTTP 401 on {path})", status=status, path=path)
        if status == 404:
            raise NotFound(f"{path}: not found{message}", status=status, path=path)
        if status >= 500 or status == 408:
            raise TransientError(f"{path}: HTTP {status}{message}", status=status, path=path)
        raise ApiError(f"{path}: HTTP {status}{message}", status=status, path=path)

    def _note_date(self, value: str | None) -> None:
        date = _parse_http_date(value)
        if date is not None:
            # Date has one-second resolution; keeping the smallest offset errs on the early side.
            offset = date - time.time()
            if self._clock_offset is None or abs(offset - self._clock_offset) > 2:
                self._clock_offset = offset
            else:
                self._clock_offset = min(self._clock_offset, offset)


def _path(segment: str) -> str:
    return quote(segment, safe="/")


def _message(body: bytes) -> str:
    """`: <message>` from a JSON error body, else nothing (HTML error pages say nothing useful)."""
    try:
        data = json.loads(body)
    except ValueError:
        return ""
    if isinstance(data, dict) and isinstance(data.get("message"), str):
        return f": {data['message'][:200]}"
    return ""


def _describe_exception(exc: BaseException) -> str:
    if isinstance(exc, asyncio.TimeoutError):
        return "timed out"
    detail = str(exc).strip()
    return f"{exc.__class__.__name__}: {detail}" if detail else exc.__class__.__name__
