"""Configuration of the simulated CircleCI: the seeded history and the runtime knobs."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime

VCS_ALIASES = {"github": "gh", "gh": "gh", "bitbucket": "bb", "bb": "bb", "circleci": "circleci"}
RETRY_AFTER_FORMS = ("seconds", "date", "both", "none")  # "both" alternates; "none" sends no Retry-After
# RateLimit-*, X-RateLimit-*, both, or the IETF draft's structured RateLimit and RateLimit-Policy fields
RATE_HEADER_FORMS = ("none", "ratelimit", "x-ratelimit", "both", "structured")
LIMIT_BODIES = ("json", "text", "both")  # 429 bodies; "both" alternates
LIMITER_SHAPES = ("bucket", "second", "minute")  # token bucket, fixed window per second or minute

# Knobs that may change while the server runs; the history-shaping fields may not.
RUNTIME_KNOBS = frozenset(
    {
        "page_size",
        "tests_page_size",
        "latency_ms",
        "jitter_ms",
        "rate_limit_rps",
        "rate_burst",
        "limiter",
        "retry_after",
        "rate_headers",
        "limit_body",
        "fault_rate",
        "token",
        "retention_days",
        "usage_export_seconds",
        "usage_rows_per_file",
        "usage_post_limit",
        "usage_get_limit",
        "usage_get_window_s",
        "usage_denied",
        "usage_null_url_polls",
    }
)


def canonical_slug(slug: str) -> str | None:
    """Return `vcs/org/repo` with the vcs alias normalised (`github` -> `gh`), or None if malformed."""
    parts = slug.strip("/").split("/")
    if len(parts) != 3 or not all(parts):
        return None
    vcs = VCS_ALIASES.get(parts[0].lower())
    if vcs is None:
        return None
    return f"{vcs}/{parts[1]}/{parts[2]}"


@dataclass(slots=True)
class SimProject:
    """One followed project; `slug` may use any vcs alias, the API answers with the canonical form."""

    slug: str
    pipelines: int = 30
    private: bool = False
    default_branch: str = "main"
    every_minutes: float | None = None  # busy: one pipeline about every N minutes, up to the end


def _default_projects() -> list[SimProject]:
    return [
        SimProject("gh/acme/api", pipelines=60),
        SimProject("gh/acme/web", pipelines=40, private=True),
        SimProject("bb/acme/legacy-billing", pipelines=15, default_branch="master"),
        SimProject(
            "circleci/6f1c2a7e-3b4d-4e5f-8a9b-0c1d2e3f4a5b/9a8b7c6d-5e4f-4a3b-9c2d-1e0f9a8b7c6d",
            pipelines=20,
        ),
    ]


@dataclass(slots=True)
class SimConfig:
    """Seed and shape of the synthetic history plus the server's behaviour knobs."""

    seed: int = 1
    projects: list[SimProject] = field(default_factory=_default_projects)
    span_days: float = 30.0
    future_days: float = 2.0
    start: datetime = field(default_factory=lambda: datetime(2026, 11, 1, tzinfo=UTC))
    page_size: int = 20
    latency_ms: float = 0.0
    jitter_ms: float = 0.0
    rate_limit_rps: float | None = None
    rate_burst: int = 10
    limiter: str = "bucket"  # windows admit rate_limit_rps x their length per window
    retry_after: str = "seconds"
    rate_headers: str = "none"
    limit_body: str = "both"
    fault_rate: float = 0.0
    token: str | None = None
    retention_days: float | None = None
    reruns: bool = True
    rerun_rate: float = 0.13  # share of failed workflows rerun by hand (automatic reruns aside)
    late_rerun_days: float = 0.0  # > 2: a third of manual reruns land 2 days to this many days later
    gated_rerun_rate: float = 0.0  # share of manual reruns that wait for an approval before any job
    tests_page_size: int = 50  # test results per page of /project/{slug}/{number}/tests
    test_suite_scale: float = 1.0  # multiplies every suite's size (large results for benchmarks)
    untested_share: float = 0.0  # share of the job names with a suite whose jobs store no results
    usage_export_seconds: float = 0.0  # simulated seconds an export job takes to complete
    usage_rows_per_file: int = 200  # CSV rows per downloaded file (at least two files per export)
    usage_post_limit: int = 10  # export jobs created per hour per organisation
    usage_get_limit: int = 10  # export job look-ups per `usage_get_window_s` per organisation
    usage_get_window_s: float = 60.0
    usage_denied: int | None = None  # answer every usage route with this status (401, 403, 404)
    usage_null_url_polls: int = 1  # `completed` answers without download URLs before they come

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise ValueError on knob values the server cannot honour."""
        if self.start.tzinfo is None:
            raise ValueError("start must be timezone-aware")
        if self.usage_rows_per_file < 1 or self.usage_post_limit < 0 or self.usage_get_limit < 0:
            raise ValueError("usage_rows_per_file must be >= 1, the usage limits >= 0")
        if self.page_size < 1 or self.tests_page_size < 1:
            raise ValueError("page_size and tests_page_size must be >= 1")
        if self.test_suite_scale <= 0:
            raise ValueError("test_suite_scale must be positive")
        for name, allowed in (
            ("retry_after", RETRY_AFTER_FORMS),
            ("rate_headers", RATE_HEADER_FORMS),
            ("limit_body", LIMIT_BODIES),
            ("limiter", LIMITER_SHAPES),
        ):
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} must be one of {allowed}")
        if not 0.0 <= self.rerun_rate <= 1.0:
            raise ValueError("rerun_rate must lie in [0, 1]")
        if not 0.0 <= self.gated_rerun_rate <= 1.0:
            raise ValueError("gated_rerun_rate must lie in [0, 1]")
        if self.late_rerun_days < 0:
            raise ValueError("late_rerun_days must be >= 0")
        if not 0.0 <= self.untested_share <= 1.0:
            raise ValueError("untested_share must lie in [0, 1]")
        if not 0.0 <= self.fault_rate <= 1.0:
            raise ValueError("fault_rate must lie in [0, 1]")
        if self.rate_limit_rps is not None and self.rate_limit_rps <= 0:
            raise ValueError("rate_limit_rps must be positive or None")
        if self.rate_burst < 1:
            raise ValueError("rate_burst must be >= 1")
        if self.span_days < 0 or self.future_days < 0:
            raise ValueError("span_days and future_days must be >= 0")
        seen: set[str] = set()
        for project in self.projects:
            slug = canonical_slug(project.slug)
            if slug is None:
                raise ValueError(f"bad project slug {project.slug!r}")
            if slug.lower() in seen:
                raise ValueError(f"project {slug!r} is listed twice")
            seen.add(slug.lower())
            if project.pipelines < 0:
                raise ValueError(f"{slug}: pipelines must be >= 0")
            if project.every_minutes is not None and project.every_minutes <= 0:
                raise ValueError(f"{slug}: every_minutes must be positive")

    def runtime_knobs(self) -> dict[str, object]:
        """The knobs that `/_sim/config` may change, with their current values."""
        return {name: getattr(self, name) for name in sorted(RUNTIME_KNOBS)}
