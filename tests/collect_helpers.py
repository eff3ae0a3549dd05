"""Running the collector in-process or as the `circleci-ds` command, and comparing with the truth."""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from circleci_ds.api import CircleCIClient, ClientStats, Limits
from circleci_ds.collect import Collector, EndpointResult, Options
from circleci_ds.export import raw_items
from circleci_ds.fixture import Endpoint, canonical_slug
from circleci_ds.simulator import Simulator
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
    **options: Any,
) -> tuple[list[EndpointResult], ClientStats]:
    """One collection; with `kill_after_requests` it is cut off abruptly after that many requests."""
    store = Store.open(db_url)
    try:
        async with CircleCIClient(
            url, token, concurrency=concurrency, backoff_initial=0.01, limits=limits, timeout=timeout
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


def stored_state(db_url: str) -> tuple[dict[str, tuple[Any, ...]], dict[str, dict[str, dict[str, Any]]]]:
    """Per endpoint (checkpoint, pipelines, workflows, jobs), and every stored tree."""
    store = Store.open(db_url, create=False)
    try:
        ends = {e.slug: (e.checkpoint, e.pipelines, e.workflows, e.jobs) for e in store.endpoint_statuses()}
    finally:
        store.close()
    return ends, exported(db_url)


def truth(sim: Simulator, slugs: list[str]) -> dict[str, dict[str, dict[str, Any]]]:
    return {canonical_slug(s): {p["id"]: p for p in sim.truth(canonical_slug(s))} for s in slugs}


def assert_matches_truth(db_url: str, sim: Simulator, slugs: list[str]) -> None:
    got, want = exported(db_url), truth(sim, slugs)
    for slug in want:
        have = got.get(slug, {})
        missing = set(want[slug]) - set(have)
        extra = set(have) - set(want[slug])
        assert not missing and not extra, f"{slug}: missing {len(missing)}, extra {len(extra)}"
        for pid, tree in want[slug].items():
            assert have[pid] == tree, f"{slug}: pipeline {pid} differs"


# -- the command line, as a user runs it ------------------------------------------------------
FIXTURE = """\
native:
  slug: acme
data_sources:
- slug: circleci
  projects:
  - name: acme
    endpoints:
{endpoints}
  config:
  - name: Circle-Token
    value: ${{TEST_CIRCLE_TOKEN}}
"""


def write_fixture(tmp_path: Path, slugs: list[str]) -> Path:
    """A da-ds fixture listing `slugs`, its token read from TEST_CIRCLE_TOKEN."""
    path = tmp_path / "fixture.yaml"
    path.write_text(FIXTURE.format(endpoints="\n".join(f"    - name: {s}" for s in slugs)))
    return path


def cli_env(url: str, db_url: str, token: str) -> dict[str, str]:
    return {**os.environ, "CIRCLECI_API_URL": url, "CIRCLECI_DS_DB": db_url, "TEST_CIRCLE_TOKEN": token}


@dataclass(frozen=True)
class Run:
    returncode: int
    stdout: str
    stderr: str


async def run_cli(
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
    command = prefix or [sys.executable, "-m", "circleci_ds"]
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
