"""The simulator's Usage API: window checks, limits, states moving with the clock, files on a second
origin, and rows consistent with the job details."""

from __future__ import annotations

import asyncio
import csv
import gzip
import io
from collections.abc import Iterator
from typing import Any

import aiohttp
import pytest

from circleci_ds.dev.simulator import SimConfig, SimProject, Simulator

TOKEN = "sim-usage-token-0123456789"


@pytest.fixture
def sim() -> Iterator[tuple[Simulator, str, str]]:
    projects = [SimProject("gh/acme/api", pipelines=30), SimProject("gh/acme/web", pipelines=10)]
    simulator = Simulator(SimConfig(seed=4, projects=projects, token=TOKEN, usage_export_seconds=60))
    url = simulator.start_thread()
    org = simulator.history.project("gh/acme/api").org_id  # type: ignore[union-attr]
    try:
        yield simulator, url, org
    finally:
        simulator.stop_thread()


async def call(method: str, url: str, body: Any = None, token: str | None = TOKEN) -> tuple[int, Any]:
    headers = {"Circle-Token": token} if token else {}
    async with (
        aiohttp.ClientSession(headers=headers) as session,
        session.request(method, url, json=body) as reply,
    ):
        return reply.status, await reply.json(content_type=None)


def post(url: str, org: str, body: Any, token: str | None = TOKEN) -> tuple[int, Any]:
    return asyncio.run(call("POST", f"{url}/organizations/{org}/usage_export_job", body, token))


def test_window_checks_in_order(sim: tuple[Simulator, str, str]) -> None:
    _, url, org = sim
    cases = [
        (
            {"start": "2026-10-01T00:00:00Z", "end": "2026-10-02T00:00:00Z", "project_id": "x"},
            "Unexpected field",
        ),
        ({"start": "yesterday", "end": "2026-10-02T00:00:00Z"}, "malformed request body"),
        ({"start": "2026-10-03T00:00:00Z", "end": "2026-10-02T00:00:00Z"}, "End date must be after"),
        ({"start": "2025-10-01T00:00:00Z", "end": "2026-12-02T00:00:00Z"}, "more than a year ago"),
        ({"start": "2026-10-01T00:00:00Z", "end": "2026-12-02T00:00:00Z"}, "cannot be in the future"),
        ({"start": "2026-09-01T00:00:00Z", "end": "2026-10-02T00:00:01Z"}, "cannot exceed 31 days"),
    ]
    for body, words in cases:
        status, answer = post(url, org, body)
        assert status == 400 and words in answer["message"], (body, answer)
    status, answer = post(url, org, {"start": "2026-10-01T00:00:00+00:00", "end": "2026-11-01T00:00:00Z"})
    assert status == 201 and answer["state"] == "created" and answer["download_urls"] is None
    assert answer["start"] == "2026-10-01T00:00:00Z"  # re-serialized
    assert post(url, org, {"start": "2026-10-01T00:00:00Z", "end": "2026-10-02T00:00:00Z"}, None)[0] == 401
    assert post(url, "00000000-0000-4000-8000-000000000000", {})[0] == 404


def test_post_limit_and_states_with_the_clock(sim: tuple[Simulator, str, str]) -> None:
    simulator, url, org = sim
    body = {"start": "2026-10-01T00:00:00Z", "end": "2026-11-01T00:00:00Z"}
    answers = [post(url, org, body) for _ in range(11)]
    assert [s for s, _ in answers] == [201] * 10 + [429]  # 10 an hour
    job = answers[0][1]["usage_export_job_id"]
    status_url = f"{url}/organizations/{org}/usage_export_job/{job}"
    states = [asyncio.run(call("GET", status_url))[1]["state"] for _ in range(2)]
    assert states == ["created", "processing"]
    simulator.advance(61)
    first = asyncio.run(call("GET", status_url))[1]
    assert first["state"] == "completed" and first["download_urls"] is None  # for one poll
    urls = asyncio.run(call("GET", status_url))[1]["download_urls"]
    assert len(urls) >= 2 and all(not u.startswith(url.rsplit("/api/v2", 1)[0]) for u in urls)
    simulator.advance(3600)
    assert post(url, org, body)[0] == 201  # the hour is over

    async def fetch(target: str) -> tuple[int, bytes]:
        async with aiohttp.ClientSession() as session, session.get(target) as reply:
            return reply.status, await reply.read()

    files = [asyncio.run(fetch(u)) for u in urls]
    assert all(status == 200 and data[:2] == b"\x1f\x8b" for status, data in files)
    tables = [list(csv.reader(io.StringIO(gzip.decompress(d).decode()), escapechar="\\")) for _, d in files]
    assert all(t[0][0] == "ORGANIZATION_ID" and len(t[0]) == 48 for t in tables)
    raw = b"".join(gzip.decompress(d) for _, d in files)
    assert b"\\N" in raw
    assert asyncio.run(fetch(urls[0].replace("sig=", "sig=0")))[0] == 403


def test_get_limit(sim: tuple[Simulator, str, str]) -> None:
    _, url, org = sim
    job = post(url, org, {"start": "2026-10-01T00:00:00Z", "end": "2026-10-05T00:00:00Z"})[1]
    status_url = f"{url}/organizations/{org}/usage_export_job/{job['usage_export_job_id']}"
    statuses = [asyncio.run(call("GET", status_url))[0] for _ in range(11)]
    assert statuses == [200] * 10 + [429]


def test_rows_agree_with_job_details_and_profiles(sim: tuple[Simulator, str, str]) -> None:
    simulator, _, _ = sim
    truth = simulator.usage_truth()
    assert truth
    details = {
        job["id"]: job["details"]
        for slug in ("gh/acme/api", "gh/acme/web")
        for pipeline in simulator.truth(slug)
        for workflow in pipeline["workflows"]
        for job in workflow["jobs"]
        if job["details"]
    }
    for job_id, row in truth.items():
        shown = details[job_id]
        assert shown["executor"]["resource_class"] == row["resource_class"]
        assert shown["parallelism"] == row["parallelism"]
        assert row["credits"] == pytest.approx(row["total_credits"] - row["user_credits"])
    profiles = {row["profile"] for row in truth.values()}
    assert profiles == {"oversized", "starved", "normal"}
    oversized = [r for r in truth.values() if r["profile"] == "oversized" and r["max_cpu_pct"] is not None]
    starved = [r for r in truth.values() if r["profile"] == "starved" and r["median_cpu_pct"] is not None]
    assert oversized and all(r["max_cpu_pct"] <= 40 and r["max_ram_pct"] <= 40 for r in oversized)
    assert starved and all(r["median_cpu_pct"] >= 93 for r in starved)
    assert any(r["median_cpu_pct"] is None for r in truth.values())  # short runs are not sampled
