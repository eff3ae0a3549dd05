"""Benchmark: the report and the enriched export over synthetic stores of 100,000 and 1,000,000 jobs,
on SQLite and on PostgreSQL.

    python bench/report.py [--jobs 100000 1000000] [--backend sqlite postgresql] [--workdir DIR]
    python bench/report.py --url URL...     (measure stores generated before with --generate URL)

Each store is generated in a child process from the simulator's history (its trees saved in bulk,
raw rows and facts in the same transactions, 500 pipelines each; no HTTP). Each measurement then
runs in a fresh child process, so its peak RSS is its own:
  - report: terminal tables, JSON and the HTML page, each from a fresh connection (default window);
  - refresh: 100 new pipelines saved one by one as the collector saves them (raw + facts);
  - export: `export --kind enriched --format es-bulk` to a file, with its peak RSS.
An existing --workdir store is reused.
"""

from __future__ import annotations

import argparse
import io
import json
import math
import resource
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from circleci_ds.derive.facts import open_store

PROJECTS = 8
JOBS_PER_PIPELINE = 20  # about what the simulator's templates give, to size the history
NATIVE = "bench"
SEED = 7
HERE = Path(__file__).resolve().parent


def slugs() -> list[str]:
    return [f"gh/{NATIVE}/service-{i}" for i in range(PROJECTS)]


def generate(url: str, jobs: int) -> None:
    """Fill a new store with the simulator's history, one project at a time (bounded memory)."""
    from circleci_ds.dev.simulator import SimConfig, SimProject, Simulator
    from circleci_ds.dev.simulator.render import render_project

    pipelines = math.ceil(jobs / JOBS_PER_PIPELINE / PROJECTS)
    store = open_store(url)
    for slug in slugs():
        sim = Simulator(SimConfig(seed=SEED, projects=[SimProject(slug, pipelines=pipelines)], span_days=90))
        sim.advance(7 * 86400)  # past the end of the history: every run has finished
        store.ensure_endpoint(slug, NATIVE, f"https://circleci.com/{slug}")
        project = sim.history.project(slug)
        assert project is not None
        store.save_project_info(slug, render_project(project))
        trees = sim.truth(slug)
        for start in range(0, len(trees), 500):
            store.save_trees(slug, trees[start : start + 500], fetched_at=time.time(), is_final=True)
        del trees, sim
    store.close()


def cpu_s() -> float:
    """CPU seconds of this process so far (user + system): the machine is shared, wall time is noisy."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def measure_report(url: str, workdir: Path) -> dict[str, Any]:
    from rich.console import Console

    from circleci_ds.report import build_report, print_tables, write_html

    figures: dict[str, Any] = {}
    store = open_store(url, create=False)
    with store.snapshot() as conn:
        figures["jobs"] = conn.exec_driver_sql("SELECT count(*) FROM job_runs").scalar()
        figures["workflows"] = conn.exec_driver_sql("SELECT count(*) FROM workflow_runs").scalar()
    store.close()
    for name in ("table", "json", "html"):
        store = open_store(url, create=False)  # a fresh connection each time
        start, cpu = time.perf_counter(), cpu_s()
        report = build_report(store)
        if name == "table":
            print_tables(report, Console(file=io.StringIO(), width=200))
        elif name == "json":
            report.to_json()
        else:
            write_html(report, workdir / "report.html")
        figures[f"report_{name}_s"] = round(time.perf_counter() - start, 2)
        figures[f"report_{name}_cpu_s"] = round(cpu_s() - cpu, 2)
        store.close()
    figures["window_runs"] = sum(p.runs for p in report.projects)
    figures["peak_rss_mb"] = round(peak_mb(), 1)
    return figures


def measure_refresh(url: str) -> dict[str, Any]:
    """Save 100 new pipelines (a project of their own) one by one, raw + facts, as `collect` does."""
    from circleci_ds.derive.facts import derive
    from circleci_ds.dev.simulator import SimConfig, SimProject, Simulator
    from circleci_ds.store.facts_store import write_facts

    slug = f"gh/{NATIVE}/refresh-{time.time_ns()}"
    sim = Simulator(SimConfig(seed=SEED, projects=[SimProject(slug, pipelines=100)], span_days=1))
    sim.advance(7 * 86400)
    trees = sim.truth(slug)
    store = open_store(url)  # a writer, as the collector
    store.ensure_endpoint(slug, NATIVE, f"https://circleci.com/{slug}")
    start, cpu = time.perf_counter(), cpu_s()
    for tree in trees:
        store.save_tree(slug, tree, fetched_at=time.time(), is_final=True)
    saved, saved_cpu = time.perf_counter() - start, cpu_s() - cpu
    # The analytics' share alone: derive the 100 trees' facts again and write them, one transaction.
    start, cpu = time.perf_counter(), cpu_s()
    with store.writing() as conn:
        write_facts(conn, [derive(slug, tree, None).rows() for tree in trees])
    facts_only, facts_cpu = time.perf_counter() - start, cpu_s() - cpu
    store.close()
    return {
        "refresh_100_pipelines_s": round(saved, 2),
        "refresh_100_pipelines_cpu_s": round(saved_cpu, 2),
        "refresh_facts_only_s": round(facts_only, 2),
        "refresh_facts_only_cpu_s": round(facts_cpu, 2),
        "refresh_jobs": sum(len(w["jobs"]) for t in trees for w in t["workflows"]),
    }


def measure_export(url: str, workdir: Path) -> dict[str, Any]:
    from circleci_ds.documents.enriched import enrich_trees
    from circleci_ds.documents.raw import es_bulk

    store = open_store(url, create=False)
    start, cpu = time.perf_counter(), cpu_s()
    lines = 0
    with (workdir / "bulk.ndjson").open("w", encoding="utf-8") as out:
        docs = enrich_trees(store.iter_trees(with_facts=True), store.project_infos())
        for line in es_bulk(docs, raw=False):
            out.write(line)
            out.write("\n")
            lines += 1
    seconds = time.perf_counter() - start
    store.close()
    return {
        "export_docs": lines // 2,
        "export_s": round(seconds, 2),
        "export_cpu_s": round(cpu_s() - cpu, 2),
        "export_peak_rss_mb": round(peak_mb(), 1),
    }


def child(*args: str) -> dict[str, Any]:
    done = subprocess.run([sys.executable, __file__, *args], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(done.stderr[-3000:])
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


@contextmanager
def postgres() -> Iterator[Any]:
    sys.path.insert(0, str(HERE.parent / "tests"))
    from pgserver import PgServer, find_bindir

    with PgServer(find_bindir()) as server:
        yield server


def run_one(url: str, jobs: int, workdir: Path, fresh: bool) -> dict[str, Any]:
    figures: dict[str, Any] = {}
    if fresh:
        start = time.perf_counter()
        child("--generate", url, "--jobs", str(jobs))
        figures["generate_s"] = round(time.perf_counter() - start, 1)
    figures.update(child("--measure", "report", url, "--workdir", str(workdir)))
    figures.update(child("--measure", "export", url, "--workdir", str(workdir)))
    figures.update(child("--measure", "refresh", url, "--workdir", str(workdir)))
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--jobs", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--backend", nargs="+", default=["sqlite", "postgresql"])
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/circleci-ds-bench-report"))
    parser.add_argument("--url", nargs="+", help="measure these existing stores instead (no generation)")
    parser.add_argument("--generate", metavar="URL", help=argparse.SUPPRESS)
    parser.add_argument("--measure", nargs=2, metavar=("WHAT", "URL"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.generate:
        generate(args.generate, args.jobs[0])
        print("{}")
        return
    if args.measure:
        what, url = args.measure
        measure = {"report": measure_report, "export": measure_export}.get(what)
        result = measure(url, args.workdir) if measure else measure_refresh(url)
        print(json.dumps(result))
        return
    args.workdir.mkdir(parents=True, exist_ok=True)
    results = []
    for url in args.url or []:
        figures = run_one(url, 0, args.workdir, False)
        figures.update(backend=url.split(":", 1)[0])
        print(json.dumps(figures), flush=True)
        results.append(figures)
    if args.url:
        return
    for backend in args.backend:
        for jobs in args.jobs:
            if backend == "sqlite":
                db = args.workdir / f"bench-{jobs}.db"
                fresh = not db.exists()
                figures = run_one(f"sqlite:///{db}", jobs, args.workdir, fresh)
            else:
                with postgres() as server:
                    figures = run_one(server.create_database(), jobs, args.workdir, True)
            figures.update(backend=backend, target_jobs=jobs)
            print(json.dumps(figures), flush=True)
            results.append(figures)
    (args.workdir / "results.json").write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
