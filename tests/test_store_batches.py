"""Trees written a batch at a time: a refused tree fails alone, a lost lease refuses the batch's
trees, and the collector's queue writes the trees ready together in one transaction."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from functools import partial
from typing import Any

import pytest

from circleci_ds.client.http import CircleCIClient
from circleci_ds.collect.collector import Collector, Options
from circleci_ds.collect.treequeue import TreeQueue
from circleci_ds.derive.facts import open_store
from circleci_ds.dev.simulator import SimConfig, SimProject
from circleci_ds.store import Store, StoreError
from circleci_ds.store import schema as s
from circleci_ds.store.base import NotLeased, TreeRefused
from circleci_ds.store.trees import TreeWrite
from collect_helpers import assert_matches_truth, collect, endpoints, serving
from test_store import count_rows, make_tree

API, WEB = "gh/acme/api", "gh/acme/web"


@contextmanager
def opened(url: str) -> Iterator[Store]:
    store = open_store(url)
    try:
        store.ensure_endpoint(API, "api", "https://circleci.com/gh/acme/api")
        store.ensure_endpoint(WEB, "web", "https://circleci.com/gh/acme/web")
        yield store
    finally:
        store.close()


def item(tree: dict[str, Any], endpoint: str = API) -> TreeWrite:
    return TreeWrite(endpoint, tree, 1_793_100_000.0, True)


def twice_named(pid: str, number: int) -> dict[str, Any]:
    """A tree naming one job twice in a workflow: the store refuses it (its key, twice)."""
    tree = make_tree(pid, number, tag="-new")
    tree["workflows"][0]["jobs"].append(tree["workflows"][0]["jobs"][0])
    return tree


def test_a_refused_tree_among_good_ones_fails_alone(db_url: str) -> None:
    with opened(db_url) as store:
        store.save_tree(WEB, make_tree("web-1", 1), fetched_at=1.0, is_final=True)
        old = make_tree("api-2", 2)
        store.save_tree(API, old, fetched_at=1.0, is_final=True)
        batch = [
            item(make_tree("api-1", 1)),
            item(make_tree("web-1", 7, tag="-stolen")),  # web's pipeline id, listed by api
            item(make_tree("api-3", 3)),
            item(twice_named("api-2", 2)),  # fails at the insert: the batch is written again tree by tree
            item(make_tree("api-4", 4)),
        ]
        outcomes = store.write_trees(batch)
        assert [type(o).__name__ if o else None for o in outcomes] == [
            None, "TreeRefused", None, "TreeRefused", None,
        ]  # fmt: skip
        assert "web-1 is filed under another project (gh/acme/web)" in str(outcomes[1])
        assert "api-2: the store refused it" in str(outcomes[3])
        for pid in ("api-1", "api-3", "api-4"):
            assert store.load_tree(pid) == make_tree(pid, int(pid[-1]))
        assert store.load_tree("api-2") == old  # the refused replacement kept the previous tree
        assert store.load_tree("web-1") == make_tree("web-1", 1)
        facts = {t.data["id"]: t.facts for t in store.iter_trees(with_facts=True)}
    assert set(facts) == {"api-1", "api-2", "api-3", "api-4", "web-1"}
    assert all(f is not None and len(f.jobs) == 4 for f in facts.values())
    assert count_rows(db_url, "pipeline_runs") == 5


def test_a_workflow_filed_under_another_pipeline_refuses_only_its_tree(db_url: str) -> None:
    with opened(db_url) as store:
        store.save_tree(API, make_tree("api-1", 1), fetched_at=1.0, is_final=True)
        thief = make_tree("api-2", 2)
        thief["workflows"][1]["id"] = "api-1-w0"
        outcomes = store.write_trees([item(thief), item(make_tree("api-3", 3))])
        assert isinstance(outcomes[0], TreeRefused) and outcomes[1] is None
        assert "workflow api-1-w0 is filed under another pipeline (api-1)" in str(outcomes[0])
        assert store.load_tree("api-2") is None
        assert store.load_tree("api-1") == make_tree("api-1", 1)


def test_rows_left_without_their_pipeline_do_not_block_its_tree(db_url: str) -> None:
    """A batch deletes only by the ids of pipelines stored; rows of a pipeline not stored (which no
    write leaves) make the batch fail, and the tree written alone deletes them by its id."""
    with opened(db_url) as store:
        store.save_tree(API, make_tree("api-1", 1), fetched_at=1.0, is_final=True)
        with store.writing() as conn:
            conn.execute(s.pipelines.delete().where(s.pipelines.c.id == "api-1"))
        outcomes = store.write_trees([item(make_tree("api-1", 1, tag="-again")), item(make_tree("api-2", 2))])
        assert outcomes == [None, None]
        assert store.load_tree("api-1") == make_tree("api-1", 1, tag="-again")
    assert count_rows(db_url, "jobs") == 8


def test_a_malformed_tree_fails_alone_with_its_error(db_url: str) -> None:
    with opened(db_url) as store:
        broken = make_tree("api-1", 1)
        del broken["workflows"][0]["id"]
        outcomes = store.write_trees([item(broken), item(make_tree("api-2", 2))])
        assert isinstance(outcomes[0], KeyError) and outcomes[1] is None
        assert store.load_tree("api-1") is None and store.load_tree("api-2") is not None


def test_a_lost_lease_refuses_the_batch_trees_of_its_endpoint(db_url: str) -> None:
    with opened(db_url) as store:
        assert store.try_lease(API, "me", 60.0)
        assert store.try_lease(WEB, "me", 60.0)
        assert store.take_over_lease(WEB, "me", "other", 60.0)  # web was taken over meanwhile
        batch = [
            item(make_tree("api-1", 1)),
            item(make_tree("web-1", 1), WEB),
            item(make_tree("web-2", 2), WEB),
        ]
        outcomes = store.write_trees(batch, owner="me")
        assert outcomes[0] is None
        assert all(isinstance(o, NotLeased) for o in outcomes[1:])
        assert "the lease of gh/acme/web was lost to another collector" in str(outcomes[1])
        assert store.load_tree("web-1") is None and store.load_tree("web-2") is None
        store.release_lease(API, "me")  # released (the run ended): nothing more is written
        assert isinstance(store.write_trees([item(make_tree("api-5", 5))], owner="me")[0], NotLeased)
        assert store.load_tree("api-5") is None
    assert count_rows(db_url, "pipelines") == 1
    assert count_rows(db_url, "pipeline_runs") == 1


# -- the collector's queue ---------------------------------------------------------------------------
class StoreThread:
    """The collector's one store thread, which a test can hold busy."""

    def __init__(self) -> None:
        self.pool = ThreadPoolExecutor(max_workers=1)
        self.busy = threading.Event()

    async def __call__(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self.pool, partial(fn, *args, **kwargs))

    def hold(self) -> threading.Event:
        release = threading.Event()

        def wait() -> None:
            self.busy.set()
            release.wait(10)

        self.pool.submit(wait)
        self.busy.wait(10)
        return release


class HeldWrites:
    """The store's batch writes, each held on the store thread until `release` is set."""

    def __init__(self, store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
        self.writing, self.release = threading.Event(), threading.Event()
        self.written: list[str] = []  # the pipeline ids of every batch, in order
        self._write_trees = store.write_trees
        monkeypatch.setattr(store, "write_trees", self.write_trees)

    def write_trees(self, batch: list[TreeWrite], owner: str | None = None) -> list[Exception | None]:
        self.written.extend(w.tree["id"] for w in batch)
        self.writing.set()
        self.release.wait(30)
        return self._write_trees(batch, owner=owner)


async def test_the_trees_ready_together_are_one_batch_and_a_refused_one_fails_alone(db_url: str) -> None:
    thread = StoreThread()
    with opened(db_url) as store:
        store.try_lease(API, "me", 60.0)
        store.save_tree(WEB, make_tree("web-1", 1), fetched_at=1.0, is_final=True)
        async with TreeQueue(store, thread, "me") as queue:
            release = thread.hold()  # the store thread writes something else meanwhile
            trees = [make_tree(f"api-{n}", n) for n in range(1, 5)] + [make_tree("web-1", 9)]
            saves = [asyncio.ensure_future(queue.save(item(tree))) for tree in trees]
            await asyncio.sleep(0.05)
            assert not any(s.done() for s in saves)  # nothing written yet: they wait together
            release.set()
            results = await asyncio.gather(*saves, return_exceptions=True)
        assert results[:4] == [None] * 4
        assert isinstance(results[4], TreeRefused) and "web-1" in str(results[4])
        assert (queue.batches, queue.written) == (1, 4)
        assert [t.data["id"] for t in store.iter_trees(endpoint=API)] == ["api-1", "api-2", "api-3", "api-4"]
    thread.pool.shutdown()


async def test_a_save_cancelled_before_its_batch_is_not_written(db_url: str) -> None:
    thread = StoreThread()
    with opened(db_url) as store:
        store.try_lease(API, "me", 60.0)
        async with TreeQueue(store, thread, "me") as queue:
            release = thread.hold()
            first = asyncio.ensure_future(queue.save(item(make_tree("api-1", 1))))
            await asyncio.sleep(0.05)  # its batch is on its way: the next trees wait for the next one
            kept = asyncio.ensure_future(queue.save(item(make_tree("api-2", 2))))
            dropped = asyncio.ensure_future(queue.save(item(make_tree("api-3", 3))))
            await asyncio.sleep(0.05)
            dropped.cancel()  # its endpoint's work stopped (a lost lease, a signal)
            release.set()
            await first
            await kept
            with pytest.raises(asyncio.CancelledError):
                await dropped
        assert (queue.batches, queue.written) == (2, 2)
        assert store.load_tree("api-2") is not None and store.load_tree("api-3") is None
    thread.pool.shutdown()


async def test_a_database_failure_fails_every_tree_of_its_batch(db_url: str) -> None:
    thread = StoreThread()
    with opened(db_url) as store:
        store.try_lease(API, "me", 60.0)
        store.read_only = True  # every write now fails as a StoreError
        async with TreeQueue(store, thread, "me") as queue:
            saves = [queue.save(item(make_tree(f"api-{n}", n))) for n in (1, 2)]
            results = await asyncio.gather(*saves, return_exceptions=True)
        assert all(isinstance(r, StoreError) for r in results)
    thread.pool.shutdown()


async def test_a_save_outside_the_queue_context_is_refused(db_url: str) -> None:
    thread = StoreThread()
    with opened(db_url) as store:
        queue = TreeQueue(store, thread, "me")
        with pytest.raises(RuntimeError, match="async with"):
            await queue.save(item(make_tree("api-1", 1)))
        async with queue:
            pass
        with pytest.raises(RuntimeError, match="async with"):
            await queue.save(item(make_tree("api-1", 1)))
        assert store.load_tree("api-1") is None
    thread.pool.shutdown()


async def test_leaving_the_queue_while_a_batch_is_written_ends_its_task_and_saves(
    db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The queue's owner (a run) is cancelled while the store thread writes a batch and other trees
    wait, and the thread stays busy past the owner's end: leaving the queue ends its writing task,
    every save ends cancelled, and the batch is written once, the waiting trees not at all."""
    thread = StoreThread()
    with opened(db_url) as store:
        store.try_lease(API, "me", 60.0)
        held = HeldWrites(store, monkeypatch)
        queue = TreeQueue(store, thread, "me")
        saves: list[asyncio.Task[None]] = []

        async def run() -> None:
            async with queue, asyncio.TaskGroup() as group:
                saves.append(group.create_task(queue.save(item(make_tree("api-1", 1)))))
                while not held.writing.is_set():
                    await asyncio.sleep(0.01)
                saves.extend(group.create_task(queue.save(item(make_tree(f"api-{n}", n)))) for n in (2, 3))
                await asyncio.sleep(1000)

        owner = asyncio.create_task(run())
        while len(queue.pending) < 2:
            await asyncio.sleep(0.01)
        owner.cancel()
        with pytest.raises(asyncio.CancelledError):
            await owner
        assert asyncio.all_tasks() == {asyncio.current_task()}  # the batch is still on the store thread
        assert len(saves) == 3 and all(save.cancelled() for save in saves)
        assert queue.pending == [] and queue.batches == 0
        held.release.set()
        thread.pool.shutdown(wait=True)
        assert held.written == ["api-1"]
        assert store.load_tree("api-1") is not None
        assert store.load_tree("api-2") is None and store.load_tree("api-3") is None


async def test_a_run_cancelled_while_a_batch_is_written_ends_every_save_and_task(
    db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The run is cancelled (a signal) while the store thread writes a batch and other trees wait
    for the next: when the run returns, no task of it is left, every waiting save ended cancelled,
    and no tree was written twice; the next run collects the rest."""
    slugs = ["gh/acme/queue"]
    with serving(SimConfig(seed=4, projects=[SimProject(slugs[0], pipelines=12)])) as (sim, url):
        store = open_store(db_url)
        held = HeldWrites(store, monkeypatch)
        try:
            async with CircleCIClient(url, None, backoff_initial=0.01) as client:
                collector = Collector(client, store, Options(lease_ttl=60.0, tests=False, usage=False))
                run = asyncio.create_task(collector.run(endpoints(slugs)))
                for _ in range(3000):  # a batch on the store thread, and trees waiting for the next
                    if held.writing.is_set() and collector.trees.pending:
                        break
                    await asyncio.sleep(0.01)
                assert held.writing.is_set() and collector.trees.pending
                waiting = [done for _, done in collector.trees.pending]
                run.cancel()
                # The store thread goes on until the run's end waits for it: released a while later.
                threading.Timer(0.5, held.release.set).start()
                with pytest.raises(asyncio.CancelledError):
                    await run
                assert asyncio.all_tasks() == {asyncio.current_task()}
                assert all(done.cancelled() for done in waiting)
                assert collector.trees.pending == []
        finally:
            held.release.set()
            store.close()
        assert len(held.written) == len(set(held.written)) > 0
        await collect(url, db_url, slugs)
        assert_matches_truth(db_url, sim, slugs)
