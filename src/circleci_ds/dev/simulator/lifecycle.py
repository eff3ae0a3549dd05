"""Event times of one workflow run: how its jobs move through blocked/queued/running/final states.

All times are integer milliseconds since the epoch. A run is computed once; what the API shows at a
given clock is read off the resulting timelines.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

FAILURES = frozenset({"failed", "infrastructure_fail", "timedout"})
FINAL_JOB_STATES = FAILURES | {"success", "canceled", "not_run"}
SECOND = 1000
MINUTE = 60 * SECOND
HOUR = 60 * MINUTE

Timeline = list[tuple[int, str]]


@dataclass(frozen=True, slots=True)
class JobSpec:
    """A job as declared in a workflow's config."""

    name: str
    kind: str  # "build" | "approval"
    deps: tuple[int, ...]  # indices of earlier jobs of the same workflow
    executor: str = "docker"
    resource_class: str = "medium"
    parallelism: int = 1
    contexts: tuple[str, ...] = ()
    fail_rate: float = 0.0
    duration_s: float = 60.0


@dataclass(frozen=True, slots=True)
class WorkflowTemplate:
    """A workflow as declared in a project's config; every pipeline instantiates it afresh."""

    name: str
    jobs: tuple[JobSpec, ...]
    max_auto_reruns: int | None = None


@dataclass(frozen=True, slots=True)
class RunOptions:
    """How a particular run should unfold beyond what the dice decide."""

    fail_scale: float = 1.0
    never_approve: bool = False
    cancel: bool = False
    not_run: bool = False


@dataclass(slots=True)
class JobRun:
    """Status changes and timestamps of one job; `queued_at` is the on-hold time for approvals."""

    timeline: Timeline
    queued_at: int | None = None
    started_at: int | None = None
    stopped_at: int | None = None
    approved_at: int | None = None


@dataclass(slots=True)
class WorkflowRun:
    """Job runs plus the workflow status timeline; `stopped_at` is None for runs that never end."""

    jobs: list[JobRun]
    timeline: Timeline
    stopped_at: int | None
    canceled_at: int | None = None

    @property
    def final(self) -> str | None:
        return self.timeline[-1][1] if self.stopped_at is not None else None


@dataclass(slots=True)
class _Plan:
    """A job's natural course, before any cancellation."""

    final: str  # a FINAL_JOB_STATES member, "on_hold" (never approved) or "pending" (blocked forever)
    queued: int | None = None
    started: int | None = None
    end: int | None = None


def simulate_run(tpl: WorkflowTemplate, created: int, rng: random.Random, opts: RunOptions) -> WorkflowRun:
    """Roll the dice for every job of `tpl` in a run created at `created`."""
    if opts.not_run:
        return _not_run(tpl, created)
    plans = _plan_jobs(tpl, created, rng, opts)
    stop = _natural_stop(plans)
    cancel_at = _cancel_time(created, stop, rng) if opts.cancel else None
    if cancel_at is not None:
        stop = cancel_at
    pairs = zip(tpl.jobs, plans, strict=True)
    jobs = [_job_run(spec.kind, plan, created, stop, cancel_at) for spec, plan in pairs]
    final = _final_status(jobs, cancel_at)
    timeline = _workflow_timeline(tpl, jobs, created, stop, final)
    return WorkflowRun(jobs=jobs, timeline=timeline, stopped_at=stop, canceled_at=cancel_at)


def _not_run(tpl: WorkflowTemplate, created: int) -> WorkflowRun:
    # A workflow skipped as a whole (e.g. by filters): everything not_run from the start.
    jobs = [JobRun(timeline=[(created, "not_run")]) for _ in tpl.jobs]
    return WorkflowRun(jobs=jobs, timeline=[(created, "not_run")], stopped_at=created)


def _plan_jobs(tpl: WorkflowTemplate, created: int, rng: random.Random, opts: RunOptions) -> list[_Plan]:
    plans: list[_Plan] = []
    for spec in tpl.jobs:
        deps = [plans[d] for d in spec.deps]
        if any(d.final in FAILURES or d.final == "not_run" for d in deps):
            plans.append(_Plan("not_run"))
        elif any(d.end is None for d in deps):
            plans.append(_Plan("pending"))
        else:
            ends = [d.end for d in deps if d.end is not None]
            ready = max(ends) if ends else created + rng.randint(500, 3000)
            plans.append(_plan_one(spec, ready, rng, opts))
    return plans


def _plan_one(spec: JobSpec, ready: int, rng: random.Random, opts: RunOptions) -> _Plan:
    if spec.kind == "approval":
        if opts.never_approve:
            return _Plan("on_hold", queued=ready)
        # Most approvals come within hours; some wait overnight or over a weekend.
        delay = rng.randint(2 * MINUTE, 6 * HOUR) if rng.random() < 0.8 else rng.randint(6 * HOUR, 40 * HOUR)
        return _Plan("success", queued=ready, started=ready, end=ready + delay)
    queued = ready + rng.randint(200, 4 * SECOND)
    wait = rng.randint(500, 20 * SECOND) if rng.random() < 0.95 else rng.randint(MINUTE, 10 * MINUTE)
    started = queued + wait
    final = _outcome(spec.fail_rate * opts.fail_scale if not opts.never_approve else 0.0, rng)
    return _Plan(final, queued=queued, started=started, end=started + _duration(spec, final, rng))


def _outcome(fail_rate: float, rng: random.Random) -> str:
    if rng.random() >= fail_rate:
        return "success"
    roll = rng.random()
    if roll < 0.8:
        return "failed"
    return "infrastructure_fail" if roll < 0.9 else "timedout"


def _duration(spec: JobSpec, final: str, rng: random.Random) -> int:
    if final == "timedout":
        return rng.randint(10 * MINUTE, 60 * MINUTE)
    ms = int(spec.duration_s * SECOND * rng.lognormvariate(0.0, 0.35))
    if final in FAILURES:
        ms = int(ms * rng.uniform(0.2, 1.0))  # failures usually cut a job short
    return max(ms, 1500)


def _natural_stop(plans: list[_Plan]) -> int | None:
    if any(p.final in ("on_hold", "pending") for p in plans):
        return None
    return max(p.end for p in plans if p.end is not None)


def _cancel_time(created: int, stop: int | None, rng: random.Random) -> int | None:
    if stop is None or stop - created < 10 * SECOND:
        return None
    return rng.randint(created + 5 * SECOND, stop - SECOND)


def _transitions(kind: str, plan: _Plan, stop: int | None) -> Timeline:
    if plan.final == "not_run":
        return [(stop, "not_run")] if stop is not None else []
    if plan.queued is None:
        return []
    if kind == "approval":
        steps = [(plan.queued, "on_hold")]
        return [*steps, (plan.end, "success")] if plan.end is not None else steps
    assert plan.started is not None and plan.end is not None
    return [(plan.queued, "queued"), (plan.started, "running"), (plan.end, plan.final)]


def _job_run(kind: str, plan: _Plan, created: int, stop: int | None, cancel_at: int | None) -> JobRun:
    timeline: Timeline = [(created, "blocked")]
    for at, status in _transitions(kind, plan, stop):
        if cancel_at is None or at <= cancel_at:
            _append(timeline, at, status)
    if cancel_at is not None and timeline[-1][1] not in FINAL_JOB_STATES:
        _append(timeline, cancel_at, "canceled")
    return _job_run_from(kind, timeline)


def _append(timeline: Timeline, at: int, status: str) -> None:
    if timeline[-1][0] == at:
        timeline[-1] = (at, status)
    else:
        timeline.append((at, status))


def _job_run_from(kind: str, timeline: Timeline) -> JobRun:
    times = {status: at for at, status in timeline}
    queued = times.get("on_hold" if kind == "approval" else "queued")
    started = queued if kind == "approval" else times.get("running")
    last_at, last = timeline[-1]
    finished = last in FINAL_JOB_STATES and queued is not None
    approved = times.get("success") if kind == "approval" else None
    return JobRun(timeline, queued, started, last_at if finished else None, approved)


def _final_status(jobs: list[JobRun], cancel_at: int | None) -> str:
    if cancel_at is not None:
        return "canceled"
    finals = {job.timeline[-1][1] for job in jobs}
    if "infrastructure_fail" in finals:
        return "error"
    return "failed" if finals & FAILURES else "success"


def _category(kind: str, status: str) -> int | None:
    """Index into the sweep counters: 0 failed, 1 on hold, 2 active (queued or running)."""
    if status in FAILURES:
        return 0
    if status == "on_hold":
        return 1
    if kind == "build" and status in ("queued", "running"):
        return 2
    return None


def _workflow_timeline(
    tpl: WorkflowTemplate, jobs: list[JobRun], created: int, stop: int | None, final: str
) -> Timeline:
    deltas: dict[int, list[int]] = {}
    for spec, job in zip(tpl.jobs, jobs, strict=True):
        previous: int | None = None
        for at, status in job.timeline:
            category = _category(spec.kind, status)
            if category != previous:
                change = deltas.setdefault(at, [0, 0, 0])
                if previous is not None:
                    change[previous] -= 1
                if category is not None:
                    change[category] += 1
                previous = category
    timeline: Timeline = [(created, "running")]
    counts = [0, 0, 0]
    for at in sorted(deltas):
        if stop is not None and at >= stop:
            break
        counts = [c + d for c, d in zip(counts, deltas[at], strict=True)]
        _append_status(timeline, at, _running_status(counts))
    if stop is not None:
        _append(timeline, stop, final)
    return timeline


def _running_status(counts: list[int]) -> str:
    failed, on_hold, active = counts
    if failed:
        return "failing"
    return "on_hold" if on_hold and not active else "running"


def _append_status(timeline: Timeline, at: int, status: str) -> None:
    if timeline[-1][1] != status:
        _append(timeline, at, status)
