"""Collecting test results: equal to the simulator's truth, read once, pages and chunks, 404s, kill -9."""

from __future__ import annotations

import asyncio
import os
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import pytest

import circleci_ds.collect.tests as phase
import circleci_ds.derive.tests as rules
from builders import unread_job
from circleci_ds.derive.facts import open_store
from circleci_ds.dev.simulator import SimConfig, SimProject, Simulator
from circleci_ds.store import StoreError
from circleci_ds.store import testresults as db
from collect_helpers import collect as collect_all
from collect_helpers import kill_9_once, quirky_server

SLUGS = ["gh/acme/api", "gh/acme/web"]
DAY = 86400.0


async def collect(url: str, db_url: str, slugs: list[str], **options: Any) -> Any:
    return await collect_all(url, db_url, slugs, **{"tests": True, **options})


def config(**knobs: Any) -> SimConfig:
    projects = [SimProject("gh/acme/api", pipelines=30), SimProject("gh/acme/web", pipelines=15)]
    return SimConfig(seed=knobs.pop("seed", 11), projects=knobs.pop("projects", projects), **knobs)


@pytest.fixture
def db_url(sqlite_url: str) -> str:
    return sqlite_url  # the checks read the file with sqlite3


def markers(db_url: str) -> dict[tuple[str, int], tuple[str, int]]:
    """(endpoint, job number) -> (state, tests) of every test marker."""
    with sqlite3.connect(db_url.removeprefix("sqlite:///")) as conn:
        rows = conn.execute("select endpoint, job_number, state, tests from test_jobs").fetchall()
    return {(e, n): (state, tests) for e, n, state, tests in rows}


def facts_per_job(db_url: str) -> dict[tuple[str, int], int]:
    with sqlite3.connect(db_url.removeprefix("sqlite:///")) as conn:
        rows = conn.execute(
            "select j.endpoint, j.job_number, count(*) from test_results r"
            " join test_jobs j on j.ref = r.job_ref group by j.ref"
        ).fetchall()
    return {(e, n): count for e, n, count in rows}


def assert_tests_match_truth(db_url: str, sim: Simulator, slugs: list[str]) -> None:
    """Every job answering results now is stored exactly once, as returned; the others are not."""
    store = open_store(db_url, create=False)
    try:
        stored = markers(db_url)
        facts = facts_per_job(db_url)
        for slug in slugs:
            truth = {job["job_number"]: job for job in sim.test_truth(slug)}
            for number, job in truth.items():
                state, count = stored[slug, number]
                if state == db.Marker.SKIPPED:  # a quiet job name's job, left unread on purpose
                    assert not job["items"] and count == 0 and (slug, number) not in facts, number
                    continue
                assert state == (db.Marker.DONE if job["items"] else db.Marker.NONE), number
                assert count == len(job["items"]) == facts.get((slug, number), 0)
                assert db.raw_items(store, slug, number) == job["items"]
            ours = {n for (e, n), (state, _) in stored.items() if e == slug and state == db.Marker.DONE}
            assert ours <= set(truth)
    finally:
        store.close()


async def test_tests_of_finished_jobs_equal_the_truth_and_404s_are_remembered(db_url: str) -> None:
    sim = Simulator(config(tests_page_size=7))
    sim.advance(3 * DAY)
    async with sim.serve() as url:
        await collect(url, db_url, SLUGS)
        assert_tests_match_truth(db_url, sim, SLUGS)
        assert any(state == db.Marker.NONE for state, _ in markers(db_url).values())
        sim.reset_stats()
        results, _ = await collect(url, db_url, SLUGS)
        assert all(r.error is None for r in results)
        assert sim.stats["by_endpoint"]["tests"] == 0, "an unchanged re-run reads no test results"


async def test_running_jobs_are_read_once_finished(db_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(phase, "PAGE", 7)  # jobs needing tests are looked at 7 at a time
    sim = Simulator(config())
    async with sim.serve() as url:
        await collect(url, db_url, SLUGS)
        assert_tests_match_truth(db_url, sim, SLUGS)
        before = markers(db_url)
        sim.advance(2 * DAY)
        sim.reset_stats()
        await collect(url, db_url, SLUGS)
        assert_tests_match_truth(db_url, sim, SLUGS)
        after = markers(db_url)
        assert {k: v for k, v in after.items() if k in before} == before
        read = [k for k, (state, _) in after.items() if k not in before and state != db.Marker.SKIPPED]
        assert sim.stats["by_endpoint"]["tests"] >= len(read) > 0


async def test_a_full_batch_is_written_while_the_next_one_fills(monkeypatch: pytest.MonkeyPatch) -> None:
    """Whoever fills a batch (a reader, or the loop that starts readers) hands it to the store and goes
    on; it waits only while the store is a whole batch behind."""
    monkeypatch.setattr(phase, "BATCH_JOBS", 3)
    release = asyncio.Event()
    written: list[list[int]] = []

    async def store_thread(fn: Any, store: Any, batch: Any, known: Any) -> None:  # holds every write
        assert fn is phase.write_jobs
        await release.wait()
        written.append([job.job_number for job, _ in batch])

    reads = phase.TestPhase(
        cast(Any, None), cast(Any, None), store_thread, phase.TestCounts(), "e", phase.TestOptions()
    )
    async with asyncio.TaskGroup() as group:
        reads.group = group
        for number in range(5):  # the first batch is handed over while its write is held
            await asyncio.wait_for(reads._batched(unread_job(number), [{}]), 5)
        filler = group.create_task(reads._batched(unread_job(5), [{}]))  # the second waits for it
        await asyncio.sleep(0.05)
        assert not filler.done()
        release.set()
        await asyncio.wait_for(filler, 5)
        reads.group = None
    await reads.flush()
    assert written == [[0, 1, 2], [3, 4, 5]]
    assert (reads.counts.jobs, reads.counts.results) == (6, 6)


async def test_a_batch_the_store_refuses_stops_the_run_with_the_store_error(
    db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A batch written on its own task fails the run as a write in the reader's task did: the
    store's error, alone; the batches written before it stay."""
    monkeypatch.setattr(phase, "BATCH_JOBS", 4)
    real, calls = phase.write_jobs, []

    def refusing(store: Any, batch: Any, known: Any) -> None:
        calls.append(len(batch))
        if len(calls) == 3:
            raise StoreError("database is full")
        real(store, batch, known)

    monkeypatch.setattr(phase, "write_jobs", refusing)
    sim = Simulator(config(projects=[SimProject("gh/acme/api", pipelines=12)]))
    async with sim.serve() as url:
        with pytest.raises(StoreError, match="database is full"):
            await collect(url, db_url, ["gh/acme/api"])
    done = [state for state, _ in markers(db_url).values() if state != db.Marker.READING]
    assert len(calls) >= 3 and len(done) >= sum(calls[:2])


async def test_large_results_are_paged_and_written_in_chunks(
    db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(phase, "CHUNK", 40)
    sim = Simulator(config(projects=[SimProject("gh/acme/api", pipelines=4)], test_suite_scale=6.0))
    sim.advance(3 * DAY)
    assert max(len(job["items"]) for job in sim.test_truth("gh/acme/api")) > 3 * 40
    async with sim.serve() as url:
        await collect(url, db_url, ["gh/acme/api"])
    assert_tests_match_truth(db_url, sim, ["gh/acme/api"])
    with sqlite3.connect(db_url.removeprefix("sqlite:///")) as conn:
        assert conn.execute("select max(seq) from test_raw").fetchone()[0] >= 3


async def test_a_cut_mid_job_leaves_nothing_visible_and_the_next_run_completes(
    db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(phase, "CHUNK", 30)
    sim = Simulator(config(projects=[SimProject("gh/acme/api", pipelines=4)], test_suite_scale=6.0))
    sim.advance(3 * DAY)
    async with sim.serve() as url:
        first_tests = 0
        for cut in range(40, 400, 25):  # cut abruptly ever later until some chunk was written
            await collect(url, db_url, ["gh/acme/api"], kill_after_requests=cut, concurrency=2)
            first_tests = sum(state == db.Marker.READING for state, _ in markers(db_url).values())
            if first_tests:
                break
        assert first_tests, "no run was cut inside a job's results"
        await collect(url, db_url, ["gh/acme/api"])
    assert_tests_match_truth(db_url, sim, ["gh/acme/api"])
    assert not any(state == db.Marker.READING for state, _ in markers(db_url).values())


@pytest.mark.parametrize("status", [401, 403, 500])
async def test_a_server_refusing_test_results_still_collects_and_asks_few_times(
    db_url: str, status: int, caplog: pytest.LogCaptureFixture
) -> None:
    sim = Simulator(config())
    sim.advance(3 * DAY)
    asked: list[str] = []
    async with sim.serve() as upstream:
        async with quirky_server(upstream, tests_status=status, tests_asked=asked) as url:
            results, _ = await collect(url, db_url, SLUGS, trees_in_flight=16)  # 8 jobs at a time
        assert all(r.error is None for r in results), [r.error for r in results]
        wanted = sum(len(sim.test_truth(slug)) for slug in SLUGS)
        jobs_asked = len(set(asked))
        assert 0 < jobs_asked <= len(SLUGS) * (8 + phase.STOP_AFTER) < wanted
        assert not markers(db_url), "nothing is remembered: the next run asks again"
        assert "not read, read again next run" in caplog.text
        await collect(upstream, db_url, SLUGS)  # the route works again
    assert_tests_match_truth(db_url, sim, SLUGS)


async def test_no_tests_option_reads_none(db_url: str) -> None:
    sim = Simulator(config())
    async with sim.serve() as url:
        await collect(url, db_url, SLUGS, tests=False)
    assert sim.stats["by_endpoint"]["tests"] == 0 and not markers(db_url)


@pytest.mark.parametrize(
    ("item", "want"),
    [
        (
            {"classname": "a.B", "name": "t", "file": "f.py", "result": "failure", "run_time": 1.5}
            | {"message": "x"},
            db.Fact("a.B", "t", "f.py", "failure", 0, 1.5, "x"),
        ),
        (
            {"classname": 3, "name": None, "result": "success", "run_time": float("nan"), "message": ""},
            db.Fact("", "", "", "success", 1, None, None),
        ),
        (
            {"result": "skipped", "run_time": -1, "message": "m" * 900},
            db.Fact("", "", "", "skipped", None, None, "m" * 500),
        ),
        ("not an object", db.Fact("", "", "", "", None, None, None)),
        ({"result": "x" * 99, "run_time": True}, db.Fact("", "", "", "x" * 40, None, None, None)),
    ],
)
def test_facts_bound_and_type_every_field(item: object, want: db.Fact) -> None:
    assert rules.fact(item) == want


def test_only_finished_numbered_build_jobs_want_tests() -> None:
    job = {"type": "build", "job_number": 5, "status": "success"}
    assert rules.wants_tests(job)
    assert not rules.wants_tests({**job, "status": "running"})
    assert not rules.wants_tests({**job, "type": "approval"})
    assert not rules.wants_tests({k: v for k, v in job.items() if k != "job_number"})


# -- kill -9 of the command, then resume ----------------------------------------------------------------
FIXTURE = """\
native:
  slug: acme
data_sources:
- slug: circleci
  projects:
  - name: acme
    endpoints:
    - name: gh/acme/api
  config:
  - name: Circle-Token
    value: tok
{extra}"""


@pytest.fixture
def threaded() -> Iterator[Simulator]:
    projects = [SimProject("gh/acme/api", pipelines=12)]
    sim = Simulator(config(projects=projects, latency_ms=3.0, test_suite_scale=8.0))
    sim.advance(3 * DAY)
    sim.start_thread()
    try:
        yield sim
    finally:
        sim.stop_thread()


def _run_collect(sim: Simulator, fixture: Path, db_url: str, *args: str) -> subprocess.Popen[bytes]:
    url = sim._thread.url if sim._thread else ""
    env = {**os.environ, "CIRCLECI_API_URL": url or "", "CIRCLECI_DS_DB": db_url}
    return subprocess.Popen(
        [sys.executable, "-m", "circleci_ds", "collect", str(fixture), "--concurrency", "4", *args],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


def test_kill_9_while_reading_tests_then_resume(threaded: Simulator, tmp_path: Path, db_url: str) -> None:
    fixture = tmp_path / "fixture.yaml"
    fixture.write_text(FIXTURE.format(extra=""))
    proc = _run_collect(threaded, fixture, db_url)
    kill_9_once(proc, db_url.removeprefix("sqlite:///"), "select count(*) from test_jobs", 5)
    resumed = _run_collect(threaded, fixture, db_url)
    _, stderr = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, stderr
    assert_tests_match_truth(db_url, threaded, ["gh/acme/api"])


def test_fixture_entry_turns_tests_off(threaded: Simulator, tmp_path: Path, db_url: str) -> None:
    fixture = tmp_path / "fixture.yaml"
    fixture.write_text(FIXTURE.format(extra="  - name: collect-tests\n    value: 'false'\n"))
    threaded.reset_stats()
    proc = _run_collect(threaded, fixture, db_url)
    _, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 0, stderr
    assert threaded.stats["by_endpoint"]["tests"] == 0
    fixture.write_text(FIXTURE.format(extra="  - name: collect-tests\n    value: maybe\n"))
    bad = _run_collect(threaded, fixture, db_url)
    _, stderr = bad.communicate(timeout=60)
    assert bad.returncode == 2 and b"collect-tests must be true or false" in stderr
