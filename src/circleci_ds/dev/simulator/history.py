"""Deterministic synthetic CircleCI history: projects, pipelines, workflows and jobs with all event times.

Everything is generated eagerly from the seed. Times are integer milliseconds since the epoch; what the
API shows at a given clock is derived from these records by `render`.
"""

from __future__ import annotations

import random
import uuid
from bisect import bisect_right
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any

from .config import SimConfig, SimProject, canonical_slug
from .lifecycle import HOUR, MINUTE, SECOND, JobRun, JobSpec, RunOptions, WorkflowRun, simulate_run
from .lifecycle import WorkflowTemplate as Template
from .templates import project_templates

DAY = 24 * HOUR
RERUN_MIN_DELAY = 10 * MINUTE
RERUN_MAX_DELAY = 48 * HOUR
RERUN_DEADLINE = 60 * HOUR  # no rerun is created later than this after its pipeline

HUMANS = ("alice-dev", "bob-builder", "carol-sre", "dmitri.k", "eve_ops", "fatima-qa", "gus")
BOTS = ("dependabot[bot]", "renovate-bot", "github-actions[bot]")
# Display names of the users behind the logins (GET /user/{id}); a bot's name is its login.
USER_NAMES = {
    "alice-dev": "Alice Developer",
    "bob-builder": "Bob <b>Builder</b>",
    "carol-sre": "Carol Site-Reliability",
    "dmitri.k": "Dmitri [bold]Kuznetsov[/bold]",
    "eve_ops": "Eve Operations",
    "fatima-qa": "Fátima Quality",
    "gus": "Gus Gone",
}
DELETED_USERS = frozenset({"gus"})  # accounts deleted since: GET /user/{id} answers 404
COMMIT_SUBJECTS = (
    "Fix flaky retry in upload client",
    "Add pagination to /orders endpoint",
    "Refactor config loader",
    "Update README",
    'Escape <script>alert(1)</script> & "quotes" in templates',
    "Ünïcödé handling in CSV export ✓",
    "WIP",
    "Revert \"Bump timeout to 30s\"",
    "Merge pull request #{pr} from acme/feature/{branch}",
)
FEATURE_BRANCHES = ("feature/login-v2", "fix/null-deref", "feature/search", "chore/ci-cache", "exp/rust-port")
ERROR_MESSAGES = (
    ("config", "Config does not conform to schema: {'jobs': 'unknown job test-shard-99'}"),
    ("config-fetch", "Unable to fetch .circleci/config.yml from the repository"),
    ("plan", "Your plan has run out of credits"),
)
PROVIDERS = {
    "gh": ("GitHub", "https://github.com", "github"),
    "bb": ("Bitbucket", "https://bitbucket.org", "bitbucket"),
}
CIRCLECI_NAMES = ("payments", "search-indexer", "ledger", "mobile-gateway")


@dataclass(slots=True, eq=False)
class Job:
    """One job of one workflow run."""

    id: str
    spec: JobSpec
    dependencies: list[str]
    run: JobRun
    workflow: Workflow = field(repr=False)
    carries_number: bool = True  # build jobs always, approval jobs only sometimes
    number: int | None = None
    approval_request_id: str | None = None
    approved_by: str | None = None

    @property
    def numbered_at(self) -> int | None:
        """When the job number becomes visible (queue time, or on-hold time for approvals)."""
        return self.run.queued_at if self.carries_number else None


@dataclass(slots=True, eq=False)
class Workflow:
    """One workflow run under a pipeline; reruns are separate Workflow records with the same name."""

    id: str
    name: str
    created_at: int
    run: WorkflowRun
    started_by: str
    pipeline: Pipeline = field(repr=False)
    jobs: list[Job] = field(default_factory=list, repr=False)
    canceled_by: str | None = None
    auto_rerun_number: int | None = None
    max_auto_reruns: int | None = None
    rerun_of: str | None = None


@dataclass(slots=True, eq=False)
class Pipeline:
    """A pipeline with its trigger data; state changes at `setup_done_at` and never again."""

    id: str
    number: int
    created_at: int
    setup_done_at: int
    final_state: str
    errors: list[dict[str, str]]
    trigger: dict[str, Any]  # type, actor; received_at is rendered from `received_at`
    received_at: int
    vcs: dict[str, Any] | None
    branch: str | None
    project: Project = field(repr=False)
    workflows: list[Workflow] = field(default_factory=list, repr=False)  # ascending (created_at, id)
    workflow_keys: list[tuple[int, str]] = field(default_factory=list, repr=False)


@dataclass(slots=True)
class PipelineIndex:
    """Pipelines in ascending number (hence creation) order, with parallel lists for bisecting."""

    pipelines: list[Pipeline] = field(default_factory=list)
    numbers: list[int] = field(default_factory=list)
    created: list[int] = field(default_factory=list)

    def add(self, pipeline: Pipeline) -> None:
        self.pipelines.append(pipeline)
        self.numbers.append(pipeline.number)
        self.created.append(pipeline.created_at)

    def visible_count(self, now: int) -> int:
        return bisect_right(self.created, now)


@dataclass(slots=True, eq=False)
class Project:
    """A followed project and everything that ever happens in it."""

    slug: str
    name: str
    id: str
    org_name: str
    org_slug: str
    org_id: str
    vcs_url: str
    provider: str  # vcs_info.provider: GitHub | Bitbucket | CircleCI
    provider_name: str  # pipeline vcs.provider_name
    web_slug: str  # slug as it appears in app.circleci.com URLs
    default_branch: str
    private: bool
    index: PipelineIndex = field(default_factory=PipelineIndex, repr=False)
    branches: dict[str, PipelineIndex] = field(default_factory=dict, repr=False)
    jobs_by_number: dict[int, Job] = field(default_factory=dict, repr=False)


@dataclass(frozen=True, slots=True)
class User:
    """A CircleCI user as GET /user/{id} shows it, unless the account was deleted."""

    id: str
    login: str
    name: str
    avatar_url: str | None
    deleted: bool


@dataclass(slots=True)
class History:
    """All projects plus id lookups used by the single-object endpoints."""

    projects: dict[str, Project]  # keyed by lower-cased canonical slug
    pipelines: dict[str, Pipeline]
    workflows: dict[str, Workflow]
    users: dict[str, str]  # login -> user id
    people: dict[str, User] = field(default_factory=dict)  # user id -> user

    def project(self, slug: str) -> Project | None:
        canonical = canonical_slug(slug)
        return self.projects.get(canonical.lower()) if canonical else None


def build_history(cfg: SimConfig) -> History:
    """Generate the complete history described by `cfg`; identical configs give identical histories."""
    users = _users(cfg.seed)
    history = History(projects={}, pipelines={}, workflows={}, users=users, people=_people(users))
    for spec in cfg.projects:
        rng = random.Random(f"circleci-ds-sim:{cfg.seed}:{canonical_slug(spec.slug)}")
        project = _ProjectBuilder(cfg, spec, rng, users).build()
        history.projects[project.slug.lower()] = project
        for pipeline in project.index.pipelines:
            history.pipelines[pipeline.id] = pipeline
            history.workflows.update((w.id, w) for w in pipeline.workflows)
    return history


def epoch_ms(moment: datetime) -> int:
    return round(moment.timestamp() * SECOND)


def new_uuid(rng: random.Random) -> str:
    return str(uuid.UUID(int=rng.getrandbits(128), version=4))


def _users(seed: int) -> dict[str, str]:
    rng = random.Random(f"circleci-ds-sim:{seed}:users")
    return {login: new_uuid(rng) for login in (*HUMANS, *BOTS)}


def _people(users: dict[str, str]) -> dict[str, User]:
    people = {}
    for login, user_id in users.items():
        avatar = None if login in BOTS else f"https://avatars.githubusercontent.com/{login}"
        name = USER_NAMES.get(login, login)
        people[user_id] = User(user_id, login, name, avatar, login in DELETED_USERS)
    return people


def _is_uuid(text: str) -> bool:
    try:
        uuid.UUID(text)
    except ValueError:
        return False
    return True


def make_project(spec: SimProject, rng: random.Random) -> Project:
    """The project's identity: names, ids and VCS coordinates derived from its slug."""
    slug = canonical_slug(spec.slug)
    assert slug is not None
    vcs, org, repo = slug.split("/")
    if vcs == "circleci":
        # GitLab / GitHub App projects: slug parts are ids, names live elsewhere.
        org_id = org if _is_uuid(org) else new_uuid(rng)
        project_id = repo if _is_uuid(repo) else new_uuid(rng)
        name = f"{rng.choice(CIRCLECI_NAMES)}-{rng.randint(1, 99)}"
        org_name = f"acme-{rng.choice(('platform', 'labs', 'mobile'))}"
        return Project(
            slug, name, project_id, org_name, f"circleci/{org}", org_id, f"https://gitlab.com/{org_name}/{name}",
            "CircleCI", "GitLab", slug, spec.default_branch, spec.private,
        )
    provider_name, host, long_vcs = PROVIDERS[vcs]
    project_id = new_uuid(rng)
    new_uuid(rng)  # drawn as before, so the rest of the history stays as it was
    return Project(
        slug, repo, project_id, org, f"{vcs}/{org}", org_uuid(f"{vcs}/{org}"), f"{host}/{org}/{repo}",
        provider_name, provider_name, f"{long_vcs}/{org}/{repo}", spec.default_branch, spec.private,
    )


def org_uuid(org_slug: str) -> str:
    """One id per organisation, whichever of its projects names it."""
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"circleci-ds-sim:{org_slug.lower()}"))


class _ProjectBuilder:
    """Generates one project's pipelines, workflows, reruns and job numbers."""

    def __init__(self, cfg: SimConfig, spec: SimProject, rng: random.Random, users: dict[str, str]) -> None:
        self.cfg = cfg
        self.spec = spec
        self.rng = rng
        self.users = users
        self.project = make_project(spec, rng)
        self.templates = project_templates(rng)

    def build(self) -> Project:
        first_number = self.rng.randint(1, 3000)
        for offset, created in enumerate(self._pipeline_times()):
            pipeline = self._pipeline(first_number + offset, created)
            self.project.index.add(pipeline)
            if pipeline.branch is not None:
                self.project.branches.setdefault(pipeline.branch, PipelineIndex()).add(pipeline)
        self._number_jobs()
        return self.project

    def _pipeline_times(self) -> list[int]:
        start = epoch_ms(self.cfg.start)
        low = start - int(self.cfg.span_days * DAY)
        high = start + int(self.cfg.future_days * DAY)
        if self.spec.every_minutes is not None:
            return self._busy_times(high, int(self.spec.every_minutes * MINUTE))
        times = sorted(self.rng.randint(low, high) for _ in range(self.spec.pipelines))
        for i in range(1, len(times)):  # numbers follow creation order, so keep times distinct
            times[i] = max(times[i], times[i - 1] + 1)
        return times

    def _busy_times(self, end: int, interval: int) -> list[int]:
        """A busy project: one pipeline about every `interval`, the last one at `end`."""
        jitter = interval // 3
        times = [end - i * interval + self.rng.randint(-jitter, 0) for i in range(self.spec.pipelines)]
        return sorted(times)

    # -- pipelines -------------------------------------------------------------------------------------

    def _pipeline(self, number: int, created: int) -> Pipeline:
        rng = self.rng
        trigger_type = _trigger_type(rng)
        actor = _actor(rng, trigger_type)
        branch, tag = self._ref(actor, trigger_type)
        errored = rng.random() < 0.03
        error_type, error_message = rng.choice(ERROR_MESSAGES)
        pipeline = Pipeline(
            id=new_uuid(rng),
            number=number,
            created_at=created,
            setup_done_at=created + rng.randint(1500, 8 * SECOND),
            final_state="errored" if errored else "created",
            errors=[{"type": error_type, "message": error_message}] if errored else [],
            trigger={"type": trigger_type, "actor": _actor_object(actor, rng)},
            received_at=created - rng.randint(50, 2 * SECOND),
            vcs=self._vcs(branch, tag, actor),
            branch=branch,
            project=self.project,
        )
        if not errored:
            self._add_workflows(pipeline, self._workflow_names(trigger_type, branch, tag), actor)
        return pipeline

    def _ref(self, actor: str, trigger_type: str) -> tuple[str | None, str | None]:
        rng = self.rng
        default = self.project.default_branch
        if trigger_type == "scheduled_pipeline":
            return default, None
        if actor == "dependabot[bot]":
            return f"dependabot/npm_and_yarn/lodash-4.17.{rng.randint(15, 21)}", None
        if actor == "renovate-bot":
            return f"renovate/pytest-{rng.randint(7, 9)}.x", None
        roll = rng.random()
        if roll < 0.55:
            return default, None
        if roll < 0.93:
            return rng.choice(FEATURE_BRANCHES), None
        return None, f"v{rng.randint(1, 3)}.{rng.randint(0, 20)}.{rng.randint(0, 9)}"

    def _vcs(self, branch: str | None, tag: str | None, actor: str) -> dict[str, Any] | None:
        rng = self.rng
        if rng.random() < 0.03:
            return None  # some API-triggered pipelines carry no VCS block at all
        project = self.project
        origin = project.vcs_url
        if branch not in (None, project.default_branch) and rng.random() < 0.1:
            origin = project.vcs_url.replace(f"/{project.org_name}/", f"/{actor}/")  # a fork PR
        vcs: dict[str, Any] = {
            "provider_name": None if rng.random() < 0.03 else project.provider_name,
            "origin_repository_url": origin,
            "target_repository_url": project.vcs_url,
            "revision": f"{rng.getrandbits(160):040x}",
            "commit": {"subject": self._subject(branch), "body": rng.choice(("", None, "Signed-off-by: ci"))},
        }
        if tag is not None:
            vcs["tag"] = tag
        else:
            vcs["branch"] = branch
        if branch not in (None, project.default_branch) and rng.random() < 0.6:
            review = str(rng.randint(1, 4000))
            vcs["review_id"] = review
            vcs["review_url"] = f"{project.vcs_url}/pull/{review}"
        return vcs

    def _subject(self, branch: str | None) -> str:
        subject = self.rng.choice(COMMIT_SUBJECTS)
        return subject.format(pr=self.rng.randint(1, 4000), branch=(branch or "x").split("/")[-1])

    def _workflow_names(self, trigger_type: str, branch: str | None, tag: str | None) -> list[str]:
        rng = self.rng
        if trigger_type == "scheduled_pipeline":
            return ["nightly"] if rng.random() < 0.7 else ["nightly", "test"]
        if tag is not None:
            return ["build", "deploy"]
        if branch == self.project.default_branch:
            return ["build", "test", "deploy"] if rng.random() < 0.45 else ["build", "test"]
        return rng.choice((["build"], ["build", "test"], ["lint", "test"], ["lint", "build", "test"]))

    # -- workflows -------------------------------------------------------------------------------------

    def _add_workflows(self, pipeline: Pipeline, names: list[str], actor: str) -> None:
        rng = self.rng
        created = pipeline.setup_done_at + rng.randint(0, 2500)
        started_by = self.users[actor]
        for name in names:
            template = self.templates[name]
            opts = RunOptions(
                never_approve=name == "deploy" and rng.random() < 0.15,
                cancel=rng.random() < 0.03,
                not_run=rng.random() < 0.01,
            )
            workflow = self._workflow(pipeline, template, created, opts, started_by)
            workflow.max_auto_reruns = template.max_auto_reruns
            if self.cfg.reruns:
                self._reruns(pipeline, template, workflow)
            created += rng.randint(20, 400)
        pipeline.workflows.sort(key=lambda w: (w.created_at, w.id))
        pipeline.workflow_keys = [(w.created_at, w.id) for w in pipeline.workflows]

    def _workflow(
        self, pipeline: Pipeline, template: Template, created: int, opts: RunOptions, started_by: str
    ) -> Workflow:
        rng = self.rng
        run = simulate_run(template, created, rng, opts)
        workflow = Workflow(new_uuid(rng), template.name, created, run, started_by, pipeline)
        if run.canceled_at is not None:
            workflow.canceled_by = self.users[rng.choice(HUMANS)]
        ids = [new_uuid(rng) for _ in template.jobs]
        for spec, job_run, job_id in zip(template.jobs, run.jobs, ids, strict=True):
            workflow.jobs.append(self._job(workflow, spec, job_run, job_id, [ids[d] for d in spec.deps]))
        pipeline.workflows.append(workflow)
        return workflow

    def _job(self, workflow: Workflow, spec: JobSpec, run: JobRun, job_id: str, deps: list[str]) -> Job:
        job = Job(job_id, spec, deps, run, workflow)
        if spec.kind == "approval":
            job.carries_number = self.rng.random() < 0.5
            job.approval_request_id = job_id
            job.approved_by = self.users[self.rng.choice(HUMANS)]
        return job

    def _reruns(self, pipeline: Pipeline, template: Template, original: Workflow) -> None:
        """Manual reruns of some failed workflows, or automatic ones when the config asks for them."""
        if original.run.final not in ("failed", "error"):
            return
        auto = template.max_auto_reruns
        if auto is None and self.rng.random() >= self.cfg.rerun_rate:
            return
        attempts = auto if auto is not None else (2 if self.rng.random() < 0.25 else 1)
        previous = original
        for attempt in range(1, attempts + 1):
            rerun = self._rerun(pipeline, template, previous, attempt if auto is not None else None)
            if rerun is None or rerun.run.final not in ("failed", "error"):
                return
            previous = rerun

    def _rerun(
        self, pipeline: Pipeline, template: Template, previous: Workflow, auto_number: int | None
    ) -> Workflow | None:
        rng = self.rng
        stopped = previous.run.stopped_at
        assert stopped is not None
        earliest = stopped + RERUN_MIN_DELAY
        latest = min(stopped + RERUN_MAX_DELAY, pipeline.created_at + RERUN_DEADLINE)
        if earliest > latest:
            return None
        if auto_number is not None:
            created = rng.randint(earliest, min(latest, earliest + 5 * MINUTE))
            started_by = previous.started_by
        else:
            created = earliest + int((latest - earliest) * rng.random() ** 3)  # most reruns come soon
            created = self._late(pipeline, earliest, created)
            started_by = self.users[rng.choice(HUMANS)]
            template = self._gated(template)
        rerun = self._workflow(pipeline, template, created, RunOptions(fail_scale=0.35), started_by)
        rerun.rerun_of = previous.id
        rerun.auto_rerun_number = auto_number
        rerun.max_auto_reruns = template.max_auto_reruns
        return rerun

    def _late(self, pipeline: Pipeline, earliest: int, created: int) -> int:
        """With `late_rerun_days`, a third of manual reruns come days after their pipeline."""
        days = self.cfg.late_rerun_days
        if days <= 2 or self.rng.random() >= 1 / 3:
            return created
        late = self.rng.randint(pipeline.created_at + 2 * DAY, pipeline.created_at + int(days * DAY))
        return max(earliest, late)

    def _gated(self, template: Template) -> Template:
        """With `gated_rerun_rate`, a rerun waits for an approval before any of its jobs: until then
        every job is on hold or blocked, so none has a number."""
        rate = self.cfg.gated_rerun_rate
        if rate <= 0 or self.rng.random() >= rate:
            return template
        gate = JobSpec("hold-rerun", "approval", (), executor="", resource_class="")
        jobs = [gate]
        for spec in template.jobs:
            deps = tuple(d + 1 for d in spec.deps) or (0,)
            jobs.append(replace(spec, deps=deps))
        return Template(template.name, tuple(jobs), template.max_auto_reruns)

    # -- job numbers -----------------------------------------------------------------------------------

    def _number_jobs(self) -> None:
        """Job numbers are per project and follow queue order across all pipelines and reruns."""
        numbered: list[tuple[int, int, int, Job]] = []
        for pipeline in self.project.index.pipelines:
            for workflow in pipeline.workflows:
                for position, job in enumerate(workflow.jobs):
                    at = job.numbered_at
                    if at is not None:
                        numbered.append((at, workflow.created_at, position, job))
        numbered.sort(key=lambda item: item[:3])
        first = self.rng.randint(1, 5000)
        for offset, (_, _, _, job) in enumerate(numbered):
            job.number = first + offset
            self.project.jobs_by_number[job.number] = job


def _trigger_type(rng: random.Random) -> str:
    roll = rng.random()
    for limit, kind in ((0.70, "webhook"), (0.80, "api"), (0.89, "scheduled_pipeline"), (0.97, "explicit")):
        if roll < limit:
            return kind
    return "Decoupled Ingestion System" if roll < 0.985 else "unknown"  # off-spec but seen in the wild


def _actor(rng: random.Random, trigger_type: str) -> str:
    if trigger_type == "webhook" and rng.random() < 0.2:
        return rng.choice(BOTS)
    return rng.choice(HUMANS)


def _actor_object(login: str, rng: random.Random) -> dict[str, Any]:
    if login in BOTS:
        return {"login": login, "avatar_url": None}
    avatar = f"https://avatars.githubusercontent.com/u/{rng.randint(1000, 99999)}?v=4"
    return {"login": login, "avatar_url": avatar}
