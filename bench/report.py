"""Benchmark: enrichment and the report over a synthetic SQLite store of ~100,000 jobs.

    python bench/report.py [--jobs 100000] [--db PATH] [--seed 7]

The store is filled from the simulator's history (in a child process, so that its memory does
not count); this process then times, from a fresh connection:
  - reading the trees back (the store's share of the work),
  - the report: enrichment, metrics, terminal tables and the HTML page,
  - the enriched export as es-bulk NDJSON,
and prints wall times, documents per second and the peak RSS. An existing --db is reused.
"""

from __future__ import annotations

import argparse
import io
import math
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from rich.console import Console

from circleci_ds.enrich import enrich_trees
from circleci_ds.export import es_bulk
from circleci_ds.report import run_report
from circleci_ds.store import Store

PROJECTS = 4
JOBS_PER_PIPELINE = 20  # about what the simulator's templates give, to size the history
NATIVE = "bench"


def generate(db: Path, jobs: int, seed: int) -> None:
    """Fill a new store with the simulator's history of PROJECTS projects."""
    from circleci_ds.simulator import SimConfig, SimProject, Simulator
    from circleci_ds.simulator.render import render_project

    pipelines = math.ceil(jobs / JOBS_PER_PIPELINE / PROJECTS)
    slugs = [f"gh/{NATIVE}/service-{i}" for i in range(PROJECTS)]
    config = SimConfig(seed=seed, projects=[SimProject(s, pipelines=pipelines) for s in slugs], span_days=90)
    sim = Simulator(config)
    sim.advance(7 * 86400)  # past the end of the history: every run has finished
    store = Store.open(f"sqlite:///{db}")
    fetched = time.time()
    for slug in slugs:
        store.ensure_endpoint(slug, NATIVE, f"https://circleci.com/{slug}")
        project = sim.history.project(slug)
        if project is not None:
            store.save_project_info(slug, render_project(project))
        for tree in sim.truth(slug):
            store.save_tree(slug, tree, fetched_at=fetched, is_final=True)
    store.close()


def timed(label: str, action: Callable[[], Any]) -> tuple[float, Any]:
    start = time.perf_counter()
    result = action()
    seconds = time.perf_counter() - start
    print(f"{label:<34} {seconds:8.2f} s")
    return seconds, result


def count_store(store: Store) -> tuple[int, int, int]:
    pipelines = workflows = jobs = 0
    for tree in store.iter_trees():
        pipelines += 1
        for workflow in tree.data.get("workflows") or []:
            workflows += 1
            jobs += len(workflow.get("jobs") or [])
    return pipelines, workflows, jobs


def export(store: Store, path: Path) -> int:
    docs = 0
    with path.open("w", encoding="utf-8") as out:
        for line in es_bulk(enrich_trees(store.iter_trees(), store.project_infos()), raw=False):
            out.write(line)
            out.write("\n")
            docs += 1
    return docs // 2


def report(store: Store, html: Path) -> None:
    console = Console(file=io.StringIO(), width=200)
    run_report(
        store, project=None, since=None, until=None, branch=None, fmt="table", html_path=html, console=console
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--jobs", type=int, default=100_000, help="about how many jobs to generate")
    parser.add_argument("--db", type=Path, help="store to use (generated when missing)")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--generate-only", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="circleci-ds-bench-"))
    db = args.db or workdir / "bench.db"
    if args.generate_only:
        generate(db, args.jobs, args.seed)
        return
    if not db.exists():
        command = [sys.executable, __file__, "--generate-only", "--db", str(db), "--jobs", str(args.jobs)]
        timed(
            "generate store (child process)",
            lambda: subprocess.run([*command, "--seed", str(args.seed)], check=True),
        )
    store = Store.open(f"sqlite:///{db}", create=False)
    _, (pipelines, workflows, jobs) = timed("read trees back (store only)", lambda: count_store(store))
    size = db.stat().st_size / 1e6
    print(f"store: {pipelines:,} pipelines, {workflows:,} workflows, {jobs:,} jobs ({size:.0f} MB)")
    html = workdir / "report.html"
    report_seconds, _ = timed("report: enrich + metrics + HTML", lambda: report(store, html))
    export_seconds, docs = timed(
        "export: enrich + es-bulk NDJSON", lambda: export(store, workdir / "bulk.ndjson")
    )
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"documents: {docs:,}; HTML {html.stat().st_size / 1e6:.1f} MB")
    print(f"report: {report_seconds:.2f} s wall, {docs / report_seconds:,.0f} docs/s")
    print(f"export: {export_seconds:.2f} s wall, {docs / export_seconds:,.0f} docs/s")
    print(f"peak RSS: {peak_mb:,.0f} MB")
    print(f"files in {workdir}")


if __name__ == "__main__":
    main()
