"""The usage phase of a collection: the organisations' Usage API exports, into `usage_runs`.

Rules (windows and limits are `usage_plan`'s; the CSV is `derive.usage`'s):
- It starts with the collection and runs alongside the endpoints, with a token only (the Usage API
  has no anonymous access): the server prepares the exports while the pipelines are read. What needs
  the endpoints' results waits for them (`endpoints_done`): mapping CSV projects to endpoints (the
  stored project infos), and so downloading and storing.
- The organisations are the fixture's `usage-org-id` entries, else those of the fixture's endpoints:
  the id of `circleci/<org-id>/...` endpoints, GET /me/collaborations for `gh/` and `bb/` ones
  (matched by slug), and the stored project info's `organization_id` when that fails; an
  organisation only a project info not stored yet can name is asked for once the endpoints are done.
- Export jobs in flight from an earlier run are polled first; new windows are asked for newest first
  while the POST limit allows; the rest is said in one line and left to the next run.
- Polling is bounded: at most `UsageOptions.wait` seconds from the phase's start, at growing
  intervals, within the GET limit. A job still processing then is the next run's. A `completed` job
  without download URLs is asked again up to `NULL_URL_POLLS` times, then taken as empty. A job
  found completed before the endpoints are done keeps its URLs (valid for hours) until they are.
- Each URL is downloaded without the token or any CircleCI header (a separate plain session), at most
  `UsageOptions.max_file_bytes` as sent (and `max_export_bytes` for all of an export's files), no
  redirect followed; an export's files and rows are stored in one transaction. Any failure of one
  export (a download, a gzip bomb, a malformed CSV, a `failed` job) is one warning line; that
  export's window is asked for again next run, nothing stored is lost.
- 401, 403 or 404 from the usage routes (no admin rights, CircleCI server, an unknown organisation):
  one line saying cost will be estimated, once the endpoints are done (a token the endpoints reject
  ends the run without it); never a failure of the collection.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from yarl import URL

from circleci_ds.client.http import ApiError, CircleCIClient, NotFound, RateLimited, Unauthorized
from circleci_ds.collect import usage_plan as plan
from circleci_ds.derive.usage import Limits, ProjectMap, UsageFileError, parse_file
from circleci_ds.inputs.fixture import Endpoint
from circleci_ds.store import Store, StoreError
from circleci_ds.store import usage as db_usage
from circleci_ds.text import clean
from circleci_ds.times import iso

log = logging.getLogger("circleci_ds.collect.usage")
Db = Callable[..., Awaitable[Any]]

NULL_URL_POLLS = 3  # `completed` answers without URLs before the job is taken as empty
ABANDON_AFTER = 6 * 3600.0  # a job still processing this long after its POST (the API's timeout is 4 h)
FIRST_POLL = 1.0  # seconds before the first poll of a round of new jobs; doubles up to MAX_POLL
MAX_POLL = 15.0
IN_FLIGHT = ("created", "processing")
DONE = ("stored", "empty")
NO_ACCESS = (401, 403, 404)
CLOCK_POLL = 0.02  # seconds between looks for the server's clock at the phase's start


@dataclass(frozen=True)
class UsageOptions:
    wait: float = 30.0  # seconds the phase may spend waiting for exports, in all
    first_poll: float = FIRST_POLL  # seconds before the first poll; the pause doubles up to MAX_POLL
    post_limit: plan.Limit = plan.POST_LIMIT
    get_limit: plan.Limit = plan.GET_LIMIT
    max_file_bytes: int = 512 * 1024**2  # a downloaded file, as sent
    max_export_bytes: int = 2 * 1024**3  # all files of one export, as sent (held until it is stored)
    max_files: int = 1000  # download URLs of one export
    csv_limits: Limits = field(default_factory=Limits)
    download_timeout: float = 300.0


@dataclass
class UsagePass:
    """What one collection's usage phase did."""

    orgs: int = 0
    exports_stored: int = 0
    rows: int = 0
    failed: int = 0
    left_windows: int = 0
    still_processing: int = 0
    no_access: list[str] = field(default_factory=list)


# -- which organisations (pure) ------------------------------------------------------------------------


def org_slugs(endpoints: list[Endpoint]) -> dict[str, list[str]]:
    """Organisation key -> its endpoints: `gh/acme`, `bb/team`, or the org id of `circleci/` endpoints."""
    orgs: dict[str, list[str]] = {}
    for endpoint in endpoints:
        vcs, org, _ = endpoint.slug.split("/")
        key = org if vcs == "circleci" else f"{vcs}/{org}".lower()
        orgs.setdefault(key, []).append(endpoint.slug)
    return orgs


def match_collaborations(orgs: list[str], items: list[dict[str, Any]]) -> dict[str, str]:
    """`gh/acme`-style keys -> organisation id, from GET /me/collaborations' items."""
    long_vcs = {"github": "gh", "bitbucket": "bb", "gh": "gh", "bb": "bb", "circleci": "circleci"}
    found: dict[str, str] = {}
    for item in items:
        org_id, slug = item.get("id"), item.get("slug")
        if not isinstance(org_id, str) or not isinstance(slug, str) or "/" not in slug:
            continue
        vcs, _, name = slug.partition("/")
        key = f"{long_vcs.get(vcs.lower(), vcs.lower())}/{name}".lower()
        if key in orgs:
            found[key] = org_id
    return found


def org_of_project(info: dict[str, Any] | None) -> str | None:
    value = (info or {}).get("organization_id")
    return value if isinstance(value, str) and value else None


def project_ids(infos: dict[str, dict[str, Any]]) -> dict[str, str]:
    """Endpoint slug -> project id, from the stored GET /project/{slug} answers."""
    return {slug: info["id"] for slug, info in infos.items() if isinstance(info.get("id"), str)}


def org_of_infos(slugs: list[str], infos: dict[str, dict[str, Any]]) -> str | None:
    """The one organisation id the project infos of `slugs` name; None for none, or several."""
    ids = {org_of_project(infos.get(slug)) for slug in slugs} - {None}
    return ids.pop() if len(ids) == 1 else None


# -- the phase (I/O) ---------------------------------------------------------------------------------------


async def collect_usage(
    client: CircleCIClient,
    store: Store,
    db: Db,
    endpoints: list[Endpoint],
    org_ids: tuple[str, ...] = (),
    options: UsageOptions | None = None,
    endpoints_done: asyncio.Event | None = None,
) -> UsagePass:
    """Export, download and store the usage of the organisations behind `endpoints` (or `org_ids`).
    `endpoints_done` is set once the endpoints' project infos are stored; None: they are already."""
    options = options or UsageOptions()
    done = UsagePass()
    if not client.has_token:
        log.info("usage: no token, and the Usage API needs one; cost will be estimated from job details")
        return done
    if endpoints_done is None:
        endpoints_done = asyncio.Event()
        endpoints_done.set()
    async with aiohttp.ClientSession(
        auto_decompress=False,  # the files are gzip as sent; derive.usage checks the magic bytes
        trust_env=False,
        timeout=aiohttp.ClientTimeout(total=options.download_timeout),
        headers={"Accept-Encoding": "identity"},
    ) as downloads:
        phase = _Phase(client, store, db, endpoints, options, endpoints_done, downloads, done)
        await phase.run(org_ids)
    return done


class _NoAccess(Exception):
    """The usage routes refuse this token or organisation."""


class _Phase:
    """One run's usage phase: its organisations, each in a task of its own, and what they share."""

    def __init__(
        self,
        client: CircleCIClient,
        store: Store,
        db: Db,
        endpoints: list[Endpoint],
        options: UsageOptions,
        endpoints_done: asyncio.Event,
        downloads: aiohttp.ClientSession,
        done: UsagePass,
    ) -> None:
        self.client, self.store, self.db, self.endpoints = client, store, db, endpoints
        self.options, self.endpoints_done = options, endpoints_done
        self.downloads, self.done = downloads, done
        self.deadline = time.monotonic() + options.wait  # counted from the phase's start
        self._infos: dict[str, dict[str, Any]] | None = None  # the project infos once the endpoints are done
        self._projects: ProjectMap | None = None
        self._reading = asyncio.Lock()

    async def run(self, org_ids: tuple[str, ...]) -> None:
        try:
            async with asyncio.TaskGroup() as group:
                if org_ids:
                    for org_id in dict.fromkeys(org_ids):
                        group.create_task(self._org(org_id))
                else:
                    await self._find_orgs(group)
        except BaseExceptionGroup as error:
            raise _first_leaf(error) from None

    async def _find_orgs(self, group: asyncio.TaskGroup) -> None:
        """Start each organisation as soon as it is known: most at once, those only a project info
        stored by this run can name once the endpoints are done."""
        by_org = org_slugs(self.endpoints)
        found = await _known_orgs(self.client, by_org, await self.db(self.store.project_infos))
        started = set(found.values())
        for org_id in sorted(started):
            group.create_task(self._org(org_id))
        left = [key for key in by_org if key not in found]
        if not left:
            return
        infos = await self.infos()
        for key in left:
            late = org_of_infos(by_org[key], infos)
            if late is None:
                log.warning("usage: no organisation id found for %s; set the fixture's usage-org-id", key)
            elif late not in started:
                started.add(late)
                group.create_task(self._org(late))

    async def _org(self, org_id: str) -> None:
        self.done.orgs += 1
        await self._server_clock()
        try:
            await _Org(self, org_id).run()
        except _NoAccess as exc:
            self.done.no_access.append(org_id)
            await self.endpoints_done.wait()  # a token the endpoints reject ends the run without this line
            log.warning(
                "usage: no access to the usage of organisation %s (%s); cost will be estimated", org_id, exc
            )

    async def _server_clock(self) -> None:
        """Windows and the limits' bookkeeping are on the server's clock: wait for a first Date
        header (any request's), or for the endpoints' end (a server without Date: this machine's)."""
        while not self.client.knows_server_time and not self.endpoints_done.is_set():
            await asyncio.sleep(CLOCK_POLL)

    async def infos(self) -> dict[str, dict[str, Any]]:
        """The stored project infos, read once the endpoints are done (they store them)."""
        await self.endpoints_done.wait()
        async with self._reading:
            if self._infos is None:
                self._infos = await self.db(self.store.project_infos)
            return self._infos

    async def projects(self) -> ProjectMap:
        """CSV project -> endpoint, once the endpoints' project infos are stored."""
        if self._projects is None:
            infos = await self.infos()
            slugs = [e.slug for e in self.endpoints]
            self._projects = ProjectMap.build(slugs, project_ids({s: infos[s] for s in slugs if s in infos}))
        return self._projects


async def _known_orgs(
    client: CircleCIClient, by_org: dict[str, list[str]], infos: dict[str, dict[str, Any]]
) -> dict[str, str]:
    """Organisation key -> id, for the keys known before the endpoints: `circleci/<org-id>/...`
    slugs, GET /me/collaborations, then the project infos stored by earlier runs."""
    found: dict[str, str] = {key: key for key in by_org if "/" not in key}
    wanted = [key for key in by_org if "/" in key]
    if wanted:
        try:
            found |= match_collaborations(wanted, await client.collaborations())
        except ApiError as exc:
            log.debug("usage: /me/collaborations: %s", exc)
    for key in wanted:
        org_id = org_of_infos(by_org[key], infos) if key not in found else None
        if org_id is not None:
            found[key] = org_id
    return found


class _Org:
    """One organisation's exports in this run."""

    def __init__(self, phase: _Phase, org_id: str) -> None:
        self.phase, self.org_id = phase, org_id
        self.client, self.store, self.db = phase.client, phase.store, phase.db
        self.options, self.downloads, self.done = phase.options, phase.downloads, phase.done
        self.deadline = phase.deadline
        self.polls_refused = False
        self.posts_refused = False
        # Jobs found completed (with their URLs) before the endpoints were done: stored after them.
        self.ready: list[tuple[db_usage.ExportRecord, list[str]]] = []

    async def run(self) -> None:
        records = await self.db(db_usage.exports, self.store, self.org_id)
        now = self.client.server_now()
        pending: list[db_usage.ExportRecord] = []
        for record in records:
            if record.state in IN_FLIGHT and now - record.requested_at > ABANDON_AFTER:
                await self.db(db_usage.update_export, self.store, record.export_id, state="abandoned")
            elif record.state in IN_FLIGHT:
                pending.append(record)
        covered = [(r.window_start, r.window_end) for r in records if r.state in DONE]
        windows = plan.windows_to_export(now, covered, [(r.window_start, r.window_end) for r in pending])
        asked = await self._ask(windows)
        in_flight = {r.export_id: r for r in pending} | {r.export_id: r for r in asked}
        await self._poll(in_flight)
        for record, urls in self.ready:  # the URLs stay valid for hours; the endpoints are done now
            await self._store(record, urls)
        done = {(r.window_start, r.window_end) for r in asked}
        self._say_left([w for w in windows if w not in done], in_flight)

    # -- POST -----------------------------------------------------------------------------------------
    async def _ask(self, windows: list[plan.Window]) -> list[db_usage.ExportRecord]:
        """POST the windows the limit admits, newest first. They are counted in the store all at once
        before any is sent, so a collector starting meanwhile sees the limit used (the requests wait
        behind the endpoints' for the client: one at a time, they would leave it open for seconds).
        The newest goes alone, the rest together once it is admitted; a 429 to it means the server
        counts more than we do, and the rest is the next run's."""
        now = self.client.server_now()
        limit = self.options.post_limit
        count = await self.db(_reserve_posts, self.store, self.org_id, now, limit, len(windows))
        if count == 0:
            return []
        first = await self._post(windows[0], now)
        if self.posts_refused:
            return []
        rest = await asyncio.gather(*(self._post(w, now) for w in windows[1:count]), return_exceptions=True)
        for outcome in rest:
            if isinstance(outcome, BaseException):
                raise outcome  # after every answer is in: the exports created are recorded
        return [r for r in (first, *rest) if isinstance(r, db_usage.ExportRecord)]

    async def _post(self, window: plan.Window, now: float) -> db_usage.ExportRecord | None:
        """One export job asked for and recorded; None when it was not created."""
        start, end = window
        try:
            job = await self.client.create_usage_export(self.org_id, _rfc3339(start), _rfc3339(end))
        except RateLimited:
            await self.db(db_usage.note_request, self.store, self.org_id, "POST", now, refused=True)
            self.posts_refused = True
            return None
        except (Unauthorized, NotFound) as exc:
            raise _NoAccess(_status_of(exc)) from None
        except ApiError as exc:
            if exc.status in NO_ACCESS:
                raise _NoAccess(_status_of(exc)) from None
            log.warning("usage: export of %s..%s not created: %s", iso(start), iso(end), exc)
            return None
        export_id = job.get("usage_export_job_id")
        if not isinstance(export_id, str) or not 0 < len(export_id) <= 64:
            log.warning("usage: an export job answer without a usable id; skipped")
            return None
        await self.db(db_usage.add_export, self.store, export_id, self.org_id, start, end, now)
        return db_usage.ExportRecord(export_id, self.org_id, start, end, "created", now, 0, 0, None, None)

    # -- GET, download, store -------------------------------------------------------------------------
    async def _poll(self, in_flight: dict[str, db_usage.ExportRecord]) -> None:
        pause = self.options.first_poll
        null_polls = {export_id: r.null_url_polls for export_id, r in in_flight.items()}
        while in_flight and not self.polls_refused:
            if not await self._sleep(pause):
                return
            for export_id in list(in_flight):
                if not await self._get_slot():
                    return
                finished = await self._poll_one(in_flight[export_id], null_polls)
                if finished:
                    del in_flight[export_id]
                if self.polls_refused:
                    return
            pause = min(MAX_POLL, pause * 2)

    async def _sleep(self, seconds: float) -> bool:
        """Sleep `seconds`; False when time is up. Past the deadline, polling goes on while the endpoints
        are still read (the exports get ready meanwhile, at no cost in time) and ends when they are."""
        if time.monotonic() + seconds <= self.deadline:
            await asyncio.sleep(seconds)
            return True
        done = self.phase.endpoints_done
        if done.is_set():
            return False
        try:
            await asyncio.wait_for(done.wait(), seconds)
        except TimeoutError:
            return True  # slept it out while the endpoints were read
        return False  # they are done: the deadline holds again, and this sleep would have passed it

    async def _get_slot(self) -> bool:
        """Wait for the GET limit to admit a request, within the deadline; False when it cannot."""
        limit = self.options.get_limit
        now = self.client.server_now()
        sent = await self.db(db_usage.request_times, self.store, self.org_id, "GET", now - limit.window)
        wait = plan.next_slot(sent, now, limit) - now
        return wait <= 0 or await self._sleep(wait)

    async def _poll_one(self, record: db_usage.ExportRecord, null_polls: dict[str, int]) -> bool:
        """Ask for one job's state; True once it is settled (stored, empty, failed or gone)."""
        now = self.client.server_now()
        export_id = record.export_id
        await self.db(db_usage.note_request, self.store, self.org_id, "GET", now, export_id=export_id)
        try:
            answer = await self.client.usage_export(self.org_id, export_id)
        except RateLimited:
            await self.db(
                db_usage.note_request, self.store, self.org_id, "GET", now, refused=True, export_id=export_id
            )
            self.polls_refused = True
            log.warning("usage: the export status route refused more requests (HTTP 429); the next run polls")
            return False
        except NotFound:
            await self.db(db_usage.update_export, self.store, export_id, state="abandoned", error="not found")
            return True
        except Unauthorized as exc:
            raise _NoAccess(_status_of(exc)) from None
        except ApiError as exc:
            if exc.status in NO_ACCESS:
                raise _NoAccess(_status_of(exc)) from None
            log.debug("usage: export %s: %s", export_id, exc)
            return False
        state = answer.get("state")
        urls = answer.get("download_urls")
        if state == "failed":
            reason = clean(answer.get("error_reason") or "no reason given", 200)
            await self._fail(export_id, f"the export job failed: {reason}")
            return True
        if state != "completed":
            await self.db(db_usage.update_export, self.store, export_id, state="processing")
            return False
        if urls is None:
            null_polls[export_id] = null_polls.get(export_id, 0) + 1
            if null_polls[export_id] < NULL_URL_POLLS:
                await self.db(
                    db_usage.update_export, self.store, export_id, null_url_polls=null_polls[export_id]
                )
                return False
            urls = []  # completed, still without URLs after a few polls: nothing to read
        if not isinstance(urls, list) or not all(isinstance(u, str) for u in urls):
            await self._fail(export_id, "download_urls is not a list of URLs")
            return True
        if self.phase.endpoints_done.is_set():
            await self._store(record, urls)
        else:
            self.ready.append((record, urls))  # stored once the project map can be built
        return True

    async def _store(self, record: db_usage.ExportRecord, urls: list[str]) -> None:
        projects = await self.phase.projects()
        try:
            files = await self._download_all(urls)
            rows = await self.db(
                db_usage.write_export,
                self.store,
                record.export_id,
                files,
                self._rows(record.export_id, files, projects),
                self.client.server_now(),
            )
        except (UsageFileError, _DownloadError) as exc:
            await self._fail(record.export_id, str(exc))
            return
        if not files:
            await self.db(db_usage.update_export, self.store, record.export_id, state="empty")
        self.done.exports_stored += 1
        self.done.rows += rows
        log.info(
            "usage: %s..%s: %d job run(s) from %d file(s)",
            iso(record.window_start),
            iso(record.window_end),
            rows,
            len(files),
        )

    def _rows(self, export_id: str, files: list[bytes], projects: ProjectMap) -> Iterator[dict[str, Any]]:
        for number, data in enumerate(files, 1):
            try:
                yield from parse_file(data, export_id, projects, self.options.csv_limits)
            except UsageFileError as exc:
                raise UsageFileError(f"file {number} of {len(files)}: {exc}") from None

    async def _download_all(self, urls: list[str]) -> list[bytes]:
        if len(urls) > self.options.max_files:
            raise _DownloadError(f"{len(urls)} download URLs, more than {self.options.max_files}")
        files: list[bytes] = []
        total = 0
        for url in urls:
            files.append(await self._download(url))
            total += len(files[-1])
            if total > self.options.max_export_bytes:
                raise _DownloadError(f"the export's files pass {self.options.max_export_bytes} bytes")
        return files

    async def _download(self, url: str) -> bytes:
        """One file as sent, without the token or any CircleCI header, at most max_file_bytes."""
        target = URL(url)
        if target.scheme not in ("http", "https") or not target.host:
            raise _DownloadError(f"not an http(s) download URL ({clean(url, 60)})")
        shown = f"{target.scheme}://{target.host}{clean(target.path, 80)}"  # never the signed query
        limit = self.options.max_file_bytes
        try:
            async with self.downloads.get(target, allow_redirects=False) as resp:
                if resp.status != 200:
                    raise _DownloadError(f"download of {shown}: HTTP {resp.status}")
                if resp.content_length is not None and resp.content_length > limit:
                    raise _DownloadError(f"download of {shown}: larger than {limit} bytes")
                pieces, size = [], 0
                async for chunk in resp.content.iter_chunked(256 * 1024):
                    size += len(chunk)
                    if size > limit:
                        raise _DownloadError(f"download of {shown}: larger than {limit} bytes")
                    pieces.append(chunk)
                return b"".join(pieces)
        except (TimeoutError, aiohttp.ClientError) as exc:
            raise _DownloadError(f"download of {shown}: {exc.__class__.__name__}") from None

    async def _fail(self, export_id: str, why: str) -> None:
        self.done.failed += 1
        message = clean(why, 300)
        await self.db(db_usage.update_export, self.store, export_id, state="failed", error=message)
        log.warning("usage: export %s failed, asked again next run: %s", export_id, message)

    def _say_left(self, windows: list[plan.Window], in_flight: dict[str, db_usage.ExportRecord]) -> None:
        self.done.left_windows += len(windows)
        self.done.still_processing += len(in_flight)
        if windows:
            oldest = min(start for start, _ in windows)
            newest = max(end for _, end in windows)
            log.info(
                "usage: %d window(s) from %s to %s not asked for this run (at most %d exports an hour); "
                "the next run asks for them",
                len(windows),
                iso(oldest, ms=False),
                iso(newest, ms=False),
                self.options.post_limit.count,
            )
        if in_flight:
            log.info("usage: %d export(s) not ready yet; the next run picks them up", len(in_flight))


def _reserve_posts(store: Store, org_id: str, now: float, limit: plan.Limit, wanted: int) -> int:
    """How many POSTs may go now, at most `wanted`, each counted in the store at once: one call on
    the store thread, so the window in which another collector could count the same is short."""
    sent = db_usage.request_times(store, org_id, "POST", now - limit.window)
    count = min(wanted, plan.allowed_now(sent, now, limit))
    for _ in range(count):
        db_usage.note_request(store, org_id, "POST", now)
    return count


class _DownloadError(Exception):
    """A usage file that could not be downloaded; fails its export."""


def _rfc3339(epoch: float) -> str:
    """A window bound as the API takes it (whole seconds, UTC)."""
    text = iso(epoch, ms=False)
    assert text is not None, "windows lie within the last year"
    return text


def _status_of(exc: ApiError) -> str:
    return f"HTTP {exc.status}" if exc.status else str(exc)


def _first_leaf(group: BaseExceptionGroup) -> BaseException:
    """The exception that matters in a task group's failure: a StoreError first (it ends the run),
    else the first one (the unexpected, a warning of the collector's)."""
    stores, _ = group.split(StoreError)
    first: BaseException = stores or group
    while isinstance(first, BaseExceptionGroup):
        first = first.exceptions[0]
    return first
