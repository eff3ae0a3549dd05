"""Benchmark: `circleci-ds collect` as a process against the simulator in another process.

    python bench/collect.py [--full] [--incremental] [--reruns] [--ratelimit] [--memory] [--tests]
                            [--store] [--trees] [--backend sqlite,postgresql] [--repeat N] [--json]

With no scenario flag every scenario runs:
  full         P projects x M pipelines (3 x 100), L ms latency per request (25): the collection at
               each --concurrency (16,32,64) and at --concurrency 1, which makes the same requests one
               after another; the speed-up is the sequential time over the concurrent one.
  incremental  a first collection at concurrency 16, a re-run with the clock unchanged and a re-run
               after moving the simulator's clock one day: requests as a share of the first run.
  reruns       a quiet project (150 pipelines, one every ~90 min) and a busy one (a pipeline every
               10 min, late reruns, reruns that wait for an approval): a first run, an unchanged
               re-run, re-runs every 15 minutes (median of 8) and one a day later.
  ratelimit    the same collection against a token bucket (--rate-limit 100 rps, --rate-burst 10,
               Retry-After alternating between seconds and an HTTP date): time over the ideal
               (requests not answered 429 / allowed rate) and the share of requests answered 429.
  memory       --memory-pipelines (5,000) pipelines, --memory-latency-ms (2) per request: the
               collector's peak RSS.
  tests        requests per job on two histories of P x M pipelines at concurrency 32: the
               simulator's default and one where half the job names with a suite store no test
               results (--untested-share 0.5); the test-result reads of the jobs that store none (as
               a share of those jobs), and whether every result of the jobs that have some was stored.
  store        writing test results in bulk, in this process (--store-jobs jobs of --store-tests
               results, written as the collector writes them: facts derived, BATCH_JOBS jobs per
               transaction): results stored per CPU second.
  trees        writing pipeline trees as the collector writes them, in this process: the simulator's
               trees of one project of --trees-pipelines (300) pipelines, facts derived, written one
               tree per transaction (`save_tree`) and in batches of --trees-batch trees (`write_trees`,
               a transaction per batch): CPU and wall time per tree.

Every scenario but `store` and `trees` runs on each --backend (sqlite; postgresql: a throw-away server from
tests/pgserver.py, a new database per run). `CPU ms/req` is the collector's CPU per request, `req/job`
the requests per job stored.

Requests, 429s and requests in flight are counted by the simulator (`/_sim/stats`). `active s` runs
from the first request the simulator saw (polled every 5 ms) to the collector's exit, so it leaves
out interpreter start-up and imports; `wall s` is the whole process. Peak RSS and CPU come from
`os.wait4` on the collector; CPU per request leaves out the CPU of `python -m circleci_ds version`
(interpreter start-up and the same imports; the median of 5 starts), shown in the header. `mean in
flight` is the simulator's requests in flight averaged over `active s` (at most --concurrency: what
the time allowed, by Little's law); `test reads/s` the test-result reads a second from the first to
the last (0 when none).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from circleci_ds.derive.facts import open_store
from simproc import Sim, cli, open_pipelines, shaped_simulator, simulator, stored_pipelines, write_fixture

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from pgserver import PgServer

DAY = 86400.0
Row = dict[str, Any]


@dataclass
class Run:
    """One collector process, as the simulator and the kernel saw it."""

    wall_s: float
    active_s: float
    requests: int
    rate_limited: int
    max_in_flight: int
    cpu_s: float
    peak_rss_mb: float
    in_flight_s: float = 0.0  # requests in flight summed over time (the simulator's)
    tests_per_s: float | None = None  # test-result reads a second, from the first to the last

    @property
    def mean_in_flight(self) -> float:
        return self.in_flight_s / self.active_s if self.active_s > 0 else 0.0

    @property
    def answered(self) -> int:
        """Requests that were not turned away with a 429."""
        return self.requests - self.rate_limited


def wait_for(proc: subprocess.Popen[str], sim: Sim | None) -> tuple[int, Any, float | None]:
    """Reap `proc` with its resource usage; also when the simulator saw its first request."""
    first: float | None = None
    while True:
        pid, status, usage = os.wait4(proc.pid, 0 if first is not None or sim is None else os.WNOHANG)
        if pid:
            proc.returncode = os.waitstatus_to_exitcode(status)
            return proc.returncode, usage, first
        assert sim is not None
        if sim.stats()["requests"] > 0:
            first = time.monotonic()
        else:
            time.sleep(0.005)


def run_process(args: list[str], sim: Sim | None = None) -> tuple[float, float, Any]:
    """Run `args` to the end; (wall s, active s, rusage). Raises with stderr's tail on failure."""
    with tempfile.TemporaryFile("w+") as err:
        started = time.monotonic()
        proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=err, text=True)
        try:
            code, usage, first = wait_for(proc, sim)
        except BaseException:
            proc.kill()
            proc.wait()
            raise
        ended = time.monotonic()
        if code != 0:
            err.seek(0)
            raise RuntimeError(f"{' '.join(args[2:4])} exited {code}:\n{err.read()[-2000:]}")
    return ended - started, ended - (first if first is not None else started), usage


def collect(sim: Sim, fixture: Path, db_url: str, concurrency: int = 16, *extra: str) -> Run:
    sim.reset_stats()
    args = cli("collect", str(fixture), "--db", db_url, "--api-url", sim.url)
    args += ["--concurrency", str(concurrency), *extra]
    wall, active, usage = run_process(args, sim)
    stats = sim.stats()
    tests, span = stats["by_endpoint"].get("tests", 0), stats.get("spans", {}).get("tests")
    return Run(
        wall_s=wall,
        active_s=active,
        requests=stats["requests"],
        rate_limited=stats["status"].get("429", 0),
        max_in_flight=stats["max_in_flight"],
        cpu_s=usage.ru_utime + usage.ru_stime,
        peak_rss_mb=usage.ru_maxrss / 1024,  # KiB on Linux
        in_flight_s=stats.get("in_flight_seconds", 0.0),  # absent from older simulators
        tests_per_s=tests / (span[1] - span[0]) if span and span[1] > span[0] else None,
    )


def startup(runs: int = 5) -> Row:
    """CPU and RSS of starting the interpreter and importing the CLI, without collecting: medians of
    `runs` (one start varies by a few hundred ms, which is subtracted from every CPU figure)."""
    usages = [run_process(cli("version"))[2] for _ in range(runs)]
    cpu = statistics.median((u.ru_utime + u.ru_stime) * 1000 for u in usages)
    return {"cpu_ms": cpu, "peak_rss_mb": statistics.median(u.ru_maxrss / 1024 for u in usages)}


class Workdir:
    """A temporary directory handing out fresh databases (SQLite files, or PostgreSQL databases)."""

    def __init__(self, path: Path, pg: PgServer | None = None) -> None:
        self.path, self.count, self.pg = path, 0, pg

    def fresh_db(self) -> str:
        self.count += 1
        if self.pg is not None:
            return self.pg.create_database("bench")
        return f"sqlite:///{self.path / f'bench-{self.count}.db'}"

    def fixture(self, sim: Sim) -> Path:
        return write_fixture(self.path / f"fixture-{self.count}.yaml", sim.slugs)


# -- scenarios -----------------------------------------------------------------------------------


def base_row(label: str, run: Run, base_cpu_ms: float) -> Row:
    return {
        "run": label,
        "wall s": run.wall_s,
        "active s": run.active_s,
        "requests": run.requests,
        "429s": run.rate_limited,
        "max in flight": run.max_in_flight,
        "mean in flight": run.mean_in_flight,
        "test reads/s": run.tests_per_s if run.tests_per_s is not None else 0.0,
        "peak RSS MB": run.peak_rss_mb,
        "CPU ms/req": max(0.0, run.cpu_s * 1000 - base_cpu_ms) / max(1, run.requests),
    }


def full(args: argparse.Namespace, work: Workdir, base_cpu_ms: float) -> list[Row]:
    rows: list[Row] = []
    with simulator(args.projects, args.pipelines, args.latency_ms) as sim:
        fixture = work.fixture(sim)
        runs: dict[int, Run] = {}
        for concurrency in [1, *args.concurrency] if args.sequential else args.concurrency:
            db_url = work.fresh_db()
            runs[concurrency] = collect(sim, fixture, db_url, concurrency)
            pipelines = stored_pipelines(db_url)
            row = base_row(f"concurrency {concurrency}", runs[concurrency], base_cpu_ms)
            row["req/pipeline"] = runs[concurrency].requests / max(1, pipelines)
            row["req/job"] = runs[concurrency].requests / max(1, stored_counts(db_url).jobs)
            if 1 in runs:
                row["vs sequential"] = runs[1].active_s / runs[concurrency].active_s
            rows.append(row)
    return rows


def incremental(args: argparse.Namespace, work: Workdir, base_cpu_ms: float) -> list[Row]:
    with simulator(args.projects, args.pipelines, args.latency_ms) as sim:
        fixture, db_url = work.fixture(sim), work.fresh_db()
        first = collect(sim, fixture, db_url)
        unchanged = collect(sim, fixture, db_url)
        sim.advance(DAY)
        next_day = collect(sim, fixture, db_url)
    rows = []
    for label, run in (("first", first), ("unchanged", unchanged), ("one day later", next_day)):
        row = base_row(label, run, base_cpu_ms)
        row["% of first"] = 100 * run.requests / max(1, first.requests)
        rows.append(row)
    return rows


QUIET = {"projects": [{"slug": "gh/bench/quiet", "pipelines": 150}], "span_days": 9.0, "future_days": 1.0}
BUSY = {
    "projects": [{"slug": "gh/bench/busy", "pipelines": 600, "every_minutes": 10.0}],
    "span_days": 3.0,
    "future_days": 1.0,
    "late_rerun_days": 6.0,
    "gated_rerun_rate": 0.3,
}


def reruns(args: argparse.Namespace, work: Workdir, base_cpu_ms: float) -> list[Row]:
    """Re-runs of a quiet project (a pipeline every ~90 min) and a busy one (every 10 min, the
    whole --lookback window full): unchanged, then every 15 minutes for two hours, then a day later."""
    shapes = (("quiet", QUIET), ("busy", BUSY))
    return [row for label, shape in shapes for row in rerun_series(label, shape, args, work, base_cpu_ms)]


def rerun_series(
    label: str, shape: dict[str, Any], args: argparse.Namespace, work: Workdir, base_cpu_ms: float
) -> list[Row]:
    with shaped_simulator({**shape, "latency_ms": args.latency_ms}) as sim:
        fixture, db_url = work.fixture(sim), work.fresh_db()

        def row(name: str, run: Run, first: Run) -> Row:
            return rerun_row(f"{label}: {name}", run, first, db_url, base_cpu_ms, sim)

        first = collect(sim, fixture, db_url)
        rows = [row("first", first, first), row("unchanged", collect(sim, fixture, db_url), first)]
        quarter = []
        for _ in range(8):
            sim.advance(900)
            quarter.append(collect(sim, fixture, db_url))
        median = sorted(quarter, key=lambda r: r.requests)[len(quarter) // 2]
        rows.append(row("15 min later (median of 8)", median, first))
        sim.advance(DAY)
        rows.append(row("a day later", collect(sim, fixture, db_url), first))
    return rows


def running_workflows(sim: Sim) -> int:
    """Workflows running now, by the simulator's truth: their jobs can move while they look the same."""
    return sum(
        1
        for slug in sim.slugs
        for pipeline in sim.truth(slug)
        for workflow in pipeline["workflows"]
        if workflow["status"] in ("running", "failing")
    )


def rerun_row(label: str, run: Run, first: Run, db_url: str, base_cpu_ms: float, sim: Sim) -> Row:
    row = base_row(label, run, base_cpu_ms)
    row["open after"] = open_pipelines(db_url)
    row["running wf"] = running_workflows(sim)
    row["% of first"] = 100 * run.requests / max(1, first.requests)
    return row


def ratelimit(args: argparse.Namespace, work: Workdir, base_cpu_ms: float) -> list[Row]:
    rows = []
    with simulator(args.projects, args.pipelines, args.latency_ms) as sim:
        fixture = work.fixture(sim)
        for limit in args.rate_limit:
            sim.configure(rate_limit_rps=limit, rate_burst=args.rate_burst, retry_after="both")
            run = collect(sim, fixture, work.fresh_db())
            row = base_row(f"{limit:g} rps", run, base_cpu_ms)
            ideal = run.answered / limit
            row["ideal s"] = ideal
            row["vs ideal"] = run.active_s / ideal
            row["429 %"] = 100 * run.rate_limited / max(1, run.requests)
            rows.append(row)
    return rows


def memory(args: argparse.Namespace, work: Workdir, base_cpu_ms: float) -> list[Row]:
    per_project = -(-args.memory_pipelines // args.projects)
    with simulator(args.projects, per_project, args.memory_latency_ms) as sim:
        fixture, db_url = work.fixture(sim), work.fresh_db()
        run = collect(sim, fixture, db_url)
        row = base_row(f"{args.projects} x {per_project} pipelines", run, base_cpu_ms)
        row["pipelines"] = stored_pipelines(db_url)
    return [row]


@dataclass
class Stored:
    """What a collection left in the store."""

    jobs: int  # jobs stored
    read: dict[str, int]  # test marker state -> jobs
    results: dict[tuple[str, int], int]  # (project, job number) -> results of the jobs marked done


def stored_counts(db_url: str) -> Stored:
    from sqlalchemy import func, select

    from circleci_ds.store import schema as s

    opened = open_store(db_url, create=False)
    try:
        t = s.test_jobs.c
        with opened.reading() as conn:
            jobs = conn.execute(select(func.count()).select_from(s.jobs)).scalar_one()
            states = dict(conn.execute(select(t.state, func.count()).group_by(t.state)).all())
            done = conn.execute(select(t.endpoint, t.job_number, t.tests).where(t.state == "done")).all()
    finally:
        opened.close()
    return Stored(jobs, states, {(e, n): tests for e, n, tests in done})


# (label, share of the job names with a suite storing no results, collect's extra arguments);
# `--tests all` reads every job, as every release before the quiet-name rule did.
HISTORIES = (
    ("default", 0.0, ()),
    ("default, --tests all", 0.0, ("--tests", "all")),
    ("half untested", 0.5, ()),
    ("half untested, --tests all", 0.5, ("--tests", "all")),
)


def tests(args: argparse.Namespace, work: Workdir, base_cpu_ms: float) -> list[Row]:
    """Requests per job on the default history and on one where half the suites store nothing."""
    rows = []
    for label, share, extra in HISTORIES:
        projects = [{"slug": f"gh/bench/p{i}", "pipelines": args.pipelines} for i in range(args.projects)]
        shape = {"projects": projects, "latency_ms": args.latency_ms, "untested_share": share}
        with shaped_simulator(shape) as sim:
            fixture, db_url = work.fixture(sim), work.fresh_db()
            run = collect(sim, fixture, db_url, 32, *extra)
            by_endpoint = sim.stats()["by_endpoint"]
            truth = {
                (slug, job["job_number"]): len(job["items"])
                for slug in sim.slugs
                for job in sim.test_truth(slug)
                if job["items"]
            }
        stored = stored_counts(db_url)
        none, skipped = stored.read.get("none", 0), stored.read.get("skipped", 0)
        row = base_row(label, run, base_cpu_ms)
        row["jobs"] = stored.jobs
        row["req/job"] = run.requests / max(1, stored.jobs)
        row["test reads"] = by_endpoint.get("tests", 0)
        row["jobs storing none"] = none + skipped
        row["of them read %"] = 100 * none / max(1, none + skipped)
        row["results"] = sum(stored.results.values())
        row["all results stored"] = "yes" if stored.results == truth else "NO"
        rows.append(row)
    return rows


def store_item(job: int, test: int) -> dict[str, Any]:
    """A test result of the `store` scenario: one in 97 fails."""
    failed = (job + test) % 97 == 0
    return {
        "message": "AssertionError: assert 200 == 503" if failed else None,
        "source": "pytest",
        "run_time": 0.001 * ((job * 31 + test) % 997),
        "file": f"tests/test_module_{test % 20}.py",
        "result": "failure" if failed else "success",
        "name": f"test_case_{test}",
        "classname": f"tests.test_module_{test % 20}.TestModule",
    }


def store(args: argparse.Namespace, work: Workdir, base_cpu_ms: float) -> list[Row]:
    """Test results written as the collector writes them, in this process: results per CPU second."""
    from circleci_ds.collect.gc_tuning import fewer_gc_passes
    from circleci_ds.collect.tests import BATCH_JOBS, write_jobs
    from circleci_ds.store.testresults import CaseRefs, TestJob

    db_url = work.fresh_db()
    target = open_store(db_url)
    names = [f"test-shard-{i}" for i in range(10)]
    jobs = []
    for number in range(1, args.store_jobs + 1):
        job = TestJob("gh/bench/store", number, f"job-{number}", "p", "w", "build", names[number % 10],
                      "main", "c0ffee", "success", 1.7e9 + number, 1.7e9 + number, 1.7e9 + number + 60,
                      60.0, None)  # fmt: skip
        jobs.append((job, [store_item(number, i) for i in range(args.store_tests)]))
    known: CaseRefs = {}
    try:
        with fewer_gc_passes():  # as `collect` runs
            started = time.process_time()
            for start in range(0, len(jobs), BATCH_JOBS):
                write_jobs(target, jobs[start : start + BATCH_JOBS], known)
            cpu = time.process_time() - started
    finally:
        target.close()
    results = args.store_jobs * args.store_tests
    label = f"{args.store_jobs} jobs x {args.store_tests} results"
    return [{"run": label, "results": results, "CPU s": cpu, "results/s": results / cpu}]


def trees(args: argparse.Namespace, work: Workdir, base_cpu_ms: float) -> list[Row]:
    """Pipeline trees written as the collector writes them, in this process: CPU per tree."""
    from circleci_ds.collect.rules import pipeline_is_final
    from circleci_ds.dev.simulator import SimConfig, SimProject, Simulator

    slug = "gh/bench/trees"
    sim = Simulator(SimConfig(projects=[SimProject(slug, pipelines=args.trees_pipelines)]))
    data = sim.truth(slug)
    rows = []
    for size in args.trees_batch:
        target = open_store(work.fresh_db())
        try:
            target.ensure_endpoint(slug, slug, f"https://circleci.com/{slug}", "bench")
            wall, cpu = time.perf_counter(), time.process_time()
            write_in_batches(target, slug, data, size, pipeline_is_final)
            cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
        finally:
            target.close()
        label = "one per transaction" if size == 1 else f"batches of {size}"
        jobs = sum(len(w["jobs"]) for tree in data for w in tree["workflows"])
        rows.append(
            {"run": label, "trees": len(data), "jobs": jobs, "CPU ms/tree": cpu * 1000 / len(data),
             "wall ms/tree": wall * 1000 / len(data)}
        )  # fmt: skip
    return rows


def write_in_batches(
    target: Any, slug: str, data: list[dict[str, Any]], size: int, is_final: Callable[[Any], bool]
) -> None:
    """One tree per transaction through `save_tree` (size 1), else `write_trees` batches."""
    if size == 1:
        for tree in data:
            target.save_tree(slug, tree, fetched_at=1.8e9, is_final=is_final(tree))
        return
    from circleci_ds.store.trees import TreeWrite

    for start in range(0, len(data), size):
        batch = [TreeWrite(slug, tree, 1.8e9, is_final(tree)) for tree in data[start : start + size]]
        outcomes = target.write_trees(batch)
        assert not any(outcomes), outcomes


def verdict(ok: bool) -> str:
    return "meets" if ok else "MISSES"


def full_targets(rows: list[Row]) -> list[str]:
    concurrent = [row for row in rows if row["run"] != "concurrency 1"]
    cheapest = min(concurrent, key=lambda row: row["CPU ms/req"])
    ok = cheapest["CPU ms/req"] <= 0.5
    lines = [f"{verdict(ok)} <= 0.5 ms CPU per request: {cheapest['CPU ms/req']:.2f} ms at {cheapest['run']}"]
    if "vs sequential" in rows[-1]:
        best = max(concurrent, key=lambda row: row["vs sequential"])
        ok = best["vs sequential"] >= 25
        speed = f"{best['vs sequential']:.1f}x at {best['run']}"
        lines.append(f"{verdict(ok)} >= 25x the sequential run: {speed}")
    return lines


def incremental_targets(rows: list[Row]) -> list[str]:
    share = rows[1]["% of first"]
    return [f"{verdict(share <= 5)} unchanged re-run <= 5% of the first run's requests: {share:.1f}%"]


def reruns_targets(rows: list[Row]) -> list[str]:
    lines = []
    for index, row in enumerate(rows):
        if row["run"].endswith("unchanged"):
            budget = 3 + rows[index - 1]["open after"] + row["running wf"]
            ok = row["requests"] <= budget
            lines.append(
                f"{verdict(ok)} {row['run']} <= 3 + one per open pipeline + one per running workflow "
                f"({budget:g}): {row['requests']:g}"
            )
    return lines


def ratelimit_targets(rows: list[Row]) -> list[str]:
    return [
        f"{verdict(row['vs ideal'] <= 1.1 and row['429 %'] < 2)} <= 1.1x the ideal time with < 2% 429s: "
        f"{row['vs ideal']:.3f}x, {row['429 %']:.2f}% at {row['run']}"
        for row in rows
    ]


def memory_targets(rows: list[Row]) -> list[str]:
    peak = rows[0]["peak RSS MB"]
    return [f"{verdict(peak <= 150)} peak RSS <= 150 MB: {peak:.1f} MB"]


def tests_targets(rows: list[Row]) -> list[str]:
    quiet = next(row for row in rows if row["run"] == "half untested")
    ok = quiet["of them read %"] <= 15 and quiet["all results stored"] == "yes"
    return [
        f"{verdict(row['CPU ms/req'] <= 0.5)} <= 0.5 ms of CPU per request: "
        f"{row['CPU ms/req']:.3f} ms ({row['run']})"
        for row in rows
    ] + [
        f"{verdict(ok)} {quiet['run']}: jobs storing none read <= 15% ({quiet['of them read %']:.1f}%), "
        f"every result stored ({quiet['all results stored']})"
    ]


def trees_targets(rows: list[Row]) -> list[str]:
    return [f"{row['run']}: {row['CPU ms/tree']:.2f} ms of CPU per tree" for row in rows]


def store_targets(rows: list[Row]) -> list[str]:
    rate = rows[0]["results/s"]
    return [f"{verdict(rate >= 200_000)} >= 200,000 results stored a second: {rate:,.0f}"]


Scenario = Callable[[argparse.Namespace, Workdir, float], list[Row]]
Targets = Callable[[list[Row]], list[str]]
SCENARIOS: dict[str, tuple[Scenario, str, Targets]] = {
    "full": (
        full,
        "full collection: {projects} x {pipelines} pipelines, {latency_ms:g} ms latency",
        full_targets,
    ),
    "incremental": (incremental, "incremental re-runs, {latency_ms:g} ms latency", incremental_targets),
    "reruns": (reruns, "finding reruns: quiet and busy projects, {latency_ms:g} ms latency", reruns_targets),
    "ratelimit": (
        ratelimit,
        "rate limit: token bucket, burst {rate_burst}, Retry-After both forms, {latency_ms:g} ms latency",
        ratelimit_targets,
    ),
    "memory": (
        memory,
        "memory: {memory_pipelines} pipelines, {memory_latency_ms:g} ms latency",
        memory_targets,
    ),
    "tests": (
        tests,
        "requests per job: {projects} x {pipelines} pipelines, {latency_ms:g} ms latency, concurrency 32",
        tests_targets,
    ),
    "store": (store, "storing test results in bulk", store_targets),
    "trees": (trees, "writing pipeline trees: {trees_pipelines} pipelines", trees_targets),
}


# -- output --------------------------------------------------------------------------------------


def medians(repeats: list[list[Row]]) -> list[Row]:
    """Row by row, the median of every number over the repeats."""
    merged = []
    for rows in zip(*repeats, strict=True):
        row: Row = {}
        for key, value in rows[0].items():
            values = [r[key] for r in rows]
            row[key] = statistics.median(values) if isinstance(value, int | float) else value
        merged.append(row)
    return merged


def fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.0f}" if abs(value) >= 1000 else f"{value:.3g}" if abs(value) < 10 else f"{value:.1f}"
    return str(value)


def table(rows: list[Row]) -> str:
    headers = list(dict.fromkeys(key for row in rows for key in row))
    cells = [headers, *([fmt(row.get(key, "")) for key in headers] for row in rows)]
    widths = [max(len(line[i]) for line in cells) for i in range(len(headers))]
    lines = ["  ".join(align(line, widths)) for line in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def align(cells: list[str], widths: list[int]) -> Iterator[str]:
    """The first column to the left, numbers to the right."""
    for i, (cell, width) in enumerate(zip(cells, widths, strict=True)):
        yield cell.rjust(width) if i else cell.ljust(width)


def machine() -> dict[str, Any]:
    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "nproc": os.cpu_count(),
        "cpu": model,
        "python": platform.python_version(),
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
    }


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    for name in SCENARIOS:
        parser.add_argument(f"--{name}", action="store_true", help=f"run the {name} scenario")
    parser.add_argument("--projects", type=int, default=3)
    parser.add_argument("--pipelines", type=int, default=100, help="pipelines per project")
    parser.add_argument("--latency-ms", type=float, default=25.0)
    parser.add_argument("--concurrency", type=_ints, default=[16, 32, 64], help="comma-separated (full)")
    parser.add_argument("--rate-limit", type=_floats, default=[100.0], help="rps, comma-separated")
    parser.add_argument("--rate-burst", type=int, default=10)
    parser.add_argument("--memory-pipelines", type=int, default=5000)
    parser.add_argument("--memory-latency-ms", type=float, default=2.0)
    parser.add_argument("--store-jobs", type=int, default=2000)
    parser.add_argument("--store-tests", type=int, default=100, help="results per job (store)")
    parser.add_argument("--trees-pipelines", type=int, default=300, help="pipelines (trees)")
    parser.add_argument("--trees-batch", type=_ints, default=[1, 16], help="trees per transaction")
    parser.add_argument("--backend", type=_names, default=["sqlite"], help="sqlite,postgresql")
    parser.add_argument("--repeat", type=int, default=1, help="report medians of N repeats")
    parser.add_argument(
        "--no-sequential",
        dest="sequential",
        action="store_false",
        help="full: leave out the run at --concurrency 1 (and so the speed-up)",
    )
    parser.add_argument("--json", action="store_true", help="print JSON instead of tables")
    return parser.parse_args()


def _names(text: str) -> list[str]:
    names = [part.strip() for part in text.split(",") if part.strip()]
    unknown = set(names) - {"sqlite", "postgresql"}
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown backend(s): {', '.join(sorted(unknown))}")
    return names


def _ints(text: str) -> list[int]:
    return [int(part) for part in text.split(",") if part.strip()]


def _floats(text: str) -> list[float]:
    return [float(part) for part in text.split(",") if part.strip()]


def main() -> int:
    args = parse_args()
    chosen = [name for name in SCENARIOS if getattr(args, name)] or list(SCENARIOS)
    results: dict[str, Any] = {"machine": machine(), "startup": startup(), "repeat": args.repeat}
    with tempfile.TemporaryDirectory(prefix="circleci-ds-bench-") as tmp:
        for backend in args.backend:
            with PgServer() if backend == "postgresql" else contextlib.nullcontext() as pg:
                work = Workdir(Path(tmp), pg)
                for name in chosen:
                    scenario, _, check = SCENARIOS[name]
                    repeats = [scenario(args, work, results["startup"]["cpu_ms"]) for _ in range(args.repeat)]
                    key = name if len(args.backend) == 1 else f"{name} ({backend})"
                    results[key] = medians(repeats)
                    results.setdefault("targets", {})[key] = check(results[key])
    if args.json:
        print(json.dumps(results, indent=2))
    else:
        print_tables(results, chosen, args)
    return 0


def print_tables(results: dict[str, Any], chosen: list[str], args: argparse.Namespace) -> None:
    m, s = results["machine"], results["startup"]
    print(f"{m['date']}  nproc {m['nproc']}  {m['cpu']}  Python {m['python']}")
    print(
        f"start-up (python -m circleci_ds version): {s['cpu_ms']:.0f} ms CPU, {s['peak_rss_mb']:.1f} MB RSS"
    )
    if args.repeat > 1:
        print(f"medians of {args.repeat} repeats")
    for key in results.get("targets", {}):
        name, _, backend = key.partition(" (")
        title = SCENARIOS[name][1].format(**vars(args))
        print(f"\n{title}" + (f" ({backend}" if backend else ""))
        print(table(results[key]))
        for line in results["targets"][key]:
            print(f"  {line}")


if __name__ == "__main__":
    sys.exit(main())
