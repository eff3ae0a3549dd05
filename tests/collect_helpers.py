"""Running the collector in-process or as the `circleci-ds` command, and comparing with the truth."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

import requirements
from circleci_ds.client.http import CircleCIClient, ClientStats, Limits
from circleci_ds.collect.collector import Collector, EndpointResult, Options
from circleci_ds.derive.facts import open_store
from circleci_ds.dev.simulator import SimConfig, Simulator
from circleci_ds.documents.raw import raw_items
from circleci_ds.inputs.fixture import Endpoint, canonical_slug
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
    limits: Limits | None = None,
    timeout: float = 60.0,
    max_wait: float = 900.0,
    **options: Any,
) -> tuple[list[EndpointResult], ClientStats]:
    """One collection; with `kill_after_requests` it is cut off abruptly after that many requests.
    Test results are read only when asked (`tests=True`): most tests are about the walk, and reading
    every job's tests would double their requests."""
    options.setdefault("tests", False)
    options.setdefault("usage", False)  # the usage phase has tests of its own (test_usage_collect.py)
    store = open_store(db_url)
    try:
        async with CircleCIClient(
            url, token, concurrency=concurrency, backoff_initial=0.01, limits=limits, timeout=timeout,
            max_wait=max_wait,
        ) as client:
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
    store = open_store(db_url, create=False)
    try:
        out: dict[str, dict[str, dict[str, Any]]] = {}
        for item in raw_items(store):
            by_id = out.setdefault(item["project_slug"], {})
            assert item["data"]["id"] not in by_id, "duplicate pipeline in export"
            by_id[item["data"]["id"]] = item["data"]
        return out
    finally:
        store.close()


def stored_state(db_url: str) -> tuple[dict[str, tuple[Any, ...]], dict[str, dict[str, dict[str, Any]]]]:
    """Per endpoint (checkpoint, pipelines, workflows, jobs), and every stored tree."""
    store = open_store(db_url, create=False)
    try:
        ends = {e.slug: (e.checkpoint, e.pipelines, e.workflows, e.jobs) for e in store.endpoint_statuses()}
    finally:
        store.close()
    return ends, exported(db_url)


def truth(sim: Simulator, slugs: list[str]) -> dict[str, dict[str, dict[str, Any]]]:
    return {canonical_slug(s): {p["id"]: p for p in sim.truth(canonical_slug(s))} for s in slugs}


def assert_matches_truth(db_url: str, sim: Simulator, slugs: list[str], *, waiting_ok: bool = False) -> None:
    """The store holds exactly the server's truth. With `waiting_ok`, a stored pipeline may lack
    reruns that wait (no job of theirs started yet): the documented limit (docs/collection.md) until
    the age-spaced re-read is due."""
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
    upstream: str,
    *,
    project_status: int | None = None,
    tests_status: int | None = None,
    mangle: Callable[[Items], Items] | None = None,
    tests_asked: list[str] | None = None,
) -> AsyncIterator[str]:
    """A small server in front of the simulator that answers `GET /project/{slug}` with
    `project_status` and `GET /project/{slug}/{number}/tests` with `tests_status` (when given;
    the paths asked are appended to `tests_asked`), and passes each pipeline list page's items
    through `mangle`."""
    async with aiohttp.ClientSession() as session:

        async def forward(request: web.Request) -> web.Response:
            parts = request.match_info["tail"].split("/")
            if project_status is not None and len(parts) == 4 and parts[0] == "project":
                return web.json_response({"message": "Forbidden"}, status=project_status)
            if tests_status is not None and len(parts) == 6 and parts[5] == "tests":
                if tests_asked is not None:
                    tests_asked.append(request.path)
                return web.json_response({"message": "No"}, status=tests_status)
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


def store_test_truth(store: Store, sim: Simulator, slugs: list[str]) -> None:
    """Write the simulator's test truth straight into the store (as collection would), by job number."""
    from circleci_ds.collect.tests import save_items
    from circleci_ds.dev.simulator.render import render_project
    from circleci_ds.store.testresults import TestJob

    for written in slugs:
        slug = canonical_slug(written)
        project = sim.history.project(slug)
        assert project is not None
        store.ensure_endpoint(slug, "acme", f"https://circleci.com/{slug}")
        store.save_project_info(slug, render_project(project))
        for entry in sim.test_truth(slug):
            started, stopped = entry["started_at_ms"], entry["stopped_at_ms"]
            job = TestJob(
                endpoint=slug,
                job_number=entry["job_number"],
                job_id=entry["job_id"],
                pipeline_id=entry["pipeline_id"],
                workflow_id=None,
                workflow=entry["workflow"],
                job_name=entry["job_name"],
                branch=entry["branch"],
                commit=entry["commit"],
                status=entry["status"],
                created_at=entry["workflow_created_ms"] / 1000,
                started_at=started / 1000 if started is not None else None,
                stopped_at=stopped / 1000 if stopped is not None else None,
                duration=(stopped - started) / 1000 if started is not None and stopped is not None else None,
                web_url=entry["web_url"],
            )
            save_items(store, job, entry["items"], seq=0, final=True)


def kill_9_once(proc: subprocess.Popen[bytes], db_file: str, count_sql: str, at_least: int) -> int:
    """SIGKILL `proc` as soon as `count_sql` counts `at_least` rows in the SQLite file (at most 120 s);
    fails if the process ended first. Returns the count seen."""
    deadline = time.monotonic() + 120
    seen = 0
    while time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.02)
        if os.path.exists(db_file):
            try:
                with sqlite3.connect(db_file, timeout=1) as conn:
                    seen = conn.execute(count_sql).fetchone()[0]
            except sqlite3.Error:
                continue
            if seen >= at_least:
                break
    assert proc.poll() is None, "the collection ended before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert seen >= at_least
    return seen


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


def write_fixture(
    path: Path, slugs: list[str], native: str = "acme", token: str | None = None, tests: bool = False
) -> Path:
    """A fixture for `slugs`; test results off unless `tests` (see `collect`)."""
    lines = ["native:", f"  slug: {native}", "data_sources:", "- slug: circleci", "  projects:"]
    lines += [f"  - name: {native}", "    endpoints:"] + [f"    - name: {slug}" for slug in slugs]
    lines += ["  config:"]
    if token is not None:
        lines += ["  - name: Circle-Token", f"    value: {token}"]
    lines += ["  - name: collect-tests", f"    value: '{str(tests).lower()}'"]
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


skip_outside_ci = requirements.unavailable  # its older name here, for the tests that import it so


TOKEN_FROM_ENV = "${TEST_CIRCLE_TOKEN}"  # a fixture token read from the environment cli_env sets


def cli_env(url: str, db_url: str, token: str) -> dict[str, str]:
    return {**os.environ, "CIRCLECI_API_URL": url, "CIRCLECI_DS_DB": db_url, "TEST_CIRCLE_TOKEN": token}


@dataclass(frozen=True)
class Run:
    returncode: int
    stdout: str
    stderr: str


async def run_cli_async(
    args: list[str],
    url: str,
    db_url: str,
    token: str,
    *,
    prefix: list[str] | None = None,
    timeout: float = 180,
) -> Run:
    """`circleci-ds ARGS` in a subprocess, without blocking the event loop (servers in it keep
    answering); `prefix` replaces `python -m circleci_ds`. A run that outlives `timeout` is a hang."""
    command = prefix or cli_args()
    proc = await asyncio.create_subprocess_exec(
        *command,
        *args,
        env=cli_env(url, db_url, token),
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise AssertionError(f"circleci-ds {' '.join(args)} still running after {timeout}s") from None
    assert proc.returncode is not None
    return Run(proc.returncode, out.decode(errors="replace"), err.decode(errors="replace"))


# `circleci-ds` that reports, on exit, the peak RSS of its own process image. Not getrusage's
# ru_maxrss: Linux carries that over from the parent through fork and exec.
RSS_PROBE = [
    sys.executable,
    "-c",
    "import atexit, re, sys\n"
    "def report():\n"
    "    kib = re.search(r'VmHWM:\\s+(\\d+)', open('/proc/self/status').read()).group(1)\n"
    "    print(f'peak-rss-kib {kib}', file=sys.stderr)\n"
    "atexit.register(report)\n"
    "from circleci_ds.cli import main\n"
    "sys.argv[0] = 'circleci-ds'\n"
    "main()\n",
]


def peak_rss_mib(stderr: str) -> float:
    """The peak RSS a run under RSS_PROBE reported."""
    line = next(line for line in stderr.splitlines() if line.startswith("peak-rss-kib "))
    return int(line.split()[1]) / 1024
