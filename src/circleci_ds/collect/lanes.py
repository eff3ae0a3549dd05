"""Endpoint lanes and leases: which endpoint this process collects next, and holding it meanwhile.

Rules:
- a lane collects one endpoint at a time; `parallel_endpoints` lanes run at once;
- an endpoint is collected under a lease in the store, renewed every third of its TTL; a lease that
  cannot be renewed was taken over by another collector: the endpoint's work stops (`LeaseLost`);
- renewals run on a thread of their own, not behind the store thread's queue of writes, so a busy
  collector's leases do not lapse while it works;
- an endpoint another collector finished during this run counts as collected elsewhere;
- the lease of a dead collector on this host (same boot and pid namespace) is taken at once, others
  when they expire;
- lanes take turns looking for work and, when everything left is held elsewhere, wait a short poll.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import socket
import time
import uuid
from collections.abc import Awaitable, Callable, Coroutine
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any

from circleci_ds.inputs.fixture import Endpoint
from circleci_ds.store import Store

log = logging.getLogger("circleci_ds.collect.collector")
Db = Callable[..., Awaitable[Any]]


class Outcome(Enum):
    """How an endpoint's turn in this run ended."""

    COLLECTED = "collected"
    FAILED = "failed"
    ELSEWHERE = "collected by another collector"
    LEASE_LOST = "lease lost to another collector"


class LeaseLost(Exception):
    """The endpoint's lease was taken over while this process collected it."""


@dataclass
class EndpointResult:
    endpoint: Endpoint
    outcome: Outcome
    error: str | None = None
    pipelines_saved: int = 0


@dataclass(frozen=True)
class LaneOptions:
    parallel_endpoints: int
    lease_ttl: float
    owner: str


class Lanes:
    """Runs `collect` over endpoints, `parallel_endpoints` at a time, each under a lease."""

    def __init__(
        self,
        store: Store,
        db: Db,
        options: LaneOptions,
        collect: Callable[[Endpoint], Coroutine[Any, Any, EndpointResult]],
        on_done: Callable[[], None],
    ) -> None:
        self.store, self.db, self.options = store, db, options
        self._collect, self._on_done = collect, on_done
        self._claiming = asyncio.Lock()  # one lane looks for work at a time
        self._quiet_until = 0.0  # monotonic time before which no lane looks again
        self._heartbeats = ThreadPoolExecutor(max_workers=1, thread_name_prefix="circleci-ds-leases")

    async def run(self, endpoints: list[Endpoint]) -> dict[str, EndpointResult]:
        started = await self.db(self.store.now)  # the database's clock, shared with other collectors
        pending = list(endpoints)
        results: dict[str, EndpointResult] = {}
        lanes = max(1, min(self.options.parallel_endpoints, len(endpoints)))
        try:
            async with asyncio.TaskGroup() as group:
                for _ in range(lanes):
                    group.create_task(self._lane(pending, started, results))
        finally:
            self._heartbeats.shutdown(wait=True)
        return results

    async def _renew(self, endpoint: Endpoint) -> bool:
        loop = asyncio.get_running_loop()
        o = self.options
        return await loop.run_in_executor(
            self._heartbeats, self.store.renew_lease, endpoint.slug, o.owner, o.lease_ttl
        )

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
                self._on_done()

    async def _next_endpoint(
        self, pending: list[Endpoint], started: float, results: dict[str, EndpointResult]
    ) -> Endpoint | None:
        """An endpoint to collect, or None after a pause while others hold all the rest.

        A short poll, as the run ends only when the others' last endpoints are seen finished;
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
            if endpoint not in pending or not await self._lease(endpoint) or endpoint not in pending:
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
        results[endpoint.slug] = EndpointResult(endpoint, Outcome.ELSEWHERE)
        self._on_done()

    async def _lease(self, endpoint: Endpoint) -> bool:
        store, owner, ttl = self.store, self.options.owner, self.options.lease_ttl
        if await self.db(store.try_lease, endpoint.slug, owner, ttl):
            return True
        holder = await self.db(store.lease_owner, endpoint.slug)
        if holder is not None and dead_local_owner(holder):
            # A collector on this host that was killed: no need to wait for its lease to expire.
            return bool(await self.db(store.take_over_lease, endpoint.slug, holder, owner, ttl))
        return False

    async def _collect_leased(self, endpoint: Endpoint) -> EndpointResult:
        work = asyncio.create_task(self._collect(endpoint))
        heartbeat = asyncio.create_task(self._heartbeat(endpoint, work))
        try:
            return await work
        except asyncio.CancelledError:
            if _lost(heartbeat):
                error = f"{endpoint.written}: {Outcome.LEASE_LOST.value}"
                return EndpointResult(endpoint, Outcome.LEASE_LOST, error)
            raise
        finally:
            heartbeat.cancel()
            await self.db(self.store.release_lease, endpoint.slug, self.options.owner)

    async def _heartbeat(self, endpoint: Endpoint, work: asyncio.Task[EndpointResult]) -> None:
        while True:
            await asyncio.sleep(self.options.lease_ttl / 3)
            if not await self._renew(endpoint):
                log.warning("%s: lease lost; another collector took the endpoint over", endpoint.written)
                work.cancel()
                raise LeaseLost(endpoint.slug)


def _lost(heartbeat: asyncio.Task[None]) -> bool:
    return heartbeat.done() and not heartbeat.cancelled() and isinstance(heartbeat.exception(), LeaseLost)


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


def dead_local_owner(owner: str) -> bool:
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
