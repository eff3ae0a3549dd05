"""da-ds drop-in documents: one flat document per job, as the dev-analytics CircleCI design has them.

Rules:
- One document per job of every stored workflow, approval and blocked jobs included, streamed
  tree by tree (memory does not grow with the history).
- `uuid` = sha1 hex of `"<job id>:<pipeline id>:<workflow id>"` (da-ds' rule), so documents keep
  their ids across tools.
- Times are ISO-8601 UTC (milliseconds when the API gave some); a time the API did not give is
  null, never `0001-01-01`. `workflow_duration` and `job_duration` are milliseconds (the job's by
  the facts' rule, `derive.facts.job_seconds`, over its details: a negative one is null);
  `workflow_duration_seconds`, `_minutes` and `_hours` the same wall-clock span in those units.
  The workflow's is wall clock from its creation to its stop (queueing, approval waits and
  parallel jobs counted once), not a sum of job durations.
- Flags `is_approval`, `is_release`, `is_commit` are 0 or 1; `*_bot` are booleans.
- People: the author is the pipeline's trigger actor (at the pipeline's creation), the workflow
  creator its `started_by` (at the workflow's creation), the approver an approval job's
  `approved_by` (at the approval). Logins come from the resolved users (null when unresolved or
  deleted); the other `<role>_*` fields from the identities file, else da-ds' defaults.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator
from typing import Any

from circleci_ds import __version__
from circleci_ds.derive.facts import job_seconds
from circleci_ds.derive.people import People, Person, provider_of
from circleci_ds.documents.raw import BACKEND_NAME
from circleci_ds.documents.usage import usage_fields
from circleci_ds.ids import uuid
from circleci_ds.store import StoredTree
from circleci_ds.times import iso_ms, iso_text, parse_ts

NO_PERSON = Person(None)
PERSON_FIELDS = ("id", "uuid", "name", "user_name", "domain", "org_name", "multi_org_names", "bot")


def _person(role: str) -> tuple[str, ...]:
    return tuple(f"{role}_{name}" for name in PERSON_FIELDS)


# Every field of a document, in the order written.
FIELDS: tuple[str, ...] = (
    "uuid", "origin", "project", "project_slug", "project_name", "pipeline_id", "pipeline_number",
    "pipeline_created_at", "pipeline_updated_at", "pipeline_state", "pipeline_trigger_type",
    "pipeline_trigger_date", *_person("author"), "original_repository_url", "target_repository_url",
    "revision", "provider", "is_release", "tag", "is_commit", "commit_branch", "commit_subject",
    "commit_body",
    "metadata__updated_on", "metadata__timestamp", "metadata__enriched_on", "metadata__backend_name",
    "metadata__backend_version", "workflow_id", "workflow_name", "workflow_status", "workflow_created_at",
    "workflow_stopped_at", "workflow_duration", "workflow_duration_seconds", "workflow_duration_minutes",
    "workflow_duration_hours", *_person("workflow_creator"), "workflow_canceled_by",
    "workflow_canceled_by_id",
    "is_approval", *_person("workflow_approval"), "workflow_approval_request_id", "workflow_job_type",
    "workflow_job_id", "workflow_job_name", "workflow_job_status", "workflow_job_started_at",
    "workflow_job_stopped_at", "workflow_job_dependencies", "job_number", "job_started_at", "job_queued_at",
    "job_stopped_at", "job_status", "job_parallelism", "job_duration", "job_executor_type",
    "job_executor_resource_class", "job_credits", "job_user_credits", "job_median_cpu_pct", "job_max_cpu_pct",
    "job_median_ram_pct", "job_max_ram_pct",
)  # fmt: skip


def dads_documents(
    trees: Iterable[StoredTree], people: People, enriched_on: float | None = None
) -> Iterator[dict[str, Any]]:
    """The job documents of each tree, in stored order."""
    now = time.time() if enriched_on is None else enriched_on
    for tree in trees:
        yield from tree_documents(tree, people, now)


def tree_documents(tree: StoredTree, people: People, now: float) -> Iterator[dict[str, Any]]:
    pipeline = tree.data
    provider = provider_of(tree.endpoint, pipeline)
    common = _pipeline_fields(tree, people, now)
    for workflow in pipeline.get("workflows") or []:
        flow = _workflow_fields(workflow, people, provider)
        for job in workflow.get("jobs") or []:
            ids = (job.get("id"), pipeline.get("id"), workflow.get("id"))
            doc: dict[str, Any] = {"uuid": uuid(*(str(i) for i in ids))}
            doc.update(common)
            doc.update(flow)
            doc.update(_job_fields(job, workflow, people, provider))
            doc.update(usage_fields(tree, workflow, job, "job_"))
            yield doc


def _pipeline_fields(tree: StoredTree, people: People, now: float) -> dict[str, Any]:
    pipeline = tree.data
    vcs = pipeline.get("vcs") or {}
    trigger = pipeline.get("trigger") or {}
    commit = vcs.get("commit") or {}
    tag, branch = vcs.get("tag"), vcs.get("branch")
    fields: dict[str, Any] = {
        "origin": tree.origin,
        "project": tree.native,
        "project_slug": tree.endpoint,
        "project_name": tree.project_name or tree.native,
        "pipeline_id": pipeline.get("id"),
        "pipeline_number": pipeline.get("number"),
        "pipeline_created_at": iso_text(pipeline.get("created_at")),
        "pipeline_updated_at": iso_text(pipeline.get("updated_at")),
        "pipeline_state": pipeline.get("state"),
        "pipeline_trigger_type": trigger.get("type"),
        "pipeline_trigger_date": iso_text(trigger.get("received_at")),
    }
    fields.update(people.author(tree).fields("author"))
    fields.update(
        {
            "original_repository_url": vcs.get("origin_repository_url"),
            "target_repository_url": vcs.get("target_repository_url"),
            "revision": vcs.get("revision"),
            "provider": vcs.get("provider_name"),
            "is_release": int(bool(tag)),
            "tag": tag,
            "is_commit": int(bool(branch)),
            "commit_branch": branch,
            "commit_subject": commit.get("subject"),
            "commit_body": commit.get("body"),
            "metadata__updated_on": iso_ms(tree.updated_on or None),
            "metadata__timestamp": iso_ms(now),
            "metadata__enriched_on": iso_ms(now),
            "metadata__backend_name": BACKEND_NAME,
            "metadata__backend_version": __version__,
        }
    )
    return fields


def _workflow_fields(workflow: dict[str, Any], people: People, provider: str | None) -> dict[str, Any]:
    created = parse_ts(workflow.get("created_at"))
    stopped = parse_ts(workflow.get("stopped_at"))
    duration = wall_clock_ms(created, stopped)
    fields: dict[str, Any] = {
        "workflow_id": workflow.get("id"),
        "workflow_name": workflow.get("name"),
        "workflow_status": workflow.get("status"),
        "workflow_created_at": iso_text(workflow.get("created_at")),
        "workflow_stopped_at": iso_text(workflow.get("stopped_at")),
        "workflow_duration": duration,
        "workflow_duration_seconds": None if duration is None else duration / 1000,
        "workflow_duration_minutes": None if duration is None else duration / 60_000,
        "workflow_duration_hours": None if duration is None else duration / 3_600_000,
    }
    fields.update(people.creator(workflow, provider).fields("workflow_creator"))
    canceled_by = workflow.get("canceled_by")
    fields["workflow_canceled_by"] = people.login_of(canceled_by)
    fields["workflow_canceled_by_id"] = canceled_by if isinstance(canceled_by, str) else None
    return fields


def _job_fields(
    job: dict[str, Any], workflow: dict[str, Any], people: People, provider: str | None
) -> dict[str, Any]:
    details = job.get("details") or {}
    executor = details.get("executor") or {}
    is_approval = job.get("type") == "approval"
    approver = people.approver(job, workflow, provider) if is_approval else NO_PERSON
    # job_* come from the job's details, as in da-ds; approval and blocked jobs have none.
    started, stopped = parse_ts(details.get("started_at")), parse_ts(details.get("stopped_at"))
    deps = job.get("dependencies")
    dependencies = [d for d in deps if isinstance(d, str)] if isinstance(deps, list) else []
    fields: dict[str, Any] = {"is_approval": int(is_approval)}
    fields.update(approver.fields("workflow_approval"))
    fields.update(
        {
            "workflow_approval_request_id": job.get("approval_request_id") if is_approval else None,
            "workflow_job_type": job.get("type"),
            "workflow_job_id": job.get("id"),
            "workflow_job_name": job.get("name"),
            "workflow_job_status": job.get("status"),
            "workflow_job_started_at": iso_text(job.get("started_at")),
            "workflow_job_stopped_at": iso_text(job.get("stopped_at")),
            "workflow_job_dependencies": dependencies,
            "job_number": _first_int(job.get("job_number"), details.get("number")),
            "job_started_at": iso_text(details.get("started_at")),
            "job_queued_at": iso_text(details.get("queued_at")),
            "job_stopped_at": iso_text(details.get("stopped_at")),
            "job_status": details.get("status"),
            "job_parallelism": _first_int(details.get("parallelism")),
            "job_duration": job_duration_ms(details.get("duration"), started, stopped),
            "job_executor_type": executor.get("type"),
            "job_executor_resource_class": executor.get("resource_class"),
        }
    )
    return fields


def wall_clock_ms(start: float | None, stop: float | None) -> int | None:
    """Milliseconds from start to stop; None when either is unknown or they are out of order."""
    if start is None or stop is None or stop < start:
        return None
    return round((stop - start) * 1000)


def job_duration_ms(duration: Any, started: float | None, stopped: float | None) -> int | None:
    """The facts' job duration (derive.facts.job_seconds: negative or unknown is null) in milliseconds."""
    seconds = job_seconds(duration, started, stopped)
    return None if seconds is None else round(seconds * 1000)


def _first_int(*values: Any) -> int | None:
    """The first value that is an integer a `long` field holds (signed 64 bits)."""
    return next(
        (v for v in values if isinstance(v, int) and not isinstance(v, bool) and -(2**63) <= v < 2**63), None
    )
