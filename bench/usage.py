"""Benchmark: Usage API rows parsed, and parsed and stored, per second.

    python bench/usage.py [--rows 100000,1000000] [--db sqlite|postgresql://...] [--per-file 250000]

For each size, synthetic exports in the real files' shape (48 UPPERCASE columns, fully quoted and
backslash-escaped files alternating, `\\N` nulls, gzip, at most `--per-file` rows a file) are
1. parsed only (`derive.usage.parse_file`, every typed row built and dropped), then
2. parsed and stored (`store.usage.write_export`: the files as sent and the typed rows, one transaction)
   into a fresh store. Peak RSS is the process's (ru_maxrss) after the size's steps: it only grows,
   and it includes the compressed files held in memory (as the collector holds one export's files).
"""

from __future__ import annotations

import argparse
import contextlib
import gzip
import io
import random
import resource
import sys
import tempfile
import time
import uuid
from pathlib import Path

from circleci_ds.derive.facts import open_store
from circleci_ds.derive.usage import ProjectMap, parse_file
from circleci_ds.dev.simulator.usage import HEADER, _field
from circleci_ds.store.usage import add_export, usage_row_count, write_export

START = 1_790_000_000


def synthetic_files(rows: int, per_file: int, seed: int = 1) -> list[bytes]:
    rng = random.Random(seed)
    projects = [(str(uuid.UUID(int=rng.getrandbits(128))), f"repo-{i}") for i in range(40)]
    org = str(uuid.UUID(int=rng.getrandbits(128)))
    files: list[bytes] = []
    for first in range(0, rows, per_file):
        quoted = len(files) % 2 == 0
        buffer = io.BytesIO()
        out = gzip.GzipFile(fileobj=buffer, mode="wb", compresslevel=6, mtime=0)
        out.write((",".join(HEADER) + "\r\n").encode())
        for n in range(first, min(rows, first + per_file)):
            project_id, name = projects[n % len(projects)]
            started = START + n * 7
            stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(started)) + ".123"
            short = n % 9 == 0
            values = {h: None for h in HEADER} | {
                "ORGANIZATION_ID": org,
                "ORGANIZATION_NAME": "bench-org",
                "PROJECT_ID": project_id,
                "PROJECT_NAME": name,
                "VCS_NAME": "github",
                "VCS_URL": f"https://github.com/bench-org/{name}",
                "VCS_BRANCH": ("main", "feature/x, y")[n % 2],
                "PIPELINE_ID": str(uuid.UUID(int=n * 3 + 1)),
                "PIPELINE_NUMBER": n // 10,
                "WORKFLOW_ID": str(uuid.UUID(int=n * 3 + 2)),
                "WORKFLOW_NAME": "build",
                "IS_WORKFLOW_SUCCESSFUL": ("True", "N")[n % 2],
                "JOB_NAME": f"test-shard-{n % 12}",
                "JOB_RUN_NUMBER": n,
                "JOB_ID": str(uuid.UUID(int=n * 3 + 3)),
                "JOB_RUN_DATE": stamp[:10],
                "JOB_RUN_QUEUED_AT": stamp,
                "JOB_RUN_STARTED_AT": stamp,
                "JOB_RUN_STOPPED_AT": stamp,
                "JOB_BUILD_STATUS": "success",
                "RESOURCE_CLASS": "medium",
                "EXECUTOR": "docker",
                "PARALLELISM": 1 + n % 4,
                "JOB_RUN_SECONDS": 12.0 if short else 60.0 + n % 600,
                "MEDIAN_CPU_UTILIZATION_PCT": None if short else 35.5,
                "MAX_CPU_UTILIZATION_PCT": None if short else 88.25,
                "MEDIAN_RAM_UTILIZATION_PCT": None if short else 41.0,
                "MAX_RAM_UTILIZATION_PCT": None if short else 63.5,
                "COMPUTE_CREDITS": 10.0 + n % 50,
                "DLC_CREDITS": 0.0,
                "USER_CREDITS": 0.0,
                "STORAGE_CREDITS": 0.0,
                "NETWORK_CREDITS": 0.25,
                "TOTAL_CREDITS": 10.25 + n % 50,
            }
            out.write((",".join(_field(values[h], quoted) for h in HEADER) + "\r\n").encode())
        out.close()
        files.append(buffer.getvalue())
    return files


def peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def parse_only(files: list[bytes], projects: ProjectMap) -> tuple[int, float, float]:
    began, cpu = time.perf_counter(), time.process_time()
    count = sum(1 for data in files for _ in parse_file(data, "bench", projects))
    return count, time.perf_counter() - began, time.process_time() - cpu


def parse_and_store(files: list[bytes], projects: ProjectMap, url: str) -> tuple[int, float, float]:
    store = open_store(url)
    try:
        add_export(store, "bench", "org", 0.0, 1.0, 0.0)
        began, cpu = time.perf_counter(), time.process_time()
        rows = (row for data in files for row in parse_file(data, "bench", projects))
        written = write_export(store, "bench", files, rows, time.time())
        elapsed, cpu = time.perf_counter() - began, time.process_time() - cpu
        assert usage_row_count(store) == written
    finally:
        store.close()
    return written, elapsed, cpu


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rows", default="100000,1000000")
    parser.add_argument(
        "--db", default="sqlite", help="sqlite (a temporary file), postgresql (a private server) or a URL"
    )
    parser.add_argument("--per-file", type=int, default=250_000)
    args = parser.parse_args()
    projects = ProjectMap.build([f"gh/bench-org/repo-{i}" for i in range(20)], {})
    print("Rates per second of wall time, and per CPU second of this process (the CPU column is the")
    print("honest one on a shared machine; PostgreSQL's own CPU is not in it).")
    print("| rows | files (MiB gz) | parse/s wall (CPU) | parse+store/s wall (CPU) | store | peak RSS MiB |")
    print("|---:|---:|---:|---:|---|---:|")
    with contextlib.ExitStack() as stack:
        if args.db == "postgresql":  # a private server, as the tests start
            sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
            from pgserver import PgServer, find_bindir

            server = stack.enter_context(PgServer(find_bindir()))
            args.db = server.create_database()
        run_sizes(args, projects)


def run_sizes(args: argparse.Namespace, projects: ProjectMap) -> None:
    for size in (int(x) for x in args.rows.split(",")):
        files = synthetic_files(size, args.per_file)
        mib = sum(len(f) for f in files) / 2**20
        parsed, parse_s, parse_cpu = parse_only(files, projects)
        assert parsed == size
        with tempfile.TemporaryDirectory() as tmp:
            url = f"sqlite:///{Path(tmp) / 'bench.db'}" if args.db == "sqlite" else args.db
            stored, store_s, store_cpu = parse_and_store(files, projects, url)
        assert stored == size
        backend = "SQLite" if args.db == "sqlite" else "PostgreSQL"
        print(
            f"| {size:,} | {len(files)} ({mib:.1f}) | {size / parse_s:,.0f} ({size / parse_cpu:,.0f}) "
            f"| {size / store_s:,.0f} ({size / store_cpu:,.0f}) "
            f"| {backend} | {peak_mib():.0f} |",
            flush=True,
        )


if __name__ == "__main__":
    sys.exit(main())
