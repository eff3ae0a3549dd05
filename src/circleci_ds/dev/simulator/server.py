"""The aiohttp application: API v2 routes, auth, rate limit, faults, latency, counters and admin routes."""

from __future__ import annotations

import asyncio
import json
import math
import random
import time
import uuid
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Any, Protocol

from aiohttp import web

from .config import SimConfig
from .history import History, Pipeline, Project, Workflow
from .ratelimit import Decision, Limiter, make_limiter
from .render import (
    JSON,
    InvalidPageToken,
    View,
    decode_token,
    details_visible,
    encode_token,
    http_date,
    iso_ms,
    iso_s,
    past_retention,
    render_project,
    render_user,
    users_truth,
)
from .testresults import job_tests, results_page
from .usage import HOUR_MS, ExportJob, UsageData, UsageState, csv_files, window_problem, within_limit

ENDPOINTS = (
    "pipelines", "pipeline", "workflows", "workflow", "jobs", "job_details", "tests", "project", "me", "user",
    "collaborations", "org_pipelines", "usage_create", "usage_get",
)
Inner = Callable[[web.Request, View, bool], web.Response]
_BODY = web.RequestKey("body", bytes)  # a POST's body, read before the synchronous handler runs
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

_FAULT_BODIES = {
    500: ("Internal Server Error", "Internal Server Error"),
    502: ("Bad Gateway", "upstream connect error or disconnect/reset before headers"),
    503: ("Service Unavailable", "no healthy upstream"),
}


class Stats:
    """Request counters for the non-admin API, and how busy it was (for benchmarks: requests in flight
    over time, and when each kind of request was first and last asked, on this process's monotonic
    clock)."""

    def __init__(self) -> None:
        self.in_flight = 0
        self.reset()

    def reset(self) -> None:
        self.requests = 0
        self.by_endpoint = dict.fromkeys(ENDPOINTS, 0)
        self.status: dict[str, int] = {}
        self.max_in_flight = self.in_flight
        self.in_flight_seconds = 0.0  # the sum over time of the requests in flight
        self.spans: dict[str, list[float]] = {}  # kind -> [first asked, last asked]
        self._since = time.monotonic()

    def _busy(self) -> float:
        now = time.monotonic()
        self.in_flight_seconds += self.in_flight * (now - self._since)
        self._since = now
        return now

    def begin(self, kind: str | None) -> None:
        now = self._busy()
        self.requests += 1
        if kind is not None:
            self.by_endpoint[kind] += 1
            self.spans.setdefault(kind, [now, now])[1] = now
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)

    def end(self, status: int | None) -> None:
        self._busy()
        self.in_flight -= 1
        if status is not None:
            key = str(status)
            self.status[key] = self.status.get(key, 0) + 1

    def snapshot(self) -> dict[str, Any]:
        self._busy()
        return {
            "requests": self.requests,
            "by_endpoint": dict(self.by_endpoint),
            "status": dict(self.status),
            "max_in_flight": self.max_in_flight,
            "in_flight_seconds": self.in_flight_seconds,
            "spans": {kind: list(span) for kind, span in self.spans.items()},
        }


def _response(view: View, status: int, body: bytes, content_type: str = "application/json") -> web.Response:
    # The simulated clock, not the wall clock, is the server time clients see.
    return web.Response(body=body, status=status, content_type=content_type, headers={"Date": view.date})


def _message(view: View, status: int, message: str) -> web.Response:
    return _response(view, status, json.dumps({"message": message}).encode())


def _json(view: View, payload: Any, status: int = 200) -> web.Response:
    return _response(view, status, json.dumps(payload).encode())


def quota_headers(form: str, decision: Decision, now_ms: int) -> dict[str, str]:
    """Quota headers for `form` in RATE_HEADER_FORMS, in whole seconds rounded up: `RateLimit-*` (reset in
    seconds from now), `X-RateLimit-*` (reset as epoch seconds of the server's clock, like GitHub's), both,
    or `structured` (the IETF draft's current `RateLimit` and `RateLimit-Policy` fields)."""
    reset = math.ceil(decision.reset)
    headers: dict[str, str] = {}
    if form in ("ratelimit", "both"):
        headers |= {
            "RateLimit-Limit": str(decision.limit),
            "RateLimit-Remaining": str(decision.remaining),
            "RateLimit-Reset": str(reset),
        }
    if form in ("x-ratelimit", "both"):
        headers |= {
            "X-RateLimit-Limit": str(decision.limit),
            "X-RateLimit-Remaining": str(decision.remaining),
            "X-RateLimit-Reset": str(now_ms // 1000 + reset),
        }
    if form == "structured":
        window = max(1, math.ceil(decision.window))
        headers |= {
            "RateLimit": f'"default";r={decision.remaining};t={reset}',
            "RateLimit-Policy": f'"default";q={decision.limit};w={window}',
        }
    return headers


def project_path_kind(rest: str) -> str | None:
    """Which endpoint a `/project/...` path addresses; slugs are always three segments."""
    parts = rest.strip("/").split("/")
    if len(parts) == 3:
        return "project"
    if len(parts) == 4 and parts[3] == "pipeline":
        return "pipelines"
    if len(parts) == 5 and parts[3] == "job":
        return "job_details"
    if len(parts) == 5 and parts[4] == "tests":
        return "tests"
    return None


class SimState(Protocol):
    """What the server reads and drives of a simulator (sim.Simulator is the one): the server depends
    on this, not on the simulator, so the simulator can build its server without an import cycle."""

    config: SimConfig
    history: History
    recorder: Stats
    me: JSON
    usage: UsageState
    usage_file_hook: Callable[[str, int, bytes], bytes] | None

    @property
    def usage_data(self) -> UsageData: ...

    @property
    def view(self) -> View: ...

    @property
    def stats(self) -> dict[str, Any]: ...

    def advance(self, seconds: float) -> None: ...

    def truth(self, project_slug: str) -> list[JSON]: ...

    def test_truth(self, project_slug: str) -> list[JSON]: ...

    def reset_stats(self) -> None: ...

    def configure(self, **changes: Any) -> dict[str, object]: ...


class Api:
    """Request handling for one simulator; state lives in the simulator so knobs apply immediately."""

    def __init__(self, sim: SimState) -> None:
        self.sim = sim
        self._limiter: tuple[tuple[str, float, int], Limiter] | None = None
        self._faults = random.Random(f"circleci-ds-sim:{sim.config.seed}:faults")
        self._jitter = random.Random(f"circleci-ds-sim:{sim.config.seed}:jitter")
        self._throttled = 0
        self._export_ids = random.Random(f"circleci-ds-sim:{sim.config.seed}:exports")
        self._project_inner: dict[str | None, Inner] = {
            "project": self._project,
            "pipelines": self._pipelines,
            "job_details": self._job_details,
            "tests": self._tests,
            None: self._unknown_path,
        }

    def app(self) -> web.Application:
        app = web.Application()
        add = app.router.add_route
        for prefix in ("", "/api/v2"):
            add("POST", f"{prefix}/_sim/advance", self._admin_advance)
            add("GET", f"{prefix}/_sim/clock", self._admin_clock)
            add("GET", f"{prefix}/_sim/truth", self._admin_truth)
            add("GET", f"{prefix}/_sim/truth/tests", self._admin_test_truth)
            add("GET", f"{prefix}/_sim/users", self._admin_users)
            add("GET", f"{prefix}/_sim/stats", self._admin_stats)
            add("POST", f"{prefix}/_sim/reset-stats", self._admin_reset_stats)
            add("POST", f"{prefix}/_sim/config", self._admin_config)
        add("GET", "/api/v2/project/{rest:.+}", self._project_route)
        add("GET", "/api/v2/pipeline/{id}/workflow", self._route("workflows", self._workflows))
        add("GET", "/api/v2/pipeline/{id}", self._route("pipeline", self._pipeline))
        add("GET", "/api/v2/workflow/{id}/job", self._route("jobs", self._jobs))
        add("GET", "/api/v2/workflow/{id}", self._route("workflow", self._workflow))
        add("GET", "/api/v2/me/collaborations", self._route("collaborations", self._collaborations))
        add("GET", "/api/v2/pipeline", self._route("org_pipelines", self._org_pipelines))
        usage = "/api/v2/organizations/{org}/usage_export_job"
        add("POST", usage, self._with_body("usage_create", self._usage_create))
        add("GET", usage + "/{id}", self._route("usage_get", self._usage_get))
        add("GET", "/api/v2/me", self._route("me", self._me))
        add("GET", "/api/v2/user/{id}", self._route("user", self._user))
        add("*", "/{tail:.*}", self._route(None, self._unknown_path))
        return app

    # -- the guarded request path ----------------------------------------------------------------------

    def _route(self, kind: str | None, inner: Inner) -> Handler:
        async def handler(request: web.Request) -> web.StreamResponse:
            return await self._serve(request, kind, inner)

        return handler

    def _with_body(self, kind: str, inner: Inner) -> Handler:
        async def handler(request: web.Request) -> web.StreamResponse:
            request[_BODY] = await request.content.read(64 * 1024)
            return await self._serve(request, kind, inner)

        return handler

    async def _project_route(self, request: web.Request) -> web.StreamResponse:
        kind = project_path_kind(request.match_info["rest"])
        return await self._serve(request, kind, self._project_inner[kind])

    async def _serve(self, request: web.Request, kind: str | None, inner: Inner) -> web.StreamResponse:
        stats = self.sim.recorder
        stats.begin(kind)
        status: int | None = None
        try:
            response = await self._answer(request, inner)
            status = response.status
            return response
        finally:
            stats.end(status)

    async def _answer(self, request: web.Request, inner: Inner) -> web.Response:
        cfg = self.sim.config
        decision = self._rate_limit()
        await self._latency()
        view = self.sim.view  # read after the sleep: the clock may have moved meanwhile
        if decision is not None and not decision.admitted:
            response = self._too_many(view, decision.wait)
        elif cfg.fault_rate > 0 and self._faults.random() < cfg.fault_rate:
            response = self._fault(view)
        elif (authed := self._authenticate(request)) is None:
            response = _message(view, 401, "Invalid token provided.")
        else:
            response = inner(request, view, authed)
        if decision is not None:
            response.headers.update(quota_headers(cfg.rate_headers, decision, view.now))
        return response

    def _rate_limit(self) -> Decision | None:
        cfg = self.sim.config
        if cfg.rate_limit_rps is None:
            return None
        shape = (cfg.limiter, cfg.rate_limit_rps, cfg.rate_burst)
        if self._limiter is None or self._limiter[0] != shape:
            self._limiter = (shape, make_limiter(*shape))
        return self._limiter[1].take()

    async def _latency(self) -> None:
        cfg = self.sim.config
        delay = cfg.latency_ms
        if cfg.jitter_ms:
            delay += self._jitter.uniform(-cfg.jitter_ms, cfg.jitter_ms)
        if delay > 0:
            await asyncio.sleep(delay / 1000)

    def _too_many(self, view: View, wait: float) -> web.Response:
        seconds = max(1, math.ceil(wait))
        count = self._throttled
        self._throttled += 1
        cfg = self.sim.config
        form = ("seconds", "date")[count % 2] if cfg.retry_after == "both" else cfg.retry_after
        body = ("json", "text")[(count // 2) % 2] if cfg.limit_body == "both" else cfg.limit_body
        # With both alternating, every (Retry-After form, body kind) pair occurs over any four 429s.
        if body == "text":
            response = _response(view, 429, b"Rate limited.", content_type="text/plain")
        else:
            response = _message(view, 429, "Rate limit exceeded")
        if form != "none":
            retry = str(seconds) if form == "seconds" else http_date(view.now + seconds * 1000)
            response.headers["Retry-After"] = retry
        return response

    def _fault(self, view: View) -> web.Response:
        status = self._faults.choice((500, 502, 503))
        title, text = _FAULT_BODIES[status]
        style = self._faults.choice(("json", "html", "text"))
        if style == "json":
            return _message(view, status, title)
        if style == "html":
            heading = f"{status} {title}"
            html = f"<html><head><title>{heading}</title></head><body><h1>{heading}</h1></body></html>"
            return _response(view, status, html.encode(), content_type="text/html")
        return _response(view, status, text.encode(), content_type="text/plain")

    def _authenticate(self, request: web.Request) -> bool | None:
        """True with a valid token, False without one, None for a wrong one (any token is valid
        when none is configured)."""
        token = request.headers.get("Circle-Token", "")
        if not token:
            return False
        expected = self.sim.config.token
        return True if expected is None or token == expected else None

    # -- lookups ---------------------------------------------------------------------------------------

    def _project_at(self, request: web.Request, authed: bool) -> Project | None:
        project = self.sim.history.project("/".join(request.match_info["rest"].strip("/").split("/")[:3]))
        if project is None or (project.private and not authed):
            return None  # private projects hide behind 404 like on CircleCI
        return project

    def _pipeline_at(self, request: web.Request, view: View, authed: bool) -> Pipeline | str:
        pipeline = self.sim.history.pipelines.get(request.match_info["id"])
        if pipeline is None or pipeline.created_at > view.now:
            return "Pipeline not found"
        if pipeline.project.private and not authed:
            return "Project not found"
        return pipeline

    def _workflow_at(self, request: web.Request, view: View, authed: bool) -> Workflow | str:
        workflow = self.sim.history.workflows.get(request.match_info["id"])
        if workflow is None or workflow.created_at > view.now:
            return "Workflow not found"
        if workflow.pipeline.project.private and not authed:
            return "Project not found"
        return workflow

    @staticmethod
    def _page_token(request: web.Request) -> str | None:
        return request.query.get("page-token") or None

    # -- API endpoints ---------------------------------------------------------------------------------

    def _project(self, request: web.Request, view: View, authed: bool) -> web.Response:
        project = self._project_at(request, authed)
        if project is None:
            return _message(view, 404, "Project not found")
        return _response(view, 200, view.body(("project", project.slug), lambda: render_project(project)))

    def _pipelines(self, request: web.Request, view: View, authed: bool) -> web.Response:
        project = self._project_at(request, authed)
        if project is None:
            return _message(view, 404, "Project not found")
        branch = request.query.get("branch") or None
        token = self._page_token(request)
        size = self.sim.config.page_size
        key = ("pipelines", project.slug, branch, token, size)
        return self._list(view, key, lambda: view.pipeline_list(project, branch, token, size))

    def _pipeline(self, request: web.Request, view: View, authed: bool) -> web.Response:
        found = self._pipeline_at(request, view, authed)
        if isinstance(found, str):
            return _message(view, 404, found)
        return _response(view, 200, view.body(("pipeline", found.id), lambda: view.pipeline(found)))

    def _workflows(self, request: web.Request, view: View, authed: bool) -> web.Response:
        found = self._pipeline_at(request, view, authed)
        if isinstance(found, str):
            return _message(view, 404, found)
        if past_retention(found, view.now, self.sim.config.retention_days):
            return _message(view, 404, "Pipeline not found")
        token = self._page_token(request)
        size = self.sim.config.page_size
        key = ("workflows", found.id, token, size)
        return self._list(view, key, lambda: view.workflow_list(found, token, size))

    def _workflow(self, request: web.Request, view: View, authed: bool) -> web.Response:
        found = self._workflow_at(request, view, authed)
        if isinstance(found, str):
            return _message(view, 404, found)
        return _response(view, 200, view.body(("workflow", found.id), lambda: view.workflow(found)))

    def _jobs(self, request: web.Request, view: View, authed: bool) -> web.Response:
        found = self._workflow_at(request, view, authed)
        if isinstance(found, str):
            return _message(view, 404, found)
        token = self._page_token(request)
        size = self.sim.config.page_size
        key = ("jobs", found.id, token, size)
        return self._list(view, key, lambda: view.job_list(found, token, size))

    def _job_details(self, request: web.Request, view: View, authed: bool) -> web.Response:
        project = self._project_at(request, authed)
        if project is None:
            return _message(view, 404, "Project not found")
        number = request.match_info["rest"].strip("/").split("/")[4]
        job = project.jobs_by_number.get(int(number)) if number.isdigit() else None
        if job is None or not details_visible(job, view.now):
            return _message(view, 404, "Job not found")
        return _response(view, 200, view.body(("details", job.id), lambda: view.details(job) or {}))

    def _tests(self, request: web.Request, view: View, authed: bool) -> web.Response:
        project = self._project_at(request, authed)
        if project is None:
            return _message(view, 404, "Project not found")
        number = request.match_info["rest"].strip("/").split("/")[3]
        job = project.jobs_by_number.get(int(number)) if number.isdigit() else None
        cfg = self.sim.config
        found = None
        if job is not None:
            found = job_tests(cfg.seed, cfg.test_suite_scale, project, job, view.now, cfg.untested_share)
        if job is None or found is None or not found.found:
            return _message(view, 404, "Job not found" if job is None else "No test results found")
        size = cfg.tests_page_size
        try:
            page = results_page(cfg.seed, job, found, self._page_token(request), size)
        except InvalidPageToken:
            return _message(view, 400, "Invalid page-token.")
        return _json(view, page)  # not memoised: large suites would pin every page in memory

    def _me(self, request: web.Request, view: View, authed: bool) -> web.Response:
        if not authed:
            return _message(view, 401, "You must log in first.")
        return _json(view, self.sim.me)

    def _user(self, request: web.Request, view: View, authed: bool) -> web.Response:
        if not authed:
            return _message(view, 401, "You must log in first.")
        user = self.sim.history.people.get(request.match_info["id"])
        if user is None or user.deleted:  # deleted accounts answer 404, like unknown ids
            return _message(view, 404, "User not found")
        return _response(view, 200, view.body(("user", user.id), lambda: render_user(user)))

    def _unknown_path(self, request: web.Request, view: View, authed: bool) -> web.Response:
        return _message(view, 404, "Not found")

    # -- organisations ---------------------------------------------------------------------------------

    def _collaborations(self, request: web.Request, view: View, authed: bool) -> web.Response:
        if not authed:
            return _message(view, 401, "You must log in first.")
        orgs: dict[str, JSON] = {}
        for project in self.sim.history.projects.values():
            vcs = {"gh": "github", "bb": "bitbucket"}.get(project.slug.split("/")[0], "circleci")
            orgs.setdefault(
                project.org_slug.lower(),
                {
                    "id": project.org_id,
                    "vcs-type": vcs,
                    "name": project.org_name,
                    "avatar_url": f"https://avatars.example.com/{project.org_name}",
                    "slug": project.org_slug,
                },
            )
        return _json(view, [orgs[key] for key in sorted(orgs)])

    def _org_pipelines(self, request: web.Request, view: View, authed: bool) -> web.Response:
        """GET /pipeline?org-slug=: the visible projects' pipelines of the organisation, newest first
        (public projects answer without a token here, as the other routes do)."""
        wanted = _org_key(request.query.get("org-slug", ""))
        if wanted is None:
            return _message(view, 400, "Missing or malformed org-slug.")
        projects = [p for p in self.sim.history.projects.values() if p.org_slug.lower() == wanted]
        if not projects:
            return _message(view, 404, "Organization not found")
        visible = [p for p in projects if authed or not p.private]
        pipelines = [pl for p in visible for pl in p.index.pipelines[: p.index.visible_count(view.now)]]
        pipelines.sort(key=lambda pl: (-pl.created_at, pl.id))
        token = self._page_token(request)
        try:
            offset = int(decode_token("o", token)) if token else 0
        except (InvalidPageToken, ValueError):
            return _message(view, 400, "Invalid page-token.")
        size = self.sim.config.page_size
        page = pipelines[offset : offset + size]
        following = encode_token("o", str(offset + size)) if offset + size < len(pipelines) else None
        return _json(view, {"items": [view.pipeline(pl) for pl in page], "next_page_token": following})

    # -- usage exports ---------------------------------------------------------------------------------

    def _usage_refusal(
        self,
        request: web.Request,
        view: View,
        authed: bool,
        sent: dict[str, list[int]],
        limit: int,
        window_ms: int,
    ) -> web.Response | None:
        """The usage routes' first steps: the organisation's access, then the route's limit (`sent`:
        its requests' times by organisation, this one counted when admitted); None: it goes on."""
        denied = self.sim.config.usage_denied
        if denied is not None:
            return _message(view, denied, "Permission denied" if denied == 403 else "Not found")
        if not authed:
            return _message(view, 401, "Invalid token provided.")
        org = request.match_info["org"]
        if org not in self.sim.usage_data.by_org:
            return _message(view, 404, "Organization does not exist.")
        with self.sim.usage.lock:
            admitted = within_limit(sent.setdefault(org, []), view.now, limit, window_ms)
        return None if admitted else _message(view, 429, "Rate limit exceeded.")

    def _usage_create(self, request: web.Request, view: View, authed: bool) -> web.Response:
        cfg, state = self.sim.config, self.sim.usage
        refused = self._usage_refusal(request, view, authed, state.posts, cfg.usage_post_limit, HOUR_MS)
        if refused is not None:
            return refused
        org = request.match_info["org"]
        window = _export_window(request[_BODY])
        if isinstance(window, str):
            return _message(view, 400, window)
        start, end = window
        problem = window_problem(start, end, view.now)
        if problem is not None:
            return _message(view, 400, problem)
        rows = self.sim.usage_data.window(org, view.now, start, end)
        with state.lock:
            job_id = str(uuid.UUID(int=self._export_ids.getrandbits(128), version=4))
            state.jobs[job_id] = ExportJob(job_id, org, start, end, view.now, rows)
        body = {
            "usage_export_job_id": job_id,
            "state": "created",
            "start": iso_s(start),
            "end": iso_s(end),
            "download_urls": None,
        }
        return _json(view, body, status=201)

    def _usage_get(self, request: web.Request, view: View, authed: bool) -> web.Response:
        cfg, state = self.sim.config, self.sim.usage
        window = int(cfg.usage_get_window_s * 1000)
        refused = self._usage_refusal(request, view, authed, state.gets, cfg.usage_get_limit, window)
        if refused is not None:
            return refused
        with state.lock:
            job = state.jobs.get(request.match_info["id"])
        if job is None or job.org_id != request.match_info["org"]:
            return _message(view, 404, "Usage export not found.")
        job.polls += 1
        urls: list[str] | None = None
        if view.now - job.created_ms < cfg.usage_export_seconds * 1000:
            status = "created" if job.polls == 1 else "processing"
        else:
            status = "completed"
            job.completed_polls += 1
            if job.completed_polls > cfg.usage_null_url_polls or not job.rows:  # URLs come a little later
                urls = self._download_urls(job, view.now)
        return _json(view, {"usage_export_job_id": job.id, "state": status, "download_urls": urls})

    def _download_urls(self, job: ExportJob, now: int) -> list[str]:
        state = self.sim.usage
        if job.files is None:
            job.files = csv_files(job.rows, self.sim.config.usage_rows_per_file)
        return [
            f"{state.download_origin}/usage/{job.id}/part-{part}.csv.gz"
            f"?sig={state.signature(job.id, part)}&minted={now}"
            for part in range(len(job.files))
        ]

    # -- the download origin ---------------------------------------------------------------------------

    def downloads_app(self) -> web.Application:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._download)
        return app

    async def _download(self, request: web.Request) -> web.Response:
        state = self.sim.usage
        with state.lock:
            state.download_requests.append(
                {"method": request.method, "path": request.path, "headers": dict(request.headers)}
            )
        parts = request.path.strip("/").split("/")
        job = state.jobs.get(parts[1]) if len(parts) == 3 and parts[0] == "usage" else None
        name = parts[2] if len(parts) == 3 else ""
        number = name.removeprefix("part-").removesuffix(".csv.gz")
        if job is None or job.files is None or not number.isdigit() or int(number) >= len(job.files):
            return web.Response(status=404, text="NoSuchKey")
        if request.query.get("sig") != state.signature(job.id, int(number)):
            return web.Response(status=403, text="SignatureDoesNotMatch")
        data = job.files[int(number)]
        hook = self.sim.usage_file_hook
        if hook is not None:
            data = hook(job.id, int(number), data)
        return web.Response(body=data, content_type="application/x-gzip")

    def _list(self, view: View, key: tuple[object, ...], make: Callable[[], JSON]) -> web.Response:
        try:
            return _response(view, 200, view.body(key, make))
        except InvalidPageToken:
            return _message(view, 400, "Invalid page-token.")

    # -- admin (no auth, latency, limits or counting) --------------------------------------------------

    async def _admin_advance(self, request: web.Request) -> web.Response:
        try:
            seconds = float(request.query.get("seconds", "0"))
            self.sim.advance(seconds)
        except ValueError as exc:
            return _message(self.sim.view, 400, str(exc))
        return self._clock_body()

    async def _admin_clock(self, request: web.Request) -> web.Response:
        return self._clock_body()

    def _clock_body(self) -> web.Response:
        view = self.sim.view
        return _json(view, {"now": iso_ms(view.now), "epoch_ms": view.now})

    async def _admin_truth(self, request: web.Request) -> web.Response:
        view = self.sim.view
        try:
            truth = self.sim.truth(request.query.get("project", ""))
        except KeyError:
            return _message(view, 404, "Project not found")
        return _json(view, truth)

    async def _admin_test_truth(self, request: web.Request) -> web.Response:
        view = self.sim.view
        try:
            truth = self.sim.test_truth(request.query.get("project", ""))
        except KeyError:
            return _message(view, 404, "Project not found")
        return _json(view, truth)

    async def _admin_users(self, request: web.Request) -> web.Response:
        return _json(self.sim.view, users_truth(self.sim.history))

    async def _admin_stats(self, request: web.Request) -> web.Response:
        return _json(self.sim.view, self.sim.stats)

    async def _admin_reset_stats(self, request: web.Request) -> web.Response:
        self.sim.reset_stats()
        return _json(self.sim.view, self.sim.stats)

    async def _admin_config(self, request: web.Request) -> web.Response:
        try:
            changes = await request.json()
            if not isinstance(changes, dict):
                raise ValueError("expected a JSON object of knob changes")
            knobs = self.sim.configure(**changes)
        except (ValueError, TypeError) as exc:
            return _message(self.sim.view, 400, str(exc))
        return _json(self.sim.view, knobs)


def _org_key(written: str) -> str | None:
    """`github/acme` -> `gh/acme`, lower-cased; None when not `vcs/org`."""
    parts = written.strip("/").split("/")
    vcs = {"gh": "gh", "github": "gh", "bb": "bb", "bitbucket": "bb", "circleci": "circleci"}
    if len(parts) != 2 or not parts[1] or parts[0].lower() not in vcs:
        return None
    return f"{vcs[parts[0].lower()]}/{parts[1]}".lower()


def _export_window(body: bytes) -> tuple[int, int] | str:
    """(start, end) in ms from a POST body, or the 400 message (the real API's wording where known)."""
    try:
        data = json.loads(body)
    except ValueError:
        return "malformed request body"
    if not isinstance(data, dict):
        return "Unexpected request body provided."
    for key in data:
        if key not in ("start", "end", "shared_org_ids"):
            return f"Unexpected field: {key}"
    shared = data.get("shared_org_ids", [])
    if not isinstance(shared, list) or not all(isinstance(x, str) and _is_uuid(x) for x in shared):
        return "malformed request body"
    try:
        start, end = (_rfc3339(data[key]) for key in ("start", "end"))
    except (KeyError, TypeError, ValueError):
        return "malformed request body"
    return start, end


def _rfc3339(value: object) -> int:
    if not isinstance(value, str):
        raise TypeError(value)
    moment = datetime.fromisoformat(value)
    if moment.tzinfo is None:
        raise ValueError(value)
    return round(moment.timestamp() * 1000)


def _is_uuid(text: str) -> bool:
    try:
        uuid.UUID(text)
    except ValueError:
        return False
    return True
