"""The simulated Usage API: per job run credits and utilisation, export jobs moving with the clock, and
gzipped CSV files served from a second loopback origin.

Every executed build job (started and stopped) is a usage row. Its resource class, executor and
parallelism are the job details'; its utilisation follows a profile chosen per (project, workflow, job):
about a quarter of the jobs are oversized (max CPU and RAM well under 40 %), about one in eight starved
(CPU at 93-100 %), the rest in between. Runs under 15 s have no utilisation (`\\N`). Compute credits are
the resource class's credits per minute x parallelism x minutes, rounded up; some runs carry DLC,
network and user-seat credits too. A row is in the exports once its UTC day is over and the run stopped
before that midnight (the data is refreshed daily through the previous full day).
"""

from __future__ import annotations

import gzip
import hashlib
import hmac
import math
import random
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from .history import DAY, History, Job, Project
from .lifecycle import SECOND

CREDITS_PER_MINUTE = {
    ("docker", "small"): 5,
    ("docker", "medium"): 10,
    ("docker", "medium+"): 15,
    ("docker", "large"): 20,
    ("docker", "xlarge"): 40,
    ("machine", "medium"): 10,
    ("machine", "large"): 20,
    ("machine", "arm.medium"): 10,
    ("macos", "macos.m1.medium.gen1"): 150,
    ("macos", "macos.m1.large.gen1"): 250,
}
HEADER = (
    "ORGANIZATION_ID", "ORGANIZATION_NAME", "ORGANIZATION_CREATED_DATE", "PROJECT_ID", "PROJECT_NAME",
    "PROJECT_CREATED_DATE", "LAST_BUILD_FINISHED_AT", "VCS_NAME", "VCS_URL", "VCS_BRANCH", "PIPELINE_ID",
    "PIPELINE_CREATED_AT", "PIPELINE_NUMBER", "IS_UNREGISTERED_USER", "PIPELINE_TRIGGER_SOURCE",
    "PIPELINE_TRIGGER_USER_ID", "WORKFLOW_ID", "WORKFLOW_NAME", "WORKFLOW_FIRST_JOB_QUEUED_AT",
    "WORKFLOW_FIRST_JOB_STARTED_AT", "WORKFLOW_STOPPED_AT", "IS_WORKFLOW_SUCCESSFUL", "JOB_NAME",
    "JOB_RUN_NUMBER", "JOB_ID", "JOB_RUN_DATE", "JOB_RUN_QUEUED_AT", "JOB_RUN_STARTED_AT",
    "JOB_RUN_STOPPED_AT", "JOB_BUILD_STATUS", "RESOURCE_CLASS", "OPERATING_SYSTEM", "EXECUTOR",
    "PARALLELISM", "JOB_RUN_SECONDS", "MEDIAN_CPU_UTILIZATION_PCT", "MAX_CPU_UTILIZATION_PCT",
    "MEDIAN_RAM_UTILIZATION_PCT", "MAX_RAM_UTILIZATION_PCT", "COMPUTE_CREDITS", "DLC_CREDITS",
    "USER_CREDITS", "STORAGE_CREDITS", "NETWORK_CREDITS", "LEASE_CREDITS", "LEASE_OVERAGE_CREDITS",
    "IPRANGES_CREDITS", "TOTAL_CREDITS",
)  # fmt: skip
HOUR_MS = DAY // 24
MAX_WINDOW_MS = 31 * DAY
HISTORY_MS = 366 * DAY
VCS_NAMES = {"GitHub": "github", "Bitbucket": "bitbucket", "GitLab": "gitlab"}
OS_OF = {"docker": "linux", "machine": "linux", "macos": "macos"}


@dataclass(frozen=True, slots=True)
class UsageRow:
    """One job run as the usage export shows it; None is `\\N`."""

    job: Job = field(repr=False)
    anchor: int  # ms: when the run started (the export windows select on it)
    stopped: int
    values: dict[str, Any]  # CSV column -> value

    @property
    def job_id(self) -> str:
        return self.job.id


def profile(seed: int, project: Project, workflow: str, job: str) -> str:
    """oversized, starved or normal: fixed per job of a workflow of a project."""
    roll = _unit(f"{seed}:{project.slug}:{workflow}:{job}:profile")
    return "oversized" if roll < 0.25 else "starved" if roll < 0.37 else "normal"


def usage_row(seed: int, job: Job) -> UsageRow | None:
    """The usage row of an executed build job; None for the others."""
    run, spec = job.run, job.spec
    if spec.kind != "build" or run.started_at is None or run.stopped_at is None:
        return None
    workflow = job.workflow
    pipeline = workflow.pipeline
    project = pipeline.project
    rng = random.Random(f"circleci-ds-sim:{seed}:usage:{job.id}")
    seconds = (run.stopped_at - run.started_at) / SECOND
    cpm = CREDITS_PER_MINUTE.get((spec.executor, spec.resource_class), 10)
    compute = float(math.ceil(cpm * spec.parallelism * seconds / 60))
    dlc = 200.0 if spec.executor == "docker" and "image" in spec.name else 0.0
    network = round(rng.uniform(0.0, 0.8), 2) if rng.random() < 0.3 else 0.0
    user = 25.0 if rng.random() < 0.03 else 0.0
    total = compute + dlc + network + user
    usage = _utilisation(rng, profile(seed, project, workflow.name, spec.name)) if seconds >= 15 else None
    final = workflow.run.final
    values: dict[str, Any] = {
        "ORGANIZATION_ID": project.org_id,
        "ORGANIZATION_NAME": project.org_name,
        "ORGANIZATION_CREATED_DATE": "2019-04-02",
        "PROJECT_ID": project.id,
        "PROJECT_NAME": project.name,
        "PROJECT_CREATED_DATE": "2020-01-15",
        "LAST_BUILD_FINISHED_AT": None,
        "VCS_NAME": VCS_NAMES.get(project.provider_name, "github"),
        "VCS_URL": project.vcs_url,
        "VCS_BRANCH": pipeline.branch,
        "PIPELINE_ID": pipeline.id,
        "PIPELINE_CREATED_AT": _ts(pipeline.created_at),
        "PIPELINE_NUMBER": pipeline.number,
        "IS_UNREGISTERED_USER": ("False", "N")[rng.random() < 0.5],
        "PIPELINE_TRIGGER_SOURCE": pipeline.trigger["type"],
        "PIPELINE_TRIGGER_USER_ID": workflow.started_by,
        "WORKFLOW_ID": workflow.id,
        "WORKFLOW_NAME": workflow.name,
        "WORKFLOW_FIRST_JOB_QUEUED_AT": None,
        "WORKFLOW_FIRST_JOB_STARTED_AT": None,
        "WORKFLOW_STOPPED_AT": _ts(workflow.run.stopped_at) if workflow.run.stopped_at else None,
        "IS_WORKFLOW_SUCCESSFUL": None if final is None else _bool(rng, final == "success"),
        "JOB_NAME": spec.name,
        "JOB_RUN_NUMBER": None if _unit(f"{job.id}:number") < 0.04 else job.number,
        "JOB_ID": job.id,
        "JOB_RUN_DATE": time.strftime("%Y-%m-%d", time.gmtime(run.started_at // 1000)),
        "JOB_RUN_QUEUED_AT": _ts(run.queued_at) if run.queued_at is not None else None,
        "JOB_RUN_STARTED_AT": _ts(run.started_at),
        "JOB_RUN_STOPPED_AT": _ts(run.stopped_at),
        "JOB_BUILD_STATUS": run.timeline[-1][1],
        "RESOURCE_CLASS": spec.resource_class,
        "OPERATING_SYSTEM": OS_OF.get(spec.executor, "linux"),
        "EXECUTOR": "" if rng.random() < 0.3 else spec.executor,  # often blank in real exports
        "PARALLELISM": spec.parallelism,
        "JOB_RUN_SECONDS": round(seconds, 3),
        "MEDIAN_CPU_UTILIZATION_PCT": usage[0] if usage else None,
        "MAX_CPU_UTILIZATION_PCT": usage[1] if usage else None,
        "MEDIAN_RAM_UTILIZATION_PCT": usage[2] if usage else None,
        "MAX_RAM_UTILIZATION_PCT": usage[3] if usage else None,
        "COMPUTE_CREDITS": compute,
        "DLC_CREDITS": dlc,
        "USER_CREDITS": user,
        "STORAGE_CREDITS": 0.0,
        "NETWORK_CREDITS": network,
        "LEASE_CREDITS": 0.0,
        "LEASE_OVERAGE_CREDITS": 0.0,
        "IPRANGES_CREDITS": 0.0,
        "TOTAL_CREDITS": round(total, 2),
    }
    return UsageRow(job, run.started_at, run.stopped_at, values)


def _utilisation(rng: random.Random, kind: str) -> tuple[float, float, float, float]:
    """(median CPU, max CPU, median RAM, max RAM) in percent."""
    if kind == "oversized":
        cpu, ram = rng.uniform(4, 18), rng.uniform(8, 22)
        return _pcts(cpu, min(cpu + rng.uniform(3, 15), 35), ram, min(ram + rng.uniform(2, 12), 36))
    if kind == "starved":
        cpu = rng.uniform(95, 99.5)
        ram = rng.uniform(45, 85)
        return _pcts(cpu, min(100.0, cpu + rng.uniform(0, 4)), ram, min(99.0, ram + rng.uniform(5, 12)))
    cpu, ram = rng.uniform(35, 70), rng.uniform(30, 65)
    return _pcts(cpu, min(94.0, cpu + rng.uniform(10, 30)), ram, min(95.0, ram + rng.uniform(10, 25)))


def _pcts(*values: float) -> tuple[float, float, float, float]:
    a, b, c, d = (round(v, 2) for v in values)
    return a, b, c, d


def _bool(rng: random.Random, value: bool) -> str:
    return rng.choice((("False", "True"), ("N", "Y"), ("false", "true")))[value]


def _ts(ms: int) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(ms // 1000)) + f".{ms % 1000:03d}"


def _unit(key: str) -> float:
    return int.from_bytes(hashlib.blake2b(key.encode(), digest_size=8).digest(), "big") / 2**64


def last_midnight(now_ms: int) -> int:
    return now_ms - now_ms % DAY


class UsageData:
    """Every usage row of a history, built once, by organisation id."""

    def __init__(self, history: History, seed: int) -> None:
        self.by_org: dict[str, list[UsageRow]] = {}
        for project in history.projects.values():
            for pipeline in project.index.pipelines:
                for workflow in pipeline.workflows:
                    for job in workflow.jobs:
                        row = usage_row(seed, job)
                        if row is not None:
                            self.by_org.setdefault(project.org_id, []).append(row)
        for rows in self.by_org.values():
            rows.sort(key=lambda r: (r.anchor, r.job_id))

    def available(self, org_id: str, now_ms: int) -> list[UsageRow]:
        """Rows the exports hold at `now_ms`: the run started and stopped before the last UTC midnight."""
        cut = last_midnight(now_ms)
        return [r for r in self.by_org.get(org_id, []) if r.anchor < cut and r.stopped <= cut]

    def window(self, org_id: str, now_ms: int, start_ms: int, end_ms: int) -> list[UsageRow]:
        return [r for r in self.available(org_id, now_ms) if start_ms <= r.anchor <= end_ms]


def truth_of(seed: int, row: UsageRow) -> dict[str, Any]:
    """What a test compares a stored usage row with."""
    v = row.values
    project = row.job.workflow.pipeline.project
    return {
        "org_id": v["ORGANIZATION_ID"],
        "project_id": v["PROJECT_ID"],
        "project_slug": project.slug,
        "job_number": v["JOB_RUN_NUMBER"],
        "resource_class": v["RESOURCE_CLASS"],
        "parallelism": v["PARALLELISM"],
        "run_seconds": v["JOB_RUN_SECONDS"],
        "total_credits": v["TOTAL_CREDITS"],
        "user_credits": v["USER_CREDITS"],
        "credits": round(v["TOTAL_CREDITS"] - v["USER_CREDITS"], 2),
        "median_cpu_pct": v["MEDIAN_CPU_UTILIZATION_PCT"],
        "max_cpu_pct": v["MAX_CPU_UTILIZATION_PCT"],
        "median_ram_pct": v["MEDIAN_RAM_UTILIZATION_PCT"],
        "max_ram_pct": v["MAX_RAM_UTILIZATION_PCT"],
        "profile": profile(seed, project, row.job.workflow.name, row.job.spec.name),
    }


# -- CSV files --------------------------------------------------------------------------------------------


def csv_files(rows: list[UsageRow], per_file: int) -> list[bytes]:
    """The export's gzipped CSV files, each with its header; at least two when there are two rows or more.
    Files alternate RFC 4180 quoting and backslash escapes; nulls are `\\N` either way."""
    if not rows:
        return []
    count = max(2 if len(rows) > 1 else 1, math.ceil(len(rows) / per_file))
    size = math.ceil(len(rows) / count)
    files = []
    for index in range(count):
        part = rows[index * size : (index + 1) * size]
        quoted = index % 2 == 0
        lines = [",".join(HEADER)]
        lines += [",".join(_field(r.values[name], quoted) for name in HEADER) for r in part]
        files.append(gzip.compress(("\r\n".join(lines) + "\r\n").encode(), mtime=0))
    return files


def _field(value: Any, quoted: bool) -> str:
    if value is None:
        return "\\N"
    text = repr(value) if isinstance(value, float) else str(value)
    text = text.replace("\\", "\\\\")
    if quoted:
        return '"' + text.replace('"', '""') + '"'
    return text.replace(",", "\\,").replace('"', '\\"').replace("\n", "\\\n")


# -- export jobs --------------------------------------------------------------------------------------------


@dataclass
class ExportJob:
    id: str
    org_id: str
    start_ms: int
    end_ms: int
    created_ms: int
    rows: list[UsageRow]
    polls: int = 0
    completed_polls: int = 0
    files: list[bytes] | None = None


@dataclass
class UsageState:
    """Export jobs, the requests counted against the limits, and what the download origin was sent."""

    secret: bytes
    jobs: dict[str, ExportJob] = field(default_factory=dict)
    posts: dict[str, list[int]] = field(default_factory=dict)  # org id -> POST times (sim ms)
    gets: dict[str, list[int]] = field(default_factory=dict)
    download_requests: list[dict[str, Any]] = field(default_factory=list)
    download_origin: str | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)

    def signature(self, job_id: str, part: int) -> str:
        return hmac.new(self.secret, f"{job_id}/{part}".encode(), hashlib.sha256).hexdigest()[:32]


def within_limit(times: list[int], now: int, limit: int, window_ms: int) -> bool:
    """Record a request at `now` if fewer than `limit` were made in the window before it."""
    times[:] = [t for t in times if t > now - window_ms]
    if len(times) >= limit:
        return False
    times.append(now)
    return True


def window_problem(start_ms: int, end_ms: int, now_ms: int) -> str | None:
    """The 400 message of an export window, checked in the real API's order; None when it is fine."""
    if end_ms < start_ms:
        return "End date must be after start date."
    if start_ms < now_ms - HISTORY_MS:
        return "Start date cannot be more than a year ago."
    if start_ms > now_ms or end_ms > now_ms:
        return "Date cannot be in the future."
    if end_ms - start_ms > MAX_WINDOW_MS:
        return "Date range cannot exceed 31 days."
    return None
