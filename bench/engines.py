"""Benchmark: the report's heavy metrics computed three ways over the same facts rows, with a check
that all three give the same numbers.

    python bench/engines.py --url sqlite:////tmp/cds-bench/b100k.db sqlite:////tmp/cds-bench/bench-1000000.db

Stores are opened read-only (generate one with `bench/report.py`). The metrics are the report's job
table (runs, failures, duration and queue-time percentiles per job) and workflow table (runs, success
and first-pass rates, rerun rate, time lost, duration statistics and percentiles, approval waits,
queue times, MTTR per workflow), over two scopes:
  - window: the report's default (30 days up to the newest stored run, each project's default branch);
  - history: every stored run (since the oldest, all branches).
Engines:
  - sql: the report's own code (`circleci_ds.metrics.ci`): SQL aggregates and window functions in the store;
  - duckdb: the scope's rows read from the store (SQLAlchemy, batches of numpy columns) into an in-memory
    DuckDB, then the same metrics in DuckDB SQL; the load is timed (DuckDB cannot scan SQLite here
    without downloading its sqlite extension);
  - polars: the same rows read with `pl.read_database` in batches, the same metrics as Polars expressions.
Each measurement runs in a fresh child process (its peak RSS is its own; imports are done before the
clock starts), the engines take turns, and each figure is the median of --runs runs. The three results
must agree on every field, numbers within 1e-6 (relative, or absolute near zero): otherwise the
differences are printed and the exit status is 1; 2 when a store cannot be read.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, fields
from typing import Any

from sqlalchemy import Connection, and_, func, select
from sqlalchemy.sql import Select

from circleci_ds.derive.facts import JOB_FAILED, WORKFLOW_FAILED, default_branches, open_store
from circleci_ds.metrics.ci import (
    COMPLETED,
    JobMetrics,
    JobTotals,
    Scope,
    WorkflowMetrics,
    WorkflowTotals,
    definitions,
    job_groups,
    job_metrics,
    job_row,
    queue_totals,
    resolve_window,
    workflow_metrics,
    workflow_row,
)
from circleci_ds.metrics.window import ALL_BRANCHES, Window
from circleci_ds.store import StoreError
from circleci_ds.store import schema as s
from circleci_ds.store.facts_store import project_infos

ENGINES = ("sql", "duckdb", "polars")
SCOPES = ("window", "history")
BATCH = 50_000  # rows per batch read from the store
TOLERANCE = 1e-6
W = s.workflow_runs
J = s.job_runs
FINISHED = ("success", *sorted(WORKFLOW_FAILED))


# -- what every engine computes: the report's typed totals (metrics.JobTotals / WorkflowTotals) --------


@dataclass(frozen=True)
class Computed:
    """An engine's answer, and the seconds it spent reading rows out of the store (None: it did not)."""

    jobs: list[JobMetrics]
    workflows: list[WorkflowMetrics]
    load_s: float | None


def assemble(
    scope: Scope, jobs: list[JobTotals], flows: Iterable[WorkflowTotals]
) -> tuple[list[JobMetrics], list[WorkflowMetrics]]:
    """The report's job and workflow rows from an engine's aggregates (the report's own formulas)."""
    summed = queue_totals(jobs)
    job_rows = [job_row(j) for j in jobs]
    flow_rows = [workflow_row(scope, f, summed.get((f.endpoint, f.name))) for f in flows]
    return (
        sorted(job_rows, key=lambda j: (j.project_slug, j.workflow, j.job)),
        sorted(flow_rows, key=lambda w: (w.project_slug, w.workflow)),
    )


def typed(cls: Any, rows: Iterable[Sequence[Any]]) -> list[Any]:
    """Dataclass instances from rows whose columns follow the dataclass's fields (counts as int)."""
    kinds = [(f.name, f.type == "int") for f in fields(cls)]
    return [
        cls(**{n: int(v) if whole else v for (n, whole), v in zip(kinds, row, strict=True)}) for row in rows
    ]


# -- the scope's rows, as every engine reads them ------------------------------------------------------


def scope_of(conn: Connection, which: str) -> Scope:
    """The report's default scope, or the whole stored history on every branch."""
    endpoints = dict(conn.execute(select(s.endpoints.c.slug, s.endpoints.c.native)).all())
    window = resolve_window(conn, endpoints, Window(), time.time())
    if which == "history":
        oldest = conn.execute(select(func.min(W.c.created))).scalar()
        window = Window(window.since if oldest is None else oldest, window.until, ALL_BRANCHES)
    deploy = re.compile(definitions.DEFAULT_DEPLOY_PATTERN)  # unused here
    defaults = default_branches(project_infos(conn))
    return Scope(window, endpoints, defaults, "auto", deploy)


def job_rows(scope: Scope) -> Select[Any]:
    """Executed job runs of the scope (what the report's job metrics read)."""
    return select(
        J.c.endpoint,
        J.c.workflow_name.label("workflow"),
        J.c.name.label("job"),
        J.c.status,
        J.c.duration,
        J.c.queue_time,
    ).where(and_(scope.where(J, J.c.workflow_created), J.c.executed.is_(True)))


def flow_rows(scope: Scope) -> Select[Any]:
    """Workflow runs of the scope (what the report's workflow metrics read)."""
    return select(
        W.c.id,
        W.c.pipeline_id,
        W.c.endpoint,
        W.c.name,
        W.c.status,
        W.c.branch,
        W.c.rerun_index,
        W.c.duration,
        W.c.active_duration,
        W.c.approval_wait,
        W.c.stopped,
    ).where(scope.where(W, W.c.created))


JOB_TYPES = {
    "endpoint": "VARCHAR",
    "workflow": "VARCHAR",
    "job": "VARCHAR",
    "status": "VARCHAR",
    "duration": "DOUBLE",
    "queue_time": "DOUBLE",
}
FLOW_TYPES = {
    "id": "VARCHAR",
    "pipeline_id": "VARCHAR",
    "endpoint": "VARCHAR",
    "name": "VARCHAR",
    "status": "VARCHAR",
    "branch": "VARCHAR",
    "rerun_index": "BIGINT",
    "duration": "DOUBLE",
    "active_duration": "DOUBLE",
    "approval_wait": "DOUBLE",
    "stopped": "DOUBLE",
}


# -- engine 1: the report's SQL --------------------------------------------------------------------------


def by_sql(conn: Connection, scope: Scope) -> Computed:
    groups = job_groups(conn, scope)
    return Computed(job_metrics(conn, scope, groups), workflow_metrics(conn, scope, groups), None)


# -- engine 2: DuckDB ----------------------------------------------------------------------------------

FAILED_SQL = ", ".join(f"'{x}'" for x in sorted(WORKFLOW_FAILED))
JOB_FAILED_SQL = ", ".join(f"'{x}'" for x in sorted(JOB_FAILED))
COMPLETED_SQL = ", ".join(f"'{x}'" for x in COMPLETED)

DUCK_JOBS = f"""
SELECT endpoint, workflow, job, count(*), count(*) FILTER (status = 'success'),
       count(*) FILTER (status IN ({JOB_FAILED_SQL})), sum(queue_time),
       quantile_cont(duration, 0.5) FILTER (status = 'success'),
       quantile_cont(duration, 0.95) FILTER (status = 'success'),
       quantile_cont(queue_time, 0.5), quantile_cont(queue_time, 0.95)
FROM jobs GROUP BY endpoint, workflow, job
"""

DUCK_FLOWS = f"""
WITH timed AS (
  SELECT *, status IN ({COMPLETED_SQL}) AND duration IS NOT NULL AS timed,
         pipeline_id || ':' || name AS execution FROM flows
), runs AS (
  SELECT endpoint, name, count(*) AS runs, count(*) FILTER (status = 'success') AS ok,
    count(*) FILTER (status IN ({FAILED_SQL})) AS failed, count(*) FILTER (status = 'canceled') AS canceled,
    count(*) FILTER (rerun_index > 0) AS reruns, count(DISTINCT execution) AS executions,
    count(DISTINCT execution) FILTER (rerun_index > 0) AS rerun_executions,
    count(*) FILTER (rerun_index = 0 AND status = 'success') AS first_ok,
    count(*) FILTER (rerun_index = 0 AND status <> 'canceled') AS first_runs,
    sum(duration) FILTER (status IN ({FAILED_SQL})) AS lost_failed,
    sum(duration) FILTER (rerun_index > 0) AS lost_reruns, sum(approval_wait) AS wait_total,
    count(*) FILTER (timed) AS timed, min(duration) FILTER (timed) AS d_min,
    avg(duration) FILTER (timed) AS d_mean, max(duration) FILTER (timed) AS d_max,
    stddev_pop(duration) FILTER (timed) AS d_stddev,
    quantile_cont(duration, 0.5) FILTER (timed) AS d_p50,
    quantile_cont(duration, 0.95) FILTER (timed) AS d_p95,
    quantile_cont(active_duration, 0.5) FILTER (timed) AS active_p50,
    quantile_cont(approval_wait, 0.5) AS wait_p50
  FROM timed GROUP BY endpoint, name
), queue AS (
  SELECT endpoint, workflow AS name, quantile_cont(queue_time, 0.5) AS queue_p50 FROM jobs GROUP BY ALL
), finished AS (  -- greens: successes before this run, in finish order, on its workflow and branch
  SELECT endpoint, name, branch, status, stopped, coalesce(sum((status = 'success')::INT) OVER (
    PARTITION BY endpoint, name, branch ORDER BY stopped, id
    ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING), 0) AS greens
  FROM flows WHERE status IN ('success', {FAILED_SQL}) AND stopped IS NOT NULL
), spells AS (  -- from the first failure after a success to the next success
  SELECT endpoint, name,
    max(stopped) FILTER (status = 'success') - min(stopped) FILTER (status <> 'success') AS seconds
  FROM finished GROUP BY endpoint, name, branch, greens
), mttr AS (
  SELECT endpoint, name, count(*) AS recoveries, avg(seconds) AS mttr_mean,
    quantile_cont(seconds, 0.5) AS mttr_median
  FROM spells WHERE seconds IS NOT NULL GROUP BY endpoint, name
)
SELECT runs.*, queue.queue_p50, coalesce(mttr.recoveries, 0), mttr.mttr_mean, mttr.mttr_median
FROM runs LEFT JOIN queue USING (endpoint, name) LEFT JOIN mttr USING (endpoint, name)
"""


def duck_load(duck: Any, conn: Connection, table: str, query: Select[Any], types: dict[str, str]) -> int:
    """Copy the query's rows into a DuckDB table, a batch of numpy columns at a time."""
    import numpy as np

    duck.execute(f"CREATE TABLE {table} ({', '.join(f'{c} {t}' for c, t in types.items())})")
    dtypes = {"DOUBLE": np.float64, "BIGINT": np.int64}  # None -> NaN -> NULL for doubles
    count = 0
    for part in conn.execution_options(yield_per=BATCH).execute(query).partitions():
        columns = zip(*part, strict=True)
        batch = {
            c: np.array(v, dtype=dtypes.get(t, object))
            for (c, t), v in zip(types.items(), columns, strict=True)
        }
        duck.register("batch", batch)
        duck.execute(f"INSERT INTO {table} SELECT * FROM batch")
        duck.unregister("batch")
        count += len(part)
    return count


def by_duckdb(conn: Connection, scope: Scope) -> Computed:
    import duckdb

    duck = duckdb.connect()
    start = time.perf_counter()
    duck_load(duck, conn, "jobs", job_rows(scope), JOB_TYPES)
    duck_load(duck, conn, "flows", flow_rows(scope), FLOW_TYPES)
    load_s = time.perf_counter() - start
    jobs = typed(JobTotals, duck.execute(DUCK_JOBS).fetchall())
    flows = typed(WorkflowTotals, duck.execute(DUCK_FLOWS).fetchall())
    duck.close()
    return Computed(*assemble(scope, jobs, flows), load_s)


# -- engine 3: Polars ----------------------------------------------------------------------------------


def polars_load(conn: Connection, query: Select[Any], types: dict[str, str]) -> Any:
    import polars as pl

    schema = {
        c: {"VARCHAR": pl.String, "DOUBLE": pl.Float64, "BIGINT": pl.Int64}[t] for c, t in types.items()
    }
    frames = list(pl.read_database(query, conn, iter_batches=True, batch_size=BATCH, schema_overrides=schema))
    return pl.concat(frames) if frames else pl.DataFrame(schema=schema)


def by_polars(conn: Connection, scope: Scope) -> Computed:
    import polars as pl

    start = time.perf_counter()
    jobs = polars_load(conn, job_rows(scope), JOB_TYPES)
    flows = polars_load(conn, flow_rows(scope), FLOW_TYPES)
    load_s = time.perf_counter() - start
    c = pl.col

    def total(value: pl.Expr) -> pl.Expr:
        """SQL's sum: null when no value (Polars sums nothing to 0)."""
        return pl.when(value.count() > 0).then(value.sum())

    ok = c("status") == "success"
    job_aggs = jobs.group_by("endpoint", "workflow", "job").agg(
        pl.len().alias("runs"),
        ok.sum().alias("ok"),
        c("status").is_in(list(JOB_FAILED)).sum().alias("failed"),
        total(c("queue_time")).alias("queue_total"),
        c("duration").filter(ok).quantile(0.5, "linear").alias("d50"),
        c("duration").filter(ok).quantile(0.95, "linear").alias("d95"),
        c("queue_time").quantile(0.5, "linear").alias("q50"),
        c("queue_time").quantile(0.95, "linear").alias("q95"),
    )
    failed = c("status").is_in(list(WORKFLOW_FAILED))
    first = c("rerun_index") == 0
    timed = c("status").is_in(list(COMPLETED)) & c("duration").is_not_null()
    execution = pl.concat_str(c("pipeline_id"), pl.lit(":"), c("name"))
    duration = c("duration").filter(timed)
    keys = ["endpoint", "name"]
    runs = flows.group_by(keys).agg(
        pl.len().alias("runs"),
        ok.sum().alias("ok"),
        failed.sum().alias("failed"),
        (c("status") == "canceled").sum().alias("canceled"),
        (c("rerun_index") > 0).sum().alias("reruns"),
        execution.n_unique().alias("executions"),
        execution.filter(c("rerun_index") > 0).n_unique().alias("rerun_executions"),
        (first & ok).sum().alias("first_ok"),
        (first & (c("status") != "canceled")).sum().alias("first_runs"),
        total(c("duration").filter(failed)).alias("lost_failed"),
        total(c("duration").filter(c("rerun_index") > 0)).alias("lost_reruns"),
        total(c("approval_wait")).alias("wait_total"),
        timed.sum().alias("timed"),
        duration.min().alias("d_min"),
        duration.mean().alias("d_mean"),
        duration.max().alias("d_max"),
        duration.std(ddof=0).alias("d_stddev"),
        duration.quantile(0.5, "linear").alias("d_p50"),
        duration.quantile(0.95, "linear").alias("d_p95"),
        c("active_duration").filter(timed).quantile(0.5, "linear").alias("active_p50"),
        c("approval_wait").quantile(0.5, "linear").alias("wait_p50"),
    )
    queue = jobs.group_by(c("endpoint"), c("workflow").alias("name")).agg(
        c("queue_time").quantile(0.5, "linear").alias("queue_p50")
    )
    green = ok.cast(pl.Int64)
    finished = (
        flows.filter(c("status").is_in(FINISHED) & c("stopped").is_not_null())
        .sort("endpoint", "name", "branch", "stopped", "id", nulls_last=False)
        .with_columns((green.cum_sum().over("endpoint", "name", "branch") - green).alias("greens"))
    )
    spells = finished.group_by("endpoint", "name", "branch", "greens").agg(
        (c("stopped").filter(ok).max() - c("stopped").filter(~ok).min()).alias("seconds")
    )
    mttr = (
        spells.drop_nulls("seconds")
        .group_by(keys)
        .agg(
            pl.len().alias("recoveries"),
            c("seconds").mean().alias("mttr_mean"),
            c("seconds").quantile(0.5, "linear").alias("mttr_median"),
        )
    )
    table = (
        runs.join(queue, on=keys, how="left")
        .join(mttr, on=keys, how="left")
        .with_columns(c("recoveries").fill_null(0))
    )
    job_list, flow_list = typed(JobTotals, job_aggs.iter_rows()), typed(WorkflowTotals, table.iter_rows())
    return Computed(*assemble(scope, job_list, flow_list), load_s)


# -- measuring, in a child process -------------------------------------------------------------------

COMPUTE: dict[str, Callable[[Connection, Scope], Computed]] = {
    "sql": by_sql,
    "duckdb": by_duckdb,
    "polars": by_polars,
}


def cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def measure(engine: str, url: str, which: str) -> dict[str, Any]:
    """One engine over one scope: figures and the metrics it computed (as plain data)."""
    if engine != "sql":
        __import__(engine)  # import time is not the engine's work
    rss_before = peak_mb()
    start, cpu = time.perf_counter(), cpu_s()
    store = open_store(url, create=False)
    with store.snapshot() as conn:
        scope = scope_of(conn, which)
        computed = COMPUTE[engine](conn, scope)
    store.close()
    return {
        "wall_s": round(time.perf_counter() - start, 2),
        "cpu_s": round(cpu_s() - cpu, 2),
        "peak_rss_mb": round(peak_mb(), 1),
        "rss_after_imports_mb": round(rss_before, 1),
        "load_s": None if computed.load_s is None else round(computed.load_s, 2),
        "jobs": [asdict(j) for j in computed.jobs],
        "workflows": [asdict(w) for w in computed.workflows],
    }


class ChildFailed(Exception):
    """A measurement could not run (its message is the child's error)."""


def child(engine: str, url: str, which: str) -> dict[str, Any]:
    args = [sys.executable, __file__, "--child", engine, url, which]
    done = subprocess.run(args, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise ChildFailed(f"{engine} over {url} ({which}): {done.stderr.strip()[-3000:]}")
    result: dict[str, Any] = json.loads(done.stdout)
    return result


# -- agreement -----------------------------------------------------------------------------------------


def differences(path: str, a: Any, b: Any) -> Iterable[str]:
    """Where two results differ: numbers beyond TOLERANCE, anything else at all."""
    if isinstance(a, dict) and isinstance(b, dict) and a.keys() == b.keys():
        for key in a:
            yield from differences(f"{path}.{key}", a[key], b[key])
    elif isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            yield from differences(f"{path}[{i}]", x, y)
    elif isinstance(a, float | int) and isinstance(b, float | int) and not isinstance(a, bool):
        if not math.isclose(a, b, rel_tol=TOLERANCE, abs_tol=TOLERANCE):
            yield f"{path}: {a!r} != {b!r}"
    elif a != b:
        yield f"{path}: {str(a)[:80]} != {str(b)[:80]}"


def disagreements(results: dict[str, dict[str, Any]]) -> list[str]:
    reference = results["sql"]
    found = []
    for engine in ENGINES[1:]:
        for part in ("jobs", "workflows"):
            found += [
                f"{engine} vs sql: {d}" for d in differences(part, results[engine][part], reference[part])
            ]
    return found


# -- the run -------------------------------------------------------------------------------------------


def bench(url: str, which: str, runs: int) -> tuple[list[dict[str, Any]], list[str]]:
    """Every engine `runs` times, taking turns; the medians and the disagreements."""
    samples: dict[str, list[dict[str, Any]]] = {e: [] for e in ENGINES}
    found: list[str] = []
    for _ in range(runs):
        results = {engine: child(engine, url, which) for engine in ENGINES}
        found += disagreements(results)
        for engine, result in results.items():
            samples[engine].append(result)
    lines = []
    for engine, got in samples.items():
        line: dict[str, Any] = {"store": url, "scope": which, "engine": engine}
        for figure in ("wall_s", "cpu_s", "load_s", "peak_rss_mb", "rss_after_imports_mb"):
            values = [r[figure] for r in got if r[figure] is not None]
            line[figure] = statistics.median(values) if values else None
        line["wall_s_runs"] = [r["wall_s"] for r in got]
        line["job_groups"], line["workflows"] = len(got[0]["jobs"]), len(got[0]["workflows"])
        line["window_runs"] = sum(w["runs"] for w in got[0]["workflows"])
        line["window_job_runs"] = sum(j["runs"] for j in got[0]["jobs"])
        lines.append(line)
    return lines, found


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--url", nargs="+", default=[], help="stores to measure (opened read-only)")
    parser.add_argument("--scope", nargs="+", choices=SCOPES, default=list(SCOPES))
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--child", nargs=3, metavar=("ENGINE", "URL", "SCOPE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        try:
            print(json.dumps(measure(*args.child)))
        except StoreError as exc:
            sys.exit(str(exc))
        return
    if not args.url:
        parser.error("give --url of at least one store")
    found: list[str] = []
    table = [
        "| store | scope | engine | wall s | CPU s | of which load s | peak RSS MB |",
        "|" + " --- |" * 7,
    ]
    for url in args.url:
        for which in args.scope:
            try:
                lines, wrong = bench(url, which, args.runs)
            except ChildFailed as exc:
                print(f"bench/engines.py: {exc}", file=sys.stderr)
                sys.exit(2)
            for line in lines:
                print(json.dumps(line), flush=True)
                figures = [line[f] for f in ("wall_s", "cpu_s", "load_s", "peak_rss_mb")]
                table.append(
                    f"| {url} | {which} | {line['engine']} | " + " | ".join(map(str, figures)) + " |"
                )
            found += wrong
    print("\n".join(table))
    if found:
        print(f"DISAGREEMENT: {len(found)} difference(s)", file=sys.stderr)
        for difference in found[:40]:
            print(f"  {difference}", file=sys.stderr)
        sys.exit(1)
    print("the three engines agree on every job and workflow metric", file=sys.stderr)


if __name__ == "__main__":
    main()
