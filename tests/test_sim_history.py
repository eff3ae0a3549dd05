"""The simulator's history shapes the rerun signals depend on: job numbering, busy projects, late
reruns and reruns that wait for an approval."""

from __future__ import annotations

from itertools import pairwise

from circleci_ds.dev.simulator import SimConfig, SimProject, Simulator
from circleci_ds.dev.simulator.history import DAY, MINUTE
from circleci_ds.dev.simulator.render import render_job


def _sim() -> Simulator:
    projects = [SimProject("gh/acme/api", pipelines=300, every_minutes=10)]
    shape = {"span_days": 3.0, "rerun_rate": 1.0, "late_rerun_days": 8.0, "gated_rerun_rate": 0.5}
    return Simulator(SimConfig(seed=9, projects=projects, **shape))


def test_job_numbers_follow_the_order_jobs_leave_blocked() -> None:
    project = _sim().history.projects["gh/acme/api"]
    numbered = sorted(project.jobs_by_number.items())
    times = [job.run.queued_at for _, job in numbered]
    assert all(t is not None for t in times)
    assert times == sorted(times)  # type: ignore[type-var]
    numbers = [n for n, _ in numbered]
    assert numbers == list(range(numbers[0], numbers[0] + len(numbers)))  # no gaps


def test_job_numbers_of_late_reruns_are_above_every_job_started_before() -> None:
    project = _sim().history.projects["gh/acme/api"]
    late = [
        w for p in project.index.pipelines for w in p.workflows
        if w.rerun_of and w.created_at - p.created_at > 2 * DAY
    ]  # fmt: skip
    assert late
    for rerun in late:
        for job in rerun.jobs:
            if job.number is None:
                continue
            earlier = [n for n, j in project.jobs_by_number.items() if j.run.queued_at < job.run.queued_at]
            assert all(n < job.number for n in earlier)


def test_busy_project_has_a_pipeline_about_every_ten_minutes() -> None:
    created = [p.created_at for p in _sim().history.projects["gh/acme/api"].index.pipelines]
    gaps = [b - a for a, b in pairwise(created)]
    assert len(created) == 300
    assert all(0 < gap <= 14 * MINUTE for gap in gaps)
    assert 9 * MINUTE <= sum(gaps) / len(gaps) <= 11 * MINUTE


def test_reruns_that_wait_have_no_number_until_approved() -> None:
    project = _sim().history.projects["gh/acme/api"]
    gated = [w for p in project.index.pipelines for w in p.workflows if w.jobs[0].spec.name == "hold-rerun"]
    assert gated
    for wf in gated:
        gate = wf.jobs[0]
        assert gate.spec.kind == "approval"
        waiting = gate.run.queued_at
        assert waiting is not None
        for job in wf.jobs[1:]:
            shown = render_job(job, waiting)
            assert "job_number" not in shown and shown["status"] == "blocked"
            assert job.run.queued_at is None or gate.run.approved_at is not None
