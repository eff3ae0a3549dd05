"""The collector against the simulator: completeness, incremental rules, failures, and kill -9."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from functools import partial
from pathlib import Path
from typing import Any

import pytest

from circleci_ds.collect.collector import TreeSlots
from circleci_ds.collect.lanes import Outcome
from circleci_ds.derive.facts import open_store
from circleci_ds.dev.simulator import SimConfig, SimProject, Simulator
from circleci_ds.store import Store
from circleci_ds.times import parse_ts
from collect_helpers import (
    TOKEN_FROM_ENV,
    assert_matches_truth,
    cli_env,
    collect,
    exported,
    kill_9_once,
    quirky_server,
    write_fixture,
)

SLUGS = ["gh/acme/api", "github/acme/web"]
DAY = 86400.0


def config(**knobs: Any) -> SimConfig:
    projects = [SimProject("gh/acme/api", pipelines=50), SimProject("gh/acme/web", pipelines=30)]
    return SimConfig(seed=knobs.pop("seed", 11), projects=knobs.pop("projects", projects), **knobs)


@pytest.fixture
def db_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'store.db'}"


@pytest.fixture
async def served() -> AsyncIterator[tuple[Simulator, str]]:
    sim = Simulator(config())
    async with sim.serve() as url:
        yield sim, url


def all_workflows(sim: Simulator, slug: str) -> dict[str, set[str]]:
    return {p["id"]: {w["id"] for w in p["workflows"]} for p in sim.truth(slug)}


async def test_full_then_incremental_equals_truth(served: tuple[Simulator, str], db_url: str) -> None:
    sim, url = served
    results, stats = await collect(url, db_url, SLUGS)
    assert [r.error for r in results] == [None, None]
    assert_matches_truth(db_url, sim, SLUGS)
    assert stats.max_in_flight <= 8
    for _ in range(3):
        sim.advance(DAY)
        await collect(url, db_url, SLUGS)
        assert_matches_truth(db_url, sim, SLUGS)


async def test_rerun_under_old_pipeline_is_collected(db_url: str) -> None:
    busy = [SimProject("gh/acme/api", pipelines=200), SimProject("gh/acme/web", pipelines=100)]
    sim = Simulator(config(projects=busy, span_days=8.0))
    async with sim.serve() as url:
        await _rerun_scenario(sim, url, db_url)


async def _rerun_scenario(sim: Simulator, url: str, db_url: str) -> None:
    await collect(url, db_url, SLUGS)
    before = {slug: all_workflows(sim, slug) for slug in ("gh/acme/api", "gh/acme/web")}
    sim.advance(2.5 * DAY)
    after = {slug: all_workflows(sim, slug) for slug in before}
    grown = [
        (slug, pid) for slug in before for pid, wfs in before[slug].items() if wfs and after[slug][pid] > wfs
    ]
    assert grown, "the simulated history should rerun a workflow under an already collected pipeline"
    await collect(url, db_url, SLUGS)
    assert_matches_truth(db_url, sim, SLUGS)
    stored = exported(db_url)
    for slug, pid in grown:
        assert {w["id"] for w in stored[slug][pid]["workflows"]} == after[slug][pid]


async def test_running_pipelines_become_final(served: tuple[Simulator, str], db_url: str) -> None:
    sim, url = served
    await collect(url, db_url, SLUGS)
    store = open_store(db_url)
    open_before = sum(s.open_pipelines for s in store.endpoint_statuses())
    assert open_before > 0, "the initial clock should catch some pipelines mid-flight"
    sim.advance(10 * DAY)
    await collect(url, db_url, SLUGS)
    assert_matches_truth(db_url, sim, SLUGS)
    still_open = [t.data for t in store.iter_trees() if t.data["id"] in _open_ids(store)]
    store.close()
    # Only workflows held for an approval that never comes may stay open.
    for tree in still_open:
        assert any(w["status"] == "on_hold" for w in tree["workflows"]), tree["id"]


def _open_ids(store: Store) -> set[str]:
    return {
        pid
        for slug in ("gh/acme/api", "gh/acme/web")
        for pid, e in store.pipeline_index(slug).items()
        if not e.is_final
    }


async def test_unchanged_rerun_is_cheap_and_on_hold_is_reread(
    served: tuple[Simulator, str], db_url: str
) -> None:
    sim, url = served
    _, first = await collect(url, db_url, SLUGS)
    _, second = await collect(url, db_url, SLUGS)
    assert second.requests <= 0.05 * first.requests
    assert_matches_truth(db_url, sim, SLUGS)


def _unchanged_budget(sim: Simulator, db_url: str, slugs: list[str]) -> tuple[int, int]:
    """(open pipelines stored, workflows still running in the truth) over `slugs`."""
    store = open_store(db_url)
    try:
        open_pipelines = sum(s.open_pipelines for s in store.endpoint_statuses())
    finally:
        store.close()
    running = sum(
        1
        for slug in slugs
        for p in sim.truth(slug)
        for w in p["workflows"]
        if w["status"] in ("running", "failing")
    )
    return open_pipelines, running


@pytest.mark.parametrize("busy", [False, True], ids=["quiet", "busy"])
async def test_reruns_unchanged_rerun_costs_three_requests_per_endpoint_plus_open_ones(
    db_url: str, busy: bool
) -> None:
    if busy:  # a pipeline every 10 minutes, the whole 72 h window full
        projects = [SimProject("gh/acme/api", pipelines=500, every_minutes=10)]
        sim = Simulator(config(projects=projects, future_days=0.5, late_rerun_days=6, gated_rerun_rate=0.3))
    else:
        sim = Simulator(config(projects=[SimProject("gh/acme/api", pipelines=150)], span_days=9))
    async with sim.serve() as url:
        await collect(url, db_url, ["gh/acme/api"])
        open_pipelines, running = _unchanged_budget(sim, db_url, ["gh/acme/api"])
        sim.reset_stats()
        results, stats = await collect(url, db_url, ["gh/acme/api"])
    assert results[0].error is None
    calls = sim.stats["by_endpoint"]
    assert calls["pipelines"] + calls["job_details"] + calls["project"] <= 3
    assert calls["pipeline"] == 0 and calls["workflows"] == open_pipelines
    assert calls["jobs"] <= running  # a running workflow's jobs can move without it
    walk = stats.requests - calls.get("user", 0)  # user look-ups are the people pass's, not the walk's
    assert walk <= 3 + open_pipelines + running
    assert_matches_truth(db_url, sim, ["gh/acme/api"])


async def test_reruns_late_ones_found_by_the_job_number_walk(db_url: str) -> None:
    """Reruns days after their pipeline, far past --lookback: the age-spaced re-read is off
    (lookback 1 s), so only the job numbers can find them."""
    projects = [SimProject("gh/acme/api", pipelines=120)]
    sim = Simulator(config(projects=projects, span_days=6, future_days=4, late_rerun_days=9, rerun_rate=1.0))
    history = sim.history.projects["gh/acme/api"]
    async with sim.serve() as url:
        await collect(url, db_url, ["gh/acme/api"], lookback=1.0)
        start = sim.view.now
        for _ in range(8):
            sim.advance(DAY)
            sim.reset_stats()
            results, _ = await collect(url, db_url, ["gh/acme/api"], lookback=1.0)
            assert results[0].error is None
            assert_matches_truth(db_url, sim, ["gh/acme/api"])
    late = [
        w
        for p in history.index.pipelines
        for w in p.workflows
        if w.rerun_of and p.created_at < start < w.created_at <= sim.view.now
        and w.created_at - p.created_at > 3 * DAY * 1000
    ]
    assert late, "the history should hold reruns days after their pipeline"
    stored = exported(db_url)["gh/acme/api"]
    for rerun in late:
        assert rerun.id in {w["id"] for w in stored[rerun.pipeline.id]["workflows"]}


MARGIN_MS = 120_000  # the store's read times follow the real clock while the simulated one stands


def _waiting_rerun(sim: Simulator, first_read: int, lookback_ms: int) -> tuple[str, str, int] | None:
    """A rerun that waits for its approval, under a pipeline read at `first_read`, and a moment when
    the age-spaced re-read of that pipeline is due while the rerun still waits: (pipeline, rerun, when)."""
    for pipeline in sim.history.projects["gh/acme/api"].index.pipelines:
        age = first_read - pipeline.created_at
        if not 0 < age < lookback_ms:
            continue
        for wf in pipeline.workflows:
            if not wf.rerun_of or wf.jobs[0].spec.name != "hold-rerun" or wf.created_at <= first_read:
                continue
            due = max(wf.created_at + 1000, first_read + max(3600_000, age))
            approved = wf.jobs[0].run.approved_at
            if approved is None or approved > due + 2 * MARGIN_MS:
                return pipeline.id, wf.id, due
    return None


async def test_reruns_that_wait_found_by_the_age_spaced_reread(db_url: str) -> None:
    projects = [SimProject("gh/acme/api", pipelines=200)]
    sim = Simulator(
        config(projects=projects, span_days=4, future_days=2, rerun_rate=1.0, gated_rerun_rate=1.0, seed=4)
    )
    found = _waiting_rerun(sim, sim.view.now, 72 * 3600 * 1000)
    assert found, "the history should hold a rerun that waits for its approval"
    pipeline_id, rerun_id, due = found
    async with sim.serve() as url:
        await collect(url, db_url, ["gh/acme/api"])
        sim.advance((due - MARGIN_MS - sim.view.now) / 1000)  # before it is due
        await collect(url, db_url, ["gh/acme/api"])
        stored = exported(db_url)["gh/acme/api"][pipeline_id]
        assert rerun_id not in {w["id"] for w in stored["workflows"]}
        sim.advance(2 * MARGIN_MS / 1000)
        await collect(url, db_url, ["gh/acme/api"])
    stored = exported(db_url)["gh/acme/api"][pipeline_id]
    waiting = [w for w in stored["workflows"] if w["id"] == rerun_id]
    assert waiting and waiting[0]["status"] == "on_hold"
    assert all("job_number" not in j or j["type"] == "approval" for j in waiting[0]["jobs"])


async def test_tree_slot_released_by_a_task_cancelled_before_it_ran() -> None:
    slots = TreeSlots(1)
    ran: list[str] = []

    async def tree(name: str) -> None:
        ran.append(name)

    with pytest.raises(ExceptionGroup):
        async with asyncio.TaskGroup() as group:
            await slots.spawn(group, partial(tree, "first"))
            raise ValueError("the walk fails before the tree's task ever runs")
    assert ran == []
    async with asyncio.timeout(5), asyncio.TaskGroup() as group:  # a leaked slot would hang here
        await slots.spawn(group, partial(tree, "second"))
    assert ran == ["second"]


def _break_some(items: list[Any]) -> list[Any]:
    """Every third pipeline loses its id; every fifth gets a number of the wrong type."""
    out = []
    for position, item in enumerate(items):
        if position % 3 == 1:
            item = {k: v for k, v in item.items() if k != "id"}
        elif position % 5 == 2:
            item = {**item, "number": str(item["number"])}
        out.append(item)
    return out


async def test_malformed_items_fail_alone_and_the_run_ends(db_url: str) -> None:
    sim = Simulator(config())
    async with sim.serve() as upstream, quirky_server(upstream, mangle=_break_some) as url:
        async with asyncio.timeout(600):  # slots that leaked would hang the other endpoint
            results, _ = await collect(url, db_url, SLUGS, trees_in_flight=2)
    for result in results:
        assert result.outcome is Outcome.FAILED and result.error is not None
        assert "item(s) not collected" in result.error and "without a usable id" in result.error
    stored = exported(db_url)
    for slug in ("gh/acme/api", "gh/acme/web"):
        truth = sim.truth(slug)
        good = {p["id"]: p for position, p in enumerate(truth) if position % 20 in _good_positions()}
        assert good and set(stored[slug]) == set(good)
        for pid, tree in good.items():
            assert stored[slug][pid] == tree


def _good_positions() -> set[int]:
    """Positions (within a page of 20) that `_break_some` leaves intact."""
    return {i for i in range(20) if i % 3 != 1 and i % 5 != 2}


@pytest.mark.parametrize("status", [404, 403])
async def test_project_info_unavailable_default_branch_from_the_pipelines(
    db_url: str, status: int, caplog: pytest.LogCaptureFixture
) -> None:
    sim = Simulator(config(projects=[SimProject("gh/acme/api", pipelines=40, default_branch="trunk")]))
    async with sim.serve() as upstream, quirky_server(upstream, project_status=status) as url:
        results, _ = await collect(url, db_url, ["gh/acme/api"])
    assert results[0].error is None
    assert_matches_truth(db_url, sim, ["gh/acme/api"])
    branches = Counter(p.get("vcs", {}).get("branch") for p in sim.truth("gh/acme/api"))
    branches.pop(None, None)
    expected = branches.most_common(1)[0][0]
    store = open_store(db_url)
    info = store.project_infos()["gh/acme/api"]
    store.close()
    assert info["vcs_info"]["default_branch"] == expected == "trunk"
    warnings = [r for r in caplog.records if "project info unavailable" in r.getMessage()]
    assert len(warnings) == 1


async def test_project_info_read_when_missing_or_a_day_old(
    served: tuple[Simulator, str], db_url: str
) -> None:
    sim, url = served
    await collect(url, db_url, SLUGS)
    assert sim.stats["by_endpoint"]["project"] == 2
    sim.reset_stats()
    sim.advance(DAY - 120)
    await collect(url, db_url, SLUGS)
    assert sim.stats["by_endpoint"]["project"] == 0
    sim.advance(240)
    await collect(url, db_url, SLUGS)
    assert sim.stats["by_endpoint"]["project"] == 2


async def test_approval_jobs_have_no_details(served: tuple[Simulator, str], db_url: str) -> None:
    sim, url = served
    sim.advance(DAY)
    await collect(url, db_url, SLUGS)
    jobs = [j for p in exported(db_url)["gh/acme/api"].values() for w in p["workflows"] for j in w["jobs"]]
    approvals = [j for j in jobs if j["type"] == "approval"]
    assert approvals and all(j["details"] is None for j in approvals)
    numbered_builds = [j for j in jobs if j["type"] == "build" and j.get("job_number") is not None]
    assert numbered_builds and all(j["details"]["number"] == j["job_number"] for j in numbered_builds)
    assert any(j["type"] == "build" and "job_number" not in j and j["details"] is None for j in jobs)


@pytest.mark.parametrize("form", ["seconds", "date"])
async def test_rate_limit_honoured_with_both_retry_after_forms(db_url: str, form: str) -> None:
    # Two requests within 100 ms are refused: the walk's requests follow each other faster than that
    # even on a loaded machine, where a limit of 150/s with a burst of 5 was never reached.
    sim = Simulator(
        config(
            projects=[SimProject("gh/acme/api", pipelines=2)],
            rate_limit_rps=10.0,
            rate_burst=1,
            retry_after=form,
        )
    )
    async with sim.serve() as url:
        results, stats = await collect(url, db_url, ["gh/acme/api"], concurrency=16)
    assert results[0].error is None
    assert stats.rate_limited > 0, stats
    assert sim.stats["status"].get("429", 0) == stats.rate_limited
    assert_matches_truth(db_url, sim, ["gh/acme/api"])


async def test_server_faults_are_retried(db_url: str) -> None:
    sim = Simulator(config(fault_rate=0.1))
    async with sim.serve() as url:
        results, stats = await collect(url, db_url, SLUGS)
    assert [r.error for r in results] == [None, None]
    assert stats.retries > 0
    assert_matches_truth(db_url, sim, SLUGS)


async def test_unknown_project_fails_alone(served: tuple[Simulator, str], db_url: str) -> None:
    sim, url = served
    results, _ = await collect(url, db_url, ["gh/acme/nope", *SLUGS])
    errors = {r.endpoint.written: r.error for r in results}
    assert errors["gh/acme/nope"] == "project not found, or the token cannot see it: gh/acme/nope"
    assert errors["gh/acme/api"] is None and errors["github/acme/web"] is None
    assert_matches_truth(db_url, sim, SLUGS)


async def test_private_project_needs_the_token(db_url: str) -> None:
    projects = [
        SimProject("gh/acme/api", pipelines=10),
        SimProject("gh/acme/secret", pipelines=10, private=True),
    ]
    sim = Simulator(config(projects=projects, token="tok-123"))
    slugs = ["gh/acme/api", "gh/acme/secret"]
    async with sim.serve() as url:
        anonymous, _ = await collect(url, db_url, slugs)
        assert [r.error is None for r in anonymous] == [True, False]
        authorised, _ = await collect(url, db_url, slugs, token="tok-123")
        assert [r.error for r in authorised] == [None, None]
    assert_matches_truth(db_url, sim, slugs)


async def test_past_retention_pipeline_kept_without_workflows(db_url: str) -> None:
    sim = Simulator(config(retention_days=20.0))
    async with sim.serve() as url:
        results, _ = await collect(url, db_url, SLUGS)
    assert [r.error for r in results] == [None, None]
    assert_matches_truth(db_url, sim, SLUGS)
    trees = exported(db_url)["gh/acme/api"].values()
    assert any(not t["workflows"] for t in trees) and any(t["workflows"] for t in trees)


async def test_from_date_limits_the_first_run(served: tuple[Simulator, str], db_url: str) -> None:
    sim, url = served
    await collect(url, db_url, SLUGS, from_date=sim.now.timestamp() - 5 * DAY)
    created = [parse_ts(p["created_at"]) or 0.0 for p in exported(db_url)["gh/acme/api"].values()]
    cutoff = sim.now.timestamp() - 5 * DAY
    assert created and all(c >= cutoff for c in created)
    assert len(created) < len(sim.truth("gh/acme/api"))


# -- the command line, as a user runs it ------------------------------------------------------
@pytest.fixture
def threaded() -> Iterator[tuple[Simulator, str]]:
    sim = Simulator(config(token="sekrit-token-value-42", latency_ms=2.0))
    url = sim.start_thread()
    try:
        yield sim, url
    finally:
        sim.stop_thread()


def cli(args: list[str], url: str, db_url: str, token: str, **kw: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "circleci_ds", *args],
        env=cli_env(url, db_url, token),
        capture_output=True,
        text=True,
        timeout=300,
        **kw,
    )


def test_cli_collect_export_status(threaded: tuple[Simulator, str], tmp_path: Path, db_url: str) -> None:
    sim, url = threaded
    fixture = write_fixture(tmp_path / "fixture.yaml", [*SLUGS, "gh/acme/missing"], token=TOKEN_FROM_ENV)
    run = cli(["collect", str(fixture)], url, db_url, "sekrit-token-value-42")
    assert run.returncode == 1, run.stderr
    assert "project not found, or the token cannot see it: gh/acme/missing" in run.stderr
    assert "Traceback" not in run.stderr
    out = cli(["export"], url, db_url, "x")
    lines = [json.loads(line) for line in out.stdout.splitlines()]
    assert len(lines) == sum(len(sim.truth(s)) for s in ("gh/acme/api", "gh/acme/web"))
    first = lines[0]
    assert first["backend_name"] == "CircleCI" and first["category"] == "pipeline"
    assert first["project"] == "acme" and first["project_slug"] in ("gh/acme/api", "gh/acme/web")
    assert set(first) >= {"uuid", "origin", "updated_on", "timestamp", "tag", "metadata__updated_on", "data"}
    status = cli(["status"], url, db_url, "x")
    assert status.returncode == 0 and "gh/acme/api" in status.stdout and "project not found" in status.stdout


def test_token_never_leaks(threaded: tuple[Simulator, str], tmp_path: Path, db_url: str) -> None:
    sim, url = threaded
    token = "sekrit-token-value-42"
    sim.config.fault_rate = 0.05
    fixture = write_fixture(tmp_path / "fixture.yaml", [*SLUGS, "gh/acme/missing"], token=TOKEN_FROM_ENV)
    outputs = [cli(["collect", str(fixture), "-v"], url, db_url, token)]
    outputs.append(cli(["collect", str(fixture), "-v"], url, db_url, "wrong-" + token))
    assert outputs[1].returncode == 1 and "token rejected" in outputs[1].stderr
    outputs += [cli(["status"], url, db_url, token), cli(["export"], url, db_url, token)]
    for proc in outputs:
        assert token not in proc.stdout and token not in proc.stderr
    for path in tmp_path.iterdir():
        if path.is_file():
            assert token.encode() not in path.read_bytes(), path


def test_kill_9_mid_run_then_resume(threaded: tuple[Simulator, str], tmp_path: Path, db_url: str) -> None:
    sim, url = threaded
    sim.config.latency_ms = 5.0
    fixture = write_fixture(tmp_path / "fixture.yaml", SLUGS, token=TOKEN_FROM_ENV)
    env = cli_env(url, db_url, "sekrit-token-value-42")
    proc = subprocess.Popen(
        [sys.executable, "-m", "circleci_ds", "collect", str(fixture), "--concurrency", "4"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    kill_9_once(proc, db_url.removeprefix("sqlite:///"), "select count(*) from pipelines", 10)
    sim.advance(3600)
    done = cli(["collect", str(fixture)], url, db_url, "sekrit-token-value-42")
    assert done.returncode == 0, done.stderr
    assert_matches_truth(db_url, sim, SLUGS)
