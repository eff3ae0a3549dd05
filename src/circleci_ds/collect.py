"""Incremental walk: pipelines -> workflows -> jobs -> job details, stored tree by tree.

Rules (see the README's "Incremental collection"):
- a checkpoint per endpoint: the server time at the start of its last complete run;
- pipelines are listed newest first; paging stops at a page entirely older than checkpoint - lookback;
- a stored pipeline's workflows are read again while it is not final, or while a rerun could still
  land under it (it was last read within `lookback` of its creation);
- jobs and details are read again only for workflows that are new, changed or not final;
- each tree is written in one transaction; the checkpoint moves only after a run with no error.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import socket
import time
import uuid
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

from circleci_ds.api import DEFAULT_API_URL, ApiError, CircleCIClient, NotFound, Unauthorized
from circleci_ds.fixture import Endpoint
from circleci_ds.people import UserPass, resolve_users
from circleci_ds.store import PipelineIndexEntry, Store, StoreError
from circleci_ds.store.database import digest
from circleci_ds.testresults import TestPhase
from circleci_ds.times import parse_ts

log = logging.getLogger("circleci_ds.collect")
T = TypeVar("T")

DEFAULT_LOOKBACK = 72 * 3600.0
CHECKPOINT_MARGIN = 60.0  # seconds taken off the server time a run started at, for clock resolution
FINAL_PIPELINE_STATES = {"created", "errored"}
FINAL_WORKFLOW_STATUSES = {"success", "failed", "error", "canceled", "not_run", "unauthorized"}
OPEN_JOB_STATUSES = {"queued", "running", "not_running", "blocked", "on_hold"}


@dataclass
class Options:
    lookback: float = DEFAULT_LOOKBACK
    from_date: float | None = None
    parallel_endpoints: int = 4
    trees_in_flight: int = 32
    lease_ttl: float = 60.0
    owner: str = field(default_factory=lambda: new_owner())
    tests: bool = True  # read test results of finished build jobs (circleci_ds.testresults)


@dataclass
class Counters:
    endpoints_total: int = 0
    endpoints_done: int = 0
    pipelines: int = 0
    workflows: int = 0
    jobs: int = 0
    details: int = 0
    tests: int = 0  # jobs whose test results were read
    test_results: int = 0


@dataclass
class EndpointResult:
    endpoint: Endpoint
    error: str | None = None
    pipelines_saved: int = 0
    collected_by: str = "self"  # "self", or "another collector" when a cooperating process did it


def origin_for(api_url: str, slug: str) -> str:
    """A stable origin: circleci.com's for the cloud API, the server's host for other installs."""
    if api_url.rstrip("/") == DEFAULT_API_URL:
        return f"https://circleci.com/{slug}"
    parts = urlsplit(api_url)
    return f"{parts.scheme}://{parts.netloc}/{slug}"


def workflow_is_final(workflow: dict[str, Any]) -> bool:
    return workflow.get("status") in FINAL_WORKFLOW_STATUSES


def job_is_open(job: dict[str, Any]) -> bool:
    return job.get("status") in OPEN_JOB_STATUSES


def pipeline_is_final(tree: dict[str, Any]) -> bool:
    if tree.get("state") not in FINAL_PIPELINE_STATES:
        return False
    return all(
        workflow_is_final(wf) and not any(job_is_open(job) for job in wf.get("jobs") or [])
        for wf in tree.get("workflows") or []
    )


def wants_details(job: dict[str, Any]) -> bool:
    """Details exist only for build jobs with a number (approval jobs answer 404)."""
    return job.get("type") == "build" and job.get("job_number") is not None


def _without(obj: dict[str, Any], key: str) -> dict[str, Any]:
    return {k: v for k, v in obj.items() if k != key}


class Collector:
    """Collects endpoints into a store through a client; one instance per run."""

    def __init__(self, client: CircleCIClient, store: Store, options: Options | None = None) -> None:
        self.client = client
        self.store = store
        self.options = options or Options()
        self.counters = Counters()
        self.users = UserPass()
        self._db_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="circleci-ds-store")
        self._tree_slots = asyncio.Semaphore(self.options.trees_in_flight)
        self._claiming = asyncio.Lock()  # one lane looks for work at a time
        self._quiet_until = 0.0  # monotonic time before which no lane looks again

    async def db(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run a store call on the single store thread, so the event loop never blocks on I/O."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._db_thread, partial(fn, *args, **kwargs))

    async def run(self, endpoints: list[Endpoint]) -> list[EndpointResult]:
        """Collect every endpoint once, sharing them with cooperating collectors through leases."""
        self.counters.endpoints_total = len(endpoints)
        started = await self.db(self.store.now)  # the database's clock, shared with other collectors
        pending = list(endpoints)
        results: dict[str, EndpointResult] = {}
        lanes = max(1, min(self.options.parallel_endpoints, len(endpoints)))
        try:
            async with asyncio.TaskGroup() as group:
                for _ in range(lanes):
                    group.create_task(self._lane(pending, started, results))
            self.users = await resolve_users(self.client, self.store, self.db)  # people, once per id
        except BaseExceptionGroup as group_error:
            raise _first(group_error) from None
        finally:
            self._db_thread.shutdown(wait=True)
        return [results[ep.slug] for ep in endpoints if ep.slug in results]

    async def _lane(
        self, pending: list[Endpoint], started: float, results: dict[str, EndpointResult]
    ) -> None:
        while pending:
            endpoint = await self._next_endpoint(pending, started, results)
            if endpoint is None:
                continue
            try:
                results[endpoint.slug] = await self._collect_leased(endpoint)
            finally:
                self.counters.endpoints_done += 1

    async def _next_endpoint(
        self, pending: list[Endpoint], started: float, results: dict[str, EndpointResult]
    ) -> Endpoint | None:
        """An endpoint to collect, or None after a pause while others hold all the rest.

        The lanes take turns, and once a look found nothing, none looks again for a short poll
        interval: short, as the run ends only when the others' last endpoints are seen finished;
        a turn each, as looking costs a few queries per endpoint held elsewhere.
        """
        poll = min(0.5, self.options.lease_ttl / 3)
        async with self._claiming:
            wait = self._quiet_until - time.monotonic()
            if wait <= 0:
                endpoint = await self._claim(pending, started, results)
                if endpoint is not None or not pending:
                    return endpoint
                self._quiet_until = time.monotonic() + poll
                wait = poll
        await asyncio.sleep(wait)  # the rest are held by others; take over if they die
        return None

    async def _claim(
        self, pending: list[Endpoint], started: float, results: dict[str, EndpointResult]
    ) -> Endpoint | None:
        """A pending endpoint now leased to this process; None while others hold all the rest."""
        for endpoint in list(pending):
            if endpoint not in pending:
                continue  # another lane of this process took it meanwhile
            if await self.db(self.store.finished_since, endpoint.slug, started):
                if endpoint in pending:
                    pending.remove(endpoint)
                    self._finished_elsewhere(endpoint, results)
                continue
            if endpoint not in pending:
                continue
            if await self._lease(endpoint):
                if endpoint not in pending:
                    continue
                pending.remove(endpoint)
                # Checked again under the lease: the holder may have finished and released it since.
                if await self.db(self.store.finished_since, endpoint.slug, started):
                    await self.db(self.store.release_lease, endpoint.slug, self.options.owner)
                    self._finished_elsewhere(endpoint, results)
                    continue
                return endpoint
        return None

    def _finished_elsewhere(self, endpoint: Endpoint, results: dict[str, EndpointResult]) -> None:
        results[endpoint.slug] = EndpointResult(endpoint, collected_by="another collector")
        self.counters.endpoints_done += 1

    async def _lease(self, endpoint: Endpoint) -> bool:
        store, owner, ttl = self.store, self.options.owner, self.options.lease_ttl
        if await self.db(store.try_lease, endpoint.slug, owner, ttl):
            return True
        holder = await self.db(store.lease_owner, endpoint.slug)
        if holder is not None and _dead_local_owner(holder):
            # A collector on this host that was killed: no need to wait for its lease to expire.
            return await self.db(store.take_over_lease, endpoint.slug, holder, owner, ttl)
        return False

    async def _collect_leased(self, endpoint: Endpoint) -> EndpointResult:
        work = asyncio.create_task(self.collect_endpoint(endpoint))
        heartbeat = asyncio.create_task(self._heartbeat(endpoint, work))
        try:
            return await work
        except asyncio.CancelledError:
            if heartbeat.done() and not heartbeat.cancelled() and heartbeat.result() == "lost":
                return EndpointResult(endpoint, error=f"{endpoint.written}: lease lost to another collector")
            raise
        finally:
            heartbeat.cancel()
            await self.db(self.store.release_lease, endpoint.slug, self.options.owner)

    async def _heartbeat(self, endpoint: Endpoint, work: asyncio.Task[EndpointResult]) -> str:
        while True:
            await asyncio.sleep(self.options.lease_ttl / 3)
            if not await self.db(
                self.store.renew_lease, endpoint.slug, self.options.owner, self.options.lease_ttl
            ):
                log.warning("%s: lease lost; another collector took the endpoint over", endpoint.written)
                work.cancel()
                return "lost"

    async def collect_endpoint(self, endpoint: Endpoint) -> EndpointResult:
        """One endpoint, start to end; errors end up in the result, except a rejected token."""
        origin = origin_for(self.client.base_url, endpoint.slug)
        await self.db(self.store.ensure_endpoint, endpoint.slug, endpoint.native, origin, endpoint.project)
        await self.db(self.store.record_start, endpoint.slug, await self.db(self.store.now))
        log.info("%s: collecting", endpoint.written)
        walk = _Walk(self, endpoint)
        checkpoint: float | None = None
        error: str | None = None
        test_errors: list[str] = []
        try:
            info = await self.client.project(endpoint.slug)
            await self.db(self.store.save_project_info, endpoint.slug, info)
            checkpoint = await walk.run()
            if self.options.tests:
                test_errors = await TestPhase(self, endpoint.slug).run()
        except (Unauthorized, StoreError):
            raise  # the run stops: a rejected token, or a store that cannot take more
        except NotFound:
            error = f"project not found, or the token cannot see it: {endpoint.written}"
        except ApiError as exc:
            error = f"{endpoint.written}: {exc}"
        except BaseExceptionGroup as group_error:
            first = _first(group_error)
            if isinstance(first, Unauthorized | StoreError) or not isinstance(first, Exception):
                raise first from None
            error = f"{endpoint.written}: {_describe(first)}"
        except Exception as exc:  # a malformed response must not stop the other endpoints
            log.debug("%s failed", endpoint.written, exc_info=True)
            error = f"{endpoint.written}: {_describe(exc)}"
        if error is None and walk.errors:
            error = (
                f"{endpoint.written}: {len(walk.errors)} pipeline(s) not collected; first: {walk.errors[0]}"
            )
        if error is None and test_errors:
            first_test = test_errors[0]
            error = f"{endpoint.written}: tests of {len(test_errors)} job(s) not read; first: {first_test}"
        finished = await self.db(self.store.now)
        await self.db(
            self.store.record_finish, endpoint.slug, finished=finished, error=error, checkpoint=checkpoint
        )
        if error:
            log.error("%s", error)
        else:
            log.info("%s: done, %d pipeline(s) stored", endpoint.written, walk.saved)
        return EndpointResult(endpoint, error, walk.saved)


class _Walk:
    """The state of one endpoint's run."""

    def __init__(self, collector: Collector, endpoint: Endpoint) -> None:
        self.c = collector
        self.client = collector.client
        self.endpoint = endpoint
        self.lookback = collector.options.lookback
        self.from_date = collector.options.from_date
        self.errors: list[str] = []
        self.saved = 0

    async def run(self) -> float | None:
        """Walk the endpoint; return the checkpoint this run earns (server time at its start)."""
        c = self.c
        index = await c.db(c.store.pipeline_index, self.endpoint.slug)
        previous = await c.db(c.store.checkpoint, self.endpoint.slug)
        since = previous - self.lookback if previous is not None else None
        floors = [x for x in (since, self.from_date) if x is not None]
        floor = max(floors) if floors else None
        checkpoint: float | None = None
        seen: set[str] = set()
        async with asyncio.TaskGroup() as group:
            async for page in self.client.pipeline_pages(self.endpoint.slug):
                if checkpoint is None:
                    checkpoint = self.client.server_now() - CHECKPOINT_MARGIN
                for pipeline in page:
                    created = parse_ts(pipeline.get("created_at"))
                    if self.from_date is not None and created is not None and created < self.from_date:
                        continue
                    seen.add(pipeline["id"])
                    entry = index.get(pipeline["id"])
                    if self._listed_needs_read(entry, pipeline):
                        await self._spawn(group, self._tree(pipeline, entry))
                if floor is not None and page and all(_older(p, floor) for p in page):
                    break
            for pipeline_id, entry in index.items():
                if pipeline_id not in seen and self._stored_needs_read(entry):
                    await self._spawn(group, self._refresh(pipeline_id, entry))
        return checkpoint

    def _listed_needs_read(self, entry: PipelineIndexEntry | None, pipeline: dict[str, Any]) -> bool:
        if entry is None:
            return True
        return entry.digest != digest(pipeline) or self._stored_needs_read(entry)

    def _stored_needs_read(self, entry: PipelineIndexEntry) -> bool:
        if not entry.is_final:
            return True
        if entry.created_at is None or entry.fetched_at is None:
            return True
        return entry.fetched_at - entry.created_at <= self.lookback  # a rerun may still come

    async def _spawn(self, group: asyncio.TaskGroup, work: Awaitable[None]) -> None:
        """Start a tree once a slot is free: memory stays bounded whatever the history's size."""
        try:
            await self.c._tree_slots.acquire()
        except BaseException:  # cancelled (a signal): `work` never starts
            _discard(work)
            raise
        task = group.create_task(self._guarded(work))
        task.add_done_callback(lambda _: _discard(work))  # a task cancelled before it ran never started it

    async def _guarded(self, work: Awaitable[None]) -> None:
        try:
            await work
        except (Unauthorized, StoreError):
            raise
        except Exception as exc:  # one bad pipeline must not stop the walk
            log.debug("pipeline failed", exc_info=True)
            self.errors.append(_describe(exc))
        finally:
            self.c._tree_slots.release()

    async def _refresh(self, pipeline_id: str, entry: PipelineIndexEntry) -> None:
        try:
            pipeline = await self.client.pipeline(pipeline_id)
        except NotFound:
            # Deleted upstream: keep what we have, and stop asking.
            stored = await self.c.db(self.c.store.load_tree, pipeline_id)
            if stored is not None:
                await self._save(stored, self.client.server_now(), final=True)
            return
        await self._tree(pipeline, entry)

    async def _tree(self, pipeline: dict[str, Any], entry: PipelineIndexEntry | None) -> None:
        c = self.c
        stored = await c.db(c.store.load_tree, pipeline["id"]) if entry is not None else None
        try:
            listed = await self.client.workflows(pipeline["id"])
        except NotFound:
            listed = None  # past retention: the pipeline is listed, its workflows are gone
        fetched_at = self.client.server_now()
        if listed is None:
            tree = {**pipeline, "workflows": stored["workflows"] if stored else []}
            await self._save(tree, fetched_at, final=True)
            return
        old = {wf["id"]: wf for wf in stored["workflows"]} if stored else {}
        workflows = await asyncio.gather(*(self._workflow(wf, old.get(wf["id"])) for wf in listed))
        tree = {**pipeline, "workflows": list(workflows)}
        await self._save(tree, fetched_at, final=pipeline_is_final(tree))

    async def _save(self, tree: dict[str, Any], fetched_at: float, *, final: bool) -> None:
        await self.c.db(
            self.c.store.save_tree, self.endpoint.slug, tree, fetched_at=fetched_at, is_final=final
        )
        self.saved += 1
        self.c.counters.pipelines += 1

    async def _workflow(self, workflow: dict[str, Any], old: dict[str, Any] | None) -> dict[str, Any]:
        old_jobs = (old or {}).get("jobs") or []
        settled = workflow_is_final(workflow) and not any(job_is_open(j) for j in old_jobs)
        if old is not None and settled and _without(old, "jobs") == workflow:
            return {**workflow, "jobs": old_jobs}
        self.c.counters.workflows += 1
        try:
            jobs = await self.client.jobs(workflow["id"])
        except NotFound:
            jobs = []
        previous = {j["id"]: j for j in old_jobs}
        details = await asyncio.gather(*(self._details(job, previous.get(job["id"])) for job in jobs))
        self.c.counters.jobs += len(jobs)
        return {**workflow, "jobs": [{**job, "details": d} for job, d in zip(jobs, details, strict=True)]}

    async def _details(self, job: dict[str, Any], old: dict[str, Any] | None) -> dict[str, Any] | None:
        if not wants_details(job):
            return None
        if old is not None and _without(old, "details") == job and not job_is_open(job):
            old_details = old.get("details")
            if old_details is None or not job_is_open(old_details):
                return old_details  # unchanged and finished: details cannot have moved
        self.c.counters.details += 1
        try:
            return await self.client.job_details(self.endpoint.slug, job["job_number"])
        except NotFound:
            return None


def _process_space() -> str:
    """What makes a pid mean the same process: this boot and this pid namespace.

    Containers can share a host name without sharing processes; they differ here.
    """
    try:
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
        namespace = os.stat("/proc/self/ns/pid").st_ino
    except OSError:
        return "unknown"
    return hashlib.blake2b(f"{boot}:{namespace}".encode(), digest_size=4).hexdigest()


def new_owner() -> str:
    """`host:pid:process-space:random`, naming this collector in leases and `status`."""
    return f"{socket.gethostname()}:{os.getpid()}:{_process_space()}:{uuid.uuid4().hex[:6]}"


def _dead_local_owner(owner: str) -> bool:
    """True for an owner of this host and process space whose process is gone."""
    parts = owner.split(":")
    if len(parts) != 4 or parts[0] != socket.gethostname() or not parts[1].isdigit():
        return False
    if parts[2] == "unknown" or parts[2] != _process_space():
        return False
    try:
        os.kill(int(parts[1]), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


def _discard(work: Awaitable[None]) -> None:
    """Close a coroutine that may never have run, so it ends quietly (no "never awaited" warning)."""
    close = getattr(work, "close", None)
    if close is not None:
        close()


def _older(pipeline: dict[str, Any], floor: float) -> bool:
    created = parse_ts(pipeline.get("created_at"))
    return created is not None and created < floor


def _describe(exc: BaseException) -> str:
    if isinstance(exc, ApiError):
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
