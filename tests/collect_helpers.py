"""Running the collector in-process against the simulator, and comparing with its truth."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import subprocess
import sys
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any, NoReturn

import aiohttp
import pytest
from aiohttp import web

from circleci_ds.api import CircleCIClient, ClientStats
from circleci_ds.collect import Collector, EndpointResult, Options
from circleci_ds.export import raw_items
from circleci_ds.fixture import Endpoint, canonical_slug
from circleci_ds.simulator import SimConfig, Simulator
from circleci_ds.store import Store


def endpoints(slugs: list[str], native: str = "acme") -> list[Endpoint]:
    return [Endpoint(canonical_slug(s), s, native, native) for s in slugs]


async def collect(
    url: str,
    db_url: str,
    slugs: list[str],
    *,
    token: str | None = None,
    concurrency: int = 8,
    kill_after_requests: int | None = None,
    **options: Any,
) -> tuple[list[EndpointResult], ClientStats]:
    """One collection; with `kill_after_requests` it is cut off abruptly after that many requests."""
    store = Store.open(db_url)
    try:
        async with CircleCIClient(url, token, concurrency=concurrency, backoff_initial=0.01) as client:
            collector = Collector(client, store, Options(lease_ttl=2.0, **options))
            task = asyncio.create_task(collector.run(endpoints(slugs)))
            if kill_after_requests is not None:
                while not task.done() and client.stats.requests < kill_after_requests:
                    await asyncio.sleep(0)
                task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                return await task, client.stats
            return [], client.stats
    finally:
        store.close()


def exported(db_url: str) -> dict[str, dict[str, dict[str, Any]]]:
    """project slug -> pipeline id -> exported `data`, failing on duplicate lines."""
    store = Store.open(db_url, create=False)
    try:
        out: dict[str, dict[str, dict[str, Any]]] = {}
        for item in raw_items(store):
            by_id = out.setdefault(item["project_slug"], {})
            assert item["data"]["id"] not in by_id, "duplicate pipeline in export"
            by_id[item["data"]["id"]] = item["data"]
        return out
    finally:
        store.close()


def truth(sim: Simulator, slugs: list[str]) -> dict[str, dict[str, dict[str, Any]]]:
    return {canonical_slug(s): {p["id"]: p for p in sim.truth(canonical_slug(s))} for s in slugs}


def assert_matches_truth(db_url: str, sim: Simulator, slugs: list[str], *, waiting_ok: bool = False) -> None:
    """The store holds exactly the server's truth. With `waiting_ok`, a stored pipeline may lack
    reruns that wait (no job of theirs started yet): the README's documented limit until the
    age-spaced re-read is due."""
    got, want = exported(db_url), truth(sim, slugs)
    for slug in want:
        have = got.get(slug, {})
        missing = set(want[slug]) - set(have)
        extra = set(have) - set(want[slug])
        assert not missing and not extra, f"{slug}: missing {len(missing)}, extra {len(extra)}"
        for pid, tree in want[slug].items():
            expected = _without_waiting_reruns(tree, have[pid]) if waiting_ok else tree
            assert have[pid] == expected, f"{slug}: pipeline {pid} differs"


def _without_waiting_reruns(tree: dict[str, Any], stored: dict[str, Any]) -> dict[str, Any]:
    """The truth less the workflows the store lacks that are waiting reruns."""
    stored_ids = {w["id"] for w in stored["workflows"]}
    kept = [w for w in tree["workflows"] if w["id"] in stored_ids or not _waiting(w)]
    return {**tree, "workflows": kept}


def _waiting(workflow: dict[str, Any]) -> bool:
    """A workflow none of whose jobs started: all on hold or blocked, no job details."""
    jobs = workflow["jobs"]
    return bool(jobs) and all(j["status"] in ("on_hold", "blocked") and j["details"] is None for j in jobs)


Items = list[Any]


@contextlib.asynccontextmanager
async def quirky_server(
    upstream: str, *, project_status: int | None = None, mangle: Callable[[Items], Items] | None = None
) -> AsyncIterator[str]:
    """A small server in front of the simulator that answers `GET /project/{slug}` with
    `project_status` (when given) and passes each pipeline list page's items through `mangle`."""
    async with aiohttp.ClientSession() as session:

        async def forward(request: web.Request) -> web.Response:
            parts = request.match_info["tail"].split("/")
            if project_status is not None and len(parts) == 4 and parts[0] == "project":
                return web.json_response({"message": "Forbidden"}, status=project_status)
            headers = {k: v for k, v in request.headers.items() if k.lower() == "circle-token"}
            url = f"{upstream}/{request.match_info['tail']}"
            async with session.get(url, params=request.query, headers=headers) as reply:
                body = await reply.read()
                status, date = reply.status, reply.headers.get("Date", "")
            if mangle is not None and status == 200 and len(parts) == 5 and parts[4] == "pipeline":
                page = json.loads(body)
                page["items"] = mangle(page["items"])
                body = json.dumps(page).encode()
            kind = "application/json"
            return web.Response(body=body, status=status, content_type=kind, headers={"Date": date})

        app = web.Application()
        app.router.add_get("/api/v2/{tail:.*}", forward)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        try:
            site = web.TCPSite(runner, "127.0.0.1", 0)
            await site.start()
            yield f"http://127.0.0.1:{runner.addresses[0][1]}/api/v2"
        finally:
            await runner.cleanup()


# -- the command line, as a user runs it ---------------------------------------------------------
def cli_args(*args: str) -> list[str]:
    return [sys.executable, "-m", "circleci_ds", *args]


def run_cli(
    *args: str, env: dict[str, str] | None = None, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    """`circleci-ds ARGS` in a child process; output captured as text (undecodable bytes replaced)."""
    return subprocess.run(
        cli_args(*args),
        capture_output=True,
        text=True,
        errors="replace",
        timeout=timeout,
        check=False,
        env={**os.environ, **(env or {})},
    )


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("error:")]


def assert_one_line_error(
    done: subprocess.CompletedProcess[str], code: int, *secrets: str, logs_allowed: bool = False
) -> str:
    """Exit `code`, a single `error:` line (the only stderr line unless `logs_allowed`), no traceback,
    and none of `secrets` in any output. Returns the error line."""
    assert done.returncode == code, (done.returncode, done.stderr[-3000:])
    assert "Traceback" not in done.stderr + done.stdout
    errors = error_lines(done.stderr)
    assert len(errors) == 1, done.stderr[-3000:]
    if not logs_allowed:
        assert done.stderr.strip() == errors[0], done.stderr[-3000:]
    else:
        assert done.stderr.strip().splitlines()[-1] == errors[0], done.stderr[-3000:]
    for secret in secrets:
        assert secret not in done.stdout + done.stderr
    return errors[0]


def write_fixture(path: Path, slugs: list[str], native: str = "acme", token: str | None = None) -> Path:
    lines = ["native:", f"  slug: {native}", "data_sources:", "- slug: circleci", "  projects:"]
    lines += [f"  - name: {native}", "    endpoints:"] + [f"    - name: {slug}" for slug in slugs]
    if token is not None:
        lines += ["  config:", "  - name: Circle-Token", f"    value: {token}"]
    path.write_text("\n".join(lines) + "\n")
    return path


@contextlib.contextmanager
def serving(config: SimConfig) -> Iterator[tuple[Simulator, str]]:
    """A simulator on loopback in a thread of this process: (simulator, API URL)."""
    sim = Simulator(config)
    url = sim.start_thread()
    try:
        yield sim, url
    finally:
        sim.stop_thread()


def skip_outside_ci(reason: str) -> NoReturn:
    """Skip a test that needs what this machine lacks; under CI (CI=true) fail instead."""
    if os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no"):
        pytest.fail(f"{reason} (CI is set, so this test may not be skipped)", pytrace=False)
    pytest.skip(reason)
