"""CircleCI API v2 client: HTTP only.

Auth, pagination, retries (tenacity), a bound on requests in flight; pacing against the server's rate
limit (429 / Retry-After, quota headers, the `max_wait` bound) is `pacing.Pacer`'s. It knows nothing of
the store.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

import aiohttp
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception_type

from circleci_ds import __version__
from circleci_ds.pacing import Pacer, WaitBudget, WaitTooLong, parse_http_date, parse_retry_after

__all__ = ["Pacer", "parse_retry_after"]  # re-exported: the pacer's home is pacing.py

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
    """429; `retry_after` seconds were asked for (None: the server did not say)."""

    def __init__(self, message: str, *, retry_after: float | None, path: str = "") -> None:
        super().__init__(message, status=429, path=path)
        self.retry_after = retry_after


class RateLimitWait(ApiError):
    """Waiting out the server's rate limit would take longer than `max_wait` allows."""


@dataclass
class ClientStats:
    requests: int = 0
    rate_limited: int = 0
    retries: int = 0
    in_flight: int = 0
    max_in_flight: int = 0
    by_status: dict[int, int] = field(default_factory=dict)


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
        max_wait: float = 900.0,
        backoff_initial: float = 0.5,
        backoff_max: float = 30.0,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self._token = token
        self._concurrency = asyncio.Semaphore(concurrency)
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._max_attempts = max_attempts
        self._max_wait = max_wait
        self._backoff_initial = backoff_initial
        self._backoff_max = backoff_max
        self._connections = concurrency
        self.pacer = Pacer(max_rps, max_wait=max_wait)
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
        budget = WaitBudget(self._max_wait)  # pauses this request may still wait out
        retrying = AsyncRetrying(
            retry=retry_if_exception_type(TransientError),
            stop=self._stop,
            wait=self._wait,
            before_sleep=self._count_retry,
            reraise=True,
        )
        async for attempt in retrying:
            with attempt:
                return await self._get_once(path, params, budget)
        raise AssertionError("unreachable")  # pragma: no cover

    def _stop(self, state: RetryCallState) -> bool:
        exc = state.outcome.exception() if state.outcome else None
        if isinstance(exc, RateLimited):
            return False  # the pacer's wait budget ends it (RateLimitWait)
        return state.attempt_number >= self._max_attempts

    def _wait(self, state: RetryCallState) -> float:
        exc = state.outcome.exception() if state.outcome else None
        if isinstance(exc, RateLimited):
            return 0.0  # the pacer holds every request until Retry-After has passed
        ceiling = min(self._backoff_max, self._backoff_initial * 2 ** (state.attempt_number - 1))
        return random.uniform(ceiling / 2, ceiling)

    def _count_retry(self, state: RetryCallState) -> None:
        self.stats.retries += 1

    async def _get_once(
        self, path: str, params: dict[str, str] | None, budget: WaitBudget | None = None
    ) -> dict[str, Any]:
        assert self._session is not None, "use the client as an async context manager"
        async with self._concurrency:
            try:
                ticket = await self.pacer.wait(budget)
            except WaitTooLong as exc:
                raise RateLimitWait(f"{path}: {exc}; giving up", status=429, path=path) from None
            self.stats.requests += 1
            self.stats.in_flight += 1
            self.stats.max_in_flight = max(self.stats.max_in_flight, self.stats.in_flight)
            try:
                async with self._session.get(self.base_url + path, params=params) as resp:
                    self.pacer.observe(ticket, resp.status, resp.headers)
                    body = await resp.read()
                    return self._handle(path, resp, body)
            except (TimeoutError, aiohttp.ClientError) as exc:
                raise TransientError(f"{path}: {_describe_exception(exc)}", path=path) from None
            finally:
                self.pacer.abandon(ticket)
                self.stats.in_flight -= 1

    def _handle(self, path: str, resp: aiohttp.ClientResponse, body: bytes) -> dict[str, Any]:
        status = resp.status
        self.stats.by_status[status] = self.stats.by_status.get(status, 0) + 1
        self._note_date(resp.headers.get("Date"))
        if status == 200:
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
        date = parse_http_date(value)
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
