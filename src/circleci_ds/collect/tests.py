"""The test-result phase of an endpoint: reads `GET /project/{slug}/{job-number}/tests` of its
unread finished build jobs and writes them in bounded chunks. The rules are those of
circleci_ds.derive.tests.
"""

from __future__ import annotations

import asyncio
import logging
from functools import partial
from typing import TYPE_CHECKING, Any

from circleci_ds.client.http import ApiError, NotFound, Unauthorized
from circleci_ds.derive.tests import TestJob
from circleci_ds.store import StoreError

if TYPE_CHECKING:
    from circleci_ds.collect.collector import Collector
    from circleci_ds.store.testresults import CaseRefs

log = logging.getLogger("circleci_ds.collect.tests")

CHUNK = 5000  # results written per transaction at most
BATCH_JOBS = 100  # whole jobs written per transaction at most
PAGE = 2000  # jobs needing tests looked at per query
STOP_AFTER = 5  # jobs failing in a row end the endpoint's test phase for this run


class TestPhase:
    """Reads the test results of one endpoint's unread jobs, a bounded number of jobs at a time."""

    __test__ = False

    def __init__(self, collector: Collector, endpoint: str) -> None:
        self.c = collector
        self.endpoint = endpoint
        # As many jobs as the client has requests in flight: its semaphore is the real bound; this one
        # bounds memory (a page and a chunk per job at most).
        self.slots = asyncio.Semaphore(max(1, collector.options.trees_in_flight // 2))
        self.errors: list[str] = []
        self.batch: list[tuple[TestJob, list[Any]]] = []  # whole jobs read, not written yet
        self.batched = 0  # their results
        self.known: CaseRefs = {}  # test ids already in the store, shared by the endpoint's jobs
        self.failures_in_a_row = 0
        self.stopped = False  # no more jobs are started this run
        # Writes go through the collector's one store thread: a second SQLite writer in the same
        # process would make both wait on the file lock's busy handler.
        self.db = collector.db

    async def run(self) -> list[str]:
        """Read every unread job; the errors of the jobs that could not be read (read again next run)."""
        from circleci_ds.store import testresults as db

        next_page = partial(db.jobs_needing_tests, self.c.store, self.endpoint)
        after: int | None = -1
        async with asyncio.TaskGroup() as group:
            while after is not None and not self.stopped:  # a page of jobs at a time: bounded memory
                pending, after = await self.db(next_page, after, PAGE)
                for job in pending:
                    await self.slots.acquire()
                    if self.stopped:
                        self.slots.release()
                        break
                    group.create_task(self._guarded(job))
        await self.flush()
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
        from circleci_ds.store import testresults as db

        save = partial(db.save_chunk, self.c.store, job, known=self.known)
        buffer: list[Any] = []
        seq = 0
        try:
            async for page in self.c.client.test_pages(self.endpoint, job.job_number):
                buffer.extend(page)
                while len(buffer) > CHUNK:  # keep one item back so the last chunk is always final
                    chunk, buffer = buffer[:CHUNK], buffer[CHUNK:]
                    await self.db(save, chunk, seq=seq, final=False)
                    seq += 1
        except NotFound:
            if seq:
                raise  # gone half-way: read it all again next run
            buffer = []
        if seq:  # a large job: its last chunk, with the marker that makes it visible
            await self.db(save, buffer, seq=seq, final=True)
            self._counted(seq * CHUNK + len(buffer))
            return
        self.batch.append((job, buffer))
        self.batched += len(buffer)
        if len(self.batch) >= BATCH_JOBS or self.batched >= CHUNK:
            await self.flush()

    async def flush(self) -> None:
        """Write the whole jobs read so far in one transaction (a kill before it loses only reads)."""
        from circleci_ds.store import testresults as db

        batch, self.batch, self.batched = self.batch, [], 0
        if batch:
            await self.db(db.save_jobs, self.c.store, batch, self.known)
            for _, items in batch:
                self._counted(len(items))

    def _counted(self, results: int) -> None:
        self.c.counters.tests += 1
        self.c.counters.test_results += results
