"""A hostile CircleCI on loopback, for tests.

It answers as an upstream (the simulator, proxied) would, except for the requests of the kinds
it was told to attack (`kinds`: "project", "pipelines", "pipeline", "workflows", "jobs",
"job_details", "user"), which get what its `Mode` says; so a collection runs as far as the attack.
`play(replies)` serves a given sequence of replies to those requests instead (property tests);
when the sequence runs out, the upstream answers again. Without an upstream, requests that are
not attacked get bait: a plausible answer that must never end up in a store.

Every request is recorded in `seen` (path, query, the Circle-Token it carried), so a test can
tell what reached which server. A second instance on another port serves as "another origin".
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import time
import zlib
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from enum import StrEnum
from functools import cache
from typing import Any

import aiohttp
from aiohttp import web

from circleci_ds.dev.simulator.server import project_path_kind

LISTS = ("pipelines", "workflows", "jobs")
KINDS = frozenset({"project", "pipelines", "pipeline", "workflows", "jobs", "job_details", "user"})
MOVED = "/api/v2/moved"  # where same-origin redirects point; proxied as the path after it
GiB, MiB = 1 << 30, 1 << 20


class Mode(StrEnum):
    PROXY = "proxy"  # no attack
    REDIRECT_OTHER = "redirect-other"  # `status` to `to` + the same path (another origin)
    REDIRECT_SAME = "redirect-same"  # 307 to MOVED + the path, on this server
    REDIRECT_LOOP = "redirect-loop"  # 302 to the very same URL, forever
    REDIRECT_BAD = "redirect-bad"  # `status` with `location` (None: no Location header)
    EMPTY_PAGES = "empty-pages"  # lists: empty pages, each naming a new next page
    REPEATED_TOKEN = "repeated-token"  # lists: the upstream's first page, naming the same token each time
    ENDLESS_PAGES = "endless-pages"  # lists: the upstream's first page again and again, new tokens
    ODD_TOKENS = "odd-tokens"  # lists: the upstream's pages under page tokens made of `token_text`
    GZIP_BOMB = "gzip-bomb"  # 200, gzip: about 1 MB that inflates to 1 GiB of JSON whitespace
    HUGE_BODY = "huge-body"  # 200, `mib` MiB of JSON whitespace then {}, `length` header or chunked
    SLOW_BODY = "slow-body"  # 200, a body that trickles in a byte at a time and never ends
    MESSAGE = "message"  # `status` with {"message": `text`}
    BODY = "body"  # 200 with `body` (bytes) and `headers`
    RAW = "raw"  # `raw` bytes written on the socket as the whole answer, then the connection closed
    ECHO_TOKEN = "echo-token"  # the upstream's answer with the token it received put in its strings
    TAMPER = "tamper"  # the upstream's answer passed through `tamper(Exchange)`, which may change it


@dataclass
class Reply:
    """One scripted answer."""

    status: int = 200
    headers: list[tuple[str, str]] = field(default_factory=list)
    body: bytes = b""
    raw: bytes | None = None  # written as is instead of an HTTP response


@dataclass
class Exchange:
    """One proxied answer a TAMPER test may change: status, JSON data and headers."""

    kind: str
    path: str  # without /api/v2
    query: dict[str, str]
    status: int
    data: Any
    headers: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Seen:
    path: str  # raw, as sent
    query: tuple[tuple[str, str], ...]
    token: str | None
    at: float = 0.0  # when it arrived (time.monotonic)


class HostileServer:
    def __init__(self, upstream: str | None = None) -> None:
        self.upstream = upstream.rstrip("/") if upstream else None
        self.mode = Mode.PROXY
        self.kinds: frozenset[str] = KINDS
        self.only: str | None = None
        self.params: dict[str, Any] = {}
        self.seen: list[Seen] = []
        self.base_url = ""
        self._script: Iterator[Reply] | None = None
        self._counter = itertools.count(1)
        self._session: aiohttp.ClientSession | None = None

    # -- what to do ----------------------------------------------------------------------------
    def behave(
        self,
        mode: Mode,
        kinds: str | set[str] | frozenset[str] = KINDS,
        only: str | None = None,
        **params: Any,
    ) -> None:
        """Attack requests of `kinds` (whose path contains `only`, if given) the way `mode` says."""
        self.mode = mode
        self.kinds = frozenset({kinds} if isinstance(kinds, str) else kinds)
        self.only = only
        self.params = params
        self._script = None

    def play(self, replies: list[Reply], kinds: str | set[str] | frozenset[str] = KINDS) -> None:
        self.behave(Mode.PROXY, kinds)
        self._script = iter(replies)

    def tokens_received(self) -> set[str]:
        return {s.token for s in self.seen if s.token}

    # -- serving -------------------------------------------------------------------------------
    @contextlib.asynccontextmanager
    async def serve(self) -> AsyncIterator[str]:
        """Serve on 127.0.0.1 (any free port); yields the base URL ending in /api/v2."""
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await runner.setup()
        self._session = aiohttp.ClientSession(auto_decompress=False)
        try:
            site = web.TCPSite(runner, "127.0.0.1", 0)
            await site.start()
            self.base_url = f"http://127.0.0.1:{runner.addresses[0][1]}/api/v2"
            yield self.base_url
        finally:
            await self._session.close()
            await runner.cleanup()

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        path = request.raw_path.split("?", 1)[0]
        token = request.headers.get("Circle-Token")
        self.seen.append(Seen(path, tuple(request.query.items()), token, time.monotonic()))
        if path.startswith(MOVED + "/"):
            return await self._proxy(request, "/api/v2" + path[len(MOVED) :])
        kind = request_kind(path)
        if kind not in self.kinds or (self.only is not None and self.only not in path):
            return await self._proxy(request, path)
        if self._script is not None:
            reply = next(self._script, None)
            return await self._proxy(request, path) if reply is None else await _send(request, reply)
        return await self._attack(request, path, kind)

    async def _attack(self, request: web.Request, path: str, kind: str) -> web.StreamResponse:
        p, n = self.params, next(self._counter)
        mode = self.mode
        if mode is Mode.PROXY:
            return await self._proxy(request, path)
        if mode is Mode.REDIRECT_OTHER:
            return _redirect(p.get("status", 302), p["to"].rstrip("/") + path.removeprefix("/api/v2"))
        if mode is Mode.REDIRECT_SAME:
            return _redirect(307, MOVED + path.removeprefix("/api/v2") + _query(request))
        if mode is Mode.REDIRECT_LOOP:
            return _redirect(302, request.path_qs)
        if mode is Mode.REDIRECT_BAD:
            return _redirect(p["status"], p.get("location"))
        if mode in (Mode.EMPTY_PAGES, Mode.REPEATED_TOKEN, Mode.ENDLESS_PAGES, Mode.ODD_TOKENS):
            return await self._pages(request, path, kind, n)
        if mode is Mode.GZIP_BOMB:
            return await _send(request, Reply(200, [("Content-Encoding", "gzip")], gzip_bomb()))
        if mode is Mode.HUGE_BODY:
            return await _stream_whitespace(request, p.get("mib", 100), with_length=p.get("length", False))
        if mode is Mode.SLOW_BODY:
            return await _trickle(request)
        if mode is Mode.MESSAGE:
            body = json.dumps({"message": p["text"]}).encode()
            return await _send(request, Reply(p.get("status", 400), body=body))
        if mode is Mode.BODY:
            return await _send(request, Reply(p.get("status", 200), list(p.get("headers", [])), p["body"]))
        if mode is Mode.RAW:
            return await _send(request, Reply(raw=p["raw"]))
        if mode is Mode.ECHO_TOKEN:
            return await self._echo(request, path)
        if mode is Mode.TAMPER:
            return await self._tamper(request, path, kind)
        raise AssertionError(mode)

    async def _pages(self, request: web.Request, path: str, kind: str, n: int) -> web.StreamResponse:
        if kind not in LISTS:
            return await self._proxy(request, path)
        mode = self.mode
        if mode is Mode.EMPTY_PAGES:
            return _json({"items": [], "next_page_token": f"empty-{n}"})
        if mode is Mode.ODD_TOKENS:
            return await self._odd_tokens(request, path)
        status, page = await self._upstream_json(request, path, first_page=True)
        if status != 200 or not isinstance(page, dict):
            return _json(page, status)
        page["next_page_token"] = "again" if mode is Mode.REPEATED_TOKEN else f"more-{n}"
        return _json(page)

    async def _odd_tokens(self, request: web.Request, path: str) -> web.StreamResponse:
        """The upstream's pages, each next-page token disguised as `token_text` + its number."""
        odd: str = self.params["token_text"]
        disguised: dict[str, str] = self.params.setdefault("disguised", {})
        asked = request.query.get("page-token")
        query = {"page-token": disguised[asked]} if asked is not None else {}
        status, page = await self._upstream_json(request, path, query=query)
        if status == 200 and isinstance(page, dict) and page.get("next_page_token"):
            mask = f"{odd}{len(disguised)}"
            disguised[mask] = page["next_page_token"]
            page["next_page_token"] = mask
        return _json(page, status)

    async def _echo(self, request: web.Request, path: str) -> web.StreamResponse:
        token = request.headers.get("Circle-Token", "")
        status, data = await self._upstream_json(request, path)
        echoed = _echo_into(data, token) if status == 200 else {"message": f"bad token {token}"}
        return _json(echoed, status)  # a 404 stays a 404: job-number probes end on one

    async def _tamper(self, request: web.Request, path: str, kind: str) -> web.StreamResponse:
        assert self._session is not None and self.upstream is not None
        url, token = self.upstream + path.removeprefix("/api/v2"), request.headers.get("Circle-Token", "")
        async with self._session.get(url, params=request.query, headers={"Circle-Token": token}) as resp:
            status, data, date = resp.status, json.loads(await resp.read()), resp.headers.get("Date", "")
        exchange = Exchange(
            kind, path.removeprefix("/api/v2"), dict(request.query), status, data, {"Date": date}
        )
        self.params["tamper"](exchange)
        response = _json(exchange.data, exchange.status)
        response.headers.update(exchange.headers)
        return response

    # -- the upstream ----------------------------------------------------------------------------
    async def _proxy(self, request: web.Request, path: str) -> web.StreamResponse:
        if self.upstream is None:
            return _json(_bait(request_kind(path)))
        assert self._session is not None
        url = self.upstream + path.removeprefix("/api/v2")
        async with self._session.get(url, params=request.query) as resp:
            body = await resp.read()
            headers = {k: v for k, v in resp.headers.items() if k in ("Date", "Content-Type", "Retry-After")}
            return web.Response(status=resp.status, body=body, headers=headers)

    async def _upstream_json(
        self,
        request: web.Request,
        path: str,
        *,
        first_page: bool = False,
        query: dict[str, str] | None = None,
    ) -> tuple[int, Any]:
        if self.upstream is None:
            return 200, _bait(request_kind(path))
        assert self._session is not None
        params = query if query is not None else ({} if first_page else dict(request.query))
        async with self._session.get(self.upstream + path.removeprefix("/api/v2"), params=params) as resp:
            return resp.status, json.loads(await resp.read())


def request_kind(path: str) -> str | None:
    """Which API endpoint a raw request path addresses."""
    rest = path.removeprefix("/api/v2")
    if rest.startswith("/project/"):
        return project_path_kind(rest.removeprefix("/project/"))
    parts = rest.strip("/").split("/")
    if len(parts) == 2 and parts[0] in ("pipeline", "user"):
        return parts[0]
    if len(parts) == 3 and parts[0] == "pipeline" and parts[2] == "workflow":
        return "workflows"
    if len(parts) == 3 and parts[0] == "workflow" and parts[2] == "job":
        return "jobs"
    return None


def _bait(kind: str | None) -> Any:
    """What a server that should never have been asked answers: it must never be stored."""
    if kind in LISTS:
        return {"items": [{"id": "bait-item", "name": "bait", "created_at": "2026-01-01T00:00:00Z"}]}
    return {"id": "bait", "slug": "gh/bait/bait", "name": "bait", "vcs_info": {"default_branch": "bait"}}


def _echo_into(data: Any, token: str) -> Any:
    if isinstance(data, dict):
        return {k: _echo_into(v, token) for k, v in data.items()}
    if isinstance(data, list):
        return [_echo_into(v, token) for v in data]
    return f"{data}:{token}" if isinstance(data, str) else data


def _query(request: web.Request) -> str:
    return f"?{request.query_string}" if request.query_string else ""


def _json(payload: Any, status: int = 200) -> web.Response:
    return web.Response(status=status, body=json.dumps(payload).encode(), content_type="application/json")


def _redirect(status: int, location: str | None) -> web.Response:
    headers = {"Location": location} if location is not None else {}
    return web.Response(status=status, headers=headers, body=b"")


async def _send(request: web.Request, reply: Reply) -> web.StreamResponse:
    if reply.raw is not None:
        return await _write_raw(request, reply.raw)
    response = web.Response(status=reply.status, body=reply.body)
    response.headers.clear()
    for name, value in reply.headers:
        response.headers.add(name, value)
    return response


async def _write_raw(request: web.Request, raw: bytes) -> web.StreamResponse:
    transport = request.transport
    assert transport is not None
    transport.write(raw)
    await asyncio.sleep(0.05)
    transport.close()
    raise asyncio.CancelledError  # aiohttp drops the request quietly; the answer was written by hand


async def _stream_whitespace(request: web.Request, mib: int, *, with_length: bool) -> web.StreamResponse:
    response = web.StreamResponse(status=200, headers={"Content-Type": "application/json"})
    if with_length:
        response.content_length = mib * MiB + 2
    with contextlib.suppress(ConnectionError):
        await response.prepare(request)
        block = b" " * MiB
        for _ in range(mib):
            await response.write(block)
        await response.write(b"{}")
        await response.write_eof()
    return response


async def _trickle(request: web.Request) -> web.StreamResponse:
    response = web.StreamResponse(status=200, headers={"Content-Type": "application/json"})
    with contextlib.suppress(ConnectionError):
        await response.prepare(request)
        await response.write(b'{"items": [')
        while True:
            await asyncio.sleep(0.05)
            await response.write(b" ")
    return response


@cache
def gzip_bomb(size: int = GiB) -> bytes:
    """gzip of `size` bytes of spaces (valid JSON whitespace): about size / 1030 bytes."""
    packer = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    block = b" " * MiB
    parts = [packer.compress(block) for _ in range(size // MiB)]
    parts.append(packer.flush())
    return b"".join(parts)
