"""The CircleCI API v2 simulator: conformance, clock-driven history, faults and limits (loopback only)."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import re
import urllib.request
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterator
from datetime import datetime, timedelta
from email.utils import format_datetime, parsedate_to_datetime
from typing import Any

import aiohttp
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from circleci_ds.dev.simulator import SimConfig, SimProject, Simulator, run_standalone
from circleci_ds.dev.simulator.history import Job, Workflow
from circleci_ds.dev.simulator.ratelimit import FixedWindow, TokenBucket
from circleci_ds.dev.simulator.render import View
from sim_helpers import SPEC_FILE, SPEC_SERVER, Http, Reply, patched_spec, slug_path, spec_path, walk_project

CIRCLECI_SLUG = "circleci/6f1c2a7e-3b4d-4e5f-8a9b-0c1d2e3f4a5b/9a8b7c6d-5e4f-4a3b-9c2d-1e0f9a8b7c6d"
TOKEN = "s3cret"
MS_STAMP = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")
S_STAMP = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$")
FINAL_WORKFLOW = {"success", "failed", "error", "canceled", "not_run"}
JOB_RANK = {"blocked": 0, "on_hold": 1, "queued": 1, "running": 2}  # every final status ranks 3


def small_config(**knobs: Any) -> SimConfig:
    """Three kinds of project, most of their history behind the clock and some ahead of it."""
    projects = [
        SimProject("gh/acme/api", pipelines=40),
        SimProject("github/acme/web", pipelines=12, private=True),
        SimProject(CIRCLECI_SLUG, pipelines=10),
    ]
    return SimConfig(**{"seed": 3, "projects": projects, "span_days": 5.0, "future_days": 1.0, **knobs})


def tiny_config(**knobs: Any) -> SimConfig:
    """Like `small_config` with fewer pipelines, for tests that look at every single response."""
    projects = [
        SimProject("gh/acme/api", pipelines=16),
        SimProject("github/acme/web", pipelines=6, private=True),
        SimProject(CIRCLECI_SLUG, pipelines=6),
    ]
    return SimConfig(**{"seed": 3, "projects": projects, "span_days": 2.0, "future_days": 1.0, **knobs})


def future_config(**knobs: Any) -> SimConfig:
    """Most of the history lies ahead of the clock, so tests can watch any event happen."""
    projects = [SimProject("gh/acme/api", pipelines=150)]
    return SimConfig(**{"seed": 3, "projects": projects, "span_days": 1.0, "future_days": 8.0, **knobs})


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as s:
        yield s


@contextlib.asynccontextmanager
async def serving(sim: Simulator, session: aiohttp.ClientSession, **kw: Any) -> AsyncIterator[Http]:
    async with sim.serve() as url:
        yield Http(session, url, **kw)


@pytest.fixture
def sim() -> Simulator:
    """The small simulator behind the `http` fixture; private projects need TOKEN."""
    return Simulator(small_config(token=TOKEN))


@pytest.fixture
async def http(sim: Simulator, session: aiohttp.ClientSession) -> AsyncIterator[Http]:
    """A client of `sim` that sends TOKEN unless told otherwise."""
    async with serving(sim, session, token=TOKEN) as client:
        yield client


async def admin(session: aiohttp.ClientSession, method: str, base_url: str, route: str, **kw: Any) -> Any:
    """Call a `/_sim/...` route (they live beside, not under, the `/api/v2` prefix)."""
    url = base_url.replace("/api/v2", "/_sim") + route
    async with session.request(method, url, **kw) as response:
        return response.status, await response.json()


def advance_to(sim: Simulator, at_ms: int) -> None:
    sim.advance((at_ms - sim.view.now) / 1000)


def upcoming(sim: Simulator, margin_s: float = 60.0) -> Iterator[Workflow]:
    """Workflows created at least `margin_s` after the clock."""
    return (w for w in workflows(sim) if w.created_at > sim.view.now + margin_s * 1000)


def workflows(sim: Simulator) -> Iterator[Workflow]:
    for pipeline in sim.history.pipelines.values():
        yield from pipeline.workflows


def jobs(sim: Simulator) -> Iterator[Job]:
    for workflow in workflows(sim):
        yield from workflow.jobs


# -- OpenAPI conformance --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def openapi_validate() -> Callable[[str, dict[str, str], Reply], None]:
    if not SPEC_FILE.exists():  # it is part of the repository: never a reason to skip
        pytest.fail(f"CircleCI's OpenAPI document is missing: {SPEC_FILE}", pytrace=False)
    from openapi_core import Config, OpenAPI
    from openapi_core.testing import MockRequest, MockResponse

    # The published document is trusted as is; checking it against the meta-schema costs a second.
    api = OpenAPI.from_dict(patched_spec(), config=Config(spec_validator_cls=None))

    def validate(path: str, params: dict[str, str], reply: Reply) -> None:
        if reply.content_type != "application/json":
            return  # plain-text 429 / 5xx bodies are documented deviations, not spec responses
        request = MockRequest(SPEC_SERVER, "get", spec_path(path), args=params)
        response = MockResponse(reply.body, reply.status, content_type=reply.content_type)
        api.validate_response(request, response)

    return validate


async def test_responses_validate_against_openapi(
    session: aiohttp.ClientSession, openapi_validate: Callable[[str, dict[str, str], Reply], None]
) -> None:
    sim = Simulator(tiny_config(page_size=4, token=TOKEN))
    # A clock with running, failing and on-hold workflows as well as finished ones.
    advance_to(sim, _busiest_moment(sim))
    seen: Counter[tuple[str, str]] = Counter()

    def a_few_per_status(job: dict[str, Any]) -> bool:
        seen[job["type"], job["status"]] += 1
        return seen[job["type"], job["status"]] <= 3

    async with serving(sim, session, token=TOKEN, validate=openapi_validate) as client:
        for project in sim.config.projects:
            await walk_project(client, project.slug, fetch_details=a_few_per_status)
            assert (await client.get(f"/project/{slug_path(project.slug)}")).status == 200
        assert (await client.get("/me")).status == 200
        for user_id, user in sim.users_truth().items():
            assert (await client.get(f"/user/{user_id}")).status == (404 if user is None else 200)
        assert (await client.get("/pipeline/00000000-0000-4000-8000-000000000000")).status == 404
        assert (await client.get("/me", token="wrong")).status == 401


async def test_test_results_validate_against_openapi(
    session: aiohttp.ClientSession, openapi_validate: Callable[[str, dict[str, str], Reply], None]
) -> None:
    sim = Simulator(tiny_config(tests_page_size=7, token=TOKEN))
    sim.advance(2 * 86400)
    checked = Counter[str]()
    async with serving(sim, session, token=TOKEN, validate=openapi_validate) as client:
        for project in sim.config.projects:
            for entry in sim.test_truth(project.slug)[:12]:
                path = f"/project/{project.slug}/{entry['job_number']}/tests"
                items = await client.pages(path)
                assert items == entry["items"]
                checked["paged" if len(items or []) > 7 else "one page"] += 1
            assert (await client.get(f"/project/{project.slug}/1/tests")).status == 404
    assert checked["paged"] and checked["one page"]


def _busiest_moment(sim: Simulator) -> int:
    """The workflow start time (at or after the clock) with the most workflows still going."""
    now = sim.view.now
    starts = sorted(w.created_at + 60_000 for w in workflows(sim) if w.created_at + 60_000 >= now)

    def going(at: int) -> int:
        return sum(w.created_at <= at and (w.run.stopped_at or at + 1) > at for w in workflows(sim))

    return max(starts[:: max(1, len(starts) // 40)], key=going)


# -- truth and pagination -------------------------------------------------------------------------------


async def test_truth_equals_http_walk_and_both_last_page_forms(session: aiohttp.ClientSession) -> None:
    sim = Simulator(tiny_config(page_size=3, token=TOKEN))
    advance_to(sim, _busiest_moment(sim))
    async with serving(sim, session, token=TOKEN) as client:
        for project in sim.config.projects:
            assert await walk_project(client, project.slug) == sim.truth(project.slug)
        assert client.last_page_forms["null"] > 0 and client.last_page_forms["absent"] > 0


async def test_job_lists_longer_than_a_page_are_paginated(session: aiohttp.ClientSession) -> None:
    sim = Simulator()
    now = sim.view.now
    public = (w for w in workflows(sim) if not w.pipeline.project.private and w.created_at <= now)
    big = next(w for w in public if len(w.jobs) > 20)
    async with serving(sim, session) as client:
        first = (await client.get(f"/workflow/{big.id}/job")).json()
        assert len(first["items"]) == 20 and first["next_page_token"]
        everything = await client.pages(f"/workflow/{big.id}/job")
        assert [j["id"] for j in everything or []] == [j.id for j in big.jobs]


async def test_pipeline_pages_stay_stable_while_pipelines_arrive(session: aiohttp.ClientSession) -> None:
    sim = Simulator(future_config(page_size=5))
    async with serving(sim, session) as client:
        first = (await client.get("/project/gh/acme/api/pipeline")).json()
        sim.advance(2 * 86400)  # many new pipelines appear on top of the list
        token = {"page-token": first["next_page_token"]}
        second = await client.get("/project/gh/acme/api/pipeline", **token)
        numbers = [p["number"] for p in first["items"] + second.json()["items"]]
        assert numbers == sorted(numbers, reverse=True) and len(set(numbers)) == 10
        assert numbers[5] == numbers[4] - 1
        bad = await client.get("/project/gh/acme/api/pipeline", **{"page-token": "not-a-token"})
        assert bad.status == 400 and "message" in bad.json()


async def test_branch_filter(http: Http) -> None:
    mains = await http.pages("/project/gh/acme/api/pipeline", branch="main") or []
    assert mains and all(p["vcs"]["branch"] == "main" for p in mains if "vcs" in p)
    everything = await http.pages("/project/gh/acme/api/pipeline") or []
    assert len(mains) < len(everything)
    assert await http.pages("/project/gh/acme/api/pipeline", branch="no-such-branch") == []


def test_same_seed_same_json_other_seed_other_json() -> None:
    def dump(seed: int) -> str:
        sim = Simulator(tiny_config(seed=seed))
        sim.advance(3600)
        return json.dumps([sim.truth(p.slug) for p in sim.config.projects], sort_keys=True)

    assert dump(3) == dump(3)
    assert dump(3) != dump(4)


# -- the clock ------------------------------------------------------------------------------------------


async def test_date_header_is_the_simulated_clock(sim: Simulator, http: Http) -> None:
    reply = await http.get("/project/gh/acme/api/pipeline")
    assert parsedate_to_datetime(reply.headers["Date"]) == sim.now.replace(microsecond=0)
    sim.advance(90061.5)
    for path in ("/project/gh/acme/api", "/no/such/thing"):
        reply = await http.get(path)
        assert reply.headers["Date"] == format_datetime(sim.now.replace(microsecond=0), usegmt=True)


async def test_running_workflows_finish_and_new_pipelines_appear(session: aiohttp.ClientSession) -> None:
    sim = Simulator(future_config())
    running = next(w for w in upcoming(sim) if w.run.stopped_at and w.run.stopped_at - w.created_at > 600_000)
    advance_to(sim, running.created_at + 300_000)
    async with serving(sim, session) as client:
        before = (await client.get(f"/workflow/{running.id}")).json()
        listed = len(await client.pages("/project/gh/acme/api/pipeline") or [])
        assert before["status"] in {"running", "failing", "on_hold"} and before["stopped_at"] is None
        sim.advance(3 * 86400)
        after = (await client.get(f"/workflow/{running.id}")).json()
        assert after["status"] in FINAL_WORKFLOW and after["stopped_at"] is not None
        assert len(await client.pages("/project/gh/acme/api/pipeline") or []) > listed


async def test_rerun_appears_under_its_old_pipeline_without_touching_updated_at(
    session: aiohttp.ClientSession,
) -> None:
    sim = Simulator(future_config())
    rerun = next(w for w in upcoming(sim, 3600) if w.rerun_of)
    pipeline = rerun.pipeline
    advance_to(sim, rerun.created_at - 1000)
    async with serving(sim, session) as client:
        before = (await client.get(f"/pipeline/{pipeline.id}")).json()
        names = {w["id"]: w["name"] for w in await client.pages(f"/pipeline/{pipeline.id}/workflow") or []}
        assert rerun.id not in names and rerun.rerun_of in names
        assert (await client.get(f"/workflow/{rerun.id}")).status == 404
        sim.advance(2)
        listed = await client.pages(f"/pipeline/{pipeline.id}/workflow") or []
        assert listed[0]["id"] == rerun.id and listed[0]["name"] == names[rerun.rerun_of]
        assert (await client.get(f"/pipeline/{pipeline.id}")).json()["updated_at"] == before["updated_at"]


def test_reruns_respect_their_time_window_and_get_new_jobs() -> None:
    sim = Simulator(future_config())
    by_id = sim.history.workflows
    reruns = [w for w in workflows(sim) if w.rerun_of]
    assert any(w.auto_rerun_number for w in reruns) and any(not w.auto_rerun_number for w in reruns)
    flaky = set()
    for rerun in reruns:
        original = by_id[rerun.rerun_of or ""]
        assert original.run.final in {"failed", "error"} and rerun.name == original.name
        stopped = original.run.stopped_at or 0
        assert 600_000 <= rerun.created_at - stopped <= 48 * 3_600_000
        assert rerun.created_at - rerun.pipeline.created_at <= 60 * 3_600_000
        assert {j.id for j in rerun.jobs}.isdisjoint({j.id for j in original.jobs})
        old_numbers = [j.number for j in original.jobs if j.number is not None]
        assert all(j.number > max(old_numbers) for j in rerun.jobs if j.number is not None)
        before = {j.spec.name: j.run.timeline[-1][1] for j in original.jobs}
        after = {j.spec.name: j.run.timeline[-1][1] for j in rerun.jobs}
        flaky |= {name for name, status in after.items() if (before[name], status) == ("failed", "success")}
    assert flaky, "some job fails and then passes on the same commit"


def test_job_numbers_follow_queue_order() -> None:
    sim = Simulator(future_config())
    project = sim.history.projects["gh/acme/api"]
    numbered = sorted(project.jobs_by_number.items())
    queued = [job.numbered_at or 0 for _, job in numbered]
    assert queued == sorted(queued)
    assert [n for n, _ in numbered] == list(range(numbered[0][0], numbered[0][0] + len(numbered)))


async def test_job_details_appear_only_once_queued(session: aiohttp.ClientSession) -> None:
    sim = Simulator(future_config())
    soon = sim.view.now + 60_000
    job = next(j for j in jobs(sim) if j.spec.kind == "build" and (j.numbered_at or 0) > soon)
    advance_to(sim, (job.numbered_at or 0) - 1)
    async with serving(sim, session) as client:
        path = f"/project/gh/acme/api/job/{job.number}"
        assert (await client.get(path)).status == 404
        sim.advance(0.001)
        details = (await client.get(path)).json()
        assert details["status"] == "queued" and details["started_at"] is None and details["duration"] is None


async def test_pipeline_setup_pending_then_created(session: aiohttp.ClientSession) -> None:
    sim = Simulator(future_config())
    pipeline = next(p for p in sim.history.pipelines.values() if p.created_at > sim.view.now)
    advance_to(sim, pipeline.created_at)
    async with serving(sim, session) as client:
        early = (await client.get(f"/pipeline/{pipeline.id}")).json()
        assert early["state"] == "setup-pending" and early["updated_at"] == early["created_at"]
        assert await client.pages(f"/pipeline/{pipeline.id}/workflow") == []
        sim.advance(60)
        later = (await client.get(f"/pipeline/{pipeline.id}")).json()
        assert later["state"] in {"created", "errored"} and later["updated_at"] > later["created_at"]


# -- special objects ------------------------------------------------------------------------------------


async def test_numbered_approval_jobs_have_no_details(sim: Simulator, http: Http) -> None:
    now = sim.view.now
    approval = next(j for j in jobs(sim) if j.spec.kind == "approval" and (j.numbered_at or now + 1) <= now)
    slug = approval.workflow.pipeline.project.slug
    listed = await http.pages(f"/workflow/{approval.workflow.id}/job") or []
    assert any(j.get("job_number") == approval.number and j["type"] == "approval" for j in listed)
    reply = await http.get(f"/project/{slug}/job/{approval.number}")
    assert reply.status == 404 and reply.json() == {"message": "Job not found"}


async def test_unapproved_workflow_stays_on_hold_forever(session: aiohttp.ClientSession) -> None:
    sim = Simulator(future_config())
    held = next(w for w in upcoming(sim) if w.run.stopped_at is None)
    advance_to(sim, max(sim.view.now, held.created_at + 3_600_000))
    async with serving(sim, session) as client:
        for _ in range(2):
            workflow = (await client.get(f"/workflow/{held.id}")).json()
            assert workflow["status"] == "on_hold" and workflow["stopped_at"] is None
            statuses = {j["status"] for j in await client.pages(f"/workflow/{held.id}/job") or []}
            assert "on_hold" in statuses and "blocked" in statuses
            sim.advance(400 * 86400)


async def test_errored_pipelines_have_errors_and_no_workflows(http: Http) -> None:
    pipelines = await http.pages("/project/gh/acme/api/pipeline") or []
    errored = [p for p in pipelines if p["state"] == "errored"]
    assert errored
    for pipeline in errored:
        assert pipeline["errors"] and all({"type", "message"} <= set(e) for e in pipeline["errors"])
        assert await http.pages(f"/pipeline/{pipeline['id']}/workflow") == []
    assert all(p["errors"] == [] for p in pipelines if p["state"] == "created")


async def test_retention_hides_workflow_lists_of_old_pipelines(session: aiohttp.ClientSession) -> None:
    sim = Simulator(small_config(retention_days=2.0))
    async with serving(sim, session) as client:
        pipelines = await client.pages("/project/gh/acme/api/pipeline") or []
        cutoff = sim.now - timedelta(days=2)
        old = [p for p in pipelines if datetime.fromisoformat(p["created_at"]) < cutoff]
        assert old and len(old) < len(pipelines)
        assert (await client.get(f"/pipeline/{old[0]['id']}/workflow")).status == 404
        assert (await client.get(f"/pipeline/{old[0]['id']}")).status == 200
        assert (await client.get(f"/pipeline/{pipelines[0]['id']}/workflow")).status == 200
        truth = {p["id"]: p for p in sim.truth("gh/acme/api")}
        assert truth[old[0]["id"]]["workflows"] == []


# -- auth and slugs -------------------------------------------------------------------------------------


async def test_private_projects_hide_behind_404_without_a_token(sim: Simulator, http: Http) -> None:
    project = sim.history.projects["gh/acme/web"]
    now = sim.view.now
    pipeline = next(p for p in project.index.pipelines if p.workflows and p.created_at <= now)
    workflow = pipeline.workflows[0]
    number = next(n for n, j in project.jobs_by_number.items() if (j.numbered_at or now + 1) <= now)
    paths = [
        "/project/gh/acme/web",
        "/project/gh/acme/web/pipeline",
        f"/pipeline/{pipeline.id}",
        f"/pipeline/{pipeline.id}/workflow",
        f"/workflow/{workflow.id}",
        f"/workflow/{workflow.id}/job",
    ]
    for path in paths:
        assert (await http.get(path)).status == 200
        anonymous = await http.get(path, token="")
        assert anonymous.status == 404 and anonymous.json() == {"message": "Project not found"}
    assert (await http.get(f"/project/gh/acme/web/job/{number}", token="")).status == 404
    assert (await http.get("/project/gh/acme/api/pipeline", token="")).status == 200


async def test_wrong_token_is_401_everywhere_and_me_needs_a_token(http: Http) -> None:
    for path in ("/project/gh/acme/api/pipeline", "/project/gh/acme/api", "/me", "/pipeline/x", "/nope"):
        reply = await http.get(path, token="wrong")
        assert reply.status == 401 and reply.json() == {"message": "Invalid token provided."}
    assert (await http.get("/me", token="")).status == 401
    me = (await http.get("/me")).json()
    assert {"id", "login", "name", "avatar_url"} <= set(me)


async def test_slug_aliases_escapes_and_unknowns(http: Http) -> None:
    for spelling in ("github/acme/api", "gh/acme/api", slug_path("github/acme/api"), "GH/acme/API"):
        reply = await http.get(f"/project/{spelling}/pipeline")
        assert reply.status == 200
        assert {p["project_slug"] for p in reply.json()["items"]} == {"gh/acme/api"}
    project = (await http.get(f"/project/{CIRCLECI_SLUG}")).json()
    assert project["slug"] == CIRCLECI_SLUG and project["vcs_info"]["provider"] == "CircleCI"
    assert project["name"] not in CIRCLECI_SLUG
    for path in ("/project/gh/acme/nope", "/project/gh/acme", "/project/svn/acme/api", "/workflow/nope/job"):
        reply = await http.get(path)
        assert reply.status == 404 and "message" in reply.json()


# -- faults, limits, latency, counters ------------------------------------------------------------------


async def test_faults_answer_5xx_with_json_and_non_json_bodies(session: aiohttp.ClientSession) -> None:
    sim = Simulator(small_config(fault_rate=1.0))
    async with serving(sim, session) as client:
        replies = [await client.get("/project/gh/acme/api/pipeline") for _ in range(40)]
        assert {r.status for r in replies} == {500, 502, 503}
        assert {r.content_type for r in replies} == {"application/json", "text/html", "text/plain"}
        sim.configure(fault_rate=0.3)
        statuses = {(await client.get("/project/gh/acme/api")).status for _ in range(40)}
        assert 200 in statuses and statuses & {500, 502, 503}
        assert (await admin(session, "GET", client.base_url, "/clock"))[0] == 200


async def test_rate_limit_answers_429_with_both_retry_after_forms(session: aiohttp.ClientSession) -> None:
    sim = Simulator(small_config(rate_limit_rps=0.5, rate_burst=3, retry_after="both"))
    async with serving(sim, session) as client:
        replies = [await client.get("/project/gh/acme/api") for _ in range(7)]
        assert [r.status for r in replies] == [200] * 3 + [429] * 4
        limited = replies[3:]
        seconds = [r for r in limited if r.headers["Retry-After"].isdigit()]
        dates = [r for r in limited if not r.headers["Retry-After"].isdigit()]
        assert seconds and dates
        assert all(1 <= int(r.headers["Retry-After"]) <= 2 for r in seconds)
        for reply in dates:
            retry_at = parsedate_to_datetime(reply.headers["Retry-After"])
            wait = (retry_at - parsedate_to_datetime(reply.headers["Date"])).total_seconds()
            assert wait in (1.0, 2.0)
        assert {r.content_type for r in limited} == {"application/json", "text/plain"}
        assert b"Rate limited." in {r.body for r in limited}
        for _ in range(20):  # admin routes are never limited
            assert (await admin(session, "GET", client.base_url, "/stats"))[0] == 200
        assert sim.stats["status"] == {"200": 3, "429": 4}


@pytest.mark.parametrize(("form", "pattern"), [("seconds", r"^\d+$"), ("date", r"GMT$")])
async def test_retry_after_single_forms(session: aiohttp.ClientSession, form: str, pattern: str) -> None:
    sim = Simulator(small_config(rate_limit_rps=0.5, rate_burst=1, retry_after=form))
    async with serving(sim, session) as client:
        replies = [await client.get("/me") for _ in range(4)]
        assert all(re.search(pattern, r.headers["Retry-After"]) for r in replies[1:])


def test_fixed_windows_admit_their_quota_per_clock_aligned_window() -> None:
    now = [120.7]
    window = FixedWindow(3, 1.0, lambda: now[0])
    assert [window.take().admitted for _ in range(4)] == [True, True, True, False]
    assert window.take().wait == pytest.approx(0.3)
    now[0] = 121.0  # the next second: a fresh quota
    decision = window.take()
    assert decision.admitted and (decision.limit, decision.remaining) == (3, 2)
    minute = FixedWindow(2, 60.0, lambda: now[0])
    assert [minute.take().admitted for _ in range(3)] == [True, True, False]
    assert minute.take().reset == pytest.approx(59.0)


def test_token_bucket_reports_its_quota() -> None:
    now = [0.0]
    bucket = TokenBucket(10.0, 5, lambda: now[0])
    first = bucket.take()
    assert (first.admitted, first.limit, first.remaining) == (True, 5, 4)
    assert first.reset == pytest.approx(0.1)  # one token short of full
    for _ in range(4):
        bucket.take()
    refused = bucket.take()
    assert not refused.admitted and refused.wait == pytest.approx(0.1) and refused.remaining == 0


@pytest.mark.parametrize("headers", ["ratelimit", "x-ratelimit", "both", "structured"])
async def test_quota_headers_and_a_429_without_retry_after(
    session: aiohttp.ClientSession, headers: str
) -> None:
    sim = Simulator(
        small_config(
            rate_limit_rps=0.5, rate_burst=2, limiter="minute", retry_after="none", rate_headers=headers,
            limit_body="text",
        )
    )  # fmt: skip
    async with serving(sim, session) as client:
        replies = [await client.get("/me") for _ in range(31)]
    assert [r.status for r in replies].count(200) <= 30  # 30 a minute, wherever the minute starts
    refused = [r for r in replies if r.status == 429]
    assert refused and all("Retry-After" not in r.headers for r in refused)
    assert {r.body for r in refused} == {b"Rate limited."}
    for reply in replies:
        ietf = "RateLimit-Remaining" in reply.headers
        github = "X-RateLimit-Remaining" in reply.headers
        assert (ietf, github) == (headers in ("ratelimit", "both"), headers in ("x-ratelimit", "both"))
        if ietf:
            assert reply.headers["RateLimit-Limit"] == "30"
            assert 1 <= int(reply.headers["RateLimit-Reset"]) <= 60
        if github:
            date = parsedate_to_datetime(reply.headers["Date"]).timestamp()
            assert 1 <= int(reply.headers["X-RateLimit-Reset"]) - date <= 60  # an epoch on the server's clock
        if headers == "structured":  # the IETF draft's fields, and nothing of the older forms
            assert reply.headers["RateLimit-Policy"] == '"default";q=30;w=60'
            remaining, reset = re.fullmatch(r'"default";r=(\d+);t=(\d+)', reply.headers["RateLimit"]).groups()
            assert int(remaining) <= 29 and 1 <= int(reset) <= 60
    if headers == "structured":
        assert refused[0].headers["RateLimit"].startswith('"default";r=0;')
        return
    remaining = {k: v for k, v in refused[0].headers.items() if k.endswith("RateLimit-Remaining")}
    assert set(remaining.values()) == {"0"}


async def test_stats_latency_and_max_in_flight(session: aiohttp.ClientSession) -> None:
    sim = Simulator(small_config(latency_ms=60.0, jitter_ms=10.0))
    async with serving(sim, session) as client:
        await asyncio.gather(*(client.get("/project/gh/acme/api/pipeline") for _ in range(12)))
        assert sim.stats["max_in_flight"] >= 6  # answers held for the latency overlap
        assert sim.stats["in_flight_seconds"] >= 12 * 0.05  # each held 60 ms, less 10 of jitter
        sim.configure(latency_ms=0.0, jitter_ms=0.0)
        pipeline = next(p for p in sim.truth("gh/acme/api") if p["workflows"])
        workflow = pipeline["workflows"][0]
        job_number = next(j["job_number"] for j in workflow["jobs"] if j["details"])
        paths = [f"/pipeline/{pipeline['id']}", f"/pipeline/{pipeline['id']}/workflow"]
        paths += [f"/workflow/{workflow['id']}", f"/workflow/{workflow['id']}/job"]
        paths += [f"/project/gh/acme/api/job/{job_number}", "/project/gh/acme/api"]
        paths += ["/me", "/pipeline/unknown"]
        for path in paths:
            await client.get(path)
        _, remote = await admin(session, "GET", client.base_url, "/stats")
        assert remote == sim.stats
        assert remote["requests"] == 20
        assert remote["by_endpoint"] == {
            "pipelines": 12, "pipeline": 2, "workflows": 1, "workflow": 1, "jobs": 1,
            "job_details": 1, "tests": 0, "project": 1, "me": 1, "user": 0,
            "collaborations": 0, "org_pipelines": 0, "usage_create": 0, "usage_get": 0,
        }
        assert remote["status"] == {"200": 18, "401": 1, "404": 1}
        asked = {kind for kind, count in remote["by_endpoint"].items() if count}
        assert set(remote["spans"]) == asked
        assert all(first <= last for first, last in remote["spans"].values())
        await admin(session, "POST", client.base_url, "/reset-stats")
        assert sim.stats == {"requests": 0, "by_endpoint": dict.fromkeys(remote["by_endpoint"], 0),
                             "status": {}, "max_in_flight": 0, "in_flight_seconds": 0.0, "spans": {}}


# -- admin routes, threads and standalone ---------------------------------------------------------------


async def test_admin_routes(session: aiohttp.ClientSession) -> None:
    sim = Simulator(tiny_config())
    async with sim.serve() as url:
        status, clock = await admin(session, "GET", url, "/clock")
        assert status == 200 and clock["now"] == "2026-11-01T00:00:00.000Z"
        _, moved = await admin(session, "POST", url, "/advance", params={"seconds": "3600.5"})
        assert moved["epoch_ms"] == clock["epoch_ms"] + 3_600_500
        assert (await admin(session, "POST", url, "/advance", params={"seconds": "-1"}))[0] == 400
        _, truth = await admin(session, "GET", url, "/truth", params={"project": "github/acme/api"})
        assert truth == sim.truth("gh/acme/api")
        assert (await admin(session, "GET", url, "/truth", params={"project": "gh/x/y"}))[0] == 404
        _, knobs = await admin(session, "POST", url, "/config", json={"page_size": 3, "latency_ms": 1})
        assert knobs["page_size"] == 3 and sim.config.latency_ms == 1.0
        async with session.get(f"{url}/project/gh/acme/api/pipeline") as response:
            assert len((await response.json())["items"]) == 3
        for bad in ({"seed": 2}, {"retry_after": "never"}, {"page_size": "3"}, [1]):
            assert (await admin(session, "POST", url, "/config", json=bad))[0] == 400
        async with session.get(f"{url}/_sim/clock") as response:
            assert response.status == 200, "admin routes also answer under the API prefix"
        assert sim.stats["requests"] == 1


def test_thread_mode_serves_sync_clients() -> None:
    sim = Simulator(small_config())
    url = sim.start_thread()
    try:
        with urllib.request.urlopen(f"{url}/project/gh/acme/api/pipeline") as response:
            assert response.status == 200 and json.load(response)["items"]
        sim.advance(60)
        with urllib.request.urlopen(f"{url}/project/gh/acme/api") as response:
            assert parsedate_to_datetime(response.headers["Date"]) == sim.now.replace(microsecond=0)
    finally:
        sim.stop_thread()
    with pytest.raises(OSError):
        urllib.request.urlopen(f"{url}/me", timeout=2)


async def test_run_standalone_serves_until_cancelled(session: aiohttp.ClientSession) -> None:
    ready: asyncio.Queue[str] = asyncio.Queue()
    task = asyncio.create_task(run_standalone(small_config(), on_ready=ready.put_nowait))
    url = await asyncio.wait_for(ready.get(), 5)
    async with session.get(f"{url}/project/gh/acme/api") as response:
        assert response.status == 200
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


def test_config_validation() -> None:
    with pytest.raises(ValueError):
        SimConfig(retry_after="sometimes")
    with pytest.raises(ValueError):
        SimConfig(projects=[SimProject("gh/only-two")])
    sim = Simulator(small_config())
    with pytest.raises(ValueError):
        sim.configure(span_days=3)
    with pytest.raises(ValueError):
        sim.advance(-5)


# -- history shape and invariants at any clock ----------------------------------------------------------


def test_history_has_the_promised_variety() -> None:
    projects = [SimProject(f"gh/acme/p{i}", pipelines=120) for i in range(3)]
    sim = Simulator(SimConfig(seed=3, projects=projects))
    pipelines = list(sim.history.pipelines.values())
    triggers = {p.trigger["type"] for p in pipelines}
    assert {"webhook", "api", "scheduled_pipeline", "explicit"} <= triggers
    assert triggers & {"Decoupled Ingestion System", "unknown"}
    assert {"dependabot[bot]", "renovate-bot"} <= {p.trigger["actor"]["login"] for p in pipelines}
    assert any(p.vcs is None for p in pipelines)
    assert any(p.vcs and p.vcs["provider_name"] is None for p in pipelines)
    assert any(p.vcs and "tag" in p.vcs for p in pipelines)
    assert any(p.vcs and "<script>" in (p.vcs["commit"]["subject"] or "") for p in pipelines)
    created = [p for p in pipelines if p.final_state == "created"]
    originals = [len([w for w in p.workflows if not w.rerun_of]) for p in created]
    assert min(originals) == 1 and max(originals) == 3
    sizes = [len(w.jobs) for w in workflows(sim)]
    assert min(sizes) >= 2 and max(sizes) <= 30 and max(sizes) > 20
    all_jobs = list(jobs(sim))
    assert {j.spec.executor for j in all_jobs} >= {"docker", "machine", "macos"}
    assert {j.spec.parallelism for j in all_jobs} >= set(range(1, 9))
    finals = {w.run.final for w in workflows(sim)}
    assert finals >= {"success", "failed", "error", "canceled", "not_run", None}
    assert any(w.canceled_by for w in workflows(sim))


def test_statuses_only_move_forward() -> None:
    sim = Simulator(future_config(projects=[SimProject("gh/acme/api", pipelines=60)]))
    snapshots = []
    for _ in range(6):
        truth = sim.truth("gh/acme/api")
        snapshots.append({j["id"]: j for p in truth for w in p["workflows"] for j in w["jobs"]})
        sim.advance(5 * 3600)
    for before, after in itertools.pairwise(snapshots):
        for job_id, job in before.items():
            later = after[job_id]
            assert JOB_RANK.get(job["status"], 3) <= JOB_RANK.get(later["status"], 3)
            for key in ("job_number", "started_at", "stopped_at"):
                if job.get(key) is not None:
                    assert later.get(key) == job[key]


INVARIANT_SIM = Simulator(future_config(page_size=8, projects=[SimProject("gh/acme/api", pipelines=70)]))


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(offset_s=st.integers(min_value=0, max_value=10 * 86400))
def test_invariants_at_any_clock(offset_s: int) -> None:
    view = View(INVARIANT_SIM.history, INVARIANT_SIM.view.now + offset_s * 1000)
    project = INVARIANT_SIM.history.projects["gh/acme/api"]
    truth = view.truth(project, 8, None)
    numbers = [p["number"] for p in truth]
    assert numbers == sorted(numbers, reverse=True)
    job_numbers: list[int] = []
    for pipeline in truth:
        _check_pipeline(pipeline, view.now)
        for workflow in pipeline["workflows"]:
            _check_workflow(workflow)
            for job in workflow["jobs"]:
                _check_job(job)
                if "job_number" in job:
                    job_numbers.append(job["job_number"])
    assert len(job_numbers) == len(set(job_numbers))


def _check_pipeline(pipeline: dict[str, Any], now: int) -> None:
    assert MS_STAMP.match(pipeline["created_at"]) and MS_STAMP.match(pipeline["updated_at"])
    if pipeline["state"] == "errored":
        assert pipeline["errors"] and pipeline["workflows"] == []
    if pipeline["state"] == "setup-pending":
        assert pipeline["updated_at"] == pipeline["created_at"] and pipeline["workflows"] == []


def _check_workflow(workflow: dict[str, Any]) -> None:
    assert S_STAMP.match(workflow["created_at"])
    final = workflow["status"] in FINAL_WORKFLOW
    assert (workflow["stopped_at"] is not None) == final
    statuses = {j["status"] for j in workflow["jobs"]}
    if workflow["status"] == "failing":
        assert statuses & {"failed", "infrastructure_fail", "timedout"}
    if workflow["status"] == "on_hold":
        assert "on_hold" in statuses and not statuses & {"queued", "running"}
    if workflow["status"] == "canceled":
        assert "canceled_by" in workflow and "canceled" in statuses
    if final:
        assert not statuses & {"queued", "running", "blocked", "on_hold"}


def _check_job(job: dict[str, Any]) -> None:
    status = job["status"]
    for key in ("started_at", "stopped_at"):
        assert job[key] is None or S_STAMP.match(job[key])
    if status in {"blocked", "not_run"}:
        assert "job_number" not in job and job["started_at"] is None and job["stopped_at"] is None
    if job["type"] == "build" and status in {"queued", "running", "success", "failed", "timedout"}:
        assert "job_number" in job
        assert (job["started_at"] is None) == (status == "queued")
        assert (job["stopped_at"] is None) == (status in {"queued", "running"})
    if job["type"] == "approval":
        assert ("approved_by" in job) == (status == "success") and "approval_request_id" in job
    details = job["details"]
    if details is not None:
        _check_details(job, details)


def _check_details(job: dict[str, Any], details: dict[str, Any]) -> None:
    assert details["number"] == job["job_number"] and details["status"] == job["status"]
    for key in ("created_at", "queued_at", "started_at", "stopped_at"):
        assert details[key] is None or MS_STAMP.match(details[key])
    assert len(details["parallel_runs"]) == details["parallelism"]
    if details["started_at"] and details["stopped_at"]:
        assert details["duration"] > 0 and job["stopped_at"] is not None
        assert details["stopped_at"][:19] == job["stopped_at"][:19]
    else:
        assert details["duration"] is None


async def test_users_answer_by_id_deleted_ones_404_and_the_truth_names_them(
    http: Http, sim: Simulator
) -> None:
    users = sim.users_truth()
    referenced = {w.started_by for w in workflows(sim)} | {w.canceled_by for w in workflows(sim)}
    referenced |= {j.approved_by for j in jobs(sim)}
    assert referenced - {None} <= set(users)
    deleted = [uid for uid, user in users.items() if user is None]
    assert deleted and len(deleted) < len(users)
    for user_id, user in users.items():
        reply = await http.get(f"/user/{user_id}")
        assert reply.status == (404 if user is None else 200)
        if user is not None:
            assert reply.json() == user and user["id"] == user_id and user["login"] and user["name"]
    assert (await http.get(f"/user/{deleted[0]}", token="")).status == 401
    assert (await http.get("/user/00000000-0000-4000-8000-000000000000")).status == 404
