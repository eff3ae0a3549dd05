"""Benchmark: test results stored a second at each zlib level of the raw pages (`test_raw`).

    python bench/raw_level.py [--levels 6,1] [--rounds 6] [--backend sqlite,postgresql]

Runs `bench/collect.py`'s `store` scenario (1,000 jobs of 100 results, written as the collector
writes them) in this process, the levels alternating round by round so that the machine's drift
from one minute to the next falls on each level alike; prints each level's results a second (median
and every round), the ratio of each round to the first level's, and the raw pages' bytes per result.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import tempfile
import zlib
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

import collect as bench
from circleci_ds.store import testresults
from circleci_ds.store.base import dumps_bytes
from pgserver import PgServer


def bytes_per_result(level: int, jobs: int = 200, tests: int = 100) -> float:
    """The compressed raw page of the benchmark's items, per result."""
    pages = [dumps_bytes([bench.store_item(job, test) for test in range(tests)]) for job in range(jobs)]
    return sum(len(zlib.compress(page, level)) for page in pages) / (jobs * tests)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--levels", default="6,1")
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--backend", default="sqlite")
    args = parser.parse_args()
    levels = [int(level) for level in args.levels.split(",")]
    store_args = argparse.Namespace(store_jobs=1000, store_tests=100)
    for backend in args.backend.split(","):
        rates: dict[int, list[float]] = {level: [] for level in levels}
        with (
            tempfile.TemporaryDirectory() as tmp,
            PgServer() if backend == "postgresql" else contextlib.nullcontext() as pg,
        ):
            work = bench.Workdir(Path(tmp), pg)
            for _ in range(args.rounds):
                for level in levels:
                    testresults._RAW_LEVEL = level
                    rates[level].append(bench.store(store_args, work, 0.0)[0]["results/s"])
        print(f"{backend}: 1,000 jobs x 100 results, {args.rounds} rounds, levels alternating")
        first = rates[levels[0]]
        for level in levels:
            every = ", ".join(f"{rate:,.0f}" for rate in rates[level])
            ratios = ", ".join(f"{rate / base:.2f}" for rate, base in zip(rates[level], first, strict=True))
            print(
                f"  level {level}: median {statistics.median(rates[level]):,.0f} results/s ({every}); "
                f"vs level {levels[0]}: {ratios}; {bytes_per_result(level):.1f} bytes a result"
            )


if __name__ == "__main__":
    main()
