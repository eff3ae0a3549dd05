"""Per-project workflow configs: which jobs each named workflow runs and how they depend on each other."""

from __future__ import annotations

import random

from .lifecycle import JobSpec, WorkflowTemplate

DOCKER_CLASSES = ("small", "medium", "medium+", "large", "xlarge")
MACHINE_CLASSES = ("medium", "large", "arm.medium")
MACOS_CLASSES = ("macos.m1.medium.gen1", "macos.m1.large.gen1")
CONTEXTS = ("aws-prod", "docker-hub", "npm-publish", "slack-notify", "sonar")
SERVICES = ("postgres", "redis", "kafka", "s3", "auth", "billing", "search")


def project_templates(rng: random.Random) -> dict[str, WorkflowTemplate]:
    """The workflows a project's config declares, keyed by workflow name."""
    auto_reruns = 2 if rng.random() < 0.35 else None
    return {
        "lint": _lint(rng),
        "build": _build(rng),
        "test": _test(rng, auto_reruns),
        "deploy": _deploy(rng),
        "nightly": _nightly(rng),
    }


def _job(
    rng: random.Random,
    name: str,
    deps: tuple[int, ...],
    duration_s: float,
    *,
    parallelism: int = 1,
    contexts: tuple[str, ...] | None = None,
    executor: tuple[str, str] | None = None,
) -> JobSpec:
    executor_type, resource_class = executor or _executor(rng)
    flaky = rng.random() < 0.06  # a few jobs fail far more often than the rest
    if contexts is None:
        contexts = tuple(rng.sample(CONTEXTS, rng.choice((0, 0, 1, 2))))
    return JobSpec(
        name,
        "build",
        deps,
        executor=executor_type,
        resource_class=resource_class,
        parallelism=parallelism,
        contexts=contexts,
        fail_rate=rng.uniform(0.1, 0.25) if flaky else rng.uniform(0.0, 0.015),
        duration_s=duration_s,
    )


def _approval(name: str, deps: tuple[int, ...]) -> JobSpec:
    return JobSpec(name, "approval", deps, executor="", resource_class="")


def _executor(rng: random.Random) -> tuple[str, str]:
    roll = rng.random()
    if roll < 0.75:
        return "docker", rng.choice(DOCKER_CLASSES)
    if roll < 0.93:
        return "machine", rng.choice(MACHINE_CLASSES)
    return "macos", rng.choice(MACOS_CLASSES)


def _lint(rng: random.Random) -> WorkflowTemplate:
    names = ["lint", "typecheck", "format-check"][: rng.randint(2, 3)]
    return WorkflowTemplate("lint", tuple(_job(rng, n, (), rng.uniform(15, 90)) for n in names))


def _build(rng: random.Random) -> WorkflowTemplate:
    jobs = [
        _job(rng, "checkout", (), rng.uniform(5, 20)),
        _job(rng, "install-deps", (0,), rng.uniform(30, 180)),
        _job(rng, "compile", (1,), rng.uniform(60, 400)),
    ]
    extras = ["unit-tests", "build-image", "package", "docs", "license-scan"]
    for name in extras[: rng.randint(0, len(extras))]:
        deps = (2,) if name != "build-image" else (1, 2)
        jobs.append(_job(rng, name, deps, rng.uniform(30, 300), parallelism=rng.choice((1, 1, 2, 4))))
    return WorkflowTemplate("build", tuple(jobs))


def _test(rng: random.Random, auto_reruns: int | None) -> WorkflowTemplate:
    # Big enough that its job list often spans more than one page.
    jobs = [_job(rng, "setup", (), rng.uniform(10, 40))]
    shards = rng.randint(4, 18)
    for k in range(shards):
        parallelism = rng.randint(1, 8)
        jobs.append(_job(rng, f"test-shard-{k + 1}", (0,), rng.uniform(60, 600), parallelism=parallelism))
    for svc in rng.sample(SERVICES, rng.randint(1, 6)):
        jobs.append(_job(rng, f"integration-{svc}", (0,), rng.uniform(60, 400)))
    if len(jobs) < 29:
        jobs.append(_job(rng, "coverage-report", tuple(range(1, shards + 1)), rng.uniform(10, 60)))
    return WorkflowTemplate("test", tuple(jobs), max_auto_reruns=auto_reruns)


def _deploy(rng: random.Random) -> WorkflowTemplate:
    jobs = [
        _job(rng, "build-artifacts", (), rng.uniform(60, 300)),
        _job(rng, "deploy-staging", (0,), rng.uniform(60, 200), contexts=("aws-prod",)),
        _job(rng, "smoke-tests", (1,), rng.uniform(30, 120)),
        _approval("hold-production", (2,)),
        _job(rng, "deploy-production", (3,), rng.uniform(60, 300), contexts=("aws-prod",)),
    ]
    if rng.random() < 0.5:
        jobs.append(_job(rng, "notify-release", (4,), rng.uniform(5, 20), contexts=("slack-notify",)))
    return WorkflowTemplate("deploy", tuple(jobs))


def _nightly(rng: random.Random) -> WorkflowTemplate:
    jobs = [_job(rng, "prepare", (), rng.uniform(20, 60))]
    suites = ["e2e-tests", "security-scan", "perf-benchmarks", "dependency-audit", "fuzz"]
    for name in suites[: rng.randint(2, 5)]:
        jobs.append(_job(rng, name, (0,), rng.uniform(300, 1800)))
    if rng.random() < 0.4:
        macos = ("macos", rng.choice(MACOS_CLASSES))
        jobs.append(_job(rng, "ios-build", (0,), rng.uniform(600, 1500), executor=macos))
    return WorkflowTemplate("nightly", tuple(jobs))
