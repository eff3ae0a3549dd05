"""Store operations on top of SQLAlchemy Core; the same statements serve both dialects.

Rules:
- Opening never writes to a database that is not ours (see schema.py's ownership rules); an
  existing SQLite file is looked at through a read-only connection before anything else.
- Reading commands (`create=False`) open read-only: SQLite with `mode=ro`, PostgreSQL with read-only
  transactions; they never migrate nor change the journal mode, and refuse a store of another version.
- Every database failure surfaces as StoreError with one line naming the database (password masked).
- Leases are judged by one clock, the database's: PostgreSQL's `clock_timestamp()`; for SQLite, whose
  writers all run on this host, the local clock.
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

from sqlalchemy import (
    Connection,
    Engine,
    and_,
    create_engine,
    delete,
    event,
    func,
    insert,
    or_,
    select,
    text,
    update,
)
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, DBAPIError, IntegrityError, NoSuchModuleError, SQLAlchemyError

from circleci_ds.derive.facts import TreeFacts, derive, people_in
from circleci_ds.store import schema as s
from circleci_ds.store.facts_store import (
    default_branch_of,
    read_facts,
    set_default_branch,
    write_facts,
    write_people,
)
from circleci_ds.store.urls import UnsupportedURL, display_url, engine_url
from circleci_ds.text import clean
from circleci_ds.times import parse_ts

__all__ = ["display_url", "engine_url"]  # re-exported: one home each, in urls.py

DEFAULT_DB_URL = "sqlite:///circleci-ds.db"
_CHUNK = 100  # pipelines per page when reading trees back (a page of parsed trees is the memory bound)


class StoreError(Exception):
    """The database cannot be used; the message is for the user (never contains a password)."""


@dataclass(frozen=True)
class StoredTree:
    endpoint: str  # canonical project slug
    native: str  # the fixture's native slug
    origin: str
    updated_on: float  # epoch seconds of the latest change in the tree
    data: dict[str, Any]  # pipeline + workflows[] + jobs[] + details
    project_name: str | None = None  # the fixture's project name, when the collector recorded it
    facts: TreeFacts | None = None  # as stored beside it, when asked for


@dataclass(frozen=True)
class PipelineIndexEntry:
    created_at: float | None
    fetched_at: float | None
    is_final: bool
    digest: bytes  # of the stored pipeline object, to notice a changed listing entry


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


@dataclass(frozen=True)
class LeaseInfo:
    endpoint: str
    owner: str
    expires_at: float
    acquired_at: float  # when this owner took the endpoint (renewals do not move it)


def dumps(obj: Any) -> str:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False)


def digest(obj: Any) -> bytes:
    return hashlib.blake2b(dumps(obj).encode(), digest_size=16).digest()


class Store:
    """One database. Methods are synchronous; the collector calls them from one worker thread."""

    def __init__(self, engine: Engine, url: str, *, read_only: bool = False) -> None:
        self.engine = engine
        self.url = display_url(url)
        self.is_sqlite = engine.dialect.name == "sqlite"
        self.read_only = read_only

    @classmethod
    def open(cls, url: str = DEFAULT_DB_URL, *, create: bool = True) -> Store:
        """Writers (`create`): create or upgrade a store we own. Readers: open read-only.

        StoreError on any problem; a database that is not ours is left untouched.
        """
        shown = display_url(url)
        try:
            target = _Target.parse(url)
            if target.sqlite_path is not None:
                target.check_sqlite_file(write=create)
            if create and target.sqlite_path is not None and target.sqlite_has_content():
                # Look before the writable engine switches the file to WAL: a foreign file stays as it is.
                _check_owned(_make_engine(target, read_only=True), url)
            store = cls(_make_engine(target, read_only=not create), url, read_only=not create)
            try:
                store.migrate() if create else store.check_readable()
            except BaseException:
                store.close()
                raise
        except (StoreError, UnsupportedURL) as exc:
            raise StoreError(str(exc)) from None
        except (ArgumentError, NoSuchModuleError, ValueError):
            raise StoreError(f"not a usable database URL: {shown}") from None
        except (SQLAlchemyError, sqlite3.Error) as exc:
            raise StoreError(f"cannot use the database {shown}: {_db_reason(exc)}") from None
        return store

    def close(self) -> None:
        self.engine.dispose()

    # -- schema ----------------------------------------------------------------------------
    def migrate(self) -> None:
        """Create the schema in an empty database or upgrade ours; refuse anything else."""
        with self._write() as conn:
            if not self.is_sqlite:
                conn.execute(text("SELECT pg_advisory_xact_lock(7422319)"))  # one migrator at a time
            owner = s.ownership(conn)
            _refuse_foreign(self.url, owner)
            version = 0 if owner is s.Ownership.EMPTY else s.current_version(conn)
            self._refuse_newer(version)
            for step in s.MIGRATIONS[version:]:
                step(conn)
            if owner is s.Ownership.UNMARKED and s.ownership(conn) is not s.Ownership.OURS:
                s.metadata.create_all(conn, tables=[s.meta])  # marker step already behind it
                s.mark_owned(conn)
            if owner is s.Ownership.EMPTY:
                conn.execute(insert(s.schema_version).values(version=s.SCHEMA_VERSION))
            elif version < s.SCHEMA_VERSION:
                conn.execute(update(s.schema_version).values(version=s.SCHEMA_VERSION))

    def check_readable(self) -> None:
        """A reader's check: our store, at this release's version; nothing is written."""
        with self._read() as conn:
            owner = s.ownership(conn)
            if owner is s.Ownership.EMPTY:
                raise StoreError(f"{self.url} is not a circleci-ds store (run `circleci-ds collect` first)")
            _refuse_foreign(self.url, owner)
            version = s.current_version(conn)
        self._refuse_newer(version)
        if version < s.SCHEMA_VERSION or owner is s.Ownership.UNMARKED:
            raise StoreError(
                f"{self.url} is a circleci-ds store of schema version {version}; this release reads "
                f"version {s.SCHEMA_VERSION}: run `circleci-ds collect` once to upgrade it"
            )

    def _refuse_newer(self, version: int) -> None:
        if version > s.SCHEMA_VERSION:
            raise StoreError(
                f"{self.url} has schema version {version}, newer than this circleci-ds supports "
                f"({s.SCHEMA_VERSION}); upgrade circleci-ds"
            )

    def schema_version(self) -> int:
        with self._connect() as conn:
            return s.current_version(conn)

    @contextmanager
    def _connect(self) -> Iterator[Connection]:
        """A connection; database failures become StoreError (IntegrityError stays: callers expect it)."""
        try:
            with self.engine.connect() as conn:
                yield conn
        except (StoreError, IntegrityError):
            raise
        except (SQLAlchemyError, sqlite3.Error) as exc:
            raise StoreError(f"cannot use the database {self.url}: {_db_reason(exc)}") from None

    @contextmanager
    def _read(self) -> Iterator[Connection]:
        """A read transaction on one snapshot, so a tree read while it is replaced is never a mix.

        SQLite's deferred BEGIN already gives that; PostgreSQL's default (READ COMMITTED) does not.
        """
        with self._connect() as conn:
            if not self.is_sqlite:
                conn = conn.execution_options(isolation_level="REPEATABLE READ")
            with conn.begin():
                yield conn

    def snapshot(self) -> Any:
        """A read transaction on one snapshot (for the metrics' queries)."""
        return self._read()

    @contextmanager
    def _write(self) -> Iterator[Connection]:
        """A write transaction; on SQLite it takes the write lock up front so busy_timeout applies."""
        if self.read_only:
            raise StoreError(f"{self.url} is open read-only")  # a reading command never writes
        with self._connect() as conn:
            if self.is_sqlite:
                conn = conn.execution_options(sqlite_begin="BEGIN IMMEDIATE")
            with conn.begin():
                yield conn

    def now(self) -> float:
        """The lease clock (epoch seconds): the database's, so collectors on other hosts agree."""
        if self.is_sqlite:
            return time.time()
        with self._connect() as conn:
            return _db_now(conn)

    # -- endpoints -------------------------------------------------------------------------
    def ensure_endpoint(self, slug: str, native: str, origin: str, project: str | None = None) -> None:
        """Register an endpoint; its origin, once set, stays (document ids depend on it).

        `project` is the fixture's project name; None leaves the stored one as it is.
        """
        with self._write() as conn:
            found = conn.execute(select(s.endpoints.c.slug).where(s.endpoints.c.slug == slug)).first()
            if found is None:
                conn.execute(insert(s.endpoints).values(slug=slug, native=native, origin=origin))
            else:
                conn.execute(update(s.endpoints).where(s.endpoints.c.slug == slug).values(native=native))
            if project is not None:
                names = s.endpoint_projects
                conn.execute(update(names).where(names.c.slug == slug).values(project=project))

    def checkpoint(self, slug: str) -> float | None:
        with self._connect() as conn:
            return conn.execute(select(s.endpoints.c.checkpoint).where(s.endpoints.c.slug == slug)).scalar()

    def origin(self, slug: str) -> str:
        with self._connect() as conn:
            return conn.execute(select(s.endpoints.c.origin).where(s.endpoints.c.slug == slug)).scalar_one()

    def record_start(self, slug: str, started: float) -> None:
        with self._write() as conn:
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
        with self._write() as conn:
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
        with self._write() as conn:
            ew = s.endpoint_walk
            conn.execute(update(ew).where(ew.c.slug == slug).values(project_info_at=at))
            if info is not None:
                _set_project_info(conn, slug, info)

    def save_project_info(self, slug: str, info: dict[str, Any]) -> None:
        with self._write() as conn:
            _set_project_info(conn, slug, info)

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
        with self._connect() as conn:
            finished = conn.execute(
                select(s.endpoints.c.last_finished).where(s.endpoints.c.slug == slug)
            ).scalar()
        return finished is not None and finished >= since

    def project_infos(self) -> dict[str, dict[str, Any]]:
        with self._connect() as conn:
            rows = conn.execute(select(s.endpoints.c.slug, s.endpoints.c.project_info)).all()
        return {slug: json.loads(info) for slug, info in rows if info}

    # -- pipeline trees --------------------------------------------------------------------
    def pipeline_index(self, slug: str) -> dict[str, PipelineIndexEntry]:
        """What the collector needs to decide which stored pipelines to read again."""
        p = s.pipelines.c
        query = select(p.id, p.created_at, p.fetched_at, p.is_final, p.data).where(p.endpoint == slug)
        index: dict[str, PipelineIndexEntry] = {}
        with self._connect() as conn:
            for row in conn.execute(query):
                index[row.id] = PipelineIndexEntry(
                    row.created_at, row.fetched_at, bool(row.is_final), digest(json.loads(row.data))
                )
        return index

    def load_tree(self, pipeline_id: str) -> dict[str, Any] | None:
        with self._read() as conn:
            row = conn.execute(select(s.pipelines.c.data).where(s.pipelines.c.id == pipeline_id)).first()
            if row is None:
                return None
            return assemble_trees(conn, [(pipeline_id, row.data)])[pipeline_id]

    def save_tree(self, endpoint: str, tree: dict[str, Any], *, fetched_at: float, is_final: bool) -> None:
        """Replace one pipeline's whole tree, and its facts, in a single transaction."""
        self.save_trees(endpoint, [tree], fetched_at=fetched_at, is_final=is_final)

    def save_trees(
        self, endpoint: str, trees: Sequence[dict[str, Any]], *, fetched_at: float, is_final: bool
    ) -> None:
        """Replace pipeline trees of one endpoint and their facts in one transaction (bulk writes)."""
        pipeline_rows, workflow_rows, job_rows = [], [], []
        for tree in trees:
            rows = tree_rows(endpoint, tree, fetched_at=fetched_at, is_final=is_final)
            pipeline_rows.append(rows.pipeline)
            workflow_rows += rows.workflows
            job_rows += rows.jobs
        ids = [r["id"] for r in pipeline_rows]
        with self._write() as conn:
            conn.execute(delete(s.jobs).where(s.jobs.c.pipeline_id.in_(ids)))
            conn.execute(delete(s.workflows).where(s.workflows.c.pipeline_id.in_(ids)))
            conn.execute(delete(s.pipelines).where(s.pipelines.c.id.in_(ids)))
            for table, batch in (
                (s.pipelines, pipeline_rows),
                (s.workflows, workflow_rows),
                (s.jobs_numbered, job_rows),
            ):
                if batch:
                    conn.execute(insert(table), batch)
            default = default_branch_of(conn, endpoint)
            write_facts(conn, [derive(endpoint, tree, default) for tree in trees])
            write_people(conn, {pid: people_in(tree) for pid, tree in zip(ids, trees, strict=True)})

    def iter_trees(
        self,
        project: str | None = None,
        endpoint: str | None = None,
        *,
        with_facts: bool = False,
        created: tuple[float, float] | None = None,
    ) -> Iterator[StoredTree]:
        """Every stored tree, by endpoint then pipeline number; memory bounded by a page, whatever
        the size of the history (keyset pages on one snapshot)."""
        e = s.endpoints.c
        names = s.endpoint_projects.alias("names")
        query = (
            select(e.slug, e.native, e.origin, names.c.project)
            .join(names, names.c.slug == e.slug)
            .order_by(e.slug)
        )
        if project is not None:
            query = query.where(e.native == project)
        if endpoint is not None:
            query = query.where(e.slug == endpoint)
        with self._read() as conn:
            for slug, native, origin, name in conn.execute(query).all():
                for page in _pages_by_number(conn, slug, created):
                    ids = [r.id for r in page]
                    trees = assemble_trees(conn, [(r.id, r.data) for r in page])
                    facts = read_facts(conn, ids) if with_facts else {}
                    for r in page:
                        yield StoredTree(
                            slug, native, origin, r.updated_on or 0.0, trees[r.id], name, facts.get(r.id)
                        )

    def unreadable_timestamps(self, project: str | None = None) -> int:
        """Timestamps in stored trees that could not be read (null in derived data)."""
        pr, e = s.pipeline_runs.c, s.endpoints.c
        query = select(func.coalesce(func.sum(pr.bad_times), 0)).join(s.endpoints, e.slug == pr.endpoint)
        if project is not None:
            query = query.where(e.native == project)
        with self.engine.connect() as conn:
            return int(conn.execute(query).scalar_one())

    # -- status ----------------------------------------------------------------------------
    def endpoint_statuses(self) -> list[EndpointStatus]:
        e, p, le = s.endpoints.c, s.pipelines.c, s.leases.c
        per_pipeline = s.pipelines
        with self._read() as conn:
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

    # -- leases ----------------------------------------------------------------------------
    def try_lease(self, endpoint: str, owner: str, ttl: float, now: float | None = None) -> bool:
        """Take the endpoint if nobody holds it or the holder's lease ran out (by the database's clock,
        or at `now` when given)."""
        try:
            return self._take_lease(endpoint, owner, ttl, now)
        except IntegrityError:
            # PostgreSQL: another collector inserted the first lease row after our check; it won.
            return False

    def _take_lease(self, endpoint: str, owner: str, ttl: float, at: float | None) -> bool:
        le = s.leases.c
        with self._write() as conn:
            now = self._lease_now(conn) if at is None else at
            taken = conn.execute(
                update(s.leases)
                .where(le.endpoint == endpoint, (le.expires_at < now) | (le.owner == owner))
                .values(owner=owner, expires_at=now + ttl, acquired_at=now)
            ).rowcount
            if taken:
                return True
            exists = conn.execute(select(le.owner).where(le.endpoint == endpoint)).first()
            if exists is not None:
                return False
            conn.execute(
                insert(s.leases).values(endpoint=endpoint, owner=owner, expires_at=now + ttl, acquired_at=now)
            )
            return True

    def take_over_lease(self, endpoint: str, dead_owner: str, owner: str, ttl: float) -> bool:
        """Take a lease from a holder known to be dead, unless someone else already did."""
        le = s.leases.c
        with self._write() as conn:
            now = self._lease_now(conn)
            return bool(
                conn.execute(
                    update(s.leases)
                    .where(le.endpoint == endpoint, le.owner == dead_owner)
                    .values(owner=owner, expires_at=now + ttl, acquired_at=now)
                ).rowcount
            )

    def _lease_now(self, conn: Connection) -> float:
        return time.time() if self.is_sqlite else _db_now(conn)

    def lease_owner(self, endpoint: str) -> str | None:
        with self._connect() as conn:
            return conn.execute(select(s.leases.c.owner).where(s.leases.c.endpoint == endpoint)).scalar()

    def renew_lease(self, endpoint: str, owner: str, ttl: float) -> bool:
        le = s.leases.c
        with self._write() as conn:
            return bool(
                conn.execute(
                    update(s.leases)
                    .where(le.endpoint == endpoint, le.owner == owner)
                    .values(expires_at=self._lease_now(conn) + ttl)
                ).rowcount
            )

    def release_lease(self, endpoint: str, owner: str) -> None:
        le = s.leases.c
        with self._write() as conn:
            conn.execute(delete(s.leases).where(le.endpoint == endpoint, le.owner == owner))

    def release_leases(self, owner: str) -> int:
        """Release every lease `owner` holds (a collector ending, however it ends); how many there were."""
        with self._write() as conn:
            return int(conn.execute(delete(s.leases).where(s.leases.c.owner == owner)).rowcount)

    def leases(self) -> list[LeaseInfo]:
        le = s.leases.c
        with self._connect() as conn:
            rows = conn.execute(select(le.endpoint, le.owner, le.expires_at, le.acquired_at))
            return [LeaseInfo(*r) for r in rows]


def _pages_by_number(
    conn: Connection, endpoint: str, created: tuple[float, float] | None = None
) -> Iterator[Sequence[Any]]:
    """An endpoint's pipelines in (number, id) order, unnumbered first, in keyset pages; with
    `created`, only those with a workflow run created in [since, until)."""
    p, w = s.pipelines.c, s.workflow_runs.c
    columns = (p.id, p.number, p.updated_on, p.data)
    window = []
    if created is not None:
        runs = select(w.pipeline_id).where(
            w.endpoint == endpoint, w.created >= created[0], w.created < created[1]
        )
        window = [p.id.in_(runs)]
    last_id = ""
    while page := conn.execute(
        select(*columns)
        .where(p.endpoint == endpoint, p.number.is_(None), p.id > last_id, *window)
        .order_by(p.id)
        .limit(_CHUNK)
    ).all():
        yield page
        last_id = page[-1].id
    last: tuple[int, str] | None = None
    while True:
        after = [] if last is None else [or_(p.number > last[0], and_(p.number == last[0], p.id > last[1]))]
        page = conn.execute(
            select(*columns)
            .where(p.endpoint == endpoint, p.number.is_not(None), *after, *window)
            .order_by(p.number, p.id)
            .limit(_CHUNK)
        ).all()
        if not page:
            return
        yield page
        last = (page[-1].number, page[-1].id)


@dataclass(frozen=True)
class TreeRows:
    """A pipeline tree as rows of the pipelines, workflows and jobs tables."""

    pipeline: dict[str, Any]
    workflows: list[dict[str, Any]]
    jobs: list[dict[str, Any]]


def tree_rows(endpoint: str, tree: dict[str, Any], *, fetched_at: float, is_final: bool) -> TreeRows:
    pipeline = {k: v for k, v in tree.items() if k != "workflows"}
    pid = pipeline["id"]
    workflow_rows, job_rows = [], []
    for w_seq, workflow in enumerate(tree.get("workflows") or []):
        wf = {k: v for k, v in workflow.items() if k != "jobs"}
        workflow_rows.append({"id": wf["id"], "pipeline_id": pid, "seq": w_seq, "data": dumps(wf)})
        for j_seq, job in enumerate(workflow.get("jobs") or []):
            raw = {k: v for k, v in job.items() if k != "details"}
            details = job.get("details")
            job_rows.append(
                {
                    "workflow_id": wf["id"],
                    "id": raw["id"],
                    "pipeline_id": pid,
                    "seq": j_seq,
                    "data": dumps(raw),
                    "details": None if details is None else dumps(details),
                    "job_number": s.job_number_of(raw),
                }
            )
    pipeline_row = {
        "id": pid,
        "endpoint": endpoint,
        "number": pipeline.get("number"),
        "created_at": parse_ts(pipeline.get("created_at")),
        "updated_on": tree_updated_on(tree),
        "fetched_at": fetched_at,
        "is_final": is_final,
        "data": dumps(pipeline),
    }
    return TreeRows(pipeline_row, workflow_rows, job_rows)


def tree_updated_on(tree: dict[str, Any]) -> float:
    """Latest timestamp anywhere in a pipeline tree."""
    stamps = [parse_ts(tree.get("updated_at")), parse_ts(tree.get("created_at"))]
    for wf in tree.get("workflows") or []:
        stamps += [parse_ts(wf.get("created_at")), parse_ts(wf.get("stopped_at"))]
        for job in wf.get("jobs") or []:
            stamps += [parse_ts(job.get("started_at")), parse_ts(job.get("stopped_at"))]
            details = job.get("details") or {}
            stamps += [parse_ts(details.get("queued_at")), parse_ts(details.get("stopped_at"))]
    return max((x for x in stamps if x is not None), default=0.0)


def _set_project_info(conn: Connection, slug: str, info: dict[str, Any]) -> None:
    """Store GET /project/{slug}; the facts' is_default_branch follows a changed default branch."""
    before = default_branch_of(conn, slug)
    conn.execute(update(s.endpoints).where(s.endpoints.c.slug == slug).values(project_info=dumps(info)))
    after = default_branch_of(conn, slug)
    if after != before:
        set_default_branch(conn, slug, after)


def _count_by_endpoint(conn: Connection, source: Any, *where: Any) -> dict[str, int]:
    p = s.pipelines.c
    query = select(p.endpoint, func.count()).select_from(source).where(*where).group_by(p.endpoint)
    return {endpoint: count for endpoint, count in conn.execute(query)}


def assemble_trees(conn: Connection, pipelines: Sequence[tuple[str, str]]) -> dict[str, dict[str, Any]]:
    """Rebuild trees for (pipeline id, pipeline JSON) pairs with two queries."""
    ids = [pid for pid, _ in pipelines]
    w, j = s.workflows.c, s.jobs.c
    wf_rows = conn.execute(
        select(w.id, w.pipeline_id, w.data).where(w.pipeline_id.in_(ids)).order_by(w.pipeline_id, w.seq)
    ).all()
    job_rows = conn.execute(
        select(j.workflow_id, j.data, j.details).where(j.pipeline_id.in_(ids)).order_by(j.workflow_id, j.seq)
    ).all()
    jobs_by_wf: dict[str, list[dict[str, Any]]] = {}
    for r in job_rows:
        job = json.loads(r.data)
        job["details"] = json.loads(r.details) if r.details is not None else None
        jobs_by_wf.setdefault(r.workflow_id, []).append(job)
    wfs_by_pipeline: dict[str, list[dict[str, Any]]] = {}
    for r in wf_rows:
        wf = json.loads(r.data)
        wf["jobs"] = jobs_by_wf.get(r.id, [])
        wfs_by_pipeline.setdefault(r.pipeline_id, []).append(wf)
    trees = {}
    for pid, data in pipelines:
        tree = json.loads(data)
        tree["workflows"] = wfs_by_pipeline.get(pid, [])
        trees[pid] = tree
    return trees


@dataclass(frozen=True)
class _Target:
    """A supported database URL, as SQLAlchemy takes it, and the SQLite file it names, if any."""

    url: str
    sqlite_path: Path | None  # None: PostgreSQL, or SQLite in memory / as a URI

    @classmethod
    def parse(cls, url: str) -> _Target:
        sa_url = engine_url(url)
        parsed = make_url(sa_url)
        path = parsed.database if parsed.get_backend_name() == "sqlite" else None
        usable = bool(path) and path != ":memory:" and not str(path).startswith("file:") and not parsed.query
        return cls(sa_url, Path(path) if usable and path else None)

    def check_sqlite_file(self, *, write: bool) -> None:
        """Readers must not leave an empty SQLite file behind for a mistyped path; writers need to
        write the file and, for its journal, the directory."""
        path = self.sqlite_path
        assert path is not None
        if path.exists() and not path.is_file():
            raise StoreError(f"not a database file: {path}")
        if not write and not path.exists():
            raise StoreError(f"no such database: {path} (run `circleci-ds collect` first)")
        if not path.parent.is_dir():
            raise StoreError(f"no such directory for the database: {path.parent}")
        if write and not all(os.access(p, os.W_OK) for p in (path, path.parent) if p.exists()):
            raise StoreError(f"cannot write to the database {path}: the file or its directory is read-only")

    def sqlite_has_content(self) -> bool:
        path = self.sqlite_path
        return path is not None and path.exists() and path.stat().st_size > 0


def _check_owned(engine: Engine, url: str) -> None:
    """Refuse a foreign database through a read-only look, before anything can write to it."""
    try:
        with engine.connect() as conn, conn.begin():
            owner = s.ownership(conn)
    finally:
        engine.dispose()
    _refuse_foreign(display_url(url), owner)


def _refuse_foreign(shown_url: str, owner: s.Ownership) -> None:
    if owner is s.Ownership.FOREIGN:
        raise StoreError(
            f"{shown_url} is not a circleci-ds store: it holds another application's tables "
            "(left untouched; point --db at an empty or circleci-ds database)"
        )


def _make_engine(target: _Target, *, read_only: bool = False) -> Engine:
    if target.url.startswith("sqlite"):
        if read_only and target.sqlite_path is not None:
            engine = create_engine("sqlite://", creator=_read_only_sqlite(target.sqlite_path))
        else:
            engine = create_engine(target.url, connect_args={"check_same_thread": False, "timeout": 60})
        event.listen(engine, "connect", _sqlite_reader_connect if read_only else _sqlite_connect)
        event.listen(engine, "begin", _sqlite_begin)
        return engine
    args: dict[str, Any] = {"connect_timeout": 10}
    if read_only:
        args["options"] = "-c default_transaction_read_only=on"
    return create_engine(target.url, pool_pre_ping=True, connect_args=args)


def _read_only_sqlite(path: Path) -> Any:
    uri = f"file:{quote(str(path.resolve()))}?mode=ro"

    def connect() -> sqlite3.Connection:
        return sqlite3.connect(uri, uri=True, check_same_thread=False, timeout=60)

    return connect


def _sqlite_reader_connect(dbapi_conn: Any, _record: Any) -> None:
    dbapi_conn.isolation_level = None
    cursor = dbapi_conn.cursor()
    cursor.execute("PRAGMA busy_timeout=60000")
    cursor.execute("PRAGMA query_only=ON")
    cursor.close()


def _db_now(conn: Connection) -> float:
    """PostgreSQL's clock, in epoch seconds."""
    return float(conn.execute(text("SELECT extract(epoch FROM clock_timestamp())")).scalar_one())


def _sqlite_connect(dbapi_conn: Any, _record: Any) -> None:
    # Autocommit at the driver; transactions are begun explicitly below (SQLAlchemy's recipe).
    dbapi_conn.isolation_level = None
    cursor = dbapi_conn.cursor()
    cursor.execute("PRAGMA busy_timeout=60000")
    _enable_wal(cursor)
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()


def _enable_wal(cursor: Any, patience: float = 60.0) -> None:
    """Switch to WAL; retried, as SQLite answers "locked" at once (no busy wait) while another
    connection opens a new database, which collectors starting together all do."""
    deadline = time.monotonic() + patience
    while True:
        try:
            cursor.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.02)


def _sqlite_begin(conn: Connection) -> None:
    conn.exec_driver_sql(conn.get_execution_options().get("sqlite_begin", "BEGIN"))


def _db_reason(exc: SQLAlchemyError | sqlite3.Error) -> str:
    """The driver's first line, which names the problem without echoing the URL's password."""
    orig = exc.orig if isinstance(exc, DBAPIError) else None
    line = str(orig or exc).strip().splitlines()[0] if str(orig or exc).strip() else exc.__class__.__name__
    return line[:300]
