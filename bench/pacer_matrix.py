"""Benchmark: the rate-limit matrix's cells in simulated time, each under several machine shapes.

    python bench/pacer_matrix.py [--only SUBSTRING] [--quota] [--cpu]

The pacer alone (no HTTP, no collector) against the simulator's limiters, driven on a fake clock by
`tests/pacer_helpers.drive`: deterministic and a few seconds for the whole matrix, so a change to a
pacing rule can be judged on every cell and every shape before the matrix of record
(`bench/ratelimit.py`, real processes, minutes) is run. Each cell (from `ratelimit.CELLS`, with its
number of requests) runs under each shape in SHAPES: how late requests reach the server (jitter), how
late wake-ups are, where in its window a fixed window starts, how often the server stops reading for a
moment (then its limiter sees the waiting requests at once), and how many requests are in flight at
most. Same target as the matrix of record: at most 1.25 x (requests / limit), under 3% of requests
answered 429. Prints a row per cell (x ideal and share answered 429 per shape, `!` where it
misses), then how many runs meet and the slowest.

With --quota, instead: servers sending `RateLimit-*` quota headers (rule 4), one run each under shape 1
(jitter 1 ms, late wake-ups, 32 in flight): token buckets with bursts of 1, 2, 5, 20 and 100 at 10, 60
and 150/s, and windows per second at 10, 60 and 150/s and per minute at 600, at 5 and 100 ms. A bucket's
`Reset` is the time until it is full, in whole seconds, so small buckets say 1 whatever they hold, and
at 100 ms more requests are in flight than a small bucket holds.

With --cpu, instead: the CPU the pacer costs a waiting request, in real time on a real event loop: 32
requests in a loop (ask, 25 ms of latency, answer 200) through 6 s of slow start, where the pace holds
them back; prints the requests admitted and the process's CPU per request (the loop's work included).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from circleci_ds.client.pacing import Pacer
from circleci_ds.dev.simulator.ratelimit import FixedWindow, Limiter, TokenBucket
from pacer_helpers import FakeClock, drive
from ratelimit import CELLS, REQUESTS_PER_PIPELINE, TARGET_429, TARGET_X, Cell, sized


@dataclass(frozen=True)
class Shape:
    """How the machine and the server behave around the pacer."""

    jitter: float  # seconds a request may take to reach the server
    late: float  # seconds a wake-up may be late
    phase: float  # where in its window a fixed window starts (share of the window)
    stall: tuple[float, float]  # (seconds, every): the server stops reading that long that often
    workers: int  # requests in flight at most

    @property
    def name(self) -> str:
        length, every = self.stall
        stall = "" if math.isinf(every) else f", stalls {length * 1000:g} ms/{every:g} s"
        return f"jitter {self.jitter * 1000:g} ms{stall}, {self.workers} in flight"


NEVER = (0.0, math.inf)
SHAPES = [
    Shape(0.0, 0.0, 0.4, NEVER, 24),
    Shape(0.001, 0.002, 0.1, NEVER, 32),
    Shape(0.001, 0.002, 0.7, (0.03, 3.1), 24),
    Shape(0.002, 0.004, 0.85, NEVER, 20),
    Shape(0.0005, 0.001, 0.55, (0.015, 1.3), 32),
]


def limiter(cell: Cell, shape: Shape, clock: FakeClock) -> Limiter:
    if cell.limiter == "bucket":
        return TokenBucket(cell.rate, cell.burst, clock)
    window = 1.0 if cell.limiter == "second" else 60.0
    return FixedWindow(round(cell.rate * window), window, lambda: clock.now + window * shape.phase - 1000.0)


def requests_of(cell: Cell) -> int:
    """The requests of the cell's collection: a pipeline's worth in each of 3 projects, `pipelines` times."""
    return cell.pipelines * 3 * REQUESTS_PER_PIPELINE


def run(cell: Cell, shape: Shape) -> tuple[float, float]:
    """(time over requests / limit, share answered 429) of one cell under one shape."""
    requests = requests_of(cell)
    clock = FakeClock()
    start = clock.now
    out = drive(
        Pacer(clock=clock), clock, limiter(cell, shape, clock), 10_000, requests=requests,
        workers=shape.workers, latency=cell.latency_ms / 1000, retry_after=cell.retry_after,
        headers=cell.headers, jitter=shape.jitter, late=shape.late, stall=shape.stall,
    )  # fmt: skip
    elapsed = (out.finished or clock.now) - start
    return elapsed / (requests / cell.rate), out.rejected / len(out.sent)


def meets(cell: Cell, x_ideal: float, share: float) -> bool:
    return x_ideal <= TARGET_X and share < TARGET_429


QUOTA_CELLS = [
    *(sized("bucket", rate, burst, latency, "seconds", "ratelimit")
      for latency in (5, 100) for burst in (1, 2, 5, 20, 100) for rate in (10, 60, 150)),
    *(sized(kind, rate, 1, latency, "seconds", "ratelimit")
      for latency in (5, 100)
      for kind, rate in (("second", 10), ("second", 60), ("second", 150), ("minute", 10))),
]  # fmt: skip


def quota_sweep() -> int:
    shape = SHAPES[1]
    print(f"quota headers, shape 1: {shape.name}\n")
    misses, worst = 0, (-math.inf, "")
    for cell in QUOTA_CELLS:
        x_ideal, share = run(cell, shape)
        ok = meets(cell, x_ideal, share)
        misses += not ok
        worst = max(worst, (x_ideal, f"{cell.name}: {x_ideal:.3f} x, {100 * share:.2f}% answered 429"))
        print(f"{cell.name:78s} | {x_ideal:.3f} x {100 * share:5.2f}%{'' if ok else ' !'}")
    print(f"\n{len(QUOTA_CELLS) - misses} of {len(QUOTA_CELLS)} runs meet the target; slowest: {worst[1]}")
    return 0


def cpu_per_request(seconds: float = 6.0, workers: int = 32, latency: float = 0.025) -> int:
    admitted = 0

    async def collect() -> None:
        pacer = Pacer()
        end = time.monotonic() + seconds

        async def worker() -> None:
            nonlocal admitted
            while time.monotonic() < end:
                ticket = await pacer.wait()
                admitted += 1
                await asyncio.sleep(latency)
                pacer.observe(ticket, 200, {})

        await asyncio.gather(*(worker() for _ in range(workers)))

    cpu = time.process_time()
    asyncio.run(collect())
    cpu = time.process_time() - cpu
    print(f"{admitted} requests in {seconds:g} s, {workers} in flight at most, {latency * 1000:g} ms: "
          f"{cpu:.2f} s CPU, {cpu / admitted * 1e6:.0f} us per request")  # fmt: skip
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--only", default="", help="run the cells whose name contains this")
    parser.add_argument("--quota", action="store_true", help="servers sending quota headers instead")
    parser.add_argument("--cpu", action="store_true", help="the CPU per waiting request instead")
    args = parser.parse_args()
    if args.cpu:
        return cpu_per_request()
    logging.disable(logging.WARNING)  # long pauses are announced; not here
    if args.quota:
        return quota_sweep()
    print("shapes: " + "; ".join(f"{i}: {shape.name}" for i, shape in enumerate(SHAPES)) + "\n")
    misses, runs, worst = 0, 0, (-math.inf, "")
    for cell in CELLS:
        if args.only not in cell.name:
            continue
        cells = []
        for i, shape in enumerate(SHAPES):
            x_ideal, share = run(cell, shape)
            ok = meets(cell, x_ideal, share)
            misses, runs = misses + (not ok), runs + 1
            said = f"{cell.name}, shape {i}: {x_ideal:.3f} x, {100 * share:.2f}% answered 429"
            worst = max(worst, (x_ideal, said))
            cells.append(f"{x_ideal:.3f} x {100 * share:5.2f}%{'' if ok else ' !'}")
        print(f"{cell.name[:62]:62s} | " + " | ".join(f"{c:17s}" for c in cells))
    print(f"\n{runs - misses} of {runs} runs meet the target; slowest: {worst[1]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
