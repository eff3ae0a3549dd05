"""Enriched documents, da-ds / GrimoireLab style: one per pipeline, per workflow and per job.

Every document carries the same common fields (uuid, origin, project, metadata__*, the VCS
and trigger facts of its pipeline) plus the fields of its type. Timestamps are ISO-8601 UTC
(`2026-11-01T10:00:00Z`, or `...:00.123Z` when the API gave milliseconds); durations are
seconds. A value the API did not give is null, never 0.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from circleci_ds import __version__
from circleci_ds.export import BACKEND_NAME, uuid
from circleci_ds.store import StoredTree

if TYPE_CHECKING:
    from circleci_ds.people import People

WORKFLOW_STATUSES = (
    "success",
    "running",
    "not_run",
    "failed",
    "error",
    "failing",
    "on_hold",
    "canceled",
    "unauthorized",
)
JOB_STATUSES = (
    "success",
    "running",
    "not_run",
    "failed",
    "retried",
    "queued",
    "not_running",
    "infrastructure_fail",
    "timedout",
    "on_hold",
    "terminated-unknown",
    "blocked",
    "canceled",
    "unauthorized",
)

# Logins of well-known automation accounts that carry no bot-like suffix or prefix.
KNOWN_BOTS = frozenset(
    {
        "dependabot",
        "dependabot-preview",
        "renovate",
        "renovate-bot",
        "github-actions",
        "greenkeeper",
        "greenkeeperio-bot",
        "snyk-bot",
        "pyup-bot",
        "mergify",
        "imgbot",
        "codecov",
        "depfu",
        "allcontributors",
        "semantic-release-bot",
        "web-flow",
        "circleci",
        "whitesource-bolt",
    }
)

# Documents are fresh trees of plain values: no cycle check needed.
_CANONICAL_TIME = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{3})?Z\Z")


# -- small helpers -----------------------------------------------------------------------


def parse_time(value: Any) -> datetime | None:
    """A naive UTC datetime from an API timestamp; None when absent or unreadable."""
    if not isinstance(value, str) or not value:
        return None
    try:
        # The API's own form ends in Z: parsing without it gives the naive UTC time directly.
        parsed = datetime.fromisoformat(value[:-1] if value[-1] == "Z" else value)
    except ValueError:
        return None
    if parsed.tzinfo is not None:
        parsed = parsed.astimezone(UTC).replace(tzinfo=None)
    return parsed


def stamp(value: Any) -> tuple[datetime | None, str | None]:
    """(parsed, ISO-8601 UTC text) of an API timestamp; text already in that form is kept as is."""
    moment = parse_time(value)
    if moment is None:
        return None, None
    if _CANONICAL_TIME.match(value):
        return moment, value
    return moment, iso(moment)


def iso(moment: datetime | None) -> str | None:
    """ISO-8601 UTC with a `Z`; milliseconds only when there are some."""
    if moment is None:
        return None
    if moment.microsecond:
        return moment.isoformat(timespec="milliseconds") + "Z"
    return moment.isoformat(timespec="seconds") + "Z"


def iso_epoch(epoch: float | None) -> str | None:
    """ISO-8601 UTC of epoch seconds; None for a missing (or zero) epoch."""
    if not epoch:
        return None
    return iso(datetime.fromtimestamp(epoch, UTC).replace(tzinfo=None))


def seconds_between(start: datetime | None, end: datetime | None) -> float | None:
    if start is None or end is None:
        return None
    return round((end - start).total_seconds(), 3)


def is_bot_login(login: str | None) -> bool | None:
    """True for automation accounts ([bot] suffix, -bot/_bot suffix, bot- prefix, known bots)."""
    if not login:
        return None
    name = login.lower()
    return name.endswith(("[bot]", "-bot", "_bot")) or name.startswith(("bot-", "bot_")) or name in KNOWN_BOTS


def default_branch(info: dict[str, Any] | None) -> str | None:
    """The default branch from a GET /project/{slug} answer."""
    vcs_info = (info or {}).get("vcs_info") or {}
    branch = vcs_info.get("default_branch")
    return branch if isinstance(branch, str) and branch else None


# -- documents -----------------------------------------------------------------------------


def enrich_trees(
    trees: Iterable[StoredTree],
    project_infos: dict[str, dict[str, Any]],
    enriched_on: datetime | None = None,
    people: People | None = None,
) -> Iterator[dict[str, Any]]:
    """Enriched documents for each tree: its pipeline, then its workflows, then their jobs.

    Streams: only one tree is held at a time. `project_infos` maps an endpoint slug to its
    GET /project/{slug} answer (for the default branch); a missing endpoint gives null
    `is_default_branch`.
    """
    moment = enriched_on or datetime.now(UTC)
    if moment.tzinfo is not None:  # naive means UTC already
        moment = moment.astimezone(UTC).replace(tzinfo=None)
    enriched = iso(moment)
    for tree in trees:
        yield from enrich_tree(tree, default_branch(project_infos.get(tree.endpoint)), enriched, people)


def enrich_tree(
    tree: StoredTree, default: str | None, enriched_on: str | None, people: People | None = None
) -> Iterator[dict[str, Any]]:
    """The documents of one pipeline tree; `default` is the project's default branch, if known.

    With `people`, documents also carry who did what (see people.People.enriched_fields).
    """
    pipeline = tree.data
    workflows = pipeline.get("workflows") or []
    common = _common_fields(tree, default, enriched_on)
    yield _with_people(_pipeline_doc(tree, common, workflows), people, tree)
    reruns = rerun_indexes(workflows)
    for workflow in workflows:
        rerun = reruns[workflow.get("id")]
        yield _with_people(_workflow_doc(tree, common, workflow, rerun), people, tree, workflow)
        for job in workflow.get("jobs") or []:
            yield _with_people(_job_doc(tree, common, workflow, rerun, job), people, tree, workflow, job)


def _with_people(
    doc: dict[str, Any],
    people: People | None,
    tree: StoredTree,
    workflow: dict[str, Any] | None = None,
    job: dict[str, Any] | None = None,
) -> dict[str, Any]:
    if people is not None:
        doc.update(people.enriched_fields(tree, workflow, job))
    return doc


def rerun_indexes(workflows: list[dict[str, Any]]) -> dict[Any, int]:
    """Workflow id -> 0 for the first run of its name in the pipeline (by created_at), 1 for the next..."""
    by_name: dict[Any, list[tuple[datetime, int, Any]]] = {}
    for position, workflow in enumerate(workflows):
        # Undated workflows sort last; ties keep the API's order.
        created = parse_time(workflow.get("created_at")) or datetime.max
        by_name.setdefault(workflow.get("name"), []).append((created, position, workflow.get("id")))
    indexes: dict[Any, int] = {}
    for runs in by_name.values():
        for index, (_, _, workflow_id) in enumerate(sorted(runs)):
            indexes[workflow_id] = index
    return indexes


def _common_fields(tree: StoredTree, default: str | None, enriched_on: str | None) -> dict[str, Any]:
    pipeline = tree.data
    vcs = pipeline.get("vcs") or {}
    trigger = pipeline.get("trigger") or {}
    actor = trigger.get("actor") or {}
    commit = vcs.get("commit") or {}
    branch = vcs.get("branch")
    login = actor.get("login")
    updated_on = iso_epoch(tree.updated_on)
    return {
        "origin": tree.origin,
        "project": tree.native,
        "project_slug": tree.endpoint,
        # The store keeps one time per tree (its latest change); perceval's two fields share it.
        "metadata__updated_on": updated_on,
        "metadata__timestamp": updated_on,
        "metadata__enriched_on": enriched_on,
        "metadata__backend_name": BACKEND_NAME,
        "metadata__backend_version": __version__,
        "repository_url": vcs.get("target_repository_url") or vcs.get("origin_repository_url"),
        "origin_repository_url": vcs.get("origin_repository_url"),
        "vcs_provider": vcs.get("provider_name"),
        "branch": branch,
        "tag": vcs.get("tag"),
        "commit_sha": vcs.get("revision"),
        "commit_subject": commit.get("subject"),
        "review_id": vcs.get("review_id"),
        "review_url": vcs.get("review_url"),
        "trigger_type": trigger.get("type"),
        "trigger_received_at": stamp(trigger.get("received_at"))[1],
        "author_login": login,
        "author_bot": is_bot_login(login),
        "default_branch": default,
        "is_default_branch": None if default is None or branch is None else branch == default,
        "pipeline_id": pipeline.get("id"),
        "pipeline_number": pipeline.get("number"),
    }


def _typed(tree: StoredTree, common: dict[str, Any], kind: str, item_id: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {"uuid": uuid(tree.origin, str(item_id)), "type": kind}
    doc.update(common)
    doc["is_circleci_pipeline"] = int(kind == "pipeline")
    doc["is_circleci_workflow"] = int(kind == "workflow")
    doc["is_circleci_job"] = int(kind == "job")
    return doc


def _status_counts(prefix: str, statuses: tuple[str, ...], items: list[dict[str, Any]]) -> dict[str, int]:
    counts = {f"{prefix}_{s.replace('-', '_')}": 0 for s in statuses}
    for item in items:
        key = f"{prefix}_{str(item.get('status')).replace('-', '_')}"
        if key in counts:
            counts[key] += 1
    counts[f"{prefix}_total"] = len(items)
    return counts


def _pipeline_doc(
    tree: StoredTree, common: dict[str, Any], workflows: list[dict[str, Any]]
) -> dict[str, Any]:
    pipeline = tree.data
    _, created = stamp(pipeline.get("created_at"))
    errors = pipeline.get("errors") or []
    doc = _typed(tree, common, "pipeline", pipeline.get("id"))
    doc.update(
        {
            "grimoire_creation_date": created,
            "state": pipeline.get("state"),
            "created_at": created,
            "updated_at": stamp(pipeline.get("updated_at"))[1],
            "errors_count": len(errors),
            "error_types": sorted({str(e.get("type")) for e in errors if isinstance(e, dict)}),
        }
    )
    doc.update(_status_counts("workflows", WORKFLOW_STATUSES, workflows))
    return doc


def _workflow_doc(
    tree: StoredTree, common: dict[str, Any], workflow: dict[str, Any], rerun: int
) -> dict[str, Any]:
    created, created_at = stamp(workflow.get("created_at"))
    stopped, stopped_at = stamp(workflow.get("stopped_at"))
    doc = _typed(tree, common, "workflow", workflow.get("id"))
    doc.update(
        {
            "grimoire_creation_date": created_at,
            "workflow_id": workflow.get("id"),
            "workflow_name": workflow.get("name"),
            "workflow_tag": workflow.get("tag"),
            "status": workflow.get("status"),
            "created_at": created_at,
            "stopped_at": stopped_at,
            "duration_seconds": seconds_between(created, stopped),
            "rerun_index": rerun,
            "is_rerun": rerun > 0,
            "auto_rerun_number": workflow.get("auto_rerun_number"),
            "max_auto_reruns": workflow.get("max_auto_reruns"),
            "started_by": workflow.get("started_by"),
            "canceled_by": workflow.get("canceled_by"),
            "errored_by": workflow.get("errored_by"),
        }
    )
    doc.update(_status_counts("jobs", JOB_STATUSES, workflow.get("jobs") or []))
    return doc


def _job_doc(
    tree: StoredTree, common: dict[str, Any], workflow: dict[str, Any], rerun: int, job: dict[str, Any]
) -> dict[str, Any]:
    details = job.get("details") or {}
    executor = details.get("executor") or {}
    # Job details carry milliseconds, the job list does not: prefer the details.
    started, started_at = stamp(details.get("started_at") or job.get("started_at"))
    stopped, stopped_at = stamp(details.get("stopped_at") or job.get("stopped_at"))
    queued, queued_at = stamp(details.get("queued_at"))
    _, created_at = stamp(details.get("created_at"))
    _, workflow_created_at = stamp(workflow.get("created_at"))
    is_approval = job.get("type") == "approval"
    # An approval job does no work: its time is a wait, reported apart.
    duration = None if is_approval else job_seconds(details.get("duration"), started, stopped)
    doc = _typed(tree, common, "job", job.get("id"))
    doc.update(
        {
            "grimoire_creation_date": created_at or queued_at or started_at or workflow_created_at,
            "job_id": job.get("id"),
            "job_number": _first_known(job.get("job_number"), details.get("number")),
            "job_name": job.get("name"),
            "job_type": job.get("type"),
            "status": job.get("status"),
            "created_at": created_at,
            "queued_at": queued_at,
            "started_at": started_at,
            "stopped_at": stopped_at,
            "queue_time_seconds": queue_seconds(queued, started),
            "duration_seconds": duration,
            "approval_wait_seconds": approval_wait(job, workflow, started, stopped) if is_approval else None,
            "approved_by": job.get("approved_by"),
            "executor_type": executor.get("type"),
            "resource_class": executor.get("resource_class"),
            "parallelism": details.get("parallelism"),
            "contexts": [c.get("name") for c in details.get("contexts") or [] if isinstance(c, dict)],
            "web_url": details.get("web_url"),
            "workflow_id": workflow.get("id"),
            "workflow_name": workflow.get("name"),
            "workflow_status": workflow.get("status"),
            "workflow_created_at": workflow_created_at,
            "workflow_rerun_index": rerun,
            "is_rerun": rerun > 0,
        }
    )
    return doc


def _first_known(*values: Any) -> Any:
    return next((v for v in values if v is not None), None)


def queue_seconds(queued: datetime | None, started: datetime | None) -> float | None:
    """started - queued; None when either is unknown or the clocks disagree (negative)."""
    seconds = seconds_between(queued, started)
    return None if seconds is None or seconds < 0 else seconds


def job_seconds(duration_ms: Any, started: datetime | None, stopped: datetime | None) -> float | None:
    """Job-details `duration` (milliseconds) when given, else stopped - started."""
    # A job that never started reports duration 0: that is "unknown", not "instant".
    if isinstance(duration_ms, int | float) and (duration_ms > 0 or started is not None):
        return round(duration_ms / 1000, 3)
    return seconds_between(started, stopped)


def approval_wait(
    job: dict[str, Any], workflow: dict[str, Any], started: datetime | None, stopped: datetime | None
) -> float | None:
    """Seconds an approval job waited: from when it went on hold to its approval.

    It goes on hold when it starts, or else when the last job it depends on stops, or else
    when the workflow is created. Unapproved (still on hold) jobs have no wait yet.
    """
    if stopped is None or job.get("status") != "success":
        return None
    held_from = started or _last_dependency_stop(job, workflow) or parse_time(workflow.get("created_at"))
    return seconds_between(held_from, stopped)


def _last_dependency_stop(job: dict[str, Any], workflow: dict[str, Any]) -> datetime | None:
    needed = set(job.get("dependencies") or [])
    if not needed:
        return None
    stops = [
        parse_time(other.get("stopped_at"))
        for other in workflow.get("jobs") or []
        if other.get("id") in needed
    ]
    return max((s for s in stops if s is not None), default=None)
