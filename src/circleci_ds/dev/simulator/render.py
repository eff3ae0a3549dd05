"""API objects and list pages as pure functions of (history, clock), memoised per clock value."""

from __future__ import annotations

import base64
import binascii
import json
import time
import zlib
from bisect import bisect_left, bisect_right
from collections.abc import Callable
from email.utils import formatdate
from operator import itemgetter
from typing import Any

from .history import DAY, History, Job, Pipeline, PipelineIndex, Project, User, Workflow
from .lifecycle import FAILURES, Timeline

JSON = dict[str, Any]
_time_of = itemgetter(0)


class InvalidPageToken(ValueError):
    """A page-token that this list did not hand out."""


def iso_ms(ms: int) -> str:
    """`2026-11-01T10:00:00.123Z` (pipelines and job details carry milliseconds)."""
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ms // 1000)) + f".{ms % 1000:03d}Z"


def iso_s(ms: int) -> str:
    """`2026-11-01T10:00:00Z` (workflows and job lists do not)."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ms // 1000))


def http_date(ms: int) -> str:
    """RFC 7231 IMF-fixdate, e.g. `Sun, 01 Nov 2026 00:00:00 GMT`."""
    return formatdate(ms // 1000, usegmt=True)


def status_at(timeline: Timeline, now: int) -> str:
    return timeline[bisect_right(timeline, now, key=_time_of) - 1][1]


def _seen(at: int | None, now: int) -> bool:
    return at is not None and at <= now


def _stamp(fmt: Callable[[int], str], at: int | None, now: int) -> str | None:
    """The formatted time if it has already happened, else None."""
    return fmt(at) if at is not None and at <= now else None


def past_retention(pipeline: Pipeline, now: int, retention_days: float | None) -> bool:
    """Whether the pipeline is old enough that its workflow list is gone (it is still listed)."""
    return retention_days is not None and pipeline.created_at < now - int(retention_days * DAY)


def omits_final_token(list_id: str) -> bool:
    """Last pages send `next_page_token: null` or leave the key out, depending on the list."""
    return zlib.crc32(list_id.encode()) % 2 == 1


# -- objects --------------------------------------------------------------------------------------------


def render_pipeline(p: Pipeline, now: int) -> JSON:
    done = now >= p.setup_done_at
    out: JSON = {
        "id": p.id,
        "errors": p.errors if done else [],
        "project_slug": p.project.slug,
        "updated_at": iso_ms(p.setup_done_at if done else p.created_at),
        "number": p.number,
        "state": p.final_state if done else "setup-pending",
        "created_at": iso_ms(p.created_at),
        "trigger": {
            "type": p.trigger["type"],
            "received_at": iso_ms(p.received_at),
            "actor": p.trigger["actor"],
        },
    }
    if p.vcs is not None:
        out["vcs"] = p.vcs
    return out


def render_workflow(w: Workflow, now: int) -> JSON:
    status = status_at(w.run.timeline, now)
    pipeline = w.pipeline
    out: JSON = {
        "pipeline_id": pipeline.id,
        "id": w.id,
        "name": w.name,
        "project_slug": pipeline.project.slug,
        "status": status,
        "started_by": w.started_by,
        "pipeline_number": pipeline.number,
        "created_at": iso_s(w.created_at),
        "stopped_at": _stamp(iso_s, w.run.stopped_at, now),
    }
    if status == "canceled" and w.canceled_by is not None:
        out["canceled_by"] = w.canceled_by
    if w.auto_rerun_number is not None:
        out["auto_rerun_number"] = w.auto_rerun_number
    if w.max_auto_reruns is not None:
        out["max_auto_reruns"] = w.max_auto_reruns
    return out


def render_job(job: Job, now: int) -> JSON:
    run = job.run
    status = status_at(run.timeline, now)
    out: JSON = {
        "dependencies": job.dependencies,
        "id": job.id,
        "name": job.spec.name,
        "project_slug": job.workflow.pipeline.project.slug,
        "status": status,
        "type": job.spec.kind,
        "started_at": _stamp(iso_s, run.started_at, now),
        "stopped_at": _stamp(iso_s, run.stopped_at, now),
    }
    if _seen(job.numbered_at, now):
        out["job_number"] = job.number
    if job.approval_request_id is not None:
        out["approval_request_id"] = job.approval_request_id
        if _seen(run.approved_at, now):
            out["approved_by"] = job.approved_by
    if status == "canceled" and job.workflow.canceled_by is not None:
        out["canceled_by"] = job.workflow.canceled_by
    return out


def details_visible(job: Job, now: int) -> bool:
    """Job details exist for queued build jobs; numbered approval jobs answer 404 like the real API."""
    return job.spec.kind == "build" and _seen(job.numbered_at, now)


def render_details(job: Job, now: int) -> JSON:
    run, spec, workflow = job.run, job.spec, job.workflow
    pipeline = workflow.pipeline
    project = pipeline.project
    status = status_at(run.timeline, now)
    started = run.started_at if _seen(run.started_at, now) else None
    stopped = run.stopped_at if _seen(run.stopped_at, now) else None
    assert run.queued_at is not None and job.number is not None
    return {
        "web_url": f"https://app.circleci.com/pipelines/{project.web_slug}/{pipeline.number}"
        f"/workflows/{workflow.id}/jobs/{job.number}",
        "project": {
            "id": project.id,
            "slug": project.slug,
            "name": project.name,
            "external_url": project.vcs_url,
        },
        "parallel_runs": _parallel_runs(job, status),
        "started_at": iso_ms(started) if started is not None else None,
        "latest_workflow": {"id": workflow.id, "name": workflow.name},
        "name": spec.name,
        "executor": {"type": spec.executor, "resource_class": spec.resource_class},
        "parallelism": spec.parallelism,
        "status": status,
        "number": job.number,
        "pipeline": {"id": pipeline.id},
        "duration": stopped - started if started is not None and stopped is not None else None,
        "created_at": iso_ms(workflow.created_at),
        "messages": [],
        "contexts": [{"name": name} for name in spec.contexts],
        "organization": {"name": project.org_name},
        "queued_at": iso_ms(run.queued_at),
        "stopped_at": iso_ms(stopped) if stopped is not None else None,
    }


def _parallel_runs(job: Job, status: str) -> list[JSON]:
    count = job.spec.parallelism
    if status not in FAILURES:
        return [{"index": i, "status": status} for i in range(count)]
    culprit = int(job.id[:8], 16) % count  # one container failed, its siblings passed
    return [{"index": i, "status": status if i == culprit else "success"} for i in range(count)]


def render_project(project: Project) -> JSON:
    return {
        "slug": project.slug,
        "name": project.name,
        "id": project.id,
        "organization_name": project.org_name,
        "organization_slug": project.org_slug,
        "organization_id": project.org_id,
        "vcs_info": {
            "vcs_url": project.vcs_url,
            "provider": project.provider,
            "default_branch": project.default_branch,
        },
    }


def render_user(user: User) -> JSON:
    """GET /user/{id} of an account that still exists."""
    return {"id": user.id, "login": user.login, "name": user.name, "avatar_url": user.avatar_url}


def users_truth(history: History) -> dict[str, JSON | None]:
    """Every user id the history refers to -> what GET /user/{id} answers, None for a deleted account."""
    return {uid: None if u.deleted else render_user(u) for uid, u in sorted(history.people.items())}


# -- keyset pagination ----------------------------------------------------------------------------------


def encode_token(kind: str, key: str) -> str:
    return base64.urlsafe_b64encode(f"{kind}:{key}".encode()).decode().rstrip("=")


def decode_token(kind: str, token: str) -> str:
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)).decode()
    except (binascii.Error, UnicodeDecodeError) as exc:
        raise InvalidPageToken(token) from exc
    found, _, key = raw.partition(":")
    if found != kind or not key:
        raise InvalidPageToken(token)
    return key


def pipeline_page(
    index: PipelineIndex, now: int, token: str | None, size: int
) -> tuple[list[Pipeline], str | None]:
    """Newest first; the token is the number of the last pipeline served."""
    end = index.visible_count(now)
    if token:
        try:
            after = int(decode_token("p", token))
        except ValueError as exc:
            raise InvalidPageToken(token) from exc
        end = min(end, bisect_left(index.numbers, after))
    start = max(0, end - size)
    items = index.pipelines[start:end][::-1]
    return items, encode_token("p", str(items[-1].number)) if start > 0 else None


def workflow_page(
    pipeline: Pipeline, now: int, token: str | None, size: int
) -> tuple[list[Workflow], str | None]:
    """Newest first; the token is (created_at, id) of the last workflow served."""
    keys = pipeline.workflow_keys
    end = bisect_right(keys, now, key=_time_of)
    if token:
        created, _, last_id = decode_token("w", token).partition("/")
        if not created.isdigit():
            raise InvalidPageToken(token)
        end = min(end, bisect_left(keys, (int(created), last_id)))
    start = max(0, end - size)
    items = pipeline.workflows[start:end][::-1]
    last = items[-1] if items else None
    return items, encode_token("w", f"{last.created_at}/{last.id}") if start > 0 and last else None


def job_page(workflow: Workflow, token: str | None, size: int) -> tuple[list[Job], str | None]:
    """Config order; the token is the position of the last job served."""
    start = 0
    if token:
        position = decode_token("j", token)
        if not position.isdigit():
            raise InvalidPageToken(token)
        start = int(position) + 1
    end = min(start + size, len(workflow.jobs))
    items = workflow.jobs[start:end]
    return items, encode_token("j", str(end - 1)) if end < len(workflow.jobs) else None


def _list_body(items: list[JSON], next_token: str | None, list_id: str) -> JSON:
    if next_token is None and omits_final_token(list_id):
        return {"items": items}
    return {"items": items, "next_page_token": next_token}


# -- per-clock view -------------------------------------------------------------------------------------


class View:
    """Everything the API shows at one clock value. Rendered objects and bodies are memoised, so a
    view must be replaced (not mutated) when the clock moves."""

    def __init__(self, history: History, now: int) -> None:
        self.history = history
        self.now = now
        self.date = http_date(now)
        self._objects: dict[str, JSON] = {}
        self._details: dict[str, JSON] = {}
        self._bodies: dict[tuple[object, ...], bytes] = {}

    def body(self, key: tuple[object, ...], make: Callable[[], JSON]) -> bytes:
        """Serialised JSON for `key`, built once per clock value."""
        cached = self._bodies.get(key)
        if cached is None:
            cached = self._bodies[key] = json.dumps(make(), separators=(",", ":")).encode()
        return cached

    def pipeline(self, p: Pipeline) -> JSON:
        return self._memo(p.id, lambda: render_pipeline(p, self.now))

    def workflow(self, w: Workflow) -> JSON:
        return self._memo(w.id, lambda: render_workflow(w, self.now))

    def job(self, j: Job) -> JSON:
        return self._memo(j.id, lambda: render_job(j, self.now))

    def details(self, j: Job) -> JSON | None:
        if not details_visible(j, self.now):
            return None
        found = self._details.get(j.id)
        if found is None:
            found = self._details[j.id] = render_details(j, self.now)
        return found

    def _memo(self, key: str, make: Callable[[], JSON]) -> JSON:
        found = self._objects.get(key)
        if found is None:
            found = self._objects[key] = make()
        return found

    def pipeline_list(self, project: Project, branch: str | None, token: str | None, size: int) -> JSON:
        index = project.index if branch is None else project.branches.get(branch, PipelineIndex())
        items, next_token = pipeline_page(index, self.now, token, size)
        return _list_body([self.pipeline(p) for p in items], next_token, f"{project.slug}|{branch}")

    def workflow_list(self, pipeline: Pipeline, token: str | None, size: int) -> JSON:
        items, next_token = workflow_page(pipeline, self.now, token, size)
        return _list_body([self.workflow(w) for w in items], next_token, pipeline.id)

    def job_list(self, workflow: Workflow, token: str | None, size: int) -> JSON:
        items, next_token = job_page(workflow, token, size)
        return _list_body([self.job(j) for j in items], next_token, workflow.id)

    def truth(self, project: Project, size: int, retention_days: float | None) -> list[JSON]:
        """All visible pipelines of `project` with nested workflows, jobs and job details, walked
        through the same pages the HTTP API serves."""
        out = []
        for p in _walk(lambda t: self.pipeline_list(project, None, t, size)):
            pipeline = self.history.pipelines[p["id"]]
            expired = past_retention(pipeline, self.now, retention_days)
            workflows = [] if expired else self._all_workflows(pipeline, size)
            out.append({**p, "workflows": [self._workflow_truth(w, size) for w in workflows]})
        return json.loads(json.dumps(out))  # a deep copy callers may mutate freely

    def _all_workflows(self, pipeline: Pipeline, size: int) -> list[JSON]:
        return _walk(lambda t: self.workflow_list(pipeline, t, size))

    def _workflow_truth(self, w: JSON, size: int) -> JSON:
        workflow = self.history.workflows[w["id"]]
        jobs = _walk(lambda t: self.job_list(workflow, t, size))
        by_id = {j.id: j for j in workflow.jobs}
        return {**w, "jobs": [{**j, "details": self.details(by_id[j["id"]])} for j in jobs]}


def _walk(fetch: Callable[[str | None], JSON]) -> list[JSON]:
    items: list[JSON] = []
    token: str | None = None
    while True:
        page = fetch(token)
        items.extend(page["items"])
        token = page.get("next_page_token")
        if not token:
            return items
