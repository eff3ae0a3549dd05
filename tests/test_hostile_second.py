"""The second round of hostile input (issue 25): a server that lies in ways the first round did not try.

Each test fills a database through a hostile server in front of the simulator (honest at first), then
lets the server tamper with its answers (`Mode.TAMPER`), and checks that the item fails alone with one
plain line, that nothing stored is lost, and that an honest server afterwards is collected in full.
Classes that touch the store run on SQLite and PostgreSQL.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import pytest

from circleci_ds.client.http import Limits
from circleci_ds.derive.facts import open_store
from circleci_ds.dev.simulator import SimConfig, SimProject, Simulator
from collect_helpers import assert_matches_truth, collect, exported
from hostile_server import Exchange, HostileServer, Mode

SLUGS = ["gh/acme/api", "gh/acme/web"]
TOKEN = "hostile-test-token-5f3a9c71"
DAY = 86400.0
SQL_WORDS = ("INSERT", "SELECT", "UPDATE", "[parameters", "sqlalche.me", "[SQL")


def simulator() -> Simulator:
    projects = [SimProject("gh/acme/api", pipelines=12), SimProject("gh/acme/web", pipelines=8)]
    return Simulator(SimConfig(seed=5, projects=projects, page_size=4, span_days=4.0))


@dataclass
class Stage:
    sim: Simulator
    hostile: HostileServer
    url: str
    db_url: str
    caplog: pytest.LogCaptureFixture

    async def collect(self, limits: Limits | None = None, **options: Any) -> dict[str, str | None]:
        """One collection through the hostile server: endpoint -> error (None: collected)."""
        with self.caplog.at_level(logging.INFO, logger="circleci_ds"):
            results, _ = await collect(self.url, self.db_url, SLUGS, token=TOKEN, limits=limits, **options)
        return {r.endpoint.slug: r.error for r in results}

    def tamper(self, fn: Callable[[Exchange], None], kinds: str | set[str]) -> None:
        self.hostile.behave(Mode.TAMPER, kinds, tamper=fn)

    def honest(self) -> None:
        self.hostile.behave(Mode.PROXY)

    def requests(self, kind: str) -> int:
        from hostile_server import request_kind

        return sum(1 for s in self.hostile.seen if request_kind(s.path) == kind)

    def walk_state(self, slug: str) -> tuple[int | None, int | None]:
        store = open_store(self.db_url, create=False)
        try:
            return store.job_numbers(slug)
        finally:
            store.close()

    def last_error(self, slug: str) -> str | None:
        store = open_store(self.db_url, create=False)
        try:
            return next(e.last_error for e in store.endpoint_statuses() if e.slug == slug)
        finally:
            store.close()


@pytest.fixture
async def stage(db_url: str, caplog: pytest.LogCaptureFixture) -> AsyncIterator[Stage]:
    sim = simulator()
    async with sim.serve() as sim_url:
        hostile = HostileServer(upstream=sim_url)
        async with hostile.serve() as url:
            filled = Stage(sim, hostile, url, db_url, caplog)
            assert await filled.collect() == {slug: None for slug in SLUGS}
            yield filled


def assert_plain(line: str | None) -> None:
    """One printable line of bounded length, no SQL, no parameters, no links to a library's docs."""
    assert line is not None
    assert "\n" not in line and len(line) <= 1200, line
    for word in SQL_WORDS:
        assert word not in line, line


def first_item(exchange: Exchange) -> dict[str, Any] | None:
    items = exchange.data.get("items") if isinstance(exchange.data, dict) else None
    return items[0] if exchange.status == 200 and items else None


# -- ids and numbers from the API ------------------------------------------------------------------------
@pytest.mark.parametrize("told", [2**63 - 1, 10**12, 0])
async def test_details_that_disagree_with_the_number_asked_are_refused(stage: Stage, told: int) -> None:
    """Details answering another `number` never become the job frontier; an honest server is then
    collected in full."""
    stage.sim.advance(DAY)

    def lie(exchange: Exchange) -> None:
        if exchange.status == 200:
            exchange.data["number"] = told

    stage.tamper(lie, "job_details")
    errors = await stage.collect()
    assert any(errors.values())
    for slug in SLUGS:
        frontier, _ = stage.walk_state(slug)
        assert frontier is None or frontier < 2**31
    stage.honest()
    stage.sim.advance(DAY)
    assert await stage.collect() == {slug: None for slug in SLUGS}
    assert await stage.collect() == {slug: None for slug in SLUGS}
    assert_matches_truth(stage.db_url, stage.sim, SLUGS, waiting_ok=True)


@pytest.mark.parametrize("number", [10**12, 2**31 - 2])
async def test_one_absurd_job_number_never_makes_the_walk_probe_far(stage: Stage, number: int) -> None:
    """A listed job number far past the others: the walk stays within its cap, later reruns are found."""
    stage.sim.advance(DAY)
    done: list[bool] = []

    def absurd(exchange: Exchange) -> None:
        job = first_item(exchange)
        if job is not None and not done and job.get("job_number") is not None:
            job["job_number"] = number
            done.append(True)

    stage.tamper(absurd, "jobs")
    await stage.collect()
    assert done
    stage.honest()
    stage.sim.advance(DAY)
    before = stage.requests("job_details")
    await stage.collect()
    await stage.collect()
    probes = stage.requests("job_details") - before
    assert probes < 2_500, probes
    for slug in SLUGS:
        frontier, _ = stage.walk_state(slug)
        assert frontier is None or frontier < 100_000


# -- strings the schema must hold -----------------------------------------------------------------------
@pytest.mark.parametrize(
    ("kind", "key", "length"),
    [("workflows", "status", 41), ("workflows", "name", 5000), ("jobs", "type", 41), ("jobs", "status", 41)],
)
async def test_long_strings_fail_no_run_on_any_backend(
    stage: Stage, kind: str, key: str, length: int
) -> None:
    stage.sim.advance(DAY)

    def stretch(exchange: Exchange) -> None:
        if exchange.status == 200:
            for item in exchange.data["items"]:
                item[key] = "x" * length

    stage.tamper(stretch, kind)
    errors = await stage.collect()  # a StoreError would stop the whole run here
    for error in errors.values():
        assert error is None or "x" * 41 not in error
    stage.honest()
    stage.sim.advance(DAY)
    assert await stage.collect() == {slug: None for slug in SLUGS}


async def test_a_long_login_fails_no_run_on_any_backend(stage: Stage) -> None:
    stage.sim.advance(DAY)

    def stretch(exchange: Exchange) -> None:
        if exchange.status == 200 and isinstance(exchange.data, dict):
            exchange.data["login"] = "l" * 301
            exchange.data["name"] = "n" * 5000

    stage.tamper(stretch, "user")
    assert await stage.collect() == {slug: None for slug in SLUGS}


# -- ids from one server meeting another's --------------------------------------------------------------
async def test_a_pipeline_id_of_another_endpoint_is_refused(stage: Stage) -> None:
    """gh/acme/web lists one of gh/acme/api's pipeline ids: api's tree stays api's."""
    before = exported(stage.db_url)
    stolen = next(iter(before["gh/acme/api"]))
    stage.sim.advance(DAY)

    def steal(exchange: Exchange) -> None:
        pipeline = first_item(exchange)
        if pipeline is not None and "gh/acme/web" in exchange.path:
            pipeline["id"] = stolen

    stage.tamper(steal, "pipelines")
    errors = await stage.collect()
    after = exported(stage.db_url)
    assert stolen in after["gh/acme/api"] and stolen not in after["gh/acme/web"]
    assert after["gh/acme/api"][stolen]["id"] == stolen
    assert after["gh/acme/api"][stolen]["vcs"] == before["gh/acme/api"][stolen]["vcs"]
    assert errors["gh/acme/web"] is not None and stolen in errors["gh/acme/web"]
    assert_plain(errors["gh/acme/web"])


async def test_duplicate_ids_in_a_list_fail_the_pipeline_with_a_plain_line(stage: Stage) -> None:
    stage.sim.advance(DAY)

    def twice(exchange: Exchange) -> None:
        if exchange.status == 200 and exchange.data["items"]:
            exchange.data["items"].append(dict(exchange.data["items"][0]))

    stage.tamper(twice, "jobs")
    errors = await stage.collect()
    assert any(errors.values())
    for slug, error in errors.items():
        if error is not None:
            assert_plain(error)
            assert_plain(stage.last_error(slug))
    for word in SQL_WORDS:
        assert word not in stage.caplog.text


# -- the server's clock --------------------------------------------------------------------------------
async def test_a_date_far_in_the_future_never_moves_the_checkpoint(stage: Stage) -> None:
    stage.sim.advance(DAY)

    def future(exchange: Exchange) -> None:
        exchange.headers["Date"] = "Sat, 01 Jan 2150 00:00:00 GMT"

    stage.tamper(future, {"pipelines", "project"})
    await stage.collect()
    assert "Date" in stage.caplog.text
    store = open_store(stage.db_url, create=False)
    try:
        for slug in SLUGS:
            checkpoint = store.checkpoint(slug)
            assert checkpoint is None or checkpoint < 4102444800  # 2100
    finally:
        store.close()
    stage.honest()
    stage.sim.advance(2 * DAY)
    assert await stage.collect() == {slug: None for slug in SLUGS}
    assert_matches_truth(stage.db_url, stage.sim, SLUGS, waiting_ok=True)


# -- lists ---------------------------------------------------------------------------------------------
async def test_a_404_on_a_later_page_of_jobs_is_an_error_and_keeps_the_stored_jobs(stage: Stage) -> None:
    """Only a first page's 404 means "past retention"; a workflow whose jobs cannot be read keeps them."""
    before = exported(stage.db_url)
    stage.sim.advance(DAY)
    stage.sim.configure(page_size=1)

    def gone(exchange: Exchange) -> None:
        if "page-token" in exchange.query:
            exchange.status, exchange.data = 404, {"message": "Not found"}

    stage.tamper(gone, "jobs")
    errors = await stage.collect(lookback=30 * DAY)
    assert any(errors.values())
    after = exported(stage.db_url)
    for slug, trees in before.items():
        for pid, tree in trees.items():
            had = {w["id"]: len(w["jobs"]) for w in tree["workflows"]}
            has = {w["id"]: len(w["jobs"]) for w in after[slug][pid]["workflows"]}
            for wid, count in had.items():
                assert has.get(wid, count) >= count, (pid, wid)


@pytest.mark.parametrize(
    ("limits", "said"),
    [
        pytest.param(Limits(max_list_bytes=30_000), ("bytes", "MiB", "KiB"), id="one-list"),
        pytest.param(Limits(max_held_bytes=30_000), ("at once",), id="lists-read-at-once"),
    ],
)
async def test_workflow_lists_past_a_byte_budget_fail_their_pipelines_alone(
    stage: Stage, limits: Limits, said: tuple[str, ...]
) -> None:
    """A list over its own budget, or over the one budget of what every list being read holds, fails
    its pipeline alone with one plain line; the run's budget is given back as lists end, and an
    honest run after it collects everything under the same limits."""
    stage.sim.advance(DAY)
    stage.sim.configure(page_size=1)

    def padded(exchange: Exchange) -> None:
        if exchange.status == 200:
            for item in exchange.data["items"]:
                item["padding"] = "p" * 20_000

    stage.tamper(padded, "workflows")
    errors = await stage.collect(limits)
    assert any(errors.values())
    for error in errors.values():
        if error is not None:
            assert any(word in error for word in said), error
            assert_plain(error)
    stage.honest()
    assert await stage.collect(limits) == {slug: None for slug in SLUGS}
