"""The facts tables and people_refs: written beside each saved tree (same transaction), read back.

The rows are derived by the caller's `Deriver` (circleci_ds.derive.facts gives the tool's), a pure
function of the raw tree and the project's default branch; this module only moves rows in and out of
the database and imports no domain code.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from sqlalchemy import Connection, case, select, update

from circleci_ds.store import schema as s
from circleci_ds.store.bulk import delete_by, insert_rows, insert_tuples


@dataclass(frozen=True, slots=True)
class FactRows:
    """One tree's rows of the pipeline_runs, workflow_runs and job_runs tables (column -> value)."""

    pipeline: dict[str, Any]
    workflows: list[dict[str, Any]]
    jobs: list[dict[str, Any]]


class Deriver(Protocol):
    """What the store asks of the domain when it writes trees: their facts and the people they name."""

    def tree_facts(self, endpoint: str, tree: dict[str, Any], default_branch: str | None) -> FactRows: ...

    def user_ids(self, item: dict[str, Any]) -> set[str]:
        """The user ids one workflow or job names."""
        ...

    def people(self, tree: dict[str, Any]) -> set[str]:
        """Every user id a tree's workflows and jobs name."""
        ...

    def default_branch(self, project_info: Any) -> str | None:
        """The default branch from a GET /project/{slug} answer."""
        ...


def project_infos(conn: Connection) -> dict[str, Any]:
    """Endpoint slug -> its stored GET /project/{slug} answer (None when missing or unreadable)."""
    return {
        slug: parsed_info(info)
        for slug, info in conn.execute(select(s.endpoints.c.slug, s.endpoints.c.project_info))
    }


def project_info_of(conn: Connection, endpoint: str) -> Any:
    return parsed_info(
        conn.execute(select(s.endpoints.c.project_info).where(s.endpoints.c.slug == endpoint)).scalar()
    )


def parsed_info(info_json: str | None) -> Any:
    """A stored GET /project/{slug} answer, parsed (None when missing or unreadable)."""
    try:
        return json.loads(info_json) if info_json else None
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


def write_facts(conn: Connection, trees: Sequence[FactRows]) -> None:
    """Replace the facts of these pipelines (delete, then insert in bulk)."""
    delete_facts(conn, [t.pipeline["id"] for t in trees])
    insert_facts(conn, trees)


def insert_facts(conn: Connection, trees: Sequence[FactRows]) -> None:
    """Insert the facts of pipelines that have none stored."""
    _insert(conn, s.pipeline_runs, (t.pipeline for t in trees))
    _insert(conn, s.workflow_runs, (w for t in trees for w in t.workflows))
    _insert(conn, s.job_runs, (j for t in trees for j in t.jobs))


def write_people(conn: Connection, named: Mapping[str, Iterable[str]]) -> None:
    """Replace the people_refs of these pipelines (pipeline id -> the user ids its tree names)."""
    delete_people(conn, list(named))
    insert_people(conn, named)


def delete_people(conn: Connection, pipeline_ids: Sequence[str]) -> None:
    delete_by(conn, s.people_refs.name, "pipeline_id", pipeline_ids)


def insert_people(conn: Connection, named: Mapping[str, Iterable[str]]) -> None:
    rows = [(p, u) for p, ids in named.items() for u in ids]
    insert_tuples(conn, s.people_refs.name, ("pipeline_id", "user_id"), rows)


def read_facts(conn: Connection, pipeline_ids: Sequence[str]) -> dict[str, FactRows]:
    """The stored facts rows of these pipelines (pipeline id -> its rows)."""
    ids = list(pipeline_ids)
    pipelines = {
        r.id: r._asdict() for r in conn.execute(select(s.pipeline_runs).where(s.pipeline_runs.c.id.in_(ids)))
    }
    workflows: dict[str, list[dict[str, Any]]] = {}
    for r in conn.execute(select(s.workflow_runs).where(s.workflow_runs.c.pipeline_id.in_(ids))):
        workflows.setdefault(r.pipeline_id, []).append(r._asdict())
    jobs: dict[str, list[dict[str, Any]]] = {}
    for r in conn.execute(select(s.job_runs).where(s.job_runs.c.pipeline_id.in_(ids))):
        jobs.setdefault(r.pipeline_id, []).append(r._asdict())
    return {
        pid: FactRows(pipeline, workflows.get(pid, []), jobs.get(pid, []))
        for pid, pipeline in pipelines.items()
    }


def delete_facts(conn: Connection, pipeline_ids: Sequence[str]) -> None:
    for table in (s.job_runs, s.workflow_runs, s.pipeline_runs):
        delete_by(conn, table.name, "id" if table is s.pipeline_runs else "pipeline_id", pipeline_ids)


def _insert(conn: Connection, table: Any, rows: Iterable[dict[str, Any]]) -> None:
    insert_rows(conn, table.name, list(rows))
