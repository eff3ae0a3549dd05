"""Benchmark: the report's cost section over 1,000,000 and 10,000,000 usage rows (SQLite, PostgreSQL).

    python bench/cost.py [--rows 1000000 10000000] [--backend sqlite postgresql] [--workdir DIR]

Each store gets a few collected projects (no job facts: the usage rows are what grows) and a
`usage_runs` table filled in bulk inside the database (one INSERT ... SELECT over a generated series:
rows vary by arithmetic on their number, over 365 days, 8 projects of the fixture and one outside it,
5 workflows, 40 jobs (8 of them oversized, 4 starved), 6 resource classes, 1 in 7 rows without
utilisation). Each measurement runs in
a fresh child process, so its peak RSS is its own: the cost section (`compute_cost`: totals, every
breakdown, lost credits, right-sizing) over the whole year, with its wall time, CPU time and peak RSS,
and the RSS right before it (the interpreter, SQLAlchemy and the open store).
An existing --workdir store is reused.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

SINCE = 1_767_225_600.0  # 2026-01-01T00:00:00Z
DAYS = 365
PROJECTS = 8
CLASSES = ("small", "medium", "medium+", "large", "xlarge", "arm.medium")
HERE = Path(__file__).resolve().parent


def _case(expression: str, values: tuple[str, ...]) -> str:
    whens = " ".join(f"WHEN {i} THEN '{v}'" for i, v in enumerate(values))
    return f"CASE {expression} {whens} END"


def rows_select(rows: int, dialect: str) -> str:
    """SELECT of `rows` generated usage rows (column order of INSERT_COLUMNS)."""
    series = (
        f"WITH RECURSIVE n(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM n WHERE i < {rows - 1}) "
        if dialect == "sqlite"
        else ""
    )
    source = "n" if dialect == "sqlite" else f"generate_series(0::bigint, {rows - 1}) AS n(i)"
    text = "TEXT" if dialect == "sqlite" else "VARCHAR"
    start = f"({SINCE} + (i * {DAYS * 86400.0} / {rows}))"
    util = "CASE WHEN i % 7 = 0 THEN NULL ELSE {} END"
    day = f"CAST({start} / 86400 AS INTEGER)" if dialect == "sqlite" else f"floor({start} / 86400)"
    return (
        f"{series}SELECT 'org-1', 'r' || CAST(i AS {text}), 'bench', "
        f"CASE WHEN i % 10 = 9 THEN 'legacy' ELSE 'service-' || CAST(i % {PROJECTS} AS {text}) END, "
        f"CASE WHEN i % 10 = 9 THEN NULL ELSE 'gh/bench/service-' || CAST(i % {PROJECTS} AS {text}) END, "
        f"CASE WHEN i % 3 = 0 THEN 'feature-' || CAST(i % 100 AS {text}) ELSE 'main' END, "
        f"'p' || CAST(i / 12 AS {text}), 'w' || CAST(i / 4 AS {text}), "
        f"'wf-' || CAST(i % 5 AS {text}), 'job-' || CAST(i % 40 AS {text}), "
        f"{start}, {start} + 60 + i % 600, {day} * 86400.0, "
        f"{_case('i % 20', ('failed', 'canceled') + ('success',) * 18)}, "
        f"{_case(f'i % {len(CLASSES)}', CLASSES)}, "
        f"{util.format(CPU)}, {util.format(RAM)}, "
        f"1 + i % 50, CASE WHEN i % 100 = 0 THEN 25 ELSE 0 END "
        f"FROM {source}"
    )


# jobs 0-7 use little (oversized), jobs 8-11 run their CPU flat out (starved), the others vary
CPU = "CASE WHEN i % 40 < 8 THEN (i * 7919) % 35 WHEN i % 40 < 12 THEN 95 + i % 6 ELSE (i * 7919) % 101 END"
RAM = "CASE WHEN i % 40 < 8 THEN (i * 104729) % 38 ELSE (i * 104729) % 101 END"

INSERT_COLUMNS = (
    "org_id", "job_run_id", "org_name", "project_name", "project_slug", "branch", "pipeline_id",
    "workflow_id", "workflow_name", "job_name", "started_at", "stopped_at", "run_day", "status",
    "resource_class", "max_cpu_pct", "max_ram_pct", "total_credits", "user_credits",
)  # fmt: skip


def generate(url: str, rows: int) -> dict[str, Any]:
    from sqlalchemy import text

    from circleci_ds.derive.facts import open_store
    from circleci_ds.store import schema as s

    started = time.perf_counter()
    store = open_store(url)
    for i in range(PROJECTS):
        slug = f"gh/bench/service-{i}"
        store.ensure_endpoint(slug, "bench", f"https://circleci.com/{slug}")
        store.save_project_info(slug, {"vcs_info": {"default_branch": "main"}})
    dialect = store.engine.dialect.name
    with store.engine.begin() as conn:
        s.usage_runs.create(conn, checkfirst=True)
        step = 1_000_000
        for offset in range(0, rows, step):
            batch = min(step, rows - offset)
            select_sql = rows_select(batch, dialect).replace("'r' ||", f"'r{offset}-' ||")
            conn.execute(text(f"INSERT INTO usage_runs ({', '.join(INSERT_COLUMNS)}) {select_sql}"))
    store.close()
    return {"rows": rows, "generate_s": round(time.perf_counter() - started, 1)}


def peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def measure(url: str) -> dict[str, Any]:
    from circleci_ds.derive.facts import open_store
    from circleci_ds.metrics.cost import compute_cost

    store = open_store(url, create=False)
    before = peak_mb()
    wall, cpu = time.perf_counter(), time.process_time()
    report = compute_cost(store, project=None, since=SINCE, until=SINCE + DAYS * 86400, branch=None)
    result = {
        "cost_s": round(time.perf_counter() - wall, 1),
        "cpu_s": round(time.process_time() - cpu, 1),
        "rss_before_mb": round(before),
        "peak_rss_mb": round(peak_mb()),
        "source": report.source,
        "runs": report.runs,
        "credits": report.credits,
        "rightsizing": len(report.rightsizing),
        "by_job": len(report.by_job),
    }
    store.close()
    return result


def child(*args: str) -> dict[str, Any]:
    out = subprocess.run([sys.executable, __file__, *args], capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise SystemExit(out.stderr)
    return dict(json.loads(out.stdout.strip().splitlines()[-1]))


@contextmanager
def postgres() -> Iterator[Any]:
    sys.path.insert(0, str(HERE.parent / "tests"))
    from pgserver import PgServer, find_bindir

    with PgServer(find_bindir()) as server:
        yield server


def run(url: str, rows: int, fresh: bool) -> dict[str, Any]:
    made = child("--generate", url, str(rows)) if fresh else {"rows": rows, "generate_s": None}
    return {**made, **child("--measure", url)}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rows", type=int, nargs="+", default=[1_000_000, 10_000_000])
    parser.add_argument("--backend", nargs="+", default=["sqlite"], choices=["sqlite", "postgresql"])
    parser.add_argument("--workdir", type=Path, default=Path("bench-cost"))
    parser.add_argument("--generate", nargs=2, metavar=("URL", "ROWS"), help=argparse.SUPPRESS)
    parser.add_argument("--measure", metavar="URL", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.generate:
        print(json.dumps(generate(args.generate[0], int(args.generate[1]))))
        return
    if args.measure:
        print(json.dumps(measure(args.measure)))
        return
    args.workdir.mkdir(parents=True, exist_ok=True)
    for backend in args.backend:
        for rows in args.rows:
            if backend == "sqlite":
                path = args.workdir / f"cost-{rows}.db"
                result = run(f"sqlite:///{path}", rows, fresh=not path.exists())
            else:
                with postgres() as server:
                    result = run(server.create_database(), rows, fresh=True)
            print(json.dumps({"backend": backend, **result}), flush=True)


if __name__ == "__main__":
    main()
