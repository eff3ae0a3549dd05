"""Endpoints: each project's checkpoint, job frontier, project info, last run and status.

Rules:
- An endpoint's origin, once set, stays (document ids depend on it).
- The checkpoint and the job frontier move only when the endpoint's run ended with no error; any
  error text is stored cleaned, as it may quote a server.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, func, insert, select, update

from circleci_ds.store import schema as s
from circleci_ds.store.base import StoreBase, dumps
from circleci_ds.store.facts_store import Deriver, project_info_of, project_infos, set_default_branch
from circleci_ds.text import clean


@dataclass(frozen=True)
class EndpointStatus:
    slug: str
    native: str
    checkpoint: float | None
    last_finished: float | None
    last_error: str | None
    pipelines: int
    workflows: int
    jobs: int
    open_pipelines: int
    lease_owner: str | None
    lease_expires: float | None


class Endpoints(StoreBase):
    """The endpoints table and what hangs off it (walk state, project names)."""

    def ensure_endpoint(self, slug: str, native: str, origin: str, project: str | None = None) -> None:
        """Register an endpoint; its origin, once set, stays (document ids depend on it).

        `project` is the fixture's project name; None leaves the stored one as it is.
        """
        with self.writing() as conn:
            found = conn.execute(select(s.endpoints.c.slug).where(s.endpoints.c.slug == slug)).first()
            if found is None:
                conn.execute(insert(s.endpoints).values(slug=slug, native=native, origin=origin))
            else:
                conn.execute(update(s.endpoints).where(s.endpoints.c.slug == slug).values(native=native))
            if project is not None:
                names = s.endpoint_projects
                conn.execute(update(names).where(names.c.slug == slug).values(project=project))

    def checkpoint(self, slug: str) -> float | None:
        with self.connect() as conn:
            return conn.execute(select(s.endpoints.c.checkpoint).where(s.endpoints.c.slug == slug)).scalar()

    def origin(self, slug: str) -> str:
        with self.connect() as conn:
            return conn.execute(select(s.endpoints.c.origin).where(s.endpoints.c.slug == slug)).scalar_one()

    def record_start(self, slug: str, started: float) -> None:
        with self.writing() as conn:
            conn.execute(update(s.endpoints).where(s.endpoints.c.slug == slug).values(last_started=started))

    def record_finish(
        self,
        slug: str,
        *,
        finished: float,
        error: str | None,
        checkpoint: float | None,
        job_frontier: int | None = None,
    ) -> None:
        """End of an endpoint's run; the checkpoint and the job frontier move only on success. Any
        error text is stored, cleaned: it may quote a server."""
        values: dict[str, Any] = {
            "last_finished": finished,
            "last_error": None if error is None else clean(error, limit=2000),
        }
        if error is None:
            values["last_success"] = finished
            if checkpoint is not None:
                values["checkpoint"] = checkpoint
        with self.writing() as conn:
            conn.execute(update(s.endpoints).where(s.endpoints.c.slug == slug).values(**values))
            if error is None and job_frontier is not None:
                ew = s.endpoint_walk
                conn.execute(update(ew).where(ew.c.slug == slug).values(job_frontier=job_frontier))

    def job_numbers(self, slug: str) -> tuple[int | None, int | None]:
        """(job frontier, highest stored job number) of an endpoint; None where unknown."""
        ew, jn, p = s.endpoint_walk, s.jobs_numbered, s.pipelines.c
        with self.engine.connect() as conn:
            frontier = conn.execute(select(ew.c.job_frontier).where(ew.c.slug == slug)).scalar()
            stored_max = conn.execute(
                select(func.max(jn.c.job_number))
                .select_from(jn.join(s.pipelines, p.id == jn.c.pipeline_id))
                .where(p.endpoint == slug)
            ).scalar()
        return frontier, stored_max

    def stored_job_numbers(self, slug: str, low: int, high: int) -> set[int]:
        """The job numbers in [low, high] of jobs stored under the endpoint."""
        jn, p = s.jobs_numbered, s.pipelines.c
        query = (
            select(jn.c.job_number)
            .select_from(jn.join(s.pipelines, p.id == jn.c.pipeline_id))
            .where(p.endpoint == slug, jn.c.job_number >= low, jn.c.job_number <= high)
        )
        with self.engine.connect() as conn:
            return set(conn.execute(query).scalars())

    def project_info_at(self, slug: str) -> float | None:
        """When GET /project/{slug} was last tried (answered or not)."""
        ew = s.endpoint_walk
        with self.engine.connect() as conn:
            return conn.execute(select(ew.c.project_info_at).where(ew.c.slug == slug)).scalar()

    def note_project_info(self, slug: str, at: float, info: dict[str, Any] | None = None) -> None:
        """Remember an attempt at the project info, and the info when there is some."""
        with self.writing() as conn:
            ew = s.endpoint_walk
            conn.execute(update(ew).where(ew.c.slug == slug).values(project_info_at=at))
            if info is not None:
                _set_project_info(conn, slug, info, self.needs_deriver())

    def save_project_info(self, slug: str, info: dict[str, Any]) -> None:
        with self.writing() as conn:
            _set_project_info(conn, slug, info, self.needs_deriver())

    def recent_branches(self, slug: str, limit: int = 200) -> list[str | None]:
        """Branches of the endpoint's newest stored pipelines, newest first."""
        p = s.pipelines.c
        query = select(p.data).where(p.endpoint == slug).order_by(p.created_at.desc()).limit(limit)
        with self.engine.connect() as conn:
            rows = conn.execute(query).scalars().all()
        branches: list[str | None] = []
        for data in rows:
            vcs = json.loads(data).get("vcs")
            branch = vcs.get("branch") if isinstance(vcs, dict) else None
            branches.append(branch if isinstance(branch, str) else None)
        return branches

    def finished_since(self, slug: str, since: float) -> bool:
        with self.connect() as conn:
            finished = conn.execute(
                select(s.endpoints.c.last_finished).where(s.endpoints.c.slug == slug)
            ).scalar()
        return finished is not None and finished >= since

    def project_infos(self) -> dict[str, dict[str, Any]]:
        """Endpoint slug -> its stored GET /project/{slug} answer, for the endpoints that have one."""
        with self.connect() as conn:
            return {slug: info for slug, info in project_infos(conn).items() if info is not None}

    def endpoint_statuses(self) -> list[EndpointStatus]:
        e, p, le = s.endpoints.c, s.pipelines.c, s.leases.c
        per_pipeline = s.pipelines
        with self.reading() as conn:
            pipes = _count_by_endpoint(conn, per_pipeline)
            open_ = _count_by_endpoint(conn, per_pipeline, p.is_final.is_(False))
            wfs = _count_by_endpoint(conn, s.workflows.join(s.pipelines, p.id == s.workflows.c.pipeline_id))
            jbs = _count_by_endpoint(conn, s.jobs.join(s.pipelines, p.id == s.jobs.c.pipeline_id))
            held = {r.endpoint: r for r in conn.execute(select(le.endpoint, le.owner, le.expires_at))}
            rows = conn.execute(
                select(e.slug, e.native, e.checkpoint, e.last_finished, e.last_error).order_by(e.slug)
            ).all()
        return [
            EndpointStatus(
                slug=r.slug,
                native=r.native,
                checkpoint=r.checkpoint,
                last_finished=r.last_finished,
                last_error=r.last_error,
                pipelines=pipes.get(r.slug, 0),
                workflows=wfs.get(r.slug, 0),
                jobs=jbs.get(r.slug, 0),
                open_pipelines=open_.get(r.slug, 0),
                lease_owner=held[r.slug].owner if r.slug in held else None,
                lease_expires=held[r.slug].expires_at if r.slug in held else None,
            )
            for r in rows
        ]


def _set_project_info(conn: Connection, slug: str, info: dict[str, Any], deriver: Deriver) -> None:
    """Store GET /project/{slug}; the facts' is_default_branch follows a changed default branch."""
    before = deriver.default_branch(project_info_of(conn, slug))
    conn.execute(update(s.endpoints).where(s.endpoints.c.slug == slug).values(project_info=dumps(info)))
    after = deriver.default_branch(info)
    if after != before:
        set_default_branch(conn, slug, after)


def _count_by_endpoint(conn: Connection, source: Any, *where: Any) -> dict[str, int]:
    p = s.pipelines.c
    query = select(p.endpoint, func.count()).select_from(source).where(*where).group_by(p.endpoint)
    return {endpoint: count for endpoint, count in conn.execute(query)}
