"""Benchmark: test results, collection cost and the report's test section at scale.

    python bench/tests.py requests                 # requests added by test results, default simulator
    python bench/tests.py report --results 1000000 [--results 10000000 ...] [--dir DIR]

`requests`: `circleci-ds simulate`'s default history (3 projects x 100 pipelines) collected twice
into fresh stores, with `--no-tests` and with test results; prints the requests each made and what
the test results added per pipeline and per job.

`report`: for each size, a SQLite store is filled in bulk (not through HTTP; in a child process)
with test results shaped like a CI history (4 projects, 20 test jobs per pipeline, 500 tests a job,
a few flaky and failing tests, reruns of failed jobs), its size measured (bytes per million
results, raw pages included), then, in a fresh child process, the report's test section (all
metrics, terminal tables and the HTML section) is timed and its peak RSS read.
"""

from __future__ import annotations

import argparse
import io
import json
import random
import resource
import sqlite3
import subprocess
import sys
import tempfile
import time
import zlib
from pathlib import Path

from rich.console import Console

sys.path.insert(0, str(Path(__file__).resolve().parent))

from circleci_ds.derive.facts import open_store
from circleci_ds.store import schema as s
from circleci_ds.store.base import dumps
from simproc import cli, simulator, write_fixture

PROJECTS = 4
JOB_NAMES = 20
TESTS_PER_JOB = 500
START = 1_780_000_000.0  # 2026-05-28
MESSAGES = (
    "AssertionError: assert 200 == 503",
    "TimeoutError: <b>30s</b> </script>",
    "\x1b[31mFAILED\x1b[0m",
)


# -- requests -----------------------------------------------------------------------------------------


def requests() -> None:
    with tempfile.TemporaryDirectory() as tmp, simulator(3, 100, 0.0) as sim:
        fixture = write_fixture(Path(tmp) / "fixture.yaml", sim.slugs)
        sim.advance(3 * 86400)  # every run has finished
        counts = {}
        for label, extra in (("without tests", ["--no-tests"]), ("with tests", [])):
            sim.reset_stats()
            db = f"sqlite:///{tmp}/{label.replace(' ', '-')}.db"
            done = subprocess.run(
                [*cli("collect", fixture.as_posix(), "--db", db, "--api-url", sim.url, *extra)],
                capture_output=True,
                text=True,
            )
            if done.returncode:
                raise SystemExit(done.stderr[-2000:])
            counts[label] = sim.stats()
        with sqlite3.connect(f"{tmp}/with-tests.db") as conn:
            pipelines = conn.execute("select count(*) from pipelines").fetchone()[0]
            jobs, results = conn.execute("select count(*), sum(tests) from test_jobs").fetchone()
            raw_bytes = conn.execute("select sum(length(data)) from test_raw").fetchone()[0]
    base, full = counts["without tests"]["requests"], counts["with tests"]["requests"]
    added = full - base
    print(
        json.dumps(
            {"without": counts["without tests"]["by_endpoint"], "with": counts["with tests"]["by_endpoint"]}
        )
    )
    print(f"requests: {base:,} without test results, {full:,} with (+{added:,}, +{added / base:.1%})")
    print(f"pipelines {pipelines:,}; build jobs with a number read {jobs:,}; test results {results:,}")
    print(f"added per pipeline: {added / pipelines:.2f}; per job read: {added / jobs:.2f}")
    print(f"raw test results: {raw_bytes / results:.1f} bytes per result (zlib-compressed pages)")


# -- bulk generation ----------------------------------------------------------------------------------


def generate(db: Path, results: int, seed: int) -> None:
    """Fill a new store with about `results` test results, in bulk."""
    store = open_store(f"sqlite:///{db}")
    store.close()
    rng = random.Random(seed)
    conn = sqlite3.connect(db)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=OFF")
    indexes = [(i.name, i) for i in s.test_results.indexes]
    for name, _ in indexes:
        conn.execute(f"DROP INDEX {name}")
    slugs = [f"gh/bench/service-{p}" for p in range(PROJECTS)]
    for slug in slugs:
        info = {"slug": slug, "vcs_info": {"default_branch": "main"}}
        conn.execute(
            "insert into endpoints (slug, native, origin, project_info) values (?, 'bench', ?, ?)",
            (slug, f"https://circleci.com/{slug}", json.dumps(info)),
        )
    case_refs = _cases(conn, slugs)
    jobs_needed = results // TESTS_PER_JOB
    job_ref, made, pipeline = 0, 0, 0
    while made < jobs_needed:
        pipeline += 1
        slug = slugs[pipeline % PROJECTS]
        commit = f"{rng.getrandbits(160):040x}"
        branch = "main" if rng.random() < 0.6 else "feature/x"
        created = START + pipeline * 240.0
        for name in range(JOB_NAMES):
            attempt = 0
            while True:
                job_ref += 1
                failed = _job(
                    conn, rng, job_ref, slug, name, commit, branch, created + attempt * 900, case_refs
                )
                made += 1
                attempt += 1
                if not failed or attempt > 2 or rng.random() > 0.5:
                    break
        if pipeline % 20 == 0:
            conn.commit()
    conn.commit()
    for _, index in indexes:
        index.create(conn_engine(db))
    conn.close()


def conn_engine(db: Path):  # type: ignore[no-untyped-def]
    from sqlalchemy import create_engine

    return create_engine(f"sqlite:///{db}")


def _cases(conn: sqlite3.Connection, slugs: list[str]) -> dict[tuple[str, int], list[int]]:
    refs: dict[tuple[str, int], list[int]] = {}
    ref = 0
    rows = []
    for slug in slugs:
        for name in range(JOB_NAMES):
            for test in range(TESTS_PER_JOB):
                ref += 1
                refs.setdefault((slug, name), []).append(ref)
                rows.append(
                    (
                        ref,
                        slug,
                        f"test-{name}",
                        f"tests.mod{test % 40}.TestThing",
                        f"test_{test}",
                        f"tests/test_mod{test % 40}.py",
                    )
                )
    conn.executemany(
        "insert into test_cases (ref, endpoint, job_name, classname, name, file) values (?,?,?,?,?,?)", rows
    )
    return refs


def _job(
    conn: sqlite3.Connection,
    rng: random.Random,
    ref: int,
    slug: str,
    name: int,
    commit: str,
    branch: str,
    created: float,
    case_refs: dict[tuple[str, int], list[int]],
) -> bool:
    cases = case_refs[slug, name]
    failing = set()
    if rng.random() < 0.04:  # flaky (tests 0-4 flake) or broken (test 5)
        failing.add(rng.randrange(5) if rng.random() < 0.8 else 5)
    rows, raw = [], []
    for position, case in enumerate(cases):
        slow = position % 97 == 0
        run_time = round(rng.lognormvariate(2.5 if slow else -3.0, 0.4), 4)
        failed = position in failing
        result = "failure" if failed else ("skipped" if position % 211 == 0 else "success")
        message = rng.choice(MESSAGES) if failed else None
        outcome = 0 if failed else (None if result == "skipped" else 1)
        rows.append((ref, case, outcome, result, run_time, message))
        raw.append(
            {
                "message": message,
                "source": "pytest",
                "run_time": run_time,
                "file": f"tests/test_mod{position % 40}.py",
                "result": result,
                "name": f"test_{position}",
                "classname": f"tests.mod{position % 40}.TestThing",
            }
        )
    conn.executemany(
        "insert into test_results (job_ref, case_ref, outcome, result, run_time, message) "
        "values (?,?,?,?,?,?)",
        rows,
    )
    conn.execute(
        "insert into test_raw (job_ref, seq, data) values (?, 0, ?)",
        (ref, zlib.compress(dumps(raw).encode(), 6)),
    )
    status = "failed" if failing else "success"
    duration = rng.uniform(60, 600)
    conn.execute(
        "insert into test_jobs (ref, endpoint, job_number, job_id, pipeline_id, workflow_id, workflow,"
        " job_name, branch, commit_sha, status, created_at, started_at, stopped_at, duration, web_url,"
        " state, tests)"
        " values (?,?,?,?,?,?,'test',?,?,?,?,?,?,?,?,?,'done',?)",
        (
            ref,
            slug,
            ref,
            f"job-{ref}",
            f"p-{commit[:8]}",
            f"w-{ref}",
            f"test-{name}",
            branch,
            commit,
            status,
            created,
            created + 5,
            created + 5 + duration,
            duration,
            f"https://app.circleci.com/jobs/{ref}",
            len(rows),
        ),
    )
    return bool(failing)


# -- the report's test section ------------------------------------------------------------------------


def measure(db: Path) -> None:
    """Time the test section (metrics, terminal tables, HTML section) and print the peak RSS."""
    from circleci_ds.report.testsection import build_tests, html_section, print_test_tables

    store = open_store(f"sqlite:///{db}", create=False)
    start = time.perf_counter()
    tests = build_tests(store, project=None, since=None, until=None, branch=None)
    print_test_tables(tests, Console(file=io.StringIO(), width=200))
    html = html_section(tests, [])
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"seconds": seconds, "peak_rss_mb": peak, "flaky": len(tests.flaky), "html": len(html)}))


def report(sizes: list[int], workdir: Path, seed: int) -> None:
    for size in sizes:
        db = workdir / f"tests-{size}.db"
        if not db.exists():
            start = time.perf_counter()
            subprocess.run(
                [
                    sys.executable,
                    __file__,
                    "generate",
                    "--results",
                    str(size),
                    "--db",
                    str(db),
                    "--seed",
                    str(seed),
                ],
                check=True,
            )
            print(f"{size:,}: generated in {time.perf_counter() - start:.0f} s")
        with sqlite3.connect(db) as conn:
            results = conn.execute("select count(*) from test_results").fetchone()[0]
            raw = conn.execute("select sum(length(data)) from test_raw").fetchone()[0]
        size_bytes = db.stat().st_size
        print(
            f"{results:,} results: store {size_bytes / 1e6:,.0f} MB, {size_bytes / results:,.1f} MB "
            f"per million results ({raw / results:.1f} bytes of it raw per result)"
        )
        for run in range(3):
            out = subprocess.run(
                [sys.executable, __file__, "measure", "--db", str(db)],
                check=True,
                capture_output=True,
                text=True,
            ).stdout
            print(f"  run {run + 1}: {out.strip()}")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("what", choices=("requests", "report", "generate", "measure"))
    parser.add_argument("--results", type=int, action="append")
    parser.add_argument("--db", type=Path)
    parser.add_argument("--dir", type=Path)
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    if args.what == "requests":
        requests()
    elif args.what == "generate":
        generate(args.db, args.results[0], args.seed)
    elif args.what == "measure":
        measure(args.db)
    else:
        workdir = args.dir or Path(tempfile.mkdtemp(prefix="circleci-ds-bench-tests-"))
        report(args.results or [1_000_000], workdir, args.seed)


if __name__ == "__main__":
    main()
