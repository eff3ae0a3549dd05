"""Benchmark: a collection's peak memory against a server sending the largest bodies the limits allow.

    python bench/memory.py [--src DIR] [--body-mb 2] [--details 200] [--pages 150]

A hostile server (tests/hostile_server.py, TAMPER mode) in front of the simulator pads answers to
`--body-mb` each, well under the 64 MiB cap on one body, in three runs of `circleci-ds collect`
(one endpoint, after an honest run filled the store and the simulator's clock moved a day):
- `baseline`: no padding;
- `walked details`: every job number the walk probes answers with padded details, `--details` of them;
- `long workflow list`: every workflow list runs to `--pages` pages, each one padded item.
Peak RSS is the collector's own VmHWM, read as it exits. `--src` runs another checkout's code (its
`src` directory) for a before/after table.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from circleci_ds.dev.simulator import SimConfig, SimProject, Simulator
from collect_helpers import RSS_PROBE, peak_rss_mib, write_fixture
from hostile_server import Exchange, HostileServer, Mode

ROOT = Path(__file__).resolve().parents[1]
SLUG = "gh/bench/memory"
MiB = 1 << 20


@contextmanager
def served(tamper: list[Callable[[Exchange], None] | None]) -> Iterator[tuple[Simulator, str]]:
    """The simulator behind a hostile server, in a thread; `tamper[0]` (None: honest) is read per request."""
    sim = Simulator(SimConfig(seed=4, projects=[SimProject(SLUG, pipelines=10)], span_days=4.0))
    ready, url, stop = threading.Event(), [], []
    loop = asyncio.new_event_loop()

    def dispatch(exchange: Exchange) -> None:
        if tamper[0] is not None:
            tamper[0](exchange)

    async def main() -> None:
        stop.append(asyncio.Event())
        async with sim.serve() as upstream:
            server = HostileServer(upstream=upstream)
            async with server.serve() as base:
                server.behave(Mode.TAMPER, tamper=dispatch)
                url.append(base)
                ready.set()
                await stop[0].wait()

    thread = threading.Thread(target=loop.run_until_complete, args=(main(),), daemon=True)
    thread.start()
    ready.wait()
    try:
        yield sim, url[0]
    finally:
        loop.call_soon_threadsafe(stop[0].set)
        thread.join()


def collect(url: str, tmp: Path, src: Path) -> tuple[float, int, str]:
    fixture = write_fixture(tmp / "fixture.yaml", [SLUG])
    args = ["collect", str(fixture), "--db", f"sqlite:///{tmp}/store.db", "--api-url", url, "--no-tests"]
    env = {**os.environ, "PYTHONPATH": f"{src}{os.pathsep}{ROOT / 'tests'}"}
    done = subprocess.run([*RSS_PROBE, *args], capture_output=True, text=True, check=False, env=env)
    failed = [line for line in done.stderr.splitlines() if "failed:" in line]
    return peak_rss_mib(done.stderr), done.returncode, failed[0][-90:] if failed else ""


def padded_details(size: int, count: int) -> Callable[[Exchange], None]:
    """Job details of `size` bytes for every number probed, `count` numbers past the first 404."""
    first: list[int] = []

    def tamper(exchange: Exchange) -> None:
        if exchange.kind != "job_details":
            return
        number = int(exchange.path.rsplit("/", 1)[1])
        if exchange.status == 404:
            first.append(number) if not first else None
            if number >= first[0] + count:
                return
            exchange.status = 200
            exchange.data = {"number": number, "status": "success", "queued_at": None, "pipeline": {}}
        if isinstance(exchange.data, dict):
            exchange.data["padding"] = "p" * size

    return tamper


def long_lists(size: int, pages: int) -> Callable[[Exchange], None]:
    """Workflow lists of `pages` pages, each one workflow padded to `size` bytes (the simulator's first
    workflow of the pipeline, under a new id per page; the made-up page tokens never reach it)."""
    first: dict[str, dict[str, Any]] = {}

    def tamper(exchange: Exchange) -> None:
        if exchange.kind != "workflows":
            return
        page = int(exchange.query.get("page-token", "0") or 0)
        if page == 0 and exchange.status == 200 and exchange.data["items"]:
            first[exchange.path] = exchange.data["items"][0]
        if exchange.path not in first:
            return
        item = {**first[exchange.path], "padding": "p" * size}
        item["id"] = f"{item['id'][:30]}-{page}"
        exchange.status = 200
        exchange.data = {"items": [item], "next_page_token": str(page + 1) if page + 1 < pages else None}

    return tamper


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--src", type=Path, default=ROOT / "src", help="the code to run (a src directory)")
    parser.add_argument("--body-mb", type=float, default=2.0)
    parser.add_argument("--details", type=int, default=200)
    parser.add_argument("--pages", type=int, default=150)
    options = parser.parse_args()
    size = int(options.body_mb * MiB)
    runs: list[tuple[str, Callable[[Exchange], None] | None]] = [
        ("baseline", None),
        (
            f"walked details: {options.details} of {options.body_mb:g} MB",
            padded_details(size, options.details),
        ),
        (
            f"long workflow list: {options.pages} pages of {options.body_mb:g} MB",
            long_lists(size, options.pages),
        ),
    ]
    print(f"code: {options.src}")
    print("| run | peak RSS | exit | first failure |\n| --- | ---: | ---: | --- |")
    for name, tamper in runs:
        current: list[Callable[[Exchange], None] | None] = [None]
        with tempfile.TemporaryDirectory() as tmp, served(current) as (sim, url):
            collect(url, Path(tmp), options.src)  # honest: the store filled, the walk has a start
            sim.advance(86400.0)
            current[0] = tamper
            peak, status, failure = collect(url, Path(tmp), options.src)
        print(f"| {name} | {peak:.0f} MiB | {status} | {failure} |")


if __name__ == "__main__":
    main()
