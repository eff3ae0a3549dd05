"""Metrics against the simulator's ground truth, over random histories (hypothesis).

The store is filled with what the API shows at the simulator's clock; the expected values are
computed here, independently, from the simulator's history objects (event times in milliseconds,
status timelines, `rerun_of` links, the pipeline's own branch), never from the stored data. The
histories have late approvals (up to 40 h), reruns (manual and automatic), pipelines without
`vcs` (some given `trigger_parameters.git.branch`), cancelled, on-hold and running workflows, and
windows that start and end anywhere, cutting through runs.

Only what the API itself truncates is mirrored: workflow and job-list timestamps carry whole
seconds.
"""

from __future__ import annotations

import math
import tempfile
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from circleci_ds.derive.facts import open_store
from circleci_ds.dev.simulator import SimConfig, SimProject, Simulator
from circleci_ds.dev.simulator.history import Pipeline, Workflow
from circleci_ds.dev.simulator.render import render_project
from circleci_ds.metrics.ci import ALL_BRANCHES, MetricsReport
from circleci_ds.report import build_report

SLUGS = ("gh/acme/api", "gh/acme/web")
HOUR = 3600.0


def without_vcs(pipeline: Pipeline) -> bool:
    """The simulator's own vcs-less pipelines, and every fourth one besides (its vcs removed here)."""
    return pipeline.vcs is None or pipeline.number % 4 == 0


def given_branch(pipeline: Pipeline) -> bool:
    """Half the pipelines without vcs carry trigger_parameters.git.branch instead."""
    return without_vcs(pipeline) and pipeline.number % 8 == 0 and pipeline.branch is not None


def expected_ref(pipeline: Pipeline) -> str | None:
    if without_vcs(pipeline):
        return pipeline.branch if given_branch(pipeline) else None
    assert pipeline.vcs is not None
    return pipeline.branch if pipeline.branch is not None else pipeline.vcs.get("tag")


@dataclass
class TruthRun:
    slug: str
    id: str
    name: str
    ref: str | None
    status: str
    created: float
    stopped: float | None
    depth: int  # 0 for a first run, 1 for its rerun...
    auto: bool
    jobs: list[tuple[str, str, bool]]  # (name, status, executed)


def status_at(timeline: list[tuple[int, str]], now: int) -> str:
    current = timeline[0][1]
    for at, status in timeline:
        if at <= now:
            current = status
    return current


def truth_runs(sim: Simulator, now: int) -> list[TruthRun]:
    runs = []
    for slug in SLUGS:
        project = sim.history.project(slug)
        assert project is not None
        for pipeline in project.index.pipelines:
            if pipeline.created_at > now:
                continue
            by_id = {w.id: w for w in pipeline.workflows}
            for w in pipeline.workflows:
                if w.created_at <= now:
                    runs.append(truth_run(slug, pipeline, w, by_id, now))
    return runs


def truth_run(slug: str, pipeline: Pipeline, w: Workflow, by_id: dict[str, Workflow], now: int) -> TruthRun:
    depth, previous = 0, w.rerun_of
    while previous is not None:
        depth, previous = depth + 1, by_id[previous].rerun_of
    stopped = w.run.stopped_at
    jobs = [
        (
            job.spec.name,
            status_at(job.run.timeline, now),
            job.spec.kind == "build" and job.run.started_at is not None and job.run.started_at <= now,
        )
        for job in w.jobs
    ]
    return TruthRun(
        slug=slug,
        id=w.id,
        name=w.name,
        ref=expected_ref(pipeline),
        status=status_at(w.run.timeline, now),
        created=float(w.created_at // 1000),
        stopped=float(stopped // 1000) if stopped is not None and stopped <= now else None,
        depth=depth,
        auto=w.auto_rerun_number is not None,
        jobs=jobs,
    )


def quantile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q
    below = int(rank)
    above = min(below + 1, len(ordered) - 1)
    return ordered[below] * (1 - (rank - below)) + ordered[above] * (rank - below)


def finished_by_branch(runs: list[TruthRun]) -> list[list[TruthRun]]:
    """Finished successful or failed runs of each branch, in finish order (ties by id)."""
    by_ref: dict[str | None, list[TruthRun]] = defaultdict(list)
    for run in runs:
        if run.stopped is not None and run.status in ("success", "failed", "error"):
            by_ref[run.ref].append(run)
    return [sorted(group, key=lambda r: (r.stopped or 0.0, r.id)) for group in by_ref.values()]


def recovery_seconds(runs: list[TruthRun]) -> list[float]:
    """Per branch, in finish order: first failure after green to the next success."""
    out = []
    for group in finished_by_branch(runs):
        red: float | None = None
        for run in group:
            if run.status != "success" and red is None:
                red = run.stopped
            elif run.status == "success" and red is not None and run.stopped is not None:
                out.append(run.stopped - red)
                red = None
    return out


def green_seconds(runs: list[TruthRun]) -> list[float]:
    """Per branch, in finish order: first failure while all green to the success that clears the last red."""
    out = []
    for group in finished_by_branch(runs):
        failing: set[str] = set()
        since = 0.0
        for run in group:
            if run.status != "success":
                if not failing:
                    since = run.stopped or 0.0
                failing.add(run.name)
            elif run.name in failing:
                failing.remove(run.name)
                if not failing:
                    out.append((run.stopped or 0.0) - since)
    return out


def fill_store(sim: Simulator, url: str) -> None:
    store = open_store(url)
    try:
        for slug in SLUGS:
            store.ensure_endpoint(slug, "acme", f"https://circleci.com/{slug}")
            project = sim.history.project(slug)
            assert project is not None
            store.save_project_info(slug, render_project(project))
            trees = sim.truth(slug)
            for tree in trees:
                pipeline = sim.history.pipelines[tree["id"]]
                if without_vcs(pipeline):
                    tree.pop("vcs", None)
                if given_branch(pipeline):
                    tree["trigger_parameters"] = {"git": {"branch": pipeline.branch}}
            store.save_trees(slug, trees, fetched_at=1.0, is_final=True)
    finally:
        store.close()


HISTORIES = st.fixed_dictionaries(
    {
        "seed": st.integers(0, 10_000),
        "pipelines": st.integers(5, 80),
        "advance_h": st.floats(0, 72),
        "start_h": st.floats(-11 * 24, 0),
        "length_h": st.floats(1, 14 * 24),
        "all_branches": st.booleans(),
    }
)


def check(report: MetricsReport, runs: list[TruthRun], branch_of_project: dict[str, str | None]) -> None:
    by_workflow: dict[tuple[str, str], list[TruthRun]] = defaultdict(list)
    for run in runs:
        by_workflow[(run.slug, run.name)].append(run)
    got = {(w.project_slug, w.workflow): w for w in report.workflows}
    assert set(got) == set(by_workflow)
    for key, group in by_workflow.items():
        w = got[key]
        ok = sum(r.status == "success" for r in group)
        canceled = sum(r.status == "canceled" for r in group)
        assert (w.runs, w.successful_runs, w.canceled_runs) == (len(group), ok, canceled), key
        counted = len(group) - canceled
        assert w.success_rate == (pytest.approx(ok / counted) if counted else None)
        timed = [
            r.stopped - r.created
            for r in group
            if r.stopped is not None and r.status in ("success", "failed", "error", "canceled")
        ]
        assert w.duration.count == len(timed)
        for got_value, want in (
            (w.duration.median, quantile(timed, 0.5)),
            (w.duration.p95, quantile(timed, 0.95)),
        ):
            assert got_value == (pytest.approx(want) if want is not None else None), key
        recoveries = recovery_seconds(group)
        assert w.recoveries == len(recoveries)
        assert all(r >= 0 for r in recoveries)
        assert w.mttr_mean == (pytest.approx(sum(recoveries) / len(recoveries)) if recoveries else None)
        first = [r for r in group if r.depth == 0]
        first_ok = sum(r.status == "success" for r in first)
        first_den = sum(r.status != "canceled" for r in first)
        assert w.first_pass_success_rate == (pytest.approx(first_ok / first_den) if first_den else None)
        assert w.reruns == sum(r.depth > 0 for r in group)
    causes = {(c.project_slug, c.workflow, c.kind): c.reruns for c in report.rerun_causes}
    for (slug, name), group in by_workflow.items():
        assert causes.get((slug, name, "auto"), 0) == sum(r.auto and r.depth > 0 for r in group)
    job_runs: dict[tuple[str, str, str], list[str]] = defaultdict(list)
    for run in runs:
        for name, status, executed in run.jobs:
            if executed:
                job_runs[(run.slug, run.name, name)].append(status)
    got_jobs = {(j.project_slug, j.workflow, j.job): j for j in report.jobs}
    assert set(got_jobs) == set(job_runs)
    for key, statuses in job_runs.items():
        failed = sum(s in ("failed", "infrastructure_fail", "timedout") for s in statuses)
        assert (got_jobs[key].runs, got_jobs[key].failed_runs) == (len(statuses), failed), key
    by_project: dict[str, list[TruthRun]] = defaultdict(list)
    for run in runs:
        by_project[run.slug].append(run)
    assert {p.project_slug for p in report.projects} == set(by_project)
    for project in report.projects:
        assert project.branch == branch_of_project[project.project_slug]
        group = by_project[project.project_slug]
        assert project.runs_without_branch == sum(r.ref is None for r in group)
        greens = green_seconds(group)
        assert project.time_to_green_mean == (pytest.approx(sum(greens) / len(greens)) if greens else None)


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(HISTORIES)
def test_metrics_match_the_simulators_truth(params: dict[str, Any]) -> None:
    config = SimConfig(
        seed=params["seed"],
        projects=[SimProject(slug, pipelines=params["pipelines"]) for slug in SLUGS],
        span_days=10,
        future_days=2,
    )
    sim = Simulator(config)
    sim.advance(params["advance_h"] * HOUR)
    now = round(sim.now.timestamp() * 1000)
    since = config.start.timestamp() + params["start_h"] * HOUR
    until = since + params["length_h"] * HOUR
    branch = ALL_BRANCHES if params["all_branches"] else None
    with tempfile.TemporaryDirectory() as tmp:
        url = f"sqlite:///{Path(tmp) / 'truth.db'}"
        fill_store(sim, url)
        store = open_store(url, create=False)
        try:
            report = build_report(store, since=since, until=until, branch=branch, now=now / 1000)
        finally:
            store.close()
    wanted = [
        r
        for r in truth_runs(sim, now)
        if since <= r.created < until and (branch == ALL_BRANCHES or r.ref == "main")
    ]
    check(report, wanted, dict.fromkeys(SLUGS, None if branch else "main"))
    assert report.until is not None and math.isclose(until, datetime_of(report.until), abs_tol=0.001)


def datetime_of(text: str) -> float:
    from circleci_ds.times import parse_ts

    value = parse_ts(text)
    assert value is not None
    return value
