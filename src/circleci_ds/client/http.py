"""CircleCI API v2 client: HTTP only.

Auth, pagination, retries (tenacity), a bound on requests in flight; pacing against the server's rate
limit (429 / Retry-After, quota headers, the `max_wait` bound) is `pacing.Pacer`'s, which reads the
headers with `quota`. It knows nothing of the store.

Every byte from the server is hostile. Rules:
- The token never leaves the origin (scheme, host, port) of the base URL: no request goes
  elsewhere; a redirect is followed only within that origin (at most `Limits.max_redirects`
  hops), any other fails the request (`Redirected`) without asking the other host anything.
- Bodies are read in chunks and decompressed here (gzip, deflate or none) in bounded steps, so
  no body grows past `Limits.max_response_bytes` decoded (`ResponseTooLarge`), however well it
  compresses; another Content-Encoding fails the request.
- A 200 body must be a JSON object nested at most `Limits.max_depth` levels, without NaN or
  Infinity, with finite numbers and integers of at most 19 digits (`MalformedResponse`); JSON
  that does not parse is retried (`UnreadableBody`). In what is returned, lone surrogates
  become U+FFFD and the token, wherever the server echoed it, becomes `***` (tokens of fewer
  than 8 characters, which no real one is, would match ordinary text and are left alone).
- Lists end at a null, absent or empty `next_page_token`; a token must be a string of at most
  `Limits.max_page_token` characters and is sent back as the `page-token` query parameter. A
  repeated token, `Limits.max_empty_pages` empty pages in a row that name a next page, or more
  than `Limits.max_pages` pages fail the list (`EndlessPagination`). A list whose pages hold more
  than `Limits.max_list_bytes` in all fails (`ResponseTooLarge`): what one list holds in memory is
  bounded, not only each body; and so is what every list being read at once holds, in all
  (`Limits.max_held_bytes`: past it the list that would go over fails). A 404 means "not found" on
  a list's first page only; on a later page it fails the list (`ApiError`), as the list was there
  a page ago.
- Ids and numbers are checked once, here (`values.py`): ids sent back are bounded strings, job
  numbers plausible integers, and job details must name the number asked for (`MalformedResponse`).
- A `Date` header sets the server's clock (`server_now`) unless it is implausible: ahead of this
  machine's clock by more than `MAX_DATE_AHEAD`, or of the other responses' by more than
  `MAX_DATE_JUMP`; such a Date is not believed, and a warning says so once.
- Ids from the server are sent back as one path segment, percent-encoded; `.` and `..` are refused.
- Status codes: 200 is an answer; 301/302/303/307/308 redirect; 401, 404, 429 as below; 408 and
  5xx are retried (a 503 with a Retry-After after waiting it out, as a 429's, without spending an
  attempt); anything else (1xx, other 2xx and 3xx, 418, 999) fails the request.
- Error messages carry the path and at most a cleaned, bounded excerpt of the server's message
  (`text.clean`), never headers or the token.

Exceptions (all raised by the client derive from ApiError):

    ApiError                 a request or list that failed for good
     +-- Unauthorized        401: the token was rejected
     +-- NotFound            404
     +-- TransientError      retried: 408, 5xx, timeouts, connection errors
     |    +-- RateLimited    429
     |    +-- Unavailable    503 with a Retry-After
     |    +-- UnreadableBody a body cut short, badly compressed or not JSON
     +-- Redirected          a redirect not followed: other origin, no usable Location, too many
     +-- ResponseTooLarge    a body past the decoded-size cap
     +-- MalformedResponse   JSON that is not what the endpoint answers, or an unusable id
     +-- EndlessPagination   a list that does not end
     +-- RateLimitWait       the server's pauses would outlast `max_wait`
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import math
import random
import re
import time
import zlib
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

import aiohttp
import orjson
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception_type
from yarl import URL

from circleci_ds import __version__
from circleci_ds.client.pacing import Pacer, Ticket, WaitBudget, WaitTooLong
from circleci_ds.client.quota import parse_http_date, parse_retry_after
from circleci_ds.client.values import MAX_ID, details_problem, is_number
from circleci_ds.text import clean, without_surrogates

__all__ = ["Pacer", "parse_retry_after"]  # re-exported: their homes are pacing.py and quota.py

DEFAULT_API_URL = "https://circleci.com/api/v2"
MiB = 1024 * 1024
log = logging.getLogger("circleci_ds.client.http")


@dataclass(frozen=True)
class Limits:
    """What one server can make the client do; going past a limit fails that request or list."""

    max_response_bytes: int = 64 * MiB  # a body, decoded
    max_pages: int = 10_000  # pages of one list (200,000 pipelines at 20 a page)
    max_empty_pages: int = 5  # empty pages in a row that still name a next page
    max_redirects: int = 5  # same-origin hops of one request
    max_depth: int = 64  # JSON nesting; CircleCI's bodies nest about 5 deep
    max_page_token: int = 4096  # characters
    max_list_bytes: int = 64 * MiB  # bodies of one list's pages, decoded, in all
    max_held_bytes: int = 256 * MiB  # bodies of the pages of every list being read at once, in all


class ApiError(Exception):
    """A request that failed for good. Messages carry the path, never headers or the token;
    they are one printable line of bounded length whatever the server sent."""

    def __init__(self, message: str, *, status: int | None = None, path: str = "") -> None:
        super().__init__(clean(message, limit=1000))
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


class Unavailable(TransientError):
    """503 with a `Retry-After`: the server is down for that long. Every request waits it out (the pacer
    holds them, within `max_wait`, as for a 429); waiting costs no attempt."""


class UnreadableBody(TransientError):
    """A body cut short, badly compressed or not JSON: retried, as a proxy's hiccup may cause it."""


class Redirected(ApiError):
    """A redirect not followed: to another origin (the token stays home), without a usable
    Location, or one too many."""


class ResponseTooLarge(ApiError):
    """A body larger, decoded, than `Limits.max_response_bytes`."""


class MalformedResponse(ApiError):
    """JSON that is not what the endpoint answers (not an object, NaN, too deep, a bad page
    token), a Content-Encoding the client does not speak, or an id unfit for a path."""


class EndlessPagination(ApiError):
    """A list that does not end: a repeated page token, too many empty pages, too many pages."""


class RateLimitWait(ApiError):
    """Waiting out the server's pauses (429s, 503s with a Retry-After) would take longer than `max_wait`
    allows."""


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
        limits: Limits | None = None,
    ) -> None:
        problem = api_url_problem(base_url)
        if problem is not None:
            raise ValueError(problem)
        self.base_url = base_url.rstrip("/")
        self._origin = origin_of(URL(self.base_url))
        self._token = token
        # Masked in answers' strings; a token too short to be real would match ordinary text.
        self._masked = token if token and len(token) >= MIN_MASKED_TOKEN else None
        self._masked_bytes = self._masked.encode("utf-8", "surrogatepass") if self._masked else None
        self._token_escape = token_escape(self._masked)
        self._concurrency = asyncio.Semaphore(concurrency)
        # One bound per request, body included: a body that trickles in or a silent connection both
        # end with it (a sock_read bound as long would add a timer per read and bound nothing more).
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._max_attempts = max_attempts
        self._max_wait = max_wait
        self._backoff_initial = backoff_initial
        self._backoff_max = backoff_max
        self._connections = concurrency
        self.limits = limits or Limits()
        self.pacer = Pacer(max_rps, max_wait=max_wait)
        self.stats = ClientStats()
        self.held_bytes = 0  # bodies of the pages of the lists being read (list_all), decoded
        self._session: aiohttp.ClientSession | None = None
        self._clock_offset: float | None = None
        self._doubted_date = False  # a Date not believed was reported once

    @property
    def has_token(self) -> bool:
        """Whether requests carry a token (some routes, such as GET /user/{id}, answer only with one)."""
        return bool(self._token)

    def __repr__(self) -> str:
        return f"CircleCIClient({self.base_url!r}, token={'set' if self._token else 'none'})"

    async def __aenter__(self) -> CircleCIClient:
        headers = {
            "Accept": "application/json",
            "Accept-Encoding": "gzip, deflate",
            "User-Agent": f"circleci-ds/{__version__}",
        }
        if self._token:
            headers["Circle-Token"] = self._token
        connector = aiohttp.TCPConnector(limit=self._connections, ttl_dns_cache=300)
        self._session = aiohttp.ClientSession(
            headers=headers,
            timeout=self._timeout,
            connector=connector,
            auto_decompress=False,  # decompressed here, in bounded steps
            trust_env=False,  # no proxy from the environment sees the token
            cookie_jar=aiohttp.DummyCookieJar(),  # the API sets none to keep; a server's are not sent back
        )
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def server_now(self) -> float:
        """Server time (epoch seconds) from the `Date` headers seen so far; local time before any."""
        return time.time() + (self._clock_offset or 0.0)

    @property
    def knows_server_time(self) -> bool:
        """True once a believed `Date` header has set `server_now`."""
        return self._clock_offset is not None

    # -- endpoints -------------------------------------------------------------------------
    def pipeline_pages(self, slug: str) -> AsyncIterator[list[dict[str, Any]]]:
        return self.pages(f"/project/{_path(slug)}/pipeline")

    async def pipeline(self, pipeline_id: str) -> dict[str, Any]:
        return await self.get(f"/pipeline/{segment(pipeline_id)}")

    async def workflows(self, pipeline_id: str) -> list[dict[str, Any]]:
        return await self.list_all(f"/pipeline/{segment(pipeline_id)}/workflow")

    async def jobs(self, workflow_id: str) -> list[dict[str, Any]]:
        return await self.list_all(f"/workflow/{segment(workflow_id)}/job")

    async def job_details(self, slug: str, number: int) -> dict[str, Any]:
        """GET a job's details; MalformedResponse when they name another job number."""
        path = f"/project/{_path(slug)}/job/{job_number(number)}"
        details = await self.get(path)
        problem = details_problem(details, number)
        if problem is not None:
            raise MalformedResponse(f"{path}: {problem}", status=200, path=path)
        return details

    def test_pages(self, slug: str, number: int) -> AsyncIterator[list[dict[str, Any]]]:
        """Pages of a job's test results; NotFound when it stored none."""
        return self.pages(f"/project/{_path(slug)}/{job_number(number)}/tests")

    async def project(self, slug: str) -> dict[str, Any]:
        return await self.get(f"/project/{_path(slug)}")

    async def user(self, user_id: str) -> dict[str, Any]:
        """GET /user/{id}; NotFound for a deleted account."""
        return await self.get(f"/user/{segment(user_id)}")

    # -- generic ---------------------------------------------------------------------------
    async def pages(
        self, path: str, params: dict[str, str] | None = None
    ) -> AsyncIterator[list[dict[str, Any]]]:
        """Yield each page's items until a page names no next page; endless lists fail."""
        async for items, _ in self._pages(path, params, counted=False):
            yield items

    async def _pages(
        self, path: str, params: dict[str, str] | None, *, counted: bool
    ) -> AsyncIterator[tuple[list[dict[str, Any]], int]]:
        """Each page's items and body size; with `counted`, the size is added to `held_bytes` (the
        caller takes it off) and ResponseTooLarge past `Limits.max_held_bytes`."""
        query = dict(params or {})
        pages = PageGuard(path, self.limits)
        while True:
            try:
                body, size = await self._get_sized(path, query)
            except NotFound as exc:
                if pages.pages == 0:
                    raise
                raise ApiError(f"{path}: page {pages.pages + 1} of the list answered 404", path=path) from exc
            pages.hold(size)
            items = body.get("items")
            if not isinstance(items, list):
                raise MalformedResponse(f"{path}: a list answer without an `items` list", path=path)
            token = page_token(path, body, self.limits)
            if counted:
                self._hold(path, size)  # the caller takes it off; no await comes between
            yield items, size if counted else 0
            if token is None:
                return
            pages.next(token, empty=not items)
            query["page-token"] = token

    async def list_all(self, path: str) -> list[dict[str, Any]]:
        """Every item of a list. The bytes of its pages count against `Limits.max_held_bytes`, with those
        of every other list being read at the same time, until the list is returned."""
        items: list[dict[str, Any]] = []
        held = 0
        try:
            async for page in self._pages(path, None, counted=True):
                items.extend(page[0])
                held += page[1]
            return items
        finally:
            self.held_bytes -= held

    def _hold(self, path: str, size: int) -> None:
        if self.held_bytes + size > self.limits.max_held_bytes:
            raise ResponseTooLarge(
                f"{path}: lists being read hold more than {self.limits.max_held_bytes / MiB:g} MiB at once; "
                "this one is given up",
                path=path,
            )
        self.held_bytes += size

    async def get(self, path: str, params: dict[str, str] | None = None) -> dict[str, Any]:
        return (await self._get_sized(path, params))[0]

    async def _get_sized(self, path: str, params: dict[str, str] | None) -> tuple[dict[str, Any], int]:
        """The answer's JSON object and the size of its body, decoded."""
        budget = WaitBudget(self._max_wait)  # pauses this request may still wait out
        try:  # the first attempt without a retry loop: nearly every request ends here
            return await self._get_once(path, params, budget)
        except TransientError as exc:
            if self._gives_up(exc, 1):
                raise
            self.stats.retries += 1
            await asyncio.sleep(self._backoff(exc, 1))
        retrying = AsyncRetrying(
            retry=retry_if_exception_type(TransientError),
            stop=lambda state: self._gives_up(_outcome(state), state.attempt_number + 1),
            wait=lambda state: self._backoff(_outcome(state), state.attempt_number + 1),
            before_sleep=self._count_retry,
            reraise=True,
        )
        async for attempt in retrying:
            with attempt:
                return await self._get_once(path, params, budget)
        raise AssertionError("unreachable")  # pragma: no cover

    def _gives_up(self, exc: BaseException | None, attempts: int) -> bool:
        """Whether a request that failed `attempts` times, the last with `exc`, is not tried again."""
        if isinstance(exc, RateLimited | Unavailable):
            return False  # the pacer's wait budget ends it (RateLimitWait)
        return attempts >= self._max_attempts

    def _backoff(self, exc: BaseException | None, attempts: int) -> float:
        """Seconds before the next attempt of a request that failed `attempts` times."""
        if isinstance(exc, RateLimited | Unavailable):
            return 0.0  # the pacer holds the request (or every request) until Retry-After has passed
        ceiling = min(self._backoff_max, self._backoff_initial * 2 ** (attempts - 1))
        return random.uniform(ceiling / 2, ceiling)

    def _count_retry(self, state: RetryCallState) -> None:
        self.stats.retries += 1

    async def _get_once(
        self, path: str, params: dict[str, str] | None, budget: WaitBudget | None = None
    ) -> tuple[dict[str, Any], int]:
        assert self._session is not None, "use the client as an async context manager"
        async with self._concurrency:
            try:
                ticket = await self.pacer.wait(budget)
            except WaitTooLong as exc:
                raise RateLimitWait(f"{path}: {exc}; giving up", status=exc.status, path=path) from None
            self.stats.requests += 1
            self.stats.in_flight += 1
            self.stats.max_in_flight = max(self.stats.max_in_flight, self.stats.in_flight)
            try:
                return await self._fetch(path, URL(self.base_url + path).extend_query(params or {}), ticket)
            except (TimeoutError, aiohttp.ClientError) as exc:
                raise TransientError(f"{path}: {self._say(_describe_exception(exc))}", path=path) from None
            finally:
                self.pacer.abandon(ticket)
                self.stats.in_flight -= 1

    async def _fetch(self, path: str, url: URL, ticket: Ticket) -> tuple[dict[str, Any], int]:
        """GET `url`, following redirects within the origin only; the answer's JSON object."""
        assert self._session is not None
        for _ in range(self.limits.max_redirects + 1):
            if origin_of(url) != self._origin:  # the one check every request passes
                raise Redirected(self._elsewhere(path, url), path=path)
            async with self._session.get(url, allow_redirects=False) as resp:
                if resp.status in REDIRECTS:
                    url = self._redirect_target(path, url, resp)
                    continue
                self.pacer.observe(ticket, resp.status, resp.headers)
                if resp.status == 200:
                    body = await read_body(path, resp, self.limits.max_response_bytes)
                else:
                    body = await error_body(path, resp)
                return self._handle(path, resp, body), len(body)
        raise Redirected(f"{path}: more than {self.limits.max_redirects} redirects", path=path)

    def _redirect_target(self, path: str, url: URL, resp: aiohttp.ClientResponse) -> URL:
        self._count(resp.status)
        location = resp.headers.get("Location")
        if not location:
            raise Redirected(f"{path}: HTTP {resp.status} without a Location", status=resp.status, path=path)
        try:
            target = url.join(URL(location))
        except (ValueError, TypeError):
            raise Redirected(
                f"{path}: HTTP {resp.status} to an unusable Location ({self._say(location, 120)})",
                status=resp.status,
                path=path,
            ) from None
        if origin_of(target) != self._origin:
            raise Redirected(self._elsewhere(path, target), status=resp.status, path=path)
        return target

    def _elsewhere(self, path: str, target: URL) -> str:
        there = self._say(f"{target.scheme}://{target.host}:{target.port}", 120)
        home = "{}://{}:{}".format(*self._origin)
        return f"{path}: redirected to another origin ({there}); not followed, the token stays with {home}"

    def _count(self, status: int) -> None:
        self.stats.by_status[status] = self.stats.by_status.get(status, 0) + 1

    def _handle(self, path: str, resp: aiohttp.ClientResponse, body: bytes) -> dict[str, Any]:
        status = resp.status
        self._count(status)
        self._note_date(resp.headers.get("Date"))
        if status == 200:
            return self._json_object(path, body)
        wait = parse_retry_after(resp.headers.get("Retry-After"), resp.headers.get("Date"))
        if status == 429:
            self.stats.rate_limited += 1
            raise RateLimited(f"{path}: rate limited", retry_after=wait, path=path)
        message = self._message(body)
        if status == 503 and wait is not None:
            raise Unavailable(f"{path}: HTTP 503{message}", status=503, path=path)
        if status == 401:
            raise Unauthorized(f"token rejected (HTTP 401 on {path})", status=status, path=path)
        if status == 404:
            raise NotFound(f"{path}: not found{message}", status=status, path=path)
        if 500 <= status <= 599 or status == 408:
            raise TransientError(f"{path}: HTTP {status}{message}", status=status, path=path)
        raise ApiError(f"{path}: HTTP {status}{message}", status=status, path=path)

    def _json_object(self, path: str, body: bytes) -> dict[str, Any]:
        data, by_orjson = _parse_json(path, body)
        if not isinstance(data, dict):
            kind = "null" if data is None else type(data).__name__
            raise MalformedResponse(f"{path}: expected a JSON object, got {kind}", status=200, path=path)
        try:
            if not self._needs_no_scrub(body, by_orjson):
                return scrubbed(data, self._masked, self.limits.max_depth)
            # Each level of nesting takes a bracket: with no more brackets than levels allowed, none
            # is too deep.
            if body.count(b"{") + body.count(b"[") > self.limits.max_depth:
                shallow_enough(data, self.limits.max_depth)
            return data
        except _Refused as exc:
            raise MalformedResponse(f"{path}: {exc}", status=200, path=path) from None

    def _needs_no_scrub(self, body: bytes, by_orjson: bool) -> bool:
        """Whether no string of the parsed body can need scrubbing, judged on its bytes. orjson refuses
        lone surrogates, so what it parsed holds none; a NUL is written `\\u0000`, and the token is in
        the bytes as it is, or one of its characters is written as an escape."""
        if not by_orjson:
            return _plain(body, self._masked_bytes)
        if b"\\u0000" in body or (self._masked_bytes is not None and self._masked_bytes in body):
            return False
        return self._token_escape is None or self._token_escape.search(body) is None

    def _message(self, body: bytes) -> str:
        """`: <message>` from a JSON error body, cleaned and bounded; else nothing."""
        try:
            data = json.loads(body)
        except (ValueError, RecursionError):
            return ""  # HTML error pages say nothing useful
        message = data.get("message") if isinstance(data, dict) else None
        return f": {self._say(message, 200)}" if isinstance(message, str) else ""

    def _say(self, text: str, limit: int = 300) -> str:
        """Server text fit for a message: the token masked, printable, bounded."""
        if self._token:
            text = text.replace(self._token, "***")
        return clean(text, limit)

    def _note_date(self, value: str | None) -> None:
        date = parse_http_date(value)
        if date is None:
            return
        offset = date - time.time()
        doubt = date_doubt(date, offset, self._clock_offset)
        if doubt is not None:
            if not self._doubted_date:
                self._doubted_date = True
                log.warning(
                    "the server's Date header (%s) is not believed: %s", self._say(value or "", 60), doubt
                )
            return
        # Date has one-second resolution; keeping the smallest offset errs on the early side.
        if self._clock_offset is None or abs(offset - self._clock_offset) > 2:
            self._clock_offset = offset
        else:
            self._clock_offset = min(self._clock_offset, offset)

    # -- organisations and usage (discover, the usage phase) ---------------------------------
    async def collaborations(self) -> list[dict[str, Any]]:
        """GET /me/collaborations: the organisations of the token's user (a JSON array); needs a token."""
        answer = await self.send("GET", "/me/collaborations")
        if not isinstance(answer, list):
            raise MalformedResponse("/me/collaborations: expected a JSON array", path="/me/collaborations")
        return [item for item in answer if isinstance(item, dict)]

    def org_pipeline_pages(self, org_slug: str) -> AsyncIterator[list[dict[str, Any]]]:
        """GET /pipeline?org-slug=...: pipelines of the organisation's recently built projects."""
        return self.pages("/pipeline", {"org-slug": org_slug})

    async def create_usage_export(self, org_id: str, start: str, end: str) -> dict[str, Any]:
        """POST /organizations/{org_id}/usage_export_job for the window [start, end] (RFC 3339)."""
        path = f"/organizations/{segment(org_id)}/usage_export_job"
        return _object(path, await self.send("POST", path, {"start": start, "end": end}))

    async def usage_export(self, org_id: str, export_id: str) -> dict[str, Any]:
        """GET /organizations/{org_id}/usage_export_job/{id}: the export job's state and download URLs."""
        path = f"/organizations/{segment(org_id)}/usage_export_job/{segment(export_id)}"
        return _object(path, await self.send("GET", path))

    async def send(self, method: str, path: str, payload: dict[str, Any] | None = None) -> Any:
        """One request, never retried (a POST creates something; the usage routes' limits are counted
        per hour): the JSON value (object or array) of a 2xx answer, the client's exceptions otherwise.
        A redirect is not followed. A 429 here pauses no other request (these routes have limits
        of their own)."""
        assert self._session is not None, "use the client as an async context manager"
        budget = WaitBudget(self._max_wait)
        try:
            async with self._concurrency:
                ticket = await self.pacer.wait(budget)
                self.stats.requests += 1
                try:
                    return await self._send_once(method, path, payload, ticket)
                except (TimeoutError, aiohttp.ClientError) as exc:
                    why = self._say(_describe_exception(exc))
                    raise TransientError(f"{path}: {why}", path=path) from None
                finally:
                    self.pacer.abandon(ticket)
        except WaitTooLong as exc:
            raise RateLimitWait(f"{path}: {exc}; giving up", status=exc.status, path=path) from None

    async def _send_once(self, method: str, path: str, payload: dict[str, Any] | None, ticket: Ticket) -> Any:
        assert self._session is not None
        url = URL(self.base_url + path)
        async with self._session.request(method, url, json=payload, allow_redirects=False) as resp:
            if resp.status != 429:
                self.pacer.observe(ticket, resp.status, resp.headers)
            if resp.status in (200, 201):
                body = await read_body(path, resp, self.limits.max_response_bytes)
                self._count(resp.status)
                self._note_date(resp.headers.get("Date"))
                return self._json_value(path, body)
            body = await error_body(path, resp)
            if resp.status == 403:
                self._count(403)
                raise ApiError(f"{path}: HTTP 403{self._message(body)}", status=403, path=path)
            return self._handle(path, resp, body)

    def _json_value(self, path: str, body: bytes) -> Any:
        """A JSON object or array, held to the same rules as `_json_object`'s (its strings walked
        only when `_needs_no_scrub` cannot rule it out)."""
        data, by_orjson = _parse_json(path, body)
        if not isinstance(data, dict | list):
            raise MalformedResponse(f"{path}: expected a JSON object or array", status=200, path=path)
        wrapped, depth = {"value": data}, self.limits.max_depth + 1  # the wrapper takes one level
        try:
            if self._needs_no_scrub(body, by_orjson):
                return shallow_enough(wrapped, depth)["value"]
            return scrubbed(wrapped, self._masked, depth)["value"]
        except _Refused:  # too deep, the one refusal of both; said without the wrapper's level
            why = f"JSON nested deeper than {self.limits.max_depth} levels"
            raise MalformedResponse(f"{path}: {why}", status=200, path=path) from None


def _parse_json(path: str, body: bytes) -> tuple[Any, bool]:
    """The JSON value of a 2xx body: numbers past their type, NaN and too deep nesting are refused.
    orjson parses first: it refuses what the rules refuse (NaN, infinite numbers, bad UTF-8, lone
    surrogates), and the standard parser then says why, or takes what orjson is stricter about (a
    BOM, UTF-16, lone surrogates, replaced later); a body with a run of 19 digits goes to it at once,
    as orjson reads integers past 64 bits as floats. The value, and whether orjson parsed it."""
    if _LONG_RUN not in body.translate(_DIGIT_RUNS):  # faster than a regular expression
        try:
            return orjson.loads(body), True
        except orjson.JSONDecodeError:
            pass
    try:
        return json.loads(body, parse_constant=_refuse_constant, parse_float=_finite, parse_int=_int64), False
    except _Refused as exc:
        raise MalformedResponse(f"{path}: {exc}", status=200, path=path) from None
    except RecursionError:
        raise MalformedResponse(f"{path}: JSON nested too deeply", status=200, path=path) from None
    except ValueError:
        raise UnreadableBody(f"{path}: response is not JSON", status=200, path=path) from None


_DIGIT_RUNS = bytes(0x39 if 0x30 <= b <= 0x39 else 0x20 for b in range(256))  # digits to 9, the rest to space
_LONG_RUN = b"9" * 19
REDIRECTS = frozenset({301, 302, 303, 307, 308})
MIN_MASKED_TOKEN = 8  # CircleCI's tokens have 40 characters
ERROR_BODY_BYTES = 64 * 1024  # enough for any error message; the rest is not read
CHUNK = 256 * 1024  # decoded bytes produced at once, at most
PLAUSIBLE_DATES = (946684800.0, 7258118400.0)  # server Dates from 2000 to 2200 set the clock
MAX_DATE_AHEAD = 86400.0  # seconds a Date may run ahead of this machine's clock
MAX_DATE_JUMP = 3600.0  # seconds a Date may run ahead of the clock the other responses set


def date_doubt(date: float, offset: float, known: float | None) -> str | None:
    """Why a server Date (epoch seconds; `offset` from this machine's clock) is not believed, given the
    offset the other responses set (`known`); None when it is. A clock believed too early only makes
    the next run list more; one too late would skip pipelines, so only the late side is bounded."""
    if not PLAUSIBLE_DATES[0] <= date < PLAUSIBLE_DATES[1]:
        return "outside the years 2000 to 2200"
    if offset > MAX_DATE_AHEAD:
        return f"{offset / 86400:.1f} days ahead of this machine's clock"
    if known is not None and offset - known > MAX_DATE_JUMP:
        return f"{(offset - known) / 3600:.1f} hours ahead of the other responses' Date"
    return None


def api_url_problem(api_url: str) -> str | None:
    """Why an API base URL is refused; None when it is usable. Credentials in it (`user:password@`)
    would be sent and stored as part of it; the token goes in the fixture or CIRCLE_TOKEN."""
    try:
        url = URL(api_url)
    except (ValueError, TypeError):
        return "the API URL cannot be read"
    if url.user is not None or url.password is not None:
        return "the API URL must not carry credentials (user:password@); the token goes in the fixture"
    if url.scheme not in ("http", "https") or not url.host:
        return "the API URL must be http:// or https:// with a host"
    return None


def origin_of(url: URL) -> tuple[str, str, int | None]:
    """Scheme, host and port: what a redirect must keep for the token to go along."""
    return (url.scheme.lower(), (url.host or "").lower().rstrip("."), url.port)


def segment(value: object) -> str:
    """A server-given id as one path segment: percent-encoded, never `.`, `..`, empty or longer than
    MAX_ID characters."""
    if not isinstance(value, str) or value in ("", ".", "..") or len(value) > MAX_ID:
        raise MalformedResponse(f"unusable id {clean(repr(value), 80)}")
    return quote(value, safe="")


def job_number(value: object) -> int:
    """A job number fit for a path: a plausible one (`values.is_number`)."""
    if not isinstance(value, int) or not is_number(value):
        raise MalformedResponse(f"unusable job number {clean(repr(value), 80)}")
    return value


def page_token(path: str, body: dict[str, Any], limits: Limits) -> str | None:
    """The next page's token; None at the end of the list."""
    token = body.get("next_page_token")
    if token is None or token == "":
        return None
    if not isinstance(token, str):
        raise MalformedResponse(f"{path}: next_page_token is not a string", path=path)
    if len(token) > limits.max_page_token:
        raise MalformedResponse(
            f"{path}: next_page_token longer than {limits.max_page_token} characters", path=path
        )
    return token


class PageGuard:
    """Ends a list that would not end: a repeated token, empty pages in a row, a page ceiling."""

    def __init__(self, path: str, limits: Limits) -> None:
        self.path = path
        self.limits = limits
        self.pages = 0
        self.empty_in_a_row = 0
        self.held = 0  # bytes of the pages read so far
        self._seen: set[bytes] = set()  # digests: memory stays small whatever the tokens' size

    def next(self, token: str, *, empty: bool) -> None:
        """The page just read names `token` as the next one; raise if the list should end here."""
        self.pages += 1
        self.empty_in_a_row = self.empty_in_a_row + 1 if empty else 0
        key = hashlib.blake2b(token.encode("utf-8", "surrogatepass"), digest_size=16).digest()
        if key in self._seen:
            self._fail(f"page token repeated after {self.pages} pages")
        if self.empty_in_a_row >= self.limits.max_empty_pages:
            self._fail(f"{self.empty_in_a_row} empty pages in a row, each naming a next page")
        if self.pages >= self.limits.max_pages:
            self._fail(f"more than {self.limits.max_pages} pages (raise --max-pages for longer lists)")
        self._seen.add(key)

    def hold(self, size: int) -> None:
        """A page of `size` bytes was read; ResponseTooLarge past the list's byte budget."""
        self.held += size
        if self.held > self.limits.max_list_bytes:
            raise ResponseTooLarge(
                f"{self.path}: list larger than {self.limits.max_list_bytes / MiB:g} MiB in all "
                f"({self.held} bytes after {self.pages + 1} pages)",
                path=self.path,
            )

    def _fail(self, why: str) -> None:
        raise EndlessPagination(f"{self.path}: list does not end: {why}", path=self.path)


class _Decoder:
    """Undoes a Content-Encoding in steps of at most CHUNK bytes, so a bomb never inflates at once."""

    def __init__(self, encoding: str) -> None:
        if encoding in ("", "identity"):
            self._wbits: int | None = None
        elif encoding in ("gzip", "x-gzip"):
            self._wbits = 16 + zlib.MAX_WBITS
        elif encoding == "deflate":
            self._wbits = zlib.MAX_WBITS
        else:
            raise ValueError(encoding)
        self._z = zlib.decompressobj(self._wbits) if self._wbits is not None else None

    def feed(self, data: bytes) -> Iterator[bytes]:
        if self._z is None:
            yield data
            return
        while data:
            out = self._z.decompress(data, CHUNK)
            if out:
                yield out
            data = self._z.unconsumed_tail
            if self._z.eof and self._z.unused_data:
                if self._wbits != 16 + zlib.MAX_WBITS:
                    raise zlib.error("data after the end of the compressed body")
                data = self._z.unused_data  # gzip allows several members in a row
                self._z = zlib.decompressobj(self._wbits)

    def finish(self) -> None:
        if self._z is not None and not self._z.eof:
            raise zlib.error("compressed body cut short")


async def error_body(path: str, resp: aiohttp.ClientResponse) -> bytes:
    """What an error answer says, for its message: at most ERROR_BODY_BYTES, nothing if it cannot
    be read; its status alone decides what happens."""
    try:
        return await read_body(path, resp, ERROR_BODY_BYTES, strict=False)
    except (MalformedResponse, UnreadableBody, aiohttp.ClientPayloadError):
        return b""


async def read_body(path: str, resp: aiohttp.ClientResponse, limit: int, *, strict: bool = True) -> bytes:
    """The decoded body, at most `limit` bytes: past it, ResponseTooLarge if `strict`, else cut.
    Compressed bytes count against the same limit."""
    encoding = resp.headers.get("Content-Encoding", "").strip().lower()
    try:
        decoder = _Decoder(encoding)
    except ValueError:
        raise MalformedResponse(
            f"{path}: unsupported Content-Encoding {clean(encoding, 40)!r}", status=resp.status, path=path
        ) from None
    too_large = f"{path}: response larger than {limit / MiB:g} MiB (see --max-response-mb)"
    if strict and resp.content_length is not None and resp.content_length > limit:
        raise ResponseTooLarge(too_large, status=resp.status, path=path)
    pieces: list[bytes] = []  # joined once at the end: no reallocation copies the body as it grows
    size = received = 0
    try:
        async for chunk in resp.content.iter_chunked(CHUNK):
            received += len(chunk)
            for piece in decoder.feed(chunk):
                pieces.append(piece)
                size += len(piece)
                if size > limit or received > limit:
                    if strict:
                        raise ResponseTooLarge(too_large, status=resp.status, path=path)
                    return b"".join(pieces)[:limit]
        decoder.finish()
    except zlib.error as exc:
        why = f"{path}: {encoding} body unreadable ({exc})"
        raise UnreadableBody(why, status=resp.status, path=path) from None
    return b"".join(pieces)


class _Refused(ValueError):
    """A JSON value the client will not accept."""


def _refuse_constant(name: str) -> Any:
    raise _Refused(f"JSON holds {name}")


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise _Refused("JSON holds a number out of range")
    return value


def _int64(text: str) -> int:
    if len(text.lstrip("-")) > 19:
        raise _Refused("JSON holds an integer of more than 19 digits")
    return int(text)


def scrubbed(data: dict[str, Any], token: str | None, max_depth: int) -> dict[str, Any]:
    """`data` (changed in place) with lone surrogates and NUL characters replaced (U+FFFD; NUL is
    kept in the page token, which goes back as sent) and `token` masked in every string, keys
    included; _Refused past `max_depth` levels of nesting."""
    stack: list[tuple[dict[str, Any] | list[Any], int]] = [(data, 1)]
    while stack:
        node, depth = stack.pop()
        if depth > max_depth:
            raise _Refused(f"JSON nested deeper than {max_depth} levels")
        if isinstance(node, dict) and any(isinstance(k, str) and _unclean(k, token) for k in node):
            renamed = {_clean_str(k, token): v for k, v in node.items()}
            node.clear()
            node.update(renamed)
        pairs = node.items() if isinstance(node, dict) else enumerate(node)
        for key, value in pairs:
            if isinstance(value, str):
                if _unclean(value, token):
                    exact = depth == 1 and key == "next_page_token"  # goes back to the server as sent
                    node[key] = _clean_str(value, token, keep_nul=exact)  # type: ignore[index]
            elif isinstance(value, dict | list):
                stack.append((value, depth + 1))
    return data


def token_escape(token: str | None) -> re.Pattern[bytes] | None:
    """A `\\u` escape that may write one of `token`'s characters (any escape for a token that is not
    ASCII); None without a token."""
    if token is None:
        return None
    if not token.isascii():
        return re.compile(rb"\\u")
    codes = sorted({f"{ord(c):04x}".encode() for c in token})
    return re.compile(rb"\\u(?:" + b"|".join(codes) + rb")", re.IGNORECASE)


def _plain(body: bytes, token: bytes | None) -> bool:
    """Whether no string of the parsed body can need scrubbing, judged on its bytes: without an
    escape (`\\u` writes NUL, surrogates or the token's letters), without UTF-8 lead byte 0xED (its
    surrogate range) and without the token, the strings hold none of them (JSON holds no raw NUL)."""
    return b"\\u" not in body and b"\xed" not in body and (token is None or token not in body)


def shallow_enough(data: dict[str, Any], max_depth: int) -> dict[str, Any]:
    """`data` when nested at most `max_depth` levels (scrubbed's depth rule); _Refused otherwise."""
    stack: list[tuple[Any, int]] = [(data, 1)]
    while stack:
        node, depth = stack.pop()
        if depth > max_depth:
            raise _Refused(f"JSON nested deeper than {max_depth} levels")
        for value in node.values() if type(node) is dict else node:
            if type(value) is dict or type(value) is list:
                stack.append((value, depth + 1))
    return data


def _unclean(text: str, token: str | None) -> bool:
    return not text.isascii() or "\x00" in text or bool(token and token in text)


def _clean_str(text: str, token: str | None, *, keep_nul: bool = False) -> str:
    text = without_surrogates(text)
    if not keep_nul:
        text = text.replace("\x00", "\ufffd")  # PostgreSQL text cannot hold NUL
    return text.replace(token, "***") if token else text


def _outcome(state: RetryCallState) -> BaseException | None:
    return state.outcome.exception() if state.outcome else None


def _object(path: str, answer: Any) -> dict[str, Any]:
    if not isinstance(answer, dict):
        raise MalformedResponse(f"{path}: expected a JSON object", status=200, path=path)
    return answer


def _path(segment: str) -> str:
    return quote(segment, safe="/")


def _describe_exception(exc: BaseException) -> str:
    if isinstance(exc, asyncio.TimeoutError):
        return "timed out"
    detail = str(exc).strip()
    return f"{exc.__class__.__name__}: {detail}" if detail else exc.__class__.__name__
