"""Test results of simulated jobs (`GET /project/{slug}/{job-number}/tests`), a pure function of the seed.

Rules:
- A suite belongs to a (project, job name). Job names running tests: `unit-tests`, `test-shard-*`,
  `integration-*`, `smoke-tests`, `e2e-tests`. A `setup` job answers an empty list; every other job,
  and every job that did not end `success` or `failed` (infrastructure failure, timeout, cancelled),
  answers 404, as a job that stored no results does.
- Results exist once the job has finished; before that the list is empty.
- Consistent with the job: a successful job has no failing test, a failed one at least one.
- Which tests fail: a failed job that a later run of the same job on the same commit (a rerun under
  the same pipeline) turned green failed because of flaky tests, drawn by their flake weights; a
  failure nothing turned green is real: the suite's broken tests fail (the same ones on every run
  of that commit).
- Every suite has stable tests, flaky tests (with a weight: their share of flaky failures), broken
  tests, slow tests (run times of seconds to a minute) and skipped tests; failure messages include
  HTML, `</script>` and terminal escape sequences, as real test output does.
- Each test's run time and message come from a hash of (seed, job id, test index), so a page is built
  without building the others.
"""

from __future__ import annotations

import hashlib
import random
import re
from dataclasses import dataclass
from functools import lru_cache

from .config import SimConfig
from .history import Job, Project
from .render import JSON, InvalidPageToken, decode_token, encode_token, render_details, status_at

PASSED, FAILED, SKIPPED = "success", "failure", "skipped"
# (name pattern, smallest and largest suite size)
SUITE_SIZES = (
    (re.compile(r"unit-tests$"), 40, 120),
    (re.compile(r"test-shard-\d+$"), 15, 60),
    (re.compile(r"integration-.+$"), 5, 25),
    (re.compile(r"smoke-tests$"), 3, 8),
    (re.compile(r"e2e-tests$"), 10, 40),
)
EMPTY_RESULT_JOBS = frozenset({"setup"})
MODULES = ("orders", "auth", "billing", "search", "upload", "config", "csv_export", "ünïcode", "cache")
VERBS = ("creates", "rejects", "retries", "paginates", "escapes", "parses", "times_out", "rounds")
FAILURE_MESSAGES = (
    "AssertionError: assert 200 == 503",
    "Expected <b>200</b> but got <i>503</i> & a body of <div class=\"err\">oops</div>",
    "SyntaxError near '</script><script>alert(\"xss\")</script>'",
    "\x1b[31mFAILED\x1b[0m tests/test_upload.py::test_retries - \x1b]0;pwned\x07TimeoutError",
    "ConnectionRefusedError: [Errno 111] Connection refused\n  at db.connect (db.py:42)",
    "ValueError: invalid literal for int() with base 10: '\u202eevil'",
)
SOURCES = ("pytest", "jest", "junit", "rspec")


class Kind:
    STABLE, FLAKY, BROKEN, SLOW, SKIPPED = "stable", "flaky", "broken", "slow", "skipped"


@dataclass(frozen=True, slots=True)
class SuiteTest:
    classname: str
    name: str
    file: str
    kind: str
    base_s: float  # typical run time in seconds
    weight: float = 0.0  # flaky tests: share of the flaky failures


@dataclass(frozen=True, slots=True)
class Suite:
    source: str
    tests: tuple[SuiteTest, ...]

    def indices(self, kind: str) -> list[int]:
        return [i for i, t in enumerate(self.tests) if t.kind == kind]


def suite_size(job_name: str, rng: random.Random, scale: float) -> int:
    """How many tests the job name's suite has; 0 for jobs that run none."""
    for pattern, low, high in SUITE_SIZES:
        if pattern.match(job_name):
            return max(1, round(rng.randint(low, high) * scale))
    return 0


@lru_cache(maxsize=512)
def make_suite(seed: int, slug: str, job_name: str, scale: float, untested: float = 0.0) -> Suite | None:
    """The suite of a project's job name; None when its jobs store no results (no suite, or among the
    `untested` share of the names with one, by a hash of the project and name)."""
    rng = random.Random(f"circleci-ds-sim:{seed}:{slug}:{job_name}:suite")
    size = suite_size(job_name, rng, scale)
    if size == 0 or _unit(seed, slug, job_name, "untested") < untested:
        return None
    kinds = [Kind.STABLE] * size
    specials = [Kind.FLAKY] * rng.randint(1, 3) + [Kind.BROKEN] * rng.randint(1, 2)
    specials += [Kind.SLOW] * rng.randint(1, 3) + [Kind.SKIPPED] * rng.randint(0, 2)
    for i, kind in zip(rng.sample(range(size), min(size, len(specials))), specials, strict=False):
        kinds[i] = kind
    if Kind.BROKEN not in kinds:
        kinds[-1] = Kind.BROKEN  # tiny suites: a real failure must have somewhere to land
    tests = tuple(_suite_test(job_name, i, kind, rng) for i, kind in enumerate(kinds))
    return Suite(rng.choice(SOURCES), tests)


def _suite_test(job_name: str, i: int, kind: str, rng: random.Random) -> SuiteTest:
    module = rng.choice(MODULES)
    klass = "Test" + module.title().replace("_", "")
    base = rng.uniform(5.0, 60.0) if kind == Kind.SLOW else rng.uniform(0.002, 0.8)
    weight = rng.choice((1.0, 2.0, 4.0)) if kind == Kind.FLAKY else 0.0
    return SuiteTest(
        classname=f"tests.{job_name.replace('-', '_')}.test_{module}.{klass}",
        name=f"test_{rng.choice(VERBS)}_{i}",
        file=f"tests/{job_name}/test_{module}.py",
        kind=kind,
        base_s=base,
        weight=weight,
    )


def _unit(*parts: object) -> float:
    """A deterministic number in [0, 1) from its key."""
    raw = hashlib.blake2b(":".join(map(str, parts)).encode(), digest_size=8).digest()
    return int.from_bytes(raw, "big") / 2**64


# -- per job ------------------------------------------------------------------------------------------


def job_outcome(job: Job, now: int) -> str | None:
    """`success` / `failed` when the job finished that way by `now`, else its status or None."""
    if job.run.stopped_at is None or job.run.stopped_at > now:
        return None
    return status_at(job.run.timeline, now)


def commit_of(job: Job) -> str:
    pipeline = job.workflow.pipeline
    return pipeline.vcs["revision"] if pipeline.vcs else pipeline.id


def turned_green(job: Job) -> bool:
    """A later run of the same job under the same pipeline (a rerun) succeeded."""
    pipeline = job.workflow.pipeline
    for workflow in pipeline.workflows:
        for other in workflow.jobs:
            if other.spec.name != job.spec.name or other is job or other.run.stopped_at is None:
                continue
            later = job.run.stopped_at is not None and other.run.stopped_at > job.run.stopped_at
            if later and other.run.timeline[-1][1] == "success":
                return True
    return False


def failing_indices(seed: int, job: Job, suite: Suite) -> frozenset[int]:
    """Which tests fail in a failed job (see the module's rules)."""
    flaky = suite.indices(Kind.FLAKY)
    if turned_green(job) and flaky:
        weights = [suite.tests[i].weight for i in flaky]
        rng = random.Random(f"circleci-ds-sim:{seed}:{job.id}:flakes")
        count = 2 if len(flaky) > 1 and rng.random() < 0.2 else 1
        return frozenset(rng.choices(flaky, weights, k=count))
    broken = suite.indices(Kind.BROKEN)
    pick = int(_unit(seed, commit_of(job), job.spec.name) * len(broken))
    return frozenset({broken[pick]})


@dataclass(frozen=True, slots=True)
class JobTests:
    """What the tests endpoint shows for one job at one clock value."""

    suite: Suite | None
    failing: frozenset[int]
    found: bool  # False: 404

    @property
    def count(self) -> int:
        return len(self.suite.tests) if self.suite else 0


def job_tests(
    seed: int, scale: float, project: Project, job: Job, now: int, untested: float = 0.0
) -> JobTests:
    numbered = job.number is not None and job.numbered_at is not None and job.numbered_at <= now
    if job.spec.kind != "build" or not numbered:
        return JobTests(None, frozenset(), found=False)
    outcome = job_outcome(job, now)
    if outcome is None:
        return JobTests(None, frozenset(), found=True)  # still running: nothing stored yet
    if job.spec.name in EMPTY_RESULT_JOBS:
        return JobTests(None, frozenset(), found=True)
    suite = make_suite(seed, project.slug, job.spec.name, scale, untested)
    if suite is None or outcome not in ("success", "failed"):
        return JobTests(None, frozenset(), found=False)
    failing = failing_indices(seed, job, suite) if outcome == "failed" else frozenset()
    return JobTests(suite, failing, found=True)


def render_test(seed: int, job: Job, tests: JobTests, i: int) -> JSON:
    assert tests.suite is not None
    spec = tests.suite.tests[i]
    u = _unit(seed, job.id, i)
    run_time = round(spec.base_s * (0.6 + 0.8 * u), 4)
    if i in tests.failing:
        result = FAILED
        message: str | None = FAILURE_MESSAGES[int(_unit(seed, job.id, i, "m") * len(FAILURE_MESSAGES))]
    elif spec.kind == Kind.SKIPPED:
        result, message, run_time = SKIPPED, "Skipped: needs a live service", 0.0
    else:
        result, message = PASSED, None
    return {
        "message": message,
        "source": tests.suite.source,
        "run_time": run_time,
        "file": spec.file,
        "result": result,
        "name": spec.name,
        "classname": spec.classname,
    }


def results_page(seed: int, job: Job, tests: JobTests, token: str | None, size: int) -> JSON:
    """One page in suite order; the token is the index of the next test. Every page names the next."""
    start = 0
    if token:
        position = decode_token("t", token)
        if not position.isdigit():
            raise InvalidPageToken(token)
        start = int(position)
    end = min(start + size, tests.count)
    items = [render_test(seed, job, tests, i) for i in range(start, end)]
    return {"items": items, "next_page_token": encode_token("t", str(end)) if end < tests.count else None}


def tests_truth(cfg: SimConfig, project: Project, now: int) -> list[JSON]:
    """Every numbered build job that answers test results at `now`, with its context and its items
    exactly as the pages serve them, plus each test's suite label (`kind`)."""
    out: list[JSON] = []
    for number in sorted(project.jobs_by_number):
        job = project.jobs_by_number[number]
        found = job_tests(cfg.seed, cfg.test_suite_scale, project, job, now, cfg.untested_share)
        if not found.found:
            continue
        pipeline = job.workflow.pipeline
        items = [render_test(cfg.seed, job, found, i) for i in range(found.count)]
        kinds = [t.kind for t in found.suite.tests] if found.suite else []
        out.append(
            {
                "job_number": number,
                "job_id": job.id,
                "job_name": job.spec.name,
                "workflow": job.workflow.name,
                "pipeline_id": pipeline.id,
                "branch": pipeline.branch,
                "commit": pipeline.vcs["revision"] if pipeline.vcs else None,
                "status": status_at(job.run.timeline, now),
                "workflow_created_ms": job.workflow.created_at,
                "started_at_ms": job.run.started_at,
                "stopped_at_ms": job.run.stopped_at,
                "web_url": render_details(job, now)["web_url"],
                "items": items,
                "kinds": kinds,
            }
        )
    return out
