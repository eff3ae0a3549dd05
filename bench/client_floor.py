"""Benchmark: the client's CPU per request against the HTTP floor (aiohttp alone), in this process.

    python bench/client_floor.py [--requests N] [--concurrency C] [--repeat R] [--latency-ms L]
                                 [--loop asyncio,uvloop]

The simulator runs in another process (1 project, 300 pipelines, `--latency-ms` per request (0), every
run finished). This process then GETs the same job-details and test-result routes (of the newest N/2
jobs, both routes each) C at a time, R times each way, and prints the CPU this process spent per request
(`time.process_time`, so the simulator's CPU is not counted), median of the R rounds:
- `aiohttp`: a bare `ClientSession.get`, the body read and parsed by `json.loads`, nothing else;
- `client`: `CircleCIClient` as the collector uses it (pacing, retries, bounded bodies, the checks on
  JSON, redirects, the Date clock), its pace raised so that it holds nothing back.
The difference is what the client's rules cost above the HTTP library; the collector's own CPU per
request (`bench/collect.py`) adds the store and the walk to it. `--loop uvloop` runs both on uvloop's
event loop instead of asyncio's (uvloop is not a dependency: install it first).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parent))

from circleci_ds.client.http import CircleCIClient, NotFound
from simproc import Sim, simulator

TOKEN = "bench-token-client-floor"


def paths(sim: Sim, requests: int) -> list[str]:
    """Job details and test results of the simulator's jobs, newest first, `requests` in all."""
    slug = sim.slugs[0]
    jobs = [j for p in sim.truth(slug) for w in p["workflows"] for j in w["jobs"] if "job_number" in j]
    numbers = sorted({j["job_number"] for j in jobs}, reverse=True)[: requests // 2]
    return [p for n in numbers for p in (f"/project/{slug}/job/{n}", f"/project/{slug}/{n}/tests")]


async def bounded(concurrency: int, items: list[str], call: Callable[[str], Awaitable[None]]) -> None:
    gate = asyncio.Semaphore(concurrency)

    async def one(item: str) -> None:
        async with gate:
            await call(item)

    await asyncio.gather(*(one(item) for item in items))


statuses: dict[int, int] = {}  # of the bare requests: the share of 404s (jobs without tests) is said


async def bare(url: str, items: list[str], concurrency: int) -> float:
    headers = {"Circle-Token": TOKEN, "Accept": "application/json"}
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(headers=headers, connector=connector) as session:

        async def get(path: str) -> None:
            async with session.get(url + path) as resp:
                body = await resp.read()
                if resp.status == 200:
                    json.loads(body)
                statuses[resp.status] = statuses.get(resp.status, 0) + 1

        started = time.process_time()
        await bounded(concurrency, items, get)
        return time.process_time() - started


async def client(url: str, items: list[str], concurrency: int) -> float:
    async with CircleCIClient(url, TOKEN, concurrency=concurrency) as api:
        api.pacer.rate = 1e9  # nothing held back: the pace's work is still done for every request

        async def get(path: str) -> None:
            with contextlib.suppress(NotFound):  # a job without test results
                await api.get(path)

        started = time.process_time()
        await bounded(concurrency, items, get)
        return time.process_time() - started


def run(loop: str, coro: Any) -> float:
    if loop == "uvloop":
        try:
            import uvloop
        except ImportError:
            raise SystemExit("--loop uvloop: uvloop is not installed (pip install uvloop)") from None

        return uvloop.run(coro)  # type: ignore[no-any-return]
    return asyncio.run(coro)  # type: ignore[no-any-return]


def main() -> None:
    raw = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=raw)
    parser.add_argument("--requests", type=int, default=4000)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--loop", default="asyncio")
    parser.add_argument("--latency-ms", type=float, default=0.0)
    args = parser.parse_args()
    with simulator(1, 300, args.latency_ms) as sim:
        sim.advance(3 * 86400)  # every run has finished: job details and tests answer
        items = paths(sim, args.requests)
        base = sim.url
        print(
            f"{len(items)} requests, {args.concurrency} in flight, {args.latency_ms:g} ms latency,"
            f" median of {args.repeat} rounds"
        )
        print("| event loop | aiohttp alone | CircleCIClient | client / aiohttp |")
        print("| --- | ---: | ---: | ---: |")
        for loop in args.loop.split(","):
            floor, full = [], []
            for _ in range(args.repeat):  # interleaved, so a change of load hits both alike
                floor.append(run(loop, bare(base, items, args.concurrency)) / len(items) * 1000)
                full.append(run(loop, client(base, items, args.concurrency)) / len(items) * 1000)
            f, c = statistics.median(floor), statistics.median(full)
            print(f"| {loop} | {f:.3f} ms | {c:.3f} ms | {c / f:.2f}x |")
        print(f"statuses: {dict(sorted(statuses.items()))}")


if __name__ == "__main__":
    main()
