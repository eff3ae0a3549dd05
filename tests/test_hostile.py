"""A hostile server never hangs, crashes or corrupts a collection, and never gets the token elsewhere.

Every test starts from a database filled from the simulator, then collects again into it through
a hostile server in front of the same simulator (tests/hostile_server.py). The second run must
end (the client's limits bound it), name what failed, keep the token out of every output and
file, send nothing to another origin, and leave what the first run stored as it was.

Where the whole run matters (exit status, stderr, memory) it is the `circleci-ds collect`
command in a subprocess; the many variants of each class run the same collector in-process.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import re
import shutil
import sqlite3
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from circleci_ds.client.http import (
    CircleCIClient,
    EndlessPagination,
    Limits,
    MalformedResponse,
    NotFound,
    Redirected,
    Unauthorized,
)
from circleci_ds.collect.collector import EndpointResult
from circleci_ds.derive.facts import open_store
from circleci_ds.dev.simulator import SimConfig, SimProject, Simulator
from collect_helpers import (
    RSS_PROBE,
    TOKEN_FROM_ENV,
    Run,
    assert_matches_truth,
    collect,
    exported,
    peak_rss_mib,
    quirky_server,
    run_cli_async,
    stored_state,
    write_fixture,
)
from hostile_server import HostileServer, Mode, Reply, gzip_bomb

SLUGS = ["gh/acme/api", "gh/acme/web"]
TOKEN = "hostile-test-token-5f3a9c71"
FAST = ["--retry-backoff", "0.01", "--timeout", "2"]  # transient failures end in well under a second
DAY = 86400.0


def simulator() -> Simulator:
    projects = [SimProject("gh/acme/api", pipelines=12), SimProject("gh/acme/web", pipelines=8)]
    return Simulator(SimConfig(seed=5, projects=projects, page_size=4, span_days=4.0))


@dataclass(frozen=True)
class Template:
    path: Path
    state: Any


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Template:
    """One collection from the simulator, copied into each test's database."""
    path = tmp_path_factory.mktemp("template") / "store.db"

    async def fill() -> list[EndpointResult]:
        sim = simulator()
        async with sim.serve() as url:
            results, _ = await collect(url, f"sqlite:///{path}", SLUGS, token=TOKEN)
        return results

    assert [r.error for r in asyncio.run(fill())] == [None, None]
    return Template(path, stored_state(f"sqlite:///{path}"))


@dataclass
class Scene:
    sim: Simulator
    hostile: HostileServer
    url: str
    other: HostileServer  # another origin: it must never be asked anything
    other_url: str
    db_url: str
    dir: Path
    before: Any
    caplog: pytest.LogCaptureFixture

    async def cli(self, *extra: str, prefix: list[str] | None = None) -> Run:
        """`circleci-ds collect` against the hostile server; checked with `assert_safe`."""
        fixture = write_fixture(self.dir / "fixture.yaml", SLUGS, token=TOKEN_FROM_ENV)
        args = ["collect", str(fixture), "--concurrency", "4", *FAST, *extra]
        return await run_cli_async(args, self.url, self.db_url, TOKEN, prefix=prefix)

    async def collect(self, limits: Limits | None = None, timeout: float = 2.0) -> dict[str, str | None]:
        """The collector in-process against the hostile server: endpoint -> error."""
        with self.caplog.at_level(logging.DEBUG, logger="circleci_ds"):
            results, _ = await collect(
                self.url, self.db_url, SLUGS, token=TOKEN, limits=limits, timeout=timeout
            )
        self.assert_no_leak(self.caplog.text)
        return {r.endpoint.slug: r.error for r in results}

    def assert_safe(self, run: Run, status: int = 1) -> None:
        """A documented exit status, no traceback, the token nowhere."""
        assert run.returncode == status, run.stderr[-3000:]
        assert "Traceback" not in run.stderr + run.stdout
        self.assert_no_leak(run.stdout + run.stderr)

    def assert_no_leak(self, output: str = "") -> None:
        assert TOKEN not in output
        for path in self.dir.iterdir():
            if path.is_file():
                assert TOKEN.encode() not in path.read_bytes(), path
        assert self.other.seen == [], "a request went to another origin"

    def forget_checkpoints(self) -> None:
        """As if no run had ever completed: pipelines are listed to the end of the list."""
        with sqlite3.connect(self.dir / "store.db") as conn:
            conn.execute("UPDATE endpoints SET checkpoint = NULL")
        self.before = stored_state(self.db_url)

    def assert_intact(self, failed: Iterable[str] = SLUGS) -> None:
        """Every stored tree as it was; the checkpoints of the endpoints that failed unmoved."""
        (ends, trees), (ends_before, trees_before) = stored_state(self.db_url), self.before
        assert trees == trees_before
        assert {slug: counts for slug, (_, *counts) in ends.items()} == {
            slug: counts for slug, (_, *counts) in ends_before.items()
        }
        assert all(ends[slug][0] == ends_before[slug][0] for slug in failed)
        assert "bait" not in json.dumps(trees)


@pytest.fixture
async def scene(tmp_path: Path, template: Template, caplog: pytest.LogCaptureFixture) -> AsyncIterator[Scene]:
    for file in template.path.parent.iterdir():
        shutil.copy(file, tmp_path / file.name)
    sim = simulator()
    async with sim.serve() as sim_url:
        hostile, other = HostileServer(upstream=sim_url), HostileServer()
        async with hostile.serve() as url, other.serve() as other_url:
            db_url = f"sqlite:///{tmp_path / 'store.db'}"
            yield Scene(sim, hostile, url, other, other_url, db_url, tmp_path, template.state, caplog)


def failures(run: Run) -> list[str]:
    return [line for line in run.stderr.splitlines() if "failed:" in line]


def last_error(db_url: str, slug: str) -> str | None:
    store = open_store(db_url, create=False)
    try:
        return next(e.last_error for e in store.endpoint_statuses() if e.slug == slug)
    finally:
        store.close()


# -- 1. the token never leaves the origin --------------------------------------------------------------
async def test_cli_redirect_to_another_origin_is_refused_and_the_token_stays_home(scene: Scene) -> None:
    scene.hostile.behave(Mode.REDIRECT_OTHER, status=302, to=scene.other_url)
    run = await scene.cli()
    scene.assert_safe(run)
    assert len(failures(run)) == 2
    # The first request, a probe for new job numbers, is the one refused.
    refused = r"failed: gh/acme/api: /project/gh/acme/api/job/\d+: redirected to another origin \(http://127"
    assert re.search(refused, run.stderr)
    scene.assert_intact()


@pytest.mark.parametrize("status", [301, 302, 303, 307, 308])
@pytest.mark.parametrize("kind", ["job_details", "pipelines", "workflows"])
async def test_redirect_to_another_origin_is_refused(scene: Scene, status: int, kind: str) -> None:
    scene.sim.advance(DAY)  # new pipelines: their workflows are listed
    scene.hostile.behave(Mode.REDIRECT_OTHER, kinds=kind, status=status, to=scene.other_url)
    errors = await scene.collect()
    assert all("redirected to another origin" in (e or "") for e in errors.values()), errors
    assert stored_state(scene.db_url)[0] == scene.before[0]  # no checkpoint moved


@pytest.mark.parametrize("kind", ["pipelines", "pipeline", "workflows", "jobs", "job_details", "user"])
async def test_every_request_refuses_cross_origin_redirects(kind: str) -> None:
    """Each endpoint the client calls, redirected elsewhere, fails without following."""
    hostile, other = HostileServer(), HostileServer()
    async with hostile.serve() as url, other.serve() as other_url:
        hostile.behave(Mode.REDIRECT_OTHER, kinds=kind, to=other_url)
        async with CircleCIClient(url, TOKEN, backoff_initial=0.01) as client:
            call = {
                "pipelines": lambda: client.pipeline_pages("gh/acme/api").__anext__(),
                "pipeline": lambda: client.pipeline("p-1"),
                "workflows": lambda: client.workflows("p-1"),
                "jobs": lambda: client.jobs("w-1"),
                "job_details": lambda: client.job_details("gh/acme/api", 7),
                "user": lambda: client.user("u-1"),
            }[kind]
            with pytest.raises(Redirected, match="another origin"):
                await call()
    assert other.seen == []
    assert hostile.tokens_received() == {TOKEN}


@pytest.mark.parametrize(
    "target",
    ["https://{host}/api/v2", "http://localhost:{port}/api/v2", "http://127.0.0.1:1/api/v2", "//evil.test/x"],
)
async def test_a_change_of_scheme_host_or_port_is_another_origin(scene: Scene, target: str) -> None:
    host = scene.url.split("/")[2]
    to = target.format(host=host, port=host.rsplit(":", 1)[1])
    scene.hostile.behave(Mode.REDIRECT_OTHER, kinds="pipelines", to=to)
    errors = await scene.collect()
    assert all("redirected to another origin" in (e or "") for e in errors.values()), errors
    assert all(s.path.startswith("/api/v2/project/") for s in scene.hostile.seen)  # nothing else asked
    scene.assert_intact()


async def test_cli_redirect_within_the_origin_is_followed_with_the_token(scene: Scene) -> None:
    scene.sim.advance(DAY)  # new pipelines, so the run has work under redirects
    scene.hostile.behave(Mode.REDIRECT_SAME)
    run = await scene.cli()
    scene.assert_safe(run, status=0)
    assert_matches_truth(scene.db_url, scene.sim, SLUGS)
    moved = [s for s in scene.hostile.seen if s.path.startswith("/api/v2/moved/")]
    assert moved and all(s.token == TOKEN for s in moved)


@pytest.mark.parametrize(
    ("status", "location", "says"),
    [
        (302, None, "HTTP 302 without a Location"),
        (307, "", "HTTP 307 without a Location"),
        (301, "http://[::1", "unusable Location"),
        (300, "/api/v2/elsewhere", "HTTP 300"),
        (304, None, "HTTP 304"),
        (305, "http://127.0.0.1:1/proxy", "HTTP 305"),
    ],
)
async def test_unusable_redirects_fail_the_request(
    scene: Scene, status: int, location: str | None, says: str
) -> None:
    scene.hostile.behave(Mode.REDIRECT_BAD, kinds="pipelines", status=status, location=location)
    errors = await scene.collect()
    assert all(says in (e or "") for e in errors.values()), errors
    scene.assert_intact()


async def test_redirect_loop_ends(scene: Scene) -> None:
    scene.hostile.behave(Mode.REDIRECT_LOOP, kinds="pipelines")
    errors = await scene.collect()
    assert all("more than 5 redirects" in (e or "") for e in errors.values()), errors
    scene.assert_intact()


# -- 5. pagination without end ---------------------------------------------------------------------------
ENDLESS = [
    (Mode.EMPTY_PAGES, Limits(), "5 empty pages in a row"),
    (Mode.REPEATED_TOKEN, Limits(), "page token repeated"),
    (Mode.ENDLESS_PAGES, Limits(max_pages=3), "more than 3 pages"),
]


async def test_cli_pipeline_list_without_end_fails_that_list_only(scene: Scene) -> None:
    scene.hostile.behave(Mode.EMPTY_PAGES, kinds="pipelines", only="acme/api")
    run = await scene.cli()
    scene.assert_safe(run)
    assert failures(run) == [
        "failed: gh/acme/api: /project/gh/acme/api/pipeline: list does not end: 5 empty pages in a row, "
        "each naming a next page"
    ]
    assert "collected 1/2 endpoint(s)" in run.stderr  # the other endpoint was collected
    assert len([s for s in scene.hostile.seen if s.path.endswith("acme/api/pipeline")]) == 5
    scene.assert_intact(failed=["gh/acme/api"])


@pytest.mark.parametrize(("mode", "limits", "says"), ENDLESS)
async def test_pipeline_list_without_end_fails_that_list(
    scene: Scene, mode: Mode, limits: Limits, says: str
) -> None:
    scene.forget_checkpoints()
    scene.hostile.behave(mode, kinds="pipelines")
    errors = await scene.collect(limits)
    assert all(f"list does not end: {says}" in (e or "") for e in errors.values()), errors
    assert len([s for s in scene.hostile.seen if s.path.endswith("/pipeline")]) <= 2 * 5
    scene.assert_intact()


@pytest.mark.parametrize("kind", ["workflows", "jobs"])
@pytest.mark.parametrize(("mode", "limits", "says"), ENDLESS)
async def test_workflow_and_job_lists_without_end_fail_their_pipeline(
    scene: Scene, kind: str, mode: Mode, limits: Limits, says: str
) -> None:
    scene.sim.advance(DAY)  # new pipelines: their workflows and jobs must be listed
    scene.hostile.behave(mode, kinds=kind)
    errors = await scene.collect(limits)
    assert all(f"list does not end: {says}" in (e or "") for e in errors.values()), errors
    assert all("item(s) not collected" in (e or "") for e in errors.values()), errors
    assert not [r for r in scene.caplog.records if r.exc_info], "a traceback logged for an ordinary failure"
    assert stored_state(scene.db_url)[0] == scene.before[0]  # no checkpoint moved


@pytest.mark.parametrize("kind", ["pipelines", "workflows", "jobs"])
@pytest.mark.parametrize("mode", [Mode.EMPTY_PAGES, Mode.REPEATED_TOKEN, Mode.ENDLESS_PAGES])
async def test_every_list_is_bounded(kind: str, mode: Mode) -> None:
    hostile = HostileServer()  # no upstream: pages of bait
    async with hostile.serve() as url, CircleCIClient(url, TOKEN, limits=Limits(max_pages=50)) as client:
        hostile.behave(mode, kinds=kind)
        with pytest.raises(EndlessPagination, match="list does not end"):
            if kind == "pipelines":
                async for _ in client.pipeline_pages("gh/acme/api"):
                    pass
            else:
                await (client.workflows("p-1") if kind == "workflows" else client.jobs("w-1"))
    assert 2 <= len(hostile.seen) <= 50


ODD = "../../x?y=z&page-token=evil#frag %2F%00\x00é\u202e/ +"


async def test_page_tokens_of_any_characters_go_back_as_a_query_parameter(tmp_path: Path) -> None:
    sim = simulator()
    db_url = f"sqlite:///{tmp_path / 'store.db'}"
    async with sim.serve() as sim_url:
        hostile = HostileServer(upstream=sim_url)
        async with hostile.serve() as url:
            hostile.behave(Mode.ODD_TOKENS, kinds={"pipelines", "workflows", "jobs"}, token_text=ODD)
            results, _ = await collect(url, db_url, SLUGS, token=TOKEN)
    assert [r.error for r in results] == [None, None]
    assert_matches_truth(db_url, sim, SLUGS)
    lists = ("/pipeline", "/workflow", "/job")  # the lists given odd tokens; test results page plainly
    paged = [s for s in hostile.seen if s.query and not s.path.endswith("/tests")]
    assert len(paged) >= 4  # 12 pipelines at 4 a page, and more
    for seen in paged:
        assert seen.path.endswith(lists), seen.path
        (name, value), *rest = seen.query
        assert name == "page-token" and value.startswith(ODD) and not rest


# -- 6. untrusted sizes ----------------------------------------------------------------------------------
async def test_cli_gzip_bomb_fails_the_request_and_memory_stays_small(scene: Scene) -> None:
    """About 1 MB of gzip that inflates to 1 GiB: the request fails at the 64 MiB cap."""
    scene.hostile.behave(Mode.GZIP_BOMB, kinds="pipelines", only="acme/api")
    gzip_bomb()  # built before the run, which must not wait for it
    run = await scene.cli(prefix=RSS_PROBE)
    scene.assert_safe(run)
    assert failures(run) == [
        "failed: gh/acme/api: /project/gh/acme/api/pipeline: "
        "response larger than 64 MiB (see --max-response-mb)"
    ]
    # The interpreter and libraries take about 60 MiB, the capped body 64 MiB; 1 GiB never is.
    assert peak_rss_mib(run.stderr) < 200
    scene.assert_intact(failed=["gh/acme/api"])


async def test_cli_max_response_mb_sets_the_cap(scene: Scene) -> None:
    scene.hostile.behave(Mode.GZIP_BOMB, kinds="pipelines")
    gzip_bomb()  # built before the run, which must not wait for it
    run = await scene.cli("--max-response-mb", "2", prefix=RSS_PROBE)
    scene.assert_safe(run)
    assert [
        line.endswith("response larger than 2 MiB (see --max-response-mb)") for line in failures(run)
    ] == [
        True,
        True,
    ]
    assert peak_rss_mib(run.stderr) < 120
    scene.assert_intact()


@pytest.mark.parametrize("length", [True, False], ids=["content-length", "chunked"])
async def test_huge_body_fails_the_request(scene: Scene, length: bool) -> None:
    scene.hostile.behave(Mode.HUGE_BODY, kinds="pipelines", mib=6, length=length)
    errors = await scene.collect(Limits(max_response_bytes=4 << 20))
    assert all("response larger than 4 MiB" in (e or "") for e in errors.values()), errors
    scene.assert_intact()


async def test_body_that_never_ends_is_cut_by_the_timeout(scene: Scene) -> None:
    scene.hostile.behave(Mode.SLOW_BODY, kinds="pipelines", only="acme/web")
    errors = await scene.collect(timeout=0.5)
    listing = "/project/gh/acme/web/pipeline"
    assert errors == {"gh/acme/api": None, "gh/acme/web": f"gh/acme/web: {listing}: timed out"}
    assert len([s for s in scene.hostile.seen if s.path == "/api/v2" + listing]) == 6  # attempts
    scene.assert_intact(failed=["gh/acme/web"])


# -- 7. text that cannot be encoded, or printed ----------------------------------------------------------
NASTY = (
    "lone \ud800 and \udfff, escape \x1b[2J\x1b]0;owned\x07, bidi \u202etxt, nul \x00, new\nline, "
    "markup [/x] [bold]" + "!" * 5000
)


def assert_clean_error(error: str | None) -> None:
    assert error is not None and len(error) <= 2000
    assert not any(c in error for c in "\x1b\x00\n\u202e\ud800\udfff")
    assert TOKEN not in error


async def test_cli_server_message_with_any_text_never_aborts_the_run(scene: Scene) -> None:
    scene.hostile.behave(
        Mode.MESSAGE, kinds="pipelines", only="acme/api", status=400, text=NASTY[:60] + TOKEN + NASTY[60:]
    )
    run = await scene.cli()
    scene.assert_safe(run)
    assert "collected 1/2 endpoint(s)" in run.stderr
    assert "markup [/x] [bold]" in run.stderr  # shown as text, not read as rich markup
    error = last_error(scene.db_url, "gh/acme/api")
    assert_clean_error(error)
    assert error and "HTTP 400: lone \ufffd and \ufffd, escape \ufffd[2J" in error
    status = await run_cli_async(["status"], scene.url, scene.db_url, TOKEN)
    assert status.returncode == 0 and "\x1b" not in status.stdout
    scene.assert_intact(failed=["gh/acme/api"])


@pytest.mark.parametrize("status", [400, 404, 418, 500, 999])
async def test_server_messages_with_any_text_are_recorded_clean(scene: Scene, status: int) -> None:
    scene.hostile.behave(Mode.MESSAGE, kinds="pipelines", status=status, text=NASTY[:60] + TOKEN + NASTY[60:])
    errors = await scene.collect()
    for slug, error in errors.items():
        assert_clean_error(error)
        assert_clean_error(last_error(scene.db_url, slug))
    if status != 404:  # a 404 says "not found" in its own words
        assert all("lone \ufffd and \ufffd" in (e or "") and "***" in (e or "") for e in errors.values())
    scene.assert_intact()


async def test_lone_surrogates_in_data_are_stored_replaced(scene: Scene) -> None:
    body = json.dumps({"slug": "gh/acme/api", "name": "api \ud800", "vcs_info": {"default_branch": "main"}})
    scene.sim.advance(2 * DAY)  # the stored project info is stale: it is read again
    scene.hostile.behave(Mode.BODY, kinds="project", only="acme/api", body=body.encode())
    errors = await scene.collect()
    assert errors == {"gh/acme/api": None, "gh/acme/web": None}
    assert any(s.path == "/api/v2/project/gh/acme/api" for s in scene.hostile.seen)
    store = open_store(scene.db_url, create=False)
    try:
        assert store.project_infos()["gh/acme/api"]["name"] == "api \ufffd"
    finally:
        store.close()


def _nul_in_branches(items: list[Any]) -> list[Any]:
    return [{**item, "vcs": {**item.get("vcs", {}), "branch": "ma\x00in"}} for item in items]


async def test_nul_characters_are_stored_replaced_on_every_backend(db_url: str) -> None:
    """PostgreSQL text cannot hold NUL: one in a name must not stop the run there."""
    sim = Simulator(SimConfig(seed=3, projects=[SimProject("gh/acme/api", pipelines=20)]))
    async with sim.serve() as upstream, quirky_server(upstream, mangle=_nul_in_branches) as url:
        results, _ = await collect(url, db_url, ["gh/acme/api"])
    assert results[0].error is None
    trees = exported(db_url)["gh/acme/api"]
    assert len(trees) == len(sim.truth("gh/acme/api"))
    assert {t["vcs"]["branch"] for t in trees.values()} == {"ma\ufffdin"}


async def test_cli_token_echoed_by_the_server_is_masked(scene: Scene) -> None:
    scene.sim.advance(2 * DAY)  # new pipelines, and the stored project info stale: read again
    scene.hostile.behave(Mode.ECHO_TOKEN)
    run = await scene.cli()
    assert run.returncode in (0, 1)
    scene.assert_safe(run, status=run.returncode)
    store = open_store(scene.db_url, create=False)
    try:
        # The project's answer carried the token in every string; stored, it says *** instead.
        assert store.project_infos()["gh/acme/api"]["name"].endswith(":***")
    finally:
        store.close()


def test_record_finish_survives_any_string(db_url: str) -> None:
    store = open_store(db_url)
    try:
        store.ensure_endpoint("gh/acme/api", "acme", "https://circleci.com/gh/acme/api")
        store.record_finish("gh/acme/api", finished=1.0, error=NASTY + "\udcff\x00", checkpoint=None)
        (status,) = store.endpoint_statuses()
    finally:
        store.close()
    assert status.last_error is not None and status.last_error.startswith("lone \ufffd and \ufffd")
    assert_clean_error(status.last_error)


# -- bodies, headers and statuses of every kind ----------------------------------------------------------
def nested(depth: int) -> bytes:
    return b'{"a":' * depth + b"1" + b"}" * depth


async def test_cli_body_that_is_not_an_object_fails_the_endpoint(scene: Scene) -> None:
    scene.hostile.behave(Mode.BODY, kinds="pipelines", only="acme/api", body=b"[" * 200_000 + b"]" * 200_000)
    run = await scene.cli()
    scene.assert_safe(run)
    assert failures(run) == ["failed: gh/acme/api: /project/gh/acme/api/pipeline: JSON nested too deeply"]
    scene.assert_intact(failed=["gh/acme/api"])


@pytest.mark.parametrize(
    ("body", "says"),
    [
        (b"[]", "expected a JSON object, got list"),
        (b"3", "expected a JSON object, got int"),
        (b"null", "expected a JSON object, got null"),
        (b'"text"', "expected a JSON object, got str"),
        (nested(65), "JSON nested deeper than 64 levels"),
        (b'{"n": 1e999}', "JSON holds a number out of range"),
        (b'{"n": NaN}', "JSON holds NaN"),
        (b'{"n": -Infinity}', "JSON holds -Infinity"),
        (b'{"n": ' + b"9" * 5000 + b"}", "JSON holds an integer of more than 19 digits"),
        (b"", "response is not JSON"),
        (b"\xff\xfe\x00garbage", "response is not JSON"),
        (b"<html>gateway</html>", "response is not JSON"),
    ],
    ids=lambda v: v[:12].decode(errors="replace") if isinstance(v, bytes) else None,
)
async def test_bodies_that_are_not_usable_objects_fail_the_request(
    scene: Scene, body: bytes, says: str
) -> None:
    scene.hostile.behave(Mode.BODY, kinds="pipelines", only="acme/api", body=body)
    errors = await scene.collect()
    listing = "/project/gh/acme/api/pipeline"
    assert errors == {"gh/acme/api": f"gh/acme/api: {listing}: {says}", "gh/acme/web": None}
    scene.assert_intact(failed=["gh/acme/api"])


@pytest.mark.parametrize(
    ("page", "says"),
    [
        ({"items": "nope"}, "a list answer without an `items` list"),
        ({"next_page_token": "x"}, "a list answer without an `items` list"),
        ({"items": [], "next_page_token": 5}, "next_page_token is not a string"),
        ({"items": [], "next_page_token": {"a": 1}}, "next_page_token is not a string"),
        ({"items": [], "next_page_token": "t" * 5000}, "next_page_token longer than 4096 characters"),
    ],
)
async def test_list_pages_of_the_wrong_shape_fail_the_list(scene: Scene, page: Any, says: str) -> None:
    scene.hostile.behave(Mode.BODY, kinds="pipelines", body=json.dumps(page).encode())
    errors = await scene.collect()
    assert all(says in (e or "") for e in errors.values()), errors
    scene.assert_intact()


EMPTY_PAGE = json.dumps({"items": [], "next_page_token": None})


@pytest.mark.parametrize(
    ("headers", "body", "says"),
    [
        ([("Date", "Mon, 2 Jan 932134643768 560:1:1")], EMPTY_PAGE.encode(), None),
        ([("Date", "yesterday, around noon")], EMPTY_PAGE.encode(), None),
        ([("Date", "Fri, 31 Dec 9999 23:59:59 GMT")], EMPTY_PAGE.encode(), None),
        ([("Retry-After", "soon"), ("Content-Type", "garbage/;;=;")], EMPTY_PAGE.encode(), None),
        ([("Content-Encoding", "br")], EMPTY_PAGE.encode(), "unsupported Content-Encoding 'br'"),
        ([("Content-Encoding", "x-\u00e9vil")], EMPTY_PAGE.encode(), "unsupported Content-Encoding"),
        ([("Content-Encoding", "gzip")], EMPTY_PAGE.encode(), "gzip body unreadable"),
        ([("Content-Encoding", "deflate")], b"\x78\x9c\x00garbage", "deflate body unreadable"),
    ],
)
async def test_garbage_headers(
    scene: Scene, headers: list[tuple[str, str]], body: bytes, says: str | None
) -> None:
    scene.hostile.behave(Mode.BODY, kinds="pipelines", only="acme/api", headers=headers, body=body)
    errors = await scene.collect()
    if says is None:
        assert errors == {"gh/acme/api": None, "gh/acme/web": None}
    else:
        assert says in (errors["gh/acme/api"] or "") and errors["gh/acme/web"] is None, errors
    # A Date that cannot be read, or lies beyond 2200, does not set the server clock.
    ends, _ = stored_state(scene.db_url)
    assert all(checkpoint is not None and checkpoint < 7258118400 for checkpoint, *_ in ends.values())


def raw(head: str, body: bytes = b"") -> bytes:
    return head.replace("\n", "\r\n").encode() + b"\r\n" + body


@pytest.mark.parametrize(
    ("answer", "says"),
    [
        (raw("HTTP/1.1 200 OK\nContent-Length: 500\n", b'{"slug": "x"}'), "ClientPayloadError"),
        (raw("HTTP/1.1 200 OK\nContent-Length: 2\n", b'[]{"slug": "x"}'), ""),
        (raw("HTTP/1.1 200 OK\nContent-Length: -4\n", b"{}"), ""),
        (raw("HTTP/1.1 200 OK\nContent-Length: 2\nContent-Length: 9\n", b"{}"), ""),
        (raw("HTTP/1.1 200 OK\nTransfer-Encoding: chunked\n", b"zz\r\n{}\r\n0\r\n\r\n"), ""),
        (raw("HTTP/1.1 199 Odd\nContent-Length: 2\n", b"{}"), ""),
        (raw("HTTP/1.1 204 No Content\n"), "HTTP 204"),
        (raw("HTTP/1.1 418 I'm a teapot\nContent-Length: 2\n", b"{}"), "HTTP 418"),
        (raw("HTTP/1.1 999 Beyond\nContent-Length: 2\n", b"{}"), "HTTP 999"),
        (raw("HTTP/1.1 000 Zero\nContent-Length: 2\n", b"{}"), ""),
        (raw("HTTP/1.1 200 OK\nX-\x00: \x1b\n", b"{}"), ""),
        (b"SSH-2.0-OpenSSH_9.2\r\n", ""),
    ],
    ids=lambda v: v[:28].decode(errors="replace").replace("\r\n", "|") if isinstance(v, bytes) else None,
)
async def test_raw_answers_weird_statuses_and_lying_lengths(scene: Scene, answer: bytes, says: str) -> None:
    scene.hostile.behave(Mode.RAW, kinds="pipelines", only="acme/api", raw=answer)
    errors = await scene.collect()
    listing = "/project/gh/acme/api/pipeline"
    assert (errors["gh/acme/api"] or "").startswith(f"gh/acme/api: {listing}: {says}"), errors
    assert errors["gh/acme/web"] is None
    scene.assert_intact(failed=["gh/acme/api"])


async def test_cli_weird_status_is_an_endpoint_failure(scene: Scene) -> None:
    scene.hostile.behave(Mode.RAW, kinds="pipelines", only="acme/api", raw=raw("HTTP/1.1 999 Beyond\n"))
    run = await scene.cli()
    scene.assert_safe(run)
    assert failures(run) == ["failed: gh/acme/api: /project/gh/acme/api/pipeline: HTTP 999"]
    scene.assert_intact(failed=["gh/acme/api"])


async def test_scripted_replies_reach_the_client_in_order() -> None:
    """The property tests' driver: a script of replies, then the upstream (here bait) again."""
    hostile = HostileServer()
    async with hostile.serve() as url, CircleCIClient(url, TOKEN) as client:
        hostile.play([Reply(200, body=b'{"a": 1}'), Reply(404, body=b'{"message": "gone"}')], kinds="project")
        assert await client.project("gh/a/b") == {"a": 1}
        with pytest.raises(NotFound, match="not found: gone"):
            await client.project("gh/a/b")
        assert (await client.project("gh/a/b"))["name"] == "bait"


async def test_a_503_with_retry_after_is_waited_out_by_every_request_and_costs_no_attempt() -> None:
    hostile = HostileServer()
    down = Reply(503, [("Retry-After", "1")], b'{"message": "down for maintenance"}')
    async with hostile.serve() as url, CircleCIClient(url, TOKEN, max_attempts=2, concurrency=4) as client:
        hostile.play([down] * 3, kinds="project")
        first = asyncio.create_task(client.project("gh/acme/p0"))
        # The others ask once its 503 is in: the client counts an answer after the pacer has seen it.
        while not client.stats.by_status.get(503):
            assert not first.done(), first
            await asyncio.sleep(0.005)
        got = await asyncio.gather(first, *(client.project(f"gh/acme/p{i}") for i in range(1, 4)))
    # Two attempts would not have outlasted three 503s: waiting one out costs none.
    assert [answer["name"] for answer in got] == ["bait"] * 4
    arrivals = [s.at for s in hostile.seen]
    assert len(arrivals) == 3 + 4  # the three refused, then each request once
    # After each 503, nothing reached the server before its Retry-After had passed, then one request.
    assert all(later - refused >= 0.95 for refused, later in itertools.pairwise(arrivals[:4]))


@pytest.mark.parametrize(("token", "masked"), [(TOKEN, True), ("t", False)])
async def test_an_echoed_token_is_masked_in_values_and_keys_a_too_short_one_is_not(
    token: str, masked: bool
) -> None:
    hostile = HostileServer()
    answer = {"items": [f"at {token}."], token: 1}
    async with hostile.serve() as url, CircleCIClient(url, token) as client:
        hostile.play([Reply(200, body=json.dumps(answer).encode())], kinds="project")
        got = await client.project("gh/a/b")
    assert got == ({"items": ["at ***."], "***": 1} if masked else answer)


@pytest.mark.parametrize("encoding", ["br", "gzip", "deflate"])
async def test_error_answers_keep_their_meaning_whatever_their_body(encoding: str) -> None:
    hostile = HostileServer()
    async with hostile.serve() as url, CircleCIClient(url, TOKEN) as client:
        junk = [("Content-Encoding", encoding)]
        hostile.play(
            [Reply(404, junk, b"not compressed"), Reply(401, junk, b"\x1f\x8b junk")], kinds="project"
        )
        with pytest.raises(NotFound):
            await client.project("gh/a/b")
        with pytest.raises(Unauthorized):
            await client.project("gh/a/b")


@pytest.mark.parametrize("bad", ["", ".", "..", None, 7])
async def test_ids_unfit_for_a_path_are_refused_before_any_request(bad: Any) -> None:
    hostile = HostileServer()
    async with hostile.serve() as url, CircleCIClient(url, TOKEN) as client:
        for call in (client.pipeline, client.workflows, client.jobs):
            with pytest.raises(MalformedResponse, match="unusable id"):
                await call(bad)
    assert hostile.seen == []


@pytest.mark.parametrize("bad", [-1, 2**63, True, 1.5, "7", None])
async def test_job_numbers_unfit_for_a_path_are_refused_before_any_request(bad: Any) -> None:
    hostile = HostileServer()
    async with hostile.serve() as url, CircleCIClient(url, TOKEN) as client:
        with pytest.raises(MalformedResponse, match="unusable job number"):
            await client.job_details("gh/a/b", bad)
    assert hostile.seen == []
