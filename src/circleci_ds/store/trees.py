"""Pipeline trees: each pipeline with its workflows, jobs and job details, replaced whole.

Rules:
- A tree (pipeline, workflows, jobs, details) and its derived facts are replaced in one transaction.
- Trees are read back in keyset pages on one snapshot: memory is bounded by a page, whatever the
  size of the history.
- Ids are keys on their own, so a tree is filed only where its ids are its own: a pipeline id filed
  under another endpoint, or a workflow id filed under another pipeline, refuses the tree
  (`TreeRefused`) rather than re-file the other's; so does an id named twice. CircleCI's ids are
  UUIDs, unique across servers: one met under two endpoints is a server's lie, not data to keep twice.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, and_, func, or_, select
from sqlalchemy.exc import IntegrityError

from circleci_ds.store import schema as s
from circleci_ds.store.base import NotLeased, StoreBase, TreeRefused, db_reason, digest, dumps
from circleci_ds.store.bulk import delete_by, insert_rows, select_in
from circleci_ds.store.facts_store import (
    Deriver,
    FactRows,
    delete_facts,
    delete_people,
    insert_facts,
    insert_people,
    parsed_info,
    read_facts,
)
from circleci_ds.store.job_usage import UsageByJob, has_usage, read_job_usage
from circleci_ds.times import parse_ts

_CHUNK = 100  # pipelines per page when reading trees back (a page of parsed trees is the memory bound)


@dataclass(frozen=True)
class StoredTree:
    endpoint: str  # canonical project slug
    native: str  # the fixture's native slug
    origin: str
    updated_on: float  # epoch seconds of the latest change in the tree
    data: dict[str, Any]  # pipeline + workflows[] + jobs[] + details
    project_name: str | None = None  # the fixture's project name, when the collector recorded it
    facts: FactRows | None = None  # as stored beside it, when asked for
    usage: UsageByJob | None = None  # its jobs' usage facts, when asked for and known


@dataclass(frozen=True)
class PipelineIndexEntry:
    created_at: float | None
    fetched_at: float | None
    is_final: bool
    digest: bytes  # of the stored pipeline object, to notice a changed listing entry


class Trees(StoreBase):
    """The pipelines, workflows and jobs tables, with the facts written beside them."""

    def pipeline_index(self, slug: str) -> dict[str, PipelineIndexEntry]:
        """What the collector needs to decide which stored pipelines to read again."""
        p = s.pipelines.c
        query = select(p.id, p.created_at, p.fetched_at, p.is_final, p.data).where(p.endpoint == slug)
        index: dict[str, PipelineIndexEntry] = {}
        with self.connect() as conn:
            for row in conn.execute(query):
                index[row.id] = PipelineIndexEntry(
                    row.created_at, row.fetched_at, bool(row.is_final), digest(json.loads(row.data))
                )
        return index

    def load_tree(self, pipeline_id: str) -> dict[str, Any] | None:
        with self.reading() as conn:
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
        """Replace pipeline trees of one endpoint and their facts (`write_trees`); raises the first
        tree's failure once the others are written."""
        outcomes = self.write_trees([TreeWrite(endpoint, tree, fetched_at, is_final) for tree in trees])
        failed = next((outcome for outcome in outcomes if outcome is not None), None)
        if failed is not None:
            raise failed

    def write_trees(self, batch: Sequence[TreeWrite], *, owner: str | None = None) -> list[Exception | None]:
        """Replace the trees of a batch and their facts in one transaction; each tree's outcome, in
        order (None: written). A tree that cannot be filed (TreeRefused; NotLeased when `owner` is
        given and no longer holds the lease of the tree's endpoint) or read (its exception) fails
        alone: the others are written. StoreError (the database failed) fails the whole batch."""
        deriver = self.needs_deriver()
        outcomes: list[Exception | None] = [None] * len(batch)
        ready: list[_Pending] = []
        for index, item in enumerate(batch):
            try:
                rows = tree_rows(item.endpoint, item.tree, fetched_at=item.fetched_at, is_final=item.is_final)
            except Exception as exc:  # a tree the collector let through but cannot be filed: it alone
                outcomes[index] = exc
                continue
            ready.append(_Pending(index, item, rows))
        try:
            with self.writing() as conn:
                outcomes_of = _BatchWriter(conn, deriver, owner).write(ready)
        except IntegrityError:
            # An id named twice, in a tree or across two: each tree again, on its own.
            outcomes_of = {}
            for pending in ready:
                outcomes_of.update(self._write_alone(pending, deriver, owner))
        for index, outcome in outcomes_of.items():
            outcomes[index] = outcome
        return outcomes

    def _write_alone(self, pending: _Pending, deriver: Deriver, owner: str | None) -> dict[int, Exception]:
        try:
            with self.writing() as conn:
                return _BatchWriter(conn, deriver, owner, alone=True).write([pending])
        except IntegrityError as exc:
            return {pending.index: _refused(pending, exc)}

    def iter_trees(
        self,
        project: str | None = None,
        endpoint: str | None = None,
        *,
        with_facts: bool = False,
        with_usage: bool = False,
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
        with self.reading() as conn:
            with_usage = with_usage and has_usage(conn)
            for slug, native, origin, name in conn.execute(query).all():
                for page in _pages_by_number(conn, slug, created):
                    ids = [r.id for r in page]
                    trees = assemble_trees(conn, [(r.id, r.data) for r in page])
                    facts = read_facts(conn, ids) if with_facts else {}
                    usage = read_job_usage(conn, ids) if with_usage else {}
                    for r in page:
                        yield StoredTree(
                            slug, native, origin, r.updated_on or 0.0, trees[r.id], name, facts.get(r.id),
                            usage.get(r.id),
                        )  # fmt: skip

    def unreadable_timestamps(self, project: str | None = None) -> int:
        """Timestamps in stored trees that could not be read (null in derived data)."""
        pr, e = s.pipeline_runs.c, s.endpoints.c
        query = select(func.coalesce(func.sum(pr.bad_times), 0)).join(s.endpoints, e.slug == pr.endpoint)
        if project is not None:
            query = query.where(e.native == project)
        with self.engine.connect() as conn:
            return int(conn.execute(query).scalar_one())


@dataclass(frozen=True, slots=True)
class TreeWrite:
    """A pipeline tree ready to be written: its endpoint, the tree, when it was read, whether final."""

    endpoint: str
    tree: dict[str, Any]
    fetched_at: float
    is_final: bool


@dataclass(frozen=True, slots=True)
class _Pending:
    index: int  # in the batch
    item: TreeWrite
    rows: TreeRows


def _refused(pending: _Pending, exc: IntegrityError) -> TreeRefused:
    """A key the tree breaks (an id named twice) refuses that tree, in one plain line."""
    return TreeRefused(
        f"pipeline {_named([pending.rows.pipeline['id']])}: the store refused it ({db_reason(exc)})"
    )


_LEASES = "SELECT endpoint, owner FROM leases WHERE endpoint IN ({keys})"
_PIPELINE_OWNERS = "SELECT id, endpoint FROM pipelines WHERE id IN ({keys})"
_WORKFLOW_OWNERS = "SELECT id, pipeline_id FROM workflows WHERE id IN ({keys})"
_PROJECT_INFO = "SELECT slug, project_info FROM endpoints WHERE slug IN ({keys})"
_RAW_TABLES = ((s.jobs.name, "pipeline_id"), (s.workflows.name, "pipeline_id"), (s.pipelines.name, "id"))


class _BatchWriter:
    """Writes a batch of trees in the caller's transaction: a few statements built once per database
    and run through the driver, whatever the number of trees."""

    def __init__(self, conn: Connection, deriver: Deriver, owner: str | None, *, alone: bool = False) -> None:
        self.conn, self.deriver, self.owner = conn, deriver, owner
        # A tree's rows are only ever written and deleted together, so a pipeline not stored has
        # none to delete; written alone (after an integrity error), a tree deletes by its id anyway.
        self.alone = alone
        self.stored: set[str] = set()  # pipeline ids of the batch already stored

    def write(self, batch: list[_Pending]) -> dict[int, Exception]:
        """Write the trees that may be filed; the refusals of the others (tree index -> why)."""
        refused = self._not_leased(batch)
        refused.update(self._not_owned([p for p in batch if p.index not in refused]))
        kept = [p for p in batch if p.index not in refused]
        if not kept:
            return refused
        ids = [p.rows.pipeline["id"] for p in kept]
        replaced = ids if self.alone else [pid for pid in ids if pid in self.stored]
        for table, column in _RAW_TABLES:
            delete_by(self.conn, table, column, replaced)
        delete_facts(self.conn, replaced)
        delete_people(self.conn, replaced)
        insert_rows(self.conn, s.pipelines.name, [p.rows.pipeline for p in kept])
        insert_rows(self.conn, s.workflows.name, [w for p in kept for w in p.rows.workflows])
        insert_rows(self.conn, s.jobs_numbered.name, [j for p in kept for j in p.rows.jobs])
        defaults = self._default_branches({p.item.endpoint for p in kept})
        facts = [
            self.deriver.tree_facts(p.item.endpoint, p.item.tree, defaults[p.item.endpoint]) for p in kept
        ]
        insert_facts(self.conn, facts)
        insert_people(
            self.conn, {pid: self.deriver.people(p.item.tree) for pid, p in zip(ids, kept, strict=True)}
        )
        return refused

    def _not_leased(self, batch: list[_Pending]) -> dict[int, Exception]:
        """The trees of endpoints whose lease `owner` no longer holds: it lost them to another."""
        if self.owner is None or not batch:
            return {}
        endpoints = sorted({p.item.endpoint for p in batch})
        holders = dict(select_in(self.conn, _LEASES, endpoints))
        return {
            p.index: NotLeased(
                f"pipeline {_named([p.rows.pipeline['id']])}: not written, the lease of {p.item.endpoint} "
                "was lost to another collector"
            )
            for p in batch
            if holders.get(p.item.endpoint) != self.owner
        }

    def _not_owned(self, batch: list[_Pending]) -> dict[int, Exception]:
        """TreeRefused for a tree whose pipeline id is filed under another endpoint, or one of whose
        workflow ids is filed under another pipeline (module docstring)."""
        if not batch:
            return {}
        refused: dict[int, Exception] = {}
        by_pipeline = {p.rows.pipeline["id"]: p for p in batch}
        for pid, endpoint in select_in(self.conn, _PIPELINE_OWNERS, list(by_pipeline)):
            self.stored.add(pid)
            pending = by_pipeline[pid]
            if endpoint != pending.item.endpoint:
                why = f"pipeline {_named([pid])} is filed under another project ({endpoint})"
                refused[pending.index] = TreeRefused(why)
        by_workflow = {w["id"]: p for p in batch for w in p.rows.workflows}
        for wid, owner in select_in(self.conn, _WORKFLOW_OWNERS, list(by_workflow)):
            pending = by_workflow[wid]
            if owner != pending.rows.pipeline["id"] and pending.index not in refused:
                why = f"workflow {_named([wid])} is filed under another pipeline ({_named([owner])})"
                refused[pending.index] = TreeRefused(why)
        return refused

    def _default_branches(self, endpoints: set[str]) -> dict[str, str | None]:
        infos = dict(select_in(self.conn, _PROJECT_INFO, sorted(endpoints)))
        return {e: self.deriver.default_branch(parsed_info(infos.get(e))) for e in endpoints}


def _named(ids: Sequence[str]) -> str:
    shown = ", ".join(i[:64] for i in ids[:3])
    return shown + (f" and {len(ids) - 3} more" if len(ids) > 3 else "")


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
