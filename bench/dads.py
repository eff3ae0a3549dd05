"""Benchmark: `export --kind dads --format es-bulk` over synthetic SQLite stores of two sizes.

    python bench/dads.py [--jobs 25000 100000] [--seed 7]

Each store is filled from the simulator's history (bench/report.py's generator, in a child
process); each export runs in a fresh child process that reports its own wall time and peak RSS,
so the figures show whether memory stays flat as the history grows.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from circleci_ds.dads import dads_documents
from circleci_ds.export import es_bulk
from circleci_ds.people import People
from circleci_ds.store import Store

REPORT_BENCH = Path(__file__).with_name("report.py")


def measure(db: Path) -> None:
    """Export the store to /dev/null; print {"docs", "seconds", "peak_mb"} as JSON."""
    start = time.perf_counter()
    store = Store.open(f"sqlite:///{db}", create=False)
    lines = 0
    with open("/dev/null", "w", encoding="utf-8") as out:
        for line in es_bulk(dads_documents(store.iter_trees(), People.load(store)), raw=False):
            out.write(line)
            out.write("\n")
            lines += 1
    store.close()
    seconds = time.perf_counter() - start
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"docs": lines // 2, "seconds": seconds, "peak_mb": peak_mb}))


def main() -> None:
    formatter = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=formatter)
    parser.add_argument("--jobs", type=int, nargs="+", default=[25_000, 100_000])
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--measure", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure:
        measure(args.measure)
        return
    workdir = Path(tempfile.mkdtemp(prefix="circleci-ds-bench-dads-"))
    print(f"{'jobs asked':>10} {'documents':>10} {'seconds':>8} {'docs/s':>8} {'peak RSS':>9}")
    for jobs in args.jobs:
        db = workdir / f"store-{jobs}.db"
        generate = [sys.executable, str(REPORT_BENCH), "--generate-only", "--db", str(db)]
        generate += ["--jobs", str(jobs)]
        subprocess.run([*generate, "--seed", str(args.seed)], check=True)
        result = subprocess.run(
            [sys.executable, __file__, "--measure", str(db)], check=True, capture_output=True, text=True
        )
        m = json.loads(result.stdout)
        rate = m["docs"] / m["seconds"]
        print(f"{jobs:>10,} {m['docs']:>10,} {m['seconds']:>8.2f} {rate:>8,.0f} {m['peak_mb']:>6.0f} MB")
    print(f"stores in {workdir}")


if __name__ == "__main__":
    main()
