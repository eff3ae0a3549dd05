"""Filling tables that a migration adds from the trees already stored (facts, people_refs).

A migration step only creates tables; the store runs the backfill that goes with it in the same
transaction, with its Deriver, a page of pipelines at a time.
"""

from __future__ import annotations

import json
import sys
from typing import Any

from sqlalchemy import Connection, func, select

from circleci_ds.store import schema as s
from circleci_ds.store.facts_store import Deriver, project_infos, write_facts, write_people
from circleci_ds.store.trees import assemble_trees

_PAGE = 500  # pipelines per step of a backfill


def backfill_facts(conn: Connection, deriver: Deriver) -> None:
    """Derive the facts of every stored tree, in pages; a progress bar on a terminal."""
    p = s.pipelines.c
    total = conn.execute(select(func.count()).select_from(s.pipelines)).scalar_one()
    if not total:
        return
    defaults = {slug: deriver.default_branch(info) for slug, info in project_infos(conn).items()}
    with _progress(total) as advance:
        last = ""
        while True:
            page = conn.execute(
                select(p.id, p.endpoint, p.data).where(p.id > last).order_by(p.id).limit(_PAGE)
            ).all()
            if not page:
                break
            trees = assemble_trees(conn, [(r.id, r.data) for r in page])
            write_facts(
                conn, [deriver.tree_facts(r.endpoint, trees[r.id], defaults.get(r.endpoint)) for r in page]
            )
            advance(len(page))
            last = page[-1].id


def backfill_people(conn: Connection, deriver: Deriver) -> None:
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
                named[pipeline_id] |= deriver.user_ids(parsed)
        write_people(conn, named)
        last = ids[-1]


# The backfill that follows each migration step that needs one (keyed by the step's name).
# `_job_resources` adds job_runs columns: the facts are derived again to fill them.
BACKFILLS = {
    "facts_tables": backfill_facts,
    "_people_refs": backfill_people,
    "_job_resources": backfill_facts,
}


def has_pipelines(conn: Connection) -> bool:
    return conn.execute(select(s.pipelines.c.id).limit(1)).first() is not None


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
