"""HTTP helpers for the simulator tests: a thin client, an API walker and the patched OpenAPI spec."""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiohttp

SPEC_FILE = Path(__file__).resolve().parent / "data" / "openapi-v2.json"  # CircleCI's, verbatim
SPEC_SERVER = "https://circleci.com"


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes
    content_type: str

    def json(self) -> Any:
        return json.loads(self.body)


Validator = Callable[[str, dict[str, str], Reply], None]


class Http:
    """GETs against a simulator, remembering how each list's last page ended."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        base_url: str,
        token: str | None = None,
        validate: Validator | None = None,
    ) -> None:
        self.session = session
        self.base_url = base_url
        self.token = token
        self.validate = validate
        self.last_page_forms: Counter[str] = Counter()

    async def get(self, path: str, token: str | None = None, **params: str) -> Reply:
        token = self.token if token is None else token
        headers = {"Circle-Token": token} if token else {}
        async with self.session.get(self.base_url + path, params=params, headers=headers) as response:
            body = await response.read()
            reply = Reply(response.status, dict(response.headers), body, response.content_type)
        if self.validate is not None:
            self.validate(path, params, reply)
        return reply

    async def pages(self, path: str, missing_ok: bool = False, **params: str) -> list[dict[str, Any]] | None:
        """All items of a paginated list, or None when `missing_ok` and the list answers 404."""
        items: list[dict[str, Any]] = []
        while True:
            reply = await self.get(path, **params)
            if missing_ok and reply.status == 404 and not items:
                return None
            assert reply.status == 200, (path, reply.status, reply.body[:200])
            page = reply.json()
            items.extend(page["items"])
            token = page.get("next_page_token")
            if not token:
                self.last_page_forms["absent" if "next_page_token" not in page else "null"] += 1
                return items
            params = {**params, "page-token": token}


def slug_path(slug: str) -> str:
    return quote(slug, safe="")


JobFilter = Callable[[dict[str, Any]], bool]


async def walk_project(http: Http, slug: str, fetch_details: JobFilter | None = None) -> list[dict[str, Any]]:
    """The project's history as the HTTP API shows it, shaped like `Simulator.truth`."""
    return await _Walker(http, slug, fetch_details or (lambda job: True)).project()


@dataclass
class _Walker:
    """Follows every list and single-object endpoint; job details are fetched for the numbered jobs
    that `fetch_details` picks (the others get None)."""

    http: Http
    slug: str
    fetch_details: JobFilter

    async def project(self) -> list[dict[str, Any]]:
        pipelines = await self.http.pages(f"/project/{self.slug}/pipeline") or []
        return [await self.pipeline(p) for p in pipelines]

    async def pipeline(self, pipeline: dict[str, Any]) -> dict[str, Any]:
        single = await self.http.get(f"/pipeline/{pipeline['id']}")
        assert single.json() == pipeline
        # A pipeline past retention is listed but its workflow list answers 404.
        workflows = await self.http.pages(f"/pipeline/{pipeline['id']}/workflow", missing_ok=True) or []
        return {**pipeline, "workflows": [await self.workflow(w) for w in workflows]}

    async def workflow(self, workflow: dict[str, Any]) -> dict[str, Any]:
        single = await self.http.get(f"/workflow/{workflow['id']}")
        assert single.json() == workflow
        jobs = await self.http.pages(f"/workflow/{workflow['id']}/job") or []
        details = await asyncio.gather(*(self.details(job) for job in jobs))
        return {**workflow, "jobs": [{**job, "details": d} for job, d in zip(jobs, details, strict=True)]}

    async def details(self, job: dict[str, Any]) -> dict[str, Any] | None:
        if "job_number" not in job or not self.fetch_details(job):
            return None
        reply = await self.http.get(f"/project/{self.slug}/job/{job['job_number']}")
        if job["type"] == "approval":
            assert reply.status == 404, "approval jobs have no job details"
            return None
        assert reply.status == 200, reply.body
        return reply.json()


# -- the OpenAPI document, with the README's documented deviations applied ------------------------------


def _x_nullable_to_nullable(node: Any) -> None:
    # The document marks nullable fields Swagger-2 style (`x-nullable`), which OpenAPI 3.0 validators
    # ignore; honouring the spec's own flag is reading it, not deviating from it.
    if isinstance(node, dict):
        if node.get("x-nullable") is True:
            node["nullable"] = True
        for value in node.values():
            _x_nullable_to_nullable(value)
    elif isinstance(node, list):
        for value in node:
            _x_nullable_to_nullable(value)


def _ok_schema(spec: dict[str, Any], path: str) -> dict[str, Any]:
    schema: dict[str, Any] = spec["paths"][path]["get"]["responses"]["200"]["content"]["application/json"]
    return schema["schema"]


def patched_spec() -> dict[str, Any]:
    """A copy of openapi-v2.json with ONLY the deviations documented in tests/data/README.md."""
    spec: dict[str, Any] = json.loads(SPEC_FILE.read_text())
    _x_nullable_to_nullable(spec)
    lists = ("/project/{project-slug}/pipeline", "/pipeline/{pipeline-id}/workflow", "/workflow/{id}/job")
    for path in lists:
        # Deviation: the last page may omit `next_page_token` instead of sending null.
        _ok_schema(spec, path)["required"].remove("next_page_token")
    # Deviation: `started_at` is null for jobs that never started (job list and job details).
    job_item = _ok_schema(spec, "/workflow/{id}/job")["properties"]["items"]["items"]
    job_details = _ok_schema(spec, "/project/{project-slug}/job/{job-number}")
    for job in (job_item, job_details):
        job["properties"]["started_at"]["nullable"] = True
    # `job_number` absent for blocked/not-run jobs and `vcs` absent: both are already optional in the spec.
    pipeline_item = _ok_schema(spec, "/project/{project-slug}/pipeline")["properties"]["items"]["items"]
    for pipeline in (pipeline_item, _ok_schema(spec, "/pipeline/{pipeline-id}")):
        # Deviation: `vcs.provider_name` can be null.
        pipeline["properties"]["vcs"]["properties"]["provider_name"]["nullable"] = True
        # Deviation: trigger types outside the enum occur.
        trigger_type = pipeline["properties"]["trigger"]["properties"]["type"]
        trigger_type["enum"] += ["Decoupled Ingestion System", "unknown"]
    # Deviation: `/workflow/{id}/job` is paginated although the spec declares no `page-token` for it.
    spec["paths"]["/workflow/{id}/job"]["get"]["parameters"].append(
        {"in": "query", "name": "page-token", "schema": {"type": "string"}, "required": False}
    )
    # Deviation: test metadata is paginated like the lists (the spec declares no `page-token` for it).
    spec["paths"]["/project/{project-slug}/{job-number}/tests"]["get"]["parameters"].append(
        {"in": "query", "name": "page-token", "schema": {"type": "string"}, "required": False}
    )
    return spec


def spec_path(path: str) -> str:
    """The request path as the spec's server sees it, with the project slug as one escaped segment."""
    if path.startswith("/project/"):
        parts = path.split("/")
        path = "/".join(["", "project", slug_path("/".join(parts[2:5])), *parts[5:]])
    return "/api/v2" + path
