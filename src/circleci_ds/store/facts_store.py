"""Writing the facts tables: beside each saved tree (same transaction), and once for old stores.

The rows come from `circleci_ds.derive.facts.derive`, a pure function of the raw tree and the project's
default branch; this module only moves them in and out of the database.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from sqlalchemy import Connection, case, delete, func, insert, select, update

from circleci_ds.derive import facts
from circleci_ds.derive.facts import TreeFacts, derive, row, user_ids_in
from circleci_ds.store import schema as s

_PAGE = 500  # pipelines per step of the backfill


def default_branches(conn: Connection) -> dict[str, str | None]:
    """Endpoint slug -> default branch, from the stored GET /project/{slug} answers."""
    found: dict[str, str | None] = {}
    for slug, info in conn.execute(select(s.endpoints.c.slug, s.endpoints.c.project_info)):
        found[slug] = default_branch(info)
    return found


def default_branch_of(conn: Connection, endpoint: str) -> str | None:
    info = conn.execute(select(s.endpoints.c.project_info).where(s.endpoints.c.slug == endpoint)).scalar()
    return default_branch(info)


def default_branch(info_json: str | None) -> str | None:
    try:
        return facts.default_branch(json.loads(info_json) if info_json else None)
    except ValueError:
        return None


def set_default_branch(conn: Connection, endpoint: str, default: str | None) -> None:
    """Keep is_default_branch in step when a project's default branch is (re)learnt."""
    for table in s.FACT_TABLES:
        flag = (
            None
            if default is None
            else case((table.c.branch.is_(None), None), else_=table.c.branch == default)
        )
        conn.execute(update(table).where(table.c.endpoint == endpoint).values(is_default_branch=flag))


def write_facts(conn: Connection, trees: Sequence[TreeFacts]) -> None:
    """Replace the facts of these pipelines (delete, then insert in bulk)."""
    ids = [t.pipeline.id for t in trees]
    delete_facts(conn, ids)
    _insert(conn, s.pipeline_runs, (row(t.pipeline) for t in trees))
    _insert(conn, s.workflow_runs, (row(w) for t in trees for w in t.workflows))
    _insert(conn, s.job_runs, (row(j) for t in trees for j in t.jobs))


def write_people(conn: Connection, named: Mapping[str, Iterable[str]]) -> None:
    """Replace the people_refs of these pipelines (pipeline id -> the user ids its tree names)."""
    r = s.people_refs.c
    conn.execute(delete(s.people_refs).where(r.pipeline_id.in_(list(named))))
    _insert(conn, s.people_refs, ({"pipeline_id": p, "user_id": u} for p, ids in named.items() for u in ids))


def read_facts(conn: Connection, pipeline_ids: Sequence[str]) -> dict[str, TreeFacts]:
    """The stored facts of these pipelines, as typed rows (pipeline id -> its facts)."""
    ids = list(pipeline_ids)
    pipelines = {
        r.id: facts.PipelineFact(**r._asdict())
        for r in conn.execute(select(s.pipeline_runs).where(s.pipeline_runs.c.id.in_(ids)))
    }
    workflows: dict[str, list[facts.WorkflowFact]] = {}
    for r in conn.execute(select(s.workflow_runs).where(s.workflow_runs.c.pipeline_id.in_(ids))):
        workflows.setdefault(r.pipeline_id, []).append(facts.WorkflowFact(**r._asdict()))
    jobs: dict[str, list[facts.JobFact]] = {}
    for r in conn.execute(select(s.job_runs).where(s.job_runs.c.pipeline_id.in_(ids))):
        jobs.setdefault(r.pipeline_id, []).append(facts.JobFact(**r._asdict()))
    return {
        pid: TreeFacts(pipeline, workflows.get(pid, []), jobs.get(pid, []))
        for pid, pipeline in pipelines.items()
    }


def delete_facts(conn: Connection, pipeline_ids: Sequence[str]) -> None:
    for table in (s.job_runs, s.workflow_runs, s.pipeline_runs):
        column = table.c.id if table is s.pipeline_runs else table.c.pipeline_id
        conn.execute(delete(table).where(column.in_(list(pipeline_ids))))


def _insert(conn: Connection, table: Any, rows: Iterable[dict[str, Any]]) -> None:
    batch = list(rows)
    if batch:
        conn.execute(insert(table), batch)


def backfill_facts(conn: Connection) -> None:
    """Derive the facts of every stored tree, in pages; a progress bar on a terminal."""
    from circleci_ds.store.database import assemble_trees  # the database module imports this one

    p = s.pipelines.c
    total = conn.execute(select(func.count()).select_from(s.pipelines)).scalar_one()
    if not total:
        return
    defaults = default_branches(conn)
    with _progress(total) as advance:
        last = ""
        while True:
            page = conn.execute(
                select(p.id, p.endpoint, p.data).where(p.id > last).order_by(p.id).limit(_PAGE)
            ).all()
            if not page:
                break
            trees = assemble_trees(conn, [(r.id, r.data) for r in page])
            facts = [derive(r.endpoint, trees[r.id], defaults.get(r.endpoint)) for r in page]
            write_facts(conn, facts)
            advance(len(page))
            last = page[-1].id


def backfill_people(conn: Connection) -> None:
    """Fill people_refs from the stored workflows and jobs, a page of pipelines at a time (only the
    job rows that name someone are parsed)."""
    p, w, j = s.pipelines.c, s.workflows.c, s.jobs.c
    named_someone = j.data.like('%"approved_by"%') | j.data.like('%"canceled_by"%')
    last = ""
    while ids := list(conn.execute(select(p.id).where(p.id > last).order_by(p.id).limit(_PAGE)).scalars()):
        named: dict[str, set[str]] = {pid: set() for pid in ids}
        workflows = conn.execute(select(w.pipeline_id, w.data).where(w.pipeline_id.in_(ids)))
        jobs = conn.execute(select(j.pipeline_id, j.data).where(j.pipeline_id.in_(ids), named_someone))
        for pipeline_id, data in [*workflows, *jobs]:
            parsed = json.loads(data)
            if isinstance(parsed, dict):
                named[pipeline_id] |= user_ids_in(parsed)
        write_people(conn, named)
        last = ids[-1]


class _progress:
    """A rich progress bar on stderr when it is a terminal; silent otherwise."""

    def __init__(self, total: int) -> None:
        self.total = total
        self.bar: Any = None

    def __enter__(self) -> Any:
        if sys.stderr.isatty():
            from rich.console import Console
            from rich.progress import Progress

            self.bar = Progress(console=Console(stderr=True), transient=True)
            self.bar.__enter__()
            task = self.bar.add_task("deriving facts from stored pipelines", total=self.total)
            return lambda n: self.bar.advance(task, n)
        return lambda n: None

    def __exit__(self, *exc: object) -> None:
        if self.bar is not None:
            self.bar.__exit__(*exc)
