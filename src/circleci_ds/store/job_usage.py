"""Reading the usage facts of stored pipelines back, for the job documents (credits, utilisation).

A usage row meets its job on (workflow id, job name): the Usage API's job id is not documented to be
the API's job id, the workflow id is. The table exists once usage collection has run; before, there
is nothing to read.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy import Connection, inspect, select

from circleci_ds.store import schema as s

_BATCH = 500


@dataclass(frozen=True, slots=True)
class JobUsage:
    credits: float | None  # total - user credits
    user_credits: float | None
    median_cpu_pct: float | None
    max_cpu_pct: float | None
    median_ram_pct: float | None
    max_ram_pct: float | None


UsageByJob = dict[tuple[str, str], JobUsage]  # (workflow id, job name) -> its usage


def has_usage(conn: Connection) -> bool:
    return bool(inspect(conn).has_table(s.usage_runs.name))


def read_job_usage(conn: Connection, pipeline_ids: Sequence[str]) -> dict[str, UsageByJob]:
    """Pipeline id -> its jobs' usage (the latest run of a job name in a workflow when several)."""
    u = s.usage_runs.c
    out: dict[str, UsageByJob] = {}
    ids = list(pipeline_ids)
    for start in range(0, len(ids), _BATCH):
        query = (
            select(
                u.pipeline_id, u.workflow_id, u.job_name, u.total_credits, u.user_credits,
                u.median_cpu_pct, u.max_cpu_pct, u.median_ram_pct, u.max_ram_pct,
            )
            .where(u.pipeline_id.in_(ids[start : start + _BATCH]), u.workflow_id.is_not(None))
            .order_by(u.pipeline_id, u.started_at)
        )  # fmt: skip
        for r in conn.execute(query):
            total, user = r.total_credits, r.user_credits
            credits = None if total is None else total - (user or 0.0)
            usage = JobUsage(credits, user, r.median_cpu_pct, r.max_cpu_pct, r.median_ram_pct, r.max_ram_pct)
            out.setdefault(r.pipeline_id, {})[(r.workflow_id, r.job_name or "")] = usage
    return out
