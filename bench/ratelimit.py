"""Benchmark: `circleci-ds collect` against rate limits of several shapes (the simulator in its own process).

    python bench/ratelimit.py [--only SUBSTRING] [--retry-failed] [--json] [--from-json FILE]

A covering design of the matrix, not its Cartesian product (listed in CELLS): token bucket at 10, 20,
60 and 150 req/s with bursts 1, 10 and 100 (every rate and every burst at least once), a fixed window
per second and per minute; latency 5, 25 and 100 ms (each at least once per limiter kind); Retry-After
in seconds rounded up, as an HTTP date, or absent (each at least once per limiter kind); four cells
with quota headers (a bucket, a window per minute, a window per second, each form of header at least
once: `RateLimit-*`, `X-RateLimit-*`, and the IETF draft's structured `RateLimit` field).
Per-minute windows use a small limit (600 a minute) and a collection spanning two windows or more;
windows are aligned on the wall clock, so where a run starts within a minute is chance.

Each cell is one collection (test results included, at the default --concurrency) into a fresh SQLite
store. `requests` is what the simulator answered other than 429; `x ideal` is the active time (first
request seen by the simulator to the collector's exit) over requests / limit; the target is at most
1.25 x (requests / limit) with under 3% of requests answered 429. With --retry-failed a cell that
misses is run once more and both runs are shown, to tell the machine's noise from a real miss.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from circleci_ds.collect.collector import DEFAULT_CONCURRENCY
from collect import Run, Workdir, collect, machine
from simproc import simulator

REQUESTS_PER_PIPELINE = 40  # a pipeline's workflows, jobs, details and test results in the simulator
TARGET_X, TARGET_429 = 1.25, 0.03  # at most 1.25 x (requests / limit), under 3% answered 429


@dataclass(frozen=True)
class Cell:
    limiter: str  # bucket | second | minute
    rate: float  # requests/s (windows admit rate x their length)
    burst: int
    latency_ms: int
    retry_after: str  # seconds | date | none
    headers: str = "none"
    pipelines: int = 10  # per project, 3 projects, about REQUESTS_PER_PIPELINE requests each

    @property
    def name(self) -> str:
        shape = {
            "bucket": f"bucket {self.rate:g}/s burst {self.burst}",
            "second": f"window {self.rate:g}/s",
            "minute": f"window {self.rate * 60:g}/min",
        }[self.limiter]
        extra = "" if self.headers == "none" else f", {self.headers} headers"
        return f"{shape}, {self.latency_ms} ms, Retry-After {self.retry_after}{extra}"


def sized(
    limiter: str, rate: float, burst: int, latency: int, retry_after: str, headers: str = "none"
) -> Cell:
    """About max(30 s x rate, 600) requests over 3 projects: at least 30 s ideal; 2% of 600 is 12."""
    per_round = 3 * REQUESTS_PER_PIPELINE  # a pipeline in each project
    pipelines = max(5, round(max(30 * rate, 600) / per_round))
    if limiter == "minute":
        pipelines = round(1300 / per_round)  # about 1,300 requests: past two 600-request windows
    return Cell(limiter, rate, burst, latency, retry_after, headers, pipelines)


CELLS = [
    sized("bucket", 10, 1, 25, "seconds"),
    sized("bucket", 10, 100, 100, "date"),
    sized("bucket", 20, 10, 25, "seconds"),  # the independent fake's second case
    sized("bucket", 20, 1, 5, "none"),
    sized("bucket", 60, 10, 5, "seconds"),
    sized("bucket", 60, 20, 5, "seconds"),  # the independent fake's first case
    sized("bucket", 60, 100, 25, "none"),
    sized("bucket", 150, 10, 100, "date"),
    sized("bucket", 150, 100, 5, "seconds"),
    sized("bucket", 150, 1, 25, "seconds"),
    sized("second", 60, 1, 5, "seconds"),
    sized("second", 20, 1, 25, "date"),
    sized("second", 150, 1, 100, "none"),
    sized("minute", 10, 1, 25, "seconds"),
    sized("minute", 10, 1, 100, "date"),
    sized("minute", 10, 1, 5, "none"),
    sized("bucket", 60, 10, 5, "seconds", "ratelimit"),
    sized("minute", 10, 1, 25, "seconds", "x-ratelimit"),
    sized("second", 60, 1, 100, "seconds", "ratelimit"),
    sized("bucket", 20, 10, 25, "seconds", "structured"),
]


def verdict(cell: Cell, run: Run) -> dict[str, Any]:
    ideal = run.answered / cell.rate
    share = run.rate_limited / max(1, run.requests)
    return {
        "requests": run.answered,
        "429s": run.rate_limited,
        "active s": run.active_s,
        "ideal s": ideal,
        "x ideal": run.active_s / ideal,
        "429 %": 100 * share,
        "pass": run.active_s <= TARGET_X * ideal and share < TARGET_429,
    }


def run_cell(cell: Cell, work: Workdir) -> dict[str, Any]:
    with simulator(3, cell.pipelines, cell.latency_ms) as sim:
        sim.configure(
            rate_limit_rps=cell.rate,
            rate_burst=cell.burst,
            limiter=cell.limiter,
            retry_after=cell.retry_after,
            rate_headers=cell.headers,
        )
        return verdict(cell, collect(sim, work.fixture(sim), work.fresh_db(), DEFAULT_CONCURRENCY))


def markdown(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| cell | requests | 429s | time s | ideal s | time ÷ (requests ÷ limit) | answered 429 | target |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for row in rows:
        for i, r in enumerate(row["runs"]):
            label = row["cell"] if i == 0 else f"{row['cell']} (re-run)"
            lines.append(
                f"| {label} | {r['requests']:,} | {r['429s']} | {r['active s']:.1f} | {r['ideal s']:.1f} | "
                f"{r['x ideal']:.3f} | {r['429 %']:.2f}% | {'meets' if r['pass'] else 'MISSES'} |"
            )
    return "\n".join(lines)


def worst(rows: list[dict[str, Any]]) -> str:
    """The cell furthest past the time target (its best run when re-run)."""

    def slack(r: dict[str, Any]) -> float:
        return r["active s"] / r["ideal s"]

    best = [(row["cell"], min(row["runs"], key=slack)) for row in rows]
    name, r = max(best, key=lambda item: slack(item[1]))
    return f"worst cell: {name}: {r['x ideal']:.3f} x, {r['429 %']:.2f}% answered 429"


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--only", default="", help="run the cells whose name contains this")
    parser.add_argument("--retry-failed", action="store_true", help="run a cell that misses once more")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--from-json", type=Path, help="print the tables of a run saved with --json")
    args = parser.parse_args()
    if args.from_json:
        saved = json.loads(args.from_json.read_text())
        print_tables(saved["machine"], saved["rows"])
        return 0
    rows = []
    with tempfile.TemporaryDirectory(prefix="circleci-ds-bench-") as tmp:
        work = Workdir(Path(tmp))
        for cell in CELLS:
            if args.only not in cell.name:
                continue
            runs = [run_cell(cell, work)]
            if args.retry_failed and not runs[0]["pass"]:
                runs.append(run_cell(cell, work))
            rows.append({"cell": cell.name, "config": asdict(cell), "runs": runs})
            print(f"{cell.name}: " + "; ".join(f"{r['x ideal']:.3f} x, {r['429 %']:.2f}%" for r in runs),
                  file=sys.stderr, flush=True)  # fmt: skip
    if args.json:
        print(json.dumps({"machine": machine(), "rows": rows}, indent=2))
        return 0
    print_tables(machine(), rows)
    return 0


def print_tables(m: dict[str, Any], rows: list[dict[str, Any]]) -> None:
    print(f"{m['date']}  nproc {m['nproc']}  {m['cpu']}  Python {m['python']}\n")
    print(markdown(rows))
    print(f"\n{worst(rows)}")


if __name__ == "__main__":
    sys.exit(main())
