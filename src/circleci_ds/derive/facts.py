"""Facts: analysis-ready rows derived from one raw pipeline tree, by pure functions (no I/O).

The store writes these rows beside the raw JSON in the same transaction (so they never disagree),
the metrics query them, and the enriched export takes its derived values from them.

Rules:
- Branch: the first of `vcs.branch`, `vcs.tag`, `trigger_parameters.git.branch`,
  `trigger_parameters.git.tag` that is a non-empty text; `branch_source` names it; null when none
  has one (such runs are reported as "no branch", never dropped).
- Rerun index: 0 for the first run of a workflow name in its pipeline (by created_at; undated runs
  last, ties in the API's order), 1 for its first rerun, ...; `rerun_of` is the run it repeats.
  A rerun's kind: `auto` (CircleCI's automatic rerun, `auto_rerun_number`), `from_failed` (it
  executed fewer jobs than the run it repeats), else `whole`.
- Workflow duration: stopped_at - created_at (wall clock, approval waits included, as Insights);
  `active_duration` leaves approval waits out. Unknown or negative gives null.
- A job is executed when it is not an approval and it started (a start time, or a status only a
  started job can have); not_run, blocked, on-hold and never-started cancelled jobs are not.
- Job duration (`job_seconds`, the one rule of the facts, the enriched and the da-ds documents):
  job-details `duration` (ms) when it is a finite number >= 0 and either positive or the job
  started (a never-started job reports 0: unknown, not instant); else stopped - started; negative
  gives null (a negative `duration` is never used); approvals have none.
- Queue time: started - queued (job details); negative gives null.
- Resources: job details' `executor.resource_class` (text) and `parallelism` (a positive integer);
  null without details.
- Approval wait: from when an approval job went on hold (its start, else the latest stop of the
  jobs it depends on, else its workflow's creation) to its approval; null until approved.
- Timestamps that cannot be read are null here and counted in `PipelineFact.bad_times`.
- People: the user ids a tree names (`started_by`, `canceled_by`, `errored_by` of workflows,
  `approved_by` and the others on jobs); values that are not UUIDs are ignored.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, fields
from typing import Any

from circleci_ds.store import Deriver, FactRows, Store, StoredTree
from circleci_ds.times import TimeReader, duration_ms, parse_ts, seconds_between

WORKFLOW_FAILED = frozenset({"failed", "error"})
JOB_FAILED = frozenset({"failed", "infrastructure_fail", "timedout", "terminated-unknown"})
_STARTED_STATUSES = frozenset({"success", "running", *JOB_FAILED})
BRANCH_SOURCES = ("vcs.branch", "vcs.tag", "trigger_parameters.git.branch", "trigger_parameters.git.tag")


@dataclass(frozen=True, slots=True)
class PipelineFact:
    id: str
    endpoint: str
    number: int | None
    created: float | None
    triggered: float | None  # trigger.received_at, else created
    branch: str | None
    branch_source: str | None
    is_default_branch: bool | None
    commit: str | None
    subject: str | None
    author: str | None
    trigger_type: str | None
    state: str | None
    bad_times: int  # timestamps present in the tree that could not be read


@dataclass(frozen=True, slots=True)
class WorkflowFact:
    id: str
    pipeline_id: str
    endpoint: str
    pipeline_number: int | None
    name: str
    status: str
    branch: str | None
    is_default_branch: bool | None
    commit: str | None
    triggered: float | None
    created: float | None
    stopped: float | None
    duration: float | None
    active_duration: float | None
    approval_wait: float | None
    rerun_index: int
    rerun_of: str | None
    rerun_kind: str | None  # auto | from_failed | whole; None for first runs
    jobs: int
    executed_jobs: int
    failed_jobs: int


@dataclass(frozen=True, slots=True)
class JobFact:
    workflow_id: str
    id: str
    pipeline_id: str
    endpoint: str
    workflow_name: str
    name: str
    type: str | None
    status: str
    number: int | None
    executed: bool
    branch: str | None
    is_default_branch: bool | None
    commit: str | None
    workflow_created: float | None  # jobs follow their workflow run into a window
    queued: float | None
    started: float | None
    stopped: float | None
    duration: float | None
    queue_time: float | None
    approval_wait: float | None
    dependencies: str  # JSON list of job ids
    resource_class: str | None = None  # job details executor.resource_class
    parallelism: int | None = None  # job details parallelism (positive)


@dataclass(frozen=True, slots=True)
class TreeFacts:
    pipeline: PipelineFact
    workflows: list[WorkflowFact]
    jobs: list[JobFact]

    def rows(self) -> FactRows:
        """The facts as the store's table rows."""
        return FactRows(row(self.pipeline), [row(w) for w in self.workflows], [row(j) for j in self.jobs])

    @classmethod
    def from_rows(cls, rows: FactRows) -> TreeFacts:
        return cls(
            PipelineFact(**rows.pipeline),
            [WorkflowFact(**w) for w in rows.workflows],
            [JobFact(**j) for j in rows.jobs],
        )


def row(fact: PipelineFact | WorkflowFact | JobFact) -> dict[str, Any]:
    """The fact as a table row (column names are the field names); shallow, as every value is plain."""
    return {name: getattr(fact, name) for name in _FIELD_NAMES[type(fact).__name__]}


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


_FIELD_NAMES = {
    kind.__name__: tuple(f.name for f in fields(kind)) for kind in (PipelineFact, WorkflowFact, JobFact)
}


USER_FIELDS = ("started_by", "canceled_by", "errored_by", "approved_by")
_UUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}\Z")


def user_ids_in(obj: dict[str, Any]) -> set[str]:
    """The user ids a workflow or job names; values that are not UUIDs are ignored."""
    return {v for k in USER_FIELDS if isinstance(v := obj.get(k), str) and _UUID.match(v)}


def people_in(tree: dict[str, Any]) -> set[str]:
    """Every user id the tree's workflows and jobs name."""
    found: set[str] = set()
    for workflow in as_list(tree.get("workflows")):
        if isinstance(workflow, dict):
            found |= user_ids_in(workflow)
            found.update(*(user_ids_in(j) for j in as_list(workflow.get("jobs")) if isinstance(j, dict)))
    return found


def as_dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and abs(value) < 2**62 else None


def branch_of(pipeline: dict[str, Any]) -> tuple[str | None, str | None]:
    """(branch, the field it came from); see the module rules."""
    vcs = as_dict(pipeline.get("vcs"))
    git = as_dict(as_dict(pipeline.get("trigger_parameters")).get("git"))
    for source, value in zip(
        BRANCH_SOURCES, (vcs.get("branch"), vcs.get("tag"), git.get("branch"), git.get("tag")), strict=True
    ):
        if _text(value):
            return value, source
    return None, None


def default_branch(info: Any) -> str | None:
    """The default branch from a GET /project/{slug} answer."""
    vcs_info = as_dict(as_dict(info).get("vcs_info"))
    return _text(vcs_info.get("default_branch"))


def default_branches(project_infos: Mapping[str, Any]) -> dict[str, str | None]:
    """Endpoint slug -> default branch, from the stored GET /project/{slug} answers."""
    return {slug: default_branch(info) for slug, info in project_infos.items()}


def is_default(branch: str | None, default: str | None) -> bool | None:
    return None if branch is None or default is None else branch == default


def rerun_order(workflows: list[dict[str, Any]]) -> dict[int, tuple[int, int | None]]:
    """Position of each workflow -> (rerun index, position of the run it repeats)."""
    by_name: dict[Any, list[tuple[float, int]]] = {}
    for position, workflow in enumerate(workflows):
        created = parse_ts(workflow.get("created_at"))  # not counted: the workflow's own fact counts it
        key = workflow.get("name") if isinstance(workflow.get("name"), str) else None
        by_name.setdefault(key, []).append((created if created is not None else float("inf"), position))
    order: dict[int, tuple[int, int | None]] = {}
    for runs in by_name.values():
        previous: int | None = None
        for index, (_, position) in enumerate(sorted(runs)):
            order[position] = (index, previous)
            previous = position
    return order


def rerun_indexes(workflows: Any) -> dict[Any, int]:
    """Workflow id -> rerun index, by `rerun_order`: for readers of raw trees that need no other fact
    (reading the stored facts costs more than this rule)."""
    dicts = [w for w in as_list(workflows) if isinstance(w, dict)]
    return {dicts[position].get("id"): index for position, (index, _) in rerun_order(dicts).items()}


def derive(endpoint: str, tree: dict[str, Any], default_branch: str | None) -> TreeFacts:
    """All facts of one pipeline tree (pipeline + workflows[] + jobs[] + details)."""
    reader = TimeReader()
    vcs = as_dict(tree.get("vcs"))
    trigger = as_dict(tree.get("trigger"))
    branch, source = branch_of(tree)
    created = reader.read(tree.get("created_at"))
    received = reader.read(trigger.get("received_at"))
    ctx = _Context(
        endpoint=endpoint,
        pipeline_id=str(tree.get("id")),
        number=_int(tree.get("number")),
        branch=branch,
        is_default=is_default(branch, default_branch),
        commit=_text(vcs.get("revision")),
        triggered=received if received is not None else created,
    )
    workflows = [w for w in as_list(tree.get("workflows")) if isinstance(w, dict)]
    order = rerun_order(workflows)
    job_facts: list[list[JobFact]] = [_job_facts(ctx, w, reader) for w in workflows]
    workflow_facts: list[WorkflowFact] = []
    for position, workflow in enumerate(workflows):
        index, previous = order[position]
        kind = (
            _rerun_kind(workflow, job_facts[position], job_facts[previous]) if previous is not None else None
        )
        rerun_of = str(workflows[previous].get("id")) if previous is not None else None
        workflow_facts.append(
            _workflow_fact(ctx, workflow, job_facts[position], index, rerun_of, kind, reader)
        )
    actor = as_dict(trigger.get("actor"))
    pipeline = PipelineFact(
        id=ctx.pipeline_id,
        endpoint=endpoint,
        number=ctx.number,
        created=created,
        triggered=ctx.triggered,
        branch=branch,
        branch_source=source,
        is_default_branch=ctx.is_default,
        commit=ctx.commit,
        subject=_text(as_dict(vcs.get("commit")).get("subject")),
        author=_text(actor.get("login")),
        trigger_type=_text(trigger.get("type")),
        state=_text(tree.get("state")),
        bad_times=reader.unreadable,
    )
    return TreeFacts(pipeline, workflow_facts, [j for jobs in job_facts for j in jobs])


def facts_of(tree: StoredTree, default_branch: str | None) -> TreeFacts:
    """The tree's facts: those stored beside it when it was read with them and they match it (as many
    workflows and jobs), else derived from it here by the same rules."""
    workflows = [w for w in as_list(tree.data.get("workflows")) if isinstance(w, dict)]
    jobs = sum(isinstance(j, dict) for w in workflows for j in as_list(w.get("jobs")))
    stored = tree.facts
    if stored is None or (len(stored.workflows), len(stored.jobs)) != (len(workflows), jobs):
        return derive(tree.endpoint, tree.data, default_branch)
    return TreeFacts.from_rows(stored)


@dataclass(frozen=True, slots=True)
class _Context:
    endpoint: str
    pipeline_id: str
    number: int | None
    branch: str | None
    is_default: bool | None
    commit: str | None
    triggered: float | None


def _rerun_kind(workflow: dict[str, Any], jobs: list[JobFact], previous: list[JobFact]) -> str:
    auto = _int(workflow.get("auto_rerun_number"))
    if auto is not None and auto > 0:
        return "auto"
    executed = sum(j.executed for j in jobs)
    return "from_failed" if executed < sum(j.executed for j in previous) else "whole"


def _workflow_fact(
    ctx: _Context,
    workflow: dict[str, Any],
    jobs: list[JobFact],
    rerun_index: int,
    rerun_of: str | None,
    kind: str | None,
    reader: TimeReader,
) -> WorkflowFact:
    created = reader.read(workflow.get("created_at"))
    stopped = reader.read(workflow.get("stopped_at"))
    duration = _non_negative(seconds_between(created, stopped))
    waits = [j.approval_wait for j in jobs if j.approval_wait is not None]
    wait = round(sum(waits), 3) if waits else None
    active = None if duration is None else max(0.0, round(duration - (wait or 0.0), 3))
    return WorkflowFact(
        id=str(workflow.get("id")),
        pipeline_id=ctx.pipeline_id,
        endpoint=ctx.endpoint,
        pipeline_number=ctx.number,
        name=str(workflow.get("name")),
        status=str(workflow.get("status")),
        branch=ctx.branch,
        is_default_branch=ctx.is_default,
        commit=ctx.commit,
        triggered=ctx.triggered,
        created=created,
        stopped=stopped,
        duration=duration,
        active_duration=active,
        approval_wait=wait,
        rerun_index=rerun_index,
        rerun_of=rerun_of,
        rerun_kind=kind,
        jobs=len(jobs),
        executed_jobs=sum(j.executed for j in jobs),
        failed_jobs=sum(j.status in JOB_FAILED for j in jobs),
    )


def _job_facts(ctx: _Context, workflow: dict[str, Any], reader: TimeReader) -> list[JobFact]:
    jobs = [j for j in as_list(workflow.get("jobs")) if isinstance(j, dict)]
    # Read a second time: an unreadable one is counted by the fact that reads it first.
    workflow_created = parse_ts(workflow.get("created_at"))
    stops = {j.get("id"): parse_ts(j.get("stopped_at")) for j in jobs}
    return [_job_fact(ctx, workflow, job, workflow_created, stops, reader) for job in jobs]


def _job_fact(
    ctx: _Context,
    workflow: dict[str, Any],
    job: dict[str, Any],
    workflow_created: float | None,
    stops: dict[Any, float | None],
    reader: TimeReader,
) -> JobFact:
    details = as_dict(job.get("details"))
    # Job details carry milliseconds, the job list does not: prefer the details.
    started = reader.read(details.get("started_at") or job.get("started_at"))
    stopped = reader.read(details.get("stopped_at") or job.get("stopped_at"))
    queued = reader.read(details.get("queued_at"))
    status = str(job.get("status"))
    is_approval = job.get("type") == "approval"
    dependencies = [d for d in as_list(job.get("dependencies")) if isinstance(d, str)]
    wait = None
    if is_approval and stopped is not None and status == "success":
        dep_stops = [s for d in dependencies if (s := stops.get(d)) is not None]
        held_from = started if started is not None else max(dep_stops, default=workflow_created)
        wait = _non_negative(seconds_between(held_from, stopped))
    return JobFact(
        workflow_id=str(workflow.get("id")),
        id=str(job.get("id")),
        pipeline_id=ctx.pipeline_id,
        endpoint=ctx.endpoint,
        workflow_name=str(workflow.get("name")),
        name=str(job.get("name")),
        type=_text(job.get("type")),
        status=status,
        number=_int(job.get("job_number"))
        if job.get("job_number") is not None
        else _int(details.get("number")),
        executed=not is_approval and (started is not None or status in _STARTED_STATUSES),
        branch=ctx.branch,
        is_default_branch=ctx.is_default,
        commit=ctx.commit,
        workflow_created=workflow_created,
        queued=queued,
        started=started,
        stopped=stopped,
        duration=None if is_approval else job_seconds(details.get("duration"), started, stopped),
        queue_time=_non_negative(seconds_between(queued, started)),
        approval_wait=wait,
        dependencies=json.dumps(dependencies),
        resource_class=resource_class_of(details),
        parallelism=parallelism_of(details),
    )


def resource_class_of(details: dict[str, Any]) -> str | None:
    """Job details' executor.resource_class, bounded (it is shown and grouped on)."""
    value = _text(as_dict(details.get("executor")).get("resource_class"))
    return value[:100] if value is not None else None


def parallelism_of(details: dict[str, Any]) -> int | None:
    value = _int(details.get("parallelism"))
    return value if value is not None and 0 < value < 100_000 else None


def _non_negative(seconds: float | None) -> float | None:
    return None if seconds is None or seconds < 0 else seconds


def job_seconds(duration: Any, started: float | None, stopped: float | None) -> float | None:
    """A job's duration in seconds, to the millisecond; see the module rules."""
    # A job that never started reports duration 0: that is "unknown", not "instant".
    given = duration_ms(duration)  # None when absurd (times.MAX_DURATION): then from the timestamps
    if given is not None and (given > 0 or started is not None):
        return round(given / 1000, 3)
    return _non_negative(seconds_between(started, stopped))


def critical_path(jobs: Iterable[JobFact]) -> list[JobFact]:
    """The chain of jobs that set a workflow run's end, first job first.

    From the job that stopped last, step back to the dependency that stopped last, until a job
    without dependencies (or without known stop times).
    """
    by_id = {j.id: j for j in jobs if j.stopped is not None}
    if not by_id:
        return []
    current: JobFact | None = max(by_id.values(), key=lambda j: (j.stopped or 0.0, j.id))
    chain: list[JobFact] = []
    seen: set[str] = set()
    while current is not None and current.id not in seen:
        chain.append(current)
        seen.add(current.id)
        deps = [by_id[d] for d in json.loads(current.dependencies) if d in by_id]
        current = max(deps, key=lambda j: (j.stopped or 0.0, j.id), default=None)
    return list(reversed(chain))


class FactsDeriver:
    """The store's Deriver: the facts and people of each tree it writes, by this module's rules."""

    def tree_facts(self, endpoint: str, tree: dict[str, Any], default_branch: str | None) -> FactRows:
        return derive(endpoint, tree, default_branch).rows()

    def user_ids(self, item: dict[str, Any]) -> set[str]:
        return user_ids_in(item)

    def people(self, tree: dict[str, Any]) -> set[str]:
        return people_in(tree)

    def default_branch(self, project_info: Any) -> str | None:
        return default_branch(project_info)


DERIVER: Deriver = FactsDeriver()


def open_store(url: str, *, create: bool = True) -> Store:
    """The store as this tool opens it: the facts of every tree written are derived by these rules."""
    return Store.open(url, create=create, deriver=DERIVER)
