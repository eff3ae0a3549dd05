"""The Simulator: a seeded history, a simulated clock and ways to serve them over HTTP."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import math
import random
import threading
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from aiohttp import web

from .config import RUNTIME_KNOBS, SimConfig
from .history import History, build_history, epoch_ms, new_uuid
from .render import JSON, View, users_truth
from .server import Api, Stats
from .testresults import tests_truth
from .usage import UsageData, UsageRow, UsageState, truth_of

_INT_KNOBS = frozenset(
    {
        "page_size", "tests_page_size", "rate_burst", "usage_rows_per_file", "usage_post_limit",
        "usage_get_limit", "usage_denied", "usage_null_url_polls",
    }
)  # fmt: skip
_NULLABLE_KNOBS = frozenset({"rate_limit_rps", "token", "retention_days", "usage_denied"})
_STR_KNOBS = frozenset({"retry_after", "token", "limiter", "rate_headers", "limit_body"})


@dataclass
class _ServerThread:
    thread: threading.Thread | None = None
    ready: threading.Event = field(default_factory=threading.Event)
    url: str | None = None
    error: BaseException | None = None
    loop: asyncio.AbstractEventLoop | None = None
    stop: asyncio.Event | None = None


class Simulator:
    """A fake CircleCI API v2 whose answers are a pure function of the seeded history and the clock.

    The clock starts at `config.start` and only moves through `advance()` (or `POST /_sim/advance`).
    """

    def __init__(self, config: SimConfig | None = None) -> None:
        self.config = config or SimConfig()
        self.history: History = build_history(self.config)
        self.recorder = Stats()
        self.me = _me(self.config.seed)
        self._view = View(self.history, epoch_ms(self.config.start))
        self._clock_lock = threading.Lock()
        self._thread: _ServerThread | None = None
        self.usage = UsageState(secret=f"circleci-ds-sim:{self.config.seed}:downloads".encode())
        self._usage_data: UsageData | None = None
        # Tests may mangle a downloaded file: (export job id, part, bytes) -> bytes served.
        self.usage_file_hook: Callable[[str, int, bytes], bytes] | None = None

    # -- clock and state -------------------------------------------------------------------------------

    @property
    def view(self) -> View:
        """What the API shows at the current clock value."""
        return self._view

    @property
    def now(self) -> datetime:
        """The simulated clock (UTC)."""
        return datetime.fromtimestamp(self._view.now / 1000, tz=UTC)

    def advance(self, seconds: float) -> None:
        """Move the clock forward; objects whose events fall in between appear or change."""
        if not math.isfinite(seconds) or seconds < 0:
            raise ValueError("the clock only moves forward, by a finite number of seconds")
        with self._clock_lock:
            # A fresh view drops every memoised rendering of the previous clock value at once.
            self._view = View(self.history, self._view.now + round(seconds * 1000))

    def truth(self, project_slug: str) -> list[JSON]:
        """Visible pipelines of the project, newest first, with nested workflows, jobs and job details
        exactly as the HTTP API returns them now. Raises KeyError for unknown projects."""
        project = self.history.project(project_slug)
        if project is None:
            raise KeyError(project_slug)
        return self._view.truth(project, self.config.page_size, self.config.retention_days)

    def test_truth(self, project_slug: str) -> list[JSON]:
        """Test results of the project's numbered build jobs that answer them now (404s left out),
        by job number, each with the job's context and its suite's labels; KeyError for unknown
        projects."""
        project = self.history.project(project_slug)
        if project is None:
            raise KeyError(project_slug)
        return tests_truth(self.config, project, self._view.now)

    def users_truth(self) -> dict[str, JSON | None]:
        """Every user id the history refers to -> GET /user/{id}'s answer; None for deleted accounts."""
        return users_truth(self.history)

    @property
    def usage_data(self) -> UsageData:
        """Every job run's usage row, built on first use."""
        with self.usage.lock:
            if self._usage_data is None:
                self._usage_data = UsageData(self.history, self.config.seed)
            return self._usage_data

    def usage_truth(self) -> dict[str, JSON]:
        """Every usage row the exports hold now (runs over before the last UTC midnight), by job run id:
        its organisation, project, credits (total less user credits), utilisation and profile."""
        rows: list[UsageRow] = []
        for org_id in sorted(self.usage_data.by_org):
            rows += self.usage_data.available(org_id, self._view.now)
        return {row.job_id: truth_of(self.config.seed, row) for row in rows}

    def download_requests(self) -> list[dict[str, Any]]:
        """What the download origin received: path and headers of every request."""
        with self.usage.lock:
            return [dict(r) for r in self.usage.download_requests]

    @property
    def stats(self) -> dict[str, Any]:
        return self.recorder.snapshot()

    def reset_stats(self) -> None:
        self.recorder.reset()

    def configure(self, **changes: Any) -> dict[str, object]:
        """Change runtime knobs (validated all together); returns the resulting knob values."""
        unknown = set(changes) - RUNTIME_KNOBS
        if unknown:
            raise ValueError(f"unknown or immutable knobs: {sorted(unknown)}")
        coerced = {name: _coerce(name, value) for name, value in changes.items()}
        dataclasses.replace(self.config, **coerced)  # validates the combination before applying it
        for name, value in coerced.items():
            setattr(self.config, name, value)
        return self.config.runtime_knobs()

    # -- serving ---------------------------------------------------------------------------------------

    def make_app(self) -> web.Application:
        return Api(self).app()

    @contextlib.asynccontextmanager
    async def serve(self, host: str = "127.0.0.1", port: int = 0) -> AsyncIterator[str]:
        """Serve on `host:port` (0 picks a free port) and yield the base URL ending in `/api/v2`."""
        runner = web.AppRunner(self.make_app(), access_log=None)
        downloads = web.AppRunner(Api(self).downloads_app(), access_log=None)
        await runner.setup()
        await downloads.setup()
        try:
            site = web.TCPSite(runner, host, port)
            await site.start()
            # The usage files live on another origin (object storage for the real API).
            await web.TCPSite(downloads, host, 0).start()
            self.usage.download_origin = f"http://{_url_host(host)}:{downloads.addresses[0][1]}"
            bound_port = runner.addresses[0][1]
            yield f"http://{_url_host(host)}:{bound_port}/api/v2"
        finally:
            await downloads.cleanup()
            await runner.cleanup()

    async def serve_forever(
        self, host: str = "127.0.0.1", port: int = 0, on_ready: Callable[[str], None] | None = None
    ) -> None:
        """Serve until the calling task is cancelled."""
        async with self.serve(host, port) as url:
            if on_ready is not None:
                on_ready(url)
            await asyncio.Event().wait()

    def start_thread(self, host: str = "127.0.0.1", port: int = 0) -> str:
        """Serve from a background thread with its own event loop; returns the base URL."""
        if self._thread is not None:
            raise RuntimeError("the simulator is already serving from a thread")
        handle = _ServerThread()
        thread = threading.Thread(target=self._thread_main, args=(handle, host, port), name="circleci-sim")
        thread.daemon = True
        handle.thread = thread
        thread.start()
        handle.ready.wait()
        if handle.error is not None or handle.url is None:
            thread.join()
            raise RuntimeError("simulator thread failed to start") from handle.error
        self._thread = handle
        return handle.url

    def stop_thread(self) -> None:
        """Stop the server started by `start_thread` and wait for its thread to end."""
        handle, self._thread = self._thread, None
        if handle is None:
            return
        if handle.loop is not None and handle.stop is not None:
            handle.loop.call_soon_threadsafe(handle.stop.set)
        if handle.thread is not None:
            handle.thread.join()

    def _thread_main(self, handle: _ServerThread, host: str, port: int) -> None:
        try:
            asyncio.run(self._serve_until_stopped(handle, host, port))
        except BaseException as exc:  # surfaced to start_thread's caller
            handle.error = exc
        finally:
            handle.ready.set()

    async def _serve_until_stopped(self, handle: _ServerThread, host: str, port: int) -> None:
        handle.loop = asyncio.get_running_loop()
        handle.stop = asyncio.Event()
        async with self.serve(host, port) as url:
            handle.url = url
            handle.ready.set()
            await handle.stop.wait()


async def run_standalone(
    cfg: SimConfig,
    host: str = "127.0.0.1",
    port: int = 0,
    on_ready: Callable[[str], None] | None = None,
) -> None:
    """Serve a simulator built from `cfg` until cancelled; `on_ready` receives the base URL."""
    await Simulator(cfg).serve_forever(host, port, on_ready)


def _me(seed: int) -> JSON:
    """The user behind any valid token."""
    rng = random.Random(f"circleci-ds-sim:{seed}:me")
    return {"id": new_uuid(rng), "login": "sim-user", "name": "Simulated User", "avatar_url": None}


def _url_host(host: str) -> str:
    if host in ("", "0.0.0.0", "::"):
        return "127.0.0.1"
    return f"[{host}]" if ":" in host else host


def _coerce(name: str, value: Any) -> Any:
    """Check a knob value from JSON; ints are accepted where floats are expected."""
    if value is None and name in _NULLABLE_KNOBS:
        return None
    if isinstance(value, bool):
        raise TypeError(f"{name}: booleans are not accepted")
    if name in _STR_KNOBS:
        if not isinstance(value, str):
            raise TypeError(f"{name} must be a string")
        return value
    if name in _INT_KNOBS:
        if not isinstance(value, int):
            raise TypeError(f"{name} must be an integer")
        return value
    if not isinstance(value, int | float):
        raise TypeError(f"{name} must be a number")
    return float(value)
