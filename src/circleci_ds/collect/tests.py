"""The test-result phase of an endpoint: reads `GET /project/{slug}/{job-number}/tests` of its
unread finished build jobs and writes them in bounded chunks. The rules are those of
circleci_ds.derive.tests (which jobs, which facts, which job names are read less often).
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from circleci_ds.client.http import ApiError, CircleCIClient, NotFound, Unauthorized
from circleci_ds.derive.tests import QUIET_AFTER, fact, job_context, reads_tests, wants_tests
from circleci_ds.store import Store, StoreError
from circleci_ds.store import testresults as db
from circleci_ds.store.testresults import CaseRefs, Marker, ReadJob, TestJob

log = logging.getLogger("circleci_ds.collect.tests")
T = TypeVar("T")
StoreThread = Callable[..., Awaitable[Any]]  # runs a store call on the collector's one store thread

CHUNK = 5000  # results written per transaction at most
BATCH_JOBS = 100  # whole jobs written per transaction at most
PAGE = 500  # jobs needing tests looked at per query: their JSON is held until the page is read
STOP_AFTER = 5  # jobs failing in a row end the endpoint's test phase for this run


@dataclass
class TestCounts:
    """What the test phases of a run did."""

    __test__ = False

    jobs: int = 0  # jobs whose test results were read
    results: int = 0
    skipped: int = 0  # jobs not read: their job name stored no results lately (reads_tests)


@dataclass(frozen=True)
class TestOptions:
    __test__ = False

    jobs_in_flight: int = 16  # bounds memory: a page and a chunk per job at most
    read_all: bool = False  # `collect --tests all`: every job is read, skipped ones included


def save_items(
    store: Store, job: TestJob, items: list[Any], *, seq: int, final: bool, known: CaseRefs | None = None
) -> None:
    """Derive a chunk's facts rows and write them with its raw items (on the store thread)."""
    db.save_chunk(store, job, [fact(item) for item in items], items, seq=seq, final=final, known=known)


def write_jobs(store: Store, jobs: Sequence[tuple[TestJob, list[Any] | None]], known: CaseRefs) -> None:
    """Derive whole jobs' facts rows and write them in one transaction (on the store thread); a job
    without items (None) is written as skipped."""
    rows = [
        ReadJob(job, [fact(item) for item in items], items)
        if items is not None
        else ReadJob(job, (), (), Marker.SKIPPED)
        for job, items in jobs
    ]
    db.save_jobs(store, rows, known)


def unread_page(
    store: Store, endpoint: str, after: int, limit: int, *, with_skipped: bool
) -> tuple[list[TestJob], int | None]:
    """The next page of stored finished build jobs numbered above `after` whose tests were never
    read (or only half-way; `with_skipped`: or skipped), as test_jobs records, and the highest
    number the page looked at (None: no job is left)."""
    page = db.unread_jobs(store, endpoint, after, limit, with_skipped=with_skipped)
    pipelines: dict[str, Any] = {}  # the jobs of a page share few pipelines and workflows
    workflows: dict[str, Any] = {}
    out = []
    for row in page.jobs:
        job = json.loads(row.job)
        if not isinstance(job, dict) or not wants_tests(job):
            continue
        job["details"] = json.loads(row.details) if row.details else None
        if row.pipeline_id not in pipelines:
            pipelines[row.pipeline_id] = json.loads(page.pipelines[row.pipeline_id])
        if row.workflow_id not in workflows:
            workflows[row.workflow_id] = json.loads(page.workflows[row.workflow_id])
        out.append(job_context(endpoint, job, workflows[row.workflow_id], pipelines[row.pipeline_id]))
    return out, (page.jobs[-1].job_number if page.jobs else None)


class TestPhase:
    """Reads the test results of one endpoint's unread jobs, a bounded number of jobs at a time."""

    __test__ = False

    def __init__(
        self,
        client: CircleCIClient,
        store: Store,
        run_db: StoreThread,
        counts: TestCounts,
        endpoint: str,
        options: TestOptions,
    ) -> None:
        self.client = client
        self.store = store
        # Writes go through the collector's one store thread: a second SQLite writer in the same
        # process would make both wait on the file lock's busy handler.
        self.db = run_db
        self.counts = counts
        self.endpoint = endpoint
        self.options = options
        # As many jobs as the client has requests in flight: its semaphore is the real bound; this one
        # bounds memory (a page and a chunk per job at most).
        self.slots = asyncio.Semaphore(max(1, options.jobs_in_flight))
        self.errors: list[str] = []
        self.batch: list[tuple[TestJob, list[Any] | None]] = []  # jobs read (or skipped), not written yet
        self.batched = 0  # their results
        self.group: asyncio.TaskGroup | None = None  # the run's readers and batch writes
        self.writing: asyncio.Task[None] | None = None  # the latest batch handed to the store
        self.known: CaseRefs = {}  # test ids already in the store, shared by the endpoint's jobs
        self.failures_in_a_row = 0
        self.stopped = False  # no more jobs are started this run
        self.streaks: dict[str, int] = {}  # job name -> jobs read in a row without results
        self.woke: dict[str, int] = {}  # quiet job name -> the lowest job number that stored results

    async def run(self) -> list[str]:
        """Read every unread job; the errors of the jobs that could not be read (read again next run)."""
        read_all = self.options.read_all
        if not read_all:
            self.streaks = await self.db(db.quiet_streaks, self.store, self.endpoint)
        after: int | None = -1
        async with asyncio.TaskGroup() as group:
            self.group = group
            while after is not None and not self.stopped:  # a page of jobs at a time: bounded memory
                pending, after = await self.db(
                    unread_page, self.store, self.endpoint, after, PAGE, with_skipped=read_all
                )
                for job in pending:
                    if not read_all and not reads_tests(job, self.streaks.get(job.job_name or "", 0)):
                        await self._batched(job, None)
                        continue
                    await self.slots.acquire()
                    if self.stopped:
                        self.slots.release()
                        break
                    group.create_task(self._guarded(job))
        self.group = None
        await self.flush()
        if self.woke:
            await self.db(db.unskip, self.store, self.endpoint, self.woke)
        return self.errors

    async def _guarded(self, job: TestJob) -> None:
        try:
            await self.read(job)
            self.failures_in_a_row = 0
        except StoreError:
            raise  # the run stops, as for trees
        except Unauthorized as exc:  # the route refused while the pipelines were readable: an extra
            self._failed(str(exc), stop=True)
        except ApiError as exc:
            self._failed(str(exc))
        except Exception as exc:  # a malformed answer fails this job only
            log.debug("tests of job %s failed", job.job_number, exc_info=True)
            self._failed(f"tests of job {job.job_number}: {exc.__class__.__name__}")
        finally:
            self.slots.release()

    def _failed(self, error: str, *, stop: bool = False) -> None:
        self.errors.append(error)
        self.failures_in_a_row += 1
        self.stopped = self.stopped or stop or self.failures_in_a_row >= STOP_AFTER

    async def read(self, job: TestJob) -> None:
        buffer: list[Any] = []
        seq = 0
        try:
            async for page in self.client.test_pages(self.endpoint, job.job_number):
                buffer.extend(page)
                while len(buffer) > CHUNK:  # keep one item back so the last chunk is always final
                    chunk, buffer = buffer[:CHUNK], buffer[CHUNK:]
                    await self.db(save_items, self.store, job, chunk, seq=seq, final=False, known=self.known)
                    seq += 1
        except NotFound:
            if seq:
                raise  # gone half-way: read it all again next run
            buffer = []
        self._heard(job, stored=bool(seq or buffer))
        if seq:  # a large job: its last chunk, with the marker that makes it visible
            await self.db(save_items, self.store, job, buffer, seq=seq, final=True, known=self.known)
            self._counted(seq * CHUNK + len(buffer))
            return
        await self._batched(job, buffer)

    def _heard(self, job: TestJob, *, stored: bool) -> None:
        """Keep each job name's streak of reads without results (reads_tests) up to date."""
        name = job.job_name or ""
        if not stored:
            self.streaks[name] = self.streaks.get(name, 0) + 1
            return
        if self.streaks.pop(name, 0) >= QUIET_AFTER:
            self.woke[name] = min(job.job_number, self.woke.get(name, job.job_number))

    async def _batched(self, job: TestJob, items: list[Any] | None) -> None:
        self.batch.append((job, items))
        self.batched += len(items or ())
        if items is None:
            self.counts.skipped += 1
        if len(self.batch) >= BATCH_JOBS or self.batched >= CHUNK:
            await self._hand_over()

    async def _hand_over(self) -> None:
        """Write the batch on a task of its own. Whoever filled it (a reader, or the loop that
        starts readers) waits only for the write before it: reads go on while the store writes, and
        a store a whole batch behind holds them back."""
        if self.group is None:
            await self.flush()
            return
        batch, self.batch, self.batched = self.batch, [], 0
        previous, self.writing = self.writing, self.group.create_task(self._write(batch))
        if previous is not None:
            await previous

    async def flush(self) -> None:
        """Write the whole jobs read so far in one transaction (a kill before it loses only reads)."""
        batch, self.batch, self.batched = self.batch, [], 0
        await self._write(batch)

    async def _write(self, batch: list[tuple[TestJob, list[Any] | None]]) -> None:
        if batch:
            await self.db(write_jobs, self.store, batch, self.known)
            for _, items in batch:
                if items is not None:
                    self._counted(len(items))

    def _counted(self, results: int) -> None:
        self.counts.jobs += 1
        self.counts.results += results
