"""Benchmark: `export --kind dads --format es-bulk` over synthetic SQLite stores of two sizes.

    python bench/dads.py [--jobs 25000 100000] [--seed 7] [--dir DIR]

Each store is filled from the simulator's history (bench/report.py's generator, in a child
process; stores already in --dir are reused). Then, each in a fresh child process that reports
its own wall time and peak RSS: reading the trees back only, the enriched export and the da-ds
export (both as es-bulk lines to /dev/null). The figures show whether memory stays flat as the
history grows, and what the da-ds documents cost next to the enriched ones.
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

from circleci_ds.derive.facts import open_store
from circleci_ds.derive.people import People
from circleci_ds.documents.dads import dads_documents
from circleci_ds.documents.enriched import enrich_trees
from circleci_ds.documents.raw import es_bulk

REPORT_BENCH = Path(__file__).with_name("report.py")


def measure(db: Path, what: str) -> None:
    """Read or export the store; print {"docs", "seconds", "peak_mb"} as JSON."""
    start = time.perf_counter()
    store = open_store(f"sqlite:///{db}", create=False)
    if what == "read":
        docs = sum(1 for _ in store.iter_trees())
    else:
        people = People.load(store)
        source = (
            dads_documents(store.iter_trees(), people)
            if what == "dads"
            else enrich_trees(store.iter_trees(), store.project_infos(), people=people)
        )
        lines = 0
        with open("/dev/null", "w", encoding="utf-8") as out:
            for line in es_bulk(source, raw=False):
                out.write(line)
                out.write("\n")
                lines += 1
        docs = lines // 2
    store.close()
    seconds = time.perf_counter() - start
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"docs": docs, "seconds": seconds, "peak_mb": peak_mb}))


def main() -> None:
    formatter = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=formatter)
    parser.add_argument("--jobs", type=int, nargs="+", default=[25_000, 100_000])
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--dir", type=Path, help="where the stores are (kept); default a new temp dir")
    parser.add_argument("--measure", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--what", default="dads", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure:
        measure(args.measure, args.what)
        return
    workdir = args.dir or Path(tempfile.mkdtemp(prefix="circleci-ds-bench-dads-"))
    print(f"{'jobs asked':>10} {'run':>9} {'documents':>10} {'seconds':>8} {'docs/s':>8} {'peak RSS':>9}")
    for jobs in args.jobs:
        db = workdir / f"store-{jobs}.db"
        if not db.exists():
            generate = [sys.executable, str(REPORT_BENCH), "--generate-only", "--db", str(db)]
            subprocess.run([*generate, "--jobs", str(jobs), "--seed", str(args.seed)], check=True)
        for what in ("read", "enriched", "dads"):
            command = [sys.executable, __file__, "--measure", str(db), "--what", what]
            m = json.loads(subprocess.run(command, check=True, capture_output=True, text=True).stdout)
            docs, seconds, peak = m["docs"], m["seconds"], m["peak_mb"]
            rate = docs / seconds
            print(f"{jobs:>10,} {what:>9} {docs:>10,} {seconds:>8.2f} {rate:>8,.0f} {peak:>6.0f} MB")
    print(f"stores in {workdir}")


if __name__ == "__main__":
    main()
