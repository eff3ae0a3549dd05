"""Pipeline trees written together: the trees that become ready while the store thread writes a
batch are written as the next batch, in one transaction (a group commit).

Rules:
- A tree's save returns once the tree is written (or refused): a tree still queued when the run
  stops is not written, and is read again next run (the checkpoint moves only after a run without
  error).
- A tree that cannot be filed fails alone (`Trees.write_trees`); a database failure fails every tree
  of its batch with the same StoreError, which stops the run.
- Every batch is written under the collector's lease check: the trees of an endpoint whose lease
  was lost to another collector are refused (`NotLeased`), nothing of them written.
- The queue is an async context manager, entered by the collector's run: the task writing the
  batches lives only inside it. Leaving it (the run stopped) cancels that task; every save still
  waiting ends cancelled, and a batch the store thread is writing is finished there, not again.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

from circleci_ds.store import Store
from circleci_ds.store.trees import TreeWrite

StoreThread = Callable[..., Awaitable[Any]]  # runs a store call on the collector's one store thread


class TreeQueue:
    """The collector's trees waiting for the store thread; saves are taken inside `async with`."""

    def __init__(self, store: Store, run_db: StoreThread, owner: str) -> None:
        self.store, self.db, self.owner = store, run_db, owner
        self.pending: list[tuple[TreeWrite, asyncio.Future[None]]] = []
        self.batches = 0  # transactions written
        self.written = 0  # trees in them
        self._draining: asyncio.Task[None] | None = None
        self._open = False

    async def __aenter__(self) -> TreeQueue:
        self._open = True
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        """End the writing task (already ended after a run without error) and the saves waiting."""
        self._open = False
        if self._draining is not None:
            self._draining.cancel()
            await asyncio.wait([self._draining])
        for _, done in self.pending:
            done.cancel()
        self.pending = []

    async def save(self, item: TreeWrite) -> None:
        """Write `item` with the trees ready beside it; raise its own failure, or its batch's."""
        if not self._open:
            raise RuntimeError("trees are saved only inside `async with TreeQueue(...)`")
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.pending.append((item, done))
        if self._draining is None or self._draining.done():
            self._draining = asyncio.create_task(self._drain())
        await done

    async def _drain(self) -> None:
        while self.pending:
            # A save whose task was cancelled (a lost lease, a signal) has nothing left to write.
            batch = [(item, done) for item, done in self.pending if not done.done()]
            self.pending = []
            if batch:
                await self._write(batch)

    async def _write(self, batch: list[tuple[TreeWrite, asyncio.Future[None]]]) -> None:
        try:
            outcomes = await self.db(self.store.write_trees, [item for item, _ in batch], owner=self.owner)
        except asyncio.CancelledError:
            for _, done in batch:
                done.cancel()
            raise
        except Exception as exc:  # the database failed: every tree of the batch with it
            for _, done in batch:
                if not done.done():
                    done.set_exception(exc)
            return
        self.batches += 1
        self.written += sum(outcome is None for outcome in outcomes)
        for (_, done), outcome in zip(batch, outcomes, strict=True):
            if done.done():
                continue
            if outcome is None:
                done.set_result(None)
            else:
                done.set_exception(outcome)
