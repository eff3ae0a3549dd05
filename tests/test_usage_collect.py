"""The usage phase against the simulator: every row of its truth stored once, the download origin never
sees the token, hostile files fail their export alone, the limits hold across runs, no access is a line,
and the exports are asked for while the endpoints are read."""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import logging
import sqlite3
from collections.abc import AsyncIterator
from dataclasses import replace
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import select

from circleci_ds.client.http import Unauthorized
from circleci_ds.collect import usage_plan as plan
from circleci_ds.collect.usage import UsageOptions
from circleci_ds.derive.usage import Limits
from circleci_ds.dev.simulator import SimConfig, SimProject, Simulator
from circleci_ds.store import Store
from circleci_ds.store import schema as s
from collect_helpers import collect

TOKEN = "usage-token-0123456789"
FIXTURE = ["gh/acme/api", "gh/acme/web"]  # gh/acme/ops is in the organisation, not in the fixture
DAY = 86400.0
FAST = UsageOptions(wait=20.0, first_poll=0.1, get_limit=plan.Limit(1000, 60.0))


def config(api_pipelines: int = 14, **knobs: Any) -> SimConfig:
    projects = [
        SimProject("gh/acme/api", pipelines=api_pipelines),
        SimProject("gh/acme/web", pipelines=7),
        SimProject("gh/acme/ops", pipelines=5),
        SimProject("gh/other/tool", pipelines=4),
    ]
    knobs.setdefault("usage_get_limit", 1000)
    return SimConfig(seed=knobs.pop("seed", 5), projects=projects, token=TOKEN, span_days=12.0, **knobs)


def run(url: str, db_url: str, options: UsageOptions = FAST, token: str | None = TOKEN, **extra: Any) -> Any:
    return asyncio.run(
        collect(url, db_url, FIXTURE, token=token, usage=True, usage_options=options, **extra)
    )[0]


def stored_rows(db_url: str) -> dict[str, Any]:
    store = Store.open(db_url, create=False)
    try:
        with store.snapshot() as conn:
            rows = conn.execute(select(s.usage_runs)).mappings().all()
    finally:
        store.close()
    by_id: dict[str, Any] = {}
    for row in rows:
        assert row["job_run_id"] not in by_id, "a job run stored twice"
        by_id[row["job_run_id"]] = dict(row)
    return by_id


def exports_table(db_url: str) -> list[dict[str, Any]]:
    store = Store.open(db_url, create=False)
    try:
        with store.snapshot() as conn:
            return [dict(r) for r in conn.execute(select(s.usage_exports)).mappings().all()]
    finally:
        store.close()


def acme_truth(sim: Simulator) -> dict[str, Any]:
    org = sim.history.project("gh/acme/api").org_id  # type: ignore[union-attr]
    return {job_id: t for job_id, t in sim.usage_truth().items() if t["org_id"] == org}


def assert_rows_match(db_url: str, truth: dict[str, Any]) -> None:
    rows = stored_rows(db_url)
    assert set(rows) == set(truth), (len(set(truth) - set(rows)), len(set(rows) - set(truth)))
    for job_id, want in truth.items():
        got = rows[job_id]
        expected_slug = want["project_slug"] if want["project_slug"] in FIXTURE else None
        assert got["project_slug"] == expected_slug
        assert got["project_id"] == want["project_id"]
        assert got["job_number"] == want["job_number"]
        assert got["resource_class"] == want["resource_class"]
        assert got["parallelism"] == want["parallelism"]
        assert got["total_credits"] == pytest.approx(want["total_credits"])
        assert got["total_credits"] - got["user_credits"] == pytest.approx(want["credits"])
        for key in ("median_cpu_pct", "max_cpu_pct", "median_ram_pct", "max_ram_pct"):
            assert got[key] == (None if want[key] is None else pytest.approx(want[key]))


# -- the truth ---------------------------------------------------------------------------------------


def test_every_usage_row_stored_once_on_both_backends(db_url: str) -> None:
    sim = Simulator(config())
    url = sim.start_thread()
    try:
        results = run(url, db_url)
        assert all(r.error is None for r in results)
        first = acme_truth(sim)
        assert first and any(t["project_slug"] == "gh/acme/ops" for t in first.values())
        assert_rows_match(db_url, first)
        sim.advance(DAY)  # a new day: the next run exports it with the two days before (overlap)
        run(url, db_url)
        second = acme_truth(sim)
        assert len(second) > len(first)
        assert_rows_match(db_url, second)
    finally:
        sim.stop_thread()
    exports = exports_table(db_url)
    stored = [e for e in exports if e["state"] == "stored" and e["rows"]]
    newest = max(e["window_end"] for e in stored)
    overlapping = [e for e in stored if e["window_start"] < newest - DAY and e["window_end"] >= newest]
    assert overlapping, "the second run re-exported the days before the last export's end"
    for e in exports:
        assert e["window_end"] - e["window_start"] <= 31 * DAY
        assert e["window_end"] % DAY == 0, "windows end at a UTC midnight"


@settings(max_examples=4, deadline=None, suppress_health_check=list(HealthCheck))
@given(seed=st.integers(1, 10_000), days=st.lists(st.integers(0, 3), min_size=1, max_size=3))
def test_property_rows_equal_truth_whatever_the_runs(
    tmp_path_factory: Any, seed: int, days: list[int]
) -> None:
    """Whatever the seed and however far the clock moves between runs, the store holds each row of the
    truth once (overlapping windows replace, never double)."""
    db_url = f"sqlite:///{tmp_path_factory.mktemp('usage') / 'u.db'}"
    sim = Simulator(config(seed=seed))
    url = sim.start_thread()
    try:
        run(url, db_url)
        for step in days:
            sim.advance(step * DAY + 3600)
            run(url, db_url)
        assert_rows_match(db_url, acme_truth(sim))
    finally:
        sim.stop_thread()


# -- the download origin ---------------------------------------------------------------------------


def test_the_download_origin_never_sees_the_token(sqlite_url: str) -> None:
    sim = Simulator(config())
    url = sim.start_thread()
    try:
        run(url, sqlite_url)
        seen = sim.download_requests()
    finally:
        sim.stop_thread()
    assert len(seen) >= 2, "several files were downloaded"
    for request in seen:
        names = {name.lower() for name in request["headers"]}
        assert not names & {"circle-token", "authorization", "cookie"}
        assert not any(name.startswith("circle") for name in names)
        assert TOKEN not in repr(request)
        assert request["method"] == "GET"


# -- hostile files ------------------------------------------------------------------------------------


def _bomb(_data: bytes) -> bytes:
    line = b'"o","j",' + b"x" * 50 + b"\n"
    return gzip.compress(b"ORGANIZATION_ID,JOB_ID,JOB_NAME\n" + line * 400_000, compresslevel=9)


def _csv(text: str) -> bytes:
    return gzip.compress(text.encode())


HOSTILE = {
    "bad quoting": lambda d: _csv('ORGANIZATION_ID,JOB_ID\n"o1,"j1\n"unterminated,x\n'),
    "huge field": lambda d: _csv("ORGANIZATION_ID,JOB_ID,JOB_NAME\no,j," + "x" * 300_000 + "\n"),
    "gzip bomb": _bomb,
    "wrong columns": lambda d: _csv("ORG,JOB,CREDITS\no,j,1\n"),
    "ragged row": lambda d: gzip.compress(gzip.decompress(d) + b"a,b,c\n"),
    "not gzip, not csv": lambda d: b"\x1f\x8b\x08\x00garbage" + bytes(range(256)),
    "bad number": lambda d: gzip.compress(gzip.decompress(d).replace(b",0.0,", b",zero,", 1)),
    "cut short": lambda d: d[: len(d) // 2],
}


@pytest.mark.parametrize("kind", sorted(HOSTILE))
def test_a_hostile_file_fails_its_export_alone(sqlite_url: str, kind: str, caplog: Any) -> None:
    sim = Simulator(config())
    url = sim.start_thread()
    options = UsageOptions(
        wait=20.0, first_poll=0.1, get_limit=plan.Limit(1000, 60.0), csv_limits=Limits(max_csv_bytes=4 << 20)
    )
    try:
        run(url, sqlite_url, options)
        before = stored_rows(sqlite_url)
        assert before
        sim.advance(DAY)
        mangle = HOSTILE[kind]
        sim.usage_file_hook = lambda job_id, part, data: mangle(data) if part == 1 else data
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="circleci_ds"):
            results = run(url, sqlite_url, options)
    finally:
        sim.stop_thread()
    assert all(r.error is None for r in results), "the endpoints are not failed by usage"
    after = stored_rows(sqlite_url)
    assert after == before, "nothing stored is lost or changed by the failed export"
    lines = [r.getMessage() for r in caplog.records if "usage" in r.getMessage()]
    assert len(lines) == 1 and "failed" in lines[0], lines
    assert "\n" not in lines[0] and len(lines[0]) < 500
    assert TOKEN not in lines[0] and "sig=" not in lines[0]
    failed = [e for e in exports_table(sqlite_url) if e["state"] == "failed"]
    assert len(failed) == 1 and failed[0]["error"]


# -- limits across runs --------------------------------------------------------------------------------


def test_post_and_get_limits_hold_across_runs(sqlite_url: str, caplog: Any) -> None:
    sim = Simulator(config(usage_get_limit=10, usage_export_seconds=3600.0))  # jobs take an hour
    url = sim.start_thread()
    limited = UsageOptions(wait=3.0, first_poll=0.1)  # the documented limits: 10 POSTs/hour, 10 GETs/minute
    try:
        with caplog.at_level(logging.INFO, logger="circleci_ds"):
            run(url, sqlite_url, limited)
        stats = sim.stats
        assert stats["by_endpoint"]["usage_create"] == 10
        assert any("not asked for this run" in r.getMessage() for r in caplog.records)
        assert any("not ready yet" in r.getMessage() for r in caplog.records)
        run(url, sqlite_url, limited)  # same hour: no POST, and the GETs wait for the minute
        stats = sim.stats
        assert stats["by_endpoint"]["usage_create"] == 10
        assert stats["status"].get("429", 0) == 0, "the limits were respected, not hit"
        for _ in range(6):  # the jobs are done after an hour; each run reads what the limits allow
            sim.advance(3600)
            run(url, sqlite_url, limited)
            if set(stored_rows(sqlite_url)) == set(acme_truth(sim)):
                break
        stats = sim.stats
        # the two windows left (not the ten in flight), and once stored the last two days again (late rows)
        assert 12 <= stats["by_endpoint"]["usage_create"] <= 13
        assert stats["status"].get("429", 0) == 0
        assert_rows_match(sqlite_url, acme_truth(sim))
    finally:
        sim.stop_thread()


def test_a_429_from_the_server_ends_the_asking_without_failing(sqlite_url: str, tmp_path: Any) -> None:
    sim = Simulator(config(usage_post_limit=3))  # the server allows fewer than we count on
    url = sim.start_thread()
    try:
        results = run(url, sqlite_url)
        other = f"sqlite:///{tmp_path / 'other.db'}"  # no bookkeeping there: its POSTs meet 429s
        results += run(url, other)
    finally:
        sim.stop_thread()
    assert all(r.error is None for r in results)
    # The first run's newest window alone (admitted), then its other 9 together: 2 admitted, 7 refused.
    # The second run's newest window meets a 429 at once, and nothing more is sent.
    assert sim.stats["by_endpoint"]["usage_create"] == 11
    assert sim.stats["status"]["429"] == 8
    assert len(exports_table(sqlite_url)) == 3 and not exports_table(other)


def test_completed_without_urls_is_taken_as_empty_after_a_few_polls(sqlite_url: str) -> None:
    sim = Simulator(config(usage_null_url_polls=100))
    url = sim.start_thread()
    try:
        run(url, sqlite_url)
    finally:
        sim.stop_thread()
    assert not stored_rows(sqlite_url)
    assert {e["state"] for e in exports_table(sqlite_url)} == {"empty"}
    assert all(e["null_url_polls"] <= 3 for e in exports_table(sqlite_url))


# -- no access ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("status", [401, 403, 404])
def test_no_usage_access_is_one_line_never_a_failure(sqlite_url: str, status: int, caplog: Any) -> None:
    sim = Simulator(config(usage_denied=status))
    url = sim.start_thread()
    try:
        with caplog.at_level(logging.INFO, logger="circleci_ds"):
            results = run(url, sqlite_url)
    finally:
        sim.stop_thread()
    assert all(r.error is None for r in results)
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("usage")]
    assert len(lines) == 1 and f"HTTP {status}" in lines[0] and "estimated" in lines[0]
    assert not stored_rows(sqlite_url)


def test_without_a_token_usage_is_skipped_with_a_line(sqlite_url: str, caplog: Any) -> None:
    sim = Simulator(SimConfig(seed=5, projects=[SimProject("gh/acme/api", pipelines=5)]))
    url = sim.start_thread()
    try:
        with caplog.at_level(logging.INFO, logger="circleci_ds"):
            asyncio.run(collect(url, sqlite_url, ["gh/acme/api"], usage=True))
    finally:
        sim.stop_thread()
    assert sim.stats["by_endpoint"]["usage_create"] == 0
    assert any("no token" in r.getMessage() and "estimated" in r.getMessage() for r in caplog.records)


def test_usage_org_id_from_the_fixture_is_used(sqlite_url: str) -> None:
    sim = Simulator(config())
    url = sim.start_thread()
    org = sim.history.project("gh/acme/api").org_id  # type: ignore[union-attr]
    try:
        run(url, sqlite_url, usage_org_ids=(org,))
    finally:
        sim.stop_thread()
    assert sim.stats["by_endpoint"]["collaborations"] == 0
    assert_rows_match(sqlite_url, acme_truth(sim))


def test_raw_files_are_kept_as_sent(sqlite_url: str) -> None:
    sim = Simulator(config())
    url = sim.start_thread()
    try:
        run(url, sqlite_url)
    finally:
        sim.stop_thread()
    with sqlite3.connect(sqlite_url.removeprefix("sqlite:///")) as conn:
        files = [bytes(d) for (d,) in conn.execute("select data from usage_files")]
    assert len(files) >= 2 and all(f[:2] == b"\x1f\x8b" for f in files)
    lines = [line for f in files for line in gzip.decompress(f).splitlines()[1:] if line]
    assert len(lines) == len(stored_rows(sqlite_url))


# -- alongside the endpoints ---------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def recording_proxy(upstream: str, refuse: str | None = None) -> AsyncIterator[tuple[str, list[str]]]:
    """A server in front of the simulator's API that notes the kind of each request as it arrives
    (`usage_create`, `project`, `jobs`, ...) and answers paths ending in `refuse` with a 404."""
    seen: list[str] = []
    async with aiohttp.ClientSession() as session:

        async def forward(request: web.Request) -> web.Response:
            tail = request.match_info["tail"]
            seen.append(_kind(request.method, tail))
            if refuse is not None and tail.endswith(refuse):
                return web.json_response({"message": "Not found"}, status=404)
            keep = {"circle-token", "content-type"}
            headers = {k: v for k, v in request.headers.items() if k.lower() in keep}
            url = f"{upstream}/{tail}"
            body = await request.read()
            async with session.request(
                request.method, url, params=request.query, headers=headers, data=body
            ) as reply:
                data, status = await reply.read(), reply.status
                date = reply.headers.get("Date", "")
            kind = "application/json"
            return web.Response(body=data, status=status, content_type=kind, headers={"Date": date})

        app = web.Application()
        app.router.add_route("*", "/api/v2/{tail:.*}", forward)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        try:
            site = web.TCPSite(runner, "127.0.0.1", 0)
            await site.start()
            yield f"http://127.0.0.1:{runner.addresses[0][1]}/api/v2", seen
        finally:
            await runner.cleanup()


def _kind(method: str, tail: str) -> str:
    parts = tail.strip("/").split("/")
    if parts[0] == "organizations":
        return "usage_create" if method == "POST" else "usage_get"
    if parts[0] == "project":
        return {4: "project", 5: "pipelines", 6: "job_details"}.get(len(parts), "other")
    if parts[0] == "pipeline" and len(parts) == 3:
        return "workflows"
    if parts[0] == "workflow" and len(parts) == 3:
        return "jobs"
    return parts[-1]


def collect_through_proxy(sim: Simulator, db_url: str, refuse: str | None = None) -> tuple[Any, list[str]]:
    async def go() -> tuple[Any, list[str]]:
        async with recording_proxy(sim_url, refuse) as (url, seen):
            results, _ = await collect(url, db_url, FIXTURE, token=TOKEN, usage=True, usage_options=FAST)
        return results, seen

    sim_url = sim.start_thread()
    try:
        return asyncio.run(go())
    finally:
        sim.stop_thread()


TREE_READS = ("workflows", "jobs", "job_details")


def test_exports_are_asked_for_while_the_pipelines_are_read(sqlite_url: str) -> None:
    """The exports are asked for, and polled, before the endpoints' last tree read (so before the last
    pipeline is stored), in the order the server received the requests; the rows are stored all the same."""
    # 25 ms a request: the endpoints' ~900 requests take seconds at 8 in flight, however fast the pacer.
    sim = Simulator(config(api_pipelines=40, latency_ms=25.0))
    results, seen = collect_through_proxy(sim, sqlite_url)
    assert all(r.error is None for r in results)
    creates = [i for i, kind in enumerate(seen) if kind == "usage_create"]
    polls = [i for i, kind in enumerate(seen) if kind == "usage_get"]
    last_tree_read = max(i for i, kind in enumerate(seen) if kind in TREE_READS)
    assert len(creates) == 10, "the POST limit: 10 an hour"
    assert max(creates) < last_tree_read, "every export was asked for while the pipelines were read"
    assert min(polls) < last_tree_read, "polling began while the pipelines were read"
    assert_rows_match(sqlite_url, acme_truth(sim))
    assert {e["state"] for e in exports_table(sqlite_url)} <= {"stored", "empty"}, "none left in flight"


def test_an_organisation_only_the_project_info_names_is_asked_for_once_it_is_stored(
    sqlite_url: str, caplog: Any
) -> None:
    """/me/collaborations refused: the organisation comes from the project infos this run stores, so
    its exports are asked for after them, and every row is stored."""
    sim = Simulator(config())
    with caplog.at_level(logging.WARNING, logger="circleci_ds"):
        results, seen = collect_through_proxy(sim, sqlite_url, refuse="me/collaborations")
    assert all(r.error is None for r in results)
    assert seen.count("collaborations") == 1
    creates = [i for i, kind in enumerate(seen) if kind == "usage_create"]
    infos = [i for i, kind in enumerate(seen) if kind == "project"]
    assert len(infos) == len(FIXTURE) and len(creates) == 10
    assert min(creates) > max(infos), "asked for once the endpoints' project infos were stored"
    assert not [r.getMessage() for r in caplog.records if "usage" in r.getMessage()]
    assert_rows_match(sqlite_url, acme_truth(sim))


@pytest.mark.parametrize("with_org_id", [False, True])
def test_a_rejected_token_still_ends_the_run_with_no_usage_line(
    sqlite_url: str, caplog: Any, with_org_id: bool
) -> None:
    """The phase runs alongside the endpoints, yet a token the API rejects ends the collection as
    before: Unauthorized, no usage line, nothing stored, with or without an organisation to ask."""
    sim = Simulator(config())
    url = sim.start_thread()
    org = sim.history.project("gh/acme/api").org_id  # type: ignore[union-attr]
    extra = {"usage_org_ids": (org,)} if with_org_id else {}
    try:
        with caplog.at_level(logging.INFO, logger="circleci_ds"), pytest.raises(Unauthorized):
            run(url, sqlite_url, token="not-the-token-0123456789", **extra)
    finally:
        sim.stop_thread()
    assert not [r.getMessage() for r in caplog.records if r.getMessage().startswith("usage")]
    assert not stored_rows(sqlite_url)


def test_a_run_cancelled_while_usage_is_in_flight_ends_cleanly(sqlite_url: str) -> None:
    """Cancelling the collection (what SIGINT does) while the phase asks and polls ends both at once,
    without an error; the next run stores every row."""
    sim = Simulator(config(api_pipelines=40, latency_ms=25.0))
    url = sim.start_thread()
    try:
        cancelled = run(url, sqlite_url, kill_after_requests=300)  # of ~940: the trees are being read
        asked = sim.stats["by_endpoint"]["usage_create"]
        results = run(url, sqlite_url)
    finally:
        sim.stop_thread()
    assert cancelled == [] and asked > 0, "cancelled while the phase was under way"
    assert all(r.error is None for r in results)
    assert_rows_match(sqlite_url, acme_truth(sim))


def test_a_collector_started_once_another_asked_for_the_exports_asks_for_none(db_url: str) -> None:
    """Two collectors on one store: the second starts once the first's POSTs are under way. The
    first counted them all in the store before sending any, so the second sends none, and no window
    is asked for twice."""
    sim = Simulator(config(latency_ms=25.0))
    url = sim.start_thread()

    async def both() -> list[Any]:
        first = asyncio.create_task(
            collect(url, db_url, FIXTURE, token=TOKEN, usage=True, usage_options=FAST)
        )
        while sim.stats["by_endpoint"]["usage_create"] == 0 and not first.done():
            await asyncio.sleep(0.005)
        second = await collect(url, db_url, FIXTURE, token=TOKEN, usage=True, usage_options=FAST)
        return [*(await first)[0], *second[0]]

    try:
        results = asyncio.run(both())
    finally:
        sim.stop_thread()
    assert all(r.error is None for r in results)
    assert sim.stats["by_endpoint"]["usage_create"] == 10
    windows = [(e["window_start"], e["window_end"]) for e in exports_table(db_url)]
    assert len(windows) == len(set(windows)) == 10
    assert_rows_match(db_url, acme_truth(sim))


def test_polling_goes_on_while_the_endpoints_are_read(sqlite_url: str) -> None:
    """A `wait` shorter than the endpoints' collection does not end the polling while they are read: the
    simulator answers a completed job's first poll without URLs, so only a second poll, past `wait`,
    can store the rows."""
    sim = Simulator(config(api_pipelines=40, latency_ms=25.0, usage_null_url_polls=1))
    # One poll fits in `wait`, not two; one export (the newest window holds every run), so a round of
    # polls is one request, not ten queued behind the endpoints' requests.
    short = replace(FAST, wait=0.25, first_poll=0.1, post_limit=plan.Limit(1, 3600.0))
    url = sim.start_thread()
    try:
        results = run(url, sqlite_url, short)
    finally:
        sim.stop_thread()
    assert all(r.error is None for r in results)
    assert_rows_match(sqlite_url, acme_truth(sim))
    assert {e["state"] for e in exports_table(sqlite_url)} <= {"stored", "empty"}, "none left in flight"
