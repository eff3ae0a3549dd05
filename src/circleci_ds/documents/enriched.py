"""Enriched documents, da-ds / GrimoireLab style: one per pipeline, per workflow and per job.

Every document carries the same common fields (uuid, origin, project, metadata__*, the VCS
and trigger facts of its pipeline) plus the fields of its type. Timestamps are ISO-8601 UTC
(`2026-11-01T10:00:00Z`, or `...:00.123Z` when the API gave milliseconds); durations are
seconds. A value the API did not give is null, never 0.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Any

from circleci_ds import __version__
from circleci_ds.derive.facts import (
    JobFact,
    PipelineFact,
    WorkflowFact,
    as_dict,
    as_list,
    default_branch,
    facts_of,
)
from circleci_ds.derive.people import is_bot_login
from circleci_ds.documents.raw import BACKEND_NAME
from circleci_ds.documents.usage import usage_fields
from circleci_ds.ids import uuid
from circleci_ds.store import StoredTree
from circleci_ds.times import iso, stamp

if TYPE_CHECKING:
    from circleci_ds.derive.people import People

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

# -- documents -----------------------------------------------------------------------------


def enrich_trees(
    trees: Iterable[StoredTree],
    project_infos: dict[str, dict[str, Any]],
    enriched_on: float | None = None,
    people: People | None = None,
) -> Iterator[dict[str, Any]]:
    """Enriched documents for each tree: its pipeline, then its workflows, then their jobs.

    Streams: only one tree is held at a time. `project_infos` maps an endpoint slug to its
    GET /project/{slug} answer (for the default branch); a missing endpoint gives null
    `is_default_branch`.
    """
    enriched = iso(time.time() if enriched_on is None else enriched_on)
    for tree in trees:
        yield from enrich_tree(tree, default_branch(project_infos.get(tree.endpoint)), enriched, people)


def enrich_tree(
    tree: StoredTree, default: str | None, enriched_on: str | None, people: People | None = None
) -> Iterator[dict[str, Any]]:
    """The documents of one pipeline tree; `default` is the project's default branch, if known.

    With `people`, documents also carry who did what (see people.People.enriched_fields).

    Derived values (branch, durations, rerun indexes, waits) are the facts': those stored beside the
    tree when it carries them, else derived from it by the same pure functions (circleci_ds.derive.facts).
    """
    workflows = [w for w in as_list(tree.data.get("workflows")) if isinstance(w, dict)]
    facts = facts_of(tree, default)
    workflow_facts = {f.id: f for f in facts.workflows}
    job_facts = {(f.workflow_id, f.id): f for f in facts.jobs}
    common = _common_fields(tree, facts.pipeline, default, enriched_on)
    yield _with_people(_pipeline_doc(tree, common, workflows), people, tree)
    for workflow in workflows:
        workflow_fact = workflow_facts[str(workflow.get("id"))]
        yield _with_people(_workflow_doc(tree, common, workflow, workflow_fact), people, tree, workflow)
        for job in as_list(workflow.get("jobs")):
            if isinstance(job, dict):
                fact = job_facts[(workflow_fact.id, str(job.get("id")))]
                doc = _job_doc(tree, common, workflow, workflow_fact, job, fact)
                yield _with_people(doc, people, tree, workflow, job)


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


def _common_fields(
    tree: StoredTree, pipeline: PipelineFact, default: str | None, enriched_on: str | None
) -> dict[str, Any]:
    data = tree.data
    vcs = as_dict(data.get("vcs"))
    trigger = as_dict(data.get("trigger"))
    updated_on = iso(tree.updated_on) if tree.updated_on else None
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
        "branch": pipeline.branch,
        "branch_source": pipeline.branch_source,
        "tag": vcs.get("tag"),
        "commit_sha": pipeline.commit,
        "commit_subject": pipeline.subject,
        "review_id": vcs.get("review_id"),
        "review_url": vcs.get("review_url"),
        "trigger_type": pipeline.trigger_type,
        "trigger_received_at": stamp(trigger.get("received_at"))[1],
        "author_login": pipeline.author,
        "author_bot": is_bot_login(pipeline.author),
        "default_branch": default,
        "is_default_branch": pipeline.is_default_branch,
        "pipeline_id": data.get("id"),
        "pipeline_number": data.get("number"),
    }


def _typed(tree: StoredTree, common: dict[str, Any], kind: str, item_id: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {"uuid": uuid(tree.origin, str(item_id)), "type": kind}
    doc.update(common)
    doc["is_circleci_pipeline"] = int(kind == "pipeline")
    doc["is_circleci_workflow"] = int(kind == "workflow")
    doc["is_circleci_job"] = int(kind == "job")
    return doc


def _status_counts(prefix: str, statuses: tuple[str, ...], items: list[Any]) -> dict[str, int]:
    counts = {f"{prefix}_{s.replace('-', '_')}": 0 for s in statuses}
    for item in items:
        if isinstance(item, dict):
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
    errors = as_list(pipeline.get("errors"))
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
    tree: StoredTree, common: dict[str, Any], workflow: dict[str, Any], fact: WorkflowFact
) -> dict[str, Any]:
    _, created_at = stamp(workflow.get("created_at"))
    _, stopped_at = stamp(workflow.get("stopped_at"))
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
            "duration_seconds": fact.duration,
            "active_duration_seconds": fact.active_duration,
            "approval_wait_seconds": fact.approval_wait,
            "rerun_index": fact.rerun_index,
            "is_rerun": fact.rerun_index > 0,
            "rerun_of": fact.rerun_of,
            "rerun_kind": fact.rerun_kind,
            "auto_rerun_number": workflow.get("auto_rerun_number"),
            "max_auto_reruns": workflow.get("max_auto_reruns"),
            "started_by": workflow.get("started_by"),
            "canceled_by": workflow.get("canceled_by"),
            "errored_by": workflow.get("errored_by"),
        }
    )
    jobs = as_list(workflow.get("jobs"))
    doc.update(_status_counts("jobs", JOB_STATUSES, jobs))
    return doc


def _job_doc(
    tree: StoredTree,
    common: dict[str, Any],
    workflow: dict[str, Any],
    workflow_fact: WorkflowFact,
    job: dict[str, Any],
    fact: JobFact,
) -> dict[str, Any]:
    details = as_dict(job.get("details"))
    executor = as_dict(details.get("executor"))
    contexts = as_list(details.get("contexts"))
    _, created_at = stamp(details.get("created_at"))
    _, workflow_created_at = stamp(workflow.get("created_at"))
    # Job details carry milliseconds, the job list does not: prefer the details (as the facts do).
    _, started_at = stamp(details.get("started_at") or job.get("started_at"))
    _, stopped_at = stamp(details.get("stopped_at") or job.get("stopped_at"))
    _, queued_at = stamp(details.get("queued_at"))
    doc = _typed(tree, common, "job", job.get("id"))
    doc.update(
        {
            "grimoire_creation_date": created_at or queued_at or started_at or workflow_created_at,
            "job_id": job.get("id"),
            "job_number": fact.number,
            "job_name": job.get("name"),
            "job_type": job.get("type"),
            "status": job.get("status"),
            "is_executed": int(fact.executed),  # 0/1 like the other is_* flags of da-ds
            "created_at": created_at,
            "queued_at": queued_at,
            "started_at": started_at,
            "stopped_at": stopped_at,
            "queue_time_seconds": fact.queue_time,
            "duration_seconds": fact.duration,
            "approval_wait_seconds": fact.approval_wait,
            "approved_by": job.get("approved_by"),
            "executor_type": executor.get("type"),
            "resource_class": executor.get("resource_class"),
            "parallelism": details.get("parallelism"),
            "contexts": [c.get("name") for c in contexts if isinstance(c, dict)],
            "web_url": details.get("web_url"),
            "workflow_id": workflow.get("id"),
            "workflow_name": workflow.get("name"),
            "workflow_status": workflow.get("status"),
            "workflow_created_at": workflow_created_at,
            "workflow_rerun_index": workflow_fact.rerun_index,
            "is_rerun": workflow_fact.rerun_index > 0,
        }
    )
    doc.update(usage_fields(tree, workflow, job))
    return doc
