"""The simulator's test results: consistent with job outcomes, flaky on reruns, paged, hostile messages."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from circleci_ds.dev.simulator import SimConfig, SimProject, Simulator
from circleci_ds.dev.simulator.testresults import FAILED, PASSED, Kind
from sim_helpers import Http

DAY_S = 86400


def finished_sim(**knobs: Any) -> Simulator:
    sim = Simulator(SimConfig(seed=5, **knobs))
    sim.advance(3 * DAY_S)  # past the whole history
    return sim


@pytest.fixture(scope="module")
def truth() -> list[dict[str, Any]]:
    sim = finished_sim()
    return [job for p in sim.config.projects for job in sim.test_truth(p.slug)]


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as s:
        yield s


def test_failed_jobs_have_a_failing_test_and_successful_ones_none(truth: list[dict[str, Any]]) -> None:
    by_status: dict[str, int] = {}
    for job in truth:
        failures = sum(item["result"] == FAILED for item in job["items"])
        if job["items"]:
            by_status[job["status"]] = by_status.get(job["status"], 0) + 1
            assert job["status"] in ("success", "failed")
            assert (failures >= 1) == (job["status"] == "failed"), job["job_number"]
    assert by_status["success"] > 100 and by_status["failed"] >= 5


def test_failures_are_flaky_tests_when_a_rerun_turned_green_else_broken(truth: list[dict[str, Any]]) -> None:
    green = {
        (job["pipeline_id"], job["job_name"], job["stopped_at_ms"])
        for job in truth
        if job["status"] == "success"
    }
    kinds_seen = set()
    for job in truth:
        if job["status"] != "failed":
            continue
        later_green = any(
            p == job["pipeline_id"] and name == job["job_name"] and at > job["stopped_at_ms"]
            for p, name, at in green
        )
        for item, kind in zip(job["items"], job["kinds"], strict=True):
            if item["result"] == FAILED:
                kinds_seen.add(kind)
                assert kind == (Kind.FLAKY if later_green else Kind.BROKEN)
    assert kinds_seen == {Kind.FLAKY, Kind.BROKEN}


def test_suites_have_slow_skipped_and_hostile_messages(truth: list[dict[str, Any]]) -> None:
    items = [item for job in truth for item in job["items"]]
    pairs = [pair for job in truth for pair in zip(job["items"], job["kinds"], strict=True)]
    slow = [item["run_time"] for item, kind in pairs if kind == Kind.SLOW]
    assert min(slow) >= 3.0 and max(i["run_time"] for i in items if i["result"] == PASSED) < 100
    messages = {i["message"] for i in items if i["result"] == FAILED}
    assert any("</script>" in m for m in messages) and any("\x1b[" in m for m in messages)
    assert any("<b>" in m for m in messages)
    assert any(i["result"] == "skipped" for i in items)


def test_same_seed_same_results_other_seed_other() -> None:
    first, again, other = finished_sim(), finished_sim(), Simulator(SimConfig(seed=6))
    other.advance(3 * DAY_S)
    assert first.test_truth("gh/acme/api") == again.test_truth("gh/acme/api")
    assert first.test_truth("gh/acme/api") != other.test_truth("gh/acme/api")


async def test_results_appear_once_the_job_finished(session: aiohttp.ClientSession) -> None:
    sim = Simulator(SimConfig(seed=5, projects=[SimProject("gh/acme/api", pipelines=60)]))
    project = sim.history.project("gh/acme/api")
    assert project is not None
    running = next(
        j for j in project.jobs_by_number.values()
        if j.spec.name.startswith(("test-shard", "unit-tests", "integration-"))
        and j.run.started_at is not None and j.run.started_at > sim.view.now
        and j.run.timeline[-1][1] == "success"
    )
    assert running.run.started_at is not None and running.run.stopped_at is not None
    sim.advance((running.run.started_at - sim.view.now) / 1000 + 0.001)
    now = sim.view.now
    async with sim.serve() as url:
        http = Http(session, url, token="t")
        path = f"/project/gh/acme/api/{running.number}/tests"
        assert await http.pages(path) == []
        sim.advance((running.run.stopped_at - now) / 1000 + 1)
        items = await http.pages(path)
        assert items and all(i["result"] != FAILED for i in items)


async def test_jobs_without_results_answer_404_or_an_empty_list(session: aiohttp.ClientSession) -> None:
    sim = finished_sim(projects=[SimProject("gh/acme/api", pipelines=30)])
    project = sim.history.project("gh/acme/api")
    assert project is not None
    by_name = {j.spec.name: j for j in project.jobs_by_number.values() if j.run.timeline[-1][1] == "success"}
    async with sim.serve() as url:
        http = Http(session, url, token="t")
        assert (await http.get(f"/project/gh/acme/api/{by_name['compile'].number}/tests")).status == 404
        assert await http.pages(f"/project/gh/acme/api/{by_name['setup'].number}/tests") == []
        assert (await http.get("/project/gh/acme/api/999999999/tests")).status == 404
        bad = await http.get(f"/project/gh/acme/api/{by_name['setup'].number}/tests", **{"page-token": "zz"})
        assert bad.status == 400


async def test_large_suites_come_in_many_pages(session: aiohttp.ClientSession) -> None:
    sim = finished_sim(projects=[SimProject("gh/acme/api", pipelines=3)], test_suite_scale=40.0)
    job = max(sim.test_truth("gh/acme/api"), key=lambda j: len(j["items"]))
    assert len(job["items"]) > 1000
    async with sim.serve() as url:
        http = Http(session, url, token="t")
        first = (await http.get(f"/project/gh/acme/api/{job['job_number']}/tests")).json()
        assert len(first["items"]) == sim.config.tests_page_size and first["next_page_token"]
        assert await http.pages(f"/project/gh/acme/api/{job['job_number']}/tests") == job["items"]
