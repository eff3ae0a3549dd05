"""Incremental walk: job numbers -> pipelines -> workflows -> jobs -> job details, stored tree by tree.

The rules live in `rules.py` (pure functions); this module does the reading and the storing:
- the job-number walk first: the numbers past the endpoint's job frontier that started since the
  last run, whose details name pipelines to read again (reruns) and serve the trees read below;
- then the listing, newest first, down to the previous checkpoint, reading each pipeline that
  `rules.needs_read` picks, then the stored pipelines it picks that were not listed;
- each tree is written in one transaction; a malformed item fails that pipeline only;
- the checkpoint and the job frontier move only after a run with no error;
- after an endpoint's trees are stored, its per-endpoint phases run (`Collector.after_trees`).
Lanes and leases (which endpoint this process collects) live in `lanes.py`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Coroutine
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from enum import Enum
from functools import partial
from typing import Any, TypeVar
from urllib.parse import urlsplit

from circleci_ds.client.http import (
    DEFAULT_API_URL,
    ApiError,
    CircleCIClient,
    MalformedResponse,
    NotFound,
    Unauthorized,
)
from circleci_ds.collect import rules
from circleci_ds.collect.lanes import EndpointResult, LaneOptions, Lanes, Outcome, new_owner
from circleci_ds.collect.tests import TestCounts, TestOptions, TestPhase
from circleci_ds.collect.treequeue import TreeQueue
from circleci_ds.collect.usage import UsageOptions, UsagePass, collect_usage
from circleci_ds.collect.users import UserPass, resolve_users
from circleci_ds.inputs.fixture import Endpoint
from circleci_ds.store import PipelineIndexEntry, Store, StoreError
from circleci_ds.store.base import TreeRefused, digest, dumps
from circleci_ds.store.trees import TreeWrite
from circleci_ds.times import parse_ts

log = logging.getLogger("circleci_ds.collect.collector")
T = TypeVar("T")

DEFAULT_LOOKBACK = 72 * 3600.0
DEFAULT_CONCURRENCY = 32  # reaches 20x the sequential speed at 25 ms latency; the pacer governs the rate
TREES_PER_REQUEST = 2  # pipeline trees in flight per request in flight: keeps every request slot busy
CHECKPOINT_MARGIN = 60.0  # seconds taken off the server time a run started at, for clock resolution
WALK_LIMIT = 100_000  # job numbers probed in one run at most (a server answering every number)
WALK_KEEP = 5_000  # walked job details kept in memory to serve the trees
WALK_KEEP_BYTES = 32 * 1024 * 1024  # and their JSON's size in all: past it, details are read again later


def trees_in_flight(concurrency: int) -> int:
    """The one bound on pipeline trees in memory at once: TREES_PER_REQUEST x concurrency."""
    return TREES_PER_REQUEST * max(1, concurrency)


@dataclass
class Options:
    lookback: float = DEFAULT_LOOKBACK  # horizon of the age-spaced re-read (rules.reread_due)
    from_date: float | None = None
    parallel_endpoints: int = 4
    trees_in_flight: int = field(default_factory=lambda: trees_in_flight(DEFAULT_CONCURRENCY))
    lease_ttl: float = 60.0
    owner: str = field(default_factory=new_owner)
    rerun_walk: bool = True  # the job-number walk (off: only the age-spaced re-read finds reruns)
    tests: bool = True  # read test results of finished build jobs (circleci_ds.derive.tests)
    tests_all: bool = False  # read those of every job, quiet job names' included (`--tests all`)
    usage: bool = True  # the organisations' Usage API exports (circleci_ds.collect.usage)
    usage_org_ids: tuple[str, ...] = ()  # the fixture's usage-org-id entries; else found from the endpoints
    usage_options: UsageOptions = field(default_factory=UsageOptions)


class Phase(Enum):
    WAITING = "waiting"
    WALKING = "looking for reruns"
    LISTING = "listing and reading"
    READING = "reading stored ones"
    DONE = "done"
    FAILED = "failed"


@dataclass
class EndpointProgress:
    """What is known of one endpoint's run so far, for the progress display."""

    name: str
    phase: Phase = Phase.WAITING
    probed: int = 0  # job numbers probed by the walk
    signaled: int = 0  # stored pipelines the walk named (reruns)
    listed: int = 0  # pipelines listed
    to_read: int = 0  # trees picked for reading
    stored: int = 0  # trees stored
    open_read: int = 0  # of them, pipelines still open at the last run, read again
    failed: int = 0  # items that could not be collected


@dataclass
class Counters:
    endpoints_total: int = 0
    endpoints_done: int = 0
    pipelines: int = 0
    workflows: int = 0
    jobs: int = 0
    details: int = 0
    tests: TestCounts = field(default_factory=TestCounts)
    endpoints: dict[str, EndpointProgress] = field(default_factory=dict)


class MalformedItem(Exception):
    """A list item that cannot be stored (no id, wrong types); fails its pipeline only."""


class TreeSlots:
    """At most `size` pipeline trees in flight. A slot is taken before a tree's task is created and
    given back by the task's done callback, which runs however the task ends, even cancelled before
    it ran: acquire and release are paired here, nowhere else."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._free = asyncio.Semaphore(size)

    async def spawn(self, group: asyncio.TaskGroup, start: Callable[[], Coroutine[Any, Any, None]]) -> None:
        """Run `start()` as a task of `group` once a slot is free; nothing is created before that,
        so a wait cancelled (a signal) leaves nothing behind."""
        await self._free.acquire()
        work = start()
        try:
            task = group.create_task(work)
        except BaseException:
            work.close()
            self._free.release()
            raise
        task.add_done_callback(lambda _task: self._free.release())


def origin_for(api_url: str, slug: str) -> str:
    """A stable origin: circleci.com's for the cloud API, the server's host for other installs."""
    if api_url.rstrip("/") == DEFAULT_API_URL:
        return f"https://circleci.com/{slug}"
    parts = urlsplit(api_url)
    return f"{parts.scheme}://{parts.netloc}/{slug}"


class Collector:
    """Collects endpoints into a store through a client; one instance per run."""

    def __init__(self, client: CircleCIClient, store: Store, options: Options | None = None) -> None:
        self.client = client
        self.store = store
        self.options = options or Options()
        self.counters = Counters()
        self.slots = TreeSlots(self.options.trees_in_flight)
        self.users = UserPass()
        self.usage = UsagePass()
        self._db_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="circleci-ds-store")
        self.trees = TreeQueue(store, self.db, self.options.owner)  # trees written a batch at a time

    async def db(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run a store call on the single store thread, so the event loop never blocks on I/O."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._db_thread, partial(fn, *args, **kwargs))

    async def run(self, endpoints: list[Endpoint]) -> list[EndpointResult]:
        """Collect every endpoint once, sharing them with cooperating collectors through leases."""
        self.counters.endpoints_total = len(endpoints)
        for endpoint in endpoints:
            self.counters.endpoints[endpoint.slug] = EndpointProgress(endpoint.written)
        o = self.options
        lanes = Lanes(
            self.store,
            self.db,
            LaneOptions(o.parallel_endpoints, o.lease_ttl, o.owner),
            self.collect_endpoint,
            self._endpoint_done,
        )
        endpoints_done = asyncio.Event()  # their project infos are stored: usage can map projects
        try:
            async with self.trees, asyncio.TaskGroup() as group:
                # The usage phase runs alongside: the server prepares the exports while pipelines are read.
                usage = group.create_task(self._usage(endpoints, endpoints_done)) if o.usage else None
                results = await lanes.run(endpoints)
                endpoints_done.set()
                self.users = await resolve_users(self.client, self.store, self.db)  # people, once per id
                if usage is not None:
                    self.usage = await usage
        except BaseExceptionGroup as group_error:
            raise _first(group_error) from None
        finally:
            self._db_thread.shutdown(wait=True)
        return [results[ep.slug] for ep in endpoints if ep.slug in results]

    async def _usage(self, endpoints: list[Endpoint], endpoints_done: asyncio.Event) -> UsagePass:
        """The usage phase: an extra, whatever it meets is a warning, never the collection's failure."""
        o = self.options
        try:
            return await collect_usage(
                self.client, self.store, self.db, endpoints, o.usage_org_ids, o.usage_options, endpoints_done
            )
        except StoreError:
            raise
        except Exception as exc:
            log.debug("usage phase failed", exc_info=True)
            why = _describe(exc)
            log.warning("usage: not collected this run (%s); cost will be estimated where it is missing", why)
            return UsagePass()

    def _endpoint_done(self) -> None:
        self.counters.endpoints_done += 1

    def progress(self, endpoint: Endpoint) -> EndpointProgress:
        return self.counters.endpoints.setdefault(endpoint.slug, EndpointProgress(endpoint.written))

    async def collect_endpoint(self, endpoint: Endpoint) -> EndpointResult:
        """One endpoint, start to end; errors end up in the result, except a rejected token."""
        origin = origin_for(self.client.base_url, endpoint.slug)
        await self.db(self.store.ensure_endpoint, endpoint.slug, endpoint.native, origin, endpoint.project)
        await self.db(self.store.record_start, endpoint.slug, await self.db(self.store.now))
        log.info("%s: collecting", endpoint.written)
        walk = _Walk(self, endpoint)
        ended: tuple[float | None, int | None] = (None, None)
        error: str | None = None
        try:
            try:
                ended = await walk.run()
                await self.after_trees(endpoint, walk)
            except BaseExceptionGroup as group_error:
                raise _first(group_error) from None
        except (Unauthorized, StoreError):
            raise  # the run stops: a rejected token, or a store that cannot take more
        except NotFound:
            error = f"project not found, or the token cannot see it: {endpoint.written}"
        except ApiError as exc:
            error = f"{endpoint.written}: {exc}"
        except Exception as exc:  # a malformed response must not stop the other endpoints
            log.debug("%s failed", endpoint.written, exc_info=True)
            error = f"{endpoint.written}: {_describe(exc)}"
        if error is None and walk.errors:
            error = f"{endpoint.written}: {len(walk.errors)} item(s) not collected; first: {walk.errors[0]}"
        checkpoint, frontier = ended
        finished = await self.db(self.store.now)
        await self.db(
            self.store.record_finish,
            endpoint.slug,
            finished=finished,
            error=error,
            checkpoint=checkpoint,
            job_frontier=frontier,
        )
        progress = self.progress(endpoint)
        progress.phase = Phase.FAILED if error else Phase.DONE
        if error:
            log.error("%s", error)
            return EndpointResult(endpoint, Outcome.FAILED, error, walk.saved)
        log.info("%s: done, %d pipeline(s) stored", endpoint.written, walk.saved)
        return EndpointResult(endpoint, Outcome.COLLECTED, None, walk.saved)

    async def after_trees(self, endpoint: Endpoint, walk: _Walk) -> None:
        """Per-endpoint phases that need the endpoint's trees stored; they run before the endpoint's
        run is recorded, and an ApiError they raise fails the endpoint. Today: the project info, then
        the test results of finished jobs (unless Options.tests is off), both extras: what they cannot
        read is a warning, and is asked again next run."""
        await self._project_info(endpoint, walk.server_start)
        if self.options.tests:
            o = self.options
            phase_options = TestOptions(jobs_in_flight=o.trees_in_flight // 2, read_all=o.tests_all)
            phase = TestPhase(
                self.client, self.store, self.db, self.counters.tests, endpoint.slug, phase_options
            )
            errors = await phase.run()
            if errors:
                log.warning(
                    "%s: tests of %d job(s) not read, read again next run; first: %s",
                    endpoint.written,
                    len(errors),
                    errors[0],
                )

    async def _project_info(self, endpoint: Endpoint, now: float | None) -> None:
        """GET /project/{slug} when missing or stale; an extra, never a gate (rules.project_info_stale)."""
        now = self.client.server_now() if now is None else now
        if not rules.project_info_stale(await self.db(self.store.project_info_at, endpoint.slug), now):
            return
        try:
            info = await self.client.project(endpoint.slug)
        except Unauthorized:
            raise
        except ApiError as exc:
            stored = (await self.db(self.store.project_infos)).get(endpoint.slug)
            derived = None
            if stored is None:
                branch = rules.default_branch_from(await self.db(self.store.recent_branches, endpoint.slug))
                derived = {"vcs_info": {"default_branch": branch}, "derived_from": "pipelines"}
            log.warning(
                "%s: project info unavailable (%s); default branch taken from the pipelines",
                endpoint.written,
                exc,
            )
            await self.db(self.store.note_project_info, endpoint.slug, now, derived)
            return
        await self.db(self.store.note_project_info, endpoint.slug, now, info)


class _Walk:
    """The state of one endpoint's run."""

    def __init__(self, collector: Collector, endpoint: Endpoint) -> None:
        self.c = collector
        self.client = collector.client
        self.endpoint = endpoint
        self.progress = collector.progress(endpoint)
        self.errors: list[str] = []
        self.saved = 0
        self.server_start: float | None = None  # server time when the run began
        self.walked: dict[int, dict[str, Any]] = {}  # job number -> details, from the walk
        self.walked_bytes = 0  # JSON size of the details kept in `walked`
        self.walked_pipelines: dict[int, str] = {}  # job number -> pipeline id it names
        self.queued: list[int] = []  # numbers of details read for the trees, queued before the start
        self._began = time.monotonic()

    def _note_start(self) -> None:
        """The server's time when the run began, on the early side (Date has 1 s resolution)."""
        if self.server_start is None:
            self.server_start = self.client.server_now() - (time.monotonic() - self._began) - 1.0

    async def run(self) -> tuple[float | None, int | None]:
        """Walk the endpoint; return the checkpoint and job frontier this run earns."""
        c, slug = self.c, self.endpoint.slug
        index = await c.db(c.store.pipeline_index, slug)
        previous = await c.db(c.store.checkpoint, slug)
        frontier, stored_max = await c.db(c.store.job_numbers, slug)
        start = rules.walk_start(frontier, stored_max) if c.options.rerun_walk else None
        walked_top = await self._walk_numbers(start, stored_max) if start is not None else None
        signaled = await self._signaled(set(index))
        checkpoint = await self._list_and_read(index, previous, signaled)
        assert self.server_start is not None
        return checkpoint, await self._frontier(rules.next_frontier(frontier, walked_top, self.queued))

    async def _frontier(self, base: int | None) -> int | None:
        """The frontier this run earns: `base`, extended over the stored numbers just past it."""
        c, slug = self.c, self.endpoint.slug
        _, stored_max = await c.db(c.store.job_numbers, slug)
        if base is None or stored_max is None or stored_max <= base:
            return base
        stored = await c.db(c.store.stored_job_numbers, slug, base + 1, min(stored_max, base + WALK_LIMIT))
        return rules.extend_frontier(base, stored)

    # -- the job-number walk ------------------------------------------------------------------------
    async def _walk_numbers(self, start: int, stored_max: int | None) -> int | None:
        """Probe job numbers upward from `start`; return the highest that answered."""
        self.progress.phase = Phase.WALKING
        number, batch, misses, top = start, rules.WALK_MISSES, 0, None
        while number < start + WALK_LIMIT:
            numbers = range(number, number + batch)
            answers = await asyncio.gather(*(self._probe(n) for n in numbers))
            self._note_start()
            found = False
            for n, details in zip(numbers, answers, strict=True):
                if details is None:
                    misses += 1
                    continue
                misses, found, top = 0, True, n
                if details:
                    self._keep_walked(n, details)
            number += batch
            if rules.walk_done(number - 1, misses, stored_max):
                return top
            batch = rules.next_batch(batch, found)
        log.warning("%s: stopped looking for reruns after %d job numbers", self.endpoint.written, WALK_LIMIT)
        return top

    async def _probe(self, number: int) -> dict[str, Any] | None:
        """The details of job `number`; None for a 404, {} for details refused (that job fails alone)."""
        self.progress.probed += 1
        try:
            return await self.client.job_details(self.endpoint.slug, number)
        except NotFound:
            return None
        except MalformedResponse as exc:
            self._fail_item(str(exc))
            return {}

    def _keep_walked(self, number: int, details: dict[str, Any]) -> None:
        pipeline_id = rules.details_pipeline(details)
        if pipeline_id is not None:
            self.walked_pipelines[number] = pipeline_id
        size = len(dumps(details))
        if len(self.walked) < WALK_KEEP and self.walked_bytes + size <= WALK_KEEP_BYTES:
            self.walked[number] = details
            self.walked_bytes += size

    async def _signaled(self, stored_pipelines: set[str]) -> set[str]:
        if not self.walked_pipelines:
            return set()
        c = self.c
        numbers = self.walked_pipelines
        stored = await c.db(c.store.stored_job_numbers, self.endpoint.slug, min(numbers), max(numbers))
        signaled = rules.rerun_signals(self.walked_pipelines, stored, stored_pipelines)
        self.progress.signaled = len(signaled)
        return signaled

    # -- listing and reading -------------------------------------------------------------------------
    async def _list_and_read(
        self, index: dict[str, PipelineIndexEntry], previous: float | None, signaled: set[str]
    ) -> float | None:
        floor = rules.listing_floor(previous, self.c.options.from_date)
        checkpoint: float | None = None
        seen: set[str] = set()
        self.progress.phase = Phase.LISTING
        async with asyncio.TaskGroup() as group:
            page_number = 0
            async for page in self.client.pipeline_pages(self.endpoint.slug):
                page_number += 1
                self._note_start()
                if checkpoint is None:
                    assert self.server_start is not None
                    checkpoint = self.server_start - CHECKPOINT_MARGIN
                created = []
                for position, item in enumerate(page, 1):
                    problem = rules.item_problem("pipeline", item)
                    if problem is not None:
                        self._fail_item(f"page {page_number}, item {position}: {problem}")
                        continue
                    created.append(parse_ts(item.get("created_at")))
                    if self._wanted(item):
                        seen.add(item["id"])
                        await self._consider(group, item, index.get(item["id"]), item["id"] in signaled)
                if rules.page_ends_listing(created, floor):
                    break
            self.progress.phase = Phase.READING
            for pipeline_id, entry in index.items():
                if pipeline_id not in seen and self._needs_read(entry, None, pipeline_id in signaled):
                    await self._spawn(group, partial(self._refresh, pipeline_id, entry), entry)
        return checkpoint

    def _wanted(self, pipeline: dict[str, Any]) -> bool:
        self.progress.listed += 1
        from_date = self.c.options.from_date
        created = parse_ts(pipeline.get("created_at"))
        return from_date is None or created is None or created >= from_date

    async def _consider(
        self,
        group: asyncio.TaskGroup,
        pipeline: dict[str, Any],
        entry: PipelineIndexEntry | None,
        signaled: bool,
    ) -> None:
        if self._needs_read(entry, pipeline, signaled):
            await self._spawn(group, partial(self._tree, pipeline, entry), entry)

    def _needs_read(
        self, entry: PipelineIndexEntry | None, listed: dict[str, Any] | None, signaled: bool
    ) -> bool:
        assert self.server_start is not None or entry is None
        return rules.needs_read(
            stored=entry is not None,
            is_final=entry is not None and entry.is_final,
            listing_changed=entry is not None and listed is not None and entry.digest != digest(listed),
            signaled=signaled,
            created_at=entry.created_at if entry else None,
            fetched_at=entry.fetched_at if entry else None,
            now=self.server_start or 0.0,
            horizon=self.c.options.lookback,
        )

    async def _spawn(
        self, group: asyncio.TaskGroup, work: Callable[[], Awaitable[None]], entry: PipelineIndexEntry | None
    ) -> None:
        """Start a tree once a slot is free: memory stays bounded whatever the history's size."""
        self.progress.to_read += 1
        if entry is not None and not entry.is_final:
            self.progress.open_read += 1
        await self.c.slots.spawn(group, partial(self._guarded, work))

    async def _guarded(self, work: Callable[[], Awaitable[None]]) -> None:
        try:
            await work()
        except (Unauthorized, StoreError):
            raise
        except TreeRefused as exc:
            self._fail_item(str(exc))
        except Exception as exc:  # one bad pipeline must not stop the walk
            # An ApiError or a malformed item says it all; a traceback only for the unexpected.
            expected = isinstance(exc, ApiError | MalformedItem)
            log.debug("pipeline failed: %s", _describe(exc), exc_info=not expected)
            self._fail_item(_describe(exc))

    def _fail_item(self, message: str) -> None:
        self.errors.append(message)
        self.progress.failed += 1

    async def _refresh(self, pipeline_id: str, entry: PipelineIndexEntry) -> None:
        """A stored pipeline that was not listed: its object is read again only while its state
        (setup) may still change; a settled one is taken from the store."""
        stored = await self.c.db(self.c.store.load_tree, pipeline_id)
        if stored is not None and stored.get("state") in rules.FINAL_PIPELINE_STATES:
            await self._tree({k: v for k, v in stored.items() if k != "workflows"}, entry, stored)
            return
        try:
            pipeline = await self.client.pipeline(pipeline_id)
        except NotFound:
            if stored is not None:  # deleted upstream: keep what we have, and stop asking
                await self._save(stored, self.client.server_now(), final=True)
            return
        problem = rules.item_problem("pipeline", pipeline)
        if problem is not None or pipeline["id"] != pipeline_id:
            raise MalformedItem(problem or f"pipeline {pipeline_id}: answered with another id")
        await self._tree(pipeline, entry, stored)

    async def _tree(
        self, pipeline: dict[str, Any], entry: PipelineIndexEntry | None, stored: dict[str, Any] | None = None
    ) -> None:
        c = self.c
        if stored is None and entry is not None:
            stored = await c.db(c.store.load_tree, pipeline["id"])
        try:
            listed = await self.client.workflows(pipeline["id"])
        except NotFound:
            listed = None  # past retention: the pipeline is listed, its workflows are gone
        fetched_at = self.client.server_now()
        if listed is None:
            tree = {**pipeline, "workflows": stored["workflows"] if stored else []}
            await self._save(tree, fetched_at, final=True)
            return
        _check_items("workflow", listed)
        old = {wf["id"]: wf for wf in stored["workflows"]} if stored else {}
        workflows = await asyncio.gather(*(self._workflow(wf, old.get(wf["id"])) for wf in listed))
        tree = {**pipeline, "workflows": list(workflows)}
        await self._save(tree, fetched_at, final=rules.pipeline_is_final(tree))

    async def _save(self, tree: dict[str, Any], fetched_at: float, *, final: bool) -> None:
        """Write the tree, with the others ready meanwhile (treequeue.py); TreeRefused fails it alone."""
        await self.c.trees.save(TreeWrite(self.endpoint.slug, tree, fetched_at, final))
        self.saved += 1
        self.progress.stored += 1
        self.c.counters.pipelines += 1

    async def _workflow(self, workflow: dict[str, Any], old: dict[str, Any] | None) -> dict[str, Any]:
        old_jobs = (old or {}).get("jobs") or []
        if rules.jobs_reusable(old, workflow, old_jobs):
            return {**workflow, "jobs": old_jobs}
        self.c.counters.workflows += 1
        try:
            jobs = await self.client.jobs(workflow["id"])
        except NotFound:  # the list is gone (past retention): the jobs stored stay
            return {**workflow, "jobs": old_jobs}
        _check_items("job", jobs)
        previous = {j["id"]: j for j in old_jobs}
        details = await asyncio.gather(*(self._details(job, previous.get(job["id"])) for job in jobs))
        self.c.counters.jobs += len(jobs)
        return {**workflow, "jobs": [{**job, "details": d} for job, d in zip(jobs, details, strict=True)]}

    async def _details(self, job: dict[str, Any], old: dict[str, Any] | None) -> dict[str, Any] | None:
        if not rules.wants_details(job):
            return None
        if rules.details_reusable(job, old):
            return old.get("details") if old is not None else None
        walked = self.walked.get(job["job_number"])
        if rules.walked_details_usable(job, walked):
            return walked
        self.c.counters.details += 1
        try:
            details = await self.client.job_details(self.endpoint.slug, job["job_number"])
        except NotFound:
            return None
        self._note_details(details)
        return details

    def _note_details(self, details: dict[str, Any]) -> None:
        assert self.server_start is not None  # set by the first response, before any tree is read
        self.queued += rules.started_before([details], self.server_start)


def _check_items(kind: str, items: list[Any]) -> None:
    for item in items:
        problem = rules.item_problem(kind, item)
        if problem is not None:
            raise MalformedItem(problem)
    twice = rules.duplicate_id(items)
    if twice is not None:
        raise MalformedItem(f"the {kind} list names {kind} {twice} twice")


def _describe(exc: BaseException) -> str:
    if isinstance(exc, ApiError | MalformedItem):
        return str(exc)
    return f"unexpected response ({exc.__class__.__name__}: {exc})"


def _first(group: BaseExceptionGroup) -> BaseException:
    """The exception that matters in a task group's failure: a rejected token first."""
    leaves: list[BaseException] = []

    def walk(exc: BaseException) -> None:
        if isinstance(exc, BaseExceptionGroup):
            for inner in exc.exceptions:
                walk(inner)
        else:
            leaves.append(exc)

    walk(group)
    for leaf in leaves:
        if isinstance(leaf, Unauthorized):
            return leaf
    return leaves[0]
