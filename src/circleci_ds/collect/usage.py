"""The usage phase of a collection: the organisations' Usage API exports, into `usage_runs`.

Rules (windows and limits are `usage_plan`'s; the CSV is `derive.usage`'s):
- It runs after the endpoints, with a token only (the Usage API has no anonymous access). The
  organisations are the fixture's `usage-org-id` entries, else those of the fixture's endpoints: the
  id of `circleci/<org-id>/...` endpoints, GET /me/collaborations for `gh/` and `bb/` ones (matched by
  slug), and the stored project info's `organization_id` when that fails.
- Export jobs in flight from an earlier run are polled first; new windows are asked for newest first
  while the POST limit allows; the rest is said in one line and left to the next run.
- Polling is bounded: at most `UsageOptions.wait` seconds in all, at growing intervals, within the GET
  limit. A job still processing then is the next run's. A `completed` job without download URLs is
  asked again up to `NULL_URL_POLLS` times, then taken as empty.
- Each URL is downloaded without the token or any CircleCI header (a separate plain session), at most
  `UsageOptions.max_file_bytes` as sent (and `max_export_bytes` for all of an export's files), no
  redirect followed; an export's files and rows are stored in one transaction. Any failure of one
  export (a download, a gzip bomb, a malformed CSV, a `failed` job) is one warning line; that
  export's window is asked for again next run, nothing stored is lost.
- 401, 403 or 404 from the usage routes (no admin rights, CircleCI server, an unknown organisation):
  one line saying cost will be estimated; never a failure of the collection.
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
from circleci_ds.store import Store
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


# -- the phase (I/O) ---------------------------------------------------------------------------------------


async def collect_usage(
    client: CircleCIClient,
    store: Store,
    db: Db,
    endpoints: list[Endpoint],
    org_ids: tuple[str, ...] = (),
    options: UsageOptions | None = None,
) -> UsagePass:
    """Export, download and store the usage of the organisations behind `endpoints` (or `org_ids`)."""
    options = options or UsageOptions()
    done = UsagePass()
    if not client.has_token:
        log.info("usage: no token, and the Usage API needs one; cost will be estimated from job details")
        return done
    infos: dict[str, dict[str, Any]] = await db(store.project_infos)
    fixture_slugs = [e.slug for e in endpoints]
    projects = ProjectMap.build(
        fixture_slugs, project_ids({s: infos[s] for s in fixture_slugs if s in infos})
    )
    orgs = list(org_ids) or await _find_orgs(client, endpoints, infos)
    deadline = time.monotonic() + options.wait
    async with aiohttp.ClientSession(
        auto_decompress=False,  # the files are gzip as sent; derive.usage checks the magic bytes
        trust_env=False,
        timeout=aiohttp.ClientTimeout(total=options.download_timeout),
        headers={"Accept-Encoding": "identity"},
    ) as downloads:
        for org_id in orgs:
            done.orgs += 1
            org = _Org(client, store, db, org_id, projects, options, downloads, done, deadline)
            try:
                await org.run()
            except _NoAccess as exc:
                done.no_access.append(org_id)
                log.warning(
                    "usage: no access to the usage of organisation %s (%s); cost will be estimated",
                    org_id,
                    exc,
                )
    return done


class _NoAccess(Exception):
    """The usage routes refuse this token or organisation."""


async def _find_orgs(
    client: CircleCIClient, endpoints: list[Endpoint], infos: dict[str, dict[str, Any]]
) -> list[str]:
    by_org = org_slugs(endpoints)
    found: dict[str, str] = {key: key for key in by_org if "/" not in key}  # circleci/<org-id>/...
    wanted = [key for key in by_org if "/" in key]
    if wanted:
        try:
            found |= match_collaborations(wanted, await client.collaborations())
        except ApiError as exc:
            log.debug("usage: /me/collaborations: %s", exc)
    for key in wanted:
        if key not in found:
            ids = {org_of_project(infos.get(slug)) for slug in by_org[key]} - {None}
            if len(ids) == 1:
                found[key] = ids.pop()  # type: ignore[assignment]
            else:
                log.warning("usage: no organisation id found for %s; set the fixture's usage-org-id", key)
    return sorted(set(found.values()))


class _Org:
    """One organisation's exports in this run."""

    def __init__(
        self,
        client: CircleCIClient,
        store: Store,
        db: Db,
        org_id: str,
        projects: ProjectMap,
        options: UsageOptions,
        downloads: aiohttp.ClientSession,
        done: UsagePass,
        deadline: float,
    ) -> None:
        self.client, self.store, self.db, self.org_id = client, store, db, org_id
        self.projects, self.options, self.downloads = projects, options, downloads
        self.done, self.deadline = done, deadline
        self.polls_refused = False

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
        self._say_left(windows[len(asked) :], in_flight)

    # -- POST -----------------------------------------------------------------------------------------
    async def _ask(self, windows: list[plan.Window]) -> list[db_usage.ExportRecord]:
        asked: list[db_usage.ExportRecord] = []
        for start, end in windows:
            now = self.client.server_now()
            sent = await self.db(
                db_usage.request_times, self.store, self.org_id, "POST", now - self.options.post_limit.window
            )
            if plan.allowed_now(sent, now, self.options.post_limit) < 1:
                break
            await self.db(db_usage.note_request, self.store, self.org_id, "POST", now)
            try:
                job = await self.client.create_usage_export(
                    self.org_id, _rfc3339(start), _rfc3339(end)
                )
            except RateLimited:
                await self.db(db_usage.note_request, self.store, self.org_id, "POST", now, refused=True)
                break  # the server counts more than we do: the rest is the next run's
            except (Unauthorized, NotFound) as exc:
                raise _NoAccess(_status_of(exc)) from None
            except ApiError as exc:
                if exc.status in NO_ACCESS:
                    raise _NoAccess(_status_of(exc)) from None
                log.warning("usage: export of %s..%s not created: %s", iso(start), iso(end), exc)
                continue
            export_id = job.get("usage_export_job_id")
            if not isinstance(export_id, str) or not 0 < len(export_id) <= 64:
                log.warning("usage: an export job answer without a usable id; skipped")
                continue
            await self.db(db_usage.add_export, self.store, export_id, self.org_id, start, end, now)
            asked.append(
                db_usage.ExportRecord(export_id, self.org_id, start, end, "created", now, 0, 0, None, None)
            )
        return asked

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
        """Sleep unless it would pass the deadline; False when time is up."""
        if time.monotonic() + seconds > self.deadline:
            return False
        await asyncio.sleep(seconds)
        return True

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
        await self._store(record, urls)
        return True

    async def _store(self, record: db_usage.ExportRecord, urls: list[str]) -> None:
        try:
            files = await self._download_all(urls)
            rows = await self.db(
                db_usage.write_export,
                self.store,
                record.export_id,
                files,
                self._rows(record.export_id, files),
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

    def _rows(self, export_id: str, files: list[bytes]) -> Iterator[dict[str, Any]]:
        for number, data in enumerate(files, 1):
            try:
                yield from parse_file(data, export_id, self.projects, self.options.csv_limits)
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


class _DownloadError(Exception):
    """A usage file that could not be downloaded; fails its export."""


def _rfc3339(epoch: float) -> str:
    """A window bound as the API takes it (whole seconds, UTC)."""
    text = iso(epoch, ms=False)
    assert text is not None, "windows lie within the last year"
    return text


def _status_of(exc: ApiError) -> str:
    return f"HTTP {exc.status}" if exc.status else str(exc)
